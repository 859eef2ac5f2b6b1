//! # meterflow-rater: price plans and exact decimal rating
//!
//! A [`PriceBook`] holds the price plans from the reference data. A plan has one currency and a
//! charge per meter. Rating is *incremental*: a summary row whose window value moved from
//! `before` to `after` is worth `price(after) - price(before)`, so the amounts of a window's rows
//! always add up to the price of its total, whatever order the rows were written in.
//!
//! Money is [`rust_decimal::Decimal`] end to end. Amounts are never rounded here: unit prices
//! carry at most [`MAX_PRICE_SCALE`] (9) fractional digits and quantities at most 9, so every
//! product is exact within the tables' DECIMAL(38, 18) amount column; a product that would not
//! fit exactly is an error, never a silent rounding. Rounding to the currency's
//! minor unit happens once, per invoice line, in billing.

mod currency;
mod plan;

pub use currency::{minor_units, Currency};
pub use plan::{ChargeConfig, Plan, PlanConfig, PriceBook, RaterError, MAX_PRICE_SCALE};

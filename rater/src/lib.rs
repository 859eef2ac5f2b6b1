//! # meterflow-rater: price plans and exact decimal rating
//!
//! ```text
//!   reference data ──PriceBook::new──► Plan ─► PlanVersion (effective_from) ─► Charge per meter
//!   customer subscriptions + event time ──pricing_at──► (plan, version) in force
//!   window delta ──PeriodTotals::advance──► (period total before, after)
//!                ──Charge::rate_delta──► price(after) - price(before)
//! ```
//!
//! Charge models ([`ChargeModel`]): per unit, graduated tiers, volume tiers, packages, each with
//! an optional allowance of free units per period; plan versions add a recurring fee (prorated by
//! days, [`prorate`]) and a minimum spend ([`minimum_true_up`]). Tiers apply to the billing-period
//! total per customer, meter and plan version, kept in [`PeriodTotals`].
//!
//! Rating is *incremental*: a summary row that moves a period total from `before` to `after` is
//! worth `price(after) - price(before)`, so a period's rows always add up to the price of its
//! total, whatever order the windows arrive in.
//!
//! Money is [`rust_decimal::Decimal`] end to end, and every multiplication is exact or an error
//! (never a silent rounding): prices and quantities carry at most 9 fractional digits, so
//! amounts fit the tables' DECIMAL(38, 18) column unrounded. Rounding to the currency's minor
//! unit happens once, per invoice line, with [`round_money`].

mod charge;
mod currency;
mod error;
mod exact;
mod period;
mod plan;
mod rounding;
mod subscription;
mod totals;

pub use charge::{Charge, ChargeModel, Tier, TierLine};
pub use currency::{minor_units, Currency};
pub use error::RaterError;
pub use exact::{MAX_PERIOD_AMOUNT, MAX_PERIOD_TOTAL, MAX_PRICE_SCALE};
pub use meterflow_schemas::parse_instant;
pub use period::{active_days, minimum_true_up, prorate, Period};
pub use plan::{Plan, PlanConfig, PlanVersion, PlanVersionConfig, PriceBook};
pub use rounding::{round_money, Rounding};
pub use subscription::{check_subscriptions, pricing_at, Subscription};
pub use totals::{PeriodTotals, TotalKey};

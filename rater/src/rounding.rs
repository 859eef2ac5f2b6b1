//! The one rounding step: per invoice line, to the currency's minor unit.

use rust_decimal::{Decimal, RoundingStrategy as Rs};
use serde::Deserialize;

use crate::currency::Currency;

/// How an invoice line is rounded to the currency's minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rounding {
    /// Midpoints away from zero (2.345 USD -> 2.35). The default: what most invoices expect.
    #[default]
    HalfUp,
    /// Midpoints to the even neighbour (2.345 -> 2.34, 2.355 -> 2.36): banker's rounding.
    HalfEven,
}

/// Rounds `amount` to the minor unit of `currency` (USD 2 places, JPY 0, BHD 3).
pub fn round_money(amount: Decimal, currency: &Currency, rounding: Rounding) -> Decimal {
    let strategy = match rounding {
        Rounding::HalfUp => Rs::MidpointAwayFromZero,
        Rounding::HalfEven => Rs::MidpointNearestEven,
    };
    let mut rounded = amount.round_dp_with_strategy(currency.minor_units, strategy);
    rounded.rescale(currency.minor_units); // always show every minor digit: 5 USD is 5.00
    rounded
}

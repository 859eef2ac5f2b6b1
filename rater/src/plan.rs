//! Price plans from reference data, validated at load.

use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::HashMap;

use crate::currency::Currency;

/// The most fractional digits a unit price may carry (quantities carry at most 9, amounts are
/// stored with 18, so every quantity x price product is exact).
pub const MAX_PRICE_SCALE: u32 = 9;

/// A plan as written in the reference data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Plan id, referenced by customers.
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// ISO 4217 currency of every price in the plan.
    pub currency: String,
    /// One charge per meter.
    #[serde(default)]
    pub charges: Vec<ChargeConfig>,
}

/// The price of one meter in a plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChargeConfig {
    /// Meter name.
    pub meter: String,
    /// Price per unit of the meter's quantity, as a decimal string (for example "0.0002").
    pub unit_price: Decimal,
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Plan id.
    pub id: String,
    /// Currency of all its amounts.
    pub currency: Currency,
    unit_prices: HashMap<String, Decimal>,
}

/// Errors of plan loading and rating.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RaterError {
    /// Two plans share an id. Fix the reference data.
    #[error("plan `{0}` is defined twice")]
    DuplicatePlan(String),
    /// The plan's currency is not an ISO 4217 code meterflow knows.
    #[error("plan `{plan}`: unknown currency {currency:?} (use an ISO 4217 code such as USD, EUR, JPY)")]
    UnknownCurrency { plan: String, currency: String },
    /// A charge names a meter the config does not define.
    #[error("plan `{plan}` prices meter `{meter}`, which is not defined in the config")]
    UnknownMeter { plan: String, meter: String },
    /// A plan leaves a configured meter unpriced.
    #[error(
        "plan `{plan}` has no charge for meter `{meter}`: every meter must be priced (use unit_price = \"0\" for free)"
    )]
    UnpricedMeter { plan: String, meter: String },
    /// Two charges for one meter in one plan.
    #[error("plan `{plan}` prices meter `{meter}` twice")]
    DuplicateCharge { plan: String, meter: String },
    /// A negative price.
    #[error("plan `{plan}`, meter `{meter}`: unit_price {price} is negative")]
    NegativePrice { plan: String, meter: String, price: Decimal },
    /// A price finer than [`MAX_PRICE_SCALE`] digits.
    #[error("plan `{plan}`, meter `{meter}`: unit_price {price} has more than {MAX_PRICE_SCALE} fractional digits")]
    PriceTooPrecise { plan: String, meter: String, price: Decimal },
    /// Rating asked for a meter the plan does not price (cannot happen after validation).
    #[error("plan `{plan}` does not price meter `{meter}`")]
    NoCharge { plan: String, meter: String },
    /// A product that does not fit exact decimal arithmetic.
    #[error("amount overflow rating meter `{meter}` on plan `{plan}`")]
    Overflow { plan: String, meter: String },
}

/// All plans, by id.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    plans: HashMap<String, Plan>,
}

impl PriceBook {
    /// Validates the plans against the configured meter names.
    pub fn new(configs: Vec<PlanConfig>, meters: &[&str]) -> Result<Self, RaterError> {
        let mut plans = HashMap::new();
        for p in configs {
            if plans.contains_key(&p.id) {
                return Err(RaterError::DuplicatePlan(p.id));
            }
            let currency = Currency::parse(&p.currency)
                .ok_or_else(|| RaterError::UnknownCurrency { plan: p.id.clone(), currency: p.currency.clone() })?;
            let mut unit_prices = HashMap::new();
            for c in &p.charges {
                let err_ctx = (p.id.clone(), c.meter.clone());
                if !meters.contains(&c.meter.as_str()) {
                    return Err(RaterError::UnknownMeter { plan: err_ctx.0, meter: err_ctx.1 });
                }
                if c.unit_price.is_sign_negative() && !c.unit_price.is_zero() {
                    return Err(RaterError::NegativePrice { plan: err_ctx.0, meter: err_ctx.1, price: c.unit_price });
                }
                if c.unit_price.normalize().scale() > MAX_PRICE_SCALE {
                    return Err(RaterError::PriceTooPrecise { plan: err_ctx.0, meter: err_ctx.1, price: c.unit_price });
                }
                if unit_prices.insert(c.meter.clone(), c.unit_price.normalize()).is_some() {
                    return Err(RaterError::DuplicateCharge { plan: err_ctx.0, meter: err_ctx.1 });
                }
            }
            if let Some(m) = meters.iter().find(|m| !unit_prices.contains_key(**m)) {
                return Err(RaterError::UnpricedMeter { plan: p.id.clone(), meter: m.to_string() });
            }
            plans.insert(p.id.clone(), Plan { id: p.id, currency, unit_prices });
        }
        Ok(PriceBook { plans })
    }

    /// The plan with this id.
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.get(id)
    }
}

impl Plan {
    /// Price of a total quantity of `meter` (per unit: quantity x unit price, exact).
    pub fn price(&self, meter: &str, quantity: Decimal) -> Result<Decimal, RaterError> {
        let unit = self
            .unit_prices
            .get(meter)
            .ok_or_else(|| RaterError::NoCharge { plan: self.id.clone(), meter: meter.to_string() })?;
        exact_mul(quantity, *unit)
            .ok_or_else(|| RaterError::Overflow { plan: self.id.clone(), meter: meter.to_string() })
    }

    /// The amount of a row that moved a window's value from `before` to `after`:
    /// `price(after) - price(before)`.
    pub fn rate_delta(&self, meter: &str, before: Decimal, after: Decimal) -> Result<Decimal, RaterError> {
        Ok(self.price(meter, after)? - self.price(meter, before)?)
    }
}

/// `a * b` computed exactly, or `None` when the exact product does not fit a [`Decimal`]
/// (rust_decimal's own multiplication would round away digits instead).
pub(crate) fn exact_mul(a: Decimal, b: Decimal) -> Option<Decimal> {
    let mut mantissa = a.mantissa().checked_mul(b.mantissa())?;
    let mut scale = a.scale() + b.scale();
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
    }
    if scale > 28 || mantissa.unsigned_abs() >= 1u128 << 96 {
        return None;
    }
    Decimal::try_from_i128_with_scale(mantissa, scale).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(prices: &[(&str, &str)]) -> PlanConfig {
        PlanConfig {
            id: "p".into(),
            name: None,
            currency: "USD".into(),
            charges: prices
                .iter()
                .map(|(m, p)| ChargeConfig { meter: m.to_string(), unit_price: p.parse().unwrap() })
                .collect(),
        }
    }

    #[test]
    fn per_unit_price_is_exact() {
        let book = PriceBook::new(vec![plan(&[("api_calls", "0.0002")])], &["api_calls"]).unwrap();
        let p = book.plan("p").unwrap();
        assert_eq!(p.price("api_calls", "3".parse().unwrap()).unwrap().to_string(), "0.0006");
        assert_eq!(
            p.rate_delta("api_calls", "0.1".parse().unwrap(), "0.3".parse().unwrap()).unwrap().normalize().to_string(),
            "0.00004"
        );
    }

    #[test]
    fn plans_with_mistakes_are_refused_with_the_reason() {
        let e = PriceBook::new(vec![plan(&[("api_calls", "-1")])], &["api_calls"]).unwrap_err();
        assert!(matches!(e, RaterError::NegativePrice { .. }));
        let e = PriceBook::new(vec![plan(&[("nope", "1")])], &["api_calls"]).unwrap_err();
        assert!(matches!(e, RaterError::UnknownMeter { .. }));
        let e = PriceBook::new(vec![plan(&[])], &["api_calls"]).unwrap_err();
        assert!(e.to_string().contains("no charge for meter `api_calls`"));
        let e = PriceBook::new(vec![plan(&[("api_calls", "0.0000000001")])], &["api_calls"]).unwrap_err();
        assert!(matches!(e, RaterError::PriceTooPrecise { .. }));
        let mut bad = plan(&[("api_calls", "1")]);
        bad.currency = "DOGE".into();
        assert!(matches!(PriceBook::new(vec![bad], &["api_calls"]).unwrap_err(), RaterError::UnknownCurrency { .. }));
    }

    #[test]
    fn products_are_exact_or_refused_never_rounded() {
        let q: Decimal = "123456789012.123456789".parse().unwrap();
        let p: Decimal = "0.000002800".parse().unwrap();
        assert_eq!(exact_mul(q, p).unwrap().to_string(), "345679.0092339456790092");
        let huge: Decimal = "79228162514264337593543950.335".parse().unwrap();
        assert_eq!(exact_mul(huge, "1.5".parse().unwrap()), None);
    }

    proptest! {
        #[test]
        fn incremental_amounts_sum_to_the_price_of_the_total(steps in prop::collection::vec(0u64..1_000_000_000, 1..50)) {
            let book = PriceBook::new(vec![plan(&[("m", "0.000123")])], &["m"]).unwrap();
            let p = book.plan("m").or(book.plan("p")).unwrap();
            let mut total = Decimal::ZERO;
            let mut sum = Decimal::ZERO;
            for s in steps {
                let after = total + Decimal::new(s as i64, 3);
                sum += p.rate_delta("m", total, after).unwrap();
                total = after;
            }
            prop_assert_eq!(sum, p.price("m", total).unwrap());
        }
    }
}

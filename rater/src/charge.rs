//! Charge models: how the billing-period total of one meter becomes money.
//!
//! Every model is a pure function `price(total) -> amount` over exact decimals. Tiers apply to
//! the billing-period total (not to a window), and an included allowance is subtracted from
//! that total first. Incremental rating (`price(after) - price(before)`) builds on it.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::RaterError;
use crate::exact::{exact_mul, MAX_PERIOD_AMOUNT, MAX_PERIOD_TOTAL, MAX_PRICE_SCALE};

/// One tier of a tiered model. `up_to` is inclusive; the last tier has none (open-ended).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Upper bound of the tier, inclusive; omitted on the last tier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<Decimal>,
    /// Price per unit in this tier.
    pub unit_price: Decimal,
    /// Fixed amount charged once the tier is reached (default 0).
    #[serde(default)]
    pub flat_fee: Decimal,
}

/// The pricing model of one meter in one plan version.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ChargeModel {
    /// `total x unit_price`.
    PerUnit {
        /// Price per unit.
        unit_price: Decimal,
    },
    /// Each unit priced by the tier it falls in (plus each reached tier's flat fee).
    Graduated {
        /// Tiers in ascending order.
        tiers: Vec<Tier>,
    },
    /// All units priced by the tier the total falls in (plus that tier's flat fee).
    Volume {
        /// Tiers in ascending order.
        tiers: Vec<Tier>,
    },
    /// A price per started block of `package_size` units (rounded up).
    Package {
        /// Units per block.
        package_size: Decimal,
        /// Price per block.
        package_price: Decimal,
    },
}

/// One meter's charge: a model and an allowance of free units per billing period.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Charge {
    /// The meter priced.
    pub meter: String,
    /// Free units per billing period, subtracted before the model applies.
    #[serde(default)]
    pub included: Decimal,
    /// The model.
    #[serde(flatten)]
    pub model: ChargeModel,
    /// ERP item (product) code of this meter's invoice lines; defaults to the meter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
    /// GL revenue account credited with this meter's amounts; defaults to the billing config's
    /// `default_revenue_account`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue_account: Option<String>,
}

/// The amount one tier contributes to a price, for invoice tier breakdowns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierLine {
    /// Tier position (0-based).
    pub tier: usize,
    /// Units priced in this tier.
    pub quantity: Decimal,
    /// Unit price of the tier.
    pub unit_price: Decimal,
    /// Flat fee charged for the tier.
    pub flat_fee: Decimal,
    /// `quantity x unit_price + flat_fee`.
    pub amount: Decimal,
}

fn ceil_div(q: Decimal, size: Decimal) -> Option<Decimal> {
    let rem = q.checked_rem(size)?;
    let whole = (q - rem).checked_div(size)?;
    Some(if rem.is_zero() { whole } else { whole + Decimal::ONE })
}

impl Charge {
    /// Checks prices, tier order and sizes.
    pub fn validate(&self, plan: &str) -> Result<(), RaterError> {
        let bad =
            |reason: String| RaterError::InvalidCharge { plan: plan.to_string(), meter: self.meter.clone(), reason };
        let check_price = |what: &str, p: Decimal| -> Result<(), RaterError> {
            if p.is_sign_negative() && !p.is_zero() {
                return Err(bad(format!("{what} {p} is negative")));
            }
            if p.normalize().scale() > MAX_PRICE_SCALE {
                return Err(bad(format!("{what} {p} has more than {MAX_PRICE_SCALE} fractional digits")));
            }
            Ok(())
        };
        check_price("included", self.included)?;
        match &self.model {
            ChargeModel::PerUnit { unit_price } => check_price("unit_price", *unit_price)?,
            ChargeModel::Graduated { tiers } | ChargeModel::Volume { tiers } => {
                if tiers.is_empty() {
                    return Err(bad("tiers are empty".into()));
                }
                let mut previous = Decimal::ZERO;
                for (i, t) in tiers.iter().enumerate() {
                    check_price("unit_price", t.unit_price)?;
                    check_price("flat_fee", t.flat_fee)?;
                    let last = i + 1 == tiers.len();
                    match (t.up_to, last) {
                        (None, true) => {}
                        (None, false) => {
                            return Err(bad(format!("tier {} has no up_to but is not the last tier", i + 1)))
                        }
                        (Some(u), true) => {
                            return Err(bad(format!("the last tier (up_to {u}) must be open-ended: omit its up_to")));
                        }
                        (Some(u), false) if u <= previous => {
                            return Err(bad(format!(
                                "tiers out of order: tier {} ends at {u}, not above {previous}",
                                i + 1
                            )));
                        }
                        (Some(u), false) => previous = u,
                    }
                }
            }
            ChargeModel::Package { package_size, package_price } => {
                if *package_size <= Decimal::ZERO {
                    return Err(bad(format!("package_size {package_size} must be positive")));
                }
                check_price("package_price", *package_price)?;
            }
        }
        Ok(())
    }

    /// The price of a billing-period total, exact.
    pub fn price(&self, total: Decimal) -> Result<Decimal, RaterError> {
        Ok(self.breakdown(total)?.iter().map(|l| l.amount).sum())
    }

    /// The price of a billing-period total, tier by tier (one line for untiered models).
    pub fn breakdown(&self, total: Decimal) -> Result<Vec<TierLine>, RaterError> {
        let overflow = || RaterError::Overflow { plan: String::new(), meter: self.meter.clone() };
        let mul = |a: Decimal, b: Decimal| exact_mul(a, b).ok_or_else(overflow);
        let billable = (total - self.included).max(Decimal::ZERO);
        let line = |tier, quantity, unit_price, flat_fee| -> Result<TierLine, RaterError> {
            let amount = mul(quantity, unit_price)? + flat_fee;
            Ok(TierLine { tier, quantity, unit_price, flat_fee, amount })
        };
        match &self.model {
            ChargeModel::PerUnit { unit_price } => Ok(vec![line(0, billable, *unit_price, Decimal::ZERO)?]),
            ChargeModel::Graduated { tiers } => {
                let mut lines = Vec::new();
                let mut lower = Decimal::ZERO;
                for (i, t) in tiers.iter().enumerate() {
                    if billable <= lower {
                        break;
                    }
                    let upper = t.up_to.map_or(billable, |u| u.min(billable));
                    lines.push(line(i, upper - lower, t.unit_price, t.flat_fee)?);
                    lower = t.up_to.unwrap_or(billable);
                }
                Ok(lines)
            }
            ChargeModel::Volume { tiers } => {
                if billable.is_zero() {
                    return Ok(Vec::new());
                }
                let i = tiers
                    .iter()
                    .position(|t| t.up_to.is_none_or(|u| billable <= u))
                    .unwrap_or(tiers.len().saturating_sub(1));
                let Some(t) = tiers.get(i) else { return Ok(Vec::new()) };
                Ok(vec![line(i, billable, t.unit_price, t.flat_fee)?])
            }
            ChargeModel::Package { package_size, package_price } => {
                let packages = ceil_div(billable, *package_size).ok_or_else(overflow)?;
                Ok(vec![line(0, packages, *package_price, Decimal::ZERO)?])
            }
        }
    }

    /// The largest period total this charge can price within [`MAX_PERIOD_AMOUNT`] (and at most
    /// [`MAX_PERIOD_TOTAL`]): a conservative bound from the highest unit rate and every flat
    /// fee, so that `price(total)` of any total up to it fits the tables exactly.
    pub fn max_total(&self) -> Decimal {
        let (rate, fees) = match &self.model {
            ChargeModel::PerUnit { unit_price } => (*unit_price, Decimal::ZERO),
            ChargeModel::Graduated { tiers } | ChargeModel::Volume { tiers } => (
                tiers.iter().map(|t| t.unit_price).max().unwrap_or_default(),
                tiers.iter().try_fold(Decimal::ZERO, |a, t| a.checked_add(t.flat_fee)).unwrap_or(MAX_PERIOD_AMOUNT),
            ),
            ChargeModel::Package { package_size, package_price } if *package_size > Decimal::ZERO => {
                (package_price.checked_div(*package_size).unwrap_or(MAX_PERIOD_AMOUNT), *package_price)
            }
            ChargeModel::Package { .. } => (Decimal::ZERO, Decimal::ZERO),
        };
        let room = (MAX_PERIOD_AMOUNT - fees.min(MAX_PERIOD_AMOUNT)).max(Decimal::ZERO);
        let by_amount = if rate <= Decimal::ZERO {
            MAX_PERIOD_TOTAL
        } else {
            room.checked_div(rate).map_or(Decimal::ZERO, |q| q.floor()).saturating_add(self.included)
        };
        by_amount.min(MAX_PERIOD_TOTAL)
    }

    /// The amount of a row that moved the period total from `before` to `after`.
    pub fn rate_delta(&self, before: Decimal, after: Decimal) -> Result<Decimal, RaterError> {
        Ok(self.price(after)? - self.price(before)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_capacity_bounds_are_the_documented_powers_of_ten() {
        assert_eq!(MAX_PERIOD_TOTAL.to_string(), "100000000000000000000");
        assert_eq!(MAX_PERIOD_AMOUNT.to_string(), "1000000000000000000");
    }

    #[test]
    fn every_total_up_to_the_capacity_of_a_charge_prices_within_the_amount_bound() {
        for c in models() {
            let max = c.max_total();
            assert!(max > Decimal::ZERO && max <= MAX_PERIOD_TOTAL, "{max}");
            let price = c.price(max).unwrap();
            assert!(price <= MAX_PERIOD_AMOUNT, "{c:?}: price({max}) = {price}");
        }
        let dear = Charge {
            meter: "m".into(),
            included: d("10"),
            model: ChargeModel::PerUnit { unit_price: d("1000000") },
            item: None,
            revenue_account: None,
        };
        assert_eq!(dear.max_total(), d("1000000000010"));
        assert_eq!(dear.price(dear.max_total()).unwrap(), MAX_PERIOD_AMOUNT);
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn tiers(spec: &[(Option<&str>, &str, &str)]) -> Vec<Tier> {
        spec.iter().map(|(u, p, f)| Tier { up_to: u.map(d), unit_price: d(p), flat_fee: d(f) }).collect()
    }

    fn models() -> Vec<Charge> {
        let t = tiers(&[(Some("100"), "0.10", "0"), (Some("1000"), "0.08", "1"), (None, "0.05", "0")]);
        vec![
            Charge {
                meter: "m".into(),
                included: d("0"),
                model: ChargeModel::PerUnit { unit_price: d("0.0002") },
                item: None,
                revenue_account: None,
            },
            Charge {
                meter: "m".into(),
                included: d("50"),
                model: ChargeModel::Graduated { tiers: t.clone() },
                item: None,
                revenue_account: None,
            },
            Charge {
                meter: "m".into(),
                included: d("0"),
                model: ChargeModel::Volume { tiers: t },
                item: None,
                revenue_account: None,
            },
            Charge {
                meter: "m".into(),
                included: d("10"),
                model: ChargeModel::Package { package_size: d("25"), package_price: d("2.5") },
                item: None,
                revenue_account: None,
            },
        ]
    }

    proptest! {
        #[test]
        fn incremental_amounts_sum_to_the_price_of_the_period_total_for_every_model(
            steps in prop::collection::vec(0u64..500_000, 1..40), seed in any::<u64>()
        ) {
            for charge in models() {
                // Rows arrive in any order: shuffle the steps.
                let mut steps = steps.clone();
                let mut s = seed;
                for i in (1..steps.len()).rev() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                    steps.swap(i, (s >> 33) as usize % (i + 1));
                }
                let mut total = Decimal::ZERO;
                let mut sum = Decimal::ZERO;
                for q in steps {
                    let after = total + Decimal::new(q as i64, 3);
                    let delta = charge.rate_delta(total, after).unwrap();
                    if !matches!(charge.model, ChargeModel::Volume { .. }) {
                        prop_assert!(delta >= Decimal::ZERO, "{:?} gave a negative row amount", charge.model);
                    }
                    sum += delta;
                    total = after;
                }
                let price = charge.price(total).unwrap();
                prop_assert_eq!(sum, price);
                prop_assert!(price >= Decimal::ZERO);
            }
        }
    }

    #[test]
    fn a_graduated_breakdown_lists_each_tier_reached() {
        let c = &models()[1];
        let lines = c.breakdown(d("1250")).unwrap(); // 1200 billable after 50 included
        let summary: Vec<(usize, Decimal, Decimal)> = lines.iter().map(|l| (l.tier, l.quantity, l.amount)).collect();
        assert_eq!(summary, vec![(0, d("100"), d("10")), (1, d("900"), d("73")), (2, d("200"), d("10"))]);
    }
}

//! Price plans from reference data: versions effective from a date, validated at load.

use chrono::{DateTime, Utc};
use meterflow_schemas::parse_instant;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::charge::Charge;
use crate::currency::Currency;
use crate::error::RaterError;
use crate::exact::MAX_PRICE_SCALE;

/// A plan as written in the reference data (`[[plans]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Plan id, referenced by subscriptions.
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ISO 4217 currency of every price in the plan.
    pub currency: String,
    /// Versions; each applies from its `effective_from` until the next one.
    pub versions: Vec<PlanVersionConfig>,
}

/// One version of a plan (`[[plans.versions]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlanVersionConfig {
    /// When this version starts to apply: `YYYY-MM-DD` (midnight UTC) or an RFC 3339 time.
    pub effective_from: String,
    /// Flat fee per billing period, prorated by days for partial periods.
    #[serde(default)]
    pub recurring_fee: Decimal,
    /// Minimum usage spend per billing period; a shortfall is billed as a true-up line.
    #[serde(default)]
    pub minimum_spend: Decimal,
    /// One charge per meter.
    #[serde(default)]
    pub charges: Vec<Charge>,
}

/// A validated plan version.
#[derive(Debug, Clone)]
pub struct PlanVersion {
    /// Start of validity.
    pub effective_from: DateTime<Utc>,
    /// Flat fee per period.
    pub recurring_fee: Decimal,
    /// Minimum spend per period.
    pub minimum_spend: Decimal,
    charges: HashMap<String, Charge>,
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Plan id.
    pub id: String,
    /// Currency of all its amounts.
    pub currency: Currency,
    /// Versions, ascending by `effective_from`.
    pub versions: Vec<PlanVersion>,
}

/// All plans, by id.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    plans: HashMap<String, Plan>,
}

fn check_fee(plan: &str, what: &str, v: Decimal) -> Result<(), RaterError> {
    if v.is_sign_negative() && !v.is_zero() {
        return Err(RaterError::InvalidFee { plan: plan.into(), reason: format!("{what} {v} is negative") });
    }
    if v.normalize().scale() > MAX_PRICE_SCALE {
        return Err(RaterError::InvalidFee {
            plan: plan.into(),
            reason: format!("{what} {v} has more than {MAX_PRICE_SCALE} fractional digits"),
        });
    }
    Ok(())
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
            if p.versions.is_empty() {
                return Err(RaterError::InvalidVersions { plan: p.id.clone(), reason: "no [[plans.versions]]".into() });
            }
            let mut versions = Vec::with_capacity(p.versions.len());
            for v in p.versions {
                let effective_from = parse_instant(&v.effective_from)
                    .ok_or_else(|| RaterError::InvalidDate { plan: p.id.clone(), value: v.effective_from.clone() })?;
                check_fee(&p.id, "recurring_fee", v.recurring_fee)?;
                check_fee(&p.id, "minimum_spend", v.minimum_spend)?;
                let mut charges = HashMap::new();
                for c in v.charges {
                    if !meters.contains(&c.meter.as_str()) {
                        return Err(RaterError::UnknownMeter { plan: p.id.clone(), meter: c.meter });
                    }
                    c.validate(&p.id)?;
                    if charges.contains_key(&c.meter) {
                        return Err(RaterError::DuplicateCharge { plan: p.id.clone(), meter: c.meter });
                    }
                    charges.insert(c.meter.clone(), c);
                }
                if let Some(m) = meters.iter().find(|m| !charges.contains_key(**m)) {
                    return Err(RaterError::UnpricedMeter { plan: p.id.clone(), meter: m.to_string() });
                }
                versions.push(PlanVersion {
                    effective_from,
                    recurring_fee: v.recurring_fee,
                    minimum_spend: v.minimum_spend,
                    charges,
                });
            }
            versions.sort_by_key(|v| v.effective_from);
            if let Some(w) = versions.windows(2).find(|w| w[0].effective_from == w[1].effective_from) {
                return Err(RaterError::InvalidVersions {
                    plan: p.id.clone(),
                    reason: format!(
                        "two versions are effective from {}: versions must not overlap",
                        w[0].effective_from
                    ),
                });
            }
            plans.insert(p.id.clone(), Plan { id: p.id, currency, versions });
        }
        Ok(PriceBook { plans })
    }

    /// The plan with this id.
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.get(id)
    }

    /// The charge of `meter` under the version of plan `plan_id` whose label
    /// ([`Plan::version_label`], as stored in the tables) is `version`; `None` when the plan,
    /// the version or the charge no longer exists.
    pub fn charge_of(&self, plan_id: &str, version: &str, meter: &str) -> Option<&Charge> {
        let plan = self.plan(plan_id)?;
        let index = (0..plan.versions.len()).find(|i| plan.version_label(*i) == version)?;
        plan.versions[index].charge(meter)
    }
}

impl Plan {
    /// Index of the version in force at `t` (none before the first version).
    pub fn version_at(&self, t: DateTime<Utc>) -> Option<usize> {
        self.versions.iter().rposition(|v| v.effective_from <= t)
    }

    /// A stable label of a version: `<plan>@<effective_from date or time>`.
    pub fn version_label(&self, index: usize) -> String {
        match self.versions.get(index) {
            Some(v) if v.effective_from.time() == chrono::NaiveTime::MIN => {
                format!("{}@{}", self.id, v.effective_from.format("%Y-%m-%d"))
            }
            Some(v) => format!("{}@{}", self.id, v.effective_from.to_rfc3339()),
            None => format!("{}@?", self.id),
        }
    }
}

impl PlanVersion {
    /// The charge of `meter`.
    pub fn charge(&self, meter: &str) -> Option<&Charge> {
        self.charges.get(meter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(text: &str) -> Result<PriceBook, RaterError> {
        #[derive(Deserialize)]
        struct F {
            plans: Vec<PlanConfig>,
        }
        let f: F = toml::from_str(text).unwrap();
        PriceBook::new(f.plans, &["api_calls"])
    }

    const GOOD: &str = r#"
[[plans]]
id = "p"
currency = "USD"
[[plans.versions]]
effective_from = "2026-01-01"
charges = [{ meter = "api_calls", model = "per_unit", unit_price = "0.0002" }]
[[plans.versions]]
effective_from = "2026-11-15T12:00:00Z"
charges = [{ meter = "api_calls", model = "graduated", tiers = [{ up_to = "100", unit_price = "0.1" }, { unit_price = "0.05" }] }]
"#;

    #[test]
    fn the_version_in_force_is_the_latest_that_started() {
        let b = book(GOOD).unwrap();
        let p = b.plan("p").unwrap();
        let t = |s| parse_instant(s).unwrap();
        assert_eq!(p.version_at(t("2025-12-31T23:59:59Z")), None);
        assert_eq!(p.version_at(t("2026-01-01")), Some(0));
        assert_eq!(p.version_at(t("2026-11-15T11:59:59Z")), Some(0));
        assert_eq!(p.version_at(t("2026-11-15T12:00:00Z")), Some(1));
        assert_eq!(p.version_label(0), "p@2026-01-01");
        assert_eq!(p.version_label(1), "p@2026-11-15T12:00:00+00:00");
    }

    #[test]
    fn reference_data_mistakes_are_refused_with_a_clear_reason() {
        let cases = [
            (GOOD.replace("2026-11-15T12:00:00Z", "2026-01-01"), "must not overlap"),
            (GOOD.replace("\"USD\"", "\"DOGE\""), "unknown currency"),
            (
                GOOD.replace("meter = \"api_calls\", model = \"per_unit\"", "meter = \"nope\", model = \"per_unit\""),
                "not defined in the config",
            ),
            (GOOD.replace("\"0.0002\"", "\"-0.0002\""), "negative"),
            (GOOD.replace("\"0.0002\"", "\"0.0000000001\""), "more than 9 fractional digits"),
            (
                GOOD.replace(
                    "up_to = \"100\", unit_price = \"0.1\" }, { unit_price",
                    "up_to = \"100\", unit_price = \"0.1\" }, { up_to = \"50\", unit_price = \"0.07\" }, { unit_price",
                ),
                "out of order",
            ),
            (GOOD.replace("{ unit_price = \"0.05\" }", "{ up_to = \"500\", unit_price = \"0.05\" }"), "open-ended"),
            (GOOD.replace("2026-01-01", "January"), "not YYYY-MM-DD"),
        ];
        for (text, want) in cases {
            let e = book(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }
}

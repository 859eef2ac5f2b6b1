//! The catalog as data: records, change sets, the fold of change sets into a catalog, what a
//! change set changes, and the rules that hold between two revisions. Pure: no I/O.

use chrono::{DateTime, Utc};
use meterflow_ingest::CustomerConfig;
use meterflow_rater::PlanConfig;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::{CatalogError, Result};

/// A catalog revision: the stream sequence of the change set that made it (0: empty).
pub type Revision = u64;

/// Customers and plans, as an import file or a change set holds them (`[[customers]]`,
/// `[[plans]]`, in the reference-data format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Records {
    /// Customers, each with the subjects it owns and its subscriptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<CustomerConfig>,
    /// Price plans with their versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<PlanConfig>,
}

impl Records {
    /// True when there is nothing in it.
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty() && self.plans.is_empty()
    }

    /// Refuses a record id given twice (the second would silently win).
    pub fn check_unique(&self, origin: &str) -> Result<()> {
        let twice = |kind: &str, ids: Vec<&str>| -> Result<()> {
            let mut seen = std::collections::HashSet::new();
            match ids.into_iter().find(|id| !seen.insert(*id)) {
                Some(id) => Err(CatalogError::File {
                    path: origin.to_string(),
                    message: format!("{kind} `{id}` is given twice; give each record once"),
                }),
                None => Ok(()),
            }
        };
        twice("customer", self.customers.iter().map(|c| c.id.as_str()).collect())?;
        twice("plan", self.plans.iter().map(|p| p.id.as_str()).collect())
    }
}

/// One change of the catalog, as stored: who made it, when, from what, and the records it puts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSet {
    /// Who made the change (a user name, or the process that imported it).
    pub author: String,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// Where the records came from (a file name, `reference files`, an API call).
    pub source: String,
    /// Why, in the author's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The customers and plans it adds or replaces.
    pub records: Records,
}

/// The catalog as of one revision: customers and plans in the order they first appeared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    customers: Vec<CustomerConfig>,
    plans: Vec<PlanConfig>,
}

/// The kind of a catalog record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A customer.
    Customer,
    /// A price plan.
    Plan,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Customer => "customer",
            Kind::Plan => "plan",
        })
    }
}

/// What a change set does to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A record not in the catalog yet.
    Added { kind: Kind, id: String },
    /// A record replaced; `fields` names the fields whose values differ.
    Changed { kind: Kind, id: String, fields: Vec<String> },
    /// A record given exactly as the catalog holds it.
    Unchanged { kind: Kind, id: String },
}

impl Change {
    /// True unless the record is unchanged.
    pub fn is_change(&self) -> bool {
        !matches!(self, Change::Unchanged { .. })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { kind, id } => write!(f, "+ {kind} {id}"),
            Change::Changed { kind, id, fields } => write!(f, "~ {kind} {id}: {}", fields.join(", ")),
            Change::Unchanged { kind, id } => write!(f, "= {kind} {id} (unchanged)"),
        }
    }
}

/// The top-level fields whose values differ between two records of the same kind.
fn changed_fields<T: Serialize>(old: &T, new: &T) -> Vec<String> {
    let (Ok(serde_json::Value::Object(old)), Ok(serde_json::Value::Object(new))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return vec!["(record)".to_string()];
    };
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().filter(|k| old.get(*k) != new.get(*k)).cloned().collect()
}

fn upsert<T: Clone>(list: &mut Vec<T>, record: &T, id: impl Fn(&T) -> &str) {
    match list.iter_mut().find(|r| id(r) == id(record)) {
        Some(slot) => *slot = record.clone(),
        None => list.push(record.clone()),
    }
}

fn diff_of<T: Serialize + PartialEq>(kind: Kind, old: &[T], new: &[T], id: impl Fn(&T) -> &str) -> Vec<Change> {
    new.iter()
        .map(|record| {
            let id_of = id(record).to_string();
            match old.iter().find(|o| id(o) == id(record)) {
                None => Change::Added { kind, id: id_of },
                Some(o) if o == record => Change::Unchanged { kind, id: id_of },
                Some(o) => Change::Changed { kind, id: id_of, fields: changed_fields(o, record) },
            }
        })
        .collect()
}

impl Catalog {
    /// The catalog of a sequence of change sets, applied in order.
    pub fn fold<'a>(changes: impl IntoIterator<Item = &'a ChangeSet>) -> Catalog {
        let mut catalog = Catalog::default();
        for c in changes {
            catalog.apply(&c.records);
        }
        catalog
    }

    /// Applies `records`: each replaces the record with its id, or is added at the end.
    pub fn apply(&mut self, records: &Records) {
        for c in &records.customers {
            upsert(&mut self.customers, c, |c| c.id.as_str());
        }
        for p in &records.plans {
            upsert(&mut self.plans, p, |p| p.id.as_str());
        }
    }

    /// The catalog with `records` applied.
    pub fn with(&self, records: &Records) -> Catalog {
        let mut next = self.clone();
        next.apply(records);
        next
    }

    /// What applying `records` would do to each of them.
    pub fn diff(&self, records: &Records) -> Vec<Change> {
        let mut changes = diff_of(Kind::Customer, &self.customers, &records.customers, |c| c.id.as_str());
        changes.extend(diff_of(Kind::Plan, &self.plans, &records.plans, |p| p.id.as_str()));
        changes
    }

    /// Customers in the order they first appeared.
    pub fn customers(&self) -> &[CustomerConfig] {
        &self.customers
    }

    /// Plans in the order they first appeared.
    pub fn plans(&self) -> &[PlanConfig] {
        &self.plans
    }

    /// The customer with this id.
    pub fn customer(&self, id: &str) -> Option<&CustomerConfig> {
        self.customers.iter().find(|c| c.id == id)
    }

    /// The plan with this id.
    pub fn plan(&self, id: &str) -> Option<&PlanConfig> {
        self.plans.iter().find(|p| p.id == id)
    }

    /// Everything in it, as records (the format `catalog apply` reads back).
    pub fn records(&self) -> Records {
        Records { customers: self.customers.clone(), plans: self.plans.clone() }
    }
}

fn rule(kind: Kind, id: &str, rule: String) -> CatalogError {
    CatalogError::Rule { record: format!("{kind} `{id}`"), rule }
}

/// The rules between a revision and the next, on top of the checks every revision passes on
/// its own: what usage already counted and billed depends on may not change under it.
///
/// - A plan keeps its currency and every version it had (by `effective_from`): windows and
///   period totals are keyed by plan version, and invoices of past periods name them. Prices
///   of an existing version may be corrected (then `meterflow rerate` the periods concerned).
/// - A customer keeps its currency and its billing anchor day: its billing periods and their
///   totals were computed with them.
pub fn check_change(old: &Catalog, new: &Catalog) -> Result<()> {
    for before in old.plans() {
        let Some(after) = new.plan(&before.id) else {
            return Err(rule(Kind::Plan, &before.id, "a plan cannot be removed".into()));
        };
        if after.currency != before.currency {
            return Err(rule(
                Kind::Plan,
                &before.id,
                format!(
                    "its currency cannot change ({} to {}): usage was priced in {}; create a new plan and move the \
                     subscriptions to it",
                    before.currency, after.currency, before.currency
                ),
            ));
        }
        for v in &before.versions {
            if !after.versions.iter().any(|a| a.effective_from == v.effective_from) {
                return Err(rule(
                    Kind::Plan,
                    &before.id,
                    format!(
                        "the version effective from {} would be removed; versions are kept once usage may have \
                         been priced by them (add a version, or correct its prices and run `meterflow rerate`)",
                        v.effective_from
                    ),
                ));
            }
        }
    }
    for before in old.customers() {
        let Some(after) = new.customer(&before.id) else {
            return Err(rule(Kind::Customer, &before.id, "a customer cannot be removed".into()));
        };
        if after.currency != before.currency {
            return Err(rule(
                Kind::Customer,
                &before.id,
                format!(
                    "its currency cannot change ({} to {}): its usage was priced and invoiced in {}",
                    before.currency, after.currency, before.currency
                ),
            ));
        }
        if after.billing_anchor_day != before.billing_anchor_day {
            return Err(rule(
                Kind::Customer,
                &before.id,
                format!(
                    "its billing_anchor_day cannot change ({} to {}): its billing periods were cut on day {}",
                    before.billing_anchor_day, after.billing_anchor_day, before.billing_anchor_day
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn records(text: &str) -> Records {
        toml::from_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    const BASE: &str = r#"
        [[customers]]
        id = "acme"
        subjects = ["acme"]
        currency = "USD"
        legal_entity = "us"
        erp_customer_id = "C1"
        plan = "std"

        [[plans]]
        id = "std"
        currency = "USD"
        [[plans.versions]]
        effective_from = "2026-01-01"
        charges = [{ meter = "api_calls", model = "per_unit", unit_price = "0.01" }]
    "#;

    fn change(r: Records) -> ChangeSet {
        ChangeSet { author: "test".into(), at: DateTime::UNIX_EPOCH, source: "test".into(), comment: None, records: r }
    }

    #[test]
    fn change_sets_fold_in_order_and_a_record_replaces_the_one_with_its_id() {
        let first = change(records(BASE));
        let second = change(records(
            r#"
            [[customers]]
            id = "globex"
            subjects = ["globex"]
            currency = "USD"
            legal_entity = "us"
            erp_customer_id = "C2"
            plan = "std"

            [[customers]]
            id = "acme"
            name = "Acme Corp"
            subjects = ["acme", "acme-eu"]
            currency = "USD"
            legal_entity = "us"
            erp_customer_id = "C1"
            plan = "std"
            "#,
        ));
        let catalog = Catalog::fold([&first, &second]);
        let ids: Vec<&str> = catalog.customers().iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["acme", "globex"], "first-appearance order is kept");
        assert_eq!(catalog.customer("acme").map(|c| c.subjects.len()), Some(2));
        assert_eq!(catalog.plans().len(), 1);
    }

    #[test]
    fn a_diff_says_which_records_are_added_changed_or_unchanged_and_which_fields_differ() {
        let catalog = Catalog::fold([&change(records(BASE))]);
        let mut next = records(BASE);
        next.customers[0].name = Some("Acme".into());
        next.customers[0].subjects.push("acme-eu".into());
        next.customers.push(CustomerConfig { id: "initech".into(), ..next.customers[0].clone() });
        let diff: Vec<String> = catalog.diff(&next).iter().map(ToString::to_string).collect();
        assert_eq!(diff, ["~ customer acme: name, subjects", "+ customer initech", "= plan std (unchanged)"]);
    }

    #[test]
    fn a_change_may_not_remove_a_plan_version_or_change_a_currency_or_an_anchor_day() {
        let old = Catalog::fold([&change(records(BASE))]);
        let mut r = records(BASE);
        r.plans[0].versions[0].effective_from = "2026-02-01".into();
        let e = check_change(&old, &old.with(&r)).unwrap_err().to_string();
        assert!(e.starts_with("plan `std`: the version effective from 2026-01-01 would be removed"), "{e}");

        let mut r = records(BASE);
        r.customers[0].billing_anchor_day = 5;
        let e = check_change(&old, &old.with(&r)).unwrap_err().to_string();
        assert!(e.starts_with("customer `acme`: its billing_anchor_day cannot change (1 to 5)"), "{e}");

        let mut r = records(BASE);
        r.plans[0].currency = "EUR".into();
        let e = check_change(&old, &old.with(&r)).unwrap_err().to_string();
        assert!(e.starts_with("plan `std`: its currency cannot change (USD to EUR)"), "{e}");

        let mut r = records(BASE);
        r.plans[0].versions[0].charges[0].included = 100.into();
        assert!(check_change(&old, &old.with(&r)).is_ok(), "a price correction of a kept version is allowed");
    }

    #[test]
    fn a_record_given_twice_in_one_file_is_refused() {
        let mut r = records(BASE);
        r.customers.push(r.customers[0].clone());
        let e = r.check_unique("accounts.toml").unwrap_err().to_string();
        assert_eq!(e, "accounts.toml: customer `acme` is given twice; give each record once");
    }

    #[test]
    fn a_change_set_round_trips_through_json_exactly() {
        let c = change(records(BASE));
        let json = serde_json::to_vec(&c).unwrap_or_default();
        let back: ChangeSet = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, c);
    }
}

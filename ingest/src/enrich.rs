//! Enrichment: usage subject → customer, from reference data, with the publish-subject rule
//! (a customer bound to `publish_subjects` takes usage only from those NATS subjects).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

use meterflow_schemas::RejectReason;

use crate::{IngestError, Result};

/// A customer as written in the reference data (`customers.toml`, `[[customers]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CustomerConfig {
    /// Stable customer id (used in tables and invoices).
    pub id: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The event subjects that belong to this customer: a name (for good), or a table with
    /// the time its ownership starts and ends (`{ subject = "x", from = "2026-12-01" }`), so a
    /// subject can move from one customer to another at a time.
    pub subjects: Vec<SubjectConfig>,
    /// Billing currency (ISO 4217); must equal the plan's currency.
    pub currency: String,
    /// The legal entity that bills this customer.
    pub legal_entity: String,
    /// The customer's id in the ERP.
    pub erp_customer_id: String,
    /// The price plan the customer is on from the beginning of time (shorthand for one
    /// open-ended subscription). Use `subscriptions` for plan changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    /// Effective-dated subscriptions (`[[customers.subscriptions]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubscriptionConfig>,
    /// Day of the month billing periods start on (1 to 28; default 1, calendar months).
    #[serde(default = "default_anchor_day")]
    pub billing_anchor_day: u32,
    /// NATS subjects (patterns with `*` and `>`) this customer's usage may arrive on, for
    /// example `["usage.tenant-a.>"]`. Empty: any usage subject. With NATS permissions that let
    /// each tenant publish only to its own subjects, this stops one tenant from publishing
    /// events that name another tenant's customer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish_subjects: Vec<String>,
    /// Free attributes (segment, region, sales owner, ...), kept with the customer for
    /// reporting; meterflow does not interpret them.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// A usage subject a customer owns: for good, or over `[from, until)`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SubjectConfig {
    /// Owned for good.
    Always(String),
    /// Owned from `from` (open when absent) until `until` (open when absent): `YYYY-MM-DD`
    /// (midnight UTC) or RFC 3339 times, compared with the event time.
    During {
        /// The usage subject.
        subject: String,
        /// First instant owned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        /// First instant no longer owned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
}

impl SubjectConfig {
    /// The usage subject.
    pub fn name(&self) -> &str {
        match self {
            SubjectConfig::Always(s) | SubjectConfig::During { subject: s, .. } => s,
        }
    }
}

impl From<&str> for SubjectConfig {
    fn from(s: &str) -> Self {
        SubjectConfig::Always(s.to_string())
    }
}

impl From<String> for SubjectConfig {
    fn from(s: String) -> Self {
        SubjectConfig::Always(s)
    }
}

/// Whether the NATS `subject` matches `pattern` (`*` one token, `>` one or more trailing tokens).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

impl CustomerConfig {
    /// Whether usage for this customer may arrive on the NATS `subject`.
    pub fn may_publish_on(&self, subject: &str) -> bool {
        self.publish_subjects.is_empty() || self.publish_subjects.iter().any(|p| subject_matches(p, subject))
    }
}

const fn default_anchor_day() -> u32 {
    1
}

/// A subscription as written in the reference data: a plan over `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionConfig {
    /// Plan id.
    pub plan: String,
    /// First day (`YYYY-MM-DD`, midnight UTC) or instant (RFC 3339) covered; open when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// First day or instant no longer covered; open when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// A customer, shared cheaply between events.
pub type Customer = Arc<CustomerConfig>;

/// One customer's ownership of a subject over `[from, until)` (open ends: `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ownership {
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    customer: usize,
}

impl Ownership {
    fn covers(&self, t: DateTime<Utc>) -> bool {
        self.from.is_none_or(|f| f <= t) && self.until.is_none_or(|u| t < u)
    }
}

fn when(value: &Option<String>) -> std::result::Result<Option<DateTime<Utc>>, String> {
    value
        .as_deref()
        .map(|v| {
            meterflow_schemas::parse_instant(v).ok_or_else(|| format!("{v:?} is not YYYY-MM-DD or an RFC 3339 time"))
        })
        .transpose()
}

/// Subject → customer lookup.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Usage subject → who owns it when, ordered by start (the intervals do not overlap).
    by_subject: HashMap<String, Vec<Ownership>>,
    customers: Vec<Customer>,
}

impl Directory {
    /// Validates customers: ids unique and non-empty, every subject owned by one customer.
    pub fn new(customers: Vec<CustomerConfig>, origin: &str) -> Result<Self> {
        let err = |message: String| IngestError::Reference { path: origin.to_string(), message };
        let mut dir = Directory::default();
        for c in customers {
            for (field, value) in [
                ("id", &c.id),
                ("currency", &c.currency),
                ("legal_entity", &c.legal_entity),
                ("erp_customer_id", &c.erp_customer_id),
            ] {
                if value.trim().is_empty() {
                    return Err(err(format!("customer {:?}: `{field}` is empty", c.id)));
                }
            }
            if dir.customers.iter().any(|o| o.id == c.id) {
                return Err(err(format!("customer `{}` is defined twice", c.id)));
            }
            if !(1..=28).contains(&c.billing_anchor_day) {
                return Err(err(format!(
                    "customer `{}`: billing_anchor_day {} must be between 1 and 28",
                    c.id, c.billing_anchor_day
                )));
            }
            if c.subjects.is_empty() {
                return Err(err(format!("customer `{}` has no subjects", c.id)));
            }
            let customer = Arc::new(c);
            let index = dir.customers.len();
            for s in &customer.subjects {
                let (from, until) = match s {
                    SubjectConfig::Always(_) => (None, None),
                    SubjectConfig::During { from, until, .. } => {
                        let bad = |e: String| err(format!("customer `{}`: subject `{}`: {e}", customer.id, s.name()));
                        (when(from).map_err(bad)?, when(until).map_err(bad)?)
                    }
                };
                if let (Some(f), Some(u)) = (from, until) {
                    if u <= f {
                        return Err(err(format!(
                            "customer `{}`: subject `{}` is owned until {u}, not after it starts ({f})",
                            customer.id,
                            s.name()
                        )));
                    }
                }
                let owned = Ownership { from, until, customer: index };
                let list = dir.by_subject.entry(s.name().to_string()).or_default();
                if let Some(other) = list.iter().find(|o| overlap(o, &owned)) {
                    let other = &dir.customers.get(other.customer).map_or(customer.id.as_str(), |c| c.id.as_str());
                    return Err(err(format!(
                        "subject `{}` belongs to both `{other}` and `{}` at the same time; give each owner a \
                         `from`/`until` that do not overlap",
                        s.name(),
                        customer.id
                    )));
                }
                list.push(owned);
                list.sort_by_key(|o| o.from);
            }
            dir.customers.push(customer);
        }
        Ok(dir)
    }

    /// The customer owning `subject` now, or last (for display; usage is enriched by its time).
    pub fn lookup(&self, subject: &str) -> Option<&Customer> {
        let owners = self.by_subject.get(subject)?;
        let now = Utc::now();
        let owner = owners.iter().find(|o| o.covers(now)).or(owners.last())?;
        self.customers.get(owner.customer)
    }

    /// The customer owning `subject` at `t`.
    pub fn lookup_at(&self, subject: &str, t: DateTime<Utc>) -> Option<&Customer> {
        let owner = self.by_subject.get(subject)?.iter().find(|o| o.covers(t))?;
        self.customers.get(owner.customer)
    }

    /// The enrichment rule: the position (in file order) of the customer whose usage an event
    /// for usage subject `subject` at event time `time`, published on NATS subject
    /// `message_subject`, is; or the reject reason and detail (`unknown_subject`,
    /// `subject_not_allowed`).
    pub fn enrich(
        &self,
        subject: &str,
        time: DateTime<Utc>,
        message_subject: &str,
    ) -> std::result::Result<usize, (RejectReason, String)> {
        let Some(owners) = self.by_subject.get(subject) else {
            return Err((RejectReason::UnknownSubject, format!("subject {subject:?} maps to no customer")));
        };
        let owner = owners.iter().find(|o| o.covers(time));
        let Some((index, customer)) = owner.and_then(|o| Some((o.customer, self.customers.get(o.customer)?))) else {
            return Err((
                RejectReason::UnknownSubject,
                format!("subject {subject:?} has no owner at {}", time.to_rfc3339()),
            ));
        };
        if !customer.may_publish_on(message_subject) {
            let detail = format!(
                "usage of customer {} may only arrive on {}; this message came on {message_subject}",
                customer.id,
                customer.publish_subjects.join(", "),
            );
            return Err((RejectReason::SubjectNotAllowed, detail));
        }
        Ok(index)
    }

    /// All customers in file order.
    pub fn customers(&self) -> &[Customer] {
        &self.customers
    }
}

/// Whether two ownerships of one subject share an instant.
fn overlap(a: &Ownership, b: &Ownership) -> bool {
    let starts_before_end = |x: &Ownership, y: &Ownership| match (x.from, y.until) {
        (Some(f), Some(u)) => f < u,
        _ => true,
    };
    starts_before_end(a, b) && starts_before_end(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(id: &str, subjects: &[&str]) -> CustomerConfig {
        CustomerConfig {
            id: id.into(),
            name: None,
            subjects: subjects.iter().map(|s| SubjectConfig::from(*s)).collect(),
            currency: "EUR".into(),
            legal_entity: "meterflow-eu".into(),
            erp_customer_id: format!("ERP-{id}"),
            plan: Some("p".into()),
            subscriptions: vec![],
            billing_anchor_day: 1,
            publish_subjects: vec![],
            attributes: Default::default(),
        }
    }

    #[test]
    fn nats_subject_patterns_match_like_the_server() {
        assert!(subject_matches("usage.tenant-a.>", "usage.tenant-a.x"));
        assert!(subject_matches("usage.tenant-a.>", "usage.tenant-a.x.y"));
        assert!(!subject_matches("usage.tenant-a.>", "usage.tenant-a"));
        assert!(!subject_matches("usage.tenant-a.>", "usage.tenant-b.x"));
        assert!(subject_matches("usage.*.api", "usage.t.api"));
        assert!(!subject_matches("usage.*.api", "usage.t.api.x"));
        assert!(subject_matches("usage.a", "usage.a") && !subject_matches("usage.a", "usage.ab"));
        let mut c = customer("a", &["a"]);
        assert!(c.may_publish_on("usage.anything"));
        c.publish_subjects = vec!["usage.tenant-a.>".into()];
        assert!(c.may_publish_on("usage.tenant-a.1") && !c.may_publish_on("usage.tenant-b.1"));
    }

    #[test]
    fn enrichment_gives_the_customer_position_or_the_reject_reason_and_its_detail() {
        let mut bound = customer("globex", &["globex", "globex-eu"]);
        bound.publish_subjects = vec!["usage.globex.>".into()];
        let d = Directory::new(vec![customer("acme", &["acme"]), bound], "customers.toml").unwrap();
        let t = DateTime::UNIX_EPOCH;
        assert_eq!(d.enrich("acme", t, "usage.anything"), Ok(0));
        assert_eq!(d.enrich("globex-eu", t, "usage.globex.eu"), Ok(1));
        let (reason, detail) = d.enrich("initech", t, "usage.initech").unwrap_err();
        assert_eq!(
            (reason, detail.as_str()),
            (RejectReason::UnknownSubject, "subject \"initech\" maps to no customer")
        );
        let (reason, detail) = d.enrich("globex", t, "usage.acme").unwrap_err();
        assert_eq!(reason, RejectReason::SubjectNotAllowed);
        assert!(detail.contains("usage.globex.>") && detail.contains("usage.acme"), "{detail}");
    }

    #[test]
    fn every_subject_of_a_customer_resolves_to_it() {
        let d = Directory::new(vec![customer("globex", &["globex", "globex-eu"])], "customers.toml").unwrap();
        assert_eq!(d.lookup("globex-eu").unwrap().id, "globex");
        assert!(d.lookup("initech").is_none());
    }

    #[test]
    fn a_subject_claimed_by_two_customers_is_refused() {
        let e = Directory::new(vec![customer("a", &["x"]), customer("b", &["x"])], "customers.toml").unwrap_err();
        assert!(e.to_string().contains("subject `x` belongs to both `a` and `b` at the same time"), "{e}");
    }

    fn during(subject: &str, from: Option<&str>, until: Option<&str>) -> SubjectConfig {
        SubjectConfig::During { subject: subject.into(), from: from.map(Into::into), until: until.map(Into::into) }
    }

    #[test]
    fn a_subject_moves_from_one_customer_to_another_at_a_time_by_event_time() {
        let mut a = customer("a", &[]);
        a.subjects = vec![during("shared", None, Some("2026-12-01"))];
        let mut b = customer("b", &[]);
        b.subjects = vec![during("shared", Some("2026-12-01"), None)];
        let d = Directory::new(vec![a, b], "customers.toml").unwrap();
        let at = |t: &str| meterflow_schemas::parse_instant(t).unwrap();
        assert_eq!(d.enrich("shared", at("2026-11-30T23:59:59Z"), "usage.x"), Ok(0));
        assert_eq!(d.enrich("shared", at("2026-12-01"), "usage.x"), Ok(1));
        assert_eq!(d.lookup_at("shared", at("2026-11-02")).map(|c| c.id.as_str()), Some("a"));

        let mut early = customer("c", &[]);
        early.subjects = vec![during("solo", Some("2026-12-01"), None)];
        let d = Directory::new(vec![early], "customers.toml").unwrap();
        let (reason, detail) = d.enrich("solo", at("2026-11-01"), "usage.x").unwrap_err();
        assert_eq!(reason, RejectReason::UnknownSubject);
        assert!(detail.contains("has no owner at 2026-11-01"), "{detail}");
    }

    #[test]
    fn overlapping_or_empty_ownerships_are_refused_and_subjects_read_as_names_or_tables() {
        let mut a = customer("a", &[]);
        a.subjects = vec![during("shared", None, Some("2026-12-02"))];
        let mut b = customer("b", &[]);
        b.subjects = vec![during("shared", Some("2026-12-01"), None)];
        let e = Directory::new(vec![a, b], "c.toml").unwrap_err().to_string();
        assert!(e.contains("subject `shared` belongs to both `a` and `b` at the same time"), "{e}");
        let mut c = customer("c", &[]);
        c.subjects = vec![during("x", Some("2026-12-02"), Some("2026-12-01"))];
        assert!(Directory::new(vec![c], "c.toml").unwrap_err().to_string().contains("not after it starts"));
        let parsed: Vec<SubjectConfig> =
            toml::from_str::<toml::Table>(r#"s = ["a", { subject = "b", from = "2026-12-01" }]"#).unwrap()["s"]
                .clone()
                .try_into()
                .unwrap();
        assert_eq!(parsed, [SubjectConfig::from("a"), during("b", Some("2026-12-01"), None)]);
    }
}

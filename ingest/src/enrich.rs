//! Enrichment: usage subject → customer, from reference data, with the publish-subject rule
//! (a customer bound to `publish_subjects` takes usage only from those NATS subjects).

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
    /// The event subjects that belong to this customer.
    pub subjects: Vec<String>,
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

/// Subject → customer lookup.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Usage subject → position in `customers`.
    by_subject: HashMap<String, usize>,
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
                if let Some(other) = dir.by_subject.insert(s.clone(), index) {
                    let other = &dir.customers[other].id;
                    return Err(err(format!("subject `{s}` belongs to both `{other}` and `{}`", customer.id)));
                }
            }
            dir.customers.push(customer);
        }
        Ok(dir)
    }

    /// The customer owning `subject`.
    pub fn lookup(&self, subject: &str) -> Option<&Customer> {
        self.by_subject.get(subject).and_then(|&i| self.customers.get(i))
    }

    /// The enrichment rule: the position (in file order) of the customer whose usage an event
    /// for usage subject `subject`, published on NATS subject `message_subject`, is; or the
    /// reject reason and detail (`unknown_subject`, `subject_not_allowed`).
    pub fn enrich(&self, subject: &str, message_subject: &str) -> std::result::Result<usize, (RejectReason, String)> {
        let Some((index, customer)) = self.by_subject.get(subject).and_then(|&i| Some((i, self.customers.get(i)?)))
        else {
            return Err((RejectReason::UnknownSubject, format!("subject {subject:?} maps to no customer")));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(id: &str, subjects: &[&str]) -> CustomerConfig {
        CustomerConfig {
            id: id.into(),
            name: None,
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            currency: "EUR".into(),
            legal_entity: "meterflow-eu".into(),
            erp_customer_id: format!("ERP-{id}"),
            plan: Some("p".into()),
            subscriptions: vec![],
            billing_anchor_day: 1,
            publish_subjects: vec![],
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
        assert_eq!(d.enrich("acme", "usage.anything"), Ok(0));
        assert_eq!(d.enrich("globex-eu", "usage.globex.eu"), Ok(1));
        let (reason, detail) = d.enrich("initech", "usage.initech").unwrap_err();
        assert_eq!(
            (reason, detail.as_str()),
            (RejectReason::UnknownSubject, "subject \"initech\" maps to no customer")
        );
        let (reason, detail) = d.enrich("globex", "usage.acme").unwrap_err();
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
        assert!(e.to_string().contains("subject `x` belongs to both `a` and `b`"), "{e}");
    }
}

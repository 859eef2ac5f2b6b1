//! Subscriptions: which plan a customer is on, and when.

use chrono::{DateTime, Utc};

use crate::plan::{Plan, PriceBook};

/// A customer's subscription to a plan over `[start, end)`; `None` bounds are open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Plan id.
    pub plan: String,
    /// First instant covered (open when `None`).
    pub start: Option<DateTime<Utc>>,
    /// First instant no longer covered (open when `None`).
    pub end: Option<DateTime<Utc>>,
}

impl Subscription {
    /// True when `t` falls in `[start, end)`.
    pub fn covers(&self, t: DateTime<Utc>) -> bool {
        self.start.is_none_or(|s| s <= t) && self.end.is_none_or(|e| t < e)
    }
}

/// Checks that subscriptions are well-formed and do not overlap.
pub fn check_subscriptions(subs: &[Subscription]) -> Result<(), String> {
    if subs.is_empty() {
        return Err("has no plan: set `plan` or add [[customers.subscriptions]]".into());
    }
    for s in subs {
        if let (Some(a), Some(b)) = (s.start, s.end) {
            if b <= a {
                return Err(format!("subscription to `{}` ends ({b}) before it starts ({a})", s.plan));
            }
        }
    }
    for (i, a) in subs.iter().enumerate() {
        for b in &subs[i + 1..] {
            let a_before_b = matches!((a.end, b.start), (Some(e), Some(s)) if e <= s);
            let b_before_a = matches!((b.end, a.start), (Some(e), Some(s)) if e <= s);
            if !a_before_b && !b_before_a {
                return Err(format!("subscriptions to `{}` and `{}` overlap", a.plan, b.plan));
            }
        }
    }
    Ok(())
}

/// The plan and version index in force for a customer at `t`, if any.
pub fn pricing_at<'a>(book: &'a PriceBook, subs: &[Subscription], t: DateTime<Utc>) -> Option<(&'a Plan, usize)> {
    let sub = subs.iter().find(|s| s.covers(t))?;
    let plan = book.plan(&sub.plan)?;
    Some((plan, plan.version_at(t)?))
}

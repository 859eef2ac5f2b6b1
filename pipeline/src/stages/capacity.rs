//! The capacity check: every billing-period total stays within what its plan version can rate
//! exactly.

use meterflow_aggregator::{Aggregator, EventRef};
use meterflow_rater::{Period, PeriodTotals};
use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::Arc;

use super::Candidate;
use crate::config::Reference;

/// A billing-period total as the capacity check keys it: customer (index), meter (index), plan
/// version label, period start (Unix seconds).
pub(super) type LiveKey = (usize, usize, Arc<str>, i64);

/// Keeps every billing-period total within what its plan version can rate exactly (rater's
/// `Charge::max_total`): an event whose addition would pass it is rejected as
/// `value_out_of_range`. The totals it compares are the sums of the windows' current values,
/// which depend only on the events added so far in stream order, not on where commits fell: a
/// replay decides every event as the first pass did.
#[derive(Debug, Default)]
pub(super) struct Capacity {
    /// Every billing-period total as it stands with everything added so far (committed totals
    /// plus window changes not yet flushed).
    live: HashMap<LiveKey, Decimal>,
    /// The largest total each plan version can rate exactly, per meter.
    limits: HashMap<(Arc<str>, usize), Decimal>,
}

impl Capacity {
    /// The limits of every subscribed plan version, and the committed totals.
    pub(super) fn new(
        reference: &Reference,
        pricing_labels: &HashMap<String, Vec<Arc<str>>>,
        customer_index: &HashMap<String, usize>,
        totals: &PeriodTotals,
    ) -> Capacity {
        let mut capacity = Capacity::default();
        let meter_index = |name: &str| reference.meters.configs().iter().position(|m| m.name == name);
        for (plan_id, labels) in pricing_labels {
            let Some(plan) = reference.prices.plan(plan_id) else { continue };
            for (v, label) in labels.iter().enumerate() {
                for (m, meter) in reference.meters.configs().iter().enumerate() {
                    let limit = plan.versions.get(v).and_then(|pv| pv.charge(&meter.name)).map(|c| c.max_total());
                    capacity.limits.insert((label.clone(), m), limit.unwrap_or(meterflow_rater::MAX_PERIOD_TOTAL));
                }
            }
        }
        for (k, total) in totals.entries() {
            let (Some(c), Some(m), Some(p)) =
                (customer_index.get(&k.customer_id).copied(), meter_index(&k.meter), Period::parse(&k.period))
            else {
                continue;
            };
            let label = pricing_labels
                .values()
                .flatten()
                .find(|l| l.as_ref() == k.pricing)
                .cloned()
                .unwrap_or_else(|| Arc::from(k.pricing.as_str()));
            capacity.live.insert((c, m, label, p.start.timestamp()), total);
        }
        capacity
    }

    /// The period-total changes `c`'s measurements would make, or why they do not fit.
    pub(super) fn check(
        &self,
        agg: &Aggregator,
        customer: &meterflow_ingest::Customer,
        c: &Candidate,
        event: EventRef<'_>,
    ) -> Result<Vec<(LiveKey, Decimal)>, String> {
        let pricing = &c.pricing;
        let mut changes = Vec::with_capacity(c.measurements.len());
        for m in &c.measurements {
            let change = agg.change_if_added(&customer.id, &c.event.subject, pricing, m, event);
            if change.is_zero() {
                continue;
            }
            let start = chrono::DateTime::from_timestamp(m.window_start, 0).unwrap_or_default();
            let period = Period::containing(start, customer.billing_anchor_day);
            let key = (c.customer, m.meter, pricing.clone(), period.map_or(i64::MIN, |p| p.start.timestamp()));
            let limit =
                self.limits.get(&(pricing.clone(), m.meter)).copied().unwrap_or(meterflow_rater::MAX_PERIOD_TOTAL);
            let total = self.live.get(&key).copied().unwrap_or_default();
            match total.checked_add(change) {
                Some(after) if after <= limit => changes.push((key, change)),
                _ => {
                    return Err(format!(
                        "adding {change} to meter {} of customer {} would take its {} total past {limit}, the most \
                         plan version {pricing} can rate exactly (now {total})",
                        agg.meters().configs()[m.meter].name,
                        customer.id,
                        period.map_or_else(|| "billing-period".to_string(), |p| p.label()),
                    ))
                }
            }
        }
        Ok(changes)
    }

    /// Takes in the changes of an accepted event (as [`Capacity::check`] returned them).
    pub(super) fn apply(&mut self, changes: Vec<(LiveKey, Decimal)>) {
        for (key, change) in changes {
            *self.live.entry(key).or_default() += change;
        }
    }
}

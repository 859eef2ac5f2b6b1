//! Rating: window deltas become summary rows worth the change each makes to the price of its
//! billing-period total under the plan version in force.

use anyhow::{Context, Result};
use meterflow_aggregator::WindowDelta;
use meterflow_rater::{Period, TotalKey};
use meterflow_sink::{ClosedPeriod, RowKind, SummaryRow};
use std::collections::BTreeMap;

use super::Stages;

impl Stages {
    /// Flushes the window deltas accumulated since the last call and rates them into summary
    /// rows (what a commit writes), as of `revision` (the last stream sequence covered).
    pub fn flush_and_rate(
        &mut self,
        revision: u64,
        closed: &BTreeMap<String, ClosedPeriod>,
    ) -> Result<Vec<SummaryRow>> {
        let deltas = self.agg.flush();
        self.rate(deltas, revision, closed)
    }

    /// The billing period of a window for its customer.
    pub fn period_of(&self, d: &WindowDelta) -> Result<Period> {
        let anchor = self
            .customer_index
            .get(&d.key.customer_id)
            .and_then(|i| self.reference.directory.customers().get(*i))
            .map_or(1, |c| c.billing_anchor_day);
        Period::containing(d.window_start, anchor).context("window outside the calendar")
    }

    /// Moves the billing-period totals by each delta; returns (before, after, period) per delta.
    pub fn advance_totals(
        &mut self,
        deltas: &[WindowDelta],
    ) -> Result<Vec<(rust_decimal::Decimal, rust_decimal::Decimal, String)>> {
        let mut out = Vec::with_capacity(deltas.len());
        for d in deltas {
            let period = self.period_of(d)?.label();
            let key = TotalKey {
                customer_id: d.key.customer_id.clone(),
                meter: self.reference.meters.configs()[d.key.meter].name.clone(),
                pricing: d.key.pricing.clone(),
                period: period.clone(),
            };
            let (before, after) = self.totals.advance(key, d.quantity()).context(
                "a billing-period total passed what exact decimals hold (the capacity check should prevent it)",
            )?;
            self.seen_periods.insert(period.clone());
            out.push((before, after, period));
        }
        Ok(out)
    }

    /// Rates window deltas into summary rows: each row is worth the change it makes to the
    /// price of its billing-period total under the plan version in force.
    pub fn rate(
        &mut self,
        deltas: Vec<WindowDelta>,
        revision: u64,
        closed: &BTreeMap<String, ClosedPeriod>,
    ) -> Result<Vec<SummaryRow>> {
        let moves = self.advance_totals(&deltas)?;
        let mut rows = Vec::with_capacity(deltas.len());
        for (d, (before, after, period)) in deltas.into_iter().zip(moves) {
            let row_kind = if closed.contains_key(&period) {
                RowKind::Adjustment
            } else if d.late {
                RowKind::Late
            } else {
                RowKind::Usage
            };
            let customer_idx = self
                .customer_index
                .get(&d.key.customer_id)
                .copied()
                .context("customer vanished from reference data")?;
            let customer = &self.reference.directory.customers()[customer_idx];
            let (plan_id, version) =
                self.pricing_index.get(&d.key.pricing).context("plan version vanished from reference data")?;
            let plan = self.reference.prices.plan(plan_id).context("plan vanished from reference data")?;
            let meter = &self.reference.meters.configs()[d.key.meter].name;
            let charge = plan
                .versions
                .get(*version)
                .and_then(|v| v.charge(meter))
                .with_context(|| format!("plan version {} does not price {meter}", d.key.pricing))?;
            let amount = charge.rate_delta(before, after)?;
            rows.push(SummaryRow {
                customer_id: customer.id.clone(),
                subject: d.key.subject.clone(),
                meter: meter.clone(),
                dimensions: d.key.dimensions.clone(),
                window_start: d.window_start,
                window_end: d.window_end,
                revision,
                quantity: d.quantity(),
                amount,
                currency: plan.currency.code.clone(),
                plan_id: plan.id.clone(),
                plan_version: d.key.pricing.clone(),
                billing_period: period,
                event_count: d.event_count,
                first_seq: d.first_seq,
                last_seq: d.last_seq,
                row_kind,
                reason: None,
                arrived_at: Some(d.arrived_at),
            });
        }
        Ok(rows)
    }
}

//! The core stages of the pipeline, without broker or tables: decode and validate, enrich
//! (subject → customer, plan version in force), extract meter values, dedup, aggregate into
//! windows, and rate window deltas. Pure CPU work over in-memory state; the pipeline
//! ([`crate::Pipeline`]) feeds it fetched messages and commits what it produces. The benchmark of
//! the core stages (`benches/benches/core_stages.rs`) drives it directly.

use anyhow::{Context, Result};
use bytes::Bytes;
use meterflow_aggregator::{Aggregator, EventRef, WindowDelta};
use meterflow_faults::Point;
use meterflow_ingest::{fingerprint, Fetched, RejectEnvelope, ShardedDedup};
use meterflow_rater::{pricing_at, Period, PeriodTotals, TotalKey};
use meterflow_schemas::{decode_message, RejectReason};
use meterflow_sink::{ClosedPeriod, RejectionRow, RowKind, SummaryRow};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::{Config, Reference};
use crate::ops::metrics::label;
use crate::ops::Ops;
use crate::stats::RunStats;

/// One message as the core stages see it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Stream sequence.
    pub seq: u64,
    /// Publish time at the broker, seconds since the epoch (dedup days and arrival times).
    pub published_unix: i64,
    /// The subject it was published on.
    pub subject: &'a str,
    /// The message bytes.
    pub payload: &'a Bytes,
}

impl<'a> From<&'a Fetched> for Input<'a> {
    fn from(f: &'a Fetched) -> Self {
        Input { seq: f.seq, published_unix: f.published_unix, subject: &f.subject, payload: &f.payload }
    }
}

/// A candidate event that passed decode, enrich and extract, waiting for the dedup decision.
struct Candidate {
    seq: u64,
    /// Position of its message in the fetched batch (for the message subject).
    msg: usize,
    arrival: chrono::DateTime<chrono::Utc>,
    customer: usize,
    pricing: std::sync::Arc<str>,
    event: meterflow_schemas::UsageEvent,
    measurements: Vec<meterflow_aggregator::Measurement>,
}

/// A billing-period total as the capacity check keys it: customer (index), meter (index), plan
/// version label, period start (Unix seconds).
type LiveKey = (usize, usize, Arc<str>, i64);

/// Keeps every billing-period total within what its plan version can rate exactly (rater's
/// `Charge::max_total`): an event whose addition would pass it is rejected as
/// `value_out_of_range`. The totals it compares are the sums of the windows' current values,
/// which depend only on the events added so far in stream order, not on where commits fell: a
/// replay decides every event as the first pass did.
#[derive(Debug, Default)]
struct Capacity {
    live: HashMap<LiveKey, rust_decimal::Decimal>,
    limits: HashMap<(Arc<str>, usize), rust_decimal::Decimal>,
}

/// The core stages and their state.
pub struct Stages {
    pub(crate) reference: Reference,
    pub(crate) customer_index: HashMap<String, usize>,
    /// Plan version label → (plan id, version index).
    pub(crate) pricing_index: HashMap<String, (String, usize)>,
    /// Plan id → the label of each version, built once so events share them.
    pub(crate) pricing_labels: HashMap<String, Vec<Arc<str>>>,
    /// Event-time limits (too old, too far in the future).
    pub(crate) bounds: meterflow_aggregator::TimeBounds,
    pub(crate) dedup: ShardedDedup,
    pub(crate) agg: Aggregator,
    /// Billing-period totals per customer, meter and plan version (for tiered rating).
    pub(crate) totals: PeriodTotals,
    /// Billing periods that hold usage (candidates for closing).
    pub(crate) seen_periods: BTreeSet<String>,
    /// Rejects waiting for the next commit.
    pub(crate) pending_rejects: Vec<RejectEnvelope>,
    /// Dropped duplicates waiting for the next commit.
    pub(crate) pending_duplicates: Vec<RejectionRow>,
    /// Events accepted since the last commit.
    pub(crate) pending_events: usize,
    /// Buffers of [`Stages::process`], kept between calls so that a pull reuses their memory.
    scratch: (Vec<Candidate>, Vec<(u128, u16)>),
    /// The capacity check: every billing-period total as it stands with everything added so
    /// far (committed totals plus window changes not yet flushed), and the largest total each
    /// plan version can rate exactly per meter.
    capacity: Capacity,
    ops: Arc<Ops>,
}

impl Capacity {
    /// The period-total changes `c`'s measurements would make, or why they do not fit.
    fn check(
        &self,
        agg: &Aggregator,
        customer: &meterflow_ingest::Customer,
        customer_idx: usize,
        pricing: &Arc<str>,
        c: &Candidate,
        event: EventRef<'_>,
    ) -> std::result::Result<Vec<(LiveKey, rust_decimal::Decimal)>, String> {
        let mut changes = Vec::with_capacity(c.measurements.len());
        for m in &c.measurements {
            let change = agg.change_if_added(&customer.id, &c.event.subject, pricing, m, event);
            if change.is_zero() {
                continue;
            }
            let start = chrono::DateTime::from_timestamp(m.window_start, 0).unwrap_or_default();
            let period = Period::containing(start, customer.billing_anchor_day);
            let key = (customer_idx, m.meter, pricing.clone(), period.map_or(i64::MIN, |p| p.start.timestamp()));
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
}

impl Stages {
    /// The stages over reference data and (restored or empty) state.
    pub fn new(
        config: &Config,
        reference: Reference,
        dedup: ShardedDedup,
        agg: Aggregator,
        totals: PeriodTotals,
        ops: Arc<Ops>,
    ) -> Stages {
        let customer_index: HashMap<String, usize> =
            reference.directory.customers().iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        let seen_periods = totals.entries().into_iter().map(|(k, _)| k.period).collect();
        let mut pricing_index = HashMap::new();
        let mut pricing_labels: HashMap<String, Vec<Arc<str>>> = HashMap::new();
        for s in reference.subscriptions.iter().flatten() {
            if let Some(plan) = reference.prices.plan(&s.plan) {
                let labels = (0..plan.versions.len()).map(|v| Arc::from(plan.version_label(v))).collect();
                for v in 0..plan.versions.len() {
                    pricing_index.insert(plan.version_label(v), (plan.id.clone(), v));
                }
                pricing_labels.insert(plan.id.clone(), labels);
            }
        }
        let mut capacity = Capacity::default();
        let meter_index = |name: &str| reference.meters.configs().iter().position(|m| m.name == name);
        for (plan_id, labels) in &pricing_labels {
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
        Stages {
            capacity,
            reference,
            customer_index,
            pricing_index,
            pricing_labels,
            bounds: config.lateness.bounds(),
            dedup,
            agg,
            totals,
            seen_periods,
            pending_rejects: Vec::new(),
            pending_duplicates: Vec::new(),
            pending_events: 0,
            scratch: (Vec::new(), Vec::new()),
            ops,
        }
    }

    /// Fresh stages for `config` (reference data loaded from its files, empty state), as a
    /// first start would have them.
    pub fn fresh(config: &Config) -> Result<Stages> {
        let reference = Reference::load(config)?;
        let dedup = ShardedDedup::new(config.pipeline.dedup_shards, config.pipeline.dedup_horizon_days)?;
        let agg = Aggregator::with_policy(reference.meters.clone(), config.lateness.policy());
        let ops = Arc::new(Ops::new(config));
        Ok(Stages::new(config, reference, dedup, agg, PeriodTotals::default(), ops))
    }

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

    /// Takes the rejects and duplicates waiting for the next commit.
    pub fn take_pending(&mut self) -> (Vec<RejectEnvelope>, Vec<RejectionRow>) {
        (std::mem::take(&mut self.pending_rejects), std::mem::take(&mut self.pending_duplicates))
    }

    /// Decode, enrich, extract, dedup and aggregate messages that are all live or all replayed.
    /// Replayed messages only rebuild state: no rejects, no counters.
    pub fn process(&mut self, messages: &[Input<'_>], live: bool, stats: &mut RunStats) -> Result<()> {
        let meters = &self.reference.meters;
        let (mut candidates, mut keys) = std::mem::take(&mut self.scratch);
        candidates.clear();
        keys.clear();
        let metrics = self.ops.metrics.clone();
        for (msg_index, msg) in messages.iter().enumerate() {
            let day = u16::try_from(msg.published_unix.div_euclid(86_400)).unwrap_or(u16::MAX);
            let arrival = chrono::DateTime::from_timestamp(msg.published_unix, 0).unwrap_or_default();
            let decoded = decode_message(msg.payload);
            let metrics = &metrics;
            let mut reject =
                |reason: RejectReason, detail: String, index: Option<usize>, original: Bytes, stats: &mut RunStats| {
                    if live {
                        *stats.rejected.entry(reason.code()).or_default() += 1;
                        metrics.events_rejected.get_or_create(&label("reason", reason.code())).inc();
                        self.pending_rejects.push(RejectEnvelope {
                            seq: msg.seq,
                            subject: msg.subject.to_string(),
                            index,
                            reason,
                            detail,
                            original,
                        });
                    }
                };
            if live {
                let n = (decoded.events.len() + decoded.rejects.len()) as u64;
                stats.events_received += n;
                self.ops.metrics.events_received.inc_by(n);
            }
            for r in decoded.rejects {
                reject(r.reason, r.detail, r.index, Bytes::from(r.original), stats);
            }
            for event in decoded.events {
                let original = || msg.payload.slice(event.span.clone());
                if let Err((reason, detail)) = self.bounds.check(event.time, arrival) {
                    reject(reason, detail, event.index, original(), stats);
                    continue;
                }
                let Some(customer) = self.reference.directory.lookup(&event.subject) else {
                    let detail = format!("subject {:?} maps to no customer", event.subject);
                    reject(RejectReason::UnknownSubject, detail, event.index, original(), stats);
                    continue;
                };
                if !customer.may_publish_on(msg.subject) {
                    let detail = format!(
                        "usage of customer {} may only arrive on {}; this message came on {}",
                        customer.id,
                        customer.publish_subjects.join(", "),
                        msg.subject
                    );
                    reject(RejectReason::SubjectNotAllowed, detail, event.index, original(), stats);
                    continue;
                }
                let customer = self.customer_index.get(&customer.id).copied().unwrap_or_default();
                let subs = &self.reference.subscriptions[customer];
                let Some((plan, version)) = pricing_at(&self.reference.prices, subs, event.time) else {
                    let detail = format!("no subscription or plan version in force at {}", event.time.to_rfc3339());
                    reject(RejectReason::NoSubscription, detail, event.index, original(), stats);
                    continue;
                };
                // Every subscribed plan's labels were built at start; no allocation per event.
                let pricing = self.pricing_labels.get(&plan.id).and_then(|l| l.get(version)).cloned();
                let pricing = pricing.unwrap_or_else(|| plan.version_label(version).into());
                let measurements = match meters.extract(&event) {
                    Ok(m) => m,
                    Err((reason, detail)) => {
                        reject(reason, detail, event.index, original(), stats);
                        continue;
                    }
                };
                keys.push((fingerprint(&event.source, &event.id), day));
                candidates.push(Candidate {
                    seq: msg.seq,
                    msg: msg_index,
                    arrival,
                    customer,
                    pricing,
                    event,
                    measurements,
                });
            }
        }
        meterflow_faults::hit(Point::AfterDecode);
        if !keys.is_empty() {
            let decisions = self.dedup.check_batch(&keys)?;
            meterflow_faults::hit(Point::AfterDedup);
            for (c, new) in candidates.iter().zip(decisions) {
                if !new {
                    if live {
                        stats.duplicates += 1;
                        self.ops.metrics.events_duplicate.inc();
                        tracing::debug!(seq = c.seq, source = %c.event.source, id = %c.event.id, "duplicate dropped");
                        self.pending_duplicates.push(RejectionRow {
                            stream_seq: c.seq,
                            event_index: c.event.index.map(|i| i as u64),
                            reason: "duplicate".into(),
                            detail: format!("source={} id={}", c.event.source, c.event.id),
                            subject: messages.get(c.msg).map(|m| m.subject.to_string()).unwrap_or_default(),
                            size: c.event.span.len() as u64,
                        });
                    }
                    continue;
                }
                let customer = &self.reference.directory.customers()[c.customer];
                let event = EventRef {
                    time: c.event.time,
                    source: &c.event.source,
                    id: &c.event.id,
                    seq: c.seq,
                    arrival: c.arrival,
                };
                let changes = match self.capacity.check(&self.agg, customer, c.customer, &c.pricing, c, event) {
                    Ok(changes) => changes,
                    Err(detail) => {
                        if live {
                            let reason = RejectReason::ValueOutOfRange;
                            *stats.rejected.entry(reason.code()).or_default() += 1;
                            metrics.events_rejected.get_or_create(&label("reason", reason.code())).inc();
                            let msg = messages.get(c.msg);
                            self.pending_rejects.push(RejectEnvelope {
                                seq: c.seq,
                                subject: msg.map(|m| m.subject.to_string()).unwrap_or_default(),
                                index: c.event.index,
                                reason,
                                detail,
                                original: msg.map(|m| m.payload.slice(c.event.span.clone())).unwrap_or_default(),
                            });
                        }
                        continue;
                    }
                };
                if live {
                    stats.events_accepted += 1;
                    self.ops.metrics.events_accepted.inc();
                    self.pending_events += 1;
                }
                for m in &c.measurements {
                    self.agg.add(&customer.id, &c.event.subject, &c.pricing, m, event);
                }
                for (key, change) in changes {
                    *self.capacity.live.entry(key).or_default() += change;
                }
            }
        }
        candidates.clear();
        keys.clear();
        self.scratch = (candidates, keys);
        Ok(())
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
            if row_kind != RowKind::Usage {
                let meter = &self.reference.meters.configs()[d.key.meter].name;
                self.ops.metrics.events_late.get_or_create(&label("meter", meter.clone())).inc_by(d.event_count);
            }
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

//! The core stages of the pipeline, without broker or tables: decode and validate, enrich
//! (subject → customer, plan version in force), extract meter values, dedup, aggregate into
//! windows, and rate window deltas. Pure CPU work over in-memory state; the pipeline
//! ([`crate::Pipeline`]) feeds it fetched messages and commits what it produces. The benchmark of
//! the core stages (`benches/benches/core_stages.rs`) drives it directly.

use anyhow::Result;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use meterflow_aggregator::{Aggregator, EventRef, TimeBounds};
use meterflow_faults::Point;
use meterflow_ingest::{fingerprint, Fetched, RejectEnvelope, ShardedDedup};
use meterflow_rater::{pricing_at, Period, PeriodTotals};
use meterflow_schemas::{decode_message, RejectReason, UsageEvent};
use meterflow_sink::{ClosedPeriod, RejectionRow};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::config::{Config, Reference};
use crate::events::Instruments;
use capacity::Capacity;
use pending::{Counting, Pending};

mod capacity;
mod pending;
mod rate;
pub(crate) mod snapshot;

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

/// The core stages and their state.
pub struct Stages {
    reference: Reference,
    customer_index: HashMap<String, usize>,
    /// Plan version label → (plan id, version index).
    pricing_index: HashMap<String, (String, usize)>,
    /// Plan id → the label of each version, built once so events share them.
    pricing_labels: HashMap<String, Vec<Arc<str>>>,
    /// Event-time limits (too old, too far in the future).
    bounds: TimeBounds,
    dedup: ShardedDedup,
    agg: Aggregator,
    /// Billing-period totals per customer, meter and plan version (for tiered rating).
    totals: PeriodTotals,
    /// Billing periods that hold usage (candidates for closing).
    seen_periods: BTreeSet<String>,
    /// Rejects, duplicates and accepted events waiting for the next commit.
    pending: Pending,
    /// Buffers of [`Stages::process`], kept between calls so that a pull reuses their memory.
    scratch: (Vec<Candidate>, Vec<(u128, u16)>),
    /// Partitions of the usage stream (0: not partitioned): a customer's usage must arrive in
    /// its own partition.
    partitions: u32,
    /// The capacity check of every billing-period total.
    capacity: Capacity,
}

impl Stages {
    /// The stages over reference data and (restored or empty) state.
    pub fn new(
        config: &Config,
        reference: Reference,
        dedup: ShardedDedup,
        agg: Aggregator,
        totals: PeriodTotals,
    ) -> Stages {
        let seen_periods = totals.entries().into_iter().map(|(k, _)| k.period).collect();
        let mut stages = Stages {
            capacity: Capacity::default(),
            reference,
            customer_index: HashMap::new(),
            pricing_index: HashMap::new(),
            pricing_labels: HashMap::new(),
            bounds: config.lateness.bounds(),
            dedup,
            agg,
            totals,
            seen_periods,
            pending: Pending::default(),
            scratch: (Vec::new(), Vec::new()),
            partitions: config.nats.partitions,
        };
        stages.index_reference();
        stages
    }

    /// Decides the next messages under other reference data (a new catalog revision). Only
    /// between commits: with everything flushed, the capacity check's running totals are the
    /// committed period totals, which it is rebuilt from. The state (dedup, windows, totals)
    /// is keyed by ids, not by positions in the reference data, and stays as it is.
    pub fn set_reference(&mut self, reference: Reference) {
        self.reference = reference;
        self.index_reference();
    }

    /// The lookups built from the reference data: customer positions, plan version labels, and
    /// the capacity check's limits and running totals.
    fn index_reference(&mut self) {
        let reference = &self.reference;
        self.customer_index =
            reference.directory.customers().iter().enumerate().map(|(i, c)| (c.id.clone(), i)).collect();
        self.pricing_index.clear();
        self.pricing_labels.clear();
        for s in reference.subscriptions.iter().flatten() {
            if let Some(plan) = reference.prices.plan(&s.plan) {
                let labels = (0..plan.versions.len()).map(|v| Arc::from(plan.version_label(v))).collect();
                for v in 0..plan.versions.len() {
                    self.pricing_index.insert(plan.version_label(v), (plan.id.clone(), v));
                }
                self.pricing_labels.insert(plan.id.clone(), labels);
            }
        }
        self.capacity = Capacity::new(reference, &self.pricing_labels, &self.customer_index, &self.totals);
    }

    /// Fresh stages for `config` (reference data loaded from its files, empty state), as a
    /// first start would have them.
    pub fn fresh(config: &Config) -> Result<Stages> {
        let reference = Reference::load(config)?;
        let dedup = ShardedDedup::new(config.pipeline.dedup_shards, config.pipeline.dedup_horizon_days)?;
        let agg = Aggregator::with_policy(reference.meters.clone(), config.lateness.policy());
        Ok(Stages::new(config, reference, dedup, agg, PeriodTotals::default()))
    }

    /// Takes the rejects and duplicates waiting for the next commit (and restarts the count of
    /// events accepted since the last commit).
    pub fn take_pending(&mut self) -> (Vec<RejectEnvelope>, Vec<RejectionRow>) {
        self.pending.take()
    }

    /// Events accepted since the last [`Stages::take_pending`].
    pub fn pending_events(&self) -> usize {
        self.pending.events
    }

    /// Decode, enrich, extract, dedup and aggregate messages that are all live or all replayed.
    /// Replayed messages only rebuild state: no rejects, no counters. What live messages decide
    /// is counted in `to`.
    pub fn process(&mut self, messages: &[Input<'_>], live: bool, to: &mut Instruments<'_>) -> Result<()> {
        let (mut candidates, mut keys) = std::mem::take(&mut self.scratch);
        candidates.clear();
        keys.clear();
        let mut count = Counting { live, to };
        for (msg_index, msg) in messages.iter().enumerate() {
            let day = u16::try_from(msg.published_unix.div_euclid(86_400)).unwrap_or(u16::MAX);
            let arrival = DateTime::from_timestamp(msg.published_unix, 0).unwrap_or_default();
            let decoded = decode_message(msg.payload);
            count.received((decoded.events.len() + decoded.rejects.len()) as u64);
            for r in decoded.rejects {
                self.pending.reject(&mut count, msg, (r.reason, r.detail), r.index, Bytes::from(r.original));
            }
            for event in decoded.events {
                match self.enrich(msg, msg_index, arrival, event) {
                    Ok(c) => {
                        keys.push((fingerprint(&c.event.source, &c.event.id), day));
                        candidates.push(c);
                    }
                    Err((rejected, event)) => {
                        let original = msg.payload.slice(event.span.clone());
                        self.pending.reject(&mut count, msg, rejected, event.index, original);
                    }
                }
            }
        }
        meterflow_faults::hit(Point::AfterDecode);
        if !keys.is_empty() {
            let decisions = self.dedup.check_batch(&keys)?;
            meterflow_faults::hit(Point::AfterDedup);
            for (c, new) in candidates.iter().zip(decisions) {
                let Some(msg) = messages.get(c.msg) else { continue };
                if new {
                    self.accept(&mut count, msg, c);
                } else {
                    self.pending.duplicate(&mut count, msg, &c.event);
                }
            }
        }
        candidates.clear();
        keys.clear();
        self.scratch = (candidates, keys);
        Ok(())
    }

    /// Enrich and extract: the event's time within bounds, its customer (the directory's
    /// enrichment rule), the plan version in force at its time, and its meter values. Returns the
    /// reject reason and detail otherwise, with the event (for its index and bytes).
    #[allow(clippy::result_large_err)] // the event goes back whole, as it came, to be quoted
    fn enrich(
        &self,
        msg: &Input<'_>,
        msg_index: usize,
        arrival: DateTime<Utc>,
        event: UsageEvent,
    ) -> std::result::Result<Candidate, ((RejectReason, String), UsageEvent)> {
        if let Err(rejected) = self.bounds.check(event.time, arrival) {
            return Err((rejected, event));
        }
        let customer = match self.reference.directory.enrich(&event.subject, event.time, msg.subject) {
            Ok(c) => c,
            Err(rejected) => return Err((rejected, event)),
        };
        if self.partitions > 0 {
            if let Some(c) = self.reference.directory.customers().get(customer) {
                if !meterflow_ingest::partition::in_customer_partition(msg.subject, &c.id, self.partitions) {
                    let detail = format!(
                        "on a partitioned stream, usage of customer {} must arrive on usage.{}.<type> (its own \
                         partition); this message came on {}",
                        c.id,
                        meterflow_ingest::partition::token(&c.id),
                        msg.subject
                    );
                    return Err(((RejectReason::SubjectNotAllowed, detail), event));
                }
            }
        }
        let subs = self.reference.subscriptions.get(customer).map_or(&[][..], Vec::as_slice);
        let Some((plan, version)) = pricing_at(&self.reference.prices, subs, event.time) else {
            let detail = format!("no subscription or plan version in force at {}", event.time.to_rfc3339());
            return Err(((RejectReason::NoSubscription, detail), event));
        };
        // Every subscribed plan's labels were built at start; no allocation per event.
        let pricing = self.pricing_labels.get(&plan.id).and_then(|l| l.get(version)).cloned();
        let pricing = pricing.unwrap_or_else(|| plan.version_label(version).into());
        let measurements = match self.reference.meters.extract(&event) {
            Ok(m) => m,
            Err(rejected) => return Err((rejected, event)),
        };
        Ok(Candidate { seq: msg.seq, msg: msg_index, arrival, customer, pricing, event, measurements })
    }

    /// A first sighting: checked against the capacity of its billing-period totals, then
    /// aggregated into its windows.
    fn accept(&mut self, count: &mut Counting<'_, '_>, msg: &Input<'_>, c: &Candidate) {
        let Some(customer) = self.reference.directory.customers().get(c.customer) else { return };
        let event =
            EventRef { time: c.event.time, source: &c.event.source, id: &c.event.id, seq: c.seq, arrival: c.arrival };
        let changes = match self.capacity.check(&self.agg, customer, c, event) {
            Ok(changes) => changes,
            Err(detail) => {
                let original = msg.payload.slice(c.event.span.clone());
                self.pending.reject(count, msg, (RejectReason::ValueOutOfRange, detail), c.event.index, original);
                return;
            }
        };
        self.pending.accepted(count);
        for m in &c.measurements {
            self.agg.add(&customer.id, &c.event.subject, &c.pricing, m, event);
        }
        self.capacity.apply(changes);
    }

    /// Moves event time to the wall clock (only when the stream confirms nothing is waiting).
    pub fn advance_clock(&mut self, now: DateTime<Utc>) {
        self.agg.advance_clock(now);
    }

    /// The watermark of each meter, by name.
    pub fn watermarks(&self) -> Vec<(String, Option<DateTime<Utc>>)> {
        let policy = *self.agg.policy();
        let meters = self.reference.meters.configs().iter().enumerate();
        meters.map(|(i, c)| (c.name.clone(), self.agg.progress().watermark(i, &policy))).collect()
    }

    /// The lowest watermark over all meters: no event time below it is still open.
    pub fn min_watermark(&self) -> Option<DateTime<Utc>> {
        let policy = *self.agg.policy();
        (0..self.reference.meters.configs().len()).filter_map(|m| self.agg.progress().watermark(m, &policy)).min()
    }

    /// Windows held in memory.
    pub fn open_windows(&self) -> usize {
        self.agg.window_count()
    }

    /// Ends a replay: the windows rebuilt up to the committed sequence are already in the table,
    /// so only the period totals take them in.
    pub fn finish_replay(&mut self) -> Result<()> {
        let deltas = self.agg.flush();
        self.advance_totals(&deltas)?;
        Ok(())
    }

    /// Drops windows older than anything the backdating limit still admits; returns how many.
    pub fn evict_unreachable(&mut self) -> usize {
        let Some(clock) = self.agg.progress().stream_clock() else { return 0 };
        let reach = self.bounds.max_backdating + self.bounds.max_future_skew + chrono::Duration::days(1);
        self.agg.evict_before(clock - reach)
    }

    /// The billing periods holding usage, not yet closed, whose end plus `grace` every meter's
    /// watermark has passed.
    pub fn due_periods(&self, closed: &BTreeMap<String, ClosedPeriod>, grace: chrono::Duration) -> Vec<Period> {
        let Some(watermark) = self.min_watermark() else { return Vec::new() };
        let open = self.seen_periods.iter().filter(|p| !closed.contains_key(*p));
        open.filter_map(|p| Period::parse(p)).filter(|p| watermark > p.end + grace).collect()
    }

    /// The billing periods holding usage that are not closed.
    pub fn open_periods(&self, closed: &BTreeMap<String, ClosedPeriod>) -> Vec<String> {
        self.seen_periods.iter().filter(|p| !closed.contains_key(*p)).cloned().collect()
    }

    /// The state to snapshot: windows, period totals and the dedup index, decided under catalog
    /// revision `revision`.
    pub fn snapshot_bytes(&self, revision: u64) -> Result<Vec<u8>> {
        snapshot::encode_state(&self.agg, &self.totals, &self.dedup, revision)
    }
}

//! Window state and the deltas flushed at each commit.

use chrono::{DateTime, Utc};
use hashbrown::{Equivalent, HashMap};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};

use crate::meter::{to_utc, Aggregation, MeasureValue, Measurement, Meters};
use crate::progress::{LatenessPolicy, Progress};

/// Identity of one window of one meter for one customer subject and dimension set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WindowKey {
    /// Customer id from the reference data.
    pub customer_id: String,
    /// The event subject (a customer may have several).
    pub subject: String,
    /// Meter index in [`Meters::configs`].
    pub meter: usize,
    /// Canonical JSON of the group-by values.
    pub dimensions: String,
    /// Window start, seconds since the epoch (UTC).
    pub window_start: i64,
    /// Which price applies (the plan version in force at the event times; opaque here). A
    /// window that straddles a plan change is split into one key per version.
    pub pricing: String,
}

/// A borrowed [`WindowKey`], to find a window without allocating its key. Its fields and
/// their order match `WindowKey`'s, so both hash alike (derived `Hash`, `String` hashes as `str`).
#[derive(Clone, Copy, Hash)]
struct KeyRef<'a> {
    customer_id: &'a str,
    subject: &'a str,
    meter: usize,
    dimensions: &'a str,
    window_start: i64,
    pricing: &'a str,
}

impl<'a> KeyRef<'a> {
    /// The key of the window `m` falls in.
    fn of(customer_id: &'a str, subject: &'a str, pricing: &'a str, m: &'a Measurement) -> Self {
        KeyRef {
            customer_id,
            subject,
            meter: m.meter,
            dimensions: &m.dimensions,
            window_start: m.window_start,
            pricing,
        }
    }

    fn owned(self) -> WindowKey {
        WindowKey {
            customer_id: self.customer_id.to_string(),
            subject: self.subject.to_string(),
            meter: self.meter,
            dimensions: self.dimensions.to_string(),
            window_start: self.window_start,
            pricing: self.pricing.to_string(),
        }
    }
}

impl Equivalent<WindowKey> for KeyRef<'_> {
    fn equivalent(&self, key: &WindowKey) -> bool {
        self.meter == key.meter
            && self.window_start == key.window_start
            && self.customer_id == key.customer_id
            && self.subject == key.subject
            && self.dimensions == key.dimensions
            && self.pricing == key.pricing
    }
}

/// The facts about an event the aggregator needs besides its measurement.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// Event time (for LATEST).
    pub time: DateTime<Utc>,
    /// CloudEvents source (LATEST tie-break).
    pub source: &'a str,
    /// CloudEvents id (LATEST tie-break).
    pub id: &'a str,
    /// Stream sequence of the message holding the event.
    pub seq: u64,
    /// When the broker received the message (publish time).
    pub arrival: DateTime<Utc>,
}

/// Aggregated state of one window. `flushed` is what the rows already written sum to.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct WindowState {
    value: Option<Decimal>,
    flushed: Option<Decimal>,
    /// LATEST: (event time in ns, source, id) of the event that set `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest: Option<(i64, String, String)>,
    /// UNIQUE_COUNT: the distinct values seen.
    #[serde(default, skip_serializing_if = "HashSet::is_empty")]
    uniques: HashSet<String>,
    #[serde(skip)]
    pending: Pending,
}

/// What happened to a window since the last flush (never part of a snapshot: snapshots are
/// taken right after a flush).
#[derive(Debug, Clone, Default, PartialEq)]
struct Pending {
    events: u64,
    first_seq: u64,
    last_seq: u64,
    /// Some of these events arrived after the window had closed.
    late: bool,
    /// Newest arrival among these events, Unix microseconds.
    arrived_at: i64,
}

/// One output row: the change of a window's value since the previous flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowDelta {
    /// Which window.
    pub key: WindowKey,
    /// Window start (UTC).
    pub window_start: DateTime<Utc>,
    /// Window end (exclusive, UTC).
    pub window_end: DateTime<Utc>,
    /// Window value already written before this row (zero when none).
    pub before: Decimal,
    /// Window value including this row.
    pub after: Decimal,
    /// Events that arrived since the previous flush.
    pub event_count: u64,
    /// Lowest stream sequence among those events.
    pub first_seq: u64,
    /// Highest stream sequence among those events.
    pub last_seq: u64,
    /// True when some of these events arrived after the window had closed (an adjustment).
    pub late: bool,
    /// Newest broker arrival time among these events.
    pub arrived_at: DateTime<Utc>,
}

impl WindowDelta {
    /// The row's quantity: `after - before`. Summing a window's rows gives its value.
    pub fn quantity(&self) -> Decimal {
        self.after - self.before
    }
}

/// The aggregator's durable state, serialisable into a state snapshot.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AggregatorSnapshot {
    windows: Vec<(WindowKey, WindowState)>,
    #[serde(default)]
    progress: Progress,
}

/// Folds measurements into windows and flushes deltas.
#[derive(Debug)]
pub struct Aggregator {
    meters: Meters,
    windows: HashMap<WindowKey, WindowState>,
    dirty: hashbrown::HashSet<WindowKey>,
    progress: Progress,
    policy: LatenessPolicy,
}

/// The default lateness policy: one minute of out-of-orderness, five minutes idle timeout.
pub const DEFAULT_POLICY: LatenessPolicy =
    LatenessPolicy { out_of_orderness: chrono::Duration::seconds(60), idle_timeout: chrono::Duration::seconds(300) };

impl Aggregator {
    /// An empty aggregator for these meters.
    pub fn new(meters: Meters) -> Self {
        Aggregator::with_policy(meters, DEFAULT_POLICY)
    }

    /// An empty aggregator with an explicit lateness policy.
    pub fn with_policy(meters: Meters, policy: LatenessPolicy) -> Self {
        let progress = Progress::new(meters.configs().len());
        Aggregator { meters, windows: HashMap::new(), dirty: hashbrown::HashSet::new(), progress, policy }
    }

    /// Watermarks and the stream clock.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The lateness policy.
    pub fn policy(&self) -> &LatenessPolicy {
        &self.policy
    }

    /// Moves the stream clock (for example on an idle stream), never back.
    pub fn advance_clock(&mut self, now: DateTime<Utc>) {
        self.progress.advance_clock(now);
    }

    /// True when the window of `key` is closed to on-time events.
    pub fn is_closed(&self, key: &WindowKey) -> bool {
        let m = &self.meters.configs()[key.meter];
        let end = to_utc(key.window_start + m.window.seconds()).unwrap_or_default();
        self.progress.is_closed(key.meter, end, m.allowed_lateness(), &self.policy)
    }

    /// Drops the state of windows that ended before `horizon` (no acceptable event can reach
    /// them any more: they are older than the backdating limit). Returns how many.
    pub fn evict_before(&mut self, horizon: DateTime<Utc>) -> usize {
        let before = self.windows.len();
        let meters = &self.meters;
        let dirty = &self.dirty;
        self.windows.retain(|k, _| {
            let end = k.window_start + meters.configs()[k.meter].window.seconds();
            end > horizon.timestamp() || dirty.contains(k)
        });
        before - self.windows.len()
    }

    /// The meters this aggregator folds.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    /// Number of windows held in memory.
    pub fn window_count(&self) -> usize {
        self.windows.len()
    }

    /// How much the window's value would change if this measurement were added (zero for a
    /// value that changes nothing, for example a MAX below the current one). Pure: the state is
    /// not touched. The pipeline adds these changes up per billing period to keep period totals
    /// within what the tables hold.
    pub fn change_if_added(
        &self,
        customer_id: &str,
        subject: &str,
        pricing: &str,
        m: &Measurement,
        event: EventRef<'_>,
    ) -> Decimal {
        let probe = KeyRef::of(customer_id, subject, pricing, m);
        let aggregation = self.meters.configs()[m.meter].aggregation;
        let empty = WindowState::default();
        let state = self.windows.get(&probe).unwrap_or(&empty);
        let before = state.value.unwrap_or(Decimal::ZERO);
        let after = folded_value(state, aggregation, &m.value, event).unwrap_or(Decimal::ZERO);
        after.checked_sub(before).unwrap_or(Decimal::ZERO)
    }

    /// Adds one measurement of an accepted (deduplicated) event.
    pub fn add(&mut self, customer_id: &str, subject: &str, pricing: &str, m: &Measurement, event: EventRef<'_>) {
        let probe = KeyRef::of(customer_id, subject, pricing, m);
        let config = &self.meters.configs()[m.meter];
        let aggregation = config.aggregation;
        let end = to_utc(m.window_start + config.window.seconds()).unwrap_or_default();
        let late = self.progress.is_closed(m.meter, end, config.allowed_lateness(), &self.policy);
        self.progress.observe(m.meter, event.time, event.arrival);
        // The key is only built (allocated) for a window seen for the first time.
        if !self.windows.contains_key(&probe) {
            self.windows.insert(probe.owned(), WindowState::default());
        }
        let Some(state) = self.windows.get_mut(&probe) else { return };
        fold(state, aggregation, &m.value, event);
        let p = &mut state.pending;
        p.late |= late;
        p.arrived_at = p.arrived_at.max(event.arrival.timestamp_micros());
        if p.events == 0 {
            p.first_seq = event.seq;
            p.last_seq = event.seq;
            // First touch since the last flush.
            self.dirty.insert(probe.owned());
        } else {
            p.first_seq = p.first_seq.min(event.seq);
            p.last_seq = p.last_seq.max(event.seq);
        }
        p.events += 1;
    }

    /// Emits one delta per window touched since the previous flush, in key order, and marks
    /// them flushed. Call it when (and only when) the rows will be committed with the stream
    /// range they cover; after a crash the state is rebuilt from a snapshot plus a replay.
    pub fn flush(&mut self) -> Vec<WindowDelta> {
        let mut keys: Vec<WindowKey> = self.dirty.drain().collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(state) = self.windows.get_mut(&key) else { continue };
            let size = self.meters.configs()[key.meter].window.seconds();
            let (Some(window_start), Some(window_end)) = (to_utc(key.window_start), to_utc(key.window_start + size))
            else {
                continue;
            };
            let before = state.flushed.unwrap_or(Decimal::ZERO);
            let after = state.value.unwrap_or(Decimal::ZERO);
            let pending = std::mem::take(&mut state.pending);
            state.flushed = state.value;
            out.push(WindowDelta {
                key,
                window_start,
                window_end,
                before,
                after,
                event_count: pending.events,
                first_seq: pending.first_seq,
                last_seq: pending.last_seq,
                late: pending.late,
                arrived_at: DateTime::from_timestamp_micros(pending.arrived_at).unwrap_or_default(),
            });
        }
        out
    }

    /// The state to persist (pending changes excluded: take snapshots right after a flush).
    pub fn snapshot(&self) -> AggregatorSnapshot {
        let mut windows: Vec<(WindowKey, WindowState)> = self
            .windows
            .iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.pending = Pending::default();
                (k.clone(), v)
            })
            .collect();
        windows.sort_by(|a, b| a.0.cmp(&b.0));
        AggregatorSnapshot { windows, progress: self.progress.clone() }
    }

    /// Restores state from a snapshot taken by [`Aggregator::snapshot`].
    pub fn restore(meters: Meters, policy: LatenessPolicy, snapshot: AggregatorSnapshot) -> Self {
        let mut progress = snapshot.progress;
        if progress.stream_clock().is_none() {
            progress = Progress::new(meters.configs().len());
        }
        Aggregator {
            meters,
            windows: snapshot.windows.into_iter().collect(),
            dirty: hashbrown::HashSet::new(),
            progress,
            policy,
        }
    }

    /// Current value of every window, for tests and inspection.
    pub fn values(&self) -> BTreeSet<(WindowKey, Decimal)> {
        self.windows.iter().map(|(k, s)| (k.clone(), s.value.unwrap_or(Decimal::ZERO))).collect()
    }
}

/// The window value `value` would give, without changing the state: the pure core of [`fold`].
/// Sums use checked arithmetic; a sum that cannot be represented keeps the current value (the
/// pipeline's capacity check rejects such an event before it is folded).
fn folded_value(
    state: &WindowState,
    aggregation: Aggregation,
    value: &MeasureValue,
    event: EventRef<'_>,
) -> Option<Decimal> {
    let current = state.value;
    let plus = |d: Decimal| current.unwrap_or(Decimal::ZERO).checked_add(d).or(current);
    match (aggregation, value) {
        (Aggregation::Count, _) => plus(Decimal::ONE),
        (Aggregation::Sum, MeasureValue::Number(v)) => plus(*v),
        (Aggregation::Min, MeasureValue::Number(v)) => Some(current.map_or(*v, |c| c.min(*v))),
        (Aggregation::Max, MeasureValue::Number(v)) => Some(current.map_or(*v, |c| c.max(*v))),
        (Aggregation::Latest, MeasureValue::Number(v)) => {
            if is_newer(state, event) {
                Some(*v)
            } else {
                current
            }
        }
        (Aggregation::UniqueCount, MeasureValue::Text(t)) => {
            let n = state.uniques.len() + usize::from(!state.uniques.contains(t));
            Some(Decimal::from(n))
        }
        // A measurement that does not fit its meter cannot be produced by `Meters::extract`.
        _ => current,
    }
}

/// LATEST: whether `event` is newer than the one that set the window's value (event time, then
/// source and id as tie-breaks, so the outcome does not depend on arrival order).
fn is_newer(state: &WindowState, event: EventRef<'_>) -> bool {
    let time = event.time.timestamp_nanos_opt().unwrap_or(i64::MAX);
    state.latest.as_ref().is_none_or(|(t, s, i)| (time, event.source, event.id) > (*t, s.as_str(), i.as_str()))
}

/// The pure fold of one value into a window's state.
fn fold(state: &mut WindowState, aggregation: Aggregation, value: &MeasureValue, event: EventRef<'_>) {
    let next = folded_value(state, aggregation, value, event);
    match (aggregation, value) {
        (Aggregation::Latest, MeasureValue::Number(_)) if is_newer(state, event) => {
            let time = event.time.timestamp_nanos_opt().unwrap_or(i64::MAX);
            state.latest = Some((time, event.source.to_string(), event.id.to_string()));
        }
        (Aggregation::UniqueCount, MeasureValue::Text(t)) if !state.uniques.contains(t) => {
            state.uniques.insert(t.clone());
        }
        _ => {}
    }
    state.value = next;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{MeterConfig, WindowSize};
    use proptest::prelude::*;

    fn meters() -> Meters {
        let mk = |name: &str, aggregation| MeterConfig {
            name: name.into(),
            event_type: name.into(),
            aggregation,
            value_property: if aggregation == Aggregation::Count { None } else { Some("v".into()) },
            group_by: vec![],
            window: WindowSize::Hour,
            allowed_lateness_s: 3600,
        };
        Meters::new(vec![
            mk("sum", Aggregation::Sum),
            mk("count", Aggregation::Count),
            mk("min", Aggregation::Min),
            mk("max", Aggregation::Max),
            mk("latest", Aggregation::Latest),
            mk("unique", Aggregation::UniqueCount),
        ])
        .unwrap()
    }

    /// (meter, window, value, time offset s, id)
    type Ev = (usize, i64, u32, i64, u32);

    fn measurement(e: &Ev) -> Measurement {
        let value = match e.0 {
            1 => MeasureValue::Event,
            5 => MeasureValue::Text(format!("user-{}", e.2 % 7)),
            _ => MeasureValue::Number(Decimal::new(e.2 as i64, 2)),
        };
        Measurement { meter: e.0, dimensions: "{}".into(), window_start: e.1 * 3600, value }
    }

    fn run(events: &[Ev], flush_every: usize) -> (BTreeSet<(WindowKey, Decimal)>, HashMap<WindowKey, Decimal>) {
        let mut agg = Aggregator::new(meters());
        let mut sums: HashMap<WindowKey, Decimal> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let id = e.4.to_string();
            let time = DateTime::from_timestamp(e.1 * 3600 + e.3, 0).unwrap();
            agg.add(
                "acme",
                "acme",
                "p@1",
                &measurement(e),
                EventRef { time, source: "s", id: &id, seq: i as u64 + 1, arrival: time },
            );
            if (i + 1) % flush_every == 0 {
                for d in agg.flush() {
                    *sums.entry(d.key.clone()).or_default() += d.quantity();
                }
            }
        }
        for d in agg.flush() {
            *sums.entry(d.key.clone()).or_default() += d.quantity();
        }
        (agg.values(), sums)
    }

    fn events() -> impl Strategy<Value = Vec<Ev>> {
        prop::collection::vec((0usize..6, 0i64..3, 0u32..10_000, 0i64..3600, 0u32..1_000_000), 1..80)
    }

    proptest! {
        #[test]
        fn window_values_do_not_depend_on_arrival_order(evs in events(), seed in any::<u64>(), flush_every in 1usize..10) {
            let mut shuffled = evs.clone();
            // Deterministic Fisher-Yates from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let (a, _) = run(&evs, 1000);
            let (b, _) = run(&shuffled, flush_every);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn flushed_deltas_sum_to_each_window_value_for_every_aggregation(evs in events(), flush_every in 1usize..10) {
            let (values, sums) = run(&evs, flush_every);
            for (k, v) in values {
                prop_assert_eq!(sums.get(&k).copied().unwrap_or_default(), v);
            }
        }
    }

    #[test]
    fn a_window_is_found_by_its_borrowed_key_and_only_by_it() {
        let owned = KeyRef {
            customer_id: "acme",
            subject: "acme-eu",
            meter: 2,
            dimensions: r#"{"region":"eu"}"#,
            window_start: 7_200,
            pricing: "p@1",
        }
        .owned();
        let mut map: HashMap<WindowKey, u8> = HashMap::new();
        map.insert(owned.clone(), 1);
        let same = KeyRef {
            customer_id: &owned.customer_id,
            subject: &owned.subject,
            meter: owned.meter,
            dimensions: &owned.dimensions,
            window_start: owned.window_start,
            pricing: &owned.pricing,
        };
        assert_eq!(map.get(&same), Some(&1));
        // Moving text between fields must not find it (the fields are hashed with separators).
        let shifted = KeyRef { customer_id: "acmeacme-eu", subject: "", ..same };
        assert_eq!(map.get(&shifted), None);
        assert_eq!(map.get(&KeyRef { window_start: 3_600, ..same }), None);
    }

    #[test]
    fn a_snapshot_restores_the_same_windows() {
        let evs: Vec<Ev> = (0..50).map(|i| (i % 6, (i % 2) as i64, i as u32 * 37, i as i64, i as u32)).collect();
        let mut agg = Aggregator::new(meters());
        for (i, e) in evs.iter().enumerate() {
            let id = e.4.to_string();
            let time = DateTime::from_timestamp(e.1 * 3600 + e.3, 0).unwrap();
            agg.add(
                "acme",
                "acme",
                "p@1",
                &measurement(e),
                EventRef { time, source: "s", id: &id, seq: i as u64, arrival: time },
            );
        }
        agg.flush();
        let restored = Aggregator::restore(
            meters(),
            DEFAULT_POLICY,
            serde_json::from_str(&serde_json::to_string(&agg.snapshot()).unwrap()).unwrap(),
        );
        assert_eq!(restored.values(), agg.values());
    }

    #[test]
    fn latest_takes_the_newest_event_time_not_the_last_arrival() {
        let mut agg = Aggregator::new(meters());
        let m = |v| Measurement {
            meter: 4,
            dimensions: "{}".into(),
            window_start: 0,
            value: MeasureValue::Number(Decimal::from(v)),
        };
        let t = |s| DateTime::from_timestamp(s, 0).unwrap();
        agg.add("a", "a", "p@1", &m(5), EventRef { time: t(100), source: "s", id: "1", seq: 1, arrival: t(100) });
        agg.add("a", "a", "p@1", &m(9), EventRef { time: t(50), source: "s", id: "2", seq: 2, arrival: t(100) });
        let d = agg.flush();
        assert_eq!(d[0].after, Decimal::from(5));
        assert_eq!(d[0].event_count, 2);
        assert_eq!((d[0].first_seq, d[0].last_seq), (1, 2));
    }
}

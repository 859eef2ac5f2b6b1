//! # meterflow-benches: the inputs of the criterion micro-benchmarks
//!
//! Every benchmark in `benches/` measures one stage of the pipeline on the same inputs the demo
//! and the load tests use: the example config (`examples/meterflow.toml`: four meters, two
//! customers, two plans covering all four charge models) and the synthetic workload of
//! [`meterflow_testkit::workload`] (decimal values as JSON numbers and as strings, group-by dimensions,
//! event times spread over 48 hours), with a fixed seed and base time so runs are comparable.
//!
//! ```text
//!   messages ─► decode ─► enrich (lookup, pricing_at, extract) ─► dedup ─► window ─► rating ─► parquet_encode
//!   (bytes)     benches/decode.rs  benches/enrich.rs           dedup.rs  window.rs rating.rs parquet_encode.rs
//! ```
//!
//! A benchmark file is `benches/<stage>.rs` plus a `[[bench]]` entry (`harness = false`) in
//! `Cargo.toml`; the helpers here build its inputs.

// Fixtures, not product code: a broken example config or workload should stop the benchmark at
// once with a message, never be worked around.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use chrono::{DateTime, Duration, Utc};
use meterflow_aggregator::{Aggregator, EventRef, Measurement};
use meterflow_ingest::{CustomerConfig, Directory, ShardedDedup};
use meterflow_pipeline::config::{Config, Overrides, Reference};
use meterflow_pipeline::Stages;
use meterflow_rater::{pricing_at, PeriodTotals};
use meterflow_schemas::{decode_message, UsageEvent};
use meterflow_sink::SummaryRow;
use meterflow_testkit::workload::{generate, WorkloadSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Seed of the workload generator (the demo's default).
pub const SEED: u64 = 42;

/// Start of the 48 hours the workload's event times fall in: 2026-11-23T00:00:00Z. Fixed (the
/// demo uses "four days ago") so every run rates the same events; the span crosses the
/// `growth-eur` plan change of 2026-11-24, so windows are split by plan version as in production.
pub fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_392_000, 0).expect("a valid instant")
}

/// The JetStream publish day of the workload (days since the epoch), as dedup keys carry it.
pub fn publish_day() -> u16 {
    u16::try_from(base_time().timestamp().div_euclid(86_400)).expect("day fits u16")
}

/// The repository's `examples/` folder, found at run time like the integration tests do.
pub fn examples_dir() -> PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&manifest).join("../examples")
}

/// The example config's meters, customers, plans and subscriptions, validated as `meterflow
/// run` validates them.
pub fn reference() -> Reference {
    Reference::load(&example_config()).expect("the example reference data is valid")
}

/// The example config, `examples/meterflow.toml`.
pub fn example_config() -> Config {
    let path = examples_dir().join("meterflow.toml");
    Config::load(&path, &Overrides::default()).expect("examples/meterflow.toml loads")
}

/// `events` valid workload events in messages of `batch_size` events each (1 = one CloudEvent
/// per message, more = a CloudEvents batch array): no duplicates, no malformed messages.
pub fn messages(reference: &Reference, events: usize, batch_size: usize) -> Vec<Vec<u8>> {
    let spec =
        WorkloadSpec { events, batch_size, duplicate_every: 0, bad_every: 0, seed: SEED, base_time: base_time() };
    let (messages, _oracle) = generate(&spec, reference).expect("the workload generates");
    messages.into_iter().map(|m| m.payload).collect()
}

/// `n` decoded workload events, in publish order.
pub fn events(reference: &Reference, n: usize) -> Vec<UsageEvent> {
    let out: Vec<UsageEvent> =
        messages(reference, n, 100).iter().flat_map(|m| decode_message(m).events.into_iter()).collect();
    assert_eq!(out.len(), n, "every generated event decodes");
    out
}

/// What the enrich stage produces for one event, ready for dedup and the aggregator.
#[derive(Debug, Clone)]
pub struct Enriched {
    /// The decoded event.
    pub event: UsageEvent,
    /// Stream sequence of its message.
    pub seq: u64,
    /// Broker publish time of its message.
    pub arrival: DateTime<Utc>,
    /// Owning customer's id.
    pub customer_id: String,
    /// Position of the customer in `reference.directory.customers()`.
    pub customer: usize,
    /// Label of the plan version in force at the event time (`plan@effective_from`).
    pub pricing: String,
    /// What the event contributes to each meter consuming its type.
    pub measurements: Vec<Measurement>,
}

impl Enriched {
    /// The facts the aggregator needs besides the measurement.
    pub fn event_ref(&self) -> EventRef<'_> {
        EventRef {
            time: self.event.time,
            source: &self.event.source,
            id: &self.event.id,
            seq: self.seq,
            arrival: self.arrival,
        }
    }
}

/// `n` workload events through decode and enrich, in event-time order (as a live stream
/// delivers them: each published half a second after its event time, one message each).
///
/// With `tenants` > 1 the events are dealt round-robin over that many copies of each example
/// customer and subject (`acme-t07`, `globex-eu-t07`, ...), to spread them over more windows
/// as a multi-tenant deployment would; meters, dimensions, hours and plans stay the workload's.
pub fn enriched(reference: &Reference, n: usize, tenants: usize) -> Vec<Enriched> {
    let mut events = events(reference, n);
    events.sort_by_key(|e| e.time);
    let customers = reference.directory.customers();
    events
        .into_iter()
        .enumerate()
        .map(|(i, event)| {
            let owner = reference.directory.lookup(&event.subject).expect("workload subjects are known");
            let customer = customers.iter().position(|c| c.id == owner.id).expect("customer listed");
            let (plan, version) = pricing_at(&reference.prices, &reference.subscriptions[customer], event.time)
                .expect("a plan is in force for every workload event");
            let measurements = reference.meters.extract(&event).expect("workload events carry their values");
            let mut event = event;
            let mut customer_id = owner.id.clone();
            if tenants > 1 {
                let tenant = i % tenants;
                customer_id = format!("{customer_id}-t{tenant:02}");
                event.subject = format!("{}-t{tenant:02}", event.subject);
            }
            let arrival = event.time + Duration::milliseconds(500);
            Enriched {
                event,
                seq: i as u64 + 1,
                arrival,
                customer_id,
                customer,
                pricing: plan.version_label(version),
                measurements,
            }
        })
        .collect()
}

/// Adds every measurement of `inputs` to `agg`; returns how many were added.
pub fn add_all(agg: &mut Aggregator, inputs: &[Enriched]) -> u64 {
    let mut added = 0;
    for e in inputs {
        let event = e.event_ref();
        for m in &e.measurements {
            agg.add(&e.customer_id, &e.event.subject, &e.pricing, m, event);
            added += 1;
        }
    }
    added
}

/// About `n` rated `usage_summaries` rows as one commit writes them: the window deltas of a
/// multi-tenant workload, flushed by the aggregator and rated by the pipeline's own
/// [`Stages::rate`] (incrementally against the billing-period totals under the example plans,
/// as `meterflow run` does before `SummaryTable::commit`).
pub fn summary_rows(reference: &Reference, n: usize) -> Vec<SummaryRow> {
    // About seven events per window (as in `benches/window.rs`), and enough windows for `n` rows.
    let tenants = (n / 700).max(1);
    let inputs = enriched(reference, n * 8, tenants);
    let mut agg = Aggregator::new(reference.meters.clone());
    add_all(&mut agg, &inputs);
    let mut deltas = agg.flush();
    deltas.truncate(n);
    let revision = deltas.iter().map(|d| d.last_seq).max().unwrap_or_default();
    let config = example_config();
    let reference = with_tenants(reference, tenants);
    let dedup = ShardedDedup::new(1, config.pipeline.dedup_horizon_days).expect("dedup");
    let agg = Aggregator::new(reference.meters.clone());
    let mut stages = Stages::new(&config, reference, dedup, agg, PeriodTotals::default());
    stages.rate(deltas, revision, &BTreeMap::new()).expect("every window delta rates")
}

/// `reference` with its customers replaced by `tenants` copies of each, named as [`enriched`]
/// names them (`<id>-tNN`, subjects `<subject>-tNN`) and subscribed like the original; with one
/// tenant, `reference` itself.
pub fn with_tenants(reference: &Reference, tenants: usize) -> Reference {
    if tenants <= 1 {
        return reference.clone();
    }
    let mut customers = Vec::new();
    let mut subscriptions = Vec::new();
    for tenant in 0..tenants {
        for (c, subs) in reference.directory.customers().iter().zip(&reference.subscriptions) {
            let mut copy = CustomerConfig::clone(c);
            copy.id = format!("{}-t{tenant:02}", c.id);
            copy.subjects = c.subjects.iter().map(|s| format!("{}-t{tenant:02}", s.name()).into()).collect();
            customers.push(copy);
            subscriptions.push(subs.clone());
        }
    }
    let directory = Directory::new(customers, "tenant copies of the example customers").expect("valid copies");
    Reference { directory, subscriptions, ..reference.clone() }
}

/// The core stages' fixture, shared by `benches/core_stages.rs` (criterion, seconds) and the
/// `meterflow-instructions` binary (callgrind, instructions per event).
pub mod core {
    use bytes::Bytes;
    use meterflow_pipeline::config::{Config, Overrides, Reference};
    use meterflow_pipeline::ops::Ops;
    use meterflow_pipeline::{Input, Instruments, RunStats, Stages};
    use meterflow_testkit::workload::{self, WorkloadSpec};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    /// Messages handed to the stages at once (a pull).
    pub const PULL: usize = 2_000;

    /// The example config with one dedup shard (one pipeline thread plus one dedup thread).
    pub fn config() -> Config {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/meterflow.toml");
        let data = std::env::temp_dir().join("meterflow-bench-core-stages");
        let overrides = Overrides { nats_url: None, data_dir: Some(data) };
        let mut config = Config::load(&path, &overrides).expect("examples/meterflow.toml loads");
        config.pipeline.dedup_shards = 1;
        config
    }

    /// The load generator's workload (10% duplicates, 2% malformed) as (subject, payload)
    /// messages of `batch_size` events, and the number of events in them (accepted, duplicate
    /// and rejected).
    pub fn messages(config: &Config, events: usize, batch_size: usize) -> (Vec<(String, Bytes)>, u64) {
        let reference = Reference::load(config).expect("reference data loads");
        let spec = WorkloadSpec { events, batch_size, duplicate_every: 10, bad_every: 50, ..Default::default() };
        let (out, oracle) = workload::generate(&spec, &reference).expect("workload");
        let total = oracle.accepted + oracle.duplicates + oracle.rejected.values().sum::<u64>();
        (out.into_iter().map(|m| (m.subject, Bytes::from(m.payload))).collect(), total)
    }

    /// Runs `messages` through fresh-state `stages` in pulls of [`PULL`], then rates the window
    /// deltas (a commit's worth); returns the summary rows.
    #[inline(never)]
    pub fn run(stages: &mut Stages, ops: &Ops, messages: &[(String, Bytes)], now: i64) -> usize {
        let mut stats = RunStats::default();
        let mut to = Instruments::new(&mut stats, ops);
        let closed = BTreeMap::new();
        for (chunk_no, chunk) in messages.chunks(PULL).enumerate() {
            let base = (chunk_no * PULL) as u64 + 1;
            let inputs: Vec<Input<'_>> = chunk
                .iter()
                .enumerate()
                .map(|(i, (subject, payload))| Input { seq: base + i as u64, published_unix: now, subject, payload })
                .collect();
            stages.process(&inputs, true, &mut to).expect("stages");
        }
        let rows = stages.flush_and_rate(messages.len() as u64, &closed).expect("rating").len();
        assert!(stats.events_accepted > 0);
        rows
    }
}

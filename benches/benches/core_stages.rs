//! The core stages together, in process, without broker or tables: decode and validate,
//! enrich (subject → customer, plan version in force), extract meter values, dedup, aggregate
//! into windows and rate the window deltas: `meterflow_pipeline::Stages`, the code the pipeline
//! runs between a fetch and a commit. Input: the load generator's workload (four meters, decimal
//! values as numbers and strings, 10% duplicates, 2% malformed) with one and 100 events per
//! message. Dedup runs with one shard, so the figure is events per second of one pipeline thread
//! plus one dedup thread; the rating of the window deltas (a commit's worth) is included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterflow_pipeline::config::{Config, Overrides, Reference};
use meterflow_pipeline::ops::Ops;
use meterflow_pipeline::{Input, Instruments, RunStats, Stages};
use meterflow_testkit::workload::{self, WorkloadSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The allocator the `meterflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 200_000;
/// Messages handed to the stages at once (a pull).
const PULL: usize = 2_000;

fn config() -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/meterflow.toml");
    let data = std::env::temp_dir().join("meterflow-bench-core-stages");
    let overrides = Overrides { nats_url: None, data_dir: Some(data) };
    let mut config = Config::load(&path, &overrides).expect("examples/meterflow.toml loads");
    config.pipeline.dedup_shards = 1;
    config
}

fn messages(config: &Config, batch_size: usize) -> (Vec<(String, Bytes)>, u64) {
    let reference = Reference::load(config).expect("reference data loads");
    let spec = WorkloadSpec { events: EVENTS, batch_size, duplicate_every: 10, bad_every: 50, ..Default::default() };
    let (out, oracle) = workload::generate(&spec, &reference).expect("workload");
    let total = oracle.accepted + oracle.duplicates + oracle.rejected.values().sum::<u64>();
    (out.into_iter().map(|m| (m.subject, Bytes::from(m.payload))).collect(), total)
}

fn run(stages: &mut Stages, ops: &Ops, messages: &[(String, Bytes)], now: i64) -> usize {
    let mut stats = RunStats::default();
    let mut to = Instruments::new(&mut stats, ops);
    let closed = BTreeMap::new();
    let mut rows = 0;
    for (chunk_no, chunk) in messages.chunks(PULL).enumerate() {
        let base = (chunk_no * PULL) as u64 + 1;
        let inputs: Vec<Input<'_>> = chunk
            .iter()
            .enumerate()
            .map(|(i, (subject, payload))| Input { seq: base + i as u64, published_unix: now, subject, payload })
            .collect();
        stages.process(&inputs, true, &mut to).expect("stages");
    }
    rows += stages.flush_and_rate(messages.len() as u64, &closed).expect("rating").len();
    assert!(stats.events_accepted > 0);
    rows
}

fn core_stages(c: &mut Criterion) {
    let config = config();
    let ops = Ops::new(&config);
    let now = chrono::Utc::now().timestamp();
    let mut group = c.benchmark_group("core_stages");
    group.sample_size(10);
    for batch_size in [1, 100] {
        let (msgs, events) = messages(&config, batch_size);
        group.throughput(Throughput::Elements(events));
        group.bench_function(format!("{batch_size}_events_per_message"), |b| {
            b.iter_batched(
                || Stages::fresh(&config).expect("stages"),
                |mut stages| run(&mut stages, &ops, &msgs, now),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, core_stages);
criterion_main!(benches);

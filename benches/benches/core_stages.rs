//! The core stages together, in process, without broker or tables: decode and validate,
//! enrich (subject → customer, plan version in force), extract meter values, dedup, aggregate
//! into windows and rate the window deltas: `meterflow_pipeline::Stages`, the code the pipeline
//! runs between a fetch and a commit. Input: the load generator's workload (four meters, decimal
//! values as numbers and strings, 10% duplicates, 2% malformed) with one and 100 events per
//! message. Dedup runs with one shard, so the figure is events per second of one pipeline thread
//! plus one dedup thread; the rating of the window deltas (a commit's worth) is included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterflow_benches::core::{config, messages, run};
use meterflow_pipeline::ops::Ops;
use meterflow_pipeline::Stages;

/// The allocator the `meterflow` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EVENTS: usize = 200_000;

fn core_stages(c: &mut Criterion) {
    let config = config();
    let ops = Ops::new(&config);
    let now = chrono::Utc::now().timestamp();
    let mut group = c.benchmark_group("core_stages");
    group.sample_size(10);
    for batch_size in [1, 100] {
        let (msgs, events) = messages(&config, EVENTS, batch_size);
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

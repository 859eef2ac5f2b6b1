//! Stage: event-time windows (`meterflow_aggregator::Aggregator`), after dedup: `add` folds one
//! measurement into its UTC tumbling window, `flush` emits one delta row per window touched
//! since the previous commit.
//!
//! Inputs: 100,000 workload events (four meters, hourly and daily windows, `region` / `model`
//! dimensions, 48 hours, two plan versions) in event-time order, dealt over 20 tenant copies of
//! the example customers (60 subjects), so that a window gets about seven events.
//!
//! * `add/new_windows`: into an empty aggregator (one add in seven creates its window, about
//!   14,300 windows in all);
//! * `add/existing_windows`: into an aggregator already holding every window (no add creates
//!   one: the steady state of a long-running pipeline);
//! * `flush`: one commit's flush after every window was touched once (rows per second).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use meterflow_aggregator::Aggregator;
use meterflow_benches::{add_all, enriched, reference};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The allocator the `meterflow` binary runs with: decode, enrich and the aggregator allocate per
/// event, so their figures depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per iteration.
const EVENTS: usize = 100_000;
/// Copies of the example customers the events are dealt over.
const TENANTS: usize = 20;

fn window(c: &mut Criterion) {
    let reference = reference();
    let inputs = enriched(&reference, EVENTS, TENANTS);
    let measurements: u64 = inputs.iter().map(|e| e.measurements.len() as u64).sum();

    let mut group = c.benchmark_group("window");
    group.sample_size(10);
    group.throughput(Throughput::Elements(measurements));
    group.bench_function("add/new_windows", |b| {
        b.iter_batched(
            || Aggregator::new(reference.meters.clone()),
            |mut agg| {
                add_all(&mut agg, black_box(&inputs));
                agg
            },
            BatchSize::LargeInput,
        )
    });

    let mut warm = Aggregator::new(reference.meters.clone());
    add_all(&mut warm, &inputs);
    let windows = warm.flush().len();
    eprintln!("window: {measurements} measurements in {windows} windows");
    group.bench_function("add/existing_windows", |b| {
        b.iter(|| add_all(&mut warm, black_box(&inputs)));
    });

    // One measurement per window: touches every window again before each timed flush.
    let mut touch = Vec::with_capacity(windows);
    let mut seen = std::collections::HashSet::new();
    for e in &inputs {
        for m in &e.measurements {
            if seen.insert((
                e.customer_id.as_str(),
                e.event.subject.as_str(),
                m.meter,
                &m.dimensions,
                m.window_start,
                &e.pricing,
            )) {
                let mut one = e.clone();
                one.measurements = vec![m.clone()];
                touch.push(one);
            }
        }
    }
    assert_eq!(touch.len(), windows, "one touch per window");
    warm.flush();
    group.throughput(Throughput::Elements(windows as u64));
    group.bench_function("flush", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                add_all(&mut warm, &touch);
                let start = Instant::now();
                let rows = warm.flush();
                timed += start.elapsed();
                debug_assert_eq!(rows.len(), windows);
                drop(black_box(rows));
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);

//! Stage: decode + validate (`meterflow_schemas::decode_message`), the first step after a fetch.
//!
//! Measures events per second through the decoder for the two message shapes publishers use:
//! one CloudEvent per message and CloudEvents batch arrays of 100 events. The messages are the
//! workload's (`meterflow_testkit::workload`): the four example event types, values sent as JSON numbers
//! and as decimal strings, `region` / `model` dimensions. The decoder keeps `data` as raw JSON;
//! values are parsed later, by `Meters::extract` (see `enrich.rs`).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_benches::{messages, reference};
use meterflow_schemas::decode_message;
use std::hint::black_box;

/// The allocator the `meterflow` binary runs with: decode, enrich and the aggregator allocate per
/// event, so their figures depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events decoded per iteration in each case.
const EVENTS: usize = 1_000;

fn decode(c: &mut Criterion) {
    let reference = reference();
    let single = messages(&reference, EVENTS, 1);
    let batches = messages(&reference, EVENTS, 100);
    assert_eq!((single.len(), batches.len()), (EVENTS, EVENTS / 100));
    let bytes = |m: &[Vec<u8>]| m.iter().map(Vec::len).sum::<usize>() / EVENTS;
    eprintln!(
        "decode: {} bytes per single-event message, {} bytes per event in batches",
        bytes(&single),
        bytes(&batches)
    );

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("1_event_per_message", |b| {
        b.iter(|| {
            for m in &single {
                let d = decode_message(black_box(m));
                debug_assert_eq!(d.events.len(), 1);
                black_box(d);
            }
        })
    });
    group.bench_function("100_events_per_message", |b| {
        b.iter(|| {
            for m in &batches {
                let d = decode_message(black_box(m));
                debug_assert_eq!(d.events.len(), 100);
                black_box(d);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);

//! Stage: dedup (`meterflow_ingest::fingerprint`, `DedupIndex::check_and_insert`), between
//! enrich and the aggregator. `ShardedDedup` runs one `DedupIndex` per worker thread; this
//! measures one shard's decision, single-threaded, without the channel hop.
//!
//! * `fingerprint`: the 128-bit xxh3 of `(source, id)`, for workload events;
//! * `check_and_insert/new_id`: first sightings into an index holding 1M to 2M ids (it grows as
//!   it would in production, resizes included; it is rebuilt at 1M, untimed, when it reaches 2M);
//! * `check_and_insert/repeated_id`: duplicates of ids remembered in an index of 1M, looked up in
//!   random order (the table is far bigger than the CPU caches, as in production).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_benches::{events, publish_day, reference};
use meterflow_ingest::{fingerprint, DedupIndex};
use meterflow_testkit::workload::Rng;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The allocator the `meterflow` binary runs with: decode, enrich and the aggregator allocate per
/// event, so their figures depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Ids remembered before measuring.
const REMEMBERED: usize = 1_000_000;
/// The example config's `dedup_horizon_days`.
const HORIZON_DAYS: u16 = 37;
/// Lookups per iteration of `repeated_id`.
const CHUNK: usize = 1_000;

/// The fingerprint of the `n`-th synthetic event identity, shaped like the workload's.
fn synthetic_fingerprint(n: u64) -> u128 {
    let services = ["gateway", "llm", "auth", "storage"];
    let source = format!("svc-{}/{}", services[(n % 4) as usize], ["eu-1", "us-1"][(n / 4 % 2) as usize]);
    let id = format!("evt-7-{n:010}-{:04x}", n.wrapping_mul(0x9E37) & 0xFFFF);
    fingerprint(&source, &id)
}

fn filled(keys: &[u128], day: u16) -> DedupIndex {
    let mut index = DedupIndex::new(HORIZON_DAYS);
    for &fp in keys {
        index.check_and_insert(fp, day);
    }
    index
}

fn dedup(c: &mut Criterion) {
    let reference = reference();
    let sample = events(&reference, CHUNK);
    let day = publish_day();
    let remembered: Vec<u128> = (0..REMEMBERED as u64).map(synthetic_fingerprint).collect();
    let fresh: Vec<u128> = (REMEMBERED as u64..2 * REMEMBERED as u64).map(synthetic_fingerprint).collect();

    let mut group = c.benchmark_group("dedup");
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.bench_function("fingerprint", |b| {
        b.iter(|| {
            for e in &sample {
                black_box(fingerprint(black_box(&e.source), black_box(&e.id)));
            }
        })
    });

    let mut index = filled(&remembered, day);
    eprintln!(
        "dedup: {} ids remembered in {:.1} MiB ({:.1} bytes per id)",
        index.len(),
        index.memory_bytes() as f64 / (1 << 20) as f64,
        index.memory_bytes() as f64 / index.len() as f64
    );
    // Random order: consecutive duplicates rarely share a cache line in production either.
    let mut rng = Rng::new(7);
    let repeats: Vec<u128> = (0..100 * CHUNK).map(|_| remembered[rng.below(REMEMBERED as u64) as usize]).collect();
    let mut at = 0;
    group.bench_function("check_and_insert/repeated_id", |b| {
        b.iter(|| {
            let chunk = &repeats[at..at + CHUNK];
            at = (at + CHUNK) % repeats.len();
            for &fp in chunk {
                let new = index.check_and_insert(black_box(fp), day);
                debug_assert!(!new);
                black_box(new);
            }
        })
    });
    drop(index);

    group.throughput(Throughput::Elements(1));
    let mut index = filled(&remembered, day);
    let mut next = 0;
    group.bench_function("check_and_insert/new_id", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                if next == fresh.len() {
                    // Back to 1M remembered ids (untimed), so the table size stays realistic.
                    index = filled(&remembered, day);
                    next = 0;
                }
                let n = left.min(fresh.len() - next);
                let keys = &fresh[next..next + n];
                let start = Instant::now();
                for &fp in keys {
                    black_box(index.check_and_insert(black_box(fp), day));
                }
                timed += start.elapsed();
                next += n;
                left -= n;
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);

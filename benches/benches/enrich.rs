//! Stage: enrich, between decode and dedup: the subject → customer lookup
//! (`meterflow_ingest::Directory::lookup`), the plan version in force at the event time
//! (`meterflow_rater::pricing_at`), and the meter values and dimensions of the event
//! (`meterflow_aggregator::Meters::extract`, which parses values sent as JSON numbers and as
//! decimal strings and renders the dimensions' canonical JSON).
//!
//! The lookup is measured on the example directory (3 subjects) and on one of 10,000 customers
//! with two subjects each; `all_three` is the per-event enrich work of the pipeline in a row.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_benches::{events, reference};
use meterflow_ingest::{CustomerConfig, Directory};
use meterflow_rater::pricing_at;
use meterflow_testkit::workload::Rng;
use std::hint::black_box;

/// The allocator the `meterflow` binary runs with: decode, enrich and the aggregator allocate per
/// event, so their figures depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Events per iteration.
const EVENTS: usize = 1_000;
/// Customers of the large directory.
const CUSTOMERS: usize = 10_000;

fn large_directory() -> Directory {
    let customers = (0..CUSTOMERS)
        .map(|i| CustomerConfig {
            id: format!("cust-{i:05}"),
            name: None,
            subjects: vec![format!("cust-{i:05}").into(), format!("cust-{i:05}-eu").into()],
            currency: "USD".into(),
            legal_entity: "meterflow-inc-us".into(),
            erp_customer_id: format!("C-{i:05}"),
            plan: Some("growth-usd".into()),
            subscriptions: vec![],
            billing_anchor_day: 1,
            publish_subjects: vec![],
            attributes: Default::default(),
        })
        .collect();
    Directory::new(customers, "bench").expect("a valid directory")
}

fn enrich(c: &mut Criterion) {
    let reference = reference();
    let sample = events(&reference, EVENTS);
    let customers = reference.directory.customers();
    let subscriptions: Vec<_> = sample
        .iter()
        .map(|e| {
            let owner = reference.directory.lookup(&e.subject).expect("known subject");
            let i = customers.iter().position(|c| c.id == owner.id).expect("listed");
            (&reference.subscriptions[i], e.time)
        })
        .collect();
    let large = large_directory();
    let mut rng = Rng::new(11);
    let large_subjects: Vec<String> = (0..EVENTS)
        .map(|_| {
            let i = rng.below(CUSTOMERS as u64);
            if rng.below(2) == 0 {
                format!("cust-{i:05}")
            } else {
                format!("cust-{i:05}-eu")
            }
        })
        .collect();

    let mut group = c.benchmark_group("enrich");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.bench_function("directory_lookup/example_3_subjects", |b| {
        b.iter(|| {
            for e in &sample {
                black_box(reference.directory.lookup_at(black_box(&e.subject), e.time));
            }
        })
    });
    group.bench_function("directory_lookup/10k_customers", |b| {
        b.iter(|| {
            for s in &large_subjects {
                black_box(large.lookup_at(black_box(s), chrono::DateTime::UNIX_EPOCH));
            }
        })
    });
    group.bench_function("pricing_at", |b| {
        b.iter(|| {
            for (subs, t) in &subscriptions {
                black_box(pricing_at(&reference.prices, subs, black_box(*t)));
            }
        })
    });
    group.bench_function("meters_extract", |b| {
        b.iter(|| {
            for e in &sample {
                black_box(reference.meters.extract(black_box(e)).expect("valid values"));
            }
        })
    });
    group.bench_function("all_three", |b| {
        b.iter(|| {
            for (e, (subs, _)) in sample.iter().zip(&subscriptions) {
                black_box(reference.directory.lookup_at(&e.subject, e.time));
                black_box(pricing_at(&reference.prices, subs, e.time));
                black_box(reference.meters.extract(e).expect("valid values"));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, enrich);
criterion_main!(benches);

//! Stage: rating (`meterflow_rater::Charge::rate_delta`), at each commit after the window
//! flush: a row that moves a billing-period total from `before` to `after` is worth
//! `price(after) - price(before)`.
//!
//! One case per charge model, each the charge of the example plan `growth-usd`
//! (`examples/reference/plans.toml`), fed 1,000 window deltas that walk the period total across
//! its tiers or allowance:
//!
//! * `graduated` (`api_calls`, three tiers): hourly deltas of 1 to 4,000 requests, the total
//!   crossing 100k and 1M;
//! * `per_unit` (`llm_tokens`, 100k tokens included): deltas of 100 to 50,000 tokens;
//! * `volume` (`active_users`, two tiers): daily deltas of 1 to 4 user-days, crossing 1,000;
//! * `package` (`storage_peak`, 10 GB-day packages): daily peaks with three fractional digits.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow_benches::{base_time, reference};
use meterflow_rater::{Charge, ChargeModel};
use meterflow_testkit::workload::Rng;
use rust_decimal::Decimal;
use std::hint::black_box;

/// The allocator the `meterflow` binary runs with: decode, enrich and the aggregator allocate per
/// event, so their figures depend on it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Deltas rated per iteration.
const DELTAS: usize = 1_000;

/// `(before, after)` pairs of a period total growing by `step()`.
fn walk(mut step: impl FnMut() -> Decimal) -> Vec<(Decimal, Decimal)> {
    let mut total = Decimal::ZERO;
    (0..DELTAS)
        .map(|_| {
            let before = total;
            total += step();
            (before, total)
        })
        .collect()
}

fn rating(c: &mut Criterion) {
    let reference = reference();
    let plan = reference.prices.plan("growth-usd").expect("the example plan");
    let version = &plan.versions[plan.version_at(base_time()).expect("in force")];
    let charge = |meter: &str| -> Charge { version.charge(meter).expect("every meter is priced").clone() };
    let mut rng = Rng::new(5);
    let cases = [
        ("graduated", charge("api_calls"), walk(|| Decimal::from(1 + rng.below(4_000)))),
        ("per_unit", charge("llm_tokens"), walk(|| Decimal::from(100 + rng.below(49_900)))),
        ("volume", charge("active_users"), walk(|| Decimal::from(1 + rng.below(4)))),
        ("package", charge("storage_peak"), walk(|| Decimal::new(rng.below(10_000_000) as i64, 3))),
    ];

    let mut group = c.benchmark_group("rating");
    group.throughput(Throughput::Elements(DELTAS as u64));
    for (name, charge, deltas) in &cases {
        let model = match charge.model {
            ChargeModel::PerUnit { .. } => "per_unit",
            ChargeModel::Graduated { .. } => "graduated",
            ChargeModel::Volume { .. } => "volume",
            ChargeModel::Package { .. } => "package",
        };
        assert_eq!(model, *name, "the example plan's {} charge changed model", charge.meter);
        let last = deltas.last().map(|d| d.1).unwrap_or_default();
        eprintln!("rating/{name}: {} total {last}, price {}", charge.meter, charge.price(last).expect("exact"));
        group.bench_function(*name, |b| {
            b.iter(|| {
                for &(before, after) in deltas {
                    black_box(charge.rate_delta(black_box(before), black_box(after)).expect("exact"));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rating);
criterion_main!(benches);

//! The CI smoke version of the load test: a few seconds, correctness only. The figures it
//! prints are not benchmarks (debug build, tiny workload); BENCHMARKS.md has the real ones.

use meterflow_load_tests::{report::Summary, run_once, LoadOptions};
use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_run_measures_every_phase_and_its_totals_are_exact() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()));
    for batch_size in [1, 20] {
        let options = LoadOptions {
            config: root.join("../examples/meterflow.toml"),
            events: 3_000,
            batch_size,
            duplicate_every: 10,
            bad_every: 50,
            freshness_secs: 2,
            freshness_fraction: 0.5,
            commit_interval_ms: 200,
            seed: 3,
            customers: None,
            skew: 1.0,
            late_fraction: None,
            lateness_mean_s: 3_600.0,
            http: false,
            object_storage: false,
            cluster: false,
        };
        let run = run_once(&options).await.unwrap();
        assert!(run.exact, "totals differ from the oracle");
        assert_eq!((run.workload.customers, run.workload.subjects, run.late_generated), (2, 3, 0));
        eprintln!("batch {batch_size}: {} accepted, {} in rows flagged late", run.accepted, run.late_flagged);
        assert!(
            run.raw_publish.events_per_s > 0.0 && run.raw_consume.events_per_s > 0.0 && run.pipeline.events_per_s > 0.0
        );
        assert_eq!(run.raw_consume.messages, run.raw_publish.messages, "the ceiling consumer read every message");
        let f = run.freshness.clone().expect("freshness measured");
        assert!(f.samples > 0 && f.p50_ms <= f.p99_ms && f.p99_ms <= f.max_ms);
        let summary = Summary::new("smoke".into(), vec![run]);
        assert!(summary.markdown().contains("| **median** |"));
        let html = summary.html();
        assert!(html.contains("<svg") && !html.contains("http://") && !html.contains("https://"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_skewed_customers_with_ten_percent_late_events_are_still_billed_exactly() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()));
    let options = LoadOptions {
        config: root.join("../examples/meterflow.toml"),
        events: 3_000,
        batch_size: 10,
        duplicate_every: 10,
        bad_every: 50,
        freshness_secs: 1,
        freshness_fraction: 0.5,
        commit_interval_ms: 200,
        seed: 4,
        customers: Some(50),
        skew: 1.1,
        late_fraction: Some(0.1),
        lateness_mean_s: 3_600.0,
        http: false,
        object_storage: false,
        cluster: false,
    };
    let run = run_once(&options).await.unwrap();
    // Late usage is never lost: late events land in open windows or in rows flagged late, and
    // every total still equals the oracle.
    assert!(run.exact, "totals differ from the oracle");
    assert_eq!((run.workload.customers, run.workload.synthetic_customers), (50, true));
    assert!(run.late_generated > 300, "about a tenth of ~6,000 events is late: {}", run.late_generated);
    assert!(
        run.late_flagged > 0 && run.late_flagged < run.accepted / 2,
        "some rows are flagged late, most usage is on time: {} of {}",
        run.late_flagged,
        run.accepted
    );
    eprintln!(
        "{} accepted, {} generated late, {} in rows flagged late",
        run.accepted, run.late_generated, run.late_flagged
    );
    let summary = Summary::new("smoke".into(), vec![run]);
    let md = summary.markdown();
    assert!(md.contains("50 synthetic customers") && md.contains("10.0 % late"), "{md}");
    assert!(summary.html().contains("Zipf"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_posted_through_the_http_api_are_counted_exactly_and_queries_are_timed() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()));
    let options = LoadOptions {
        config: root.join("../examples/meterflow.toml"),
        events: 3_000,
        batch_size: 100,
        duplicate_every: 10,
        bad_every: 0,
        freshness_secs: 0,
        freshness_fraction: 0.5,
        commit_interval_ms: 200,
        seed: 5,
        customers: Some(20),
        skew: 1.0,
        late_fraction: None,
        lateness_mean_s: 3_600.0,
        http: true,
        object_storage: false,
        cluster: false,
    };
    let run = run_once(&options).await.unwrap();
    assert!(run.exact, "totals differ from the oracle");
    let http = run.http_ingest.clone().expect("HTTP ingest measured");
    assert!(http.events_per_s > 0.0 && run.http_ratio_to_publish.is_some());
    let q = run.query_latency.clone().expect("query latency measured");
    assert!(q.samples > 0 && q.p50_ms <= q.p99_ms, "{q:?}");
    let md = Summary::new("smoke".into(), vec![run]).markdown();
    assert!(md.contains("HTTP ingest"), "{md}");
}

//! Tables and state snapshots on S3-compatible object storage: a real S3 server (moto's server
//! mode) on loopback, the real `meterflow` binary, real Delta commits by conditional put.

use crate::common::{totals, wait_until, TestEnv};
use meterflow_sink::{CommitRange, Committed, RowKind, SinkError, StateStore, SummaryRow, SummaryTable};
use meterflow_testkit::local_s3::LocalS3;
use meterflow_testkit::workload::{self, WorkloadSpec};
use rust_decimal::Decimal;
use std::process::Output;
use std::time::Duration;

/// Periods close only by `meterflow close` (the workload's event times are in the past).
const NO_AUTO_CLOSE: (&str, &str) = ("METERFLOW_LATENESS__PERIOD_GRACE_S", "315360000");

/// A moto server with a bucket, and the test process's own S3 credentials (moto takes any; the
/// `meterflow` commands get them from [`LocalS3::envs`]).
fn s3() -> LocalS3 {
    std::env::set_var("AWS_ACCESS_KEY_ID", "meterflow-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "meterflow-test");
    LocalS3::start("meterflow-it").expect("moto_server starts (run scripts/tools.sh to install it)")
}

/// An environment whose `meterflow` commands keep their tables under `prefix` on `s3`.
fn env_on(s3: &LocalS3, prefix: &str) -> TestEnv {
    let mut env = TestEnv::start();
    for (k, v) in s3.envs(prefix) {
        env.envs.push((Box::leak(k.into_boxed_str()), Box::leak(v.into_boxed_str())));
    }
    env
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_object_storage_count_exactly_across_sigkills_and_bill_with_zero_variance() {
    let s3 = s3();
    let env = env_on(&s3, "prod");
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let spec = WorkloadSpec {
        events: 6_000,
        batch_size: 1,
        duplicate_every: 8,
        bad_every: 40,
        seed: 19,
        base_time: "2026-11-23T00:00:00Z".parse().unwrap(),
    };
    let (messages, oracle) = workload::generate(&spec, &crate::common::reference()).unwrap();
    workload::publish_all(&js, &messages, 256).await.unwrap();
    // Small pulls and frequent commits and snapshots: many commit boundaries to die between.
    let envs = [
        ("METERFLOW_NATS__FETCH_BATCH", "50"),
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "20"),
        ("METERFLOW_PIPELINE__SNAPSHOT_EVERY_COMMITS", "3"),
        NO_AUTO_CLOSE,
    ];
    let committed = || totals(&env).values().map(|v| v.2).sum::<u64>();
    let mut kills = 0;
    let mut partial = None;
    for round in 1..=2u64 {
        let mut child = env.spawn_run(&envs);
        let target = oracle.accepted * round / 4;
        wait_until(Duration::from_secs(120), || committed() >= target || child.try_wait().unwrap().is_some());
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.code().is_none() || out.status.success(),
            "meterflow run failed on object storage: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        partial.get_or_insert_with(committed);
    }
    assert!(kills >= 2, "the pipeline finished before it could be killed twice; make the workload larger");
    env.run_until_idle(&envs);

    let got = totals(&env);
    for (key, q) in &oracle.quantity {
        let (gq, ga, _) = got.get(key).copied().unwrap_or_default();
        assert_eq!(gq, *q, "quantity of {key:?}");
        assert_eq!(ga, oracle.amount[key], "amount of {key:?}");
    }
    assert_eq!(got.values().map(|v| v.2).sum::<u64>(), oracle.accepted);
    assert!(partial.unwrap_or_default() < oracle.accepted, "the first kill came after everything was committed");

    // Nothing of the tables or the state went to the local data directory; the snapshots are
    // beside the tables, where a worker on another machine finds them.
    for local in ["usage_summaries", "rejections", "_state"] {
        assert!(!env.data_dir().join(local).exists(), "{local} was written locally");
    }
    let root = s3.root("prod").unwrap();
    let snapshots = StateStore::open_at(&root).unwrap().list().await.unwrap();
    assert!(!snapshots.is_empty(), "no state snapshot on object storage");

    // The finance steps read and write the same tables there: zero variance.
    let run = |sub: &str, args: &[&str]| {
        let mut c = env.command(sub);
        c.args(args).envs([NO_AUTO_CLOSE]);
        c.output().unwrap()
    };
    ok(run("close", &["--period", "2026-11"]));
    ok(run("invoice", &["--period", "2026-11"]));
    ok(run("post", &["--period", "2026-11"]));
    let reconciled = ok(run("reconcile", &["--period", "2026-11", "--format", "json"]));
    assert!(!reconciled.trim().is_empty());
    let out = run("reconcile", &["--period", "2026-11"]);
    assert!(out.status.success(), "reconcile found variances: {}", String::from_utf8_lossy(&out.stdout));
    let invoiced = env.sql("SELECT CAST(SUM(amount) AS VARCHAR) FROM invoice_lines");
    assert!(invoiced.len() == 2 && !invoiced[1][0].is_empty(), "no invoice lines: {invoiced:?}");

    // Another engine reads the same table from the bucket: delta-rs's Python binding.
    let read = r#"
import os, sys, json, deltalake, pyarrow.compute as pc
t = deltalake.DeltaTable(sys.argv[1], storage_options={
    "AWS_ENDPOINT_URL": sys.argv[2], "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "meterflow-test", "AWS_SECRET_ACCESS_KEY": "meterflow-test"})
a = t.to_pyarrow_table(columns=["quantity", "event_count"])
sys.stdout.write(json.dumps({"quantity": str(pc.sum(a["quantity"]).as_py()), "events": pc.sum(a["event_count"]).as_py()}))
sys.stdout.flush()
os._exit(0)
"#;
    let out = std::process::Command::new(crate::common::tools_python())
        .arg("-c")
        .arg(read)
        .arg(format!("{}/usage_summaries", s3.url("prod")))
        .arg(s3.endpoint())
        .output()
        .unwrap();
    let text = ok(out);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let quantity: Decimal = v["quantity"].as_str().unwrap().parse().unwrap();
    assert_eq!(quantity, oracle.quantity.values().copied().sum::<Decimal>(), "quantity read by delta-rs Python");
    assert_eq!(v["events"].as_u64(), Some(oracle.accepted));
}

/// A usage row of acme's api_calls.
fn row(seq: u64) -> SummaryRow {
    let t = chrono::DateTime::from_timestamp(1_795_000_000 / 3600 * 3600, 0).unwrap();
    SummaryRow {
        customer_id: "acme".into(),
        subject: "acme".into(),
        meter: "api_calls".into(),
        dimensions: "{}".into(),
        window_start: t,
        window_end: t + chrono::Duration::hours(1),
        revision: seq,
        quantity: Decimal::ONE,
        amount: Decimal::ONE,
        currency: "USD".into(),
        plan_id: "p".into(),
        plan_version: "p@2026-01-01".into(),
        billing_period: "2026-11".into(),
        event_count: 1,
        first_seq: seq,
        last_seq: seq,
        row_kind: RowKind::Usage,
        reason: None,
        arrived_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_writers_racing_for_one_version_on_object_storage_exactly_one_commits() {
    let s3 = s3();
    let root = s3.root("race").unwrap();
    let range = |after, through| CommitRange { after, through, stream: Some(7), catalog: Some(1) };
    let mut a = SummaryTable::open_or_create(&root).await.unwrap();
    let mut b = SummaryTable::open_or_create(&root).await.unwrap();
    // A commits 1..=10; B, which never committed, reads the recorded progress first and is
    // fenced out of its own range 1..=12.
    assert!(matches!(a.commit(&[row(10)], range(0, 10)).await.unwrap(), Committed::Written(_)));
    let fenced = b.commit(&[row(12)], range(0, 12)).await;
    assert!(matches!(fenced, Err(SinkError::Fenced { recorded: 10, .. })), "{fenced:?}");
    // B takes over and commits 11..=20; A, whose handle still holds its own last commit,
    // writes without reading first: its log entry races B's for the same version, the
    // conditional put refuses it, and delta-rs's conflict check (the same application id)
    // fails the commit instead of retrying it as a later version.
    let mut b = SummaryTable::open_or_create(&root).await.unwrap();
    assert!(matches!(b.commit(&[row(20)], range(10, 20)).await.unwrap(), Committed::Written(_)));
    let stale = a.commit(&[row(20)], range(10, 20)).await;
    assert!(stale.is_err(), "a stale writer committed over another's version: {stale:?}");
    let again = SummaryTable::open_or_create(&root).await.unwrap();
    assert_eq!(again.committed_seq().await.unwrap(), 20);
    let sql = meterflow_sink::sql::ReadOnlySql::open(&root).await.unwrap();
    let rows = sql.rows("SELECT COUNT(*) FROM usage_summaries", &[]).await.unwrap();
    assert_eq!(rows.iter().next().unwrap().count(0).unwrap(), 2, "exactly one row per committed range");
}

//! End-to-end: real nats-server, the real `meterflow` binary, real Delta tables.

use crate::common::{event, publish, reference, sigterm, totals, wait_until, TestEnv};
use meterflow_testkit::workload::{self, WorkloadSpec};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::time::Duration;

/// Where the generated workloads' event times start: fixed (their 48 hours straddle globex's plan
/// change on 24 November), so no test depends on today's date.
fn workload_base() -> chrono::DateTime<chrono::Utc> {
    "2026-11-23T00:00:00Z".parse().unwrap()
}

/// Periods close only by `meterflow close`: with event times in the past, the watermark (at the
/// wall clock on a drained stream) would close them at a moment that depends on the run.
const NO_AUTO_CLOSE: (&str, &str) = ("METERFLOW_LATENESS__PERIOD_GRACE_S", "315360000");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_workload_is_counted_exactly_once_and_bad_events_land_in_the_dlq_with_reasons() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let t = "2026-11-23T05:00:00.123Z";
    publish(
        &js,
        "usage.api",
        event("e1", "acme", "api_calls", t, r#"{"requests":"3","region":"eu-west-1"}"#),
        Some("e1"),
    )
    .await;
    publish(
        &js,
        "usage.api",
        event("e2", "acme", "api_calls", "2026-11-23T05:59:59Z", r#"{"requests":2.5,"region":"eu-west-1"}"#),
        None,
    )
    .await;
    // The same (source, id) again: no Nats-Msg-Id, a different time. A duplicate.
    publish(
        &js,
        "usage.api",
        event("e1", "acme", "api_calls", "2026-11-23T06:10:00Z", r#"{"requests":"3","region":"eu-west-1"}"#),
        None,
    )
    .await;
    // Batch mode: good and bad events in one message.
    let batch = format!(
        "[{}, {}, {}, {}]",
        event("e3", "globex-eu", "llm_tokens", t, r#"{"tokens":1000,"model":"large"}"#),
        event("bad-time", "globex", "llm_tokens", "yesterday", r#"{"tokens":1,"model":"large"}"#),
        event("e4", "globex", "llm_tokens", t, r#"{"tokens":"500","model":"large"}"#),
        event("bad-neg", "globex", "llm_tokens", t, r#"{"tokens":-5,"model":"large"}"#),
    );
    let batch_seq = publish(&js, "usage.llm", batch, None).await;
    publish(&js, "usage.bad", r#"{"specversion":"1.0","id":"#.to_string(), None).await;
    publish(&js, "usage.api", event("e5", "initech", "api_calls", t, r#"{"requests":1}"#), None).await;
    publish(&js, "usage.x", event("e6", "acme", "teleports", t, "{}"), None).await;
    for (id, user) in [("u1", "alice"), ("u2", "bob"), ("u3", "alice")] {
        publish(&js, "usage.users", event(id, "acme", "user_seen", t, &format!(r#"{{"user_id":"{user}"}}"#)), None)
            .await;
    }
    let before_change =
        event("g1", "globex", "api_calls", "2026-11-23T23:30:00Z", r#"{"requests":"1000","region":"eu-west-1"}"#);
    publish(&js, "usage.api", before_change, None).await;
    let after_change =
        event("g2", "globex", "api_calls", "2026-11-24T00:30:00Z", r#"{"requests":1000,"region":"eu-west-1"}"#);
    publish(&js, "usage.api", after_change, None).await;
    for (id, gb) in [("s1", "10.5"), ("s2", "12.25"), ("s3", "11")] {
        publish(&js, "usage.storage", event(id, "acme", "storage", t, &format!(r#"{{"gigabytes":"{gb}"}}"#)), None)
            .await;
    }

    let out = env.run_until_idle(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 duplicates"), "{stdout}");

    let got = totals(&env);
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let key = |c: &str, m: &str| (c.to_string(), m.to_string());
    assert_eq!(got[&key("acme", "api_calls")], (d("5.5"), d("0.0011"), 2));
    assert_eq!(got[&key("globex", "llm_tokens")], (d("1500"), d("0.0042"), 2));
    assert_eq!(got[&key("acme", "active_users")], (d("2"), d("0.10"), 3));
    // Package pricing: ceil(12.25 / 10) = 2 blocks of 10 GB-days at 0.10.
    assert_eq!(got[&key("acme", "storage_peak")], (d("12.25"), d("0.20"), 3));
    // A plan change at midnight on 24 November splits globex's api_calls between versions.
    assert_eq!(got[&key("globex", "api_calls")], (d("2000"), d("0.34"), 2));
    let by_version = env.sql(
        "SELECT plan_version, SUM(quantity), SUM(amount) FROM usage_summaries WHERE meter = 'api_calls' AND \
            customer_id = 'globex' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(by_version[1], vec!["growth-eur@2026-01-01", "1000.000000000", "0.180000000000000000"]);
    assert_eq!(by_version[2], vec!["growth-eur@2026-11-24", "1000.000000000", "0.160000000000000000"]);
    assert_eq!(got.len(), 5);
    // globex's billing periods start on the 15th; acme's are calendar months.
    let periods = env.sql("SELECT customer_id, billing_period FROM usage_summaries GROUP BY 1, 2 ORDER BY 1, 2");
    assert_eq!(periods[1..], [vec!["acme", "2026-11"], vec!["globex", "2026-11-15"]]);

    // Windows are exact UTC hours; dimensions carry the group-by values.
    let rows = env.sql(
        "SELECT window_start, window_end, dimensions, quantity FROM window_totals WHERE meter = \
            'api_calls' AND customer_id = 'acme'",
    );
    assert_eq!(
        rows[1],
        vec!["2026-11-23T05:00:00Z", "2026-11-23T06:00:00Z", "\"{\"\"region\"\":\"\"eu-west-1\"\"}\"", "5.500000000"]
    );

    // The DLQ holds each reject with its reason, original bytes and source sequence.
    let mut dlq = js.get_stream("USAGE_DLQ").await.unwrap();
    let n = dlq.info().await.unwrap().state.messages;
    let mut reasons = BTreeMap::new();
    for seq in 1..=n {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let h = &m.headers;
        let reason = h.get("Meterflow-Reason").unwrap().to_string();
        if reason == "invalid_time" || reason == "negative_value" {
            assert_eq!(h.get("Meterflow-Stream-Seq").unwrap().as_str(), batch_seq.to_string());
            let index = h.get("Meterflow-Event-Index").unwrap().to_string();
            assert_eq!(index, if reason == "invalid_time" { "1" } else { "3" });
            let body = String::from_utf8(m.payload.to_vec()).unwrap();
            assert!(
                body.starts_with("{\"specversion\"")
                    && body.contains(if reason == "invalid_time" { "bad-time" } else { "bad-neg" })
            );
        }
        if reason == "invalid_json" {
            assert_eq!(m.payload.as_ref(), br#"{"specversion":"1.0","id":"#);
        }
        *reasons.entry(reason).or_insert(0) += 1;
    }
    let want: BTreeMap<String, i32> =
        [("invalid_time", 1), ("negative_value", 1), ("invalid_json", 1), ("unknown_subject", 1), ("unknown_type", 1)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(reasons, want);

    // Running again over the same stream changes nothing.
    env.run_until_idle(&[]);
    assert_eq!(totals(&env), got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_pipeline_with_sigkill_mid_run_loses_and_doubles_nothing() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let spec = WorkloadSpec {
        events: 20_000,
        batch_size: 1,
        duplicate_every: 8,
        bad_every: 40,
        seed: 7,
        base_time: workload_base(),
    };
    let (messages, oracle) = workload::generate(&spec, &reference()).unwrap();
    workload::publish_all(&js, &messages, 256).await.unwrap();
    // Small pulls and frequent commits and snapshots: many commit boundaries to die between.
    let envs = [
        ("METERFLOW_NATS__FETCH_BATCH", "50"),
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "10"),
        ("METERFLOW_PIPELINE__SNAPSHOT_EVERY_COMMITS", "3"),
        NO_AUTO_CLOSE,
    ];

    let mut kills = 0;
    let mut partial = None;
    for round in 0..4 {
        let mut child = env.spawn_run(&envs);
        let before = env.commit_files();
        // Die at a different point each round: after a few more commits, at varying offsets.
        let target = before + 3 + round * 10;
        wait_until(Duration::from_secs(60), || env.commit_files() >= target);
        std::thread::sleep(Duration::from_millis(3 * round as u64));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        partial.get_or_insert_with(|| totals(&env).values().map(|v| v.2).sum::<u64>());
    }
    eprintln!("SIGKILLed the pipeline {kills} times; {partial:?} events were committed after the first kill");
    assert!(kills >= 2, "the pipeline finished before it could be killed twice; make the workload larger");
    env.run_until_idle(&envs);

    let got = totals(&env);
    for (key, q) in &oracle.quantity {
        let (gq, ga, _) = got.get(key).copied().unwrap_or_default();
        assert_eq!(gq, *q, "quantity of {key:?}");
        assert_eq!(ga, oracle.amount[key], "amount of {key:?}");
    }
    let events: u64 = got.values().map(|v| v.2).sum();
    // Every accepted event is in exactly one row per meter it feeds (one meter per type here).
    assert_eq!(events, oracle.accepted);
    let partial = partial.unwrap_or_default();
    assert!(partial < events, "the first kill happened after everything was committed ({partial} of {events})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_what_is_in_hand_and_exits_cleanly() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let spec = WorkloadSpec {
        events: 3_000,
        batch_size: 10,
        duplicate_every: 0,
        bad_every: 0,
        seed: 9,
        base_time: workload_base(),
    };
    let (messages, oracle) = workload::generate(&spec, &reference()).unwrap();
    let mut child = env.spawn_run(&[NO_AUTO_CLOSE]);
    workload::publish_all(&js, &messages, 256).await.unwrap();
    let expected = oracle.accepted;
    let done = wait_until(Duration::from_secs(60), || {
        env.commit_files() > 1 && totals(&env).values().map(|v| v.2).sum::<u64>() == expected
    });
    assert!(done, "usage did not become visible while running");
    sigterm(&child);
    // A guard against hanging, not a speed claim: shutdown must finish at all.
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "no exit after SIGTERM"
    );
    let status = status.unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(totals(&env).values().map(|v| v.2).sum::<u64>(), expected);
}

#[test]
fn sql_that_would_write_or_read_files_is_refused_with_a_clear_message() {
    let env = TestEnv::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        env.ensure_streams().await;
        let js = env.jetstream().await;
        publish(&js, "usage.api", event("e1", "acme", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":1}"#), None)
            .await;
    });
    env.run_until_idle(&[]);
    for bad in [
        "DELETE FROM usage_summaries",
        "COPY usage_summaries TO '/tmp/x.csv'",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let out = env.command("sql").arg(bad).output().unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("read-only") || err.contains("not supported") || err.contains("not allowed"),
            "{bad}: {err}"
        );
    }
}

/// The Python used to cross-read tables: `$DELTA_READER_PYTHON` (set by scripts/tools.sh) or
/// the project's `.tools/venv`.
fn reader_python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("DELTA_READER_PYTHON") {
        return p.into();
    }
    let local = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
    )
    .join("../.tools/venv/bin/python");
    assert!(local.is_file(), "no Python with deltalake and duckdb: run `bash scripts/tools.sh` first");
    local
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_engines_read_the_delta_table_and_get_the_same_exact_totals() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let spec = WorkloadSpec {
        events: 4_000,
        batch_size: 25,
        duplicate_every: 5,
        bad_every: 7,
        seed: 11,
        base_time: workload_base(),
    };
    let (messages, oracle) = workload::generate(&spec, &reference()).unwrap();
    workload::publish_all(&js, &messages, 256).await.unwrap();
    env.run_until_idle(&[
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "100"),
        ("METERFLOW_NATS__FETCH_BATCH", "20"),
        NO_AUTO_CLOSE,
    ]);

    // delta-rs's Python binding reads the Delta log and lists the table's current data files;
    // DuckDB sums the decimals in those Parquet files. Each engine runs in its own process and
    // leaves with os._exit after flushing its output: a native thread (DuckDB's, Arrow's or
    // delta-rs's runtime) torn down at interpreter exit once killed the reader with "terminate
    // called without an active exception" after its work was done.
    let list_files = r#"
import json, os, sys, deltalake
t = deltalake.DeltaTable(sys.argv[1])
sys.stdout.write(json.dumps({"version": t.version(), "files": t.file_uris()}))
sys.stdout.flush()
os._exit(0)
"#;
    let sum_files = r#"
import json, os, sys, duckdb
files = json.loads(sys.stdin.read())["files"]
paths = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
rows = duckdb.sql(f"SELECT customer_id, meter, CAST(SUM(quantity) AS VARCHAR), CAST(SUM(amount) AS VARCHAR) \
    FROM read_parquet({paths}) GROUP BY ALL ORDER BY ALL").fetchall()
for r in rows:
    print(",".join(r))
sys.stdout.flush()
os._exit(0)
"#;
    let table = env.data_dir().join("usage_summaries");
    let listed = std::process::Command::new(reader_python()).arg("-c").arg(list_files).arg(&table).output().unwrap();
    assert!(listed.status.success(), "deltalake reader failed: {}", String::from_utf8_lossy(&listed.stderr));
    let log: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(!log["files"].as_array().unwrap().is_empty(), "no data files in the Delta log: {log}");
    let mut duckdb = std::process::Command::new(reader_python())
        .arg("-c")
        .arg(sum_files)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        duckdb.stdin.take().unwrap().write_all(&listed.stdout).unwrap();
    }
    let out = duckdb.wait_with_output().unwrap();
    assert!(out.status.success(), "DuckDB reader failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut seen = 0;
    for line in text.lines() {
        let f: Vec<&str> = line.split(',').collect();
        let key = (f[0].to_string(), f[1].to_string());
        assert_eq!(f[2].parse::<Decimal>().unwrap(), oracle.quantity[&key], "DuckDB quantity of {key:?}");
        assert_eq!(f[3].parse::<Decimal>().unwrap(), oracle.amount[&key], "DuckDB amount of {key:?}");
        seen += 1;
    }
    assert_eq!(seen, oracle.quantity.len());
    // And meterflow's own SQL agrees.
    let ours = totals(&env);
    for (key, q) in &oracle.quantity {
        assert_eq!(ours[key].0, *q);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerate_after_a_price_correction_appends_the_difference_once() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    for (i, requests) in [40_000, 70_000].iter().enumerate() {
        let body = format!(r#"{{"requests":{requests},"region":"eu-west-1"}}"#);
        publish(&js, "usage.api", event(&format!("r{i}"), "acme", "api_calls", "2026-11-23T05:00:00Z", &body), None)
            .await;
    }
    env.run_until_idle(&[]);
    // 110,000 requests, graduated: 100,000 x 0.0002 + 10,000 x 0.00015 = 21.50
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let key = ("acme".to_string(), "api_calls".to_string());
    assert_eq!(totals(&env)[&key].1, d("21.50"));

    // Finance corrects the first tier's price in place through the catalog: 0.0002 -> 0.00025.
    let plans = std::fs::read_to_string(crate::common::examples_dir().join("reference/plans.toml")).unwrap();
    let fixed = plans
        .replace(r#"{ up_to = "100000", unit_price = "0.0002" }"#, r#"{ up_to = "100000", unit_price = "0.00025" }"#);
    assert_ne!(plans, fixed);
    let corrected = env.dir.path().join("corrected-plans.toml");
    std::fs::write(&corrected, fixed).unwrap();
    let applied = env.command("catalog").arg("apply").arg(&corrected).output().unwrap();
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    assert!(String::from_utf8_lossy(&applied.stdout).contains("~ plan growth-usd: versions"));

    let rerate = || {
        let out = env.command("rerate").args(["--period", "2026-11"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let first = rerate();
    assert!(first.contains("adjustment 5.00"), "{first}");
    // 100,000 x 0.00025 + 10,000 x 0.00015 = 26.50, and the original rows are untouched.
    assert_eq!(totals(&env)[&key].1, d("26.50"));
    let kinds = env.sql(
        "SELECT row_kind = 'rerate' AS rerate, COUNT(*), SUM(amount), SUM(quantity) FROM usage_summaries GROUP \
            BY 1 ORDER BY 1",
    );
    assert_eq!(kinds[1], vec!["false", "1", "21.500000000000000000", "110000.000000000"]);
    assert_eq!(kinds[2], vec!["true", "1", "5.000000000000000000", "0.000000000"]);

    let files_before = env.commit_files();
    let second = rerate();
    assert!(second.contains("nothing written"), "{second}");
    assert_eq!(env.commit_files(), files_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_beyond_the_backdating_or_skew_bounds_are_rejected_with_their_reason() {
    let env = TestEnv::start_with_default_bounds();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let now = chrono::Utc::now();
    let at = |d: chrono::Duration| (now + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = r#"{"requests":1,"region":"eu-west-1"}"#;
    publish(&js, "usage.api", event("fresh", "acme", "api_calls", &at(chrono::Duration::hours(-1)), body), None).await;
    publish(&js, "usage.api", event("old-ok", "acme", "api_calls", &at(chrono::Duration::days(-34)), body), None).await;
    publish(&js, "usage.api", event("ancient", "acme", "api_calls", &at(chrono::Duration::days(-36)), body), None)
        .await;
    publish(&js, "usage.api", event("soon", "acme", "api_calls", &at(chrono::Duration::minutes(4)), body), None).await;
    publish(&js, "usage.api", event("later", "acme", "api_calls", &at(chrono::Duration::minutes(10)), body), None)
        .await;
    env.run_until_idle(&[]);
    let events: u64 = totals(&env).values().map(|v| v.2).sum();
    assert_eq!(events, 3);
    let mut dlq = js.get_stream("USAGE_DLQ").await.unwrap();
    let n = dlq.info().await.unwrap().state.messages;
    let mut reasons = Vec::new();
    for seq in 1..=n {
        let m = dlq.get_raw_message(seq).await.unwrap();
        reasons.push(m.headers.get("Meterflow-Reason").unwrap().to_string());
    }
    reasons.sort();
    assert_eq!(reasons, vec!["future_time", "too_old"]);
    // The same rejects are countable with SQL.
    let by_reason = env.sql("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason");
    assert_eq!(by_reason[1..], [vec!["future_time", "1"], vec!["too_old", "1"]]);
}

#[test]
fn a_dedup_horizon_shorter_than_the_backdating_limit_is_refused_at_start() {
    let env = TestEnv::start_with_default_bounds();
    let out = env
        .command("run")
        .env("METERFLOW_PIPELINE__DEDUP_HORIZON_DAYS", "36")
        .args(["--exit-when-idle", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dedup_horizon_days = 36 does not cover") && err.contains("at least 37"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_after_its_window_closed_still_counts_in_a_row_flagged_late() {
    let env = TestEnv::start_with_default_bounds();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let now = chrono::Utc::now();
    let at =
        |minutes: i64| (now - chrono::Duration::minutes(minutes)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = r#"{"requests":2,"region":"eu-west-1"}"#;
    // The newest event moves the api_calls watermark to about now - 2 minutes.
    publish(&js, "usage.api", event("recent", "acme", "api_calls", &at(1), body), None).await;
    // Five hours old: its hour window closed (end + 1 h allowed lateness) long ago.
    publish(&js, "usage.api", event("straggler", "acme", "api_calls", &at(300), body), None).await;
    // Twenty minutes old: its window is still open.
    publish(&js, "usage.api", event("on-time", "acme", "api_calls", &at(20), body), None).await;
    // The last five hours may straddle a month's end: no period closes here, so every row
    // stays a window row ('usage' or 'late'), never an 'adjustment'.
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    let kinds = env.sql("SELECT row_kind, SUM(event_count), SUM(quantity) FROM usage_summaries GROUP BY 1 ORDER BY 1");
    assert_eq!(kinds[1], vec!["late", "1", "2.000000000"]);
    assert_eq!(kinds[2], vec!["usage", "2", "4.000000000"]);
    let arrived = env.sql("SELECT COUNT(*) FROM usage_summaries WHERE arrived_at IS NULL");
    assert_eq!(arrived[1], vec!["0"]);
    // The straggler's window ended four to five hours before it arrived.
    let late = env.sql("SELECT meter, row_kind, lateness, events FROM late_usage");
    assert_eq!(late[1..], [vec!["api_calls", "late", "2: 1-6 hours", "1"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_for_a_closed_period_becomes_an_adjustment_and_the_period_stays_closed() {
    let env = TestEnv::start_with_default_bounds();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    // Both events at one instant a few minutes back (within the default backdating bound), so
    // they lie in one month, whatever the time of day and the day of the month.
    let at = chrono::Utc::now() - chrono::Duration::minutes(5);
    let this_month = meterflow_rater::Period::month_of(at).unwrap().label();
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = r#"{"requests":3,"region":"eu-west-1"}"#;
    publish(&js, "usage.api", event("a", "acme", "api_calls", &at, body), None).await;
    env.run_until_idle(&[]);

    let close = || {
        let out = env.command("close").args(["--period", &this_month]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert!(close().starts_with(&format!("closed {this_month}")));
    // Late usage for the closed period still counts, as an adjustment.
    publish(&js, "usage.api", event("b", "acme", "api_calls", &at, body), None).await;
    env.run_until_idle(&[]);
    let kinds = env.sql("SELECT row_kind, SUM(event_count), SUM(quantity) FROM usage_summaries GROUP BY 1 ORDER BY 1");
    assert_eq!(kinds[1], vec!["adjustment", "1", "3.000000000"]);
    assert_eq!(kinds[2][1], "1");
    let key = ("acme".to_string(), "api_calls".to_string());
    assert_eq!(totals(&env)[&key].0, "6".parse::<Decimal>().unwrap());

    // Closing again does not reopen or re-seal it.
    assert!(close().contains("was already closed"), "closing twice must be a no-op");
    let periods =
        env.sql(&format!("SELECT closed_by, sealed_version FROM billing_periods WHERE period = '{this_month}'"));
    assert_eq!(periods.len(), 2, "{periods:?}");
    assert_eq!(periods[1][0], "manual");
    // The sealed version shows the period as it was at close: the first event only.
    let sealed: u64 = periods[1][1].parse().unwrap();
    assert!(sealed >= 1);
}

/// No grace period: last month is due as soon as the watermark passes its end.
const NO_GRACE: [(&str, &str); 1] = [("METERFLOW_LATENESS__PERIOD_GRACE_S", "0")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_period_closes_by_itself_once_the_watermark_passes_its_end_plus_grace() {
    let env = TestEnv::start_with_default_bounds();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let now = chrono::Utc::now();
    // "Last month" is the month before the one five minutes ago: it ended at least five minutes
    // ago, so the current event below (a minute old, its watermark a minute behind it) passes
    // its end at any instant, also in the first minutes of a month, while the current event's
    // own month has not ended.
    let recent_month = meterflow_rater::Period::month_of(now - chrono::Duration::minutes(5)).unwrap();
    let last_month = meterflow_rater::Period::month_of(recent_month.start - chrono::Duration::days(1)).unwrap();
    let stamp = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = r#"{"requests":5,"region":"eu-west-1"}"#;
    let late_in_last_month = stamp(last_month.end - chrono::Duration::hours(2));
    // Current usage first: it moves the watermark to now, so the straggler after it is late.
    let current = stamp(now - chrono::Duration::minutes(1));
    publish(&js, "usage.api", event("c1", "acme", "api_calls", &current, body), None).await;
    publish(&js, "usage.api", event("l1", "acme", "api_calls", &late_in_last_month, body), None).await;
    env.run_until_idle(&NO_GRACE);
    let periods = env.sql("SELECT period, closed_by FROM billing_periods ORDER BY period");
    assert_eq!(periods[1..], [vec![last_month.label(), "watermark".to_string()]], "only last month is due");

    publish(&js, "usage.api", event("l2", "acme", "api_calls", &late_in_last_month, body), None).await;
    env.run_until_idle(&NO_GRACE);
    let rows = env.sql(&format!(
        "SELECT row_kind, SUM(quantity) FROM usage_summaries WHERE window_start < TIMESTAMP '{}' GROUP BY 1 ORDER BY 1",
        stamp(last_month.end)
    ));
    assert_eq!(
        rows[1..],
        [
            vec!["adjustment".to_string(), "5.000000000".to_string()],
            vec!["late".to_string(), "5.000000000".to_string()]
        ]
    );
}

#[test]
fn hostile_queries_hit_the_configured_limits_with_a_clear_message() {
    let env = TestEnv::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        env.ensure_streams().await;
        let js = env.jetstream().await;
        publish(&js, "usage.api", event("e1", "acme", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":1}"#), None)
            .await;
    });
    env.run_until_idle(&[]);
    let sql = |q: &str, envs: &[(&str, &str)]| env.command("sql").envs(envs.iter().copied()).arg(q).output().unwrap();
    let out = sql(
        // One array of 9 million values: an accumulator that cannot spill (a GROUP BY may spill
        // to disk and finish, so it would not prove the limit).
        "SELECT array_length(array_agg(a.value * 100000 + b.value)) FROM generate_series(1, 3000) a \
         CROSS JOIN generate_series(1, 3000) b",
        &[("METERFLOW_SQL__MEMORY_LIMIT_MB", "4"), ("METERFLOW_SQL__TIMEOUT_S", "120")],
    );
    assert!(!out.status.success(), "9 million values do not fit in 4 MB");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory_limit_mb"), "{}", &err[..err.len().min(500)]);
    let out = sql(
        "SELECT SUM(a.value * b.value) FROM generate_series(1, 1000000) a CROSS JOIN generate_series(1, 1000000) b",
        &[("METERFLOW_SQL__TIMEOUT_S", "1")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout_s"));
    let out = sql("SELECT value FROM generate_series(1, 50)", &[("METERFLOW_SQL__MAX_ROWS", "7")]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("output cut at 7 rows"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("| ")).count(), 8);
    // header + 7
}

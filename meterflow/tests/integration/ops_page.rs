//! The metrics endpoint and the operations page of a running pipeline, checked over HTTP and in
//! a real headless Chromium (Debian's `chromium`, installed by `scripts/tools.sh`). The browser's
//! screenshot is kept as a test artifact: `<target>/tmp/ops-page.png`.

use crate::common::{reference, sigterm, wait_until, TestEnv};
use meterflow_testkit::local_nats::free_port;
use meterflow_testkit::workload::{self, WorkloadSpec};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A plain HTTP GET: (status line, body).
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// The value of a metric line (first sample whose name and labels start with `prefix`).
fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .filter_map(|b| {
            std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(b)).find(|c| c.is_file()))
        })
        .next()
        .expect("headless Chromium is needed: run `bash scripts/tools.sh` (installs Debian's chromium)")
}

fn headless(args: &[&str], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap()
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The workload's event times are fixed (48 hours from 10 June 2026), so they lie long past and
/// would be closed by the watermark (at the wall clock once the stream is drained) while the
/// workload still arrives: here periods close only by `meterflow close`.
const NO_AUTO_CLOSE: (&str, &str) = ("METERFLOW_LATENESS__PERIOD_GRACE_S", "315360000");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_page_shows_the_running_pipeline_in_a_real_browser() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let port = free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let envs = [("METERFLOW_OPS__LISTEN", listen.as_str()), ("METERFLOW_OPS__REFRESH_S", "1"), NO_AUTO_CLOSE];
    let mut child = env.spawn_run(&envs);
    let spec = WorkloadSpec {
        events: 3_000,
        batch_size: 5,
        duplicate_every: 9,
        bad_every: 20,
        seed: 5,
        base_time: "2026-06-10T00:00:00Z".parse().unwrap(),
    };
    let (messages, oracle) = workload::generate(&spec, &reference()).unwrap();
    let js = env.jetstream().await;
    // Two waves, a few seconds apart, so the throughput chart has a shape.
    let (a, b) = messages.split_at(messages.len() / 2);
    workload::publish_all(&js, a, 256).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    workload::publish_all(&js, b, 256).await.unwrap();

    // Metrics: the counters equal the workload's oracle once the pipeline has caught up. Caught
    // up means committed through the stream's real last sequence, read here from the broker: the
    // lag gauge is refreshed at most once a second, and the accepted count is reached before the
    // late duplicates at the end of the workload are read.
    let last = js.get_stream("USAGE").await.unwrap().info().await.unwrap().state.last_sequence;
    let mut text = String::new();
    let caught_up = wait_until(Duration::from_secs(60), || {
        text = get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        metric(&text, "meterflow_events_accepted_total") == Some(oracle.accepted as f64)
            && metric(&text, "meterflow_committed_sequence") == Some(last as f64)
            && metric(&text, "meterflow_consumer_lag_messages") == Some(0.0)
    });
    assert!(caught_up, "metrics never showed the workload: {text}");
    // Counted in memory is not committed: wait until the tables hold every event before closing.
    let committed = wait_until(Duration::from_secs(60), || {
        env.sql("SELECT SUM(event_count) FROM usage_summaries")[1][0] == oracle.accepted.to_string()
    });
    assert!(committed, "the workload was never fully committed");
    assert_eq!(metric(&text, "meterflow_events_duplicate_total"), Some(oracle.duplicates as f64), "{text}");
    for (reason, n) in &oracle.rejected {
        assert_eq!(metric(&text, &format!("meterflow_events_rejected_total{{reason=\"{reason}\"}}")), Some(*n as f64));
    }
    for name in [
        "# TYPE meterflow_commit_duration_seconds histogram",
        "# TYPE meterflow_commit_interval_seconds histogram",
        "meterflow_parquet_files_written_total",
        "meterflow_parquet_written_bytes_total",
        "meterflow_watermark_age_seconds{meter=\"api_calls\"}",
        "meterflow_open_windows",
        "meterflow_committed_sequence",
    ] {
        assert!(text.contains(name), "{name} missing from {text}");
    }
    assert!(metric(&text, "meterflow_parquet_written_bytes_total").unwrap_or(0.0) > 0.0);
    assert_eq!(get(port, "/nowhere").unwrap().0, "HTTP/1.1 404 Not Found");

    // The period close, so the page has billing to show.
    let status: serde_json::Value =
        serde_json::from_str(&ok(env.command("status").args(["--format", "json"]).output().unwrap())).unwrap();
    let periods: Vec<String> =
        status["periods"].as_array().unwrap().iter().map(|p| p["period"].as_str().unwrap().to_string()).collect();
    assert!(!periods.is_empty());
    for p in &periods {
        ok(env.command("close").args(["--period", p]).output().unwrap());
    }
    for p in &periods {
        ok(env.command("invoice").args(["--period", p]).output().unwrap());
        ok(env.command("post").args(["--period", p]).output().unwrap());
        ok(env.command("reconcile").args(["--period", p]).output().unwrap());
    }
    let shown = wait_until(Duration::from_secs(30), || {
        let page = get(port, "/").map(|(_, b)| b).unwrap_or_default();
        periods.iter().all(|p| page.contains(&format!("<td>{p}</td>")))
            && page.matches("zero variance").count() == periods.len()
    });
    assert!(shown, "the page never showed the closed periods: {}", get(port, "/").unwrap().1);
    // Lineage: an accepted event leads to its summary row, invoice line and ERP postings; a
    // duplicate and a reject say why they were not counted.
    let trace = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = ok(env.command("trace").args(args).args(["--format", "json"]).output().unwrap());
        serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().unwrap().clone()
    };
    let first = env.sql("SELECT MIN(first_seq) FROM usage_summaries")[1][0].clone();
    let traced = trace(&["--seq", &first]);
    let counted = traced.iter().find(|t| t["outcome"] == "counted").expect("an accepted event in the message");
    assert!(!counted["summary_rows"].as_array().unwrap().is_empty());
    let lines = counted["invoice_lines"].as_array().unwrap();
    assert!(!lines.is_empty(), "no invoice line for {counted}");
    assert!(lines[0].to_string().contains("INV-"), "{counted}");
    let postings = counted["postings"].to_string();
    assert!(postings.contains("posted") && postings.contains(".ar"), "{counted}");
    let dup = env.sql("SELECT stream_seq, event_index FROM duplicates ORDER BY stream_seq LIMIT 1");
    let mut args = vec!["--seq", dup[1][0].as_str()];
    if !dup[1][1].is_empty() {
        args.extend(["--index", dup[1][1].as_str()]);
    }
    let t = trace(&args);
    assert_eq!(t[0]["outcome"], "duplicate", "{t:?}");
    assert!(t[0]["detail"].as_str().unwrap().contains("source="), "{t:?}");
    let rej =
        env.sql("SELECT stream_seq, reason FROM rejections WHERE event_index IS NULL ORDER BY stream_seq LIMIT 1");
    let t = trace(&["--seq", &rej[1][0]]);
    assert_eq!(t[0]["outcome"], "rejected", "{t:?}");
    assert!(t[0]["detail"].as_str().unwrap().starts_with(&rej[1][1]), "{t:?}");

    tokio::time::sleep(Duration::from_secs(3)).await; // one more history sample

    // The page, as a real browser renders it.
    let url = format!("http://{listen}/");
    let dom = ok(headless(&["--dump-dom"], &url));
    let accepted = format!("<div class=\"card\" id=\"accepted\"><b>{}</b>", oracle.accepted);
    assert!(dom.contains(&accepted), "accepted events not shown: {dom}");
    assert!(dom.contains("<div class=\"card\" id=\"lag\"><b>0</b>"), "{dom}");
    for reason in oracle.rejected.keys() {
        assert!(dom.contains(&format!("<td>{reason}</td>")), "reject reason {reason} not shown");
    }
    assert!(dom.contains("id=\"throughput-chart\"") && dom.contains("<polyline"), "no throughput chart");
    assert!(dom.contains("id=\"watermarks\"") && dom.contains("<td>api_calls</td>"), "no watermarks");
    for p in &periods {
        assert!(dom.contains(&format!("<td>{p}</td><td>closed (")), "period {p} not shown closed: {dom}");
    }
    assert!(dom.contains(" posted</span>"), "posting status not shown");
    assert_eq!(dom.matches("zero variance").count(), periods.len(), "reconciliation not shown");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ops-page.png");
    std::fs::remove_file(&shot).ok();
    ok(headless(&[&format!("--screenshot={}", shot.display()), "--window-size=1280,1500"], &url));
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "no screenshot at {}", shot.display());
    eprintln!("screenshot of the operations page: {}", shot.display());

    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

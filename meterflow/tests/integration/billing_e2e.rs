//! End-to-end period close: a fixed workload through the real pipeline, then `close`,
//! `invoice`, `post` (folder, hledger, HTTP) and `reconcile` with the real binary.
//!
//! Golden invoices live in `tests/golden/invoices/`. After an intended change, regenerate them
//! with `UPDATE_GOLDEN=1 bash scripts/test.sh --test integration -- billing_e2e` and review the diff.

use crate::common::{event, publish, TestEnv};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Periods never close by themselves here (their ends are long past): the test closes them.
const NO_AUTO_CLOSE: (&str, &str) = ("METERFLOW_LATENESS__PERIOD_GRACE_S", "315360000");

fn golden_dir() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()))
        .join("tests/golden/invoices")
}

fn ok(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "command failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    text
}

fn run(env: &TestEnv, sub: &str, args: &[&str]) -> Output {
    env.command(sub).args(args).envs([NO_AUTO_CLOSE]).output().expect("meterflow runs")
}

/// The fixed workload: acme (calendar months, USD) and globex (periods from the 15th, EUR).
async fn publish_fixed_workload(js: &async_nats::jetstream::Context) {
    let events = [
        ("a1", "acme", "api_calls", "2026-09-03T10:15:00Z", r#"{"requests":100000,"region":"us-east-1"}"#),
        ("a2", "acme", "api_calls", "2026-09-17T08:00:00Z", r#"{"requests":50000,"region":"eu-west-1"}"#),
        ("a3", "acme", "llm_tokens", "2026-09-05T12:00:00Z", r#"{"tokens":250000,"model":"small"}"#),
        ("a4", "acme", "user_seen", "2026-09-05T09:00:00Z", r#"{"user_id":"u1"}"#),
        ("a5", "acme", "user_seen", "2026-09-05T10:00:00Z", r#"{"user_id":"u2"}"#),
        ("a6", "acme", "user_seen", "2026-09-05T11:00:00Z", r#"{"user_id":"u1"}"#),
        ("a7", "acme", "user_seen", "2026-09-06T09:00:00Z", r#"{"user_id":"u1"}"#),
        ("a8", "acme", "storage", "2026-09-05T00:30:00Z", r#"{"gigabytes":12.5}"#),
        ("a9", "acme", "storage", "2026-09-06T00:30:00Z", r#"{"gigabytes":30}"#),
        ("a10", "acme", "api_calls", "2026-10-02T10:00:00Z", r#"{"requests":5000,"region":"us-east-1"}"#),
        ("g1", "globex", "api_calls", "2026-09-20T10:00:00Z", r#"{"requests":10000,"region":"eu-central-1"}"#),
        ("g2", "globex-eu", "llm_tokens", "2026-10-01T10:00:00Z", r#"{"tokens":2000000,"model":"large"}"#),
    ];
    for (id, subject, kind, time, data) in events {
        publish(js, "usage.fixed", event(id, subject, kind, time, data), None).await;
    }
}

/// Replaces the fields that depend on how many commits the pipeline made.
fn masked(json: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    for field in ["summary_version", "adjustments_after_version", "content_hash"] {
        if let Some(x) = v.get_mut(field) {
            if !x.is_null() {
                *x = serde_json::Value::String("<masked>".into());
            }
        }
    }
    serde_json::to_string_pretty(&v).unwrap() + "\n"
}

fn invoice_files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for period in std::fs::read_dir(dir).unwrap() {
        let period = period.unwrap().path();
        for f in std::fs::read_dir(&period).unwrap() {
            let f = f.unwrap().path();
            let name = format!("{}-{}", period.file_name().unwrap().to_string_lossy(), customer_of(&f));
            out.insert(name, std::fs::read_to_string(&f).unwrap());
        }
    }
    out
}

fn customer_of(path: &Path) -> String {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["customer_id"].as_str().unwrap().to_string()
}

/// Runs the fixed workload through the pipeline; nothing closed yet.
async fn summarized_environment() -> (TestEnv, async_nats::jetstream::Context) {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    publish_fixed_workload(&js).await;
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    (env, js)
}

/// Runs the fixed workload and closes and invoices its periods; returns the environment.
async fn billed_environment() -> TestEnv {
    let (env, js) = summarized_environment().await;
    for p in ["2026-09", "2026-09-15"] {
        ok(run(&env, "close", &["--period", p]));
    }
    // Late usage for the closed September: an adjustment on October's invoice.
    let late = r#"{"requests":1000,"region":"us-east-1"}"#;
    publish(&js, "usage.fixed", event("late1", "acme", "api_calls", "2026-09-29T10:00:00Z", late), None).await;
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    for p in ["2026-10", "2026-10-15"] {
        ok(run(&env, "close", &["--period", p]));
    }
    for p in ["2026-09", "2026-09-15", "2026-10", "2026-10-15"] {
        ok(run(&env, "invoice", &["--period", p]));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_workload_gives_the_golden_invoices_and_rerunning_changes_nothing() {
    let env = billed_environment().await;
    let docs = env.data_dir().join("documents/invoices");
    let got = invoice_files(&docs);
    let golden = golden_dir();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(&golden).unwrap();
        for (name, json) in &got {
            std::fs::write(golden.join(format!("{name}.json")), masked(json)).unwrap();
        }
    }
    let mut expected = BTreeMap::new();
    for f in std::fs::read_dir(&golden).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_stem().unwrap().to_string_lossy().to_string();
        expected.insert(name, std::fs::read_to_string(&f).unwrap());
    }
    let got_masked: BTreeMap<String, String> = got.iter().map(|(k, v)| (k.clone(), masked(v))).collect();
    assert_eq!(got_masked.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    for (name, json) in &got_masked {
        assert_eq!(json, &expected[name], "invoice {name} differs from its golden file (UPDATE_GOLDEN=1 to accept)");
    }

    // Re-running reproduces every document byte for byte and writes nothing new.
    let before = invoice_files(&docs);
    for p in ["2026-09", "2026-10"] {
        let out = ok(run(&env, "invoice", &["--period", p]));
        assert!(out.contains("0 finalized, 0 revised, 1 unchanged"), "{out}");
    }
    assert_eq!(invoice_files(&docs), before);
    let revisions = env.sql("SELECT COUNT(*) FROM invoices");
    assert_eq!(revisions[1][0], "4");

    // An open period can only be previewed.
    let open = run(&env, "invoice", &["--period", "2026-11"]);
    assert!(!open.status.success());
    assert!(String::from_utf8_lossy(&open.stderr).contains("still open"));
    let preview = ok(run(&env, "invoice", &["--period", "2026-11", "--preview"]));
    assert!(preview.contains("[preview]"), "{preview}");

    // Periods are finalized in order: December cannot be, while November holds usage and is open.
    let js = env.jetstream().await;
    let body = r#"{"requests":10,"region":"us-east-1"}"#;
    publish(&js, "usage.fixed", event("n1", "acme", "api_calls", "2026-11-02T10:00:00Z", body), None).await;
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    ok(run(&env, "close", &["--period", "2026-12"]));
    let out = run(&env, "invoice", &["--period", "2026-12"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("2026-11") && err.contains("invoiced in order"), "{err}");
}

fn hledger() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("hledger"))
        .find(|p| p.is_file());
    found.expect("hledger is not installed: run scripts/tools.sh (it installs Debian's hledger)")
}

/// Sum of finalized invoice totals per currency, from SQL.
fn invoice_totals(env: &TestEnv) -> BTreeMap<String, Decimal> {
    env.sql("SELECT currency, SUM(total) FROM invoices GROUP BY 1")
        .into_iter()
        .skip(1)
        .map(|r| (r[0].clone(), r[1].parse::<Decimal>().unwrap()))
        .collect()
}

/// The receivables an hledger journal holds, per currency, after `hledger check -s` passes;
/// and the balance report they were read from.
fn hledger_receivables(journal: &Path) -> (BTreeMap<String, Decimal>, String) {
    let check = std::process::Command::new(hledger())
        .args(["-f", &journal.display().to_string(), "check", "-s"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "hledger check failed: {}\n{}",
        String::from_utf8_lossy(&check.stderr),
        std::fs::read_to_string(journal).unwrap()
    );
    let bal = std::process::Command::new(hledger())
        .args(["-f", &journal.display().to_string(), "balance", "assets", "-O", "csv", "-N"])
        .output()
        .unwrap();
    let bal = String::from_utf8_lossy(&bal.stdout).to_string();
    let mut receivable: BTreeMap<String, Decimal> = BTreeMap::new();
    for line in bal.lines().skip(1) {
        // "account","balance" where balance is like "171.55 USD" (one commodity per row or
        // several joined with ", ").
        let cell = line.rsplit("\",\"").next().unwrap_or_default().trim_matches('"');
        for amount in cell.split(", ") {
            if let Some((n, c)) = amount.trim().split_once(' ') {
                *receivable.entry(c.to_string()).or_default() += n.replace(',', "").parse::<Decimal>().unwrap();
            }
        }
    }
    (receivable, bal)
}

/// The JSON documents of every batch file in the folder target `outbox`.
fn posted_documents(outbox: &Path) -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    for f in std::fs::read_dir(outbox).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                docs.push(serde_json::from_str(line).unwrap());
            }
        }
    }
    docs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_invoice_is_corrected_by_a_credit_note_and_by_a_revision_and_every_target_reconciles() {
    let env = billed_environment().await;
    let journal = env.dir.path().join("books.journal");
    let hledger_target = format!("hledger:{}", journal.display());
    let reconciles = |p: &str| run(&env, "reconcile", &["--period", p]).status.success();
    // A period posted only to hledger (journal entries only) reconciles: no AR is expected there.
    ok(run(&env, "post", &["--period", "2026-10", "--target", &hledger_target]));
    let out = ok(run(&env, "reconcile", &["--period", "2026-10"]));
    assert!(out.contains("reconciled, every variance is zero"), "{out}");

    for target in [None, Some(hledger_target.as_str())] {
        let mut args = vec!["--period", "2026-09"];
        args.extend(target.iter().flat_map(|t| ["--target", t]));
        ok(run(&env, "post", &args));
    }
    assert!(reconciles("2026-09"));
    let acme =
        env.sql("SELECT invoice_id, total FROM latest_invoices WHERE period = '2026-09' AND customer_id = 'acme'");
    let (invoice, total) = (acme[1][0].clone(), acme[1][1].parse::<Decimal>().unwrap());

    // A credit note on line 2 (api_calls, 27.50): too much is refused with what is left; a
    // part is issued.
    let too_much = ["issue", "--invoice", &invoice, "--line", "2", "--amount", "27.51", "--reason", "x"];
    let refused = run(&env, "credit-note", &too_much);
    let why = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(!refused.status.success() && why.contains("is more than is left of line 2 (27.50 USD"), "{why}");
    let issued = ok(run(
        &env,
        "credit-note",
        &["issue", "--invoice", &invoice, "--line", "2", "--amount", "1.50", "--reason", "goodwill: API outage"],
    ));
    assert!(issued.contains(&format!("credit note {invoice}-CN1: 1.50 USD off line 2")), "{issued}");
    assert!(ok(run(&env, "credit-note", &["list", "--period", "2026-09"])).contains("goodwill: API outage"));
    assert!(!reconciles("2026-09"), "issued but not posted: the targets hold more than is owed");

    // A revision of the posted invoice (the customer's name corrected in the catalog).
    let customers = std::fs::read_to_string(crate::common::examples_dir().join("reference/customers.toml")).unwrap();
    let renamed = customers.replace("name = \"Acme Corporation\"", "name = \"Acme Corporation Ltd\"");
    assert_ne!(customers, renamed);
    let file = env.dir.path().join("renamed.toml");
    std::fs::write(&file, renamed).unwrap();
    ok(env.command("catalog").arg("apply").arg(&file).output().unwrap());
    assert!(!run(&env, "invoice", &["--period", "2026-09"]).status.success(), "never rewritten silently");
    ok(run(&env, "invoice", &["--period", "2026-09", "--revise"]));

    // Each target takes the reversal of what it holds of r1, r2, and the credit note.
    let folder = ok(run(&env, "post", &["--period", "2026-09"]));
    assert!(folder.contains("6 documents, 6 posted now"), "r1.cm, r1.rev, r2.ar, r2.je, CN1.cm, CN1.je: {folder}");
    let ledger = ok(run(&env, "post", &["--period", "2026-09", "--target", &hledger_target]));
    assert!(ledger.contains("3 documents, 3 posted now"), "r1.rev, r2.je, CN1's entry: {ledger}");
    let out = ok(run(&env, "reconcile", &["--period", "2026-09"]));
    assert!(out.contains("reconciled, every variance is zero"), "{out}");

    let docs = posted_documents(&env.data_dir().join("documents/erp"));
    let memo = |key: String| docs.iter().find(|d| d["idempotency_key"] == key.as_str()).cloned().unwrap_or_default();
    let reversal = memo(format!("{invoice}.r1.cm"));
    assert_eq!(reversal["document_type"], "credit_memo", "{reversal}");
    assert_eq!(reversal["credits_document"], format!("{invoice}.r1.ar").as_str());
    assert_eq!(reversal["total"].as_str().map(|t| t.parse::<Decimal>().unwrap()), Some(total), "{reversal}");
    let note = memo(format!("{invoice}-CN1.cm"));
    assert_eq!(
        (note["reason"].as_str(), note["total"].as_str()),
        (Some("goodwill: API outage"), Some("1.50")),
        "{note}"
    );
    assert_eq!(note["lines"][0]["revenue_account"], reversal["lines"][1]["revenue_account"], "line 2's account");

    // hledger: balanced, and the receivables are the latest invoices less the credit note.
    let (receivable, bal) = hledger_receivables(&journal);
    let owed = env.sql(
        "SELECT currency, SUM(total) FROM latest_invoices WHERE period IN ('2026-09', '2026-10') GROUP BY 1 ORDER BY 1",
    );
    let mut expected: BTreeMap<String, Decimal> =
        owed.into_iter().skip(1).map(|r| (r[0].clone(), r[1].parse::<Decimal>().unwrap())).collect();
    *expected.entry("USD".into()).or_default() -= Decimal::new(150, 2);
    assert_eq!(receivable, expected, "{bal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posting_to_a_folder_and_to_hledger_balances_reconciles_and_never_posts_twice() {
    let env = billed_environment().await;
    // Folder target: JSON Lines batches and a CSV journal import.
    for p in ["2026-09", "2026-09-15", "2026-10", "2026-10-15"] {
        let out = ok(run(&env, "post", &["--period", p]));
        assert!(out.contains("0 already posted"), "{out}");
        let again = ok(run(&env, "post", &["--period", p]));
        assert!(again.contains("0 posted now in 0 batches") && again.contains("2 already posted"), "{again}");
    }
    let outbox = env.data_dir().join("documents/erp");
    let names: Vec<String> =
        std::fs::read_dir(&outbox).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert!(names.iter().any(|n| n.starts_with("batch-") && n.ends_with(".jsonl")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("journal-") && n.ends_with(".csv")), "{names:?}");

    // hledger target: a real accounting engine checks the journal and its balances.
    let journal = env.dir.path().join("books.journal");
    let target = format!("hledger:{}", journal.display());
    for p in ["2026-09", "2026-09-15", "2026-10", "2026-10-15"] {
        ok(run(&env, "post", &["--period", p, "--target", &target]));
        ok(run(&env, "post", &["--period", p, "--target", &target]));
    }
    let (receivable, bal) = hledger_receivables(&journal);
    assert_eq!(receivable, invoice_totals(&env), "hledger receivables vs invoice totals:\n{bal}");

    // `meterflow status` shows the same facts for scripts.
    let status: serde_json::Value =
        serde_json::from_str(&ok(run(&env, "status", &["--format", "json"]))).expect("status is JSON");
    assert_eq!(status["lag"], 0, "{status}");
    assert_eq!(status["events_accepted"], 13, "{status}");
    let sept = status["periods"].as_array().unwrap().iter().find(|p| p["period"] == "2026-09").unwrap();
    assert_eq!((sept["status"].as_str(), sept["invoices"].as_u64()), (Some("closed"), Some(1)), "{sept}");
    assert_eq!(sept["documents"]["posted"], 3, "AR + journal to the folder and the journal to hledger: {sept}");

    // Reconciliation is clean, and names the exact variance once a summary row is gone.
    for p in ["2026-09", "2026-10"] {
        let out = ok(run(&env, "reconcile", &["--period", p]));
        assert!(out.contains("reconciled, every variance is zero"), "{out}");
    }
    let copy = env.dir.path().join("copy");
    copy_dir(&env.data_dir(), &copy);
    let url = meterflow_sink::table_url(&copy, "usage_summaries").unwrap();
    let table = meterflow_sink::deltalake::open_table(url).await.unwrap();
    let (_table, metrics) =
        table.delete().with_predicate("meter = 'llm_tokens' AND customer_id = 'acme'").await.unwrap();
    assert_eq!(metrics.num_deleted_rows, Some(1));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meterflow"))
        .args(["reconcile", "--period", "2026-09", "--format", "json", "--config"])
        .arg(&env.config)
        .arg("--data-dir")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a missing summary row must fail the reconciliation");
    let usage = usage_rows(&String::from_utf8_lossy(&out.stdout));
    let row = usage.get(&("acme".to_string(), "llm_tokens".to_string())).unwrap_or_else(|| {
        panic!("no row for the removed usage in:\n{usage:?}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    let n = |c: &str| number(&row[c]);
    assert_eq!(
        (n("summary_events"), n("invoiced_events"), n("events_variance")),
        (0.into(), 1.into(), (-1).into()),
        "{row}"
    );
    assert_eq!(n("pending_events"), Decimal::ZERO, "a row that went missing is no pending usage: {row}");
    assert_eq!(n("quantity_variance"), Decimal::from(-250_000), "{row}");
    assert_eq!(n("amount_variance"), "-0.45".parse::<Decimal>().unwrap(), "{row}");
}

/// A number of `reconcile --format json` (integers are JSON numbers, decimals strings).
fn number(v: &serde_json::Value) -> Decimal {
    match v {
        serde_json::Value::Number(n) => n.to_string().parse().unwrap(),
        serde_json::Value::String(s) => s.parse().unwrap(),
        other => panic!("not a number: {other}"),
    }
}

/// The usage table of `reconcile --format json` output, by (customer, meter).
fn usage_rows(json_lines: &str) -> BTreeMap<(String, String), serde_json::Value> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("meter").is_some())
        .map(|v| ((v["customer_id"].as_str().unwrap().to_string(), v["meter"].as_str().unwrap().to_string()), v))
        .collect()
}

/// `reconcile --format json` of `period`: whether it exited 0, and its usage rows.
fn reconciled(env: &TestEnv, period: &str) -> (bool, BTreeMap<(String, String), serde_json::Value>) {
    let out = run(env, "reconcile", &["--period", period, "--format", "json"]);
    let usage = usage_rows(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!(
            "reconcile {period}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), usage)
}

/// (events, quantity, amount) per (customer, meter) from a query returning those five columns.
fn sums(env: &TestEnv, query: &str) -> BTreeMap<(String, String), (Decimal, Decimal, Decimal)> {
    env.sql(query)
        .into_iter()
        .skip(1)
        .map(|r| {
            let d = |i: usize| r[i].parse::<Decimal>().unwrap();
            ((r[0].clone(), r[1].clone()), (d(2), d(3), d(4)))
        })
        .collect()
}

/// Finalizes and posts `period` after closing it.
fn close_invoice_post(env: &TestEnv, period: &str) {
    for step in ["close", "invoice", "post"] {
        ok(run(env, step, &["--period", period]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_usage_is_pending_until_a_later_invoice_bills_it_and_every_usage_row_of_a_period_is_billed_exactly_once() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let api = |n: u32| format!(r#"{{"requests":{n},"region":"us-east-1"}}"#);
    let send = |id: &'static str, kind: &'static str, time: &'static str, data: String| {
        let js = js.clone();
        async move { publish(&js, "usage.fixed", event(id, "acme", kind, time, &data), None).await }
    };
    send("s1", "api_calls", "2026-09-10T10:00:00Z", api(80_000)).await;
    send("s2", "llm_tokens", "2026-09-12T10:00:00Z", r#"{"tokens":250000,"model":"small"}"#.into()).await;
    send("s3", "storage", "2026-09-05T00:30:00Z", r#"{"gigabytes":12.5}"#.into()).await;
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    close_invoice_post(&env, "2026-09");

    // September's usage straddles its close: more arrives after it (crossing the first api_calls
    // tier and raising a daily storage peak), and October's usage begins.
    send("l1", "api_calls", "2026-09-28T10:00:00Z", api(40_000)).await;
    send("l2", "storage", "2026-09-05T12:00:00Z", r#"{"gigabytes":30}"#.into()).await;
    send("o1", "api_calls", "2026-10-02T10:00:00Z", api(5_000)).await;
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    let adjustments = "SELECT customer_id, meter, SUM(event_count), SUM(quantity), SUM(amount) FROM usage_summaries \
                       WHERE billing_period = '2026-09' AND row_kind = 'adjustment' GROUP BY 1, 2 ORDER BY 1, 2";
    let late = sums(&env, adjustments);
    let key = |m: &str| ("acme".to_string(), m.to_string());
    assert_eq!(late.keys().collect::<Vec<_>>(), [&key("api_calls"), &key("storage_peak")], "{late:?}");
    assert_eq!(late[&key("api_calls")].1, Decimal::from(40_000));

    // Before October is invoiced: September reconciles, and the late part is pending, not a variance.
    let (clean, usage) = reconciled(&env, "2026-09");
    assert!(clean, "{usage:?}");
    let september_invoice = env.sql("SELECT invoice_id FROM invoices WHERE period = '2026-09'")[1][0].clone();
    for (k, row) in &usage {
        let n = |c: &str| number(&row[c]);
        let (events, quantity, amount) = late.get(k).copied().unwrap_or_default();
        assert_eq!(
            (n("pending_events"), n("pending_quantity"), n("pending_amount")),
            (events, quantity, amount),
            "{row}"
        );
        assert_eq!(n("invoiced_events") + n("pending_events"), n("summary_events"), "{row}");
        for c in ["events_variance", "quantity_variance", "amount_variance"] {
            assert_eq!(n(c), Decimal::ZERO, "{c}: {row}");
        }
        assert_eq!(row["billed_on"], format!("2026-09: {september_invoice}"), "{row}");
    }

    // October's invoice carries September's late usage as adjustments: nothing pending any more.
    close_invoice_post(&env, "2026-10");
    let (clean, usage) = reconciled(&env, "2026-09");
    assert!(clean, "{usage:?}");
    let october_invoice = env.sql("SELECT invoice_id FROM invoices WHERE period = '2026-10'")[1][0].clone();
    let both = format!("2026-09: {september_invoice}, 2026-10: {october_invoice}");
    for (k, row) in &usage {
        assert_eq!(number(&row["pending_events"]), Decimal::ZERO, "{row}");
        assert_eq!(number(&row["pending_amount"]), Decimal::ZERO, "{row}");
        assert_eq!(
            row["billed_on"],
            if late.contains_key(k) { both.clone() } else { format!("2026-09: {september_invoice}") }
        );
    }

    // Usage still arriving after October's seal waits for November's invoice.
    send("l3", "api_calls", "2026-09-29T10:00:00Z", api(1_000)).await;
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    let (clean, usage) = reconciled(&env, "2026-09");
    assert!(clean, "{usage:?}");
    let row = &usage[&key("api_calls")];
    let n = |c: &str| number(&row[c]);
    // Past the first tier: 1,000 x 0.00015.
    let pending = (n("pending_events"), n("pending_quantity"), n("pending_amount"));
    assert_eq!(pending, (1.into(), 1_000.into(), "0.15".parse().unwrap()), "{row}");
    close_invoice_post(&env, "2026-11");
    let (clean, usage) = reconciled(&env, "2026-09");
    assert!(clean, "{usage:?}");
    assert!(usage.values().all(|r| number(&r["pending_events"]).is_zero()), "{usage:?}");

    // Every usage row of September is billed exactly once: the lines for it on its own invoice
    // and the adjustment lines of October's and November's add up to its summaries exactly.
    let summaries = sums(
        &env,
        "SELECT customer_id, meter, SUM(event_count), SUM(quantity), SUM(amount) FROM usage_summaries \
         WHERE billing_period = '2026-09' GROUP BY 1, 2 ORDER BY 1, 2",
    );
    let lines = "SELECT l.customer_id, l.meter, SUM(l.event_count), SUM(l.quantity), SUM(l.amount_unrounded) \
                 FROM invoice_lines l JOIN (SELECT invoice_id, MAX(revision) AS revision FROM invoices GROUP BY 1) i \
                 ON l.invoice_id = i.invoice_id AND l.revision = i.revision \
                 WHERE l.source_period = '2026-09' AND l.line_kind IN ('usage', 'adjustment') GROUP BY 1, 2 ORDER BY 1, 2";
    assert_eq!(sums(&env, lines), summaries);
    let invoices = env.sql(
        "SELECT period, COUNT(*) FROM invoice_lines WHERE source_period = '2026-09' AND line_kind IN ('usage', \
            'adjustment') \
         GROUP BY 1 ORDER BY 1",
    );
    let periods: Vec<&str> = invoices[1..].iter().map(|r| r[0].as_str()).collect();
    assert_eq!(periods, ["2026-09", "2026-10", "2026-11"]);
    for p in ["2026-10", "2026-11"] {
        let (clean, _) = reconciled(&env, p);
        assert!(clean, "{p} does not reconcile");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A test ERP: answers 429, then 503, then drops a connection, then accepts; refuses (400) any
/// batch for ERP customer C-20002; books each document once by its idempotency key.
#[derive(Default)]
struct Erp {
    requests: usize,
    /// Idempotency-Key headers seen, in order.
    batch_keys: Vec<String>,
    /// Document key -> times booked.
    booked: BTreeMap<String, usize>,
}

async fn serve_erp(listener: tokio::net::TcpListener, erp: Arc<Mutex<Erp>>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { return };
        let erp = erp.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let (head_end, length) = loop {
                let Ok(n) = sock.read(&mut chunk).await else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (i + 4, len);
                }
            };
            while buf.len() < head_end + length {
                let Ok(n) = sock.read(&mut chunk).await else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
            let key = head
                .lines()
                .find_map(|l| l.to_lowercase().starts_with("idempotency-key:").then(|| l[16..].trim().to_string()))
                .unwrap_or_default();
            let (status, reply) = {
                let mut erp = erp.lock().unwrap();
                erp.requests += 1;
                erp.batch_keys.push(key);
                match erp.requests {
                    1 => (429, r#"{"error":"slow down"}"#.to_string()),
                    2 => (503, r#"{"error":"maintenance"}"#.to_string()),
                    3 => (0, String::new()),
                    _ if body.contains("\"C-20002\"") => (400, r#"{"error":"unknown customer C-20002"}"#.to_string()),
                    _ => {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        for d in v["documents"].as_array().unwrap() {
                            *erp.booked.entry(d["idempotency_key"].as_str().unwrap().to_string()).or_default() += 1;
                        }
                        (200, r#"{"accepted":true}"#.to_string())
                    }
                }
            };
            if status == 0 {
                return; // drop the connection without an answer
            }
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: \
                    close\r\n\r\n{reply}",
                reply.len()
            );
            sock.write_all(resp.as_bytes()).await.ok();
            sock.shutdown().await.ok();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_posting_retries_transient_failures_records_refusals_and_sends_each_document_once() {
    let env = billed_environment().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/erp/batches", listener.local_addr().unwrap());
    let erp = Arc::new(Mutex::new(Erp::default()));
    tokio::spawn(serve_erp(listener, erp.clone()));
    let post = |period: &'static str| {
        let mut c = env.command("post");
        c.args(["--period", period, "--target", &url]).envs([
            NO_AUTO_CLOSE,
            ("METERFLOW_BILLING__POST_BATCH_SIZE", "2"),
            ("METERFLOW_BILLING__HTTP_BACKOFF_INITIAL_MS", "20"),
        ]);
        c
    };
    let first = tokio::task::spawn_blocking({
        let mut c = post("2026-10");
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(first.status.success(), "{text}{}", String::from_utf8_lossy(&first.stderr));
    assert!(text.contains("2 posted now in 1 batches (4 requests)"), "{text}");
    let globex = tokio::task::spawn_blocking({
        let mut c = post("2026-10-15");
        move || c.output().unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&globex.stdout).to_string();
    assert!(!globex.status.success(), "a refused document fails the command");
    assert!(text.contains("2 failed") && text.contains("unknown customer C-20002"), "{text}");

    let requests_before = erp.lock().unwrap().requests;
    for period in ["2026-10", "2026-10-15"] {
        let again = tokio::task::spawn_blocking({
            let mut c = post(period);
            move || c.output().unwrap()
        })
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&again.stdout).to_string();
        assert!(text.contains("0 posted now in 0 batches"), "{text}");
    }
    let erp = erp.lock().unwrap();
    assert_eq!(erp.requests, requests_before, "a second post sends nothing");
    assert_eq!(requests_before, 5, "429, 503, dropped, accepted, then one refused batch");
    let retried: BTreeSet<&String> = erp.batch_keys[..4].iter().collect();
    assert_eq!(retried.len(), 1, "retries carry the same Idempotency-Key: {:?}", erp.batch_keys);
    assert_eq!(erp.booked.len(), 2);
    assert!(erp.booked.values().all(|n| *n == 1), "each document booked once: {:?}", erp.booked);

    let ledger = env.sql(
        "SELECT status, COUNT(DISTINCT idempotency_key) FROM postings WHERE target LIKE 'http%' AND status <> \
            'pending' GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(ledger[1..], [vec!["failed".to_string(), "2".to_string()], vec!["posted".to_string(), "2".to_string()]]);
}

/// The Python used to cross-read tables: `$DELTA_READER_PYTHON` (set by scripts/tools.sh) or
/// the project's `.tools/venv`.
fn delta_python() -> PathBuf {
    if let Some(p) = std::env::var_os("DELTA_READER_PYTHON") {
        return p.into();
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let local = Path::new(&manifest).join("../.tools/venv/bin/python");
    assert!(local.is_file(), "no Python with deltalake: run `bash scripts/tools.sh` first");
    local
}

/// The files the log of `table` marks as removed (replaced by a compaction).
fn removed_files(table: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        assert!(!path.to_string_lossy().contains(".checkpoint."), "a checkpoint holds removals the test cannot age");
        if path.extension().is_some_and(|e| e == "json") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(p) = v.pointer("/remove/path").and_then(|p| p.as_str()) {
                    out.insert(p.to_string());
                }
            }
        }
    }
    out
}

/// Moves the removal time of every removed file in the log of `table` `days` back: the only
/// clock a vacuum reads for them. This is how the test compacts "a month ago".
fn age_removals(table: &Path, days: i64) {
    for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let mut lines = Vec::new();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(t) = v.pointer_mut("/remove/deletionTimestamp") {
                *t = (t.as_i64().unwrap() - days * 86_400_000).into();
            }
            lines.push(serde_json::to_string(&v).unwrap());
        }
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
}

// Found in review: usage_summaries kept its log 400 days but the files a compaction replaced only
// Delta's default 7 days, so any VACUUM a week after a compaction deleted files that the sealed
// versions of closed periods read, and finalized invoices could no longer be reproduced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_reproduce_byte_for_byte_after_a_compaction_a_month_ago_and_vacuums_by_meterflow_and_python() {
    let env = billed_environment().await;
    let periods = ["2026-09", "2026-09-15", "2026-10", "2026-10-15"];
    let first = invoice_files(&env.data_dir().join("documents/invoices"));
    assert_eq!(first.len(), 4, "{:?}", first.keys());

    // More usage, and a compaction after every commit: the files of the sealed versions are
    // replaced. Then the compaction is made a month old.
    let js = env.jetstream().await;
    let body = r#"{"requests":10,"region":"us-east-1"}"#;
    publish(&js, "usage.fixed", event("n1", "acme", "api_calls", "2026-11-02T10:00:00Z", body), None).await;
    env.run_until_idle(&[NO_AUTO_CLOSE, ("METERFLOW_STORAGE__COMPACT_EVERY_COMMITS", "1")]);
    let table = env.data_dir().join("usage_summaries");
    let replaced = removed_files(&table);
    assert!(replaced.len() >= 2, "the compaction replaced the sealed versions' files: {replaced:?}");
    age_removals(&table, 30);

    // meterflow's vacuum keeps them (dry run first: it lists, deletes nothing).
    let out = ok(run(&env, "vacuum", &["--dry-run"]));
    assert!(out.contains("usage_summaries: would delete 0 files (removed more than 400 days ago)"), "{out}");
    let out = ok(run(&env, "vacuum", &[]));
    assert!(out.contains("usage_summaries: deleted 0 files"), "{out}");
    // So does another engine's vacuum that honours the table's deletedFileRetentionDuration.
    let script = "import sys, deltalake\nprint(len(deltalake.DeltaTable(sys.argv[1]).vacuum(dry_run=False)))";
    let py = std::process::Command::new(delta_python()).arg("-c").arg(script).arg(&table).output().unwrap();
    assert!(py.status.success(), "python vacuum failed: {}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "0", "files deleted by the Python vacuum");
    for file in &replaced {
        assert!(table.join(file).is_file(), "{file} was deleted");
    }

    // Every finalized invoice is computed again from its sealed versions, and comes out the same.
    let again = env.dir.path().join("reinvoiced");
    for p in periods {
        let out = ok(run(&env, "invoice", &["--period", p, "--out", again.to_str().unwrap()]));
        assert!(out.contains("0 finalized, 0 revised, 1 unchanged"), "{p}: {out}");
    }
    assert_eq!(invoice_files(&again), first, "the invoice documents, byte for byte");
}

/// hledger's balance of the accounts matching `query` per commodity (zero balances left out).
fn hledger_balance(journal: &Path, query: &str) -> BTreeMap<String, Decimal> {
    let bal = std::process::Command::new(hledger())
        .args(["-f", &journal.display().to_string(), "balance", query, "-O", "csv", "-N"])
        .output()
        .unwrap();
    let mut out: BTreeMap<String, Decimal> = BTreeMap::new();
    for line in String::from_utf8_lossy(&bal.stdout).lines().skip(1) {
        let cell = line.rsplit("\",\"").next().unwrap_or_default().trim_matches('"');
        for amount in cell.split(", ") {
            if let Some((n, c)) = amount.trim().split_once(' ') {
                *out.entry(c.to_string()).or_default() += n.replace(',', "").parse::<Decimal>().unwrap();
            }
        }
    }
    out.retain(|_, v| !v.is_zero());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepaid_credits_pay_invoices_in_priority_order_expire_into_breakage_and_every_journal_balances() {
    let (env, js) = summarized_environment().await;
    let d = |s: &str| s.parse::<Decimal>().unwrap();
    let grant = |args: &[&str]| run(&env, "credits", &[&["grant", "--customer", "acme"], args].concat());

    // Refusals say what to change.
    let bad = grant(&["--amount", "1.001", "--reason", "x"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("more decimals than USD has (2)"), "{bad:?}");
    let bad = grant(&["--amount", "5", "--meter", "nope", "--source", "promotion", "--reason", "x"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no meter `nope`"), "{bad:?}");
    let bad = grant(&["--amount", "5", "--source", "gift", "--reason", "x"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("use purchase, promotion or goodwill"), "{bad:?}");

    // Before September closes: 15,000 API calls free (burns first), 30.00 bought (expires with
    // September), 10.00 of promotion (no expiry).
    ok(grant(&[
        "--amount",
        "15000",
        "--meter",
        "api_calls",
        "--priority",
        "1",
        "--source",
        "promotion",
        "--effective-from",
        "2026-09-01",
        "--reason",
        "launch offer",
    ]));
    ok(grant(&[
        "--amount",
        "30.00",
        "--priority",
        "2",
        "--effective-from",
        "2026-09-01",
        "--expires",
        "2026-10-01",
        "--reason",
        "prepaid top-up",
    ]));
    ok(grant(&[
        "--amount",
        "10",
        "--priority",
        "3",
        "--source",
        "goodwill",
        "--effective-from",
        "2026-09-01",
        "--reason",
        "sorry",
    ]));
    for p in ["2026-09", "2026-09-15"] {
        ok(run(&env, "close", &["--period", p]));
    }
    let late = r#"{"requests":1000,"region":"us-east-1"}"#;
    publish(&js, "usage.fixed", event("late1", "acme", "api_calls", "2026-09-29T10:00:00Z", late), None).await;
    env.run_until_idle(&[NO_AUTO_CLOSE]);
    for p in ["2026-10", "2026-10-15"] {
        ok(run(&env, "close", &["--period", p]));
    }
    for p in ["2026-09", "2026-10"] {
        ok(run(&env, "invoice", &["--period", p]));
    }

    // September: usage 28.60 (api_calls 27.50 for 150,000 calls). 15,000 calls are worth 2.75;
    // the bought credits pay the other 25.85 and 4.15 of them expire; fees are not paid by
    // credits. October: the goodwill credits pay its usage, 1.00 and the late 0.15.
    let lines = env.sql(
        "SELECT period, line_kind, amount, revenue_account FROM latest_invoice_lines WHERE customer_id = 'acme' \
         AND line_kind = 'credit' ORDER BY period, line_no",
    );
    let credit: Vec<(String, Decimal, String)> =
        lines.iter().skip(1).map(|r| (r[0].clone(), d(&r[2]), r[3].clone())).collect();
    assert_eq!(
        credit,
        vec![
            ("2026-09".into(), d("-2.75"), "4900".into()),
            ("2026-09".into(), d("-25.85"), "2400".into()),
            ("2026-10".into(), d("-1.15"), "4900".into()),
        ]
    );
    let totals = env.sql("SELECT period, total FROM latest_invoices WHERE customer_id = 'acme' ORDER BY period");
    assert_eq!((d(&totals[1][1]), d(&totals[2][1])), (d("120.40"), d("147.85")), "149.00 less the credits");

    let balance = ok(run(&env, "credits", &["balance", "--customer", "acme"]));
    assert!(balance.contains("G-acme-1  0 meter:api_calls"), "{balance}");
    assert!(balance.contains("G-acme-2  0.00 USD") && balance.contains("G-acme-3  8.85 USD"), "{balance}");
    let kinds = env.sql(
        "SELECT grant_id, entry_kind, SUM(amount) FROM credit_ledger WHERE customer_id = 'acme' GROUP BY 1, 2 ORDER BY 1, 2",
    );
    let kinds: Vec<String> =
        kinds.iter().skip(1).map(|r| format!("{} {} {}", r[0], r[1], d(&r[2]).normalize())).collect();
    assert_eq!(
        kinds,
        [
            "G-acme-1 burn -15000",
            "G-acme-1 grant 15000",
            "G-acme-2 burn -25.85",
            "G-acme-2 expiry -4.15",
            "G-acme-2 grant 30",
            "G-acme-3 burn -1.15",
            "G-acme-3 grant 10"
        ]
    );

    // Re-running changes nothing, in the invoices or the ledger.
    let rows = env.sql("SELECT COUNT(*) FROM credit_ledger");
    for p in ["2026-09", "2026-10"] {
        assert!(ok(run(&env, "invoice", &["--period", p])).contains("1 unchanged"));
    }
    assert_eq!(env.sql("SELECT COUNT(*) FROM credit_ledger"), rows);

    // The journals, checked by hledger: the purchase is deferred revenue, used credits leave it,
    // the expired rest is breakage revenue; deferred revenue ends at zero.
    let journal = env.dir.path().join("books.journal");
    let target = format!("hledger:{}", journal.display());
    for p in ["2026-09", "2026-10"] {
        ok(run(&env, "post", &["--period", p, "--target", &target]));
        ok(run(&env, "post", &["--period", p]));
    }
    let (receivable, bal) = hledger_receivables(&journal);
    let owed = env.sql("SELECT SUM(total) FROM latest_invoices WHERE currency = 'USD'");
    assert_eq!(receivable.get("USD").copied(), Some(d(&owed[1][0]) + d("30.00")), "invoices + the purchase: {bal}");
    assert_eq!(hledger_balance(&journal, "liabilities"), BTreeMap::new(), "deferred revenue all used or expired");
    assert_eq!(hledger_balance(&journal, "revenue:4800"), BTreeMap::from([("USD".to_string(), d("-4.15"))]));
    assert_eq!(hledger_balance(&journal, "revenue:4900"), BTreeMap::from([("USD".to_string(), d("3.90"))]));
    for p in ["2026-09", "2026-10"] {
        let out = ok(run(&env, "reconcile", &["--period", p]));
        assert!(out.contains("reconciled, every variance is zero"), "{out}");
    }

    // A revision burns again from scratch: its earlier rows are reversed, never rewritten.
    let customers = std::fs::read_to_string(crate::common::examples_dir().join("reference/customers.toml")).unwrap();
    let file = env.dir.path().join("renamed.toml");
    std::fs::write(&file, customers.replace("name = \"Acme Corporation\"", "name = \"Acme Corporation Ltd\"")).unwrap();
    ok(env.command("catalog").arg("apply").arg(&file).output().unwrap());
    ok(run(&env, "invoice", &["--period", "2026-09", "--revise"]));
    let net =
        env.sql("SELECT entry_kind, SUM(amount) FROM credit_ledger WHERE grant_id = 'G-acme-2' GROUP BY 1 ORDER BY 1");
    let net: Vec<String> = net.iter().skip(1).map(|r| format!("{} {}", r[0], d(&r[1]).normalize())).collect();
    assert_eq!(net, ["burn -51.7", "expiry -8.3", "grant 30", "reversal 30"], "r1's burn and expiry undone once");
    let balance = ok(run(&env, "credits", &["balance", "--customer", "acme"]));
    assert!(balance.contains("G-acme-2  0.00 USD") && balance.contains("G-acme-3  8.85 USD"), "{balance}");
    ok(run(&env, "post", &["--period", "2026-09", "--target", &target]));
    let folder = ok(run(&env, "post", &["--period", "2026-09"]));
    assert!(
        folder.contains("7 documents, 6 posted now"),
        "r1.cm, r1.rev, r1's breakage reversed, r2.ar, r2.je, r2's breakage (the purchase was posted): {folder}"
    );
    assert_eq!(hledger_balance(&journal, "liabilities"), BTreeMap::new(), "the breakage of r1 reversed, r2's posted");
    assert_eq!(hledger_balance(&journal, "revenue:4800"), BTreeMap::from([("USD".to_string(), d("-4.15"))]));
    let out = ok(run(&env, "reconcile", &["--period", "2026-09"]));
    assert!(out.contains("reconciled, every variance is zero"), "{out}");
}

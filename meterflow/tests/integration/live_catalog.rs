//! The live catalog: customers onboarded while `meterflow run` keeps running, refused changes,
//! and replays that decide as the first pass did whatever changed in the catalog since.

use crate::common::{event, publish, sigterm, totals, wait_until, TestEnv};
use std::time::Duration;

/// A new customer's usage: api_calls of subject `newco`.
fn newco_event(id: &str) -> String {
    event(id, "newco", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":10,"region":"eu-west-1"}"#)
}

const NEWCO_TOML: &str = r#"
[[customers]]
id = "newco"
name = "NewCo"
subjects = ["newco"]
currency = "USD"
legal_entity = "meterflow-inc-us"
erp_customer_id = "C-30003"
plan = "growth-usd"
"#;

fn reasons(env: &TestEnv) -> Vec<Vec<String>> {
    env.sql("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason").into_iter().skip(1).collect()
}

fn newco_events(env: &TestEnv) -> u64 {
    totals(env).get(&("newco".to_string(), "api_calls".to_string())).map_or(0, |t| t.2)
}

fn catalog(env: &TestEnv, args: &[&str]) -> std::process::Output {
    env.command("catalog").args(args).output().expect("meterflow catalog runs")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_onboarded_from_a_crm_export_while_run_keeps_running_is_metered_within_seconds() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let mut run = env.spawn_run(&[("RUST_LOG", "warn,meterflow_pipeline=info")]);
    publish(&js, "usage.api", newco_event("before-1"), None).await;
    let rejected = wait_until(Duration::from_secs(30), || {
        // The table's first commit, not only its folder: SQL finds no table before it.
        env.data_dir().join("rejections/_delta_log/00000000000000000000.json").exists()
            && reasons(&env) == [vec!["unknown_subject".to_string(), "1".into()]]
    });
    assert!(rejected, "usage of a customer not in the catalog is rejected as unknown_subject");

    // Sales exports the new account from the CRM, with its own column names.
    let csv = env.dir.path().join("accounts.csv");
    std::fs::write(
        &csv,
        "Account ID,Account Name,Currency,Entity,ERP Number,Usage Subjects,plan\n\
         newco,NewCo,USD,meterflow-inc-us,C-30003,newco,growth-usd\n",
    )
    .unwrap();
    let csv_arg = csv.display().to_string();
    let mapping = [
        "--column",
        "id=Account ID",
        "--column",
        "name=Account Name",
        "--column",
        "currency=Currency",
        "--column",
        "legal_entity=Entity",
        "--column",
        "erp_customer_id=ERP Number",
        "--column",
        "subjects=Usage Subjects",
    ];
    let dry = catalog(&env, &[&["apply", csv_arg.as_str(), "--dry-run"][..], &mapping[..]].concat());
    assert!(dry.status.success(), "{}", text(&dry));
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout),
        "+ customer newco\ndry run: nothing applied (the catalog stays at revision 1)\n"
    );
    let applied = catalog(&env, &[&["apply", csv_arg.as_str(), "--comment", "onboarding"][..], &mapping[..]].concat());
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(text(&applied).contains("applied as catalog revision 2 (was 1)"), "{}", text(&applied));

    publish(&js, "usage.api", newco_event("after-1"), None).await;
    let started = std::time::Instant::now();
    if !wait_until(Duration::from_secs(30), || newco_events(&env) == 1) {
        sigterm(&run);
        let out = run.wait_with_output().unwrap();
        panic!("usage published after the catalog change is not accepted:\n{}", text(&out));
    }
    eprintln!("new customer's usage counted {:?} after its publication", started.elapsed());

    // The exception queue: newco's early event, and one of a subject nobody owns yet.
    publish(
        &js,
        "usage.api",
        event("ghost-1", "ghost", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":1}"#),
        None,
    )
    .await;
    assert!(wait_until(Duration::from_secs(30), || reasons(&env) == [vec!["unknown_subject".to_string(), "2".into()]]));
    let dlq = |args: &[&str]| {
        let out = env.command("dlq").args(args).output().expect("meterflow dlq runs");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let listed = dlq(&["list"]);
    assert!(listed.contains("unknown_subject") && listed.contains("2 events"), "{listed}");
    assert!(listed.contains("subject ghost: 1 events") && listed.contains("subject newco: 1 events"), "{listed}");
    let dry = dlq(&["replay", "--reason", "unknown_subject", "--dry-run"]);
    assert!(dry.contains("dry run: 2 entries would be redriven"), "{dry}");
    let redriven = dlq(&["replay", "--reason", "unknown_subject"]);
    assert!(redriven.contains("2 entries redriven"), "{redriven}");
    // newco's early event is counted now; ghost's fails again and is back in the queue.
    assert!(wait_until(Duration::from_secs(30), || newco_events(&env) == 2), "the redriven event is counted");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let listed = dlq(&["list"]);
            listed.contains("1 events") && listed.contains("subject ghost") && !listed.contains("newco")
        }),
        "an event that still fails is back in the queue with its reason"
    );
    assert_eq!(dlq(&["replay", "--subject", "newco"]), "nothing to redrive: no DLQ entry matches\n");

    // A change that would give newco two plans at once is refused, naming the record and the
    // rule; the pipeline keeps deciding under revision 2.
    let overlapping = env.dir.path().join("overlap.toml");
    std::fs::write(
        &overlapping,
        format!("{NEWCO_TOML}\n  [[customers.subscriptions]]\n  plan = \"growth-usd\"\n  start = \"2026-06-01\"\n"),
    )
    .unwrap();
    let refused = catalog(&env, &["apply", overlapping.to_str().unwrap()]);
    assert!(!refused.status.success(), "an overlapping subscription must be refused");
    let message = text(&refused);
    assert!(message.contains("customer `newco`") && message.contains("overlap"), "{message}");
    assert!(message.contains("nothing applied (the catalog stays at revision 2)"), "{message}");
    publish(&js, "usage.api", newco_event("after-2"), None).await;
    assert!(wait_until(Duration::from_secs(30), || newco_events(&env) == 3), "metering goes on under revision 2");

    sigterm(&run);
    let status = run.wait().unwrap();
    assert!(status.success(), "run stops cleanly");
    let history = catalog(&env, &["history"]);
    let history = String::from_utf8_lossy(&history.stdout).to_string();
    assert!(history.contains("revision 1 ") && history.contains("revision 2 "), "{history}");
    assert!(history.contains("(onboarding)") && history.contains("+ customer newco"), "{history}");
    assert!(!history.contains("revision 3"), "the refused change is not a revision:\n{history}");
    let status = env.command("status").output().unwrap();
    let status = text(&status);
    assert!(status.contains("revision 2 (of the last commit)"), "{status}");
    assert!(status.contains("DLQ by reason   unknown_subject 1 (oldest "), "{status}");
    assert!(status.contains(" min, redrivable)"), "{status}");
    let shown = catalog(&env, &["show"]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("id = \"newco\""), "{}", text(&shown));
}

// The bug this guards against: a restart with changed reference data replayed the committed
// messages under the new data. An event rejected live (unknown subject) was accepted into the
// dedup state on the replay (without rows), so its re-publication after the fix was dropped as
// a duplicate and the usage was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_catalog_change_replays_every_message_as_it_was_first_decided() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    // No snapshot after the first one: the restart replays every committed message.
    let envs = [("METERFLOW_PIPELINE__SNAPSHOT_EVERY_COMMITS", "100000")];
    let acme = event("a-1", "acme", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":5,"region":"eu-west-1"}"#);
    publish(&js, "usage.api", acme, None).await;
    publish(&js, "usage.api", newco_event("n-1"), None).await;
    env.run_until_idle(&envs);
    assert_eq!(reasons(&env), [vec!["unknown_subject".to_string(), "1".into()]]);

    let file = env.dir.path().join("newco.toml");
    std::fs::write(&file, NEWCO_TOML).unwrap();
    let applied = catalog(&env, &["apply", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));

    // The restart replays n-1 under revision 1 (rejected again, no second DLQ row), then moves
    // to revision 2. The event published again (as a redrive does) is new to the dedup state.
    let out = env.run_until_idle(&envs);
    assert!(String::from_utf8_lossy(&out.stdout).contains("(2 replayed"), "{}", text(&out));
    publish(&js, "usage.api", newco_event("n-1"), None).await;
    env.run_until_idle(&envs);
    assert_eq!(newco_events(&env), 1, "the re-published event counts once");
    assert_eq!(reasons(&env), [vec!["unknown_subject".to_string(), "1".into()]], "the replay added no reject");
    assert_eq!(totals(&env)[&("acme".to_string(), "api_calls".to_string())].2, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_moved_to_another_customer_bills_each_owner_by_event_time_late_events_included() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let at = |id: &str, time: &str| event(id, "acme", "api_calls", time, r#"{"requests":10,"region":"eu-west-1"}"#);
    publish(&js, "usage.api", at("before", "2026-11-23T05:00:00Z"), None).await;
    env.run_until_idle(&[]);

    // From 06:00 on, subject `acme` is NewCo's (a business unit sold to another company).
    let moved = env.dir.path().join("move.toml");
    let examples = std::fs::read_to_string(crate::common::examples_dir().join("reference/customers.toml")).unwrap();
    let acme = examples.split("[[customers]]").nth(1).expect("acme is the first example customer");
    let acme =
        acme.replace(r#"subjects = ["acme"]"#, r#"subjects = [{ subject = "acme", until = "2026-11-23T06:00:00Z" }]"#);
    let newco = NEWCO_TOML
        .replace(r#"subjects = ["newco"]"#, r#"subjects = [{ subject = "acme", from = "2026-11-23T06:00:00Z" }]"#);
    std::fs::write(&moved, format!("[[customers]]{acme}\n{newco}")).unwrap();
    let applied = catalog(&env, &["apply", moved.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(text(&applied).contains("~ customer acme: subjects") && text(&applied).contains("+ customer newco"));

    publish(&js, "usage.api", at("after", "2026-11-23T07:00:00Z"), None).await;
    // A late event from before the move, arriving after it.
    publish(&js, "usage.api", at("late", "2026-11-23T05:30:00Z"), None).await;
    env.run_until_idle(&[]);
    let t = totals(&env);
    assert_eq!(t[&("acme".to_string(), "api_calls".to_string())].2, 2, "usage before the move bills acme");
    assert_eq!(newco_events(&env), 1, "usage after the move bills newco");
}

/// A customer with its own subject, on the USD plan.
fn customer_toml(id: &str) -> String {
    NEWCO_TOML.replace("\"newco\"", &format!("\"{id}\"")).replace("NewCo", id)
}

// Each commit-path fault point kills the run that takes in a catalog change and the redrive
// of the new customer's rejected usage; the next run (without faults) recovers. At the end every
// customer's usage is counted exactly once and the period invoices (a mismatch between the
// rated rows and the plans would stop `invoice` with RatedAmountMismatch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_commit_path_point_around_a_catalog_change_and_a_redrive_loses_and_doubles_nothing() {
    use meterflow_faults::Point;
    use std::os::unix::process::ExitStatusExt;
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let envs = [
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "5"),
        ("METERFLOW_PIPELINE__SNAPSHOT_EVERY_COMMITS", "1"),
        ("METERFLOW_NATS__LEASE_TTL_S", "3"),
    ];
    let points: Vec<Point> =
        Point::ALL.iter().copied().filter(|p| p.is_on_commit_path() && *p != Point::CheckpointWrite).collect();
    let usage = |id: &str, subject: &str| event(id, subject, "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":7}"#);
    for (i, _) in points.iter().enumerate() {
        publish(&js, "usage.api", usage(&format!("early-{i}"), &format!("new-{i}")), None).await;
    }
    env.run_until_idle(&envs);
    assert_eq!(reasons(&env), [vec!["unknown_subject".to_string(), points.len().to_string()]]);

    for (i, point) in points.iter().enumerate() {
        let file = env.dir.path().join(format!("new-{i}.toml"));
        std::fs::write(&file, customer_toml(&format!("new-{i}"))).unwrap();
        let applied = catalog(&env, &["apply", file.to_str().unwrap()]);
        assert!(applied.status.success(), "{}", text(&applied));
        let out = env.command("dlq").args(["replay", "--subject", &format!("new-{i}")]).output().unwrap();
        assert!(out.status.success() && text(&out).contains("1 entries redriven"), "{}", text(&out));
        publish(&js, "usage.api", usage(&format!("late-{i}"), &format!("new-{i}")), None).await;
        publish(&js, "usage.api", usage(&format!("acme-{i}"), "acme"), None).await;
        // A reject in the same range, so the DLQ and rejections steps of the commit run too.
        publish(&js, "usage.api", usage(&format!("ghost-{i}"), "ghost"), None).await;
        let fault = format!("{point}:kill@1");
        let killed = env
            .command("run")
            .args(["--exit-when-idle", "1s"])
            .envs(envs)
            .env("METERFLOW_FAULTS", &fault)
            .output()
            .unwrap();
        assert_eq!(killed.status.signal(), Some(9), "{fault}: expected death by SIGKILL: {}", text(&killed));
        env.run_until_idle(&envs);
    }
    for i in 0..points.len() {
        let t = totals(&env);
        let events = t.get(&(format!("new-{i}"), "api_calls".to_string())).map_or(0, |t| t.2);
        assert_eq!(events, 2, "new-{i}: its redriven and its fresh event, once each");
    }
    assert_eq!(totals(&env)[&("acme".to_string(), "api_calls".to_string())].2, points.len() as u64);
    let close = env.command("close").args(["--period", "2026-11"]).output().unwrap();
    assert!(close.status.success(), "{}", text(&close));
    let invoice = env.command("invoice").args(["--period", "2026-11"]).output().unwrap();
    assert!(invoice.status.success(), "invoicing after the kills: {}", text(&invoice));
    assert!(text(&invoice).contains("new-0"), "{}", text(&invoice));
    let queued = env.command("dlq").arg("list").output().unwrap();
    assert!(text(&queued).contains(&format!("subject ghost: {} events", points.len())), "{}", text(&queued));
}

// A revision appended without `catalog apply` (by hand, or by an older tool) that fails the
// checks must not take effect: the pipeline keeps deciding under the last good revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_revision_appended_without_its_checks_is_refused_and_the_pipeline_keeps_the_last_good_one() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let acme = |id: &str| event(id, "acme", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":3,"region":"eu"}"#);
    publish(&js, "usage.api", acme("a-1"), None).await;
    env.run_until_idle(&[]);

    let records: meterflow_catalog::Records =
        toml::from_str(&NEWCO_TOML.replace("growth-usd", "no-such-plan")).expect("a customer record");
    let change = meterflow_catalog::ChangeSet {
        author: "test".into(),
        at: chrono::Utc::now(),
        source: "a direct append".into(),
        comment: None,
        records,
    };
    js.publish("meterflow.catalog", serde_json::to_vec(&change).unwrap().into()).await.unwrap().await.unwrap();
    publish(&js, "usage.api", acme("a-2"), None).await;
    publish(&js, "usage.api", newco_event("n-1"), None).await;
    let out = env.run_until_idle(&[]);
    let log = text(&out);
    assert!(log.contains("catalog revision is refused") && log.contains("no-such-plan"), "{log}");
    assert_eq!(totals(&env)[&("acme".to_string(), "api_calls".to_string())].2, 2, "metering goes on");
    assert_eq!(newco_events(&env), 0, "the refused revision's customer is not in force");
    assert_eq!(reasons(&env), [vec!["unknown_subject".to_string(), "1".into()]]);
    let status = text(&env.command("status").output().unwrap());
    assert!(status.contains("revision 1 (of the last commit)"), "{status}");
}

// 10,000 customers in one change are ~2 MB of JSON, twice the broker's default message size:
// the revision is stored compressed, read back by `catalog show` and by the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_customers_onboarded_in_one_apply_are_one_revision_and_metered() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let file = env.dir.path().join("crm.toml");
    let many: String = (0..10_000).map(|i| customer_toml(&format!("cust-{i:05}")) + "\n").collect();
    assert!(many.len() > 1 << 20, "more than one broker message as plain text");
    std::fs::write(&file, many).unwrap();
    let applied = catalog(&env, &["apply", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", text(&applied));
    let shown = catalog(&env, &["show", "--json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(text(&shown).contains("\"cust-09999\""), "the last customer is in the stored revision");

    let js = env.jetstream().await;
    let e = event("c-1", "cust-09999", "api_calls", "2026-11-23T05:00:00Z", r#"{"requests":10,"region":"eu-west-1"}"#);
    publish(&js, "usage.api", e, None).await;
    env.run_until_idle(&[]);
    assert_eq!(totals(&env)[&("cust-09999".to_string(), "api_calls".to_string())].2, 1);
    assert!(reasons(&env).is_empty(), "{:?}", reasons(&env));
}

//! The torture test: the real binary, under a steady load, SIGKILLed at every named fault point
//! of the commit path, many times, restarted each time; then a run whose commits fail after
//! their log entry is written. The workload's event times cross a month end, so the earlier
//! month closes (by watermark) while kills go on and its late usage becomes adjustments. At the
//! end the summaries equal the workload's oracle exactly, per customer, meter and billing
//! period; every row written after its period's seal is an adjustment and none before; and the
//! run shows that messages in flight at the kills were delivered again.
//!
//! CI runs two rounds over every point (20 kills). The long mode runs more:
//! `METERFLOW_TORTURE_ROUNDS=25 bash scripts/test.sh --test integration -- torture --nocapture`.

use crate::common::{reference, totals, wait_until, TestEnv};
use meterflow_faults::Point;
use meterflow_testkit::workload::{self, WorkloadSpec};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The committed sequence recorded in the table and the last sequence the broker delivered to
/// the pipeline's consumer: the difference was in flight when the process died.
async fn in_flight(env: &TestEnv, js: &async_nats::jetstream::Context) -> (u64, u64) {
    let committed =
        meterflow_sink::SummaryTable::open_or_create(&env.data_dir()).await.unwrap().committed_seq().await.unwrap();
    let stream = js.get_stream("USAGE").await.unwrap();
    let delivered = stream.consumer_info("meterflow").await.map(|i| i.delivered.stream_sequence).unwrap_or(0);
    (committed, delivered)
}

/// Row kinds of June's rows in `usage_summaries` as of table version `version`.
async fn rows_of_june_at(env: &TestEnv, version: i64) -> BTreeMap<String, u64> {
    use meterflow_sink::deltalake;
    let url = meterflow_sink::table_url(&env.data_dir(), meterflow_sink::SUMMARIES_TABLE).unwrap();
    let table = deltalake::open_table_with_version(url, u64::try_from(version).unwrap()).await.unwrap();
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    ctx.register_table("s", table.table_provider().await.unwrap()).unwrap();
    let batches = ctx
        .sql("SELECT row_kind, CAST(COUNT(*) AS BIGINT) AS n FROM s WHERE billing_period = '2026-06' GROUP BY 1")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    for row in batches.iter().flat_map(|b| meterflow_sink::sql::cells(b).unwrap()) {
        out.insert(row[0].clone().unwrap_or_default(), row[1].clone().unwrap_or_default().parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_fault_point_under_load_loses_and_doubles_nothing() {
    let rounds: usize = std::env::var("METERFLOW_TORTURE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2);
    // Every point of the commit path (the delivery points lose a message or fail a re-position
    // instead; see broker_and_disk_faults).
    let points: Vec<Point> = Point::ALL.iter().copied().filter(|p| p.is_on_commit_path()).collect();
    let runs = rounds * points.len();
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let spec = WorkloadSpec {
        // Enough for every run, including the seconds a restarted run waits for the killed
        // run's lease to lapse while the load goes on.
        events: 1_200 * runs,
        batch_size: 1,
        duplicate_every: 8,
        bad_every: 25,
        seed: 23,
        // 48 hours across the end of June: June closes while the kills go on.
        base_time: chrono::DateTime::parse_from_rfc3339("2026-06-30T00:00:00Z").unwrap().into(),
    };
    let (messages, oracle) = workload::generate(&spec, &reference()).unwrap();
    // Small pulls, frequent commits and snapshots: every step of the commit path comes often.
    // A short writer lease: a killed run's lease lapses within 3 s for the next one to take.
    let envs = [
        ("METERFLOW_NATS__FETCH_BATCH", "40"),
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "5"),
        ("METERFLOW_PIPELINE__SNAPSHOT_EVERY_COMMITS", "2"),
        ("METERFLOW_NATS__LEASE_TTL_S", "3"),
    ];

    // A steady load while the pipeline lives: bursts of 10 messages every 40 ms, paused while
    // no pipeline runs; the rest of the workload goes out at the end.
    let alive = Arc::new(AtomicBool::new(false));
    let finish = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (js, alive, finish) = (js.clone(), alive.clone(), finish.clone());
        tokio::spawn(async move {
            let mut bursts = messages.chunks(10);
            let mut published = 0;
            while !finish.load(Ordering::SeqCst) {
                if !alive.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let Some(burst) = bursts.next() else { break };
                workload::publish_all(&js, burst, 10).await.unwrap();
                published += burst.len();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            let under_load = published;
            for burst in bursts {
                workload::publish_all(&js, burst, 256).await.unwrap();
            }
            under_load
        })
    };
    let mut kills: BTreeMap<Point, u32> = BTreeMap::new();
    let mut in_flight_at_kills = 0u64;
    for round in 0..rounds {
        for (i, point) in points.iter().copied().enumerate() {
            // Die at a different hit of the point each time (checkpoints come every 50 commits:
            // the first one).
            let n = if point == Point::CheckpointWrite { 1 } else { 1 + (round * 7 + i * 3) % 5 };
            let fault = format!("{point}:kill@{n}");
            let mut child = env.spawn_run(&[envs[0], envs[1], envs[2], envs[3], ("METERFLOW_FAULTS", fault.as_str())]);
            alive.store(true, Ordering::SeqCst);
            let mut status = None;
            wait_until(Duration::from_secs(60), || {
                status = child.try_wait().unwrap();
                status.is_some()
            });
            alive.store(false, Ordering::SeqCst);
            let Some(status) = status else {
                alive.store(false, Ordering::SeqCst);
                child.kill().unwrap();
                let out = child.wait_with_output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!(
                    "fault point {point} (hit {n}) was not reached within 60 s; stderr (last lines, newest \
                    first):\n{tail}"
                );
            };
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(status.signal(), Some(9), "{fault}: expected death by SIGKILL, got {status}: {stderr}");
            assert!(
                stderr.contains(&format!("meterflow fault point {point}: hit {n}, killing")),
                "{fault}: killed elsewhere: {stderr}"
            );
            *kills.entry(point).or_default() += 1;
            let (committed, delivered) = in_flight(&env, &js).await;
            in_flight_at_kills += delivered.saturating_sub(committed);
        }
    }
    // The rest of the workload, then a run to the end whose second commit fails after its log
    // entry is written (as a failed post-commit checkpoint or log clean-up does).
    finish.store(true, Ordering::SeqCst);
    let under_load = publisher.await.unwrap();
    let out = env.run_until_idle(&[envs[0], envs[1], envs[2], envs[3], ("METERFLOW_FAULTS", "after_log_entry:fail@2")]);
    let summary = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fault point after_log_entry: hit 2, firing"), "{stderr}");
    assert!(stderr.contains("already committed by an earlier attempt"), "{stderr}");
    eprintln!(
        "{under_load} messages published under load; kills per point: {kills:?}; {in_flight_at_kills} \
        messages were delivered but uncommitted at the kills"
    );
    eprintln!("final run: {summary}");

    assert_eq!(kills.len(), points.len(), "every fault point killed the pipeline");
    assert!(kills.values().all(|k| *k as usize == rounds));
    // Messages the broker had delivered past the committed sequence when the process died are
    // counted below exactly once: they were delivered again after the restart.
    assert!(in_flight_at_kills > 0, "no kill caught a message in flight; the test proves nothing");

    // Per customer, meter and billing period.
    let by_period = env.sql(
        "SELECT customer_id, meter, billing_period, CAST(SUM(quantity) AS VARCHAR), CAST(SUM(amount) AS VARCHAR) \
         FROM usage_summaries GROUP BY 1, 2, 3",
    );
    let by_period: BTreeMap<(String, String, String), (Decimal, Decimal)> = by_period
        .into_iter()
        .skip(1)
        .map(|r| ((r[0].clone(), r[1].clone(), r[2].clone()), (r[3].parse().unwrap(), r[4].parse().unwrap())))
        .collect();
    assert_eq!(by_period, oracle.by_period, "totals per customer, meter and billing period");
    assert!(oracle.by_period.keys().any(|k| k.2 == "2026-06") && oracle.by_period.keys().any(|k| k.2 == "2026-07"));
    // June closed by watermark while the kills went on; every row of June committed after its
    // seal is an adjustment, and none before it.
    let june = env.sql("SELECT sealed_version FROM billing_periods WHERE period = '2026-06'");
    assert_eq!(june.len(), 2, "June closed once: {june:?}");
    let sealed: i64 = june[1][0].parse().unwrap();
    let kinds_at_seal = rows_of_june_at(&env, sealed).await;
    assert!(!kinds_at_seal.contains_key("adjustment"), "an adjustment before the seal: {kinds_at_seal:?}");
    let kinds_now =
        env.sql("SELECT row_kind, COUNT(*) FROM usage_summaries WHERE billing_period = '2026-06' GROUP BY 1");
    for row in kinds_now.iter().skip(1) {
        let before = kinds_at_seal.get(&row[0]).copied().unwrap_or(0);
        if row[0] != "adjustment" {
            assert_eq!(row[1].parse::<u64>().unwrap(), before, "{} rows of June written after its seal", row[0]);
        }
    }

    let got = totals(&env);
    for (key, q) in &oracle.quantity {
        let (gq, ga, _) = got.get(key).copied().unwrap_or_default();
        assert_eq!(gq, *q, "quantity of {key:?}");
        assert_eq!(ga, oracle.amount[key], "amount of {key:?}");
    }
    assert_eq!(got.len(), oracle.quantity.len(), "no summaries beyond the oracle's");
    assert_eq!(got.values().map(|v| v.2).sum::<u64>(), oracle.accepted, "accepted events");
    // Every reject is recorded once, with its reason, however often its message was re-read.
    let rejected = env.sql("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason");
    let rejected: BTreeMap<String, u64> =
        rejected.into_iter().skip(1).map(|r| (r[0].clone(), r[1].parse().unwrap())).collect();
    assert_eq!(rejected, oracle.rejected);
    // Every dropped duplicate is recorded once too.
    let duplicates = env.sql("SELECT COUNT(*) FROM duplicates");
    assert_eq!(duplicates[1][0].parse::<u64>().unwrap(), oracle.duplicates, "duplicates recorded");
}

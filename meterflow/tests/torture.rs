//! The torture test: the real binary, under a steady load, SIGKILLed at every named fault point
//! of the commit path, many times, restarted each time. At the end the summaries equal the
//! workload's oracle exactly, and the run shows that messages in flight at the kills were
//! delivered again.
//!
//! CI runs two rounds over every point (20 kills). The long mode runs more:
//! `METERFLOW_TORTURE_ROUNDS=25 bash scripts/test.sh --test torture -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{reference, totals, wait_until, TestEnv};
use meterflow::workload::{self, WorkloadSpec};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_fault_point_under_load_loses_and_doubles_nothing() {
    let rounds: usize = std::env::var("METERFLOW_TORTURE_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(2);
    // Every point that kills (drop_delivery loses a message instead; see broker_and_disk_faults).
    let points: Vec<_> = meterflow_faults::POINTS.iter().filter(|(p, _)| *p != "drop_delivery").collect();
    let runs = rounds * points.len();
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let spec = WorkloadSpec {
        events: 600 * runs,
        batch_size: 1,
        duplicate_every: 8,
        bad_every: 25,
        seed: 23,
        ..Default::default()
    };
    let (messages, oracle) = workload::generate(&spec, &reference()).unwrap();
    // Small pulls, frequent commits and snapshots: every step of the commit path comes often.
    let envs = [
        ("METERFLOW_NATS__FETCH_BATCH", "40"),
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "5"),
        ("METERFLOW_PIPELINE__SNAPSHOT_EVERY_COMMITS", "2"),
    ];

    // A steady load while the pipeline lives: bursts of 10 messages every 20 ms, paused while
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
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let under_load = published;
            for burst in bursts {
                workload::publish_all(&js, burst, 256).await.unwrap();
            }
            under_load
        })
    };
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    let mut in_flight_at_kills = 0u64;
    for round in 0..rounds {
        for (i, (point, _)) in points.iter().enumerate() {
            // Die at a different hit of the point each time.
            let n = 1 + (round * 7 + i * 3) % 5;
            let fault = format!("{point}:kill@{n}");
            let mut child = env.spawn_run(&[envs[0], envs[1], envs[2], ("METERFLOW_FAULTS", fault.as_str())]);
            alive.store(true, Ordering::SeqCst);
            let mut status = None;
            wait_until(Duration::from_secs(60), || {
                status = child.try_wait().unwrap();
                status.is_some()
            });
            alive.store(false, Ordering::SeqCst);
            let Some(status) = status else {
                child.kill().unwrap();
                let out = child.wait_with_output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n");
                panic!("fault point {point} (hit {n}) was not reached within 60 s; stderr (last lines, newest first):\n{tail}");
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
    // The rest of the workload, then a clean run to the end.
    finish.store(true, Ordering::SeqCst);
    let under_load = publisher.await.unwrap();
    let out = env.run_until_idle(&envs);
    let summary = String::from_utf8_lossy(&out.stdout);
    eprintln!("{under_load} messages published under load; kills per point: {kills:?}; {in_flight_at_kills} messages were delivered but uncommitted at the kills");
    eprintln!("final run: {summary}");

    assert_eq!(kills.len(), points.len(), "every fault point killed the pipeline");
    assert!(kills.values().all(|k| *k as usize == rounds));
    // Messages the broker had delivered past the committed sequence when the process died are
    // counted below exactly once: they were delivered again after the restart.
    assert!(in_flight_at_kills > 0, "no kill caught a message in flight; the test proves nothing");

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

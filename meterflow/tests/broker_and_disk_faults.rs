//! Faults around the pipeline rather than inside it: the broker stops and comes back, the ack wait
//! expires while a batch is in hand, the consumer is deleted, the disk fills up, SIGTERM arrives
//! under load. Each test runs the real binary against a real nats-server and ends with the
//! summaries equal to the workload's oracle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{reference, sigterm, totals, wait_until, TestEnv};
use meterflow::workload::{self, Oracle, OutMessage, WorkloadSpec};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn generate(events: usize, seed: u64) -> (Vec<OutMessage>, Oracle) {
    let spec = WorkloadSpec { events, batch_size: 1, duplicate_every: 7, bad_every: 30, seed, ..Default::default() };
    workload::generate(&spec, &reference()).unwrap()
}

fn accepted(env: &TestEnv) -> u64 {
    totals(env).values().map(|v| v.2).sum()
}

fn assert_matches_oracle(env: &TestEnv, oracle: &Oracle) {
    let got = totals(env);
    for (key, q) in &oracle.quantity {
        let (gq, ga, _) = got.get(key).copied().unwrap_or_default();
        assert_eq!(gq, *q, "quantity of {key:?}");
        assert_eq!(ga, oracle.amount[key], "amount of {key:?}");
    }
    assert_eq!(got.values().map(|v| v.2).sum::<u64>(), oracle.accepted, "accepted events");
}

/// Collects a child's stderr lines as they come.
fn capture_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    log
}

/// Sends SIGTERM and waits (bounded, as a guard against hanging) for a clean exit.
fn stop_cleanly(child: &mut Child) {
    sigterm(child);
    let mut status = None;
    let exited = wait_until(Duration::from_secs(60), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(exited, "no exit within 60 s of SIGTERM");
    let status = status.unwrap();
    assert!(status.success(), "exit status {status}");
}

/// Publishes each message until the broker acknowledges it, retrying through outages with the
/// message's own `Nats-Msg-Id` (or none, when the publisher sets none). Returns the retries.
async fn publish_with_retries(js: &async_nats::jetstream::Context, messages: &[OutMessage]) -> u64 {
    let mut retries = 0;
    for m in messages {
        loop {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = &m.msg_id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            let sent = js.publish_with_headers(m.subject.clone(), headers, m.payload.clone().into()).await;
            let acked = match sent {
                Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack).await.is_ok_and(|a| a.is_ok()),
                Err(_) => false,
            };
            if acked {
                break;
            }
            retries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    retries
}

async fn consumer_info(env: &TestEnv) -> Option<async_nats::jetstream::consumer::Info> {
    let js = env.jetstream().await;
    let stream = js.get_stream("USAGE").await.ok()?;
    stream.consumer_info("meterflow").await.ok()
}

async fn committed_seq(env: &TestEnv) -> u64 {
    meterflow_sink::SummaryTable::open_or_create(&env.data_dir()).await.unwrap().committed_seq().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_rides_out_a_broker_restart_and_publisher_retries_through_it_count_once() {
    let mut env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(3_000, 31);
    let mut child = env.spawn_run(&[("METERFLOW_NATS__FETCH_BATCH", "100")]);
    let log = capture_stderr(&mut child);
    let js = env.jetstream().await;
    let (first, second) = messages.split_at(messages.len() / 2);
    publish_with_retries(&js, first).await;
    assert!(wait_until(Duration::from_secs(60), || accepted(&env) > 0), "nothing committed before the outage");

    // Publishers keep going through the outage; the broker is down for three seconds.
    let publisher = {
        let (js, second) = (js.clone(), second.to_vec());
        tokio::spawn(async move { publish_with_retries(&js, &second).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.nats.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.nats.restart().unwrap();
    let retries = publisher.await.unwrap();

    let expected = oracle.accepted;
    let caught_up = wait_until(Duration::from_secs(90), || accepted(&env) == expected);
    assert!(caught_up, "the pipeline did not catch up after the broker came back: {}", log.lock().unwrap());
    assert!(child.try_wait().unwrap().is_none(), "the pipeline exited during the outage");
    stop_cleanly(&mut child);
    let log = log.lock().unwrap().clone();
    assert!(log.contains("disconnected from the NATS server; reconnecting"), "the outage was not reported: {log}");
    eprintln!("publishers retried {retries} times through the outage");
    assert!(retries > 0, "no publish was retried; the outage missed the publishers");
    assert_matches_oracle(&env, &oracle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliveries_after_the_ack_wait_expires_mid_batch_are_dropped_and_counted_once() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(2_000, 37);
    // A one-second ack wait and a commit every three seconds while usage keeps arriving: the
    // broker redelivers the batches in hand before they are committed and acknowledged.
    let mut child = env.spawn_run(&[
        ("METERFLOW_NATS__ACK_WAIT_S", "1"),
        ("METERFLOW_NATS__FETCH_BATCH", "100"),
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "3000"),
    ]);
    let js = env.jetstream().await;
    for burst in messages.chunks(messages.len().div_ceil(40)) {
        workload::publish_all(&js, burst, 256).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(wait_until(Duration::from_secs(60), || accepted(&env) == oracle.accepted), "usage never arrived");
    stop_cleanly(&mut child);
    let out = child.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    let redeliveries: u64 = summary
        .split(" redeliveries dropped")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no redelivery count in {summary:?}"));
    eprintln!("{summary}");
    assert!(redeliveries > 0, "the broker redelivered nothing: {summary}");
    assert_matches_oracle(&env, &oracle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_under_the_pipeline_is_recreated_with_a_clear_error_and_nothing_is_lost() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(2_000, 41);
    let (first, second) = messages.split_at(messages.len() / 2);
    let js = env.jetstream().await;
    let mut child = env.spawn_run(&[]);
    let log = capture_stderr(&mut child);
    workload::publish_all(&js, first, 256).await.unwrap();
    assert!(wait_until(Duration::from_secs(60), || accepted(&env) > 0), "nothing committed");
    let stream = js.get_stream("USAGE").await.unwrap();
    assert!(stream.delete_consumer("meterflow").await.unwrap().success);
    workload::publish_all(&js, second, 256).await.unwrap();

    let caught_up = wait_until(Duration::from_secs(60), || accepted(&env) == oracle.accepted);
    assert!(caught_up, "usage after the deletion never arrived: {}", log.lock().unwrap());
    stop_cleanly(&mut child);
    let log = log.lock().unwrap().clone();
    assert!(log.contains("consumer no longer exists on the server"), "no clear error: {log}");
    assert_matches_oracle(&env, &oracle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_commits_and_acknowledges_what_is_in_hand_and_a_restart_continues_exactly() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(6_000, 43);
    let js = env.jetstream().await;
    let publisher = {
        let (js, messages) = (js.clone(), messages.clone());
        tokio::spawn(async move {
            for burst in messages.chunks(50) {
                workload::publish_all(&js, burst, 50).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut child = env.spawn_run(&[("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "200")]);
    assert!(wait_until(Duration::from_secs(60), || env.commit_files() >= 4), "no commits under load");
    stop_cleanly(&mut child);
    assert!(!publisher.is_finished(), "the load ended before SIGTERM; make the workload longer");

    // Everything the pipeline had in hand is committed and acknowledged: the consumer's ack
    // floor is the committed sequence.
    let committed = committed_seq(&env).await;
    let mut floor = 0;
    let acked = wait_until(Duration::from_secs(10), || {
        floor = futures::executor::block_on(consumer_info(&env)).map_or(0, |i| i.ack_floor.stream_sequence);
        floor == committed
    });
    assert!(acked, "ack floor {floor} differs from the committed sequence {committed}");
    assert!(committed > 0);

    publisher.await.unwrap();
    env.run_until_idle(&[]);
    assert_matches_oracle(&env, &oracle);
}

/// A size-limited tmpfs mounted over a folder for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "this test mounts a small tmpfs to fill the disk for real; it needs root (CAP_SYS_ADMIN), as in CI: {out:?}"
        );
        Tmpfs(at.to_path_buf())
    }

    /// Fills the file system with one file until writes fail with ENOSPC.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&block) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Smaller writes take what is left.
        while f.write_all(&block[..512]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _unmounted = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0)))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_pulling_and_acking_keeps_memory_bounded_and_recovers_by_itself() {
    let env = TestEnv::start();
    let disk = Tmpfs::mount(&env.data_dir(), "32m");
    env.ensure_streams().await;
    let (messages, oracle) = generate(8_000, 47);
    let (first, rest) = messages.split_at(messages.len() / 4);
    let js = env.jetstream().await;
    let mut child = env.spawn_run(&[("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "100")]);
    let pid = child.id();
    let log = capture_stderr(&mut child);
    workload::publish_all(&js, first, 256).await.unwrap();
    assert!(wait_until(Duration::from_secs(60), || accepted(&env) > 0), "nothing committed before the disk filled");

    let filler = disk.fill();
    workload::publish_all(&js, rest, 256).await.unwrap();
    let noticed = wait_until(Duration::from_secs(60), || log.lock().unwrap().contains("No space left on device"));
    assert!(noticed, "no clear error about the full disk: {}", log.lock().unwrap());

    // While the disk stays full: no pulls beyond the batch in hand, no acks, bounded memory.
    let before = consumer_info(&env).await.unwrap();
    let mut peak_rss = 0;
    for _ in 0..30 {
        peak_rss = peak_rss.max(rss_kib(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = consumer_info(&env).await.unwrap();
    assert_eq!(after.delivered.stream_sequence, before.delivered.stream_sequence, "it kept pulling on a full disk");
    assert_eq!(after.ack_floor.stream_sequence, before.ack_floor.stream_sequence, "it acknowledged on a full disk");
    assert!(
        after.ack_floor.stream_sequence < messages.len() as u64,
        "everything was acknowledged although the disk is full"
    );
    assert!(child.try_wait().unwrap().is_none(), "the pipeline gave up on a full disk");

    // Space returns: it recovers by itself.
    std::fs::remove_file(&filler).unwrap();
    let caught_up = wait_until(Duration::from_secs(90), || accepted(&env) == oracle.accepted);
    assert!(caught_up, "no recovery after space returned: {}", log.lock().unwrap());
    let peak_hwm = rss_kib(pid, "VmHWM:");
    stop_cleanly(&mut child);
    eprintln!("full disk: RSS sampled while full peaked at {peak_rss} KiB; peak RSS of the whole run {peak_hwm} KiB");
    // A guard, not a benchmark: the pipeline holds one batch while the disk is full.
    assert!(peak_hwm < 1024 * 1024, "peak RSS {peak_hwm} KiB");
    assert_matches_oracle(&env, &oracle);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lost_between_the_server_and_the_pipeline_is_fetched_again_and_counted_once() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(2_000, 53);
    workload::publish_all(&env.jetstream().await, &messages, 256).await.unwrap();
    // The test build loses the 120th pulled message on the way, as a server does when it finds
    // a client too slow: an ack-all consumer would acknowledge it unseen.
    let mut c = env.command("run");
    c.args(["--exit-when-idle", "1s"])
        .envs([("METERFLOW_NATS__FETCH_BATCH", "50"), ("METERFLOW_FAULTS", "drop_delivery:skip@120")]);
    let out = c.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fault point drop_delivery: hit 120, firing"), "{stderr}");
    assert!(stderr.contains("a pull skipped stream sequences; asking for them again"), "{stderr}");
    assert!(stdout.contains(" 1 gaps re-fetched"), "{stdout}");
    assert_matches_oracle(&env, &oracle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_deleted_from_the_stream_is_passed_over_after_one_check() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    for id in ["d1", "d2", "d3"] {
        let e =
            common::event(id, "acme", "api_calls", "2026-11-20T05:00:00Z", r#"{"requests":2,"region":"eu-west-1"}"#);
        common::publish(&js, "usage.acme", e, None).await;
    }
    let stream = js.get_stream("USAGE").await.unwrap();
    assert!(stream.delete_message(2).await.unwrap());
    let out = env.run_until_idle(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not in the stream (deleted or expired)"), "{stderr}");
    assert_eq!(accepted(&env), 2);
}

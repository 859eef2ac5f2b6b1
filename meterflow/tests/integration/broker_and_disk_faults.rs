//! Faults around the pipeline rather than inside it: the broker stops and comes back, the ack wait
//! expires while a batch is in hand, the consumer is deleted, the disk fills up, SIGTERM arrives
//! under load. Each test runs the real binary against a real nats-server and ends with the
//! summaries equal to the workload's oracle.

use crate::common;
use crate::common::{reference, sigterm, totals, wait_until, TestEnv};
use meterflow_testkit::workload::{self, Oracle, OutMessage, WorkloadSpec};
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

/// Longest a publisher retries one message through the broker outage.
const OUTAGE_GIVE_UP: Duration = Duration::from_secs(60);

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
    workload::publish_retrying(&js, first, Duration::ZERO, OUTAGE_GIVE_UP).await.unwrap();
    assert!(wait_until(Duration::from_secs(60), || accepted(&env) > 0), "nothing committed before the outage");

    // Publishers keep going through the outage; the broker is down for three seconds. Paced, so
    // publishing takes longer than the outage however fast the machine is (at least 3 s).
    let publisher = {
        let (js, second) = (js.clone(), second.to_vec());
        tokio::spawn(
            async move { workload::publish_retrying(&js, &second, Duration::from_millis(2), OUTAGE_GIVE_UP).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.nats.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    env.nats.restart().unwrap();
    let retries = publisher.await.unwrap().unwrap();

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

// Found in review: deltalake returns an error for failures after a commit's log entry is written
// (the checkpoint every 50 versions, expired-log clean-up), and the retry committed the same
// range a second time. Here the 5th commit call fails with its entry on disk, and so does the
// first checkpoint write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_call_fails_after_its_log_entry_is_written_is_not_written_again() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(4_000, 59);
    workload::publish_all(&env.jetstream().await, &messages, 256).await.unwrap();
    let mut c = env.command("run");
    // Small pulls and a 1 ms commit interval: well over the 50 commits a checkpoint needs even
    // when a busy machine lets several pulls pile up behind one commit.
    c.args(["--exit-when-idle", "1s"]).envs([
        ("METERFLOW_NATS__FETCH_BATCH", "5"),
        ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "1"),
        ("METERFLOW_FAULTS", "after_log_entry:fail@5,checkpoint_write:fail@1"),
    ]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fault point after_log_entry: hit 5, firing"), "{stderr}");
    assert!(stderr.contains("fault point checkpoint_write: hit 1, firing"), "no checkpoint was attempted: {stderr}");
    assert_eq!(
        stderr.matches("already committed by an earlier attempt").count(),
        2,
        "each failed call found its range committed: {stderr}"
    );
    assert_matches_oracle(&env, &oracle);
    let rejected: u64 = env.sql("SELECT COUNT(*) FROM rejections")[1][0].parse().unwrap();
    assert_eq!(rejected, oracle.rejected.values().sum::<u64>(), "rejections recorded once");
    let duplicates: u64 = env.sql("SELECT COUNT(*) FROM duplicates")[1][0].parse().unwrap();
    assert_eq!(duplicates, oracle.duplicates, "duplicates recorded once");
}

/// Waits until `log` contains `text`.
fn log_shows(log: &Arc<Mutex<String>>, text: &str) -> bool {
    wait_until(Duration::from_secs(60), || log.lock().unwrap().contains(text))
}

// Found in review: a rolling deploy's overlap (or a restart racing an instance still shutting
// down) ran two pipelines on one data directory; delta-rs saw the second writer, but the retry
// reopened the table and committed the same range again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_on_one_data_directory_and_stream_count_every_event_once() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(4_000, 61);
    let js = env.jetstream().await;
    let fast = [("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "50"), ("METERFLOW_NATS__FETCH_BATCH", "100")];
    let mut a = env.spawn_run(&fast);
    let log_a = capture_stderr(&mut a);
    let mut b = env.spawn_run(&fast);
    let log_b = capture_stderr(&mut b);
    let (first, second) = messages.split_at(messages.len() / 2);
    workload::publish_all(&js, first, 256).await.unwrap();
    let standby = wait_until(Duration::from_secs(60), || {
        log_a.lock().unwrap().contains("waiting as a standby") || log_b.lock().unwrap().contains("waiting as a standby")
    });
    assert!(standby, "neither run waited: {}\n---\n{}", log_a.lock().unwrap(), log_b.lock().unwrap());
    let a_is_standby = log_a.lock().unwrap().contains("waiting as a standby");
    let (mut writer, mut standby, standby_log) = if a_is_standby { (b, a, log_a) } else { (a, b, log_b) };
    assert!(wait_until(Duration::from_secs(60), || accepted(&env) > 0), "the writer committed nothing");
    // The writer stops under load; the standby takes over.
    let publisher = {
        let (js, second) = (js.clone(), second.to_vec());
        tokio::spawn(async move {
            for burst in second.chunks(100) {
                workload::publish_all(&js, burst, 100).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    stop_cleanly(&mut writer);
    assert!(
        log_shows(&standby_log, "writer lease acquired; the standby takes over"),
        "{}",
        standby_log.lock().unwrap()
    );
    publisher.await.unwrap();
    let caught_up = wait_until(Duration::from_secs(90), || accepted(&env) == oracle.accepted);
    assert!(caught_up, "the standby never caught up: {}", standby_log.lock().unwrap());
    stop_cleanly(&mut standby);
    assert_matches_oracle(&env, &oracle);
}

// The lease alone is not the fence: a writer paused (SIGSTOP) past its lease, while a standby
// takes over and commits, must never commit when it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_paused_past_its_lease_never_commits_after_a_standby_took_over() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(3_000, 67);
    let js = env.jetstream().await;
    let envs = [("METERFLOW_NATS__LEASE_TTL_S", "2"), ("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "50")];
    let mut a = env.spawn_run(&envs);
    let log_a = capture_stderr(&mut a);
    let (first, second) = messages.split_at(messages.len() / 3);
    workload::publish_all(&js, first, 256).await.unwrap();
    assert!(wait_until(Duration::from_secs(60), || accepted(&env) > 0), "nothing committed");
    let mut b = env.spawn_run(&envs);
    let log_b = capture_stderr(&mut b);
    assert!(log_shows(&log_b, "waiting as a standby"), "{}", log_b.lock().unwrap());
    let signal = |sig: &str, child: &Child| {
        assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
    };
    signal("-STOP", &a);
    assert!(log_shows(&log_b, "the standby takes over"), "{}", log_b.lock().unwrap());
    workload::publish_all(&js, second, 256).await.unwrap();
    let caught_up = wait_until(Duration::from_secs(90), || accepted(&env) == oracle.accepted);
    assert!(caught_up, "the new writer never caught up: {}", log_b.lock().unwrap());
    let committed = committed_seq(&env).await;
    signal("-CONT", &a);
    let mut status = None;
    let exited = wait_until(Duration::from_secs(30), || {
        status = a.try_wait().unwrap();
        status.is_some()
    });
    assert!(exited, "the resumed stale writer kept running: {}", log_a.lock().unwrap());
    assert!(!status.unwrap().success(), "the stale writer must stop with an error");
    let log = log_a.lock().unwrap().clone();
    assert!(log.contains("writer lease") || log.contains("fenced out"), "{log}");
    assert_eq!(committed_seq(&env).await, committed, "the stale writer committed after resuming");
    stop_cleanly(&mut b);
    assert_matches_oracle(&env, &oracle);
}

// Found in review: after the USAGE stream was deleted and re-created, new messages reused old
// sequence numbers, were taken for a replay (state only, no rows) and never written; their
// later retries were then dropped as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_created_usage_stream_is_refused_until_adopted_and_is_then_counted_from_its_start() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let js = env.jetstream().await;
    let ev =
        |id: &str| common::event(id, "acme", "api_calls", "2026-11-20T05:00:00Z", r#"{"requests":2,"region":"eu"}"#);
    for id in ["old-1", "old-2", "old-3"] {
        common::publish(&js, "usage.acme", ev(id), None).await;
    }
    env.run_until_idle(&[]);
    assert_eq!(accepted(&env), 3);
    assert!(js.delete_stream("USAGE").await.unwrap().success);
    env.ensure_streams().await;
    for id in ["new-1", "new-2"] {
        common::publish(&js, "usage.acme", ev(id), None).await;
    }
    let out = env.command("run").args(["--exit-when-idle", "1s"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a re-created stream must be refused");
    assert!(stderr.contains("deleted and re-created") && stderr.contains("--adopt-stream"), "{stderr}");
    assert_eq!(accepted(&env), 3, "nothing was read from the new stream");

    let out = env.command("run").args(["--exit-when-idle", "1s", "--adopt-stream"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(accepted(&env), 5, "the new stream is counted from its first message");
    env.run_until_idle(&[]);
    assert_eq!(accepted(&env), 5, "and only once");
}

// Found in review: the gap was recorded as re-fetched before the consumer was re-positioned and
// a failed re-position was ignored, so the old consumer went on past the gap and the range was
// then passed over as deleted although its messages existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_re_position_after_a_gap_is_retried_and_nothing_is_passed_over() {
    let env = TestEnv::start();
    env.ensure_streams().await;
    let (messages, oracle) = generate(2_000, 71);
    workload::publish_all(&env.jetstream().await, &messages, 256).await.unwrap();
    let mut c = env.command("run");
    c.args(["--exit-when-idle", "1s"]).envs([
        ("METERFLOW_NATS__FETCH_BATCH", "50"),
        ("METERFLOW_FAULTS", "drop_delivery:skip@120,consumer_reposition:fail@1"),
    ]);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fault point consumer_reposition: hit 1, firing"), "{stderr}");
    assert!(
        !stderr.contains("not in the stream (deleted or expired)"),
        "an existing message was passed over: {stderr}"
    );
    assert_matches_oracle(&env, &oracle);
}

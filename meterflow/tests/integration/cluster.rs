//! A JetStream cluster of three real nats-servers (R3 streams): the pipeline keeps counting
//! exactly when the server leading the usage stream is SIGKILLed under a steady publish load.

use crate::common::{examples_dir, reference, sigterm, totals_with, wait_until, WIDE_BOUNDS};
use meterflow_testkit::local_nats::LocalCluster;
use meterflow_testkit::workload::{self, WorkloadSpec};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `meterflow <sub>` against the cluster (`urls`: every server's, comma-separated) with R3 streams.
fn command(urls: &str, data_dir: &Path, sub: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meterflow"));
    c.arg(sub).arg("--config").arg(examples_dir().join("meterflow.toml")).arg("--data-dir").arg(data_dir);
    c.arg("--nats-url").arg(urls);
    c.env("RUST_LOG", "warn")
        .env("METERFLOW_OPS__LISTEN", "")
        .env("METERFLOW_NATS__REPLICAS", "3")
        .env("METERFLOW_LATENESS__PERIOD_GRACE_S", "315360000")
        .envs(WIDE_BOUNDS.iter().copied());
    c
}

/// Accepted events committed so far, per (customer, meter): (quantity, amount, events).
fn totals(urls: &str, data_dir: &Path) -> BTreeMap<(String, String), (Decimal, Decimal, u64)> {
    totals_with(command(urls, data_dir, "sql"))
}

/// A child process killed when dropped (a failing test leaves nothing running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _waited = self.0.wait();
    }
}

/// Connects and creates the streams as the pipeline does, once the cluster has elected its
/// JetStream leader (a moment after the servers start).
pub(crate) async fn streams_on_cluster(config: &meterflow_ingest::NatsConfig) -> meterflow_ingest::Broker {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match meterflow_ingest::Broker::connect(config.clone()).await {
            Ok(b) if b.ensure_streams().await.is_ok() => return b,
            _ => assert!(Instant::now() < deadline, "the cluster did not accept the streams within 30 s"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The index of the server leading `stream`, once the cluster reports one.
pub(crate) async fn leader_of(js: &async_nats::jetstream::Context, stream: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                if let Some(name) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                    if let Some(i) = (0..3).find(|i| LocalCluster::name_of(*i) == name) {
                        return i;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "the cluster elected no leader for {stream} within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_of_a_three_node_cluster_under_load_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(&dir.path().join("nats")).expect("three nats-servers start");
    let data_dir = dir.path().join("data");
    // The streams, as the pipeline creates them, with three replicas (JetStream needs a moment
    // to elect its meta leader after the servers start).
    let config =
        meterflow_ingest::NatsConfig { url: cluster.url(), replicas: 3, max_age_days: 0, ..Default::default() };
    let broker = streams_on_cluster(&config).await;
    let js = broker.jetstream().clone();
    let info = js.get_stream("USAGE").await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3, "the usage stream is not replicated");

    let spec = WorkloadSpec {
        events: 6_000,
        batch_size: 1,
        duplicate_every: 8,
        bad_every: 40,
        seed: 23,
        base_time: "2026-11-23T00:00:00Z".parse().unwrap(),
    };
    let (messages, oracle) = workload::generate(&spec, &reference()).unwrap();
    let (first, rest) = messages.split_at(messages.len() / 3);
    // One at a time: a replicated stream answers a second publish of a message id still in
    // flight with 409 ("duplicate message id is in process"), and the workload repeats ids.
    workload::publish_retrying(&js, first, Duration::ZERO, Duration::from_secs(60)).await.unwrap();

    let urls = cluster.url();
    // The log goes to a file (a pipe nobody reads while it runs could fill and stall it); the
    // process is killed if the test fails half-way.
    let log_path = dir.path().join("run.log");
    let mut run = KillOnDrop(
        command(&urls, &data_dir, "run")
            .env("METERFLOW_NATS__FETCH_BATCH", "50")
            .env("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "50")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // The rest arrives while the pipeline runs, one message at a time, each retried until acked.
    let publisher = {
        let js = js.clone();
        let rest = rest.to_vec();
        tokio::spawn(
            async move { workload::publish_retrying(&js, &rest, Duration::ZERO, Duration::from_secs(60)).await },
        )
    };
    let committed = || totals(&urls, &data_dir).values().map(|v| v.2).sum::<u64>();
    let started = wait_until(Duration::from_secs(60), || committed() > 0 || run.0.try_wait().unwrap().is_some());
    assert!(started && run.0.try_wait().unwrap().is_none(), "nothing committed on the cluster: {}", log());
    assert!(!publisher.is_finished(), "the publisher finished before the kill; make the workload larger");

    let leader = leader_of(&js, "USAGE").await;
    cluster.kill(leader);
    eprintln!("killed {} (the USAGE stream's leader)", LocalCluster::name_of(leader));
    let retried = publisher.await.unwrap().expect("every message acknowledged by the cluster after the failover");
    let new_leader = leader_of(&js, "USAGE").await;
    assert_ne!(new_leader, leader);
    cluster.restart(leader).unwrap();

    let all = wait_until(Duration::from_secs(120), || committed() >= oracle.accepted);
    sigterm(&run.0);
    let status = run.0.wait().unwrap();
    assert!(all, "not every accepted event was committed after the failover: {}", log());
    assert!(status.success(), "meterflow run failed: {}", log());
    eprintln!("publishes retried during the failover: {retried}");

    let got = totals(&urls, &data_dir);
    for (key, q) in &oracle.quantity {
        let (gq, ga, _) = got.get(key).copied().unwrap_or_default();
        assert_eq!(gq, *q, "quantity of {key:?}");
        assert_eq!(ga, oracle.amount[key], "amount of {key:?}");
    }
    assert_eq!(got.values().map(|v| v.2).sum::<u64>(), oracle.accepted);
}

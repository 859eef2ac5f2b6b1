//! Partitions of the usage stream: nats-server's `partition()` subject transform and
//! `meterflow_ingest::partition::partition_of` put every customer in the same partition; three
//! workers share six partitions on a three-server cluster with tables on object storage, and
//! count exactly through a worker's SIGKILL, the stream leader's SIGKILL and a paused worker.

use async_nats::jetstream::stream;
use meterflow_ingest::partition::{
    customer_token, partition_of, transform_destination, TRANSFORM_SOURCE, USAGE_SUBJECTS,
};
use meterflow_pipeline::config::{Config, Overrides};

use crate::cluster::{leader_of, streams_on_cluster};
use crate::common::{examples_dir, totals_with, wait_until, TestEnv, WIDE_BOUNDS};
use meterflow_testkit::local_nats::LocalCluster;
use meterflow_testkit::local_s3::LocalS3;
use meterflow_testkit::workload::{self, EventTimes, Population, Traffic, WorkloadSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_files_each_customers_usage_under_the_partition_meterflow_computes() {
    let env = TestEnv::start();
    let js = env.jetstream().await;
    const PARTITIONS: u32 = 32;
    let parts = js
        .create_stream(stream::Config {
            name: "PARTITIONED".into(),
            subjects: vec![USAGE_SUBJECTS.into(), "usage_redrive.*.>".into()],
            subject_transform: Some(stream::SubjectTransform {
                source: TRANSFORM_SOURCE.into(),
                destination: transform_destination(PARTITIONS),
            }),
            ..Default::default()
        })
        .await
        .expect("the server takes the partitioning transform");
    let customers: Vec<String> = (0..300)
        .map(|i| format!("cust-{i:05}"))
        .chain(["acme", "globex", "ünïcode-co", "a_b-c~d"].map(String::from))
        .collect();
    for c in &customers {
        js.publish(format!("usage.{c}.api_calls"), "{}".into()).await.unwrap().await.unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in customers.iter().enumerate() {
        let stored = parts.get_raw_message(i as u64 + 1).await.unwrap();
        let p = partition_of(c, PARTITIONS);
        assert_eq!(stored.subject.as_str(), format!("{p}.usage.{c}.api_calls"), "customer {c}");
        seen.insert(p);
    }
    let redriven = js.publish("usage_redrive.acme.usage.acme.api_calls", "{}".into()).await.unwrap().await.unwrap();
    let stored = parts.get_raw_message(redriven.sequence).await.unwrap();
    let p = partition_of("acme", PARTITIONS);
    assert_eq!(stored.subject.as_str(), format!("{p}.usage_redrive.acme.usage.acme.api_calls"), "a redrive");
    assert_eq!(seen.len(), PARTITIONS as usize, "300 customers cover every partition");
}

/// Where the workers of a test run: the cluster's URLs, a data directory, tables on S3 and
/// the reference files of the synthetic customers.
struct Setup<'a> {
    urls: String,
    data_dir: PathBuf,
    s3: &'a LocalS3,
    reference: meterflow_pipeline::config::ReferenceConfig,
}

impl Setup<'_> {
    /// `meterflow <sub>` as one worker of a partitioned stream: six partitions of R3 streams on
    /// the cluster, tables on S3, short leases (a takeover within seconds).
    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_meterflow"));
        c.arg(sub).arg("--config").arg(examples_dir().join("meterflow.toml")).arg("--data-dir").arg(&self.data_dir);
        c.arg("--nats-url").arg(&self.urls);
        c.env("RUST_LOG", "info")
            .env("METERFLOW_OPS__LISTEN", "")
            .env("METERFLOW_NATS__REPLICAS", "3")
            .env("METERFLOW_NATS__PARTITIONS", PARTITIONS_OF_TEST.to_string())
            .env("METERFLOW_NATS__LEASE_TTL_S", LEASE_TTL_S.to_string())
            .env("METERFLOW_NATS__FETCH_BATCH", "50")
            .env("METERFLOW_PIPELINE__COMMIT_INTERVAL_MS", "100")
            .env("METERFLOW_PIPELINE__SNAPSHOT_EVERY_COMMITS", "5")
            .env("METERFLOW_LATENESS__PERIOD_GRACE_S", "315360000")
            .env("METERFLOW_REFERENCE__CUSTOMERS", format!("{:?}", self.reference.customers))
            .env("METERFLOW_REFERENCE__PLANS", format!("{:?}", self.reference.plans))
            .env("AWS_ACCESS_KEY_ID", "meterflow-test")
            .env("AWS_SECRET_ACCESS_KEY", "meterflow-test")
            .envs(self.s3.envs("tables"))
            .envs(WIDE_BOUNDS.iter().copied());
        c
    }
}

const PARTITIONS_OF_TEST: u32 = 6;
const LEASE_TTL_S: u64 = 3;

/// A worker process, killed when dropped (a failing test leaves nothing running), logging to a
/// file (a pipe nobody reads while it runs could fill and stall it).
struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    fn start(mut command: Command, log: PathBuf) -> Worker {
        let file = std::fs::File::create(&log).unwrap();
        let child = command.stdout(Stdio::null()).stderr(file).spawn().unwrap();
        Worker { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal}");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _waited = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_over_six_partitions_count_exactly_through_a_worker_kill_a_leader_kill_and_a_paused_worker() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "meterflow-test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "meterflow-test");
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(&dir.path().join("nats")).expect("three nats-servers start");
    let s3 = LocalS3::start("meterflow-workers").expect("moto_server starts (run scripts/tools.sh to install it)");
    let mut config = Config::load(&examples_dir().join("meterflow.toml"), &Overrides::default()).unwrap();
    // Forty customers, so that every partition holds usage.
    let reference = workload::use_synthetic_reference(&mut config, &dir.path().join("reference"), 40).unwrap();
    let setup =
        Setup { urls: cluster.url(), data_dir: dir.path().join("data"), s3: &s3, reference: config.reference.clone() };
    let config = meterflow_ingest::NatsConfig {
        url: setup.urls.clone(),
        replicas: 3,
        partitions: PARTITIONS_OF_TEST,
        max_age_days: 0,
        ..Default::default()
    };
    let broker = streams_on_cluster(&config).await;
    let js = broker.jetstream().clone();

    let spec = WorkloadSpec {
        events: 6_000,
        batch_size: 1,
        duplicate_every: 8,
        bad_every: 40,
        seed: 29,
        base_time: "2026-11-23T00:00:00Z".parse().unwrap(),
    };
    let traffic = Traffic { population: Population::Skewed { skew: 0.5 }, times: EventTimes::Shuffled };
    let (messages, oracle) = workload::generate_with(&[spec], &traffic, &reference).unwrap();
    let messages = workload::on_customer_subjects(&messages, &reference);
    let busy: BTreeSet<u32> = messages
        .iter()
        .filter_map(|m| customer_token(&m.subject))
        .map(|t| partition_of(t, PARTITIONS_OF_TEST))
        .collect();
    assert_eq!(busy.len(), PARTITIONS_OF_TEST as usize, "every partition holds usage");
    let (first, rest) = messages.split_at(messages.len() / 4);
    workload::publish_retrying(&js, first, Duration::ZERO, Duration::from_secs(60)).await.unwrap();

    let workers: Vec<Worker> =
        (0..3).map(|i| Worker::start(setup.command("run"), dir.path().join(format!("w{i}.log")))).collect();
    let logs = |workers: &[Worker]| workers.iter().map(|w| w.log()).collect::<Vec<_>>().join("\n-----\n");
    let publisher = {
        let (js, rest) = (js.clone(), rest.to_vec());
        tokio::spawn(async move {
            workload::publish_retrying(&js, &rest, Duration::from_micros(300), Duration::from_secs(60)).await
        })
    };
    let committed = || totals_with(setup.command("sql")).values().map(|v| v.2).sum::<u64>();
    let took = |w: &Worker| w.log().contains("took partition");
    let started = wait_until(Duration::from_secs(90), || committed() > 0 && workers.iter().all(took));
    assert!(started, "the workers did not share the partitions and commit: {}", logs(&workers));

    // 1. SIGKILL one worker: its partitions move once their leases lapse.
    let mut workers = workers.into_iter();
    let mut killed = workers.next().unwrap();
    killed.child.kill().unwrap();
    let _reaped = killed.child.wait();
    let workers: Vec<Worker> = workers.collect();
    eprintln!("SIGKILLed worker 0");

    // 2. SIGKILL the server leading the usage stream: publishes and pulls resume on the others.
    let leader = leader_of(&js, "USAGE").await;
    cluster.kill(leader);
    eprintln!("SIGKILLed {} (the USAGE stream's leader)", LocalCluster::name_of(leader));
    assert_ne!(leader_of(&js, "USAGE").await, leader);
    cluster.restart(leader).unwrap();

    // 3. Pause a worker past its leases: the other takes its partitions; resumed, the paused
    // one must not commit what it held.
    let paused = &workers[0];
    paused.signal("-STOP");
    std::thread::sleep(Duration::from_secs(LEASE_TTL_S * 3));
    paused.signal("-CONT");
    eprintln!("paused worker 1 for {} s", LEASE_TTL_S * 3);

    let retried = publisher.await.unwrap().expect("every message acknowledged by the cluster");
    eprintln!("publishes retried: {retried}");
    let all = wait_until(Duration::from_secs(150), || committed() >= oracle.accepted);
    assert!(all, "not every accepted event was committed: {}", logs(&workers));
    // Everything committed; let the partitions settle before stopping.
    std::thread::sleep(Duration::from_secs(2));
    let mut workers = workers;
    for w in &workers {
        w.signal("-TERM");
    }
    for w in &mut workers {
        let status = w.child.wait().unwrap();
        assert!(status.success(), "a worker failed: {}", w.log());
    }
    for (i, w) in workers.iter().enumerate() {
        let log = w.log();
        eprintln!(
            "worker {}: took a partition {} times, handed one back {} times",
            i + 1,
            log.matches("took partition").count(),
            log.matches("handing a partition back").count()
        );
    }
    let paused_log = workers[0].log();
    // Its lease renewals found the leases taken, or its next commit was refused.
    assert!(
        paused_log.contains("taken over") || paused_log.contains("took over"),
        "the paused worker never noticed its partitions moved (was it paused past its leases?): {paused_log}"
    );

    let got = totals_with(setup.command("sql"));
    for (key, q) in &oracle.quantity {
        let (gq, ga, _) = got.get(key).copied().unwrap_or_default();
        assert_eq!(gq, *q, "quantity of {key:?}");
        assert_eq!(ga, oracle.amount[key], "amount of {key:?}");
    }
    assert_eq!(got.values().map(|v| v.2).sum::<u64>(), oracle.accepted, "events counted once each");
    let out = setup
        .command("sql")
        .args(["--format", "csv", "SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason"])
        .output()
        .unwrap();
    let rejected: BTreeMap<String, u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(',').map(|(r, n)| (r.to_string(), n.parse().unwrap_or(0))))
        .collect();
    assert_eq!(rejected, oracle.rejected, "rejections, each once");

    // Every partition caught up, as `meterflow status` shows them.
    let status = setup.command("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert_eq!(status.matches("caught up").count(), PARTITIONS_OF_TEST as usize, "{status}");

    // The finance steps read the one table: zero variance.
    let run = |sub: &str, args: &[&str]| {
        let out = setup.command(sub).args(args).output().unwrap();
        assert!(out.status.success(), "{sub} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    run("close", &["--period", "2026-11"]);
    run("invoice", &["--period", "2026-11"]);
    run("post", &["--period", "2026-11"]);
    run("reconcile", &["--period", "2026-11"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_partitioned_stream_a_period_closes_by_watermark_and_usage_on_another_customers_token_is_rejected() {
    const PARTITIONS: u32 = 4;
    let mut env = TestEnv::start();
    env.envs.push(("METERFLOW_NATS__PARTITIONS", "4"));
    env.envs.push(("METERFLOW_NATS__LEASE_TTL_S", "3"));
    let nats = meterflow_ingest::NatsConfig {
        url: env.nats.url(),
        partitions: PARTITIONS,
        max_age_days: 0,
        ..Default::default()
    };
    meterflow_ingest::Broker::connect(nats).await.unwrap().ensure_streams().await.unwrap();
    let js = env.jetstream().await;
    let reference = crate::common::reference();
    let spec = WorkloadSpec {
        events: 800,
        batch_size: 1,
        duplicate_every: 8,
        bad_every: 0,
        seed: 31,
        base_time: "2026-11-23T00:00:00Z".parse().unwrap(),
    };
    let (messages, oracle) = workload::generate(&spec, &reference).unwrap();
    let messages = workload::on_customer_subjects(&messages, &reference);
    workload::publish_all(&js, &messages, 64).await.unwrap();
    // acme's usage published on a token of another partition: rejected, naming the subject to use.
    let acme = partition_of("acme", PARTITIONS);
    let other = (0..100).map(|i| format!("t{i}")).find(|t| partition_of(t, PARTITIONS) != acme).unwrap();
    let stray = crate::common::event("stray-1", "acme", "api_calls", "2026-11-24T00:00:00Z", r#"{"endpoint":"/x"}"#);
    crate::common::publish(&js, &format!("usage.{other}.api_calls"), stray, None).await;

    // Two workers with the example's grace: the period closes once every partition is past it.
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| {
            let mut c = env.command("run");
            c.env("RUST_LOG", "info");
            Worker::start(c, env.dir.path().join(format!("w{i}.log")))
        })
        .collect();
    let closed = || {
        env.sql("SELECT period, closed_by FROM billing_periods").iter().any(|r| {
            r.first().map(String::as_str) == Some("2026-11") && r.get(1).map(String::as_str) == Some("watermark")
        })
    };
    let logs = |workers: &[Worker]| workers.iter().map(|w| w.log()).collect::<Vec<_>>().join("\n-----\n");
    let done = wait_until(Duration::from_secs(90), || {
        crate::common::totals(&env).values().map(|v| v.2).sum::<u64>() >= oracle.accepted && closed()
    });
    assert!(done, "not everything committed, or 2026-11 not closed by watermark: {}", logs(&workers));
    // While the workers run, `meterflow status` names every partition's owner.
    let status = env.command("status").output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    let owned = status
        .lines()
        .filter(|l| l.contains("committed seq") && l.contains(" owner ") && !l.contains("waiting for a worker"))
        .count();
    assert_eq!(owned, PARTITIONS as usize, "{status}");
    // The stray event redriven from the DLQ is read by the partition of the subject it was
    // published on (its one filter subject covers redrives too), and rejected again.
    let stray_rejections = || env.sql("SELECT count(*) FROM rejections WHERE reason = 'subject_not_allowed'");
    assert!(wait_until(Duration::from_secs(30), || stray_rejections().get(1) == Some(&vec!["1".to_string()])));
    let replay = env.command("dlq").args(["replay", "--reason", "subject_not_allowed"]).output().unwrap();
    let replayed = String::from_utf8_lossy(&replay.stdout).to_string();
    assert!(replay.status.success() && replayed.contains("1 entries redriven"), "{replayed}");
    let again = wait_until(Duration::from_secs(30), || stray_rejections().get(1) == Some(&vec!["2".to_string()]));
    assert!(again, "the redriven event is judged again: {}", logs(&workers));
    for w in &workers {
        w.signal("-TERM");
    }
    for w in &mut workers {
        assert!(w.child.wait().unwrap().success(), "a worker failed: {}", w.log());
    }
    let got = crate::common::totals(&env);
    for (key, q) in &oracle.quantity {
        assert_eq!(got.get(key).map(|v| v.0), Some(*q), "quantity of {key:?}");
    }
    // A setting that does not match the stream is refused, saying what to do.
    let unpartitioned = meterflow_ingest::NatsConfig { url: env.nats.url(), max_age_days: 0, ..Default::default() };
    let refused = meterflow_ingest::Broker::connect(unpartitioned).await.unwrap().ensure_streams().await;
    let message = refused.expect_err("an unpartitioned reader of a partitioned stream is refused").to_string();
    assert!(message.contains("partitions are fixed when the stream is created"), "{message}");
    let rejected = env.sql("SELECT reason, strpos(detail, 'usage.acme.<type>') > 0 FROM rejections");
    assert_eq!(rejected.len(), 3, "the stray event, twice: {rejected:?}");
    for r in &rejected[1..] {
        assert_eq!(r, &["subject_not_allowed", "true"], "the detail names the subject to use");
    }
}

//! # meterflow-load-tests: one load run, measured against the broker's own ceiling
//!
//! ```text
//!  workload (meterflow_testkit::workload: skewed customers, duplicates incl. late retries, malformed,
//!            1 or N events per message; optionally N synthetic customers with Zipf-skewed
//!            activity, and event times in stream order with a fraction of late events) + exact oracle
//!    1. ceiling: publish the same payloads to a scratch stream (raw publish rate), then pull
//!       them with ack-all and parse only (raw consume rate)            ─┐ same server,
//!    2. throughput: publish to USAGE, run the real pipeline in process  ─┤ same payloads,
//!       until drained; events/s over the busy time, and its ratio       ─┘ same run
//!       to the raw consume rate
//!    3. freshness: keep the pipeline running, publish at a fraction of the measured rate, and
//!       time publish → committed (visible in SQL) per message into an HDR histogram
//!    4. exactness: every total in usage_summaries equals the oracle (else the run fails)
//! ```
//!
//! [`run_once`] does one run; the binary repeats it and reports medians (see `report`).
//!
//! [`query`] is the query benchmark (binary `meterflow-querybench`): the monthly invoice query on a
//! month of hourly summaries, meterflow's DataFusion path against DuckDB on the same Parquet files.

pub mod http;
pub mod query;
pub mod report;
pub mod workers;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, stream};
use meterflow_ingest::PendingPull;
use meterflow_pipeline::config::{Config, Overrides, Reference};
use meterflow_pipeline::ops::Ops;
use meterflow_pipeline::{Pipeline, RunOptions};
use meterflow_testkit::local_nats::{LocalCluster, LocalNats};
use meterflow_testkit::local_s3::LocalS3;
use meterflow_testkit::workload::{self, EventTimes, Lateness, OutMessage, Population, Traffic, WorkloadSpec};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Config file (reference data, meters, plans).
    pub config: PathBuf,
    /// Distinct valid events of the throughput phase.
    pub events: usize,
    /// Events per message (1 = one event per message; more = CloudEvents batch mode).
    pub batch_size: usize,
    /// Every n-th event is re-published later as a duplicate (0 = none).
    pub duplicate_every: usize,
    /// Every n-th message is followed by a malformed one (0 = none).
    pub bad_every: usize,
    /// Seconds of the freshness phase (0 = skip it).
    pub freshness_secs: u64,
    /// Publish rate of the freshness phase, as a fraction of the measured pipeline rate.
    pub freshness_fraction: f64,
    /// Commit interval of the pipeline, in milliseconds.
    pub commit_interval_ms: u64,
    /// Seed of the workload.
    pub seed: u64,
    /// Synthetic customers `cust-00000`, ... billed like the config's customers in turn, in a
    /// reference folder written into the run's temporary directory (None: the config's own
    /// reference data, the example's two customers in a fixed mix).
    pub customers: Option<usize>,
    /// With `customers`: the Zipf exponent of customer activity (rank k sends in proportion to
    /// `1 / k^skew`; 0 = uniform).
    pub skew: f64,
    /// Fraction of events (0 to 1) whose time lies behind the stream's event time; turns on
    /// event times in publish order (None: event times spread over 48 hours four days back, in
    /// an order unrelated to the publish order).
    pub late_fraction: Option<f64>,
    /// With `late_fraction`: mean lateness of the late events, in seconds (exponential, capped
    /// one day inside the config's backdating limit).
    pub lateness_mean_s: f64,
    /// Ingest the throughput phase through the HTTP API instead of publishing it to JetStream
    /// directly, and time month-to-date meter queries afterwards.
    pub http: bool,
    /// Tables and snapshots on a local S3-compatible server (moto) instead of a directory.
    pub object_storage: bool,
    /// A cluster of three nats-servers with three replicas of every stream instead of one server.
    pub cluster: bool,
}

/// The broker of a run: one server, or a cluster of three.
enum Brokers {
    One(LocalNats),
    Three(LocalCluster),
}

impl Brokers {
    fn start(options: &LoadOptions, dir: &std::path::Path) -> Result<Brokers> {
        Ok(if options.cluster {
            Brokers::Three(LocalCluster::start(dir)?)
        } else {
            Brokers::One(LocalNats::start(dir)?)
        })
    }

    fn url(&self) -> String {
        match self {
            Brokers::One(n) => n.url(),
            Brokers::Three(c) => c.url(),
        }
    }
}

/// Creates the pipeline's streams, waiting for a cluster to elect its JetStream leader.
async fn ensure_streams(config: &Config) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async { meterflow_ingest::Broker::connect(config.nats.clone()).await?.ensure_streams().await };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Seconds of event time each part of the workload (throughput, freshness) covers when event
/// times follow the publish order: the two parts together end at the moment of generation. Short,
/// so that the stream time stays close to the broker's clock, which also drives the watermark
/// (the stream clock minus idle timeout and out-of-orderness): events are late by their own
/// lateness, not by the age of the run.
pub const STREAM_SPAN_S: u64 = 300;

/// The workload's shape, as reported.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadShape {
    /// Customers in the reference data of the run.
    pub customers: usize,
    /// Subjects in the reference data of the run.
    pub subjects: usize,
    /// True when the customers were generated (`--customers`).
    pub synthetic_customers: bool,
    /// Zipf exponent of customer activity (None: the example's fixed mix, one customer sending
    /// half of the events).
    pub skew: Option<f64>,
    /// Every n-th event is published again later (0 = none).
    pub duplicate_every: usize,
    /// Every n-th message is followed by a malformed one (0 = none).
    pub bad_every: usize,
    /// Fraction of late events (None: event times spread over 48 hours, unrelated to the
    /// publish order).
    pub late_fraction: Option<f64>,
    /// Mean lateness of the late events, seconds.
    pub lateness_mean_s: Option<f64>,
    /// Cap of the lateness, seconds.
    pub lateness_cap_s: Option<u64>,
}

/// Figures of one phase that moves messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rate {
    /// Messages moved.
    pub messages: u64,
    /// Events in them.
    pub events: u64,
    /// Seconds.
    pub secs: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// Messages per second.
    pub messages_per_s: f64,
}

impl Rate {
    fn new(messages: u64, events: u64, secs: f64) -> Rate {
        let s = secs.max(1e-9);
        Rate { messages, events, secs, events_per_s: events as f64 / s, messages_per_s: messages as f64 / s }
    }
}

/// End-to-end freshness: publish to committed, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Freshness {
    /// Target publish rate (events/s).
    pub target_events_per_s: f64,
    /// Achieved publish rate (events/s).
    pub achieved_events_per_s: f64,
    /// Messages measured.
    pub samples: u64,
    /// Percentiles (ms).
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// (latency ms, cumulative fraction) points of the distribution, for the chart.
    pub distribution: Vec<(f64, f64)>,
}

/// One run's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    /// Events per message.
    pub batch_size: usize,
    /// Customers, skew, duplicates, malformed messages and lateness of the workload.
    pub workload: WorkloadShape,
    /// Raw JetStream publish rate of the workload's payloads.
    pub raw_publish: Rate,
    /// Raw pull + ack-all + parse rate of the same payloads.
    pub raw_consume: Rate,
    /// The pipeline over the same payloads (busy time: first message to last commit).
    pub pipeline: Rate,
    /// pipeline events/s ÷ raw consume events/s.
    pub ratio_to_consume_ceiling: f64,
    /// Where the pipeline's busy time went.
    pub time_split: TimeSplit,
    /// Events/s over time during the throughput phase: (seconds since start, events/s).
    pub throughput_series: Vec<(f64, f64)>,
    /// Freshness phase.
    pub freshness: Option<Freshness>,
    /// Accepted events (oracle).
    pub accepted: u64,
    /// Duplicates dropped (oracle).
    pub duplicates: u64,
    /// Rejected (oracle).
    pub rejected: u64,
    /// Accepted events generated behind the stream's event time (oracle; all billed).
    pub late_generated: u64,
    /// Events the pipeline wrote in rows flagged `late` or `adjustment` (its closed-window
    /// count, both phases; an event arriving in a window's late flush counts too).
    pub late_flagged: u64,
    /// True when every total equalled the oracle.
    pub exact: bool,
    /// HTTP mode: the throughput phase posted through the API.
    pub http_ingest: Option<Rate>,
    /// HTTP mode: API events/s ÷ raw publish events/s.
    pub http_ratio_to_publish: Option<f64>,
    /// HTTP mode: month-to-date meter query latency for one customer.
    pub query_latency: Option<http::QueryLatency>,
}

/// The pipeline's busy time in the throughput phase and its parts, in seconds (the rest is the
/// run loop itself: progress metrics, period checks).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimeSplit {
    /// First live message to last commit.
    pub busy_secs: f64,
    /// Waiting for pulls that brought messages (the next pull is requested before the current
    /// one is processed, so this is what the broker could not deliver in the meantime).
    pub pull_wait_secs: f64,
    /// In the core stages: decode, validate, enrich, extract, dedup, aggregate.
    pub process_secs: f64,
    /// In commits: rating, DLQ publish, the three Delta commits, ack, snapshots.
    pub commit_secs: f64,
}

fn events_in(messages: &[OutMessage]) -> u64 {
    messages
        .iter()
        .map(|m| meterflow_schemas::decode_message(&m.payload))
        .map(|d| (d.events.len() + d.rejects.len()) as u64)
        .sum()
}

/// Publishes `messages` to the subjects under `prefix` (replacing `usage.`), returns the time.
async fn publish_as(js: &jetstream::Context, messages: &[OutMessage], prefix: Option<&str>) -> Result<f64> {
    let renamed: Vec<OutMessage>;
    let messages = match prefix {
        Some(p) => {
            renamed = messages
                .iter()
                .map(|m| OutMessage {
                    subject: format!("{p}.{}", m.subject.strip_prefix("usage.").unwrap_or(&m.subject)),
                    payload: m.payload.clone(),
                    msg_id: None,
                })
                .collect();
            &renamed
        }
        None => messages,
    };
    let started = Instant::now();
    workload::publish_all(js, messages, 1024).await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The raw ceiling: publish to a scratch stream, then pull with ack-all and parse only.
/// The consumer mirrors the pipeline's: ack policy all, no ack-pending limit, the same pull size
/// and wait, and the next pull requested before the current one is parsed.
async fn ceiling(
    js: &jetstream::Context,
    messages: &[OutMessage],
    events: u64,
    nats: &meterflow_ingest::NatsConfig,
) -> Result<(Rate, Rate)> {
    js.create_stream(stream::Config {
        name: "CEILING".into(),
        subjects: vec!["ceiling.>".into()],
        storage: stream::StorageType::File,
        num_replicas: nats.replicas,
        ..Default::default()
    })
    .await
    .context("cannot create the ceiling stream")?;
    let secs = publish_as(js, messages, Some("ceiling")).await?;
    let publish = Rate::new(messages.len() as u64, events, secs);
    let stream = js.get_stream("CEILING").await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("ceiling".into()),
            ack_policy: AckPolicy::All,
            max_ack_pending: -1,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let (mut got, mut parsed) = (0usize, 0u64);
    let batch = nats.fetch_batch;
    // As the pipeline does: the next pull is requested before the current one is parsed.
    let mut next = None;
    while got < messages.len() {
        let pull = match next.take() {
            Some(pull) => pull,
            None => PendingPull::request(&consumer, nats, batch).await?,
        };
        let pulled = pull.messages().await?;
        if !pulled.is_empty() {
            next = Some(PendingPull::request(&consumer, nats, batch).await?);
        }
        for m in &pulled {
            let d = meterflow_schemas::decode_message(&m.payload);
            parsed += (d.events.len() + d.rejects.len()) as u64;
        }
        got += pulled.len();
        if let Some(m) = pulled.last() {
            m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        } else if started.elapsed() > Duration::from_secs(120) {
            bail!("the ceiling consumer stalled at {got} of {} messages", messages.len());
        }
    }
    drop(next);
    let consume = Rate::new(got as u64, parsed, started.elapsed().as_secs_f64());
    js.delete_stream("CEILING").await.ok();
    Ok((publish, consume))
}

/// The run's config (data in `run_dir/data`) and reference data: the config's own, or
/// `options.customers` synthetic customers written to `run_dir/reference` and pointed at.
fn config_for(options: &LoadOptions, url: &str, run_dir: &std::path::Path) -> Result<(Config, Reference)> {
    let overrides = Overrides { nats_url: Some(url.to_string()), data_dir: Some(run_dir.join("data")) };
    let mut config = Config::load(&options.config, &overrides)?;
    config.pipeline.commit_interval_ms = options.commit_interval_ms;
    config.ops.listen = String::new();
    let reference = match options.customers {
        Some(0) => bail!("--customers must be at least 1"),
        Some(n) => workload::use_synthetic_reference(&mut config, &run_dir.join("reference"), n)?,
        None => Reference::load(&config)?,
    };
    Ok((config, reference))
}

/// The traffic of the run and the base times of its throughput and freshness parts.
fn traffic_for(
    options: &LoadOptions,
    config: &Config,
) -> (Traffic, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let population = match options.customers {
        Some(_) => Population::Skewed { skew: options.skew },
        None => Population::Example,
    };
    match options.late_fraction {
        // Spread over 48 hours four days back; the freshness part on the next day.
        None => {
            let base = WorkloadSpec::default().base_time;
            (Traffic { population, times: EventTimes::Shuffled }, base, base + chrono::Duration::days(1))
        }
        // Stream time in publish order over the last ten minutes: the throughput part the first half,
        // the freshness part the second, ending now (never ahead of the broker's clock). Late
        // events stay a day inside the backdating limit, so none is rejected as too_old.
        Some(late_fraction) => {
            let span = chrono::Duration::seconds(STREAM_SPAN_S as i64);
            let now = chrono::Utc::now();
            let max_lateness_s =
                (u64::from(config.lateness.max_backdating_days) * 86_400).saturating_sub(86_400 + 2 * STREAM_SPAN_S);
            let lateness = Lateness {
                span_s: STREAM_SPAN_S,
                late_fraction,
                mean_lateness_s: options.lateness_mean_s,
                max_lateness_s,
            };
            (Traffic { population, times: EventTimes::InOrder(lateness) }, now - span * 2, now - span)
        }
    }
}

/// Events the pipeline put in rows flagged late or adjustment, over all meters.
fn late_flagged(ops: &Ops, reference: &Reference) -> u64 {
    reference
        .meters
        .configs()
        .iter()
        .map(|m| {
            ops.metrics
                .events_late
                .get_or_create(&meterflow_pipeline::ops::metrics::label("meter", m.name.clone()))
                .get()
        })
        .sum()
}

/// Month-to-date query latency of the first meter, for each customer's first subject in turn.
async fn query_latency(
    server: &http::Server,
    reference: &Reference,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<http::QueryLatency> {
    let subjects: Vec<String> = reference
        .directory
        .customers()
        .iter()
        .filter_map(|c| c.subjects.first().map(|x| x.name().to_string()))
        .collect();
    let meter = reference.meters.configs().first().map(|m| m.name.clone()).unwrap_or_default();
    http::query_latency(server, &meter, &subjects, since, 200).await
}

/// Whether the committed tables equal the oracle; a run that is not exact prints each
/// difference and keeps its data directory and broker store for inspection.
async fn check_exact(
    config: &Config,
    oracle: &workload::Oracle,
    nats: Brokers,
    dir: tempfile::TempDir,
) -> Result<bool> {
    let differences = workload::differences(&config.tables()?, oracle).await?;
    for d in &differences {
        eprintln!("MISMATCH {d}");
    }
    if !differences.is_empty() {
        drop(nats);
        let kept = dir.keep();
        eprintln!("kept the run's data directory and broker store for inspection: {}", kept.display());
    }
    Ok(differences.is_empty())
}

/// With `--object-storage`: a local S3 server (kept alive by the caller) holding the run's
/// tables and snapshots, pointed at by `config`.
fn place_tables(options: &LoadOptions, config: &mut Config) -> Result<Option<LocalS3>> {
    if !options.object_storage {
        return Ok(None);
    }
    let s3 = LocalS3::start("meterflow-load")?;
    // moto takes any credentials; the pipeline reads them from the environment.
    for (key, value) in s3.envs("run") {
        if key.starts_with("AWS_") {
            std::env::set_var(key, value);
        }
    }
    config.storage.tables_url = Some(s3.url("run"));
    config.storage.s3 = meterflow_pipeline::config::S3Config {
        endpoint: Some(s3.endpoint()),
        region: Some("us-east-1".into()),
        allow_http: true,
    };
    Ok(Some(s3))
}

/// What a run starts with: a temporary directory, the broker, the config and reference data,
/// and the S3 server of `--object-storage` (kept alive as long as this).
struct Setup {
    dir: tempfile::TempDir,
    nats: Brokers,
    config: Config,
    reference: Reference,
    s3: Option<LocalS3>,
}

impl Setup {
    fn start(options: &LoadOptions) -> Result<Setup> {
        let dir = tempfile::tempdir()?;
        let nats = Brokers::start(options, &dir.path().join("nats"))?;
        let (mut config, reference) = config_for(options, &nats.url(), dir.path())?;
        let s3 = place_tables(options, &mut config)?;
        if options.cluster {
            config.nats.replicas = 3;
        }
        Ok(Setup { dir, nats, config, reference, s3 })
    }
}

/// One full run on a fresh local nats-server and data directory.
pub async fn run_once(options: &LoadOptions) -> Result<RunReport> {
    let Setup { dir, nats, config, reference, s3: _s3 } = Setup::start(options)?;
    let (traffic, main_base, fresh_base) = traffic_for(options, &config);
    let main = WorkloadSpec {
        events: options.events,
        batch_size: options.batch_size.max(1),
        duplicate_every: options.duplicate_every,
        bad_every: options.bad_every,
        seed: options.seed,
        base_time: main_base,
    };
    // The freshness phase publishes more of the same mix: on the next day, or (events in stream
    // order) continuing the stream time.
    let fresh_events = if options.freshness_secs > 0 { options.events } else { 0 };
    let fresh = WorkloadSpec { events: fresh_events, seed: options.seed + 1, base_time: fresh_base, ..main.clone() };
    let (first, _) = workload::generate_with(std::slice::from_ref(&main), &traffic, &reference)?;
    let (messages, oracle) = workload::generate_with(&[main, fresh], &traffic, &reference)?;
    let (throughput_msgs, fresh_msgs) = messages.split_at(first.len());
    let shape = workload_shape(options, &reference, &traffic);
    let events = events_in(throughput_msgs);

    let client = async_nats::connect(config.nats.servers()).await?;
    let js = jetstream::new(client);
    ensure_streams(&config).await?;
    let (raw_publish, raw_consume) = ceiling(&js, throughput_msgs, events, &config.nats).await?;

    // Throughput: the pipeline drains the pre-filled stream (filled through the HTTP API in
    // HTTP mode).
    let server = if options.http { Some(http::start(&config).await?) } else { None };
    let http_ingest = match &server {
        Some(s) => Some(http::ingest(s, throughput_msgs, events).await?),
        None => {
            publish_as(&js, throughput_msgs, None).await?;
            None
        }
    };
    let ops = Arc::new(Ops::new(&config));
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let pipeline = Pipeline::start_with_ops(config.clone(), ops.clone()).await?;
    let sampler = tokio::spawn(sample_throughput(ops.clone(), events));
    let stats = pipeline.run(rx, RunOptions { exit_when_idle: Some(Duration::from_millis(1000)) }).await?;
    let throughput_series =
        tokio::time::timeout(Duration::from_secs(5), sampler).await.ok().and_then(|r| r.ok()).unwrap_or_default();
    let pipeline_rate = Rate::new(stats.messages, stats.events_received, stats.busy_secs);
    let mut late = late_flagged(&ops, &reference);

    let freshness = if fresh_msgs.is_empty() {
        None
    } else {
        let target = pipeline_rate.events_per_s * options.freshness_fraction;
        let (f, fresh_late) = freshness(&config, &reference, &js, fresh_msgs, target, options).await?;
        late += fresh_late;
        Some(f)
    };

    let query_latency = match &server {
        Some(s) => Some(query_latency(s, &reference, main_base).await?),
        None => None,
    };
    let exact = check_exact(&config, &oracle, nats, dir).await?;
    let http_ratio = http_ingest.as_ref().map(|h| h.events_per_s / raw_publish.events_per_s.max(1e-9));
    Ok(RunReport {
        batch_size: options.batch_size.max(1),
        workload: shape,
        ratio_to_consume_ceiling: pipeline_rate.events_per_s / raw_consume.events_per_s.max(1e-9),
        raw_publish,
        raw_consume,
        pipeline: pipeline_rate,
        time_split: TimeSplit {
            busy_secs: stats.busy_secs,
            pull_wait_secs: stats.pull_wait_secs,
            process_secs: stats.process_secs,
            commit_secs: stats.commit_secs,
        },
        throughput_series,
        freshness,
        accepted: oracle.accepted,
        duplicates: oracle.duplicates,
        rejected: oracle.rejected.values().sum(),
        late_generated: oracle.late,
        late_flagged: late,
        exact,
        http_ratio_to_publish: http_ratio,
        http_ingest,
        query_latency,
    })
}

/// What the workload looks like, for the report.
fn workload_shape(options: &LoadOptions, reference: &Reference, traffic: &Traffic) -> WorkloadShape {
    WorkloadShape {
        customers: reference.directory.customers().len(),
        subjects: reference.directory.customers().iter().map(|c| c.subjects.len()).sum(),
        synthetic_customers: options.customers.is_some(),
        skew: options.customers.map(|_| options.skew),
        duplicate_every: options.duplicate_every,
        bad_every: options.bad_every,
        late_fraction: options.late_fraction,
        lateness_mean_s: options.late_fraction.map(|_| options.lateness_mean_s),
        lateness_cap_s: match &traffic.times {
            EventTimes::InOrder(l) => Some(l.max_lateness_s),
            EventTimes::Shuffled => None,
        },
    }
}

/// The pipeline's events/s, sampled every 250 ms until `events` have been received.
async fn sample_throughput(ops: Arc<Ops>, events: u64) -> Vec<(f64, f64)> {
    let (mut series, mut last, started) = (Vec::new(), 0u64, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let now = ops.metrics.events_received.get();
        if now > 0 || !series.is_empty() {
            series.push((started.elapsed().as_secs_f64(), (now - last) as f64 * 4.0));
        }
        last = now;
        if now >= events {
            return series;
        }
    }
}

/// Per published message (stream sequence, publish time), sorted by sequence: the milliseconds
/// until the first observed commit covering it (`commits`: committed sequence and when it was
/// first seen, in time order), with the sequence. Messages no commit covers are left out.
fn commit_latencies_ms(published: &[(u64, Instant)], commits: &[(u64, Instant)]) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(published.len());
    let mut c = 0usize;
    for &(seq, at) in published {
        while c < commits.len() && commits[c].0 < seq {
            c += 1;
        }
        let Some(&(_, committed_at)) = commits.get(c) else { break };
        out.push((committed_at.saturating_duration_since(at).as_millis() as u64, seq));
    }
    out
}

/// Publishes `messages` at `target` events/s to a running pipeline and records, per message, the
/// time from just before its publish to the commit that covers its stream sequence. Also returns
/// the events this phase's pipeline put in rows flagged late.
async fn freshness(
    config: &Config,
    reference: &Reference,
    js: &jetstream::Context,
    messages: &[OutMessage],
    target: f64,
    options: &LoadOptions,
) -> Result<(Freshness, u64)> {
    let ops = Arc::new(Ops::new(config));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let pipeline = Pipeline::start_with_ops(config.clone(), ops.clone()).await?;
    let running = tokio::spawn(pipeline.run(rx, RunOptions { exit_when_idle: None }));
    // Publish times by stream sequence, resolved as acks come back.
    let (ack_tx, mut ack_rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, Instant, jetstream::context::PublishAckFuture)>();
    let collector = tokio::spawn(async move {
        let (mut sent, mut failed) = (Vec::new(), Vec::new());
        while let Some((index, at, ack)) = ack_rx.recv().await {
            match ack.await {
                Ok(a) => sent.push((a.sequence, at)),
                Err(_) => failed.push(index),
            }
        }
        (sent, failed)
    });
    warm_up(js, messages, &ops).await?;
    // Commit times, observed while publishing: (committed sequence, first seen at).
    let (stop_watch, watch_stop) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn(watch_commits(ops.clone(), watch_stop));
    let deadline = Instant::now() + Duration::from_secs(options.freshness_secs);
    let started = Instant::now();
    let i = paced_publish(js, messages, target, deadline, &ack_tx).await?;
    let published_secs = started.elapsed().as_secs_f64();
    let published_events = events_in(&messages[1.min(messages.len())..i]);
    // The rest goes out at once (it is not measured) so the totals can be checked.
    for (j, m) in messages.iter().enumerate().skip(i) {
        let ack = js.publish(m.subject.clone(), m.payload.clone().into()).await?;
        ack_tx.send((j, Instant::now(), ack)).ok();
    }
    drop(ack_tx);
    let (mut sent, failed) = collector.await?;
    republish_failed(js, messages, &failed, &mut sent).await?;
    sent.sort_unstable_by_key(|(seq, _)| *seq);
    // The measured messages are the paced ones: acks are collected in publish order, and a
    // re-sent message (failed ack) counts from its re-send.
    let measured: Vec<(u64, Instant)> = sent.iter().take(i.saturating_sub(1)).copied().collect();
    let last_seq = sent.last().map_or(0, |(s, _)| *s);
    wait_committed(&ops, last_seq).await?;
    stop_watch.send(true).ok();
    let commits = watcher.await?;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    for (ms, _) in commit_latencies_ms(&measured, &commits) {
        hist.saturating_record(ms.max(1));
    }
    tx.send(true).ok();
    running.await??;
    let q = |p: f64| hist.value_at_quantile(p) as f64;
    let distribution = (1..=100).map(|i| i as f64 / 100.0).map(|p| (q(p), p)).collect();
    let fresh = Freshness {
        target_events_per_s: target,
        achieved_events_per_s: published_events as f64 / published_secs.max(1e-9),
        samples: hist.len(),
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        max_ms: hist.max() as f64,
        distribution,
    };
    Ok((fresh, late_flagged(&ops, reference)))
}

/// The new pipeline first replays what the throughput phase committed: one unmeasured message,
/// published and waited for until committed, keeps that start-up out of the figures.
async fn warm_up(js: &jetstream::Context, messages: &[OutMessage], ops: &Ops) -> Result<()> {
    let warm_up_deadline = Instant::now() + Duration::from_secs(120);
    if let Some(m) = messages.first() {
        let ack = js.publish(m.subject.clone(), m.payload.clone().into()).await?.await?;
        while (ops.metrics.committed_sequence.get().max(0) as u64) < ack.sequence {
            if Instant::now() > warm_up_deadline {
                bail!("the freshness pipeline did not commit its first message within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// Records each new committed sequence and when it was first seen, until told to stop.
async fn watch_commits(ops: Arc<Ops>, stop: tokio::sync::watch::Receiver<bool>) -> Vec<(u64, Instant)> {
    let mut seen: Vec<(u64, Instant)> = Vec::new();
    loop {
        let committed = ops.metrics.committed_sequence.get().max(0) as u64;
        if seen.last().is_none_or(|(s, _)| committed > *s) {
            seen.push((committed, Instant::now()));
        }
        if *stop.borrow() {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Publishes from the second message on at `target` events/s until `deadline`, handing each
/// acknowledgement to the collector; returns the index of the first message not sent.
async fn paced_publish(
    js: &jetstream::Context,
    messages: &[OutMessage],
    target: f64,
    deadline: Instant,
    ack_tx: &tokio::sync::mpsc::UnboundedSender<(usize, Instant, jetstream::context::PublishAckFuture)>,
) -> Result<usize> {
    // Paced by events, not messages: a workload mixes batches with single-event messages
    // (duplicates, malformed ones), so a message count would miss the target rate.
    let sizes: Vec<f64> = messages.iter().map(|m| events_in(std::slice::from_ref(m)).max(1) as f64).collect();
    let events_per_tick = target / 100.0; // 10 ms ticks
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let (mut i, mut owed) = (1.min(messages.len()), 0.0f64);
    while i < messages.len() && Instant::now() < deadline {
        tick.tick().await;
        owed += events_per_tick;
        while owed > 0.0 && i < messages.len() {
            let m = &messages[i];
            let at = Instant::now();
            let ack = js.publish(m.subject.clone(), m.payload.clone().into()).await?;
            ack_tx.send((i, at, ack)).ok();
            owed -= sizes[i];
            i += 1;
        }
    }
    Ok(i)
}

/// A publish whose acknowledgement failed may or may not be stored: publish it again (the
/// pipeline's dedup absorbs a second copy), so the stream holds the whole workload.
async fn republish_failed(
    js: &jetstream::Context,
    messages: &[OutMessage],
    failed: &[usize],
    sent: &mut Vec<(u64, Instant)>,
) -> Result<()> {
    for &j in failed {
        let m = &messages[j];
        let mut attempts = 0;
        loop {
            attempts += 1;
            let acked = match js.publish(m.subject.clone(), m.payload.clone().into()).await {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(a) => {
                    sent.push((a.sequence, Instant::now()));
                    break;
                }
                Err(e) if attempts >= 10 => bail!("publish of message {j} failed 10 times: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    if !failed.is_empty() {
        eprintln!("  {} publishes of the freshness phase were not acknowledged and were sent again", failed.len());
    }
    Ok(())
}

/// Waits (at most 120 s) until the pipeline has committed `last_seq`.
async fn wait_committed(ops: &Ops, last_seq: u64) -> Result<()> {
    let wait_until = Instant::now() + Duration::from_secs(120);
    while (ops.metrics.committed_sequence.get().max(0) as u64) < last_seq {
        if Instant::now() > wait_until {
            bail!("the pipeline did not commit sequence {last_seq} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Logs of the load-test tools to stderr (stdout carries their reports): errors only, unless
/// `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_counts_until_the_first_commit_that_covers_its_sequence() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let published = [(1, at(0)), (2, at(10)), (3, at(20)), (4, at(30))];
        let commits = [(0, at(0)), (2, at(500)), (3, at(900)), (3, at(950))];
        assert_eq!(commit_latencies_ms(&published, &commits), vec![(500, 1), (490, 2), (880, 3)]);
    }
}

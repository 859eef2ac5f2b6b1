//! `meterflow-loadgen --workers N --partitions P`: N workers in this process share a
//! partitioned stream, pre-filled with the workload on its customers' own subjects; measures
//! the time from the first event received to every partition committed through its last
//! sequence, then checks the tables against the oracle.

use anyhow::{bail, Result};
use async_nats::jetstream;
use meterflow_pipeline::ops::Ops;
use meterflow_pipeline::{run_worker, RunOptions};
use meterflow_sink::SummaryTable;
use meterflow_testkit::workload::{self, WorkloadSpec};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{check_exact, ensure_streams, publish_as, traffic_for, LoadOptions, Setup};

/// One run of N workers.
#[derive(Debug, Clone, Serialize)]
pub struct WorkersReport {
    /// Workers in the run.
    pub workers: usize,
    /// Partitions of the stream.
    pub partitions: u32,
    /// Events in the stream.
    pub events: u64,
    /// Seconds from the first event received to every partition committed.
    pub secs: f64,
    /// Events per second over that time.
    pub events_per_s: f64,
    /// Commits of all workers' partitions (from the metrics).
    pub commits: u64,
    /// The tables equal the oracle.
    pub exact: bool,
}

/// One run of `workers` workers over `partitions` partitions.
pub async fn workers_once(options: &LoadOptions, workers: usize, partitions: u32) -> Result<WorkersReport> {
    if options.batch_size > 1 {
        bail!("--workers publishes each event on its customer's subject: use --batch-size 1");
    }
    if partitions == 0 || workers == 0 {
        bail!("--workers and --partitions must be at least 1");
    }
    let Setup { dir, nats, mut config, reference, s3: _s3 } = Setup::start(options)?;
    config.nats.partitions = partitions;
    let (traffic, base, _) = traffic_for(options, &config);
    let spec = WorkloadSpec {
        events: options.events,
        batch_size: 1,
        duplicate_every: options.duplicate_every,
        bad_every: options.bad_every,
        seed: options.seed,
        base_time: base,
    };
    let (messages, oracle) = workload::generate_with(std::slice::from_ref(&spec), &traffic, &reference)?;
    let messages = workload::on_customer_subjects(&messages, &reference);
    let events = messages.len() as u64;
    let client = async_nats::connect(config.nats.servers()).await?;
    let js = jetstream::new(client);
    ensure_streams(&config).await?;
    publish_as(&js, &messages, None).await?;
    let broker = meterflow_ingest::Broker::connect(config.nats.clone()).await?;
    let mut last = Vec::new();
    for p in 0..partitions {
        last.push(broker.last_sequence_of(p).await?);
    }

    let ops = Arc::new(Ops::new(&config));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (config, ops, stopped) = (config.clone(), ops.clone(), stopped.clone());
            tokio::spawn(async move { run_worker(config, ops, stopped, RunOptions { exit_when_idle: None }).await })
        })
        .collect();
    let tables = config.tables()?;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    let done = loop {
        if first.is_none() && ops.metrics.events_received.get() > 0 {
            first = Some(Instant::now());
        }
        if first.is_some() {
            let committed = match SummaryTable::open_or_create(&tables).await {
                Ok(t) => t.partition_progress(partitions).await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            if committed.len() == last.len() && committed.iter().zip(&last).all(|(c, l)| c >= l) {
                break Instant::now();
            }
        }
        if Instant::now() > deadline {
            bail!("the workers did not commit every partition within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let secs = first.map_or(0.0, |f| done.duration_since(f).as_secs_f64());
    let _stopped = stop.send(true);
    for t in tasks {
        t.await??;
    }
    let commits = ops.metrics.commits.get();
    let exact = check_exact(&config, &oracle, nats, dir).await?;
    Ok(WorkersReport {
        workers,
        partitions,
        events,
        secs,
        events_per_s: events as f64 / secs.max(1e-9),
        commits,
        exact,
    })
}

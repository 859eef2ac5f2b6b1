//! Workers of a partitioned stream (`[nats] partitions` > 0): each `meterflow run` is a worker
//! that owns some partitions and runs one [`Pipeline`] per partition it owns.
//!
//! ```text
//!   every second:  heartbeat on the board ─► share = ceil(P / live workers)
//!                  owns fewer ─► try the free partitions' leases (one attempt each)
//!                  owns more  ─► hands one back (its pipeline commits, acks, releases)
//!                  a partition's pipeline that stopped (fenced, failed) ─► free for any worker
//! ```
//!
//! A partition has exactly one owner: the holder of its writer lease (`<stream>.<consumer>-p<p>`
//! in the lease bucket, a key-value entry with a time to live). Its progress is its own
//! application transaction in `usage_summaries` (`meterflow-p<p>`), its state snapshots are
//! under `_state/p<p>`, and a new owner re-creates the partition's consumer at its committed
//! sequence before pulling. A stale owner (paused past its lease) is fenced at its next commit:
//! the lease check refuses it, and behind that the Delta conflict check on its partition's
//! transaction.

use anyhow::Result;
use meterflow_ingest::{Board, Lease};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::ops::Ops;
use crate::partitions::share;
use crate::run::Pipeline;
use crate::stats::{RunOptions, RunStats};

/// How often a worker looks at the board.
const TICK: Duration = Duration::from_secs(1);
/// A partition is handed back at most this soon after it was taken (no flapping while workers
/// join).
const HOLD_AT_LEAST: Duration = Duration::from_secs(5);

/// One partition this worker runs.
struct Owned {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<RunStats>>,
    since: Instant,
    handing_back: bool,
}

/// What a worker did, per partition it ran.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// The statistics of each partition's runs, added up.
    pub partitions: BTreeMap<u32, RunStats>,
}

impl WorkerStats {
    fn add(&mut self, p: u32, s: RunStats) {
        let t = self.partitions.entry(p).or_default();
        t.messages += s.messages;
        t.replayed_messages += s.replayed_messages;
        t.redeliveries += s.redeliveries;
        t.gaps_refetched += s.gaps_refetched;
        t.events_received += s.events_received;
        t.events_accepted += s.events_accepted;
        t.duplicates += s.duplicates;
        for (reason, n) in s.rejected {
            *t.rejected.entry(reason).or_default() += n;
        }
        t.commits += s.commits;
        t.rows_written += s.rows_written;
        t.committed_seq = t.committed_seq.max(s.committed_seq);
    }
}

/// A key-safe id of this worker: host, process id and start time.
fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    let started = chrono::Utc::now().timestamp_micros();
    meterflow_ingest::partition::token(&format!("{host}-{}-{started}", std::process::id()))
}

/// Runs a worker until `shutdown` flips (or, with `exit_when_idle`, until it has drained every
/// partition: it then takes every free partition, not a share).
pub async fn run_worker(
    config: Config,
    ops: Arc<Ops>,
    mut shutdown: watch::Receiver<bool>,
    options: RunOptions,
) -> Result<WorkerStats> {
    let partitions = config.nats.partitions;
    let broker = crate::run::connect_checked(&config).await?;
    let board = Board::open(broker.jetstream(), &config.nats).await?;
    let id = worker_id();
    let owner = format!("{id} ({})", config.tables()?);
    tracing::info!(worker = %id, partitions, "worker started on a partitioned stream");
    let mut owned: BTreeMap<u32, Owned> = BTreeMap::new();
    let mut stats = WorkerStats::default();
    let mut drained: BTreeSet<u32> = BTreeSet::new();
    // Where this worker starts looking for free partitions: spread over the workers.
    let offset = meterflow_ingest::partition::partition_of(&id, partitions);
    let mut failure: Option<anyhow::Error> = None;
    let mut first = true;
    loop {
        if let Err(e) = board.heartbeat(&id).await {
            tracing::warn!(error = %e, "cannot publish the worker's heartbeat; trying again");
        }
        if std::mem::take(&mut first) {
            // Workers started together see each other before sizing their shares.
            tokio::time::sleep(TICK).await;
        }
        reap(&mut owned, &mut stats, &mut drained, options.exit_when_idle.is_some()).await;
        if *shutdown.borrow() || failure.is_some() {
            break;
        }
        if options.exit_when_idle.is_some() && drained.len() as u32 >= partitions && owned.is_empty() {
            tracing::info!("every partition drained and idle; stopping");
            break;
        }
        let live = board.live_workers().await.map(|w| w.len()).unwrap_or(1);
        let want = if options.exit_when_idle.is_some() { partitions as usize } else { share(partitions, live) };
        let running = owned.values().filter(|o| !o.handing_back).count();
        if running < want {
            for i in 0..partitions {
                let p = (offset + i) % partitions;
                if owned.len() >= want || owned.contains_key(&p) || drained.contains(&p) {
                    continue;
                }
                match Lease::try_acquire(broker.jetstream(), &config.nats.for_partition(p), owner.clone()).await {
                    Ok(Some(lease)) => {
                        tracing::info!(partition = p, "took partition");
                        owned.insert(p, start_partition(&config, p, ops.clone(), lease, &options));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, partition = p, "cannot ask for a partition's lease; trying again");
                        break;
                    }
                }
            }
        } else if running > want {
            // Hand back the highest-numbered partition held past the minimum (a newer worker
            // takes it).
            let extra = owned.iter_mut().filter(|(_, o)| !o.handing_back && o.since.elapsed() >= HOLD_AT_LEAST).last();
            if let Some((p, o)) = extra {
                tracing::info!(partition = p, live, want, "handing a partition back to share the stream");
                o.handing_back = true;
                let _sent = o.stop.send(true);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    failure = Some(anyhow::anyhow!("the shutdown signal was dropped"));
                }
            }
        }
    }
    // Stop every partition: each commits what it holds, acknowledges and releases its lease.
    for o in owned.values() {
        let _sent = o.stop.send(true);
    }
    for (p, o) in owned {
        match o.task.await {
            Ok(Ok(s)) => stats.add(p, s),
            Ok(Err(e)) => tracing::error!(partition = p, error = %format!("{e:#}"), "partition stopped with an error"),
            Err(e) => tracing::error!(partition = p, error = %e, "partition task ended abnormally"),
        }
    }
    board.leave(&id).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// Collects the partitions whose pipeline stopped (handed back, idle, fenced or failed): their
/// statistics, and with `exit_when_idle` the ones drained. A failed one is free for any worker.
async fn reap(owned: &mut BTreeMap<u32, Owned>, stats: &mut WorkerStats, drained: &mut BTreeSet<u32>, idle_exit: bool) {
    let finished: Vec<u32> = owned.iter().filter(|(_, o)| o.task.is_finished()).map(|(p, _)| *p).collect();
    for p in finished {
        let Some(o) = owned.remove(&p) else { continue };
        match o.task.await {
            Ok(Ok(s)) => {
                if idle_exit && !o.handing_back {
                    drained.insert(p);
                }
                tracing::info!(partition = p, committed_seq = s.committed_seq, "partition stopped");
                stats.add(p, s);
            }
            Ok(Err(e)) => tracing::error!(partition = p, error = %format!("{e:#}"), "partition stopped; it is free \
                for any worker to take"),
            Err(e) => tracing::error!(partition = p, error = %e, "partition task ended abnormally"),
        }
    }
}

/// Starts partition `p`'s pipeline under `lease` in its own task.
fn start_partition(config: &Config, p: u32, ops: Arc<Ops>, lease: Lease, options: &RunOptions) -> Owned {
    let mut config = config.clone();
    config.nats = config.nats.for_partition(p);
    let (stop, stopped) = watch::channel(false);
    let run = RunOptions { exit_when_idle: options.exit_when_idle };
    let task = tokio::spawn(async move {
        let pipeline = Pipeline::start_partition(config, ops, lease).await?;
        pipeline.run(stopped, run).await
    });
    Owned { stop, task, since: Instant::now(), handing_back: false }
}

//! The pipeline: the one place where the stages are wired together.
//!
//! ```text
//!  fetch ─► decode ─► enrich ─► extract ─► dedup ─► aggregate ──(commit interval)──┐
//!    ▲        └────────┴─────────┴── rejects ──────────────────────► pending DLQ    │
//!    │                                                                              ▼
//!    └── ack-all(last msg) ◄── snapshot (sometimes) ◄── Delta commit(rows, seq) ◄── DLQ publish
//! ```
//!
//! The commit protocol, in order, for the messages fetched since the last commit:
//! 1. rejects are published to `USAGE_DLQ` and their storage is confirmed;
//! 2. the window deltas are rated and appended to `usage_summaries` in one Delta commit whose
//!    application transaction records the last stream sequence covered;
//! 3. only then is the broker acknowledged (ack-all on the last message);
//! 4. every `snapshot_every_commits` commits the dedup and window state is saved, named by that
//!    sequence.
//!
//! On start the committed sequence C is read from the table, the newest snapshot S <= C is
//! loaded, and the consumer is positioned at S + 1. Messages up to C are *replayed*: they
//! rebuild dedup and window state but produce no rows and no DLQ messages, because their effect
//! is already committed. Messages after C are processed live. A crash at any point therefore
//! neither loses nor doubles an event.

use anyhow::{Context, Result};
use meterflow_aggregator::{Aggregator, AggregatorSnapshot};
use meterflow_faults::Point;
use meterflow_ingest::{Broker, Fetched, IngestError, Lease, PendingPull, RejectEnvelope, ShardedDedup};
use meterflow_rater::{Period, PeriodTotals};
use meterflow_sink::{
    ClosedPeriod, CommitRange, PeriodTable, RejectionRow, RejectionTable, SinkError, StateStore, SummaryRow,
    SummaryTable,
};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{Config, Reference};
use crate::ops::metrics::label;
use crate::ops::Ops;

mod checks;
mod stages;
pub use checks::{check_retention, check_stream, StreamVerdict};
pub use stages::{Input, Stages};

/// Counters of one run, printed at exit.
#[derive(Debug, Default, Clone)]
pub struct RunStats {
    /// Messages processed live (not replayed).
    pub messages: u64,
    /// Messages replayed to rebuild state after a restart.
    pub replayed_messages: u64,
    /// Messages delivered again while already in hand or committed, and dropped.
    pub redeliveries: u64,
    /// Times the durable consumer had vanished from the server and was re-created.
    pub consumers_recreated: u64,
    /// Times a pull skipped sequences and they were asked for again.
    pub gaps_refetched: u64,
    /// Events decoded from live messages.
    pub events_received: u64,
    /// Events accepted (first sightings).
    pub events_accepted: u64,
    /// Events dropped as duplicates.
    pub duplicates: u64,
    /// Rejects by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Delta commits.
    pub commits: u64,
    /// Summary rows written.
    pub rows_written: u64,
    /// Last committed stream sequence.
    pub committed_seq: u64,
    /// Seconds from the first live message to the last commit (the busy time, without idling).
    pub busy_secs: f64,
    /// Where the busy time went: seconds waiting for pulls that brought messages...
    pub pull_wait_secs: f64,
    /// ...in the core stages (decode to aggregate)...
    pub process_secs: f64,
    /// ...and in commits (rating, DLQ publish, Delta commits, ack).
    pub commit_secs: f64,
}

impl RunStats {
    /// Total rejects.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// How often an idle pipeline checks that its consumer still exists.
const CONSUMER_CHECK_EVERY: Duration = Duration::from_secs(3);

/// How a run ends.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Stop once nothing new arrived for this long and everything is committed.
    pub exit_when_idle: Option<Duration>,
}

/// The serialised state: window state, period totals, then the dedup index.
/// The state is only meaningful for the meter definitions it was built with (windows refer to
/// meters by position): a snapshot records them, and a different set discards the snapshot.
fn meters_fingerprint(meters: &meterflow_aggregator::Meters) -> Vec<u8> {
    serde_json::to_vec(meters.configs()).unwrap_or_default()
}

fn encode_state(agg: &Aggregator, totals: &PeriodTotals, dedup: &ShardedDedup) -> Result<Vec<u8>> {
    let meters = meters_fingerprint(agg.meters());
    let windows = serde_json::to_vec(&agg.snapshot())?;
    let totals = serde_json::to_vec(&totals.entries())?;
    let mut out = Vec::with_capacity(meters.len() + windows.len() + totals.len() + 24);
    for section in [&meters, &windows, &totals] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    out.extend_from_slice(&dedup.snapshot()?);
    Ok(out)
}

fn split_section(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_at_checked(8).context("state snapshot truncated")?;
    let mut l = [0u8; 8];
    l.copy_from_slice(len);
    let len = usize::try_from(u64::from_le_bytes(l))?;
    rest.split_at_checked(len).context("state snapshot truncated")
}

fn decode_state<'a>(
    bytes: &'a [u8],
    meters: &meterflow_aggregator::Meters,
) -> Result<(AggregatorSnapshot, PeriodTotals, &'a [u8])> {
    let (recorded, rest) = split_section(bytes)?;
    if recorded != meters_fingerprint(meters).as_slice() {
        anyhow::bail!("the [[meters]] definitions changed since this snapshot");
    }
    let (windows, rest) = split_section(rest)?;
    let (totals, dedup) = split_section(rest)?;
    Ok((serde_json::from_slice(windows)?, PeriodTotals::from_entries(serde_json::from_slice(totals)?), dedup))
}

/// The running pipeline.
pub struct Pipeline {
    config: Config,
    /// The core stages and their state.
    core: Stages,
    broker: Broker,
    table: SummaryTable,
    store: StateStore,
    /// The rejections table (committed before the summaries of the same range).
    rejections: RejectionTable,
    /// The billing_periods table and the closed periods as last read from it.
    periods: PeriodTable,
    closed: BTreeMap<String, ClosedPeriod>,
    closed_read_at: Instant,
    /// Highest sequence the table says is committed.
    committed_seq: u64,
    /// Next sequence expected from the consumer (lower ones are redeliveries).
    next_seq: u64,
    /// True while replaying messages up to `committed_seq`.
    replaying: bool,
    // Pending commit.
    /// The duplicates table (committed with the rejections).
    duplicates: RejectionTable,
    pending_last: Option<Fetched>,
    pending_since: Option<Instant>,
    commits_since_snapshot: u64,
    first_live: Option<Instant>,
    stats: RunStats,
    /// Metrics and the operations page's live state.
    ops: std::sync::Arc<Ops>,
    last_commit: Option<Instant>,
    lag_read_at: Option<Instant>,
    /// The sequence a gap was last re-fetched from (a second gap there is asked of the stream).
    gap_refetched_at: Option<u64>,
    /// A gap the stream itself confirmed holds no messages (passed over when seen again).
    gap_confirmed: Option<u64>,
    /// The writer lease: only its holder commits this stream's progress.
    lease: Option<Lease>,
    /// The identity of the stream being read (its creation time), recorded with every commit.
    stream_id: i64,
}

/// How a pipeline starts.
#[derive(Debug, Default)]
pub struct StartOptions {
    /// Start over on a stream that is not the one the tables' progress came from (deleted and
    /// re-created, or truncated): `meterflow run --adopt-stream`.
    pub adopt_stream: bool,
    /// Flips to true to give up waiting as a standby for the writer lease.
    pub shutdown: Option<watch::Receiver<bool>>,
}

/// What one commit writes, prepared from the stages before the first attempt.
struct Outputs {
    through: u64,
    rows: Vec<SummaryRow>,
    rejects: Vec<RejectEnvelope>,
    rejection_rows: Vec<RejectionRow>,
    duplicate_rows: Vec<RejectionRow>,
}

/// Whether the wall clock may move the stream clock: only when the stream itself says it holds
/// nothing beyond what the pipeline has seen (`stream_last` below `next_seq`). An unanswered
/// question (`None`: the broker is down) is a no.
fn drained(stream_last: Option<u64>, next_seq: u64) -> bool {
    stream_last.is_some_and(|last| last < next_seq)
}

/// True for the errors that mean another writer owns the stream now: stop, acknowledge nothing.
fn is_fenced(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<SinkError>(), Some(SinkError::Fenced { .. }))
            || matches!(c.downcast_ref::<IngestError>(), Some(IngestError::LeaseLost(_)))
    })
}

impl Pipeline {
    /// Connects, opens the table, restores state and positions the consumer (metrics kept
    /// but not served).
    pub async fn start(config: Config) -> Result<Pipeline> {
        let ops = std::sync::Arc::new(Ops::new(&config));
        Pipeline::start_with_ops(config, ops).await
    }

    /// Like [`Pipeline::start`], recording metrics and live state into `ops`.
    pub async fn start_with_ops(config: Config, ops: std::sync::Arc<Ops>) -> Result<Pipeline> {
        Pipeline::start_with(config, ops, StartOptions::default())
            .await?
            .context("stopped while waiting for the writer lease")
    }

    /// Connects, checks the stream, takes the writer lease (waiting as a standby while another
    /// process holds it), opens the tables, restores state and positions the consumer. `None`
    /// when `options.shutdown` flipped while waiting for the lease.
    pub async fn start_with(
        config: Config,
        ops: std::sync::Arc<Ops>,
        options: StartOptions,
    ) -> Result<Option<Pipeline>> {
        let reference = Reference::load(&config)?;
        std::fs::create_dir_all(&config.storage.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.storage.data_dir.display()))?;
        let broker = Broker::connect(config.nats.clone()).await?;
        broker.ensure_streams().await?;
        let max_age = broker.stream_facts().await?.max_age;
        let snapshot_every = Duration::from_millis(
            config.pipeline.commit_interval_ms.saturating_mul(config.pipeline.snapshot_every_commits.max(1)),
        );
        check_retention(&config.nats.stream, max_age, config.pipeline.dedup_horizon_days, snapshot_every)
            .map_err(anyhow::Error::msg)?;
        let owner = format!(
            "{}:{} ({})",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id(),
            config.storage.data_dir.display()
        );
        let stop = options.shutdown.clone();
        let lease =
            Lease::acquire(broker.jetstream(), &config.nats, owner, || stop.as_ref().is_some_and(|s| *s.borrow()))
                .await?;
        let Some(lease) = lease else { return Ok(None) };
        match Pipeline::open(config, ops, reference, broker, options.adopt_stream).await {
            Ok(mut pipeline) => {
                pipeline.lease = Some(lease);
                Ok(Some(pipeline))
            }
            Err(e) => {
                // A standby need not wait for the lease to expire.
                lease.release().await;
                Err(e)
            }
        }
    }

    /// The start-up steps taken while holding the writer lease: everything read here is what
    /// the previous writer left. The stream's facts are read here too, not before the lease: a
    /// standby that waited has seen the stream grow and the tables commit meanwhile.
    async fn open(
        config: Config,
        ops: std::sync::Arc<Ops>,
        reference: Reference,
        mut broker: Broker,
        adopt_stream: bool,
    ) -> Result<Pipeline> {
        let facts = broker.stream_facts().await?;
        let mut table = SummaryTable::open_or_create(&config.storage.data_dir).await?;
        let store = StateStore::open(config.state_dir())?;
        let mut rejections = RejectionTable::open_or_create(&config.storage.data_dir).await?;
        let mut duplicates = RejectionTable::open_duplicates(&config.storage.data_dir).await?;
        if adopt_stream {
            let set_aside = store.set_aside_all()?;
            table.adopt_stream(facts.created_unix_micros).await?;
            rejections.start_over().await?;
            duplicates.start_over().await?;
            tracing::warn!(
                stream = %config.nats.stream,
                created = %facts.created,
                snapshots_set_aside = set_aside,
                "adopted the stream as it is now: counting it from its first message"
            );
        }
        let committed_seq = table.committed_seq().await?;
        let recorded = table.stream_identity().await?;
        if check_stream(&config.nats.stream, recorded, committed_seq, &facts).map_err(anyhow::Error::msg)?
            == StreamVerdict::Record
        {
            tracing::info!(stream = %config.nats.stream, created = %facts.created, "recording the stream's identity with the next commit");
        }
        let dedup = ShardedDedup::new(config.pipeline.dedup_shards, config.pipeline.dedup_horizon_days)?;
        let mut agg = Aggregator::with_policy(reference.meters.clone(), config.lateness.policy());
        let mut totals = PeriodTotals::default();
        let mut resume_from = 1;
        if let Some((snap_seq, bytes)) = store.latest_at_or_below(committed_seq)? {
            match decode_state(&bytes, &reference.meters).and_then(|(windows, t, dedup_bytes)| {
                dedup.restore(dedup_bytes)?;
                Ok((windows, t))
            }) {
                Ok((windows, t)) => {
                    agg = Aggregator::restore(reference.meters.clone(), config.lateness.policy(), windows);
                    totals = t;
                    resume_from = snap_seq + 1;
                }
                Err(e) => {
                    // A snapshot that cannot be read is not fatal: rebuild from the stream.
                    tracing::warn!(error = %e, snap_seq, "ignoring unreadable state snapshot; replaying from the start of the stream");
                }
            }
        }
        // A partially restored dedup index (restore failed half-way) must not be used.
        let dedup = if resume_from == 1 {
            ShardedDedup::new(config.pipeline.dedup_shards, config.pipeline.dedup_horizon_days)?
        } else {
            dedup
        };
        broker.position_consumer(resume_from).await?;
        tracing::info!(committed_seq, resume_from, "pipeline started; replaying committed messages to rebuild state");
        let stats = RunStats { committed_seq, ..Default::default() };
        let mut periods = PeriodTable::open_or_create(&config.storage.data_dir).await?;
        let closed = periods.closed().await?;
        let core = Stages::new(&config, reference, dedup, agg, totals, ops.clone());
        Ok(Pipeline {
            config,
            core,
            broker,
            table,
            store,
            rejections,
            periods,
            closed,
            closed_read_at: Instant::now(),
            committed_seq,
            next_seq: resume_from,
            replaying: resume_from <= committed_seq,
            duplicates,
            pending_last: None,
            pending_since: None,
            commits_since_snapshot: 0,
            first_live: None,
            stats,
            ops,
            last_commit: None,
            lag_read_at: None,
            gap_refetched_at: None,
            gap_confirmed: None,
            lease: None,
            stream_id: facts.created_unix_micros,
        })
    }

    /// Runs until `shutdown` flips to true (or the stream is drained and idle, when asked),
    /// then commits what is pending, acks, and returns the counters.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, options: RunOptions) -> Result<RunStats> {
        let interval = Duration::from_millis(self.config.pipeline.commit_interval_ms.max(1));
        let mut idle_since: Option<Instant> = None;
        let mut retry_delay = Duration::from_millis(100);
        let mut consumer_checked = Instant::now();
        // The next pull, requested before the current one is processed so that the broker
        // delivers it while this task decodes, aggregates and commits (dropped, uncollected,
        // whenever the consumer is re-positioned).
        let mut next_pull: Option<PendingPull> = None;
        let batch = self.config.nats.fetch_batch;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.lease.as_ref().is_some_and(Lease::is_lost) {
                // A standby took over (this process was paused or cut off past the lease): stop
                // pulling and committing at once; what is in hand is the new owner's to commit.
                anyhow::bail!(
                    "another meterflow run took over this stream's writer lease; stopping without committing or acknowledging what is in hand"
                );
            }
            let pull = async {
                match next_pull.take() {
                    Some(pull) => pull.collect().await,
                    None => self.broker.request(batch).await?.collect().await,
                }
            };
            let pull_started = Instant::now();
            let fetched = tokio::select! {
                r = pull => r,
                _ = shutdown.changed() => break,
            };
            if fetched.as_ref().is_ok_and(|f| !f.is_empty()) {
                self.stats.pull_wait_secs += pull_started.elapsed().as_secs_f64();
            }
            let fetched = match fetched {
                Ok(f) => {
                    retry_delay = Duration::from_millis(100);
                    if !f.is_empty() {
                        // More is likely waiting: ask for it now (a failed request is retried
                        // as a plain fetch on the next turn).
                        next_pull = self.broker.request(batch).await.ok();
                    }
                    f
                }
                Err(IngestError::Oversized) => {
                    // A message larger than fetch_max_bytes: read it alone, however large.
                    next_pull = None;
                    match self.broker.request_large().await {
                        Ok(pull) => match pull.collect().await {
                            Ok(f) => f,
                            Err(e) => {
                                tracing::warn!(error = %e, "reading a message larger than fetch_max_bytes failed; retrying");
                                tokio::time::sleep(retry_delay).await;
                                continue;
                            }
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "reading a message larger than fetch_max_bytes failed; retrying");
                            tokio::time::sleep(retry_delay).await;
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fetch failed; retrying");
                    self.recreate_consumer_if_deleted().await;
                    consumer_checked = Instant::now();
                    tokio::time::sleep(retry_delay).await;
                    retry_delay = (retry_delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let got_any = !fetched.is_empty();
            if !got_any && !self.replaying {
                self.publish_progress().await;
            }
            if !got_any && consumer_checked.elapsed() >= CONSUMER_CHECK_EVERY {
                // A pull from a deleted consumer can simply come back empty: check it exists.
                next_pull = None;
                self.recreate_consumer_if_deleted().await;
                consumer_checked = Instant::now();
            }
            if !got_any && !self.replaying && self.caught_up().await {
                // Drained, as the stream itself confirms: the stream clock catches up with the
                // wall clock, so quiet meters' watermarks (and billing periods) still advance.
                // An empty or failed pull alone never moves it (a deleted consumer or a broker
                // restart can leave a backlog waiting behind empty pulls).
                self.core.agg.advance_clock(chrono::Utc::now());
                if self.pending_last.is_none() {
                    self.close_due_periods().await;
                }
            }
            let process_started = Instant::now();
            let gap = self.process(fetched)?;
            self.stats.process_secs += process_started.elapsed().as_secs_f64();
            if let Some((from, to)) = gap {
                next_pull = None;
                self.refetch_from_gap(from, to).await;
            }
            let due = self.pending_since.is_some_and(|t| t.elapsed() >= interval);
            if self.core.pending_events >= self.config.pipeline.max_batch_events || due {
                self.commit_with_retry(&mut shutdown).await?;
            }
            if let Some(limit) = options.exit_when_idle {
                if got_any {
                    idle_since = None;
                } else {
                    if self.pending_last.is_some() {
                        self.commit_with_retry(&mut shutdown).await?;
                    }
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= limit {
                        let last = self.broker.last_sequence().await.unwrap_or(u64::MAX);
                        if self.committed_seq >= last || self.next_seq > last {
                            tracing::info!(committed_seq = self.committed_seq, "stream drained and idle; stopping");
                            break;
                        }
                    }
                }
            }
        }
        if self.pending_last.is_some() {
            self.commit_with_retry(&mut shutdown).await?;
        }
        self.broker.flush().await.ok();
        self.stats.committed_seq = self.committed_seq;
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
        Ok(self.stats)
    }

    /// True when the stream holds nothing the pipeline has not seen (asked of the broker).
    async fn caught_up(&self) -> bool {
        drained(self.broker.last_sequence().await.ok(), self.next_seq)
    }

    /// Updates the progress metrics: watermarks, open windows and (at most every second) the
    /// consumer lag, which needs a request to the broker.
    async fn publish_progress(&mut self) {
        let m = &self.ops.metrics;
        let now = chrono::Utc::now();
        let policy = *self.core.agg.policy();
        let watermarks: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> = self
            .core
            .reference
            .meters
            .configs()
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.clone(), self.core.agg.progress().watermark(i, &policy)))
            .collect();
        for (meter, w) in &watermarks {
            if let Some(w) = w {
                let age = (now - *w).num_milliseconds() as f64 / 1000.0;
                m.watermark_age.get_or_create(&label("meter", meter.clone())).set(age);
            }
        }
        self.ops.live.set_watermarks(watermarks);
        m.open_windows.set(i64::try_from(self.core.agg.window_count()).unwrap_or(i64::MAX));
        // At most one broker request a second, unless the commit went past the last sequence
        // known (the stream grew since: a lag of 0 would be stale).
        let known_last = u64::try_from(m.stream_last_sequence.get()).unwrap_or(0);
        if self.committed_seq > known_last || self.lag_read_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            self.lag_read_at = Some(Instant::now());
            if let Ok(last) = self.broker.last_sequence().await {
                m.stream_last_sequence.set(i64::try_from(last).unwrap_or(i64::MAX));
                m.consumer_lag.set(i64::try_from(last.saturating_sub(self.committed_seq)).unwrap_or(i64::MAX));
            }
        }
    }

    /// Re-creates the durable consumer when the server says it no longer exists (deleted by an
    /// operator or lost with the server's state), at the next sequence the pipeline needs, so
    /// nothing is skipped or counted twice. Errors reaching the server are left to the retries.
    async fn recreate_consumer_if_deleted(&mut self) {
        if !matches!(self.broker.consumer_exists().await, Ok(false)) {
            return;
        }
        let (consumer, stream) = self.broker.consumer_name();
        let (consumer, stream) = (consumer.to_string(), stream.to_string());
        tracing::error!(
            consumer,
            stream,
            next_seq = self.next_seq,
            "the pipeline's consumer no longer exists on the server (was it deleted?); re-creating it at the next sequence the pipeline needs"
        );
        match self.broker.position_consumer(self.next_seq).await {
            Ok(()) => {
                self.stats.consumers_recreated += 1;
                self.ops.metrics.consumers_recreated.inc();
            }
            Err(e) => tracing::error!(error = %e, consumer, "cannot re-create the consumer; will retry"),
        }
    }

    /// A pull skipped sequences `from..to`: the messages were dropped on the way (for example by
    /// a server that found the client too slow) or do not exist (deleted, expired). The first
    /// time, the consumer is re-positioned at `from` and the messages are asked for again. When
    /// the server again starts after `from`, the stream itself is asked for each missing
    /// sequence (a direct read); only sequences it confirms absent are passed over. A failed
    /// re-position is retried on the next sighting, never assumed.
    async fn refetch_from_gap(&mut self, from: u64, to: u64) {
        if self.gap_refetched_at == Some(from) {
            match self.confirm_absent(from, to).await {
                Ok(true) => self.gap_confirmed = Some(from),
                Ok(false) => tracing::warn!(from_seq = from, "skipped stream sequences exist; asking for them again"),
                Err(e) => {
                    tracing::warn!(error = %e, from_seq = from, "cannot ask the stream about skipped sequences; retrying")
                }
            }
        } else {
            tracing::warn!(from_seq = from, "a pull skipped stream sequences; asking for them again");
        }
        let positioned = if meterflow_faults::fires(Point::ConsumerReposition) {
            Err(anyhow::anyhow!("fault point consumer_reposition"))
        } else {
            self.broker.position_consumer(from).await.map_err(anyhow::Error::from)
        };
        match positioned {
            Ok(()) => {
                self.stats.gaps_refetched += 1;
                self.gap_refetched_at = Some(from);
            }
            Err(e) => tracing::error!(error = %e, "cannot re-position the consumer; asking again on the next pull"),
        }
    }

    /// Whether the stream confirms that it holds none of `from..to`.
    async fn confirm_absent(&self, from: u64, to: u64) -> meterflow_ingest::Result<bool> {
        let first = self.broker.stream_facts().await?.first_seq;
        for seq in from.max(first)..to {
            if self.broker.sequence_exists(seq).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Handles one fetched batch: drops redeliveries, replays what is already committed, and
    /// processes the rest live. Returns the skipped sequences `(from, to)` when the batch has a
    /// gap (the messages from the gap on are left for a re-fetch).
    fn process(&mut self, fetched: Vec<Fetched>) -> Result<Option<(u64, u64)>> {
        let mut fresh = Vec::with_capacity(fetched.len());
        let mut gap = None;
        for msg in fetched {
            if msg.seq > self.next_seq {
                if self.gap_confirmed == Some(self.next_seq) {
                    // The stream confirmed that nothing exists in between.
                    tracing::warn!(
                        from_seq = self.next_seq,
                        to_seq = msg.seq - 1,
                        "stream sequences not in the stream (deleted or expired); continuing after them"
                    );
                } else {
                    gap = Some((self.next_seq, msg.seq));
                    break;
                }
            }
            if msg.seq < self.next_seq {
                // A redelivery of something already in hand or committed (for example after the
                // ack wait expired while a commit was slow).
                self.stats.redeliveries += 1;
                self.ops.metrics.redeliveries.inc();
                continue;
            }
            self.next_seq = msg.seq + 1;
            self.gap_refetched_at = None;
            self.gap_confirmed = None;
            fresh.push(msg);
        }
        let split = fresh.partition_point(|m| m.seq <= self.committed_seq);
        let live = fresh.split_off(split);
        if !fresh.is_empty() {
            self.stats.replayed_messages += fresh.len() as u64;
            self.process_part(fresh, false)?;
        }
        if self.replaying && self.next_seq > self.committed_seq {
            // The replay has rebuilt the state as of the committed sequence: the rows it would
            // flush are already in the table, so only the period totals take them in.
            let deltas = self.core.agg.flush();
            self.core.advance_totals(&deltas)?;
            self.replaying = false;
        }
        if !live.is_empty() {
            self.stats.messages += live.len() as u64;
            self.pending_since.get_or_insert_with(Instant::now);
            self.first_live.get_or_insert_with(Instant::now);
            self.process_part(live, true)?;
        }
        Ok(gap)
    }

    /// Runs the core stages over messages that are all live or all replayed.
    fn process_part(&mut self, messages: Vec<Fetched>, live: bool) -> Result<()> {
        let inputs: Vec<Input<'_>> = messages.iter().map(Input::from).collect();
        self.core.process(&inputs, live, &mut self.stats)?;
        if live {
            self.pending_last = messages.into_iter().last();
        }
        Ok(())
    }

    /// Runs the commit protocol for everything pending: commit the outputs (retrying transient
    /// failures until they are in), then the after-commit steps (ack, evict, snapshot), then the
    /// periodic ones (close due periods, compact). On shutdown during retries it gives up
    /// without acking (nothing is lost: the messages are re-read from the committed sequence on
    /// the next start). A writer that finds itself fenced out stops at once, acking nothing.
    async fn commit_with_retry(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let Some(last) = self.pending_last.take() else { return Ok(()) };
        let commit_started = Instant::now();
        let outputs = self.prepare_outputs(last.seq)?;
        let version = self.commit_outputs(&outputs, shutdown).await?;
        self.after_commit(&last, &outputs, version).await?;
        self.on_tick().await;
        self.stats.commit_secs += commit_started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Flushes and rates the window deltas and takes the rejects and duplicates of the range.
    fn prepare_outputs(&mut self, through: u64) -> Result<Outputs> {
        let rows = self.core.flush_and_rate(through, &self.closed)?;
        let (rejects, duplicate_rows) = self.core.take_pending();
        let rejection_rows = rejects
            .iter()
            .map(|r| RejectionRow {
                stream_seq: r.seq,
                event_index: r.index.map(|i| i as u64),
                reason: r.reason.code().to_string(),
                detail: r.detail.clone(),
                subject: r.subject.clone(),
                size: r.original.len() as u64,
            })
            .collect();
        Ok(Outputs { through, rows, rejects, rejection_rows, duplicate_rows })
    }

    /// Commits one range's outputs until they are in: DLQ (once), rejections, duplicates, then
    /// usage_summaries with the range's progress. Returns the summaries version holding it.
    async fn commit_outputs(&mut self, out: &Outputs, shutdown: &mut watch::Receiver<bool>) -> Result<u64> {
        let mut delay = Duration::from_millis(100);
        let mut stop_requested = false;
        let mut dlq_published = out.rejects.is_empty();
        let started = Instant::now();
        let range = CommitRange { after: self.committed_seq, through: out.through, stream: Some(self.stream_id) };
        let span = tracing::info_span!(
            "commit",
            through_seq = out.through,
            rows = out.rows.len(),
            rejects = out.rejects.len()
        );
        loop {
            let attempt = async {
                if let Some(lease) = &self.lease {
                    lease.check()?;
                }
                if !dlq_published {
                    // Published once per range, whatever the retries: an outage longer than the
                    // DLQ's duplicate window must not duplicate DLQ entries.
                    self.broker.publish_rejects(&out.rejects).await?;
                    dlq_published = true;
                    meterflow_faults::hit(Point::AfterDlqPublish);
                }
                self.rejections.commit(&out.rejection_rows, out.through).await?;
                if !out.rejection_rows.is_empty() {
                    meterflow_faults::hit(Point::AfterRejectionsCommit);
                }
                self.duplicates.commit(&out.duplicate_rows, out.through).await?;
                let committed = self.table.commit(&out.rows, range).await?;
                meterflow_faults::hit(Point::AfterDeltaCommit);
                anyhow::Ok(committed)
            }
            .instrument(span.clone())
            .await;
            match attempt {
                Ok(committed) => {
                    let version = committed.version();
                    if matches!(committed, meterflow_sink::Committed::AlreadyThere(_)) {
                        tracing::warn!(
                            version,
                            through = out.through,
                            "the range was already committed by an earlier attempt; not written again"
                        );
                    }
                    self.record_commit(started, out, committed);
                    return Ok(version);
                }
                Err(e) if is_fenced(&e) => {
                    return Err(e.context(format!(
                        "stopping without acknowledging stream sequence {}: another meterflow run owns this stream's progress",
                        out.through
                    )));
                }
                Err(e) if stop_requested => {
                    return Err(e.context(
                        "commit failed during shutdown; uncommitted messages will be re-read on the next start",
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), through = out.through, "commit failed; not acknowledging, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => { stop_requested = true; }
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Metrics of one commit.
    fn record_commit(&mut self, started: Instant, out: &Outputs, committed: meterflow_sink::Committed) {
        let version = committed.version();
        let ms = started.elapsed().as_millis() as u64;
        tracing::debug!(
            version,
            through = out.through,
            rows = out.rows.len(),
            rejects = out.rejects.len(),
            ms,
            "committed"
        );
        let m = &self.ops.metrics;
        m.commit_duration.observe(started.elapsed().as_secs_f64());
        if let Some(last) = self.last_commit {
            m.commit_interval.observe(last.elapsed().as_secs_f64());
        }
        self.last_commit = Some(Instant::now());
        m.commits.inc();
        m.summary_rows.inc_by(out.rows.len() as u64);
        if !out.rows.is_empty() && matches!(committed, meterflow_sink::Committed::Written(_)) {
            let (files, bytes) = self.table.files_added_in(version);
            m.parquet_files.inc_by(files);
            m.parquet_bytes.inc_by(bytes);
        }
    }

    /// After a commit: progress, ack, eviction of windows no event can reach, snapshot.
    async fn after_commit(&mut self, last: &Fetched, out: &Outputs, _version: u64) -> Result<()> {
        let through = out.through;
        self.committed_seq = through;
        self.ops.metrics.committed_sequence.set(i64::try_from(through).unwrap_or(i64::MAX));
        self.stats.commits += 1;
        self.stats.rows_written += out.rows.len() as u64;
        self.stats.committed_seq = through;
        self.stats.busy_secs = self.first_live.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.core.pending_events = 0;
        self.pending_since = None;
        if let Err(e) = self.broker.ack_through(&last.message).await {
            // Harmless: the next start resumes from the committed sequence, not the ack floor.
            tracing::warn!(error = %e, through, "ack failed after a successful commit");
        }
        meterflow_faults::hit(Point::AfterAck);
        self.publish_progress().await;
        // Windows older than anything the backdating limit still admits can go.
        if let Some(clock) = self.core.agg.progress().stream_clock() {
            let reach = self.core.bounds.max_backdating + self.core.bounds.max_future_skew + chrono::Duration::days(1);
            let evicted = self.core.agg.evict_before(clock - reach);
            if evicted > 0 {
                tracing::debug!(evicted, "dropped windows beyond the backdating limit");
            }
        }
        self.commits_since_snapshot += 1;
        if self.commits_since_snapshot >= self.config.pipeline.snapshot_every_commits.max(1) {
            self.snapshot()?;
        }
        Ok(())
    }

    /// The periodic steps after a commit: close due billing periods, compact every N commits.
    /// Neither can stop metering: a failure is logged and tried again later.
    async fn on_tick(&mut self) {
        self.close_due_periods().await;
        let every = self.config.storage.compact_every_commits;
        if every > 0 && self.stats.commits.is_multiple_of(every) {
            match self.table.compact().await {
                Ok((removed, added)) => tracing::info!(removed, added, "compacted usage_summaries"),
                // Not fatal: compaction only keeps reads and commits fast.
                Err(e) => tracing::warn!(error = %e, "compaction failed; will retry later"),
            }
        }
    }

    /// Closes every billing period that holds usage and whose end plus the grace period all
    /// meters' watermarks have passed; also picks up periods closed with `meterflow close`.
    /// Only called with nothing pending, so the sealed version holds everything processed. The
    /// sealed version is read from the table, never assumed; a close that fails is logged and
    /// tried again at the next commit or idle turn.
    async fn close_due_periods(&mut self) {
        if let Err(e) = self.try_close_due_periods().await {
            tracing::warn!(error = %format!("{e:#}"), "closing a due billing period failed; will retry");
        }
    }

    async fn try_close_due_periods(&mut self) -> Result<()> {
        if self.closed_read_at.elapsed() >= Duration::from_secs(5) {
            match self.periods.closed().await {
                Ok(c) => self.closed = c,
                Err(e) => tracing::warn!(error = %e, "cannot read billing_periods; keeping the last known closes"),
            }
            self.closed_read_at = Instant::now();
        }
        let policy = *self.core.agg.policy();
        let watermark = (0..self.core.reference.meters.configs().len())
            .filter_map(|m| self.core.agg.progress().watermark(m, &policy))
            .min();
        let Some(watermark) = watermark else { return Ok(()) };
        let grace = self.config.lateness.period_grace();
        let due: Vec<Period> = self
            .core
            .seen_periods
            .iter()
            .filter(|p| !self.closed.contains_key(*p))
            .filter_map(|p| Period::parse(p))
            .filter(|p| watermark > p.end + grace)
            .collect();
        for p in due {
            let sealed = self.table.current_version().await?;
            let recorded = self.periods.close(&p.label(), p.start, p.end, "watermark", sealed).await?;
            tracing::info!(period = %p.label(), sealed = recorded.sealed_version, %watermark, "closed billing period");
            self.closed.insert(p.label(), recorded);
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Result<()> {
        let bytes = encode_state(&self.core.agg, &self.core.totals, &self.core.dedup)?;
        match self.store.save(self.committed_seq, &bytes) {
            Ok(()) => {
                self.commits_since_snapshot = 0;
                meterflow_faults::hit(Point::AfterSnapshot);
            }
            // Not fatal: the next start replays a little more.
            Err(e) => tracing::warn!(error = %e, "state snapshot failed; will retry at the next commit"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_aggregator::{Aggregation, MeterConfig, Meters, WindowSize};

    fn meters(names: &[&str]) -> Meters {
        Meters::new(
            names
                .iter()
                .map(|n| MeterConfig {
                    name: n.to_string(),
                    event_type: n.to_string(),
                    aggregation: Aggregation::Count,
                    value_property: None,
                    group_by: vec![],
                    window: WindowSize::Hour,
                    allowed_lateness_s: 3600,
                })
                .collect(),
        )
        .unwrap()
    }

    // Found in review: any empty pull (a deleted consumer, a broker restart with a backlog
    // waiting) moved event time to the wall clock, closing periods and evicting windows early.
    #[test]
    fn the_wall_clock_moves_event_time_only_when_the_stream_confirms_nothing_is_waiting() {
        assert!(drained(Some(41), 42), "everything up to 41 seen");
        assert!(!drained(Some(42), 42), "a message waits");
        assert!(!drained(Some(900), 42), "a backlog behind empty pulls");
        assert!(!drained(None, 42), "the broker did not answer");
    }

    #[test]
    fn a_snapshot_round_trips_and_is_refused_after_the_meters_change() {
        let agg = Aggregator::new(meters(&["a", "b"]));
        let dedup = ShardedDedup::new(1, 37).unwrap();
        let bytes = encode_state(&agg, &PeriodTotals::default(), &dedup).unwrap();
        assert!(decode_state(&bytes, &meters(&["a", "b"])).is_ok());
        let e = decode_state(&bytes, &meters(&["b", "a"])).unwrap_err();
        assert!(e.to_string().contains("[[meters]] definitions changed"), "{e}");
        assert!(decode_state(&bytes[..5], &meters(&["a", "b"])).is_err());
    }
}

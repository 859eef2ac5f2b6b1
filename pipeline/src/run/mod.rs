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
use meterflow_aggregator::Aggregator;
use meterflow_faults::Point;
use meterflow_ingest::{Board, Broker, Fetched, IngestError, Lease, PartitionRecord, PendingPull, ShardedDedup};
use meterflow_rater::PeriodTotals;
use meterflow_sink::{ClosedPeriod, PeriodTable, RejectionTable, StateStore, SummaryTable};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use crate::catalog;
use crate::config::{Config, Reference};
use crate::ops::metrics::label;
use crate::ops::Ops;
use meterflow_catalog::{check_change, Catalog, CatalogStore, Revision};

use crate::checks::{check_retention, check_stream, StreamVerdict};
use crate::events::{
    ConsumerRecreated, GapRefetched, Instruments, InternalEvent, MessagesProcessed, MessagesReplayed, Redelivered,
};
use crate::stages::snapshot::decode_state;
use crate::stages::{Input, Stages};
use crate::stats::{RunOptions, RunStats};

mod commit;
mod follow;

/// How often an idle pipeline checks that its consumer still exists.
const CONSUMER_CHECK_EVERY: Duration = Duration::from_secs(3);

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
    /// The last sequence of the stream (of the partition, on a partitioned stream) last read.
    known_last: u64,
    /// When the DLQ depth was last asked of the broker (for the metrics and the page).
    dlq_read_at: Option<Instant>,
    /// The sequence a gap was last re-fetched from (a second gap there is asked of the stream).
    gap_refetched_at: Option<u64>,
    /// A gap the stream itself confirmed holds no messages (passed over when seen again).
    gap_confirmed: Option<u64>,
    /// The writer lease: only its holder commits this stream's progress.
    lease: Option<Lease>,
    /// The identity of the stream being read (its creation time), recorded with every commit.
    stream_id: i64,
    /// The catalog: its stream, and the revision the stages decide under (with the catalog as
    /// of it).
    catalog: CatalogStore,
    revision: Revision,
    catalog_now: Catalog,
    /// When the catalog stream was last asked for a newer revision.
    catalog_checked_at: Option<Instant>,
    /// The newest revision that failed its checks (not tried again; a later one is).
    catalog_refused: Option<Revision>,
    /// A newer revision to move to as soon as the replay has rebuilt the committed state.
    catalog_next: Option<(Revision, Catalog, Reference)>,
    /// Every revision appended to the catalog stream, as the broker delivers it (a plain
    /// subscription, so a change reaches the pipeline before any usage published after it);
    /// `None` when the subscription is not allowed.
    catalog_notices: Option<async_nats::Subscriber>,
    /// A notice arrived that the pipeline has not acted on yet.
    catalog_noticed: bool,
    /// Whether a state snapshot was loaded at start (without one, the first turn live saves
    /// one, naming the revision in force).
    restored_snapshot: bool,
    /// On a partition's consumer: the delivery sequence expected next (its stream sequences
    /// are not consecutive, so a lost delivery shows as a jump here instead).
    next_delivery: Option<u64>,
    /// On a partitioned stream: the board this partition's record is published on, and when
    /// it last was.
    board: Option<Board>,
    board_published_at: Option<Instant>,
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

/// Whether the wall clock may move the stream clock: only when the stream itself says it holds
/// nothing beyond what the pipeline has seen (`stream_last` below `next_seq`). An unanswered
/// question (`None`: the broker is down) is a no.
fn drained(stream_last: Option<u64>, next_seq: u64) -> bool {
    stream_last.is_some_and(|last| last < next_seq)
}

/// Creates the data directory, connects, creates the streams when absent and checks the usage
/// stream's retention covers the dedup horizon and the time between snapshots: the first steps
/// of a pipeline and of a worker.
pub(crate) async fn connect_checked(config: &Config) -> Result<Broker> {
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
    Ok(broker)
}

/// The state of the core stages as restored at start.
struct Restored {
    dedup: ShardedDedup,
    agg: Aggregator,
    totals: PeriodTotals,
    /// The sequence to resume reading from.
    resume_from: u64,
    /// The catalog revision the snapshot names (`None`: no snapshot, or one from before
    /// revisions were recorded).
    revision: Option<Revision>,
}

/// The state of the core stages as of the newest snapshot at or below the committed sequence
/// (empty when there is none or it cannot be read), and the sequence to resume reading from.
async fn restore_state(
    config: &Config,
    meters: &meterflow_aggregator::Meters,
    store: &StateStore,
    committed_seq: u64,
) -> Result<Restored> {
    let dedup = ShardedDedup::new(config.pipeline.dedup_shards, config.pipeline.dedup_horizon_days)?;
    let mut agg = Aggregator::with_policy(meters.clone(), config.lateness.policy());
    let mut totals = PeriodTotals::default();
    let mut resume_from = 1;
    let mut revision = None;
    if let Some((snap_seq, bytes)) = store.latest_at_or_below(committed_seq).await? {
        match decode_state(&bytes, meters).and_then(|d| {
            dedup.restore(d.dedup)?;
            Ok(d)
        }) {
            Ok(d) => {
                agg = Aggregator::restore(meters.clone(), config.lateness.policy(), d.windows);
                totals = d.totals;
                resume_from = snap_seq + 1;
                revision = d.revision;
            }
            Err(e) => {
                // A snapshot that cannot be read is not fatal: rebuild from the stream.
                tracing::warn!(error = %e, snap_seq, "ignoring unreadable state snapshot; replaying from \
                    the start of the stream");
            }
        }
    }
    // A partially restored dedup index (restore failed half-way) must not be used.
    let dedup = if resume_from == 1 {
        ShardedDedup::new(config.pipeline.dedup_shards, config.pipeline.dedup_horizon_days)?
    } else {
        dedup
    };
    Ok(Restored { dedup, agg, totals, resume_from, revision })
}

/// The catalog revision the committed messages after the snapshot were decided under, and the
/// catalog as of it: the snapshot's; for a snapshot from before revisions were recorded (or
/// none), the one the last commit recorded; for a table without one, the newest.
async fn replay_catalog(
    config: &Config,
    store: &CatalogStore,
    (latest, latest_catalog): &(Revision, Catalog),
    snapshot: Option<Revision>,
    committed: Option<Revision>,
) -> Result<(Revision, Catalog)> {
    let revision = snapshot.or(committed).unwrap_or(*latest);
    if revision > *latest {
        anyhow::bail!(
            "the state was decided under catalog revision {revision}, but the catalog stream {} holds {latest} \
             revisions: it was re-created or is another server's; restore it (or start over with a new data \
             directory)",
            config.nats.catalog_stream
        );
    }
    if snapshot.is_none() && committed.is_some() {
        tracing::warn!(
            revision,
            "the state snapshot names no catalog revision; replaying under the revision of \
            the last commit"
        );
    }
    if revision == *latest {
        return Ok((revision, latest_catalog.clone()));
    }
    Ok((revision, store.catalog_at(revision).await?))
}

/// A newer revision's reference data, if it passes its checks against the one in force.
fn checked_revision(config: &Config, now: &Catalog, next: &Catalog, revision: Revision) -> Result<Reference> {
    check_change(now, next)?;
    catalog::reference_at(config, next, revision)
}

/// What the run loop carries from one turn to the next.
struct Turns {
    /// The next pull, requested before the current one is processed so that the broker delivers
    /// it while this task decodes, aggregates and commits (dropped, uncollected, whenever the
    /// consumer is re-positioned).
    next_pull: Option<PendingPull>,
    retry_delay: Duration,
    consumer_checked: Instant,
    idle_since: Option<Instant>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            next_pull: None,
            retry_delay: Duration::from_millis(100),
            consumer_checked: Instant::now(),
            idle_since: None,
        }
    }
}

/// The outcome of one pull.
enum Pulled {
    Messages(Vec<Fetched>),
    /// The pull failed; the loop tries again.
    Retry,
    /// Shutdown was asked for while waiting.
    Stop,
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
        let broker = connect_checked(&config).await?;
        let owner = format!(
            "{}:{} ({})",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
            std::process::id(),
            config.tables()?
        );
        let stop = options.shutdown.clone();
        let lease =
            Lease::acquire(broker.jetstream(), &config.nats, owner, || stop.as_ref().is_some_and(|s| *s.borrow()))
                .await?;
        let Some(lease) = lease else { return Ok(None) };
        match Pipeline::open(config, ops, broker, options.adopt_stream).await {
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

    /// Connects and starts the reader of partition `config.nats.partition` under `lease` (the
    /// partition's writer lease, taken by a worker): like [`Pipeline::start_with`] after the
    /// lease. The lease is released when the start fails.
    pub async fn start_partition(config: Config, ops: std::sync::Arc<Ops>, lease: Lease) -> Result<Pipeline> {
        let opened = async {
            let broker = Broker::connect(config.nats.clone()).await?;
            Pipeline::open(config, ops, broker, false).await
        };
        match opened.await {
            Ok(mut pipeline) => {
                pipeline.lease = Some(lease);
                pipeline.publish_partition(true).await;
                Ok(pipeline)
            }
            Err(e) => {
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
        mut broker: Broker,
        adopt_stream: bool,
    ) -> Result<Pipeline> {
        let facts = broker.stream_facts().await?;
        let catalog = catalog::open_store(&broker, &config).await?;
        // Subscribed before the newest revision is read: no change can fall in between.
        let catalog_notices = follow::subscribe_notices(&broker, &config).await;
        let latest = catalog::bootstrap(&catalog, &config).await?;
        let tables = config.tables()?;
        let partition = config.nats.partition;
        let mut table = SummaryTable::open_or_create(&tables).await?.in_partition(partition);
        let store = StateStore::open_for(&tables, partition)?;
        let mut rejections = RejectionTable::open_or_create(&tables).await?.in_partition(partition);
        let mut duplicates = RejectionTable::open_duplicates(&tables).await?.in_partition(partition);
        let board = match partition {
            Some(_) => Some(Board::open(broker.jetstream(), &config.nats).await?),
            None => None,
        };
        if adopt_stream {
            let set_aside = store.set_aside_all().await?;
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
            tracing::info!(stream = %config.nats.stream, created = %facts.created, "recording the stream's \
                identity with the next commit");
        }
        let meters =
            meterflow_aggregator::Meters::new(config.meters.clone()).context("invalid [[meters]] in the config")?;
        let restored = restore_state(&config, &meters, &store, committed_seq).await?;
        let resume_from = restored.resume_from;
        let committed_revision = table.catalog_revision().await?;
        let (revision, catalog_now) =
            replay_catalog(&config, &catalog, &latest, restored.revision, committed_revision).await?;
        let reference = catalog::reference_at(&config, &catalog_now, revision)?;
        let catalog_next = follow::next_after_replay(&config, (revision, &catalog_now), latest);
        // The operations page's usage totals: read from the tables once, then kept by commits.
        match crate::status::table_totals(&tables).await {
            Ok(t) => ops.live.load_totals(t, table.version()),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the tables' totals for the operations \
                page; its billing side stays empty"),
        }
        broker.position_consumer(resume_from).await?;
        tracing::info!(committed_seq, resume_from, "pipeline started; replaying committed messages to rebuild state");
        let stats = RunStats { committed_seq, ..Default::default() };
        let mut periods = PeriodTable::open_or_create(&tables).await?;
        let closed = periods.closed().await?;
        let core = Stages::new(&config, reference, restored.dedup, restored.agg, restored.totals);
        let restored_snapshot = resume_from > 1;
        let mut pipeline = Pipeline {
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
            known_last: 0,
            dlq_read_at: None,
            gap_refetched_at: None,
            gap_confirmed: None,
            lease: None,
            stream_id: facts.created_unix_micros,
            catalog,
            revision,
            catalog_now,
            catalog_checked_at: None,
            catalog_refused: None,
            catalog_next,
            catalog_notices,
            catalog_noticed: false,
            restored_snapshot,
            next_delivery: partition.map(|_| 1),
            board,
            board_published_at: None,
        };
        if !pipeline.replaying {
            pipeline.enter_live().await?;
        }
        Ok(pipeline)
    }

    /// Runs until `shutdown` flips to true (or the stream is drained and idle, when asked),
    /// then commits what is pending, acks, and returns the counters.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, options: RunOptions) -> Result<RunStats> {
        let interval = Duration::from_millis(self.config.pipeline.commit_interval_ms.max(1));
        let mut turn = Turns::default();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.lease.as_ref().is_some_and(Lease::is_lost) {
                // A standby took over (this process was paused or cut off past the lease): stop
                // pulling and committing at once; what is in hand is the new owner's to commit.
                anyhow::bail!(
                    "another meterflow run took over this stream's writer lease; stopping without committing or \
                        acknowledging what is in hand"
                );
            }
            let fetched = match self.pull(&mut turn, &mut shutdown).await {
                Pulled::Messages(f) => f,
                Pulled::Retry => continue,
                Pulled::Stop => break,
            };
            let got_any = !fetched.is_empty();
            if got_any && self.catalog_changed() {
                // The messages in hand may have been published after the change: decide them
                // under it. What is pending is committed under the revision it was decided in.
                if self.pending_last.is_some() {
                    self.commit_with_retry(&mut shutdown).await?;
                }
                self.follow_catalog_now().await?;
            }
            if !got_any {
                self.on_empty_pull(&mut turn).await;
            }
            let process_started = Instant::now();
            let gap = self.process(fetched).await?;
            self.stats.process_secs += process_started.elapsed().as_secs_f64();
            if let Some((from, to)) = gap {
                turn.next_pull = None;
                self.refetch_from_gap(from, to).await;
            }
            let due = self.pending_since.is_some_and(|t| t.elapsed() >= interval);
            if self.core.pending_events() >= self.config.pipeline.max_batch_events || due {
                self.commit_with_retry(&mut shutdown).await?;
            }
            if let Some(limit) = options.exit_when_idle {
                if self.idle_past(&mut turn, got_any, limit, &mut shutdown).await? {
                    break;
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

    /// One pull: the one requested ahead if any, else a fresh one; a message larger than a pull
    /// may bring is read alone; a failed pull is retried with backoff (after checking that the
    /// consumer still exists).
    async fn pull(&mut self, turn: &mut Turns, shutdown: &mut watch::Receiver<bool>) -> Pulled {
        let batch = self.config.nats.fetch_batch;
        let pending = turn.next_pull.take();
        let pull = async {
            match pending {
                Some(pull) => pull.collect().await,
                None => self.broker.request(batch).await?.collect().await,
            }
        };
        let pull_started = Instant::now();
        let fetched = tokio::select! {
            r = pull => r,
            _ = shutdown.changed() => return Pulled::Stop,
        };
        match fetched {
            Ok(f) => {
                turn.retry_delay = Duration::from_millis(100);
                if !f.is_empty() {
                    self.stats.pull_wait_secs += pull_started.elapsed().as_secs_f64();
                    // More is likely waiting: ask for it now (a failed request is retried as a
                    // plain fetch on the next turn).
                    turn.next_pull = self.broker.request(batch).await.ok();
                }
                Pulled::Messages(f)
            }
            Err(IngestError::Oversized) => {
                // A message larger than fetch_max_bytes: read it alone, however large.
                let large = match self.broker.request_large().await {
                    Ok(pull) => pull.collect().await,
                    Err(e) => Err(e),
                };
                match large {
                    Ok(f) => Pulled::Messages(f),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading a message larger than fetch_max_bytes failed; retrying");
                        tokio::time::sleep(turn.retry_delay).await;
                        Pulled::Retry
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed; retrying");
                self.recreate_consumer_if_deleted().await;
                turn.consumer_checked = Instant::now();
                tokio::time::sleep(turn.retry_delay).await;
                turn.retry_delay = (turn.retry_delay * 2).min(Duration::from_secs(5));
                Pulled::Retry
            }
        }
    }

    /// An empty pull: progress metrics, a check that the consumer still exists, and (when the
    /// stream confirms it is drained) the stream clock moved to the wall clock.
    async fn on_empty_pull(&mut self, turn: &mut Turns) {
        if !self.replaying {
            self.publish_progress().await;
        }
        if turn.consumer_checked.elapsed() >= CONSUMER_CHECK_EVERY {
            // A pull from a deleted consumer can simply come back empty: check it exists.
            turn.next_pull = None;
            self.recreate_consumer_if_deleted().await;
            turn.consumer_checked = Instant::now();
        }
        if !self.replaying && self.caught_up().await {
            // Drained, as the stream itself confirms: the stream clock catches up with the wall
            // clock, so quiet meters' watermarks (and billing periods) still advance. An empty or
            // failed pull alone never moves it (a deleted consumer or a broker restart can leave
            // a backlog waiting behind empty pulls).
            self.core.advance_clock(chrono::Utc::now());
            if self.pending_last.is_none() {
                self.close_due_periods().await;
            }
        }
        if !self.replaying {
            self.publish_partition(false).await;
        }
        if let Err(e) = self.follow_catalog().await {
            tracing::warn!(error = %format!("{e:#}"), "following the catalog failed; trying again");
        }
    }

    /// `--exit-when-idle`: true once nothing arrived for `limit`, everything is committed and the
    /// stream holds nothing more.
    async fn idle_past(
        &mut self,
        turn: &mut Turns,
        got_any: bool,
        limit: Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool> {
        if got_any {
            turn.idle_since = None;
            return Ok(false);
        }
        if self.pending_last.is_some() {
            self.commit_with_retry(shutdown).await?;
        }
        let since = *turn.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < limit {
            return Ok(false);
        }
        let last = self.broker.last_sequence().await.unwrap_or(u64::MAX);
        let drained = self.committed_seq >= last || self.next_seq > last;
        if drained {
            tracing::info!(committed_seq = self.committed_seq, "stream drained and idle; stopping");
        }
        Ok(drained)
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
        let watermarks = self.core.watermarks();
        for (meter, w) in &watermarks {
            if let Some(w) = w {
                let age = (now - *w).num_milliseconds() as f64 / 1000.0;
                m.watermark_age.get_or_create(&label("meter", meter.clone())).set(age);
            }
        }
        self.ops.live.set_watermarks(watermarks);
        m.open_windows.set(i64::try_from(self.core.open_windows()).unwrap_or(i64::MAX));
        // At most one broker request a second, unless the commit went past the last sequence
        // known (the stream grew since: a lag of 0 would be stale).
        if self.committed_seq > self.known_last
            || self.lag_read_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.lag_read_at = Some(Instant::now());
            if let Ok(last) = self.broker.last_sequence().await {
                self.known_last = last;
                let lag = i64::try_from(last.saturating_sub(self.committed_seq)).unwrap_or(i64::MAX);
                match self.config.nats.partition {
                    // A partition's last sequence is not the stream's: per partition only.
                    Some(p) => {
                        m.partition_consumer_lag.get_or_create(&label("partition", p.to_string())).set(lag);
                    }
                    None => {
                        m.stream_last_sequence.set(i64::try_from(last).unwrap_or(i64::MAX));
                        m.consumer_lag.set(lag);
                    }
                }
            }
        }
        let every = Duration::from_secs(self.config.ops.refresh_s.max(1));
        if self.dlq_read_at.is_none_or(|t| t.elapsed() >= every) {
            self.dlq_read_at = Some(Instant::now());
            // One read gives the depth too: the DLQ's subjects are its reasons.
            if let Ok(queue) = self.broker.exception_queue().await {
                let depth: u64 = queue.iter().map(|q| q.messages).sum();
                m.dlq_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
                let now = chrono::Utc::now().timestamp();
                for reason in meterflow_schemas::RejectReason::ALL {
                    let q = queue.iter().find(|q| q.reason == reason.code());
                    let n = q.map_or(0, |q| i64::try_from(q.messages).unwrap_or(i64::MAX));
                    m.dlq_entries.get_or_create(&label("reason", reason.code())).set(n);
                    let age = q.and_then(|q| q.oldest_unix).map_or(0.0, |t| now.saturating_sub(t).max(0) as f64);
                    m.dlq_oldest_age.get_or_create(&label("reason", reason.code())).set(age);
                }
                self.ops.live.set_exception_queue(queue);
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
            "the pipeline's consumer no longer exists on the server (was it deleted?); re-creating it at the \
                next sequence the pipeline needs"
        );
        match self.broker.position_consumer(self.next_seq).await {
            Ok(()) => {
                self.reset_delivery();
                self.emit(ConsumerRecreated)
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
        if self.next_delivery.is_some() {
            // A partition's consumer: the re-created consumer delivers the partition's next
            // message at or after `from` first, whatever sequence it has.
            tracing::warn!(from_seq = from, "a pull lost deliveries; asking for them again");
        } else if self.gap_refetched_at == Some(from) {
            match self.confirm_absent(from, to).await {
                Ok(true) => self.gap_confirmed = Some(from),
                Ok(false) => tracing::warn!(from_seq = from, "skipped stream sequences exist; asking for them again"),
                Err(e) => {
                    tracing::warn!(error = %e, from_seq = from, "cannot ask the stream about skipped sequences; \
                        retrying")
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
                self.reset_delivery();
                self.emit(GapRefetched);
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
    async fn process(&mut self, fetched: Vec<Fetched>) -> Result<Option<(u64, u64)>> {
        let mut fresh = Vec::with_capacity(fetched.len());
        let mut gap = None;
        for msg in fetched {
            if let Some(expected) = self.next_delivery {
                if msg.delivery > expected {
                    // A delivery was lost on the way (or a redelivery of something in hand: the
                    // re-fetch is then merely redundant).
                    gap = Some((self.next_seq, msg.seq));
                    break;
                }
                self.next_delivery = Some(expected.max(msg.delivery.saturating_add(1)));
                if msg.seq < self.next_seq {
                    self.emit(Redelivered);
                    continue;
                }
                self.next_seq = msg.seq + 1;
                fresh.push(msg);
                continue;
            }
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
                self.emit(Redelivered);
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
            self.emit(MessagesReplayed { n: fresh.len() as u64 });
            self.process_part(fresh, false)?;
        }
        if self.replaying && self.next_seq > self.committed_seq {
            // The replay has rebuilt the state as of the committed sequence: the rows it would
            // flush are already in the table, so only the period totals take them in.
            self.core.finish_replay()?;
            self.replaying = false;
            self.enter_live().await?;
        }
        if !live.is_empty() {
            self.emit(MessagesProcessed { n: live.len() as u64 });
            self.pending_since.get_or_insert_with(Instant::now);
            self.first_live.get_or_insert_with(Instant::now);
            self.process_part(live, true)?;
        }
        Ok(gap)
    }

    /// After the consumer was (re)created: on a partition's consumer, deliveries count from 1.
    fn reset_delivery(&mut self) {
        if self.next_delivery.is_some() {
            self.next_delivery = Some(1);
        }
    }

    /// On a partitioned stream, publishes this partition's record on the board (at most every
    /// second unless `now`): only with nothing pending, so the watermark it shows is that of
    /// committed usage. Not fatal: logged, tried again.
    pub(super) async fn publish_partition(&mut self, now: bool) {
        let (Some(board), Some(partition)) = (&self.board, self.config.nats.partition) else { return };
        if self.pending_last.is_some()
            || (!now && self.board_published_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1)))
        {
            return;
        }
        self.board_published_at = Some(Instant::now());
        let record = PartitionRecord {
            partition,
            owner: self.lease.as_ref().map_or_else(String::new, |l| l.owner().to_string()),
            committed_seq: self.committed_seq,
            watermark_micros: self.core.min_watermark().map(|w| w.timestamp_micros()),
            open_periods: self.core.open_periods(&self.closed),
            at_unix: chrono::Utc::now().timestamp(),
        };
        if let Err(e) = board.publish(&record).await {
            tracing::warn!(error = %e, partition, "cannot publish the partition's record; trying again");
        }
    }

    /// Counts one internal event.
    fn emit(&mut self, event: impl InternalEvent) {
        event.emit(&mut self.stats, &self.ops);
    }

    /// Runs the core stages over messages that are all live or all replayed.
    fn process_part(&mut self, messages: Vec<Fetched>, live: bool) -> Result<()> {
        let inputs: Vec<Input<'_>> = messages.iter().map(Input::from).collect();
        self.core.process(&inputs, live, &mut Instruments::new(&mut self.stats, &self.ops))?;
        if live {
            self.pending_last = messages.into_iter().last();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found in review: any empty pull (a deleted consumer, a broker restart with a backlog
    // waiting) moved event time to the wall clock, closing periods and evicting windows early.
    #[test]
    fn the_wall_clock_moves_event_time_only_when_the_stream_confirms_nothing_is_waiting() {
        assert!(drained(Some(41), 42), "everything up to 41 seen");
        assert!(!drained(Some(42), 42), "a message waits");
        assert!(!drained(Some(900), 42), "a backlog behind empty pulls");
        assert!(!drained(None, 42), "the broker did not answer");
    }
}

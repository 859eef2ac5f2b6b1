//! The commit path, in the manner of operator hooks: prepare the outputs of a range, commit them
//! until they are in, then the after-commit steps (ack, evict, snapshot) and the periodic ones
//! (close due periods, compact).

use anyhow::Result;
use meterflow_faults::Point;
use meterflow_ingest::{Fetched, IngestError, RejectEnvelope};
use meterflow_sink::{CommitRange, RejectionRow, SinkError, SummaryRow};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

use super::Pipeline;
use crate::events::Committed;

/// What one commit writes, prepared from the stages before the first attempt.
pub(super) struct Outputs {
    through: u64,
    rows: Vec<SummaryRow>,
    rejects: Vec<RejectEnvelope>,
    rejection_rows: Vec<RejectionRow>,
    duplicate_rows: Vec<RejectionRow>,
}

/// True for the errors that mean another writer owns the stream now: stop, acknowledge nothing.
pub(super) fn is_fenced(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<SinkError>(), Some(SinkError::Fenced { .. }))
            || matches!(c.downcast_ref::<IngestError>(), Some(IngestError::LeaseLost(_)))
    })
}

impl Pipeline {
    /// Runs the commit protocol for everything pending: commit the outputs (retrying transient
    /// failures until they are in), then the after-commit steps (ack, evict, snapshot), then the
    /// periodic ones (close due periods, compact). On shutdown during retries it gives up
    /// without acking (nothing is lost: the messages are re-read from the committed sequence on
    /// the next start). A writer that finds itself fenced out stops at once, acking nothing.
    pub(super) async fn commit_with_retry(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let Some(last) = self.pending_last.take() else { return Ok(()) };
        let commit_started = Instant::now();
        let outputs = self.prepare_outputs(last.seq)?;
        let version = self.commit_outputs(&outputs, shutdown).await?;
        self.after_commit(&last, &outputs, version).await?;
        self.on_tick().await?;
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
        let range = CommitRange {
            after: self.committed_seq,
            through: out.through,
            stream: Some(self.stream_id),
            catalog: Some(self.revision),
        };
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
                    self.record_commit(started, out, committed).await;
                    return Ok(version);
                }
                Err(e) if is_fenced(&e) => {
                    return Err(e.context(format!(
                        "stopping without acknowledging stream sequence {}: another meterflow run owns this \
                            stream's progress",
                        out.through
                    )));
                }
                Err(e) if stop_requested => {
                    return Err(e.context(
                        "commit failed during shutdown; uncommitted messages will be re-read on the next start",
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), through = out.through, "commit failed; not \
                        acknowledging, retrying");
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
    async fn record_commit(&mut self, started: Instant, out: &Outputs, committed: meterflow_sink::Committed) {
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
        let added = if !out.rows.is_empty() && matches!(committed, meterflow_sink::Committed::Written(_)) {
            Some(self.table.files_added_in(version).await)
        } else {
            None
        };
        let since_previous = self.last_commit.map(|t| t.elapsed());
        self.last_commit = Some(Instant::now());
        self.emit(Committed {
            through: out.through,
            version,
            rows: &out.rows,
            rejections: &out.rejection_rows,
            took: started.elapsed(),
            since_previous,
            added,
            partition: self.config.nats.partition,
        });
    }

    /// After a commit: progress, ack, eviction of windows no event can reach, snapshot.
    async fn after_commit(&mut self, last: &Fetched, out: &Outputs, _version: u64) -> Result<()> {
        let through = out.through;
        self.committed_seq = through;
        self.stats.busy_secs = self.first_live.map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.pending_since = None;
        if let Err(e) = self.broker.ack_through(&last.message).await {
            // Harmless: the next start resumes from the committed sequence, not the ack floor.
            tracing::warn!(error = %e, through, "ack failed after a successful commit");
        }
        meterflow_faults::hit(Point::AfterAck);
        self.publish_progress().await;
        // Windows older than anything the backdating limit still admits can go.
        let evicted = self.core.evict_unreachable();
        if evicted > 0 {
            tracing::debug!(evicted, "dropped windows beyond the backdating limit");
        }
        self.commits_since_snapshot += 1;
        if self.commits_since_snapshot >= self.config.pipeline.snapshot_every_commits.max(1) {
            self.snapshot().await?;
        }
        self.publish_partition(true).await;
        Ok(())
    }

    /// The periodic steps after a commit: close due billing periods, compact every N commits,
    /// follow the catalog. None can stop metering: a failure is logged and tried again later.
    async fn on_tick(&mut self) -> Result<()> {
        self.close_due_periods().await;
        let every = self.config.storage.compact_every_commits;
        // On a partitioned stream the owner of partition 0 is the maintenance role.
        let maintains = matches!(self.config.nats.partition, None | Some(0));
        if maintains && every > 0 && self.stats.commits.is_multiple_of(every) {
            match self.table.compact().await {
                Ok((removed, added)) => tracing::info!(removed, added, "compacted usage_summaries"),
                // Not fatal: compaction only keeps reads and commits fast.
                Err(e) => tracing::warn!(error = %e, "compaction failed; will retry later"),
            }
        }
        self.follow_catalog().await
    }

    /// Closes every billing period that holds usage and whose end plus the grace period all
    /// meters' watermarks have passed; also picks up periods closed with `meterflow close`.
    /// Only called with nothing pending, so the sealed version holds everything processed. The
    /// sealed version is read from the table, never assumed; a close that fails is logged and
    /// tried again at the next commit or idle turn.
    pub(super) async fn close_due_periods(&mut self) {
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
        let grace = self.config.lateness.period_grace();
        let due = match (self.config.nats.partition, &self.board) {
            (None, _) => self.core.due_periods(&self.closed, grace),
            // The whole table's periods close where every partition's watermark says so, by the
            // owner of partition 0 alone.
            (Some(0), Some(board)) => {
                let records = board.records(self.config.nats.partitions).await?;
                crate::partitions::due_everywhere(&records, &self.closed, grace)
            }
            _ => Vec::new(),
        };
        let watermark = self.core.min_watermark();
        for p in due {
            let sealed = self.table.current_version().await?;
            let recorded = self.periods.close(&p.label(), p.start, p.end, "watermark", sealed).await?;
            tracing::info!(period = %p.label(), sealed = recorded.sealed_version, ?watermark, "closed billing period");
            self.closed.insert(p.label(), recorded);
        }
        Ok(())
    }

    pub(super) async fn snapshot(&mut self) -> Result<()> {
        self.save_snapshot(self.revision).await.map(|_saved| ())
    }

    /// Saves the state at the committed sequence, naming catalog revision `revision` for the
    /// messages after it; false (logged) when the store failed. Not fatal: the next start
    /// replays a little more, and a change of revision waits for a saved snapshot.
    pub(super) async fn save_snapshot(&mut self, revision: meterflow_catalog::Revision) -> Result<bool> {
        let bytes = self.core.snapshot_bytes(revision)?;
        match self.store.save(self.committed_seq, &bytes).await {
            Ok(()) => {
                self.commits_since_snapshot = 0;
                meterflow_faults::hit(Point::AfterSnapshot);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(error = %e, revision, "state snapshot failed; will retry at the next commit");
                Ok(false)
            }
        }
    }
}

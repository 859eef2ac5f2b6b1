//! Internal events: one type per fact the pipeline observes. Emitting one updates everything
//! that counts it, in one place: the run's statistics (printed at exit), the Prometheus metrics
//! and the operations page's running totals. Call sites say what happened
//! (`to.emit(EventAccepted)`), never which counters that touches.

use meterflow_schemas::RejectReason;
use meterflow_sink::{RejectionRow, RowKind, SummaryRow};
use std::time::Duration;

use crate::ops::metrics::label;
use crate::ops::Ops;
use crate::stats::RunStats;

/// A fact the pipeline counts.
pub trait InternalEvent {
    /// Counts it in the run's statistics and the operations instruments.
    fn emit(self, stats: &mut RunStats, ops: &Ops);
}

/// Where internal events are counted.
pub struct Instruments<'a> {
    stats: &'a mut RunStats,
    ops: &'a Ops,
}

impl<'a> Instruments<'a> {
    /// Counts into `stats` and `ops`.
    pub fn new(stats: &'a mut RunStats, ops: &'a Ops) -> Instruments<'a> {
        Instruments { stats, ops }
    }

    /// Counts one event.
    pub fn emit(&mut self, event: impl InternalEvent) {
        event.emit(self.stats, self.ops);
    }
}

/// Events decoded from a live message (accepted, rejected or duplicate later).
pub struct EventsReceived {
    /// How many.
    pub n: u64,
}

impl InternalEvent for EventsReceived {
    fn emit(self, stats: &mut RunStats, ops: &Ops) {
        stats.events_received += self.n;
        ops.metrics.events_received.inc_by(self.n);
    }
}

/// A live event (or message part) rejected, for the DLQ and `rejections`.
pub struct EventRejected {
    /// Why.
    pub reason: RejectReason,
}

impl InternalEvent for EventRejected {
    fn emit(self, stats: &mut RunStats, ops: &Ops) {
        *stats.rejected.entry(self.reason.code()).or_default() += 1;
        ops.metrics.events_rejected.get_or_create(&label("reason", self.reason.code())).inc();
    }
}

/// A live event dropped as a duplicate of one already counted.
pub struct DuplicateDropped;

impl InternalEvent for DuplicateDropped {
    fn emit(self, stats: &mut RunStats, ops: &Ops) {
        stats.duplicates += 1;
        ops.metrics.events_duplicate.inc();
    }
}

/// A live event accepted (its first sighting).
pub struct EventAccepted;

impl InternalEvent for EventAccepted {
    fn emit(self, stats: &mut RunStats, ops: &Ops) {
        stats.events_accepted += 1;
        ops.metrics.events_accepted.inc();
    }
}

/// Messages processed live.
pub struct MessagesProcessed {
    /// How many.
    pub n: u64,
}

impl InternalEvent for MessagesProcessed {
    fn emit(self, stats: &mut RunStats, _: &Ops) {
        stats.messages += self.n;
    }
}

/// Messages replayed to rebuild state after a start.
pub struct MessagesReplayed {
    /// How many.
    pub n: u64,
}

impl InternalEvent for MessagesReplayed {
    fn emit(self, stats: &mut RunStats, _: &Ops) {
        stats.replayed_messages += self.n;
    }
}

/// A message delivered again while already in hand or committed, and dropped.
pub struct Redelivered;

impl InternalEvent for Redelivered {
    fn emit(self, stats: &mut RunStats, ops: &Ops) {
        stats.redeliveries += 1;
        ops.metrics.redeliveries.inc();
    }
}

/// The durable consumer had vanished from the server and was re-created.
pub struct ConsumerRecreated;

impl InternalEvent for ConsumerRecreated {
    fn emit(self, stats: &mut RunStats, ops: &Ops) {
        stats.consumers_recreated += 1;
        ops.metrics.consumers_recreated.inc();
    }
}

/// A pull skipped sequences and they were asked for again.
pub struct GapRefetched;

impl InternalEvent for GapRefetched {
    fn emit(self, stats: &mut RunStats, _: &Ops) {
        stats.gaps_refetched += 1;
    }
}

/// A range's outputs are in the tables (written now, or found there from an earlier attempt).
pub struct Committed<'a> {
    /// The last stream sequence the commit covers.
    pub through: u64,
    /// The usage_summaries version holding it.
    pub version: u64,
    /// The summary rows committed.
    pub rows: &'a [SummaryRow],
    /// The rejections committed.
    pub rejections: &'a [RejectionRow],
    /// How long the commit took, retries included.
    pub took: Duration,
    /// Time since the previous commit, if any.
    pub since_previous: Option<Duration>,
    /// Parquet files and bytes the commit added (none when it was already there).
    pub added: Option<(u64, u64)>,
    /// The partition committed, on a partitioned stream.
    pub partition: Option<u32>,
}

impl InternalEvent for Committed<'_> {
    fn emit(self, stats: &mut RunStats, ops: &Ops) {
        stats.commits += 1;
        stats.rows_written += self.rows.len() as u64;
        stats.committed_seq = self.through;
        let m = &ops.metrics;
        m.commit_duration.observe(self.took.as_secs_f64());
        if let Some(since) = self.since_previous {
            m.commit_interval.observe(since.as_secs_f64());
        }
        m.commits.inc();
        m.summary_rows.inc_by(self.rows.len() as u64);
        if let Some((files, bytes)) = self.added {
            m.parquet_files.inc_by(files);
            m.parquet_bytes.inc_by(bytes);
        }
        let through = i64::try_from(self.through).unwrap_or(i64::MAX);
        match self.partition {
            Some(p) => {
                m.partition_committed_sequence.get_or_create(&label("partition", p.to_string())).set(through);
            }
            None => {
                m.committed_sequence.set(through);
            }
        }
        for r in self.rows.iter().filter(|r| matches!(r.row_kind, RowKind::Late | RowKind::Adjustment)) {
            m.events_late.get_or_create(&label("meter", r.meter.clone())).inc_by(r.event_count);
        }
        ops.live.add_committed(self.version, self.rows, self.rejections);
    }
}

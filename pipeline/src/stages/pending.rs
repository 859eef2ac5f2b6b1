//! What the core stages hand to the next commit besides rows: rejects (for the DLQ and the
//! `rejections` table), dropped duplicates (for the `duplicates` table), and the count of
//! events accepted since the last commit. Replayed messages add nothing here.

use bytes::Bytes;
use meterflow_ingest::RejectEnvelope;
use meterflow_schemas::{RejectReason, UsageEvent};
use meterflow_sink::RejectionRow;

use super::Input;
use crate::ops::metrics::{label, Metrics};
use crate::stats::RunStats;

/// Outputs waiting for the next commit.
#[derive(Debug, Default)]
pub(super) struct Pending {
    rejects: Vec<RejectEnvelope>,
    duplicates: Vec<RejectionRow>,
    /// Events accepted since the last commit.
    pub(super) events: usize,
}

/// Where one call of the core stages counts what it decides: nothing for replayed messages.
pub(super) struct Counting<'a> {
    pub(super) live: bool,
    pub(super) stats: &'a mut RunStats,
    pub(super) metrics: &'a Metrics,
}

impl Counting<'_> {
    /// Counts the events of a decoded message.
    pub(super) fn received(&mut self, n: u64) {
        if self.live {
            self.stats.events_received += n;
            self.metrics.events_received.inc_by(n);
        }
    }
}

impl Pending {
    /// Records a reject of (part of) `msg`: counted, and kept for the DLQ and `rejections`.
    pub(super) fn reject(
        &mut self,
        count: &mut Counting<'_>,
        msg: &Input<'_>,
        (reason, detail): (RejectReason, String),
        index: Option<usize>,
        original: Bytes,
    ) {
        if !count.live {
            return;
        }
        *count.stats.rejected.entry(reason.code()).or_default() += 1;
        count.metrics.events_rejected.get_or_create(&label("reason", reason.code())).inc();
        self.rejects.push(RejectEnvelope {
            seq: msg.seq,
            subject: msg.subject.to_string(),
            index,
            reason,
            detail,
            original,
        });
    }

    /// Records a dropped duplicate of `msg`.
    pub(super) fn duplicate(&mut self, count: &mut Counting<'_>, msg: &Input<'_>, event: &UsageEvent) {
        if !count.live {
            return;
        }
        count.stats.duplicates += 1;
        count.metrics.events_duplicate.inc();
        tracing::debug!(seq = msg.seq, source = %event.source, id = %event.id, "duplicate dropped");
        self.duplicates.push(RejectionRow {
            stream_seq: msg.seq,
            event_index: event.index.map(|i| i as u64),
            reason: "duplicate".into(),
            detail: format!("source={} id={}", event.source, event.id),
            subject: msg.subject.to_string(),
            size: event.span.len() as u64,
        });
    }

    /// Records an accepted event.
    pub(super) fn accepted(&mut self, count: &mut Counting<'_>) {
        if count.live {
            count.stats.events_accepted += 1;
            count.metrics.events_accepted.inc();
            self.events += 1;
        }
    }

    /// Takes everything for a commit.
    pub(super) fn take(&mut self) -> (Vec<RejectEnvelope>, Vec<RejectionRow>) {
        self.events = 0;
        (std::mem::take(&mut self.rejects), std::mem::take(&mut self.duplicates))
    }
}

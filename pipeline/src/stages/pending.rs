//! What the core stages hand to the next commit besides rows: rejects (for the DLQ and the
//! `rejections` table), dropped duplicates (for the `duplicates` table), and the count of
//! events accepted since the last commit. Replayed messages add nothing here.

use bytes::Bytes;
use meterflow_ingest::RejectEnvelope;
use meterflow_schemas::{RejectReason, UsageEvent};
use meterflow_sink::RejectionRow;

use super::Input;
use crate::events::{DuplicateDropped, EventAccepted, EventRejected, EventsReceived, Instruments};

/// Outputs waiting for the next commit.
#[derive(Debug, Default)]
pub(super) struct Pending {
    rejects: Vec<RejectEnvelope>,
    duplicates: Vec<RejectionRow>,
    /// Events accepted since the last commit.
    pub(super) events: usize,
}

/// Where one call of the core stages counts what it decides: nothing for replayed messages.
pub(super) struct Counting<'a, 'b> {
    pub(super) live: bool,
    pub(super) to: &'a mut Instruments<'b>,
}

impl Counting<'_, '_> {
    /// Counts the events of a decoded message.
    pub(super) fn received(&mut self, n: u64) {
        if self.live {
            self.to.emit(EventsReceived { n });
        }
    }
}

impl Pending {
    /// Records a reject of (part of) `msg`: counted, and kept for the DLQ and `rejections`.
    pub(super) fn reject(
        &mut self,
        count: &mut Counting<'_, '_>,
        msg: &Input<'_>,
        (reason, detail): (RejectReason, String),
        index: Option<usize>,
        original: Bytes,
    ) {
        if !count.live {
            return;
        }
        count.to.emit(EventRejected { reason });
        self.rejects.push(RejectEnvelope {
            seq: msg.seq,
            subject: msg.subject.to_string(),
            arrival_unix: msg.published_unix,
            index,
            reason,
            detail,
            original,
        });
    }

    /// Records a dropped duplicate of `msg`.
    pub(super) fn duplicate(&mut self, count: &mut Counting<'_, '_>, msg: &Input<'_>, event: &UsageEvent) {
        if !count.live {
            return;
        }
        count.to.emit(DuplicateDropped);
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
    pub(super) fn accepted(&mut self, count: &mut Counting<'_, '_>) {
        if count.live {
            count.to.emit(EventAccepted);
            self.events += 1;
        }
    }

    /// Takes everything for a commit.
    pub(super) fn take(&mut self) -> (Vec<RejectEnvelope>, Vec<RejectionRow>) {
        self.events = 0;
        (std::mem::take(&mut self.rejects), std::mem::take(&mut self.duplicates))
    }
}

//! The DLQ as an exception queue: reading its entries, and redriving them into the usage stream
//! once the catalog has been fixed.
//!
//! A redriven entry is published on `<redrive_subject_prefix>.<original subject>` (on a
//! partitioned stream `<redrive_subject_prefix>.<customer>.<original subject>`, see
//! [`crate::partition`]; a subject of the usage stream that only operators may publish to) with the original arrival time in the
//! `Meterflow-Arrival` header. The pipeline reads such a message as if it had arrived on the
//! original subject at the original time: time bounds and the dedup day are those of the first
//! arrival, so the outcome does not depend on how long the fix took, and a second redrive of
//! the same event is a duplicate. The entry is deleted from the DLQ once the usage stream has
//! stored its redrive; if the event fails again, the pipeline puts it back with its new reason.

use async_nats::jetstream::{consumer::pull, consumer::DeliverPolicy};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use meterflow_schemas::RejectReason;
use std::time::Duration;

use crate::broker::Broker;
use crate::{IngestError, Result};

/// Header of a DLQ entry and of a redriven message: when the event first arrived (Unix seconds).
pub const ARRIVAL_HEADER: &str = "Meterflow-Arrival";

/// One entry of the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DlqEntry {
    /// Its sequence in the DLQ stream.
    pub dlq_seq: u64,
    /// When it was put in the DLQ.
    pub queued: DateTime<Utc>,
    /// The reason code (as written; a reason of a newer version reads as text).
    pub reason: String,
    /// Why, in words.
    pub detail: String,
    /// The usage stream and sequence of the message it came from.
    pub stream: String,
    /// The usage stream sequence of the message it came from.
    pub stream_seq: u64,
    /// Position in a batch message, if any.
    pub event_index: Option<usize>,
    /// The NATS subject the message arrived on.
    pub subject: String,
    /// When the message first arrived (Unix seconds), when recorded.
    pub arrival_unix: Option<i64>,
    /// The original bytes: the event, or the whole message for a message-level reject.
    pub original: Bytes,
}

impl DlqEntry {
    /// Reads an entry from a DLQ message's sequence, time, headers and payload.
    pub fn from_message(dlq_seq: u64, queued: DateTime<Utc>, headers: Option<&HeaderMap>, payload: Bytes) -> DlqEntry {
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str().to_string());
        DlqEntry {
            dlq_seq,
            queued,
            reason: header("Meterflow-Reason").unwrap_or_default(),
            detail: header("Meterflow-Detail").unwrap_or_default(),
            stream: header("Meterflow-Stream").unwrap_or_default(),
            stream_seq: header("Meterflow-Stream-Seq").and_then(|s| s.parse().ok()).unwrap_or(0),
            event_index: header("Meterflow-Event-Index").and_then(|s| s.parse().ok()),
            subject: header("Meterflow-Subject").unwrap_or_default(),
            arrival_unix: header(ARRIVAL_HEADER).and_then(|s| s.parse().ok()),
            original: payload,
        }
    }

    /// The usage subject the event names (its CloudEvents `subject`), when the bytes are an
    /// event that has one.
    pub fn usage_subject(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Subject {
            subject: Option<String>,
        }
        serde_json::from_slice::<Subject>(&self.original).ok().and_then(|s| s.subject)
    }

    /// Whether a catalog change can cure its reason (the exception queue proper); the other
    /// reasons (malformed bytes and the like) need the publisher to send a corrected event.
    pub fn is_business(&self) -> bool {
        RejectReason::ALL.iter().any(|r| r.code() == self.reason && r.is_business())
    }
}

/// The DLQ entries of one reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueuedReason {
    /// The reason code.
    pub reason: String,
    /// Entries with it.
    pub messages: u64,
    /// When the oldest of them was queued (Unix seconds).
    pub oldest_unix: Option<i64>,
    /// Whether a catalog fix cures it (`meterflow dlq replay` takes it by default).
    pub redrivable: bool,
}

/// Which entries a redrive takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only this reason.
    pub reason: Option<String>,
    /// Only events naming this usage subject.
    pub subject: Option<String>,
    /// Only entries queued at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Also technical rejects (by default only reasons a catalog fix can cure).
    pub technical: bool,
}

impl Selection {
    /// Whether `entry` is selected.
    pub fn takes(&self, entry: &DlqEntry) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == entry.reason)
            && self.since.is_none_or(|t| entry.queued >= t)
            && (self.technical || entry.is_business())
            && self.subject.as_ref().is_none_or(|s| entry.usage_subject().as_ref() == Some(s))
    }
}

impl Broker {
    /// Every entry of the DLQ, oldest first (an ordered consumer reads them; nothing is acked
    /// or removed).
    pub async fn dlq_entries(&self) -> Result<Vec<DlqEntry>> {
        let err = |op: &'static str| move |e: String| IngestError::JetStream { operation: op, message: e };
        let c = self.config();
        let mut stream =
            self.jetstream().get_stream(&c.dlq_stream).await.map_err(|e| err("get DLQ stream")(e.to_string()))?;
        let state = stream.info().await.map_err(|e| err("DLQ stream info")(e.to_string()))?.state.clone();
        if state.messages == 0 {
            return Ok(Vec::new());
        }
        let consumer = stream
            .create_consumer(pull::OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
            .await
            .map_err(|e| err("read the DLQ")(e.to_string()))?;
        let mut messages = consumer.messages().await.map_err(|e| err("read the DLQ")(e.to_string()))?;
        let mut out = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let message = match next {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(e))) => return Err(err("read the DLQ")(e.to_string())),
                Ok(None) => break,
                Err(_) => return Err(err("read the DLQ")("no message within 10 s".into())),
            };
            let info = message.info().map_err(|e| err("read the DLQ")(e.to_string()))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let queued = DateTime::from_timestamp(info.published.unix_timestamp(), 0).unwrap_or_default();
            out.push(DlqEntry::from_message(seq, queued, message.headers.as_ref(), message.payload.clone()));
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// The DLQ by reason: how many entries and the oldest (one request for the counts, one
    /// per reason for its oldest entry).
    pub async fn exception_queue(&self) -> Result<Vec<QueuedReason>> {
        let c = self.config();
        let err = |e: String| IngestError::JetStream { operation: "read the DLQ by reason", message: e };
        let stream = self.jetstream().get_stream(&c.dlq_stream).await.map_err(|e| err(e.to_string()))?;
        let prefix = format!("{}.", c.dlq_subject_prefix);
        let mut subjects = stream.info_with_subjects(format!("{prefix}>")).await.map_err(|e| err(e.to_string()))?;
        let mut counts = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, n) = s.map_err(|e| err(e.to_string()))?;
            counts.push((subject, n as u64));
        }
        counts.sort();
        let mut out = Vec::with_capacity(counts.len());
        for (subject, messages) in counts {
            let oldest =
                stream.get_first_raw_message_by_subject(&subject, 1).await.ok().map(|m| m.time.unix_timestamp());
            let reason = subject.strip_prefix(&prefix).unwrap_or(&subject).to_string();
            let redrivable = RejectReason::parse(&reason).is_some_and(RejectReason::is_business);
            out.push(QueuedReason { reason, messages, oldest_unix: oldest, redrivable });
        }
        Ok(out)
    }

    /// The entry at `dlq_seq`.
    pub async fn dlq_entry(&self, dlq_seq: u64) -> Result<DlqEntry> {
        let c = self.config();
        let stream = self
            .jetstream()
            .get_stream(&c.dlq_stream)
            .await
            .map_err(|e| IngestError::JetStream { operation: "get DLQ stream", message: e.to_string() })?;
        let m = stream.get_raw_message(dlq_seq).await.map_err(|e| IngestError::JetStream {
            operation: "read a DLQ entry",
            message: format!("DLQ sequence {dlq_seq}: {e}"),
        })?;
        let queued = DateTime::from_timestamp(m.time.unix_timestamp(), 0).unwrap_or_default();
        Ok(DlqEntry::from_message(dlq_seq, queued, Some(&m.headers), m.payload))
    }

    /// When the usage stream's message `seq` arrived (Unix seconds), if it is still there.
    pub async fn arrival_of(&self, seq: u64) -> Result<Option<i64>> {
        let stream = self
            .jetstream()
            .get_stream(&self.config().stream)
            .await
            .map_err(|e| IngestError::JetStream { operation: "get stream", message: e.to_string() })?;
        Ok(stream.get_raw_message(seq).await.ok().map(|m| m.time.unix_timestamp()))
    }

    /// Adds the redrive subjects to a usage stream created before they existed.
    pub async fn ensure_redrive_subject(&self) -> Result<()> {
        let c = self.config();
        let subject = c.redrive_stream_subject();
        let err = |e: String| IngestError::JetStream { operation: "add the redrive subject", message: e };
        let mut stream = self.jetstream().get_stream(&c.stream).await.map_err(|e| err(e.to_string()))?;
        let mut config = stream.info().await.map_err(|e| err(e.to_string()))?.config.clone();
        if !config.subjects.contains(&subject) {
            config.subjects.push(subject);
            self.jetstream().update_stream(config).await.map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    }

    /// Redrives `entry`: publishes its original bytes on the redrive subject of its original
    /// subject, arrived at `arrival_unix`, waits until the usage stream stored it, then deletes
    /// the entry from the DLQ. Returns the new usage stream sequence. Safe to repeat: the
    /// message id makes the broker drop a quick second redrive, and the pipeline's dedup a
    /// later one.
    pub async fn redrive(&self, entry: &DlqEntry, arrival_unix: i64) -> Result<u64> {
        let c = self.config();
        let mut headers = HeaderMap::new();
        let index = entry.event_index.map_or_else(|| "m".to_string(), |i| i.to_string());
        let id = format!("redrive:{}:{}:{index}", entry.stream, entry.stream_seq);
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert(ARRIVAL_HEADER, arrival_unix.to_string().as_str());
        headers.insert("Meterflow-Redrive-Of", format!("{}:{}", c.dlq_stream, entry.dlq_seq).as_str());
        let subject = crate::partition::redrive_subject(&c.redrive_subject_prefix, &entry.subject, c.partitions)
            .ok_or_else(|| IngestError::StreamConfig {
                stream: c.stream.clone(),
                message: format!(
                    "entry {} was published on {:?}, which has no customer token: a partitioned stream takes usage \
                     on usage.<customer>.<type> only; publish the event again on its customer's subject",
                    entry.dlq_seq, entry.subject
                ),
            })?;
        let err = |op: &'static str| move |e: String| IngestError::JetStream { operation: op, message: e };
        let ack = self
            .jetstream()
            .publish_with_headers(subject, headers, entry.original.clone())
            .await
            .map_err(|e| err("redrive publish")(e.to_string()))?
            .await
            .map_err(|e| err("redrive publish ack")(e.to_string()))?;
        let dlq = self.jetstream().get_stream(&c.dlq_stream).await.map_err(|e| err("get DLQ stream")(e.to_string()))?;
        dlq.delete_message(entry.dlq_seq).await.map_err(|e| err("remove a redriven DLQ entry")(e.to_string()))?;
        Ok(ack.sequence)
    }
}

/// The subject and arrival time the pipeline reads a message as: a redriven message (on
/// `<prefix>.<subject>`) as arrived on its original subject at its recorded arrival (never
/// later than its own publication); any other as it came.
pub fn as_arrived(subject: &str, published_unix: i64, prefix: &str, headers: Option<&HeaderMap>) -> (String, i64) {
    let redriven = subject.strip_prefix(prefix).and_then(|rest| rest.strip_prefix('.'));
    match redriven {
        Some(original) => {
            let arrival = headers
                .and_then(|h| h.get(ARRIVAL_HEADER))
                .and_then(|v| v.as_str().parse::<i64>().ok())
                .filter(|t| *t <= published_unix)
                .unwrap_or(published_unix);
            (original.to_string(), arrival)
        }
        None => (subject.to_string(), published_unix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(reason: &str, original: &str) -> DlqEntry {
        let mut h = HeaderMap::new();
        h.insert("Meterflow-Reason", reason);
        h.insert("Meterflow-Stream", "USAGE");
        h.insert("Meterflow-Stream-Seq", "7");
        h.insert("Meterflow-Subject", "usage.api");
        h.insert("Meterflow-Event-Index", "2");
        h.insert(ARRIVAL_HEADER, "1795000000");
        DlqEntry::from_message(3, DateTime::UNIX_EPOCH, Some(&h), Bytes::from(original.to_string()))
    }

    #[test]
    fn a_dlq_entry_reads_its_headers_and_the_subject_its_event_names() {
        let e = entry("unknown_subject", r#"{"id":"1","subject":"newco"}"#);
        assert_eq!((e.stream_seq, e.event_index, e.arrival_unix), (7, Some(2), Some(1_795_000_000)));
        assert_eq!(e.usage_subject().as_deref(), Some("newco"));
        assert!(e.is_business());
        assert!(!entry("invalid_json", "{").is_business());
        assert_eq!(entry("invalid_json", "{").usage_subject(), None);
    }

    #[test]
    fn a_selection_takes_business_rejects_by_reason_subject_and_age_and_technical_ones_only_when_asked() {
        let e = entry("unknown_subject", r#"{"subject":"newco"}"#);
        assert!(Selection::default().takes(&e));
        assert!(Selection { reason: Some("unknown_subject".into()), ..Default::default() }.takes(&e));
        assert!(!Selection { reason: Some("no_subscription".into()), ..Default::default() }.takes(&e));
        assert!(!Selection { subject: Some("acme".into()), ..Default::default() }.takes(&e));
        assert!(!Selection { since: DateTime::from_timestamp(1, 0), ..Default::default() }.takes(&e));
        let bad = entry("invalid_json", "{");
        assert!(!Selection::default().takes(&bad));
        assert!(Selection { technical: true, ..Default::default() }.takes(&bad));
    }

    #[test]
    fn a_redriven_message_reads_as_arrived_on_its_original_subject_at_its_first_arrival() {
        let mut h = HeaderMap::new();
        h.insert(ARRIVAL_HEADER, "100");
        assert_eq!(as_arrived("usage_redrive.usage.api", 500, "usage_redrive", Some(&h)), ("usage.api".into(), 100));
        assert_eq!(as_arrived("usage.api", 500, "usage_redrive", Some(&h)), ("usage.api".into(), 500), "only redrives");
        let mut late = HeaderMap::new();
        late.insert(ARRIVAL_HEADER, "900");
        assert_eq!(as_arrived("usage_redrive.x", 500, "usage_redrive", Some(&late)).1, 500, "never after publication");
        assert_eq!(as_arrived("usage_redrive.x", 500, "usage_redrive", None).1, 500);
    }
}

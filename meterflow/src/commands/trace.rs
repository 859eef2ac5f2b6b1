//! `meterflow trace`: one event's lineage, from the message that carried it to the ERP documents
//! that bill it. The correlation id is the stream sequence (plus the position in a batch
//! message), which publishers get back in their publish acknowledgement; `--source`/`--id`
//! finds it by scanning the stream instead.
//!
//! ```text
//!  USAGE stream seq N ─► rejections (reason)      │ duplicates (first sighting counted)
//!        │ accepted
//!        ▼
//!  usage_summaries rows: customer, meter, window, first_seq <= N <= last_seq, commit covering N
//!        ▼
//!  invoice_lines with first_seq <= N <= last_seq ─► invoices ─► postings (ERP documents)
//! ```

use anyhow::{bail, Context, Result};
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use futures::StreamExt;
use meterflow_ingest::Broker;
use meterflow_schemas::{decode_message, UsageEvent};
use meterflow_sink::sql::{cells, ReadOnlySql, ScalarValue};
use serde::Serialize;
use std::time::Duration;

use meterflow_pipeline::config::{Config, Reference};

/// What to trace.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// Stream sequence of the message.
    pub seq: Option<u64>,
    /// Position in a batch message.
    pub index: Option<usize>,
    /// CloudEvents source (with `id`, found by scanning the stream).
    pub source: Option<String>,
    /// CloudEvents id.
    pub id: Option<String>,
}

/// One traced event.
#[derive(Debug, Clone, Serialize)]
pub struct EventTrace {
    /// Stream sequence of its message.
    pub seq: u64,
    /// Position in a batch message.
    pub index: Option<usize>,
    /// CloudEvents source, id, type, subject and time (when the event decoded).
    pub source: Option<String>,
    /// CloudEvents id.
    pub id: Option<String>,
    /// CloudEvents type.
    pub event_type: Option<String>,
    /// CloudEvents subject.
    pub subject: Option<String>,
    /// Event time.
    pub time: Option<String>,
    /// `counted`, `rejected`, `duplicate` or `not committed yet`.
    pub outcome: String,
    /// Reject reason or duplicate detail.
    pub detail: Option<String>,
    /// The summary rows that count it (column = value).
    pub summary_rows: Vec<Vec<(String, String)>>,
    /// The invoice lines that bill it.
    pub invoice_lines: Vec<Vec<(String, String)>>,
    /// The ERP postings of those invoices.
    pub postings: Vec<Vec<(String, String)>>,
}

fn text(s: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(s.to_string()))
}

fn int(v: u64) -> ScalarValue {
    ScalarValue::Int64(Some(i64::try_from(v).unwrap_or(i64::MAX)))
}

/// Runs `query` with its placeholders bound to `params`; each row as (column, display text).
async fn rows(sql: &ReadOnlySql, query: &str, params: &[ScalarValue]) -> Result<Vec<Vec<(String, String)>>> {
    let mut out = Vec::new();
    let result = sql.rows(query, params).await.with_context(|| format!("in: {query}"))?;
    for b in result.batches() {
        let names: Vec<String> = b.schema().fields().iter().map(|f| f.name().clone()).collect();
        for r in cells(b)? {
            out.push(names.iter().cloned().zip(r.into_iter().map(Option::unwrap_or_default)).collect());
        }
    }
    Ok(out)
}

fn has(sql: &ReadOnlySql, table: &str) -> bool {
    sql.tables.iter().any(|t| t == table)
}

/// Finds the message of `(source, id)` by scanning the stream from the start.
async fn find_by_id(broker: &Broker, source: &str, id: &str) -> Result<Option<(u64, usize)>> {
    let (_, stream_name) = broker.consumer_name();
    let stream = broker.jetstream().get_stream(stream_name).await.context("cannot read the usage stream")?;
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            description: Some("meterflow trace: a read-only scan".into()),
            ..Default::default()
        })
        .await
        .context("cannot create a scanning consumer")?;
    let last = broker.last_sequence().await?;
    loop {
        let mut batch = consumer.fetch().max_messages(1000).expires(Duration::from_secs(2)).messages().await?;
        let mut seen = 0;
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
            let seq = m.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
            let decoded = decode_message(&m.payload);
            if let Some(e) = decoded.events.iter().find(|e| e.source == source && e.id == id) {
                return Ok(Some((seq, e.index.unwrap_or(0))));
            }
            if seq >= last {
                return Ok(None);
            }
        }
        if seen == 0 {
            return Ok(None);
        }
    }
}

/// Traces the event(s) the query names.
pub async fn trace(config: &Config, q: &TraceQuery) -> Result<Vec<EventTrace>> {
    let broker = Broker::connect(config.nats.clone()).await?;
    let (seq, index) = match (q.seq, &q.source, &q.id) {
        (Some(seq), _, _) => (seq, q.index),
        (None, Some(source), Some(id)) => match find_by_id(&broker, source, id).await? {
            Some((seq, i)) => (seq, Some(i)),
            None => bail!("no event with source {source:?} and id {id:?} in the usage stream"),
        },
        _ => bail!("name the event: --seq N [--index I], or --source S --id I"),
    };
    let (_, stream_name) = broker.consumer_name();
    let stream = broker.jetstream().get_stream(stream_name).await.context("cannot read the usage stream")?;
    let message = stream
        .get_raw_message(seq)
        .await
        .with_context(|| format!("stream sequence {seq} is not in the usage stream (never published, or expired)"))?;
    let decoded = decode_message(&message.payload);
    let (_, reference) = meterflow_pipeline::catalog::current_reference(config).await?;
    let sql = ReadOnlySql::open(&config.tables()?).await?;
    let committed = meterflow_sink::SummaryTable::open_or_create(&config.tables()?).await?.committed_seq().await?;

    let mut out = Vec::new();
    let wanted = |i: Option<usize>| index.is_none() || i == index || (i.is_none() && index == Some(0));
    for r in decoded.rejects.iter().filter(|r| wanted(r.index)) {
        out.push(EventTrace {
            seq,
            index: r.index,
            source: None,
            id: None,
            event_type: None,
            subject: None,
            time: None,
            outcome: "rejected".into(),
            detail: Some(format!("{}: {}", r.reason.code(), r.detail)),
            summary_rows: vec![],
            invoice_lines: vec![],
            postings: vec![],
        });
    }
    for e in decoded.events.iter().filter(|e| wanted(e.index)) {
        out.push(trace_event(&sql, &reference, seq, committed, e).await?);
    }
    if out.is_empty() {
        bail!("message {seq} holds no event at index {index:?}");
    }
    Ok(out)
}

async fn trace_event(
    sql: &ReadOnlySql,
    reference: &Reference,
    seq: u64,
    committed: u64,
    e: &UsageEvent,
) -> Result<EventTrace> {
    let mut t = EventTrace {
        seq,
        index: e.index,
        source: Some(e.source.clone()),
        id: Some(e.id.clone()),
        event_type: Some(e.event_type.clone()),
        subject: Some(e.subject.clone()),
        time: Some(e.time.to_rfc3339()),
        outcome: String::new(),
        detail: None,
        summary_rows: vec![],
        invoice_lines: vec![],
        postings: vec![],
    };
    if seq > committed {
        t.outcome = "not committed yet".into();
        return Ok(t);
    }
    if let Some((outcome, detail)) = rejected_or_duplicate(sql, seq, e.index).await? {
        t.outcome = outcome.into();
        t.detail = Some(detail);
        return Ok(t);
    }
    let Some(customer) = reference.directory.lookup(&e.subject) else {
        t.outcome = "rejected".into();
        t.detail = Some("unknown_subject (no rejection row found: the reference data may have changed)".into());
        return Ok(t);
    };
    t.summary_rows = summary_rows(sql, &customer.id, seq, e).await?;
    t.outcome =
        if t.summary_rows.is_empty() { "not counted (no summary row covers it)".into() } else { "counted".into() };
    if !has(sql, "invoice_lines") {
        return Ok(t);
    }
    t.invoice_lines = invoice_lines(sql, &t.summary_rows, seq).await?;
    if has(sql, "postings") {
        t.postings = postings(sql, &t.invoice_lines).await?;
    }
    Ok(t)
}

/// The outcome and detail of an event found in `rejections` or `duplicates`.
async fn rejected_or_duplicate(
    sql: &ReadOnlySql,
    seq: u64,
    index: Option<usize>,
) -> Result<Option<(&'static str, String)>> {
    let index_cond = match index {
        Some(i) => format!("event_index = {i}"),
        None => "event_index IS NULL".into(),
    };
    for (table, outcome) in [("rejections", "rejected"), ("duplicates", "duplicate")] {
        if !has(sql, table) {
            continue;
        }
        let q = format!("SELECT reason, detail FROM {table} WHERE stream_seq = $1 AND {index_cond}");
        if let Some(r) = rows(sql, &q, &[int(seq)]).await?.into_iter().next() {
            return Ok(Some((outcome, r.into_iter().map(|(_, v)| v).collect::<Vec<_>>().join(": "))));
        }
    }
    Ok(None)
}

/// The summary rows that counted the event: its customer's rows whose windows and sequence
/// ranges hold it, from the first commit at or after its sequence.
async fn summary_rows(
    sql: &ReadOnlySql,
    customer: &str,
    seq: u64,
    e: &UsageEvent,
) -> Result<Vec<Vec<(String, String)>>> {
    let time = ScalarValue::TimestampMicrosecond(Some(e.time.timestamp_micros()), Some("UTC".into()));
    rows(sql, SUMMARY_ROWS_SQL, &[text(customer), int(seq), time]).await
}

/// The summary rows of customer `$1` that counted the event at stream sequence `$2` with event
/// time `$3`: rows whose window holds the time and whose sequence range holds the sequence,
/// from the first commit at or after it.
pub const SUMMARY_ROWS_SQL: &str = "SELECT customer_id, meter, dimensions, \
CAST(window_start AS VARCHAR) AS window_start, row_kind, billing_period, plan_version, \
CAST(quantity AS VARCHAR) AS quantity, CAST(amount AS VARCHAR) AS amount, currency, event_count, first_seq, \
last_seq, revision AS committed_through \
FROM usage_summaries WHERE customer_id = $1 AND row_kind IN ('usage', 'late', 'adjustment') \
AND first_seq <= $2 AND last_seq >= $2 AND window_start <= $3 AND window_end > $3 \
AND revision = (SELECT MIN(revision) FROM usage_summaries WHERE revision >= $2 AND row_kind <> 'rerate') \
ORDER BY meter";

/// The invoice lines of customer `$1`, meter `$2`, plan version `$3` and billing period `$4`
/// whose sequence ranges hold stream sequence `$5`.
pub const INVOICE_LINES_SQL: &str = "SELECT invoice_id, revision, line_no, line_kind, period, description, \
CAST(amount AS VARCHAR) AS amount, currency FROM invoice_lines \
WHERE customer_id = $1 AND meter = $2 AND plan_version = $3 AND (source_period = $4 OR period = $4) \
AND first_seq <= $5 AND last_seq >= $5 ORDER BY invoice_id, revision, line_no";

/// The ERP postings of invoice `$1`, revision `$2`.
pub const POSTINGS_SQL: &str = "SELECT invoice_id, revision, document_type, idempotency_key, target, status, \
attempts, CAST(recorded_at AS VARCHAR) AS recorded_at FROM postings WHERE invoice_id = $1 AND revision = $2 \
ORDER BY recorded_at";

/// The invoice lines that billed those summary rows.
async fn invoice_lines(
    sql: &ReadOnlySql,
    summary_rows: &[Vec<(String, String)>],
    seq: u64,
) -> Result<Vec<Vec<(String, String)>>> {
    let mut lines = Vec::new();
    for row in summary_rows {
        let get = |k: &str| row.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let params = [
            text(&get("customer_id")),
            text(&get("meter")),
            text(&get("plan_version")),
            text(&get("billing_period")),
            int(seq),
        ];
        lines.extend(rows(sql, INVOICE_LINES_SQL, &params).await?);
    }
    Ok(lines)
}

/// The ERP postings of the invoices those lines are on.
async fn postings(sql: &ReadOnlySql, invoice_lines: &[Vec<(String, String)>]) -> Result<Vec<Vec<(String, String)>>> {
    let mut invoices: Vec<(String, String)> = invoice_lines
        .iter()
        .map(|l| {
            let get = |k: &str| l.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
            (get("invoice_id"), get("revision"))
        })
        .collect();
    invoices.sort();
    invoices.dedup();
    let mut out = Vec::new();
    for (id, rev) in invoices {
        let Ok(rev) = rev.parse::<i64>() else { continue };
        out.extend(rows(sql, POSTINGS_SQL, &[text(&id), ScalarValue::Int64(Some(rev))]).await?);
    }
    Ok(out)
}

/// The traces as text.
pub fn render(traces: &[EventTrace]) -> String {
    let mut s = String::new();
    let kv = |r: &Vec<(String, String)>| r.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
    for t in traces {
        s.push_str(&format!(
            "event at stream sequence {}{}\n",
            t.seq,
            t.index.map_or(String::new(), |i| format!(", index {i}"))
        ));
        if let (Some(source), Some(id)) = (&t.source, &t.id) {
            s.push_str(&format!(
                "  source={source} id={id} type={} subject={} time={}\n",
                t.event_type.as_deref().unwrap_or(""),
                t.subject.as_deref().unwrap_or(""),
                t.time.as_deref().unwrap_or("")
            ));
        }
        s.push_str(&format!(
            "  outcome: {}{}\n",
            t.outcome,
            t.detail.as_ref().map_or(String::new(), |d| format!(" ({d})"))
        ));
        for r in &t.summary_rows {
            s.push_str(&format!("  usage_summaries: {}\n", kv(r)));
        }
        for r in &t.invoice_lines {
            s.push_str(&format!("  invoice line: {}\n", kv(r)));
        }
        for r in &t.postings {
            s.push_str(&format!("  ERP posting: {}\n", kv(r)));
        }
    }
    s
}

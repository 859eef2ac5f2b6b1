//! `meterflow status`: where the pipeline and the period close stand, for people and scripts.
//!
//! Reads the committed tables (read-only SQL) and, when reachable, the broker: stream position
//! and lag, DLQ depth, accepted / late / rejected events, billing periods with their invoices
//! and posting status. Works while `meterflow run` is running.

use anyhow::Result;
use meterflow_ingest::Broker;
use meterflow_sink::sql::ReadOnlySql;
use meterflow_sink::{
    RejectionRow, RowKind, SummaryRow, SummaryTable, TableRoot, PERIODS_TABLE, REJECTIONS_TABLE, SUMMARIES_TABLE,
};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::config::Config;

/// The broker side.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerStatus {
    /// Server URL.
    pub url: String,
    /// Last sequence in the usage stream.
    pub stream_last_seq: Option<u64>,
    /// Messages in the dead-letter stream.
    pub dlq_messages: Option<u64>,
    /// The DLQ by reason (the exception queue): entries and the oldest.
    pub exception_queue: Vec<meterflow_ingest::QueuedReason>,
    /// On a cluster: the usage stream's leader and replicas (`None` on a single server).
    pub placement: Option<String>,
    /// Why the broker could not be read, if it could not.
    pub error: Option<String>,
}

/// Whether a billing period is still open or closed (sealed at a summaries version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodState {
    /// Usage still lands on the period's own invoice.
    Open,
    /// Closed: later usage of it becomes adjustments on a later invoice.
    Closed,
}

impl PeriodState {
    /// Both states, as the metrics label them.
    pub const ALL: [PeriodState; 2] = [PeriodState::Open, PeriodState::Closed];

    /// `open` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodState::Open => "open",
            PeriodState::Closed => "closed",
        }
    }
}

impl std::fmt::Display for PeriodState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One billing period.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodStatus {
    /// Label.
    pub period: String,
    /// Open or closed.
    pub status: PeriodState,
    /// `watermark` or `manual`.
    pub closed_by: Option<String>,
    /// Summaries version the close sealed.
    pub sealed_version: Option<i64>,
    /// Accepted events of the period.
    pub events: u64,
    /// Finalized invoices (latest revisions).
    pub invoices: u64,
    /// Invoice totals per currency.
    pub invoiced: BTreeMap<String, String>,
    /// ERP documents per posting status (`posted`, `failed`, `pending`), over all targets.
    pub documents: BTreeMap<String, u64>,
}

impl PeriodStatus {
    /// An open period with nothing counted yet.
    pub fn open(period: &str) -> PeriodStatus {
        PeriodStatus {
            period: period.to_string(),
            status: PeriodState::Open,
            closed_by: None,
            sealed_version: None,
            events: 0,
            invoices: 0,
            invoiced: BTreeMap::new(),
            documents: BTreeMap::new(),
        }
    }
}

/// `periods` (in label order) with each period's accepted events set from `period_events`,
/// adding the periods that only have events.
pub fn with_events(periods: &[PeriodStatus], period_events: &BTreeMap<String, u64>) -> Vec<PeriodStatus> {
    let mut all: BTreeMap<String, PeriodStatus> = periods.iter().map(|p| (p.period.clone(), p.clone())).collect();
    for (period, events) in period_events {
        all.entry(period.clone()).or_insert_with(|| PeriodStatus::open(period)).events = *events;
    }
    all.into_values().collect()
}

/// Everything `meterflow status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Data directory.
    pub data_dir: String,
    /// Broker.
    pub broker: BrokerStatus,
    /// Last stream sequence committed to usage_summaries.
    pub committed_seq: u64,
    /// Messages in the stream not yet committed (stream last sequence - committed sequence).
    pub lag: Option<u64>,
    /// Current usage_summaries version.
    pub summaries_version: Option<u64>,
    /// The catalog revision the last committed range was decided under.
    pub catalog_revision: Option<u64>,
    /// Accepted events in the tables.
    pub events_accepted: u64,
    /// Events that arrived after their window closed (`late`) or their period closed
    /// (`adjustment`), per meter.
    pub late_events: BTreeMap<String, u64>,
    /// Rejected events per reason code.
    pub rejects: BTreeMap<String, u64>,
    /// Billing periods, oldest first.
    pub periods: Vec<PeriodStatus>,
    /// On a partitioned stream, every partition (empty otherwise).
    pub partitions: Vec<PartitionStatus>,
}

/// One partition of a partitioned stream.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// Its owner as its record on the board says (`None`: no live owner).
    pub owner: Option<String>,
    /// The last stream sequence of the partition committed, as the table records it.
    pub committed_seq: u64,
    /// The partition's last stream sequence in the stream (`None`: the broker did not answer).
    pub last_seq: Option<u64>,
    /// The partition's lowest watermark as its owner last published it.
    pub watermark: Option<String>,
}

impl PartitionStatus {
    /// Messages of the partition not committed yet: those after the committed sequence up to
    /// its last one (a sequence gap between them holds other partitions' messages, so this is
    /// 0 or "some", exact only as "caught up").
    pub fn behind(&self) -> Option<bool> {
        self.last_seq.map(|l| l > self.committed_seq)
    }
}

/// Accepted events in the tables.
pub const EVENTS_ACCEPTED_SQL: &str = "SELECT COALESCE(SUM(event_count), 0) FROM usage_summaries";

/// Late events (after their window or their period closed) per meter.
pub const LATE_EVENTS_SQL: &str = "SELECT meter, SUM(event_count) FROM usage_summaries \
WHERE row_kind IN ('late', 'adjustment') GROUP BY 1 ORDER BY 1";

/// Rejected events per reason code.
pub const REJECTS_SQL: &str = "SELECT reason, COUNT(*) FROM rejections GROUP BY 1 ORDER BY 1";

/// Accepted events per billing period.
pub const PERIOD_EVENTS_SQL: &str =
    "SELECT billing_period, SUM(event_count) FROM usage_summaries GROUP BY 1 ORDER BY 1";

/// How each period was first closed.
pub const PERIOD_CLOSES_SQL: &str = "SELECT period, closed_by, sealed_version FROM \
(SELECT *, ROW_NUMBER() OVER (PARTITION BY period ORDER BY closed_at) AS n FROM billing_periods) WHERE n = 1 \
ORDER BY 1";

/// Finalized invoices (latest revisions) per period and currency: count and total.
pub const PERIOD_INVOICES_SQL: &str =
    "SELECT period, currency, COUNT(*), SUM(total) FROM latest_invoices GROUP BY 1, 2 ORDER BY 1, 2";

/// ERP documents per period by status; per document and target, posted wins over failed and
/// failed over pending.
pub const PERIOD_DOCUMENTS_SQL: &str = "SELECT period, \
CASE s WHEN 3 THEN 'posted' WHEN 2 THEN 'failed' ELSE 'pending' END, COUNT(*) FROM \
(SELECT period, idempotency_key, target, \
MAX(CASE status WHEN 'posted' THEN 3 WHEN 'failed' THEN 2 ELSE 1 END) AS s \
FROM postings GROUP BY 1, 2, 3) GROUP BY 1, 2 ORDER BY 1, 2";

/// `(text, count)` pairs of a two-column query.
async fn counts(sql: &ReadOnlySql, query: &str) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for r in sql.rows(query, &[]).await?.iter() {
        out.insert(r.text(0)?, r.count(1)?);
    }
    Ok(out)
}

/// What the pipeline's own tables (`usage_summaries`, `rejections`) say, summed over all rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableTotals {
    /// Accepted events.
    pub events_accepted: u64,
    /// Late events per meter.
    pub late_events: BTreeMap<String, u64>,
    /// Rejected events per reason code.
    pub rejects: BTreeMap<String, u64>,
    /// Accepted events per billing period.
    pub period_events: BTreeMap<String, u64>,
}

impl TableTotals {
    /// Adds what one commit wrote.
    pub fn add(&mut self, rows: &[SummaryRow], rejections: &[RejectionRow]) {
        for r in rows {
            self.events_accepted += r.event_count;
            *self.period_events.entry(r.billing_period.clone()).or_default() += r.event_count;
            if matches!(r.row_kind, RowKind::Late | RowKind::Adjustment) {
                *self.late_events.entry(r.meter.clone()).or_default() += r.event_count;
            }
        }
        for r in rejections {
            *self.rejects.entry(r.reason.clone()).or_default() += 1;
        }
    }
}

/// The [`TableTotals`] of the tables under `root`: full-table sums, read with SQL.
pub async fn table_totals(root: &TableRoot) -> Result<TableTotals> {
    let sql = ReadOnlySql::open_tables(root, &[SUMMARIES_TABLE, REJECTIONS_TABLE]).await?;
    let events_accepted = match sql.rows(EVENTS_ACCEPTED_SQL, &[]).await?.iter().next() {
        Some(r) => r.count(0)?,
        None => 0,
    };
    let has = |t: &str| sql.tables.iter().any(|x| x == t);
    Ok(TableTotals {
        events_accepted,
        late_events: counts(&sql, LATE_EVENTS_SQL).await?,
        rejects: if has(REJECTIONS_TABLE) { counts(&sql, REJECTS_SQL).await? } else { BTreeMap::new() },
        period_events: counts(&sql, PERIOD_EVENTS_SQL).await?,
    })
}

/// The billing tables (`billing_periods`, `invoices`, `postings`) under the table root: small,
/// written by `meterflow close`, `invoice` and `post`.
pub const BILLING_TABLES: [&str; 4] = [PERIODS_TABLE, "invoices", "invoice_lines", "postings"];

/// Every billing period with usage (`period_events`) or with a close, invoices or postings.
pub async fn billing_periods(root: &TableRoot, period_events: &BTreeMap<String, u64>) -> Result<Vec<PeriodStatus>> {
    let sql = ReadOnlySql::open_tables(root, &BILLING_TABLES).await?;
    period_statuses(&sql, period_events).await
}

/// Gathers the status.
pub async fn status(config: &Config) -> Result<Status> {
    let root = &config.tables()?;
    let table = SummaryTable::open_or_create(root).await?;
    let committed_seq = table.committed_seq().await?;
    let summaries_version = table.version();
    let catalog_revision = table.catalog_revision().await?;
    let broker = broker_status(config).await;
    let lag = broker.stream_last_seq.map(|l| l.saturating_sub(committed_seq));
    let totals = table_totals(root).await?;
    let periods = billing_periods(root, &totals.period_events).await?;
    let partitions = match config.nats.partitions {
        0 => Vec::new(),
        n => partition_statuses(config, Some(&table.partition_progress(n).await?)).await,
    };
    // On a partitioned stream the progress is the partitions': lag 0 once each caught up.
    let (committed_seq, lag) = if partitions.is_empty() {
        (committed_seq, lag)
    } else {
        let caught_up = partitions.iter().all(|p| p.behind() == Some(false));
        (partitions.iter().map(|p| p.committed_seq).max().unwrap_or(0), caught_up.then_some(0))
    };
    Ok(Status {
        data_dir: root.to_string(),
        broker,
        committed_seq,
        lag,
        summaries_version,
        catalog_revision,
        events_accepted: totals.events_accepted,
        late_events: totals.late_events,
        rejects: totals.rejects,
        periods,
        partitions,
    })
}

/// Every partition of a partitioned stream: its committed sequence (from the table when given,
/// else as its owner last published it), owner and watermark (from the board) and last
/// sequence (from the stream); what the broker cannot tell stays unknown.
pub async fn partition_statuses(config: &Config, committed: Option<&[u64]>) -> Vec<PartitionStatus> {
    let mut out: Vec<PartitionStatus> = (0..config.nats.partitions)
        .map(|p| PartitionStatus {
            partition: p,
            owner: None,
            committed_seq: committed.and_then(|c| c.get(p as usize)).copied().unwrap_or(0),
            last_seq: None,
            watermark: None,
        })
        .collect();
    let Ok(broker) = Broker::connect(config.nats.clone()).await else { return out };
    let records = match meterflow_ingest::Board::open(broker.jetstream(), &config.nats).await {
        Ok(board) => board.records(config.nats.partitions).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    for (p, status) in out.iter_mut().enumerate() {
        status.last_seq = broker.last_sequence_of(p as u32).await.ok();
        if let Some(Some(r)) = records.get(p) {
            status.owner = Some(r.owner.clone());
            if committed.is_none() {
                status.committed_seq = r.committed_seq;
            }
            status.watermark = r
                .watermark_micros
                .and_then(chrono::DateTime::from_timestamp_micros)
                .map(|w| w.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
    }
    out
}

/// The broker's side: the stream's last sequence and the DLQ depth, or why they are unknown.
async fn broker_status(config: &Config) -> BrokerStatus {
    let mut broker = BrokerStatus {
        url: config.nats.url.clone(),
        stream_last_seq: None,
        dlq_messages: None,
        exception_queue: Vec::new(),
        placement: None,
        error: None,
    };
    match Broker::connect(config.nats.clone()).await {
        Ok(b) => {
            match b.last_sequence().await {
                Ok(v) => broker.stream_last_seq = Some(v),
                Err(e) => broker.error = Some(e.to_string()),
            }
            broker.placement = b.stream_placement().await.ok().flatten();
            // One read gives the depth too: the DLQ's subjects are its reasons.
            if let Ok(queue) = b.exception_queue().await {
                broker.dlq_messages = Some(queue.iter().map(|q| q.messages).sum());
                broker.exception_queue = queue;
            }
        }
        Err(e) => broker.error = Some(e.to_string()),
    }
    broker
}

/// Every billing period with usage: events, close, invoices and postings.
async fn period_statuses(sql: &ReadOnlySql, period_events: &BTreeMap<String, u64>) -> Result<Vec<PeriodStatus>> {
    let has = |t: &str| sql.tables.iter().any(|x| x == t);
    let mut periods: BTreeMap<String, PeriodStatus> = BTreeMap::new();
    let blank = |p: &str| PeriodStatus::open(p);
    for (period, events) in period_events {
        periods.entry(period.clone()).or_insert_with(|| blank(period)).events = *events;
    }
    if has("billing_periods") {
        for r in sql.rows(PERIOD_CLOSES_SQL, &[]).await?.iter() {
            let period = r.text(0)?;
            let p = periods.entry(period.clone()).or_insert_with(|| blank(&period));
            p.status = PeriodState::Closed;
            p.closed_by = Some(r.text(1)?);
            p.sealed_version = r.opt_int(2)?;
        }
    }
    if has("invoices") {
        for r in sql.rows(PERIOD_INVOICES_SQL, &[]).await?.iter() {
            let period = r.text(0)?;
            let p = periods.entry(period.clone()).or_insert_with(|| blank(&period));
            p.invoices += r.count(2)?;
            p.invoiced.insert(r.text(1)?, r.dec(3)?.to_string());
        }
    }
    if has("postings") {
        for r in sql.rows(PERIOD_DOCUMENTS_SQL, &[]).await?.iter() {
            let period = r.text(0)?;
            let p = periods.entry(period.clone()).or_insert_with(|| blank(&period));
            p.documents.insert(r.text(1)?, r.count(2)?);
        }
    }
    Ok(periods.into_values().collect())
}

/// The exception queue in one line: `reason count (oldest N min, redrivable)`.
pub fn queue_line(queue: &[meterflow_ingest::QueuedReason], now_unix: i64) -> String {
    if queue.is_empty() {
        return "empty".into();
    }
    let entry = |q: &meterflow_ingest::QueuedReason| {
        let age = q.oldest_unix.map(|t| format!(", oldest {} min", now_unix.saturating_sub(t).max(0) / 60));
        let kind = if q.redrivable { ", redrivable" } else { "" };
        format!("{} {} ({}{kind})", q.reason, q.messages, age.unwrap_or_default().trim_start_matches(", "))
    };
    queue.iter().map(entry).collect::<Vec<_>>().join(", ")
}

/// The status as text.
pub fn render(s: &Status) -> String {
    let opt = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    let mut out = format!(
        "data dir        {}\nbroker          {} (stream last seq {}, DLQ {} messages){}\ncommitted seq   {} \
            (lag {} messages), usage_summaries version {}\nevents accepted {}\n",
        s.data_dir,
        s.broker.url,
        opt(s.broker.stream_last_seq),
        opt(s.broker.dlq_messages),
        s.broker.placement.as_deref().map(|p| format!("\n                stream on {p}")).unwrap_or_default()
            + &s.broker.error.as_deref().map(|e| format!("\n                unreachable: {e}")).unwrap_or_default(),
        s.committed_seq,
        opt(s.lag),
        opt(s.summaries_version),
        s.events_accepted,
    );
    let list = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        }
    };
    out.push_str(&format!("late events     {}\nrejects         {}\n", list(&s.late_events), list(&s.rejects)));
    out.push_str(&format!(
        "catalog         revision {} (of the last commit)\nDLQ by reason   {}\nperiods\n",
        opt(s.catalog_revision),
        queue_line(&s.broker.exception_queue, chrono::Utc::now().timestamp())
    ));
    for p in &s.periods {
        let invoiced: Vec<String> = p.invoiced.iter().map(|(c, t)| format!("{c} {t}")).collect();
        out.push_str(&format!(
            "  {:<11} {:<6} {:>9} events  {}  {} invoices {}  documents: {}\n",
            p.period,
            p.status,
            p.events,
            p.closed_by
                .as_deref()
                .map(|b| format!("closed by {b} at v{}", p.sealed_version.unwrap_or(0)))
                .unwrap_or_default(),
            p.invoices,
            if invoiced.is_empty() { String::new() } else { format!("({})", invoiced.join(", ")) },
            list(&p.documents),
        ));
    }
    if !s.partitions.is_empty() {
        out.push_str("partitions\n");
    }
    for p in &s.partitions {
        out.push_str(&format!(
            "  p{:<4} committed seq {:>9}  last seq {:>9}  {:<10} watermark {:<20}  owner {}\n",
            p.partition,
            p.committed_seq,
            opt(p.last_seq),
            match p.behind() {
                Some(true) => "behind",
                Some(false) => "caught up",
                None => "?",
            },
            p.watermark.as_deref().unwrap_or("none"),
            p.owner.as_deref().unwrap_or("none (waiting for a worker)"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn row(period: &str, meter: &str, kind: RowKind, events: u64) -> SummaryRow {
        let t = DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default();
        SummaryRow {
            customer_id: "acme".into(),
            subject: "acme".into(),
            meter: meter.into(),
            dimensions: "{}".into(),
            window_start: t,
            window_end: t,
            revision: 1,
            quantity: rust_decimal::Decimal::ONE,
            amount: rust_decimal::Decimal::ONE,
            currency: "USD".into(),
            plan_id: "p".into(),
            plan_version: "p@2026-01-01".into(),
            billing_period: period.into(),
            event_count: events,
            first_seq: 1,
            last_seq: 1,
            row_kind: kind,
            reason: None,
            arrived_at: None,
        }
    }

    fn rejection(reason: &str) -> RejectionRow {
        RejectionRow {
            stream_seq: 1,
            event_index: None,
            reason: reason.into(),
            detail: String::new(),
            subject: "usage.acme".into(),
            size: 1,
        }
    }

    #[test]
    fn a_commit_adds_its_events_by_period_its_late_events_by_meter_and_its_rejects_by_reason() {
        let mut t = TableTotals::default();
        t.add(
            &[
                row("2026-09", "api_calls", RowKind::Usage, 10),
                row("2026-09", "api_calls", RowKind::Late, 2),
                row("2026-08", "storage_gb", RowKind::Adjustment, 1),
                row("2026-08", "storage_gb", RowKind::Rerate, 0),
            ],
            &[rejection("invalid_json"), rejection("invalid_json"), rejection("unknown_meter")],
        );
        t.add(&[row("2026-09", "api_calls", RowKind::Usage, 5)], &[]);
        assert_eq!(t.events_accepted, 18);
        assert_eq!(t.period_events, BTreeMap::from([("2026-08".into(), 1), ("2026-09".into(), 17)]));
        assert_eq!(t.late_events, BTreeMap::from([("api_calls".into(), 2), ("storage_gb".into(), 1)]));
        assert_eq!(t.rejects, BTreeMap::from([("invalid_json".into(), 2), ("unknown_meter".into(), 1)]));
    }

    #[test]
    fn periods_take_their_events_and_periods_with_only_events_are_open() {
        let mut closed = PeriodStatus::open("2026-08");
        closed.status = PeriodState::Closed;
        closed.invoices = 3;
        let events = BTreeMap::from([("2026-08".to_string(), 7), ("2026-09".to_string(), 4)]);
        let all = with_events(&[closed], &events);
        let got: Vec<(&str, &str, u64, u64)> =
            all.iter().map(|p| (p.period.as_str(), p.status.as_str(), p.events, p.invoices)).collect();
        assert_eq!(format!("[{:<6}]", PeriodState::Open), "[open  ]", "the CLI's column is padded");
        assert_eq!(got, vec![("2026-08", "closed", 7, 3), ("2026-09", "open", 4, 0)]);
    }
}

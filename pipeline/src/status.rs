//! `meterflow status`: where the pipeline and the period close stand, for people and scripts.
//!
//! Reads the committed tables (read-only SQL) and, when reachable, the broker: stream position
//! and lag, DLQ depth, accepted / late / rejected events, billing periods with their invoices
//! and posting status. Works while `meterflow run` is running.

use anyhow::Result;
use meterflow_ingest::Broker;
use meterflow_sink::sql::{cells, ReadOnlySql};
use meterflow_sink::SummaryTable;
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
    /// Why the broker could not be read, if it could not.
    pub error: Option<String>,
}

/// One billing period.
#[derive(Debug, Clone, Serialize)]
pub struct PeriodStatus {
    /// Label.
    pub period: String,
    /// `open` or `closed`.
    pub status: String,
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
    /// Accepted events in the tables.
    pub events_accepted: u64,
    /// Events that arrived after their window closed (`late`) or their period closed
    /// (`adjustment`), per meter.
    pub late_events: BTreeMap<String, u64>,
    /// Rejected events per reason code.
    pub rejects: BTreeMap<String, u64>,
    /// Billing periods, oldest first.
    pub periods: Vec<PeriodStatus>,
}

async fn pairs(sql: &ReadOnlySql, query: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for b in sql.query(query).await? {
        for row in cells(&b)? {
            out.push(row.into_iter().map(Option::unwrap_or_default).collect());
        }
    }
    Ok(out)
}

fn count(s: &str) -> u64 {
    s.parse().unwrap_or(0)
}

/// Gathers the status.
pub async fn status(config: &Config) -> Result<Status> {
    let data_dir = &config.storage.data_dir;
    let table = SummaryTable::open_or_create(data_dir).await?;
    let committed_seq = table.committed_seq().await?;
    let summaries_version = table.version();
    let broker = broker_status(config).await;
    let lag = broker.stream_last_seq.map(|l| l.saturating_sub(committed_seq));
    let sql = ReadOnlySql::open(data_dir).await?;
    let has = |t: &str| sql.tables.iter().any(|x| x == t);
    let events_accepted = pairs(&sql, "SELECT COALESCE(SUM(event_count), 0) FROM usage_summaries")
        .await?
        .first()
        .and_then(|r| r.first())
        .map_or(0, |v| count(v));
    let late_events = pairs(
        &sql,
        "SELECT meter, SUM(event_count) FROM usage_summaries WHERE row_kind IN ('late', 'adjustment') GROUP BY \
            1 ORDER BY 1",
    )
    .await?
    .into_iter()
    .map(|r| (r[0].clone(), count(&r[1])))
    .collect();
    let rejects = if has("rejections") {
        pairs(&sql, "SELECT reason, COUNT(*) FROM rejections GROUP BY 1 ORDER BY 1")
            .await?
            .into_iter()
            .map(|r| (r[0].clone(), count(&r[1])))
            .collect()
    } else {
        BTreeMap::new()
    };

    let periods = period_statuses(&sql).await?;
    Ok(Status {
        data_dir: data_dir.display().to_string(),
        broker,
        committed_seq,
        lag,
        summaries_version,
        events_accepted,
        late_events,
        rejects,
        periods,
    })
}

/// The broker's side: the stream's last sequence and the DLQ depth, or why they are unknown.
async fn broker_status(config: &Config) -> BrokerStatus {
    let mut broker =
        BrokerStatus { url: config.nats.url.clone(), stream_last_seq: None, dlq_messages: None, error: None };
    match Broker::connect(config.nats.clone()).await {
        Ok(b) => {
            match b.last_sequence().await {
                Ok(v) => broker.stream_last_seq = Some(v),
                Err(e) => broker.error = Some(e.to_string()),
            }
            broker.dlq_messages = b.dlq_depth().await.ok();
        }
        Err(e) => broker.error = Some(e.to_string()),
    }
    broker
}

/// Every billing period with usage: events, close, invoices and postings.
async fn period_statuses(sql: &ReadOnlySql) -> Result<Vec<PeriodStatus>> {
    let has = |t: &str| sql.tables.iter().any(|x| x == t);
    let mut periods: BTreeMap<String, PeriodStatus> = BTreeMap::new();
    let blank = |p: &str| PeriodStatus {
        period: p.to_string(),
        status: "open".into(),
        closed_by: None,
        sealed_version: None,
        events: 0,
        invoices: 0,
        invoiced: BTreeMap::new(),
        documents: BTreeMap::new(),
    };
    for r in pairs(sql, "SELECT billing_period, SUM(event_count) FROM usage_summaries GROUP BY 1").await? {
        periods.entry(r[0].clone()).or_insert_with(|| blank(&r[0])).events = count(&r[1]);
    }
    if has("billing_periods") {
        let q = "SELECT period, closed_by, sealed_version FROM \
                 (SELECT *, ROW_NUMBER() OVER (PARTITION BY period ORDER BY closed_at) AS n FROM billing_periods) WHERE n = 1";
        for r in pairs(sql, q).await? {
            let p = periods.entry(r[0].clone()).or_insert_with(|| blank(&r[0]));
            p.status = "closed".into();
            p.closed_by = Some(r[1].clone());
            p.sealed_version = r[2].parse().ok();
        }
    }
    if has("invoices") {
        let q = "SELECT period, currency, COUNT(*), SUM(total) FROM invoices i JOIN \
                 (SELECT invoice_id AS id, MAX(revision) AS rev FROM invoices GROUP BY 1) l \
                 ON i.invoice_id = l.id AND i.revision = l.rev GROUP BY 1, 2";
        for r in pairs(sql, q).await? {
            let p = periods.entry(r[0].clone()).or_insert_with(|| blank(&r[0]));
            p.invoices += count(&r[2]);
            p.invoiced.insert(r[1].clone(), r[3].clone());
        }
    }
    if has("postings") {
        // Per document and target: posted wins over failed, failed over pending.
        let q = "SELECT period, CASE s WHEN 3 THEN 'posted' WHEN 2 THEN 'failed' ELSE 'pending' END, COUNT(*) FROM \
                 (SELECT period, idempotency_key, target, MAX(CASE status WHEN 'posted' THEN 3 WHEN 'failed' THEN 2 ELSE 1 END) AS s \
                  FROM postings GROUP BY 1, 2, 3) GROUP BY 1, 2";
        for r in pairs(sql, q).await? {
            let p = periods.entry(r[0].clone()).or_insert_with(|| blank(&r[0]));
            p.documents.insert(r[1].clone(), count(&r[2]));
        }
    }
    Ok(periods.into_values().collect())
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
        s.broker.error.as_deref().map(|e| format!("\n                unreachable: {e}")).unwrap_or_default(),
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
    out.push_str(&format!("late events     {}\nrejects         {}\nperiods\n", list(&s.late_events), list(&s.rejects)));
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
    out
}

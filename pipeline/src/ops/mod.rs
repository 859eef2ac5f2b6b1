//! Operability of `meterflow run`: Prometheus metrics, the operations page and its JSON (served
//! by the HTTP API crate on `[ops] listen`, default `127.0.0.1:9464`; empty turns it off).
//!
//! ```text
//!  Pipeline ──internal events (crate::events)──► Metrics ──► GET /metrics
//!     │ watermarks, committed rows' totals         │ sampled every 2 s
//!     ▼                                            ▼
//!   Live ◄── billing tables (closes, invoices, postings; re-read only when their Delta logs
//!     │      change) and reconciliations, every `refresh_s`
//!     └──► View ──► GET / (HTML page) and GET /api/status (JSON)
//! ```
//!
//! The page is fed from the pipeline's own state: the broker gauges come from the pipeline's
//! connection, the usage totals from its commits (read from the tables once at start). The
//! refresher opens no broker connection and never scans usage_summaries.

pub mod live;
pub mod metrics;
pub mod page;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::status::{self, BrokerStatus, PeriodStatus, Status, TableTotals};
use meterflow_sink::TableRoot;
use std::collections::BTreeMap;

/// The billing tables' periods, with the Delta log listing ([`log_listing`]) they were read at.
type BillingFacts = (Vec<(String, Option<u64>)>, Vec<PeriodStatus>);

/// The newest version of each table (from a listing of its Delta log): it changes with every
/// commit, so an unchanged listing means unchanged tables.
async fn log_listing(root: &TableRoot, tables: &[&str]) -> Vec<(String, Option<u64>)> {
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        out.push((t.to_string(), root.latest_version(t).await));
    }
    out
}
pub use live::{Live, ReconcileResult, View};
pub use metrics::Metrics;

/// Seconds between two history samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Metrics and live view of one `meterflow run`.
#[derive(Debug)]
pub struct Ops {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The page's live state.
    pub live: Arc<Live>,
    reasons: Vec<String>,
    meters: Vec<String>,
    refresh_s: u64,
    /// The billing tables' facts, with the Delta log listing they were read at.
    billing_cache: tokio::sync::Mutex<Option<BillingFacts>>,
}

impl Ops {
    /// Metrics and live state for the configured meters.
    pub fn new(config: &Config) -> Ops {
        let keep = (config.ops.history_minutes.max(1) * 60 / SAMPLE_EVERY.as_secs()) as usize;
        Ops {
            metrics: Arc::new(Metrics::new()),
            live: Arc::new(Live::new(keep)),
            reasons: meterflow_schemas::RejectReason::ALL.iter().map(|r| r.code().to_string()).collect(),
            meters: config.meters.iter().map(|m| m.name.clone()).collect(),
            refresh_s: config.ops.refresh_s.max(1),
            billing_cache: tokio::sync::Mutex::new(None),
        }
    }

    /// The view now.
    pub fn view(&self) -> View {
        self.live.view(&self.metrics, &self.reasons, &self.meters)
    }

    /// The operations page (HTML) now.
    pub fn page(&self) -> String {
        page::render(&self.view(), self.refresh_s)
    }

    /// Starts the sampler and the billing refresher in the background (the page, `/metrics`
    /// and `/api/status` are served by the HTTP API, `meterflow_api`, on `[ops] listen`).
    pub async fn start(self: &Arc<Self>, config: &Config) {
        let ops = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                ops.live.sample(&ops.metrics, chrono::Utc::now());
            }
        });
        let (ops, refresher_config) = (self.clone(), config.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(ops.refresh_s));
            loop {
                tick.tick().await;
                ops.refresh_billing(&refresher_config).await;
            }
        });
    }

    /// The billing periods: the billing tables' facts (re-read only when a Delta log of
    /// theirs changed) with the accepted events of each period.
    async fn billing_periods(&self, config: &Config, totals: &TableTotals) -> anyhow::Result<Vec<PeriodStatus>> {
        let root = &config.tables()?;
        let listing = log_listing(root, &status::BILLING_TABLES).await;
        let mut cache = self.billing_cache.lock().await;
        let facts = match cache.as_ref() {
            Some((seen, facts)) if *seen == listing => facts.clone(),
            _ => {
                let facts = status::billing_periods(root, &BTreeMap::new()).await?;
                *cache = Some((listing, facts.clone()));
                facts
            }
        };
        Ok(status::with_events(&facts, &totals.period_events))
    }

    /// The status from the pipeline's own state and the billing tables; `None` until the
    /// pipeline has read the tables' totals at start.
    async fn status(&self, config: &Config) -> Option<Result<Status, String>> {
        let (totals, summaries_version) = self.live.totals()?;
        let m = &self.metrics;
        let count = |v: i64| u64::try_from(v).unwrap_or(0);
        let stream_last = count(m.stream_last_sequence.get());
        let committed_seq = count(m.committed_sequence.get());
        let periods = match self.billing_periods(config, &totals).await {
            Ok(p) => p,
            Err(e) => return Some(Err(format!("{e:#}"))),
        };
        Some(Ok(Status {
            data_dir: config.tables().map_or_else(|_| config.storage.data_dir.display().to_string(), |r| r.to_string()),
            broker: BrokerStatus {
                url: config.nats.url.clone(),
                stream_last_seq: (stream_last > 0).then_some(stream_last),
                dlq_messages: Some(count(m.dlq_depth.get())),
                exception_queue: self.live.exception_queue(),
                placement: None,
                error: None,
            },
            committed_seq,
            lag: Some(count(m.consumer_lag.get())),
            summaries_version,
            catalog_revision: u64::try_from(m.catalog_revision.get()).ok().filter(|r| *r > 0),
            events_accepted: totals.events_accepted,
            late_events: totals.late_events,
            rejects: totals.rejects,
            periods,
            partitions: match config.nats.partitions {
                0 => Vec::new(),
                _ => status::partition_statuses(config, None).await,
            },
        }))
    }

    /// Re-reads the billing side (periods, invoices, postings, reconciliations) and combines it
    /// with the pipeline's own totals and broker gauges.
    pub async fn refresh_billing(&self, config: &Config) {
        let Some(status) = self.status(config).await else { return };
        let reconciles = live::load_reconciles(&config.storage.data_dir);
        let m = &self.metrics;
        if let Ok(s) = &status {
            for state in status::PeriodState::ALL {
                let n = s.periods.iter().filter(|p| p.status == state).count();
                m.billing_periods.get_or_create(&metrics::label("state", state.as_str())).set(n as i64);
            }
            for doc in ["posted", "failed", "pending"] {
                let n: u64 = s.periods.iter().filter_map(|p| p.documents.get(doc)).sum();
                m.erp_documents.get_or_create(&metrics::label("status", doc)).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        for r in &reconciles {
            m.reconciliation_variances
                .get_or_create(&metrics::label("period", r.period.clone()))
                .set(i64::try_from(r.variances).unwrap_or(i64::MAX));
        }
        self.live.set_billing(status, reconciles);
    }
}

//! Operability of `meterflow run`: Prometheus metrics, the operations page and its JSON, served
//! read-only on `[ops] listen` (default `127.0.0.1:9464`; empty turns it off).
//!
//! ```text
//!  Pipeline ──counters, histograms──► Metrics ──► GET /metrics
//!     │ watermarks at each commit        │ sampled every 2 s
//!     ▼                                  ▼
//!   Live ◄── billing facts (status) and reconciliations, refreshed every `refresh_s`
//!     └──► View ──► GET / (HTML page) and GET /api/status (JSON)
//! ```

pub mod live;
pub mod metrics;
pub mod page;
pub mod server;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
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
        }
    }

    /// The view now.
    pub fn view(&self) -> View {
        self.live.view(&self.metrics, &self.reasons, &self.meters)
    }

    /// Binds `[ops] listen` and starts the endpoint, the sampler and the billing refresher in
    /// the background. A failure to bind is logged, not fatal: metering goes on without the page.
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
        if config.ops.listen.trim().is_empty() {
            return;
        }
        match tokio::net::TcpListener::bind(config.ops.listen.trim()).await {
            Ok(listener) => {
                let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(%addr, "operations page on http://{addr}/ and metrics on http://{addr}/metrics");
                tokio::spawn(server::serve(listener, self.clone()));
            }
            Err(e) => tracing::error!(
                listen = %config.ops.listen,
                error = %e,
                "cannot serve the metrics and operations page; set [ops] listen (METERFLOW_OPS__LISTEN) to a \
                    free address, or empty to turn it off. Metering continues"
            ),
        }
    }

    /// Re-reads the billing side (periods, invoices, postings, reconciliations) and the broker
    /// gauges from the tables and the broker.
    pub async fn refresh_billing(&self, config: &Config) {
        let status = crate::status::status(config).await.map_err(|e| format!("{e:#}"));
        let reconciles = live::load_reconciles(&config.storage.data_dir);
        let m = &self.metrics;
        if let Ok(s) = &status {
            if let Some(d) = s.broker.dlq_messages {
                m.dlq_depth.set(i64::try_from(d).unwrap_or(i64::MAX));
            }
            for state in ["open", "closed"] {
                let n = s.periods.iter().filter(|p| p.status == state).count();
                m.billing_periods.get_or_create(&metrics::label("state", state)).set(n as i64);
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

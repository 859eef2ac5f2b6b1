//! What the operations page shows, gathered while `meterflow run` runs: a rolling history of
//! throughput and lag sampled from the metrics, the meters' watermarks (set by the pipeline at
//! each commit), the tables' running totals (read once at start, then kept by the pipeline's
//! commits), and the billing side (`meterflow status` facts plus the last reconciliation of
//! each period), refreshed in the background.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::metrics::Metrics;
use crate::status::{Status, TableTotals};
use meterflow_sink::{RejectionRow, SummaryRow};

/// One point of the throughput and lag history.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the epoch.
    pub at: i64,
    /// Events accepted per second since the previous sample.
    pub accepted_per_s: f64,
    /// Events received per second since the previous sample.
    pub received_per_s: f64,
    /// Consumer lag (messages).
    pub lag: i64,
}

/// A meter's event-time progress.
#[derive(Debug, Clone, Serialize)]
pub struct MeterProgress {
    /// Meter name.
    pub meter: String,
    /// Its watermark (RFC 3339), once it has seen events.
    pub watermark: Option<String>,
    /// Seconds between now and the watermark.
    pub watermark_age_s: Option<i64>,
}

/// The last reconciliation of a period, as saved by `meterflow reconcile`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileResult {
    /// Period label.
    pub period: String,
    /// Rows with a non-zero variance (0 = reconciled).
    pub variances: u64,
    /// When it ran (RFC 3339).
    pub at: String,
}

/// Where `meterflow reconcile` keeps its last result per period.
pub fn reconcile_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("documents").join("reconcile")
}

/// Saves a reconciliation result (the ops page shows the last one per period).
pub fn save_reconcile(data_dir: &Path, result: &ReconcileResult) -> std::io::Result<()> {
    let dir = reconcile_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}.json", result.period));
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(result).map_err(std::io::Error::other)?)?;
    std::fs::rename(tmp, path)
}

/// The saved reconciliation results, by period.
pub fn load_reconciles(data_dir: &Path) -> Vec<ReconcileResult> {
    let Ok(dir) = std::fs::read_dir(reconcile_dir(data_dir)) else { return Vec::new() };
    let mut out: Vec<ReconcileResult> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect();
    out.sort_by(|a, b| a.period.cmp(&b.period));
    out
}

/// Everything the page and `/api/status` show.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// When this view was taken (RFC 3339).
    pub now: String,
    /// When the pipeline started (RFC 3339).
    pub started_at: String,
    /// Live counters since start.
    pub events_received: u64,
    /// Accepted since start.
    pub events_accepted: u64,
    /// Duplicates since start.
    pub events_duplicate: u64,
    /// Rejects since start, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Late events since start, by meter.
    pub late: BTreeMap<String, u64>,
    /// Redeliveries dropped since start.
    pub redeliveries: u64,
    /// Commits since start.
    pub commits: u64,
    /// Last committed sequence.
    pub committed_seq: i64,
    /// Consumer lag.
    pub lag: i64,
    /// Windows in memory.
    pub open_windows: i64,
    /// Per meter watermark.
    pub meters: Vec<MeterProgress>,
    /// Throughput and lag history, oldest first.
    pub history: Vec<Sample>,
    /// Billing side, from the tables (refreshed in the background).
    pub billing: Option<Status>,
    /// Why the billing side could not be read, if it could not.
    pub billing_error: Option<String>,
    /// Last reconciliation per period.
    pub reconciliations: Vec<ReconcileResult>,
}

#[derive(Debug)]
struct Inner {
    history: VecDeque<Sample>,
    last: Option<(DateTime<Utc>, u64, u64)>,
    meters: Vec<(String, Option<DateTime<Utc>>)>,
    billing: Option<Status>,
    billing_error: Option<String>,
    reconciliations: Vec<ReconcileResult>,
    /// The tables' totals, once read at start; each commit adds to them.
    totals: Option<TableTotals>,
    /// The usage_summaries version of the last commit.
    summaries_version: Option<u64>,
    /// The DLQ by reason, as last read.
    exception_queue: Vec<meterflow_ingest::QueuedReason>,
}

/// Shared between the pipeline, the sampler and the HTTP server.
#[derive(Debug)]
pub struct Live {
    started_at: DateTime<Utc>,
    keep: usize,
    inner: Mutex<Inner>,
}

fn counter_map(
    family: &prometheus_client::metrics::family::Family<
        super::metrics::Labels,
        prometheus_client::metrics::counter::Counter,
    >,
    keys: &[String],
    label: &'static str,
) -> BTreeMap<String, u64> {
    keys.iter()
        .filter_map(|k| {
            let v = family.get_or_create(&super::metrics::label(label, k.clone())).get();
            (v > 0).then(|| (k.clone(), v))
        })
        .collect()
}

impl Live {
    /// Keeps `keep` samples of history.
    pub fn new(keep: usize) -> Live {
        Live {
            started_at: Utc::now(),
            keep: keep.max(2),
            inner: Mutex::new(Inner {
                history: VecDeque::new(),
                last: None,
                meters: Vec::new(),
                billing: None,
                billing_error: None,
                reconciliations: Vec::new(),
                totals: None,
                summaries_version: None,
                exception_queue: Vec::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the view inconsistent in a harmful way.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the tables' totals as read at start (before the first commit).
    pub fn load_totals(&self, totals: TableTotals, summaries_version: Option<u64>) {
        let mut inner = self.lock();
        inner.totals = Some(totals);
        inner.summaries_version = summaries_version;
    }

    /// Adds what a commit wrote to the tables' totals (once they are loaded).
    pub fn add_committed(&self, version: u64, rows: &[SummaryRow], rejections: &[RejectionRow]) {
        let mut inner = self.lock();
        inner.summaries_version = Some(version);
        if let Some(t) = inner.totals.as_mut() {
            t.add(rows, rejections);
        }
    }

    /// The tables' totals and the summaries version, once loaded.
    pub fn totals(&self) -> Option<(TableTotals, Option<u64>)> {
        let inner = self.lock();
        inner.totals.clone().map(|t| (t, inner.summaries_version))
    }

    /// Records the DLQ by reason (read by the pipeline every refresh).
    pub fn set_exception_queue(&self, queue: Vec<meterflow_ingest::QueuedReason>) {
        self.lock().exception_queue = queue;
    }

    /// The DLQ by reason as last read.
    pub fn exception_queue(&self) -> Vec<meterflow_ingest::QueuedReason> {
        self.lock().exception_queue.clone()
    }

    /// Records the meters' watermarks (called by the pipeline after each commit).
    pub fn set_watermarks(&self, meters: Vec<(String, Option<DateTime<Utc>>)>) {
        self.lock().meters = meters;
    }

    /// Takes one history sample from the metrics.
    pub fn sample(&self, metrics: &Metrics, now: DateTime<Utc>) {
        let accepted = metrics.events_accepted.get();
        let received = metrics.events_received.get();
        let mut inner = self.lock();
        if let Some((at, a, r)) = inner.last {
            let secs = (now - at).num_milliseconds().max(1) as f64 / 1000.0;
            let sample = Sample {
                at: now.timestamp(),
                accepted_per_s: accepted.saturating_sub(a) as f64 / secs,
                received_per_s: received.saturating_sub(r) as f64 / secs,
                lag: metrics.consumer_lag.get(),
            };
            inner.history.push_back(sample);
            while inner.history.len() > self.keep {
                inner.history.pop_front();
            }
        }
        inner.last = Some((now, accepted, received));
    }

    /// Stores the billing side.
    pub fn set_billing(&self, billing: Result<Status, String>, reconciliations: Vec<ReconcileResult>) {
        let mut inner = self.lock();
        match billing {
            Ok(s) => {
                inner.billing = Some(s);
                inner.billing_error = None;
            }
            Err(e) => inner.billing_error = Some(e),
        }
        inner.reconciliations = reconciliations;
    }

    /// The view now.
    pub fn view(&self, metrics: &Metrics, reasons: &[String], meters: &[String]) -> View {
        let now = Utc::now();
        let inner = self.lock();
        View {
            now: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            started_at: self.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            events_received: metrics.events_received.get(),
            events_accepted: metrics.events_accepted.get(),
            events_duplicate: metrics.events_duplicate.get(),
            rejected: counter_map(&metrics.events_rejected, reasons, "reason"),
            late: counter_map(&metrics.events_late, meters, "meter"),
            redeliveries: metrics.redeliveries.get(),
            commits: metrics.commits.get(),
            committed_seq: metrics.committed_sequence.get(),
            lag: metrics.consumer_lag.get(),
            open_windows: metrics.open_windows.get(),
            meters: inner
                .meters
                .iter()
                .map(|(m, w)| MeterProgress {
                    meter: m.clone(),
                    watermark: w.map(|w| w.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    watermark_age_s: w.map(|w| (now - w).num_seconds()),
                })
                .collect(),
            history: inner.history.iter().cloned().collect(),
            billing: inner.billing.clone(),
            billing_error: inner.billing_error.clone(),
            reconciliations: inner.reconciliations.clone(),
        }
    }
}

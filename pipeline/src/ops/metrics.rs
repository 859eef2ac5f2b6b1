//! The Prometheus metrics of `meterflow run`, registered once and updated by the pipeline and the
//! ops refresher. Encoded with the official Prometheus Rust client (`prometheus-client`), in
//! the OpenMetrics text format Prometheus scrapes. Every metric is listed, with its meaning, in
//! `docs/METRICS.md`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// Label set: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// One label.
pub fn label(name: &'static str, value: impl Into<String>) -> Labels {
    vec![(name, value.into())]
}

/// Every metric of the pipeline.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events decoded from live messages (accepted, duplicate or rejected).
    pub events_received: Counter,
    /// First sightings, counted in the summaries.
    pub events_accepted: Counter,
    /// Events dropped as duplicates of an earlier `(source, id)`.
    pub events_duplicate: Counter,
    /// Rejected events, by DLQ reason code.
    pub events_rejected: Family<Labels, Counter>,
    /// Accepted events that landed after their window closed (`late`) or after their billing
    /// period closed (`adjustment`), by meter.
    pub events_late: Family<Labels, Counter>,
    /// Messages delivered again while already in hand or committed, dropped.
    pub redeliveries: Counter,
    /// Stream last sequence minus committed sequence.
    pub consumer_lag: Gauge,
    /// Last stream sequence committed to usage_summaries (an unpartitioned stream).
    pub committed_sequence: Gauge,
    /// On a partitioned stream: each owned partition's committed sequence, by `partition`.
    pub partition_committed_sequence: Family<Labels, Gauge>,
    /// On a partitioned stream: each owned partition's last sequence minus its committed
    /// sequence, by `partition`.
    pub partition_consumer_lag: Family<Labels, Gauge>,
    /// Last sequence in the usage stream.
    pub stream_last_sequence: Gauge,
    /// Seconds between now and each meter's watermark.
    pub watermark_age: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Windows held in memory.
    pub open_windows: Gauge,
    /// The catalog revision the pipeline decides under.
    pub catalog_revision: Gauge,
    /// Duration of the commit protocol (DLQ publish, both Delta commits).
    pub commit_duration: Histogram,
    /// Time between two commits.
    pub commit_interval: Histogram,
    /// Commits of usage_summaries.
    pub commits: Counter,
    /// Summary rows written.
    pub summary_rows: Counter,
    /// Parquet data files written to usage_summaries.
    pub parquet_files: Counter,
    /// Bytes of those Parquet files.
    pub parquet_bytes: Counter,
    /// Messages in the dead-letter stream.
    pub dlq_depth: Gauge,
    /// DLQ entries by reason (the exception queue).
    pub dlq_entries: Family<Labels, Gauge>,
    /// Age of the oldest DLQ entry by reason.
    pub dlq_oldest_age: Family<Labels, Gauge<f64, AtomicU64>>,
    /// Times the consumer had vanished and was re-created.
    pub consumers_recreated: Counter,
    /// Billing periods by state (`open`, `closed`).
    pub billing_periods: Family<Labels, Gauge>,
    /// ERP documents by posting status (`posted`, `failed`, `pending`).
    pub erp_documents: Family<Labels, Gauge>,
    /// Rows with a non-zero variance in the last reconciliation of each period.
    pub reconciliation_variances: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `meterflow_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meterflow");
        let m = Metrics {
            events_received: Counter::default(),
            events_accepted: Counter::default(),
            events_duplicate: Counter::default(),
            events_rejected: Family::default(),
            events_late: Family::default(),
            redeliveries: Counter::default(),
            consumer_lag: Gauge::default(),
            committed_sequence: Gauge::default(),
            partition_committed_sequence: Family::default(),
            partition_consumer_lag: Family::default(),
            stream_last_sequence: Gauge::default(),
            watermark_age: Family::default(),
            open_windows: Gauge::default(),
            catalog_revision: Gauge::default(),
            // 1 ms to ~33 s.
            commit_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 10 ms to ~5.5 min.
            commit_interval: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            commits: Counter::default(),
            summary_rows: Counter::default(),
            parquet_files: Counter::default(),
            parquet_bytes: Counter::default(),
            dlq_depth: Gauge::default(),
            dlq_entries: Family::default(),
            dlq_oldest_age: Family::default(),
            consumers_recreated: Counter::default(),
            billing_periods: Family::default(),
            erp_documents: Family::default(),
            reconciliation_variances: Family::default(),
            registry: Registry::default(),
        };
        m.register_pipeline(&mut registry);
        m.register_billing(&mut registry);
        Metrics { registry, ..m }
    }

    /// The metering side: events, commits, progress.
    fn register_pipeline(&self, r: &mut Registry) {
        let m = self;
        r.register("events_received", "Events decoded from live messages", m.events_received.clone());
        r.register("events_accepted", "Events accepted and counted (first sightings)", m.events_accepted.clone());
        r.register(
            "events_duplicate",
            "Events dropped as duplicates of an earlier (source, id)",
            m.events_duplicate.clone(),
        );
        r.register("events_rejected", "Events sent to the DLQ, by reason code", m.events_rejected.clone());
        r.register(
            "events_late",
            "Accepted events that arrived after their window or billing period closed, by meter",
            m.events_late.clone(),
        );
        r.register(
            "redeliveries",
            "Messages delivered again while in hand or committed (dropped)",
            m.redeliveries.clone(),
        );
        r.register(
            "consumer_lag_messages",
            "Usage stream last sequence minus committed sequence",
            m.consumer_lag.clone(),
        );
        r.register(
            "committed_sequence",
            "Last stream sequence committed to usage_summaries",
            m.committed_sequence.clone(),
        );
        r.register("stream_last_sequence", "Last sequence in the usage stream", m.stream_last_sequence.clone());
        r.register(
            "partition_committed_sequence",
            "On a partitioned stream: the last stream sequence each partition this worker owns committed",
            m.partition_committed_sequence.clone(),
        );
        r.register(
            "partition_consumer_lag_messages",
            "On a partitioned stream: each owned partition's last sequence minus its committed sequence",
            m.partition_consumer_lag.clone(),
        );
        r.register_with_unit(
            "watermark_age",
            "Wall-clock time minus the meter's event-time watermark",
            Unit::Seconds,
            m.watermark_age.clone(),
        );
        r.register("open_windows", "Aggregation windows held in memory", m.open_windows.clone());
        r.register(
            "catalog_revision",
            "The catalog revision the pipeline decides new messages under",
            m.catalog_revision.clone(),
        );
        r.register_with_unit(
            "commit_duration",
            "Duration of one commit (DLQ publish and the Delta commits)",
            Unit::Seconds,
            m.commit_duration.clone(),
        );
        r.register_with_unit("commit_interval", "Time between two commits", Unit::Seconds, m.commit_interval.clone());
        r.register("commits", "Commits of usage_summaries", m.commits.clone());
        r.register("summary_rows_written", "Rows appended to usage_summaries", m.summary_rows.clone());
        r.register("parquet_files_written", "Parquet data files written to usage_summaries", m.parquet_files.clone());
        r.register_with_unit(
            "parquet_written",
            "Bytes of Parquet data files written to usage_summaries",
            Unit::Bytes,
            m.parquet_bytes.clone(),
        );
        r.register("dlq_depth_messages", "Messages in the dead-letter stream", m.dlq_depth.clone());
        r.register("dlq_entries", "DLQ entries by reject reason (the exception queue)", m.dlq_entries.clone());
        r.register_with_unit(
            "dlq_oldest_age",
            "Age of the oldest DLQ entry of a reject reason",
            Unit::Seconds,
            m.dlq_oldest_age.clone(),
        );
        r.register(
            "consumers_recreated",
            "Times the vanished durable consumer was re-created",
            m.consumers_recreated.clone(),
        );
    }

    /// The billing side: periods, ERP documents, reconciliation.
    fn register_billing(&self, r: &mut Registry) {
        let m = self;
        r.register("billing_periods", "Billing periods by state (open, closed)", m.billing_periods.clone());
        r.register(
            "erp_documents",
            "ERP documents by posting status (posted, failed, pending)",
            m.erp_documents.clone(),
        );
        r.register(
            "reconciliation_variance_rows",
            "Rows with a non-zero variance in the last reconciliation of the period",
            m.reconciliation_variances.clone(),
        );
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            out = format!("# metrics could not be encoded: {e}\n# EOF\n");
        }
        out
    }

    /// The OpenMetrics text of every metric and those of `extra` (another component's
    /// registry, such as the HTTP API's), as one document.
    pub fn encode_with(&self, extra: &Registry) -> String {
        encode_registries(&[&self.registry, extra])
    }
}

/// The OpenMetrics text of several registries, as one document.
pub fn encode_registries(registries: &[&Registry]) -> String {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut out = String::new();
    for r in registries {
        if let Err(e) = encode_registry(&mut out, r) {
            return format!("# metrics could not be encoded: {e}\n# EOF\n");
        }
    }
    if let Err(e) = encode_eof(&mut out) {
        return format!("# metrics could not be encoded: {e}\n# EOF\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_prefixed_typed_and_labelled() {
        let m = Metrics::new();
        m.events_accepted.inc_by(3);
        m.events_rejected.get_or_create(&label("reason", "invalid_json")).inc();
        m.commit_duration.observe(0.02);
        let text = m.encode();
        assert!(text.contains("# TYPE meterflow_events_accepted counter"), "{text}");
        assert!(text.contains("meterflow_events_accepted_total 3"), "{text}");
        assert!(text.contains("meterflow_events_rejected_total{reason=\"invalid_json\"} 1"), "{text}");
        assert!(text.contains("# TYPE meterflow_commit_duration_seconds histogram"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}

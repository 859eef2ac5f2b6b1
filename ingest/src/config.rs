//! The `[nats]` section of the config file.

use serde::Deserialize;
use std::time::Duration;

/// Default name of the usage stream.
pub const DEFAULT_STREAM: &str = "USAGE";
/// Default name of the dead-letter stream.
pub const DEFAULT_DLQ_STREAM: &str = "USAGE_DLQ";

const fn default_fetch_batch() -> usize {
    10_000
}
const fn default_fetch_wait_ms() -> u64 {
    100
}
const fn default_ack_wait_s() -> u64 {
    60
}
const fn default_max_age_days() -> u64 {
    90
}
fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_stream() -> String {
    DEFAULT_STREAM.into()
}
fn default_subjects() -> Vec<String> {
    vec!["usage.>".into()]
}
fn default_dlq_stream() -> String {
    DEFAULT_DLQ_STREAM.into()
}
fn default_dlq_subject_prefix() -> String {
    "usage_dlq".into()
}
fn default_consumer() -> String {
    "meterflow".into()
}

/// How meterflow reaches JetStream and which streams it uses.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL (`nats://host:port`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Usage stream name; created if absent.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subjects of the usage stream when meterflow creates it.
    #[serde(default = "default_subjects")]
    pub subjects: Vec<String>,
    /// Retention of the usage stream when meterflow creates it, in days. It must cover the time
    /// between two state snapshots; the default leaves ample room for replays and audits.
    #[serde(default = "default_max_age_days")]
    pub max_age_days: u64,
    /// Dead-letter stream name; created if absent.
    #[serde(default = "default_dlq_stream")]
    pub dlq_stream: String,
    /// Rejects are published to `<prefix>.<reason>`; must not overlap the usage subjects.
    #[serde(default = "default_dlq_subject_prefix")]
    pub dlq_subject_prefix: String,
    /// Durable consumer name.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// Most messages asked for in one pull.
    #[serde(default = "default_fetch_batch")]
    pub fetch_batch: usize,
    /// How long one pull waits for messages, in milliseconds.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u64,
    /// Consumer ack wait, in seconds: must exceed the longest commit.
    #[serde(default = "default_ack_wait_s")]
    pub ack_wait_s: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: default_url(),
            stream: default_stream(),
            subjects: default_subjects(),
            max_age_days: default_max_age_days(),
            dlq_stream: default_dlq_stream(),
            dlq_subject_prefix: default_dlq_subject_prefix(),
            consumer: default_consumer(),
            fetch_batch: default_fetch_batch(),
            fetch_wait_ms: default_fetch_wait_ms(),
            ack_wait_s: default_ack_wait_s(),
        }
    }
}

impl NatsConfig {
    /// Pull wait as a duration.
    pub fn fetch_wait(&self) -> Duration {
        Duration::from_millis(self.fetch_wait_ms.max(1))
    }
}

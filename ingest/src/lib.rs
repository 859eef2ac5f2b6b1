//! # meterflow-ingest: from JetStream to accepted, deduplicated, enriched events
//!
//! ```text
//!   USAGE stream (usage.>) ──Broker::fetch──► messages (stream seq, publish time, bytes)
//!        decode + validate (meterflow-schemas) ─┬─► Broker::publish_rejects ──► USAGE_DLQ
//!        enrich: subject → Customer (Directory) ─┤   (unknown_subject, …)
//!        dedup (ShardedDedup over DedupIndex) ───┘
//!                           │ first sightings only
//!                           ▼
//!                      aggregator
//! ```
//!
//! * [`Broker`] owns every JetStream interaction: the `USAGE` stream (limits retention, so the
//!   pipeline can re-read from its own committed sequence), the `USAGE_DLQ` stream, and a
//!   durable pull consumer that is re-positioned at start-up to the sequence the pipeline's own
//!   state says comes next, never the broker's ack floor.
//! * [`DedupIndex`] is the pure dedup decision over fingerprints of `(source, id)` (100 bits
//!   kept, 12-byte slots, at most 16 bytes per remembered id),
//!   remembered for a horizon measured in stream-publish days so that a replay decides exactly
//!   as the first pass did. [`ShardedDedup`] spreads it over worker threads by key, talking over
//!   crossbeam channels, without locks.
//! * [`Directory`] maps usage subjects to customers from reference data files; [`Directory::enrich`]
//!   is the enrichment rule (unknown subjects and the publish-subject restriction rejected).

pub mod board;
mod broker;
mod config;
mod dedup;
pub mod dlq;
mod enrich;
mod lease;
pub mod partition;

pub use board::{Board, PartitionRecord};
pub use broker::StreamFacts;
pub use broker::{Broker, Fetched, PendingPull, RejectEnvelope};
pub use config::{NatsAuth, NatsConfig, Secret, DEFAULT_DLQ_STREAM, DEFAULT_STREAM};
pub use dedup::{fingerprint, table, DedupIndex, ShardedDedup, BYTES_PER_SLOT};
pub use dlq::{DlqEntry, QueuedReason, Selection};
pub use enrich::{subject_matches, Customer, CustomerConfig, Directory, SubjectConfig, SubscriptionConfig};
pub use lease::{lease_key, Lease};

/// Errors of the ingest stage.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The NATS server cannot be reached or refused the connection. Retrying can help once the
    /// server is up; check `nats.url` and credentials otherwise.
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    /// The `[nats]` authentication or TLS settings do not fit together, or a secret or
    /// certificate file cannot be read. Fix the config; retrying cannot help. Never holds a
    /// secret value.
    #[error("invalid [nats] settings: {0}")]
    NatsConfig(String),
    /// A JetStream request (stream or consumer management, fetch, publish) failed. Usually
    /// transient (server restart, timeout); retried by the caller.
    #[error("JetStream {operation} failed: {message}")]
    JetStream { operation: &'static str, message: String },
    /// The stream exists with settings meterflow cannot work with (for example work-queue
    /// retention). Fix the stream; retrying cannot help.
    #[error("stream {stream}: {message}")]
    StreamConfig { stream: String, message: String },
    /// Reference data is missing, unreadable or inconsistent. Fix the file; retrying cannot help.
    #[error("reference data {path}: {message}")]
    Reference { path: String, message: String },
    /// A dedup worker thread stopped (it panicked or was shut down). Not retryable in-process.
    #[error("dedup shard {0} stopped")]
    ShardStopped(usize),
    /// This process no longer holds the writer lease of its stream (another process took it
    /// over, or it could not be renewed in time). Not retryable in-process: stop without
    /// acknowledging; a restart waits as a standby.
    #[error("writer lease lost: {0}")]
    LeaseLost(String),
    /// The writer lease was not renewed for most of its time to live (a slow or restarting
    /// broker): no commit until it is. Retryable.
    #[error("writer lease not renewed in time: {0}")]
    LeaseStale(String),
    /// The next message is larger than `[nats] fetch_max_bytes`: no pull of that size can
    /// deliver it. The caller reads it with [`Broker::request_large`].
    #[error("the next message is larger than [nats] fetch_max_bytes")]
    Oversized,
    /// A dedup snapshot could not be decoded. The snapshot is ignored and the state rebuilt.
    #[error("dedup snapshot is corrupt: {0}")]
    CorruptSnapshot(String),
}

/// Result alias for this crate.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;

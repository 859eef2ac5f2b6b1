//! The HTTP API and the Postgres-protocol SQL endpoint of meterflow.
//!
//! ```text
//!   product services ──POST /api/v1/events──► auth (keys) ─► decode + ownership check ─► JetStream
//!                                              (bearer key)   (the pipeline's decoder,     (acked
//!                                                              the catalog's directory)    before 204)
//!   billing tools ──GET /api/v1/meters/..., /customers/...──► committed Delta tables (DataFusion)
//!   BI tools ──Postgres wire (SCRAM, or cleartext in TLS)──► read-only DataFusion sessions,
//!                                                            filtered to the key's customers
//!   operators ──GET /, /metrics, /api/status──► the operations page of `meterflow run`
//! ```
//!
//! * [`server`]: the axum router, its tower middleware (body limit, timeouts, tracing), and
//!   serving; [`state`]: what handlers share (broker, key store, catalog and table caches);
//! * [`ingest`]: OpenMeter-compatible event ingestion;
//! * [`meters`]: OpenMeter-compatible meter listing and queries, folded from the tables by
//!   pure functions ([`meters::fold`]);
//! * [`customers`]: a customer's usage so far and the upcoming invoice;
//! * [`keys`]: API keys (hashed, bound to customers) in a JetStream key-value bucket;
//! * [`pg`]: the Postgres wire protocol over the same read-only SQL as `meterflow sql`;
//! * [`problem`]: RFC 9457 problem documents, the shape of every error.
//!
//! The OpenAPI 3.1 description is `api/openapi.yaml`, served at `/api/v1/openapi.yaml`.

pub mod customers;
pub mod ingest;
pub mod keys;
pub mod meters;
pub mod pg;
pub mod problem;
pub mod server;
pub mod state;

pub use keys::{ApiKey, KeyStore, Scope};
pub use problem::Problem;
pub use server::{router, serve};
pub use state::Api;

/// The OpenAPI 3.1 description of the HTTP API.
pub const OPENAPI_YAML: &str = include_str!("../openapi.yaml");

/// What can go wrong in the API's own machinery (requests get [`Problem`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The key store could not be read or written.
    #[error("{0}")]
    Keys(String),
    /// The broker could not be reached or refused an operation.
    #[error("broker: {0}")]
    Broker(String),
    /// An address could not be bound or a listener failed.
    #[error("{0}")]
    Listen(String),
    /// TLS files could not be read.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Result with [`ApiError`].
pub type Result<T> = std::result::Result<T, ApiError>;

//! # meterflow-sink: Delta Lake tables and read-only SQL
//!
//! ```text
//!   rated summary rows ──SummaryTable::commit(rows, through_seq)──► usage_summaries (Delta)
//!                                 │  one atomic Delta commit: Parquet files + the application
//!                                 │  transaction (app id "meterflow-pipeline", version = last
//!                                 │  stream sequence the commit covers)
//!                                 ▼
//!                     SummaryTable::committed_seq() ── where a restart resumes
//!
//!   StateStore: state snapshots (dedup + windows) named by the sequence they cover,
//!               written only after the commit that covers that sequence.
//!   sql::ReadOnlySql: DataFusion over the committed tables; DDL, DML and statements refused.
//! ```
//!
//! The Delta application transaction is the single source of truth for progress: the broker
//! is acknowledged only after a commit, but a restart resumes from the committed version, so an
//! ack that outlived a lost commit cannot lose data.

mod error;
mod fault_store;
mod periods;
mod rejections;
pub mod sql;
mod state;
mod table;

/// The Delta Lake crate the tables are written with (its `arrow` and `datafusion` versions).
pub use deltalake;
pub use error::SinkError;
pub use periods::{ClosedPeriod, PeriodTable, PERIODS_TABLE};
pub use rejections::{RejectionRow, RejectionTable, DUPLICATES_TABLE, REJECTIONS_TABLE};
pub use state::StateStore;
// The SummaryRow → Arrow step of every commit, public so `benches/benches/parquet_encode.rs`
// can measure it on its own.
pub use table::encode_rows;
pub use table::{
    open_or_create_table, summaries_schema, table_url, RowKind, SummaryRow, SummaryTable, APP_ID, SUMMARIES_TABLE,
};

/// Result alias for this crate.
pub type Result<T, E = SinkError> = std::result::Result<T, E>;

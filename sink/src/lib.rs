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
//!   TableRoot: where the tables and snapshots live: a local directory, or a prefix in an
//!               S3-compatible bucket (commits by conditional put).
//!   SyncStore: the local store every table writer uses; each write is fsynced before it
//!               returns, so a returned commit (and the ack after it) is on disk.
//!   vacuum_tables: VACUUM that keeps every file a version still in the log needs.
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
mod storage;
mod summary_rows;
mod sync_store;
mod table;
mod vacuum;

/// The Delta Lake crate the tables are written with (its `arrow` and `datafusion` versions).
pub use deltalake;
pub use error::SinkError;
pub use periods::{ClosedPeriod, PeriodTable, PERIODS_TABLE};
pub use rejections::{RejectionRow, RejectionTable, DUPLICATES_TABLE, REJECTIONS_TABLE};
pub use state::{StateStore, STATE_FOLDER};
pub use storage::{open_for_write, open_table_for_write, table_url, ObjectOptions, TableRoot};
pub use sync_store::SyncStore;
pub use vacuum::{vacuum_tables, Vacuumed};
// The SummaryRow → Arrow step of every commit, public so `benches/benches/parquet_encode.rs`
// can measure it on its own.
pub use summary_rows::{encode_rows, summaries_schema, unscaled, RowKind, SummaryRow, AMOUNT_SCALE, QUANTITY_SCALE};
pub use table::{
    open_or_create_table, CommitRange, Committed, ProgressIds, SummaryTable, APP_ID, CATALOG_APP_ID, STREAM_APP_ID,
    SUMMARIES_TABLE,
};

pub use table::SUMMARIES_RETENTION;

/// Result alias for this crate.
pub type Result<T, E = SinkError> = std::result::Result<T, E>;

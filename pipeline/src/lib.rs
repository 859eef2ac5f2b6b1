//! # meterflow-pipeline: the stages wired together
//!
//! The layers, from the bottom up (each uses only those below it):
//!
//! * [`config`]: the config file, `METERFLOW_<SECTION>__<KEY>` overrides, reference data;
//! * [`catalog`]: the live catalog: reference data of a revision, checked changes, the first
//!   import of the reference files;
//! * [`stats`]: what a run counts and how it ends;
//! * [`checks`]: start-up checks of the stream against the tables' progress;
//! * [`status`]: the status of a data directory and stream, read from the tables and broker;
//! * [`ops`]: Prometheus metrics and the operations page's live state;
//! * [`events`]: the internal events, one type per fact counted, each updating the run's
//!   statistics, the metrics and the page's totals in one place;
//! * [`stages`]: the core stages over a batch of messages (decode, enrich, dedup, aggregate,
//!   rate), pure apart from the internal events they emit;
//! * [`partitions`]: cluster-wide facts of a partitioned stream (period closes, shares);
//! * [`run`]: the [`Pipeline`]: start-up, the run loop and the commit protocol;
//! * [`workers`]: a worker of a partitioned stream, one pipeline per partition it owns.

pub mod catalog;
pub mod checks;
pub mod config;
pub mod events;
#[cfg(test)]
mod golden_sql;
pub mod ops;
pub mod partitions;
pub mod run;
pub mod stages;
pub mod stats;
pub mod status;
pub mod workers;

pub use checks::{check_retention, check_stream, StreamVerdict};
pub use events::Instruments;
pub use run::{Pipeline, StartOptions};
pub use stages::{Input, Stages};
pub use stats::{RunOptions, RunStats};
pub use workers::{run_worker, WorkerStats};

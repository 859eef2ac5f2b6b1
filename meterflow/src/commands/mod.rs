//! The commands beyond `run`, each over the pipeline library and the stage crates:
//!
//! * [`api`]: `meterflow serve` and `meterflow api-key`, and the API inside `meterflow run`;
//! * [`catalog`]: `meterflow catalog apply`, `show`, `history`: the live catalog;
//! * [`finance`]: `meterflow invoices`, `post`, `reconcile`;
//! * [`rerate`]: `meterflow rerate`, price corrections as adjustment rows;
//! * [`trace`]: `meterflow trace`, one event's lineage to its invoice lines and ERP postings;
//! * [`dlq`]: `meterflow dlq list`, `show`, `replay`: the exception queue and its redrive;
//! * [`demo`]: `meterflow demo`, a local broker, a workload and the whole pipeline end to end.

pub mod api;
pub mod catalog;
pub mod demo;
mod demo_api;
mod demo_onboard;
pub mod dlq;
pub mod finance;
pub mod rerate;
pub mod trace;

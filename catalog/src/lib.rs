//! The live catalog: customers (with the usage subjects they own and their subscriptions) and
//! price plans, kept as a sequence of revisions on a JetStream stream beside the usage stream.
//!
//! ```text
//!  meterflow catalog apply FILE ─► read_records (TOML, JSON, CSV + column mapping) ─► Records
//!    ─► ChangeSet { author, at, source, comment, records }
//!    ─► Catalog::with (fold onto the latest revision) ─► check_change (the rules between two
//!       revisions) + the pipeline's full check (meterflow_pipeline::catalog)
//!    ─► CatalogStore::append(change set, expected revision) ─► revision N = its stream sequence
//!  meterflow run ─► CatalogStore::catalog_at(N): the fold of change sets 1..=N ─► Reference
//! ```
//!
//! A revision is the stream sequence of the change set that made it, so revision N is always
//! the same catalog: the stream refuses deletes and purges, and an append names the revision
//! it was checked against (two concurrent changes cannot both land on the same base). Each
//! change set upserts records by id: a customer or plan in it replaces the one with that id,
//! or is added. Nothing is ever deleted: a customer's history (periods, invoices) outlives it.

mod error;
mod import;
mod model;
mod store;

pub use error::CatalogError;
pub use import::{read_records, CsvMapping, CSV_FIELDS};
pub use model::{check_change, Catalog, Change, ChangeSet, Kind, Records, Revision};
pub use store::CatalogStore;

/// Results of this crate.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

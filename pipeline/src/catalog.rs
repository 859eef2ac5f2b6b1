//! The live catalog, as the pipeline and the commands use it: the reference data of a catalog
//! revision, the checks a change passes before it is appended, and the first import of the
//! reference files.
//!
//! How a decision is tied to a revision (the run loop, `run/mod.rs`): `meterflow run` decides
//! every message under one revision at a time and records it with each commit (the
//! `meterflow-catalog` application transaction of `usage_summaries`) and in each state
//! snapshot. It moves to a newer revision only between commits, and only after saving a
//! snapshot at the committed sequence that names the new revision. A replay starts from a
//! snapshot and decides the messages after it under the snapshot's revision; no message after
//! a snapshot was decided under another one (a switch always writes a new snapshot first), so a
//! replay decides as the first pass did, whatever changed in the catalog since.

use anyhow::{Context, Result};
use meterflow_catalog::{check_change, Catalog, CatalogStore, Change, ChangeSet, Revision};
use meterflow_ingest::Broker;

use crate::config::{Config, Reference};

/// Opens (creating when absent) the catalog stream named in the config.
pub async fn open_store(broker: &Broker, config: &Config) -> Result<CatalogStore> {
    let store = CatalogStore::open(
        broker.jetstream().clone(),
        &config.nats.catalog_stream,
        &config.nats.catalog_subject,
        config.nats.replicas,
    )
    .await?;
    Ok(store)
}

/// The reference data of `catalog` as of `revision`.
pub fn reference_at(config: &Config, catalog: &Catalog, revision: Revision) -> Result<Reference> {
    Reference::of_catalog(config, catalog, &format!("catalog revision {revision}"))
}

/// Imports the reference files named by the config into an empty catalog, as revision 1. When
/// the catalog already has revisions, the files are not read again (changes go through
/// `meterflow catalog apply`); a warning says when they differ from it. Returns the newest
/// revision and the catalog as of it.
pub async fn bootstrap(store: &CatalogStore, config: &Config) -> Result<(Revision, Catalog)> {
    let (revision, catalog) = store.latest().await?;
    let files = format!("{} and {}", config.reference.customers.display(), config.reference.plans.display());
    if revision > 0 {
        if let Ok(records) = Reference::file_records(config) {
            let differ: Vec<String> =
                catalog.diff(&records).iter().filter(|c| c.is_change()).map(|c| c.to_string()).collect();
            if !differ.is_empty() {
                tracing::warn!(
                    revision,
                    differences = %differ.join("; "),
                    "the reference files {files} differ from the catalog; they are only imported into an empty \
                     catalog: apply them with `meterflow catalog apply`"
                );
            }
        }
        return Ok((revision, catalog));
    }
    let records = Reference::file_records(config)?;
    let change = ChangeSet {
        author: "meterflow (first start)".into(),
        at: chrono::Utc::now(),
        source: files,
        comment: Some("the reference files, imported into the empty catalog".into()),
        records,
    };
    match apply(store, config, change, false).await {
        Ok(applied) => tracing::info!(revision = applied.revision, "imported the reference files into the catalog"),
        // Another process imported them first: take what it wrote.
        Err(e) if is_conflict(&e) => {}
        Err(e) => return Err(e),
    }
    Ok(store.latest().await?)
}

fn is_conflict(e: &anyhow::Error) -> bool {
    e.chain().any(|c| matches!(c.downcast_ref(), Some(meterflow_catalog::CatalogError::Conflict { .. })))
}

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// The revision the change was checked against.
    pub base: Revision,
    /// What it does to each record it names.
    pub changes: Vec<Change>,
    /// The revision it became; `None` for a dry run or when it changes nothing.
    pub revision: Option<Revision>,
}

/// Checks `change` against the newest revision and, unless `dry_run` or it changes nothing,
/// appends it as the next revision. The checks: each record's own rules, the rules between two
/// revisions ([`check_change`]), and the whole catalog as reference data under the config's
/// meters (no overlapping subscriptions or subject ownership, every subscribed plan exists
/// and prices in the customer's currency, every meter priced). A refused change names the
/// record and the rule, and nothing is appended.
pub async fn apply(store: &CatalogStore, config: &Config, change: ChangeSet, dry_run: bool) -> Result<Applied> {
    change.records.check_unique(&change.source)?;
    let (base, catalog) = store.latest().await?;
    let changes = catalog.diff(&change.records);
    let next = catalog.with(&change.records);
    let refused = || format!("refused; nothing applied (the catalog stays at revision {base})");
    check_change(&catalog, &next).with_context(refused)?;
    reference_at(config, &next, base + 1).with_context(refused)?;
    if dry_run || !changes.iter().any(Change::is_change) {
        return Ok(Applied { base, changes, revision: None });
    }
    let revision = store.append(&change, base).await?;
    Ok(Applied { base, changes, revision: Some(revision) })
}

/// The reference data in force now, for the commands that bill, rate and trace: connects,
/// imports the reference files into an empty catalog, and reads the newest revision.
pub async fn current_reference(config: &Config) -> Result<(Revision, Reference)> {
    let broker = Broker::connect(config.nats.clone()).await.context("the catalog is kept on the broker")?;
    let store = open_store(&broker, config).await?;
    let (revision, catalog) = bootstrap(&store, config).await?;
    Ok((revision, reference_at(config, &catalog, revision)?))
}

//! `meterflow catalog`: change the live catalog from a file (`apply`), print a revision
//! (`show`), list every change (`history`). A running pipeline picks a new revision up within
//! seconds (see `meterflow_pipeline::catalog`).

use anyhow::{Context, Result};
use meterflow_catalog::{read_records, CatalogStore, ChangeSet, CsvMapping};
use meterflow_ingest::Broker;
use meterflow_pipeline::catalog;
use meterflow_pipeline::config::Config;
use std::fmt::Write;
use std::path::PathBuf;

/// What `meterflow catalog apply` was asked to do.
#[derive(Debug)]
pub struct ApplyOptions {
    /// The file: `.toml` or `.json` in the reference-data format, or a `.csv` of accounts.
    pub file: PathBuf,
    /// Check and print the changes; append nothing.
    pub dry_run: bool,
    /// Who makes the change (default: the `USER` environment variable).
    pub author: Option<String>,
    /// Why.
    pub comment: Option<String>,
    /// CSV column mapping, `field=Header` pairs.
    pub columns: Vec<String>,
}

async fn open(config: &Config) -> Result<CatalogStore> {
    let broker = Broker::connect(config.nats.clone()).await.context("the catalog is kept on the broker")?;
    catalog::open_store(&broker, config).await
}

/// `meterflow catalog apply`: checks the file's records against the newest revision and
/// appends them as the next one (an empty catalog first takes in the reference files).
pub async fn apply(config: &Config, opts: &ApplyOptions) -> Result<String> {
    let store = open(config).await?;
    let (_, current) = catalog::bootstrap(&store, config).await?;
    let mapping = CsvMapping::parse(&opts.columns)?;
    let records = read_records(&opts.file, &mapping, &current)?;
    if records.is_empty() {
        anyhow::bail!("{}: no [[customers]] or [[plans]] in it; nothing to apply", opts.file.display());
    }
    let change = ChangeSet {
        author: opts.author.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "unknown".into()),
        at: chrono::Utc::now(),
        source: opts.file.display().to_string(),
        comment: opts.comment.clone(),
        records,
    };
    let applied = catalog::apply(&store, config, change, opts.dry_run).await?;
    let mut out = String::new();
    for c in &applied.changes {
        writeln!(out, "{c}")?;
    }
    match applied.revision {
        Some(revision) => writeln!(out, "applied as catalog revision {revision} (was {})", applied.base)?,
        None if opts.dry_run => {
            writeln!(out, "dry run: nothing applied (the catalog stays at revision {})", applied.base)?
        }
        None => writeln!(out, "nothing changes: the catalog stays at revision {}", applied.base)?,
    }
    Ok(out)
}

/// Output of `meterflow catalog show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShowFormat {
    /// The reference-data TOML format (what `apply` reads back).
    Toml,
    /// The same records as JSON.
    Json,
}

/// `meterflow catalog show`: the catalog as of `revision` (default: the newest).
pub async fn show(config: &Config, revision: Option<u64>, format: ShowFormat) -> Result<String> {
    let store = open(config).await?;
    let latest = store.revision().await?;
    if latest == 0 {
        anyhow::bail!(
            "the catalog is empty: `meterflow run` or `meterflow catalog apply` imports the reference files into it first"
        );
    }
    let revision = revision.unwrap_or(latest);
    let records = store.catalog_at(revision).await?.records();
    Ok(match format {
        ShowFormat::Toml => {
            format!("# meterflow catalog, revision {revision} of {latest}\n{}", toml::to_string(&records)?)
        }
        ShowFormat::Json => format!("{}\n", serde_json::to_string_pretty(&records)?),
    })
}

/// `meterflow catalog history`: every revision, oldest first: when, who, from where, what.
pub async fn history(config: &Config) -> Result<String> {
    let store = open(config).await?;
    let latest = store.revision().await?;
    let mut out = String::new();
    let mut catalog = meterflow_catalog::Catalog::default();
    for (revision, change) in store.change_sets(0, latest).await? {
        let changes = catalog.diff(&change.records);
        catalog.apply(&change.records);
        let what: Vec<String> = changes.iter().filter(|c| c.is_change()).map(ToString::to_string).collect();
        writeln!(
            out,
            "revision {revision}  {}  by {}  from {}{}",
            change.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            change.author,
            change.source,
            change.comment.as_deref().map(|c| format!("  ({c})")).unwrap_or_default()
        )?;
        for w in what {
            writeln!(out, "  {w}")?;
        }
    }
    if out.is_empty() {
        out.push_str("the catalog is empty\n");
    }
    Ok(out)
}

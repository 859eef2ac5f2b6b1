//! `meterflow vacuum`: deletes the data files that no version still in a table's log needs.
//!
//! Compaction (and any rewrite) marks the files it replaces as removed at a time; a VACUUM
//! deletes removed files older than its retention. A finalized invoice is reproduced by reading
//! `usage_summaries` as of the version its period was sealed at, months later, so a file is
//! only safe to delete once no version the log can still time-travel to references it. Here the
//! retention of each table is therefore the longer of its `delta.deletedFileRetentionDuration`
//! and its `delta.logRetentionDuration` (never shorter than either), and Delta's own check
//! refuses anything shorter than the first. `usage_summaries` is created with both at 400 days
//! ([`crate::SUMMARIES_RETENTION`]), so another engine's VACUUM that honours the table property
//! (Spark, delta-rs, Python `deltalake`) keeps the same files.
//!
//! Only files the log marks as removed are considered (Delta's "lite" vacuum): unreferenced files
//! left by a crash before a commit are left alone.

use chrono::Duration;
use deltalake::table::config::TablePropertiesExt as _;

use crate::storage::{open_table_for_write, TableRoot};
use crate::{Result, SinkError};

/// What a vacuum did to one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    /// The table (its folder under the data directory).
    pub table: String,
    /// Removed files older than this were deleted (or, in a dry run, would be).
    pub retention: std::time::Duration,
    /// The files deleted, or that a dry run would delete, relative to the table folder.
    pub files: Vec<String>,
    /// True when nothing was deleted because this was a dry run.
    pub dry_run: bool,
}

/// Vacuums every table under `root` (those with a commit), each with its own retention
/// (see the module comment). With `dry_run`, lists what would be deleted and deletes nothing.
/// Safe while `meterflow run` runs: only files no current or retained version uses are touched.
pub async fn vacuum_tables(root: impl Into<TableRoot>, dry_run: bool) -> Result<Vec<Vacuumed>> {
    let root = root.into();
    let mut out = Vec::new();
    for name in root.table_names().await? {
        let err = |e| SinkError::Delta { table: name.clone(), source: e };
        let table = open_table_for_write(&root, &name).await?;
        let retention = {
            let config = table.snapshot().map_err(err)?.table_config();
            config.deleted_file_retention_duration().max(config.log_retention_duration())
        };
        let period = Duration::from_std(retention).map_err(|e| SinkError::Encode {
            table: name.clone(),
            message: format!("retention {retention:?} out of range: {e}"),
        })?;
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(period)
            .with_enforce_retention_duration(true)
            .with_dry_run(dry_run)
            .await
            .map_err(err)?;
        let mut files = metrics.files_deleted;
        files.sort();
        out.push(Vacuumed { table: name, retention, files, dry_run });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::row;
    use crate::table::SummaryTable;
    use std::path::Path;

    /// Rewrites the deletion time of every file removed in the log of `table` to `days` ago: the
    /// clock a vacuum reads. Compacting "a month ago" without waiting a month.
    fn backdate_removals(table: &Path, days: i64) {
        let shift = days * 86_400_000;
        for entry in std::fs::read_dir(table.join("_delta_log")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = Vec::new();
            for line in text.lines() {
                let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
                if let Some(t) = v.pointer_mut("/remove/deletionTimestamp") {
                    *t = (t.as_i64().unwrap() - shift).into();
                }
                lines.push(serde_json::to_string(&v).unwrap());
            }
            std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        }
    }

    /// `usage_summaries` with three one-row versions (1..=3) compacted into one file (version 4).
    async fn compacted_table(dir: &Path) {
        SummaryTable::open_or_create(dir).await.unwrap();
        for seq in 1..=3 {
            let batch = crate::encode_rows(&[row("1", "0.0002", seq)], chrono::Utc::now()).unwrap();
            let table = crate::open_table_for_write(dir, crate::SUMMARIES_TABLE).await.unwrap();
            table.write(vec![batch]).with_save_mode(deltalake::protocol::SaveMode::Append).await.unwrap();
        }
        let mut t = SummaryTable::open_or_create(dir).await.unwrap();
        assert_eq!(t.compact().await.unwrap(), (3, 1));
    }

    /// SUM(quantity) of `usage_summaries` as of `version` (reads every file of that version).
    async fn quantity_at(dir: &Path, version: u64) -> String {
        let url = crate::table_url(dir, crate::SUMMARIES_TABLE).unwrap();
        let old = deltalake::open_table_with_version(url, version).await.unwrap();
        let ctx = deltalake::datafusion::prelude::SessionContext::new();
        ctx.register_table("t", old.table_provider().await.unwrap()).unwrap();
        let b = ctx.sql("SELECT SUM(quantity) AS q FROM t").await.unwrap().collect().await.unwrap();
        crate::sql::render(&b, crate::sql::Format::Csv).unwrap()
    }

    #[tokio::test]
    async fn files_replaced_a_month_ago_are_kept_for_the_versions_that_still_need_them() {
        let dir = tempfile::tempdir().unwrap();
        compacted_table(dir.path()).await;
        backdate_removals(&dir.path().join(crate::SUMMARIES_TABLE), 30);
        let done = vacuum_tables(dir.path(), false).await.unwrap();
        let summaries = done.iter().find(|v| v.table == crate::SUMMARIES_TABLE).unwrap();
        assert_eq!(summaries.retention, std::time::Duration::from_secs(400 * 86_400));
        assert!(summaries.files.is_empty(), "{:?}", summaries.files);
        // The versions before the compaction are still readable, file for file.
        assert_eq!(quantity_at(dir.path(), 2).await, "q\n2.000000000\n");
    }

    #[tokio::test]
    async fn files_removed_longer_ago_than_the_retention_are_deleted_and_a_dry_run_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        compacted_table(dir.path()).await;
        let table = dir.path().join(crate::SUMMARIES_TABLE);
        backdate_removals(&table, 401);
        let dry = vacuum_tables(dir.path(), true).await.unwrap();
        let listed = &dry.iter().find(|v| v.table == crate::SUMMARIES_TABLE).unwrap().files;
        assert_eq!(listed.len(), 3, "{listed:?}");
        assert!(listed.iter().all(|f| table.join(f).exists()), "a dry run deletes nothing");
        let done = vacuum_tables(dir.path(), false).await.unwrap();
        let deleted = &done.iter().find(|v| v.table == crate::SUMMARIES_TABLE).unwrap().files;
        assert_eq!(deleted, listed);
        assert!(deleted.iter().all(|f| !table.join(f).exists()));
    }
}

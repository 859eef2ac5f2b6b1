//! The `usage_summaries` Delta table.

use chrono::Utc;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{StructField, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError, TableProperty};
use std::path::Path;

use crate::storage::TableRoot;
use crate::summary_rows::{delta_columns, encode_rows, seq_i64, SummaryRow};
use crate::{Result, SinkError};

/// Name of the rated summaries table (and of its folder under the data directory).
pub const SUMMARIES_TABLE: &str = "usage_summaries";
/// Application id of the Delta application transaction that records stream progress.
pub const APP_ID: &str = "meterflow-pipeline";
/// Application id of the transaction that records which stream incarnation the progress
/// belongs to (version = the stream's creation time in Unix microseconds).
pub const STREAM_APP_ID: &str = "meterflow-stream";
/// Application id of the transaction that records the catalog revision the committed range was
/// decided under (version = the revision).
pub const CATALOG_APP_ID: &str = "meterflow-catalog";

/// Reopen the table handle after this many commits: delta-rs commit latency grows with the
/// lifetime of one handle.
const REOPEN_EVERY: u64 = 100;

/// The application transactions one writer records its progress in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressIds {
    /// The last stream sequence committed ([`APP_ID`], or `meterflow-p<p>` for partition p).
    pub seq: String,
    /// The stream's identity ([`STREAM_APP_ID`], or `meterflow-p<p>-stream`).
    pub stream: String,
    /// The catalog revision ([`CATALOG_APP_ID`], or `meterflow-p<p>-catalog`).
    pub catalog: String,
}

impl ProgressIds {
    /// The ids of the reader of the whole stream (`None`) or of partition `p`.
    pub fn of(partition: Option<u32>) -> ProgressIds {
        match partition {
            None => ProgressIds { seq: APP_ID.into(), stream: STREAM_APP_ID.into(), catalog: CATALOG_APP_ID.into() },
            Some(p) => ProgressIds {
                seq: format!("meterflow-p{p}"),
                stream: format!("meterflow-p{p}-stream"),
                catalog: format!("meterflow-p{p}-catalog"),
            },
        }
    }
}

/// The `usage_summaries` table with its stream checkpoint.
pub struct SummaryTable {
    /// Whose progress this handle records and reads.
    ids: ProgressIds,
    root: TableRoot,
    table: Option<DeltaTable>,
    commits_since_open: u64,
    /// True while `table` is the handle this writer's own last commit returned (its snapshot
    /// holds this writer's progress).
    own_handle: bool,
}

/// The stream range one commit covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitRange {
    /// The sequence this writer last committed (the table must still record it).
    pub after: u64,
    /// The last sequence the commit covers.
    pub through: u64,
    /// The identity of the stream the range belongs to (see [`SummaryTable::stream_identity`]).
    pub stream: Option<i64>,
    /// The catalog revision the range was decided under (see [`SummaryTable::catalog_revision`]).
    pub catalog: Option<u64>,
}

/// What [`SummaryTable::commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// This call wrote the commit, at this table version.
    Written(u64),
    /// An earlier attempt had committed the range (its call failed after the log entry was
    /// written); nothing was written again. The table's version now.
    AlreadyThere(u64),
}

impl Committed {
    /// The table version holding the range.
    pub fn version(self) -> u64 {
        match self {
            Committed::Written(v) | Committed::AlreadyThere(v) => v,
        }
    }
}

impl std::fmt::Debug for SummaryTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SummaryTable").field("root", &self.root).finish()
    }
}

fn delta_err(e: DeltaTableError) -> SinkError {
    SinkError::Delta { table: SUMMARIES_TABLE.into(), source: e }
}

/// How long `usage_summaries` keeps its log, and the files that compaction replaced: every
/// version a finalized invoice was sealed at stays readable this long (`meterflow invoice`
/// reproduces invoices from them), and a vacuum by any engine that honours the table's
/// `delta.deletedFileRetentionDuration` keeps their files.
pub const SUMMARIES_RETENTION: &str = "interval 400 days";

/// Opens the Delta table `name` under `data_dir` for writing, creating it with `columns` and
/// `properties` when absent. Every meterflow table is created through here, and the handle it
/// returns writes through [`SyncStore`](crate::sync_store::SyncStore) (fsync before a write
/// returns; see `sync_store.rs`).
///
/// An existing table gets any retention property of `properties` it holds shorter (or not at
/// all, so shorter by default): retention only ever grows here, an operator's longer setting
/// stays. This is how a table created by an older meterflow gets
/// `delta.deletedFileRetentionDuration` (see [`SummaryTable::open_or_create`]).
pub async fn open_or_create_table(
    root: impl Into<TableRoot>,
    name: &str,
    comment: &str,
    columns: Vec<StructField>,
    properties: Vec<(TableProperty, &str)>,
) -> Result<DeltaTable> {
    let root = root.into();
    let err = |e| SinkError::Delta { table: name.to_string(), source: e };
    // Another task or process may be creating the same table at this moment (the pipeline's
    // first start and its operations page's first refresh, or `meterflow status` beside a first
    // `meterflow run`): its log folder can exist before its first commit, and of two creators
    // one loses the race to write version 0. Open once a commit exists; create while none does;
    // a create that lost to another creator opens the winner's table on the next turn.
    // Within this process creators take turns, so a table is created once; across processes
    // the loser of the race to version 0 either fails (and opens on the next turn) or commits
    // the same schema as version 1 (harmless: no rows exist yet).
    static CREATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Check for a commit first: opening a missing table makes the kernel log an error.
        if has_table_commit(&root, name).await {
            match crate::storage::root_writer_builder(&root, name)?.load().await {
                Ok(table) => return ensure_retention(table, name, &properties).await,
                // has_commit saw a finished log entry, so this should not happen; should a
                // listing still race a creator ("No files in log segment"), look again.
                Err(DeltaTableError::NotATable(_)) if attempts < CREATE_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(err(e)),
            }
        }
        let turn = CREATING.lock().await;
        if has_table_commit(&root, name).await {
            continue;
        }
        let create = crate::storage::root_writer_builder(&root, name)?
            .build()
            .map_err(err)?
            .create()
            .with_table_name(name)
            .with_comment(comment)
            .with_columns(columns.clone())
            .with_save_mode(SaveMode::Ignore)
            .with_configuration(properties.iter().map(|(key, value)| (key.as_ref(), Some(*value))));
        let created = create.await;
        drop(turn);
        match created {
            Ok(table) => {
                // The table folder is new: make its name in the data directory durable too
                // (SyncStore synced `_delta_log` and its entry).
                if let Some(dir) = root.local_dir() {
                    crate::sync_store::sync_dir(dir)
                        .map_err(|e| SinkError::DataDir { path: dir.display().to_string(), message: e.to_string() })?;
                }
                return Ok(table);
            }
            Err(_) if has_table_commit(&root, name).await => continue,
            Err(_) if attempts < CREATE_ATTEMPTS => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(e) => return Err(err(e)),
        }
    }
}

/// Turns [`open_or_create_table`] takes before giving up (50 ms apart).
const CREATE_ATTEMPTS: u32 = 20;

/// Sets each retention interval of `wanted` that `table` holds shorter (an absent property
/// counts as Delta's default: 7 days for deleted files, 30 days for the log). Other properties
/// apply at creation only. Two openers may race to set the same value: the loser re-reads the
/// table and finds it done.
async fn ensure_retention(mut table: DeltaTable, name: &str, wanted: &[(TableProperty, &str)]) -> Result<DeltaTable> {
    use deltalake::table::config::TablePropertiesExt as _;
    let err = |e| SinkError::Delta { table: name.to_string(), source: e };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let config = table.snapshot().map_err(err)?.table_config();
        let mut shorter = std::collections::HashMap::new();
        for (key, value) in wanted {
            let held = match key {
                TableProperty::DeletedFileRetentionDuration => config.deleted_file_retention_duration(),
                TableProperty::LogRetentionDuration => config.log_retention_duration(),
                _ => continue,
            };
            let want = interval(value).ok_or_else(|| SinkError::Encode {
                table: name.to_string(),
                message: format!("{} = {value:?} is not an interval such as 'interval 400 days'", key.as_ref()),
            })?;
            if held < want {
                shorter.insert(key.as_ref().to_string(), (*value).to_string());
            }
        }
        if shorter.is_empty() {
            return Ok(table);
        }
        tracing::info!(table = name, properties = ?shorter, "raising the table's retention");
        match table.clone().set_tbl_properties().with_properties(shorter).await {
            Ok(t) => return Ok(t),
            Err(e) if attempts < CREATE_ATTEMPTS => {
                tracing::debug!(table = name, error = %e, "setting retention raced another writer; reading again");
                table.update_state().await.map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
    }
}

/// A Delta interval (`interval 400 days`; units from seconds to weeks), as Delta parses it.
fn interval(value: &str) -> Option<std::time::Duration> {
    let mut words = value.split_whitespace();
    let (Some("interval"), Some(n), Some(unit), None) = (words.next(), words.next(), words.next(), words.next()) else {
        return None;
    };
    let n: u64 = n.parse().ok()?;
    let seconds = match unit {
        "second" | "seconds" => 1,
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3_600,
        "day" | "days" => 86_400,
        "week" | "weeks" => 604_800,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(n.checked_mul(seconds)?))
}

/// True when the table `name` under `root` has a commit: on a local directory [`has_commit`];
/// on object storage a listing of its log (where a put is atomic, so no staging file is seen).
async fn has_table_commit(root: &TableRoot, name: &str) -> bool {
    match root.local_dir() {
        Some(dir) => has_commit(&dir.join(name).join("_delta_log")),
        None => root.exists(name).await.unwrap_or(false),
    }
}

/// True when the log folder `log` holds a commit (`<20-digit version>.json`) or a checkpoint
/// (`<version>.checkpoint.parquet`, or a part or v2 checkpoint `<version>.checkpoint.….parquet`).
/// Nothing else counts: object_store's `LocalFileSystem` writes each file through a staging file
/// named `<final name>#<n>` (`00000000000000000000.json#1` while a creator writes version 0),
/// and the log also holds checksums (`.crc`) and temporary commit files.
pub(crate) fn has_commit(log: &Path) -> bool {
    std::fs::read_dir(log)
        .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_str().is_some_and(is_log_entry)))
}

/// A finished commit or checkpoint file name (see [`has_commit`]).
fn is_log_entry(name: &str) -> bool {
    log_entry_version(name).is_some()
}

/// The version a finished commit or checkpoint file names (`<20-digit version>.json`,
/// `<version>.checkpoint[.…].parquet`); `None` for anything else in a log folder.
pub(crate) fn log_entry_version(name: &str) -> Option<u64> {
    let (version, rest) = name.split_at_checked(20)?;
    let entry = rest == ".json" || (rest.starts_with(".checkpoint.") && rest.ends_with(".parquet"));
    if entry && version.bytes().all(|b| b.is_ascii_digit()) {
        version.parse().ok()
    } else {
        None
    }
}

/// The version a table's application transaction `app_id` records (0 when none).
pub(crate) async fn app_transaction_version(
    table: &DeltaTable,
    app_id: &str,
) -> std::result::Result<u64, DeltaTableError> {
    let v = table.snapshot()?.transaction_version(table.log_store().as_ref(), app_id).await?;
    Ok(v.map_or(0, |v| v.max(0) as u64))
}

impl SummaryTable {
    /// Opens the table under `root` (a data directory or an object-storage prefix), creating
    /// it (and the folder) when absent.
    pub async fn open_or_create(root: impl Into<TableRoot>) -> Result<Self> {
        let root = root.into();
        let table = open_or_create_table(
            &root,
            SUMMARIES_TABLE,
            "meterflow rated usage summaries: rows are deltas; SUM(quantity) per window gives its value",
            delta_columns()?,
            vec![
                (TableProperty::CheckpointInterval, "50"),
                (TableProperty::LogRetentionDuration, SUMMARIES_RETENTION),
                // Files replaced by compaction stay as long as the log that can time-travel to
                // them: a finalized invoice reads the table as of its sealed version.
                (TableProperty::DeletedFileRetentionDuration, SUMMARIES_RETENTION),
            ],
        )
        .await?;
        let mut t = SummaryTable {
            ids: ProgressIds::of(None),
            root,
            table: Some(table),
            commits_since_open: 0,
            own_handle: false,
        };
        if meterflow_faults::ENABLED {
            t.reopen().await?; // on the store with the Parquet fault points
        }
        Ok(t)
    }

    /// The same table, reading and recording the progress of partition `p` of the usage stream
    /// (`None`: of the whole stream). Writers of different partitions commit to the one table
    /// side by side, each fenced by its own application transaction.
    pub fn in_partition(mut self, p: Option<u32>) -> Self {
        self.ids = ProgressIds::of(p);
        self
    }

    /// The progress of every partition `0..partitions` as recorded (0 where none is).
    pub async fn partition_progress(&self, partitions: u32) -> Result<Vec<u64>> {
        let table = self.table()?;
        let mut out = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            out.push(app_transaction_version(table, &ProgressIds::of(Some(p)).seq).await.map_err(delta_err)?);
        }
        Ok(out)
    }

    fn table(&self) -> Result<&DeltaTable> {
        self.table.as_ref().ok_or_else(|| SinkError::Encode {
            table: SUMMARIES_TABLE.into(),
            message: "table handle lost after a failed commit".into(),
        })
    }

    /// Reopens the handle from storage (after a failed commit, or periodically).
    pub async fn reopen(&mut self) -> Result<()> {
        self.table = Some(crate::storage::open_summaries_for_write(&self.root, SUMMARIES_TABLE).await?);
        self.commits_since_open = 0;
        Ok(())
    }

    /// The last stream sequence committed (0 when nothing has been).
    pub async fn committed_seq(&self) -> Result<u64> {
        app_transaction_version(self.table()?, &self.ids.seq).await.map_err(delta_err)
    }

    /// The identity of the stream the committed progress belongs to (its creation time in Unix
    /// microseconds, as every commit records it), or `None` for a table written before it was
    /// recorded.
    pub async fn stream_identity(&self) -> Result<Option<i64>> {
        let table = self.table()?;
        let snapshot = table.snapshot().map_err(delta_err)?;
        snapshot.transaction_version(table.log_store().as_ref(), &self.ids.stream).await.map_err(delta_err)
    }

    /// The catalog revision the last committed range was decided under, or `None` for a table
    /// written before it was recorded.
    pub async fn catalog_revision(&self) -> Result<Option<u64>> {
        let table = self.table()?;
        let snapshot = table.snapshot().map_err(delta_err)?;
        let v = snapshot.transaction_version(table.log_store().as_ref(), &self.ids.catalog).await.map_err(delta_err)?;
        Ok(v.map(|v| v.max(0) as u64))
    }

    /// Current table version, as last read (`None` before a handle is open).
    pub fn version(&self) -> Option<u64> {
        self.table.as_ref().and_then(|t| t.version())
    }

    /// The table's version read from storage now (reopening a lost handle): what a period close
    /// seals. Never a default: an error when the table cannot be read.
    pub async fn current_version(&mut self) -> Result<u64> {
        match self.table.as_mut() {
            Some(t) => t.update_state().await.map_err(delta_err)?,
            None => self.reopen().await?,
        }
        // The refreshed handle may hold other writers' commits: the next commit reads the
        // recorded progress before writing instead of relying on the conflict check.
        self.own_handle = false;
        self.version().ok_or_else(|| SinkError::Encode {
            table: SUMMARIES_TABLE.into(),
            message: "the table has no version yet".into(),
        })
    }

    /// Atomically appends `rows` and records `range.through` as the committed stream sequence
    /// (with the stream's identity). With no rows, commits the progress alone.
    ///
    /// Safe to call again after any error, for the same range: a handle lost to a failed
    /// attempt is reopened and the recorded progress re-read first. Recorded `range.through`
    /// means an earlier attempt committed the range (its call failed after the log entry was
    /// written, e.g. in the post-commit checkpoint): nothing is written again. Recorded
    /// `range.after` means the range is not committed: it is written now. Anything else means
    /// another writer moved the progress: [`SinkError::Fenced`], and nothing is written. While
    /// the handle is the one this writer's own last commit returned, delta-rs's conflict check
    /// (a concurrent commit carrying the same application id fails ours) covers the same case
    /// without a read.
    pub async fn commit(&mut self, rows: &[SummaryRow], range: CommitRange) -> Result<Committed> {
        let fresh = self.table.is_none() || self.commits_since_open >= REOPEN_EVERY || !self.own_handle;
        if fresh {
            self.reopen().await?;
            let recorded = self.committed_seq().await?;
            if recorded == range.through && range.through > range.after {
                self.own_handle = true;
                return Ok(Committed::AlreadyThere(self.version().unwrap_or_default()));
            }
            if recorded != range.after {
                return Err(SinkError::Fenced { table: SUMMARIES_TABLE.into(), recorded, expected: range.after });
            }
        }
        let seq = seq_i64(range.through, "through_seq")?;
        let mut txns = vec![Transaction::new(&self.ids.seq, seq)];
        if let Some(stream) = range.stream {
            txns.push(Transaction::new(&self.ids.stream, stream));
        }
        if let Some(revision) = range.catalog {
            txns.push(Transaction::new(&self.ids.catalog, seq_i64(revision, "catalog revision")?));
        }
        let props = CommitProperties::default().with_application_transactions(txns);
        let result = if rows.is_empty() {
            self.commit_progress_only(props).await
        } else {
            let batch = encode_rows(rows, Utc::now())?;
            let table = self.table.take().ok_or_else(|| SinkError::Encode {
                table: SUMMARIES_TABLE.into(),
                message: "no table handle".into(),
            })?;
            table
                .write(vec![batch])
                .with_save_mode(SaveMode::Append)
                .with_commit_properties(props)
                .await
                .map_err(delta_err)
        };
        match result {
            Ok(t) => {
                let v = t.version().unwrap_or_default();
                self.table = Some(t);
                self.commits_since_open += 1;
                self.own_handle = true;
                Ok(Committed::Written(v))
            }
            Err(e) => {
                // The handle may be stale or consumed; the next attempt reopens it and reads
                // what is recorded before writing anything.
                self.table = None;
                self.own_handle = false;
                Err(e)
            }
        }
    }

    /// Starts this table's progress over on another incarnation of the stream (`meterflow run
    /// --adopt-stream`): records sequence 0 and the new stream's identity in one commit. Rows
    /// already in the table stay; nothing of the old stream is read again.
    pub async fn adopt_stream(&mut self, stream: i64) -> Result<u64> {
        self.reopen().await?;
        let props = CommitProperties::default().with_application_transactions(vec![
            Transaction::new(&self.ids.seq, 0),
            Transaction::new(&self.ids.stream, stream),
        ]);
        let t = self.commit_progress_only(props).await?;
        let v = t.version().unwrap_or_default();
        self.table = Some(t);
        self.own_handle = false;
        Ok(v)
    }

    /// Appends adjustment rows (for example from `meterflow rerate`) without touching the
    /// pipeline's stream checkpoint. Safe while the pipeline runs: Delta resolves concurrent
    /// appends.
    pub async fn append_adjustments(&mut self, rows: &[SummaryRow]) -> Result<u64> {
        if rows.is_empty() {
            return Ok(self.version().unwrap_or_default());
        }
        if self.table.is_none() {
            self.reopen().await?;
        }
        let batch = encode_rows(rows, Utc::now())?;
        let table = self
            .table
            .take()
            .ok_or_else(|| SinkError::Encode { table: SUMMARIES_TABLE.into(), message: "no table handle".into() })?;
        let t = table.write(vec![batch]).with_save_mode(SaveMode::Append).await.map_err(delta_err)?;
        let v = t.version().unwrap_or_default();
        self.table = Some(t);
        Ok(v)
    }

    /// Compacts small files into larger ones (a Delta OPTIMIZE commit; data and the stream
    /// checkpoint are unchanged). Returns `(files removed, files added)`. Replaced files stay on
    /// disk, marked removed in the log, until a vacuum: read the table through its Delta log,
    /// never by globbing the Parquet files.
    pub async fn compact(&mut self) -> Result<(u64, u64)> {
        if self.table.is_none() {
            self.reopen().await?;
        }
        let table = self
            .table
            .take()
            .ok_or_else(|| SinkError::Encode { table: SUMMARIES_TABLE.into(), message: "no table handle".into() })?;
        match table.optimize().with_max_concurrent_tasks(1).await {
            Ok((t, metrics)) => {
                self.table = Some(t);
                Ok((metrics.num_files_removed, metrics.num_files_added))
            }
            Err(e) => Err(delta_err(e)),
        }
    }

    /// Data files added by one commit and their total bytes, read from that commit's log entry
    /// (`(0, 0)` when the entry cannot be read; for metrics only).
    pub async fn files_added_in(&self, version: u64) -> (u64, u64) {
        let Ok(table) = self.table() else { return (0, 0) };
        let Ok(Some(entry)) = table.log_store().read_commit_entry(version).await else { return (0, 0) };
        let text = String::from_utf8_lossy(&entry);
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v.get("add").and_then(|a| a.get("size")).and_then(serde_json::Value::as_u64))
            .fold((0, 0), |(n, bytes), size| (n + 1, bytes + size))
    }

    /// Number of data files in the current table version.
    pub fn file_count(&self) -> usize {
        self.table.as_ref().and_then(|t| t.snapshot().ok()).map_or(0, |s| s.log_data().num_files())
    }

    async fn commit_progress_only(&mut self, props: CommitProperties) -> Result<DeltaTable> {
        let table = self.table()?;
        let snapshot = table.snapshot().map_err(delta_err)?;
        let log_store = table.log_store();
        let operation = DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        CommitBuilder::from(props)
            .with_actions(vec![])
            .build(Some(snapshot), log_store, operation)
            .await
            .map_err(delta_err)?;
        let mut t = self
            .table
            .take()
            .ok_or_else(|| SinkError::Encode { table: SUMMARIES_TABLE.into(), message: "no table handle".into() })?;
        t.update_state().await.map_err(delta_err)?;
        Ok(t)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::summary_rows::RowKind;
    use crate::table_url;
    use chrono::DateTime;

    /// A usage row of acme's api_calls in the hour window starting at 2026-11-18T07:00Z.
    pub(crate) fn row(q: &str, a: &str, seq: u64) -> SummaryRow {
        let t = DateTime::from_timestamp(1_795_000_000 / 3600 * 3600, 0).unwrap();
        SummaryRow {
            customer_id: "acme".into(),
            subject: "acme".into(),
            meter: "api_calls".into(),
            dimensions: r#"{"region":"eu"}"#.into(),
            window_start: t,
            window_end: t + chrono::Duration::hours(1),
            revision: seq,
            quantity: q.parse().unwrap(),
            amount: a.parse().unwrap(),
            currency: "USD".into(),
            plan_id: "p".into(),
            plan_version: "p@2026-01-01".into(),
            billing_period: "2026-11".into(),
            event_count: 1,
            first_seq: seq,
            last_seq: seq,
            row_kind: RowKind::Usage,
            reason: None,
            arrived_at: None,
        }
    }

    pub(crate) fn range(after: u64, through: u64) -> CommitRange {
        CommitRange { after, through, stream: Some(42), catalog: Some(1) }
    }

    async fn rows_in(dir: &Path) -> String {
        let sql = crate::sql::ReadOnlySql::open(dir).await.unwrap();
        let b = sql.query("SELECT COUNT(*) AS n, SUM(quantity) AS q FROM usage_summaries").await.unwrap();
        crate::sql::render(&b, crate::sql::Format::Csv).unwrap()
    }

    // Found in review: a commit whose call failed after its log entry was written (post-commit
    // checkpoint, log clean-up) was retried blindly and wrote its rows a second time.
    #[tokio::test]
    async fn a_commit_retried_after_its_log_entry_was_written_writes_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = SummaryTable::open_or_create(dir.path()).await.unwrap();
        assert_eq!(t.commit(&[row("3", "0.0006", 7)], range(0, 7)).await.unwrap(), Committed::Written(1));
        // The state a failed call leaves: no handle, the range's rows still in hand.
        t.table = None;
        t.own_handle = false;
        assert_eq!(t.commit(&[row("3", "0.0006", 7)], range(0, 7)).await.unwrap(), Committed::AlreadyThere(1));
        assert_eq!(rows_in(dir.path()).await, "n,q\n1,3.000000000\n");
        assert_eq!(t.commit(&[row("1", "0.0002", 8)], range(7, 8)).await.unwrap(), Committed::Written(2));
        assert_eq!(t.stream_identity().await.unwrap(), Some(42));
        assert_eq!(t.catalog_revision().await.unwrap(), Some(1), "the catalog revision of the range is recorded");
    }

    // Found in review: a second pipeline on the same data directory reopened its handle after a
    // conflict and committed the same range again.
    #[tokio::test]
    async fn a_second_writer_whose_progress_was_moved_by_another_is_fenced_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SummaryTable::open_or_create(dir.path()).await.unwrap();
        let mut b = SummaryTable::open_or_create(dir.path()).await.unwrap();
        a.commit(&[row("3", "0.0006", 5)], range(0, 5)).await.unwrap();
        // b started when nothing was committed and now holds the same messages 1..=5.
        let e = b.commit(&[row("3", "0.0006", 5)], range(0, 6)).await.unwrap_err();
        assert!(matches!(e, SinkError::Fenced { recorded: 5, expected: 0, .. }), "{e}");
        // b's own earlier range is not a licence either.
        let mut b = SummaryTable::open_or_create(dir.path()).await.unwrap();
        b.commit(&[], range(5, 6)).await.unwrap();
        let e = a.commit(&[row("1", "0.0002", 7)], range(5, 7)).await.unwrap_err();
        assert!(e.to_string().contains("Delta") || matches!(e, SinkError::Fenced { .. }), "{e}");
        let e = a.commit(&[row("1", "0.0002", 7)], range(5, 7)).await.unwrap_err();
        assert!(matches!(e, SinkError::Fenced { recorded: 6, expected: 5, .. }), "{e}");
        assert_eq!(rows_in(dir.path()).await, "n,q\n1,3.000000000\n");
    }

    #[tokio::test]
    async fn commits_record_the_stream_sequence_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = SummaryTable::open_or_create(dir.path()).await.unwrap();
        assert_eq!(t.committed_seq().await.unwrap(), 0);
        t.commit(&[row("3", "0.0006", 7)], range(0, 7)).await.unwrap();
        t.commit(&[], range(7, 9)).await.unwrap();
        assert_eq!(t.committed_seq().await.unwrap(), 9);
        let reopened = SummaryTable::open_or_create(dir.path()).await.unwrap();
        assert_eq!(reopened.committed_seq().await.unwrap(), 9);
        assert_eq!(reopened.version(), Some(2));
    }

    // Found in CI: `meterflow run`'s first start and its operations page's first refresh both
    // opened the tables of a fresh data directory at once, and one saw a log folder without a
    // commit yet ("Not a Delta table") and stopped the pipeline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tables_opened_by_several_tasks_at_once_on_a_fresh_directory_all_open() {
        for _round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let openers: Vec<_> = (0..6)
                .map(|_| {
                    let path = dir.path().to_path_buf();
                    tokio::spawn(async move { SummaryTable::open_or_create(&path).await.map(|t| t.version()) })
                })
                .collect();
            for opener in openers {
                let version = opener.await.unwrap().unwrap_or_else(|e| panic!("a concurrent open failed: {e}"));
                assert_eq!(version, Some(0), "every opener sees the one created version");
            }
        }
    }

    #[tokio::test]
    async fn compaction_keeps_the_rows_and_the_stream_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = SummaryTable::open_or_create(dir.path()).await.unwrap();
        for seq in 1..=5 {
            t.commit(&[row("1", "0.0002", seq)], range(seq - 1, seq)).await.unwrap();
        }
        assert_eq!(t.file_count(), 5);
        let (removed, added) = t.compact().await.unwrap();
        assert_eq!((removed, added), (5, 1));
        assert_eq!(t.file_count(), 1);
        assert_eq!(t.committed_seq().await.unwrap(), 5);
        t.commit(&[row("1", "0.0002", 6)], range(5, 6)).await.unwrap();
        let sql = crate::sql::ReadOnlySql::open(dir.path()).await.unwrap();
        let b = sql.query("SELECT SUM(quantity) AS q, COUNT(*) AS n FROM usage_summaries").await.unwrap();
        assert_eq!(crate::sql::render(&b, crate::sql::Format::Csv).unwrap(), "q,n\n6.000000000,6\n");
    }

    // Found in CI: `meterflow run` stopped at start with "Not a Delta table: No files in log
    // segment" because the staging file of a creator's first commit counted as a commit.
    #[test]
    fn only_finished_commits_and_checkpoints_count_as_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("_delta_log");
        assert!(!has_commit(&log), "no log folder");
        std::fs::create_dir(&log).unwrap();
        for unfinished in [
            "00000000000000000000.json#1",
            "00000000000000000000.json#12",
            "_commit_0a1b2c3d.json.tmp",
            "00000000000000000000.crc",
            "00000000000000000010.checkpoint.parquet#1",
            "0000000000000000000.json",
            "0000000000000000000a.json",
            "00000000000000000000.00000000000000000003.compacted.json",
        ] {
            std::fs::write(log.join(unfinished), b"").unwrap();
        }
        assert!(!has_commit(&log));
        for entry in [
            "00000000000000000000.json",
            "00000000000000000010.checkpoint.parquet",
            "00000000000000000010.checkpoint.0000000001.0000000002.parquet",
            "00000000000000000010.checkpoint.80a083e8-7026-4e79-81be-64bd76c43a11.parquet",
        ] {
            std::fs::write(log.join(entry), b"").unwrap();
            assert!(has_commit(&log), "{entry}");
            std::fs::remove_file(log.join(entry)).unwrap();
        }
    }

    #[test]
    fn delta_intervals_parse_like_delta() {
        assert_eq!(interval("interval 400 days"), Some(std::time::Duration::from_secs(400 * 86_400)));
        assert_eq!(interval("interval 1 weeks"), Some(std::time::Duration::from_secs(7 * 86_400)));
        assert_eq!(interval("interval 2 hour"), Some(std::time::Duration::from_secs(7_200)));
        assert_eq!(interval("400 days"), None);
        assert_eq!(interval("interval 400 fortnights"), None);
        assert_eq!(interval("interval 400 days ago"), None);
    }

    fn file_retention(t: &DeltaTable) -> Option<std::time::Duration> {
        t.snapshot().unwrap().table_config().deleted_file_retention_duration
    }

    // Found in review: usage_summaries kept its log 400 days but removed files only the 7-day
    // default, so any VACUUM deleted files that month-old sealed versions (invoices) need.
    #[tokio::test]
    async fn summaries_keep_replaced_files_as_long_as_their_log_and_older_tables_are_raised_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let t = SummaryTable::open_or_create(dir.path()).await.unwrap();
        assert_eq!(file_retention(t.table().unwrap()), interval(SUMMARIES_RETENTION));

        // A table created before the property existed gets it when the pipeline opens it.
        let old = tempfile::tempdir().unwrap();
        let columns = delta_columns().unwrap();
        let created = open_or_create_table(old.path(), SUMMARIES_TABLE, "old", columns, vec![]).await.unwrap();
        assert_eq!(file_retention(&created), None);
        let t = SummaryTable::open_or_create(old.path()).await.unwrap();
        assert_eq!(file_retention(t.table().unwrap()), interval(SUMMARIES_RETENTION));
        let reread = deltalake::open_table(table_url(old.path(), SUMMARIES_TABLE).unwrap()).await.unwrap();
        assert_eq!(file_retention(&reread), interval(SUMMARIES_RETENTION));
        let version = reread.version();
        // Opening again changes nothing.
        SummaryTable::open_or_create(old.path()).await.unwrap();
        let reread = deltalake::open_table(table_url(old.path(), SUMMARIES_TABLE).unwrap()).await.unwrap();
        assert_eq!(reread.version(), version);

        // A longer retention set by an operator is never shortened.
        let longer = tempfile::tempdir().unwrap();
        let props = vec![(TableProperty::DeletedFileRetentionDuration, "interval 800 days")];
        open_or_create_table(longer.path(), SUMMARIES_TABLE, "longer", delta_columns().unwrap(), props).await.unwrap();
        let t = SummaryTable::open_or_create(longer.path()).await.unwrap();
        assert_eq!(file_retention(t.table().unwrap()), interval("interval 800 days"));
    }
}

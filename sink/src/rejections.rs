//! The `rejections` table: one row per rejected event or message, so SQL can count rejects by
//! reason (`too_old`, `unknown_subject`, ...). The DLQ stream keeps the original bytes; this
//! table keeps the facts. The `duplicates` table has the same shape: one row per event dropped
//! as a duplicate (reason `duplicate`, the `(source, id)` in `detail`), so "why was my event not
//! counted?" has an answer in SQL and in `meterflow trace`.
//!
//! Both are committed before `usage_summaries` for the same stream range, each with its own
//! application transaction (`meterflow-rejections`, `meterflow-duplicates`), so after a crash
//! between the commits the rows already written are recognised by sequence and not written
//! again. A range without rows writes no commit.

use chrono::Utc;
use deltalake::arrow::array::{ArrayRef, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, StructField, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use std::sync::Arc;

use crate::storage::TableRoot;
use crate::table::{app_transaction_version, open_or_create_table};
use crate::{Result, SinkError};

/// Name of the table (and its folder).
pub const REJECTIONS_TABLE: &str = "rejections";
/// Name of the duplicates table (and its folder).
pub const DUPLICATES_TABLE: &str = "duplicates";

/// One rejected event (or whole message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionRow {
    /// Stream sequence of the message.
    pub stream_seq: u64,
    /// Position in a batch-mode array, if any.
    pub event_index: Option<u64>,
    /// Reason code.
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
    /// Subject the message was published to.
    pub subject: String,
    /// Size of the rejected bytes.
    pub size: u64,
}

/// The `rejections` (or `duplicates`) table.
pub struct RejectionTable {
    root: TableRoot,
    table: Option<DeltaTable>,
    name: &'static str,
    app_id: String,
}

impl std::fmt::Debug for RejectionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RejectionTable").field("root", &self.root).finish()
    }
}

impl RejectionTable {
    /// A fresh writing handle (durable on a local directory).
    async fn reopen(&self) -> Result<DeltaTable> {
        crate::storage::open_table_for_write(&self.root, self.name).await
    }

    fn err(&self, e: DeltaTableError) -> SinkError {
        SinkError::Delta { table: self.name.into(), source: e }
    }

    /// Opens the `rejections` table under `root`, creating it when absent.
    pub async fn open_or_create(root: impl Into<TableRoot>) -> Result<Self> {
        Self::open_named(
            root.into(),
            REJECTIONS_TABLE,
            "meterflow-rejections",
            "meterflow rejected events by reason; original bytes are in the USAGE_DLQ stream",
        )
        .await
    }

    /// Opens the `duplicates` table under `root`, creating it when absent.
    pub async fn open_duplicates(root: impl Into<TableRoot>) -> Result<Self> {
        Self::open_named(
            root.into(),
            DUPLICATES_TABLE,
            "meterflow-duplicates",
            "meterflow events dropped as duplicates of an earlier (source, id); the first sighting was counted",
        )
        .await
    }

    async fn open_named(root: TableRoot, name: &'static str, app_id: &'static str, comment: &str) -> Result<Self> {
        let table = open_or_create_table(
            &root,
            name,
            comment,
            vec![
                StructField::new("stream_seq", DataType::LONG, false),
                StructField::new("event_index", DataType::LONG, true),
                StructField::new("reason", DataType::STRING, false),
                StructField::new("detail", DataType::STRING, false),
                StructField::new("subject", DataType::STRING, false),
                StructField::new("size", DataType::LONG, false),
                StructField::new("committed_at", DataType::TIMESTAMP, false),
            ],
            vec![],
        )
        .await?;
        Ok(RejectionTable { root, table: Some(table), name, app_id: app_id.to_string() })
    }

    /// The same table, recording the progress of partition `p` of the usage stream (its own
    /// application transaction, `<app id>-p<p>`); `None` keeps the unpartitioned one.
    pub fn in_partition(mut self, p: Option<u32>) -> Self {
        if let Some(p) = p {
            self.app_id = format!("{}-p{p}", self.app_id);
        }
        self
    }

    /// The last stream sequence whose rejections are committed (0 when none), read from the
    /// table: a handle lost to a failed write is reopened first (a failed call may still have
    /// committed, so "no handle" never means "nothing committed").
    pub async fn committed_seq(&mut self) -> Result<u64> {
        if self.table.is_none() {
            self.table = Some(self.reopen().await?);
        }
        let Some(t) = self.table.as_ref() else { return Ok(0) };
        app_transaction_version(t, &self.app_id).await.map_err(|e| self.err(e))
    }

    /// Starts the recorded progress over at sequence 0 (`meterflow run --adopt-stream`: the
    /// stream's sequence numbers begin again). Rows already in the table stay.
    pub async fn start_over(&mut self) -> Result<()> {
        let table = match self.table.take() {
            Some(t) => t,
            None => self.reopen().await?,
        };
        let snapshot = table.snapshot().map_err(|e| self.err(e))?;
        let props = CommitProperties::default().with_application_transaction(Transaction::new(&self.app_id, 0));
        let operation =
            deltalake::protocol::DeltaOperation::Write { mode: SaveMode::Append, partition_by: None, predicate: None };
        deltalake::kernel::transaction::CommitBuilder::from(props)
            .with_actions(vec![])
            .build(Some(snapshot), table.log_store(), operation)
            .await
            .map_err(|e| self.err(e))?;
        self.table = None;
        Ok(())
    }

    /// Appends the rejections of the range ending at `through_seq` (rows at or below the
    /// already committed sequence are skipped) and records the range.
    pub async fn commit(&mut self, rows: &[RejectionRow], through_seq: u64) -> Result<()> {
        let done = self.committed_seq().await?;
        if through_seq <= done {
            return Ok(());
        }
        let rows: Vec<&RejectionRow> = rows.iter().filter(|r| r.stream_seq > done).collect();
        if rows.is_empty() {
            return Ok(()); // nothing to record; later rows are told apart by sequence all the same
        }
        let n = rows.len();
        let mut seq = Int64Builder::with_capacity(n);
        let mut index = Int64Builder::with_capacity(n);
        let mut reason = StringBuilder::new();
        let mut detail = StringBuilder::new();
        let mut subject = StringBuilder::new();
        let mut size = Int64Builder::with_capacity(n);
        let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let now = Utc::now().timestamp_micros();
        let i64_of = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for r in rows {
            seq.append_value(i64_of(r.stream_seq));
            index.append_option(r.event_index.map(i64_of));
            reason.append_value(&r.reason);
            detail.append_value(&r.detail);
            subject.append_value(&r.subject);
            size.append_value(i64_of(r.size));
            at.append_value(now);
        }
        let ts = ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("stream_seq", ArrowType::Int64, false),
            Field::new("event_index", ArrowType::Int64, true),
            Field::new("reason", ArrowType::Utf8, false),
            Field::new("detail", ArrowType::Utf8, false),
            Field::new("subject", ArrowType::Utf8, false),
            Field::new("size", ArrowType::Int64, false),
            Field::new("committed_at", ts, false),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(seq.finish()),
            Arc::new(index.finish()),
            Arc::new(reason.finish()),
            Arc::new(detail.finish()),
            Arc::new(subject.finish()),
            Arc::new(size.finish()),
            Arc::new(at.finish()),
        ];
        let batch = RecordBatch::try_new(schema, columns)
            .map_err(|e| SinkError::Encode { table: self.name.into(), message: e.to_string() })?;
        let props = CommitProperties::default().with_application_transaction(Transaction::new(
            &self.app_id,
            i64::try_from(through_seq).unwrap_or(i64::MAX),
        ));
        let table = match self.table.take() {
            Some(t) => t,
            None => self.reopen().await?,
        };
        // Any failure below drops the handle: the next attempt reopens and re-reads.
        match table.write(vec![batch]).with_save_mode(SaveMode::Append).with_commit_properties(props).await {
            Ok(t) => {
                self.table = Some(t);
                Ok(())
            }
            Err(e) => Err(self.err(e)), // the handle is reopened on the next attempt
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, reason: &str) -> RejectionRow {
        RejectionRow {
            stream_seq: seq,
            event_index: None,
            reason: reason.into(),
            detail: "d".into(),
            subject: "usage.x".into(),
            size: 3,
        }
    }

    #[tokio::test]
    async fn rows_already_committed_are_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = RejectionTable::open_or_create(dir.path()).await.unwrap();
        t.commit(&[row(2, "too_old"), row(5, "invalid_json")], 5).await.unwrap();
        // A replay after a crash hands the same range again, plus one more.
        t.commit(&[row(2, "too_old"), row(5, "invalid_json"), row(7, "too_old")], 7).await.unwrap();
        t.commit(&[row(7, "too_old")], 7).await.unwrap();
        assert_eq!(t.committed_seq().await.unwrap(), 7);
        // A retry after a failed call (the handle is gone; the commit may have landed).
        t.table = None;
        t.commit(&[row(7, "too_old")], 7).await.unwrap();
        let sql = crate::sql::ReadOnlySql::open(dir.path()).await.unwrap();
        let b =
            sql.query("SELECT reason, COUNT(*) AS n FROM rejections GROUP BY reason ORDER BY reason").await.unwrap();
        assert_eq!(crate::sql::render(&b, crate::sql::Format::Csv).unwrap(), "reason,n\ninvalid_json,1\ntoo_old,2\n");
    }
}

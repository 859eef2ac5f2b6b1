//! The billing Delta tables (`invoices`, `invoice_lines`, `postings`) and the SQL plumbing:
//! sessions over the tables, summaries as of a version (Delta time travel), bound parameters
//! and typed rows.

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    ArrayRef, Decimal128Builder, Int64Builder, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::execution::context::{SessionConfig, SessionContext};
use deltalake::kernel::{DataType, StructField};
use deltalake::protocol::SaveMode;
use meterflow_sink::deltalake;
use meterflow_sink::sql::{Rows, ScalarValue};
use meterflow_sink::{open_or_create_table, TableRoot, SUMMARIES_TABLE};
use rust_decimal::Decimal;
use std::sync::{Arc, Mutex};

use crate::BillingError;

/// Column types of the billing tables.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Text,
    OptText,
    Int,
    /// DECIMAL(38, scale).
    Dec(u8),
    Time,
    OptTime,
}

impl Kind {
    /// Whether the column takes nulls.
    fn nullable(self) -> bool {
        matches!(self, Kind::OptText | Kind::OptTime)
    }
}

/// A cell value.
#[derive(Debug, Clone)]
pub(crate) enum Cell {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    Dec(Decimal),
    Time(DateTime<Utc>),
    OptTime(Option<DateTime<Utc>>),
}

/// One billing table: name, description, columns.
pub(crate) struct Spec {
    pub name: &'static str,
    pub comment: &'static str,
    pub columns: &'static [(&'static str, Kind)],
}

/// Quantities and rounded money: DECIMAL(38, 9).
pub(crate) const Q: Kind = Kind::Dec(9);
/// Unrounded money: DECIMAL(38, 18), as in usage_summaries.
pub(crate) const EXACT: Kind = Kind::Dec(18);

/// `invoices`: one row per finalized invoice revision.
pub(crate) const INVOICES: Spec = Spec {
    name: "invoices",
    comment: "meterflow finalized invoices: one row per invoice revision, with its JSON document",
    columns: &[
        ("invoice_id", Kind::Text),
        ("revision", Kind::Int),
        ("status", Kind::Text),
        ("customer_id", Kind::Text),
        ("customer_name", Kind::Text),
        ("erp_customer_id", Kind::Text),
        ("legal_entity", Kind::Text),
        ("currency", Kind::Text),
        ("period", Kind::Text),
        ("period_start", Kind::Time),
        ("period_end", Kind::Time),
        ("issue_date", Kind::Text),
        ("due_date", Kind::Text),
        ("line_count", Kind::Int),
        ("total", Q),
        ("summary_version", Kind::Int),
        ("content_hash", Kind::Text),
        ("finalized_at", Kind::Time),
        ("document", Kind::Text),
    ],
};

/// `invoice_lines`: the lines of every invoice revision.
pub(crate) const INVOICE_LINES: Spec = Spec {
    name: "invoice_lines",
    comment: "meterflow invoice lines: one row per line of each invoice revision",
    columns: &[
        ("invoice_id", Kind::Text),
        ("revision", Kind::Int),
        ("line_no", Kind::Int),
        ("line_kind", Kind::Text),
        ("customer_id", Kind::Text),
        ("period", Kind::Text),
        ("source_period", Kind::Text),
        ("meter", Kind::OptText),
        ("plan_version", Kind::OptText),
        ("description", Kind::Text),
        ("quantity", Q),
        ("amount_unrounded", EXACT),
        ("amount", Q),
        ("currency", Kind::Text),
        ("item", Kind::Text),
        ("revenue_account", Kind::Text),
        ("event_count", Kind::Int),
        ("first_seq", Kind::Int),
        ("last_seq", Kind::Int),
    ],
};

/// `postings`: the posting ledger, one row per status change of an ERP document.
pub(crate) const POSTINGS: Spec = Spec {
    name: "postings",
    comment: "meterflow posting ledger: one row per status change (pending, posted, failed) of each ERP document",
    columns: &[
        ("idempotency_key", Kind::Text),
        ("document_type", Kind::Text),
        ("invoice_id", Kind::Text),
        ("revision", Kind::Int),
        ("period", Kind::Text),
        ("customer_id", Kind::Text),
        ("target", Kind::Text),
        ("batch_id", Kind::Text),
        ("status", Kind::Text),
        ("attempts", Kind::Int),
        ("response", Kind::OptText),
        ("amount", Q),
        ("currency", Kind::Text),
        ("recorded_at", Kind::Time),
    ],
};

fn delta_err(table: &str, e: impl std::fmt::Display) -> BillingError {
    BillingError::Delta { table: table.into(), message: e.to_string() }
}

fn arrow_type(kind: Kind) -> ArrowType {
    match kind {
        Kind::Text | Kind::OptText => ArrowType::Utf8,
        Kind::Int => ArrowType::Int64,
        Kind::Dec(s) => ArrowType::Decimal128(38, s as i8),
        Kind::Time | Kind::OptTime => ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

fn delta_type(table: &str, kind: Kind) -> Result<DataType, BillingError> {
    Ok(match kind {
        Kind::Text | Kind::OptText => DataType::STRING,
        Kind::Int => DataType::LONG,
        Kind::Dec(s) => DataType::decimal(38, s).map_err(|e| delta_err(table, e))?,
        Kind::Time | Kind::OptTime => DataType::TIMESTAMP,
    })
}

fn encode(spec: &Spec, rows: &[Vec<Cell>]) -> Result<RecordBatch, BillingError> {
    let bad = |msg: String| delta_err(spec.name, msg);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(spec.columns.len());
    for (i, (name, kind)) in spec.columns.iter().enumerate() {
        let cell = |r: &Vec<Cell>| r.get(i).cloned().ok_or_else(|| bad(format!("row without column {name}")));
        let array: ArrayRef = match kind {
            Kind::Text | Kind::OptText => {
                let mut b = StringBuilder::new();
                for r in rows {
                    match cell(r)? {
                        Cell::Text(s) => b.append_value(s),
                        Cell::OptText(s) => b.append_option(s),
                        other => return Err(bad(format!("{name}: {other:?} is not text"))),
                    }
                }
                Arc::new(b.finish())
            }
            Kind::Int => {
                let mut b = Int64Builder::new();
                for r in rows {
                    match cell(r)? {
                        Cell::Int(v) => b.append_value(v),
                        other => return Err(bad(format!("{name}: {other:?} is not an integer"))),
                    }
                }
                Arc::new(b.finish())
            }
            Kind::Dec(scale) => {
                let mut b = Decimal128Builder::new();
                for r in rows {
                    match cell(r)? {
                        Cell::Dec(v) => b.append_value(
                            meterflow_sink::unscaled(v, u32::from(*scale))
                                .ok_or_else(|| bad(format!("{name}: {v} does not fit DECIMAL(38, {scale})")))?,
                        ),
                        other => return Err(bad(format!("{name}: {other:?} is not a decimal"))),
                    }
                }
                Arc::new(b.finish().with_precision_and_scale(38, *scale as i8).map_err(|e| bad(e.to_string()))?)
            }
            Kind::Time | Kind::OptTime => {
                let mut b = TimestampMicrosecondBuilder::new().with_timezone("UTC");
                for r in rows {
                    match cell(r)? {
                        Cell::Time(t) => b.append_value(t.timestamp_micros()),
                        Cell::OptTime(t) => b.append_option(t.map(|t| t.timestamp_micros())),
                        other => return Err(bad(format!("{name}: {other:?} is not a time"))),
                    }
                }
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    let fields: Vec<Field> =
        spec.columns.iter().map(|(name, kind)| Field::new(*name, arrow_type(*kind), kind.nullable())).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| bad(e.to_string()))
}

/// Appends `rows` to the table (created when absent) in one Delta commit.
pub(crate) async fn append(root: &TableRoot, spec: &Spec, rows: &[Vec<Cell>]) -> Result<(), BillingError> {
    let mut fields = Vec::with_capacity(spec.columns.len());
    for (name, kind) in spec.columns {
        fields.push(StructField::new(*name, delta_type(spec.name, *kind)?, kind.nullable()));
    }
    let table = open_or_create_table(root, spec.name, spec.comment, fields, vec![]).await?;
    if rows.is_empty() {
        return Ok(());
    }
    let batch = encode(spec, rows)?;
    table.write(vec![batch]).with_save_mode(SaveMode::Append).await.map_err(|e| delta_err(spec.name, e))?;
    Ok(())
}

/// Creates the billing tables (`invoices`, `invoice_lines`, `postings`, `credit_notes`,
/// `credit_grants`, `credit_ledger`) under `root`
/// where absent, empty.
pub async fn create_tables(root: impl Into<TableRoot>) -> Result<(), BillingError> {
    let root = &root.into();
    for spec in [
        &INVOICES,
        &INVOICE_LINES,
        &POSTINGS,
        &crate::credit_note::CREDIT_NOTES,
        &crate::credits::CREDIT_GRANTS,
        &crate::credits::CREDIT_LEDGER,
    ] {
        append(root, spec, &[]).await?;
    }
    Ok(())
}

/// True when the table exists under `root`.
pub(crate) async fn exists(root: &TableRoot, name: &str) -> Result<bool, BillingError> {
    Ok(root.exists(name).await?)
}

/// A SQL session over some of the tables. Values reach its queries as bound parameters
/// (`$1`, ...) or as the rows of a registered list ([`Session::set_list`]), never spliced into
/// the SQL text; results read back typed ([`Rows`]).
pub(crate) struct Session {
    pub ctx: SessionContext,
    /// Tables registered under their own names (the views over them are registered too).
    tables: Mutex<Vec<String>>,
}

impl Session {
    /// A session with DataFusion's defaults, adjusted by any `DATAFUSION_*` environment
    /// variables (for example `DATAFUSION_EXECUTION_TARGET_PARTITIONS=4`); an unreadable
    /// setting is ignored with a warning.
    pub fn new() -> Session {
        let config = SessionConfig::from_env().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring DATAFUSION_* settings");
            SessionConfig::new()
        });
        Session { ctx: SessionContext::new_with_config(config), tables: Mutex::new(Vec::new()) }
    }

    /// Registers table `name` (latest version) under `alias`; returns false when it does not exist.
    pub async fn register(&self, root: &TableRoot, name: &str, alias: &str) -> Result<bool, BillingError> {
        if !exists(root, name).await? {
            return Ok(false);
        }
        let table = root.open(name).await?;
        self.add(name, alias, table).await?;
        Ok(true)
    }

    /// Registers `usage_summaries` as of `version` under `alias`.
    pub async fn register_summaries_at(&self, root: &TableRoot, version: u64, alias: &str) -> Result<(), BillingError> {
        let table = root.open_at(SUMMARIES_TABLE, version).await.map_err(|e| {
            delta_err(
                SUMMARIES_TABLE,
                format!("cannot read version {version} (its log may have expired: logs are kept 400 days): {e}"),
            )
        })?;
        self.add(SUMMARIES_TABLE, alias, table).await
    }

    async fn add(&self, name: &str, alias: &str, table: deltalake::DeltaTable) -> Result<(), BillingError> {
        let provider = table.table_provider().await.map_err(|e| delta_err(name, e))?;
        self.ctx.register_table(alias, provider).map_err(|e| BillingError::Sql(e.to_string()))?;
        if name == alias {
            let tables = {
                let mut t = self.tables.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                t.push(name.to_string());
                t.clone()
            };
            for view in meterflow_sink::sql::VIEWS {
                if view.reads.iter().all(|r| tables.iter().any(|t| t == r)) {
                    self.ctx.deregister_table(view.name).map_err(|e| BillingError::Sql(e.to_string()))?;
                }
            }
            meterflow_sink::sql::register_views(&self.ctx, &tables).await?;
        }
        Ok(())
    }

    /// Registers (or replaces) the one-column table `name(column)` holding `values`, the list a
    /// query selects with `column IN (SELECT column FROM name)`.
    pub fn set_list<'a>(
        &self,
        name: &str,
        column: &str,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), BillingError> {
        let sql_err = |e: &dyn std::fmt::Display| BillingError::Sql(format!("list {name}: {e}"));
        let schema = Arc::new(Schema::new(vec![Field::new(column, ArrowType::Utf8, false)]));
        let array: ArrayRef = Arc::new(StringArray::from_iter_values(values));
        let batch = RecordBatch::try_new(schema.clone(), vec![array]).map_err(|e| sql_err(&e))?;
        let table = MemTable::try_new(schema, vec![vec![batch]]).map_err(|e| sql_err(&e))?;
        self.ctx.deregister_table(name).map_err(|e| sql_err(&e))?;
        self.ctx.register_table(name, Arc::new(table)).map_err(|e| sql_err(&e))?;
        Ok(())
    }

    /// Runs a query with its placeholders bound to `params`; the result read typed.
    pub async fn rows(&self, sql: &str, params: &[ScalarValue]) -> Result<Rows, BillingError> {
        let sql_err = |e: &dyn std::fmt::Display| BillingError::Sql(format!("{e}\n  in: {sql}"));
        let df = self.ctx.sql(sql).await.map_err(|e| sql_err(&e))?;
        let df = if params.is_empty() { df } else { df.with_param_values(params.to_vec()).map_err(|e| sql_err(&e))? };
        Ok(Rows::new(df.collect().await.map_err(|e| sql_err(&e))?))
    }
}

/// A text parameter.
pub(crate) fn text(s: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(s.to_string()))
}

/// An exclusive lock on the billing tables of a data directory, held while an `invoice` or
/// `post` run writes them (released when dropped, also when the process dies).
pub(crate) struct BillingLock {
    _file: std::fs::File,
}

/// Takes the billing lock, failing at once with a clear message when another run holds it.
/// Local tables: a lock file in the data directory. Tables on object storage: a lock file in
/// the system's temporary folder named by the tables' URL, so billing runs on one machine take
/// turns (run billing from one place at a time).
pub(crate) fn lock_billing(root: &TableRoot) -> Result<BillingLock, BillingError> {
    let dir = match root.local_dir() {
        Some(dir) => dir.to_path_buf(),
        None => std::env::temp_dir()
            .join(format!("meterflow-billing-{:016x}", xxhash_rust::xxh3::xxh3_64(root.to_string().as_bytes()))),
    };
    let path = dir.join(".billing.lock");
    std::fs::create_dir_all(&dir).map_err(|e| BillingError::io(&dir, e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| BillingError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(BillingLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(BillingError::Nothing(format!(
            "another `meterflow invoice` or `post` is writing the billing tables of {root} (lock {}); run again \
                when it is done",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(BillingError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_billing_run_on_the_same_data_dir_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_billing(&TableRoot::local(dir.path())).unwrap();
        let e = lock_billing(&TableRoot::local(dir.path())).err().unwrap().to_string();
        assert!(e.contains("another `meterflow invoice` or `post`"), "{e}");
        drop(held);
        assert!(lock_billing(&TableRoot::local(dir.path())).is_ok());
    }
}

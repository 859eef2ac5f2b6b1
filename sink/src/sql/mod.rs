//! Read-only SQL over the committed tables, for billing teams and the CLI.
//!
//! Every Delta table folder under the data directory (or object-storage prefix) is registered under its name, plus the
//! [`views`] whose tables exist (`window_totals`, `late_usage`, `latest_invoices`,
//! `latest_invoice_lines`). Results read back typed through [`Rows`]. Statements are planned with DDL,
//! DML and statements (`SET`, transactions) disallowed, so `CREATE`, `INSERT`, `COPY`, `SET`
//! and `CREATE EXTERNAL TABLE` are refused before anything runs; URL tables (`SELECT * FROM
//! '/etc/passwd'`) are not enabled and no file-reading table functions are registered.

use deltalake::arrow::array::{Array, RecordBatch};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use deltalake::arrow::util::pretty::pretty_format_batches;
use deltalake::datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
pub use deltalake::datafusion::scalar::ScalarValue;
use std::time::Duration;

mod rows;
pub mod views;

pub use rows::{Row, Rows};
pub use views::{register_views, View, VIEWS};

use crate::storage::TableRoot;
use crate::{Result, SinkError};

/// Resource limits of a SQL session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlLimits {
    /// Memory a query may hold, in bytes (operators that can spill to disk do so first).
    pub memory_limit_bytes: usize,
    /// Longest a query may run.
    pub timeout: Duration,
    /// Most rows [`ReadOnlySql::query_limited`] returns (interactive output).
    pub max_rows: usize,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits { memory_limit_bytes: 1 << 30, timeout: Duration::from_secs(60), max_rows: 10_000 }
    }
}

/// A DataFusion session over the committed tables that refuses anything but queries.
pub struct ReadOnlySql {
    ctx: SessionContext,
    options: SQLOptions,
    limits: SqlLimits,
    /// Tables registered (those that exist on disk).
    pub tables: Vec<String>,
    /// The Delta version each registered table was read at.
    pub versions: std::collections::BTreeMap<String, u64>,
}

/// The column a table must have to be shown to a customer-bound session.
pub const CUSTOMER_COLUMN: &str = "customer_id";

impl std::fmt::Debug for ReadOnlySql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlySql").field("tables", &self.tables).finish()
    }
}

fn sql_err(e: impl std::fmt::Display) -> SinkError {
    SinkError::Sql(e.to_string())
}

impl ReadOnlySql {
    /// Registers the committed tables found under `root` (a data directory or an
    /// object-storage prefix), with default limits.
    pub async fn open(root: impl Into<TableRoot>) -> Result<Self> {
        ReadOnlySql::open_with_limits(root, SqlLimits::default()).await
    }

    /// Registers only the tables `names` that exist under `data_dir` (and the views over
    /// them), with default limits: cheaper than [`ReadOnlySql::open`] when a reader needs a
    /// few small tables.
    pub async fn open_tables(root: impl Into<TableRoot>, names: &[&str]) -> Result<Self> {
        ReadOnlySql::open_some(&root.into(), SqlLimits::default(), Some(names), None).await
    }

    /// Registers the committed tables found under `data_dir`, with these limits.
    pub async fn open_with_limits(root: impl Into<TableRoot>, limits: SqlLimits) -> Result<Self> {
        ReadOnlySql::open_some(&root.into(), limits, None, None).await
    }

    /// Like [`ReadOnlySql::open_with_limits`], seen by someone who may read only `customers`'
    /// rows (when `Some`): each table with a `customer_id` column is registered as a view
    /// filtered to those customers, under the table's own name (so the filter cannot be
    /// bypassed by naming the table), and tables without that column are not registered.
    pub async fn open_for(root: impl Into<TableRoot>, limits: SqlLimits, customers: Option<&[String]>) -> Result<Self> {
        ReadOnlySql::open_some(&root.into(), limits, None, customers).await
    }

    /// The DataFusion session (for a protocol front end that plans itself; it must apply
    /// [`ReadOnlySql::options`] and the limits).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The statement options that make a session read-only.
    pub fn options(&self) -> SQLOptions {
        self.options
    }

    /// The session's limits.
    pub fn limits(&self) -> SqlLimits {
        self.limits
    }

    async fn open_some(
        root: &TableRoot,
        limits: SqlLimits,
        only: Option<&[&str]>,
        customers: Option<&[String]>,
    ) -> Result<Self> {
        let names = root.table_names().await?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(limits.memory_limit_bytes.max(1 << 20), 1.0)
            .build_arc()
            .map_err(sql_err)?;
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new(), runtime);
        let mut tables = Vec::new();
        let mut versions = std::collections::BTreeMap::new();
        for name in names {
            if only.is_some_and(|only| !only.contains(&name.as_str())) {
                continue;
            }
            let table = root.open(&name).await?;
            let version = table.version();
            let provider = table.table_provider().await.map_err(sql_err)?;
            let provider = match customers {
                None => provider,
                Some(_) if provider.schema().field_with_name(CUSTOMER_COLUMN).is_err() => continue,
                Some(list) => customer_view(&name, provider, list)?,
            };
            ctx.register_table(name.as_str(), provider).map_err(sql_err)?;
            if let Some(v) = version {
                versions.insert(name.clone(), v);
            }
            tables.push(name);
        }
        let views = register_views(&ctx, &tables).await?;
        tables.extend(views);
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        Ok(ReadOnlySql { ctx, options, limits, tables, versions })
    }

    /// Plans and runs one read-only statement within the memory limit and timeout.
    pub async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.run(sql, &[], None).await?.0)
    }

    /// Runs one read-only statement with its `$1`, `$2`, ... placeholders bound to `params`
    /// (values are never spliced into the SQL text), reading the result typed.
    pub async fn rows(&self, sql: &str, params: &[ScalarValue]) -> Result<Rows> {
        Ok(Rows::new(self.run(sql, params, None).await?.0))
    }

    /// Like [`ReadOnlySql::query`], returning at most `max_rows` rows; the flag says whether
    /// more rows were cut off.
    pub async fn query_limited(&self, sql: &str) -> Result<(Vec<RecordBatch>, bool)> {
        self.run(sql, &[], Some(self.limits.max_rows)).await
    }

    async fn run(
        &self,
        sql: &str,
        params: &[ScalarValue],
        max_rows: Option<usize>,
    ) -> Result<(Vec<RecordBatch>, bool)> {
        let df = self.ctx.sql_with_options(sql, self.options).await.map_err(|e| {
            let msg = e.to_string();
            if msg.contains("not supported") || msg.contains("DDL") || msg.contains("DML") || msg.contains("Statement")
            {
                SinkError::Sql(format!("refused: meterflow SQL is read-only (queries only): {msg}"))
            } else {
                SinkError::Sql(msg)
            }
        })?;
        let df = if params.is_empty() { df } else { df.with_param_values(params.to_vec()).map_err(sql_err)? };
        // One row more than allowed tells whether the output was cut.
        let df = match max_rows {
            Some(n) => df.limit(0, Some(n.saturating_add(1))).map_err(sql_err)?,
            None => df,
        };
        let limits = self.limits;
        let batches = match tokio::time::timeout(limits.timeout, df.collect()).await {
            Err(_) => {
                return Err(SinkError::Sql(format!(
                    "query stopped after the {} s limit ([sql] timeout_s): narrow it with WHERE or LIMIT",
                    limits.timeout.as_secs()
                )))
            }
            Ok(Err(e)) if e.to_string().contains("Resources exhausted") => {
                return Err(SinkError::Sql(format!(
                    "query needs more memory than the {} MB limit ([sql] memory_limit_mb): aggregate more, \
                        select fewer columns, or add WHERE/LIMIT ({e})",
                    limits.memory_limit_bytes >> 20
                )))
            }
            Ok(r) => r.map_err(sql_err)?,
        };
        let Some(n) = max_rows else { return Ok((batches, false)) };
        let total: usize = batches.iter().map(|b| b.num_rows()).sum();
        if total <= n {
            return Ok((batches, false));
        }
        let mut kept = Vec::new();
        let mut left = n;
        for b in batches {
            if left == 0 {
                break;
            }
            let take = b.num_rows().min(left);
            kept.push(b.slice(0, take));
            left -= take;
        }
        Ok((kept, true))
    }
}

/// `provider` seen through a filter on its customer column: only `customers`' rows.
fn customer_view(
    name: &str,
    provider: std::sync::Arc<dyn deltalake::datafusion::catalog::TableProvider>,
    customers: &[String],
) -> Result<std::sync::Arc<dyn deltalake::datafusion::catalog::TableProvider>> {
    use deltalake::datafusion::catalog::view::ViewTable;
    use deltalake::datafusion::datasource::provider_as_source;
    use deltalake::datafusion::logical_expr::{col, lit, LogicalPlanBuilder};
    let list = customers.iter().map(|c| lit(c.clone())).collect();
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(provider), None)
        .and_then(|b| b.filter(col(CUSTOMER_COLUMN).in_list(list, false)))
        .and_then(|b| b.build())
        .map_err(sql_err)?;
    Ok(std::sync::Arc::new(ViewTable::new(plan, None)))
}

/// Output formats of query results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line; decimals and timestamps as strings, integers as numbers.
    Json,
}

/// Renders batches in the chosen format (decimals exactly as stored).
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String> {
    match format {
        Format::Table => pretty_format_batches(batches).map(|t| t.to_string()).map_err(sql_err),
        Format::Csv => render_csv(batches),
        Format::Json => render_json(batches),
    }
}

/// The cells of a batch as display strings (decimals exact, `None` for nulls).
pub fn cells(batch: &RecordBatch) -> Result<Vec<Vec<Option<String>>>> {
    let opts = FormatOptions::default();
    let mut rows = vec![Vec::with_capacity(batch.num_columns()); batch.num_rows()];
    for col in batch.columns() {
        let f = ArrayFormatter::try_new(col.as_ref(), &opts).map_err(sql_err)?;
        for (i, row) in rows.iter_mut().enumerate() {
            row.push(if col.is_null(i) { None } else { Some(f.value(i).to_string()) });
        }
    }
    Ok(rows)
}

/// One RFC 4180 CSV field (quoted when needed).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn render_csv(batches: &[RecordBatch]) -> Result<String> {
    let mut out = String::new();
    let Some(first) = batches.first() else { return Ok(out) };
    let header: Vec<String> = first.schema().fields().iter().map(|f| csv_field(f.name())).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for b in batches {
        for row in cells(b)? {
            let line: Vec<String> = row.iter().map(|c| c.as_deref().map(csv_field).unwrap_or_default()).collect();
            out.push_str(&line.join(","));
            out.push('\n');
        }
    }
    Ok(out)
}

fn render_json(batches: &[RecordBatch]) -> Result<String> {
    let mut out = String::new();
    for b in batches {
        let schema = b.schema();
        for row in cells(b)? {
            let mut obj = serde_json::Map::new();
            for (field, cell) in schema.fields().iter().zip(row) {
                let v = match cell {
                    None => serde_json::Value::Null,
                    Some(s) if field.data_type().is_integer() => {
                        s.parse::<i64>().map(serde_json::Value::from).unwrap_or(serde_json::Value::String(s))
                    }
                    Some(s) if *field.data_type() == DataType::Boolean => serde_json::Value::Bool(s == "true"),
                    Some(s) => serde_json::Value::String(s),
                };
                obj.insert(field.name().clone(), v);
            }
            out.push_str(&serde_json::Value::Object(obj).to_string());
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::row;
    use crate::table::SummaryTable;

    async fn fixture() -> (tempfile::TempDir, ReadOnlySql) {
        let dir = tempfile::tempdir().unwrap();
        let mut t = SummaryTable::open_or_create(dir.path()).await.unwrap();
        t.commit(&[row("0.1", "0.00002", 1)], crate::table::tests::range(0, 1)).await.unwrap();
        t.commit(&[row("0.2", "0.00004", 2)], crate::table::tests::range(1, 2)).await.unwrap();
        let sql = ReadOnlySql::open(dir.path()).await.unwrap();
        (dir, sql)
    }

    #[tokio::test]
    async fn window_totals_sum_the_deltas_exactly() {
        let (_dir, sql) = fixture().await;
        let b = sql.query("SELECT quantity, amount, revisions FROM window_totals").await.unwrap();
        let csv = render(&b, Format::Csv).unwrap();
        assert_eq!(csv, "quantity,amount,revisions\n0.300000000,0.000060000000000000,2\n");
    }

    #[tokio::test]
    async fn statements_that_write_or_read_files_are_refused() {
        let (_dir, sql) = fixture().await;
        for bad in [
            "CREATE TABLE t AS SELECT 1",
            "INSERT INTO usage_summaries SELECT * FROM usage_summaries",
            "COPY usage_summaries TO '/tmp/out.csv'",
            "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'",
            "SET datafusion.execution.batch_size = 1",
            "DROP VIEW window_totals",
            "SELECT * FROM '/etc/passwd'",
            "SELECT * FROM read_csv('/etc/passwd')",
        ] {
            assert!(sql.query(bad).await.is_err(), "{bad} was not refused");
        }
    }

    #[tokio::test]
    async fn a_query_beyond_the_memory_limit_fails_with_a_clear_message() {
        let (dir, _) = fixture().await;
        let limits = SqlLimits { memory_limit_bytes: 4 << 20, ..SqlLimits::default() };
        let sql = ReadOnlySql::open_with_limits(dir.path(), limits).await.unwrap();
        let huge = "SELECT v, COUNT(*) FROM (SELECT a.value * 100000 + b.value AS v FROM generate_series(1, \
            3000) a CROSS JOIN generate_series(1, 3000) b) GROUP BY v ORDER BY 2 DESC LIMIT 1";
        let e = sql.query(huge).await.unwrap_err().to_string();
        assert!(e.contains("more memory than the 4 MB limit"), "{e}");
    }

    #[tokio::test]
    async fn a_query_beyond_the_time_limit_is_stopped() {
        let (dir, _) = fixture().await;
        let limits = SqlLimits { timeout: Duration::from_millis(200), ..SqlLimits::default() };
        let sql = ReadOnlySql::open_with_limits(dir.path(), limits).await.unwrap();
        let slow =
            "SELECT SUM(a.value * b.value) FROM generate_series(1, 100000) a CROSS JOIN generate_series(1, 100000) b";
        let e = sql.query(slow).await.unwrap_err().to_string();
        assert!(e.contains("stopped after the 0 s limit"), "{e}");
    }

    #[tokio::test]
    async fn interactive_output_is_cut_at_the_row_limit() {
        let (dir, _) = fixture().await;
        let limits = SqlLimits { max_rows: 5, ..SqlLimits::default() };
        let sql = ReadOnlySql::open_with_limits(dir.path(), limits).await.unwrap();
        let (b, cut) = sql.query_limited("SELECT value FROM generate_series(1, 100)").await.unwrap();
        assert!(cut);
        assert_eq!(b.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
        let (_, cut) = sql.query_limited("SELECT value FROM generate_series(1, 5)").await.unwrap();
        assert!(!cut);
    }

    #[tokio::test]
    async fn json_output_keeps_decimals_as_exact_strings() {
        let (_dir, sql) = fixture().await;
        let b = sql.query("SELECT SUM(quantity) AS q, COUNT(*) AS n FROM usage_summaries").await.unwrap();
        assert_eq!(render(&b, Format::Json).unwrap(), "{\"n\":2,\"q\":\"0.300000000\"}\n");
    }
}

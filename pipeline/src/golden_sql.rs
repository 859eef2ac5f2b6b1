//! Golden SQL tests: the product's SQL, run as SQL over small fixed tables, against the
//! expected results written in sqllogictest files (`sql/golden/*.slt`, the format DataFusion's
//! own SQL tests use).
//!
//! Each file runs in a fresh DataFusion session holding:
//! - every table the product queries, empty, with the exact schema the product's own code
//!   creates on disk (`usage_summaries`, `billing_periods`, `rejections`, `duplicates`,
//!   `invoices`, `invoice_lines`, `postings`, `credit_notes`, `credit_grants`, `credit_ledger`), plus the aliases and one-column lists the
//!   billing queries read (`summaries_now`, `selected_customers`, ...);
//! - the views every session registers ([`meterflow_sink::sql::VIEWS`]);
//! - each product statement prepared under its name (`PREPARE usage_totals AS <the text the
//!   product runs>`), so a file runs it with `EXECUTE usage_totals('2026-09')`.
//!
//! A file inserts its rows, then queries. `UPDATE_GOLDEN=1 cargo test -p
//! meterflow-pipeline golden` rewrites the expected results from what the queries return
//! (review the diff).

use meterflow_billing::reconcile::{usage_sql, BilledCustomers, BilledRows, POSTING_SQL};
use meterflow_sink::deltalake;
use meterflow_sink::deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use meterflow_sink::deltalake::datafusion::datasource::MemTable;
use meterflow_sink::deltalake::datafusion::error::DataFusionError;
use meterflow_sink::deltalake::datafusion::execution::context::{SessionConfig, SessionContext};
use meterflow_sink::deltalake::datafusion::logical_expr::LogicalPlan;
use sqllogictest::{DBOutput, DefaultColumnType};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::status;

/// The product's statements, by the name a golden file executes them under.
fn statements() -> Vec<(&'static str, String)> {
    use meterflow_billing as b;
    let reconcile_usage = usage_sql(&[
        BilledRows { alias: "summaries_at_2".into(), customers: BilledCustomers::In("billed_customers_at_2".into()) },
        BilledRows { alias: "summaries_at_1".into(), customers: BilledCustomers::NotIn("invoiced_customers".into()) },
    ]);
    vec![
        ("usage_totals", b::usage_totals_sql(b::SUMMARIES_NOW)),
        ("adjustment_totals_now", b::window_totals_sql(b::SUMMARIES_NOW)),
        ("adjustment_totals_before", b::window_totals_sql("summaries_before_0")),
        ("earlier_periods", b::EARLIER_PERIODS_SQL.into()),
        ("minimum_true_ups", b::MINIMUM_TRUE_UPS_SQL.into()),
        ("finalized_invoices", b::FINALIZED_INVOICES_SQL.into()),
        ("posting_ledger", b::post::LEDGER_SQL.into()),
        ("reconcile_usage", reconcile_usage),
        ("reconcile_usage_nothing_billed", usage_sql(&[])),
        ("reconcile_posting", POSTING_SQL.into()),
        ("credit_notes_of_period", b::credit_note::CREDIT_NOTES_OF_PERIOD_SQL.into()),
        ("credit_notes_of_invoice", b::credit_note::CREDIT_NOTES_OF_INVOICE_SQL.into()),
        ("credit_grants", b::credits::GRANTS_SQL.into()),
        ("credit_ledger", b::credits::LEDGER_SQL.into()),
        ("credit_balances", b::credits::BALANCES_SQL.into()),
        ("credit_purchases_of_period", b::credits::PURCHASES_OF_PERIOD_SQL.into()),
        ("status_events_accepted", status::EVENTS_ACCEPTED_SQL.into()),
        ("status_late_events", status::LATE_EVENTS_SQL.into()),
        ("status_rejects", status::REJECTS_SQL.into()),
        ("status_period_events", status::PERIOD_EVENTS_SQL.into()),
        ("status_period_closes", status::PERIOD_CLOSES_SQL.into()),
        ("status_period_invoices", status::PERIOD_INVOICES_SQL.into()),
        ("status_period_documents", status::PERIOD_DOCUMENTS_SQL.into()),
    ]
}

/// The schemas of the product's tables, read from tables its own code creates.
async fn table_schemas() -> Vec<(String, SchemaRef)> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    meterflow_sink::SummaryTable::open_or_create(d).await.unwrap();
    meterflow_sink::PeriodTable::open_or_create(d).await.unwrap();
    meterflow_sink::RejectionTable::open_or_create(d).await.unwrap();
    meterflow_sink::RejectionTable::open_duplicates(d).await.unwrap();
    meterflow_billing::create_tables(d).await.unwrap();
    let mut out = Vec::new();
    for name in [
        "usage_summaries",
        "billing_periods",
        "rejections",
        "duplicates",
        "invoices",
        "invoice_lines",
        "postings",
        "credit_notes",
        "credit_grants",
        "credit_ledger",
    ] {
        let table = deltalake::open_table(meterflow_sink::table_url(d, name).unwrap()).await.unwrap();
        let schema = table.table_provider().await.unwrap().schema();
        out.push((name.to_string(), schema));
    }
    out
}

fn list(column: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(column, DataType::Utf8, false)]))
}

/// A fresh session with the tables, lists, views and prepared statements.
async fn session(schemas: &[(String, SchemaRef)]) -> SessionContext {
    // Numeric literals as exact decimals, as the product's money is.
    let config = SessionConfig::new().set_bool("datafusion.sql_parser.parse_float_as_decimal", true);
    let ctx = SessionContext::new_with_config(config);
    let summaries = schemas.iter().find(|(n, _)| n == "usage_summaries").map(|(_, s)| s.clone()).unwrap();
    let mut tables: Vec<(String, SchemaRef)> = schemas.to_vec();
    for alias in ["summaries_now", "summaries_before_0", "summaries_at_1", "summaries_at_2"] {
        tables.push((alias.into(), summaries.clone()));
    }
    for (name, column) in [
        ("selected_customers", "customer_id"),
        ("selected_periods", "billing_period"),
        ("billed_customers_at_2", "customer_id"),
        ("invoiced_customers", "customer_id"),
    ] {
        tables.push((name.into(), list(column)));
    }
    for (name, schema) in &tables {
        let empty = MemTable::try_new(schema.clone(), vec![vec![]]).unwrap();
        ctx.register_table(name.as_str(), Arc::new(empty)).unwrap();
    }
    let names: Vec<String> = schemas.iter().map(|(n, _)| n.clone()).collect();
    meterflow_sink::sql::register_views(&ctx, &names).await.unwrap();
    for (name, sql) in statements() {
        ctx.sql(&format!("PREPARE {name} AS {sql}")).await.unwrap_or_else(|e| panic!("PREPARE {name}: {e}"));
    }
    ctx
}

/// One golden file's connection.
struct Db {
    ctx: SessionContext,
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = DataFusionError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DataFusionError> {
        let df = self.ctx.sql(sql).await?;
        let is_query =
            !matches!(df.logical_plan(), LogicalPlan::Dml(_) | LogicalPlan::Ddl(_) | LogicalPlan::Statement(_));
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await?;
        if !is_query {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                DataType::Decimal128(..) | DataType::Float64 | DataType::Float32 => DefaultColumnType::FloatingPoint,
                _ => DefaultColumnType::Text,
            })
            .collect();
        let mut rows = Vec::new();
        for b in &batches {
            for r in meterflow_sink::sql::cells(b).map_err(|e| DataFusionError::External(Box::new(e)))? {
                rows.push(
                    r.into_iter()
                        .map(|c| match c {
                            None => "NULL".to_string(),
                            Some(s) if s.is_empty() => "(empty)".to_string(),
                            Some(s) => s,
                        })
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "datafusion"
    }
}

fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn the_products_sql_returns_the_golden_results_over_fixed_tables() {
    let schemas = table_schemas().await;
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let files = golden_files();
    assert!(files.len() >= 4, "golden files missing: {files:?}");
    for file in files {
        let ctx = session(&schemas).await;
        let mut runner = sqllogictest::Runner::new(move || {
            let ctx = ctx.clone();
            async move { Ok::<_, DataFusionError>(Db { ctx }) }
        });
        if update {
            runner
                .update_test_file(
                    &file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        } else {
            runner.run_file_async(&file).await.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
    }
}

#[tokio::test]
async fn every_product_statement_is_executed_by_some_golden_file() {
    let all: String = golden_files().iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    for (name, _) in statements() {
        assert!(all.contains(&format!("EXECUTE {name}")), "no golden file runs {name}");
    }
}

//! `meterflow reconcile`: ties every invoiced and posted number of a period back to the summary
//! rows (and so to the events) behind it, with DataFusion SQL over the Delta tables.
//!
//! Two comparisons, each a table of variances (`expected - actual`, zero when clean):
//! - usage, per customer and meter, for usage *belonging to* the period: events, quantity and
//!   exact amount in `usage_summaries` (all versions, so late usage counts) against the usage
//!   and adjustment lines of every finalized invoice that carries it;
//! - posting, per invoice *of* the period: invoice total against the posted AR invoice and
//!   journal entry in the posting ledger.

use meterflow_sink::deltalake::arrow::record_batch::RecordBatch;
use meterflow_sink::SUMMARIES_TABLE;
use rust_decimal::Decimal;
use std::path::Path;

use crate::tables::{self, lit, Session, INVOICES, INVOICE_LINES, POSTINGS};
use crate::BillingError;

/// The reconciliation of one period.
#[derive(Debug)]
pub struct Reconciliation {
    /// Usage variances per customer and meter.
    pub usage: Vec<RecordBatch>,
    /// Posting variances per invoice.
    pub posting: Vec<RecordBatch>,
    /// Rows with a non-zero variance.
    pub variances: usize,
}

/// SQL of the usage comparison.
pub fn usage_sql(period: &str) -> String {
    format!(
        "WITH s AS (\
           SELECT customer_id, meter, SUM(event_count) AS events, SUM(quantity) AS quantity, SUM(amount) AS amount \
           FROM usage_summaries WHERE billing_period = {p} GROUP BY 1, 2), \
         latest AS (SELECT invoice_id, MAX(revision) AS revision FROM invoices GROUP BY 1), \
         il AS (\
           SELECT l.customer_id, l.meter, SUM(l.event_count) AS events, SUM(l.quantity) AS quantity, \
                  SUM(l.amount_unrounded) AS amount \
           FROM invoice_lines l JOIN latest ON l.invoice_id = latest.invoice_id AND l.revision = latest.revision \
           WHERE l.source_period = {p} AND l.line_kind IN ('usage', 'adjustment') GROUP BY 1, 2) \
         SELECT COALESCE(s.customer_id, il.customer_id) AS customer_id, COALESCE(s.meter, il.meter) AS meter, \
           COALESCE(s.events, 0) AS summary_events, COALESCE(il.events, 0) AS invoiced_events, \
           COALESCE(s.events, 0) - COALESCE(il.events, 0) AS events_variance, \
           COALESCE(s.quantity, 0) AS summary_quantity, COALESCE(il.quantity, 0) AS invoiced_quantity, \
           COALESCE(s.quantity, 0) - COALESCE(il.quantity, 0) AS quantity_variance, \
           COALESCE(s.amount, 0) AS summary_amount, COALESCE(il.amount, 0) AS invoiced_amount, \
           COALESCE(s.amount, 0) - COALESCE(il.amount, 0) AS amount_variance \
         FROM s FULL OUTER JOIN il ON s.customer_id = il.customer_id AND s.meter = il.meter \
         ORDER BY 1, 2",
        p = lit(period)
    )
}

/// SQL of the posting comparison.
pub fn posting_sql(period: &str) -> String {
    format!(
        "WITH latest AS (SELECT invoice_id, MAX(revision) AS revision FROM invoices GROUP BY 1), \
         posted AS (SELECT idempotency_key, MAX(amount) AS amount FROM postings WHERE status = 'posted' GROUP BY 1) \
         SELECT i.invoice_id, i.revision, i.customer_id, i.currency, i.total AS invoiced_total, \
           COALESCE(ar.amount, 0) AS posted_ar_invoice, i.total - COALESCE(ar.amount, 0) AS ar_variance, \
           COALESCE(je.amount, 0) AS posted_journal, i.total - COALESCE(je.amount, 0) AS journal_variance \
         FROM invoices i JOIN latest ON i.invoice_id = latest.invoice_id AND i.revision = latest.revision \
         LEFT JOIN posted ar ON ar.idempotency_key = concat(i.invoice_id, '.r', CAST(i.revision AS VARCHAR), '.ar') \
         LEFT JOIN posted je ON je.idempotency_key = concat(i.invoice_id, '.r', CAST(i.revision AS VARCHAR), '.je') \
         WHERE i.period = {p} ORDER BY i.customer_id, i.invoice_id",
        p = lit(period)
    )
}

/// Rows of `batches` with a non-zero value in a `*_variance` column.
fn nonzero(batches: &[RecordBatch]) -> Result<usize, BillingError> {
    let mut n = 0;
    for b in batches {
        let schema = b.schema();
        let cols: Vec<usize> =
            (0..schema.fields().len()).filter(|i| schema.field(*i).name().ends_with("_variance")).collect();
        for row in meterflow_sink::sql::cells(b)? {
            let bad = cols.iter().any(|c| {
                row.get(*c)
                    .and_then(|v| v.as_deref())
                    .and_then(|v| v.parse::<Decimal>().ok())
                    .is_some_and(|d| !d.is_zero())
            });
            n += usize::from(bad);
        }
    }
    Ok(n)
}

/// Reconciles `period` over the tables in `data_dir`.
pub async fn reconcile(data_dir: &Path, period: &str) -> Result<Reconciliation, BillingError> {
    let period = meterflow_rater::Period::parse(period).ok_or_else(|| BillingError::BadPeriod(period.into()))?.label();
    let period = period.as_str();
    if !tables::exists(data_dir, SUMMARIES_TABLE) {
        return Err(BillingError::Nothing(format!(
            "no usage_summaries table in {}: run the pipeline first (or pass the right --data-dir)",
            data_dir.display()
        )));
    }
    // The billing tables may not exist yet: an empty one reconciles as "nothing invoiced".
    for spec in [&INVOICES, &INVOICE_LINES, &POSTINGS] {
        tables::append(data_dir, spec, &[]).await?;
    }
    let session = Session::new();
    for name in [SUMMARIES_TABLE, INVOICES.name, INVOICE_LINES.name, POSTINGS.name] {
        session.register(data_dir, name, name).await?;
    }
    let run = |sql: String| {
        let ctx = session.ctx.clone();
        async move {
            let df = ctx.sql(&sql).await.map_err(|e| BillingError::Sql(e.to_string()))?;
            df.collect().await.map_err(|e| BillingError::Sql(e.to_string()))
        }
    };
    let usage = run(usage_sql(period)).await?;
    let posting = run(posting_sql(period)).await?;
    let rows: usize = usage.iter().chain(&posting).map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Err(BillingError::Nothing(format!(
            "nothing to reconcile for {period}: no usage and no invoices (check the period label)"
        )));
    }
    let variances = nonzero(&usage)? + nonzero(&posting)?;
    Ok(Reconciliation { usage, posting, variances })
}

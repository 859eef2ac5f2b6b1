//! The views every SQL session over the tables registers: questions asked often enough (and
//! subtle enough, like "the latest revision of each invoice") to be written once.

use deltalake::datafusion::execution::context::SessionContext;

use crate::{Result, SinkError};

/// A view over the tables.
#[derive(Debug, Clone, Copy)]
pub struct View {
    /// Its name in SQL.
    pub name: &'static str,
    /// The tables it reads; it is registered when they all exist.
    pub reads: &'static [&'static str],
    /// Its `SELECT`.
    pub select: &'static str,
}

/// `window_totals`: the value of each window with its rows summed.
pub const WINDOW_TOTALS: View = View {
    name: "window_totals",
    reads: &["usage_summaries"],
    select: "SELECT customer_id, subject, meter, dimensions, window_start, window_end, plan_version, currency, \
SUM(quantity) AS quantity, SUM(amount) AS amount, SUM(event_count) AS event_count, \
COUNT(*) AS revisions, MIN(first_seq) AS first_seq, MAX(last_seq) AS last_seq \
FROM usage_summaries WHERE row_kind IN ('usage', 'late', 'adjustment') \
GROUP BY customer_id, subject, meter, dimensions, window_start, window_end, plan_version, currency",
};

/// `late_usage`: late rows and adjustments by meter and by how late their newest event
/// arrived after the window ended.
pub const LATE_USAGE: View = View {
    name: "late_usage",
    reads: &["usage_summaries"],
    select: "SELECT meter, row_kind, \
CASE WHEN lateness_s < 3600 THEN '1: < 1 hour' \
WHEN lateness_s < 21600 THEN '2: 1-6 hours' \
WHEN lateness_s < 86400 THEN '3: 6-24 hours' \
WHEN lateness_s < 604800 THEN '4: 1-7 days' \
ELSE '5: 7 days or more' END AS lateness, \
SUM(event_count) AS events, SUM(quantity) AS quantity, SUM(amount) AS amount \
FROM (SELECT *, (CAST(arrived_at AS BIGINT) - CAST(window_end AS BIGINT)) / 1000000 AS lateness_s \
FROM usage_summaries WHERE row_kind IN ('late', 'adjustment')) \
GROUP BY 1, 2, 3",
};

/// `latest_invoices`: the latest finalized revision of each invoice (an invoice re-issued
/// after late usage has several rows in `invoices`; this is the one in force).
pub const LATEST_INVOICES: View = View {
    name: "latest_invoices",
    reads: &["invoices"],
    select: "SELECT i.* FROM invoices i \
JOIN (SELECT invoice_id, MAX(revision) AS revision FROM invoices GROUP BY invoice_id) latest \
ON i.invoice_id = latest.invoice_id AND i.revision = latest.revision",
};

/// `latest_invoice_lines`: the lines of the latest revision of each invoice.
pub const LATEST_INVOICE_LINES: View = View {
    name: "latest_invoice_lines",
    reads: &["invoices", "invoice_lines"],
    select: "SELECT l.* FROM invoice_lines l \
JOIN (SELECT invoice_id, MAX(revision) AS revision FROM invoices GROUP BY invoice_id) latest \
ON l.invoice_id = latest.invoice_id AND l.revision = latest.revision",
};

/// Every view, in the order they are registered.
pub const VIEWS: [View; 4] = [WINDOW_TOTALS, LATE_USAGE, LATEST_INVOICES, LATEST_INVOICE_LINES];

/// Registers in `ctx` every view whose tables are among `tables`; returns their names.
pub async fn register_views(ctx: &SessionContext, tables: &[String]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for view in VIEWS {
        if view.reads.iter().all(|t| tables.iter().any(|have| have == t)) {
            let sql = format!("CREATE VIEW {} AS {}", view.name, view.select);
            ctx.sql(&sql).await.map_err(|e| SinkError::Sql(format!("view {}: {e}", view.name)))?;
            names.push(view.name.to_string());
        }
    }
    Ok(names)
}

//! `meterflow reconcile`: ties every invoiced and posted number of a period back to the summary
//! rows (and so to the events) behind it, with DataFusion SQL over the Delta tables.
//!
//! Two comparisons, each a table of variances (`expected - actual`, zero when clean):
//! - usage, per customer and meter, for usage *belonging to* the period P: events, quantity and
//!   exact amount in `usage_summaries` against the usage and adjustment lines (`source_period`
//!   = P, latest revisions) of every finalized invoice. Late usage of a closed period is billed
//!   on a later invoice (`invoicing::adjustment_windows`), so a row counts as *expected on an
//!   invoice* when it is in the summaries as of the seal of the latest finalized invoice of P's
//!   flavour that the customer has, P's or a later one ([`billed_through`], Delta time travel);
//!   rows committed after that seal are *pending*: the customer's next invoice carries them.
//!   Per figure, `summary = invoiced + pending + variance`; `billed_on` names the invoices that
//!   carry the lines. A row that disappeared from the table (the table is append-only) is
//!   expected but no longer summed, so it shows as a variance, never as pending;
//! - posting, per invoice *of* the period and per target it was posted to: the invoice total
//!   less its credit notes against what the target took, net of credit memos and reversing
//!   entries ([`POSTING_SQL`]); a target that takes journal entries only is compared on them
//!   only.

use meterflow_rater::Period;
use meterflow_sink::deltalake::arrow::record_batch::RecordBatch;
use meterflow_sink::sql::Rows;
use meterflow_sink::TableRoot;
use meterflow_sink::{PeriodTable, SUMMARIES_TABLE};
use std::collections::BTreeMap;

use crate::credit_note::CREDIT_NOTES;
use crate::invoicing::same_flavour;
use crate::tables::{self, text, Session, INVOICES, INVOICE_LINES, POSTINGS};
use crate::BillingError;

/// The reconciliation of one period.
#[derive(Debug)]
pub struct Reconciliation {
    /// Usage per customer and meter: summary, invoiced, pending and variance, and `billed_on`.
    pub usage: Vec<RecordBatch>,
    /// Posting variances per invoice.
    pub posting: Vec<RecordBatch>,
    /// Rows with a non-zero variance.
    pub variances: usize,
    /// Usage rows (customer and meter) with usage still to be billed on a next invoice.
    pub pending: usize,
}

/// Up to which `usage_summaries` version each customer's usage of a period should be on
/// finalized invoices: the rows in the table as of that version are expected on invoice lines,
/// the rows committed after it are pending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BilledThrough {
    /// Customers with a finalized invoice of the period, or of a later period of the same
    /// flavour: the highest seal among those invoices and the period's own seal.
    pub customers: BTreeMap<String, u64>,
    /// Every other customer: the period's own seal (its invoice is due), or `None` while the
    /// period is open (nothing is billed yet).
    pub others: Option<u64>,
}

/// [`BilledThrough`] of `period`, sealed at `sealed` (`None` while open), from the finalized
/// invoices `(customer, invoice period, summary version the invoice read)`.
///
/// An invoice of period Q reads the summaries as of Q's seal and carries the rows of earlier
/// closed periods committed between the previous period's seal and Q's: so a customer's
/// invoices of P and of the later periods up to Q together carry every row of P committed up to
/// the highest of their seals.
pub fn billed_through(period: &Period, sealed: Option<u64>, invoices: &[(String, String, u64)]) -> BilledThrough {
    let mut customers: BTreeMap<String, u64> = BTreeMap::new();
    for (customer, label, version) in invoices {
        let Some(q) = Period::parse(label) else { continue };
        if same_flavour(&q, period) && q.start >= period.start {
            let v = customers.entry(customer.clone()).or_insert(*version);
            *v = (*v).max(*version).max(sealed.unwrap_or(0));
        }
    }
    BilledThrough { customers, others: sealed }
}

/// The columns that identify a summary row in every version of the table (it is append-only;
/// compaction rewrites files, never rows).
const ROW_KEY: [&str; 15] = [
    "customer_id",
    "subject",
    "meter",
    "dimensions",
    "window_start",
    "window_end",
    "revision",
    "row_kind",
    "plan_version",
    "event_count",
    "first_seq",
    "last_seq",
    "quantity",
    "amount",
    "committed_at",
];

/// Which customers' rows a version of the summaries bills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BilledCustomers {
    /// Every customer.
    All,
    /// The customers listed in this one-column table (`customer_id`).
    In(String),
    /// Every customer not listed in this one-column table (`customer_id`).
    NotIn(String),
}

impl BilledCustomers {
    fn condition(&self) -> String {
        match self {
            BilledCustomers::All => "TRUE".into(),
            BilledCustomers::In(list) => format!("customer_id IN (SELECT customer_id FROM {list})"),
            BilledCustomers::NotIn(list) => format!("customer_id NOT IN (SELECT customer_id FROM {list})"),
        }
    }
}

/// One source of expected-billed rows for [`usage_sql`]: the summaries as of a version,
/// registered under `alias`, restricted to some customers.
#[derive(Debug, Clone)]
pub struct BilledRows {
    /// Alias of `usage_summaries` as of the version.
    pub alias: String,
    /// The customers billed through that version.
    pub customers: BilledCustomers,
}

/// SQL of the usage comparison of period `$1`; `billed` says which rows are expected on
/// invoices.
pub fn usage_sql(billed: &[BilledRows]) -> String {
    let key = ROW_KEY.join(", ");
    let p = "$1";
    let billed_sql = if billed.is_empty() {
        format!("SELECT {key} FROM usage_summaries WHERE FALSE")
    } else {
        billed
            .iter()
            .map(|b| {
                format!("SELECT {key} FROM {} WHERE billing_period = {p} AND ({})", b.alias, b.customers.condition())
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    let on = ROW_KEY.iter().map(|c| format!("u.{c} = b.{c}")).collect::<Vec<_>>().join(" AND ");
    let pending = |c: &str| format!("SUM(CASE WHEN r.pending THEN r.{c} ELSE 0 END) AS pending_{c}");
    format!(
        "WITH billed AS (SELECT DISTINCT {key} FROM ({billed_sql}) x), \
         r AS (\
           SELECT u.customer_id, u.meter, u.event_count, u.quantity, u.amount, b.customer_id IS NULL AS pending \
           FROM usage_summaries u LEFT JOIN billed b ON {on} WHERE u.billing_period = {p}), \
         s AS (\
           SELECT r.customer_id, r.meter, SUM(r.event_count) AS events, SUM(r.quantity) AS quantity, SUM(r.amount) AS amount, \
                  {pe}, {pq}, {pa} \
           FROM r GROUP BY 1, 2), \
         lines AS (\
           SELECT * FROM latest_invoice_lines WHERE source_period = {p} AND line_kind IN ('usage', 'adjustment')), \
         il AS (\
           SELECT customer_id, meter, SUM(event_count) AS events, SUM(quantity) AS quantity, SUM(amount_unrounded) AS amount \
           FROM lines GROUP BY 1, 2), \
         bo AS (\
           SELECT customer_id, meter, string_agg(concat(period, ': ', invoice_id), ', ' ORDER BY period, invoice_id) AS billed_on \
           FROM (SELECT DISTINCT customer_id, meter, period, invoice_id FROM lines) d GROUP BY 1, 2) \
         SELECT COALESCE(s.customer_id, il.customer_id) AS customer_id, COALESCE(s.meter, il.meter) AS meter, \
           COALESCE(s.events, 0) AS summary_events, COALESCE(il.events, 0) AS invoiced_events, \
           COALESCE(s.pending_event_count, 0) AS pending_events, \
           COALESCE(s.events, 0) - COALESCE(il.events, 0) - COALESCE(s.pending_event_count, 0) AS events_variance, \
           COALESCE(s.quantity, 0) AS summary_quantity, COALESCE(il.quantity, 0) AS invoiced_quantity, \
           COALESCE(s.pending_quantity, 0) AS pending_quantity, \
           COALESCE(s.quantity, 0) - COALESCE(il.quantity, 0) - COALESCE(s.pending_quantity, 0) AS quantity_variance, \
           COALESCE(s.amount, 0) AS summary_amount, COALESCE(il.amount, 0) AS invoiced_amount, \
           COALESCE(s.pending_amount, 0) AS pending_amount, \
           COALESCE(s.amount, 0) - COALESCE(il.amount, 0) - COALESCE(s.pending_amount, 0) AS amount_variance, \
           COALESCE(bo.billed_on, '') AS billed_on \
         FROM s FULL OUTER JOIN il ON s.customer_id = il.customer_id AND s.meter = il.meter \
         LEFT JOIN bo ON bo.customer_id = il.customer_id AND bo.meter = il.meter \
         ORDER BY 1, 2",
        pe = pending("event_count"),
        pq = pending("quantity"),
        pa = pending("amount"),
    )
}

/// SQL of the posting comparison of period `$1`: per invoice (latest revision) and per target
/// the period was posted to, what the invoice less its credit notes should leave in the
/// customer's receivable against what the target took, net: AR invoices less credit memos
/// (reversals of earlier revisions and credit notes), and the receivable lines of the journal
/// entries (reversing entries and credit note entries included). A target that takes no AR
/// documents (`hledger:`) has no AR figure and no AR variance. An invoice of a period nothing
/// was posted for yet shows under `(not posted)` with its whole total as the variance.
pub const POSTING_SQL: &str = "WITH \
posted AS (SELECT target, invoice_id, idempotency_key, document_type, MAX(amount) AS amount FROM postings \
  WHERE status = 'posted' GROUP BY 1, 2, 3, 4), \
net AS (SELECT target, invoice_id, \
  SUM(CASE WHEN document_type = 'journal_entry' THEN 0 ELSE amount END) AS ar, \
  SUM(CASE WHEN document_type = 'journal_entry' THEN amount ELSE 0 END) AS je \
  FROM posted GROUP BY 1, 2), \
targets AS (SELECT DISTINCT target FROM postings WHERE period = $1), \
t AS (SELECT target, target NOT LIKE 'hledger:%' AS takes_ar FROM targets \
  UNION ALL SELECT '(not posted)' AS target, TRUE AS takes_ar FROM (SELECT COUNT(*) AS n FROM targets) c WHERE c.n = 0), \
cn AS (SELECT invoice_id, SUM(amount) AS credited FROM credit_notes GROUP BY 1) \
SELECT i.invoice_id, i.revision, i.customer_id, i.currency, t.target, i.total AS invoiced_total, \
COALESCE(cn.credited, 0) AS credit_notes, i.total - COALESCE(cn.credited, 0) AS receivable, \
CASE WHEN t.takes_ar THEN COALESCE(n.ar, 0) END AS posted_ar_net, \
CASE WHEN t.takes_ar THEN i.total - COALESCE(cn.credited, 0) - COALESCE(n.ar, 0) ELSE 0 END AS ar_variance, \
COALESCE(n.je, 0) AS posted_journal_net, \
i.total - COALESCE(cn.credited, 0) - COALESCE(n.je, 0) AS journal_variance \
FROM latest_invoices i CROSS JOIN t \
LEFT JOIN net n ON n.target = t.target AND n.invoice_id = i.invoice_id \
LEFT JOIN cn ON cn.invoice_id = i.invoice_id \
WHERE i.period = $1 ORDER BY i.customer_id, i.invoice_id, t.target";

/// Rows of `rows` with a non-zero number in a column whose name `column` accepts.
fn nonzero(rows: &Rows, column: impl Fn(&str) -> bool) -> Result<usize, BillingError> {
    let Some(first) = rows.batches().first() else { return Ok(0) };
    let schema = first.schema();
    let cols: Vec<usize> = (0..schema.fields().len()).filter(|i| column(schema.field(*i).name())).collect();
    let mut n = 0;
    for row in rows.iter() {
        let mut bad = false;
        for c in &cols {
            bad |= !row.dec(*c)?.is_zero();
        }
        n += usize::from(bad);
    }
    Ok(n)
}

/// The finalized invoices as `(customer, period, summary version)`, one per invoice period.
async fn invoiced_versions(session: &Session) -> Result<Vec<(String, String, u64)>, BillingError> {
    let rows = session.rows("SELECT DISTINCT customer_id, period, summary_version FROM invoices", &[]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows.iter() {
        out.push((r.text(0)?, r.text(1)?, r.count(2)?));
    }
    Ok(out)
}

/// Registers the summaries as of each version of `through` and says which rows each gives.
async fn register_billed(
    session: &Session,
    root: &TableRoot,
    through: &BilledThrough,
) -> Result<Vec<BilledRows>, BillingError> {
    let mut by_version: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (customer, version) in &through.customers {
        by_version.entry(*version).or_default().push(customer);
    }
    let mut conditions: Vec<(u64, BilledCustomers)> = Vec::new();
    for (v, customers) in by_version {
        let list = format!("billed_customers_at_{v}");
        session.set_list(&list, "customer_id", customers)?;
        conditions.push((v, BilledCustomers::In(list)));
    }
    if let Some(v) = through.others {
        let others = if through.customers.is_empty() {
            BilledCustomers::All
        } else {
            session.set_list("invoiced_customers", "customer_id", through.customers.keys().map(String::as_str))?;
            BilledCustomers::NotIn("invoiced_customers".into())
        };
        conditions.push((v, others));
    }
    let mut aliases: BTreeMap<u64, String> = BTreeMap::new();
    let mut billed = Vec::with_capacity(conditions.len());
    for (version, customers) in conditions {
        let alias = match aliases.get(&version) {
            Some(a) => a.clone(),
            None => {
                let a = format!("summaries_at_{version}");
                session.register_summaries_at(root, version, &a).await?;
                aliases.insert(version, a.clone());
                a
            }
        };
        billed.push(BilledRows { alias, customers });
    }
    Ok(billed)
}

/// Reconciles `period` over the tables in `root`.
pub async fn reconcile(root: impl Into<TableRoot>, period: &str) -> Result<Reconciliation, BillingError> {
    let root = &root.into();
    let parsed = Period::parse(period).ok_or_else(|| BillingError::BadPeriod(period.into()))?;
    let label = parsed.label();
    let period = label.as_str();
    if !tables::exists(root, SUMMARIES_TABLE).await? {
        return Err(BillingError::Nothing(format!(
            "no usage_summaries table in {}: run the pipeline first (or pass the right --data-dir)",
            root
        )));
    }
    // The billing tables may not exist yet: an empty one reconciles as "nothing invoiced".
    tables::create_tables(root).await?;
    let session = Session::new();
    for name in [SUMMARIES_TABLE, INVOICES.name, INVOICE_LINES.name, POSTINGS.name, CREDIT_NOTES.name] {
        session.register(root, name, name).await?;
    }
    let closed = PeriodTable::open_or_create(root).await?.closed().await?;
    let sealed = closed.get(period).map(|c| u64::try_from(c.sealed_version).unwrap_or(0));
    let through = billed_through(&parsed, sealed, &invoiced_versions(&session).await?);
    let billed = register_billed(&session, root, &through).await?;
    let usage = session.rows(&usage_sql(&billed), &[text(period)]).await?;
    let posting = session.rows(POSTING_SQL, &[text(period)]).await?;
    if usage.is_empty() && posting.is_empty() {
        return Err(BillingError::Nothing(format!(
            "nothing to reconcile for {period}: no usage and no invoices (check the period label)"
        )));
    }
    let variance = |name: &str| name.ends_with("_variance");
    let variances = nonzero(&usage, variance)? + nonzero(&posting, variance)?;
    let pending = nonzero(&usage, |name| name.starts_with("pending_"))?;
    Ok(Reconciliation { usage: usage.into_batches(), posting: posting.into_batches(), variances, pending })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice(customer: &str, period: &str, version: u64) -> (String, String, u64) {
        (customer.into(), period.into(), version)
    }

    fn period(label: &str) -> Period {
        Period::parse(label).unwrap()
    }

    #[test]
    fn usage_is_expected_up_to_the_seal_of_the_customers_latest_invoice_of_the_period_or_after() {
        let invoices = [
            invoice("acme", "2026-09", 5),
            invoice("acme", "2026-10", 9),
            invoice("acme", "2026-11", 12),
            invoice("initech", "2026-09", 5),
        ];
        let through = billed_through(&period("2026-10"), Some(9), &invoices);
        assert_eq!(through.customers, BTreeMap::from([("acme".to_string(), 12)]));
        assert_eq!(through.others, Some(9), "initech's October invoice is due: its sealed rows are expected");
        let through = billed_through(&period("2026-09"), Some(5), &invoices);
        assert_eq!(through.customers, BTreeMap::from([("acme".to_string(), 12), ("initech".to_string(), 5)]));
    }

    #[test]
    fn invoices_of_another_period_flavour_or_of_earlier_periods_do_not_bill_a_period() {
        let invoices = [invoice("globex", "2026-10-15", 20), invoice("acme", "2026-09", 5)];
        let through = billed_through(&period("2026-10"), Some(9), &invoices);
        assert!(through.customers.is_empty(), "{through:?}");
        let through = billed_through(&period("2026-09-15"), Some(7), &invoices);
        assert_eq!(through.customers, BTreeMap::from([("globex".to_string(), 20)]));
    }

    #[test]
    fn a_period_closed_after_a_later_one_is_billed_through_its_own_seal() {
        // September closed after October: the October invoice reads below September's seal, so
        // it carries no September rows; September's own invoice carries them all.
        let invoices = [invoice("acme", "2026-09", 11), invoice("acme", "2026-10", 9)];
        let through = billed_through(&period("2026-09"), Some(11), &invoices);
        assert_eq!(through.customers, BTreeMap::from([("acme".to_string(), 11)]));
    }

    #[test]
    fn nothing_of_an_open_period_is_expected_on_an_invoice_yet() {
        assert_eq!(billed_through(&period("2026-12"), None, &[]), BilledThrough::default());
    }

    #[test]
    fn the_usage_comparison_splits_each_figure_into_invoiced_pending_and_variance() {
        let sql = usage_sql(&[BilledRows {
            alias: "summaries_at_12".into(),
            customers: BilledCustomers::In("billed_customers_at_12".into()),
        }]);
        for column in ["pending_events", "events_variance", "pending_amount", "amount_variance", "billed_on"] {
            assert!(sql.contains(&format!("AS {column}")), "{column} missing: {sql}");
        }
        assert!(sql.contains(
            "FROM summaries_at_12 WHERE billing_period = $1 AND (customer_id IN (SELECT customer_id FROM \
             billed_customers_at_12))"
        ));
        assert!(usage_sql(&[]).contains("WHERE FALSE"), "nothing billed: every row pending");
    }
}

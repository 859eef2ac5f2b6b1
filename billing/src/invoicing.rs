//! `meterflow invoice`: reads the period's totals with DataFusion SQL over the Delta tables (the
//! summaries as of the version the period's close sealed), builds the invoices, and records the
//! finalized ones in `invoices` / `invoice_lines` plus one JSON document each.
//!
//! Which rows land on which invoice, for a customer's period P sealed at version V_P:
//! - usage lines: rows of P in the summaries as of V_P;
//! - adjustment lines: rows of each earlier closed period Q that are in the summaries as of
//!   V_P but were not yet as of max(V_Q, V_prev), V_prev being the seal of the closed period
//!   just before P. Each late row therefore lands on exactly one invoice: the first one
//!   finalized after it arrived.
//!
//! The summaries table is append-only (compaction rewrites files, never rows), so these
//! differences of sums are exact.

use chrono::{Datelike, Utc};
use meterflow_rater::{Period, PriceBook};
use meterflow_sink::{ClosedPeriod, PeriodTable, SummaryTable, TableRoot, SUMMARIES_TABLE};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::BillingConfig;
use crate::invoice::{build_invoice_with_credits, Account, Credits, Invoice, InvoiceInput, UsageTotal};
use crate::tables::{self, text, Cell, Session, INVOICES, INVOICE_LINES};
use crate::BillingError;
use meterflow_sink::sql::{Row, Rows};

/// What `meterflow invoice` is asked to do.
#[derive(Debug, Clone)]
pub struct InvoiceRequest {
    /// Billing period label.
    pub period: String,
    /// Only this customer.
    pub customer: Option<String>,
    /// Compute a draft (also of an open period) and write nothing.
    pub preview: bool,
    /// Issue a new revision of finalized invoices whose content changed.
    pub revise: bool,
    /// Folder of the JSON documents.
    pub out_dir: PathBuf,
}

/// What happened to one invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A draft; nothing written.
    Preview,
    /// Finalized now (revision 1).
    Finalized,
    /// Already finalized with the same content: nothing new written.
    Unchanged,
    /// Content changed and `--revise` was given: a new revision was written.
    Revised,
}

impl Outcome {
    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Preview => "preview",
            Outcome::Finalized => "finalized",
            Outcome::Unchanged => "unchanged",
            Outcome::Revised => "revised",
        }
    }
}

/// The result of an invoice run.
#[derive(Debug, Clone)]
pub struct InvoiceRun {
    /// Invoices with what happened to each, in customer order.
    pub invoices: Vec<(Invoice, Outcome)>,
    /// Summary version read.
    pub summary_version: u64,
    /// JSON files written.
    pub files: Vec<PathBuf>,
}

fn parse_period(label: &str) -> Result<Period, BillingError> {
    Period::parse(label).ok_or_else(|| BillingError::BadPeriod(label.into()))
}

const TOTALS_COLUMNS: &str = "customer_id, meter, plan_id, plan_version, currency, billing_period, \
SUM(quantity) AS quantity, SUM(amount) AS amount, SUM(event_count) AS events, \
MIN(CASE WHEN event_count > 0 THEN first_seq END) AS first_seq, MAX(last_seq) AS last_seq";

fn totals_sql(table: &str, filter: &str) -> String {
    format!("SELECT {TOTALS_COLUMNS} FROM {table} WHERE {filter} GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 4, 6")
}

/// Alias under which an invoice run registers `usage_summaries` as of the invoiced version.
pub const SUMMARIES_NOW: &str = "summaries_now";

/// The one-column table (`customer_id`) of the customers an invoice run covers.
pub const SELECTED_CUSTOMERS: &str = "selected_customers";

/// The one-column table (`billing_period`) of the earlier periods an adjustment window covers.
pub const SELECTED_PERIODS: &str = "selected_periods";

/// The SQL text of an invoice's usage lines: the totals per (customer, meter, plan, plan
/// version, currency, billing period) of the rows of period `$1` for the customers listed in
/// [`SELECTED_CUSTOMERS`], read from the table registered as `table`. This is the period's
/// main (monthly) query; public so that benchmarks (`meterflow-querybench`) run exactly this
/// text, also on other engines.
pub fn usage_totals_sql(table: &str) -> String {
    totals_sql(table, &format!("billing_period = $1 AND customer_id IN (SELECT customer_id FROM {SELECTED_CUSTOMERS})"))
}

/// The totals of the periods in [`SELECTED_PERIODS`] for the customers in
/// [`SELECTED_CUSTOMERS`], read from `table`: one side of an adjustment window's difference.
pub fn window_totals_sql(table: &str) -> String {
    totals_sql(
        table,
        &format!(
            "billing_period IN (SELECT billing_period FROM {SELECTED_PERIODS}) \
             AND customer_id IN (SELECT customer_id FROM {SELECTED_CUSTOMERS})"
        ),
    )
}

/// The usage totals of `period` for `customers` in `usage_summaries` as of `version`, read the
/// way `meterflow invoice` reads them: a fresh billing session, the table registered at that
/// version (Delta time travel), [`usage_totals_sql`], the rows read into exact totals.
pub async fn period_usage_totals(
    root: impl Into<TableRoot>,
    version: u64,
    period: &str,
    customers: &[&str],
) -> Result<Vec<UsageTotal>, BillingError> {
    let root = &root.into();
    let session = Session::new();
    session.register_summaries_at(root, version, SUMMARIES_NOW).await?;
    session.set_list(SELECTED_CUSTOMERS, "customer_id", customers.iter().copied())?;
    usage_totals(&session, period).await
}

/// Runs [`usage_totals_sql`] over [`SUMMARIES_NOW`] in `session`.
async fn usage_totals(session: &Session, period: &str) -> Result<Vec<UsageTotal>, BillingError> {
    to_totals(&session.rows(&usage_totals_sql(SUMMARIES_NOW), &[text(period)]).await?)
}

fn to_totals(rows: &Rows) -> Result<Vec<UsageTotal>, BillingError> {
    rows.iter().map(|r| usage_total_of(&r)).collect()
}

/// One row of [`usage_totals_sql`]'s result as an exact total.
fn usage_total_of(r: &Row<'_>) -> Result<UsageTotal, BillingError> {
    Ok(UsageTotal {
        customer_id: r.text(0)?,
        meter: r.text(1)?,
        plan_id: r.text(2)?,
        plan_version: r.text(3)?,
        currency: r.text(4)?,
        billing_period: r.text(5)?,
        quantity: r.dec(6)?,
        amount: r.dec(7)?,
        event_count: r.count(8)?,
        first_seq: r.count(9)?,
        last_seq: r.count(10)?,
        amount_before: None,
    })
}

/// One row of [`usage_totals_sql`] from another engine (every cell as its display string, null
/// as `""`) as an exact total; public so that other engines' results of the same SQL read the
/// way meterflow reads its own.
pub fn usage_total_of_row(cells: &[String]) -> Result<UsageTotal, BillingError> {
    let [customer_id, meter, plan_id, plan_version, currency, billing_period, q, a, e, f, l] = cells else {
        return Err(BillingError::Sql(format!("unexpected totals row {cells:?}")));
    };
    Ok(UsageTotal {
        customer_id: customer_id.clone(),
        meter: meter.clone(),
        plan_id: plan_id.clone(),
        plan_version: plan_version.clone(),
        currency: currency.clone(),
        billing_period: billing_period.clone(),
        quantity: dec(q)?,
        amount: dec(a)?,
        event_count: int(e)?,
        first_seq: int(f)?,
        last_seq: int(l)?,
        amount_before: None,
    })
}

/// A decimal cell of another engine's result (`""` for null, an empty `SUM`).
fn dec(s: &str) -> Result<rust_decimal::Decimal, BillingError> {
    if s.is_empty() {
        return Ok(rust_decimal::Decimal::ZERO);
    }
    s.parse().map_err(|e| BillingError::Sql(format!("not a decimal: {s:?} ({e})")))
}

/// A count cell of another engine's result (`""` for null).
fn int(s: &str) -> Result<u64, BillingError> {
    if s.is_empty() {
        return Ok(0);
    }
    s.parse().map_err(|e| BillingError::Sql(format!("not a count: {s:?} ({e})")))
}

type Key = (String, String, String, String, String, String);

fn key(u: &UsageTotal) -> Key {
    (
        u.customer_id.clone(),
        u.meter.clone(),
        u.plan_id.clone(),
        u.plan_version.clone(),
        u.currency.clone(),
        u.billing_period.clone(),
    )
}

/// Totals as of `upper` minus totals as of `lower`: what arrived in between.
fn difference(upper: Vec<UsageTotal>, lower: Vec<UsageTotal>) -> Vec<UsageTotal> {
    let before: BTreeMap<Key, UsageTotal> = lower.into_iter().map(|u| (key(&u), u)).collect();
    upper
        .into_iter()
        .filter_map(|mut u| {
            if let Some(b) = before.get(&key(&u)) {
                u.quantity -= b.quantity;
                u.amount -= b.amount;
                u.amount_before = Some(b.amount);
                u.event_count = u.event_count.saturating_sub(b.event_count);
                if u.event_count > 0 {
                    u.first_seq = u.first_seq.max(b.last_seq + 1);
                }
            }
            u.amount_before.get_or_insert(rust_decimal::Decimal::ZERO);
            let changed = !u.quantity.is_zero() || !u.amount.is_zero() || u.event_count > 0;
            changed.then_some(u)
        })
        .collect()
}

/// Same period flavour: both calendar months, or both starting on the same day.
pub(crate) fn same_flavour(a: &Period, b: &Period) -> bool {
    a.start.day() == b.start.day()
}

/// Plans the adjustment windows of invoice period `period`: `(lower version, periods)` groups
/// and the base lower bound (the seal of the closed period just before it).
fn adjustment_windows(
    period: &Period,
    closed: &BTreeMap<String, ClosedPeriod>,
) -> (Option<u64>, Vec<(u64, Vec<String>)>) {
    let earlier: Vec<(Period, &ClosedPeriod)> = closed
        .values()
        .filter_map(|c| Period::parse(&c.period).map(|p| (p, c)))
        .filter(|(p, _)| same_flavour(p, period) && p.start < period.start)
        .collect();
    let Some(prev) = earlier.iter().max_by_key(|(p, _)| p.start) else { return (None, Vec::new()) };
    let base = u64::try_from(prev.1.sealed_version).unwrap_or(0);
    let mut groups: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for (p, c) in &earlier {
        let lower = base.max(u64::try_from(c.sealed_version).unwrap_or(0));
        groups.entry(lower).or_default().push(p.label());
    }
    (Some(base), groups.into_iter().collect())
}

/// Computes (and unless previewing, finalizes) the invoices of one billing period.
pub async fn run_invoices(
    root: impl Into<TableRoot>,
    accounts: &[Account],
    prices: &PriceBook,
    config: &BillingConfig,
    request: &InvoiceRequest,
) -> Result<InvoiceRun, BillingError> {
    let root = &root.into();
    let period = parse_period(&request.period)?;
    let label = period.label();
    if !tables::exists(root, SUMMARIES_TABLE).await? {
        return Err(BillingError::Nothing(format!(
            "no usage_summaries table in {}: run the pipeline first (or pass the right --data-dir)",
            root
        )));
    }
    // One writer at a time: everything below reads what earlier runs wrote.
    let _lock = if request.preview { None } else { Some(tables::lock_billing(root)?) };
    let in_scope = accounts_in_scope(accounts, request, &period)?;
    let closed = PeriodTable::open_or_create(root).await?.closed().await?;
    let sealed = closed.get(&label).map(|c| u64::try_from(c.sealed_version).unwrap_or(0));
    let version = match (sealed, request.preview) {
        (Some(v), _) => v,
        (None, true) => SummaryTable::open_or_create(root).await?.version().unwrap_or(0),
        (None, false) => return Err(BillingError::PeriodOpen(label)),
    };

    let session = Session::new();
    session.register_summaries_at(root, version, SUMMARIES_NOW).await?;
    let ids: Vec<&str> = in_scope.iter().map(|a| a.id.as_str()).collect();
    session.set_list(SELECTED_CUSTOMERS, "customer_id", ids.iter().copied())?;
    let usage = usage_totals(&session, &label).await?;
    let (base, windows) = adjustment_windows(&period, &closed);
    let adjustments = adjustments(&session, root, &windows, version).await?;
    if !request.preview {
        earlier_periods_closed(&session, &period, &closed).await?;
    }
    let remaining = minimum_remaining(root, &label, &adjustments).await?;
    let credits = CustomerCredits {
        grants: crate::credits::grants_of(root, &ids).await?,
        ledger: crate::credits::ledger_of(root, &ids).await?,
        closed_at: closed.get(&label).map_or_else(Utc::now, |c| c.closed_at),
    };
    let run = Run { period, prices, config, version, base, preview: request.preview };
    let invoices = build_invoices(&run, &in_scope, &usage, &adjustments, &remaining, &credits)?;
    if request.preview {
        return Ok(InvoiceRun {
            invoices: invoices.into_iter().map(|(i, _)| (i, Outcome::Preview)).collect(),
            summary_version: version,
            files: Vec::new(),
        });
    }
    finalize(root, invoices, request, version, &credits.ledger).await
}

/// The prepaid credits of the customers of an invoice run.
struct CustomerCredits {
    grants: BTreeMap<String, Vec<crate::credits::Grant>>,
    ledger: BTreeMap<String, Vec<crate::credits::Entry>>,
    /// When the invoiced period closed (now, for a preview of an open one).
    closed_at: chrono::DateTime<Utc>,
}

/// The customers an invoice run covers: those billed on `period` (one, with `--customer`).
fn accounts_in_scope<'a>(
    accounts: &'a [Account],
    request: &InvoiceRequest,
    period: &Period,
) -> Result<Vec<&'a Account>, BillingError> {
    let in_scope: Vec<&Account> = accounts
        .iter()
        .filter(|a| a.bills_on(period))
        .filter(|a| request.customer.as_deref().is_none_or(|c| c == a.id))
        .collect();
    if let Some(c) = &request.customer {
        match accounts.iter().find(|a| &a.id == c) {
            None => return Err(BillingError::Customer(format!("no customer `{c}` in the reference data"))),
            Some(a) if in_scope.is_empty() => {
                // Their period that starts in the same month.
                let day = if a.anchor_day <= 1 { String::new() } else { format!("-{:02}", a.anchor_day) };
                let theirs = format!("{}{day}", period.start.format("%Y-%m"));
                return Err(BillingError::Customer(format!(
                    "customer `{c}` is billed on periods starting on day {} of the month: use --period {theirs}",
                    a.anchor_day
                )));
            }
            Some(_) => {}
        }
    }
    Ok(in_scope)
}

/// Usage of earlier closed periods that arrived after their seal (late usage, re-ratings), as
/// the difference between the summaries now and at each window's lower version, for the
/// customers in [`SELECTED_CUSTOMERS`].
async fn adjustments(
    session: &Session,
    root: &TableRoot,
    windows: &[(u64, Vec<String>)],
    version: u64,
) -> Result<Vec<UsageTotal>, BillingError> {
    let mut adjustments = Vec::new();
    for (i, (lower, periods)) in windows.iter().enumerate() {
        if *lower >= version {
            continue;
        }
        let alias = format!("summaries_before_{i}");
        session.register_summaries_at(root, *lower, &alias).await?;
        session.set_list(SELECTED_PERIODS, "billing_period", periods.iter().map(String::as_str))?;
        let upper = to_totals(&session.rows(&window_totals_sql(SUMMARIES_NOW), &[]).await?)?;
        let lower_totals = to_totals(&session.rows(&window_totals_sql(&alias), &[]).await?)?;
        adjustments.extend(difference(upper, lower_totals));
    }
    Ok(adjustments)
}

/// Periods with usage of the customers in [`SELECTED_CUSTOMERS`] before period `$1`.
pub const EARLIER_PERIODS_SQL: &str = "SELECT DISTINCT billing_period FROM summaries_now \
WHERE billing_period < $1 AND customer_id IN (SELECT customer_id FROM selected_customers) ORDER BY 1";

/// Every earlier period with usage must be closed first: otherwise its late rows could land on
/// this invoice now and on its own invoice later.
async fn earlier_periods_closed(
    session: &Session,
    period: &Period,
    closed: &BTreeMap<String, ClosedPeriod>,
) -> Result<(), BillingError> {
    let label = period.label();
    let earlier = session.rows(EARLIER_PERIODS_SQL, &[text(&label)]).await?;
    let mut open = Vec::new();
    for r in earlier.iter() {
        let p = r.text(0)?;
        if Period::parse(&p).is_some_and(|q| same_flavour(&q, period)) && !closed.contains_key(&p) {
            open.push(p);
        }
    }
    if !open.is_empty() {
        return Err(BillingError::PeriodOpen(format!(
            "{} (it holds usage and comes before {label}; periods are invoiced in order)",
            open.join(", ")
        )));
    }
    Ok(())
}

/// What every invoice of one run shares.
struct Run<'a> {
    period: Period,
    prices: &'a PriceBook,
    config: &'a BillingConfig,
    /// The summaries version the usage was read at.
    version: u64,
    /// The lower version bound of the adjustments.
    base: Option<u64>,
    preview: bool,
}

/// One invoice per customer in scope that has anything to bill.
fn build_invoices(
    run: &Run<'_>,
    in_scope: &[&Account],
    usage: &[UsageTotal],
    adjustments: &[UsageTotal],
    remaining: &BTreeMap<(String, String, String), rust_decimal::Decimal>,
    credits: &CustomerCredits,
) -> Result<Vec<(Invoice, Vec<crate::credits::Entry>)>, BillingError> {
    let mut invoices = Vec::new();
    for account in in_scope {
        let mine = |v: &[UsageTotal]| v.iter().filter(|u| u.customer_id == account.id).cloned().collect::<Vec<_>>();
        let (usage, adjustments) = (mine(usage), mine(adjustments));
        let id = crate::invoice::invoice_id(&account.id, &account.legal_entity, &account.currency, &run.period.label());
        // The customer's ledger without this invoice's own rows: re-running (or revising) the
        // invoice sees what every other invoice left, never its own earlier burn.
        let customer_ledger = credits.ledger.get(&account.id).map_or(&[][..], Vec::as_slice);
        let history: Vec<crate::credits::Entry> =
            customer_ledger.iter().filter(|e| !e.written_by(&id)).cloned().collect();
        let grants = credits.grants.get(&account.id).map_or(&[][..], Vec::as_slice);
        let input = InvoiceInput {
            period: run.period,
            account,
            usage: &usage,
            adjustments: &adjustments,
            prices: run.prices,
            config: run.config,
            summary_version: run.version,
            adjustments_after_version: run.base,
            preview: run.preview,
            minimum_remaining: remaining
                .iter()
                .filter(|((c, _, _), _)| *c == account.id)
                .map(|((_, p, v), t)| ((p.clone(), v.clone()), *t))
                .collect(),
            credits: Some(Credits { grants, history: &history, closed_at: credits.closed_at }),
        };
        if let Some(built) = build_invoice_with_credits(&input)? {
            invoices.push(built);
        }
    }
    Ok(invoices)
}

/// True-ups standing on finalized invoices (latest revisions) of periods before `period` for
/// the source periods of these adjustments, per (customer, source period, plan version). Only
/// earlier invoices count, so re-running an invoice always sees the same figure.
/// The minimum true-ups already billed, per (customer, source period, plan version), on the
/// latest revisions of invoices of periods before `$1`, for the periods in
/// [`SELECTED_PERIODS`].
pub const MINIMUM_TRUE_UPS_SQL: &str = "SELECT customer_id, source_period, plan_version, SUM(amount) \
FROM latest_invoice_lines WHERE line_kind = 'minimum_true_up' \
AND source_period IN (SELECT billing_period FROM selected_periods) AND period < $1 GROUP BY 1, 2, 3 ORDER BY 1, 2, 3";

async fn minimum_remaining(
    root: &TableRoot,
    period: &str,
    adjustments: &[UsageTotal],
) -> Result<BTreeMap<(String, String, String), rust_decimal::Decimal>, BillingError> {
    let session = Session::new();
    if adjustments.is_empty() || !session.register(root, INVOICES.name, "invoices").await? {
        return Ok(BTreeMap::new());
    }
    session.register(root, INVOICE_LINES.name, "invoice_lines").await?;
    session.set_list(SELECTED_PERIODS, "billing_period", adjustments.iter().map(|a| a.billing_period.as_str()))?;
    let rows = session.rows(MINIMUM_TRUE_UPS_SQL, &[text(period)]).await?;
    let mut out = BTreeMap::new();
    for r in rows.iter() {
        out.insert((r.text(0)?, r.text(1)?, r.text(2)?), r.dec(3)?);
    }
    Ok(out)
}

/// Latest finalized revision of each invoice id: `(revision, content hash)`.
async fn finalized(root: &TableRoot) -> Result<BTreeMap<String, (u32, String)>, BillingError> {
    let session = Session::new();
    if !session.register(root, INVOICES.name, "invoices").await? {
        return Ok(BTreeMap::new());
    }
    let rows = session.rows("SELECT invoice_id, revision, content_hash FROM latest_invoices", &[]).await?;
    let mut out = BTreeMap::new();
    for r in rows.iter() {
        out.insert(r.text(0)?, (revision(&r, 1)?, r.text(2)?));
    }
    Ok(out)
}

/// `(invoice_id, revision)` pairs whose lines are already written.
async fn lines_written(root: &TableRoot) -> Result<BTreeSet<(String, u32)>, BillingError> {
    let session = Session::new();
    if !session.register(root, INVOICE_LINES.name, "invoice_lines").await? {
        return Ok(BTreeSet::new());
    }
    let rows = session.rows("SELECT DISTINCT invoice_id, revision FROM invoice_lines", &[]).await?;
    let mut out = BTreeSet::new();
    for r in rows.iter() {
        out.insert((r.text(0)?, revision(&r, 1)?));
    }
    Ok(out)
}

/// An invoice revision cell.
fn revision(r: &Row<'_>, col: usize) -> Result<u32, BillingError> {
    let v = r.count(col)?;
    u32::try_from(v).map_err(|_| BillingError::Sql(format!("invoice revision {v} is out of range")))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn line_rows(inv: &Invoice) -> Vec<Vec<Cell>> {
    inv.lines
        .iter()
        .map(|l| {
            vec![
                Cell::Text(inv.invoice_id.clone()),
                Cell::Int(i64::from(inv.revision)),
                Cell::Int(i64::from(l.line_no)),
                Cell::Text(l.kind.as_str().to_string()),
                Cell::Text(inv.customer_id.clone()),
                Cell::Text(inv.period.clone()),
                Cell::Text(l.source_period.clone()),
                Cell::OptText(l.meter.clone()),
                Cell::OptText(l.plan_version.clone()),
                Cell::Text(l.description.clone()),
                Cell::Dec(l.quantity),
                Cell::Dec(l.amount_unrounded),
                Cell::Dec(l.amount),
                Cell::Text(inv.currency.clone()),
                Cell::Text(l.item.clone()),
                Cell::Text(l.revenue_account.clone()),
                Cell::Int(i64_of(l.event_count)),
                Cell::Int(i64_of(l.first_seq)),
                Cell::Int(i64_of(l.last_seq)),
            ]
        })
        .collect()
}

fn header_row(inv: &Invoice, json: &str) -> Vec<Cell> {
    vec![
        Cell::Text(inv.invoice_id.clone()),
        Cell::Int(i64::from(inv.revision)),
        Cell::Text(inv.status.clone()),
        Cell::Text(inv.customer_id.clone()),
        Cell::Text(inv.customer_name.clone()),
        Cell::Text(inv.erp_customer_id.clone()),
        Cell::Text(inv.legal_entity.clone()),
        Cell::Text(inv.currency.clone()),
        Cell::Text(inv.period.clone()),
        Cell::Time(inv.period_start),
        Cell::Time(inv.period_end),
        Cell::Text(inv.issue_date.clone()),
        Cell::Text(inv.due_date.clone()),
        Cell::Int(i64::try_from(inv.lines.len()).unwrap_or(i64::MAX)),
        Cell::Dec(inv.total),
        Cell::Int(i64_of(inv.summary_version)),
        Cell::Text(inv.content_hash.clone()),
        Cell::Time(Utc::now()),
        Cell::Text(json.to_string()),
    ]
}

/// Path of an invoice's JSON document.
pub fn document_path(out_dir: &Path, inv: &Invoice) -> PathBuf {
    out_dir.join(&inv.period).join(format!("{}.r{}.json", inv.invoice_id, inv.revision))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BillingError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| BillingError::io(dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| BillingError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| BillingError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| BillingError::io(path, e))
}

async fn finalize(
    root: &TableRoot,
    invoices: Vec<(Invoice, Vec<crate::credits::Entry>)>,
    request: &InvoiceRequest,
    version: u64,
    ledger: &BTreeMap<String, Vec<crate::credits::Entry>>,
) -> Result<InvoiceRun, BillingError> {
    let existing = finalized(root).await?;
    let mut planned = Vec::new();
    let mut entries_of = BTreeMap::new();
    let mut changed = Vec::new();
    let mut conflicts = Vec::new();
    for (mut inv, entries) in invoices {
        let outcome = match existing.get(&inv.invoice_id) {
            None => {
                inv.revision = 1;
                Outcome::Finalized
            }
            Some((rev, hash)) if *hash == inv.content_hash => {
                inv.revision = *rev;
                Outcome::Unchanged
            }
            Some((rev, hash)) => {
                if !request.revise {
                    changed.push(format!(
                        "{} ({}): revision {rev} has content {hash}, recomputing gives {}",
                        inv.invoice_id, inv.customer_id, inv.content_hash
                    ));
                    continue;
                }
                let customer_ledger = ledger.get(&inv.customer_id).map_or(&[][..], Vec::as_slice);
                if let Some(why) =
                    crate::credits::carry_conflict(&inv.invoice_id, &inv.period, &entries, customer_ledger)
                {
                    conflicts.push(why);
                    continue;
                }
                inv.revision = rev + 1;
                Outcome::Revised
            }
        };
        entries_of.insert(inv.invoice_id.clone(), entries);
        planned.push((inv, outcome));
    }
    if !conflicts.is_empty() {
        return Err(BillingError::InvoiceChanged(format!(
            "these invoices cannot be re-issued, so nothing was written:\n  {}",
            conflicts.join("\n  ")
        )));
    }
    if !changed.is_empty() {
        return Err(BillingError::InvoiceChanged(format!(
            "finalized invoices would change, so nothing was written:\n  {}\nFinalized invoices are never \
                rewritten silently: corrections of a closed period land as adjustments on the next period's invoice. If the change is intended (for example fixed reference data), run again with --revise to issue new revisions.",
            changed.join("\n  ")
        )));
    }
    // Lines first, then headers: an invoice exists for readers only once its header is
    // written, and a rerun after a crash in between writes only the missing part.
    let written = lines_written(root).await?;
    let new: Vec<&(Invoice, Outcome)> = planned.iter().filter(|(_, o)| *o != Outcome::Unchanged).collect();
    let lines: Vec<Vec<Cell>> = new
        .iter()
        .filter(|(i, _)| !written.contains(&(i.invoice_id.clone(), i.revision)))
        .flat_map(|(i, _)| line_rows(i))
        .collect();
    tables::append(root, &INVOICE_LINES, &lines).await?;
    // Then the credit ledger rows, before the header for the same reason.
    let now = Utc::now();
    let mut credit_rows = Vec::new();
    for (inv, _) in &new {
        let customer_ledger = ledger.get(&inv.customer_id).map_or(&[][..], Vec::as_slice);
        let entries = entries_of.remove(&inv.invoice_id).unwrap_or_default();
        credit_rows.extend(crate::credits::rows_of_revision(
            customer_ledger,
            &inv.invoice_id,
            inv.revision,
            entries,
            now,
        ));
    }
    crate::credits::append_entries(root, &credit_rows).await?;
    let mut headers = Vec::new();
    let mut files = Vec::new();
    for (inv, _) in &planned {
        let json = inv.to_json()?;
        let path = document_path(&request.out_dir, inv);
        write_atomically(&path, json.as_bytes())?;
        files.push(path);
        if new.iter().any(|(i, _)| i.invoice_id == inv.invoice_id) {
            headers.push(header_row(inv, &json));
        }
    }
    tables::append(root, &INVOICES, &headers).await?;
    Ok(InvoiceRun { invoices: planned, summary_version: version, files })
}

/// The documents of the latest revision of each invoice of period `$1`.
pub const FINALIZED_INVOICES_SQL: &str =
    "SELECT document FROM latest_invoices WHERE period = $1 ORDER BY customer_id, invoice_id";

/// The finalized invoices of a period (latest revision of each), read back from `invoices`.
pub async fn finalized_invoices(root: impl Into<TableRoot>, period: &str) -> Result<Vec<Invoice>, BillingError> {
    let root = &root.into();
    let session = Session::new();
    if !session.register(root, INVOICES.name, "invoices").await? {
        return Ok(Vec::new());
    }
    let rows = session.rows(FINALIZED_INVOICES_SQL, &[text(period)]).await?;
    rows.iter().map(|r| Invoice::from_json(&r.text(0)?)).collect()
}

/// The latest revision of invoice `invoice_id`, if it was finalized.
pub(crate) async fn latest_revision(root: &TableRoot, invoice_id: &str) -> Result<Option<Invoice>, BillingError> {
    let session = Session::new();
    if !session.register(root, INVOICES.name, "invoices").await? {
        return Ok(None);
    }
    let rows = session.rows("SELECT document FROM latest_invoices WHERE invoice_id = $1", &[text(invoice_id)]).await?;
    let Some(first) = rows.iter().next() else { return Ok(None) };
    let json = first.text(0)?;
    Invoice::from_json(&json).map(Some)
}

/// Every finalized revision of the invoices of `period`, by invoice id and revision.
pub(crate) async fn all_revisions(
    root: &TableRoot,
    period: &str,
) -> Result<BTreeMap<(String, u32), Invoice>, BillingError> {
    let session = Session::new();
    if !session.register(root, INVOICES.name, "invoices").await? {
        return Ok(BTreeMap::new());
    }
    let rows = session.rows("SELECT document FROM invoices WHERE period = $1", &[text(period)]).await?;
    let mut out = BTreeMap::new();
    for r in rows.iter() {
        let inv = Invoice::from_json(&r.text(0)?)?;
        out.insert((inv.invoice_id.clone(), inv.revision), inv);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn closed(period: &str, sealed: i64) -> (String, ClosedPeriod) {
        (
            period.into(),
            ClosedPeriod {
                period: period.into(),
                closed_at: Utc.timestamp_opt(0, 0).unwrap(),
                closed_by: "manual".into(),
                sealed_version: sealed,
            },
        )
    }

    #[test]
    fn adjustments_start_where_the_previous_invoice_stopped() {
        let map: BTreeMap<String, ClosedPeriod> =
            [closed("2026-09", 5), closed("2026-10", 9), closed("2026-10-15", 7), closed("2026-11", 12)]
                .into_iter()
                .collect();
        let (base, windows) = adjustment_windows(&Period::parse("2026-11").unwrap(), &map);
        assert_eq!(base, Some(9));
        assert_eq!(windows, vec![(9, vec!["2026-09".to_string(), "2026-10".to_string()])]);
        let (base, windows) = adjustment_windows(&Period::parse("2026-09").unwrap(), &map);
        assert_eq!((base, windows.len()), (None, 0), "nothing closed before the first period");
    }
}

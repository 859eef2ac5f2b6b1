//! The period-close commands for finance: `close`, `invoice`, `post`, `reconcile`. Each returns
//! the text it prints, so the CLI and the demo share them.

use anyhow::{Context, Result};
use meterflow_billing::{
    post_period, reconcile as reconcile_period, run_invoices, Invoice, InvoiceRequest, Outcome, Target,
};
use meterflow_sink::sql::{render, Format};
use meterflow_sink::{PeriodTable, SummaryTable};
use std::path::PathBuf;

use meterflow_pipeline::config::Config;

/// Appends one line of formatted text.
fn line(s: &mut String, args: std::fmt::Arguments<'_>) {
    s.push_str(&args.to_string());
    s.push('\n');
}

/// Folder of the invoice JSON documents: `<data_dir>/documents/invoices`.
pub fn invoice_dir(config: &Config) -> PathBuf {
    config.storage.data_dir.join("documents").join("invoices")
}

/// The default posting target: `file:<data_dir>/documents/erp`.
pub fn default_target(config: &Config) -> String {
    format!("file:{}", config.storage.data_dir.join("documents").join("erp").display())
}

/// Closes a billing period now, sealing the current summaries version.
pub async fn close(config: &Config, period: &str) -> Result<String> {
    let p = meterflow_rater::Period::parse(period).with_context(|| {
        format!(
            "--period {period:?} is not YYYY-MM (for example 2026-11) or YYYY-MM-DD (an anchored period's first day)"
        )
    })?;
    let mut table = SummaryTable::open_or_create(&config.tables()?).await?;
    let mut periods = PeriodTable::open_or_create(&config.tables()?).await?;
    if let Some(c) = periods.closed().await?.get(&p.label()) {
        return Ok(format!(
            "{} was already closed at {} ({}), sealing usage_summaries version {}; closed periods are never reopened",
            c.period,
            c.closed_at.to_rfc3339(),
            c.closed_by,
            c.sealed_version
        ));
    }
    let sealed = table.current_version().await?;
    let recorded = periods.close(&p.label(), p.start, p.end, "manual", sealed).await?;
    if recorded.closed_by != "manual" || recorded.sealed_version != i64::try_from(sealed).unwrap_or(i64::MAX) {
        return Ok(format!(
            "{} was closed at the same moment by {} at {}, sealing usage_summaries version {}; that close stands",
            recorded.period,
            recorded.closed_by,
            recorded.closed_at.to_rfc3339(),
            recorded.sealed_version
        ));
    }
    Ok(format!("closed {} sealing usage_summaries version {sealed}; later usage for it becomes adjustments", p.label()))
}

/// An invoice as text, line by line, with tier breakdowns.
pub fn render_invoice(inv: &Invoice) -> String {
    let mut s = String::new();
    line(
        &mut s,
        format_args!(
            "{} r{} [{}]  {} ({}, ERP {})  {}  {}",
            inv.invoice_id,
            inv.revision,
            inv.status,
            inv.customer_name,
            inv.customer_id,
            inv.erp_customer_id,
            inv.legal_entity,
            inv.currency
        ),
    );
    line(
        &mut s,
        format_args!(
            "  period {} ({} to {}), issued {}, due {}, from usage_summaries version {}",
            inv.period,
            inv.period_start.format("%Y-%m-%d"),
            inv.period_end.format("%Y-%m-%d"),
            inv.issue_date,
            inv.due_date,
            inv.summary_version
        ),
    );
    for l in &inv.lines {
        line(
            &mut s,
            format_args!(
                "  {:>3}  {:<15} {:<70} {:>14} {:>12}",
                l.line_no,
                l.kind,
                l.description,
                l.quantity.to_string(),
                l.amount.to_string()
            ),
        );
        for t in &l.tiers {
            line(
                &mut s,
                format_args!(
                    "         tier {}: {} x {}{} = {}",
                    t.tier,
                    t.quantity,
                    t.unit_price,
                    if t.flat_fee.is_zero() { String::new() } else { format!(" + {}", t.flat_fee) },
                    t.amount
                ),
            );
        }
    }
    line(&mut s, format_args!("  total {} {}", inv.currency, inv.total));
    s
}

/// Options of `meterflow invoice`.
#[derive(Debug, Clone)]
pub struct InvoiceOptions {
    /// Period label.
    pub period: String,
    /// Only this customer.
    pub customer: Option<String>,
    /// Draft only.
    pub preview: bool,
    /// Issue new revisions of changed invoices.
    pub revise: bool,
    /// Folder of the JSON documents (default [`invoice_dir`]).
    pub out: Option<PathBuf>,
    /// Print the JSON documents instead of text.
    pub json: bool,
}

/// Computes (and finalizes, unless previewing) the invoices of a period.
pub async fn invoice(config: &Config, opts: &InvoiceOptions) -> Result<String> {
    let (_, reference) = meterflow_pipeline::catalog::current_reference(config).await?;
    let request = InvoiceRequest {
        period: opts.period.clone(),
        customer: opts.customer.clone(),
        preview: opts.preview,
        revise: opts.revise,
        out_dir: opts.out.clone().unwrap_or_else(|| invoice_dir(config)),
    };
    let run =
        run_invoices(&config.tables()?, &reference.accounts(), &reference.prices, &config.billing, &request).await?;
    let mut s = String::new();
    if run.invoices.is_empty() {
        line(&mut s, format_args!("{}: no customer has anything to bill", opts.period));
    }
    for (inv, outcome) in &run.invoices {
        if opts.json {
            s.push_str(&inv.to_json()?);
        } else {
            s.push_str(&render_invoice(inv));
            line(&mut s, format_args!("  -> {}\n", outcome.as_str()));
        }
    }
    if !opts.json && !opts.preview {
        let n = |o: Outcome| run.invoices.iter().filter(|(_, x)| *x == o).count();
        line(
            &mut s,
            format_args!(
            "{}: {} invoices from usage_summaries version {}: {} finalized, {} revised, {} unchanged; documents in {}",
            opts.period,
            run.invoices.len(),
            run.summary_version,
            n(Outcome::Finalized),
            n(Outcome::Revised),
            n(Outcome::Unchanged),
            request.out_dir.join(&opts.period).display()
        ),
        );
    }
    Ok(s)
}

/// Posts a period's ERP documents; the flag is false when anything failed or is still pending.
pub async fn post(config: &Config, period: &str, target: Option<&str>, retry_failed: bool) -> Result<(String, bool)> {
    let spec = target.map_or_else(|| default_target(config), str::to_string);
    let target = Target::parse(&spec)?;
    let r = post_period(&config.tables()?, period, &target, &config.billing, retry_failed).await?;
    let mut s = format!(
        "{period} -> {}: {} documents, {} posted now in {} batches ({} requests), {} already posted, {} failed, \
            {} failed before (not resent; --retry-failed), {} still pending\n",
        target.label(),
        r.documents,
        r.posted,
        r.batches,
        r.requests,
        r.already_posted,
        r.failed.len(),
        r.previously_failed,
        r.pending.len()
    );
    for (key, why) in &r.failed {
        line(&mut s, format_args!("  failed  {key}: {why}"));
    }
    for (key, why) in &r.pending {
        line(&mut s, format_args!("  pending {key}: {why}"));
    }
    if r.settled_first > 0 {
        line(
            &mut s,
            format_args!(
                "  {} documents of earlier revisions of re-issued invoices were still pending here and were sent \
                 again first; post again to reverse what the target took and to send the new revisions",
                r.settled_first
            ),
        );
    }
    let done = r.failed.is_empty() && r.pending.is_empty() && r.previously_failed == 0 && r.settled_first == 0;
    Ok((s, done))
}

/// `meterflow credit-note issue`: issues and records a credit note.
pub async fn credit_note_issue(config: &Config, request: &meterflow_billing::CreditNoteRequest) -> Result<String> {
    let n = meterflow_billing::issue_credit_note(&config.tables()?, request).await?;
    Ok(format!(
        "credit note {}: {} {} off line {} ({}) of {} r{} ({}, {}): {}\n`meterflow post --period {}` sends it as a \
         credit memo and a journal entry\n",
        n.credit_note_id,
        n.amount,
        n.currency,
        n.line_no,
        n.description,
        n.invoice_id,
        n.revision,
        n.customer_id,
        n.period,
        n.reason,
        n.period
    ))
}

/// `meterflow credit-note list`: the credit notes issued.
pub async fn credit_note_list(config: &Config, period: Option<&str>) -> Result<String> {
    let notes = meterflow_billing::credit_notes(&config.tables()?, period).await?;
    if notes.is_empty() {
        return Ok(format!("no credit notes{}\n", period.map(|p| format!(" on invoices of {p}")).unwrap_or_default()));
    }
    let mut s = String::new();
    for n in &notes {
        line(
            &mut s,
            format_args!(
                "{}  {}  {} r{} line {}  {} {}  {}  issued {}",
                n.credit_note_id,
                n.customer_id,
                n.invoice_id,
                n.revision,
                n.line_no,
                n.amount,
                n.currency,
                n.reason,
                n.issue_date
            ),
        );
    }
    Ok(s)
}

/// A decimal command-line value, or a message naming the option.
pub fn decimal_arg(option: &str, value: &str) -> Result<rust_decimal::Decimal> {
    value.trim().parse().with_context(|| format!("{option} {value:?} is not a decimal amount (for example 12.50)"))
}

/// A time command-line value: RFC 3339, or a date (its midnight UTC).
pub fn time_arg(option: &str, value: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    let value = value.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .with_context(|| {
            format!("{option} {value:?} is neither RFC 3339 (2026-11-05T10:00:00Z) nor a date (2026-11-05)")
        })
}

/// `meterflow credits grant`: records a grant.
pub async fn credits_grant(config: &Config, request: &meterflow_billing::GrantRequest) -> Result<String> {
    let (_, reference) = meterflow_pipeline::catalog::current_reference(config).await?;
    let account = reference
        .accounts()
        .into_iter()
        .find(|a| a.id == request.customer_id)
        .with_context(|| format!("no customer `{}` in the catalog", request.customer_id))?;
    let meters: Vec<String> = reference.meters.configs().iter().map(|m| m.name.clone()).collect();
    let g = meterflow_billing::grant_credits(&config.tables()?, request, &account, &meters).await?;
    Ok(format!(
        "granted {} {} to {} as {} (priority {}, {}{}{}): {}
they pay invoices of periods closed from now on;          `meterflow credits balance --customer {}` shows what is left
",
        g.amount,
        meterflow_billing::credits::CreditUnit::label(&g.unit),
        g.customer_id,
        g.grant_id,
        g.priority,
        g.source.as_str(),
        g.expires_at.map(|e| format!(", expires {}", e.to_rfc3339())).unwrap_or_default(),
        if g.recurring { format!(", every period, rolls over up to {}", g.rollover_cap) } else { String::new() },
        g.reason,
        g.customer_id
    ))
}

/// `meterflow credits list`: a customer's grants.
pub async fn credits_list(config: &Config, customer: &str) -> Result<String> {
    let grants = meterflow_billing::grants(&config.tables()?, customer).await?;
    if grants.is_empty() {
        return Ok(format!("no credits granted to {customer}\n"));
    }
    let mut s = String::new();
    for g in &grants {
        line(
            &mut s,
            format_args!(
                "{}  {} {}  priority {}  {}  from {}  expires {}{}  granted {}  {}",
                g.grant_id,
                g.amount,
                g.unit.label(),
                g.priority,
                g.source.as_str(),
                g.effective_from.format("%Y-%m-%d"),
                g.expires_at.map_or_else(|| "never".to_string(), |e| e.format("%Y-%m-%d").to_string()),
                if g.recurring { format!("  every period, rollover cap {}", g.rollover_cap) } else { String::new() },
                g.granted_at.to_rfc3339(),
                g.reason
            ),
        );
    }
    Ok(s)
}

/// `meterflow credits balance`: the balance of each grant, and the money total.
pub async fn credits_balance(config: &Config, customer: &str) -> Result<String> {
    let balances = meterflow_billing::balances(&config.tables()?, customer).await?;
    if balances.is_empty() {
        return Ok(format!("no credits granted to {customer}\n"));
    }
    let mut s = String::new();
    let mut totals: std::collections::BTreeMap<&str, rust_decimal::Decimal> = Default::default();
    for b in &balances {
        *totals.entry(b.unit.as_str()).or_default() += b.balance;
        line(
            &mut s,
            format_args!(
                "{}  {} {}  priority {}  {}  expires {}",
                b.grant_id,
                b.balance,
                b.unit,
                b.priority,
                b.source.as_str(),
                b.expires_at.map_or_else(|| "never".to_string(), |e| e.format("%Y-%m-%d").to_string())
            ),
        );
    }
    for (unit, total) in totals {
        line(&mut s, format_args!("total  {total} {unit}"));
    }
    Ok(s)
}

/// `meterflow credits ledger`: every ledger row of a customer.
pub async fn credits_ledger(config: &Config, customer: &str) -> Result<String> {
    let rows = meterflow_billing::ledger(&config.tables()?, customer).await?;
    if rows.is_empty() {
        return Ok(format!("no credit ledger rows for {customer}\n"));
    }
    let mut s = String::new();
    for e in &rows {
        line(
            &mut s,
            format_args!(
                "{}  {}  {:<8} {:>14} {:<12} value {:>12}  {}  {}",
                e.period,
                e.grant_id,
                e.kind.as_str(),
                e.amount.to_string(),
                e.unit,
                e.value.to_string(),
                e.invoice_id.as_deref().map(|i| format!("{i} r{}", e.revision)).unwrap_or_else(|| "-".into()),
                e.description
            ),
        );
    }
    Ok(s)
}

/// Reconciles a period; the flag is true when every variance is zero.
pub async fn reconcile(config: &Config, period: &str, format: Format) -> Result<(String, bool)> {
    let r = reconcile_period(&config.tables()?, period).await?;
    // The operations page shows the last result of each period.
    let saved = meterflow_pipeline::ops::live::save_reconcile(
        &config.storage.data_dir,
        &meterflow_pipeline::ops::ReconcileResult {
            period: period.to_string(),
            variances: r.variances as u64,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
    );
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not save the reconciliation result for the operations page");
    }
    let mut s = String::new();
    if format == Format::Table {
        line(
            &mut s,
            format_args!(
                "usage of {period}: summaries (events, quantity, exact amount) = invoice lines (billed_on) + \
                    pending + variance"
            ),
        );
    }
    s.push_str(&render(&r.usage, format)?);
    if format == Format::Table {
        line(&mut s, format_args!("\ninvoices of {period}: invoice total vs posted documents"));
    }
    s.push_str(&render(&r.posting, format)?);
    if format == Format::Table {
        line(
            &mut s,
            format_args!(
                "\n{}",
                if r.variances == 0 {
                    format!("{period}: reconciled, every variance is zero")
                } else {
                    format!("{period}: {} rows with a non-zero variance", r.variances)
                }
            ),
        );
        if r.pending > 0 {
            line(
                &mut s,
                format_args!(
                    "{period}: {} rows hold usage committed after the latest invoice's seal (pending_*): the \
                        next invoice bills it",
                    r.pending
                ),
            );
        }
    }
    Ok((s, r.variances == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_amounts_and_times_are_read_exactly_or_refused_naming_the_option() {
        assert_eq!(decimal_arg("--amount", " 12.50 ").unwrap().to_string(), "12.50");
        let e = format!("{:#}", decimal_arg("--amount", "12,50").unwrap_err());
        assert!(e.contains("--amount \"12,50\" is not a decimal amount"), "{e}");
        assert_eq!(time_arg("--expires", "2026-10-01").unwrap().to_rfc3339(), "2026-10-01T00:00:00+00:00");
        assert_eq!(
            time_arg("--expires", "2026-10-01T12:00:00+02:00").unwrap().to_rfc3339(),
            "2026-10-01T10:00:00+00:00"
        );
        let e = format!("{:#}", time_arg("--effective-from", "next week").unwrap_err());
        assert!(e.contains("--effective-from \"next week\" is neither RFC 3339"), "{e}");
    }
}

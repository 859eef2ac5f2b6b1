//! Credit notes: money taken off a finalized invoice's line after the fact (goodwill, a
//! dispute), without touching the invoice. Each note is a row of the append-only
//! `credit_notes` table; `meterflow post` sends it as an AR credit memo referencing the invoice
//! and a journal entry (debit the line's revenue account, credit receivables), and
//! `meterflow reconcile` expects the invoice's total less its notes in every target.
//!
//! [`CreditNote::issue`] is the pure rule: the note names an existing line of the invoice's
//! latest revision; its amount is positive, in the currency's minor units, and with the notes
//! already issued on that line never more than the line's amount (an invoice line, and so an
//! invoice, never goes below zero).

use chrono::{DateTime, Utc};
use meterflow_sink::TableRoot;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::erp::CREDIT_NOTE_MARK;
use crate::invoice::Invoice;
use crate::tables::{self, text, Cell, Kind, Session, Spec, Q};
use crate::BillingError;

/// `credit_notes`: one row per credit note issued.
pub(crate) const CREDIT_NOTES: Spec = Spec {
    name: "credit_notes",
    comment: "meterflow credit notes: one row per credit note issued against an invoice line",
    columns: &[
        ("credit_note_id", Kind::Text),
        ("invoice_id", Kind::Text),
        ("revision", Kind::Int),
        ("line_no", Kind::Int),
        ("customer_id", Kind::Text),
        ("erp_customer_id", Kind::Text),
        ("legal_entity", Kind::Text),
        ("currency", Kind::Text),
        ("period", Kind::Text),
        ("item", Kind::Text),
        ("description", Kind::Text),
        ("revenue_account", Kind::Text),
        ("amount", Q),
        ("reason", Kind::Text),
        ("issue_date", Kind::Text),
        ("issued_at", Kind::Time),
    ],
};

/// A credit note against one line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditNote {
    /// `<invoice id>-CN<n>`, n counting the invoice's notes from 1.
    pub credit_note_id: String,
    /// The invoice it credits.
    pub invoice_id: String,
    /// The revision of the invoice it was issued against.
    pub revision: u32,
    /// The line it credits.
    pub line_no: u32,
    /// Customer id.
    pub customer_id: String,
    /// Customer in the ERP.
    pub erp_customer_id: String,
    /// Billing legal entity.
    pub legal_entity: String,
    /// Currency (the invoice's).
    pub currency: String,
    /// The invoice's billing period.
    pub period: String,
    /// The line's ERP item code.
    pub item: String,
    /// The line's description.
    pub description: String,
    /// The line's GL revenue account (debited).
    pub revenue_account: String,
    /// Amount credited (positive).
    pub amount: Decimal,
    /// Why (shown on the credit memo and in the journal).
    pub reason: String,
    /// Issue date (YYYY-MM-DD).
    pub issue_date: String,
    /// When it was recorded.
    pub issued_at: DateTime<Utc>,
}

/// What `meterflow credit-note issue` asks for.
#[derive(Debug, Clone)]
pub struct CreditNoteRequest {
    /// The invoice.
    pub invoice_id: String,
    /// Its line.
    pub line_no: u32,
    /// Amount to credit; `None` credits what is left of the line.
    pub amount: Option<Decimal>,
    /// Why.
    pub reason: String,
}

impl CreditNote {
    /// The note `request` asks for against `invoice` (its latest revision), given the notes
    /// already issued on that invoice, at `now`.
    pub fn issue(
        invoice: &Invoice,
        request: &CreditNoteRequest,
        earlier: &[CreditNote],
        now: DateTime<Utc>,
    ) -> Result<CreditNote, BillingError> {
        let refuse = |m: String| BillingError::CreditNote(format!("{}: {m}", invoice.invoice_id));
        if request.reason.trim().is_empty() {
            return Err(refuse("give a --reason (it is shown on the credit memo and in the journal)".into()));
        }
        let line = invoice.lines.iter().find(|l| l.line_no == request.line_no).ok_or_else(|| {
            let numbers: Vec<String> = invoice.lines.iter().map(|l| l.line_no.to_string()).collect();
            refuse(format!(
                "revision {} has no line {} (its lines: {})",
                invoice.revision,
                request.line_no,
                numbers.join(", ")
            ))
        })?;
        if line.kind == crate::invoice::LineKind::Credit {
            return Err(refuse(format!(
                "line {} is prepaid credit applied, not a charge: credit notes take money off charged lines",
                line.line_no
            )));
        }
        let credited: Decimal = earlier.iter().filter(|n| n.line_no == line.line_no).map(|n| n.amount).sum();
        let left = line.amount - credited;
        let amount = request.amount.unwrap_or(left);
        let scale = meterflow_rater::minor_units(&invoice.currency).unwrap_or(2);
        if amount <= Decimal::ZERO {
            return Err(refuse(format!(
                "the amount must be positive (line {} is {} {}, {} already credited)",
                line.line_no, line.amount, invoice.currency, credited
            )));
        }
        if amount.normalize().scale() > scale {
            return Err(refuse(format!("{amount} has more decimals than {} has ({scale})", invoice.currency)));
        }
        if amount > left {
            return Err(refuse(format!(
                "{amount} {} is more than is left of line {} ({} {}: {} billed, {} already credited)",
                invoice.currency, line.line_no, left, invoice.currency, line.amount, credited
            )));
        }
        // Prepaid credits may have paid part of the invoice: notes never take it below zero.
        let all_notes: Decimal = earlier.iter().map(|n| n.amount).sum();
        if amount > invoice.total - all_notes {
            return Err(refuse(format!(
                "{amount} {} is more than is left to pay on the invoice ({} {}: total {} after prepaid credits, \
                 {all_notes} already credited)",
                invoice.currency,
                invoice.total - all_notes,
                invoice.currency,
                invoice.total
            )));
        }
        let mut amount = amount;
        amount.rescale(scale);
        let n = earlier.len() + 1;
        Ok(CreditNote {
            credit_note_id: format!("{}{CREDIT_NOTE_MARK}{n}", invoice.invoice_id),
            invoice_id: invoice.invoice_id.clone(),
            revision: invoice.revision,
            line_no: line.line_no,
            customer_id: invoice.customer_id.clone(),
            erp_customer_id: invoice.erp_customer_id.clone(),
            legal_entity: invoice.legal_entity.clone(),
            currency: invoice.currency.clone(),
            period: invoice.period.clone(),
            item: line.item.clone(),
            description: line.description.clone(),
            revenue_account: line.revenue_account.clone(),
            amount,
            reason: request.reason.trim().to_string(),
            issue_date: now.date_naive().to_string(),
            issued_at: now,
        })
    }

    fn row(&self) -> Vec<Cell> {
        vec![
            Cell::Text(self.credit_note_id.clone()),
            Cell::Text(self.invoice_id.clone()),
            Cell::Int(i64::from(self.revision)),
            Cell::Int(i64::from(self.line_no)),
            Cell::Text(self.customer_id.clone()),
            Cell::Text(self.erp_customer_id.clone()),
            Cell::Text(self.legal_entity.clone()),
            Cell::Text(self.currency.clone()),
            Cell::Text(self.period.clone()),
            Cell::Text(self.item.clone()),
            Cell::Text(self.description.clone()),
            Cell::Text(self.revenue_account.clone()),
            Cell::Dec(self.amount),
            Cell::Text(self.reason.clone()),
            Cell::Text(self.issue_date.clone()),
            Cell::Time(self.issued_at),
        ]
    }
}

macro_rules! credit_notes_where {
    ($condition:literal) => {
        concat!(
            "SELECT credit_note_id, invoice_id, revision, line_no, customer_id, erp_customer_id, legal_entity, ",
            "currency, period, item, description, revenue_account, amount, reason, issue_date, ",
            "CAST(issued_at AS BIGINT) AS issued_at_micros FROM credit_notes WHERE ",
            $condition,
            " ORDER BY invoice_id, issued_at, credit_note_id"
        )
    };
}

/// The credit notes on the invoices of period `$1`, oldest first (`issued_at` as Unix
/// microseconds).
pub const CREDIT_NOTES_OF_PERIOD_SQL: &str = credit_notes_where!("period = $1");
/// The credit notes of invoice `$1`, oldest first.
pub const CREDIT_NOTES_OF_INVOICE_SQL: &str = credit_notes_where!("invoice_id = $1");
/// Every credit note, oldest first.
pub const ALL_CREDIT_NOTES_SQL: &str = credit_notes_where!("TRUE");

/// Which credit notes to read.
enum Which<'a> {
    Period(&'a str),
    Invoice(&'a str),
    All,
}

/// The credit notes `which` names, oldest first.
async fn read(root: &TableRoot, which: Which<'_>) -> Result<Vec<CreditNote>, BillingError> {
    let session = Session::new();
    if !session.register(root, CREDIT_NOTES.name, CREDIT_NOTES.name).await? {
        return Ok(Vec::new());
    }
    let rows = match which {
        Which::Period(p) => session.rows(CREDIT_NOTES_OF_PERIOD_SQL, &[text(p)]).await?,
        Which::Invoice(i) => session.rows(CREDIT_NOTES_OF_INVOICE_SQL, &[text(i)]).await?,
        Which::All => session.rows(ALL_CREDIT_NOTES_SQL, &[]).await?,
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows.iter() {
        let currency = r.text(7)?;
        // Stored as DECIMAL(38, 9): back to the currency's minor units, as issued.
        let mut amount = r.dec(12)?;
        amount.rescale(meterflow_rater::minor_units(&currency).unwrap_or(2));
        let small = |c: usize| -> Result<u32, BillingError> {
            u32::try_from(r.count(c)?).map_err(|_| BillingError::Sql(format!("credit_notes column {c} out of range")))
        };
        out.push(CreditNote {
            credit_note_id: r.text(0)?,
            invoice_id: r.text(1)?,
            revision: small(2)?,
            line_no: small(3)?,
            customer_id: r.text(4)?,
            erp_customer_id: r.text(5)?,
            legal_entity: r.text(6)?,
            currency,
            period: r.text(8)?,
            item: r.text(9)?,
            description: r.text(10)?,
            revenue_account: r.text(11)?,
            amount,
            reason: r.text(13)?,
            issue_date: r.text(14)?,
            issued_at: DateTime::from_timestamp_micros(r.int(15)?).unwrap_or_default(),
        });
    }
    Ok(out)
}

/// The credit notes on the invoices of `period` (of every period when `None`).
pub async fn credit_notes(root: impl Into<TableRoot>, period: Option<&str>) -> Result<Vec<CreditNote>, BillingError> {
    read(&root.into(), period.map_or(Which::All, Which::Period)).await
}

/// Issues a credit note on a finalized invoice (its latest revision) and records it.
pub async fn issue_credit_note(
    root: impl Into<TableRoot>,
    request: &CreditNoteRequest,
) -> Result<CreditNote, BillingError> {
    let root = &root.into();
    let _lock = tables::lock_billing(root)?;
    let invoice = crate::invoicing::latest_revision(root, &request.invoice_id).await?.ok_or_else(|| {
        BillingError::CreditNote(format!(
            "{}: no finalized invoice has this id (list them: meterflow sql \"SELECT invoice_id, customer_id, \
             period, total FROM latest_invoices\")",
            request.invoice_id
        ))
    })?;
    let earlier = read(root, Which::Invoice(&request.invoice_id)).await?;
    let note = CreditNote::issue(&invoice, request, &earlier, Utc::now())?;
    tables::append(root, &CREDIT_NOTES, &[note.row()]).await?;
    Ok(note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::sample;
    use chrono::TimeZone;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn invoice() -> Invoice {
        let mut inv = sample::invoice(vec![sample::line(1, "10.00", "4010"), sample::line(2, "49.00", "4010")]);
        inv.invoice_id = "INV-202611-00000000000000AB".into();
        inv.revision = 2;
        inv
    }

    fn ask(line_no: u32, amount: Option<&str>) -> CreditNoteRequest {
        CreditNoteRequest { invoice_id: "x".into(), line_no, amount: amount.map(d), reason: "goodwill".into() }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 9, 10, 0, 0).unwrap()
    }

    #[test]
    fn a_credit_note_takes_part_of_a_line_and_is_numbered_per_invoice() {
        let inv = invoice();
        let first = CreditNote::issue(&inv, &ask(2, Some("9.50")), &[], now()).unwrap();
        assert_eq!(first.credit_note_id, "INV-202611-00000000000000AB-CN1");
        assert_eq!((first.amount, first.revision, first.revenue_account.as_str()), (d("9.50"), 2, "4010"));
        assert_eq!(first.issue_date, "2026-12-09");
        let rest = CreditNote::issue(&inv, &ask(2, None), std::slice::from_ref(&first), now()).unwrap();
        assert_eq!((rest.credit_note_id.ends_with("-CN2"), rest.amount), (true, d("39.50")), "what is left");
    }

    #[test]
    fn a_line_is_never_credited_below_zero_nor_in_fractions_of_a_cent() {
        let inv = invoice();
        let first = CreditNote::issue(&inv, &ask(1, Some("6")), &[], now()).unwrap();
        let e = CreditNote::issue(&inv, &ask(1, Some("4.01")), std::slice::from_ref(&first), now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than is left of line 1 (4.00 USD"), "{e}");
        let e = CreditNote::issue(&inv, &ask(1, None), &[first.clone(), CreditNote { amount: d("4"), ..first }], now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be positive"), "{e}");
        let e = CreditNote::issue(&inv, &ask(2, Some("0.005")), &[], now()).unwrap_err().to_string();
        assert!(e.contains("more decimals than USD has (2)"), "{e}");
        let e = CreditNote::issue(&inv, &ask(7, Some("1")), &[], now()).unwrap_err().to_string();
        assert!(e.contains("has no line 7 (its lines: 1, 2)"), "{e}");
        let e = CreditNote::issue(&inv, &ask(1, Some("-1")), &[], now()).unwrap_err().to_string();
        assert!(e.contains("must be positive"), "{e}");
    }

    #[test]
    fn a_credit_note_never_takes_an_invoice_paid_by_prepaid_credits_below_zero() {
        let mut credit = sample::line(3, "-55.00", "2400");
        credit.kind = crate::invoice::LineKind::Credit;
        let inv = sample::invoice(vec![sample::line(1, "10.00", "4010"), sample::line(2, "49.00", "4010"), credit]);
        let e = CreditNote::issue(&inv, &ask(2, Some("5")), &[], now()).unwrap_err().to_string();
        assert!(e.contains("more than is left to pay on the invoice (4.00 USD"), "{e}");
        let e = CreditNote::issue(&inv, &ask(3, None), &[], now()).unwrap_err().to_string();
        assert!(e.contains("line 3 is prepaid credit applied"), "{e}");
        assert!(CreditNote::issue(&inv, &ask(2, Some("4")), &[], now()).is_ok());
    }
}

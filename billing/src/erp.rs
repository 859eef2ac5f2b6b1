//! ERP documents, the pure part: each finalized invoice becomes an AR invoice and a balanced
//! journal entry in a canonical, ERP-neutral JSON shape; documents are grouped into batches;
//! journal entries render as a CSV journal import and as an hledger journal.
//!
//! Idempotency keys are `<invoice id>.r<revision>.ar` and `.je`: the same invoice revision
//! always gives the same keys, so an ERP that honours them books each document once however
//! often it is sent.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::BillingConfig;
use crate::invoice::Invoice;
use crate::BillingError;

/// One line of an AR invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArLine {
    /// Position, from 1.
    pub line_no: u32,
    /// ERP item code.
    pub item: String,
    /// Description.
    pub description: String,
    /// Units.
    pub quantity: Decimal,
    /// Rounded amount.
    pub amount: Decimal,
    /// GL revenue account.
    pub revenue_account: String,
}

/// An accounts-receivable invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArInvoice {
    /// `<invoice id>.r<revision>.ar`.
    pub idempotency_key: String,
    /// Invoice id.
    pub invoice_id: String,
    /// Invoice revision.
    pub revision: u32,
    /// Customer in the ERP.
    pub erp_customer_id: String,
    /// Customer id in meterflow.
    pub customer_id: String,
    /// Billing legal entity.
    pub legal_entity: String,
    /// Currency.
    pub currency: String,
    /// Issue date.
    pub invoice_date: String,
    /// Due date.
    pub due_date: String,
    /// Payment terms, e.g. `NET30`.
    pub terms: String,
    /// Billing period.
    pub period: String,
    /// Lines.
    pub lines: Vec<ArLine>,
    /// Invoice total.
    pub total: Decimal,
}

/// One line of a journal entry: a debit or a credit, never both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalLine {
    /// GL account.
    pub account: String,
    /// Debit amount (0 when a credit).
    pub debit: Decimal,
    /// Credit amount (0 when a debit).
    pub credit: Decimal,
    /// Memo.
    pub memo: String,
}

/// A journal entry: debit receivables, credit revenue per account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// `<invoice id>.r<revision>.je`.
    pub idempotency_key: String,
    /// Invoice id.
    pub invoice_id: String,
    /// Invoice revision.
    pub revision: u32,
    /// Customer in the ERP.
    pub erp_customer_id: String,
    /// Customer id in meterflow.
    pub customer_id: String,
    /// Legal entity whose books it goes to.
    pub legal_entity: String,
    /// Currency.
    pub currency: String,
    /// Posting date (the invoice date).
    pub date: String,
    /// Billing period.
    pub period: String,
    /// Lines; debits equal credits.
    pub lines: Vec<JournalLine>,
}

/// A document for the ERP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "document_type", rename_all = "snake_case")]
pub enum ErpDocument {
    /// An AR invoice.
    ArInvoice(ArInvoice),
    /// A journal entry.
    JournalEntry(JournalEntry),
}

impl ErpDocument {
    /// The document's idempotency key.
    pub fn key(&self) -> &str {
        match self {
            ErpDocument::ArInvoice(d) => &d.idempotency_key,
            ErpDocument::JournalEntry(d) => &d.idempotency_key,
        }
    }

    /// `ar_invoice` or `journal_entry`.
    pub fn kind(&self) -> &'static str {
        match self {
            ErpDocument::ArInvoice(_) => "ar_invoice",
            ErpDocument::JournalEntry(_) => "journal_entry",
        }
    }

    /// The invoice behind it.
    pub fn invoice(&self) -> (&str, u32, &str, &str) {
        match self {
            ErpDocument::ArInvoice(d) => (&d.invoice_id, d.revision, &d.customer_id, &d.period),
            ErpDocument::JournalEntry(d) => (&d.invoice_id, d.revision, &d.customer_id, &d.period),
        }
    }

    /// Amount and currency (the invoice total, for both documents).
    pub fn amount(&self) -> (Decimal, &str) {
        match self {
            ErpDocument::ArInvoice(d) => (d.total, &d.currency),
            // The receivable line (the first), net: the invoice total, also for credits.
            ErpDocument::JournalEntry(d) => {
                (d.lines.first().map_or(Decimal::ZERO, |l| l.debit - l.credit), &d.currency)
            }
        }
    }
}

/// Checks that a journal entry balances.
pub fn check_balanced(entry: &JournalEntry) -> Result<(), BillingError> {
    let debits: Decimal = entry.lines.iter().map(|l| l.debit).sum();
    let credits: Decimal = entry.lines.iter().map(|l| l.credit).sum();
    if debits != credits || entry.lines.iter().any(|l| l.debit.is_sign_negative() || l.credit.is_sign_negative()) {
        return Err(BillingError::Unbalanced { key: entry.idempotency_key.clone(), debits, credits });
    }
    Ok(())
}

fn side(account: &str, amount: Decimal, debit: bool, memo: String) -> JournalLine {
    // A negative amount on one side is a positive amount on the other.
    let (debit, amount) = if amount.is_sign_negative() { (!debit, -amount) } else { (debit, amount) };
    JournalLine {
        account: account.to_string(),
        debit: if debit { amount } else { Decimal::ZERO },
        credit: if debit { Decimal::ZERO } else { amount },
        memo,
    }
}

/// The AR invoice and the journal entry of one finalized invoice (the entry is checked to
/// balance).
pub fn documents(inv: &Invoice, config: &BillingConfig) -> Result<Vec<ErpDocument>, BillingError> {
    let base = format!("{}.r{}", inv.invoice_id, inv.revision);
    let ar = ArInvoice {
        idempotency_key: format!("{base}.ar"),
        invoice_id: inv.invoice_id.clone(),
        revision: inv.revision,
        erp_customer_id: inv.erp_customer_id.clone(),
        customer_id: inv.customer_id.clone(),
        legal_entity: inv.legal_entity.clone(),
        currency: inv.currency.clone(),
        invoice_date: inv.issue_date.clone(),
        due_date: inv.due_date.clone(),
        terms: format!("NET{}", inv.payment_terms_days),
        period: inv.period.clone(),
        lines: inv
            .lines
            .iter()
            .map(|l| ArLine {
                line_no: l.line_no,
                item: l.item.clone(),
                description: l.description.clone(),
                quantity: l.quantity,
                amount: l.amount,
                revenue_account: l.revenue_account.clone(),
            })
            .collect(),
        total: inv.total,
    };
    let mut revenue: BTreeMap<&str, Decimal> = BTreeMap::new();
    for l in &inv.lines {
        *revenue.entry(l.revenue_account.as_str()).or_default() += l.amount;
    }
    let mut lines = vec![side(
        &config.receivable_account,
        inv.total,
        true,
        format!("{} {} {}", inv.invoice_id, inv.customer_id, inv.period),
    )];
    for (account, amount) in revenue {
        lines.push(side(account, amount, false, format!("revenue {} {}", inv.customer_id, inv.period)));
    }
    let je = JournalEntry {
        idempotency_key: format!("{base}.je"),
        invoice_id: inv.invoice_id.clone(),
        revision: inv.revision,
        erp_customer_id: inv.erp_customer_id.clone(),
        customer_id: inv.customer_id.clone(),
        legal_entity: inv.legal_entity.clone(),
        currency: inv.currency.clone(),
        date: inv.issue_date.clone(),
        period: inv.period.clone(),
        lines,
    };
    check_balanced(&je)?;
    Ok(vec![ErpDocument::ArInvoice(ar), ErpDocument::JournalEntry(je)])
}

/// A posting batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `B-<hash of the document keys>`: the same documents give the same id.
    pub id: String,
    /// Documents, in key order.
    pub documents: Vec<ErpDocument>,
}

/// Groups documents into batches of at most `max` (in key order).
pub fn batches(mut docs: Vec<ErpDocument>, max: usize) -> Vec<Batch> {
    docs.sort_by(|a, b| a.key().cmp(b.key()));
    let mut out = Vec::new();
    let mut docs = docs.into_iter().peekable();
    while docs.peek().is_some() {
        let chunk: Vec<ErpDocument> = docs.by_ref().take(max.max(1)).collect();
        let keys: Vec<&str> = chunk.iter().map(ErpDocument::key).collect();
        let id = format!("B-{:016X}", xxh3_64(keys.join("\n").as_bytes()));
        out.push(Batch { id, documents: chunk });
    }
    out
}

/// The CSV journal import of a batch's journal entries (one row per journal line).
pub fn journal_csv(docs: &[ErpDocument]) -> String {
    use meterflow_sink::sql::csv_field;
    let mut out =
        String::from("journal_id,date,legal_entity,currency,account,debit,credit,memo,invoice_id,customer_id,period\n");
    for d in docs {
        let ErpDocument::JournalEntry(je) = d else { continue };
        for l in &je.lines {
            let fields = [
                je.idempotency_key.as_str(),
                &je.date,
                &je.legal_entity,
                &je.currency,
                &l.account,
                &l.debit.to_string(),
                &l.credit.to_string(),
                &l.memo,
                &je.invoice_id,
                &je.customer_id,
                &je.period,
            ];
            let row: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
            out.push_str(&row.join(","));
            out.push('\n');
        }
    }
    out
}

/// hledger account name of a GL account.
pub fn hledger_account(account: &str, config: &BillingConfig) -> String {
    let clean: String = account.chars().map(|c| if c.is_whitespace() || c == ';' { '-' } else { c }).collect();
    if account == config.receivable_account {
        format!("assets:receivable:{clean}")
    } else {
        format!("revenue:{clean}")
    }
}

/// The declarations (accounts, commodities) and transactions of journal entries, as an
/// hledger journal chunk. Each transaction carries its idempotency key as a tag.
pub fn hledger_journal(entries: &[&JournalEntry], config: &BillingConfig) -> String {
    let mut accounts = std::collections::BTreeSet::new();
    let mut commodities = BTreeMap::new();
    for e in entries {
        let scale = meterflow_rater::minor_units(&e.currency).unwrap_or(2);
        commodities.insert(e.currency.clone(), scale);
        for l in &e.lines {
            accounts.insert(hledger_account(&l.account, config));
        }
    }
    let mut out = String::new();
    for (c, scale) in &commodities {
        let zero = if *scale == 0 { "0".to_string() } else { format!("0.{}", "0".repeat(*scale as usize)) };
        out.push_str(&format!("commodity {zero} {c}\n"));
    }
    for a in &accounts {
        out.push_str(&format!("account {a}\n"));
    }
    for e in entries {
        out.push_str(&format!(
            "\n{} ({}) {} {}  ; key:{}, entity:{}, period:{}\n",
            e.date, e.invoice_id, e.customer_id, e.erp_customer_id, e.idempotency_key, e.legal_entity, e.period
        ));
        for l in &e.lines {
            let amount = l.debit - l.credit;
            out.push_str(&format!("    {}  {} {}\n", hledger_account(&l.account, config), amount, e.currency));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::InvoiceLine;
    use chrono::{TimeZone, Utc};

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn line(no: u32, amount: &str, account: &str) -> InvoiceLine {
        InvoiceLine {
            line_no: no,
            kind: crate::invoice::LineKind::Usage,
            description: "x".into(),
            meter: None,
            plan_version: None,
            source_period: "2026-11".into(),
            quantity: d("1"),
            tiers: vec![],
            amount_unrounded: d(amount),
            amount: d(amount),
            item: "i".into(),
            revenue_account: account.into(),
            event_count: 0,
            first_seq: 0,
            last_seq: 0,
        }
    }

    fn invoice(lines: Vec<InvoiceLine>) -> Invoice {
        let total = lines.iter().map(|l| l.amount).sum();
        Invoice {
            invoice_id: "INV-202611-1".into(),
            revision: 1,
            status: "final".into(),
            customer_id: "acme".into(),
            customer_name: "Acme".into(),
            erp_customer_id: "C-1".into(),
            legal_entity: "us".into(),
            currency: "USD".into(),
            period: "2026-11".into(),
            period_start: Utc.timestamp_opt(0, 0).unwrap(),
            period_end: Utc.timestamp_opt(0, 0).unwrap(),
            issue_date: "2026-12-01".into(),
            due_date: "2026-12-31".into(),
            payment_terms_days: 30,
            summary_version: 1,
            adjustments_after_version: None,
            lines,
            total,
            content_hash: String::new(),
        }
    }

    #[test]
    fn the_journal_entry_debits_receivables_and_credits_revenue_per_account() {
        let inv = invoice(vec![line(1, "10.00", "4010"), line(2, "2.50", "4010"), line(3, "49.00", "4100")]);
        let docs = documents(&inv, &BillingConfig::default()).unwrap();
        let ErpDocument::JournalEntry(je) = &docs[1] else { panic!("second document is the entry") };
        let summary: Vec<(&str, Decimal, Decimal)> =
            je.lines.iter().map(|l| (l.account.as_str(), l.debit, l.credit)).collect();
        assert_eq!(
            summary,
            vec![("1200", d("61.50"), d("0")), ("4010", d("0"), d("12.50")), ("4100", d("0"), d("49.00"))]
        );
        assert_eq!(docs[0].key(), "INV-202611-1.r1.ar");
        assert_eq!(docs[1].key(), "INV-202611-1.r1.je");
    }

    #[test]
    fn a_credit_line_lands_on_the_other_side_and_the_entry_still_balances() {
        let inv = invoice(vec![line(1, "10.00", "4010"), line(2, "-3.00", "4020")]);
        let docs = documents(&inv, &BillingConfig::default()).unwrap();
        let ErpDocument::JournalEntry(je) = &docs[1] else { panic!("second document is the entry") };
        assert_eq!((je.lines[2].debit, je.lines[2].credit), (d("3.00"), d("0")));
        check_balanced(je).unwrap();
    }

    #[test]
    fn an_unbalanced_entry_is_refused() {
        let inv = invoice(vec![line(1, "10.00", "4010")]);
        let docs = documents(&inv, &BillingConfig::default()).unwrap();
        let ErpDocument::JournalEntry(mut je) = docs[1].clone() else { panic!("entry") };
        je.lines[0].debit = d("10.01");
        assert!(matches!(check_balanced(&je), Err(BillingError::Unbalanced { .. })));
    }

    #[test]
    fn batches_hold_at_most_the_configured_size_and_have_stable_ids() {
        let inv = invoice(vec![line(1, "1.00", "4010")]);
        let mut docs = Vec::new();
        for i in 0..5 {
            let mut inv = inv.clone();
            inv.invoice_id = format!("INV-{i}");
            docs.extend(documents(&inv, &BillingConfig::default()).unwrap());
        }
        let b = batches(docs.clone(), 4);
        assert_eq!(b.iter().map(|b| b.documents.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        docs.reverse();
        assert_eq!(batches(docs, 4)[0].id, b[0].id);
    }
}

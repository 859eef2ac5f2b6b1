//! ERP documents, the pure part: each finalized invoice becomes an AR invoice and a balanced
//! journal entry in a canonical, ERP-neutral JSON shape; a revision of a posted invoice first
//! reverses the posted revision (an AR credit memo referencing it and a reversing journal
//! entry); a credit note issued against an invoice line becomes a credit memo and its journal
//! entry. Documents are grouped into batches; journal entries render as a CSV journal import
//! and as an hledger journal.
//!
//! Idempotency keys: `<invoice id>.r<revision>.ar` and `.je` for an invoice revision,
//! `<invoice id>.r<revision>.cm` and `.rev` for its reversal, `<credit note id>.cm` and `.je`
//! for a credit note. The same revision or note always gives the same keys, so an ERP that
//! honours them books each document once however often it is sent.

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

/// An AR credit memo: lowers what the customer owes on an AR invoice it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditMemo {
    /// `<invoice id>.r<revision>.cm` (a revision's reversal) or `<credit note id>.cm`.
    pub idempotency_key: String,
    /// The credit memo's number: `<invoice id>-R<revision>` or the credit note id.
    pub credit_memo_id: String,
    /// The invoice it credits.
    pub invoice_id: String,
    /// The revision of that invoice it credits.
    pub revision: u32,
    /// Idempotency key of the AR invoice it credits.
    pub credits_document: String,
    /// Customer in the ERP.
    pub erp_customer_id: String,
    /// Customer id in meterflow.
    pub customer_id: String,
    /// Billing legal entity.
    pub legal_entity: String,
    /// Currency.
    pub currency: String,
    /// Issue date.
    pub date: String,
    /// Billing period of the invoice it credits.
    pub period: String,
    /// Why: `revised` (the invoice was re-issued) or the reason given with the credit note.
    pub reason: String,
    /// Lines credited (positive amounts: what is taken off).
    pub lines: Vec<ArLine>,
    /// Total credited (positive).
    pub total: Decimal,
}

/// A document for the ERP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "document_type", rename_all = "snake_case")]
pub enum ErpDocument {
    /// An AR invoice.
    ArInvoice(ArInvoice),
    /// An AR credit memo.
    CreditMemo(CreditMemo),
    /// A journal entry (also a reversing entry, or a credit note's entry).
    JournalEntry(JournalEntry),
}

impl ErpDocument {
    /// The document's idempotency key.
    pub fn key(&self) -> &str {
        match self {
            ErpDocument::ArInvoice(d) => &d.idempotency_key,
            ErpDocument::CreditMemo(d) => &d.idempotency_key,
            ErpDocument::JournalEntry(d) => &d.idempotency_key,
        }
    }

    /// `ar_invoice`, `credit_memo` or `journal_entry`.
    pub fn kind(&self) -> &'static str {
        match self {
            ErpDocument::ArInvoice(_) => "ar_invoice",
            ErpDocument::CreditMemo(_) => "credit_memo",
            ErpDocument::JournalEntry(_) => "journal_entry",
        }
    }

    /// Whether it is an accounts-receivable document (an AR invoice or a credit memo).
    pub fn is_receivable(&self) -> bool {
        !matches!(self, ErpDocument::JournalEntry(_))
    }

    /// The invoice behind it.
    pub fn invoice(&self) -> (&str, u32, &str, &str) {
        match self {
            ErpDocument::ArInvoice(d) => (&d.invoice_id, d.revision, &d.customer_id, &d.period),
            ErpDocument::CreditMemo(d) => (&d.invoice_id, d.revision, &d.customer_id, &d.period),
            ErpDocument::JournalEntry(d) => (&d.invoice_id, d.revision, &d.customer_id, &d.period),
        }
    }

    /// Amount and currency: what the document adds to the customer's receivable (an invoice
    /// its total, a credit memo minus its total, a journal entry its receivable line net).
    pub fn amount(&self) -> (Decimal, &str) {
        match self {
            ErpDocument::ArInvoice(d) => (d.total, &d.currency),
            ErpDocument::CreditMemo(d) => (-d.total, &d.currency),
            // The receivable line (the first), net: the invoice total, also for credits.
            ErpDocument::JournalEntry(d) => {
                (d.lines.first().map_or(Decimal::ZERO, |l| l.debit - l.credit), &d.currency)
            }
        }
    }

    /// Where it goes in a posting run: reversals of earlier revisions first, then invoices,
    /// then credit notes (each after the invoice it credits). Read from the key's form.
    fn rank(&self) -> u8 {
        let key = self.key();
        if key.contains(CREDIT_NOTE_MARK) {
            2
        } else if key.ends_with(".rev") || key.ends_with(".cm") {
            0
        } else {
            1
        }
    }
}

/// What separates an invoice id from a credit note's number (`<invoice id>-CN<n>`); invoice
/// ids are `INV-<period>-<hex>` and never contain it.
pub const CREDIT_NOTE_MARK: &str = "-CN";

/// The reason of a credit memo that reverses a revision of an invoice re-issued since.
pub const REVISED: &str = "revised";

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

/// The documents reversing revision `inv` of an invoice re-issued since: an AR credit memo
/// crediting its AR invoice in full (when `receivable`: the target took that invoice) and a
/// reversing journal entry, its journal entry with debits and credits swapped (when
/// `journal`). Dated `date`, the new revision's issue date.
pub fn reversal(
    inv: &Invoice,
    receivable: bool,
    journal: bool,
    date: &str,
    config: &BillingConfig,
) -> Result<Vec<ErpDocument>, BillingError> {
    let mut out = Vec::new();
    let original = documents(inv, config)?;
    for doc in original {
        match doc {
            ErpDocument::ArInvoice(ar) if receivable => out.push(ErpDocument::CreditMemo(CreditMemo {
                idempotency_key: format!("{}.r{}.cm", inv.invoice_id, inv.revision),
                credit_memo_id: format!("{}-R{}", inv.invoice_id, inv.revision),
                invoice_id: ar.invoice_id,
                revision: ar.revision,
                credits_document: ar.idempotency_key,
                erp_customer_id: ar.erp_customer_id,
                customer_id: ar.customer_id,
                legal_entity: ar.legal_entity,
                currency: ar.currency,
                date: date.to_string(),
                period: ar.period,
                reason: REVISED.into(),
                lines: ar.lines,
                total: ar.total,
            })),
            ErpDocument::JournalEntry(je) if journal => {
                let key = format!("{}.r{}.rev", inv.invoice_id, inv.revision);
                out.push(ErpDocument::JournalEntry(reversing(je, key, date)?));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `je` with debits and credits swapped, under `key`, dated `date`.
pub fn reversing(je: JournalEntry, key: String, date: &str) -> Result<JournalEntry, BillingError> {
    let lines = je
        .lines
        .into_iter()
        .map(|l| JournalLine {
            account: l.account,
            debit: l.credit,
            credit: l.debit,
            memo: format!("reversal of {}: {}", je.idempotency_key, l.memo),
        })
        .collect();
    let rev = JournalEntry { idempotency_key: key, date: date.to_string(), lines, ..je };
    check_balanced(&rev)?;
    Ok(rev)
}

/// The journal entry of prepaid credits bought (`period`: the customer's billing period the
/// grant starts in): debit receivables (the customer owes the purchase), credit deferred
/// revenue, a liability until the credits pay invoices (the invoice's entry then debits it) or
/// expire ([`breakage_entry`]). Key `<grant id>.je`.
pub fn credit_purchase_entry(
    grant: &crate::credits::Grant,
    period: &str,
    config: &BillingConfig,
) -> Result<ErpDocument, BillingError> {
    let crate::credits::CreditUnit::Money(currency) = &grant.unit else {
        return Err(BillingError::Credit(format!("{}: units of a meter are never sold as such", grant.grant_id)));
    };
    let memo = format!("prepaid credits {} bought by {}: {}", grant.grant_id, grant.customer_id, grant.reason);
    let je = JournalEntry {
        idempotency_key: format!("{}.je", grant.grant_id),
        invoice_id: grant.grant_id.clone(),
        revision: 0,
        erp_customer_id: grant.erp_customer_id.clone(),
        customer_id: grant.customer_id.clone(),
        legal_entity: grant.legal_entity.clone(),
        currency: currency.clone(),
        date: grant.effective_from.date_naive().to_string(),
        period: period.to_string(),
        lines: vec![
            side(&config.receivable_account, grant.amount, true, memo.clone()),
            side(&config.deferred_revenue_account, grant.amount, false, memo),
        ],
    };
    check_balanced(&je)?;
    Ok(ErpDocument::JournalEntry(je))
}

/// Breakage: `amount` of purchased credits of grant `grant_id` expired unused when revision
/// `inv.revision` of an invoice was finalized: debit deferred revenue, credit breakage revenue.
/// Key `<grant id>.<invoice id>.r<revision>.brk`; filed under the grant, so reconcile's
/// receivable figures of the invoice never see it.
pub fn breakage_entry(
    inv: &Invoice,
    grant_id: &str,
    amount: Decimal,
    config: &BillingConfig,
) -> Result<ErpDocument, BillingError> {
    let memo = format!("prepaid credits {grant_id} of {} expired unused ({})", inv.customer_id, inv.period);
    let je = JournalEntry {
        idempotency_key: format!("{grant_id}.{}.r{}.brk", inv.invoice_id, inv.revision),
        invoice_id: grant_id.to_string(),
        revision: inv.revision,
        erp_customer_id: inv.erp_customer_id.clone(),
        customer_id: inv.customer_id.clone(),
        legal_entity: inv.legal_entity.clone(),
        currency: inv.currency.clone(),
        date: inv.issue_date.clone(),
        period: inv.period.clone(),
        lines: vec![
            side(&config.deferred_revenue_account, amount, true, memo.clone()),
            side(&config.breakage_revenue_account, amount, false, memo),
        ],
    };
    check_balanced(&je)?;
    Ok(ErpDocument::JournalEntry(je))
}

/// The credit memo and journal entry of a credit note issued against an invoice line: the
/// memo credits the line's item by the note's amount, the entry debits the line's revenue
/// account and credits receivables.
pub fn credit_note_documents(
    note: &crate::credit_note::CreditNote,
    config: &BillingConfig,
) -> Result<Vec<ErpDocument>, BillingError> {
    let memo = CreditMemo {
        idempotency_key: format!("{}.cm", note.credit_note_id),
        credit_memo_id: note.credit_note_id.clone(),
        invoice_id: note.invoice_id.clone(),
        revision: note.revision,
        credits_document: format!("{}.r{}.ar", note.invoice_id, note.revision),
        erp_customer_id: note.erp_customer_id.clone(),
        customer_id: note.customer_id.clone(),
        legal_entity: note.legal_entity.clone(),
        currency: note.currency.clone(),
        date: note.issue_date.clone(),
        period: note.period.clone(),
        reason: note.reason.clone(),
        lines: vec![ArLine {
            line_no: note.line_no,
            item: note.item.clone(),
            description: note.description.clone(),
            quantity: Decimal::ZERO,
            amount: note.amount,
            revenue_account: note.revenue_account.clone(),
        }],
        total: note.amount,
    };
    let text = format!("credit note {} on {} line {}", note.credit_note_id, note.invoice_id, note.line_no);
    let je = JournalEntry {
        idempotency_key: format!("{}.je", note.credit_note_id),
        invoice_id: note.invoice_id.clone(),
        revision: note.revision,
        erp_customer_id: note.erp_customer_id.clone(),
        customer_id: note.customer_id.clone(),
        legal_entity: note.legal_entity.clone(),
        currency: note.currency.clone(),
        date: note.issue_date.clone(),
        period: note.period.clone(),
        lines: vec![
            side(&config.receivable_account, -note.amount, true, text.clone()),
            side(&note.revenue_account, -note.amount, false, format!("{text}: {}", note.reason)),
        ],
    };
    check_balanced(&je)?;
    Ok(vec![ErpDocument::CreditMemo(memo), ErpDocument::JournalEntry(je)])
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
    docs.sort_by(|a, b| (a.rank(), a.key()).cmp(&(b.rank(), b.key())));
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
    } else if account == config.deferred_revenue_account {
        format!("liabilities:deferred-revenue:{clean}")
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
    use crate::invoice::sample::{invoice, line};
    use chrono::{TimeZone, Utc};

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
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
    fn reversals_go_first_and_credit_notes_after_the_invoice_they_credit() {
        let r1 = invoice(vec![line(1, "10.00", "4010")]);
        let r2 = Invoice { revision: 2, ..r1.clone() };
        let config = BillingConfig::default();
        let note = crate::credit_note::CreditNote::issue(
            &r2,
            &crate::credit_note::CreditNoteRequest {
                invoice_id: r2.invoice_id.clone(),
                line_no: 1,
                amount: Some(d("2.5")),
                reason: "goodwill".into(),
            },
            &[],
            Utc.timestamp_opt(1_796_000_000, 0).unwrap(),
        )
        .unwrap();
        let mut docs = credit_note_documents(&note, &config).unwrap();
        docs.extend(documents(&r2, &config).unwrap());
        docs.extend(reversal(&r1, true, true, "2026-12-01", &config).unwrap());
        let order: Vec<String> = batches(docs, 10)[0].documents.iter().map(|d| d.key().to_string()).collect();
        assert_eq!(
            order,
            [
                "INV-202611-1.r1.cm",
                "INV-202611-1.r1.rev",
                "INV-202611-1.r2.ar",
                "INV-202611-1.r2.je",
                "INV-202611-1-CN1.cm",
                "INV-202611-1-CN1.je"
            ]
        );
        let docs = credit_note_documents(&note, &config).unwrap();
        let ErpDocument::JournalEntry(je) = &docs[1] else { panic!("the second is the entry") };
        check_balanced(je).unwrap();
        let sides: Vec<(&str, Decimal, Decimal)> =
            je.lines.iter().map(|l| (l.account.as_str(), l.debit, l.credit)).collect();
        assert_eq!(sides, vec![("1200", d("0"), d("2.50")), ("4010", d("2.50"), d("0"))], "revenue debited");
        assert_eq!((docs[0].amount().0, docs[1].amount().0), (d("-2.50"), d("-2.50")));
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

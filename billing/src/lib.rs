//! # meterflow-billing: invoices, ERP posting and reconciliation
//!
//! ```text
//!   usage_summaries @ sealed version ─┐ DataFusion SQL      ┌─► invoices, invoice_lines (Delta)
//!   billing_periods (closes, seals)  ─┼─► period totals ─► build_invoice ─┤ + one JSON document each
//!   reference: customers, plans      ─┘                                    │
//!                                                                          ▼
//!   finalized invoices ─► erp::documents (AR invoice + balanced journal entry) ─► batches
//!     (a revision of a posted invoice: erp::reversal first, credit memo + reversing entry;
//!      credit_notes ─► erp::credit_note_documents: credit memo + journal entry)
//!        ─► post::Target (file: JSONL + CSV journal | http(s): POST with retries | hledger journal)
//!        ─► postings ledger (pending / posted / failed per document)
//!   reconcile: summaries vs invoice lines vs postings ─► variances (zero when clean)
//!   credits: credit_grants + credit_ledger ─► credits::burn_down (pure) ─► credit lines on
//!     each invoice + ledger rows (burn, expiry, rollover); purchases and breakage to journals
//! ```
//!
//! The pure parts ([`invoice::build_invoice`], [`erp::documents`], [`erp::batches`]) hold the
//! money logic; the rest is SQL and I/O at the edges.

mod config;
pub mod credit_note;
pub mod credits;
pub mod erp;
mod error;
pub mod invoice;
mod invoicing;
pub mod post;
pub mod reconcile;
mod tables;

pub use config::{BillingConfig, Secret};
pub use credit_note::{credit_notes, issue_credit_note, CreditNote, CreditNoteRequest};
pub use credits::{balances, grant_credits, grants, ledger, Balance, Grant, GrantRequest, Source};
pub use error::BillingError;
pub use invoice::{Account, Invoice, InvoiceLine, LineKind};
pub use invoicing::{
    document_path, finalized_invoices, period_usage_totals, run_invoices, usage_total_of_row, usage_totals_sql,
    window_totals_sql, InvoiceRequest, InvoiceRun, Outcome, EARLIER_PERIODS_SQL, FINALIZED_INVOICES_SQL,
    MINIMUM_TRUE_UPS_SQL, SELECTED_CUSTOMERS, SELECTED_PERIODS, SUMMARIES_NOW,
};
pub use post::{post_period, PostReport, Target};
pub use reconcile::{reconcile, Reconciliation};
pub use tables::create_tables;

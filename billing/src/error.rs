//! The billing error type.

use rust_decimal::Decimal;

/// Errors of invoicing, posting and reconciliation. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// A period argument that is not a billing period label.
    #[error("period {0:?} is not YYYY-MM (calendar month) or YYYY-MM-DD (a period starting on an anchor day)")]
    BadPeriod(String),
    /// Finalizing a period that is still open.
    #[error(
        "billing period {0} is still open: close it first (`meterflow close --period PERIOD`, or let the \
        watermark close it), or look at a draft with --preview"
    )]
    PeriodOpen(String),
    /// `--customer` names a customer that does not exist or bills on other periods.
    #[error("{0}")]
    Customer(String),
    /// The summaries were rated under prices that differ from the plans now in force (the
    /// message names customer, meter, plan version and the rerate command to run).
    #[error("{0}")]
    RatedAmountMismatch(String),
    /// Reference data and the tables disagree (a plan or customer that no longer exists).
    #[error("reference data: {0}")]
    Reference(String),
    /// A finalized invoice would change: finalized invoices are never rewritten silently.
    #[error("{0}")]
    InvoiceChanged(String),
    /// A journal entry does not balance (a bug: checked before anything is posted).
    #[error("journal entry {key} does not balance: debits {debits}, credits {credits}")]
    Unbalanced {
        /// Idempotency key of the entry.
        key: String,
        /// Sum of debits.
        debits: Decimal,
        /// Sum of credits.
        credits: Decimal,
    },
    /// A `--target` that cannot be used.
    #[error("target {target:?}: {message}")]
    Target {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        message: String,
    },
    /// A credit note that cannot be issued (the message says why and what is allowed).
    #[error("credit note refused: {0}")]
    CreditNote(String),
    /// A credit grant that cannot be recorded (the message says why and what is allowed).
    #[error("credit grant refused: {0}")]
    Credit(String),
    /// Nothing to work on.
    #[error("{0}")]
    Nothing(String),
    /// Table access failed.
    #[error(transparent)]
    Sink(Box<meterflow_sink::SinkError>),
    /// A Delta operation failed.
    #[error("Delta table {table}: {message}")]
    Delta {
        /// Table name.
        table: String,
        /// The error.
        message: String,
    },
    /// A query over the tables failed.
    #[error("SQL: {0}")]
    Sql(String),
    /// Writing an output file failed.
    #[error("{path}: {source}")]
    Io {
        /// File or folder.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A document that cannot be encoded or decoded.
    #[error("document {what}: {message}")]
    Document {
        /// Which document.
        what: String,
        /// The error.
        message: String,
    },
    /// Rating arithmetic failed.
    #[error(transparent)]
    Rater(Box<meterflow_rater::RaterError>),
}

impl BillingError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        BillingError::Io { path: path.display().to_string(), source }
    }
}

impl From<meterflow_sink::SinkError> for BillingError {
    fn from(e: meterflow_sink::SinkError) -> Self {
        BillingError::Sink(Box::new(e))
    }
}

impl From<meterflow_rater::RaterError> for BillingError {
    fn from(e: meterflow_rater::RaterError) -> Self {
        BillingError::Rater(Box::new(e))
    }
}

//! `[billing]`: how invoices are finalised and posted.

use meterflow_rater::Rounding;
use serde::Deserialize;

/// Secrets read as the broker's are (strings, and numbers or booleans an environment value
/// turned into), never printed.
pub use meterflow_ingest::Secret;

/// The `[billing]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// Rounding of each invoice line to the currency's minor unit: `half_up` or `half_even`.
    pub rounding: Rounding,
    /// Days from the issue date (the first day after the period) to the due date.
    pub payment_terms_days: u32,
    /// GL account debited with each invoice total (accounts receivable).
    pub receivable_account: String,
    /// GL revenue account of meters whose plan charge names none.
    pub default_revenue_account: String,
    /// GL revenue account of recurring fees and minimum-spend true-ups.
    pub fee_revenue_account: String,
    /// GL liability account of purchased prepaid credits not yet used (deferred revenue):
    /// credited when credits are bought, debited as they pay invoices or expire.
    pub deferred_revenue_account: String,
    /// GL account debited when promotional or goodwill credits pay part of an invoice (a
    /// contra-revenue account: the discount given).
    pub promotional_credit_account: String,
    /// GL revenue account credited when purchased credits expire unused (breakage).
    pub breakage_revenue_account: String,
    /// Most ERP documents per posting batch.
    pub post_batch_size: usize,
    /// HTTP target: attempts per batch on 429, 5xx, timeouts and dropped connections.
    pub http_max_attempts: u32,
    /// HTTP target: first retry delay; doubles per attempt, with jitter.
    pub http_backoff_initial_ms: u64,
    /// HTTP target: longest retry delay.
    pub http_backoff_max_ms: u64,
    /// HTTP target: at most this many requests per second (client-side rate limit).
    pub http_requests_per_second: u32,
    /// HTTP target: timeout of one request.
    pub http_timeout_s: u64,
    /// HTTP target: bearer token (set it from the environment:
    /// METERFLOW_BILLING__HTTP_BEARER_TOKEN); never logged.
    pub http_bearer_token: Option<Secret>,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            rounding: Rounding::HalfUp,
            payment_terms_days: 30,
            receivable_account: "1200".into(),
            default_revenue_account: "4000".into(),
            fee_revenue_account: "4100".into(),
            deferred_revenue_account: "2400".into(),
            promotional_credit_account: "4900".into(),
            breakage_revenue_account: "4800".into(),
            post_batch_size: 100,
            http_max_attempts: 6,
            http_backoff_initial_ms: 200,
            http_backoff_max_ms: 10_000,
            http_requests_per_second: 20,
            http_timeout_s: 30,
            http_bearer_token: None,
        }
    }
}

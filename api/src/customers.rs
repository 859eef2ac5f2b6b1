//! meterflow's own customer endpoints:
//!
//! * `GET /api/v1/customers/{customerId}/usage?period=LABEL`: the customer's usage and rated
//!   amount per meter in a billing period so far, and the total so far;
//! * `GET /api/v1/customers/{customerId}/invoice-preview?period=LABEL`: the upcoming invoice,
//!   exactly what `meterflow invoice --preview --customer ID` computes (same code, same
//!   document).
//!
//! * `GET /api/v1/customers/{customerId}/credits`: the customer's prepaid credits, the balance
//!   of each grant (the SUM of its ledger rows) and the total per unit;
//! * `GET /api/v1/customers/{customerId}/credits/ledger`: every row of the customer's credit
//!   ledger (grant, burn, expiry, rollover, reversal).
//!
//! `period` defaults to the customer's period holding now (their billing anchor day decides).
//! Both read the committed tables at their newest version and the catalog's newest revision;
//! decimals are strings here (as in the invoice documents), never floats.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meterflow_billing::{run_invoices, BillingError, Invoice, InvoiceRequest};
use meterflow_rater::Period;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::problem::Problem;
use crate::state::Api;

/// The `period` query parameter (a billing period label: `2026-11`, or `2026-11-15` for anchor
/// days), or the problem with the query string.
pub fn period_param(raw: Option<&str>) -> Result<Option<String>, Problem> {
    let mut period = None;
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "period" => period = Some(v.into_owned()),
            other => {
                return Err(Problem::bad_request(
                    "invalid_parameter",
                    format!("unknown query parameter {other:?}: the only parameter is period"),
                ))
            }
        }
    }
    Ok(period)
}

/// One meter's usage so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeterUsage {
    /// The meter.
    pub meter: String,
    /// Its quantity in the period so far.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Its rated amount so far (invoice rounding applied per line).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// A customer's usage in a billing period so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The customer.
    pub customer: String,
    /// The billing period label.
    pub period: String,
    /// The billing currency.
    pub currency: String,
    /// Per meter.
    pub meters: Vec<MeterUsage>,
    /// What the invoice would total now (usage, fees, minimums, adjustments).
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// The `usage_summaries` version read.
    pub table_version: u64,
}

/// The usage of an invoice preview, per meter (prepaid credit lines are payments, not usage).
pub fn usage_of(invoice: &Invoice) -> Vec<MeterUsage> {
    let mut per: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for line in invoice.lines.iter().filter(|l| l.kind != meterflow_billing::LineKind::Credit) {
        if let Some(m) = &line.meter {
            let e = per.entry(m.as_str()).or_default();
            e.0 += line.quantity;
            e.1 += line.amount;
        }
    }
    per.into_iter().map(|(m, (q, a))| MeterUsage { meter: m.to_string(), quantity: q, amount: a }).collect()
}

/// The customer's preview invoice of `period` (`None`: nothing to bill), the period label, and
/// the customer's currency.
async fn preview(
    api: &Api,
    headers: &HeaderMap,
    customer: &str,
    period: Option<String>,
) -> Result<(Option<Invoice>, String, String, u64), Problem> {
    let key = api.authenticate(headers).await?;
    if !key.scope().allows(customer) {
        return Err(Problem::forbidden(format!("this API key may not read customer {customer:?}")));
    }
    let reference = api.reference().await?;
    let accounts = reference.1.accounts();
    let Some(account) = accounts.iter().find(|a| a.id == customer) else {
        return Err(Problem::not_found(format!("no customer {customer:?} in catalog revision {}", reference.0)));
    };
    let label = match period {
        Some(p) => Period::parse(&p).map(|x| x.label()).ok_or_else(|| {
            Problem::bad_request(
                "invalid_parameter",
                format!("period={p:?} is not a billing period label (2026-11, or 2026-11-15 for anchor days)"),
            )
        })?,
        None => Period::containing(chrono::Utc::now(), account.anchor_day)
            .map(|p| p.label())
            .ok_or_else(|| Problem::internal("no billing period holds the current time"))?,
    };
    let currency = account.currency.clone();
    let request = InvoiceRequest {
        period: label.clone(),
        customer: Some(customer.to_string()),
        preview: true,
        revise: false,
        out_dir: std::env::temp_dir(),
    };
    let tables = match api.config.tables() {
        Ok(t) => t,
        Err(e) => return Err(Problem::unavailable(format!("{e:#}"), 1)),
    };
    match run_invoices(&tables, &accounts, &reference.1.prices, &api.config.billing, &request).await {
        Ok(run) => {
            let version = run.summary_version;
            Ok((run.invoices.into_iter().next().map(|(i, _)| i), label, currency, version))
        }
        Err(BillingError::Nothing(_)) => Ok((None, label, currency, 0)),
        Err(BillingError::Customer(m)) | Err(BillingError::BadPeriod(m)) => {
            Err(Problem::bad_request("invalid_parameter", m))
        }
        Err(e) => Err(Problem::internal(e)),
    }
}

/// `GET /api/v1/customers/{customerId}/usage`
pub async fn usage(
    State(api): State<Arc<Api>>,
    Path(customer): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let answer = async { preview(&api, &headers, &customer, period_param(raw.as_deref())?).await };
    match answer.await {
        Ok((invoice, period, currency, table_version)) => {
            let meters = invoice.as_ref().map(usage_of).unwrap_or_default();
            let total = invoice.as_ref().map_or(Decimal::ZERO, |i| i.total);
            Json(Usage { customer, period, currency, meters, total, table_version }).into_response()
        }
        Err(p) => p.into_response(),
    }
}

/// `GET /api/v1/customers/{customerId}/invoice-preview`
pub async fn invoice_preview(
    State(api): State<Arc<Api>>,
    Path(customer): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let answer = async { preview(&api, &headers, &customer, period_param(raw.as_deref())?).await };
    match answer.await {
        Ok((Some(invoice), ..)) => Json(invoice).into_response(),
        Ok((None, period, ..)) => Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "nothing_to_bill",
            "Nothing to bill",
            format!("customer {customer:?} has nothing to bill in {period} so far"),
        )
        .into_response(),
        Err(p) => p.into_response(),
    }
}

/// Checks that the key may read `customer` and that the catalog knows it.
async fn allowed(api: &Api, headers: &HeaderMap, customer: &str) -> Result<meterflow_sink::TableRoot, Problem> {
    let key = api.authenticate(headers).await?;
    if !key.scope().allows(customer) {
        return Err(Problem::forbidden(format!("this API key may not read customer {customer:?}")));
    }
    let reference = api.reference().await?;
    if !reference.1.accounts().iter().any(|a| a.id == customer) {
        return Err(Problem::not_found(format!("no customer {customer:?} in catalog revision {}", reference.0)));
    }
    api.config.tables().map_err(|e| Problem::unavailable(format!("{e:#}"), 1))
}

/// A customer's prepaid credits: the balance of each grant and the total per unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditBalances {
    /// The customer.
    pub customer: String,
    /// Per grant, in burn order.
    pub grants: Vec<GrantBalance>,
    /// Per unit (`USD`, `meter:calls`): the sum of the grants' balances.
    pub totals: BTreeMap<String, String>,
}

/// One grant's balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrantBalance {
    /// The grant.
    pub grant_id: String,
    /// Its unit.
    pub unit: String,
    /// purchase, promotion or goodwill.
    pub source: String,
    /// Burn order (1 first).
    pub priority: u32,
    /// Expiry, if any.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The SUM of its ledger rows.
    #[serde(with = "rust_decimal::serde::str")]
    pub balance: Decimal,
}

/// `GET /api/v1/customers/{customerId}/credits`
pub async fn credits(
    State(api): State<Arc<Api>>,
    Path(customer): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        no_params(raw.as_deref())?;
        let tables = allowed(&api, &headers, &customer).await?;
        let balances = meterflow_billing::balances(&tables, &customer).await.map_err(Problem::internal)?;
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        for b in &balances {
            *totals.entry(b.unit.clone()).or_default() += b.balance;
        }
        let grants = balances
            .into_iter()
            .map(|b| GrantBalance {
                grant_id: b.grant_id,
                unit: b.unit,
                source: b.source.as_str().into(),
                priority: b.priority,
                expires_at: b.expires_at,
                balance: b.balance,
            })
            .collect();
        let totals = totals.into_iter().map(|(u, t)| (u, t.to_string())).collect();
        Ok::<_, Problem>(CreditBalances { customer: customer.clone(), grants, totals })
    };
    match answer.await {
        Ok(b) => Json(b).into_response(),
        Err(p) => p.into_response(),
    }
}

/// A customer's credit ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CreditLedger {
    /// The customer.
    pub customer: String,
    /// Every row, in the order written.
    pub entries: Vec<LedgerRow>,
}

/// One ledger row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerRow {
    /// The grant.
    pub grant_id: String,
    /// grant, burn, expiry, rollover or reversal.
    pub entry_kind: String,
    /// Signed amount in the grant's unit.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The grant's unit.
    pub unit: String,
    /// Signed money worth in the customer's currency.
    #[serde(with = "rust_decimal::serde::str")]
    pub value: Decimal,
    /// The billing period it counts in.
    pub period: String,
    /// The invoice whose run wrote it.
    pub invoice_id: Option<String>,
    /// That invoice's revision (0: none).
    pub revision: u32,
    /// What happened.
    pub description: String,
    /// When.
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /api/v1/customers/{customerId}/credits/ledger`
pub async fn credit_ledger(
    State(api): State<Arc<Api>>,
    Path(customer): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        no_params(raw.as_deref())?;
        let tables = allowed(&api, &headers, &customer).await?;
        let rows = meterflow_billing::ledger(&tables, &customer).await.map_err(Problem::internal)?;
        let entries = rows
            .into_iter()
            .map(|e| LedgerRow {
                grant_id: e.grant_id,
                entry_kind: e.kind.as_str().into(),
                amount: e.amount,
                unit: e.unit,
                value: e.value,
                period: e.period,
                invoice_id: e.invoice_id,
                revision: e.revision,
                description: e.description,
                recorded_at: e.recorded_at,
            })
            .collect();
        Ok::<_, Problem>(CreditLedger { customer: customer.clone(), entries })
    };
    match answer.await {
        Ok(l) => Json(l).into_response(),
        Err(p) => p.into_response(),
    }
}

/// Refuses any query parameter.
fn no_params(raw: Option<&str>) -> Result<(), Problem> {
    match url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).next() {
        None => Ok(()),
        Some((k, _)) => {
            Err(Problem::bad_request("invalid_parameter", format!("unknown query parameter {k:?}: this takes none")))
        }
    }
}

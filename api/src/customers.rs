//! meterflow's own customer endpoints:
//!
//! * `GET /api/v1/customers/{customerId}/usage?period=LABEL`: the customer's usage and rated
//!   amount per meter in a billing period so far, and the total so far;
//! * `GET /api/v1/customers/{customerId}/invoice-preview?period=LABEL`: the upcoming invoice,
//!   exactly what `meterflow invoice --preview --customer ID` computes (same code, same
//!   document).
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

/// The usage of an invoice preview, per meter.
pub fn usage_of(invoice: &Invoice) -> Vec<MeterUsage> {
    let mut per: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for line in &invoice.lines {
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

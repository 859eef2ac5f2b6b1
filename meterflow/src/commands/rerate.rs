//! `meterflow rerate --period YYYY-MM`: after a price correction, recompute a billing period
//! from its summaries under the current plans and append the differences as adjustment rows.
//!
//! For each (customer, meter, plan version) of the period, the expected amount is the current
//! price of the period's total quantity; the difference to the amounts already written becomes
//! one `row_kind = 'rerate'` row with quantity 0 and a reason. Nothing is rewritten, and a
//! second run finds no difference and writes nothing.

use anyhow::{bail, Context, Result};
use meterflow_rater::Period;
use meterflow_sink::sql::{render, Format, ReadOnlySql};
use meterflow_sink::{RowKind, SummaryRow, SummaryTable};
use rust_decimal::Decimal;

use meterflow_pipeline::config::Config;

/// One adjustment and why.
#[derive(Debug, Clone)]
pub struct Adjustment {
    /// Customer.
    pub customer_id: String,
    /// Meter.
    pub meter: String,
    /// Plan version.
    pub plan_version: String,
    /// Total quantity of the period under that version.
    pub quantity: Decimal,
    /// Amount already written.
    pub rated: Decimal,
    /// Amount under the current plans.
    pub expected: Decimal,
}

/// Computes and appends the rerate adjustments of `period`; returns them.
pub async fn rerate(config: &Config, period_label: &str) -> Result<Vec<Adjustment>> {
    let period = Period::parse(period_label).with_context(|| {
        format!(
            "--period {period_label:?} is not YYYY-MM (calendar month) or YYYY-MM-DD (a period starting on \
            an anchor day)"
        )
    })?;
    let label = period.label();
    let (_, reference) = meterflow_pipeline::catalog::current_reference(config).await?;
    let sql = ReadOnlySql::open(&config.tables()?).await?;
    if sql.tables.is_empty() {
        bail!("no tables in {}: nothing to rerate", config.tables()?);
    }
    let query = format!(
        "SELECT customer_id, meter, plan_version, plan_id, currency, SUM(quantity) AS quantity, SUM(amount) AS amount \
         FROM usage_summaries WHERE billing_period = '{label}' \
         GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3"
    );
    let csv = render(&sql.query(&query).await?, Format::Csv)?;
    let mut adjustments = Vec::new();
    let mut rows = Vec::new();
    let mut table = SummaryTable::open_or_create(&config.tables()?).await?;
    let revision = table.committed_seq().await?;
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let [customer_id, meter, plan_version, plan_id, currency, quantity, amount] = f.as_slice() else {
            bail!("unexpected summary line {line:?}");
        };
        let charge = reference.prices.charge_of(plan_id, plan_version, meter).with_context(|| {
            format!("the summaries price `{meter}` under {plan_version}, which the reference data no longer defines")
        })?;
        let quantity: Decimal = quantity.parse()?;
        let rated: Decimal = amount.parse()?;
        let expected = charge.price(quantity)?;
        if expected == rated {
            continue;
        }
        rows.push(SummaryRow {
            customer_id: customer_id.to_string(),
            subject: String::new(),
            meter: meter.to_string(),
            dimensions: "{}".into(),
            window_start: period.start,
            window_end: period.end,
            revision,
            quantity: Decimal::ZERO,
            amount: expected - rated,
            currency: currency.to_string(),
            plan_id: plan_id.to_string(),
            plan_version: plan_version.to_string(),
            billing_period: label.clone(),
            event_count: 0,
            first_seq: 0,
            last_seq: 0,
            row_kind: RowKind::Rerate,
            arrived_at: None,
            reason: Some(format!(
                "rerate {}: {quantity} priced {expected} under the current {plan_version}, {rated} was rated",
                period.label()
            )),
        });
        adjustments.push(Adjustment {
            customer_id: customer_id.to_string(),
            meter: meter.to_string(),
            plan_version: plan_version.to_string(),
            quantity,
            rated,
            expected,
        });
    }
    table.append_adjustments(&rows).await?;
    Ok(adjustments)
}

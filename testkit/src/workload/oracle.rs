//! The exact expected outcome of a workload, computed straight from the generated events
//! (independently of the pipeline code), and its comparison with the committed summaries.

use anyhow::{Context, Result};
use meterflow_rater::{pricing_at, Period};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::{Event, Subjects};
use meterflow_pipeline::config::Reference;

/// The exact expected outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Oracle {
    /// (customer, meter) → total quantity (sum of window values).
    pub quantity: BTreeMap<(String, String), Decimal>,
    /// (customer, meter) → total amount (unrounded).
    pub amount: BTreeMap<(String, String), Decimal>,
    /// (customer, meter, billing period) → (quantity, amount): the same totals per period.
    pub by_period: BTreeMap<(String, String, String), (Decimal, Decimal)>,
    /// Distinct accepted events.
    pub accepted: u64,
    /// Duplicates the pipeline must drop.
    pub duplicates: u64,
    /// Retries the broker drops by `Nats-Msg-Id`.
    pub broker_retries: u64,
    /// Expected rejects by reason code.
    pub rejected: BTreeMap<String, u64>,
    /// Accepted events generated behind the stream time
    /// ([`EventTimes::InOrder`](super::EventTimes::InOrder) only); every one of them is still
    /// billed, in open windows or in rows flagged late.
    pub late: u64,
}

pub(super) fn compute_totals(
    events: &[Event],
    subjects: &Subjects,
    reference: &Reference,
    oracle: &mut Oracle,
) -> Result<()> {
    // Period totals per (customer, meter, plan version, month), computed straight from the
    // events: SUM meters add values; UNIQUE and MAX meters add their per-day window values.
    type Key<'a> = (&'a str, &'static str, String, String);
    let customers = reference.directory.customers();
    let index: HashMap<&str, usize> = customers.iter().enumerate().map(|(i, c)| (c.id.as_str(), i)).collect();
    let mut totals: BTreeMap<Key<'_>, Decimal> = BTreeMap::new();
    let mut uniques: HashMap<(Key<'_>, usize, i64), HashSet<&str>> = HashMap::new();
    let mut peaks: HashMap<(Key<'_>, usize, i64), Decimal> = HashMap::new();
    for e in events {
        let customer = subjects.table[e.who].1.as_str();
        let idx =
            *index.get(customer).with_context(|| format!("customer `{customer}` is not in the reference data"))?;
        let subs = reference.subscriptions.get(idx).context("customer without subscriptions")?;
        let (plan, version) = pricing_at(&reference.prices, subs, e.time).context("no plan in force")?;
        let anchor = customers[idx].billing_anchor_day;
        let period = Period::containing(e.time, anchor).context("period")?.label();
        let meter = match e.kind {
            "api_calls" => "api_calls",
            "llm_tokens" => "llm_tokens",
            "user_seen" => "active_users",
            _ => "storage_peak",
        };
        let key: Key<'_> = (customer, meter, plan.version_label(version), period);
        let day = e.time.timestamp().div_euclid(86_400);
        match meter {
            "active_users" => {
                uniques.entry((key, e.who, day)).or_default().insert(&e.text);
            }
            "storage_peak" => {
                let p = peaks.entry((key, e.who, day)).or_insert(e.value);
                *p = (*p).max(e.value);
            }
            _ => *totals.entry(key).or_default() += e.value,
        }
    }
    for ((key, _, _), set) in uniques {
        *totals.entry(key).or_default() += Decimal::from(set.len());
    }
    for ((key, _, _), peak) in peaks {
        *totals.entry(key).or_default() += peak;
    }
    let prices = &reference.prices;
    for ((customer, meter, label, period), q) in totals {
        let (plan_id, _) = label.split_once('@').context("label")?;
        let charge = prices.charge_of(plan_id, &label, meter).with_context(|| format!("{label} {meter}"))?;
        let amount = charge.price(q)?;
        let key = (customer.to_string(), meter.to_string());
        *oracle.quantity.entry(key.clone()).or_default() += q;
        *oracle.amount.entry(key).or_default() += amount;
        let p = oracle.by_period.entry((customer.to_string(), meter.to_string(), period)).or_default();
        p.0 += q;
        p.1 += amount;
    }
    Ok(())
}

/// Compares the committed summaries with the oracle, exactly: quantity and amount per customer
/// and meter, and the number of accepted events. Returns every difference (empty = exact).
pub async fn differences(tables: impl Into<meterflow_sink::TableRoot>, oracle: &Oracle) -> Result<Vec<String>> {
    use meterflow_sink::sql::ReadOnlySql;
    let sql = ReadOnlySql::open(tables).await?;
    let q = "SELECT customer_id, meter, SUM(quantity), SUM(amount), SUM(event_count) \
             FROM usage_summaries GROUP BY customer_id, meter";
    let mut got: BTreeMap<(String, String), (Decimal, Decimal)> = BTreeMap::new();
    let mut events = 0u64;
    for r in sql.rows(q, &[]).await?.iter() {
        got.insert((r.text(0)?, r.text(1)?), (r.dec(2)?, r.dec(3)?));
        events += r.count(4)?;
    }
    let mut out = Vec::new();
    for (key, q) in &oracle.quantity {
        let a = oracle.amount.get(key).copied().unwrap_or_default();
        match got.get(key) {
            Some((gq, ga)) if gq == q && ga == &a => {}
            other => out.push(format!("{key:?}: expected quantity {q} amount {a}, got {other:?}")),
        }
    }
    for key in got.keys().filter(|k| !oracle.quantity.contains_key(*k)) {
        out.push(format!("{key:?}: not in the oracle"));
    }
    if events != oracle.accepted {
        out.push(format!("accepted events: expected {}, got {events}", oracle.accepted));
    }
    Ok(out)
}

//! Invoices: the pure part. Period totals in (already summed by SQL), an invoice out.
//!
//! ```text
//!   usage totals of the period (per meter, plan version)  ─┐
//!   adjustments: late usage of earlier closed periods      ├─ build_invoice ─► Invoice (lines,
//!   customer + subscriptions + plans + [billing]          ─┘                    totals, id, hash)
//! ```
//!
//! Money stays exact until each line is rounded once, to the currency's minor unit, with the
//! configured rounding; the invoice total is the sum of the rounded lines. The invoice id is a
//! function of (customer, legal entity, currency, period) only, and the content hash of the
//! whole document, so the same inputs always give the same id and the same bytes.

use chrono::{DateTime, Duration, Utc};
use meterflow_rater::{
    active_days, minimum_true_up, prorate, round_money, ChargeModel, Currency, Period, PriceBook, Subscription,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::config::BillingConfig;
use crate::BillingError;

/// A customer as billing sees it.
#[derive(Debug, Clone)]
pub struct Account {
    /// Customer id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The customer's id in the ERP.
    pub erp_customer_id: String,
    /// The legal entity that bills the customer.
    pub legal_entity: String,
    /// Billing currency.
    pub currency: String,
    /// Day of the month billing periods start on (1 = calendar months).
    pub anchor_day: u32,
    /// Effective-dated subscriptions.
    pub subscriptions: Vec<Subscription>,
}

impl Account {
    /// The customer's billing period that starts at `period.start`, if `period` is one of theirs.
    pub fn bills_on(&self, period: &Period) -> bool {
        Period::containing(period.start, self.anchor_day).is_some_and(|p| p == *period)
    }
}

/// One (customer, meter, plan version, billing period) total, summed by SQL from the summaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageTotal {
    /// Customer id.
    pub customer_id: String,
    /// Meter.
    pub meter: String,
    /// Plan id.
    pub plan_id: String,
    /// Plan version label (`plan@effective_from`).
    pub plan_version: String,
    /// Currency of the amounts.
    pub currency: String,
    /// The billing period the usage belongs to.
    pub billing_period: String,
    /// Sum of quantities.
    pub quantity: Decimal,
    /// Sum of rated amounts, unrounded.
    pub amount: Decimal,
    /// Events folded in.
    pub event_count: u64,
    /// Lowest stream sequence among them (0 when none).
    pub first_seq: u64,
    /// Highest stream sequence among them.
    pub last_seq: u64,
    /// For an adjustment: the amount of its (customer, meter, plan version, period) already
    /// billed before it, unrounded. The line then bills round(before + amount) - round(before),
    /// so a period's billed cents always equal the rounded price of its whole usage.
    pub amount_before: Option<Decimal>,
}

/// What an invoice line bills (`line_kind` in `invoice_lines`, `kind` in the JSON document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Usage of the period, per meter and plan version.
    Usage,
    /// A recurring fee, prorated by days.
    RecurringFee,
    /// The shortfall to a plan's minimum spend.
    MinimumTrueUp,
    /// Late usage (or a price correction) of an earlier, already closed period.
    Adjustment,
    /// Prepaid credit applied (negative: what a grant pays of the invoice).
    Credit,
}

impl LineKind {
    /// The name in tables and documents.
    pub const fn as_str(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::RecurringFee => "recurring_fee",
            LineKind::MinimumTrueUp => "minimum_true_up",
            LineKind::Adjustment => "adjustment",
            LineKind::Credit => "credit",
        }
    }
}

impl std::fmt::Display for LineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One tier of a tiered charge, for the line's breakdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierBreakdown {
    /// Tier number, from 1.
    pub tier: usize,
    /// Units priced in the tier.
    pub quantity: Decimal,
    /// Unit price.
    pub unit_price: Decimal,
    /// Flat fee of the tier.
    pub flat_fee: Decimal,
    /// `quantity x unit_price + flat_fee`, unrounded.
    pub amount: Decimal,
}

/// One invoice line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// Position, from 1.
    pub line_no: u32,
    /// What the line bills.
    pub kind: LineKind,
    /// Human description.
    pub description: String,
    /// Meter (usage and adjustment lines).
    pub meter: Option<String>,
    /// Plan version the line was priced under.
    pub plan_version: Option<String>,
    /// The billing period the line's usage belongs to (earlier than the invoice's period for
    /// adjustments).
    pub source_period: String,
    /// Units (days for recurring fees and minimums).
    pub quantity: Decimal,
    /// Tier breakdown of tiered charges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<TierBreakdown>,
    /// Exact amount before rounding.
    pub amount_unrounded: Decimal,
    /// Amount rounded once to the currency's minor unit.
    pub amount: Decimal,
    /// ERP item code.
    pub item: String,
    /// GL revenue account.
    pub revenue_account: String,
    /// Events behind the line.
    pub event_count: u64,
    /// Lowest stream sequence among them (0 when none).
    pub first_seq: u64,
    /// Highest stream sequence among them.
    pub last_seq: u64,
}

/// An invoice: one per customer, legal entity and currency for a billing period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// Deterministic id: the same customer, legal entity, currency and period give the same id.
    pub invoice_id: String,
    /// 1 for the first finalization; a deliberate re-issue (`--revise`) increments it.
    pub revision: u32,
    /// `final` or `preview`.
    pub status: String,
    /// Customer id.
    pub customer_id: String,
    /// Customer name.
    pub customer_name: String,
    /// ERP customer id.
    pub erp_customer_id: String,
    /// Billing legal entity.
    pub legal_entity: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Billing period label.
    pub period: String,
    /// First instant of the period.
    pub period_start: DateTime<Utc>,
    /// First instant after the period.
    pub period_end: DateTime<Utc>,
    /// Issue date: the first day after the period.
    pub issue_date: String,
    /// Due date: issue date plus the payment terms.
    pub due_date: String,
    /// Payment terms in days.
    pub payment_terms_days: u32,
    /// The `usage_summaries` version the invoice was computed from (Delta time travel).
    pub summary_version: u64,
    /// Adjustments cover summary rows added after this version (the previous period's seal).
    pub adjustments_after_version: Option<u64>,
    /// The lines.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the rounded lines.
    pub total: Decimal,
    /// Hash of the document with this field empty and revision 0 (hex xxh3-128).
    pub content_hash: String,
}

impl Invoice {
    /// The canonical JSON document (pretty, trailing newline): the same invoice always gives
    /// the same bytes.
    pub fn to_json(&self) -> Result<String, BillingError> {
        serde_json::to_string_pretty(self)
            .map(|s| s + "\n")
            .map_err(|e| BillingError::Document { what: self.invoice_id.clone(), message: e.to_string() })
    }

    /// Reads a document written by [`Invoice::to_json`].
    pub fn from_json(text: &str) -> Result<Invoice, BillingError> {
        serde_json::from_str(text)
            .map_err(|e| BillingError::Document { what: "invoice".into(), message: e.to_string() })
    }

    /// Hash of the content (independent of revision and of the hash field itself).
    pub fn compute_hash(&self) -> Result<String, BillingError> {
        let mut probe = self.clone();
        probe.revision = 0;
        probe.content_hash = String::new();
        Ok(format!("{:032x}", xxh3_128(probe.to_json()?.as_bytes())))
    }
}

/// The deterministic invoice id of a customer's period.
pub fn invoice_id(customer_id: &str, legal_entity: &str, currency: &str, period: &str) -> String {
    let key = format!("{customer_id}\u{1f}{legal_entity}\u{1f}{currency}\u{1f}{period}");
    format!("INV-{}-{:016X}", period.replace('-', ""), xxh3_64(key.as_bytes()))
}

/// Everything one invoice is computed from.
#[derive(Debug)]
pub struct InvoiceInput<'a> {
    /// The billing period.
    pub period: Period,
    /// The customer.
    pub account: &'a Account,
    /// Usage totals of the period (this customer's).
    pub usage: &'a [UsageTotal],
    /// Adjustments for earlier closed periods (this customer's).
    pub adjustments: &'a [UsageTotal],
    /// Plans.
    pub prices: &'a PriceBook,
    /// `[billing]`.
    pub config: &'a BillingConfig,
    /// The summary table version the totals were read at.
    pub summary_version: u64,
    /// Lower version bound of the adjustments.
    pub adjustments_after_version: Option<u64>,
    /// `true` for a draft of an open period.
    pub preview: bool,
    /// Minimum-spend true-ups still standing on earlier invoices, per (source period, plan
    /// version): late usage of such a period first reduces its true-up.
    pub minimum_remaining: BTreeMap<(String, String), Decimal>,
    /// The customer's prepaid credits, when the invoice applies them.
    pub credits: Option<Credits<'a>>,
}

/// The customer's prepaid credits as an invoice sees them.
#[derive(Debug, Clone, Copy)]
pub struct Credits<'a> {
    /// The customer's grants.
    pub grants: &'a [crate::credits::Grant],
    /// The customer's credit ledger without the rows of this invoice.
    pub history: &'a [crate::credits::Entry],
    /// When the period closed (grants recorded later count from the next period on).
    pub closed_at: DateTime<Utc>,
}

/// A plan version in force for part of the period: `[from, to)` within the subscription.
struct VersionSpan {
    plan: String,
    index: usize,
    from: DateTime<Utc>,
    to: Option<DateTime<Utc>>,
}

fn spans(prices: &PriceBook, subs: &[Subscription], period: &Period) -> Result<Vec<VersionSpan>, BillingError> {
    let mut out = Vec::new();
    for sub in subs {
        let plan = prices
            .plan(&sub.plan)
            .ok_or_else(|| BillingError::Reference(format!("subscription to unknown plan `{}`", sub.plan)))?;
        for (i, v) in plan.versions.iter().enumerate() {
            let next = plan.versions.get(i + 1).map(|n| n.effective_from);
            let from = sub.start.map_or(v.effective_from, |s| s.max(v.effective_from));
            let to = match (sub.end, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if to.is_some_and(|t| t <= from) || active_days(period, from, to) == 0 {
                continue;
            }
            out.push(VersionSpan { plan: plan.id.clone(), index: i, from, to });
        }
    }
    Ok(out)
}

/// An exact amount kept to the 18 fractional digits the tables store (a prorated fee such as
/// 30 x 10 / 31 has 27); the invoice line still rounds once, to the minor unit, from this.
fn exact18(amount: Decimal) -> Decimal {
    amount.round_dp_with_strategy(18, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

/// Appends a line, numbering it.
fn push_line(lines: &mut Vec<InvoiceLine>, mut line: InvoiceLine) {
    line.line_no = u32::try_from(lines.len() + 1).unwrap_or(u32::MAX);
    lines.push(line);
}

fn money(amount: Decimal, currency: &Currency, config: &BillingConfig) -> Decimal {
    round_money(amount, currency, config.rounding)
}

/// Computes one invoice. `None` when the customer has nothing to bill for the period (no plan
/// in force, no usage, no adjustment).
pub fn build_invoice(input: &InvoiceInput<'_>) -> Result<Option<Invoice>, BillingError> {
    Ok(build_invoice_with_credits(input)?.map(|(invoice, _)| invoice))
}

/// Computes one invoice with the customer's prepaid credits applied as credit lines (after
/// every charge), and the credit ledger rows that go with it (untagged: the caller knows the
/// revision). `None` as for [`build_invoice`].
pub fn build_invoice_with_credits(
    input: &InvoiceInput<'_>,
) -> Result<Option<(Invoice, Vec<crate::credits::Entry>)>, BillingError> {
    let ctx = Ctx::new(input)?;
    let mut lines: Vec<InvoiceLine> = Vec::new();
    let spend = usage_lines(&ctx, input, &mut lines)?;
    fee_lines(&ctx, input, &spend, &mut lines)?;
    adjustment_lines(&ctx, input, &mut lines);
    late_minimum_offsets(&ctx, input, &mut lines);
    if lines.is_empty() {
        return Ok(None);
    }
    let mut entries = Vec::new();
    if let Some(c) = input.credits {
        let burn = crate::credits::burn_down(
            &lines,
            c.grants,
            c.history,
            &input.period,
            c.closed_at,
            &ctx.currency,
            ctx.config,
        );
        for line in burn.lines {
            push_line(&mut lines, line);
        }
        entries = burn.entries;
    }
    let invoice = assemble(&ctx, input, lines)?;
    Ok(Some((invoice, entries)))
}

/// What every line of one invoice shares: the period's label, the customer's currency and the
/// `[billing]` settings.
struct Ctx<'a> {
    label: String,
    currency: Currency,
    config: &'a BillingConfig,
}

impl<'a> Ctx<'a> {
    /// Checks that all usage is rated in the customer's currency.
    fn new(input: &InvoiceInput<'a>) -> Result<Ctx<'a>, BillingError> {
        let account = input.account;
        let currency = Currency::parse(&account.currency).ok_or_else(|| {
            BillingError::Reference(format!("customer `{}` has unknown currency {:?}", account.id, account.currency))
        })?;
        for u in input.usage.iter().chain(input.adjustments) {
            if u.currency != account.currency {
                return Err(BillingError::Reference(format!(
                    "customer `{}` is billed in {} but has usage rated in {} ({}, {})",
                    account.id, account.currency, u.currency, u.meter, u.plan_version
                )));
            }
        }
        Ok(Ctx { label: input.period.label(), currency, config: input.config })
    }

    /// `amount` rounded as the invoice rounds money.
    fn money(&self, amount: Decimal) -> Decimal {
        money(amount, &self.currency, self.config)
    }

    /// A recurring-fee or minimum true-up line (no meter, `days` as its quantity).
    fn fee_line(
        &self,
        kind: LineKind,
        description: String,
        version: String,
        days: i64,
        exact: Decimal,
        item: &str,
    ) -> InvoiceLine {
        InvoiceLine {
            line_no: 0,
            kind,
            description,
            meter: None,
            plan_version: Some(version),
            source_period: self.label.clone(),
            quantity: Decimal::from(days),
            tiers: Vec::new(),
            amount_unrounded: exact.normalize(),
            amount: self.money(exact),
            item: item.into(),
            revenue_account: self.config.fee_revenue_account.clone(),
            event_count: 0,
            first_seq: 0,
            last_seq: 0,
        }
    }
}

/// Usage lines, in meter then plan version order, each checked against the plan's price of the
/// period total. Returns the usage spend per plan version (for minimums).
fn usage_lines(
    ctx: &Ctx<'_>,
    input: &InvoiceInput<'_>,
    lines: &mut Vec<InvoiceLine>,
) -> Result<BTreeMap<String, Decimal>, BillingError> {
    let (prices, config, label) = (input.prices, ctx.config, &ctx.label);
    let mut usage = input.usage.to_vec();
    usage.sort_by(|a, b| (&a.meter, &a.plan_version).cmp(&(&b.meter, &b.plan_version)));
    let mut spend: BTreeMap<String, Decimal> = BTreeMap::new();
    for u in &usage {
        let charge = prices.charge_of(&u.plan_id, &u.plan_version, &u.meter).ok_or_else(|| {
            BillingError::Reference(format!(
                "the summaries price `{}` under {}, which the plans no longer define",
                u.meter, u.plan_version
            ))
        })?;
        let expected = charge.price(u.quantity)?;
        if expected != u.amount {
            return Err(BillingError::RatedAmountMismatch(format!(
                "customer `{}`, meter `{}`, {}: the summaries are rated at {} but the plan prices the period's \
                    {} units at {}; run `meterflow rerate --period {label}` to append the correction first",
                u.customer_id,
                u.meter,
                u.plan_version,
                u.amount.normalize(),
                u.quantity.normalize(),
                expected.normalize()
            )));
        }
        let tiered = matches!(charge.model, ChargeModel::Graduated { .. } | ChargeModel::Volume { .. });
        let tiers = if tiered {
            charge
                .breakdown(u.quantity)?
                .into_iter()
                .map(|t| TierBreakdown {
                    tier: t.tier + 1,
                    quantity: t.quantity.normalize(),
                    unit_price: t.unit_price.normalize(),
                    flat_fee: t.flat_fee.normalize(),
                    amount: t.amount.normalize(),
                })
                .collect()
        } else {
            Vec::new()
        };
        let amount = ctx.money(u.amount);
        *spend.entry(u.plan_version.clone()).or_default() += amount;
        let included = if charge.included.is_zero() {
            String::new()
        } else {
            format!(", {} included", charge.included.normalize())
        };
        push_line(
            lines,
            InvoiceLine {
                line_no: 0,
                kind: LineKind::Usage,
                description: format!("{} usage {label} ({}{included})", u.meter, u.plan_version),
                meter: Some(u.meter.clone()),
                plan_version: Some(u.plan_version.clone()),
                source_period: label.clone(),
                quantity: u.quantity.normalize(),
                tiers,
                amount_unrounded: u.amount.normalize(),
                amount,
                item: charge.item.clone().unwrap_or_else(|| u.meter.clone()),
                revenue_account: charge
                    .revenue_account
                    .clone()
                    .unwrap_or_else(|| config.default_revenue_account.clone()),
                event_count: u.event_count,
                first_seq: u.first_seq,
                last_seq: u.last_seq,
            },
        );
    }

    Ok(spend)
}

/// Recurring fees and minimum true-ups, per plan version in force during the period. Minimums
/// add up per plan version over its spans (a re-subscription gives two spans) before they are
/// compared with that version's usage.
fn fee_lines(
    ctx: &Ctx<'_>,
    input: &InvoiceInput<'_>,
    spend: &BTreeMap<String, Decimal>,
    lines: &mut Vec<InvoiceLine>,
) -> Result<(), BillingError> {
    let (period, prices, label) = (&input.period, input.prices, &ctx.label);
    let spans = spans(prices, &input.account.subscriptions, period)?;
    let mut minimums: BTreeMap<String, (Decimal, i64)> = BTreeMap::new();
    for s in &spans {
        let Some(plan) = prices.plan(&s.plan) else { continue };
        let v = &plan.versions[s.index];
        let version = plan.version_label(s.index);
        let days = active_days(period, s.from, s.to);
        let share = format!("{days}/{} days", period.days());
        if !v.recurring_fee.is_zero() {
            let exact = exact18(prorate(v.recurring_fee, period, s.from, s.to));
            let description = format!("Recurring fee {} {label} ({version}, {share})", v.recurring_fee.normalize());
            push_line(
                lines,
                ctx.fee_line(LineKind::RecurringFee, description, version.clone(), days, exact, "recurring_fee"),
            );
        }
        if !v.minimum_spend.is_zero() {
            let m = minimums.entry(version).or_default();
            m.0 += exact18(prorate(v.minimum_spend, period, s.from, s.to));
            m.1 += days;
        }
    }
    for (version, (exact_minimum, days)) in minimums {
        let minimum = ctx.money(exact_minimum);
        let used = spend.get(&version).copied().unwrap_or_default();
        let short = minimum_true_up(used, minimum);
        if !short.is_zero() {
            let description = format!(
                "Minimum spend true-up {label} ({version}, {days}/{} days): minimum {minimum}, usage {used}",
                period.days()
            );
            push_line(
                lines,
                ctx.fee_line(LineKind::MinimumTrueUp, description, version, days, short, "minimum_true_up"),
            );
        }
    }
    Ok(())
}

/// Adjustments: late usage and corrections of earlier closed periods, each rounded as the
/// difference it makes to its period's rounded amount.
fn adjustment_lines(ctx: &Ctx<'_>, input: &InvoiceInput<'_>, lines: &mut Vec<InvoiceLine>) {
    let (prices, config) = (input.prices, ctx.config);
    let mut adjustments = input.adjustments.to_vec();
    adjustments.sort_by(|a, b| {
        (&a.billing_period, &a.meter, &a.plan_version).cmp(&(&b.billing_period, &b.meter, &b.plan_version))
    });
    for a in adjustments.iter().filter(|a| !a.quantity.is_zero() || !a.amount.is_zero() || a.event_count > 0) {
        let charge = prices.charge_of(&a.plan_id, &a.plan_version, &a.meter);
        push_line(
            lines,
            InvoiceLine {
                line_no: 0,
                kind: LineKind::Adjustment,
                description: format!(
                    "Adjustment for {}: {} arrived after the period closed ({})",
                    a.billing_period, a.meter, a.plan_version
                ),
                meter: Some(a.meter.clone()),
                plan_version: Some(a.plan_version.clone()),
                source_period: a.billing_period.clone(),
                quantity: a.quantity.normalize(),
                tiers: Vec::new(),
                amount_unrounded: a.amount.normalize(),
                amount: match a.amount_before {
                    Some(before) => ctx.money(before + a.amount) - ctx.money(before),
                    None => ctx.money(a.amount),
                },
                item: charge.and_then(|c| c.item.clone()).unwrap_or_else(|| a.meter.clone()),
                revenue_account: charge
                    .and_then(|c| c.revenue_account.clone())
                    .unwrap_or_else(|| config.default_revenue_account.clone()),
                event_count: a.event_count,
                first_seq: a.first_seq,
                last_seq: a.last_seq,
            },
        );
    }
}

/// Late usage of a period that was lifted to its minimum replaces part of the true-up instead
/// of adding to it: the customer pays max(minimum, usage) for that period, once.
fn late_minimum_offsets(ctx: &Ctx<'_>, input: &InvoiceInput<'_>, lines: &mut Vec<InvoiceLine>) {
    let mut late_spend: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for l in lines.iter().filter(|l| l.kind == LineKind::Adjustment) {
        if let Some(v) = &l.plan_version {
            *late_spend.entry((l.source_period.clone(), v.clone())).or_default() += l.amount;
        }
    }
    for ((source, version), late) in late_spend {
        let standing = input.minimum_remaining.get(&(source.clone(), version.clone())).copied().unwrap_or_default();
        let offset = late.min(standing);
        if offset > Decimal::ZERO {
            let description = format!(
                "Minimum spend true-up {source} ({version}) reduced by late usage of {late}: was {}",
                ctx.money(standing)
            );
            let mut line = ctx.fee_line(LineKind::MinimumTrueUp, description, version, 0, -offset, "minimum_true_up");
            line.source_period = source;
            push_line(lines, line);
        }
    }
}

/// The invoice around its lines: dates, total, identity and content hash.
fn assemble(ctx: &Ctx<'_>, input: &InvoiceInput<'_>, lines: Vec<InvoiceLine>) -> Result<Invoice, BillingError> {
    let (period, account, config) = (&input.period, input.account, ctx.config);
    let label = ctx.label.clone();
    let total: Decimal = lines.iter().map(|l| l.amount).sum();
    let issue = period.end.date_naive();
    let due = issue.checked_add_signed(Duration::days(i64::from(config.payment_terms_days))).ok_or_else(|| {
        BillingError::Reference(format!("[billing] payment_terms_days {} is out of range", config.payment_terms_days))
    })?;
    let mut invoice = Invoice {
        invoice_id: invoice_id(&account.id, &account.legal_entity, &account.currency, &label),
        revision: 0,
        status: if input.preview { "preview".into() } else { "final".into() },
        customer_id: account.id.clone(),
        customer_name: account.name.clone(),
        erp_customer_id: account.erp_customer_id.clone(),
        legal_entity: account.legal_entity.clone(),
        currency: account.currency.clone(),
        period: label,
        period_start: period.start,
        period_end: period.end,
        issue_date: issue.format("%Y-%m-%d").to_string(),
        due_date: due.format("%Y-%m-%d").to_string(),
        payment_terms_days: config.payment_terms_days,
        summary_version: input.summary_version,
        adjustments_after_version: input.adjustments_after_version,
        lines,
        total,
        content_hash: String::new(),
    };
    invoice.content_hash = invoice.compute_hash()?;
    Ok(invoice)
}

/// Invoices for the unit tests of the billing crate.
#[cfg(test)]
pub(crate) mod sample {
    use super::*;
    use chrono::TimeZone;

    /// A usage line of `amount` (USD) on revenue account `account`.
    pub(crate) fn line(no: u32, amount: &str, account: &str) -> InvoiceLine {
        let amount: Decimal = amount.parse().unwrap_or_default();
        InvoiceLine {
            line_no: no,
            kind: LineKind::Usage,
            description: format!("line {no}"),
            meter: None,
            plan_version: None,
            source_period: "2026-11".into(),
            quantity: Decimal::ONE,
            tiers: vec![],
            amount_unrounded: amount,
            amount,
            item: "i".into(),
            revenue_account: account.into(),
            event_count: 0,
            first_seq: 0,
            last_seq: 0,
        }
    }

    /// acme's November invoice, revision 1, with `lines`.
    pub(crate) fn invoice(lines: Vec<InvoiceLine>) -> Invoice {
        let total = lines.iter().map(|l| l.amount).sum();
        let epoch = Utc.timestamp_opt(0, 0).single().unwrap_or_default();
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
            period_start: epoch,
            period_end: epoch,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_rater::PlanConfig;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn prices() -> PriceBook {
        let toml = r#"
            [[plans]]
            id = "p"
            currency = "USD"
              [[plans.versions]]
              effective_from = "2026-01-01"
              recurring_fee = "30.00"
              minimum_spend = "50.00"
              charges = [
                { meter = "calls", model = "graduated", revenue_account = "4010", item = "CALLS", tiers = [
                  { up_to = "1000", unit_price = "0.01" }, { unit_price = "0.005" } ] },
              ]
        "#;
        #[derive(serde::Deserialize)]
        struct F {
            plans: Vec<PlanConfig>,
        }
        let f: F = toml::from_str(toml).unwrap();
        PriceBook::new(f.plans, &["calls"]).unwrap()
    }

    fn account(start: Option<&str>) -> Account {
        Account {
            id: "acme".into(),
            name: "Acme".into(),
            erp_customer_id: "C-1".into(),
            legal_entity: "us".into(),
            currency: "USD".into(),
            anchor_day: 1,
            subscriptions: vec![Subscription {
                plan: "p".into(),
                start: start.and_then(meterflow_rater::parse_instant),
                end: None,
            }],
        }
    }

    fn usage(q: &str, a: &str, period: &str) -> UsageTotal {
        UsageTotal {
            customer_id: "acme".into(),
            meter: "calls".into(),
            plan_id: "p".into(),
            plan_version: "p@2026-01-01".into(),
            currency: "USD".into(),
            billing_period: period.into(),
            quantity: d(q),
            amount: d(a),
            event_count: 3,
            first_seq: 1,
            last_seq: 9,
            amount_before: None,
        }
    }

    fn build(account: &Account, usage: &[UsageTotal], adjustments: &[UsageTotal]) -> Invoice {
        let prices = prices();
        let config = BillingConfig::default();
        let input = InvoiceInput {
            period: Period::parse("2026-11").unwrap(),
            account,
            usage,
            adjustments,
            prices: &prices,
            config: &config,
            summary_version: 7,
            adjustments_after_version: Some(3),
            preview: false,
            minimum_remaining: BTreeMap::new(),
            credits: None,
        };
        build_invoice(&input).unwrap().unwrap()
    }

    #[test]
    fn lines_are_rounded_once_and_the_total_is_the_sum_of_rounded_lines() {
        // 1500 calls: 1000 x 0.01 + 500 x 0.005 = 12.50; fee 30; minimum 50 - 12.50 = 37.50.
        let inv = build(&account(None), &[usage("1500", "12.5", "2026-11")], &[]);
        let lines: Vec<(&str, Decimal)> = inv.lines.iter().map(|l| (l.kind.as_str(), l.amount)).collect();
        assert_eq!(lines, vec![("usage", d("12.50")), ("recurring_fee", d("30.00")), ("minimum_true_up", d("37.50"))]);
        assert_eq!(inv.total, d("80.00"));
        assert_eq!(inv.lines[0].tiers.len(), 2);
        assert_eq!((inv.lines[0].item.as_str(), inv.lines[0].revenue_account.as_str()), ("CALLS", "4010"));
        assert_eq!((inv.issue_date.as_str(), inv.due_date.as_str()), ("2026-12-01", "2026-12-31"));
    }

    #[test]
    fn a_subscription_starting_mid_period_prorates_fee_and_minimum_by_days() {
        // From 16 November: 15 of 30 days.
        let inv = build(&account(Some("2026-11-16")), &[], &[]);
        let lines: Vec<(&str, Decimal)> = inv.lines.iter().map(|l| (l.kind.as_str(), l.amount)).collect();
        assert_eq!(lines, vec![("recurring_fee", d("15.00")), ("minimum_true_up", d("25.00"))]);
    }

    #[test]
    fn a_fee_prorated_to_a_repeating_fraction_keeps_18_digits_and_rounds_once() {
        // 10 of 31 days of October: 30 x 10 / 31 = 9.677419354838709677...
        let prices = prices();
        let config = BillingConfig::default();
        let account = account(Some("2026-10-22"));
        let input = InvoiceInput {
            period: Period::parse("2026-10").unwrap(),
            account: &account,
            usage: &[],
            adjustments: &[],
            prices: &prices,
            config: &config,
            summary_version: 7,
            adjustments_after_version: None,
            preview: false,
            minimum_remaining: BTreeMap::new(),
            credits: None,
        };
        let inv = build_invoice(&input).unwrap().unwrap();
        assert_eq!(inv.lines[0].amount_unrounded, d("9.677419354838709677"));
        assert_eq!(inv.lines[0].amount, d("9.68"));
        assert!(inv.lines.iter().all(|l| l.amount_unrounded.scale() <= 18));
    }

    #[test]
    fn amounts_rated_under_other_prices_are_refused_with_a_rerate_hint() {
        let prices = prices();
        let config = BillingConfig::default();
        let account = account(None);
        let usage = [usage("1500", "15", "2026-11")];
        let input = InvoiceInput {
            period: Period::parse("2026-11").unwrap(),
            account: &account,
            usage: &usage,
            adjustments: &[],
            prices: &prices,
            config: &config,
            summary_version: 7,
            adjustments_after_version: None,
            preview: false,
            minimum_remaining: BTreeMap::new(),
            credits: None,
        };
        let e = build_invoice(&input).unwrap_err().to_string();
        assert!(e.contains("meterflow rerate --period 2026-11"), "{e}");
    }

    #[test]
    fn late_usage_of_an_earlier_period_becomes_an_adjustment_line() {
        let inv = build(&account(None), &[usage("100", "1", "2026-11")], &[usage("10", "0.1", "2026-10")]);
        let adj = inv.lines.last().unwrap();
        assert_eq!((adj.kind.as_str(), adj.source_period.as_str(), adj.amount), ("adjustment", "2026-10", d("0.10")));
    }

    #[test]
    fn late_usage_of_a_period_lifted_to_its_minimum_reduces_the_true_up_instead_of_adding() {
        // September was billed usage 12.50 + true-up 37.50; 10.00 of late usage arrives.
        let prices = prices();
        let config = BillingConfig::default();
        let account = account(None);
        let usage = [usage("100", "1", "2026-11")];
        let late = [usage_late("2026-09", "10")];
        let input = InvoiceInput {
            period: Period::parse("2026-11").unwrap(),
            account: &account,
            usage: &usage,
            adjustments: &late,
            prices: &prices,
            config: &config,
            summary_version: 7,
            adjustments_after_version: Some(3),
            preview: false,
            minimum_remaining: [(("2026-09".to_string(), "p@2026-01-01".to_string()), d("37.50"))].into(),
            credits: None,
        };
        let inv = build_invoice(&input).unwrap().unwrap();
        let sept: Decimal = inv.lines.iter().filter(|l| l.source_period == "2026-09").map(|l| l.amount).sum();
        assert_eq!(sept, d("0.00"), "10.00 late usage, 10.00 less true-up: {:#?}", inv.lines);
    }

    #[test]
    fn late_cents_are_billed_against_what_the_period_already_billed() {
        // September billed 12.504 as 12.50; 0.003 arrives late: the period is now worth 12.51.
        let mut late = usage_late("2026-09", "0.003");
        late.amount_before = Some(d("12.504"));
        let inv = build(&account(None), &[usage("100", "1", "2026-11")], &[late]);
        let adj = inv.lines.iter().find(|l| l.kind == LineKind::Adjustment).unwrap();
        assert_eq!(adj.amount, d("0.01"));
    }

    fn usage_late(period: &str, amount: &str) -> UsageTotal {
        UsageTotal { billing_period: period.into(), ..usage("1000", amount, period) }
    }

    #[test]
    fn the_same_inputs_give_the_same_id_and_bytes() {
        let a = build(&account(None), &[usage("1500", "12.5", "2026-11")], &[]);
        let b = build(&account(None), &[usage("1500", "12.5", "2026-11")], &[]);
        assert_eq!(a.to_json().unwrap(), b.to_json().unwrap());
        assert_eq!(a.invoice_id, invoice_id("acme", "us", "USD", "2026-11"));
        let c = build(&account(None), &[usage("1501", "12.505", "2026-11")], &[]);
        assert_eq!(a.invoice_id, c.invoice_id);
        assert_ne!(a.content_hash, c.content_hash);
        assert_eq!(Invoice::from_json(&a.to_json().unwrap()).unwrap(), a);
    }
}

//! Prepaid credits: grants per customer, in money (the customer's currency) or in units of a
//! meter, that pay part of the invoices. The grants are rows of `credit_grants`; everything that
//! happens to a grant is a row of the append-only `credit_ledger` (grant, burn, expiry,
//! rollover, reversal), so a balance is a SUM.
//!
//! ```text
//!   credits grant ─► Grant::new (pure: checks) ─► credit_grants + ledger `grant` row
//!   invoice of period P: the invoice's lines + grants in force + the customer's ledger
//!     (without this invoice's own rows) ─► burn_down (pure) ─► credit lines on the invoice
//!     + ledger rows (burn, expiry, rollover, the recurring top-up), tagged with the invoice
//!     and its revision; a revision first reverses the earlier revision's rows
//! ```
//!
//! The rules ([`burn_down`]):
//! - A grant counts for the invoice of period P when it was recorded no later than P's close,
//!   is effective before P ends, and has not expired by P's start.
//! - Grants burn in priority order (1 first), then earliest expiry (none last), then earliest
//!   effective, then grant id.
//! - Credits pay rated usage: usage and adjustment lines. A money grant burns against what is
//!   left of them; a unit grant burns units of its meter's usage lines, each valued at that
//!   line's average unit price (`line amount x units / line quantity`), rounded once, to the
//!   currency's minor unit with the invoice's rounding: the one rounding step. The credit never
//!   exceeds what is left of the invoice, so a total never goes below zero.
//! - A grant whose expiry falls by P's end gives up its unused balance (`expiry`).
//! - A recurring grant is granted again every period it is in force (`grant` row of P); its
//!   unused part rolls into the next period up to its cap (`rollover` out of P and into the
//!   next), the rest expires.
//!
//! Late usage of a closed period lands on the next invoice as adjustment lines, which credits
//! pay like any usage; a re-issued invoice reverses its earlier revision's rows and burns again.
//! Nothing is ever rewritten.

use chrono::{DateTime, Datelike, Utc};
use meterflow_rater::{round_money, Currency, Period};
use meterflow_sink::TableRoot;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

use crate::config::BillingConfig;
use crate::invoice::{Account, InvoiceLine, LineKind};
use crate::tables::{self, text, Cell, Kind, Session, Spec, Q};
use crate::BillingError;

/// `credit_grants`: one row per grant.
pub(crate) const CREDIT_GRANTS: Spec = Spec {
    name: "credit_grants",
    comment: "meterflow prepaid credit grants: one row per grant (money or units of a meter)",
    columns: &[
        ("grant_id", Kind::Text),
        ("customer_id", Kind::Text),
        ("erp_customer_id", Kind::Text),
        ("legal_entity", Kind::Text),
        ("unit", Kind::Text),
        ("amount", Q),
        ("priority", Kind::Int),
        ("effective_from", Kind::Time),
        ("expires_at", Kind::OptTime),
        ("recurring", Kind::Int),
        ("rollover_cap", Q),
        ("source", Kind::Text),
        ("reason", Kind::Text),
        ("granted_at", Kind::Time),
    ],
};

/// `credit_ledger`: everything that happens to a grant, one signed row each.
pub(crate) const CREDIT_LEDGER: Spec = Spec {
    name: "credit_ledger",
    comment: "meterflow credit ledger: grant, burn, expiry, rollover and reversal rows; a balance is a SUM",
    columns: &[
        ("grant_id", Kind::Text),
        ("customer_id", Kind::Text),
        ("unit", Kind::Text),
        ("source", Kind::Text),
        ("entry_kind", Kind::Text),
        ("amount", Q),
        ("value", Q),
        ("period", Kind::Text),
        ("invoice_id", Kind::OptText),
        ("revision", Kind::Int),
        ("description", Kind::Text),
        ("recorded_at", Kind::Time),
    ],
};

/// The largest grant (and rollover cap) accepted: sums of many stay far from overflowing.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(2_764_472_320, 232_830, 0, false, 0); // 10^15

/// A grant's place in the burn order (see [`Grant`]'s `order`).
type BurnOrder<'a> = (u32, bool, Option<DateTime<Utc>>, DateTime<Utc>, DateTime<Utc>, &'a str);

/// Where a grant comes from. Purchased credits are deferred revenue until used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Bought by the customer: deferred revenue until burned (revenue) or expired (breakage).
    Purchase,
    /// Given away (trial, campaign): a discount when burned.
    Promotion,
    /// Given to make up for something: a discount when burned.
    Goodwill,
}

impl Source {
    /// The name in tables and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Source::Purchase => "purchase",
            Source::Promotion => "promotion",
            Source::Goodwill => "goodwill",
        }
    }

    /// Parses a name written by [`Source::as_str`].
    pub fn parse(s: &str) -> Option<Source> {
        [Source::Purchase, Source::Promotion, Source::Goodwill].into_iter().find(|k| k.as_str() == s)
    }
}

/// What a grant is counted in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CreditUnit {
    /// Money, in the customer's currency (ISO 4217 code).
    Money(String),
    /// Units of a meter.
    Meter(String),
}

impl CreditUnit {
    /// `USD`, or `meter:<meter>`.
    pub fn label(&self) -> String {
        match self {
            CreditUnit::Money(c) => c.clone(),
            CreditUnit::Meter(m) => format!("meter:{m}"),
        }
    }

    /// Parses a label written by [`CreditUnit::label`].
    pub fn parse(s: &str) -> CreditUnit {
        match s.strip_prefix("meter:") {
            Some(m) => CreditUnit::Meter(m.to_string()),
            None => CreditUnit::Money(s.to_string()),
        }
    }
}

impl Serialize for CreditUnit {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

/// One grant of credits to a customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// `G-<customer>-<n>`, n counting the customer's grants from 1.
    pub grant_id: String,
    /// Customer id.
    pub customer_id: String,
    /// Customer in the ERP (for the purchase's journal entry).
    pub erp_customer_id: String,
    /// The legal entity that sold the credits.
    pub legal_entity: String,
    /// Money or units of a meter.
    pub unit: CreditUnit,
    /// Amount granted (every period, for a recurring grant).
    pub amount: Decimal,
    /// Burn order: 1 first.
    pub priority: u32,
    /// In force from.
    pub effective_from: DateTime<Utc>,
    /// Expires at (never when `None`).
    pub expires_at: Option<DateTime<Utc>>,
    /// Granted again every billing period it is in force.
    pub recurring: bool,
    /// A recurring grant's unused part carried into the next period, at most this much.
    pub rollover_cap: Decimal,
    /// Purchase, promotion or goodwill.
    pub source: Source,
    /// Why (shown on the invoice line and in the ledger).
    pub reason: String,
    /// When it was recorded.
    pub granted_at: DateTime<Utc>,
}

/// What `meterflow credits grant` asks for.
#[derive(Debug, Clone)]
pub struct GrantRequest {
    /// Customer id.
    pub customer_id: String,
    /// Amount (money, or units with `meter`).
    pub amount: Decimal,
    /// Units of this meter instead of money.
    pub meter: Option<String>,
    /// Burn order: 1 first.
    pub priority: u32,
    /// In force from (now when `None`).
    pub effective_from: Option<DateTime<Utc>>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Granted again every billing period.
    pub recurring: bool,
    /// Most carried into the next period (recurring grants only).
    pub rollover_cap: Option<Decimal>,
    /// Purchase, promotion or goodwill.
    pub source: Source,
    /// Why.
    pub reason: String,
}

impl Grant {
    /// The grant `request` asks for, for `account` (whose meters with a price are `meters`),
    /// given its `earlier` grants, at `now`. Every refusal says what to change.
    pub fn new(
        request: &GrantRequest,
        account: &Account,
        meters: &[String],
        earlier: usize,
        now: DateTime<Utc>,
    ) -> Result<Grant, BillingError> {
        let refuse = |m: String| BillingError::Credit(format!("customer `{}`: {m}", account.id));
        if request.reason.trim().is_empty() {
            return Err(refuse("give a --reason (it is shown on the invoice and in the ledger)".into()));
        }
        if request.amount <= Decimal::ZERO || request.amount > MAX_AMOUNT {
            return Err(refuse(format!(
                "the amount must be positive and at most {MAX_AMOUNT}, not {}",
                request.amount
            )));
        }
        if request.priority == 0 {
            return Err(refuse("--priority counts from 1 (1 burns first)".into()));
        }
        let unit = match &request.meter {
            Some(m) if meters.iter().any(|k| k == m) => CreditUnit::Meter(m.clone()),
            Some(m) => {
                return Err(refuse(format!("no meter `{m}` (meters: {})", meters.join(", "))));
            }
            None => {
                let scale = meterflow_rater::minor_units(&account.currency).unwrap_or(2);
                if request.amount.normalize().scale() > scale {
                    return Err(refuse(format!(
                        "{} has more decimals than {} has ({scale})",
                        request.amount, account.currency
                    )));
                }
                CreditUnit::Money(account.currency.clone())
            }
        };
        if request.source == Source::Purchase && (request.meter.is_some() || request.recurring) {
            return Err(refuse(
                "purchased credits are money granted once (sell units as money credits; give allowances as \
                 --source promotion)"
                    .into(),
            ));
        }
        let effective_from = request.effective_from.unwrap_or(now);
        if request.expires_at.is_some_and(|e| e <= effective_from) {
            return Err(refuse("the expiry must be after the grant takes effect".into()));
        }
        let rollover_cap = match (request.rollover_cap, request.recurring) {
            (None, _) => Decimal::ZERO,
            (Some(_), false) => {
                return Err(refuse("--rollover-cap applies to --recurring grants only".into()));
            }
            (Some(c), true) if c < Decimal::ZERO || c > MAX_AMOUNT => {
                return Err(refuse(format!("--rollover-cap must be between 0 and {MAX_AMOUNT}")));
            }
            (Some(c), true) => {
                if let CreditUnit::Money(code) = &unit {
                    let scale = meterflow_rater::minor_units(code).unwrap_or(2);
                    if c.normalize().scale() > scale {
                        return Err(refuse(format!("--rollover-cap {c} has more decimals than {code} has ({scale})")));
                    }
                }
                c
            }
        };
        let mut amount = request.amount.normalize();
        if let CreditUnit::Money(c) = &unit {
            amount.rescale(meterflow_rater::minor_units(c).unwrap_or(2));
        }
        Ok(Grant {
            grant_id: format!("G-{}-{}", account.id, earlier + 1),
            customer_id: account.id.clone(),
            erp_customer_id: account.erp_customer_id.clone(),
            legal_entity: account.legal_entity.clone(),
            unit,
            amount,
            priority: request.priority,
            effective_from,
            expires_at: request.expires_at,
            recurring: request.recurring,
            rollover_cap,
            source: request.source,
            reason: request.reason.trim().to_string(),
            granted_at: now,
        })
    }

    /// Whether it counts for the invoice of `period`, closed at `closed_at`.
    fn in_force(&self, period: &Period, closed_at: DateTime<Utc>) -> bool {
        self.granted_at <= closed_at
            && self.effective_from < period.end
            && self.expires_at.is_none_or(|e| e > period.start)
    }

    /// Burn order: priority, earliest expiry (none last), earliest effective, earliest recorded.
    fn order(&self) -> BurnOrder<'_> {
        (
            self.priority,
            self.expires_at.is_none(),
            self.expires_at,
            self.effective_from,
            self.granted_at,
            &self.grant_id,
        )
    }

    /// The ledger row recording a one-off grant, in the customer's period that holds its start.
    fn granted_row(&self, anchor_day: u32) -> Entry {
        let period = Period::containing(self.effective_from, anchor_day).map(|p| p.label()).unwrap_or_default();
        self.entry(
            EntryKind::Grant,
            self.amount,
            self.value_of(self.amount),
            period,
            format!("granted: {}", self.reason),
        )
    }

    /// The money worth of `amount` of the grant (units of a meter have no fixed price: 0).
    fn value_of(&self, amount: Decimal) -> Decimal {
        match self.unit {
            CreditUnit::Money(_) => amount,
            CreditUnit::Meter(_) => Decimal::ZERO,
        }
    }

    fn entry(&self, kind: EntryKind, amount: Decimal, value: Decimal, period: String, description: String) -> Entry {
        Entry {
            grant_id: self.grant_id.clone(),
            customer_id: self.customer_id.clone(),
            unit: self.unit.label(),
            source: self.source,
            kind,
            amount,
            value,
            period,
            invoice_id: None,
            revision: 0,
            description,
            recorded_at: self.granted_at,
        }
    }

    fn row(&self) -> Vec<Cell> {
        vec![
            Cell::Text(self.grant_id.clone()),
            Cell::Text(self.customer_id.clone()),
            Cell::Text(self.erp_customer_id.clone()),
            Cell::Text(self.legal_entity.clone()),
            Cell::Text(self.unit.label()),
            Cell::Dec(self.amount),
            Cell::Int(i64::from(self.priority)),
            Cell::Time(self.effective_from),
            Cell::OptTime(self.expires_at),
            Cell::Int(i64::from(self.recurring)),
            Cell::Dec(self.rollover_cap),
            Cell::Text(self.source.as_str().into()),
            Cell::Text(self.reason.clone()),
            Cell::Time(self.granted_at),
        ]
    }
}

/// What a ledger row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits granted (positive).
    Grant,
    /// Credits that paid an invoice (negative).
    Burn,
    /// Credits given up unused at expiry (negative).
    Expiry,
    /// A recurring grant's unused part carried out of a period (negative) and into the next
    /// (positive).
    Rollover,
    /// Undoes an earlier revision's rows of a re-issued invoice.
    Reversal,
}

impl EntryKind {
    /// The name in the ledger.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Burn => "burn",
            EntryKind::Expiry => "expiry",
            EntryKind::Rollover => "rollover",
            EntryKind::Reversal => "reversal",
        }
    }

    fn parse(s: &str) -> Option<EntryKind> {
        [EntryKind::Grant, EntryKind::Burn, EntryKind::Expiry, EntryKind::Rollover, EntryKind::Reversal]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One row of the credit ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The grant.
    pub grant_id: String,
    /// Customer id.
    pub customer_id: String,
    /// The grant's unit (`USD`, `meter:calls`).
    pub unit: String,
    /// The grant's source.
    pub source: Source,
    /// What happened.
    #[serde(rename = "entry_kind")]
    pub kind: EntryKind,
    /// Signed amount, in the grant's unit.
    pub amount: Decimal,
    /// Signed money worth in the customer's currency: the amount for money grants; for a unit
    /// grant's burn, the credit it gave on the invoice (0 otherwise).
    pub value: Decimal,
    /// The billing period the row counts in (a recurring grant's allowance period).
    pub period: String,
    /// The invoice whose run wrote it (`None` for a one-off grant's own row).
    pub invoice_id: Option<String>,
    /// That invoice's revision (0 when none).
    pub revision: u32,
    /// Human description.
    pub description: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl Entry {
    /// Whether the run of invoice `invoice_id` (any revision) wrote it.
    pub(crate) fn written_by(&self, invoice_id: &str) -> bool {
        self.invoice_id.as_deref() == Some(invoice_id)
    }

    fn row(&self) -> Vec<Cell> {
        vec![
            Cell::Text(self.grant_id.clone()),
            Cell::Text(self.customer_id.clone()),
            Cell::Text(self.unit.clone()),
            Cell::Text(self.source.as_str().into()),
            Cell::Text(self.kind.as_str().into()),
            Cell::Dec(self.amount),
            Cell::Dec(self.value),
            Cell::Text(self.period.clone()),
            Cell::OptText(self.invoice_id.clone()),
            Cell::Int(i64::from(self.revision)),
            Cell::Text(self.description.clone()),
            Cell::Time(self.recorded_at),
        ]
    }
}

/// What the credits of one customer do to one invoice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BurnDown {
    /// Credit lines for the invoice (negative amounts), numbered by the caller.
    pub lines: Vec<InvoiceLine>,
    /// Ledger rows (burns, expiries, rollovers, recurring top-ups), not yet tagged with the
    /// invoice.
    pub entries: Vec<Entry>,
}

/// The customer's credits applied to an invoice of `period` (closed at `closed_at`) whose lines
/// are `lines`. `grants` are the customer's; `history` is the customer's ledger without the
/// rows of this invoice. Pure: the same inputs always give the same burn-down.
pub fn burn_down(
    lines: &[InvoiceLine],
    grants: &[Grant],
    history: &[Entry],
    period: &Period,
    closed_at: DateTime<Utc>,
    currency: &Currency,
    config: &BillingConfig,
) -> BurnDown {
    let label = period.label();
    let next = Period::containing(period.end, period.start.day()).map(|p| p.label()).unwrap_or_default();
    let total: Decimal = lines.iter().map(|l| l.amount).sum();
    let usage: Decimal =
        lines.iter().filter(|l| matches!(l.kind, LineKind::Usage | LineKind::Adjustment)).map(|l| l.amount).sum();
    // What credits may still pay: rated usage, and never more than the invoice.
    let mut payable = usage.min(total).max(Decimal::ZERO);
    // Units of each usage line not yet paid by a unit grant, with the money they bill.
    let mut units_left: Vec<(usize, Decimal)> = lines.iter().map(|l| l.quantity).enumerate().collect();
    let mut order: Vec<&Grant> = grants.iter().filter(|g| g.granted_at <= closed_at).collect();
    order.sort_by(|a, b| a.order().cmp(&b.order()));
    let mut out = BurnDown::default();
    for g in order {
        let mut balance = balance_before(g, history, &label);
        if g.recurring && g.in_force(period, closed_at) {
            out.entries.push(g.entry(
                EntryKind::Grant,
                g.amount,
                g.value_of(g.amount),
                label.clone(),
                format!("granted for {label}: {}", g.reason),
            ));
            balance += g.amount;
        }
        // Money credits pay invoices in their own currency only.
        let payable_here = match &g.unit {
            CreditUnit::Money(c) => *c == currency.code,
            CreditUnit::Meter(_) => true,
        };
        if g.in_force(period, closed_at) && payable_here && balance > Decimal::ZERO && payable > Decimal::ZERO {
            let (used, value) = match &g.unit {
                CreditUnit::Money(_) => {
                    let used = balance.min(payable);
                    (used, used)
                }
                CreditUnit::Meter(m) => burn_units(lines, &mut units_left, m, balance, payable, currency, config),
            };
            if used > Decimal::ZERO && value >= Decimal::ZERO {
                payable -= value;
                balance -= used;
                out.entries.push(g.entry(EntryKind::Burn, -used, -value, label.clone(), format!("paid on {label}")));
                // What was left after this invoice, counting no later period: re-running the
                // invoice prints the same line whatever later invoices used since.
                let left = if g.recurring { balance } else { balance_until(g, history, period) - used };
                out.lines.push(credit_line(g, used, value, &label, left, config));
            }
        }
        let ends = g.expires_at.is_some_and(|e| e <= period.end);
        if balance > Decimal::ZERO && (ends || g.recurring) && g.granted_at <= closed_at {
            let carry = if g.recurring && !ends { balance.min(g.rollover_cap) } else { Decimal::ZERO };
            if carry > Decimal::ZERO {
                let text = format!("carried from {label} to {next}");
                out.entries.push(g.entry(EntryKind::Rollover, -carry, -g.value_of(carry), label.clone(), text.clone()));
                out.entries.push(g.entry(EntryKind::Rollover, carry, g.value_of(carry), next.clone(), text));
            }
            let lapsed = balance - carry;
            if lapsed > Decimal::ZERO {
                let why = if ends { "expired" } else { "unused at the end of the period" };
                out.entries.push(g.entry(EntryKind::Expiry, -lapsed, -g.value_of(lapsed), label.clone(), why.into()));
            }
        }
    }
    out
}

/// A grant's balance before this invoice: all its rows for a one-off grant; for a recurring
/// grant, what was carried into this period (its top-up is added by the caller).
fn balance_before(g: &Grant, history: &[Entry], label: &str) -> Decimal {
    history.iter().filter(|e| e.grant_id == g.grant_id && (!g.recurring || e.period == label)).map(|e| e.amount).sum()
}

/// A one-off grant's balance from its rows of periods up to `period` (a customer's period
/// labels sort in time order).
fn balance_until(g: &Grant, history: &[Entry], period: &Period) -> Decimal {
    history
        .iter()
        .filter(|e| e.grant_id == g.grant_id)
        .filter(|e| Period::parse(&e.period).is_none_or(|p| p.start <= period.start))
        .map(|e| e.amount)
        .sum()
}

/// Burns up to `balance` units of meter `meter` against its usage lines (in line order), each
/// unit valued at its line's average unit price; the money value rounded once per line and
/// never more than `payable`. Returns (units used, value).
fn burn_units(
    lines: &[InvoiceLine],
    units_left: &mut [(usize, Decimal)],
    meter: &str,
    balance: Decimal,
    payable: Decimal,
    currency: &Currency,
    config: &BillingConfig,
) -> (Decimal, Decimal) {
    let (mut used, mut value, mut balance) = (Decimal::ZERO, Decimal::ZERO, balance);
    for (i, left) in units_left.iter_mut() {
        let Some(line) = lines.get(*i) else { continue };
        let priced = line.quantity > Decimal::ZERO && line.amount > Decimal::ZERO;
        if line.kind != LineKind::Usage || line.meter.as_deref() != Some(meter) || !priced {
            continue;
        }
        let still = payable - value;
        let mut take = balance.min(*left);
        if take <= Decimal::ZERO || still <= Decimal::ZERO {
            continue;
        }
        let worth_of = |units: Decimal| {
            line.amount.checked_mul(units).and_then(|x| x.checked_div(line.quantity)).unwrap_or_default()
        };
        let mut worth = round_money(worth_of(take), currency, config.rounding);
        if worth > still {
            // Only what is left to pay: the units that pay exactly that, never units for nothing.
            take = still
                .checked_mul(line.quantity)
                .and_then(|x| x.checked_div(line.amount))
                .map(|u| u.round_dp_with_strategy(9, rust_decimal::RoundingStrategy::AwayFromZero))
                .unwrap_or(take)
                .min(take);
            worth = still;
        }
        *left -= take;
        balance -= take;
        used += take;
        value += worth;
    }
    (used, value)
}

/// The invoice line of a grant's burn.
fn credit_line(
    g: &Grant,
    used: Decimal,
    value: Decimal,
    label: &str,
    left: Decimal,
    config: &BillingConfig,
) -> InvoiceLine {
    let unit = g.unit.label();
    let account = match g.source {
        Source::Purchase => config.deferred_revenue_account.clone(),
        Source::Promotion | Source::Goodwill => config.promotional_credit_account.clone(),
    };
    let what = match &g.unit {
        CreditUnit::Money(_) => String::new(),
        CreditUnit::Meter(m) => format!(", {} {m} units", used.normalize()),
    };
    InvoiceLine {
        line_no: 0,
        kind: LineKind::Credit,
        description: format!(
            "Prepaid credit {} ({}: {}){what}, {} {unit} left",
            g.grant_id,
            g.source.as_str(),
            g.reason,
            in_unit(left, &unit)
        ),
        meter: match &g.unit {
            CreditUnit::Meter(m) => Some(m.clone()),
            CreditUnit::Money(_) => None,
        },
        plan_version: None,
        source_period: label.to_string(),
        quantity: used.normalize(),
        tiers: Vec::new(),
        amount_unrounded: -value,
        amount: -value,
        item: "prepaid_credit".into(),
        revenue_account: account,
        event_count: 0,
        first_seq: 0,
        last_seq: 0,
    }
}

/// The ledger rows revision `revision` of invoice `invoice_id` writes: the reversal of what
/// its earlier revisions' rows still add up to, then its own `entries` tagged with it. Empty
/// when `ledger` (the customer's) already holds rows of that revision: a re-run after a crash
/// between the ledger and the invoice header writes nothing twice.
pub(crate) fn rows_of_revision(
    ledger: &[Entry],
    invoice_id: &str,
    revision: u32,
    entries: Vec<Entry>,
    now: DateTime<Utc>,
) -> Vec<Entry> {
    let own: Vec<Entry> = ledger.iter().filter(|e| e.written_by(invoice_id)).cloned().collect();
    if own.iter().any(|e| e.revision == revision) {
        return Vec::new();
    }
    let mut rows = reversal_of(&own, invoice_id, revision, now);
    rows.extend(entries.into_iter().map(|e| Entry {
        invoice_id: Some(invoice_id.to_string()),
        revision,
        recorded_at: now,
        ..e
    }));
    rows
}

/// The rows undoing what `own` (the rows an invoice's earlier revisions wrote) still adds up
/// to, per grant and period, tagged with revision `revision`.
fn reversal_of(own: &[Entry], invoice_id: &str, revision: u32, now: DateTime<Utc>) -> Vec<Entry> {
    let mut net: BTreeMap<(String, String), (Decimal, Decimal, &Entry)> = BTreeMap::new();
    for e in own {
        let n = net.entry((e.grant_id.clone(), e.period.clone())).or_insert((Decimal::ZERO, Decimal::ZERO, e));
        n.0 += e.amount;
        n.1 += e.value;
    }
    net.into_values()
        .filter(|(a, v, _)| !a.is_zero() || !v.is_zero())
        .map(|(amount, value, e)| Entry {
            kind: EntryKind::Reversal,
            amount: -amount,
            value: -value,
            invoice_id: Some(invoice_id.to_string()),
            revision,
            description: format!("reversal: {invoice_id} re-issued as revision {revision}"),
            recorded_at: now,
            ..e.clone()
        })
        .collect()
}

/// Why re-issuing invoice `invoice_id` of period `period` with credit rows `new` cannot go
/// ahead: a recurring grant would carry a different amount into a later period whose invoice
/// already used what was carried before (`ledger`: the customer's rows). `None` when nothing
/// conflicts.
pub(crate) fn carry_conflict(invoice_id: &str, period: &str, new: &[Entry], ledger: &[Entry]) -> Option<String> {
    let own = |e: &Entry| e.written_by(invoice_id);
    // An invoice's rows in another period than its own are what it carried into the next one
    // (and the reversals of those).
    let carried = |rows: &mut dyn Iterator<Item = &Entry>| {
        let mut out: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        for e in rows.filter(|e| e.period != period) {
            *out.entry((e.grant_id.clone(), e.period.clone())).or_default() += e.amount;
        }
        out
    };
    let before = carried(&mut ledger.iter().filter(|e| own(e)));
    let after = carried(&mut new.iter());
    for ((grant, into), b) in &before {
        let a = after.get(&(grant.clone(), into.clone())).copied().unwrap_or_default();
        let used_later = ledger.iter().any(|e| &e.grant_id == grant && &e.period == into && !own(e));
        if *b != a && used_later {
            return Some(format!(
                "{invoice_id}: re-issuing it would carry {a} instead of {b} of recurring grant {grant} into {into}, \
                 whose invoice already used what was carried; correct this invoice with a credit note instead"
            ));
        }
    }
    None
}

// ---- tables ----------------------------------------------------------------------------

/// The grants of the customers in [`SELECTED_CUSTOMERS`](crate::SELECTED_CUSTOMERS), oldest
/// first (times as Unix microseconds).
pub const GRANTS_SQL: &str = "SELECT grant_id, customer_id, erp_customer_id, legal_entity, unit, amount, priority, \
CAST(effective_from AS BIGINT) AS effective_from_us, CAST(expires_at AS BIGINT) AS expires_at_us, recurring, rollover_cap, source, reason, \
CAST(granted_at AS BIGINT) AS granted_at_us FROM credit_grants WHERE customer_id IN (SELECT customer_id FROM selected_customers) \
ORDER BY customer_id, granted_at, grant_id";

/// The credit ledger of the customers in [`SELECTED_CUSTOMERS`](crate::SELECTED_CUSTOMERS), in
/// the order it was written (times as Unix microseconds).
pub const LEDGER_SQL: &str = "SELECT grant_id, customer_id, unit, source, entry_kind, amount, value, \
period, invoice_id, revision, description, CAST(recorded_at AS BIGINT) AS recorded_at_us FROM credit_ledger \
WHERE customer_id IN (SELECT customer_id FROM selected_customers) \
ORDER BY customer_id, recorded_at, revision, period, grant_id, entry_kind, amount";

/// The balance of each grant of customer `$1`: the SUM of its ledger rows.
pub const BALANCES_SQL: &str =
    "SELECT g.grant_id, g.unit, g.source, g.priority, CAST(g.expires_at AS BIGINT) AS expires_at_us, \
COALESCE(SUM(l.amount), 0) AS balance FROM credit_grants g LEFT JOIN credit_ledger l ON l.grant_id = g.grant_id \
WHERE g.customer_id = $1 GROUP BY 1, 2, 3, 4, 5 ORDER BY g.priority, g.grant_id";

/// An amount read back from a DECIMAL(38, 9) column in `unit`'s own form: money with every
/// minor digit (5.00 USD), units of a meter without trailing zeros.
fn in_unit(v: Decimal, unit: &str) -> Decimal {
    match meterflow_rater::minor_units(unit) {
        Some(scale) => {
            let mut v = v.normalize();
            v.rescale(scale);
            v
        }
        None => v.normalize(),
    }
}

fn time(micros: Option<i64>) -> Option<DateTime<Utc>> {
    micros.and_then(DateTime::from_timestamp_micros)
}

fn small(v: i64, what: &str) -> Result<u32, BillingError> {
    u32::try_from(v).map_err(|_| BillingError::Sql(format!("credit table column {what}: {v} is out of range")))
}

fn source_of(s: &str) -> Result<Source, BillingError> {
    Source::parse(s).ok_or_else(|| BillingError::Sql(format!("credit tables: unknown source {s:?}")))
}

/// A session over `table` with `customers` as the selected list; `None` when the table is absent.
async fn session_for(root: &TableRoot, table: &str, customers: &[&str]) -> Result<Option<Session>, BillingError> {
    let session = Session::new();
    if !session.register(root, table, table).await? {
        return Ok(None);
    }
    session.set_list(crate::invoicing::SELECTED_CUSTOMERS, "customer_id", customers.iter().copied())?;
    Ok(Some(session))
}

/// The grants of `customers`, oldest first, per customer.
pub async fn grants_of(root: &TableRoot, customers: &[&str]) -> Result<BTreeMap<String, Vec<Grant>>, BillingError> {
    let mut out: BTreeMap<String, Vec<Grant>> = BTreeMap::new();
    let Some(session) = session_for(root, CREDIT_GRANTS.name, customers).await? else { return Ok(out) };
    for r in session.rows(GRANTS_SQL, &[]).await?.iter() {
        let unit = r.text(4)?;
        let g = Grant {
            grant_id: r.text(0)?,
            customer_id: r.text(1)?,
            erp_customer_id: r.text(2)?,
            legal_entity: r.text(3)?,
            amount: in_unit(r.dec(5)?, &unit),
            unit: CreditUnit::parse(&unit),
            priority: small(r.int(6)?, "priority")?,
            effective_from: time(Some(r.int(7)?)).unwrap_or_default(),
            expires_at: time(r.opt_int(8)?),
            recurring: r.int(9)? != 0,
            rollover_cap: in_unit(r.dec(10)?, &unit),
            source: source_of(&r.text(11)?)?,
            reason: r.text(12)?,
            granted_at: time(Some(r.int(13)?)).unwrap_or_default(),
        };
        out.entry(g.customer_id.clone()).or_default().push(g);
    }
    Ok(out)
}

/// The ledger rows of `customers`, in the order they were written, per customer.
pub async fn ledger_of(root: &TableRoot, customers: &[&str]) -> Result<BTreeMap<String, Vec<Entry>>, BillingError> {
    let mut out: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    let Some(session) = session_for(root, CREDIT_LEDGER.name, customers).await? else { return Ok(out) };
    for r in session.rows(LEDGER_SQL, &[]).await?.iter() {
        let (kind, unit) = (r.text(4)?, r.text(2)?);
        let e = Entry {
            grant_id: r.text(0)?,
            customer_id: r.text(1)?,
            amount: in_unit(r.dec(5)?, &unit),
            value: in_unit(r.dec(6)?, &unit),
            unit,
            source: source_of(&r.text(3)?)?,
            kind: EntryKind::parse(&kind)
                .ok_or_else(|| BillingError::Sql(format!("credit_ledger: unknown entry kind {kind:?}")))?,
            period: r.text(7)?,
            invoice_id: r.opt_text(8)?,
            revision: small(r.int(9)?, "revision")?,
            description: r.text(10)?,
            recorded_at: time(Some(r.int(11)?)).unwrap_or_default(),
        };
        out.entry(e.customer_id.clone()).or_default().push(e);
    }
    Ok(out)
}

/// The grants of `customer`, oldest first.
pub async fn grants(root: impl Into<TableRoot>, customer: &str) -> Result<Vec<Grant>, BillingError> {
    Ok(grants_of(&root.into(), &[customer]).await?.remove(customer).unwrap_or_default())
}

/// The credit ledger of `customer`, in the order it was written.
pub async fn ledger(root: impl Into<TableRoot>, customer: &str) -> Result<Vec<Entry>, BillingError> {
    Ok(ledger_of(&root.into(), &[customer]).await?.remove(customer).unwrap_or_default())
}

/// The purchased grants whose own ledger row falls in billing period `$1` or earlier: posting a
/// period sends every purchase up to it (a purchase recorded after its period was posted goes
/// with the next one; the target's ledger skips those already posted).
pub const PURCHASES_OF_PERIOD_SQL: &str = "SELECT DISTINCT customer_id, grant_id FROM credit_ledger \
WHERE period <= $1 AND entry_kind = 'grant' AND source = 'purchase' AND invoice_id IS NULL ORDER BY 1, 2";

/// The purchased grants that start in billing period `period` or earlier.
pub async fn purchases_in(root: &TableRoot, period: &str) -> Result<Vec<Grant>, BillingError> {
    let session = Session::new();
    if !session.register(root, CREDIT_LEDGER.name, CREDIT_LEDGER.name).await? {
        return Ok(Vec::new());
    }
    let mut wanted: Vec<(String, String)> = Vec::new();
    for r in session.rows(PURCHASES_OF_PERIOD_SQL, &[text(period)]).await?.iter() {
        wanted.push((r.text(0)?, r.text(1)?));
    }
    let customers: Vec<&str> = wanted.iter().map(|(c, _)| c.as_str()).collect();
    let all = grants_of(root, &customers).await?;
    Ok(all.into_values().flatten().filter(|g| wanted.iter().any(|(_, id)| *id == g.grant_id)).collect())
}

/// A grant's balance now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// The grant.
    pub grant_id: String,
    /// Its unit.
    pub unit: String,
    /// Its source.
    pub source: Source,
    /// Its priority.
    pub priority: u32,
    /// Its expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// The SUM of its ledger rows.
    pub balance: Decimal,
}

/// The balance of each grant of `customer` (the SUM of its ledger rows), in burn order.
pub async fn balances(root: impl Into<TableRoot>, customer: &str) -> Result<Vec<Balance>, BillingError> {
    let root = &root.into();
    let session = Session::new();
    if !session.register(root, CREDIT_GRANTS.name, CREDIT_GRANTS.name).await?
        || !session.register(root, CREDIT_LEDGER.name, CREDIT_LEDGER.name).await?
    {
        return Ok(Vec::new());
    }
    let rows = session.rows(BALANCES_SQL, &[text(customer)]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows.iter() {
        let unit = r.text(1)?;
        out.push(Balance {
            grant_id: r.text(0)?,
            balance: in_unit(r.dec(5)?, &unit),
            unit,
            source: source_of(&r.text(2)?)?,
            priority: small(r.int(3)?, "priority")?,
            expires_at: time(r.opt_int(4)?),
        });
    }
    Ok(out)
}

/// Records a grant (and, for a one-off grant, its ledger row).
pub async fn grant_credits(
    root: impl Into<TableRoot>,
    request: &GrantRequest,
    account: &Account,
    meters: &[String],
) -> Result<Grant, BillingError> {
    let root = &root.into();
    let _lock = tables::lock_billing(root)?;
    let earlier = grants(root.clone(), &account.id).await?;
    let grant = Grant::new(request, account, meters, earlier.len(), Utc::now())?;
    // A one-off grant whose own ledger row a crash kept from being written gets it now.
    let recorded = ledger(root.clone(), &account.id).await?;
    let mut rows: Vec<Vec<Cell>> = earlier
        .iter()
        .filter(|g| !g.recurring)
        .filter(|g| !recorded.iter().any(|e| e.grant_id == g.grant_id && e.kind == EntryKind::Grant))
        .map(|g| g.granted_row(account.anchor_day).row())
        .collect();
    tables::append(root, &CREDIT_GRANTS, &[grant.row()]).await?;
    if !grant.recurring {
        rows.push(grant.granted_row(account.anchor_day).row());
    }
    tables::append(root, &CREDIT_LEDGER, &rows).await?;
    Ok(grant)
}

/// Appends ledger rows.
pub(crate) async fn append_entries(root: &TableRoot, entries: &[Entry]) -> Result<(), BillingError> {
    let rows: Vec<Vec<Cell>> = entries.iter().map(Entry::row).collect();
    tables::append(root, &CREDIT_LEDGER, &rows).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invoice::sample;
    use chrono::TimeZone;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn at(y: i32, m: u32, day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, day, 0, 0, 0).unwrap()
    }

    fn nov() -> Period {
        Period::parse("2026-11").unwrap()
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn grant(id: &str, amount: &str, priority: u32, expires: Option<DateTime<Utc>>) -> Grant {
        Grant {
            grant_id: id.into(),
            customer_id: "acme".into(),
            erp_customer_id: "C-1".into(),
            legal_entity: "us".into(),
            unit: CreditUnit::Money("USD".into()),
            amount: d(amount),
            priority,
            effective_from: at(2026, 10, 1),
            expires_at: expires,
            recurring: false,
            rollover_cap: Decimal::ZERO,
            source: Source::Purchase,
            reason: "top-up".into(),
            granted_at: at(2026, 10, 1),
        }
    }

    fn granted(g: &Grant) -> Entry {
        g.granted_row(1)
    }

    fn usage(no: u32, meter: &str, quantity: &str, amount: &str) -> InvoiceLine {
        let mut l = sample::line(no, amount, "4010");
        l.meter = Some(meter.into());
        l.quantity = d(quantity);
        l
    }

    fn run(lines: &[InvoiceLine], grants: &[Grant], history: &[Entry]) -> BurnDown {
        burn_down(lines, grants, history, &nov(), at(2026, 12, 1), &usd(), &BillingConfig::default())
    }

    fn burns(b: &BurnDown) -> Vec<(String, EntryKind, Decimal)> {
        b.entries.iter().map(|e| (e.grant_id.clone(), e.kind, e.amount)).collect()
    }

    #[test]
    fn credits_burn_in_priority_then_expiry_order_and_never_below_zero() {
        let lines = [usage(1, "calls", "100", "70.00")];
        let a = grant("A", "50.00", 2, None);
        let b = grant("B", "30.00", 1, Some(at(2027, 6, 1)));
        let c = grant("C", "30.00", 1, Some(at(2027, 3, 1)));
        let history = [granted(&a), granted(&b), granted(&c)];
        let out = run(&lines, &[a, b, c], &history);
        assert_eq!(
            burns(&out),
            vec![
                ("C".into(), EntryKind::Burn, d("-30.00")),
                ("B".into(), EntryKind::Burn, d("-30.00")),
                ("A".into(), EntryKind::Burn, d("-10.00"))
            ]
        );
        let credited: Decimal = out.lines.iter().map(|l| l.amount).sum();
        assert_eq!(credited, d("-70.00"), "the invoice is paid in full, not beyond");
        assert!(out.lines[2].description.contains("40.00 USD left"), "{}", out.lines[2].description);
    }

    #[test]
    fn credits_pay_usage_but_not_fees_and_an_expiring_grant_gives_up_the_rest() {
        let mut fee = sample::line(2, "30.00", "4100");
        fee.kind = LineKind::RecurringFee;
        let lines = [usage(1, "calls", "10", "5.00"), fee];
        let g = grant("A", "20.00", 1, Some(at(2026, 11, 20)));
        let out = run(&lines, std::slice::from_ref(&g), &[granted(&g)]);
        assert_eq!(
            burns(&out),
            vec![("A".into(), EntryKind::Burn, d("-5.00")), ("A".into(), EntryKind::Expiry, d("-15.00"))]
        );
        let later = run(&lines, std::slice::from_ref(&g), &[granted(&g)]);
        assert_eq!(out, later, "the same inputs give the same burn-down");
    }

    #[test]
    fn a_grant_recorded_after_the_close_or_effective_after_the_period_does_not_count() {
        let lines = [usage(1, "calls", "10", "5.00")];
        let mut late = grant("A", "20.00", 1, None);
        late.granted_at = at(2026, 12, 2);
        let mut future = grant("B", "20.00", 1, None);
        future.effective_from = at(2026, 12, 1);
        let out = run(&lines, &[late.clone(), future.clone()], &[granted(&late), granted(&future)]);
        assert_eq!(out, BurnDown::default());
    }

    #[test]
    fn unit_credits_are_valued_at_the_lines_average_price_rounded_once() {
        // 3 units of a 7-unit line billed 1.00: 0.428571... rounds to 0.43.
        let lines = [usage(1, "calls", "7", "1.00"), usage(2, "gb", "1", "9.00")];
        let mut g = grant("U", "3", 1, None);
        g.unit = CreditUnit::Meter("calls".into());
        g.source = Source::Promotion;
        let out = run(&lines, std::slice::from_ref(&g), &[granted(&g)]);
        assert_eq!(burns(&out), vec![("U".into(), EntryKind::Burn, d("-3"))]);
        assert_eq!((out.lines[0].amount, out.lines[0].revenue_account.as_str()), (d("-0.43"), "4900"));
        assert_eq!(out.entries[0].value, d("-0.43"));
    }

    #[test]
    fn a_recurring_grant_tops_up_each_period_and_rolls_over_up_to_its_cap() {
        let lines = [usage(1, "calls", "10", "4.00")];
        let mut g = grant("R", "10.00", 1, None);
        (g.recurring, g.rollover_cap, g.source) = (true, d("5.00"), Source::Promotion);
        let carried_in = Entry {
            amount: d("2.00"),
            period: "2026-11".into(),
            ..g.entry(EntryKind::Rollover, d("2"), d("2"), "2026-11".into(), String::new())
        };
        let out = run(&lines, std::slice::from_ref(&g), &[carried_in]);
        let rows: Vec<(EntryKind, Decimal, String)> =
            out.entries.iter().map(|e| (e.kind, e.amount, e.period.clone())).collect();
        assert_eq!(
            rows,
            vec![
                (EntryKind::Grant, d("10.00"), "2026-11".into()),
                (EntryKind::Burn, d("-4.00"), "2026-11".into()),
                (EntryKind::Rollover, d("-5.00"), "2026-11".into()),
                (EntryKind::Rollover, d("5.00"), "2026-12".into()),
                (EntryKind::Expiry, d("-3.00"), "2026-11".into()),
            ]
        );
    }

    #[test]
    fn a_reissue_reverses_what_the_earlier_revision_still_adds_up_to_and_a_rerun_writes_nothing_twice() {
        let g = grant("A", "50.00", 1, None);
        let now = at(2026, 12, 5);
        let mut burn = g.entry(EntryKind::Burn, d("-20"), d("-20"), "2026-11".into(), String::new());
        burn.invoice_id = Some("INV".into());
        burn.revision = 1;
        let again = g.entry(EntryKind::Burn, d("-25"), d("-25"), "2026-11".into(), String::new());
        let mut ledger = vec![granted(&g), burn];
        let rows = rows_of_revision(&ledger, "INV", 2, vec![again.clone()], now);
        let summary: Vec<(EntryKind, Decimal, u32)> = rows.iter().map(|e| (e.kind, e.amount, e.revision)).collect();
        assert_eq!(summary, vec![(EntryKind::Reversal, d("20"), 2), (EntryKind::Burn, d("-25"), 2)]);
        assert!(rows.iter().all(|e| e.written_by("INV")));
        ledger.extend(rows);
        assert!(rows_of_revision(&ledger, "INV", 2, vec![again.clone()], now).is_empty(), "already written");
        let third = rows_of_revision(&ledger, "INV", 3, vec![], now);
        assert_eq!(third.iter().map(|e| e.amount).collect::<Vec<_>>(), vec![d("25")], "only what r2 still adds up to");
    }

    #[test]
    fn unit_credits_stop_where_nothing_is_left_to_pay_and_never_pay_another_currency() {
        let lines = [usage(1, "calls", "150000", "27.50"), usage(2, "gb", "1", "5.00")];
        let money = grant("M", "30.00", 1, None);
        let mut units = grant("U", "15000", 2, None);
        (units.unit, units.source) = (CreditUnit::Meter("calls".into()), Source::Promotion);
        let out = run(&lines, &[money.clone(), units.clone()], &[granted(&money), granted(&units)]);
        // 2.50 is left after the money grant: 2.50 x 150,000 / 27.50 calls pay it, not 15,000.
        assert_eq!(burns(&out)[1], ("U".into(), EntryKind::Burn, d("-13636.363636364")));
        assert_eq!(out.lines.iter().map(|l| l.amount).sum::<Decimal>(), d("-32.50"));
        let mut euro = grant("E", "10.00", 1, None);
        euro.unit = CreditUnit::Money("EUR".into());
        assert_eq!(run(&lines, std::slice::from_ref(&euro), &[granted(&euro)]).lines, vec![]);
    }

    #[test]
    fn an_invoice_line_shows_what_was_left_then_whatever_later_invoices_used() {
        let lines = [usage(1, "calls", "10", "5.00")];
        let g = grant("A", "20.00", 1, None);
        let mut december = g.entry(EntryKind::Burn, d("-10.00"), d("-10.00"), "2026-12".into(), String::new());
        december.invoice_id = Some("INV-DEC".into());
        let first = run(&lines, std::slice::from_ref(&g), &[granted(&g)]);
        let again = run(&lines, std::slice::from_ref(&g), &[granted(&g), december]);
        assert_eq!(first, again);
        assert!(first.lines[0].description.ends_with("15.00 USD left"), "{}", first.lines[0].description);
    }

    #[test]
    fn a_reissue_may_not_change_a_carry_a_later_invoice_already_used() {
        let mut g = grant("R", "10.00", 1, None);
        g.recurring = true;
        let tagged = |kind, amount: &str, period: &str, invoice: &str| Entry {
            invoice_id: Some(invoice.into()),
            ..g.entry(kind, d(amount), d(amount), period.into(), String::new())
        };
        let ledger = [
            tagged(EntryKind::Rollover, "-5", "2026-11", "NOV"),
            tagged(EntryKind::Rollover, "5", "2026-12", "NOV"),
            tagged(EntryKind::Burn, "-15", "2026-12", "DEC"),
        ];
        let same = [tagged(EntryKind::Rollover, "5", "2026-12", "NOV")];
        assert_eq!(carry_conflict("NOV", "2026-11", &same, &ledger), None);
        let e = carry_conflict("NOV", "2026-11", &[], &ledger).unwrap();
        assert!(e.contains("would carry 0 instead of 5 of recurring grant R into 2026-12"), "{e}");
        assert_eq!(carry_conflict("NOV", "2026-11", &[], &ledger[..2]), None, "December not invoiced yet");
        assert_eq!(MAX_AMOUNT, Decimal::from(1_000_000_000_000_000_i64));
    }

    #[test]
    fn a_grant_is_checked_before_it_is_recorded() {
        let account = Account {
            id: "acme".into(),
            name: "Acme".into(),
            erp_customer_id: "C".into(),
            legal_entity: "us".into(),
            currency: "USD".into(),
            anchor_day: 1,
            subscriptions: vec![],
        };
        let ask = |amount: &str| GrantRequest {
            customer_id: "acme".into(),
            amount: d(amount),
            meter: None,
            priority: 1,
            effective_from: None,
            expires_at: None,
            recurring: false,
            rollover_cap: None,
            source: Source::Purchase,
            reason: "bought".into(),
        };
        let meters = ["calls".to_string()];
        let now = at(2026, 12, 1);
        let g = Grant::new(&ask("100"), &account, &meters, 2, now).unwrap();
        assert_eq!((g.grant_id.as_str(), g.amount.to_string()), ("G-acme-3", "100.00".to_string()));
        let e = Grant::new(&ask("0.001"), &account, &meters, 0, now).unwrap_err().to_string();
        assert!(e.contains("more decimals than USD has (2)"), "{e}");
        let e = Grant::new(&ask("-1"), &account, &meters, 0, now).unwrap_err().to_string();
        assert!(e.contains("must be positive"), "{e}");
        let e = Grant::new(&GrantRequest { meter: Some("gb".into()), ..ask("5") }, &account, &meters, 0, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no meter `gb` (meters: calls)"), "{e}");
        let e =
            Grant::new(&GrantRequest { priority: 0, ..ask("5") }, &account, &meters, 0, now).unwrap_err().to_string();
        assert!(e.contains("--priority counts from 1"), "{e}");
        let e = Grant::new(&ask("1000000000000000.01"), &account, &meters, 0, now).unwrap_err().to_string();
        assert!(e.contains("at most 1000000000000000"), "{e}");
        // Without --effective-from a grant starts now, so an expiry already past is refused.
        let past = GrantRequest { expires_at: Some(at(2026, 6, 1)), ..ask("5") };
        let e = Grant::new(&past, &account, &meters, 0, now).unwrap_err().to_string();
        assert!(e.contains("expiry must be after the grant takes effect"), "{e}");
        let e = Grant::new(&GrantRequest { recurring: true, ..ask("5") }, &account, &meters, 0, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("purchased credits are money granted once"), "{e}");
        let e = Grant::new(
            &GrantRequest { rollover_cap: Some(d("1")), source: Source::Promotion, ..ask("5") },
            &account,
            &meters,
            0,
            now,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--recurring grants only"), "{e}");
        let e = Grant::new(&GrantRequest { expires_at: Some(now), ..ask("5") }, &account, &meters, 0, now)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expiry must be after"), "{e}");
    }
}

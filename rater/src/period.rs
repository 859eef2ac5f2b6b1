//! Billing periods, proration and minimum-spend true-ups.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;

/// A calendar-month billing period in UTC: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Period {
    /// First instant of the period.
    pub start: DateTime<Utc>,
    /// First instant after the period.
    pub end: DateTime<Utc>,
}

fn month_start(year: i32, month: u32) -> Option<DateTime<Utc>> {
    NaiveDate::from_ymd_opt(year, month, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| Utc.from_utc_datetime(&t))
}

impl Period {
    /// The calendar month holding `t`.
    pub fn month_of(t: DateTime<Utc>) -> Option<Period> {
        let start = month_start(t.year(), t.month())?;
        let (y, m) = if t.month() == 12 { (t.year() + 1, 1) } else { (t.year(), t.month() + 1) };
        Some(Period { start, end: month_start(y, m)? })
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Period> {
        let (y, m) = s.split_once('-')?;
        Period::month_of(month_start(y.parse().ok()?, m.parse().ok()?)?)
    }

    /// `YYYY-MM`.
    pub fn label(&self) -> String {
        self.start.format("%Y-%m").to_string()
    }

    /// Days in the period.
    pub fn days(&self) -> i64 {
        (self.end - self.start).num_days()
    }
}

/// Whole days of `[from, to)` that fall inside the period (partial days count as whole days:
/// a subscription starting at 15:00 on the 10th is billed for the 10th).
pub fn active_days(period: &Period, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> i64 {
    let floor_day = |t: DateTime<Utc>| t.date_naive();
    let start = from.max(period.start);
    let end = to.map_or(period.end, |t| t.min(period.end));
    if end <= start {
        return 0;
    }
    let first = floor_day(start);
    // The end is exclusive: a subscription ending at midnight does not bill that day.
    let last_exclusive = {
        let d = floor_day(end);
        if end.time() == chrono::NaiveTime::MIN {
            d
        } else {
            d + Duration::days(1)
        }
    };
    (last_exclusive - first).num_days().clamp(0, period.days())
}

/// A recurring fee prorated by active days: `fee x active_days / period_days`, at full decimal
/// precision (28 significant digits); the invoice line rounds it once.
pub fn prorate(fee: Decimal, period: &Period, from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> Decimal {
    let days = active_days(period, from, to);
    let total = period.days();
    if days >= total || total <= 0 {
        return if days > 0 { fee } else { Decimal::ZERO };
    }
    fee * Decimal::from(days) / Decimal::from(total)
}

/// The true-up that lifts usage spend to the minimum (zero when the minimum is met).
pub fn minimum_true_up(usage_amount: Decimal, minimum_spend: Decimal) -> Decimal {
    (minimum_spend - usage_amount).max(Decimal::ZERO)
}

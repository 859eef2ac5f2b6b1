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

    /// The billing period holding `t` for a customer whose periods start on `anchor_day`
    /// (1 = calendar months; 2 to 28 = from that day of one month to that day of the next).
    pub fn containing(t: DateTime<Utc>, anchor_day: u32) -> Option<Period> {
        if anchor_day <= 1 {
            return Period::month_of(t);
        }
        let at = |y: i32, m: u32| {
            NaiveDate::from_ymd_opt(y, m, anchor_day)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| Utc.from_utc_datetime(&t))
        };
        let prev = |y: i32, m: u32| if m == 1 { (y - 1, 12) } else { (y, m - 1) };
        let next = |y: i32, m: u32| if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let (mut y, mut m) = (t.year(), t.month());
        if t < at(y, m)? {
            (y, m) = prev(y, m);
        }
        let (ny, nm) = next(y, m);
        Some(Period { start: at(y, m)?, end: at(ny, nm)? })
    }

    /// Parses `YYYY-MM` (a calendar month) or `YYYY-MM-DD` (the anchored period starting then).
    pub fn parse(s: &str) -> Option<Period> {
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            let p = Period::containing(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?), d.day())?;
            return (p.start.date_naive() == d && d.day() <= 28).then_some(p);
        }
        let (y, m) = s.split_once('-')?;
        Period::month_of(month_start(y.parse().ok()?, m.parse().ok()?)?)
    }

    /// `YYYY-MM` for a calendar month, `YYYY-MM-DD` (its first day) for an anchored period.
    pub fn label(&self) -> String {
        if self.start.day() == 1 {
            self.start.format("%Y-%m").to_string()
        } else {
            self.start.format("%Y-%m-%d").to_string()
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn calendar_months_and_anchored_periods_hold_the_right_instants() {
        let p = Period::containing(t("2026-11-23T05:00:00Z"), 1).unwrap();
        assert_eq!((p.label(), p.days()), ("2026-11".to_string(), 30));
        let a = Period::containing(t("2026-11-23T05:00:00Z"), 15).unwrap();
        assert_eq!((a.label(), a.end), ("2026-11-15".to_string(), t("2026-12-15T00:00:00Z")));
        let before_anchor = Period::containing(t("2026-01-14T23:59:59Z"), 15).unwrap();
        assert_eq!((before_anchor.label(), before_anchor.days()), ("2025-12-15".to_string(), 31));
        assert_eq!(Period::containing(t("2026-02-15T00:00:00Z"), 15).unwrap().days(), 28);
    }

    #[test]
    fn labels_parse_back_to_their_period() {
        for label in ["2026-11", "2026-11-15", "2025-12-28"] {
            assert_eq!(Period::parse(label).unwrap().label(), label);
        }
        assert!(Period::parse("2026-11-30").is_none(), "anchors stop at the 28th");
        assert!(Period::parse("November").is_none());
    }
}

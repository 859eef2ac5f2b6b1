//! Running billing-period totals, the state behind incremental rating.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What a running total is kept for: tiers and allowances apply per customer, meter, plan
/// version and billing period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TotalKey {
    /// Customer id.
    pub customer_id: String,
    /// Meter name.
    pub meter: String,
    /// Plan version label (`plan@effective_from`).
    pub pricing: String,
    /// Billing period, `YYYY-MM`.
    pub period: String,
}

/// Period totals as of the last committed row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeriodTotals {
    totals: HashMap<TotalKey, Decimal>,
}

impl PeriodTotals {
    /// Adds `delta` to the total of `key`; returns the total before and after, or `None` (and
    /// changes nothing) when the sum cannot be represented exactly. The pipeline keeps totals
    /// within [`crate::MAX_PERIOD_TOTAL`] before they get here, so `None` is a bug, not input.
    pub fn advance(&mut self, key: TotalKey, delta: Decimal) -> Option<(Decimal, Decimal)> {
        let entry = self.totals.entry(key).or_default();
        let before = *entry;
        *entry = before.checked_add(delta)?;
        Some((before, *entry))
    }

    /// The current total of `key`.
    pub fn get(&self, key: &TotalKey) -> Decimal {
        self.totals.get(key).copied().unwrap_or_default()
    }

    /// Number of totals held.
    pub fn len(&self) -> usize {
        self.totals.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }

    /// Entries in key order (for snapshots).
    pub fn entries(&self) -> Vec<(TotalKey, Decimal)> {
        let mut v: Vec<_> = self.totals.iter().map(|(k, d)| (k.clone(), *d)).collect();
        v.sort();
        v
    }

    /// Rebuilds from [`PeriodTotals::entries`].
    pub fn from_entries(entries: Vec<(TotalKey, Decimal)>) -> Self {
        PeriodTotals { totals: entries.into_iter().collect() }
    }
}

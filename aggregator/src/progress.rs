//! Event-time progress: watermarks per meter, and when a window counts as closed.
//!
//! ```text
//!            window [start, end)          allowed lateness
//!   ─────────[=================)──────────────────────────┤
//!   state:          OPEN: events land in the window        │ CLOSED: late events still
//!                   (rows row_kind = 'usage')              │ count, rows flagged 'late'
//!                                                          └─ watermark passes end + lateness
//! ```
//!
//! The watermark of a meter is the newest event time seen for it minus the out-of-orderness
//! bound. So that a quiet meter still progresses, it never lags the *stream clock* (the newest
//! broker publish time seen) by more than the idle timeout plus that bound. Both inputs come
//! from the stream, so a replay after a crash computes the same watermarks.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The lateness settings of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatenessPolicy {
    /// How far behind the newest event time the watermark trails.
    pub out_of_orderness: Duration,
    /// After this much stream time without events, a meter's watermark follows the stream clock.
    pub idle_timeout: Duration,
}

/// Watermark state, part of the state snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Newest event time seen per meter (index), as Unix microseconds.
    max_event_time: Vec<Option<i64>>,
    /// Newest broker publish time seen, Unix microseconds.
    stream_clock: Option<i64>,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

impl Progress {
    /// Progress for `meters` meters, nothing seen yet.
    pub fn new(meters: usize) -> Self {
        Progress { max_event_time: vec![None; meters], stream_clock: None }
    }

    /// Records an accepted event of `meter`.
    pub fn observe(&mut self, meter: usize, event_time: DateTime<Utc>, arrival: DateTime<Utc>) {
        if self.max_event_time.len() <= meter {
            self.max_event_time.resize(meter + 1, None);
        }
        let slot = &mut self.max_event_time[meter];
        *slot = Some(slot.map_or(micros(event_time), |m| m.max(micros(event_time))));
        self.advance_clock(arrival);
    }

    /// Moves the stream clock forward (never back).
    pub fn advance_clock(&mut self, now: DateTime<Utc>) {
        self.stream_clock = Some(self.stream_clock.map_or(micros(now), |c| c.max(micros(now))));
    }

    /// The stream clock: newest publish time seen.
    pub fn stream_clock(&self) -> Option<DateTime<Utc>> {
        self.stream_clock.map(from_micros)
    }

    /// The watermark of `meter` (None before anything was seen).
    pub fn watermark(&self, meter: usize, policy: &LatenessPolicy) -> Option<DateTime<Utc>> {
        let by_events =
            self.max_event_time.get(meter).copied().flatten().map(|m| from_micros(m) - policy.out_of_orderness);
        let by_clock = self.stream_clock().map(|c| c - policy.idle_timeout - policy.out_of_orderness);
        match (by_events, by_clock) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when a window of `meter` ending at `window_end` no longer accepts on-time events.
    pub fn is_closed(
        &self,
        meter: usize,
        window_end: DateTime<Utc>,
        allowed_lateness: Duration,
        policy: &LatenessPolicy,
    ) -> bool {
        self.watermark(meter, policy).is_some_and(|w| w > window_end + allowed_lateness)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_392_000 + s, 0).unwrap()
    }

    const POLICY: LatenessPolicy =
        LatenessPolicy { out_of_orderness: Duration::seconds(60), idle_timeout: Duration::seconds(300) };

    #[test]
    fn the_watermark_trails_the_newest_event_by_the_out_of_orderness_bound() {
        let mut p = Progress::new(2);
        p.observe(0, t(1000), t(1000));
        p.observe(0, t(400), t(1001)); // late event: no step back
        assert_eq!(p.watermark(0, &POLICY), Some(t(940)));
    }

    #[test]
    fn a_quiet_meter_follows_the_stream_clock_after_the_idle_timeout() {
        let mut p = Progress::new(2);
        p.observe(0, t(0), t(0));
        p.observe(1, t(10_000), t(10_000));
        assert_eq!(p.watermark(0, &POLICY), Some(t(10_000 - 300 - 60)));
    }

    #[test]
    fn a_window_closes_once_the_watermark_passes_its_end_plus_the_allowed_lateness() {
        let mut p = Progress::new(1);
        let lateness = Duration::seconds(3600);
        p.observe(0, t(3600 + 3600 + 60), t(0)); // watermark exactly at end + lateness
        assert!(!p.is_closed(0, t(3600), lateness, &POLICY));
        p.observe(0, t(3600 + 3600 + 61), t(0));
        assert!(p.is_closed(0, t(3600), lateness, &POLICY));
    }
}

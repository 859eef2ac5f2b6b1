//! Limits on event time relative to arrival: how far back usage may be backdated and how far
//! ahead of the broker's clock an event may claim to be.

use chrono::{DateTime, Duration, Utc};
use meterflow_schemas::RejectReason;

/// Event-time limits, checked against the broker's publish time of the message (deterministic:
/// a replay decides the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    /// Oldest acceptable event time, as a distance before arrival.
    pub max_backdating: Duration,
    /// Newest acceptable event time, as a distance after arrival.
    pub max_future_skew: Duration,
}

impl TimeBounds {
    /// Accepts `event_time` arriving at `arrival`, or says why not.
    pub fn check(&self, event_time: DateTime<Utc>, arrival: DateTime<Utc>) -> Result<(), (RejectReason, String)> {
        if event_time < arrival - self.max_backdating {
            return Err((
                RejectReason::TooOld,
                format!(
                    "time {} is more than {} days before its arrival at {}",
                    event_time.to_rfc3339(),
                    self.max_backdating.num_days(),
                    arrival.to_rfc3339()
                ),
            ));
        }
        if event_time > arrival + self.max_future_skew {
            return Err((
                RejectReason::FutureTime,
                format!(
                    "time {} is more than {} s after its arrival at {}",
                    event_time.to_rfc3339(),
                    self.max_future_skew.num_seconds(),
                    arrival.to_rfc3339()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_within_the_bounds_pass_and_others_get_their_reason() {
        let b = TimeBounds { max_backdating: Duration::days(35), max_future_skew: Duration::minutes(5) };
        let now = DateTime::from_timestamp(1_795_392_000, 0).unwrap();
        assert!(b.check(now - Duration::days(35), now).is_ok());
        assert_eq!(b.check(now - Duration::days(35) - Duration::seconds(1), now).unwrap_err().0, RejectReason::TooOld);
        assert!(b.check(now + Duration::minutes(5), now).is_ok());
        assert_eq!(
            b.check(now + Duration::minutes(5) + Duration::seconds(1), now).unwrap_err().0,
            RejectReason::FutureTime
        );
    }
}

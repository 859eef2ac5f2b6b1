//! Start-up checks of the stream the pipeline is about to read, as pure functions over what the
//! tables record and what the broker says: a stream that is not the one the committed progress
//! came from is refused, never silently read as a replay; a stream that forgets messages before
//! a replay could need them is refused with the setting to change.

use meterflow_ingest::StreamFacts;
use std::time::Duration;

/// What the stream must be for the committed progress to continue on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamVerdict {
    /// The same stream as the committed progress (or nothing committed yet).
    Continue,
    /// Tables written before the stream identity was recorded: continue and record it.
    Record,
}

fn when(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map_or_else(|| micros.to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// Compares the stream identity the tables recorded (`recorded`, with the committed sequence)
/// with the live stream. `Err` says what happened and what to do.
pub fn check_stream(
    stream: &str,
    recorded: Option<i64>,
    committed_seq: u64,
    live: &StreamFacts,
) -> Result<StreamVerdict, String> {
    const ADOPT: &str = "If the stream as it is now is to be counted from its first message, run \
        `meterflow run --adopt-stream` once: the pipeline then starts over on it (its progress and \
        state snapshots are set aside; rows already in the tables stay; an event present in both the \
        old and the new stream is counted again). Otherwise restore the stream and start again.";
    if let Some(id) = recorded {
        if id != live.created_unix_micros {
            return Err(format!(
                "stream {stream} is not the stream the tables were written from: the tables' progress \
                 (through sequence {committed_seq}) comes from a {stream} created at {}, but the broker's {stream} \
                 was created at {}: it was deleted and re-created, and its messages reuse sequence numbers the \
                 tables already count. {ADOPT}",
                when(id),
                when(live.created_unix_micros),
            ));
        }
    }
    if live.last_seq < committed_seq {
        return Err(format!(
            "stream {stream} holds messages only up to sequence {}, but the tables have committed through \
             sequence {committed_seq}: the stream lost its tail (for example a server that lost power without \
             `sync_interval: always`), and new messages would reuse sequence numbers the tables already count. \
             {ADOPT}",
            live.last_seq
        ));
    }
    Ok(if recorded.is_none() && committed_seq > 0 { StreamVerdict::Record } else { StreamVerdict::Continue })
}

/// Checks that the stream keeps messages long enough: a replay after a crash reads from the
/// last state snapshot (`snapshot_every` apart at the commit interval), and a start whose
/// snapshot is unreadable rebuilds the dedup index from the whole horizon. `max_age` zero keeps
/// messages forever.
pub fn check_retention(
    stream: &str,
    max_age: Duration,
    dedup_horizon_days: u16,
    snapshot_every: Duration,
) -> Result<(), String> {
    if max_age.is_zero() {
        return Ok(());
    }
    let horizon = Duration::from_secs(u64::from(dedup_horizon_days) * 86_400);
    let needed = horizon.max(snapshot_every.saturating_mul(2) + Duration::from_secs(86_400));
    if max_age < needed {
        return Err(format!(
            "stream {stream} keeps messages for {} s, less than the {} s a restart may need to read again \
             (the dedup horizon, [pipeline] dedup_horizon_days = {dedup_horizon_days}, and twice the time \
             between state snapshots plus a day): raise the stream's max_age ([nats] max_age_days for a \
             stream meterflow creates, or the stream's own setting) to at least {} days, or 0 for no limit",
            max_age.as_secs(),
            needed.as_secs(),
            needed.as_secs().div_ceil(86_400)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(created: i64, last: u64) -> StreamFacts {
        StreamFacts {
            created_unix_micros: created,
            created: String::new(),
            first_seq: 1,
            last_seq: last,
            max_age: Duration::ZERO,
        }
    }

    #[test]
    fn the_same_stream_continues_and_a_fresh_table_records_nothing_to_compare() {
        assert_eq!(check_stream("USAGE", Some(7), 40, &live(7, 50)), Ok(StreamVerdict::Continue));
        assert_eq!(check_stream("USAGE", None, 0, &live(7, 0)), Ok(StreamVerdict::Continue));
        assert_eq!(check_stream("USAGE", None, 40, &live(7, 50)), Ok(StreamVerdict::Record));
    }

    // Found in review: after the stream was deleted and re-created, new messages reused old
    // sequence numbers, were taken for a replay, folded into state only and never written.
    #[test]
    fn a_re_created_stream_is_refused_with_what_to_do() {
        let e = check_stream("USAGE", Some(7), 40, &live(8, 50)).unwrap_err();
        assert!(e.contains("deleted and re-created") && e.contains("--adopt-stream"), "{e}");
    }

    #[test]
    fn a_stream_that_lost_its_tail_is_refused() {
        let e = check_stream("USAGE", Some(7), 40, &live(7, 30)).unwrap_err();
        assert!(e.contains("only up to sequence 30") && e.contains("through sequence 40"), "{e}");
        let e = check_stream("USAGE", None, 40, &live(7, 30)).unwrap_err();
        assert!(e.contains("lost its tail"), "{e}");
    }

    #[test]
    fn a_stream_that_forgets_messages_a_restart_may_need_is_refused() {
        let day = Duration::from_secs(86_400);
        assert!(check_retention("USAGE", Duration::ZERO, 37, day).is_ok());
        assert!(check_retention("USAGE", day * 90, 37, Duration::from_secs(100)).is_ok());
        let e = check_retention("USAGE", day * 30, 37, Duration::from_secs(100)).unwrap_err();
        assert!(e.contains("dedup_horizon_days = 37") && e.contains("at least 37 days"), "{e}");
        let e = check_retention("USAGE", day * 40, 37, day * 30).unwrap_err();
        assert!(e.contains("at least 61 days"), "{e}");
    }
}

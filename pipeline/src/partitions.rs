//! Cluster-wide facts of a partitioned stream, decided from the partitions' records on the
//! board ([`meterflow_ingest::Board`]). Pure.

use chrono::{DateTime, Utc};
use meterflow_ingest::PartitionRecord;
use meterflow_rater::Period;
use meterflow_sink::ClosedPeriod;
use std::collections::{BTreeMap, BTreeSet};

/// The billing periods to close now: every period some partition holds usage of, not closed,
/// whose end plus `grace` every partition's watermark has passed. Nothing while any partition
/// has no record (unowned, or its owner has not published one yet) or no watermark: its usage
/// could still be open.
pub fn due_everywhere(
    records: &[Option<PartitionRecord>],
    closed: &BTreeMap<String, ClosedPeriod>,
    grace: chrono::Duration,
) -> Vec<Period> {
    let mut lowest: Option<DateTime<Utc>> = None;
    for record in records {
        let Some(w) = record.as_ref().and_then(|r| r.watermark_micros).and_then(DateTime::from_timestamp_micros) else {
            return Vec::new();
        };
        lowest = Some(lowest.map_or(w, |l| l.min(w)));
    }
    let Some(watermark) = lowest else { return Vec::new() };
    let open: BTreeSet<&String> =
        records.iter().flatten().flat_map(|r| r.open_periods.iter()).filter(|p| !closed.contains_key(*p)).collect();
    open.into_iter().filter_map(|p| Period::parse(p)).filter(|p| watermark > p.end + grace).collect()
}

/// Each worker's fair share of `partitions` among `workers` live workers (rounded up, so that
/// every partition has room for an owner).
pub fn share(partitions: u32, workers: usize) -> usize {
    let workers = workers.max(1);
    (partitions as usize).div_ceil(workers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(p: u32, watermark: Option<&str>, open: &[&str]) -> Option<PartitionRecord> {
        Some(PartitionRecord {
            partition: p,
            owner: "w".into(),
            committed_seq: 1,
            watermark_micros: watermark
                .map(|w| DateTime::parse_from_rfc3339(w).map(|t| t.timestamp_micros()).unwrap_or_default()),
            open_periods: open.iter().map(|s| s.to_string()).collect(),
            at_unix: 0,
        })
    }

    #[test]
    fn a_period_closes_only_when_every_partitions_watermark_is_past_its_end_plus_grace() {
        let grace = chrono::Duration::hours(1);
        let closed = BTreeMap::new();
        let ahead = record(0, Some("2026-12-02T00:00:00Z"), &["2026-11"]);
        let behind = record(1, Some("2026-12-01T00:30:00Z"), &[]);
        assert!(due_everywhere(&[ahead.clone(), behind], &closed, grace).is_empty(), "one partition is behind");
        let past = record(1, Some("2026-12-01T02:00:00Z"), &[]);
        let due = due_everywhere(&[ahead.clone(), past.clone()], &closed, grace);
        assert_eq!(due.iter().map(Period::label).collect::<Vec<_>>(), vec!["2026-11".to_string()]);
        assert!(due_everywhere(&[ahead.clone(), None], &closed, grace).is_empty(), "an unowned partition");
        assert!(due_everywhere(&[ahead, record(1, None, &[])], &closed, grace).is_empty(), "nothing seen yet");
    }

    #[test]
    fn every_partition_has_room_for_an_owner_among_the_live_workers() {
        assert_eq!(share(8, 3), 3);
        assert_eq!(share(8, 0), 8);
        assert_eq!(share(6, 3), 2);
        assert!((1..=10).all(|w| share(8, w) * w >= 8));
    }
}

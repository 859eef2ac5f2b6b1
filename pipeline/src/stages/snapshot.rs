//! The serialised state of the core stages, as saved in state snapshots.

use anyhow::{Context, Result};
use meterflow_aggregator::{Aggregator, AggregatorSnapshot};
use meterflow_ingest::ShardedDedup;
use meterflow_rater::PeriodTotals;

/// The serialised state: window state, period totals, then the dedup index.
/// The state is only meaningful for the meter definitions it was built with (windows refer to
/// meters by position): a snapshot records them, and a different set discards the snapshot.
fn meters_fingerprint(meters: &meterflow_aggregator::Meters) -> Vec<u8> {
    serde_json::to_vec(meters.configs()).unwrap_or_default()
}

/// Marks a snapshot that starts with the catalog revision its state was decided under (older
/// snapshots start with the length of the meters section, which is never this value).
const WITH_REVISION: &[u8; 8] = b"MFSTATE2";

/// The serialised state, decided under catalog revision `revision` (and the messages after it
/// are to be decided under it too).
pub(crate) fn encode_state(
    agg: &Aggregator,
    totals: &PeriodTotals,
    dedup: &ShardedDedup,
    revision: u64,
) -> Result<Vec<u8>> {
    let meters = meters_fingerprint(agg.meters());
    let windows = serde_json::to_vec(&agg.snapshot())?;
    let totals = serde_json::to_vec(&totals.entries())?;
    let mut out = Vec::with_capacity(meters.len() + windows.len() + totals.len() + 40);
    out.extend_from_slice(WITH_REVISION);
    out.extend_from_slice(&revision.to_le_bytes());
    for section in [&meters, &windows, &totals] {
        out.extend_from_slice(&(section.len() as u64).to_le_bytes());
        out.extend_from_slice(section);
    }
    out.extend_from_slice(&dedup.snapshot()?);
    Ok(out)
}

fn split_section(bytes: &[u8]) -> Result<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_at_checked(8).context("state snapshot truncated")?;
    let mut l = [0u8; 8];
    l.copy_from_slice(len);
    let len = usize::try_from(u64::from_le_bytes(l))?;
    rest.split_at_checked(len).context("state snapshot truncated")
}

/// A decoded snapshot: windows, period totals, the dedup index's bytes, and the catalog revision
/// (`None` in snapshots written before it was recorded).
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    pub(crate) windows: AggregatorSnapshot,
    pub(crate) totals: PeriodTotals,
    pub(crate) dedup: &'a [u8],
    pub(crate) revision: Option<u64>,
}

pub(crate) fn decode_state<'a>(bytes: &'a [u8], meters: &meterflow_aggregator::Meters) -> Result<Decoded<'a>> {
    let (revision, bytes) = match bytes.strip_prefix(WITH_REVISION.as_slice()) {
        Some(rest) => {
            let (r, rest) = rest.split_at_checked(8).context("state snapshot truncated")?;
            let mut b = [0u8; 8];
            b.copy_from_slice(r);
            (Some(u64::from_le_bytes(b)), rest)
        }
        None => (None, bytes),
    };
    let (recorded, rest) = split_section(bytes)?;
    if recorded != meters_fingerprint(meters).as_slice() {
        anyhow::bail!("the [[meters]] definitions changed since this snapshot");
    }
    let (windows, rest) = split_section(rest)?;
    let (totals, dedup) = split_section(rest)?;
    Ok(Decoded {
        windows: serde_json::from_slice(windows)?,
        totals: PeriodTotals::from_entries(serde_json::from_slice(totals)?),
        dedup,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use meterflow_aggregator::{Aggregation, MeterConfig, Meters, WindowSize};

    fn meters(names: &[&str]) -> Meters {
        Meters::new(
            names
                .iter()
                .map(|n| MeterConfig {
                    name: n.to_string(),
                    event_type: n.to_string(),
                    aggregation: Aggregation::Count,
                    value_property: None,
                    group_by: vec![],
                    window: WindowSize::Hour,
                    allowed_lateness_s: 3600,
                })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn a_snapshot_round_trips_and_is_refused_after_the_meters_change() {
        let agg = Aggregator::new(meters(&["a", "b"]));
        let dedup = ShardedDedup::new(1, 37).unwrap();
        let bytes = encode_state(&agg, &PeriodTotals::default(), &dedup, 7).unwrap();
        assert_eq!(decode_state(&bytes, &meters(&["a", "b"])).map(|d| d.revision).ok(), Some(Some(7)));
        let e = decode_state(&bytes, &meters(&["b", "a"])).unwrap_err();
        assert!(e.to_string().contains("[[meters]] definitions changed"), "{e}");
        assert!(decode_state(&bytes[..5], &meters(&["a", "b"])).is_err());
        let older = &bytes[16..];
        let decoded = decode_state(older, &meters(&["a", "b"])).map(|d| d.revision);
        assert_eq!(decoded.ok(), Some(None), "a snapshot from before catalog revisions still loads");
    }
}

//! Dedup on `(source, id)` over a long horizon.
//!
//! Each event identity is reduced to a 128-bit xxh3 fingerprint of `source ‖ 0xFF ‖ id` (0xFF
//! never occurs in UTF-8, so the split is unambiguous). The index keeps 100 bits of it with the
//! day (since the epoch, from the JetStream publish time of the message) the identity was first
//! accepted, in 12-byte slots of a quotiented Robin Hood table ([`table`]): at most 16 bytes per
//! remembered identity. Two different identities are taken for each other only if those 100 bits
//! match: with n identities remembered over a horizon, the chance of any false duplicate is about
//! n² / 2¹⁰¹, below one in a trillion up to 1.5 billion identities (24 GB of slots).
//!
//! Days come from the stream, not the wall clock, so replaying the same messages after a crash
//! makes exactly the same decisions.

pub mod table;

use crossbeam_channel::{bounded, Receiver, Sender};
use std::thread::JoinHandle;
use xxhash_rust::xxh3::Xxh3Default;

use crate::{IngestError, Result};
use table::{Key, Table};

/// Bytes one slot of the index takes. Memory per remembered id is this divided by the table's
/// load factor, 0.77 to 0.92 (see [`DedupIndex::memory_bytes`]).
pub const BYTES_PER_SLOT: usize = table::SLOT_BYTES;

/// The fingerprint of an event identity.
pub fn fingerprint(source: &str, id: &str) -> u128 {
    let mut h = Xxh3Default::new();
    h.update(source.as_bytes());
    h.update(&[0xFF]);
    h.update(id.as_bytes());
    h.digest128()
}

/// The pure dedup decision for one shard.
///
/// Slots keep the first-seen day modulo 256 in *units* of days: one day for horizons up to 255
/// days (exact), `⌈horizon / 254⌉` days for longer ones, where an identity is then remembered for
/// at least the horizon and at most two units longer (never shorter).
#[derive(Debug)]
pub struct DedupIndex {
    /// Days per unit.
    unit: u16,
    /// Horizon in units (at most 255).
    horizon: u16,
    /// Newest unit seen.
    newest: u16,
    table: Table,
}

impl DedupIndex {
    /// An empty index remembering ids for `horizon_days` days (at least 1) after their first
    /// acceptance.
    pub fn new(horizon_days: u16) -> Self {
        let days = horizon_days.max(1);
        let (unit, horizon) = if days <= 255 { (1, days) } else { (days.div_ceil(254), 0) };
        let horizon = if unit == 1 { horizon } else { days.div_ceil(unit) + 1 };
        DedupIndex { unit, horizon, newest: 0, table: Table::default() }
    }

    /// Returns `true` when the identity is seen for the first time within the horizon (and
    /// remembers it from `day`), `false` for a duplicate.
    pub fn check_and_insert(&mut self, fp: u128, day: u16) -> bool {
        let unit = day / self.unit;
        if unit > self.newest {
            self.advance_to(unit);
        }
        let key = Key::of(fp);
        if let Some(seen) = self.table.get(key) {
            if self.age(seen) < self.horizon {
                return false;
            }
        }
        if self.newest - unit < self.horizon {
            self.table.put(key, unit as u8);
        }
        true
    }

    /// Units since `stored` (a unit modulo 256) as of the newest. Exact because every stored
    /// unit is within the horizon (at most 255 units) of the newest.
    fn age(&self, stored: u8) -> u16 {
        u16::from((self.newest as u8).wrapping_sub(stored))
    }

    /// Moves the newest unit forward, forgetting identities older than the horizon.
    fn advance_to(&mut self, unit: u16) {
        let step = unit - self.newest;
        if self.newest == 0 || step >= self.horizon {
            self.table.clear();
        } else {
            let (newest, horizon) = (self.newest as u8, self.horizon);
            self.table.retain(|d| u16::from(newest.wrapping_sub(d)) + step < horizon);
        }
        self.newest = unit;
    }

    /// Number of remembered identities.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// Heap bytes held by the table (slots times [`BYTES_PER_SLOT`]).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    /// The newest day seen (the first day of the newest unit).
    fn newest_day(&self) -> u16 {
        self.newest.saturating_mul(self.unit)
    }

    /// Entries as `fingerprint bits kept | first day of the first-seen unit` (the snapshot
    /// format).
    fn write_to(&self, out: &mut Vec<u8>) {
        for (key, d) in self.table.entries() {
            let day = (self.newest - self.age(d)).saturating_mul(self.unit);
            out.extend_from_slice(&(key.to_fingerprint() | u128::from(day)).to_le_bytes());
        }
    }

    /// Loads snapshot entries, skipping those the horizon has passed.
    fn restore(&mut self, entries: Vec<u128>, newest_day: u16) {
        let newest = newest_day / self.unit;
        if newest > self.newest {
            self.advance_to(newest);
        }
        self.table.reserve(entries.len());
        for e in entries {
            let unit = (e & 0xFFFF) as u16 / self.unit;
            if unit <= self.newest && self.newest - unit < self.horizon {
                self.table.put(Key::of(e), unit as u8);
            }
        }
    }
}

enum Command {
    Check { items: Vec<(u32, u128, u16)>, reply: Sender<Vec<(u32, bool)>> },
    Insert { entries: Vec<u128>, newest_day: u16 },
    Dump { reply: Sender<(u16, Vec<u8>, usize, usize)> },
}

/// A [`DedupIndex`] split by fingerprint over worker threads. Each shard owns its index and
/// receives work over a crossbeam channel: no locks, no shared mutable state.
pub struct ShardedDedup {
    shards: Vec<Sender<Command>>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ShardedDedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardedDedup({} shards)", self.shards.len())
    }
}

const SNAPSHOT_MAGIC: &[u8; 8] = b"MFDEDUP1";

impl ShardedDedup {
    /// Starts `shards` worker threads (at least one).
    pub fn new(shards: usize, horizon_days: u16) -> Result<Self> {
        let n = shards.max(1);
        let mut senders = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx): (Sender<Command>, Receiver<Command>) = bounded(64);
            let handle = std::thread::Builder::new()
                .name(format!("dedup-{i}"))
                .spawn(move || shard_loop(rx, DedupIndex::new(horizon_days)))
                .map_err(|_| IngestError::ShardStopped(i))?;
            senders.push(tx);
            handles.push(handle);
        }
        Ok(ShardedDedup { shards: senders, handles })
    }

    /// The shard of a fingerprint: from bits the index keeps, so restored entries land where
    /// new sightings of them are checked.
    fn shard_of(&self, fp: u128) -> usize {
        (Key::of(fp).k % self.shards.len() as u64) as usize
    }

    /// Decides a batch of `(fingerprint, day)` in order: `true` for first sightings. Repeats
    /// inside the batch are duplicates of their first occurrence.
    pub fn check_batch(&self, keys: &[(u128, u16)]) -> Result<Vec<bool>> {
        let n = self.shards.len();
        let mut parts: Vec<Vec<(u32, u128, u16)>> = (0..n).map(|_| Vec::with_capacity(keys.len() / n + 1)).collect();
        for (pos, &(fp, day)) in keys.iter().enumerate() {
            parts[self.shard_of(fp)].push((pos as u32, fp, day));
        }
        let (reply_tx, reply_rx) = bounded(n);
        let mut expected = 0;
        for (i, items) in parts.into_iter().enumerate() {
            if items.is_empty() {
                continue;
            }
            self.shards[i]
                .send(Command::Check { items, reply: reply_tx.clone() })
                .map_err(|_| IngestError::ShardStopped(i))?;
            expected += 1;
        }
        let mut out = vec![false; keys.len()];
        for _ in 0..expected {
            let decided = reply_rx.recv().map_err(|_| IngestError::ShardStopped(usize::MAX))?;
            for (pos, new) in decided {
                out[pos as usize] = new;
            }
        }
        Ok(out)
    }

    /// Serialises every shard's entries (shard count independent).
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        let mut out = SNAPSHOT_MAGIC.to_vec();
        let mut newest = 0u16;
        let mut body = Vec::new();
        for (i, s) in self.shards.iter().enumerate() {
            let (reply, rx) = bounded(1);
            s.send(Command::Dump { reply }).map_err(|_| IngestError::ShardStopped(i))?;
            let (day, bytes, _, _) = rx.recv().map_err(|_| IngestError::ShardStopped(i))?;
            newest = newest.max(day);
            body.extend_from_slice(&bytes);
        }
        out.extend_from_slice(&newest.to_le_bytes());
        out.extend_from_slice(&((body.len() / 16) as u64).to_le_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Loads entries from a [`ShardedDedup::snapshot`] into empty shards.
    pub fn restore(&self, bytes: &[u8]) -> Result<()> {
        let corrupt = |m: &str| IngestError::CorruptSnapshot(m.to_string());
        let rest = bytes.strip_prefix(SNAPSHOT_MAGIC.as_slice()).ok_or_else(|| corrupt("bad magic"))?;
        let (day, rest) = rest.split_at_checked(2).ok_or_else(|| corrupt("truncated header"))?;
        let (count, body) = rest.split_at_checked(8).ok_or_else(|| corrupt("truncated header"))?;
        let newest_day = u16::from_le_bytes([day[0], day[1]]);
        let mut c = [0u8; 8];
        c.copy_from_slice(count);
        let count = u64::from_le_bytes(c) as usize;
        if body.len() != count.saturating_mul(16) {
            return Err(corrupt("entry count does not match length"));
        }
        let n = self.shards.len();
        let mut parts: Vec<Vec<u128>> = vec![Vec::new(); n];
        for chunk in body.chunks_exact(16) {
            let mut b = [0u8; 16];
            b.copy_from_slice(chunk);
            let e = u128::from_le_bytes(b);
            parts[self.shard_of(e)].push(e);
        }
        for (i, entries) in parts.into_iter().enumerate() {
            self.shards[i].send(Command::Insert { entries, newest_day }).map_err(|_| IngestError::ShardStopped(i))?;
        }
        Ok(())
    }

    /// `(remembered ids, heap bytes)` over all shards.
    pub fn stats(&self) -> Result<(usize, usize)> {
        let mut totals = (0, 0);
        for (i, s) in self.shards.iter().enumerate() {
            let (reply, rx) = bounded(1);
            s.send(Command::Dump { reply }).map_err(|_| IngestError::ShardStopped(i))?;
            let (_, _, len, bytes) = rx.recv().map_err(|_| IngestError::ShardStopped(i))?;
            totals.0 += len;
            totals.1 += bytes;
        }
        Ok(totals)
    }
}

impl Drop for ShardedDedup {
    fn drop(&mut self) {
        // Closing the channels ends the shard loops; then wait for the threads.
        self.shards.clear();
        for h in self.handles.drain(..) {
            let _joined = h.join();
        }
    }
}

fn shard_loop(rx: Receiver<Command>, mut index: DedupIndex) {
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Command::Check { items, reply } => {
                let decided = items.into_iter().map(|(pos, fp, day)| (pos, index.check_and_insert(fp, day))).collect();
                if reply.send(decided).is_err() {
                    return;
                }
            }
            Command::Insert { entries, newest_day } => index.restore(entries, newest_day),
            Command::Dump { reply } => {
                let mut bytes = Vec::new();
                index.write_to(&mut bytes);
                if reply.send((index.newest_day(), bytes, index.len(), index.memory_bytes())).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_identity_is_a_duplicate_even_with_a_different_day() {
        let mut d = DedupIndex::new(35);
        let fp = fingerprint("api-gateway/eu-1", "evt-1");
        assert!(d.check_and_insert(fp, 20_000));
        assert!(!d.check_and_insert(fp, 20_000));
        assert!(!d.check_and_insert(fp, 20_034));
        assert!(d.check_and_insert(fingerprint("api-gateway/eu-2", "evt-1"), 20_034));
    }

    #[test]
    fn an_identity_is_forgotten_once_the_horizon_has_passed() {
        let mut d = DedupIndex::new(35);
        let fp = fingerprint("s", "old");
        assert!(d.check_and_insert(fp, 100));
        assert!(!d.check_and_insert(fp, 134));
        assert!(d.check_and_insert(fp, 135));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn source_and_id_boundaries_do_not_collide() {
        assert_ne!(fingerprint("ab", "c"), fingerprint("a", "bc"));
    }

    #[test]
    fn shards_decide_exactly_like_one_index_and_survive_a_snapshot() {
        let keys: Vec<(u128, u16)> = (0..10_000u32).map(|i| (fingerprint("s", &(i % 7_000).to_string()), 50)).collect();
        let sharded = ShardedDedup::new(3, 35).unwrap();
        let got = sharded.check_batch(&keys).unwrap();
        let mut single = DedupIndex::new(35);
        let want: Vec<bool> = keys.iter().map(|&(fp, day)| single.check_and_insert(fp, day)).collect();
        assert_eq!(got, want);
        assert_eq!(got.iter().filter(|n| **n).count(), 7_000);

        let snap = sharded.snapshot().unwrap();
        let restored = ShardedDedup::new(2, 35).unwrap();
        restored.restore(&snap).unwrap();
        assert!(restored.check_batch(&keys).unwrap().iter().all(|new| !new));
        assert_eq!(restored.stats().unwrap().0, 7_000);
    }

    #[test]
    fn a_corrupt_snapshot_is_an_error_not_a_panic() {
        let d = ShardedDedup::new(1, 35).unwrap();
        assert!(d.restore(b"garbage").is_err());
        assert!(d.restore(b"MFDEDUP1\x01\x00\x05\x00\x00\x00\x00\x00\x00\x00abc").is_err());
    }

    #[test]
    fn memory_per_remembered_id_is_at_most_16_bytes_at_a_million_ids() {
        let mut d = DedupIndex::new(35);
        for i in 0..1_000_000u32 {
            d.check_and_insert(fingerprint("s", &i.to_string()), 1);
        }
        let per_id = d.memory_bytes() as f64 / d.len() as f64;
        println!("dedup bytes per id at 1M ids: {per_id:.1}");
        assert!(per_id <= 16.0, "{per_id:.1} bytes per id");
    }

    #[test]
    fn the_longest_horizon_counts_days_across_the_modulo_256_wrap() {
        let mut d = DedupIndex::new(255);
        let (a, b) = (fingerprint("s", "a"), fingerprint("s", "b"));
        assert!(d.check_and_insert(a, 1_000));
        assert!(d.check_and_insert(b, 1_100));
        for day in [1_050, 1_200, 1_254] {
            assert!(!d.check_and_insert(a, day), "day {day}");
        }
        assert!(d.check_and_insert(a, 1_255), "255 days later the horizon has passed");
        assert!(!d.check_and_insert(b, 1_300));
        assert!(d.check_and_insert(b, 1_300 + 255), "a jump past the horizon forgets everything");
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn a_horizon_longer_than_255_days_remembers_at_least_that_long() {
        let mut d = DedupIndex::new(30_400);
        let fp = fingerprint("s", "a");
        assert!(d.check_and_insert(fp, 1_000));
        assert!(!d.check_and_insert(fp, 1_000 + 30_399), "still within the horizon");
        // At most two units (of 120 days) longer.
        assert!(d.check_and_insert(fp, 1_000 + 30_400 + 240), "forgotten after the horizon plus two units");
    }

    #[test]
    fn a_snapshot_keeps_full_days_and_drops_what_the_horizon_passed() {
        let sharded = ShardedDedup::new(2, 10).unwrap();
        let keys = [(fingerprint("s", "old"), 600), (fingerprint("s", "new"), 605)];
        assert_eq!(sharded.check_batch(&keys).unwrap(), vec![true, true]);
        let snap = sharded.snapshot().unwrap();
        let restored = ShardedDedup::new(1, 10).unwrap();
        restored.restore(&snap).unwrap();
        // Day 610: "old" (600) has passed the 10-day horizon, "new" (605) has not.
        let later = [(fingerprint("s", "old"), 610), (fingerprint("s", "new"), 610)];
        assert_eq!(restored.check_batch(&later).unwrap(), vec![true, false]);
    }
}

//! Dedup on `(source, id)` over a long horizon.
//!
//! Each event identity is reduced to a 128-bit xxh3 fingerprint of `source ‖ 0xFF ‖ id` (0xFF
//! never occurs in UTF-8, so the split is unambiguous). One slot of the index is a single `u128`:
//! the top 112 bits of the fingerprint and, in the low 16 bits, the day (since the epoch, from
//! the JetStream publish time of the message) the identity was first accepted. Two different
//! identities collide only if their 112-bit prefixes match: with n ids remembered, the chance of
//! any false duplicate is about n² / 2¹¹³ (1e-14 for ten billion ids).
//!
//! Days come from the stream, not the wall clock, so replaying the same messages after a crash
//! makes exactly the same decisions.

use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::thread::JoinHandle;
use xxhash_rust::xxh3::Xxh3Default;

use crate::{IngestError, Result};

/// Bytes one hash-table slot takes: a 16-byte entry plus one control byte. Memory per
/// remembered id is this divided by the table's load factor (see [`DedupIndex::memory_bytes`]).
pub const BYTES_PER_SLOT: usize = 17;

const DAY_MASK: u128 = 0xFFFF;

/// The fingerprint of an event identity.
pub fn fingerprint(source: &str, id: &str) -> u128 {
    let mut h = Xxh3Default::new();
    h.update(source.as_bytes());
    h.update(&[0xFF]);
    h.update(id.as_bytes());
    h.digest128()
}

/// A slot: fingerprint prefix plus first-seen day. Equality and hashing look at the prefix only.
#[derive(Clone, Copy, Debug)]
struct Entry(u128);

impl Entry {
    fn new(fp: u128, day: u16) -> Self {
        Entry((fp & !DAY_MASK) | u128::from(day))
    }
    fn day(self) -> u16 {
        (self.0 & DAY_MASK) as u16
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0 >> 16 == other.0 >> 16
    }
}
impl Eq for Entry {}
impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The fingerprint is already uniformly distributed: hand its top 64 bits over as is.
        state.write_u64((self.0 >> 64) as u64);
    }
}

/// A hasher that passes a `u64` through (the keys are hashes already).
#[derive(Default)]
struct PassThrough(u64);
impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The pure dedup decision for one shard.
#[derive(Debug, Default)]
pub struct DedupIndex {
    horizon_days: u16,
    newest_day: u16,
    swept_day: u16,
    set: HashSet<Entry, BuildHasherDefault<PassThrough>>,
}

impl DedupIndex {
    /// An empty index remembering ids for `horizon_days` days after their first acceptance.
    pub fn new(horizon_days: u16) -> Self {
        DedupIndex { horizon_days: horizon_days.max(1), ..Default::default() }
    }

    /// Returns `true` when the identity is seen for the first time within the horizon (and
    /// remembers it from `day`), `false` for a duplicate.
    pub fn check_and_insert(&mut self, fp: u128, day: u16) -> bool {
        if day > self.newest_day {
            self.newest_day = day;
            if self.newest_day > self.swept_day {
                self.sweep();
            }
        }
        let probe = Entry::new(fp, day);
        match self.set.get(&probe) {
            Some(seen) if self.alive(seen.day()) => false,
            Some(_) => {
                self.set.replace(probe);
                true
            }
            None => {
                self.set.insert(probe);
                true
            }
        }
    }

    fn alive(&self, day: u16) -> bool {
        self.newest_day.saturating_sub(day) < self.horizon_days
    }

    /// Forgets identities older than the horizon.
    fn sweep(&mut self) {
        let (newest, horizon) = (self.newest_day, self.horizon_days);
        self.set.retain(|e| newest.saturating_sub(e.day()) < horizon);
        self.swept_day = newest;
    }

    /// Number of remembered identities.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Heap bytes held by the table (slots times [`BYTES_PER_SLOT`]).
    pub fn memory_bytes(&self) -> usize {
        self.set.capacity() * BYTES_PER_SLOT
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        for e in &self.set {
            out.extend_from_slice(&e.0.to_le_bytes());
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

    fn shard_of(&self, fp: u128) -> usize {
        ((fp >> 16) as u64 % self.shards.len() as u64) as usize
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
            Command::Insert { entries, newest_day } => {
                index.newest_day = index.newest_day.max(newest_day);
                index.swept_day = index.newest_day;
                index.set.reserve(entries.len());
                for e in entries {
                    index.set.insert(Entry(e));
                }
            }
            Command::Dump { reply } => {
                let mut bytes = Vec::new();
                index.write_to(&mut bytes);
                if reply.send((index.newest_day, bytes, index.len(), index.memory_bytes())).is_err() {
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
    fn memory_per_remembered_id_stays_within_one_table_growth_step() {
        let mut d = DedupIndex::new(35);
        for i in 0..1_000_000u32 {
            d.check_and_insert(fingerprint("s", &i.to_string()), 1);
        }
        let per_id = d.memory_bytes() as f64 / d.len() as f64;
        println!("dedup bytes per id at 1M ids: {per_id:.1}");
        // 17 bytes per slot at a load factor between 7/16 (just grown) and 7/8 (about to grow).
        assert!((17.0 * 8.0 / 7.0..=17.0 * 16.0 / 7.0).contains(&per_id), "{per_id:.1} bytes per id");
    }
}

//! The dedup set: a quotiented Robin Hood hash table of 12-byte slots.
//!
//! A key is 100 bits of an event's fingerprint: `k`, its top 64 bits, and `e`, the next 36.
//! The table stores a key in less than its width by *quotienting*: the product
//! `k · capacity = home · 2⁶⁴ + low` (128-bit) gives the key's home slot (`home`, the high half)
//! and `q = low >> m` with `m = ⌊log₂ capacity⌋`; `(home, q)` determine `k` exactly (see
//! `Table::key_of`), and `q` has at most `64 − m` bits. So with at least 2²⁰ slots a slot
//! holds the whole key in 44 + 36 bits, plus the first-seen day (8 bits, modulo 256) and the
//! displacement from the home slot plus one (8 bits, 0 = empty) that Robin Hood probing keeps:
//!
//! ```text
//!   bit 95 ............. 52 51 ........... 16 15 .... 8 7 ...... 0
//!       q (44 bits)          e (36 bits)        day       disp+1
//! ```
//!
//! Any capacity works (not only powers of two), so the table grows in steps of 1.2x at a load of
//! 0.92: between two steps the load stays in 0.77..0.92, i.e. 13.0 to 15.7 bytes per remembered
//! key once past the 2²⁰-slot minimum. Robin Hood ordering keeps probe runs short at that load
//! and lets a lookup stop as soon as it passes where its key would be.

/// Bytes per slot.
pub const SLOT_BYTES: usize = 12;
/// Smallest table: 2^20 slots (12 MiB). Below it `q` would not fit its 44 bits.
const MIN_SLOTS_LOG2: u32 = 20;
const MIN_SLOTS: usize = 1 << MIN_SLOTS_LOG2;
/// Grow when more than 92% of the slots are used...
const MAX_LOAD_PERCENT: usize = 92;
/// ... by a fifth, so that just after growing the load is still 0.77.
const GROWTH_DIVISOR: usize = 5;
/// Bits of `e` (taken from the top of the fingerprint's low 64 bits).
pub const EXTRA_BITS: u32 = 36;
/// Key width: what two different identities must share to be taken for each other.
pub const KEY_BITS: u32 = 64 + EXTRA_BITS;
const Q_BITS: u32 = 64 - MIN_SLOTS_LOG2;
/// Largest displacement a slot can record (its field holds displacement + 1).
const MAX_DISP: u32 = 254;

const DISP_MASK: u128 = 0xFF;
const DAY_SHIFT: u32 = 8;
const E_SHIFT: u32 = 16;
const Q_SHIFT: u32 = E_SHIFT + EXTRA_BITS;
const E_MASK: u128 = (1 << EXTRA_BITS) - 1;
const Q_MASK: u128 = (1 << Q_BITS) - 1;
/// The key fields (q and e) of a slot.
const KEY_MASK: u128 = (Q_MASK << Q_SHIFT) | (E_MASK << E_SHIFT);

/// A dedup key: the parts of a fingerprint the table keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Top 64 bits of the fingerprint: chooses the home slot.
    pub k: u64,
    /// The next [`EXTRA_BITS`] bits.
    pub e: u64,
}

impl Key {
    /// The key of a 128-bit fingerprint.
    pub fn of(fp: u128) -> Key {
        Key { k: (fp >> 64) as u64, e: (fp as u64) >> (64 - EXTRA_BITS) }
    }

    /// A 128-bit fingerprint with this key and zeros in the bits the table does not keep.
    pub fn to_fingerprint(self) -> u128 {
        (u128::from(self.k) << 64) | (u128::from(self.e) << (64 - EXTRA_BITS))
    }
}

/// Where a lookup ended.
enum Probe {
    /// The key is in this slot.
    Found(usize),
    /// The key is absent.
    Absent,
}

/// The table. Days are stored modulo 256: callers keep every stored day within 255 days of
/// the newest (see `DedupIndex`).
#[derive(Debug)]
pub struct Table {
    slots: Vec<[u32; 3]>,
    len: usize,
    /// ⌊log₂ slots⌋.
    m: u32,
}

impl Default for Table {
    fn default() -> Self {
        Table::with_slots(MIN_SLOTS)
    }
}

fn load(s: [u32; 3]) -> u128 {
    u128::from(s[0]) | (u128::from(s[1]) << 32) | (u128::from(s[2]) << 64)
}

fn store(v: u128) -> [u32; 3] {
    [v as u32, (v >> 32) as u32, (v >> 64) as u32]
}

fn disp_field(v: u128) -> u32 {
    (v & DISP_MASK) as u32
}

impl Table {
    fn with_slots(slots: usize) -> Table {
        let slots = slots.max(MIN_SLOTS);
        Table { slots: vec![[0; 3]; slots], len: 0, m: usize::BITS - 1 - slots.leading_zeros() }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes of the slots.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * SLOT_BYTES
    }

    /// Home slot and quotient of a key at this capacity.
    fn place(&self, key: Key) -> (usize, u128) {
        let p = u128::from(key.k) * self.slots.len() as u128;
        let home = (p >> 64) as usize;
        let q = u128::from((p as u64) >> self.m);
        (home, (q << Q_SHIFT) | (u128::from(key.e) << E_SHIFT))
    }

    /// The key held in slot `pos` (the inverse of [`Table::place`]).
    fn key_of(&self, pos: usize, v: u128) -> Key {
        let n = self.slots.len();
        let home = (pos + n - (disp_field(v) as usize - 1)) % n;
        let q = (v >> Q_SHIFT) & Q_MASK;
        // k·n lies in [home·2⁶⁴ + q·2ᵐ, home·2⁶⁴ + (q+1)·2ᵐ), an interval shorter than n:
        // the one multiple of n in it is k·n.
        let lower = ((home as u128) << 64) | (q << self.m);
        let k = lower.div_ceil(n as u128) as u64;
        Key { k, e: ((v >> E_SHIFT) & E_MASK) as u64 }
    }

    fn probe(&self, home: usize, fields: u128) -> Probe {
        let n = self.slots.len();
        let mut pos = home;
        let mut dist = 1u32; // displacement + 1, as stored
        loop {
            let v = load(self.slots[pos]);
            let d = disp_field(v);
            if d < dist {
                // An empty slot (0), or a key closer to its home than ours would be: Robin Hood
                // order means ours is not further on.
                return Probe::Absent;
            }
            if d == dist && v & KEY_MASK == fields {
                return Probe::Found(pos);
            }
            pos += 1;
            if pos == n {
                pos = 0;
            }
            dist += 1;
        }
    }

    /// The day stored with `key`, if present.
    pub fn get(&self, key: Key) -> Option<u8> {
        let (home, fields) = self.place(key);
        match self.probe(home, fields) {
            Probe::Found(pos) => Some((load(self.slots[pos]) >> DAY_SHIFT) as u8),
            Probe::Absent => None,
        }
    }

    /// Stores `key` with `day`, replacing the day if the key is present.
    pub fn put(&mut self, key: Key, day: u8) {
        let (home, fields) = self.place(key);
        if let Probe::Found(pos) = self.probe(home, fields) {
            let v = load(self.slots[pos]);
            let v = (v & !(0xFF << DAY_SHIFT)) | (u128::from(day) << DAY_SHIFT);
            self.slots[pos] = store(v);
            return;
        }
        if (self.len + 1) * 100 > self.slots.len() * MAX_LOAD_PERCENT {
            self.grow();
        }
        let (home, fields) = self.place(key);
        self.insert_new(home, fields | (u128::from(day) << DAY_SHIFT));
    }

    /// Robin Hood insertion of an absent key (`fields` without the displacement).
    fn insert_new(&mut self, home: usize, fields: u128) {
        let mut carried = fields | 1;
        // Where the carried key was evicted from, to recover its identity if the table must grow.
        let mut evicted_from: Option<(usize, u128)> = None;
        let mut pos = home;
        let n = self.slots.len();
        loop {
            let v = load(self.slots[pos]);
            if disp_field(v) == 0 {
                self.slots[pos] = store(carried);
                self.len += 1;
                return;
            }
            if disp_field(v) < disp_field(carried) {
                self.slots[pos] = store(carried);
                evicted_from = Some((pos, v));
                carried = v;
            }
            if disp_field(carried) > MAX_DISP {
                break;
            }
            carried += 1;
            pos += 1;
            if pos == n {
                pos = 0;
            }
        }
        // A probe run longer than a slot can record: grow (spreading the keys) and place the
        // carried key again. Rare at a load of 0.92; it keeps every slot's displacement exact.
        let day = ((carried >> DAY_SHIFT) & 0xFF) as u8;
        let key = match evicted_from {
            Some((at, v)) => self.key_of(at, v),
            None => self.key_of(home, fields | 1),
        };
        self.grow();
        let (home, fields) = self.place(key);
        self.insert_new(home, fields | (u128::from(day) << DAY_SHIFT));
    }

    /// Re-places every key in a table a fifth larger.
    fn grow(&mut self) {
        let bigger = self.slots.len() + self.slots.len() / GROWTH_DIVISOR;
        self.rebuild(bigger);
    }

    fn rebuild(&mut self, slots: usize) {
        let mut next = Table::with_slots(slots);
        for (pos, &s) in self.slots.iter().enumerate() {
            let v = load(s);
            if disp_field(v) != 0 {
                let key = self.key_of(pos, v);
                let (home, fields) = next.place(key);
                next.insert_new(home, fields | (v & (0xFF << DAY_SHIFT)));
            }
        }
        *self = next;
    }

    /// Removes every key whose day fails `keep`, in place (backward-shift deletion).
    pub fn retain(&mut self, keep: impl Fn(u8) -> bool) {
        let n = self.slots.len();
        // Start after an empty slot: no probe run crosses it, so shifting never moves a key
        // over the start of the walk.
        let Some(start) = self.slots.iter().position(|s| disp_field(load(*s)) == 0) else {
            return;
        };
        let mut visited = 0;
        while visited < n {
            let pos = (start + 1 + visited) % n;
            let v = load(self.slots[pos]);
            if disp_field(v) != 0 && !keep(((v >> DAY_SHIFT) & 0xFF) as u8) {
                self.remove_at(pos);
                continue; // the slot now holds the next key of the run (or nothing)
            }
            visited += 1;
        }
    }

    fn remove_at(&mut self, mut pos: usize) {
        let n = self.slots.len();
        loop {
            let next = (pos + 1) % n;
            let v = load(self.slots[next]);
            if disp_field(v) <= 1 {
                self.slots[pos] = [0; 3];
                break;
            }
            self.slots[pos] = store(v - 1);
            pos = next;
        }
        self.len -= 1;
    }

    /// Every `(key, day)` held.
    pub fn entries(&self) -> impl Iterator<Item = (Key, u8)> + '_ {
        self.slots.iter().enumerate().filter_map(|(pos, &s)| {
            let v = load(s);
            (disp_field(v) != 0).then(|| (self.key_of(pos, v), ((v >> DAY_SHIFT) & 0xFF) as u8))
        })
    }

    /// Makes room for `additional` more keys without growing on the way.
    pub fn reserve(&mut self, additional: usize) {
        let want = (self.len + additional) * 100 / MAX_LOAD_PERCENT + 1;
        if want > self.slots.len() {
            self.rebuild(want);
        }
    }

    /// Forgets everything (keeps the allocation).
    pub fn clear(&mut self) {
        self.slots.fill([0; 3]);
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use xxhash_rust::xxh3::xxh3_128;

    fn key(i: u64) -> Key {
        Key::of(xxh3_128(&i.to_le_bytes()))
    }

    #[test]
    fn every_key_comes_back_exactly_from_its_slot_at_any_capacity() {
        for slots in [MIN_SLOTS, MIN_SLOTS + 1, MIN_SLOTS * 3 / 2 + 7, (1 << 22) - 1] {
            let t = Table::with_slots(slots);
            for i in 0..2_000u64 {
                let k = key(i);
                let (home, fields) = t.place(k);
                // Any displacement: the slot position minus the displacement is the home.
                let disp = (i % 200) as usize;
                let pos = (home + disp) % t.slots.len();
                assert_eq!(t.key_of(pos, fields | (disp as u128 + 1)), k, "slots {slots}");
            }
        }
        let extreme = [Key { k: 0, e: 0 }, Key { k: u64::MAX, e: E_MASK as u64 }, Key { k: 1 << 63, e: 1 }];
        let t = Table::with_slots(MIN_SLOTS * 5 / 4 + 3);
        for k in extreme {
            let (home, fields) = t.place(k);
            assert_eq!(t.key_of(home, fields | 1), k);
        }
    }

    #[test]
    fn the_table_agrees_with_a_hash_map_through_growth_and_removal() {
        let mut t = Table::default();
        let mut model: HashMap<Key, u8> = HashMap::new();
        for i in 0..3_000_000u64 {
            let k = key(i % 2_500_000);
            let day = (i / 400_000) as u8;
            t.put(k, day);
            model.insert(k, day);
        }
        assert_eq!(t.len(), model.len());
        for (k, d) in &model {
            assert_eq!(t.get(*k), Some(*d));
        }
        assert_eq!(t.get(key(9_000_000)), None);
        t.retain(|d| d % 2 == 0);
        model.retain(|_, d| *d % 2 == 0);
        assert_eq!(t.len(), model.len());
        for i in 0..2_500_000u64 {
            assert_eq!(t.get(key(i)), model.get(&key(i)).copied(), "key {i}");
        }
        let mut listed: Vec<(Key, u8)> = t.entries().collect();
        listed.sort_by_key(|(k, _)| (k.k, k.e));
        let mut want: Vec<(Key, u8)> = model.into_iter().collect();
        want.sort_by_key(|(k, _)| (k.k, k.e));
        assert_eq!(listed, want);
    }

    #[test]
    fn memory_per_key_stays_at_most_16_bytes_past_the_minimum_table() {
        let mut t = Table::default();
        let mut worst: f64 = 0.0;
        let mut best = f64::MAX;
        for i in 0..6_000_000u64 {
            t.put(key(i), 1);
            if i > MIN_SLOTS as u64 && i % 10_000 == 0 {
                let per_key = t.memory_bytes() as f64 / t.len() as f64;
                worst = worst.max(per_key);
                best = best.min(per_key);
            }
        }
        println!("bytes per key from 1M to 6M keys: {best:.2} to {worst:.2}");
        assert!(worst <= 16.0, "{worst:.2} bytes per key");
    }
}

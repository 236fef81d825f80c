//! One kind's revocation entries (jti, sid, sub or client_id → newest seq and expiry),
//! laid out for 10 M entries in little memory.
//!
//! # Layout
//!
//! Each shard keeps its entries as variable-length records packed one after another in
//! one byte buffer (`records`), and a hash table of `u32`s (`index`) pointing at them:
//!
//! ```text
//! record = seq: u64 LE | expires: u32 LE (Unix seconds, rounded up) | len: u16 LE
//!          [| len: u32 LE, when the u16 is 0xFFFF] | value bytes | padding to 4 bytes
//! index  = hashbrown::HashTable<u32>: the record's offset / 4
//! ```
//!
//! A 22-character jti takes 36 bytes of record plus 5 bytes per bucket of the index (the
//! index is 44–88% full, so 6–11 bytes per entry), against 33 bytes per bucket plus a
//! 32-byte heap allocation for the value in a `DashMap<Box<str>, Entry>`: only the small
//! index pays for the hash table's empty buckets, and the values cost no allocation each.
//! (`docs/PERFORMANCE.md`, "Revocation table memory and start-up".)
//!
//! Look-ups compare the value itself, so a match is exact: the hash (foldhash, seeded per
//! process) only picks the shard and the bucket, and a collision costs a comparison, never
//! a wrong answer. The value text is kept because a node writes back what it holds when
//! the store lost history ([`Entries::above`]).
//!
//! A look-up reads the index's control bytes, one `u32` and the record: the same three
//! memory reads as the `DashMap` (control bytes, bucket, boxed value). Removal (only by
//! [`Entries::sweep`]) leaves its record as garbage; a sweep that finds more garbage than
//! live records in a shard rewrites the shard's records densely.

use std::hash::BuildHasher;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::hash_table::Entry as Slot;
use hashbrown::HashTable;

/// The newest revocation of a value: what a look-up returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found {
    pub seq: u64,
    /// Unix ms at which it can no longer match a live token (rounded up to the second).
    pub expires_at_ms: i64,
}

/// Record header: seq (8), expires (4), length (2).
const HEADER: usize = 14;
/// A u16 length of this value means "the real length follows as a u32".
const LONG: u16 = u16::MAX;

/// Unix ms to the stored whole seconds, rounded up (an entry is never dropped early).
fn to_secs(ms: i64) -> u32 {
    ms.div_euclid(1000)
        .saturating_add(i64::from(ms.rem_euclid(1000) != 0))
        .clamp(0, i64::from(u32::MAX)) as u32
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// One shard: records and the index into them.
#[derive(Debug, Default)]
struct Shard {
    index: HashTable<u32>,
    records: Vec<u8>,
    /// Bytes of `records` no entry points at any more.
    garbage: usize,
}

/// Reads the record at word offset `at` of `records`.
struct Record<'a> {
    bytes: &'a [u8],
    start: usize,
}

impl<'a> Record<'a> {
    fn at(records: &'a [u8], word: u32) -> Record<'a> {
        Record {
            bytes: records,
            start: word as usize * 4,
        }
    }

    fn seq(&self) -> u64 {
        read_u64(self.bytes, self.start)
    }

    fn expires_s(&self) -> u32 {
        read_u32(self.bytes, self.start + 8)
    }

    /// The value's bytes and where the record ends (padded).
    fn value_and_end(&self) -> (&'a [u8], usize) {
        let short = u16::from_le_bytes(
            self.bytes[self.start + 12..self.start + HEADER]
                .try_into()
                .expect("2 bytes"),
        );
        let (len, from) = if short == LONG {
            let at = self.start + HEADER;
            (read_u32(self.bytes, at) as usize, at + 4)
        } else {
            (short as usize, self.start + HEADER)
        };
        let value = &self.bytes[from..from + len];
        (value, (from + len).next_multiple_of(4))
    }

    fn value(&self) -> &'a [u8] {
        self.value_and_end().0
    }

    /// Whether this record is `value`'s: the lengths first, so most other values cost
    /// no read of their bytes.
    fn is(&self, value: &[u8]) -> bool {
        let at = self.start + 12;
        let short = u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]);
        if short == LONG {
            return self.value() == value;
        }
        let from = self.start + HEADER;
        short as usize == value.len() && &self.bytes[from..from + value.len()] == value
    }

    fn found(&self) -> Found {
        Found {
            seq: self.seq(),
            expires_at_ms: i64::from(self.expires_s()) * 1000,
        }
    }
}

/// Appends a record; returns its word offset.
fn push(records: &mut Vec<u8>, value: &str, seq: u64, expires_s: u32) -> u32 {
    let start = records.len();
    debug_assert_eq!(start % 4, 0);
    let word =
        u32::try_from(start / 4).expect("a revocation table shard holds at most 16 GiB of records");
    records.extend_from_slice(&seq.to_le_bytes());
    records.extend_from_slice(&expires_s.to_le_bytes());
    match u16::try_from(value.len()) {
        Ok(len) if len != LONG => records.extend_from_slice(&len.to_le_bytes()),
        _ => {
            let len = u32::try_from(value.len()).expect("a value under 4 GiB");
            records.extend_from_slice(&LONG.to_le_bytes());
            records.extend_from_slice(&len.to_le_bytes());
        }
    }
    records.extend_from_slice(value.as_bytes());
    let end = records.len().next_multiple_of(4);
    records.resize(end, 0);
    word
}

impl Shard {
    fn record_len(&self, word: u32) -> usize {
        Record::at(&self.records, word).value_and_end().1 - word as usize * 4
    }

    /// Rewrites the live records densely (after a sweep left more garbage than records).
    fn compact(&mut self, hash: impl Fn(&[u8]) -> u64) {
        let mut fresh = Vec::with_capacity(self.records.len() - self.garbage);
        for word in self.index.iter_mut() {
            let start = *word as usize * 4;
            let end = Record::at(&self.records, *word).value_and_end().1;
            *word = u32::try_from(fresh.len() / 4).expect("fewer records than before");
            fresh.extend_from_slice(&self.records[start..end]);
        }
        self.records = fresh;
        self.garbage = 0;
        let records = &self.records;
        self.index
            .shrink_to(0, |w| hash(Record::at(records, *w).value()));
    }
}

/// A shard alone on its cache lines (128 bytes: adjacent-line prefetch pairs them), so
/// readers taking one shard's lock on one core do not invalidate another's on another
/// core (as `DashMap` pads its shards).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(RwLock<Shard>);

/// Revocation entries of one kind, sharded for concurrent readers and writers.
#[derive(Debug)]
pub(super) struct Entries {
    shards: Box<[Padded]>,
    /// `64 - log2(shards)`: the shard is taken from the hash's bits below the top 7, which
    /// the index uses within a shard.
    shift: u32,
    hasher: foldhash::fast::RandomState,
}

impl Default for Entries {
    fn default() -> Entries {
        // As many shards as DashMap would make: 4 per core, a power of two.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = (cores * 4).next_power_of_two().max(2);
        Entries {
            shards: (0..n).map(|_| Padded::default()).collect(),
            shift: 64 - n.trailing_zeros(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl Entries {
    /// The hash of a value's bytes: the one function every look-up, insert and rehash
    /// uses (`str` and `[u8]` hash differently, so never the `str`).
    fn hash(&self, value: &[u8]) -> u64 {
        self.hasher.hash_one(value)
    }

    fn shard_of(&self, hash: u64) -> usize {
        ((hash << 7) >> self.shift) as usize
    }

    fn read(&self, i: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[i].0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, i: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[i].0.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `value`, if any.
    pub fn get(&self, value: &str) -> Option<Found> {
        let hash = self.hash(value.as_bytes());
        let shard = self.read(self.shard_of(hash));
        let records = &shard.records;
        shard
            .index
            .find(hash, |w| Record::at(records, *w).is(value.as_bytes()))
            .map(|w| Record::at(records, *w).found())
    }

    /// Records `seq` for `value` unless it already holds a higher one; the expiry goes
    /// with the seq.
    pub fn insert(&self, value: &str, seq: u64, expires_at_ms: i64) {
        let hash = self.hash(value.as_bytes());
        let expires_s = to_secs(expires_at_ms);
        let mut guard = self.write(self.shard_of(hash));
        let shard = &mut *guard;
        let records = &shard.records;
        let slot = shard.index.entry(
            hash,
            |w| Record::at(records, *w).is(value.as_bytes()),
            |w| self.hash(Record::at(records, *w).value()),
        );
        match slot {
            Slot::Occupied(found) => {
                let start = *found.get() as usize * 4;
                if read_u64(&shard.records, start) < seq {
                    shard.records[start..start + 8].copy_from_slice(&seq.to_le_bytes());
                    shard.records[start + 8..start + 12].copy_from_slice(&expires_s.to_le_bytes());
                }
            }
            Slot::Vacant(vacant) => {
                vacant.insert(push(&mut shard.records, value, seq, expires_s));
            }
        }
    }

    /// Every entry with a seq above `seq`, with its value and expiry.
    pub fn above(&self, seq: u64) -> Vec<(String, Found)> {
        let mut out = Vec::new();
        for i in 0..self.shards.len() {
            let shard = self.read(i);
            for w in shard.index.iter() {
                let r = Record::at(&shard.records, *w);
                if r.seq() > seq {
                    let value = String::from_utf8_lossy(r.value()).into_owned();
                    out.push((value, r.found()));
                }
            }
        }
        out
    }

    /// Drops entries whose expiry is at or before `now_ms`. Returns how many went.
    pub fn sweep(&self, now_ms: i64) -> usize {
        let mut removed = 0;
        for i in 0..self.shards.len() {
            let mut guard = self.write(i);
            let shard = &mut *guard;
            let records = &shard.records;
            let mut dropped = Vec::new();
            shard.index.retain(|w| {
                let live = Record::at(records, *w).found().expires_at_ms > now_ms;
                if !live {
                    dropped.push(*w);
                }
                live
            });
            removed += dropped.len();
            for w in dropped {
                shard.garbage += shard.record_len(w);
            }
            if shard.index.is_empty() {
                *shard = Shard::default();
            } else if shard.garbage * 2 > shard.records.len() {
                shard.compact(|v| self.hash(v));
            }
        }
        removed
    }

    pub fn len(&self) -> usize {
        (0..self.shards.len())
            .map(|i| self.read(i).index.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exactly_the_value_and_keeps_the_highest_seq() {
        let e = Entries::default();
        e.insert("j1", 5, 10_500);
        assert_eq!(
            e.get("j1"),
            Some(Found {
                seq: 5,
                expires_at_ms: 11_000
            })
        );
        assert_eq!(e.get("j2"), None);
        assert_eq!(e.get("j"), None, "a prefix is another value");
        assert_eq!(e.get("j1 "), None);
        e.insert("j1", 3, 99_000);
        assert_eq!(
            e.get("j1").map(|f| f.seq),
            Some(5),
            "a lower seq changes nothing"
        );
        e.insert("j1", 9, 20_000);
        assert_eq!(
            e.get("j1"),
            Some(Found {
                seq: 9,
                expires_at_ms: 20_000
            })
        );
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn empty_long_and_non_ascii_values_round_trip() {
        let e = Entries::default();
        let long = "x".repeat(70_000);
        let values = ["", "ü-subject|idp", long.as_str(), "a"];
        for (i, v) in values.iter().enumerate() {
            e.insert(v, i as u64 + 1, 1000);
        }
        for (i, v) in values.iter().enumerate() {
            assert_eq!(e.get(v).map(|f| f.seq), Some(i as u64 + 1), "{}", v.len());
        }
        let mut held: Vec<_> = e.above(0).into_iter().map(|(v, f)| (v, f.seq)).collect();
        held.sort();
        let mut want: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.to_string(), i as u64 + 1))
            .collect();
        want.sort();
        assert_eq!(held, want);
    }

    #[test]
    fn sweeping_drops_expired_entries_and_compacts_the_rest() {
        let e = Entries::default();
        for i in 0..10_000u64 {
            // Odd values expire at 2 s, even ones at 9 s.
            let expires = if i % 2 == 1 { 2_000 } else { 9_000 };
            e.insert(&format!("value-{i}"), i + 1, expires);
        }
        assert_eq!(e.sweep(1_999), 0);
        assert_eq!(e.sweep(2_000), 5_000);
        assert_eq!(e.len(), 5_000);
        for i in 0..10_000u64 {
            let got = e.get(&format!("value-{i}")).map(|f| f.seq);
            assert_eq!(got, (i % 2 == 0).then_some(i + 1), "value-{i}");
        }
        // Updates and inserts after compaction land where look-ups find them.
        e.insert("value-0", 20_000, 9_000);
        e.insert("value-1", 20_001, 9_000);
        assert_eq!(e.get("value-0").map(|f| f.seq), Some(20_000));
        assert_eq!(e.get("value-1").map(|f| f.seq), Some(20_001));
        assert_eq!(e.above(19_999).len(), 2);
        assert_eq!(e.sweep(9_000), 5_001);
        assert_eq!(e.len(), 0);
        assert_eq!(e.get("value-0"), None);
    }

    #[test]
    fn expiry_rounds_up_to_the_second() {
        assert_eq!(to_secs(0), 0);
        assert_eq!(to_secs(1), 1);
        assert_eq!(to_secs(1000), 1);
        assert_eq!(to_secs(1001), 2);
        assert_eq!(to_secs(-5), 0);
        assert_eq!(to_secs(i64::MAX), u32::MAX);
    }
}

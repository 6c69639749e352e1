//! The preload map: KV entries fetched ahead of time (at an actor's wake) plus the key ranges
//! that were read completely, so a lookup can answer "absent" without a round trip.
//!
//! Why it exists: waking an existing actor must cost one round trip. The actor layer reads the
//! SQLite prefix (and its own keys) in one batch; the VFS then serves metadata and page reads
//! from this map instead of the store, and keeps it coherent on every commit so a read after a
//! write can never see a stale page.

use crate::kv::{key_after, Key, KeyRange, ListPage, ReadOp, ReadResult, Value};

/// The answer of a [`Preload::lookup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The key was preloaded with this value.
    Found(&'a [u8]),
    /// The key lies in a range that was read completely and is not in it: it does not exist.
    Absent,
    /// The preload knows nothing about the key: ask the store.
    NotPreloaded,
}

/// The answer of a [`Preload::first_in`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum First<'a> {
    /// The first key of the range and its value.
    Entry(&'a [u8], &'a [u8]),
    /// The range was read completely and holds no key.
    Empty,
    /// The preload cannot tell: ask the store.
    Unknown,
}

/// Sorted entries plus the ranges known to be complete. Lookups are binary searches and never
/// allocate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preload {
    entries: Vec<(Key, Value)>,
    /// Disjoint, sorted, non-adjacent `[start, end)` ranges (`end: None` = unbounded).
    complete: Vec<(Key, Option<Key>)>,
}

impl Preload {
    /// An empty preload: every lookup answers [`Lookup::NotPreloaded`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a preload from the answers of a [`crate::kv::KvStore::batch_read`]: every key
    /// asked by a `Get` becomes known (found or absent); every `List` makes its range known up
    /// to where it stopped (a listing cut short is complete only up to its last key).
    /// Operations and results are paired by position; a result of the wrong kind is skipped.
    pub fn from_reads(ops: &[ReadOp], results: &[ReadResult]) -> Self {
        let mut p = Preload::new();
        for (op, res) in ops.iter().zip(results) {
            match (op, res) {
                (ReadOp::Get(keys), ReadResult::Get(values)) => {
                    for (k, v) in keys.iter().zip(values) {
                        p.add_complete(k.clone(), Some(key_after(k)));
                        if let Some(v) = v {
                            p.insert_entry(k.clone(), v.clone());
                        }
                    }
                }
                (ReadOp::List(req), ReadResult::List(page)) => p.add_list_page(&req.range, page),
                _ => {}
            }
        }
        p
    }

    /// Adds one listing of `range`: its entries, and the part of the range it covered.
    pub fn add_list_page(&mut self, range: &KeyRange, page: &ListPage) {
        let (start, end) = range.bounds();
        let covered_end = match &page.next_start {
            None => end,
            Some(next) => Some(next.clone()),
        };
        if covered_end.as_ref().is_none_or(|e| e > &start) {
            self.add_complete(start, covered_end);
        }
        for (k, v) in &page.entries {
            self.insert_entry(k.clone(), v.clone());
        }
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &[(Key, Value)] {
        &self.entries
    }

    /// What the preload knows about `key`.
    pub fn lookup(&self, key: &[u8]) -> Lookup<'_> {
        match self
            .entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
        {
            Ok(i) => Lookup::Found(&self.entries[i].1),
            Err(_) if self.is_covered(key) => Lookup::Absent,
            Err(_) => Lookup::NotPreloaded,
        }
    }

    /// True when `key` lies inside a completely read range.
    pub fn is_covered(&self, key: &[u8]) -> bool {
        // The last range starting at or before `key`.
        let i = self.complete.partition_point(|(s, _)| s.as_slice() <= key);
        i > 0
            && self.complete[i - 1]
                .1
                .as_ref()
                .is_none_or(|e| key < e.as_slice())
    }

    /// True when all of `[start, end)` was read completely.
    pub fn covers(&self, start: &[u8], end: &[u8]) -> bool {
        let i = self
            .complete
            .partition_point(|(s, _)| s.as_slice() <= start);
        i > 0
            && self.complete[i - 1]
                .1
                .as_ref()
                .is_none_or(|e| end <= e.as_slice())
    }

    /// The first entry in `[start, end)`, when the preload can tell.
    pub fn first_in(&self, start: &[u8], end: &[u8]) -> First<'_> {
        let i = self.entries.partition_point(|(k, _)| k.as_slice() < start);
        match self.entries.get(i) {
            Some((k, v)) if k.as_slice() < end => {
                if self.covers(start, &key_after(k)) {
                    First::Entry(k, v)
                } else {
                    First::Unknown
                }
            }
            _ if self.covers(start, end) => First::Empty,
            _ => First::Unknown,
        }
    }

    /// Keeps the preload coherent with a write of `key`: when the preload knows the key (it is
    /// held, or lies in a complete range) its value becomes `value`; otherwise nothing changes
    /// (lookups keep answering `NotPreloaded`, so the store is asked).
    pub fn update(&mut self, key: &[u8], value: &[u8]) {
        match self
            .entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
        {
            Ok(i) => {
                let v = &mut self.entries[i].1;
                v.clear();
                v.extend_from_slice(value);
            }
            Err(i) if self.is_covered(key) => {
                self.entries.insert(i, (key.to_vec(), value.to_vec()));
            }
            Err(_) => {}
        }
    }

    /// Keeps the preload coherent with a delete of `key`: afterwards it answers `Absent`
    /// (inside a complete range) or `NotPreloaded`, never the old value.
    pub fn remove(&mut self, key: &[u8]) {
        if let Ok(i) = self
            .entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
        {
            self.entries.remove(i);
        }
    }

    /// Keeps the preload coherent with a delete of every key in `[start, end)`.
    pub fn remove_range(&mut self, start: &[u8], end: Option<&[u8]>) {
        self.entries
            .retain(|(k, _)| k.as_slice() < start || end.is_some_and(|e| k.as_slice() >= e));
    }

    /// Adds an entry known to hold the store's current value for `key` (e.g. a copy whose
    /// freshness the caller checked). Ranges known to be complete do not change.
    pub fn add_entry(&mut self, key: Key, value: Value) {
        self.insert_entry(key, value);
    }

    fn insert_entry(&mut self, key: Key, value: Value) {
        match self.entries.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.entries[i].1 = value,
            Err(i) => self.entries.insert(i, (key, value)),
        }
    }

    /// Marks `[start, end)` as completely read, merging with overlapping or adjacent ranges.
    fn add_complete(&mut self, start: Key, end: Option<Key>) {
        let mut start = start;
        let mut end = end;
        let mut kept: Vec<(Key, Option<Key>)> = Vec::with_capacity(self.complete.len() + 1);
        for (s, e) in self.complete.drain(..) {
            let before = e.as_ref().is_some_and(|e| e < &start);
            let after = end.as_ref().is_some_and(|end| &s > end);
            if before || after {
                kept.push((s, e));
            } else {
                if s < start {
                    start = s;
                }
                end = match (end, e) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
            }
        }
        kept.push((start, end));
        kept.sort_by(|a, b| a.0.cmp(&b.0));
        self.complete = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::ListRequest;

    #[test]
    fn three_way_lookup_and_cut_short_listing() {
        let ops = vec![
            ReadOp::List(ListRequest::range(b"a".to_vec(), Some(b"m".to_vec()))),
            ReadOp::Get(vec![b"x".to_vec(), b"z".to_vec()]),
        ];
        let results = vec![
            ReadResult::List(ListPage {
                entries: vec![
                    (b"b".to_vec(), b"1".to_vec()),
                    (b"d".to_vec(), b"2".to_vec()),
                ],
                next_start: Some(key_after(b"d")),
            }),
            ReadResult::Get(vec![Some(b"9".to_vec()), None]),
        ];
        let mut p = Preload::from_reads(&ops, &results);
        assert_eq!(p.lookup(b"b"), Lookup::Found(b"1"));
        assert_eq!(p.lookup(b"c"), Lookup::Absent);
        assert_eq!(p.lookup(b"d"), Lookup::Found(b"2"));
        assert_eq!(p.lookup(b"e"), Lookup::NotPreloaded); // past the cut
        assert_eq!(p.lookup(b"x"), Lookup::Found(b"9"));
        assert_eq!(p.lookup(b"z"), Lookup::Absent);
        assert_eq!(p.lookup(b"y"), Lookup::NotPreloaded);
        assert_eq!(p.first_in(b"a", b"m"), First::Entry(b"b", b"1"));
        assert_eq!(p.first_in(b"d\0", b"m"), First::Unknown);
        assert_eq!(p.first_in(b"c", b"d\0"), First::Entry(b"d", b"2"));
        assert_eq!(p.first_in(b"b\0", b"c"), First::Empty);
        p.update(b"c", b"new");
        assert_eq!(p.lookup(b"c"), Lookup::Found(b"new"));
        p.update(b"e", b"no");
        assert_eq!(p.lookup(b"e"), Lookup::NotPreloaded);
        p.remove(b"b");
        assert_eq!(p.lookup(b"b"), Lookup::Absent);
        p.remove_range(b"c", Some(b"e"));
        assert_eq!(p.lookup(b"d"), Lookup::Absent);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn complete_ranges_merge() {
        let mut p = Preload::new();
        p.add_complete(b"a".to_vec(), Some(b"c".to_vec()));
        p.add_complete(b"c".to_vec(), Some(b"e".to_vec()));
        p.add_complete(b"x".to_vec(), None);
        assert!(p.covers(b"a", b"e"));
        assert!(!p.covers(b"a", b"f"));
        assert!(p.covers(b"y", b"zzzz"));
        assert_eq!(p.complete.len(), 2);
    }
}

#[cfg(test)]
mod property_tests {
    use super::*;
    use crate::kv::memory::MemoryStore;
    use crate::kv::{KvStore, ListRequest};
    use crate::rng::Rng;
    use std::collections::BTreeMap;

    fn key(rng: &mut Rng) -> Vec<u8> {
        vec![b'k', rng.below(40) as u8]
    }

    /// Random stores, random batch reads (gets, lists with limits and byte budgets), random
    /// writes applied to both the store and the preload: a lookup never contradicts the store.
    #[test]
    fn lookups_never_contradict_the_store() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let store = MemoryStore::new();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for _ in 0..rng.below(30) {
                let k = key(&mut rng);
                let len = rng.below(5) as usize + 1;
                let v = rng.bytes(len);
                store.put("a", vec![(k.clone(), v.clone())]).unwrap();
                model.insert(k, v);
            }
            let mut ops = Vec::new();
            for _ in 0..1 + rng.below(4) {
                if rng.chance(0.4) {
                    ops.push(ReadOp::Get(
                        (0..1 + rng.below(4)).map(|_| key(&mut rng)).collect(),
                    ));
                } else {
                    let a = key(&mut rng);
                    let b = key(&mut rng);
                    let (s, e) = if a <= b { (a, b) } else { (b, a) };
                    let mut req = ListRequest::range(s, Some(e));
                    if rng.chance(0.5) {
                        req = req.with_limit(1 + rng.below(5) as usize);
                    }
                    if rng.chance(0.3) {
                        req = req.with_max_bytes(1 + rng.below(12) as usize);
                    }
                    ops.push(ReadOp::List(req));
                }
            }
            let results = store.batch_read("a", &ops).unwrap();
            let mut p = Preload::from_reads(&ops, &results);
            let check = |p: &Preload, model: &BTreeMap<Vec<u8>, Vec<u8>>| {
                for b in 0..40u8 {
                    let k = vec![b'k', b];
                    match p.lookup(&k) {
                        Lookup::Found(v) => {
                            assert_eq!(Some(v), model.get(&k).map(|v| &v[..]), "seed {seed}")
                        }
                        Lookup::Absent => assert!(!model.contains_key(&k), "seed {seed} key {b}"),
                        Lookup::NotPreloaded => {}
                    }
                }
            };
            check(&p, &model);
            // Every key a get asked is known afterwards.
            for op in &ops {
                if let ReadOp::Get(keys) = op {
                    for k in keys {
                        assert_ne!(p.lookup(k), Lookup::NotPreloaded, "seed {seed}");
                    }
                }
            }
            for _ in 0..20 {
                let k = key(&mut rng);
                if rng.chance(0.6) {
                    let v = rng.bytes(3);
                    p.update(&k, &v);
                    model.insert(k, v);
                } else {
                    p.remove(&k);
                    model.remove(&k);
                }
                check(&p, &model);
            }
        }
    }
}

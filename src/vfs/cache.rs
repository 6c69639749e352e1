//! A bounded page cache shared by all connections of one database.
//!
//! Why it exists: SQLite's own page cache is per connection and is dropped whenever another
//! connection may have changed the file; this cache keeps committed chunks (and read-ahead
//! results) so re-reads cost no round trip. Least-recently-used eviction, bounded in chunks.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::layout::FileKind;

/// Cache key: a chunk of a file.
pub type ChunkId = (FileKind, u32);

struct Entry {
    data: Vec<u8>,
    tick: u64,
    /// Fetched by read-ahead and not read since.
    prefetched: bool,
}

/// An LRU map from chunk to its bytes, holding at most `capacity` chunks.
pub struct PageCache {
    capacity: usize,
    tick: u64,
    map: HashMap<ChunkId, Entry, BuildHasherDefault<ChunkHasher>>,
    order: BTreeMap<u64, ChunkId>,
}

/// The chunk never evicted while another can be: the main file's page 1, whose header SQLite
/// reads at the start of every transaction.
const PINNED: ChunkId = (FileKind::Main, 0);

/// A multiplicative hasher for [`ChunkId`]s: the keys are small integers chosen by SQLite's
/// page numbers, not by an adversary, so SipHash's flooding resistance buys nothing here and
/// costs a noticeable share of every cached read.
#[derive(Default)]
pub struct ChunkHasher(u64);

impl Hasher for ChunkHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// What an insert or removal dropped that read-ahead had fetched and nobody read.
pub type Wasted = u64;

impl PageCache {
    /// An empty cache holding at most `capacity` chunks (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        PageCache {
            capacity,
            tick: 0,
            map: HashMap::default(),
            order: BTreeMap::new(),
        }
    }

    /// Chunks held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The chunk's bytes, marking it recently used. The flag says whether this is the first
    /// read of a prefetched chunk.
    pub fn get(&mut self, id: ChunkId) -> Option<(&[u8], bool)> {
        self.tick += 1;
        let tick = self.tick;
        let e = self.map.get_mut(&id)?;
        // Page 1 is never evicted while another chunk can be (see `insert`): its recency need
        // not be kept, which spares two ordered-map updates at every transaction's start.
        if id != PINNED {
            self.order.remove(&e.tick);
            e.tick = tick;
            self.order.insert(tick, id);
        }
        let first_use = std::mem::replace(&mut e.prefetched, false);
        Some((&e.data, first_use))
    }

    /// The chunk's bytes without touching recency or the prefetched flag.
    pub fn peek(&self, id: ChunkId) -> Option<&[u8]> {
        self.map.get(&id).map(|e| e.data.as_slice())
    }

    /// True when the chunk is held (does not touch recency).
    pub fn contains(&self, id: ChunkId) -> bool {
        self.map.contains_key(&id)
    }

    /// Stores a chunk, evicting the least recently used ones past capacity. Returns how many
    /// unread prefetched chunks were dropped.
    pub fn insert(&mut self, id: ChunkId, data: Vec<u8>, prefetched: bool) -> Wasted {
        if self.capacity == 0 {
            return 0;
        }
        let mut wasted = self.remove(id);
        self.tick += 1;
        self.map.insert(
            id,
            Entry {
                data,
                tick: self.tick,
                prefetched,
            },
        );
        self.order.insert(self.tick, id);
        while self.map.len() > self.capacity {
            let Some((_, victim)) = self.order.pop_first() else {
                break;
            };
            if victim == PINNED && self.map.len() > 1 {
                // Page 1 is read at the start of every transaction: keep it, as most recent.
                self.tick += 1;
                if let Some(e) = self.map.get_mut(&victim) {
                    e.tick = self.tick;
                }
                self.order.insert(self.tick, victim);
                continue;
            }
            if let Some(e) = self.map.remove(&victim) {
                wasted += e.prefetched as u64;
            }
        }
        wasted
    }

    /// Drops one chunk. Returns 1 if it was an unread prefetched chunk.
    pub fn remove(&mut self, id: ChunkId) -> Wasted {
        match self.map.remove(&id) {
            Some(e) => {
                self.order.remove(&e.tick);
                e.prefetched as u64
            }
            None => 0,
        }
    }

    /// Drops every chunk of `file` at index `from` or above.
    pub fn remove_from(&mut self, file: FileKind, from: u32) -> Wasted {
        let doomed: Vec<ChunkId> = self
            .map
            .keys()
            .filter(|(f, i)| *f == file && *i >= from)
            .copied()
            .collect();
        doomed.into_iter().map(|id| self.remove(id)).sum()
    }

    /// Drops everything.
    pub fn clear(&mut self) -> Wasted {
        let wasted = self.map.values().filter(|e| e.prefetched).count() as u64;
        self.map.clear();
        self.order.clear();
        wasted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_and_counts_waste() {
        let mut c = PageCache::new(2);
        assert_eq!(c.insert((FileKind::Main, 1), vec![1], false), 0);
        assert_eq!(c.insert((FileKind::Main, 2), vec![2], true), 0);
        assert_eq!(
            c.get((FileKind::Main, 1)).map(|x| x.0.to_vec()),
            Some(vec![1])
        );
        // 2 is least recently used and was never read: wasted.
        assert_eq!(c.insert((FileKind::Main, 3), vec![3], false), 1);
        assert!(!c.contains((FileKind::Main, 2)));
        assert_eq!(c.len(), 2);
        assert_eq!(c.insert((FileKind::Main, 4), vec![4], true), 0);
        assert_eq!(c.get((FileKind::Main, 4)), Some((&[4u8][..], true)));
        assert_eq!(c.get((FileKind::Main, 4)), Some((&[4u8][..], false)));
        assert_eq!(c.remove_from(FileKind::Main, 4), 0);
        assert_eq!(c.len(), 1);
        // Page 1 stays however old it gets.
        let mut c = PageCache::new(2);
        c.insert((FileKind::Main, 0), vec![0], false);
        for i in 1..10 {
            c.insert((FileKind::Main, i), vec![i as u8], false);
        }
        assert!(c.contains((FileKind::Main, 0)));
        assert!(c.contains((FileKind::Main, 9)));
        assert_eq!(c.len(), 2);
    }
}

//! A bounded page cache shared by all connections of one database, aware of SQLite's B-trees.
//!
//! Why it exists: SQLite's own page cache is per connection and is dropped whenever another
//! connection may have changed the file; this cache keeps committed chunks (and read-ahead
//! results) so re-reads cost no round trip.
//!
//! Why B-tree-aware: a point lookup walks from a tree's root through its interior pages to one
//! leaf. Under plain LRU a scan or a big commit pushes the few interior pages out with the many
//! leaves, and the next lookup then pays one round trip per level. Here interior pages (B-tree
//! page types 2 and 5) are evicted only after every leaf, as long as they fill at most half the
//! cache, so a warm lookup misses at most its leaf: one round trip at any database size whose
//! interior pages fit half the cache (a 4 KiB page holds a few hundred child pointers, so 1,024
//! interior pages cover hundreds of MB). The class is read from the page's own type byte; the few
//! non-B-tree pages (overflow, freelist, pointer map) whose first byte happens to be 2 or 5 only
//! change an eviction order, never what a read returns.

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
    /// An interior B-tree page of the main file (kept in preference to leaves).
    interior: bool,
}

/// A map from chunk to its bytes, holding at most `capacity` chunks: least recently used
/// leaves go first, then (past half the capacity, or when no leaf is left) least recently used
/// interior pages.
pub struct PageCache {
    capacity: usize,
    tick: u64,
    map: HashMap<ChunkId, Entry, BuildHasherDefault<ChunkHasher>>,
    /// Recency of the chunks that are not interior pages, oldest first.
    leaves: BTreeMap<u64, ChunkId>,
    /// Recency of the interior pages, oldest first.
    interiors: BTreeMap<u64, ChunkId>,
}

/// The chunk never evicted while another can be: the main file's page 1, whose header SQLite
/// reads at the start of every transaction.
const PINNED: ChunkId = (FileKind::Main, 0);

/// True when `data`, chunk `id`, is an interior B-tree page: its page-type byte (offset 100 on
/// page 1, after the file header; 0 elsewhere) is 2 (index) or 5 (table).
pub fn is_interior_page(id: ChunkId, data: &[u8]) -> bool {
    let at = if id.1 == 0 { 100 } else { 0 };
    id.0 == FileKind::Main && matches!(data.get(at), Some(2 | 5))
}

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
            leaves: BTreeMap::new(),
            interiors: BTreeMap::new(),
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

    /// Interior B-tree pages held.
    pub fn interior_len(&self) -> usize {
        self.interiors.len()
    }

    fn order_of(&mut self, interior: bool) -> &mut BTreeMap<u64, ChunkId> {
        if interior {
            &mut self.interiors
        } else {
            &mut self.leaves
        }
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
            let old = std::mem::replace(&mut e.tick, tick);
            let order = if e.interior {
                &mut self.interiors
            } else {
                &mut self.leaves
            };
            order.remove(&old);
            order.insert(tick, id);
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

    /// `Some(true)` when the chunk is held and is an interior B-tree page, `Some(false)` when
    /// held and anything else, `None` when not held.
    pub fn is_interior(&self, id: ChunkId) -> Option<bool> {
        self.map.get(&id).map(|e| e.interior)
    }

    /// Stores a chunk, evicting past capacity (leaves first, see [`PageCache`]). Returns how
    /// many unread prefetched chunks were dropped.
    pub fn insert(&mut self, id: ChunkId, data: Vec<u8>, prefetched: bool) -> Wasted {
        if self.capacity == 0 {
            return 0;
        }
        let mut wasted = self.remove(id);
        self.tick += 1;
        let interior = is_interior_page(id, &data);
        self.map.insert(
            id,
            Entry {
                data,
                tick: self.tick,
                prefetched,
                interior,
            },
        );
        let tick = self.tick;
        self.order_of(interior).insert(tick, id);
        while self.map.len() > self.capacity {
            let Some(victim) = self.victim() else {
                break;
            };
            wasted += self.remove(victim);
        }
        wasted
    }

    /// The chunk to evict: the least recently used leaf, unless interior pages fill more than
    /// half the cache or no leaf is held, then the least recently used interior page. Page 1
    /// is never the victim (a full cache holds at least one other chunk).
    fn victim(&self) -> Option<ChunkId> {
        let (first, then) = if self.interiors.len() > self.capacity / 2 {
            (&self.interiors, &self.leaves)
        } else {
            (&self.leaves, &self.interiors)
        };
        first
            .values()
            .chain(then.values())
            .find(|&&id| id != PINNED)
            .copied()
    }

    /// Drops one chunk. Returns 1 if it was an unread prefetched chunk.
    pub fn remove(&mut self, id: ChunkId) -> Wasted {
        match self.map.remove(&id) {
            Some(e) => {
                self.order_of(e.interior).remove(&e.tick);
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
        self.leaves.clear();
        self.interiors.clear();
        wasted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_and_counts_waste() {
        // First bytes 1, 10, 12, 13: no interior page among them.
        let mut c = PageCache::new(2);
        assert_eq!(c.insert((FileKind::Main, 1), vec![1], false), 0);
        assert_eq!(c.insert((FileKind::Main, 2), vec![12], true), 0);
        assert_eq!(
            c.get((FileKind::Main, 1)).map(|x| x.0.to_vec()),
            Some(vec![1])
        );
        // 2 is least recently used and was never read: wasted.
        assert_eq!(c.insert((FileKind::Main, 3), vec![13], false), 1);
        assert!(!c.contains((FileKind::Main, 2)));
        assert_eq!(c.len(), 2);
        assert_eq!(c.insert((FileKind::Main, 4), vec![10], true), 0);
        assert_eq!(c.get((FileKind::Main, 4)), Some((&[10u8][..], true)));
        assert_eq!(c.get((FileKind::Main, 4)), Some((&[10u8][..], false)));
        assert_eq!(c.remove_from(FileKind::Main, 4), 0);
        assert_eq!(c.len(), 1);
        // Page 1 stays however old it gets.
        let mut c = PageCache::new(2);
        c.insert((FileKind::Main, 0), vec![0], false);
        for i in 1..10 {
            c.insert((FileKind::Main, i), vec![13], false);
        }
        assert!(c.contains((FileKind::Main, 0)));
        assert!(c.contains((FileKind::Main, 9)));
        assert_eq!(c.len(), 2);
    }

    /// A page of chunk `idx` whose type byte is `kind`.
    fn page(idx: u32, kind: u8) -> Vec<u8> {
        let mut p = vec![0u8; 128];
        p[if idx == 0 { 100 } else { 0 }] = kind;
        p
    }

    #[test]
    fn interior_pages_outlive_every_leaf_up_to_half_the_cache() {
        let main = |i| (FileKind::Main, i);
        let mut c = PageCache::new(8);
        c.insert(main(0), page(0, 13), false);
        // Interior pages of a table (5) and of an index (2), then a flood of leaves.
        c.insert(main(1), page(1, 5), false);
        c.insert(main(2), page(2, 2), false);
        for i in 3..100 {
            c.insert(main(i), page(i, 13), false);
        }
        assert_eq!(c.len(), 8);
        assert!(c.contains(main(0)) && c.contains(main(1)) && c.contains(main(2)));
        assert_eq!(c.is_interior(main(1)), Some(true));
        assert_eq!(c.is_interior(main(99)), Some(false));
        assert_eq!(c.is_interior(main(3)), None);
        assert_eq!(c.interior_len(), 2);
        // The five newest leaves share the rest.
        assert!((95..100).all(|i| c.contains(main(i))));
        // Interior pages past half the cache: the least recently used of them goes.
        for i in 100..110 {
            c.insert(main(i), page(i, 5), false);
        }
        assert_eq!(c.interior_len(), 4);
        assert_eq!(c.len(), 8);
        assert!(c.contains(main(0)));
        assert!((106..110).all(|i| c.contains(main(i))));
        // A page that turns from leaf to interior (a root split) changes class.
        c.insert(main(99), page(99, 5), false);
        assert_eq!(c.is_interior(main(99)), Some(true));
        // Journal chunks are never interior pages, whatever their bytes.
        c.insert((FileKind::Journal, 1), page(1, 5), false);
        assert_eq!(c.is_interior((FileKind::Journal, 1)), Some(false));
        // Page 1's type byte is at offset 100.
        assert!(is_interior_page(main(0), &page(0, 5)));
        assert!(!is_interior_page(main(0), &page(1, 5)));
        // Page 1 is kept even in a cache of one.
        let mut c = PageCache::new(1);
        c.insert(main(0), page(0, 5), false);
        c.insert(main(1), page(1, 5), false);
        assert!(c.contains(main(0)));
        assert_eq!(c.len(), 1);
    }
}

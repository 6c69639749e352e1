//! The read path: `read` of a file range, one chunk at a time from the pending writes, the page
//! cache, the preload or the store (`fetch`, with read-ahead).
//!
//! Why it is apart from `file.rs`: reads never write; keeping them together shows what a read
//! may cost in KV round trips without the write and commit code in the way.

use super::{
    chunk_index, empty_page1_with_counter, kv_err, DbState, Inner, Op, VfsError,
    READ_AHEAD_SEQ_START, READ_AHEAD_START,
};
use crate::kv::Key;
use crate::preload::Lookup;
use crate::vfs::cache::is_interior_page;
use crate::vfs::codec;
use crate::vfs::layout::FileKind;

impl DbState {
    // ----- reads -----

    /// Reads `buf.len()` bytes at `offset`. Returns the number of bytes that lay inside the
    /// file; the rest of `buf` is zero-filled (a short read).
    pub fn read(&self, kind: FileKind, offset: u64, buf: &mut [u8]) -> Result<usize, VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let size = inner.file(kind).size;
        let avail = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        buf[avail..].fill(0);
        let cs = inner.file(kind).cs() as u64;
        let mut pos = 0usize;
        while pos < avail {
            let abs = offset + pos as u64;
            let idx = chunk_index(abs / cs)?;
            if kind == FileKind::Main {
                if let Some(log) = inner.reads.as_mut() {
                    log.note(idx);
                }
            }
            let within = (abs % cs) as usize;
            let n = (cs as usize - within).min(avail - pos);
            self.read_chunk(&mut inner, kind, idx, within, &mut buf[pos..pos + n])?;
            pos += n;
        }
        Ok(avail)
    }

    pub(super) fn read_chunk(
        &self,
        inner: &mut Inner,
        kind: FileKind,
        idx: u32,
        within: usize,
        dst: &mut [u8],
    ) -> Result<(), VfsError> {
        let end = within + dst.len();
        if kind == FileKind::Main {
            if let Some((b, _)) = &inner.batch {
                if let Some(c) = b.get(&idx) {
                    dst.copy_from_slice(&c[within..end]);
                    return Ok(());
                }
            }
        }
        let virtual_page1 = inner.virtual_page1;
        let counter = inner.virtual_counter;
        let f = inner.file(kind);
        if let Some(c) = f.pending.get(&idx) {
            dst.copy_from_slice(&c[within..end]);
            return Ok(());
        }
        if kind == FileKind::Main && !f.in_kv && virtual_page1 && idx == 0 {
            let p = empty_page1_with_counter(f.meta.chunk_size, counter);
            dst.copy_from_slice(&p[within..end]);
            return Ok(());
        }
        if !f.in_kv || idx as u64 >= f.meta.chunk_count() {
            // A gap the file was extended over without writing: zeros.
            dst.fill(0);
            return Ok(());
        }
        let cs = f.cs();
        if let Some((c, first_use)) = inner.cache.get((kind, idx)) {
            dst.copy_from_slice(&c[within..end]);
            self.stats.add(&self.stats.cache_hits, 1);
            if first_use {
                self.stats.add(&self.stats.readahead_used, 1);
            }
            return Ok(());
        }
        let key = inner.file(kind).meta.live_key(idx);
        if let Some(p) = &inner.preload {
            match p.lookup(&key) {
                Lookup::Found(v) => {
                    let v = decode_chunk(kind, idx, v, cs)?;
                    dst.copy_from_slice(&v[within..end]);
                    self.stats.add(&self.stats.preload_hits, 1);
                    return Ok(());
                }
                Lookup::Absent => {
                    return Err(VfsError::Corrupt(format!(
                        "{} chunk {idx} is missing inside the file size",
                        kind.name()
                    )))
                }
                Lookup::NotPreloaded => {}
            }
        }
        let data = self.fetch(inner, kind, idx)?;
        dst.copy_from_slice(&data[within..end]);
        Ok(())
    }

    /// Fetches chunk `idx` from the store, with a read-ahead window of the chunks after it when
    /// the reads are sequential, caches them, and returns chunk `idx`.
    pub(super) fn fetch(
        &self,
        inner: &mut Inner,
        kind: FileKind,
        idx: u32,
    ) -> Result<Vec<u8>, VfsError> {
        // Never prefetch more than half the cache could keep until it is read.
        let max = self
            .opts
            .read_ahead_max
            .min((self.opts.cache_pages / 2).min(u32::MAX as usize) as u32)
            .min(self.kv.limits().max_get_keys.min(u32::MAX as usize) as u32)
            .max(1);
        let Inner {
            main,
            journal,
            cache,
            preload,
            ..
        } = inner;
        let f = match kind {
            FileKind::Main => main,
            FileKind::Journal => journal,
        };
        let count = f.meta.chunk_count();
        // Adaptive, like Linux's readahead. A miss that continues the current sequential run
        // (right after its last fetch) grows the window eightfold, up to `max`. A miss right
        // after a lone miss starts a run (READ_AHEAD_SEQ_START chunks) when that lone miss was
        // of the same read transaction (see `lock`: two point lookups that miss adjacent leaves
        // are no scan) and not an interior B-tree page (a lookup descends from one to a child
        // anywhere in the file, so the page after it predicts nothing). Any other miss (a point
        // lookup's interior or leaf page, anywhere in the file) fetches only its chunk, since
        // nothing says which chunk comes next; it leaves the run in place with half its window,
        // because a scan's run is broken now and then by a page out of file order (an interior
        // page) and goes on right after it, until the window falls under READ_AHEAD_START.
        let window = if idx == f.ra_next {
            f.ra_window
                .saturating_mul(8)
                .max(READ_AHEAD_SEQ_START)
                .min(max)
        } else if idx == f.ra_single {
            READ_AHEAD_SEQ_START.min(max)
        } else {
            1
        };
        let cs = f.cs();
        let mut idxs = vec![idx];
        let mut j = idx;
        while idxs.len() < window as usize {
            j = match j.checked_add(1) {
                Some(j) => j,
                None => break,
            };
            if j as u64 >= count {
                break;
            }
            if f.pending.contains_key(&j) || cache.contains((kind, j)) {
                continue;
            }
            if let Some(p) = &*preload {
                if !matches!(p.lookup(&f.meta.live_key(j)), Lookup::NotPreloaded) {
                    continue;
                }
            }
            idxs.push(j);
        }
        // The next miss continues the run if it comes right after the last chunk fetched.
        let next = idxs.last().map_or(idx, |&l| l.saturating_add(1));
        if window > 1 {
            (f.ra_next, f.ra_window) = (next, window);
        } else {
            f.ra_single = next;
            f.ra_window /= 2;
            if f.ra_window < READ_AHEAD_START {
                // Interrupted more often than a scan is (the open's own first chunks, then
                // point lookups): no run any more.
                f.ra_next = u32::MAX;
            }
        }
        let keys: Vec<Key> = idxs.iter().map(|&i| f.meta.live_key(i)).collect();
        let vals = self.kv_get(&keys).map_err(kv_err(Op::Read))?;
        self.stats.add(&self.stats.cache_misses, 1);
        self.stats
            .add(&self.stats.readahead_prefetched, (idxs.len() - 1) as u64);
        let mut first = None;
        let mut wasted = 0;
        for (pos, (i, v)) in idxs.iter().zip(vals).enumerate() {
            let Some(v) = v else {
                if pos == 0 {
                    return Err(VfsError::Corrupt(format!(
                        "{} chunk {i} is missing inside the file size",
                        kind.name()
                    )));
                }
                continue; // reported when (if) it is read
            };
            let v = match codec::decode_owned(v, cs) {
                Ok(d) => d,
                Err(e) if pos == 0 => {
                    return Err(VfsError::Corrupt(format!(
                        "{} chunk {i}: {}",
                        kind.name(),
                        e.0
                    )))
                }
                Err(_) => continue, // reported when (if) it is read
            };
            if pos == 0 {
                if window == 1 && is_interior_page((kind, idx), &v) {
                    inner.file(kind).ra_single = u32::MAX;
                }
                first = Some(v.clone());
            }
            wasted += inner.cache.insert((kind, *i), v, pos != 0);
        }
        self.stats.add(&self.stats.readahead_wasted, wasted);
        first.ok_or_else(|| VfsError::Corrupt("chunk vanished".into()))
    }
}

/// The page a stored value of chunk `idx` holds (see [`codec::decode`]); a malformed value is
/// [`VfsError::Corrupt`] naming the chunk.
pub(super) fn decode_chunk(
    kind: FileKind,
    idx: u32,
    v: &[u8],
    cs: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, VfsError> {
    codec::decode(v, cs)
        .map_err(|e| VfsError::Corrupt(format!("{} chunk {idx}: {}", kind.name(), e.0)))
}

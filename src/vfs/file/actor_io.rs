//! What the actor layer asks of a database beyond SQLite's own I/O: ending hold mode with one
//! put, moving the preload into the page cache, the log of pages read (hot-page hints), pages
//! fetched in the background, and fenced writes of the actor's own records.
//!
//! Why it is apart from `file.rs`: SQLite never calls any of this; the actor layer does, through
//! [`crate::vfs::Database`]. It lives in a child module so it can reach the state's internals.

use std::collections::BTreeMap;

use super::{DbState, Op, VfsError};
use crate::kv::{Key, WriteBatch};
use crate::preload::Lookup;
use crate::vfs::codec;
use crate::vfs::layout::{self, FileKind, Meta, ParsedKey};

impl DbState {
    /// True while the database's writes are held in memory (see [`crate::vfs::hold`]).
    pub fn is_held(&self) -> bool {
        self.held.lock().is_some()
    }

    /// Ends hold mode: writes the database as the held writes left it, together with `entries`
    /// (the actor's own records, outside the VFS prefix), in **one** fenced write when it all
    /// fits the store's limits, else as a staged commit (stage writes, then one commit record
    /// that carries `entries`). Nothing is written if no connection holds an open transaction
    /// fails this check; on a failed write the actor must not start (the store holds at most
    /// unreferenced stage keys and, if the fence record was written, nothing an actor reads).
    pub fn flush_held(&self, entries: Vec<(Key, Vec<u8>)>) -> Result<(), VfsError> {
        self.check_moved()?;
        if let Some((k, _)) = entries
            .iter()
            .find(|(k, _)| k.first() == Some(&layout::PREFIX))
        {
            return Err(VfsError::Misuse(format!(
                "key {} lies under the VFS prefix 0x08",
                crate::kv::display_key(k)
            )));
        }
        let mut inner = self.inner.lock();
        if !self.is_held() {
            return Err(VfsError::Misuse(
                "the database's writes are not held".into(),
            ));
        }
        let l = &inner.locks;
        if inner.batch.is_some() || l.reserved.is_some() || l.exclusive.is_some() {
            return Err(VfsError::Misuse(
                "a write transaction is open: commit or roll it back before the flush".into(),
            ));
        }
        // Buffered writes join the held image first.
        self.flush(&mut inner, FileKind::Main)?;
        self.flush(&mut inner, FileKind::Journal)?;
        if inner.journal.in_kv {
            return Err(VfsError::Misuse(
                "a rollback journal is left over (a transaction did not finish)".into(),
            ));
        }
        let Some(held) = self.held.lock().take() else {
            return Err(VfsError::Misuse(
                "the database's writes are not held".into(),
            ));
        };
        let mut extra = self.take_extra();
        extra.extend(entries);
        if let Some(p) = inner.preload.as_mut() {
            // Stage keys of held staged commits never reach the store.
            let (s, e) = layout::stage_area();
            p.remove_range(&s, Some(&e));
        }
        inner.garbage.clear();
        inner.failed_stages.clear();
        inner.next_stage = inner.store_next_stage;
        if !inner.main.in_kv {
            // No transaction wrote the database: only the entries go out.
            if extra.is_empty() {
                return Ok(());
            }
            let mut batch = WriteBatch::puts(extra);
            self.kv_write(&mut batch)
                .map_err(|e| self.kv_failed(Op::Write, e))?;
            self.apply_to_preload(&mut inner, &batch);
            return Ok(());
        }
        let image = inner.main.meta.clone();
        let cs = image.chunk_size as usize;
        let mut pages = BTreeMap::new();
        for i in 0..image.chunk_count() {
            let i = u32::try_from(i).map_err(|_| VfsError::TooBig("file too big".into()))?;
            match held.get(&image.live_key(i)).map(|v| codec::decode(v, cs)) {
                Some(Ok(v)) => {
                    pages.insert(i, v.into_owned());
                }
                _ => {
                    return Err(VfsError::Corrupt(format!(
                        "held main chunk {i} is missing or of the wrong length"
                    )))
                }
            }
        }
        let mut meta = Meta::new(FileKind::Main, image.chunk_size);
        meta.size = image.size;
        meta.next_stage = inner.store_next_stage;
        // The held commits never reached the store: the flush is the database's first commit.
        inner.main.meta.seq = 0;
        inner.main.meta.time_ms = 0;
        inner.main.meta.hist_start = 0;
        let how = super::commit_path::Commit {
            flags: 0,
            full_image: true,
        };
        self.commit_pages_inner(&mut inner, pages, meta, Vec::new(), extra, how)
    }

    /// Makes a held database (see [`crate::vfs::hold`]) hold `pages` (chunk index → image,
    /// every chunk below `size`'s chunk count) at chunk size `chunk_size`: a fork's image,
    /// written by the next [`DbState::flush_held`]. Only for a held database that no
    /// transaction wrote.
    pub fn hold_image(
        &self,
        chunk_size: u32,
        size: u64,
        pages: BTreeMap<u32, Vec<u8>>,
    ) -> Result<(), VfsError> {
        let mut inner = self.inner.lock();
        let mut held = self.held.lock();
        let Some(h) = held.as_mut() else {
            return Err(VfsError::Misuse(
                "the database's writes are not held".into(),
            ));
        };
        if inner.main.in_kv || inner.batch.is_some() || !layout::valid_chunk_size(chunk_size) {
            return Err(VfsError::Misuse(
                "an image goes only into a new held database, at a valid page size".into(),
            ));
        }
        let mut meta = Meta::new(FileKind::Main, chunk_size);
        meta.size = size;
        let count = meta.chunk_count();
        if pages.len() as u64 != count
            || pages
                .iter()
                .any(|(&i, p)| i as u64 >= count || p.len() != chunk_size as usize)
        {
            return Err(VfsError::Misuse(format!(
                "an image of {size} bytes needs exactly {count} pages of {chunk_size} bytes"
            )));
        }
        let mut batch = WriteBatch::default();
        for (i, p) in pages {
            batch.puts.push((layout::chunk_key(FileKind::Main, i), p));
        }
        batch
            .puts
            .push((layout::meta_key(FileKind::Main), meta.encode()));
        h.apply(&batch);
        inner.main = super::FileState::new(meta, true);
        inner.journal.meta = Meta::new(FileKind::Journal, chunk_size);
        inner.virtual_page1 = false;
        let w = inner.cache.clear();
        self.stats.add(&self.stats.readahead_wasted, w);
        Ok(())
    }

    /// Moves the preload's live main-file pages into the page cache (never replacing a page the
    /// cache already holds) and drops the preload. Returns the pages moved.
    pub fn release_preload(&self) -> usize {
        let mut inner = self.inner.lock();
        let Some(p) = inner.preload.take() else {
            return 0;
        };
        if !inner.main.in_kv {
            return 0;
        }
        let meta = inner.main.meta.clone();
        let count = meta.chunk_count();
        let cs = meta.chunk_size as usize;
        let mut moved = 0;
        for (k, v) in p.entries() {
            let idx = match layout::parse_key(k) {
                Some(ParsedKey::Chunk(FileKind::Main, i)) if !meta.overlay.contains_key(&i) => i,
                Some(ParsedKey::Stage(s, i)) if meta.overlay.get(&i) == Some(&s) => i,
                _ => continue,
            };
            let id = (FileKind::Main, idx);
            if (idx as u64) >= count
                || inner.cache.contains(id)
                || inner.main.pending.contains_key(&idx)
            {
                continue;
            }
            // A malformed value stays out of the cache (the store reports it when read).
            let Ok(v) = codec::decode(v, cs) else {
                continue;
            };
            inner.cache.insert(id, v.into_owned(), false);
            moved += 1;
        }
        moved
    }

    /// Starts a fresh log of the main-file chunks read (`true`) or stops logging (`false`).
    pub fn track_reads(&self, on: bool) {
        self.inner.lock().reads = on.then(Default::default);
    }

    /// The chunks read since [`DbState::track_reads`] began: the interior B-tree pages the
    /// cache holds first, then the rest, each group most recent first. A hint list cut short
    /// thus keeps the pages every lookup walks through.
    pub fn recent_reads(&self) -> Vec<u32> {
        let inner = self.inner.lock();
        let Some(log) = inner.reads.as_ref() else {
            return Vec::new();
        };
        let (mut interior, rest): (Vec<u32>, Vec<u32>) = log
            .recent()
            .into_iter()
            .partition(|&i| inner.cache.is_interior((FileKind::Main, i)) == Some(true));
        interior.extend(rest);
        interior
    }

    /// The keys under which chunks `idxs` of the main file live now (those inside the file).
    pub fn live_keys(&self, idxs: &[u32]) -> Vec<(u32, Key)> {
        let inner = self.inner.lock();
        let count = inner.main.meta.chunk_count();
        idxs.iter()
            .filter(|&&i| inner.main.in_kv && (i as u64) < count)
            .map(|&i| (i, inner.main.meta.live_key(i)))
            .collect()
    }

    /// Plans a background fetch of chunks `idxs`: the write sequence now, and the live keys of
    /// those the cache (or the preload) does not hold.
    pub fn prefetch_plan(&self, idxs: &[u32]) -> (u64, Vec<(u32, Key)>) {
        let inner = self.inner.lock();
        let count = inner.main.meta.chunk_count();
        if !inner.main.in_kv || self.is_held() {
            return (inner.write_seq, Vec::new());
        }
        let keys = idxs
            .iter()
            .filter(|&&i| (i as u64) < count && !inner.cache.contains((FileKind::Main, i)))
            .map(|&i| (i, inner.main.meta.live_key(i)))
            .filter(|(_, k)| {
                inner
                    .preload
                    .as_ref()
                    .is_none_or(|p| matches!(p.lookup(k), Lookup::NotPreloaded))
            })
            .collect();
        (inner.write_seq, keys)
    }

    /// Offers chunks fetched in the background since [`DbState::prefetch_plan`] returned `seq`.
    /// They enter the cache only if nothing was written since (so a fetched page can never
    /// replace a newer one) and only where the cache holds nothing for them. Returns how many
    /// were taken.
    pub fn offer_pages(&self, seq: u64, pages: Vec<(u32, Vec<u8>)>) -> usize {
        let mut inner = self.inner.lock();
        if inner.write_seq != seq || inner.needs_reload || inner.batch.is_some() {
            return 0;
        }
        let cs = inner.main.meta.chunk_size as usize;
        let mut taken = 0;
        for (i, v) in pages {
            let id = (FileKind::Main, i);
            if inner.cache.contains(id) || inner.main.pending.contains_key(&i) {
                continue;
            }
            // Values as the store holds them: decoded; a malformed one is not taken.
            if let Ok(v) = codec::decode_owned(v, cs) {
                inner.cache.insert(id, v, false);
                taken += 1;
            }
        }
        taken
    }

    /// Writes `entries` and deletes `deletes` (keys outside the VFS prefix) now, in one fenced
    /// write.
    pub fn write_entries(
        &self,
        entries: Vec<(Key, Vec<u8>)>,
        deletes: Vec<Key>,
    ) -> Result<(), VfsError> {
        self.check_moved()?;
        if let Some(k) = entries
            .iter()
            .map(|(k, _)| k)
            .chain(deletes.iter())
            .find(|k| k.first() == Some(&layout::PREFIX))
        {
            return Err(VfsError::Misuse(format!(
                "key {} lies under the VFS prefix 0x08",
                crate::kv::display_key(k)
            )));
        }
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let mut batch = WriteBatch {
            puts: entries,
            deletes,
            preconditions: Vec::new(),
        };
        if let Err(e) = self.kv_write(&mut batch) {
            inner.needs_reload = true;
            return Err(self.kv_failed(Op::Write, e));
        }
        Ok(())
    }

    /// The fence record the next write will put (`None` when the database is not fenced).
    pub fn next_fence_record(&self) -> Option<Vec<u8>> {
        self.moving
            .lock()
            .as_ref()
            .map(|m| super::super::fence::encode_record(&m.instance, m.seq + 1))
    }

    /// The current bytes of main-file chunk `idx` (from the cache, the preload or the store).
    pub fn read_page(&self, idx: u32) -> Result<Vec<u8>, VfsError> {
        let cs = self.chunk_size() as usize;
        let mut buf = vec![0u8; cs];
        self.read(FileKind::Main, idx as u64 * cs as u64, &mut buf)?;
        Ok(buf)
    }
}

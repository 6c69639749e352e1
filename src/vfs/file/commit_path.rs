//! The write and commit path: buffering SQLite's writes, the batch-atomic commit
//! (`begin_atomic` / `commit_atomic` / `rollback_atomic`), the staged commit of a large
//! transaction (`commit_pages`), and `sync`'s flush of a file's pending chunks.
//!
//! Why it is apart from `file.rs`: this is where the one-put commit and crash safety are
//! decided; it reads best as one unit.

use std::collections::BTreeMap;

use super::{chunk_index, empty_page1_with_counter, DbState, Inner, Op, VfsError};
use crate::kv::{Key, KeyRange, ListRequest};
use crate::vfs::commit;
use crate::vfs::history::record;
use crate::vfs::layout::{self, FileKind, Meta};

impl DbState {
    // ----- writes -----

    /// Writes `data` at `offset`. Inside a batch-atomic bracket the pages are buffered for the
    /// commit; otherwise they are buffered until the next sync (or flushed early past the
    /// configured threshold).
    pub fn write(&self, kind: FileKind, offset: u64, data: &[u8]) -> Result<(), VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let cs = inner.file(kind).cs() as u64;
        let in_batch = kind == FileKind::Main && inner.batch.is_some();
        let mut pos = 0usize;
        while pos < data.len() {
            let abs = offset + pos as u64;
            let idx = chunk_index(abs / cs)?;
            let within = (abs % cs) as usize;
            let n = (cs as usize - within).min(data.len() - pos);
            let mut chunk = if n == cs as usize {
                data[pos..pos + n].to_vec()
            } else {
                let mut c = vec![0u8; cs as usize];
                let size = inner.file(kind).size;
                let start = idx as u64 * cs;
                let valid = size.saturating_sub(start).min(cs) as usize;
                if valid > 0 {
                    self.read_chunk(&mut inner, kind, idx, 0, &mut c[..valid])?;
                }
                c[within..within + n].copy_from_slice(&data[pos..pos + n]);
                c
            };
            if let (true, Some((b, _))) = (in_batch, inner.batch.as_mut()) {
                b.insert(idx, std::mem::take(&mut chunk));
                if b.len() * cs as usize > self.opts.max_atomic_bytes {
                    return Err(VfsError::TooBig(format!(
                        "more than {} bytes of pages buffered (max_atomic_bytes)",
                        self.opts.max_atomic_bytes
                    )));
                }
            } else {
                let wasted = inner.cache.remove((kind, idx));
                self.stats.add(&self.stats.readahead_wasted, wasted);
                inner.file(kind).pending.insert(idx, chunk);
            }
            pos += n;
        }
        let f = inner.file(kind);
        f.size = f.size.max(offset + data.len() as u64);
        if !in_batch && f.pending_bytes() > self.opts.flush_threshold_bytes {
            self.flush(&mut inner, kind)?;
        }
        Ok(())
    }

    /// Makes every buffered write of `kind` durable (the journal's first when `kind` is the
    /// main file, so a torn main-file write is always covered by a durable journal).
    pub fn sync(&self, kind: FileKind) -> Result<(), VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        self.flush(&mut inner, kind)
    }

    pub(super) fn flush(&self, inner: &mut Inner, kind: FileKind) -> Result<(), VfsError> {
        if kind == FileKind::Main && inner.is_dirty(FileKind::Journal) {
            self.flush(inner, FileKind::Journal)?;
        }
        if kind == FileKind::Main && inner.batch.is_some() {
            // A batch-atomic bracket is open: the main file's new size (and the entries queued
            // for the next commit) belong to it and become durable with its commit, or never.
            // Only another connection's close gets here (it takes no lock); writing now would
            // make part of an open transaction durable before its commit.
            return Ok(());
        }
        if !inner.is_dirty(kind) {
            return Ok(());
        }
        let virtual_page1 = kind == FileKind::Main && inner.virtual_page1;
        let counter = inner.virtual_counter;
        let f = inner.file(kind);
        let mut pending = std::mem::take(&mut f.pending);
        let restore = pending.clone();
        if virtual_page1 {
            pending
                .entry(0)
                .or_insert_with(|| empty_page1_with_counter(f.meta.chunk_size, counter));
        }
        let mut meta = f.meta.clone();
        meta.size = f.size;
        let durable_count = f.meta.chunk_count();
        if kind == FileKind::Main {
            meta.next_stage = meta.next_stage.max(inner.next_stage);
        }
        let count = meta.chunk_count();
        fill_gap(&mut pending, durable_count, count, meta.chunk_size);
        let mut new_garbage = drop_overlay_past_end(&mut meta);
        let mut puts = Vec::with_capacity(pending.len());
        for (&i, c) in &pending {
            if let Some(s) = meta.overlay.remove(&i) {
                new_garbage.push(layout::stage_key(s, i));
            }
            if (i as u64) < count {
                puts.push((layout::chunk_key(kind, i), c.clone()));
            }
        }
        let mut history_tail = Vec::new();
        let mut completes = None;
        if kind == FileKind::Main {
            // A main-file write outside the atomic path (journal fallback, truncation) is a
            // commit of its own in the history; while a journal exists it is not a consistent
            // state, so it is flagged until the journal's deletion.
            let live: BTreeMap<u32, Vec<u8>> = pending
                .iter()
                .filter(|(&i, _)| (i as u64) < count)
                .map(|(&i, c)| (i, c.clone()))
                .collect();
            let flags = if inner.journal.in_kv {
                record::FLAG_INCOMPLETE
            } else {
                0
            };
            match self.stamp_commit(inner, &mut meta, &live, flags, false) {
                Ok(Some(rec)) => {
                    if flags != 0 {
                        let mut done = rec.info.clone();
                        done.flags &= !record::FLAG_INCOMPLETE;
                        completes = Some((rec.header.0.clone(), done.encode()));
                    }
                    // Spread evenly among the pages: each write fills its entry and byte
                    // limits together.
                    puts = interleave(puts, rec.parts);
                    history_tail.push(rec.header);
                }
                Ok(None) => {}
                Err(e) => {
                    inner.file(kind).pending = restore;
                    return Err(e);
                }
            }
        } else if meta.size == 0 {
            // The journal emptied (journal_mode=TRUNCATE's commit point): the last main-file
            // write becomes a consistent state.
            history_tail.extend(inner.pending_complete.clone());
        }
        let extra = if kind == FileKind::Main {
            self.take_extra()
        } else {
            Vec::new()
        };
        let mut record = extra.clone();
        record.extend(history_tail);
        record.push((layout::meta_key(kind), meta.encode()));
        let result = self.write_batches(inner, puts, record, &new_garbage);
        if let Err(e) = result {
            inner.file(kind).pending = restore;
            self.restore_extra(extra);
            return Err(e);
        }
        if kind == FileKind::Main {
            inner.pending_complete = completes;
        } else if meta.size == 0 {
            inner.pending_complete = None;
        }
        self.stats.add(&self.stats.flushes, 1);
        if kind == FileKind::Main {
            inner.virtual_page1 = false;
        }
        for (i, c) in pending {
            if (i as u64) < count {
                let w = inner.cache.insert((kind, i), c, false);
                self.stats.add(&self.stats.readahead_wasted, w);
            }
        }
        let f = inner.file(kind);
        f.meta = meta;
        f.in_kv = true;
        f.exists = true;
        if kind == FileKind::Main {
            self.note_main_written(inner);
        }
        Ok(())
    }

    /// Writes `puts` then `record` (last, atomically with as much garbage collection as fits),
    /// keeping the preload coherent. `new_garbage` (keys the record unreferences) joins the
    /// garbage queue only once the record is durable. On failure the state is marked for
    /// reload.
    pub(super) fn write_batches(
        &self,
        inner: &mut Inner,
        puts: Vec<(Key, Vec<u8>)>,
        record: Vec<(Key, Vec<u8>)>,
        new_garbage: &[Key],
    ) -> Result<(), VfsError> {
        let limits = self.write_limits();
        let mut batches = commit::pack(puts, record, &limits).map_err(VfsError::TooBig)?;
        let mut garbage: Vec<Key> = inner.garbage.clone();
        garbage.extend_from_slice(new_garbage);
        let last = batches.len() - 1;
        let taken = commit::piggyback_deletes(&mut batches[last], &garbage, &limits);
        for b in &mut batches {
            if let Err(e) = self.kv_write(b) {
                inner.needs_reload = true;
                self.note_main_written(inner);
                return Err(self.kv_failed(Op::Write, e));
            }
            self.apply_to_preload(inner, b);
        }
        garbage.drain(..taken);
        inner.garbage = garbage;
        self.collect_leftover(inner);
        Ok(())
    }

    /// [`DbState::write_batches`] of one commit that fits one write, pipelined: the write
    /// (with as much garbage collection as fits) is queued, not sent (see `file/pipeline.rs`).
    fn queue_batch(
        &self,
        inner: &mut Inner,
        record: Vec<(Key, Vec<u8>)>,
        new_garbage: &[Key],
    ) -> Result<(), VfsError> {
        let limits = self.write_limits();
        let mut batches = commit::pack(Vec::new(), record, &limits).map_err(VfsError::TooBig)?;
        let Some(mut batch) = batches.pop().filter(|_| batches.is_empty()) else {
            return Err(VfsError::TooBig(
                "a pipelined commit needs one write".into(),
            ));
        };
        let mut garbage: Vec<Key> = inner.garbage.clone();
        garbage.extend_from_slice(new_garbage);
        let taken = commit::piggyback_deletes(&mut batch, &garbage, &limits);
        self.apply_to_preload(inner, &batch);
        self.queue_commit(inner, batch)?;
        garbage.drain(..taken);
        inner.garbage = garbage;
        Ok(())
    }

    /// Once this fenced instance has written (so it holds the fence and no other instance can
    /// be staging any more), lists an unfinished stage found at open and queues its keys as
    /// garbage, deleted by later fenced writes. One read, only after a crash left a stage.
    pub(super) fn collect_leftover(&self, inner: &mut Inner) {
        if self.moving.lock().is_none() || self.held.lock().is_some() {
            return;
        }
        let Some((start, end)) = inner.leftover.take() else {
            return;
        };
        let req = ListRequest {
            range: KeyRange::Range {
                start: start.clone(),
                end: Some(end.clone()),
            },
            limit: None,
            max_bytes: None,
        };
        let s = &self.stats;
        s.add(&s.kv_round_trips, 1);
        s.add(&s.kv_reads, 1);
        match self.kv.list(&req) {
            Ok(page) => {
                s.add(&s.keys_read, page.entries.len() as u64);
                inner
                    .garbage
                    .extend(page.entries.into_iter().map(|(k, _)| k));
                if let Some(next) = page.next_start {
                    inner.leftover = Some((next, end));
                }
            }
            Err(e) => {
                tracing::debug!("kvsqlite VFS: listing an unfinished stage failed: {e}");
                inner.leftover = Some((start, end));
            }
        }
    }

    // ----- the batch-atomic commit -----

    /// `SQLITE_FCNTL_BEGIN_ATOMIC_WRITE`: start buffering main-file pages for one commit.
    pub fn begin_atomic(&self) -> Result<(), VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let size = inner.main.size;
        inner.batch = Some((BTreeMap::new(), size));
        Ok(())
    }

    /// `SQLITE_FCNTL_ROLLBACK_ATOMIC_WRITE`: discard the buffered pages.
    pub fn rollback_atomic(&self) {
        let mut inner = self.inner.lock();
        if let Some((_, size)) = inner.batch.take() {
            inner.main.size = size;
        }
    }

    /// `SQLITE_FCNTL_COMMIT_ATOMIC_WRITE`: make the buffered pages live atomically, in one put
    /// when they fit the store's limits, else staged in several puts and made live by one
    /// commit record. On error the buffer is kept for `rollback_atomic` to discard.
    pub fn commit_atomic(&self) -> Result<(), VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        let Some((pages, before)) = inner.batch.take() else {
            return Ok(());
        };
        let r = self.commit_pages(&mut inner, pages, 0);
        if r.is_err() {
            // Keep the bracket open so ROLLBACK_ATOMIC_WRITE restores the old size. SQLite
            // sends it right after a failed commit, and discards the pages, so they are not
            // kept (no copy of the whole transaction on the way in); a read in between would
            // see the file as it was before the transaction.
            inner.batch = Some((BTreeMap::new(), before));
        }
        r
    }

    /// Commits `pages` (chunk index → image) and the main file's size as `inner.main.size`
    /// says, with a redo record flagged `flags` when history is on.
    pub(super) fn commit_pages(
        &self,
        inner: &mut Inner,
        mut pages: BTreeMap<u32, Vec<u8>>,
        flags: u8,
    ) -> Result<(), VfsError> {
        if inner.is_dirty(FileKind::Journal) {
            self.flush(inner, FileKind::Journal)?;
        }
        // Buffered non-atomic main writes (none in practice) ride along.
        for (i, c) in std::mem::take(&mut inner.main.pending) {
            pages.entry(i).or_insert(c);
        }
        if inner.virtual_page1 {
            let cs = inner.main.meta.chunk_size;
            let counter = inner.virtual_counter;
            pages
                .entry(0)
                .or_insert_with(|| empty_page1_with_counter(cs, counter));
        }
        let mut meta = inner.main.meta.clone();
        meta.size = inner.main.size;
        meta.next_stage = meta.next_stage.max(inner.next_stage);
        let count = meta.chunk_count();
        pages.retain(|&i, _| (i as u64) < count);
        fill_gap(
            &mut pages,
            inner.main.meta.chunk_count(),
            count,
            meta.chunk_size,
        );
        let mut new_garbage = drop_overlay_past_end(&mut meta);
        for &i in pages.keys() {
            if let Some(s) = meta.overlay.remove(&i) {
                new_garbage.push(layout::stage_key(s, i));
            }
        }
        let extra = self.take_extra();
        let r = self.commit_pages_inner(
            inner,
            pages,
            meta,
            new_garbage,
            extra.clone(),
            Commit {
                flags,
                full_image: false,
            },
        );
        if r.is_err() {
            self.restore_extra(extra);
        }
        r
    }

    /// Writes `pages` and `meta` (and `extra`, and the commit's redo record) in one write when
    /// they fit the store's limits, else as a staged commit: stage writes that also carry the
    /// record's parts, then one commit record with the record's header.
    pub(super) fn commit_pages_inner(
        &self,
        inner: &mut Inner,
        pages: BTreeMap<u32, Vec<u8>>,
        mut meta: Meta,
        new_garbage: Vec<Key>,
        extra: Vec<(Key, Vec<u8>)>,
        how: Commit,
    ) -> Result<(), VfsError> {
        let limits = self.write_limits();
        let cs = meta.chunk_size as usize;
        let page_cost = 7 + cs;
        let rec = self.stamp_commit(inner, &mut meta, &pages, how.flags, how.full_image)?;
        let (parts, header) = match rec {
            Some(r) => (r.parts, vec![r.header]),
            None => (Vec::new(), Vec::new()),
        };
        let cost = |v: &[(Key, Vec<u8>)]| v.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let extra_bytes = cost(&extra) + cost(&header);
        let extra_entries = extra.len() + header.len();
        let fits_one = pages.len() + parts.len() + extra_entries < limits.max_write_entries
            && pages.len() * page_cost + cost(&parts) + extra_bytes + 3 + meta.encoded_len()
                <= limits.max_write_bytes;
        let mut staged: Vec<u32> = Vec::new();
        let stage_id = inner.next_stage.max(meta.next_stage);
        if fits_one {
            let puts: Vec<_> = pages
                .iter()
                .map(|(&i, c)| (layout::chunk_key(FileKind::Main, i), c.clone()))
                .collect();
            let mut all = puts;
            all.extend(parts);
            all.extend(header);
            all.extend(extra);
            all.push((layout::meta_key(FileKind::Main), meta.encode()));
            if self.pipelining() {
                self.queue_batch(inner, all, &new_garbage)?;
            } else {
                self.write_batches(inner, Vec::new(), all, &new_garbage)?;
            }
            self.stats.add(&self.stats.atomic_commits, 1);
        } else {
            // Upper bound of the record with every page staged.
            let mut bound = meta.clone();
            bound.next_stage = stage_id + 1;
            for &i in pages.keys() {
                bound.overlay.insert(i, stage_id);
            }
            let record_bytes = 3 + bound.encoded_len();
            if record_bytes > limits.max_value_bytes {
                return Err(VfsError::TooBig(format!(
                    "the commit record would be {record_bytes} bytes, over the store's value limit"
                )));
            }
            let n_final = commit::final_batch_pages(
                page_cost,
                pages.len(),
                record_bytes + extra_bytes,
                1 + extra_entries,
                &limits,
            );
            let split = pages.len() - n_final;
            let mut stage_puts = Vec::with_capacity(split);
            let mut final_puts = Vec::with_capacity(n_final + 1);
            for (pos, (&i, c)) in pages.iter().enumerate() {
                if pos < split {
                    staged.push(i);
                    meta.overlay.insert(i, stage_id);
                    stage_puts.push((layout::stage_key(stage_id, i), c.clone()));
                } else {
                    final_puts.push((layout::chunk_key(FileKind::Main, i), c.clone()));
                }
            }
            meta.next_stage = stage_id + 1;
            inner.next_stage = stage_id + 1;
            final_puts.extend(header);
            final_puts.extend(extra);
            final_puts.push((layout::meta_key(FileKind::Main), meta.encode()));
            // The redo record's parts go out with the stage writes, spread evenly among the
            // pages (each write then fills both its entry and byte limits); its header (which
            // lists the commit) only with the commit record.
            let stage_puts = interleave(stage_puts, parts);
            let mut batches =
                commit::pack(stage_puts, Vec::new(), &limits).map_err(VfsError::TooBig)?;
            batches.retain(|b| !b.is_empty());
            for b in &mut batches {
                if let Err(e) = self.kv_write(b) {
                    // Nothing references this stage: its pages are garbage.
                    inner
                        .garbage
                        .extend(staged.iter().map(|&i| layout::stage_key(stage_id, i)));
                    return Err(self.kv_failed(Op::Write, e));
                }
                self.apply_to_preload(inner, b);
            }
            if let Err(e) = self.write_batches(inner, Vec::new(), final_puts, &new_garbage) {
                inner.failed_stages.push((stage_id, staged));
                return Err(e);
            }
            self.stats.add(&self.stats.staged_commits, 1);
        }
        for (i, c) in pages {
            let w = inner.cache.insert((FileKind::Main, i), c, false);
            self.stats.add(&self.stats.readahead_wasted, w);
        }
        inner.main.meta = meta;
        inner.main.in_kv = true;
        inner.main.exists = true;
        inner.virtual_page1 = false;
        self.note_main_written(inner);
        Ok(())
    }

    /// Counts a journal fallback (called on a journal file's first write).
    pub fn note_journal_fallback(&self) {
        self.stats.add(&self.stats.journal_fallbacks, 1);
    }
}

/// `a` with the entries of `b` spread evenly among them (one of `b` after each
/// `a.len() / b.len()` of `a`).
fn interleave(a: Vec<(Key, Vec<u8>)>, b: Vec<(Key, Vec<u8>)>) -> Vec<(Key, Vec<u8>)> {
    if b.is_empty() {
        return a;
    }
    let step = a.len().div_ceil(b.len()).max(1);
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut b = b.into_iter();
    for (i, e) in a.into_iter().enumerate() {
        if i % step == 0 {
            out.extend(b.next());
        }
        out.push(e);
    }
    out.extend(b);
    out
}

/// How a commit is recorded in the history.
#[derive(Clone, Copy, Debug)]
pub(super) struct Commit {
    /// Header flags ([`record::FLAG_RESTORE`]).
    pub flags: u8,
    /// The pages are the database's whole image (a held database's flush): its history
    /// starts here, with no base images needed.
    pub full_image: bool,
}

/// Adds a zero chunk for every index in `[durable, count)` that `chunks` lacks: a file grown
/// by writing only its last page must not leave chunks the metadata says exist but the store
/// lacks.
pub(super) fn fill_gap(chunks: &mut BTreeMap<u32, Vec<u8>>, durable: u64, count: u64, cs: u32) {
    for i in durable..count {
        if let Ok(i) = u32::try_from(i) {
            chunks.entry(i).or_insert_with(|| vec![0; cs as usize]);
        }
    }
}

/// Removes overlay entries at or past the file's chunk count; returns their stage keys.
pub(super) fn drop_overlay_past_end(meta: &mut Meta) -> Vec<Key> {
    let count = meta.chunk_count().min(u32::MAX as u64) as u32;
    let past: Vec<(u32, u64)> = meta.overlay.range(count..).map(|(&i, &s)| (i, s)).collect();
    past.into_iter()
        .map(|(i, s)| {
            meta.overlay.remove(&i);
            layout::stage_key(s, i)
        })
        .collect()
}

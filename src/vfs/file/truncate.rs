//! Shrinking and deleting a file: `truncate` and `delete`, with the KV deletions they need.
//!
//! Why it is apart from `file.rs`: both remove chunks from the store (by range, or by fenced
//! delete batches while a fence is set), a concern apart from writing and committing.

use super::{chunk_index, kv_delete_range, DbState, FileState, Op, VfsError};
use crate::vfs::layout::{self, FileKind, Meta};

impl DbState {
    // ----- truncate, delete -----

    /// Sets a file's size. Growing is buffered like a write; shrinking flushes buffered writes
    /// and then durably drops the chunks past the new end.
    pub fn truncate(&self, kind: FileKind, size: u64) -> Result<(), VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        if kind == FileKind::Main {
            let cs = inner.main.meta.chunk_size as u64;
            if let Some((b, _)) = &mut inner.batch {
                let count = size.div_ceil(cs);
                b.retain(|&i, _| (i as u64) < count);
                inner.main.size = size;
                return Ok(());
            }
        }
        if size >= inner.file(kind).size {
            inner.file(kind).size = size;
            return Ok(());
        }
        if kind == FileKind::Journal && inner.is_dirty(FileKind::Main) {
            // The journal shrinking may be the commit point: the main file goes first.
            self.flush(&mut inner, FileKind::Main)?;
        }
        let f = inner.file(kind);
        let cs = f.cs() as u64;
        let new_count = size.div_ceil(cs);
        let old_count = f.meta.chunk_count();
        f.pending.retain(|&i, _| (i as u64) < new_count);
        f.size = size;
        if !f.in_kv {
            return Ok(());
        }
        // Writes the new size (and drops overlay pages past the end) in one commit record.
        self.flush(&mut inner, kind)?;
        let from = chunk_index(new_count).unwrap_or(u32::MAX);
        if old_count > new_count {
            let start = layout::chunk_key(kind, from);
            let end = layout::chunk_range_end(kind);
            let result = if !self.fenced() {
                self.settle()?;
                kv_delete_range(&self.kv, &self.stats, &start, Some(&end))
            } else {
                let from = chunk_index(new_count).unwrap_or(u32::MAX);
                let to = old_count.min(u32::MAX as u64) as u32;
                self.fenced_deletes(
                    (from..to).map(|i| layout::chunk_key(kind, i)).collect(),
                    Vec::new(),
                )
            };
            if let Err(e) = result {
                inner.needs_reload = true;
                if kind == FileKind::Main {
                    self.note_main_written(&mut inner);
                }
                return Err(self.kv_failed(Op::Truncate, e));
            }
            if let Some(p) = &mut inner.preload {
                p.remove_range(&start, Some(&end));
            }
        }
        let w = inner.cache.remove_from(kind, from);
        self.stats.add(&self.stats.readahead_wasted, w);
        Ok(())
    }

    /// Deletes a file: every key of it, in one atomic `delete_range`. Deleting the journal is
    /// the commit point of a journalled transaction, so the main file's buffered writes are
    /// made durable first.
    pub fn delete(&self, kind: FileKind) -> Result<(), VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        if kind == FileKind::Journal && inner.is_dirty(FileKind::Main) {
            self.flush(&mut inner, FileKind::Main)?;
        }
        let in_kv = inner.file(kind).in_kv;
        if in_kv {
            let (s, e) = layout::file_range(kind);
            // Deleting the journal is a journalled commit's commit point: the history's last
            // main-file write becomes a consistent state (its header loses the flag).
            let completes: Vec<_> = match kind {
                FileKind::Journal => inner.pending_complete.take().into_iter().collect(),
                FileKind::Main => Vec::new(),
            };
            let result = if !self.fenced() && completes.is_empty() {
                self.settle()?;
                kv_delete_range(&self.kv, &self.stats, &s, Some(&e))
            } else {
                // A fenced database (or one whose history header must lose its flag in the
                // same write as the deletion) deletes with writes of keys: metadata first
                // (that is the delete), then the chunks it covered.
                let count = inner.file(kind).meta.chunk_count().min(u32::MAX as u64) as u32;
                let mut keys = vec![layout::meta_key(kind)];
                keys.extend((0..count).map(|i| layout::chunk_key(kind, i)));
                self.fenced_deletes(keys, completes.clone())
            };
            if let Err(err) = result {
                inner.needs_reload = true;
                return Err(self.kv_failed(Op::Delete, err));
            }
            if let Some(p) = &mut inner.preload {
                p.remove_range(&s, Some(&e));
            }
        }
        let cs = inner.main.meta.chunk_size;
        let f = inner.file(kind);
        *f = FileState::new(Meta::new(kind, cs), false);
        if kind == FileKind::Main {
            inner.virtual_page1 = false;
        }
        let w = inner.cache.remove_from(kind, 0);
        self.stats.add(&self.stats.readahead_wasted, w);
        Ok(())
    }
}

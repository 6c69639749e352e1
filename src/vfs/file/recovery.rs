//! Recovery after a failed write: `reload_if_needed` re-reads the files' metadata (and checks
//! the fence) once a write failed and left the in-memory state unsure, `flush_all` writes out
//! what is buffered (on close), and `apply_to_preload` keeps the preload in step with a write.
//!
//! Why it is apart from `file.rs`: these are the points where the in-memory state is brought
//! back in line with the store, apart from the ordinary read and write paths.

use std::sync::atomic::Ordering;

use super::{kv_err, DbState, Inner, Op, VfsError};
use crate::kv::WriteBatch;
use crate::vfs::layout::{self, FileKind, Meta};

impl DbState {
    // ----- recovery after a failed write -----

    pub(super) fn reload_if_needed(&self, inner: &mut Inner) -> Result<(), VfsError> {
        if !inner.needs_reload {
            return Ok(());
        }
        self.watch.lock().forget();
        let mut keys = vec![
            layout::meta_key(FileKind::Main),
            layout::meta_key(FileKind::Journal),
        ];
        let fence_key = self.moving.lock().as_ref().map(|m| m.key.clone());
        keys.extend(fence_key.iter().cloned());
        let vals = self.kv_get(&keys).map_err(kv_err(Op::Read))?;
        let mut it = vals.into_iter();
        let main = it.next().flatten();
        let journal = it.next().flatten();
        if fence_key.is_some() {
            let stored = it.next().flatten();
            if let Some(m) = self.moving.lock().as_mut() {
                if m.resolve(stored.as_deref()).is_err() {
                    self.moved.store(true, Ordering::SeqCst);
                    return Err(VfsError::Moved);
                }
            }
        }
        let cs = inner.main.meta.chunk_size;
        for (kind, raw) in [(FileKind::Main, main), (FileKind::Journal, journal)] {
            let f = inner.file(kind);
            match raw {
                Some(v) => {
                    f.meta = Meta::decode(kind, &v)?;
                    f.in_kv = true;
                    f.exists = true;
                }
                None => {
                    f.meta = Meta::new(kind, cs);
                    f.in_kv = false;
                }
            }
            // Buffered writes stay; the size is what SQLite last set.
            if f.pending.is_empty() {
                f.size = f.size.max(f.meta.size);
            }
        }
        if inner.main.in_kv {
            inner.virtual_page1 = false;
        }
        let live: std::collections::BTreeSet<u64> =
            inner.main.meta.overlay.values().copied().collect();
        for (id, pages) in std::mem::take(&mut inner.failed_stages) {
            if !live.contains(&id) {
                inner
                    .garbage
                    .extend(pages.iter().map(|&i| layout::stage_key(id, i)));
            }
        }
        let w = inner.cache.clear();
        self.stats.add(&self.stats.readahead_wasted, w);
        // The preload was read before the write whose outcome is unknown: if that write landed,
        // its pages are newer than the preload's. From here on pages come from the store.
        inner.preload = None;
        inner.needs_reload = false;
        Ok(())
    }

    /// Flushes whatever is buffered (on close).
    pub fn flush_all(&self) -> Result<(), VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        if inner.needs_reload {
            self.reload_if_needed(&mut inner)?;
        }
        self.flush(&mut inner, FileKind::Main)?;
        self.flush(&mut inner, FileKind::Journal)
    }

    pub(super) fn apply_to_preload(&self, inner: &mut Inner, b: &WriteBatch) {
        if let Some(p) = &mut inner.preload {
            for (k, v) in &b.puts {
                p.update(k, v);
            }
            for k in &b.deletes {
                p.remove(k);
            }
        }
    }
}

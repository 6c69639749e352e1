//! What the actor layer attaches to a database's writes: the fence preconditions, the commit
//! hook told the main file's [`Fingerprint`](super::Fingerprint), and extra puts queued to ride
//! with the next commit.
//!
//! Why it is apart from `file.rs`: SQLite knows nothing of these; they are set from outside and
//! only consumed by the commit path.

use super::{fingerprint_of, CommitHook, DbState, Inner};
use crate::kv::{Key, Precondition};
use crate::preload::Lookup;
use crate::vfs::codec;
use crate::vfs::layout::{self, FileKind};

impl DbState {
    /// Makes every later KV write of this database carry `preconditions` (checked atomically
    /// with it; unmet → the write fails with `Conflict` and nothing is written). While set,
    /// deletions use fenced delete batches instead of `delete_range`.
    pub fn set_fence(&self, preconditions: Vec<Precondition>) {
        *self.fence.lock() = preconditions;
    }

    /// Installs the hook told the database's [`Fingerprint`](super::Fingerprint) after every write to its main
    /// file. The registry uses it to recognise a preload read before a later commit of this
    /// process (a stale preload), which must not seed a new state.
    pub fn set_commit_hook(&self, hook: CommitHook) {
        *self.commit_hook.lock() = Some(hook);
    }

    /// Tells the commit hook the main file's fingerprint as the state now knows it.
    pub(super) fn note_main_written(&self, inner: &mut Inner) {
        inner.write_seq += 1;
        let hook = self.commit_hook.lock();
        let Some(hook) = hook.as_ref() else {
            return;
        };
        let fp = if inner.needs_reload {
            None
        } else if !inner.main.in_kv {
            Some(fingerprint_of(None, None))
        } else {
            let raw = inner.main.meta.encode();
            let key = inner.main.meta.live_key(0);
            let page1 = match inner.cache.peek((FileKind::Main, 0)) {
                Some(p) => Some(p.to_vec()),
                None => match inner.preload.as_ref().map(|p| p.lookup(&key)) {
                    Some(Lookup::Found(p)) => codec::decode(p, inner.main.meta.chunk_size as usize)
                        .ok()
                        .map(|p| p.into_owned()),
                    _ => None,
                },
            };
            page1.map(|p| fingerprint_of(Some(&raw), Some(&p)))
        };
        hook(fp);
    }

    /// Queues entries to be written atomically with the next commit record (the next
    /// transaction's single put). Keys under the VFS prefix are refused.
    pub fn queue_puts(&self, entries: Vec<(Key, Vec<u8>)>) -> Result<(), String> {
        if let Some((k, _)) = entries
            .iter()
            .find(|(k, _)| k.first() == Some(&layout::PREFIX))
        {
            return Err(format!(
                "key {} lies under the VFS prefix 0x08",
                crate::kv::display_key(k)
            ));
        }
        self.extra.lock().extend(entries);
        Ok(())
    }

    /// Entries queued by [`DbState::queue_puts`] and not yet written.
    pub fn queued_puts(&self) -> usize {
        self.extra.lock().len()
    }

    pub(super) fn take_extra(&self) -> Vec<(Key, Vec<u8>)> {
        std::mem::take(&mut *self.extra.lock())
    }

    pub(super) fn restore_extra(&self, mut taken: Vec<(Key, Vec<u8>)>) {
        let mut e = self.extra.lock();
        taken.append(&mut e);
        *e = taken;
    }
}

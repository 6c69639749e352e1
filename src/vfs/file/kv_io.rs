//! Every KV call the VFS makes for a database: `kv_get`, `kv_write`, fenced deletes and the
//! free `kv_batch_read` / `kv_delete_range`, each counted in the database's [`Stats`], plus the
//! fencing helpers (`fenced`, `write_limits`, `kv_failed`, `check_moved`, `moved`).
//!
//! Why it is apart from `file.rs`: it is the one door to the store — counting round trips and
//! noticing that another instance of the actor wrote (the fence) happen here and nowhere else.

use std::sync::atomic::Ordering;

use super::{DbState, Op, VfsError};
use crate::kv::{
    ActorKv, Key, KvError, KvLimits, ListPage, ListRequest, ReadOp, ReadResult, WriteBatch,
};
use crate::vfs::codec;
use crate::vfs::layout::{self, FileKind};
use crate::vfs::stats::Stats;

impl DbState {
    // ----- KV access: the one place every store call goes through -----

    pub(super) fn kv_get(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if let Some(h) = self.held.lock().as_ref() {
            // Held: the store holds no live key of this database; what was written is here.
            return Ok(keys.iter().map(|k| h.get(k).cloned()).collect());
        }
        // Keys a queued or in-flight commit writes are answered from the pipeline's overlay;
        // only the others are asked of the store (which they are the same in before and after
        // those puts).
        let known = self.overlay_get(keys);
        if known.iter().any(Option::is_some) {
            let ask: Vec<Key> = keys
                .iter()
                .zip(&known)
                .filter(|(_, k)| k.is_none())
                .map(|(key, _)| key.clone())
                .collect();
            let mut got = if ask.is_empty() {
                Vec::new()
            } else {
                self.kv_get_store(&ask)?
            }
            .into_iter();
            return Ok(known
                .into_iter()
                .map(|k| match k {
                    Some(v) => v,
                    None => got.next().flatten(),
                })
                .collect());
        }
        self.kv_get_store(keys)
    }

    fn kv_get_store(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        let s = &self.stats;
        s.add(&s.kv_round_trips, 1);
        s.add(&s.kv_reads, 1);
        s.add(&s.keys_read, keys.len() as u64);
        let r = self.kv.get(keys)?;
        let bytes: usize = r.iter().flatten().map(|v| v.len()).sum();
        s.add(&s.bytes_read, bytes as u64);
        Ok(r)
    }

    /// Lists one page of `req` (counted; answered from the held writes while held).
    pub(super) fn kv_list(&self, req: &ListRequest) -> Result<ListPage, VfsError> {
        self.settle()?;
        if self.held.lock().is_some() {
            return Ok(ListPage {
                entries: Vec::new(),
                next_start: None,
            });
        }
        let s = &self.stats;
        s.add(&s.kv_round_trips, 1);
        s.add(&s.kv_reads, 1);
        let page = self.kv.list(req).map_err(super::kv_err(Op::Read))?;
        s.add(&s.keys_read, page.entries.len() as u64);
        let bytes: usize = page.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        s.add(&s.bytes_read, bytes as u64);
        Ok(page)
    }

    /// Writes `batch`, with the fence's precondition and record added while it is sent (to the
    /// batch itself, not a copy of it: every actor database is fenced, so this is every
    /// commit) and taken off again before returning, whatever the outcome. Waits first until
    /// no pipelined put is queued or in flight.
    pub(super) fn kv_write(&self, batch: &mut WriteBatch) -> Result<(), KvError> {
        if let Err(e) = self.settle() {
            return Err(KvError::Backend {
                backend: "vfs",
                message: e.to_string(),
            });
        }
        self.kv_write_now(batch)
    }

    /// [`DbState::kv_write`] without waiting for the pipeline (its writer's own call).
    pub(super) fn kv_write_now(&self, batch: &mut WriteBatch) -> Result<(), KvError> {
        let (puts, preconditions) = (batch.puts.len(), batch.preconditions.len());
        let mut raw = Vec::new();
        let out = self.kv_write_fenced(batch, &mut raw);
        // The caller keeps the pages as they are (its preload, cache and pipeline overlay).
        for (i, v) in raw {
            batch.puts[i].1 = v;
        }
        batch.puts.truncate(puts);
        batch.preconditions.truncate(preconditions);
        out
    }

    fn kv_write_fenced(
        &self,
        batch: &mut WriteBatch,
        raw: &mut Vec<(usize, Vec<u8>)>,
    ) -> Result<(), KvError> {
        if let Some(h) = self.held.lock().as_mut() {
            h.apply(batch);
            return Ok(());
        }
        *raw = self.compress_pages(batch);
        let s = &self.stats;
        s.add(&s.kv_round_trips, 1);
        s.add(&s.kv_writes, 1);
        s.add(
            &s.keys_written,
            (batch.puts.len() + batch.deletes.len()) as u64,
        );
        let bytes: usize = batch
            .puts
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + batch.deletes.iter().map(|k| k.len()).sum::<usize>();
        s.add(&s.bytes_written, bytes as u64);
        let pages = batch
            .puts
            .iter()
            .filter(|(k, _)| {
                matches!(
                    layout::parse_key(k),
                    Some(layout::ParsedKey::Chunk(..) | layout::ParsedKey::Stage(..))
                )
            })
            .count();
        s.add(&s.pages_written, pages as u64);
        // No lock is held across the store call: a pipelined put in flight must not stop the
        // next transaction (which reads the limits and the fence) from running.
        let mut moving = self.moving.lock();
        let fence = self.fence.lock();
        if fence.is_empty() && moving.is_none() {
            drop((fence, moving));
            return self.kv.write(batch);
        }
        batch.preconditions.extend(fence.iter().cloned());
        drop(fence);
        let Some(m) = moving.as_mut() else {
            drop(moving);
            return self.kv.write(batch);
        };
        if self.moved.load(Ordering::SeqCst) {
            return Err(KvError::Conflict { key: m.key.clone() });
        }
        let added = batch.puts.len();
        let next = m.guard(batch);
        drop(moving);
        // The fence record rides in the same write: it is written too.
        for (k, v) in &batch.puts[added.min(batch.puts.len())..] {
            s.add(&s.keys_written, 1);
            s.add(&s.bytes_written, (k.len() + v.len()) as u64);
        }
        let r = self.kv.write(batch);
        let mut moving = self.moving.lock();
        let Some(m) = moving.as_mut() else {
            return r;
        };
        match r {
            Ok(()) => {
                m.advance(next);
                Ok(())
            }
            Err(KvError::Conflict { key }) if key == m.key => {
                self.moved.store(true, Ordering::SeqCst);
                Err(KvError::Conflict { key })
            }
            Err(e) => {
                if !e.is_rejected_before_send() && !matches!(e, KvError::Conflict { .. }) {
                    m.uncertain = Some(next);
                }
                Err(e)
            }
        }
    }

    /// Replaces each page value of `batch` (a chunk or stage key) by its compressed form where
    /// that is shorter (see [`crate::vfs::codec`]), counting the bytes before and after; returns
    /// the replaced values with their positions, to be put back once the write returned.
    fn compress_pages(&self, batch: &mut WriteBatch) -> Vec<(usize, Vec<u8>)> {
        let mut raw = Vec::new();
        let (mut before, mut after) = (0u64, 0u64);
        let mut encoded = self.encoded.lock();
        for (i, (k, v)) in batch.puts.iter_mut().enumerate() {
            let page = match layout::parse_key(k) {
                Some(
                    layout::ParsedKey::Chunk(FileKind::Main, p) | layout::ParsedKey::Stage(_, p),
                ) => Some(p),
                Some(layout::ParsedKey::Chunk(..)) => None,
                _ => continue,
            };
            before += v.len() as u64;
            if self.opts.compress {
                // The block the history's image was built from, when this is that page.
                let stored = match page.and_then(|p| encoded.take(p, v)) {
                    Some(stored) => stored,
                    None => codec::encode(v),
                };
                if let Some(c) = stored {
                    raw.push((i, std::mem::replace(v, c)));
                }
            }
            after += v.len() as u64;
        }
        drop(encoded);
        let s = &self.stats;
        s.add(&s.page_image_bytes, before);
        s.add(&s.page_stored_bytes, after);
        raw
    }

    /// True when writes are fenced (deletes then use fenced writes, never `delete_range`).
    pub(super) fn fenced(&self) -> bool {
        !self.fence.lock().is_empty() || self.moving.lock().is_some() || self.held.lock().is_some()
    }

    /// The store's limits less the room every fenced write keeps for the fence record.
    pub(super) fn write_limits(&self) -> KvLimits {
        let mut l = *self.kv.limits();
        if let Some(bytes) = self.moving.lock().as_ref().map(|m| m.reserve_bytes()) {
            l.max_write_entries = l.max_write_entries.saturating_sub(1).max(1);
            l.max_write_bytes = l.max_write_bytes.saturating_sub(bytes);
        }
        l
    }

    /// The error a failed KV call becomes: [`VfsError::Moved`] once the fence moved.
    pub(super) fn kv_failed(&self, op: Op, e: KvError) -> VfsError {
        // The store may now hold what the history's summary does not (parts of a write).
        self.watch.lock().forget();
        if self.moved.load(Ordering::SeqCst) {
            VfsError::Moved
        } else if let Some(p) = self.poisoned() {
            VfsError::Poisoned(p)
        } else {
            VfsError::Kv(op, e)
        }
    }

    /// Fails every operation once another instance took the fence, or a pipelined put failed.
    pub(super) fn check_moved(&self) -> Result<(), VfsError> {
        if self.moved.load(Ordering::SeqCst) {
            Err(VfsError::Moved)
        } else if let Some(p) = self.poisoned() {
            Err(VfsError::Poisoned(p))
        } else {
            Ok(())
        }
    }

    /// True once another instance of the actor wrote since this one's wake.
    pub fn moved(&self) -> bool {
        self.moved.load(Ordering::SeqCst)
    }

    /// Deletes `keys` in order with writes that carry the fence, as few as the limits allow;
    /// `puts` (small) ride in the first write.
    pub(super) fn fenced_deletes(
        &self,
        keys: Vec<Key>,
        puts: Vec<(Key, Vec<u8>)>,
    ) -> Result<(), KvError> {
        let limits = self.write_limits();
        let mut bytes: usize = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut batch = WriteBatch::puts(puts);
        for k in keys {
            if batch.puts.len() + batch.deletes.len() + 1 > limits.max_write_entries
                || bytes + k.len() > limits.max_write_bytes
            {
                self.kv_write(&mut std::mem::take(&mut batch))?;
                bytes = 0;
            }
            bytes += k.len();
            batch.deletes.push(k);
        }
        if !batch.is_empty() {
            self.kv_write(&mut batch)?;
        }
        Ok(())
    }
}

pub(super) fn kv_batch_read(
    kv: &ActorKv,
    stats: &Stats,
    ops: &[ReadOp],
) -> Result<Vec<ReadResult>, KvError> {
    stats.add(&stats.kv_round_trips, 1);
    stats.add(&stats.kv_reads, 1);
    let res = kv.batch_read(ops)?;
    for r in &res {
        match r {
            ReadResult::Get(v) => {
                stats.add(&stats.keys_read, v.len() as u64);
                stats.add(
                    &stats.bytes_read,
                    v.iter().flatten().map(|x| x.len() as u64).sum(),
                );
            }
            ReadResult::List(p) => {
                stats.add(&stats.keys_read, p.entries.len() as u64);
                stats.add(
                    &stats.bytes_read,
                    p.entries.iter().map(|(_, v)| v.len() as u64).sum(),
                );
            }
        }
    }
    Ok(res)
}

pub(super) fn kv_delete_range(
    kv: &ActorKv,
    stats: &Stats,
    start: &[u8],
    end: Option<&[u8]>,
) -> Result<(), KvError> {
    stats.add(&stats.kv_round_trips, 1);
    stats.add(&stats.kv_writes, 1);
    stats.add(&stats.keys_written, 1);
    kv.delete_range(start, end)
}

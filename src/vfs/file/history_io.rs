//! The history's I/O on a database (see [`crate::vfs::history`]): stamping each commit with its
//! seq, time and redo record, listing the history, restoring in place, compaction, and the
//! image as of a commit (for forks and exports).
//!
//! Why it is apart from `commit_path.rs`: the commit path only asks for a commit's record;
//! everything that reads the history back or rewrites it lives here.

use std::collections::{BTreeMap, BTreeSet};

use super::{kv_batch_read, DbState, Inner, Op, VfsError};
use crate::kv::{Key, KeyRange, ListRequest, ReadOp, ReadResult, Value, WriteBatch};
use crate::vfs::history::record::{self, Header, Record};
use crate::vfs::history::{self, CommitInfo, CompactReport, Image, RestoreOutcome, Target};
use crate::vfs::layout::{self, FileKind, Meta};
use crate::vfs::{codec, commit};

/// Pages read and written per round trip while a history starts on an existing database.
const BASE_BATCH_PAGES: u32 = 64;

impl DbState {
    /// True when this database's commits write redo records: history on, not held, and a page
    /// entry fits one store value.
    pub(super) fn history_on(&self, chunk_size: u32) -> bool {
        self.opts.history.enabled()
            && self.held.lock().is_none()
            && chunk_size as usize + record::ENTRY_OVERHEAD < self.kv.limits().max_value_bytes
    }

    /// Stamps `meta` (the main file's metadata about to be written) with the next commit seq,
    /// its time and the history start, and builds the commit's redo record of `pages` (`None`
    /// when history is off). A database with pages but no history (format 1, or history off
    /// until now) first gets a base image of every page (`full_image`: the pages are the whole
    /// database, no base needed).
    pub(super) fn stamp_commit(
        &self,
        inner: &mut Inner,
        meta: &mut Meta,
        pages: &BTreeMap<u32, Vec<u8>>,
        flags: u8,
        full_image: bool,
    ) -> Result<Option<Record>, VfsError> {
        let durable = inner.main.meta.clone();
        meta.seq = durable.seq + 1;
        meta.time_ms = self.opts.history.clock.now_ms().max(durable.time_ms);
        if !self.history_on(meta.chunk_size) {
            meta.hist_start = 0;
            return Ok(None);
        }
        let fresh = full_image || !inner.main.in_kv || durable.chunk_count() == 0;
        if durable.hist_start == 0 && !fresh {
            self.write_full_base(inner, &durable)?;
        }
        meta.hist_start = if durable.hist_start == 0 {
            meta.seq
        } else {
            durable.hist_start
        };
        let (raw, stored) = (
            std::sync::atomic::AtomicU64::new(0),
            std::sync::atomic::AtomicU64::new(0),
        );
        let of = record::Of {
            seq: meta.seq,
            flags,
            time_ms: meta.time_ms,
            size: meta.size,
            chunk_size: meta.chunk_size,
        };
        if !self.pipelining() {
            self.encoded.lock().clear();
        }
        // With page compression on, each page is compressed once: the history's image is the
        // chunk value's block, which the write takes back (`codec::EncodedPages`).
        let rec = record::build(&of, pages, self.kv.limits().max_value_bytes, &|p, img| {
            let (enc, data) = if self.opts.compress {
                let stored = codec::encode(img);
                let image = record::image_from_block(img, stored.as_deref());
                self.encoded.lock().remember(p, img, stored);
                image
            } else {
                record::encode_image(img)
            };
            raw.fetch_add(img.len() as u64, std::sync::atomic::Ordering::Relaxed);
            stored.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            (enc, data)
        });
        let s = &self.stats;
        s.add(&s.history_image_bytes, raw.into_inner());
        s.add(&s.history_stored_bytes, stored.into_inner());
        // Counted before the record lands: a commit that fails leaves the summary unknown
        // (`reload_if_needed`), one that lands is counted right.
        self.watch
            .lock()
            .commit(meta.time_ms, rec.info.bytes, durable.hist_start == 0);
        Ok(Some(rec))
    }

    /// Writes a base image of every page of the durable database (its state at `durable.seq`),
    /// `BASE_BATCH_PAGES` at a time: the start of a history on a database that has pages.
    fn write_full_base(&self, inner: &mut Inner, durable: &Meta) -> Result<(), VfsError> {
        let count = u32::try_from(durable.chunk_count())
            .map_err(|_| VfsError::TooBig("file too big".into()))?;
        let cs = durable.chunk_size as usize;
        let limits = self.write_limits();
        let mut from = 0;
        while from < count {
            let to = count.min(from + BASE_BATCH_PAGES);
            let mut puts = Vec::new();
            for i in from..to {
                let mut buf = vec![0u8; cs];
                self.read_chunk(inner, FileKind::Main, i, 0, &mut buf)?;
                let (enc, data) = record::encode_image(&buf);
                let s = &self.stats;
                s.add(&s.history_image_bytes, cs as u64);
                s.add(&s.history_stored_bytes, data.len() as u64);
                puts.push((
                    layout::history_base_key(i),
                    record::encode_base(durable.seq, enc, &data),
                ));
            }
            for mut b in commit::pack(puts, Vec::new(), &limits).map_err(VfsError::TooBig)? {
                self.kv_write(&mut b)
                    .map_err(|e| self.kv_failed(Op::Write, e))?;
            }
            from = to;
        }
        Ok(())
    }

    /// Every history header in the store, in seq order (one list per `default_list_limit`).
    /// A fenced database reads its fence record in the same round trip as the first list and
    /// fails with [`VfsError::Moved`] when another instance wrote since: a stale instance can
    /// neither restore, compact nor fork from what it no longer owns.
    fn read_headers(&self) -> Result<Vec<Header>, VfsError> {
        Ok(self.read_headers_and(None)?.0)
    }

    /// [`DbState::read_headers`], and the keys of `extra` listed in the same round trip (all
    /// of them: a rare further page is listed after).
    fn read_headers_and(
        &self,
        extra: Option<ListRequest>,
    ) -> Result<(Vec<Header>, Vec<Key>), VfsError> {
        let (start, end) = layout::history_area(layout::TAG_HISTORY);
        let mut out = Vec::new();
        let mut from = start;
        let list = |from: Key| ListRequest {
            range: KeyRange::Range {
                start: from,
                end: Some(end.clone()),
            },
            limit: None,
            max_bytes: None,
        };
        let fence_key = self.moving.lock().as_ref().map(|m| m.key.clone());
        let mut first = None;
        let mut extra_keys = Vec::new();
        let extra = extra.filter(|_| !self.is_held());
        if fence_key.is_some() && !self.is_held() || extra.is_some() {
            let mut ops = vec![ReadOp::List(list(from.clone()))];
            ops.extend(fence_key.iter().map(|k| ReadOp::Get(vec![k.clone()])));
            ops.extend(extra.iter().map(|r| ReadOp::List(r.clone())));
            let res = {
                self.settle()?;
                kv_batch_read(&self.kv, &self.stats, &ops).map_err(super::kv_err(Op::Read))?
            };
            let mut it = res.into_iter();
            let Some(ReadResult::List(page)) = it.next() else {
                return Err(VfsError::Corrupt("batch_read answered out of shape".into()));
            };
            if fence_key.is_some() {
                let Some(ReadResult::Get(mut vals)) = it.next() else {
                    return Err(VfsError::Corrupt("batch_read answered out of shape".into()));
                };
                let stored = vals.pop().flatten();
                if let Some(m) = self.moving.lock().as_mut() {
                    if m.resolve(stored.as_deref()).is_err() {
                        self.moved.store(true, std::sync::atomic::Ordering::SeqCst);
                        return Err(VfsError::Moved);
                    }
                }
            }
            if let Some(req) = extra {
                let Some(ReadResult::List(mut listed)) = it.next() else {
                    return Err(VfsError::Corrupt("batch_read answered out of shape".into()));
                };
                loop {
                    extra_keys.extend(listed.entries.into_iter().map(|(k, _)| k));
                    let Some(next) = listed.next_start else { break };
                    let mut more = req.clone();
                    if let KeyRange::Range { start, .. } = &mut more.range {
                        *start = next;
                    }
                    listed = self.kv_list(&more)?;
                }
            }
            first = Some(page);
        }
        loop {
            let page = match first.take() {
                Some(p) => p,
                None => self.kv_list(&list(from))?,
            };
            for (k, v) in &page.entries {
                let Some(layout::ParsedKey::History(seq)) = layout::parse_key(k) else {
                    return Err(VfsError::Corrupt(format!(
                        "malformed history key {}",
                        crate::kv::display_key(k)
                    )));
                };
                out.push(Header::decode(seq, v)?);
            }
            match page.next_start {
                Some(n) => from = n,
                None => return Ok((out, extra_keys)),
            }
        }
    }

    /// The headers of the history that restores can use: from the history start to the
    /// current seq.
    fn live_headers(meta: &Meta, all: Vec<Header>) -> Vec<Header> {
        if meta.hist_start == 0 {
            return Vec::new();
        }
        all.into_iter()
            .filter(|h| h.seq >= meta.hist_start && h.seq <= meta.seq)
            .collect()
    }

    /// The bookmark of the current commit (no round trip).
    pub fn bookmark(&self) -> Result<String, VfsError> {
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let m = &inner.main.meta;
        Ok(history::bookmark(m.time_ms, m.seq))
    }

    /// The commits the history holds, oldest first: every consistent commit from the history
    /// start to the current one. One list round trip.
    pub fn history(&self) -> Result<Vec<CommitInfo>, VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let meta = inner.main.meta.clone();
        drop(inner);
        let headers = Self::live_headers(&meta, self.read_headers()?);
        Ok(headers
            .iter()
            .filter(|h| h.consistent())
            .map(|h| CommitInfo {
                seq: h.seq,
                time_ms: h.time_ms,
                pages: h.pages.len() as u32,
                bytes: h.bytes,
                file_size: h.size,
                restore: h.flags & record::FLAG_RESTORE != 0,
                bookmark: history::bookmark(h.time_ms, h.seq),
            })
            .collect())
    }

    /// The seq `target` names among `headers` (live ones) or the current commit.
    fn resolve(meta: &Meta, headers: &[Header], target: &Target) -> Result<u64, VfsError> {
        let listed = |seq: u64| headers.iter().any(|h| h.seq == seq && h.consistent());
        let oldest = headers
            .iter()
            .find(|h| h.consistent())
            .map(|h| format!("the oldest kept is seq {} at {} ms", h.seq, h.time_ms))
            .unwrap_or_else(|| "the history is empty".into());
        match target {
            Target::Seq(s) if *s == meta.seq || listed(*s) => Ok(*s),
            Target::Seq(s) => Err(VfsError::History(format!(
                "seq {s} is not in the history ({oldest}; the current seq is {})",
                meta.seq
            ))),
            Target::Bookmark(b) => {
                let Some((t, s)) = history::parse_bookmark(b) else {
                    return Err(VfsError::History(format!("{b:?} is not a bookmark")));
                };
                let ok = (s == meta.seq && t == meta.time_ms)
                    || headers
                        .iter()
                        .any(|h| h.seq == s && h.time_ms == t && h.consistent());
                if ok {
                    Ok(s)
                } else {
                    Err(VfsError::History(format!(
                        "bookmark {b} is not in the history ({oldest})"
                    )))
                }
            }
            Target::Time(t) => {
                if meta.seq > 0 && meta.time_ms <= *t {
                    return Ok(meta.seq);
                }
                headers
                    .iter()
                    .rev()
                    .find(|h| h.consistent() && h.time_ms <= *t)
                    .map(|h| h.seq)
                    .ok_or_else(|| {
                        VfsError::History(format!("no commit at or before {t} ms ({oldest})"))
                    })
            }
        }
    }

    /// The bookmark of the last commit at or before `time_ms` (one list round trip).
    pub fn bookmark_for_time(&self, time_ms: u64) -> Result<String, VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let meta = inner.main.meta.clone();
        drop(inner);
        let headers = Self::live_headers(&meta, self.read_headers()?);
        let seq = Self::resolve(&meta, &headers, &Target::Time(time_ms))?;
        Ok(match headers.iter().find(|h| h.seq == seq) {
            Some(h) => history::bookmark(h.time_ms, h.seq),
            None => history::bookmark(meta.time_ms, meta.seq),
        })
    }

    /// The images at `seq` of every page that differs from the current database (changed
    /// after `seq`, or cut off by a later shrink), below the file's chunk count at `seq`, and
    /// the file size at `seq`. One get round trip (more past `max_get_keys`).
    fn pages_at(
        &self,
        meta: &Meta,
        headers: &[Header],
        seq: u64,
    ) -> Result<(BTreeMap<u32, Vec<u8>>, u64), VfsError> {
        if seq == meta.seq {
            return Ok((BTreeMap::new(), meta.size));
        }
        let at = headers
            .iter()
            .find(|h| h.seq == seq)
            .ok_or_else(|| VfsError::History(format!("seq {seq} has no record")))?;
        let count_at = at.chunk_count();
        let mut min_count = meta.chunk_count();
        let mut changed = BTreeSet::new();
        for h in headers.iter().filter(|h| h.seq > seq) {
            min_count = min_count.min(h.chunk_count());
            changed.extend(h.pages.iter().copied().filter(|&p| (p as u64) < count_at));
        }
        for p in min_count..count_at {
            changed.insert(p as u32);
        }
        // Where each page's image at `seq` is: the latest record at or before it, else base.
        let mut from_part: BTreeMap<(u64, u16), Vec<u32>> = BTreeMap::new();
        let mut from_base = Vec::new();
        for &p in &changed {
            let src = headers
                .iter()
                .rev()
                .filter(|h| h.seq <= seq)
                .find_map(|h| h.part_of(p).map(|part| (h.seq, part)));
            match src {
                Some(k) => from_part.entry(k).or_default().push(p),
                None => from_base.push(p),
            }
        }
        let mut keys: Vec<Key> = from_part
            .keys()
            .map(|&(s, n)| layout::history_part_key(s, n))
            .collect();
        keys.extend(from_base.iter().map(|&p| layout::history_base_key(p)));
        let vals = self.get_many(&keys)?;
        let cs = at.chunk_size as usize;
        let mut out = BTreeMap::new();
        let mut it = vals.into_iter();
        for ((s, n), want) in &from_part {
            let v = it.next().flatten().ok_or_else(|| {
                VfsError::Corrupt(format!("history part {n} of commit {s} is missing"))
            })?;
            for (p, enc, data) in record::part_entries(*s, &v)? {
                if want.binary_search(&p).is_ok() {
                    out.insert(p, decode_image(enc, data, cs)?);
                }
            }
        }
        for &p in &from_base {
            let v = it.next().flatten().ok_or_else(|| {
                VfsError::History(format!(
                    "page {p} has no image at seq {seq} (the history before it is incomplete)"
                ))
            })?;
            let (bseq, enc, data) = record::decode_base(p, &v)?;
            if bseq > seq || bseq + 1 < meta.hist_start {
                return Err(VfsError::History(format!(
                    "page {p}'s base image is of seq {bseq}, not usable at seq {seq}"
                )));
            }
            out.insert(p, decode_image(enc, data, cs)?);
        }
        if out.len() != changed.len() {
            return Err(VfsError::Corrupt(format!(
                "the history holds {} of the {} pages needed at seq {seq}",
                out.len(),
                changed.len()
            )));
        }
        Ok((out, at.size))
    }

    /// [`DbState::get_many`], with the keys of `lists` listed in the round trip of the first
    /// get (all of them: a rare further page is listed after).
    fn get_many_and_list(
        &self,
        keys: &[Key],
        lists: Vec<ListRequest>,
    ) -> Result<(Vec<Option<Value>>, Vec<Key>), VfsError> {
        let max = self.kv.limits().max_get_keys.max(1);
        if lists.is_empty() || self.is_held() {
            return Ok((self.get_many(keys)?, Vec::new()));
        }
        let first = keys.len().min(max);
        let mut ops = vec![ReadOp::Get(keys[..first].to_vec())];
        ops.extend(lists.iter().cloned().map(ReadOp::List));
        self.settle()?;
        let res = kv_batch_read(&self.kv, &self.stats, &ops).map_err(super::kv_err(Op::Read))?;
        let mut it = res.into_iter();
        let Some(ReadResult::Get(mut vals)) = it.next() else {
            return Err(VfsError::Corrupt("batch_read answered out of shape".into()));
        };
        let mut listed = Vec::new();
        for req in lists {
            let Some(ReadResult::List(mut page)) = it.next() else {
                return Err(VfsError::Corrupt("batch_read answered out of shape".into()));
            };
            loop {
                listed.extend(page.entries.into_iter().map(|(k, _)| k));
                let Some(next) = page.next_start else { break };
                let mut more = req.clone();
                if let KeyRange::Range { start, .. } = &mut more.range {
                    *start = next;
                }
                page = self.kv_list(&more)?;
            }
        }
        vals.extend(self.get_many(&keys[first..])?);
        Ok((vals, listed))
    }

    /// Gets `keys` in as few round trips as `max_get_keys` allows.
    fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Value>>, VfsError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.kv.limits().max_get_keys.max(1)) {
            out.extend(self.kv_get(chunk).map_err(super::kv_err(Op::Read))?);
        }
        Ok(out)
    }

    /// Restores the database in place to `target`: one new commit (staged when large) writing
    /// the image at the target of every page changed since, and the file size then; page 1
    /// carries a change counter past the current one, so every connection's pager re-reads.
    /// Fenced like every write. No connection may hold a lock (an open transaction).
    /// Round trips: one list, one get, then the commit's write(s).
    pub fn restore(&self, target: &Target) -> Result<RestoreOutcome, VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let l = &inner.locks;
        if inner.batch.is_some()
            || l.shared > 0
            || l.reserved.is_some()
            || l.pending.is_some()
            || l.exclusive.is_some()
            || inner.journal.exists
        {
            return Err(VfsError::Misuse(
                "a transaction is open on the database: finish it before a restore".into(),
            ));
        }
        if !inner.main.in_kv {
            return Err(VfsError::History("the database has no commit yet".into()));
        }
        let meta = inner.main.meta.clone();
        let headers = Self::live_headers(&meta, self.read_headers()?);
        let seq = Self::resolve(&meta, &headers, target)?;
        let undo = history::bookmark(meta.time_ms, meta.seq);
        let (mut pages, size) = self.pages_at(&meta, &headers, seq)?;
        if pages.is_empty() && size == meta.size {
            return Ok(RestoreOutcome {
                restored_to: seq,
                undo: undo.clone(),
                bookmark: undo,
                pages: 0,
            });
        }
        // Page 1's change counter moves past the current one (SQLite's pagers compare it).
        let cs = meta.chunk_size as usize;
        let mut current1 = vec![0u8; cs];
        self.read_chunk(&mut inner, FileKind::Main, 0, 0, &mut current1)?;
        let counter = u32::from_be_bytes(current1[24..28].try_into().unwrap_or([0; 4]));
        let mut page1 = match pages.remove(&0) {
            Some(p) => p,
            None => current1,
        };
        let next = counter.wrapping_add(1).to_be_bytes();
        page1[24..28].copy_from_slice(&next);
        page1[92..96].copy_from_slice(&next);
        pages.insert(0, page1);
        let n = pages.len();
        let before = inner.main.size;
        inner.main.size = size;
        if let Err(e) = self.commit_pages(&mut inner, pages, record::FLAG_RESTORE) {
            inner.main.size = before;
            return Err(e);
        }
        let m = &inner.main.meta;
        Ok(RestoreOutcome {
            restored_to: seq,
            undo,
            bookmark: history::bookmark(m.time_ms, m.seq),
            pages: n,
        })
    }

    /// The whole database as of `target`: chunk size, file size and every page below the
    /// chunk count (for a fork or an export). Reads the history (one list, one get) and the
    /// current pages not changed since.
    pub fn image_at(&self, target: &Target) -> Result<Image, VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        if !inner.main.in_kv {
            return Err(VfsError::History("the database has no commit yet".into()));
        }
        let meta = inner.main.meta.clone();
        let headers = if matches!(target, Target::Seq(s) if *s == meta.seq) {
            Vec::new()
        } else {
            Self::live_headers(&meta, self.read_headers()?)
        };
        let seq = Self::resolve(&meta, &headers, target)?;
        let (mut pages, size) = self.pages_at(&meta, &headers, seq)?;
        let cs = meta.chunk_size;
        let count = u32::try_from(size.div_ceil(cs as u64))
            .map_err(|_| VfsError::TooBig("file too big".into()))?;
        for i in 0..count {
            if let std::collections::btree_map::Entry::Vacant(e) = pages.entry(i) {
                let mut buf = vec![0u8; cs as usize];
                self.read_chunk(&mut inner, FileKind::Main, i, 0, &mut buf)?;
                e.insert(buf);
            }
        }
        Ok(Image {
            page_size: cs,
            size,
            pages,
        })
    }

    /// Compacts the history: deletes the records older than the retention window or past the
    /// byte bound (all of them when history is off), oldest first, turning each deleted
    /// record's pages into base images in the same write as its header's deletion (or in
    /// writes before it when they do not fit one). Also deletes records left from an earlier
    /// history and from commits that never landed. Every write is fenced; a crash anywhere
    /// leaves every listed commit restorable.
    pub fn compact_history(&self) -> Result<CompactReport, VfsError> {
        self.check_moved()?;
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        let meta = inner.main.meta.clone();
        let r = self.compact_locked(&meta);
        if r.is_err() {
            inner.needs_reload = true;
        }
        r
    }

    /// True when [`DbState::compact_history`] would have work to do, by the rule of
    /// [`history::watch`]: no KV call (and not the state's lock, so a commit in flight does
    /// not hold it up).
    pub fn compaction_due(&self) -> bool {
        let h = &self.opts.history;
        self.watch.lock().due(h, h.clock.now_ms())
    }

    /// [`DbState::compact_history`] when [`DbState::compaction_due`], else nothing: `None`,
    /// without a KV call.
    pub fn compact_if_due(&self) -> Result<Option<CompactReport>, VfsError> {
        if !self.compaction_due() {
            return Ok(None);
        }
        self.compact_history().map(Some)
    }

    /// [`DbState::compact_history`] with the state's lock held (no commit in between).
    fn compact_locked(&self, meta: &Meta) -> Result<CompactReport, VfsError> {
        // Parts past the current seq belong to no commit: a staged commit's parts whose commit
        // record never landed (listed in the same round trip as the headers).
        let orphans = ListRequest {
            range: KeyRange::Range {
                start: layout::history_part_key(meta.seq.saturating_add(1), 0),
                end: Some(layout::history_area(layout::TAG_HISTORY_PARTS).1),
            },
            limit: None,
            max_bytes: None,
        };
        let (all, orphan_keys) = self.read_headers_and(Some(orphans))?;
        let (mut live, stale): (Vec<Header>, Vec<Header>) = all
            .into_iter()
            .partition(|h| meta.hist_start > 0 && h.seq >= meta.hist_start && h.seq <= meta.seq);
        let h = &self.opts.history;
        let cutoff = h
            .clock
            .now_ms()
            .saturating_sub(h.retention.as_millis() as u64);
        let mut total: u64 = live.iter().map(|h| h.bytes).sum();
        let mut doomed = 0;
        for r in &live {
            if !h.enabled() || r.time_ms < cutoff || total > h.max_bytes {
                total -= r.bytes;
                doomed += 1;
            } else {
                break;
            }
        }
        let mut report = CompactReport {
            records_deleted: (doomed + stale.len()) as u64,
            ..CompactReport::default()
        };
        let kept = live.split_off(doomed);
        report.records_kept = kept.len() as u64;
        report.bytes_kept = total;
        let oldest_kept = kept.first().map(|h| h.time_ms);
        // Records of an older history or of commits that never landed: no image of them is
        // needed by any listed commit.
        let mut deletes: Vec<Key> = orphan_keys;
        report.orphan_parts = deletes.len() as u64;
        for r in &stale {
            deletes.push(layout::history_key(r.seq));
            deletes.extend(
                (0..r.part_counts.len()).map(|n| layout::history_part_key(r.seq, n as u16)),
            );
        }
        self.fenced_deletes(deletes, Vec::new())
            .map_err(|e| self.kv_failed(Op::Write, e))?;
        let limits = self.write_limits();
        let mut i = 0;
        while i < live.len() {
            // A group of the oldest records whose base images and deletions fit one write.
            let mut j = i;
            let (mut entries, mut bytes) = (0usize, 0usize);
            while j < live.len() {
                let r = &live[j];
                let e = r.pages.len() + 1 + r.part_counts.len();
                let b = r.bytes as usize + 16 * (r.pages.len() + r.part_counts.len() + 1);
                if j > i
                    && (entries + e >= limits.max_write_entries
                        || bytes + b > limits.max_write_bytes)
                {
                    break;
                }
                entries += e;
                bytes += b;
                j += 1;
            }
            let (bases, orphans) = self.compact_group(&live[i..j])?;
            report.base_images += bases;
            report.orphan_parts += orphans;
            i = j;
        }
        self.watch.lock().listed(oldest_kept, total);
        Ok(report)
    }

    /// Deletes the records `group` (the oldest listed ones), writing the latest image of each
    /// of their pages as its base image: in the deleting write when all fits, else first.
    /// Parts stored under a record's seq past its part count (left by a staged commit that
    /// never landed, whose seq the next commit took with fewer parts) go with it: they are
    /// listed in the same round trip as the record's parts are read. Returns the base images
    /// written and those orphan parts.
    fn compact_group(&self, group: &[Header]) -> Result<(u64, u64), VfsError> {
        let mut keys = Vec::new();
        let mut lists = Vec::new();
        for r in group {
            keys.extend(
                (0..r.part_counts.len()).map(|n| layout::history_part_key(r.seq, n as u16)),
            );
            let end = match r.seq.checked_add(1) {
                Some(next) => layout::history_part_key(next, 0),
                None => layout::history_area(layout::TAG_HISTORY_PARTS).1,
            };
            lists.push(ListRequest {
                range: KeyRange::Range {
                    start: layout::history_part_key(r.seq, r.part_counts.len() as u16),
                    end: Some(end),
                },
                limit: None,
                max_bytes: None,
            });
        }
        let (vals, orphan_keys) = self.get_many_and_list(&keys, lists)?;
        let orphans = orphan_keys.len() as u64;
        let mut latest: BTreeMap<u32, Value> = BTreeMap::new();
        let mut it = vals.into_iter();
        for r in group {
            for n in 0..r.part_counts.len() {
                let v = it.next().flatten().ok_or_else(|| {
                    VfsError::Corrupt(format!("history part {n} of commit {} is missing", r.seq))
                })?;
                for (p, enc, data) in record::part_entries(r.seq, &v)? {
                    latest.insert(p, record::encode_base(r.seq, enc, data));
                }
            }
        }
        let n = latest.len() as u64;
        let puts: Vec<(Key, Value)> = latest
            .into_iter()
            .map(|(p, v)| (layout::history_base_key(p), v))
            .collect();
        let mut deletes = orphan_keys;
        for r in group {
            deletes.push(layout::history_key(r.seq));
        }
        let limits = self.write_limits();
        let put_bytes: usize = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        let del_bytes: usize = keys.iter().chain(&deletes).map(|k| k.len()).sum();
        if puts.len() + keys.len() + deletes.len() <= limits.max_write_entries
            && put_bytes + del_bytes <= limits.max_write_bytes
        {
            deletes.extend(keys);
            let mut b = WriteBatch {
                puts,
                deletes,
                preconditions: Vec::new(),
            };
            self.kv_write(&mut b)
                .map_err(|e| self.kv_failed(Op::Write, e))?;
            return Ok((n, orphans));
        }
        // Too big for one write (one large record): base images first — the record is still
        // listed and they equal its images, so a crash here changes no restore — then the
        // header, then its parts.
        for mut b in commit::pack(puts, Vec::new(), &limits).map_err(VfsError::TooBig)? {
            self.kv_write(&mut b)
                .map_err(|e| self.kv_failed(Op::Write, e))?;
        }
        deletes.extend(keys);
        self.fenced_deletes(deletes, Vec::new())
            .map_err(|e| self.kv_failed(Op::Write, e))?;
        Ok((n, orphans))
    }
}

/// A stored page image back to its bytes (exactly `cs` long).
fn decode_image(enc: u8, data: &[u8], cs: usize) -> Result<Vec<u8>, VfsError> {
    Ok(record::decode_image(enc, data, cs)?)
}

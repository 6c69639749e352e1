//! The state of one database (one actor on one store) and every I/O operation on its files.
//!
//! Why it exists: all connections to one database share one [`DbState`] — its metadata, page
//! cache, preload, buffered writes, commit buffer and in-process locks — so they see one
//! consistent file and SQLite's locking works as it expects. Every KV call the VFS makes goes
//! through the `kv_*` methods here, which count it in the database's [`Stats`]. The FFI layer
//! (`mod.rs`) only translates callbacks into calls on this type.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::cache::PageCache;
use super::commit;
use super::fence::{FenceSpec, MovingFence};
use super::hold::Held;
use super::layout::{self, FileKind, LayoutError, Meta};
use super::stats::Stats;
use crate::kv::{
    ActorKv, Key, KeyRange, KvError, KvLimits, ListRequest, Precondition, ReadOp, ReadResult,
    WriteBatch,
};
use crate::preload::{First, Lookup, Preload};

mod actor_io;

/// Which operation a KV error interrupted (picks the `SQLITE_IOERR_*` code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Reading pages or metadata.
    Read,
    /// Writing pages or metadata.
    Write,
    /// Flushing buffered writes on sync.
    Sync,
    /// Shrinking a file.
    Truncate,
    /// Deleting a file.
    Delete,
}

/// Errors of the VFS's file operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VfsError {
    /// A KV call failed.
    Kv(Op, KvError),
    /// Stored data is malformed (a chunk of the wrong length, a missing chunk, bad metadata).
    Corrupt(String),
    /// A transaction is too big for the batch-atomic path's configured bound or for one commit
    /// record; SQLite falls back to its rollback journal.
    TooBig(String),
    /// Another instance of the actor wrote since this one's wake (the fence moved): nothing of
    /// this write was stored, and this instance must not write again (`SQLITE_IOERR_VNODE`).
    Moved,
    /// The actor layer asked for something the database's state does not allow now.
    Misuse(String),
}

impl fmt::Display for VfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VfsError::Kv(op, e) => write!(f, "KV {op:?} failed: {e}"),
            VfsError::Corrupt(m) => write!(f, "database is corrupt: {m}"),
            VfsError::TooBig(m) => write!(f, "transaction too big for the atomic path: {m}"),
            VfsError::Moved => write!(
                f,
                "actor moved: another instance wrote this actor's database since this one woke; nothing was written (wake the actor again)"
            ),
            VfsError::Misuse(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for VfsError {}

impl From<LayoutError> for VfsError {
    fn from(e: LayoutError) -> Self {
        VfsError::Corrupt(e.0)
    }
}

/// Tunables of one database, fixed when its state is created.
#[derive(Clone, Debug)]
pub struct StateOptions {
    /// Page size of a new database (the chunk size); an existing one keeps its own.
    pub page_size: u32,
    /// VFS page cache capacity in chunks.
    pub cache_pages: usize,
    /// Largest read-ahead window in chunks.
    pub read_ahead_max: u32,
    /// Most bytes of pages buffered for one batch-atomic commit; a bigger transaction falls
    /// back to the rollback journal.
    pub max_atomic_bytes: usize,
    /// Buffered non-atomic writes past this many bytes are flushed before the next sync.
    pub flush_threshold_bytes: usize,
    /// Fence every write (see [`super::fence`]); an unfinished stage found at open is then not
    /// deleted unfenced but collected by the fence holder after its first write.
    pub fence: Option<FenceSpec>,
    /// Start in hold mode (see [`super::hold`]): only for a database whose main file and
    /// journal do not exist in the store.
    pub hold: bool,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            page_size: 4096,
            cache_pages: 2048,
            read_ahead_max: 128,
            max_atomic_bytes: 256 << 20,
            flush_threshold_bytes: 8 << 20,
            fence: None,
            hold: false,
        }
    }
}

/// Initial read-ahead window in chunks.
pub const READ_AHEAD_START: u32 = 4;

struct FileState {
    /// Metadata as stored in the KV (or to be stored at the first flush).
    meta: Meta,
    /// The metadata key exists in the KV.
    in_kv: bool,
    /// The file exists for SQLite (in the KV, or created in this process).
    exists: bool,
    /// Logical size, including buffered writes.
    size: u64,
    /// Chunks written and not yet flushed (non-atomic writes).
    pending: BTreeMap<u32, Vec<u8>>,
    ra_next: u32,
    ra_window: u32,
}

impl FileState {
    fn new(meta: Meta, in_kv: bool) -> Self {
        FileState {
            size: meta.size,
            meta,
            in_kv,
            exists: in_kv,
            pending: BTreeMap::new(),
            ra_next: u32::MAX,
            ra_window: READ_AHEAD_START,
        }
    }

    fn cs(&self) -> usize {
        self.meta.chunk_size as usize
    }

    fn pending_bytes(&self) -> usize {
        self.pending.len() * self.cs()
    }

    fn dirty(&self) -> bool {
        !self.pending.is_empty() || self.size != self.meta.size
    }
}

/// SQLite's lock levels.
pub mod lock {
    /// No lock.
    pub const NONE: i32 = 0;
    /// Reading.
    pub const SHARED: i32 = 1;
    /// Intends to write.
    pub const RESERVED: i32 = 2;
    /// Waiting for readers to finish before writing.
    pub const PENDING: i32 = 3;
    /// Writing.
    pub const EXCLUSIVE: i32 = 4;
}

#[derive(Default)]
struct Locks {
    shared: u32,
    reserved: Option<u64>,
    pending: Option<u64>,
    exclusive: Option<u64>,
}

struct Inner {
    main: FileState,
    journal: FileState,
    /// The main file has no metadata in the KV yet: chunk 0 reads as a valid empty database
    /// page so the first transaction already takes the batch-atomic path.
    virtual_page1: bool,
    /// The change counter the virtual page 1 carries (bytes 24 and 92): bumped each time
    /// `PRAGMA page_size` re-creates it, so every connection's pager sees a changed file and
    /// re-reads page 1 (and adopts its page size) at its next transaction.
    virtual_counter: u32,
    /// A connection has taken a RESERVED lock (begun a write transaction) since this state
    /// was created. As in stock SQLite, whose connection fixes its page size when a write
    /// transaction starts (even one rolled back), `PRAGMA page_size` no longer re-creates the
    /// virtual page 1 after that.
    write_started: bool,
    next_stage: u64,
    /// Pages buffered between BEGIN and COMMIT_ATOMIC_WRITE, and the size before BEGIN.
    batch: Option<(BTreeMap<u32, Vec<u8>>, u64)>,
    cache: PageCache,
    preload: Option<Preload>,
    /// Keys no metadata references any more (dropped stage pages); deleted inside later writes.
    garbage: Vec<Key>,
    /// Stages whose commit record failed: (id, pages); unreferenced ones become garbage after
    /// the metadata is reloaded.
    failed_stages: Vec<(u64, Vec<u32>)>,
    /// A write failed: the KV's state is uncertain, so reload metadata and drop the cache
    /// before the next operation.
    needs_reload: bool,
    locks: Locks,
    next_handle: u64,
    /// The next stage id as the store knows it (after skipping an unfinished stage's ids):
    /// where a held database's flush starts.
    store_next_stage: u64,
    /// An unfinished stage left by another instance or a crash, `[start, end)` of its keys:
    /// listed and collected as garbage after this (fenced) instance's first write.
    leftover: Option<(Key, Key)>,
    /// Bumped at every write that may have changed the main file.
    write_seq: u64,
    /// Main-file chunks read, with a recency stamp, while tracking is on.
    reads: Option<ReadLog>,
}

/// The main-file chunks a database read recently (the actor layer's hot-page hints).
#[derive(Debug, Default)]
struct ReadLog {
    clock: u64,
    pages: std::collections::HashMap<u32, u64>,
}

/// Most chunks a [`ReadLog`] remembers; past it the least recent half is forgotten.
const READ_LOG_MAX: usize = 4096;

impl ReadLog {
    fn note(&mut self, idx: u32) {
        self.clock += 1;
        self.pages.insert(idx, self.clock);
        if self.pages.len() > READ_LOG_MAX {
            let mut stamps: Vec<u64> = self.pages.values().copied().collect();
            stamps.sort_unstable();
            let cut = stamps[stamps.len() / 2];
            self.pages.retain(|_, s| *s > cut);
        }
    }

    /// The chunks, most recently read first.
    fn recent(&self) -> Vec<u32> {
        let mut v: Vec<(u32, u64)> = self.pages.iter().map(|(&i, &s)| (i, s)).collect();
        v.sort_unstable_by_key(|e| std::cmp::Reverse(e.1));
        v.into_iter().map(|(i, _)| i).collect()
    }
}

impl Inner {
    /// True when the file has buffered changes to make durable. A new main file that is
    /// still only its virtual empty page 1 has none.
    fn is_dirty(&self, kind: FileKind) -> bool {
        match kind {
            FileKind::Main => {
                self.main.dirty()
                    && !(self.virtual_page1
                        && self.main.pending.is_empty()
                        && self.main.size == self.main.meta.chunk_size as u64)
            }
            FileKind::Journal => self.journal.dirty(),
        }
    }

    fn file(&mut self, kind: FileKind) -> &mut FileState {
        match kind {
            FileKind::Main => &mut self.main,
            FileKind::Journal => &mut self.journal,
        }
    }
}

/// One database's shared state. Created by the registry, shared by every open file of the
/// database through an `Arc`.
pub struct DbState {
    kv: ActorKv,
    stats: Arc<Stats>,
    opts: StateOptions,
    inner: Mutex<Inner>,
    /// Preconditions every write of the VFS carries (set by [`DbState::set_fence`]).
    fence: Mutex<Vec<Precondition>>,
    /// The moving fence (see [`super::fence`]), when the actor layer fences the database.
    moving: Mutex<Option<MovingFence>>,
    /// The fence moved to another instance: every later operation fails with
    /// [`VfsError::Moved`].
    moved: AtomicBool,
    /// Writes held in memory (see [`super::hold`]) while the database is being created.
    held: Mutex<Option<Held>>,
    /// Entries (outside the VFS prefix) to write atomically with the next commit record.
    extra: Mutex<Vec<(Key, Vec<u8>)>>,
    /// Told the database's [`Fingerprint`] after every write that may have changed its main
    /// file (`None` when the outcome is uncertain); see [`DbState::set_commit_hook`].
    commit_hook: Mutex<Option<CommitHook>>,
}

/// What the state tells its commit hook: a hash of the main file's stored metadata and page 1
/// after a write, or `None` when a write failed and the store's contents are uncertain.
pub type Fingerprint = Option<u64>;

/// Called with the new [`Fingerprint`] after each write to the main file (while the state's
/// lock is held, so calls are in commit order).
pub type CommitHook = Box<dyn Fn(Fingerprint) + Send + Sync>;

/// FNV-1a over the main file's stored metadata (absent or its bytes) and page 1's bytes.
fn fingerprint_of(meta: Option<&[u8]>, page1: Option<&[u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for part in [meta, page1] {
        match part {
            Some(v) => {
                eat(&[1]);
                eat(&(v.len() as u64).to_be_bytes());
                eat(v);
            }
            None => eat(&[0]),
        }
    }
    h
}

/// The [`Fingerprint`] of the database state a preload was read from: `None` when the preload
/// does not hold the main file's metadata and (if it exists) its page 1, so it cannot tell.
pub fn preload_fingerprint(p: &Preload) -> Fingerprint {
    match p.lookup(&layout::meta_key(FileKind::Main)) {
        Lookup::Absent => Some(fingerprint_of(None, None)),
        Lookup::NotPreloaded => None,
        Lookup::Found(raw) => {
            let meta = Meta::decode(FileKind::Main, raw).ok()?;
            match p.lookup(&meta.live_key(0)) {
                Lookup::Found(page1) => Some(fingerprint_of(Some(raw), Some(page1))),
                _ => None,
            }
        }
    }
}

/// A valid page 1 of an empty database with the given page size, as SQLite itself writes it.
pub fn empty_page1(page_size: u32) -> Vec<u8> {
    empty_page1_with_counter(page_size, 0)
}

/// [`empty_page1`] carrying `counter` as its file change counter (offset 24) and as the
/// "version-valid-for" number (offset 92), so SQLite trusts the in-header page count.
pub fn empty_page1_with_counter(page_size: u32, counter: u32) -> Vec<u8> {
    let mut p = vec![0u8; page_size as usize];
    p[..16].copy_from_slice(b"SQLite format 3\0");
    let ps = if page_size == 65536 {
        1u16
    } else {
        page_size as u16
    };
    p[16..18].copy_from_slice(&ps.to_be_bytes());
    p[18] = 1; // file format write version (legacy)
    p[19] = 1; // read version
    p[20] = 0; // reserved bytes per page
    p[21] = 64;
    p[22] = 32;
    p[23] = 32;
    p[24..28].copy_from_slice(&counter.to_be_bytes()); // file change counter
    p[28..32].copy_from_slice(&1u32.to_be_bytes()); // database size in pages
    p[92..96].copy_from_slice(&counter.to_be_bytes()); // version-valid-for

    // B-tree page header of an empty table leaf at offset 100.
    p[100] = 0x0D;
    let content = if page_size == 65536 {
        0u16
    } else {
        page_size as u16
    };
    p[105..107].copy_from_slice(&content.to_be_bytes());
    p
}

fn kv_err(op: Op) -> impl Fn(KvError) -> VfsError {
    move |e| VfsError::Kv(op, e)
}

impl DbState {
    /// Opens the state of one database: reads the metadata of its files (from `preload` when
    /// it knows them, else in one `batch_read` that also fetches the first pages), and discards
    /// an unfinished staged commit left by a crash.
    pub fn open(
        kv: ActorKv,
        opts: StateOptions,
        preload: Option<Preload>,
    ) -> Result<DbState, VfsError> {
        if !layout::valid_chunk_size(opts.page_size) {
            return Err(VfsError::TooBig(format!(
                "page size {} is not a power of two in 512..=65536",
                opts.page_size
            )));
        }
        let stats = Arc::new(Stats::default());
        let main_key = layout::meta_key(FileKind::Main);
        let journal_key = layout::meta_key(FileKind::Journal);
        let (ss, se) = layout::stage_area();
        let mut main_raw: Option<Option<Vec<u8>>> = None;
        let mut journal_raw: Option<Option<Vec<u8>>> = None;
        let mut first_stage: Option<Option<Key>> = None;
        if let Some(p) = &preload {
            main_raw = match p.lookup(&main_key) {
                Lookup::Found(v) => Some(Some(v.to_vec())),
                Lookup::Absent => Some(None),
                Lookup::NotPreloaded => None,
            };
            journal_raw = match p.lookup(&journal_key) {
                Lookup::Found(v) => Some(Some(v.to_vec())),
                Lookup::Absent => Some(None),
                Lookup::NotPreloaded => None,
            };
            first_stage = match p.first_in(&ss, &se) {
                First::Entry(k, _) => Some(Some(k.to_vec())),
                First::Empty => Some(None),
                First::Unknown => None,
            };
        }
        let mut prefetched: Vec<(u32, Vec<u8>)> = Vec::new();
        if main_raw.is_none() || journal_raw.is_none() || first_stage.is_none() {
            let mut keys = vec![main_key.clone(), journal_key.clone()];
            for i in 0..READ_AHEAD_START {
                keys.push(layout::chunk_key(FileKind::Main, i));
            }
            let ops = vec![
                ReadOp::Get(keys),
                ReadOp::List(ListRequest {
                    range: KeyRange::Range {
                        start: ss.clone(),
                        end: Some(se.clone()),
                    },
                    limit: Some(1),
                    max_bytes: None,
                }),
            ];
            let res = kv_batch_read(&kv, &stats, &ops).map_err(kv_err(Op::Read))?;
            let mut it = res.into_iter();
            let (Some(ReadResult::Get(mut vals)), Some(ReadResult::List(page))) =
                (it.next(), it.next())
            else {
                return Err(VfsError::Kv(
                    Op::Read,
                    KvError::Backend {
                        backend: "vfs",
                        message: "batch_read answered out of shape".into(),
                    },
                ));
            };
            if vals.len() != 2 + READ_AHEAD_START as usize {
                return Err(VfsError::Corrupt("batch_read answered out of shape".into()));
            }
            let chunks = vals.split_off(2);
            journal_raw = Some(vals.pop().flatten());
            main_raw = Some(vals.pop().flatten());
            first_stage = Some(page.entries.first().map(|(k, _)| k.clone()));
            for (i, v) in chunks.into_iter().enumerate() {
                if let Some(v) = v {
                    prefetched.push((i as u32, v));
                }
            }
        }
        let main_meta = match main_raw.flatten() {
            Some(v) => Some(Meta::decode(FileKind::Main, &v)?),
            None => None,
        };
        let journal_meta = match journal_raw.flatten() {
            Some(v) => Some(Meta::decode(FileKind::Journal, &v)?),
            None => None,
        };
        let cs = main_meta
            .as_ref()
            .map(|m| m.chunk_size)
            .unwrap_or(opts.page_size);
        let mut next_stage = main_meta.as_ref().map(|m| m.next_stage).unwrap_or(0);
        if opts.hold && (main_meta.is_some() || journal_meta.is_some()) {
            return Err(VfsError::Corrupt(
                "hold mode is only for a database that does not exist in the store yet".into(),
            ));
        }
        let mut preload = preload;
        let mut leftover = None;
        // An unfinished staged commit: stage keys at or past the durable next stage id.
        if let Some(Some(k)) = &first_stage {
            let newest = layout::parse_stage_key(k).map(|(id, _)| id);
            let unfinished = newest.is_none_or(|id| id >= next_stage);
            if unfinished && opts.fence.is_some() {
                // Fenced: another instance may be staging right now, so nothing is deleted
                // unfenced. This instance's stages start past the newest one found, and the
                // leftover keys are collected by fenced writes once this instance holds the
                // fence (its first write succeeded).
                let newest = newest.unwrap_or(u64::MAX - 1);
                let (_, end) = layout::stages_from(next_stage);
                leftover = Some((layout::stage_key(newest, 0), end));
                next_stage = newest.saturating_add(1);
            } else if unfinished {
                let (s, e) = layout::stages_from(next_stage);
                kv_delete_range(&kv, &stats, &s, Some(&e)).map_err(kv_err(Op::Delete))?;
                if let Some(p) = &mut preload {
                    p.remove_range(&s, Some(&e));
                }
            }
        }
        let main = match main_meta {
            Some(m) => FileState::new(m, true),
            None => FileState::new(Meta::new(FileKind::Main, cs), false),
        };
        let journal = match journal_meta {
            Some(m) => FileState::new(m, true),
            None => FileState::new(Meta::new(FileKind::Journal, cs), false),
        };
        let mut cache = PageCache::new(opts.cache_pages);
        let count = main.meta.chunk_count();
        let mut used_prefetch = 0;
        for (i, v) in prefetched {
            if (i as u64) < count && !main.meta.overlay.contains_key(&i) && v.len() == main.cs() {
                cache.insert((FileKind::Main, i), v, i != 0);
                used_prefetch += (i != 0) as u64;
            }
        }
        stats.add(&stats.readahead_prefetched, used_prefetch);
        Ok(DbState {
            kv,
            stats,
            fence: Mutex::new(Vec::new()),
            extra: Mutex::new(Vec::new()),
            commit_hook: Mutex::new(None),
            inner: Mutex::new(Inner {
                main,
                journal,
                virtual_page1: false,
                virtual_counter: 0,
                write_started: false,
                next_stage,
                batch: None,
                cache,
                preload,
                garbage: Vec::new(),
                failed_stages: Vec::new(),
                needs_reload: false,
                locks: Locks::default(),
                next_handle: 1,
                store_next_stage: next_stage,
                leftover,
                write_seq: 0,
                reads: None,
            }),
            moving: Mutex::new(opts.fence.clone().map(MovingFence::new)),
            moved: AtomicBool::new(false),
            held: Mutex::new(opts.hold.then(Held::default)),
            opts,
        })
    }

    /// Makes every later KV write of this database carry `preconditions` (checked atomically
    /// with it; unmet → the write fails with `Conflict` and nothing is written). While set,
    /// deletions use fenced delete batches instead of `delete_range`.
    pub fn set_fence(&self, preconditions: Vec<Precondition>) {
        *self.fence.lock() = preconditions;
    }

    /// Installs the hook told the database's [`Fingerprint`] after every write to its main
    /// file. The registry uses it to recognise a preload read before a later commit of this
    /// process (a stale preload), which must not seed a new state.
    pub fn set_commit_hook(&self, hook: CommitHook) {
        *self.commit_hook.lock() = Some(hook);
    }

    /// Tells the commit hook the main file's fingerprint as the state now knows it.
    fn note_main_written(&self, inner: &mut Inner) {
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
                    Some(Lookup::Found(p)) => Some(p.to_vec()),
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

    fn take_extra(&self) -> Vec<(Key, Vec<u8>)> {
        std::mem::take(&mut *self.extra.lock())
    }

    fn restore_extra(&self, mut taken: Vec<(Key, Vec<u8>)>) {
        let mut e = self.extra.lock();
        taken.append(&mut e);
        *e = taken;
    }

    /// The database's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The actor id.
    pub fn actor(&self) -> &str {
        self.kv.actor()
    }

    /// The options the state was created with.
    pub fn options(&self) -> &StateOptions {
        &self.opts
    }

    /// True when the file exists (for SQLite's `xAccess` and open without CREATE).
    pub fn exists(&self, kind: FileKind) -> bool {
        let inner = self.inner.lock();
        match kind {
            FileKind::Main => inner.main.exists,
            FileKind::Journal => inner.journal.exists,
        }
    }

    /// True when the main file has metadata in the store.
    pub fn main_in_store(&self) -> bool {
        self.inner.lock().main.in_kv
    }

    /// Makes the file exist (open with CREATE). A new main file starts as one valid empty page.
    pub fn create(&self, kind: FileKind) {
        let mut inner = self.inner.lock();
        match kind {
            FileKind::Main => {
                if !inner.main.exists {
                    inner.main.exists = true;
                    inner.virtual_page1 = true;
                    inner.main.size = inner.main.meta.chunk_size as u64;
                }
            }
            FileKind::Journal => {
                if !inner.journal.exists {
                    inner.journal.exists = true;
                    inner.journal.size = 0;
                    inner.journal.meta = Meta::new(FileKind::Journal, inner.main.meta.chunk_size);
                }
            }
        }
    }

    /// `PRAGMA page_size = page_size` on this database. A database whose main file has never
    /// been written to the store (it is still the virtual empty page 1) is re-created at the
    /// new page size: the chunk size becomes `page_size` and page 1 is presented again at that
    /// size with a new change counter, so SQLite's pager drops its cache and adopts the page
    /// size from the header at the next transaction, which still commits in one put.
    ///
    /// `Ok(true)`: re-created at the new size. `Ok(false)`: nothing to do here (the database
    /// was written, a write transaction began on it since this state was created — even one
    /// rolled back — or it already has that size); SQLite then handles the pragma itself
    /// (ignored without VACUUM, as in stock SQLite).
    /// `Err(message)`: refused — a page that does not fit one value or one write of the store,
    /// or a transaction is open on the new database.
    pub fn set_new_page_size(&self, page_size: u32) -> Result<bool, String> {
        let limits = *self.kv.limits();
        let mut inner = self.inner.lock();
        let new = inner.virtual_page1
            && !inner.write_started
            && !inner.main.in_kv
            && inner.main.pending.is_empty()
            && inner.main.size == inner.main.meta.chunk_size as u64
            && !inner.needs_reload;
        if !new || inner.main.meta.chunk_size == page_size {
            return Ok(false);
        }
        if page_size as usize > limits.max_value_bytes
            || page_size as usize + 7 > limits.max_write_bytes
        {
            return Err(format!(
                "kvsqlite refuses PRAGMA page_size={page_size}: a page must fit one value of the store (values up to {} bytes, writes up to {} bytes)",
                limits.max_value_bytes, limits.max_write_bytes
            ));
        }
        let l = &inner.locks;
        if inner.batch.is_some()
            || inner.journal.exists
            || l.shared > 0
            || l.reserved.is_some()
            || l.pending.is_some()
            || l.exclusive.is_some()
        {
            return Err(format!(
                "kvsqlite refuses PRAGMA page_size={page_size} on a new database while a transaction is open on it (or a connection keeps a lock, as locking_mode=EXCLUSIVE does): set it before BEGIN, or use OpenOptions::page_size"
            ));
        }
        inner.main.meta = Meta::new(FileKind::Main, page_size);
        inner.main.size = page_size as u64;
        inner.journal.meta = Meta::new(FileKind::Journal, page_size);
        inner.virtual_counter = inner.virtual_counter.wrapping_add(1);
        inner.main.ra_next = u32::MAX;
        inner.main.ra_window = READ_AHEAD_START;
        let w = inner.cache.remove_from(FileKind::Main, 0);
        self.stats.add(&self.stats.readahead_wasted, w);
        Ok(true)
    }

    /// A new lock-owner id for an open file.
    pub fn new_handle_id(&self) -> u64 {
        let mut inner = self.inner.lock();
        inner.next_handle += 1;
        inner.next_handle
    }

    /// The chunk size of the main file (its page size when SQLite's pages match).
    pub fn chunk_size(&self) -> u32 {
        self.inner.lock().main.meta.chunk_size
    }

    /// The logical size of a file.
    pub fn file_size(&self, kind: FileKind) -> Result<u64, VfsError> {
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        Ok(inner.file(kind).size)
    }

    // ----- KV access: the one place every store call goes through -----

    fn kv_get(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if let Some(h) = self.held.lock().as_ref() {
            // Held: the store holds no live key of this database; what was written is here.
            return Ok(keys.iter().map(|k| h.get(k).cloned()).collect());
        }
        let s = &self.stats;
        s.add(&s.kv_round_trips, 1);
        s.add(&s.kv_reads, 1);
        s.add(&s.keys_read, keys.len() as u64);
        let r = self.kv.get(keys)?;
        let bytes: usize = r.iter().flatten().map(|v| v.len()).sum();
        s.add(&s.bytes_read, bytes as u64);
        Ok(r)
    }

    fn kv_write(&self, batch: &WriteBatch) -> Result<(), KvError> {
        if let Some(h) = self.held.lock().as_mut() {
            h.apply(batch);
            return Ok(());
        }
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
        let mut moving = self.moving.lock();
        let fence = self.fence.lock();
        if fence.is_empty() && moving.is_none() {
            return self.kv.write(batch);
        }
        let mut fenced = batch.clone();
        fenced.preconditions.extend(fence.iter().cloned());
        drop(fence);
        let Some(m) = moving.as_mut() else {
            return self.kv.write(&fenced);
        };
        if self.moved.load(Ordering::SeqCst) {
            return Err(KvError::Conflict { key: m.key.clone() });
        }
        let next = m.guard(&mut fenced);
        match self.kv.write(&fenced) {
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

    /// True when writes are fenced (deletes then use fenced writes, never `delete_range`).
    fn fenced(&self) -> bool {
        !self.fence.lock().is_empty() || self.moving.lock().is_some() || self.held.lock().is_some()
    }

    /// The store's limits less the room every fenced write keeps for the fence record.
    fn write_limits(&self) -> KvLimits {
        let mut l = *self.kv.limits();
        if let Some(bytes) = self.moving.lock().as_ref().map(|m| m.reserve_bytes()) {
            l.max_write_entries = l.max_write_entries.saturating_sub(1).max(1);
            l.max_write_bytes = l.max_write_bytes.saturating_sub(bytes);
        }
        l
    }

    /// The error a failed KV call becomes: [`VfsError::Moved`] once the fence moved.
    fn kv_failed(&self, op: Op, e: KvError) -> VfsError {
        if self.moved.load(Ordering::SeqCst) {
            VfsError::Moved
        } else {
            VfsError::Kv(op, e)
        }
    }

    /// Fails every operation once another instance took the fence.
    fn check_moved(&self) -> Result<(), VfsError> {
        if self.moved.load(Ordering::SeqCst) {
            Err(VfsError::Moved)
        } else {
            Ok(())
        }
    }

    /// True once another instance of the actor wrote since this one's wake.
    pub fn moved(&self) -> bool {
        self.moved.load(Ordering::SeqCst)
    }

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

    fn read_chunk(
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
                    check_chunk(kind, idx, v.len(), cs)?;
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

    /// Fetches chunk `idx` from the store together with a read-ahead window of the chunks after
    /// it, caches them, and returns chunk `idx`.
    fn fetch(&self, inner: &mut Inner, kind: FileKind, idx: u32) -> Result<Vec<u8>, VfsError> {
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
        let window = if idx == f.ra_next {
            (f.ra_window.saturating_mul(8)).min(max)
        } else {
            READ_AHEAD_START.min(max)
        };
        f.ra_window = window;
        f.ra_next = idx.saturating_add(window);
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
        f.ra_next = idxs.last().map_or(idx, |&l| l.saturating_add(1));
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
            if v.len() != cs {
                if pos == 0 {
                    check_chunk(kind, *i, v.len(), cs)?;
                }
                continue;
            }
            if pos == 0 {
                first = Some(v.clone());
            }
            wasted += inner.cache.insert((kind, *i), v, pos != 0);
        }
        self.stats.add(&self.stats.readahead_wasted, wasted);
        first.ok_or_else(|| VfsError::Corrupt("chunk vanished".into()))
    }

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

    fn flush(&self, inner: &mut Inner, kind: FileKind) -> Result<(), VfsError> {
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
        let extra = if kind == FileKind::Main {
            self.take_extra()
        } else {
            Vec::new()
        };
        let mut record = extra.clone();
        record.push((layout::meta_key(kind), meta.encode()));
        let result = self.write_batches(inner, puts, record, &new_garbage);
        if let Err(e) = result {
            inner.file(kind).pending = restore;
            self.restore_extra(extra);
            return Err(e);
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
    fn write_batches(
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
        for b in &batches {
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

    /// Once this fenced instance has written (so it holds the fence and no other instance can
    /// be staging any more), lists an unfinished stage found at open and queues its keys as
    /// garbage, deleted by later fenced writes. One read, only after a crash left a stage.
    fn collect_leftover(&self, inner: &mut Inner) {
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
        let r = self.commit_pages(&mut inner, pages.clone());
        if r.is_err() {
            // Keep the bracket open so ROLLBACK_ATOMIC_WRITE restores the old size.
            inner.batch = Some((pages, before));
        }
        r
    }

    fn commit_pages(
        &self,
        inner: &mut Inner,
        mut pages: BTreeMap<u32, Vec<u8>>,
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
        let fits_one = self.fits_one_write(pages.len(), meta.chunk_size as usize, &meta, &extra);
        let r = self.commit_pages_inner(inner, pages, meta, new_garbage, extra.clone(), fits_one);
        if r.is_err() {
            self.restore_extra(extra);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn commit_pages_inner(
        &self,
        inner: &mut Inner,
        pages: BTreeMap<u32, Vec<u8>>,
        mut meta: Meta,
        new_garbage: Vec<Key>,
        extra: Vec<(Key, Vec<u8>)>,
        fits_one: bool,
    ) -> Result<(), VfsError> {
        let limits = self.write_limits();
        let cs = meta.chunk_size as usize;
        let page_cost = 7 + cs;
        let extra_bytes: usize = extra.iter().map(|(k, v)| k.len() + v.len()).sum();
        let extra_entries = extra.len();
        let mut staged: Vec<u32> = Vec::new();
        let stage_id = inner.next_stage.max(meta.next_stage);
        if fits_one {
            let puts: Vec<_> = pages
                .iter()
                .map(|(&i, c)| (layout::chunk_key(FileKind::Main, i), c.clone()))
                .collect();
            let mut all = puts;
            all.extend(extra);
            all.push((layout::meta_key(FileKind::Main), meta.encode()));
            self.write_batches(inner, Vec::new(), all, &new_garbage)?;
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
            final_puts.extend(extra);
            final_puts.push((layout::meta_key(FileKind::Main), meta.encode()));
            let mut batches =
                commit::pack(stage_puts, Vec::new(), &limits).map_err(VfsError::TooBig)?;
            batches.retain(|b| !b.is_empty());
            for b in &batches {
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
                kv_delete_range(&self.kv, &self.stats, &start, Some(&end))
            } else {
                let from = chunk_index(new_count).unwrap_or(u32::MAX);
                let to = old_count.min(u32::MAX as u64) as u32;
                self.fenced_deletes((from..to).map(|i| layout::chunk_key(kind, i)).collect())
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
            let result = if !self.fenced() {
                kv_delete_range(&self.kv, &self.stats, &s, Some(&e))
            } else {
                // A fenced database deletes with fenced writes: metadata first (that is the
                // delete), then the chunks it covered.
                let count = inner.file(kind).meta.chunk_count().min(u32::MAX as u64) as u32;
                let mut keys = vec![layout::meta_key(kind)];
                keys.extend((0..count).map(|i| layout::chunk_key(kind, i)));
                self.fenced_deletes(keys)
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

    /// Deletes `keys` in order with writes that carry the fence, as few as the limits allow.
    fn fenced_deletes(&self, keys: Vec<Key>) -> Result<(), KvError> {
        let limits = self.write_limits();
        let mut batch = WriteBatch::default();
        let mut bytes = 0;
        for k in keys {
            if batch.deletes.len() + 1 > limits.max_write_entries
                || bytes + k.len() > limits.max_write_bytes
            {
                self.kv_write(&std::mem::take(&mut batch))?;
                bytes = 0;
            }
            bytes += k.len();
            batch.deletes.push(k);
        }
        if !batch.deletes.is_empty() {
            self.kv_write(&batch)?;
        }
        Ok(())
    }

    /// Counts a journal fallback (called on a journal file's first write).
    pub fn note_journal_fallback(&self) {
        self.stats.add(&self.stats.journal_fallbacks, 1);
    }

    // ----- locks (in-process) -----

    /// Raises `handle`'s lock from `current` to `level`; `Ok(false)` means busy (the handle
    /// keeps what it has, possibly PENDING on the way to EXCLUSIVE). Returns the new level.
    pub fn lock(&self, handle: u64, current: i32, level: i32) -> (bool, i32) {
        let mut inner = self.inner.lock();
        let l = &mut inner.locks;
        if current >= level {
            return (true, current);
        }
        match level {
            lock::SHARED => {
                if l.exclusive.is_some() || l.pending.is_some_and(|h| h != handle) {
                    return (false, current);
                }
                l.shared += 1;
                (true, lock::SHARED)
            }
            lock::RESERVED => {
                if l.reserved.is_some_and(|h| h != handle) {
                    return (false, current);
                }
                l.reserved = Some(handle);
                inner.write_started = true;
                (true, lock::RESERVED)
            }
            _ => {
                if l.reserved.is_some_and(|h| h != handle) || l.pending.is_some_and(|h| h != handle)
                {
                    return (false, current);
                }
                inner.write_started = true;
                let l = &mut inner.locks;
                l.reserved = Some(handle);
                l.pending = Some(handle);
                if l.shared > 1 {
                    return (false, lock::PENDING);
                }
                l.exclusive = Some(handle);
                (true, lock::EXCLUSIVE)
            }
        }
    }

    /// Lowers `handle`'s lock from `current` to `level` (SHARED or NONE).
    pub fn unlock(&self, handle: u64, current: i32, level: i32) -> i32 {
        let mut inner = self.inner.lock();
        if level >= current {
            return current;
        }
        let l = &mut inner.locks;
        if level <= lock::SHARED {
            if l.reserved == Some(handle) {
                l.reserved = None;
            }
            if l.pending == Some(handle) {
                l.pending = None;
            }
            if l.exclusive == Some(handle) {
                l.exclusive = None;
            }
        }
        if level == lock::NONE && current >= lock::SHARED {
            l.shared = l.shared.saturating_sub(1);
        }
        level
    }

    /// True when any connection holds RESERVED or more.
    pub fn reserved(&self) -> bool {
        let inner = self.inner.lock();
        inner.locks.reserved.is_some() || inner.locks.exclusive.is_some()
    }

    // ----- recovery after a failed write -----

    fn reload_if_needed(&self, inner: &mut Inner) -> Result<(), VfsError> {
        if !inner.needs_reload {
            return Ok(());
        }
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

    fn apply_to_preload(&self, inner: &mut Inner, b: &WriteBatch) {
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

/// Adds a zero chunk for every index in `[durable, count)` that `chunks` lacks: a file grown
/// by writing only its last page must not leave chunks the metadata says exist but the store
/// lacks.
fn fill_gap(chunks: &mut BTreeMap<u32, Vec<u8>>, durable: u64, count: u64, cs: u32) {
    for i in durable..count {
        if let Ok(i) = u32::try_from(i) {
            chunks.entry(i).or_insert_with(|| vec![0; cs as usize]);
        }
    }
}

/// Removes overlay entries at or past the file's chunk count; returns their stage keys.
fn drop_overlay_past_end(meta: &mut Meta) -> Vec<Key> {
    let count = meta.chunk_count().min(u32::MAX as u64) as u32;
    let past: Vec<(u32, u64)> = meta.overlay.range(count..).map(|(&i, &s)| (i, s)).collect();
    past.into_iter()
        .map(|(i, s)| {
            meta.overlay.remove(&i);
            layout::stage_key(s, i)
        })
        .collect()
}

fn chunk_index(i: u64) -> Result<u32, VfsError> {
    u32::try_from(i).map_err(|_| VfsError::TooBig(format!("offset past 2^32 chunks (chunk {i})")))
}

fn check_chunk(kind: FileKind, idx: u32, len: usize, cs: usize) -> Result<(), VfsError> {
    if len != cs {
        return Err(VfsError::Corrupt(format!(
            "{} chunk {idx} holds {len} bytes, expected {cs}",
            kind.name()
        )));
    }
    Ok(())
}

fn kv_batch_read(kv: &ActorKv, stats: &Stats, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
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

fn kv_delete_range(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryStore;

    fn state() -> DbState {
        let kv = ActorKv::new(Arc::new(MemoryStore::new()), "unit").unwrap();
        DbState::open(kv, StateOptions::default(), None).unwrap()
    }

    #[test]
    fn short_reads_zero_fill_and_report_the_bytes_inside() {
        let s = state();
        s.create(FileKind::Journal);
        s.write(FileKind::Journal, 0, &[7u8; 100]).unwrap();
        let mut buf = [0xFFu8; 300];
        assert_eq!(s.read(FileKind::Journal, 50, &mut buf).unwrap(), 50);
        assert!(buf[..50].iter().all(|&b| b == 7));
        assert!(buf[50..].iter().all(|&b| b == 0));
        // Durable after sync, and still short past the end.
        s.sync(FileKind::Journal).unwrap();
        let mut buf = [0xFFu8; 10];
        assert_eq!(s.read(FileKind::Journal, 95, &mut buf).unwrap(), 5);
        assert_eq!(buf, [7, 7, 7, 7, 7, 0, 0, 0, 0, 0]);
        assert_eq!(s.read(FileKind::Journal, 1000, &mut buf).unwrap(), 0);
    }

    #[test]
    fn writes_spanning_chunks_and_truncation() {
        let s = state();
        s.create(FileKind::Journal);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        s.write(FileKind::Journal, 3000, &data).unwrap();
        s.sync(FileKind::Journal).unwrap();
        let mut buf = vec![0u8; 10_000];
        assert_eq!(s.read(FileKind::Journal, 3000, &mut buf).unwrap(), 10_000);
        assert_eq!(buf, data);
        let mut head = vec![1u8; 3000];
        s.read(FileKind::Journal, 0, &mut head).unwrap();
        assert!(head.iter().all(|&b| b == 0));
        s.truncate(FileKind::Journal, 5000).unwrap();
        assert_eq!(s.file_size(FileKind::Journal).unwrap(), 5000);
        // Growing again reads zeros where the old bytes were.
        s.write(FileKind::Journal, 6000, &[9]).unwrap();
        let mut mid = vec![1u8; 1000];
        s.read(FileKind::Journal, 5000, &mut mid).unwrap();
        assert!(mid.iter().all(|&b| b == 0));
        s.delete(FileKind::Journal).unwrap();
        assert!(!s.exists(FileKind::Journal));
    }
}

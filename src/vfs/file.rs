//! The state of one database (one actor on one store) and every I/O operation on its files.
//!
//! Why it exists: all connections to one database share one [`DbState`] — its metadata, page
//! cache, preload, buffered writes, commit buffer and in-process locks — so they see one
//! consistent file and SQLite's locking works as it expects. Every KV call the VFS makes goes
//! through the `kv_*` methods (`file/kv_io.rs`), which count it in the database's [`Stats`].
//! The FFI layer (`ffi.rs`) only translates callbacks into calls on this type.
//!
//! This file holds the state's types, its `open`, and small accessors; the operations live in
//! child modules: `read_path`, `commit_path` (writes and commits), `truncate` (and delete),
//! `locks`, `recovery` (reload, flush), `hooks` (fence, commit hook, extra puts), `kv_io`, and
//! `actor_io` (what the actor layer asks beyond SQLite's I/O).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use parking_lot::Mutex;

use super::cache::PageCache;
use super::codec;
use super::fence::{FenceSpec, MovingFence};
use super::history::HistoryOptions;
use super::hold::Held;
use super::layout::{self, FileKind, LayoutError, Meta};
use super::stats::Stats;
use crate::kv::{ActorKv, Key, KeyRange, KvError, ListRequest, Precondition, ReadOp, ReadResult};
use crate::preload::{First, Lookup, Preload};

mod actor_io;
mod commit_path;
mod history_io;
mod hooks;
mod kv_io;
mod locks;
mod pipeline;
mod read_path;
mod recovery;
mod truncate;

use kv_io::{kv_batch_read, kv_delete_range};

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
    /// The history cannot answer: no such bookmark or seq, a time before the window, history
    /// off (see [`super::history`]).
    History(String),
    /// A pipelined commit's put failed or its outcome is unknown (see
    /// [`super::OpenOptions::pipelined`]): the commits queued behind it were not written, and
    /// this instance refuses every later operation (wake the actor again).
    Poisoned(String),
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
            VfsError::History(m) => write!(f, "history: {m}"),
            VfsError::Poisoned(m) => write!(f, "database poisoned: {m}"),
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
    /// Report `SQLITE_IOCAP_BATCH_ATOMIC` for the main file (see
    /// [`super::OpenOptions::batch_atomic`]).
    pub batch_atomic: bool,
    /// How much history commits keep (see [`super::history`]).
    pub history: HistoryOptions,
    /// Queue each one-put commit and return (see [`super::OpenOptions::pipelined`]).
    pub pipelined: bool,
    /// Send page values LZ4-compressed where that is shorter (see [`super::codec`]).
    pub compress: bool,
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
            batch_atomic: true,
            history: HistoryOptions::default(),
            pipelined: false,
            compress: true,
        }
    }
}

/// Chunks the open fetches from the start of the file (with the metadata, in its one round
/// trip); a miss right after them continues that run as a sequential read.
pub const READ_AHEAD_START: u32 = 4;

/// The smallest window of a sequential run's read-ahead (a miss right after the last fetch).
pub const READ_AHEAD_SEQ_START: u32 = 8;

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
    /// Read-ahead: the chunk right after the current sequential run's last fetch, and that
    /// fetch's window.
    ra_next: u32,
    ra_window: u32,
    /// Read-ahead: the chunk right after the last lone (one-chunk) miss.
    ra_single: u32,
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
            ra_single: u32::MAX,
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
    /// The history header of the last main-file write made while a rollback journal existed,
    /// without its "incomplete" flag: written when the journal is deleted (the commit point).
    pending_complete: Option<(Key, Vec<u8>)>,
}

/// The main-file chunks a database read recently (the actor layer's hot-page hints).
#[derive(Debug, Default)]
struct ReadLog {
    clock: u64,
    pages: std::collections::HashMap<
        u32,
        u64,
        std::hash::BuildHasherDefault<super::cache::ChunkHasher>,
    >,
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
    /// Commits queued or in flight (see `file/pipeline.rs`).
    pipe: pipeline::Pipeline,
    /// What the history holds, known without a KV call (see [`super::history::watch`]).
    watch: Mutex<super::history::watch::Watch>,
    /// Pages the last commits encoded for their history, taken back by their write (see
    /// [`super::codec::EncodedPages`]).
    encoded: Mutex<super::codec::EncodedPages>,
}

/// What the state tells its commit hook: a hash of the main file's stored metadata and page 1
/// after a write, or `None` when a write failed and the store's contents are uncertain.
pub type Fingerprint = Option<u64>;

/// Called with the new [`Fingerprint`] after each write to the main file (while the state's
/// lock is held, so calls are in commit order).
pub type CommitHook = Box<dyn Fn(Fingerprint) + Send + Sync>;

/// FNV-1a over the main file's stored metadata (absent or its bytes) and page 1 (decoded: the
/// same page stored raw or compressed has one fingerprint).
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
                Lookup::Found(page1) => {
                    let page1 = codec::decode(page1, meta.chunk_size as usize).ok()?;
                    Some(fingerprint_of(Some(raw), Some(&page1)))
                }
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
        let mut main = main;
        for (i, v) in prefetched {
            // A malformed chunk is left out here and reported when (if) it is read.
            let Ok(v) = codec::decode_owned(v, main.cs()) else {
                continue;
            };
            if (i as u64) < count && !main.meta.overlay.contains_key(&i) {
                cache.insert((FileKind::Main, i), v, i != 0);
                used_prefetch += (i != 0) as u64;
                // A miss right after the chunks the open fetched continues their run.
                main.ra_next = i + 1;
                main.ra_window = READ_AHEAD_START;
            }
        }
        stats.add(&stats.readahead_prefetched, used_prefetch);
        let watch = Mutex::new(super::history::watch::Watch::at_open(main.meta.hist_start));
        Ok(DbState {
            watch,
            encoded: Mutex::new(super::codec::EncodedPages::default()),
            kv,
            stats,
            fence: Mutex::new(Vec::new()),
            extra: Mutex::new(Vec::new()),
            commit_hook: Mutex::new(None),
            pipe: pipeline::Pipeline::default(),
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
                pending_complete: None,
            }),
            moving: Mutex::new(opts.fence.clone().map(MovingFence::new)),
            moved: AtomicBool::new(false),
            held: Mutex::new(opts.hold.then(Held::default)),
            opts,
        })
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
        inner.main.ra_single = u32::MAX;
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

    /// The main file's logical size as this process last knew it, without a KV call: `None`
    /// while the metadata must be reloaded from the store first.
    pub fn known_main_size(&self) -> Option<u64> {
        let inner = self.inner.lock();
        (!inner.needs_reload).then_some(inner.main.size)
    }

    /// The logical size of a file.
    pub fn file_size(&self, kind: FileKind) -> Result<u64, VfsError> {
        let mut inner = self.inner.lock();
        self.reload_if_needed(&mut inner)?;
        Ok(inner.file(kind).size)
    }
}

fn chunk_index(i: u64) -> Result<u32, VfsError> {
    u32::try_from(i).map_err(|_| VfsError::TooBig(format!("offset past 2^32 chunks (chunk {i})")))
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

    /// With history and page compression on (the defaults) a commit sends each page twice, as
    /// its page value and as the history's image, and LZ4 runs once per page: the image is
    /// the value's block. Held for a one-row commit, a commit of a few dozen pages and one
    /// too big for one put (staged).
    #[test]
    fn each_page_a_commit_writes_is_compressed_once() {
        let store: crate::kv::SharedStore = Arc::new(MemoryStore::new());
        let db =
            crate::vfs::open_database(store, "once", &crate::vfs::OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")
            .unwrap();
        let mut staged = 0;
        for rows in [1, 2_000, 20_000] {
            let (before, encoded) = (db.snapshot(), codec::encoded_on_this_thread());
            db.execute_batch(&format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
                 INSERT INTO t(b) SELECT printf('row %d of a commit of {rows}', i) FROM n"
            ))
            .unwrap();
            let cost = db.snapshot() - before;
            let encoded = codec::encoded_on_this_thread() - encoded;
            assert!(cost.pages_written >= 1, "{rows} rows: {cost:?}");
            assert_eq!(encoded, cost.pages_written, "{rows} rows: {cost:?}");
            // Every page written has its image in the history.
            assert_eq!(
                cost.history_image_bytes,
                cost.pages_written * 4096,
                "{rows} rows: {cost:?}"
            );
            staged += cost.staged_commits;
        }
        assert_eq!(staged, 1, "the 20,000-row commit is staged");
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

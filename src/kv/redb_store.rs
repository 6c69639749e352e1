//! The `redb` backend: the embedded, persistent default store. One file holds many actors.
//!
//! Why it exists: a single-machine deployment needs a durable store with real transactions and
//! no server. redb gives ACID write transactions with an fsync on commit, and consistent
//! snapshot reads.
//!
//! Layout (format version [`FORMAT_VERSION`], recorded in the table `kvsqlite_meta`): one
//! table, `kvsqlite_kv`, for every actor. Its keys are
//! `u16 big-endian actor length ‖ actor bytes ‖ key`: within one actor, composite keys order
//! exactly as the raw keys do, and an actor's keys are exactly the composite keys starting with
//! `length ‖ actor` (no actor id is a prefix of another's encoding), so prefix lists are exact.
//! Each stored value is `value ‖ CRC-32 (little-endian) of composite key ‖ value`: redb does not
//! checksum its data pages, so without this a flipped bit on disk would be read back as data.
//! A mismatch is reported as [`KvError::Backend`] naming the file and key, never returned as a
//! value.
//!
//! Guarantees:
//! - A `write` (or `delete_range`) is applied inside a redb write transaction: its preconditions
//!   are checked there, then all its puts and deletes are applied, and the transaction is
//!   committed with [`redb::Durability::Immediate`] (fsync) before the call returns; an unmet
//!   precondition applies nothing of that write.
//! - **Group commit** (on by default, [`RedbOptions::group_commit`]): writes that arrive while a
//!   transaction is committing wait, and the next transaction carries all of them (one fsync for
//!   many; see the `group` module). Each keeps its own all-or-nothing and its own preconditions,
//!   checked in arrival order against the state the earlier writes of the group left, so one
//!   actor's unmet precondition fails that write alone. Limits are checked per write before it
//!   is queued. An error of the transaction itself (I/O, a full disk, a panic inside redb) is
//!   reported to every write of the group, none of which was acknowledged; the group stays
//!   all-or-nothing as a whole (after a failed fsync, a reopen shows every write of it that met
//!   its preconditions, or none, as for any failed commit). With group commit off,
//!   every write is its own transaction and fsync (the baseline `kvsqlite bench actors` measures).
//! - A write with no puts or deletes only checks its preconditions, in a read transaction.
//! - Each read call (`get`, `list`, `batch_read`) runs in one read transaction, so a batch read
//!   sees one consistent snapshot.
//! - In one process, opening the same path again shares the open database (a registry of weak
//!   handles keyed by canonical path), so tests and the VFS may open a store from many places.
//! - Another process holding the file gets [`KvError::Locked`] naming the file. A file that is
//!   not a redb database, or is corrupt, gets [`KvError::Backend`] naming the file.

mod group;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use redb::{
    Database, DatabaseError, MultimapTableHandle, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};

use super::{
    check_actor_id, check_batch_read, key_after, prefix_successor, range_is_empty, KvError,
    KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, Value, WriteBatch,
};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kvsqlite_kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("kvsqlite_meta");
const FORMAT_KEY: &str = "format_version";

/// The on-disk layout version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) of the parts in sequence: the
/// checksum every stored value carries. `crc32fast` computes the same function with carry-less
/// multiplication where the CPU has it (SSE4.2/PCLMULQDQ on x86-64, the CRC instructions on
/// AArch64), a table otherwise: files written by the earlier table-driven code read unchanged.
/// It was the largest single cost of a commit's CPU time (17% of a redb commit's profile, more
/// than redb's own B-tree work: `cargo bench --bench store_engines`).
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for part in parts {
        h.update(part);
    }
    h.finalize()
}

/// `value ‖ crc32(composite ‖ value)`: what is stored for `value` under `composite`.
fn seal(composite: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(value);
    out.extend_from_slice(&crc32(&[composite, value]).to_le_bytes());
    out
}

/// The value stored under `composite`, checked against its checksum; `None` if it is damaged.
fn unseal<'a>(composite: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    let split = stored.len().checked_sub(4)?;
    let (value, sum) = stored.split_at(split);
    let sum = u32::from_le_bytes(sum.try_into().ok()?);
    (crc32(&[composite, value]) == sum).then_some(value)
}

/// The error for a stored entry whose checksum does not match: names the file, actor and key.
fn damaged(path: &Path, composite: &[u8]) -> KvError {
    let len = composite
        .get(..2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let what = match (composite.get(2..2 + len), composite.get(2 + len..)) {
        (Some(actor), Some(key)) => format!(
            "actor {} key {}",
            super::display_key(actor),
            super::display_key(key)
        ),
        _ => format!("composite key {}", super::display_key(composite)),
    };
    err_at(path, format!("corrupt entry (checksum mismatch) at {what}"))
}
const BACKEND: &str = "redb";

/// Most writes one group-commit transaction carries.
const MAX_GROUP_WRITES: usize = 1024;
/// Most key and value bytes one group-commit transaction carries (a single larger write still
/// goes alone).
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Options of a redb store, also given in its URL (`redb:PATH?group_commit=off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedbOptions {
    /// Commit the writes that arrive while a transaction is committing together in the next one
    /// (default `true`). `false`: one transaction, and one fsync, per write.
    pub group_commit: bool,
}

impl Default for RedbOptions {
    fn default() -> Self {
        RedbOptions { group_commit: true }
    }
}

/// Counters of the write transactions committed on one file by this process (every handle on
/// it, group commit on or off), to measure how many writes share an fsync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// redb write transactions committed for writes and range deletes (each one fsync).
    pub transactions: u64,
    /// Writes and range deletes those transactions applied (a write whose precondition failed
    /// is not counted).
    pub writes: u64,
    /// Groups taken off the group-commit queue by a leader so far (committed, failed or being
    /// committed).
    pub groups_started: u64,
    /// Writes waiting in the group-commit queue right now.
    pub queued: usize,
}

/// A write prepared by its caller's thread for the transaction that carries it: keys encoded,
/// values sealed with their checksum, so a leader only checks and inserts.
enum Prepared {
    Write {
        /// `(composite key, expected value, raw key)`.
        preconditions: Vec<(Vec<u8>, Option<Value>, Vec<u8>)>,
        deletes: Vec<Vec<u8>>,
        /// `(composite key, sealed value)`.
        puts: Vec<(Vec<u8>, Vec<u8>)>,
    },
    DeleteRange {
        lo: Vec<u8>,
        hi: Option<Vec<u8>>,
    },
}

/// One open database file, shared by every [`RedbStore`] of this process that names it.
struct SharedDb {
    db: Option<Database>,
    path: PathBuf,
    group: group::GroupCommit<Prepared>,
    transactions: AtomicU64,
    writes: AtomicU64,
}

impl SharedDb {
    fn new(db: Database, path: PathBuf) -> Self {
        SharedDb {
            db: Some(db),
            path,
            group: group::GroupCommit::new(MAX_GROUP_WRITES, MAX_GROUP_BYTES, BACKEND),
            transactions: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    fn db(&self) -> &Database {
        // `db` is only taken in `drop`.
        self.db.as_ref().expect("database is open until dropped")
    }
}

impl Drop for SharedDb {
    fn drop(&mut self) {
        // Close the file while holding the registry lock, then forget the entry, so an opener
        // never finds the entry gone while the file is still locked by this handle.
        let mut reg = registry().lock();
        drop(self.db.take());
        if let Some(w) = reg.get(&self.path) {
            if std::ptr::eq(w.as_ptr(), self) {
                reg.remove(&self.path);
            }
        }
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<SharedDb>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<SharedDb>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// A store in one redb file. Cheap to clone through `Arc`; thread-safe.
pub struct RedbStore {
    shared: Arc<SharedDb>,
    limits: KvLimits,
    options: RedbOptions,
}

/// Returned by [`RedbStore::hold_commits`]: while it lives, no group of this file's
/// group-commit queue is taken or committed, so writers queue up.
pub struct CommitHold<'a> {
    _gate: parking_lot::MutexGuard<'a, ()>,
}

fn err_at(path: &Path, e: impl std::fmt::Display) -> KvError {
    KvError::Backend {
        backend: BACKEND,
        message: format!("{}: {e}", path.display()),
    }
}

/// The absolute path of `path` whose parent exists: the registry key.
fn canonical(path: &Path) -> Result<PathBuf, KvError> {
    let file = path.file_name().ok_or_else(|| KvError::Unavailable {
        backend: BACKEND,
        message: format!("{} does not name a file", path.display()),
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| {
        // "File exists" alone does not say which part of the path is in the way.
        let why = match parent.ancestors().find(|a| a.is_file()) {
            Some(file) => format!("{} is a file, not a directory", file.display()),
            None => e.to_string(),
        };
        KvError::Unavailable {
            backend: BACKEND,
            message: format!("cannot create directory {}: {why}", parent.display()),
        }
    })?;
    let parent = parent.canonicalize().map_err(|e| KvError::Unavailable {
        backend: BACKEND,
        message: format!("cannot resolve {}: {e}", parent.display()),
    })?;
    Ok(parent.join(file))
}

fn open_database(path: &Path) -> Result<Database, KvError> {
    if path.is_dir() {
        return Err(err_at(path, "is a directory, not a redb file"));
    }
    // redb's debug builds assert on some corruptions; never let that unwind into the caller.
    std::panic::catch_unwind(|| open_database_unguarded(path)).unwrap_or_else(|_| {
        Err(err_at(
            path,
            "the file is corrupt (redb panicked opening it)",
        ))
    })
}

fn open_database_unguarded(path: &Path) -> Result<Database, KvError> {
    let db = Database::create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => KvError::Locked {
            what: path.display().to_string(),
        },
        DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            err_at(path, format!("not a redb database ({io})"))
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => KvError::Unavailable {
            backend: BACKEND,
            message: format!("{}: {io}", path.display()),
        },
        other => err_at(path, other),
    })?;
    init_tables(db, path)
}

/// Creates the tables of a new store, or checks those of an existing one; returns `db` ready.
fn init_tables(db: Database, path: &Path) -> Result<Database, KvError> {
    // Create the tables once so read transactions always find them, and check the layout
    // version (a file without one is new: nothing else writes our tables). A redb file that
    // holds other tables belongs to another program: refuse it rather than add ours to it (the
    // transaction is dropped uncommitted, so nothing is written).
    let txn = db.begin_write().map_err(|e| err_at(path, e))?;
    let mut foreign: Vec<String> = txn
        .list_tables()
        .map_err(|e| err_at(path, e))?
        .map(|t| t.name().to_string())
        .chain(
            txn.list_multimap_tables()
                .map_err(|e| err_at(path, e))?
                .map(|t| t.name().to_string()),
        )
        .filter(|n| n != TABLE.name() && n != META.name())
        .collect();
    {
        let mut meta = txn.open_table(META).map_err(|e| err_at(path, e))?;
        let found = meta
            .get(FORMAT_KEY)
            .map_err(|e| err_at(path, e))?
            .map(|v| v.value());
        match found {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(err_at(
                    path,
                    format!(
                        "kvsqlite store format version {other}; this build reads version {FORMAT_VERSION}"
                    ),
                ))
            }
            None if !foreign.is_empty() => {
                foreign.sort();
                return Err(err_at(
                    path,
                    format!(
                        "a redb database of another program (its tables: {}), not a kvsqlite \
                         store; nothing was written",
                        foreign.join(", ")
                    ),
                ));
            }
            None => {
                meta.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(|e| err_at(path, e))?;
            }
        }
        txn.open_table(TABLE).map_err(|e| err_at(path, e))?;
    }
    txn.commit().map_err(|e| err_at(path, e))?;
    Ok(db)
}

impl RedbStore {
    /// Opens (creating it and its parent directories if needed) the redb file at `path`, with
    /// the default options (group commit on).
    ///
    /// Within one process, every store opened on the same file shares one database. Another
    /// process holding it → [`KvError::Locked`]; not a redb file or corrupt → [`KvError::Backend`].
    pub fn open(path: impl AsRef<Path>, limits: KvLimits) -> Result<RedbStore, KvError> {
        Self::open_with(path, limits, RedbOptions::default())
    }

    /// [`RedbStore::open`] with options. Options belong to the handle: two handles on one file
    /// may differ (the benchmark writes through one with group commit and one without).
    pub fn open_with(
        path: impl AsRef<Path>,
        limits: KvLimits,
        options: RedbOptions,
    ) -> Result<RedbStore, KvError> {
        let path = canonical(path.as_ref())?;
        // A handle being dropped on another thread still holds the file until its `drop` ends;
        // wait for that (it takes the registry lock) instead of reporting a lock conflict.
        let mut waited = 0;
        loop {
            let mut reg = registry().lock();
            match reg.get(&path).map(Weak::upgrade) {
                Some(Some(shared)) => {
                    return Ok(RedbStore {
                        shared,
                        limits,
                        options,
                    })
                }
                Some(None) if waited < 10_000 => {
                    drop(reg);
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_micros(100));
                    continue;
                }
                _ => {}
            }
            let db = open_database(&path)?;
            let shared = Arc::new(SharedDb::new(db, path.clone()));
            reg.insert(path, Arc::downgrade(&shared));
            return Ok(RedbStore {
                shared,
                limits,
                options,
            });
        }
    }

    /// The options of this handle.
    pub fn options(&self) -> RedbOptions {
        self.options
    }

    /// The same file through a handle with other options (the database stays shared).
    pub fn with_options(&self, options: RedbOptions) -> RedbStore {
        RedbStore {
            shared: Arc::clone(&self.shared),
            limits: self.limits,
            options,
        }
    }

    /// Write-transaction counters of this file in this process.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            transactions: self.shared.transactions.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            groups_started: self.shared.group.taken(),
            queued: self.shared.group.queued(),
        }
    }

    /// Holds back every group commit of this file (in this process) until the returned guard is
    /// dropped: a leader waits before taking its group off the queue, so every writer that
    /// arrives meanwhile queues, and on release they form one group (up to 1,024 writes or
    /// 64 MiB), in arrival order. For tests that need writers gathered in one known group
    /// ([`CommitStats::queued`] tells how many are waiting); writes through a handle with group
    /// commit off, and writes with nothing to write, are not held. Never hold it while writing
    /// through the same file on the same thread: that write would wait for the guard forever.
    pub fn hold_commits(&self) -> CommitHold<'_> {
        CommitHold {
            _gate: self.shared.group.hold(),
        }
    }

    /// The canonical path of the file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn err(&self, e: impl std::fmt::Display) -> KvError {
        err_at(&self.shared.path, e)
    }

    /// Runs one call, turning a panic inside redb (its debug builds assert on some corrupt
    /// files) into an error naming the file instead of unwinding into the caller.
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T, KvError>) -> Result<T, KvError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
            let what = group::panic_message(&*payload);
            Err(self.err(format!("redb failed on a corrupt file: {what}")))
        })
    }
}

/// `len ‖ actor ‖ key`.
fn encode(actor: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + actor.len() + key.len());
    // Actor ids are at most 512 bytes (check_actor_id), so the length fits a u16.
    out.extend_from_slice(&(actor.len() as u16).to_be_bytes());
    out.extend_from_slice(actor.as_bytes());
    out.extend_from_slice(key);
    out
}

/// Composite bounds of `[start, end)` within one actor.
fn bounds(actor: &str, start: &[u8], end: Option<&[u8]>) -> (Vec<u8>, Option<Vec<u8>>) {
    let lo = encode(actor, start);
    let hi = match end {
        Some(e) => Some(encode(actor, e)),
        None => prefix_successor(&encode(actor, &[])),
    };
    (lo, hi)
}

fn list_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    path: &Path,
    table: &T,
    actor: &str,
    limit: usize,
    req: &ListRequest,
) -> Result<ListPage, KvError> {
    let (start, end) = req.range.bounds();
    let mut page = ListPage::default();
    if range_is_empty(&start, end.as_deref()) {
        return Ok(page);
    }
    let (lo, hi) = bounds(actor, &start, end.as_deref());
    let strip = 2 + actor.len();
    let upper = match &hi {
        Some(h) => Bound::Excluded(h.as_slice()),
        None => Bound::Unbounded,
    };
    let mut bytes = 0usize;
    let range = table
        .range::<&[u8]>((Bound::Included(lo.as_slice()), upper))
        .map_err(|e| err_at(path, e))?;
    for item in range {
        let (k, v) = item.map_err(|e| err_at(path, e))?;
        let over_budget = !page.entries.is_empty() && req.max_bytes.is_some_and(|m| bytes >= m);
        if page.entries.len() == limit || over_budget {
            page.next_start = page.entries.last().map(|(k, _)| key_after(k));
            break;
        }
        let composite = k.value();
        let key = composite
            .get(strip..)
            .ok_or_else(|| damaged(path, composite))?
            .to_vec();
        let value = unseal(composite, v.value())
            .ok_or_else(|| damaged(path, composite))?
            .to_vec();
        bytes += key.len() + value.len();
        page.entries.push((key, value));
    }
    Ok(page)
}

/// The checked value under `composite`, if any.
fn get_one<T: ReadableTable<&'static [u8], &'static [u8]>>(
    path: &Path,
    table: &T,
    composite: &[u8],
) -> Result<Option<Value>, KvError> {
    match table.get(composite).map_err(|e| err_at(path, e))? {
        None => Ok(None),
        Some(stored) => unseal(composite, stored.value())
            .map(|v| Some(v.to_vec()))
            .ok_or_else(|| damaged(path, composite)),
    }
}

fn get_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    path: &Path,
    table: &T,
    actor: &str,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Value>>, KvError> {
    keys.iter()
        .map(|k| get_one(path, table, &encode(actor, k)))
        .collect()
}

/// Checks a write's preconditions: `Conflict` naming the first unmet one, or the error of
/// reading it (a damaged entry, a failed read).
fn check_preconditions<T: ReadableTable<&'static [u8], &'static [u8]>>(
    path: &Path,
    table: &T,
    preconditions: &[(Vec<u8>, Option<Value>, Vec<u8>)],
) -> Result<(), KvError> {
    for (composite, expected, key) in preconditions {
        if get_one(path, table, composite)? != *expected {
            return Err(KvError::Conflict { key: key.clone() });
        }
    }
    Ok(())
}

impl RedbStore {
    fn do_get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        check_actor_id(actor)?;
        self.limits.check_get(keys)?;
        let txn = self.shared.db().begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        get_table(self.path(), &table, actor, keys)
    }

    fn do_list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        check_actor_id(actor)?;
        let limit = self.limits.list_limit(req.limit)?;
        let txn = self.shared.db().begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        list_table(self.path(), &table, actor, limit, req)
    }

    fn do_write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        check_actor_id(actor)?;
        self.limits.check_write(batch)?;
        batch.check_distinct()?;
        let preconditions = batch
            .preconditions
            .iter()
            .map(|p| (encode(actor, &p.key), p.expected.clone(), p.key.clone()))
            .collect::<Vec<_>>();
        if batch.is_empty() {
            // Nothing to write: only the preconditions' answer, from the latest commit.
            let txn = self.shared.db().begin_read().map_err(|e| self.err(e))?;
            let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
            return check_preconditions(self.path(), &table, &preconditions);
        }
        let mut weight = 0usize;
        let deletes = batch
            .deletes
            .iter()
            .map(|k| {
                weight += k.len();
                encode(actor, k)
            })
            .collect();
        let puts = batch
            .puts
            .iter()
            .map(|(k, v)| {
                weight += k.len() + v.len();
                let composite = encode(actor, k);
                let sealed = seal(&composite, v);
                (composite, sealed)
            })
            .collect();
        self.submit(
            Prepared::Write {
                preconditions,
                deletes,
                puts,
            },
            weight,
        )
    }

    fn do_delete_range(
        &self,
        actor: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), KvError> {
        check_actor_id(actor)?;
        if range_is_empty(start, end) {
            return Ok(());
        }
        let (lo, hi) = bounds(actor, start, end);
        self.submit(Prepared::DeleteRange { lo, hi }, 0)
    }

    /// Commits one prepared write: through the group-commit queue, or alone.
    fn submit(&self, write: Prepared, weight: usize) -> Result<(), KvError> {
        if !self.options.group_commit {
            let mut results = self.commit_group(&[&write])?;
            return results
                .pop()
                .unwrap_or_else(|| Err(self.err("a commit returned no result; outcome unknown")));
        }
        self.shared
            .group
            .submit(write, weight, |group| self.commit_group(group))
    }

    /// One redb write transaction applying `group` in order: each write's preconditions are
    /// checked against the state the earlier ones left, and an unmet one skips that write
    /// alone. Returns each write's result, or one error for the whole group when the
    /// transaction itself fails (then nothing of the group is acknowledged, and the
    /// transaction is all-or-nothing as a whole).
    fn commit_group(&self, group: &[&Prepared]) -> group::GroupOutcome {
        let mut txn = self.shared.db().begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| self.err(e))?;
        let mut results = Vec::with_capacity(group.len());
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
            for write in group {
                results.push(self.apply(&mut table, write)?);
            }
        }
        let applied = results.iter().filter(|r| r.is_ok()).count() as u64;
        if applied == 0 {
            // Every write was refused: nothing to make durable.
            txn.abort().map_err(|e| self.err(e))?;
            return Ok(results);
        }
        txn.commit().map_err(|e| self.err(e))?;
        self.shared.transactions.fetch_add(1, Ordering::Relaxed);
        self.shared.writes.fetch_add(applied, Ordering::Relaxed);
        Ok(results)
    }

    /// Applies one write inside a group's transaction. `Ok(Err(_))`: this write alone is refused
    /// (an unmet precondition, or an error reading one), nothing of it applied; `Err(_)`: applying
    /// it failed midway, so the transaction is abandoned and the group with it.
    fn apply(
        &self,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        write: &Prepared,
    ) -> Result<Result<(), KvError>, KvError> {
        match write {
            Prepared::Write {
                preconditions,
                deletes,
                puts,
            } => {
                // Nothing of this write is applied yet: a refusal, or an error reading its
                // preconditions, is this write's alone.
                if let Err(refused) = check_preconditions(self.path(), table, preconditions) {
                    return Ok(Err(refused));
                }
                for k in deletes {
                    table.remove(k.as_slice()).map_err(|e| self.err(e))?;
                }
                for (k, v) in puts {
                    table
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            Prepared::DeleteRange { lo, hi } => {
                let upper = match hi {
                    Some(h) => Bound::Excluded(h.as_slice()),
                    None => Bound::Unbounded,
                };
                table
                    .retain_in::<&[u8], _>((Bound::Included(lo.as_slice()), upper), |_, _| false)
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(Ok(()))
    }

    fn do_batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        check_actor_id(actor)?;
        check_batch_read(&self.limits, ops)?;
        let txn = self.shared.db().begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        ops.iter()
            .map(|op| match op {
                ReadOp::Get(keys) => {
                    get_table(self.path(), &table, actor, keys).map(ReadResult::Get)
                }
                ReadOp::List(req) => {
                    let limit = self.limits.list_limit(req.limit)?;
                    list_table(self.path(), &table, actor, limit, req).map(ReadResult::List)
                }
            })
            .collect()
    }
}

impl KvStore for RedbStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn limits(&self) -> &KvLimits {
        &self.limits
    }

    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        self.guarded(|| self.do_get(actor, keys))
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.guarded(|| self.do_list(actor, req))
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        self.guarded(|| self.do_write(actor, batch))
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.guarded(|| self.do_delete_range(actor, start, end))
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.guarded(|| self.do_batch_read(actor, ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvStore;
    use std::sync::atomic::AtomicBool;

    /// An in-memory redb disk whose fsync fails while `fail` is set.
    #[derive(Debug)]
    struct FlakyDisk {
        inner: redb::backends::InMemoryBackend,
        fail: Arc<AtomicBool>,
    }

    impl redb::StorageBackend for FlakyDisk {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.inner.write(offset, data)
        }
    }

    /// A failed fsync fails the whole group: every write queued in it gets the same error and
    /// none of them is visible afterwards; the write committed before it stays.
    #[test]
    fn an_io_error_is_reported_to_every_write_of_its_group() {
        let fail = Arc::new(AtomicBool::new(false));
        let disk = FlakyDisk {
            inner: redb::backends::InMemoryBackend::new(),
            fail: Arc::clone(&fail),
        };
        let db = Database::builder().create_with_backend(disk).unwrap();
        let path = PathBuf::from("/flaky-disk-test");
        let db = init_tables(db, &path).unwrap();
        let store = Arc::new(RedbStore {
            shared: Arc::new(SharedDb::new(db, path)),
            limits: KvLimits::default(),
            options: RedbOptions::default(),
        });
        let k = || vec![b"k".to_vec()];
        store
            .put("before", vec![(k()[0].clone(), b"1".to_vec())])
            .unwrap();
        let hold = store.hold_commits();
        let group: Vec<_> = ["w0", "w1", "w2", "w3", "w4"]
            .into_iter()
            .enumerate()
            .map(|(i, actor)| {
                let s = Arc::clone(&store);
                let h = std::thread::spawn(move || s.put(actor, vec![(b"k".to_vec(), vec![2])]));
                while store.commit_stats().queued != i + 1 {
                    std::thread::yield_now();
                }
                h
            })
            .collect();
        fail.store(true, Ordering::SeqCst);
        drop(hold);
        let results: Vec<_> = group.into_iter().map(|h| h.join().unwrap()).collect();
        let want = Err(KvError::Backend {
            backend: "redb",
            message: "/flaky-disk-test: I/O error: injected fsync failure".into(),
        });
        assert_eq!(results, vec![want; 5]);
        let stats = store.commit_stats();
        assert_eq!(
            (stats.transactions, stats.writes, stats.groups_started),
            (1, 1, 2)
        );
        // redb refuses writes after a failed fsync until reopened; reads see the last commit.
        for actor in ["w0", "w1", "w2", "w3", "w4"] {
            assert_eq!(store.get(actor, &k()).unwrap(), vec![None]);
        }
        assert_eq!(
            store.get("before", &k()).unwrap(),
            vec![Some(b"1".to_vec())]
        );
    }

    #[test]
    fn crc32_matches_the_standard_check_values() {
        // The CRC-32/ISO-HDLC check value, and the same bytes split across parts.
        assert_eq!(crc32(&[b"123456789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b"1234", b"56789"]), 0xCBF4_3926);
        assert_eq!(crc32(&[b""]), 0);
        assert_eq!(
            crc32(&[b"The quick brown fox jumps over the lazy dog"]),
            0x414F_A339
        );
    }

    /// The checksum of stored values is the bitwise CRC-32 at every length and split (the SIMD
    /// path for long inputs included): files written with the earlier table-driven code stay
    /// readable.
    #[test]
    fn crc32_equals_the_bitwise_definition_on_page_sized_values() {
        fn bitwise(bytes: &[u8]) -> u32 {
            let mut c = !0u32;
            for b in bytes {
                c ^= u32::from(*b);
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        let data: Vec<u8> = (0..8200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [
            0, 1, 7, 8, 15, 16, 63, 64, 65, 127, 128, 1000, 4096, 4100, 8200,
        ] {
            let want = bitwise(&data[..len]);
            assert_eq!(crc32(&[&data[..len]]), want, "length {len}");
            let cut = len / 3;
            assert_eq!(
                crc32(&[&data[..cut], &data[cut..len]]),
                want,
                "length {len}, split"
            );
        }
        // A value sealed under its composite key unseals; a flipped bit does not.
        let sealed = seal(b"\x00\x01akey", &data[..4096]);
        assert_eq!(unseal(b"\x00\x01akey", &sealed), Some(&data[..4096]));
        let mut bad = sealed.clone();
        bad[100] ^= 4;
        assert_eq!(unseal(b"\x00\x01akey", &bad), None);
    }
}

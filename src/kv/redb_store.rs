//! The `redb` backend: the embedded, persistent default store. One file holds many actors.
//!
//! Why it exists: a single-machine deployment needs a durable store with real transactions and
//! no server. redb gives ACID write transactions with an fsync on commit, and consistent
//! snapshot reads.
//!
//! Layout: one table, `kvsqlite_kv`, for every actor. Its keys are
//! `u16 big-endian actor length ‖ actor bytes ‖ key`: within one actor, composite keys order
//! exactly as the raw keys do, and an actor's keys are exactly the composite keys starting with
//! `length ‖ actor` (no actor id is a prefix of another's encoding), so prefix lists are exact.
//!
//! Guarantees:
//! - A `write` is one redb write transaction: preconditions are checked inside it, then all
//!   puts and deletes are applied and committed with [`redb::Durability::Immediate`] (fsync)
//!   before the call returns; a failed precondition aborts it.
//! - Each read call (`get`, `list`, `batch_read`) runs in one read transaction, so a batch read
//!   sees one consistent snapshot.
//! - In one process, opening the same path again shares the open database (a registry of weak
//!   handles keyed by canonical path), so tests and the VFS may open a store from many places.
//! - Another process holding the file gets [`KvError::Locked`] naming the file. A file that is
//!   not a redb database, or is corrupt, gets [`KvError::Backend`] naming the file.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    check_actor_id, check_batch_read, key_after, prefix_successor, range_is_empty, KvError,
    KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, Value, WriteBatch,
};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kvsqlite_kv");
const BACKEND: &str = "redb";

/// One open database file, shared by every [`RedbStore`] of this process that names it.
struct SharedDb {
    db: Option<Database>,
    path: PathBuf,
}

impl SharedDb {
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
    std::fs::create_dir_all(&parent).map_err(|e| KvError::Unavailable {
        backend: BACKEND,
        message: format!("cannot create directory {}: {e}", parent.display()),
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
    let opened = std::panic::catch_unwind(|| Database::create(path))
        .map_err(|_| err_at(path, "the file is corrupt (redb panicked while opening it)"))?;
    let db = opened.map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => KvError::Locked {
            what: format!("{} (open in another process)", path.display()),
        },
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            err_at(path, format!("not a redb database ({io})"))
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => KvError::Unavailable {
            backend: BACKEND,
            message: format!("{}: {io}", path.display()),
        },
        other => err_at(path, other),
    })?;
    // Create the table once so read transactions always find it.
    let txn = db.begin_write().map_err(|e| err_at(path, e))?;
    txn.open_table(TABLE).map_err(|e| err_at(path, e))?;
    txn.commit().map_err(|e| err_at(path, e))?;
    Ok(db)
}

impl RedbStore {
    /// Opens (creating it and its parent directories if needed) the redb file at `path`.
    ///
    /// Within one process, every store opened on the same file shares one database. Another
    /// process holding it → [`KvError::Locked`]; not a redb file or corrupt → [`KvError::Backend`].
    pub fn open(path: impl AsRef<Path>, limits: KvLimits) -> Result<RedbStore, KvError> {
        let path = canonical(path.as_ref())?;
        // A handle being dropped on another thread still holds the file until its `drop` ends;
        // wait for that (it takes the registry lock) instead of reporting a lock conflict.
        let mut waited = 0;
        loop {
            let mut reg = registry().lock();
            match reg.get(&path).map(Weak::upgrade) {
                Some(Some(shared)) => return Ok(RedbStore { shared, limits }),
                Some(None) if waited < 10_000 => {
                    drop(reg);
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_micros(100));
                    continue;
                }
                _ => {}
            }
            let db = open_database(&path)?;
            let shared = Arc::new(SharedDb {
                db: Some(db),
                path: path.clone(),
            });
            reg.insert(path, Arc::downgrade(&shared));
            return Ok(RedbStore { shared, limits });
        }
    }

    /// The canonical path of the file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn err(&self, e: impl std::fmt::Display) -> KvError {
        err_at(&self.shared.path, e)
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
    table: &T,
    actor: &str,
    limit: usize,
    req: &ListRequest,
) -> Result<ListPage, redb::StorageError> {
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
    for item in table.range::<&[u8]>((Bound::Included(lo.as_slice()), upper))? {
        let (k, v) = item?;
        let over_budget = !page.entries.is_empty() && req.max_bytes.is_some_and(|m| bytes >= m);
        if page.entries.len() == limit || over_budget {
            page.next_start = page.entries.last().map(|(k, _)| key_after(k));
            break;
        }
        let key = k.value()[strip..].to_vec();
        let value = v.value().to_vec();
        bytes += key.len() + value.len();
        page.entries.push((key, value));
    }
    Ok(page)
}

fn get_table<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    actor: &str,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Value>>, redb::StorageError> {
    keys.iter()
        .map(|k| {
            Ok(table
                .get(encode(actor, k).as_slice())?
                .map(|v| v.value().to_vec()))
        })
        .collect()
}

impl KvStore for RedbStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn limits(&self) -> &KvLimits {
        &self.limits
    }

    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        check_actor_id(actor)?;
        self.limits.check_get(keys)?;
        let txn = self.shared.db().begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        get_table(&table, actor, keys).map_err(|e| self.err(e))
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        check_actor_id(actor)?;
        let limit = self.limits.list_limit(req.limit)?;
        let txn = self.shared.db().begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        list_table(&table, actor, limit, req).map_err(|e| self.err(e))
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        check_actor_id(actor)?;
        self.limits.check_write(batch)?;
        batch.check_distinct()?;
        let mut txn = self.shared.db().begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
            for p in &batch.preconditions {
                let have = table
                    .get(encode(actor, &p.key).as_slice())
                    .map_err(|e| self.err(e))?;
                let holds = match (&have, &p.expected) {
                    (None, None) => true,
                    (Some(v), Some(want)) => v.value() == want.as_slice(),
                    _ => false,
                };
                if !holds {
                    drop(have);
                    drop(table);
                    txn.abort().map_err(|e| self.err(e))?;
                    return Err(KvError::Conflict { key: p.key.clone() });
                }
            }
            if batch.is_empty() {
                drop(table);
                return txn.abort().map_err(|e| self.err(e));
            }
            for k in &batch.deletes {
                table
                    .remove(encode(actor, k).as_slice())
                    .map_err(|e| self.err(e))?;
            }
            for (k, v) in &batch.puts {
                table
                    .insert(encode(actor, k).as_slice(), v.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        check_actor_id(actor)?;
        if range_is_empty(start, end) {
            return Ok(());
        }
        let (lo, hi) = bounds(actor, start, end);
        let mut txn = self.shared.db().begin_write().map_err(|e| self.err(e))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(|e| self.err(e))?;
        {
            let mut table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
            let upper = match &hi {
                Some(h) => Bound::Excluded(h.as_slice()),
                None => Bound::Unbounded,
            };
            table
                .retain_in::<&[u8], _>((Bound::Included(lo.as_slice()), upper), |_, _| false)
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        check_actor_id(actor)?;
        check_batch_read(&self.limits, ops)?;
        let txn = self.shared.db().begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(TABLE).map_err(|e| self.err(e))?;
        ops.iter()
            .map(|op| match op {
                ReadOp::Get(keys) => get_table(&table, actor, keys)
                    .map(ReadResult::Get)
                    .map_err(|e| self.err(e)),
                ReadOp::List(req) => {
                    let limit = self.limits.list_limit(req.limit)?;
                    list_table(&table, actor, limit, req)
                        .map(ReadResult::List)
                        .map_err(|e| self.err(e))
                }
            })
            .collect()
    }
}

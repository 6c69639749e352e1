//! The SQLite VFS over the KV layer, written against `libsqlite3-sys` (`rusqlite::ffi`).
//!
//! Why it exists: it is what makes an actor's SQLite database live in a key-value store with
//! round-trip-minimal I/O. One VFS named [`VFS_NAME`] is registered once per process. Stores are
//! registered in a process-wide table ([`register_store`]); a database path is
//! `/<store-id>/<percent-encoded actor id>`, and SQLite's derived `…-journal` name maps to the
//! same actor's journal file. Any other name (`-wal`, a super-journal, a foreign path) is refused
//! with `SQLITE_CANTOPEN`. Temporary files SQLite asks for live in process memory.
//!
//! Guarantees:
//! - A write transaction within the store's limits commits with exactly one KV `write` (the
//!   batch-atomic path: `SQLITE_IOCAP_BATCH_ATOMIC`); a larger one stages its pages and makes
//!   them live with one commit record (⌈pages/128⌉+1 round trips at the default limits).
//! - A crash at any KV call leaves the old or the new database; an open discards an unfinished
//!   stage.
//! - Locks are in-process and follow SQLite's levels; every connection to one database in this
//!   process shares one state (cache, metadata, locks). Several *processes* writing one actor
//!   are not coordinated here (the actor layer's fencing guards that).
//! - No panic crosses the FFI boundary; KV errors become `SQLITE_IOERR_*`, malformed stored
//!   data becomes `SQLITE_CORRUPT`.
//! - `PRAGMA synchronous=OFF` and `PRAGMA journal_mode=WAL|OFF|MEMORY` are refused with an
//!   error (they would give up the atomic commit or the crash safety).
//! - `PRAGMA page_size = N` before a database's first write takes effect at the connection's
//!   next transaction (the virtual page 1 is re-created at size `N`), and the first commit is
//!   still one put; a page too big for one value of the store is refused with an error.

pub mod cache;
pub mod commit;
pub mod fence;
pub mod file;
pub mod hold;
pub mod layout;
pub mod stats;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, Once, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rusqlite::ffi;

use crate::kv::{ActorKv, KvError, SharedStore};
use crate::preload::Preload;
pub use fence::FenceSpec;
pub use file::VfsError;
use file::{lock, DbState, Op, StateOptions};
use layout::FileKind;
pub use stats::{Snapshot, Stats};

/// The name the VFS is registered under.
pub const VFS_NAME: &str = "kvsqlite";

/// Identifies a store registered with [`register_store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreId(pub u64);

struct Registry {
    /// Registered stores by id, held weakly.
    stores: HashMap<u64, Weak<dyn crate::kv::KvStore>>,
    /// Store id by the address of the store's allocation (while it lives).
    by_addr: HashMap<usize, u64>,
    next_id: u64,
    /// Live stores after the last prune: the registry prunes dead entries when it has doubled.
    live_at_prune: usize,
    /// One slot per database that is open or being opened (see [`db_state`]).
    dbs: HashMap<(u64, String), Arc<DbSlot>>,
    /// The fingerprint of each database after the last write this process made to its main
    /// file (`None`: that write failed, the stored state is uncertain). A preload whose
    /// fingerprint differs was read before that write, or cannot tell: it is not trusted.
    /// Bounded by [`MAX_FINGERPRINTS`].
    fingerprints: HashMap<(u64, String), file::Fingerprint>,
}

/// Most databases whose last-write fingerprint the registry remembers; past it, those of
/// databases no connection holds are forgotten (their preloads are then trusted as before).
const MAX_FINGERPRINTS: usize = 65_536;

/// Where a database's shared state lives while any connection holds it. Its lock serialises
/// opens of that one database, so two connections can never each build a state of their own.
type DbSlot = Mutex<Weak<DbState>>;

static REGISTRY: std::sync::LazyLock<Mutex<Registry>> = std::sync::LazyLock::new(|| {
    Mutex::new(Registry {
        stores: HashMap::new(),
        by_addr: HashMap::new(),
        next_id: 0,
        live_at_prune: 0,
        dbs: HashMap::new(),
        fingerprints: HashMap::new(),
    })
});

/// Registers `store` with the VFS (once per store: the same `Arc` gets the same id) and
/// returns its id for database paths. The registry holds the store weakly: an open database
/// keeps its store alive, but opening a path by hand (`Connection::open_with_flags_and_vfs`)
/// needs the caller to keep the store alive until then.
///
/// Registering is O(1) and nothing grows per registration: entries of stores that were dropped
/// (an actor's per-wake wrapper, say) are pruned, with their databases' slots and fingerprints,
/// whenever the table has doubled since the last prune. Ids are never reused.
pub fn register_store(store: &SharedStore) -> StoreId {
    let mut reg = REGISTRY.lock();
    let addr = Arc::as_ptr(store) as *const () as usize;
    if let Some(&id) = reg.by_addr.get(&addr) {
        if let Some(s) = reg.stores.get(&id).and_then(|w| w.upgrade()) {
            if ptr::addr_eq(Arc::as_ptr(&s), Arc::as_ptr(store)) {
                return StoreId(id);
            }
        }
    }
    if reg.stores.len() >= 2 * reg.live_at_prune.max(16) {
        let Registry {
            stores,
            by_addr,
            dbs,
            fingerprints,
            live_at_prune,
            ..
        } = &mut *reg;
        stores.retain(|_, w| w.strong_count() > 0);
        by_addr.retain(|_, id| stores.contains_key(id));
        dbs.retain(|(id, _), slot| {
            stores.contains_key(id) || Arc::strong_count(slot) > 1 || slot.lock().strong_count() > 0
        });
        fingerprints.retain(|(id, _), _| stores.contains_key(id));
        *live_at_prune = stores.len();
    }
    let id = reg.next_id;
    reg.next_id += 1;
    reg.stores.insert(id, Arc::downgrade(store));
    reg.by_addr.insert(addr, id);
    StoreId(id)
}

/// The database path of `actor` on a registered store: `/<store-id>/<percent-encoded actor>`.
pub fn database_path(store: StoreId, actor: &str) -> String {
    let mut out = format!("/{}/", store.0);
    for b in actor.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'~' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A database name resolved: its store, actor and file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedName {
    /// The store id.
    pub store: u64,
    /// The actor id.
    pub actor: String,
    /// Which file of the actor's database.
    pub file: FileKind,
}

/// Resolves a name SQLite hands the VFS. `Err` says why it names no database of this VFS.
pub fn parse_name(name: &str) -> Result<ParsedName, String> {
    let (base, file) = match name.strip_suffix("-journal") {
        Some(b) => (b, FileKind::Journal),
        None => (name, FileKind::Main),
    };
    let rest = base
        .strip_prefix('/')
        .ok_or_else(|| format!("{name:?} is not a kvsqlite path (/<store-id>/<actor>)"))?;
    let (store, enc) = rest
        .split_once('/')
        .ok_or_else(|| format!("{name:?} is not a kvsqlite path (/<store-id>/<actor>)"))?;
    let store: u64 = store
        .parse()
        .map_err(|_| format!("{name:?}: store id {store:?} is not a number"))?;
    let mut bytes = Vec::with_capacity(enc.len());
    let b = enc.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = enc
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("{name:?}: bad percent escape"))?;
                bytes.push(hex);
                i += 3;
            }
            c if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'~' => {
                bytes.push(c);
                i += 1;
            }
            c => {
                return Err(format!(
                    "{name:?}: character {:?} must be percent-encoded (is this a -wal or super-journal name? kvsqlite does not support them)",
                    c as char
                ))
            }
        }
    }
    let actor = String::from_utf8(bytes).map_err(|_| format!("{name:?}: actor id is not UTF-8"))?;
    crate::kv::check_actor_id(&actor).map_err(|e| format!("{name:?}: {e}"))?;
    Ok(ParsedName { store, actor, file })
}

/// The shared state of a database, creating it (one metadata read) when no connection has it.
///
/// Opens of one database are serialised by its slot's lock, held across the metadata read: a
/// state built while another connection of the same database committed and closed would be
/// stale, and two connections with states of their own would overwrite each other's commits.
/// The registry lock itself is never held across a KV call, so opening one database never
/// waits for another's store.
fn db_state(
    store: u64,
    actor: &str,
    opts: &StateOptions,
    preload: Option<Preload>,
    trust_preload: bool,
    handle: Option<&SharedStore>,
) -> Result<Arc<DbState>, VfsError> {
    let (slot, st) = {
        let mut reg = REGISTRY.lock();
        let key = (store, actor.to_string());
        if !reg.dbs.contains_key(&key) {
            // Forget slots nobody holds or is opening.
            reg.dbs
                .retain(|_, slot| Arc::strong_count(slot) > 1 || slot.lock().strong_count() > 0);
        }
        let slot = reg.dbs.entry(key).or_default().clone();
        let st = handle
            .cloned()
            .or_else(|| reg.stores.get(&store).and_then(|w| w.upgrade()));
        (slot, st)
    };
    let mut current = slot.lock();
    if let Some(s) = current.upgrade() {
        if opts.fence.is_some() || opts.hold {
            return Err(VfsError::Misuse(format!(
                "the database of actor {actor:?} is already open in this process: a fenced or held open needs it closed"
            )));
        }
        return Ok(s);
    }
    let st = st.ok_or_else(|| {
        VfsError::Kv(
            Op::Read,
            KvError::InvalidUrl {
                url: format!("/{store}"),
                reason: "no live store is registered under this id".into(),
            },
        )
    })?;
    let kv = ActorKv::new(st, actor).map_err(|e| VfsError::Kv(Op::Read, e))?;
    let key = (store, actor.to_string());
    // A preload read before a later write of this process (another connection opened,
    // committed and closed since) would seed the state with old pages and metadata: stale
    // reads, then commits built on them. Only a preload that matches the last write is used.
    let preload = preload.filter(|p| {
        trust_preload
            || match REGISTRY.lock().fingerprints.get(&key) {
                None => true,
                Some(last) => last.is_some() && file::preload_fingerprint(p) == *last,
            }
    });
    let state = Arc::new(DbState::open(kv, opts.clone(), preload)?);
    state.set_commit_hook(Box::new(move |fp| {
        let mut reg = REGISTRY.lock();
        if reg.fingerprints.len() >= MAX_FINGERPRINTS && !reg.fingerprints.contains_key(&key) {
            let Registry {
                dbs, fingerprints, ..
            } = &mut *reg;
            fingerprints.retain(|k, _| dbs.contains_key(k));
        }
        reg.fingerprints.insert(key.clone(), fp);
    }));
    *current = Arc::downgrade(&state);
    Ok(state)
}

// ---------------------------------------------------------------------------------------------
// Open API
// ---------------------------------------------------------------------------------------------

/// How to open an actor's database.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Page size of a *new* database (512..=65536, a power of two); an existing database keeps
    /// its own. Default 4096.
    pub page_size: u32,
    /// VFS page cache capacity in pages, shared by the database's connections. Default 2048.
    pub cache_pages: usize,
    /// SQLite's own page cache per connection, in KiB (`PRAGMA cache_size=-N`). Default 8192.
    pub sqlite_cache_kib: u32,
    /// Largest read-ahead window in pages. Default 128.
    pub read_ahead_max: u32,
    /// Most bytes of dirty pages one transaction keeps in memory on the batch-atomic path.
    /// SQLite's `cache_spill` is set to the same bound, so a larger transaction spills and falls
    /// back to the rollback journal (correct, slower, counted). Default 256 MiB. Below the bound
    /// a transaction costs about twice its dirty pages in memory (SQLite's cache and the VFS's
    /// commit buffer).
    pub max_atomic_bytes: usize,
    /// Entries read ahead of time (at an actor's wake): served without round trips and kept
    /// coherent on every commit. Only used when no connection has the database open yet, and
    /// only when it matches this process's last write to the database (metadata and page 1):
    /// a preload read before another connection of this process committed is ignored, and the
    /// open reads the store instead (one round trip). Writes by other processes are not seen
    /// here (the actor layer's fencing guards those).
    pub preload: Option<Preload>,
    /// Take [`OpenOptions::preload`] as the truth about the store even when this process wrote
    /// the database after it was read: for a fenced open (the actor layer), where a store that
    /// changed since the preload makes the first write fail on its fence instead.
    pub trust_preload: bool,
    /// Fence every write of the database (see [`fence`]); the actor layer's guard against a
    /// second instance. Refused while the database is open in this process.
    pub fence: Option<FenceSpec>,
    /// Hold every write in memory until [`Database::flush_held`] (see [`hold`]): for a new
    /// actor's creation. Only for a database that does not exist in the store.
    pub hold_writes: bool,
    /// Open read-only.
    pub read_only: bool,
    /// Create the database when it does not exist (ignored when read-only).
    pub create: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            page_size: 4096,
            cache_pages: 2048,
            sqlite_cache_kib: 8192,
            read_ahead_max: 128,
            max_atomic_bytes: 256 << 20,
            preload: None,
            trust_preload: false,
            fence: None,
            hold_writes: false,
            read_only: false,
            create: true,
        }
    }
}

/// Why [`open_database`] failed.
#[derive(Debug)]
pub enum OpenError {
    /// An option is out of range.
    InvalidOptions(String),
    /// The actor id cannot be used.
    InvalidActor(KvError),
    /// The database does not exist and `create` was false (or it was opened read-only).
    NotFound {
        /// The actor.
        actor: String,
    },
    /// Reading the database's metadata failed.
    Vfs(VfsError),
    /// SQLite refused the open or a pragma.
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::InvalidOptions(m) => write!(f, "invalid open options: {m}"),
            OpenError::InvalidActor(e) => write!(f, "{e}"),
            OpenError::NotFound { actor } => {
                write!(
                    f,
                    "database of actor {actor:?} does not exist (open without create)"
                )
            }
            OpenError::Vfs(e) => write!(f, "{e}"),
            OpenError::Sqlite(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<rusqlite::Error> for OpenError {
    fn from(e: rusqlite::Error) -> Self {
        OpenError::Sqlite(e)
    }
}

/// An open actor database: a plain `rusqlite::Connection` (through `Deref`) plus its I/O
/// statistics.
pub struct Database {
    conn: rusqlite::Connection,
    state: Arc<DbState>,
    path: String,
}

impl Database {
    /// The connection.
    pub fn conn(&self) -> &rusqlite::Connection {
        &self.conn
    }

    /// The connection, mutably (for transactions).
    pub fn conn_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn
    }

    /// Gives up the statistics handle and returns the connection.
    pub fn into_connection(self) -> rusqlite::Connection {
        self.conn
    }

    /// The database's live counters (shared by all its connections in this process).
    pub fn stats(&self) -> Arc<Stats> {
        self.state.stats().clone()
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.state.stats().snapshot()
    }

    /// The VFS path of the database (open more connections with it and [`VFS_NAME`]).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The page (chunk) size the database is stored with.
    pub fn page_size(&self) -> u32 {
        self.state.chunk_size()
    }

    /// Makes every later KV write of this database (all its connections) carry these
    /// preconditions, checked atomically in the same round trip: the actor layer's fencing.
    /// An unmet one fails the transaction (`SQLITE_IOERR`) with nothing written. While a fence
    /// is set, journal deletion and truncation use fenced delete batches instead of one
    /// `delete_range` (more round trips on those rare paths); only the discarding of an
    /// unfinished stage at open, before any fence exists, is unfenced.
    pub fn set_fence(&self, preconditions: Vec<crate::kv::Precondition>) {
        self.state.set_fence(preconditions);
    }

    /// Queues entries (outside the VFS prefix `0x08`) to be written atomically in the same put
    /// as the next commit: the actor layer's write collector. Kept queued if that commit fails.
    pub fn queue_puts(
        &self,
        entries: Vec<(crate::kv::Key, crate::kv::Value)>,
    ) -> Result<(), String> {
        self.state.queue_puts(entries)
    }

    /// Entries queued by [`Database::queue_puts`] not yet written.
    pub fn queued_puts(&self) -> usize {
        self.state.queued_puts()
    }

    /// True once another instance of the actor wrote since this one opened with a fence
    /// ([`OpenOptions::fence`]): every later I/O fails with `SQLITE_IOERR_VNODE`
    /// ([`MOVED_ERROR_CODE`]) and nothing more is written.
    pub fn moved(&self) -> bool {
        self.state.moved()
    }

    /// True while writes are held ([`OpenOptions::hold_writes`]).
    pub fn is_held(&self) -> bool {
        self.state.is_held()
    }

    /// Ends hold mode: the database as its transactions left it, plus `entries` (keys outside
    /// the VFS prefix), in one fenced write when it fits the store's limits, else staged with
    /// one commit record. No transaction may be open.
    pub fn flush_held(
        &self,
        entries: Vec<(crate::kv::Key, crate::kv::Value)>,
    ) -> Result<(), VfsError> {
        self.state.flush_held(entries)
    }

    /// Writes `entries` and deletes `deletes` (keys outside the VFS prefix) now, in one write
    /// that carries the fence.
    pub fn write_entries(
        &self,
        entries: Vec<(crate::kv::Key, crate::kv::Value)>,
        deletes: Vec<crate::kv::Key>,
    ) -> Result<(), VfsError> {
        self.state.write_entries(entries, deletes)
    }

    /// The fence record the database's next write will put (`None` when not fenced).
    pub fn next_fence_record(&self) -> Option<Vec<u8>> {
        self.state.next_fence_record()
    }

    /// The current bytes of page `idx` (0-based) of the main file.
    pub fn read_page(&self, idx: u32) -> Result<Vec<u8>, VfsError> {
        self.state.read_page(idx)
    }

    /// A handle that can hand pages fetched on another thread to this database's cache.
    pub fn page_sink(&self) -> PageSink {
        PageSink(self.state.clone())
    }

    /// Moves the preload's pages into the page cache (never over a page it holds) and drops
    /// the preload; returns the number of pages moved.
    pub fn release_preload(&self) -> usize {
        self.state.release_preload()
    }

    /// Starts a fresh log of the main-file pages (0-based chunk indexes) read (`true`), or stops.
    pub fn track_reads(&self, on: bool) {
        self.state.track_reads(on)
    }

    /// Pages read since [`Database::track_reads`] began, most recent first.
    pub fn recent_reads(&self) -> Vec<u32> {
        self.state.recent_reads()
    }

    /// The keys under which these pages live now.
    pub fn live_keys(&self, pages: &[u32]) -> Vec<(u32, crate::kv::Key)> {
        self.state.live_keys(pages)
    }

    /// The pages of `pages` neither cached nor preloaded, with their live keys, and the
    /// database's write sequence now (hand it back to [`Database::offer_pages`]).
    pub fn prefetch_plan(&self, pages: &[u32]) -> (u64, Vec<(u32, crate::kv::Key)>) {
        self.state.prefetch_plan(pages)
    }

    /// Offers pages fetched in the background: cached only when nothing was written since the
    /// plan's sequence, never over a page the cache holds. Returns how many were taken.
    pub fn offer_pages(&self, seq: u64, pages: Vec<(u32, Vec<u8>)>) -> usize {
        self.state.offer_pages(seq, pages)
    }
}

/// Hands pages fetched in the background to a database's cache (see
/// [`Database::prefetch_plan`]).
#[derive(Clone)]
pub struct PageSink(Arc<DbState>);

impl PageSink {
    /// [`Database::offer_pages`] from another thread.
    pub fn offer_pages(&self, seq: u64, pages: Vec<(u32, Vec<u8>)>) -> usize {
        self.0.offer_pages(seq, pages)
    }
}

impl std::ops::Deref for Database {
    type Target = rusqlite::Connection;
    fn deref(&self) -> &rusqlite::Connection {
        &self.conn
    }
}

impl std::ops::DerefMut for Database {
    fn deref_mut(&mut self) -> &mut rusqlite::Connection {
        &mut self.conn
    }
}

/// The extended SQLite result code a fenced database's I/O fails with once another instance of
/// the actor wrote (`SQLITE_IOERR_VNODE`: "the file was changed by someone else").
pub const MOVED_ERROR_CODE: c_int = ffi::SQLITE_IOERR_VNODE;

/// True when the linked SQLite was compiled with `SQLITE_ENABLE_BATCH_ATOMIC_WRITE`.
pub fn batch_atomic_compiled() -> bool {
    // SAFETY: a NUL-terminated static string; the function only reads it.
    unsafe { ffi::sqlite3_compileoption_used(c"ENABLE_BATCH_ATOMIC_WRITE".as_ptr()) == 1 }
}

/// Registers the VFS with SQLite (idempotent). Warns once (tracing) when SQLite lacks
/// batch-atomic writes: every commit then journals, correct but slower.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if !batch_atomic_compiled() {
            tracing::warn!(
                "SQLite was built without SQLITE_ENABLE_BATCH_ATOMIC_WRITE: every kvsqlite commit will use a rollback journal (correct, many more KV round trips)"
            );
        }
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 2,
            szOsFile: std::mem::size_of::<KvFile>() as c_int,
            // A 512-byte actor id percent-encoded, the store id and `-journal` fit.
            mxPathname: 2048,
            pNext: ptr::null_mut(),
            zName: c"kvsqlite".as_ptr(),
            pAppData: ptr::null_mut(),
            xOpen: Some(x_open),
            xDelete: Some(x_delete),
            xAccess: Some(x_access),
            xFullPathname: Some(x_full_pathname),
            xDlOpen: Some(x_dl_open),
            xDlError: Some(x_dl_error),
            xDlSym: Some(x_dl_sym),
            xDlClose: Some(x_dl_close),
            xRandomness: Some(x_randomness),
            xSleep: Some(x_sleep),
            xCurrentTime: Some(x_current_time),
            xGetLastError: Some(x_get_last_error),
            xCurrentTimeInt64: Some(x_current_time_int64),
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        // SAFETY: the struct is leaked, so it outlives every use SQLite makes of it.
        unsafe {
            ffi::sqlite3_vfs_register(Box::leak(vfs), 0);
        }
    });
}

/// Opens `actor`'s database on `store` through the VFS and returns a plain connection with
/// kvsqlite's pragmas set: `journal_mode=DELETE`, `synchronous=NORMAL`, `temp_store=MEMORY`,
/// a bounded `cache_size`, and `cache_spill` set to `max_atomic_bytes` (SQLite never spills a
/// transaction smaller than that, so it commits batch-atomically; a larger one spills and
/// journals, which bounds memory).
///
/// ```
/// use std::sync::Arc;
/// use kvsqlite::kv::memory::MemoryStore;
/// use kvsqlite::vfs::{open_database, OpenOptions};
///
/// let store = Arc::new(MemoryStore::new());
/// let db = open_database(store, "actor-1", &OpenOptions::default()).unwrap();
/// db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (42);").unwrap();
/// let before = db.snapshot();
/// db.execute("INSERT INTO t VALUES (43)", []).unwrap();
/// assert_eq!((db.snapshot() - before).kv_round_trips, 1); // one put per transaction
/// ```
pub fn open_database(
    store: SharedStore,
    actor: &str,
    opts: &OpenOptions,
) -> Result<Database, OpenError> {
    register();
    crate::kv::check_actor_id(actor).map_err(OpenError::InvalidActor)?;
    if !layout::valid_chunk_size(opts.page_size) {
        return Err(OpenError::InvalidOptions(format!(
            "page size {} must be a power of two in 512..=65536",
            opts.page_size
        )));
    }
    let limits = *store.limits();
    let page_cost = opts.page_size as usize + 7;
    if opts.page_size as usize > limits.max_value_bytes || page_cost > limits.max_write_bytes {
        return Err(OpenError::InvalidOptions(format!(
            "page size {} does not fit the store's limits (values up to {} bytes, writes up to {} bytes)",
            opts.page_size, limits.max_value_bytes, limits.max_write_bytes
        )));
    }
    if opts.read_ahead_max == 0 {
        return Err(OpenError::InvalidOptions(
            "read_ahead_max must be at least 1".into(),
        ));
    }
    let id = register_store(&store);
    let sopts = StateOptions {
        page_size: opts.page_size,
        cache_pages: opts.cache_pages,
        read_ahead_max: opts.read_ahead_max,
        max_atomic_bytes: opts.max_atomic_bytes,
        fence: opts.fence.clone(),
        hold: opts.hold_writes,
        ..StateOptions::default()
    };
    let state = db_state(
        id.0,
        actor,
        &sopts,
        opts.preload.clone(),
        opts.trust_preload,
        Some(&store),
    )
    .map_err(OpenError::Vfs)?;
    let create = opts.create && !opts.read_only;
    if !state.exists(FileKind::Main) && !create {
        return Err(OpenError::NotFound {
            actor: actor.to_string(),
        });
    }
    let path = database_path(id, actor);
    let mut flags = rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if opts.read_only {
        flags |= rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    } else {
        flags |= rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE;
        if create {
            flags |= rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
        }
    }
    let conn = rusqlite::Connection::open_with_flags_and_vfs(&path, flags, VFS_NAME)?;
    // cache_spill=-KiB: SQLite spills dirty pages (and so falls back to the journal) only past
    // the same bound the VFS buffers; below it a transaction stays on the batch-atomic path
    // whatever cache_size is. This bounds SQLite's memory as well as the VFS's.
    let spill_kib = (opts.max_atomic_bytes / 1024).clamp(1, i32::MAX as usize);
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA cache_spill=-{spill_kib}; PRAGMA cache_size=-{};",
        opts.sqlite_cache_kib.max(1)
    ))?;
    if !opts.read_only {
        let mode: String = conn.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(OpenError::InvalidOptions(format!(
                "journal_mode stayed {mode:?}"
            )));
        }
    }
    Ok(Database { conn, state, path })
}

// ---------------------------------------------------------------------------------------------
// FFI: the file object
// ---------------------------------------------------------------------------------------------

#[repr(C)]
struct KvFile {
    base: ffi::sqlite3_file,
    handle: *mut Handle,
}

enum Handle {
    Kv {
        state: Arc<DbState>,
        kind: FileKind,
        id: u64,
        lock: i32,
        wrote: bool,
    },
    Mem {
        data: Vec<u8>,
    },
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

/// Runs a callback body, turning a panic into `SQLITE_IOERR` (never unwinding into C).
fn guard(what: &str, f: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(rc) => rc,
        Err(_) => {
            tracing::error!("kvsqlite VFS: panic in {what}; reported as SQLITE_IOERR");
            ffi::SQLITE_IOERR
        }
    }
}

fn error_code(e: &VfsError, op: Op) -> c_int {
    tracing::warn!("kvsqlite VFS: {e}");
    match e {
        VfsError::Corrupt(_) => ffi::SQLITE_CORRUPT,
        VfsError::TooBig(_) => ffi::SQLITE_IOERR_WRITE,
        VfsError::Moved => ffi::SQLITE_IOERR_VNODE,
        VfsError::Misuse(_) => ffi::SQLITE_MISUSE,
        VfsError::Kv(o, _) => match o.max_op(op) {
            Op::Read => ffi::SQLITE_IOERR_READ,
            Op::Write => ffi::SQLITE_IOERR_WRITE,
            Op::Sync => ffi::SQLITE_IOERR_FSYNC,
            Op::Truncate => ffi::SQLITE_IOERR_TRUNCATE,
            Op::Delete => ffi::SQLITE_IOERR_DELETE,
        },
    }
}

impl Op {
    fn max_op(self, outer: Op) -> Op {
        // A write inside a sync reports as a sync failure, and so on: the outer op names it.
        match outer {
            Op::Read => self,
            o => o,
        }
    }
}

unsafe fn handle<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a mut Handle> {
    let f = file as *mut KvFile;
    if f.is_null() || (*f).handle.is_null() {
        return None;
    }
    Some(&mut *(*f).handle)
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    guard("xOpen", || {
        let f = file as *mut KvFile;
        (*f).base.pMethods = ptr::null();
        (*f).handle = ptr::null_mut();
        let temp = ffi::SQLITE_OPEN_TEMP_DB
            | ffi::SQLITE_OPEN_TEMP_JOURNAL
            | ffi::SQLITE_OPEN_SUBJOURNAL
            | ffi::SQLITE_OPEN_TRANSIENT_DB
            | ffi::SQLITE_OPEN_DELETEONCLOSE;
        let h = if name.is_null() || flags & temp != 0 {
            Handle::Mem { data: Vec::new() }
        } else {
            let Ok(name) = CStr::from_ptr(name).to_str() else {
                tracing::warn!("kvsqlite VFS: file name is not UTF-8");
                return ffi::SQLITE_CANTOPEN;
            };
            let parsed = match parse_name(name) {
                Ok(p) => p,
                Err(m) => {
                    tracing::warn!("kvsqlite VFS: cannot open {m}");
                    return ffi::SQLITE_CANTOPEN;
                }
            };
            let state = match db_state(
                parsed.store,
                &parsed.actor,
                &StateOptions::default(),
                None,
                false,
                None,
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("kvsqlite VFS: cannot open {name:?}: {e}");
                    return match e {
                        VfsError::Corrupt(_) => ffi::SQLITE_CORRUPT,
                        _ => ffi::SQLITE_CANTOPEN,
                    };
                }
            };
            if !state.exists(parsed.file) {
                if flags & ffi::SQLITE_OPEN_CREATE == 0 {
                    return ffi::SQLITE_CANTOPEN;
                }
                state.create(parsed.file);
            }
            let id = state.new_handle_id();
            Handle::Kv {
                state,
                kind: parsed.file,
                id,
                lock: lock::NONE,
                wrote: false,
            }
        };
        (*f).handle = Box::into_raw(Box::new(h));
        (*f).base.pMethods = &IO_METHODS;
        if !out_flags.is_null() {
            *out_flags = flags;
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    guard("xClose", || {
        let f = file as *mut KvFile;
        if f.is_null() || (*f).handle.is_null() {
            return ffi::SQLITE_OK;
        }
        let h = Box::from_raw((*f).handle);
        (*f).handle = ptr::null_mut();
        if let Handle::Kv {
            state, id, lock, ..
        } = &*h
        {
            state.unlock(*id, *lock, lock::NONE);
            if let Err(e) = state.flush_all() {
                error_code(&e, Op::Sync);
                return ffi::SQLITE_IOERR_CLOSE;
            }
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    guard("xRead", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_READ;
        };
        if amt < 0 || off < 0 {
            return ffi::SQLITE_IOERR_READ;
        }
        let out = std::slice::from_raw_parts_mut(buf as *mut u8, amt as usize);
        let got = match h {
            Handle::Mem { data } => {
                let start = (off as usize).min(data.len());
                let n = (data.len() - start).min(out.len());
                out[..n].copy_from_slice(&data[start..start + n]);
                out[n..].fill(0);
                n
            }
            Handle::Kv { state, kind, .. } => match state.read(*kind, off as u64, out) {
                Ok(n) => n,
                Err(e) => return error_code(&e, Op::Read),
            },
        };
        if got < out.len() {
            ffi::SQLITE_IOERR_SHORT_READ
        } else {
            ffi::SQLITE_OK
        }
    })
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    guard("xWrite", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        if amt < 0 || off < 0 {
            return ffi::SQLITE_IOERR_WRITE;
        }
        let data = std::slice::from_raw_parts(buf as *const u8, amt as usize);
        match h {
            Handle::Mem { data: d } => {
                let end = off as usize + data.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[off as usize..end].copy_from_slice(data);
                ffi::SQLITE_OK
            }
            Handle::Kv {
                state, kind, wrote, ..
            } => {
                if *kind == FileKind::Journal && !*wrote {
                    *wrote = true;
                    state.note_journal_fallback();
                }
                match state.write(*kind, off as u64, data) {
                    Ok(()) => ffi::SQLITE_OK,
                    Err(e) => error_code(&e, Op::Write),
                }
            }
        }
    })
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    guard("xTruncate", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_TRUNCATE;
        };
        if size < 0 {
            return ffi::SQLITE_IOERR_TRUNCATE;
        }
        match h {
            Handle::Mem { data } => {
                data.truncate(size as usize);
                ffi::SQLITE_OK
            }
            Handle::Kv { state, kind, .. } => match state.truncate(*kind, size as u64) {
                Ok(()) => ffi::SQLITE_OK,
                Err(e) => error_code(&e, Op::Truncate),
            },
        }
    })
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, _flags: c_int) -> c_int {
    guard("xSync", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_FSYNC;
        };
        match h {
            Handle::Mem { .. } => ffi::SQLITE_OK,
            Handle::Kv { state, kind, .. } => match state.sync(*kind) {
                Ok(()) => ffi::SQLITE_OK,
                Err(e) => error_code(&e, Op::Sync),
            },
        }
    })
}

unsafe extern "C" fn x_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    guard("xFileSize", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_FSTAT;
        };
        let n = match h {
            Handle::Mem { data } => data.len() as u64,
            Handle::Kv { state, kind, .. } => match state.file_size(*kind) {
                Ok(n) => n,
                Err(VfsError::Moved) => return MOVED_ERROR_CODE,
                Err(e) => {
                    error_code(&e, Op::Read);
                    return ffi::SQLITE_IOERR_FSTAT;
                }
            },
        };
        *size = n as ffi::sqlite3_int64;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xLock", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_LOCK;
        };
        match h {
            Handle::Kv {
                state,
                kind: FileKind::Main,
                id,
                lock,
                ..
            } => {
                let (ok, new) = state.lock(*id, *lock, level);
                *lock = new;
                if ok {
                    ffi::SQLITE_OK
                } else {
                    ffi::SQLITE_BUSY
                }
            }
            _ => ffi::SQLITE_OK,
        }
    })
}

unsafe extern "C" fn x_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    guard("xUnlock", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_UNLOCK;
        };
        if let Handle::Kv {
            state,
            kind: FileKind::Main,
            id,
            lock,
            ..
        } = h
        {
            *lock = state.unlock(*id, *lock, level);
        }
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    guard("xCheckReservedLock", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_IOERR_CHECKRESERVEDLOCK;
        };
        *out = match h {
            Handle::Kv { state, .. } => state.reserved() as c_int,
            Handle::Mem { .. } => 0,
        };
        ffi::SQLITE_OK
    })
}

/// What kvsqlite says about a pragma before SQLite runs it: `Some(message)` refuses it.
pub fn refused_pragma(name: &str, value: Option<&str>) -> Option<String> {
    let value = value?.trim().trim_matches(|c| c == '\'' || c == '"');
    let lname = name.to_ascii_lowercase();
    if lname == "synchronous" {
        let off = if value.starts_with(|c: char| c.is_ascii_digit()) {
            value
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
                .parse::<u64>()
                .map(|n| n == 0)
                .unwrap_or(false)
        } else {
            ["off", "no", "false"]
                .iter()
                .any(|w| value.eq_ignore_ascii_case(w))
        };
        if off {
            return Some(
                "kvsqlite refuses PRAGMA synchronous=OFF: it would drop the atomic commit and risk corruption; use NORMAL".into(),
            );
        }
    }
    if lname == "journal_mode" {
        let v = value.to_ascii_lowercase();
        if !matches!(v.as_str(), "delete" | "truncate" | "persist") {
            return Some(format!(
                "kvsqlite refuses PRAGMA journal_mode={value}: only the rollback modes DELETE, TRUNCATE and PERSIST keep commits atomic and crash-safe (WAL is not supported)"
            ));
        }
    }
    None
}

/// The page size a `PRAGMA page_size = value` sets, when SQLite would accept it: the value
/// read as SQLite's `sqlite3Atoi` reads it (an optional sign then leading decimal digits, or
/// `0x` and up to 8 hex digits; trailing text ignored, anything else 0), if that is a power of
/// two in 512..=65536. Other values give `None`: SQLite ignores them, and so does the VFS.
pub fn page_size_value(name: &str, value: Option<&str>) -> Option<u32> {
    if !name.eq_ignore_ascii_case("page_size") {
        return None;
    }
    let v = value?.as_bytes();
    let n: u64 = match v {
        [b'-', ..] => return None,
        [b'0', b'x' | b'X', rest @ ..] if rest.first().is_some_and(|c| c.is_ascii_hexdigit()) => {
            let digits: Vec<u8> = rest
                .iter()
                .copied()
                .skip_while(|&c| c == b'0')
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            if digits.len() > 8 {
                return None;
            }
            let text = std::str::from_utf8(&digits).ok()?;
            if text.is_empty() {
                0
            } else {
                u64::from_str_radix(text, 16).ok()?
            }
        }
        _ => {
            let rest = v.strip_prefix(b"+").unwrap_or(v);
            let digits: Vec<u8> = rest
                .iter()
                .copied()
                .skip_while(|&c| c == b'0')
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if digits.len() > 10 {
                return None;
            }
            let text = std::str::from_utf8(&digits).ok()?;
            if text.is_empty() {
                0
            } else {
                text.parse().ok()?
            }
        }
    };
    let n = u32::try_from(n).ok()?;
    layout::valid_chunk_size(n).then_some(n)
}

unsafe extern "C" fn x_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    guard("xFileControl", || {
        let Some(h) = handle(file) else {
            return ffi::SQLITE_NOTFOUND;
        };
        let Handle::Kv { state, kind, .. } = h else {
            return ffi::SQLITE_NOTFOUND;
        };
        match op {
            ffi::SQLITE_FCNTL_BEGIN_ATOMIC_WRITE if *kind == FileKind::Main => {
                match state.begin_atomic() {
                    Ok(()) => ffi::SQLITE_OK,
                    Err(e) => error_code(&e, Op::Write),
                }
            }
            ffi::SQLITE_FCNTL_COMMIT_ATOMIC_WRITE if *kind == FileKind::Main => {
                match state.commit_atomic() {
                    Ok(()) => ffi::SQLITE_OK,
                    Err(e) => error_code(&e, Op::Write),
                }
            }
            ffi::SQLITE_FCNTL_ROLLBACK_ATOMIC_WRITE if *kind == FileKind::Main => {
                state.rollback_atomic();
                ffi::SQLITE_OK
            }
            ffi::SQLITE_FCNTL_PRAGMA => {
                let az = arg as *mut *mut c_char;
                if az.is_null() {
                    return ffi::SQLITE_NOTFOUND;
                }
                let name = *az.add(1);
                let value = *az.add(2);
                if name.is_null() {
                    return ffi::SQLITE_NOTFOUND;
                }
                let name = CStr::from_ptr(name).to_string_lossy().into_owned();
                let value = (!value.is_null())
                    .then(|| CStr::from_ptr(value).to_string_lossy().into_owned());
                let refusal = match (*kind, page_size_value(&name, value.as_deref())) {
                    (FileKind::Main, Some(ps)) => state.set_new_page_size(ps).err(),
                    _ => refused_pragma(&name, value.as_deref()),
                };
                match refusal {
                    Some(msg) => {
                        if let Ok(c) = CString::new(msg) {
                            *az = ffi::sqlite3_mprintf(c"%s".as_ptr(), c.as_ptr());
                        }
                        ffi::SQLITE_ERROR
                    }
                    None => ffi::SQLITE_NOTFOUND,
                }
            }
            _ => ffi::SQLITE_NOTFOUND,
        }
    })
}

unsafe extern "C" fn x_sector_size(_file: *mut ffi::sqlite3_file) -> c_int {
    guard("xSectorSize", || 4096)
}

unsafe extern "C" fn x_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    guard("xDeviceCharacteristics", || match handle(file) {
        Some(Handle::Kv {
            kind: FileKind::Main,
            ..
        }) => ffi::SQLITE_IOCAP_BATCH_ATOMIC | ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE,
        Some(Handle::Kv { .. }) => ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE,
        _ => 0,
    })
}

// ---------------------------------------------------------------------------------------------
// FFI: the VFS object
// ---------------------------------------------------------------------------------------------

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _sync_dir: c_int,
) -> c_int {
    guard("xDelete", || {
        if name.is_null() {
            return ffi::SQLITE_IOERR_DELETE;
        }
        let Ok(name) = CStr::from_ptr(name).to_str() else {
            return ffi::SQLITE_IOERR_DELETE;
        };
        let Ok(p) = parse_name(name) else {
            return ffi::SQLITE_IOERR_DELETE_NOENT;
        };
        let state = match db_state(
            p.store,
            &p.actor,
            &StateOptions::default(),
            None,
            false,
            None,
        ) {
            Ok(s) => s,
            Err(e) => return error_code(&e, Op::Delete),
        };
        match state.delete(p.file) {
            Ok(()) => ffi::SQLITE_OK,
            Err(e) => error_code(&e, Op::Delete),
        }
    })
}

unsafe extern "C" fn x_access(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    guard("xAccess", || {
        *out = 0;
        if name.is_null() {
            return ffi::SQLITE_OK;
        }
        let Ok(name) = CStr::from_ptr(name).to_str() else {
            return ffi::SQLITE_OK;
        };
        let Ok(p) = parse_name(name) else {
            return ffi::SQLITE_OK;
        };
        match db_state(
            p.store,
            &p.actor,
            &StateOptions::default(),
            None,
            false,
            None,
        ) {
            Ok(s) => {
                *out = s.exists(p.file) as c_int;
                ffi::SQLITE_OK
            }
            Err(e) => {
                error_code(&e, Op::Read);
                ffi::SQLITE_IOERR_ACCESS
            }
        }
    })
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    guard("xFullPathname", || {
        if name.is_null() || out.is_null() || n_out <= 0 {
            return ffi::SQLITE_CANTOPEN;
        }
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.len() > n_out as usize {
            return ffi::SQLITE_CANTOPEN;
        }
        ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len());
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_dl_open(_vfs: *mut ffi::sqlite3_vfs, _name: *const c_char) -> *mut c_void {
    ptr::null_mut()
}

unsafe extern "C" fn x_dl_error(_vfs: *mut ffi::sqlite3_vfs, n: c_int, msg: *mut c_char) {
    guard("xDlError", || {
        let text = b"kvsqlite does not load extensions\0";
        if n > 0 && !msg.is_null() {
            let len = text.len().min(n as usize);
            ptr::copy_nonoverlapping(text.as_ptr() as *const c_char, msg, len);
            *msg.add(len - 1) = 0;
        }
        0
    });
}

unsafe extern "C" fn x_dl_sym(
    _vfs: *mut ffi::sqlite3_vfs,
    _h: *mut c_void,
    _sym: *const c_char,
) -> Option<unsafe extern "C" fn(*mut ffi::sqlite3_vfs, *mut c_void, *const c_char)> {
    None
}

unsafe extern "C" fn x_dl_close(_vfs: *mut ffi::sqlite3_vfs, _h: *mut c_void) {}

unsafe extern "C" fn x_randomness(
    _vfs: *mut ffi::sqlite3_vfs,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    guard("xRandomness", || {
        if n <= 0 || out.is_null() {
            return 0;
        }
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ SEQ.fetch_add(0x9E37_79B9, std::sync::atomic::Ordering::Relaxed)
            ^ (std::process::id() as u64) << 32;
        let bytes = crate::rng::Rng::new(seed).bytes(n as usize);
        ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, n as usize);
        n
    })
}

unsafe extern "C" fn x_sleep(_vfs: *mut ffi::sqlite3_vfs, micros: c_int) -> c_int {
    guard("xSleep", || {
        std::thread::sleep(std::time::Duration::from_micros(micros.max(0) as u64));
        micros
    })
}

/// Milliseconds since the Julian epoch (what `xCurrentTimeInt64` reports).
pub fn julian_day_ms_now() -> i64 {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    unix_ms + 210_866_760_000_000
}

unsafe extern "C" fn x_current_time(_vfs: *mut ffi::sqlite3_vfs, out: *mut f64) -> c_int {
    guard("xCurrentTime", || {
        *out = julian_day_ms_now() as f64 / 86_400_000.0;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_current_time_int64(
    _vfs: *mut ffi::sqlite3_vfs,
    out: *mut ffi::sqlite3_int64,
) -> c_int {
    guard("xCurrentTimeInt64", || {
        *out = julian_day_ms_now();
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn x_get_last_error(
    _vfs: *mut ffi::sqlite3_vfs,
    _n: c_int,
    _out: *mut c_char,
) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use super::page_size_value;

    #[test]
    fn page_size_values_parse_as_sqlite_accepts_them() {
        let v = |s: &str| page_size_value("page_size", Some(s));
        assert_eq!(v("8192"), Some(8192));
        assert_eq!(v("+512"), Some(512));
        assert_eq!(v("065536"), Some(65536));
        assert_eq!(v("0x400"), Some(1024));
        assert_eq!(page_size_value("PAGE_SIZE", Some("2048")), Some(2048));
        // As sqlite3Atoi: trailing text is ignored, leading space or a sign before 0x is not.
        assert_eq!(v("8192abc"), Some(8192));
        assert_eq!(v("8192.0"), Some(8192));
        assert_eq!(v("0x2000zz"), Some(8192));
        assert_eq!(v("0x000000002000"), Some(8192));
        for bad in [
            "",
            "0",
            "256",
            "1000",
            "131072",
            "-1024",
            "abc",
            " 8192",
            "+0x2000",
            "0x",
            "0x1G",
            "99999999999",
            "0x123456789",
        ] {
            assert_eq!(v(bad), None, "{bad:?}");
        }
        assert_eq!(page_size_value("page_size", None), None);
        assert_eq!(page_size_value("cache_size", Some("8192")), None);
    }
}

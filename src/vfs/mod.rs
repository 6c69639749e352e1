//! The SQLite VFS over the KV layer, written against `libsqlite3-sys` (`rusqlite::ffi`).
//!
//! Why it exists: it is what makes an actor's SQLite database live in a key-value store with
//! round-trip-minimal I/O. One VFS named [`VFS_NAME`] is registered once per process. Stores are
//! registered in a process-wide table ([`register_store`]); a database path is
//! `/<store-id>/<percent-encoded actor id>`, and SQLite's derived `…-journal` name maps to the
//! same actor's journal file. Once [`uri::enable`] was called (the loadable extension does), a
//! plain name is an actor id on the store its `kv` URI parameter names
//! (`file:ACTOR?vfs=kvsqlite&kv=URL`, see [`uri`]). Any other name (`-wal`, a super-journal, a
//! foreign path) is refused with `SQLITE_CANTOPEN`. Temporary files SQLite asks for live in
//! process memory. `PRAGMA kvsqlite_stats` returns a database's counters as JSON.
//!
//! This file holds the registry and the open API; the C callbacks SQLite calls are in `ffi.rs`,
//! and each database's shared state and I/O in [`file`](mod@file).
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
//! - With history on (the default, [`OpenOptions::history`]), every commit's redo record goes
//!   out in the same put as the commit (see [`history`]): restores, forks and exports as of any
//!   commit of the retention window, with no round trip added to a commit or an open.

pub mod cache;
pub mod codec;
pub mod commit;
pub mod fence;
mod ffi;
pub mod file;
pub mod history;
pub mod hold;
pub mod layout;
mod pragma;
pub mod stats;
pub mod uri;

use std::collections::HashMap;
use std::ffi::c_int;
use std::ptr;
use std::sync::{Arc, Once, Weak};

use parking_lot::Mutex;

use crate::kv::{ActorKv, KvError, SharedStore};
use crate::preload::Preload;
pub use fence::FenceSpec;
pub use ffi::{julian_day_ms_now, last_clock_read, stats_json, STATS_PRAGMA};
pub use file::VfsError;
use file::{DbState, Op, StateOptions};
use layout::FileKind;
pub use pragma::{page_size_value, refused_pragma, synchronous_is_off};
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

/// How many store handles the registry holds now (live ones, and dropped ones not yet pruned):
/// bounded by twice the live handles (at least 32), however many were ever registered.
pub fn registered_stores() -> usize {
    REGISTRY.lock().stores.len()
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
    state.set_self(Arc::downgrade(&state));
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
    /// Offer SQLite batch-atomic writes (`SQLITE_IOCAP_BATCH_ATOMIC`), so a transaction
    /// commits with one KV put. Default `true`. `false` makes every write transaction go
    /// through the rollback journal (correct; the VFS buffers the transaction's writes until
    /// SQLite's sync, so a small one costs 3 round trips with `synchronous=NORMAL` and 4 with
    /// `FULL`, and more pages than one put carries add their puts): a baseline for benchmarks,
    /// not for production. Like the cache sizes, it is taken from the open that
    /// creates the database's shared state: a second connection of an open database shares it.
    pub batch_atomic: bool,
    /// How much history commits keep (default: 24 hours, 256 MiB of redo records; see
    /// [`history`]). [`history::HistoryOptions::off`] turns it off: commits then write no
    /// redo record. Taken from the open that creates the database's shared state.
    pub history: history::HistoryOptions,
    /// Pipelined commits (default `false`; the host turns them on): a COMMIT that fits one put
    /// returns once its put is queued, and later transactions read and write on top of it. One
    /// put is in flight per database; the commits queued meanwhile go out together in the next
    /// put, in order, each with its own redo record. [`Database::wait_durable`] blocks until
    /// every commit so far is acknowledged: answer no one about a commit before it returns.
    /// A put that fails (or whose outcome is unknown) poisons the database: the commits queued
    /// behind it are not written, and every later statement and `wait_durable` fail
    /// ([`VfsError::Poisoned`]); open it again (the store is the truth). A crash loses only
    /// commits not yet acknowledged, always a suffix. Staged commits, journal fallbacks,
    /// truncation and history reads wait for the pipeline first and stay synchronous. Taken
    /// from the open that creates the database's shared state.
    pub pipelined: bool,
    /// Compress each page value sent to the store with LZ4 when that makes it shorter
    /// (default `true`; see [`codec`]): on the wire and at rest. `false` sends pages as they
    /// are (a baseline for benchmarks). It does not govern the history: its page images are
    /// LZ4-compressed either way (with this on, each page is compressed once and the image
    /// shares the block), so commits compress pages as long as history is on. Either way every
    /// page value read is decoded, so a database holds raw and compressed pages side by side. Taken from the open that creates
    /// the database's shared state.
    pub compress_pages: bool,
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
            batch_atomic: true,
            history: history::HistoryOptions::default(),
            pipelined: false,
            compress_pages: true,
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

    /// The database's size in bytes as this process last knew it, read without a KV call (for
    /// dashboards); `None` while the VFS must reload its metadata from the store first.
    pub fn known_size(&self) -> Option<u64> {
        self.state.known_main_size()
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

    /// Makes this new, held database ([`OpenOptions::hold_writes`]) hold a whole image (page
    /// size, file size, every page): a fork, written with its actor's records by
    /// [`Database::flush_held`] (one put, or staged), its history starting there.
    pub fn hold_image(
        &self,
        page_size: u32,
        size: u64,
        pages: std::collections::BTreeMap<u32, Vec<u8>>,
    ) -> Result<(), VfsError> {
        self.state.hold_image(page_size, size, pages)
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

    /// Pages read since [`Database::track_reads`] began: interior B-tree pages first, then the
    /// rest, each group most recent first.
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

    /// Offers pages fetched in the background, values as the store holds them (raw or
    /// compressed, see [`codec`]; a malformed one is not taken): cached only when nothing was
    /// written since the plan's sequence, never over a page the cache holds. Returns how many
    /// were taken.
    pub fn offer_pages(&self, seq: u64, pages: Vec<(u32, Vec<u8>)>) -> usize {
        self.state.offer_pages(seq, pages)
    }

    /// Blocks until every commit made so far (on any connection of this database) is
    /// acknowledged by the store. Immediate when commits are not pipelined
    /// ([`OpenOptions::pipelined`]): each COMMIT then returned only once durable. Fails with
    /// [`VfsError::Poisoned`] (or [`VfsError::Moved`]) once a pipelined put failed.
    pub fn wait_durable(&self) -> Result<(), VfsError> {
        self.state.wait_durable()
    }

    /// A handle to wait for this database's commits from another thread, without the
    /// connection (see [`Durability`]).
    pub fn durability(&self) -> Durability {
        Durability(self.state.clone())
    }

    /// The reason this database refuses every operation: another instance took the fence, or
    /// a pipelined put failed. `None` while it is usable.
    pub fn unusable(&self) -> Option<VfsError> {
        self.state.check_usable().err()
    }

    /// The bookmark of the current commit: an opaque string that sorts by time. No round
    /// trip.
    pub fn bookmark(&self) -> Result<String, VfsError> {
        self.state.bookmark()
    }

    /// The bookmark of the last commit at or before `time_ms` (ms since the Unix epoch) that
    /// the history holds. One round trip.
    pub fn bookmark_for_time(&self, time_ms: u64) -> Result<String, VfsError> {
        self.state.bookmark_for_time(time_ms)
    }

    /// The commits the history holds, oldest first (seq, time, pages, bytes, bookmark). One
    /// round trip (a list).
    pub fn history(&self) -> Result<Vec<history::CommitInfo>, VfsError> {
        self.state.history()
    }

    /// Restores the database in place to `target` (a seq, a bookmark or a time): one new
    /// commit, fenced, itself in the history (restore to [`history::RestoreOutcome::undo`] to
    /// undo it). No transaction may be open on any connection of the database. Round trips:
    /// 1 list + 1 get + the commit (1 put, or staged when large); none when the target is the
    /// current commit.
    pub fn restore(&self, target: &history::Target) -> Result<history::RestoreOutcome, VfsError> {
        self.state.restore(target)
    }

    /// The whole database as of `target`, for a fork or an export. Round trips: one list
    /// (with the fence check) and one get of the history, then reads of the current pages not
    /// changed since (with read-ahead) that are not cached.
    pub fn image_at(&self, target: &history::Target) -> Result<history::Image, VfsError> {
        self.state.image_at(target)
    }

    /// Deletes history past the retention window and the byte bound (see
    /// [`history::HistoryOptions`]), with fenced writes. Round trips: 1 list, then per group
    /// of deleted records 1 get and 1 write (more for a record too large for one write).
    pub fn compact_history(&self) -> Result<history::CompactReport, VfsError> {
        self.state.compact_history()
    }

    /// True when [`Database::compact_history`] would delete something (or the database does
    /// not know yet), by the rule of [`history::watch`]. No KV call.
    pub fn compaction_due(&self) -> bool {
        self.state.compaction_due()
    }

    /// [`Database::compact_history`] when [`Database::compaction_due`]; otherwise `None` and
    /// no KV call. Call it now and then on a database that never goes idle (between
    /// transactions) to keep its history within the retention window and byte bound.
    pub fn compact_if_due(&self) -> Result<Option<history::CompactReport>, VfsError> {
        self.state.compact_if_due()
    }

    /// A handle that answers [`Database::compaction_due`] from any thread (a host's sweep
    /// checks it without taking the actor's lock).
    pub fn compaction_watch(&self) -> CompactionWatch {
        CompactionWatch(self.state.clone())
    }
}

/// Says from any thread whether a database's history compaction is due (see
/// [`Database::compaction_watch`]); no KV call.
#[derive(Clone)]
pub struct CompactionWatch(Arc<DbState>);

impl CompactionWatch {
    /// [`Database::compaction_due`].
    pub fn due(&self) -> bool {
        self.0.compaction_due()
    }
}

/// Waits for a database's pipelined commits (see [`OpenOptions::pipelined`]) from any thread:
/// take a [`Durability::ticket`] after the work whose commits must be durable (it covers every
/// commit made so far), then [`Durability::wait_for`] it — the host's output gate, which
/// releases the actor for the next request before it waits.
#[derive(Clone)]
pub struct Durability(Arc<DbState>);

impl Durability {
    /// A ticket covering every commit made so far (0 when none was pipelined).
    pub fn ticket(&self) -> u64 {
        self.0.durable_ticket()
    }

    /// Blocks until every commit the ticket covers is acknowledged by the store; fails with
    /// [`VfsError::Poisoned`] (or [`VfsError::Moved`]) once a pipelined put failed.
    pub fn wait_for(&self, ticket: u64) -> Result<(), VfsError> {
        self.0.wait_durable_for(ticket)
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
pub const MOVED_ERROR_CODE: c_int = rusqlite::ffi::SQLITE_IOERR_VNODE;

/// True when the linked SQLite was compiled with `SQLITE_ENABLE_BATCH_ATOMIC_WRITE`.
pub fn batch_atomic_compiled() -> bool {
    // SAFETY: a NUL-terminated static string; the function only reads it.
    unsafe { rusqlite::ffi::sqlite3_compileoption_used(c"ENABLE_BATCH_ATOMIC_WRITE".as_ptr()) == 1 }
}

/// What [`register`] warns (once per process) when the linked SQLite lacks batch-atomic writes.
pub const JOURNAL_WARNING: &str = "kvsqlite: this SQLite was built without SQLITE_ENABLE_BATCH_ATOMIC_WRITE: every commit goes through a rollback journal (correct, but a one-page write transaction costs 3 KV round trips instead of 1 under PRAGMA synchronous=NORMAL, 4 under the default FULL)";

/// Registers the VFS with SQLite (idempotent). Warns once (tracing) when SQLite lacks
/// batch-atomic writes: every commit then journals, correct but slower.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if !batch_atomic_compiled() {
            tracing::warn!("{JOURNAL_WARNING}");
        }
        let vfs = ffi::new_vfs();
        // SAFETY: the struct is leaked, so it outlives every use SQLite makes of it.
        unsafe {
            rusqlite::ffi::sqlite3_vfs_register(Box::leak(vfs), 0);
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
        batch_atomic: opts.batch_atomic,
        history: opts.history.clone(),
        pipelined: opts.pipelined,
        compress: opts.compress_pages,
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

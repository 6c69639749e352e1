//! The actor shim: wake an actor (one KV round trip), create one (one read and one write),
//! fence its instances, run its migrations, time its startup, and log every query it runs.
//!
//! Why it exists: an actor is what kvsqlite's users hold — a single-writer unit of state with an
//! id, its own SQLite database and a little persisted state — and waking it is where round trips
//! are won or lost. [`Actor::start`] reads everything its startup needs in **one** mixed batch
//! (the state, the inspector token, the fence record, the database's metadata, its first pages
//! up to a byte budget, the declared prefixes and the hints the last sleep left), opens the
//! database on that preload, checks migrations and runs the wake hooks without another round
//! trip. A new actor's creation is held in memory and written by the write collector in one put.
//!
//! Modules: [`records`] (the actor's keys), [`startup`] (the start sequence and its timings),
//! [`migrations`], [`statements`] (SQL split as SQLite does), [`query_log`] (one event per
//! statement), [`guard`] (what SQL may reach: the authorizer and limits on every connection),
//! [`alarms`], [`queue`] and [`connections`] (work for later, messages and client connections).
//! Layering: this module uses the VFS and the KV layer, never the other way round.

pub mod alarms;
pub mod connections;
pub mod guard;
pub mod history;
pub mod migrations;
pub mod query_log;
pub mod queue;
pub mod records;
pub mod startup;
pub mod statements;

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::kv::counting::CountingStore;
use crate::kv::{Key, KvError, SharedStore, Value};
use crate::metrics::MetricsDoc;
use crate::vfs::{Database, OpenError, VfsError};
pub use migrations::{Migration, MigrationError};
pub use query_log::{QueryLog, QueryLogMode, QueryRecord};
pub use startup::StartupReport;

/// A hook's failure: any error. The actor then does not start and nothing of the attempt is
/// written.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// What a hook sees.
pub struct HookCtx<'a> {
    /// The actor's id.
    pub actor_id: &'a str,
    /// True when this start creates the actor.
    pub is_new: bool,
    /// The persisted state; a hook may change it. A change is saved before the start returns:
    /// with the creation's one write for a new actor; for an existing actor by one more write
    /// at the end of the wake (so a wake whose hooks change the state costs 2 round trips, not
    /// 1).
    pub state: &'a mut Vec<u8>,
    /// The actor's database, once it is open (`None` in `create_state` and `on_create`).
    pub db: Option<&'a Database>,
    /// The declared prefixes as the wake read them: `(prefix, entries, complete)`.
    pub prefixes: &'a [PrefixData],
}

impl<'a> HookCtx<'a> {
    /// A hook's view of a start.
    pub fn new(
        actor_id: &'a str,
        is_new: bool,
        state: &'a mut Vec<u8>,
        db: Option<&'a Database>,
        prefixes: &'a [PrefixData],
    ) -> Self {
        HookCtx {
            actor_id,
            is_new,
            state,
            db,
            prefixes,
        }
    }
}

/// A hook that returns nothing.
pub type Hook = Box<dyn Fn(&mut HookCtx<'_>) -> Result<(), HookError> + Send + Sync>;

/// A hook that builds a new actor's initial state.
pub type StateHook = Box<dyn Fn(&mut HookCtx<'_>) -> Result<Vec<u8>, HookError> + Send + Sync>;

/// The actor's in-memory vars (downcast with [`Actor::vars`]).
pub type Vars = Box<dyn Any + Send>;

/// A hook that builds the actor's vars.
pub type VarsHook = Box<dyn Fn(&mut HookCtx<'_>) -> Result<Vars, HookError> + Send + Sync>;

/// The user callbacks of a start, each optional. Any of them may fail: the actor then does not
/// start, and nothing of the attempt is written (a new actor does not exist afterwards).
#[derive(Default)]
pub struct Hooks {
    /// A new actor's initial state (default: empty).
    pub create_state: Option<StateHook>,
    /// Runs once, when the actor is created (before its database opens).
    pub on_create: Option<Hook>,
    /// Builds the actor's in-memory vars (not persisted), at every start.
    pub create_vars: Option<VarsHook>,
    /// Runs at every start, after migrations.
    pub on_wake: Option<Hook>,
    /// Runs last, before a new actor's creation is written (its failure writes nothing).
    pub on_before_actor_start: Option<Hook>,
    /// Handles a due alarm, inside the transaction that deletes it ([`Actor::run_alarms`]; a
    /// host's tick calls it for alarms it has no handler of its own for).
    pub on_alarm: Option<AlarmHook>,
    /// Handles a queued message, inside the transaction that acknowledges it
    /// ([`Actor::run_queue`]; a host's drain calls it instead of its own handler).
    pub on_message: Option<MessageHook>,
}

/// A hook that handles a due alarm: it runs inside the transaction that deletes the alarm (its
/// writes and the deletion commit together); an error rolls both back and the alarm is retried
/// later with a backoff.
pub type AlarmHook = Arc<dyn Fn(&Actor, &alarms::Alarm) -> Result<(), HookError> + Send + Sync>;

/// A hook that handles a queued message: it runs inside the transaction that acknowledges the
/// message (its writes and the acknowledgement commit together); an error rolls both back and
/// the message stays first in line.
pub type MessageHook = Arc<dyn Fn(&Actor, &queue::Message) -> Result<(), HookError> + Send + Sync>;

/// A KV prefix of the actor's own that the wake batch reads too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixSpec {
    /// The prefix (must not start with `0x01` or `0x08`, which kvsqlite uses).
    pub prefix: Key,
    /// Most key and value bytes to read.
    pub max_bytes: usize,
    /// When the listing is cut short by `max_bytes`: `true` hands the hooks what was read,
    /// `false` makes the start fail (the actor needs all of it).
    pub partial_ok: bool,
}

/// A declared prefix as the wake read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixData {
    /// The prefix.
    pub prefix: Key,
    /// Its entries in key order.
    pub entries: Vec<(Key, Value)>,
    /// True when every entry under the prefix was read.
    pub complete: bool,
}

/// How actors start.
pub struct ActorConfig {
    /// Bytes of the database's pages the wake batch reads (page 1 first). Default 1 MiB.
    pub preload_budget: usize,
    /// Other prefixes the wake reads.
    pub prefixes: Vec<PrefixSpec>,
    /// Migrations, in order (`migrations::load_dir` reads `sql/migrations`).
    pub migrations: Vec<Migration>,
    /// True when migrations are configured (even an empty list): the `db_migrate` phase is
    /// then reported.
    pub migrate: bool,
    /// User callbacks.
    pub hooks: Hooks,
    /// Strict mode (tests): a KV round trip in a phase the preload should serve fails the start
    /// instead of logging a warning.
    pub strict: bool,
    /// Save hot-page hints at sleep and fetch them in the background after a wake. Default on.
    pub hints: bool,
    /// Most pages kept in the hints (interior B-tree pages first, then the most recently read).
    /// Default 256.
    pub max_hint_pages: usize,
    /// What the per-query log keeps: every statement (`Full`, the default), one in `n`
    /// (`Sampled(n)`), or nothing (`Off`). See [`query_log`] for what each costs.
    pub query_log: QueryLogMode,
    /// Database tuning (preload, fence, hold and history are set by the actor layer).
    pub open: crate::vfs::OpenOptions,
    /// The connection's SQL guard (see [`guard`]): the library's default refuses `ATTACH`,
    /// `DETACH` and the process-wide pragmas; the host adds its limits.
    pub guard: guard::GuardConfig,
    /// How much history the actor's database keeps: a duration and a byte bound (default 24 h
    /// and 256 MiB; [`crate::vfs::history::HistoryOptions::off`] keeps none and costs
    /// nothing). It replaces `open.history`.
    pub retention: crate::vfs::history::HistoryOptions,
    /// True when the actor uses alarms ([`alarms`]): the `init_alarms` phase then arms the
    /// earliest pending alarm from the preload at every wake (0 round trips).
    pub alarms: bool,
    /// True when the actor has a queue ([`queue`]): the wake batch then reads its messages
    /// too and the `init_queue` phase takes them (0 extra round trips).
    pub queue: bool,
    /// True when the actor has connections ([`connections`]): `kvsqlite_send` and
    /// `kvsqlite_conn_id` are installed on its database and the `restore_connections` phase
    /// reads its connection records from the preload at every wake (0 round trips).
    pub connections: bool,
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            preload_budget: 1 << 20,
            prefixes: Vec::new(),
            migrations: Vec::new(),
            migrate: false,
            hooks: Hooks::default(),
            strict: false,
            hints: true,
            max_hint_pages: 256,
            query_log: QueryLogMode::Full,
            open: crate::vfs::OpenOptions::default(),
            guard: guard::GuardConfig::default(),
            retention: crate::vfs::history::HistoryOptions::default(),
            alarms: false,
            queue: false,
            connections: false,
        }
    }
}

impl ActorConfig {
    /// A config that applies `migrations`.
    pub fn with_migrations(mut self, migrations: Vec<Migration>) -> Self {
        self.migrations = migrations;
        self.migrate = true;
        self
    }
}

/// Why an actor could not start, or an operation on it failed.
#[derive(Debug)]
pub enum ActorError {
    /// The configuration is unusable.
    InvalidConfig(String),
    /// The actor id is unusable.
    InvalidActor(KvError),
    /// This actor already runs in this process on this store handle.
    AlreadyRunning {
        /// The actor.
        actor: String,
    },
    /// A KV call of the actor layer failed.
    Kv(KvError),
    /// The database could not be opened.
    Open(OpenError),
    /// A stored record is malformed.
    Corrupt(String),
    /// A migration failed or does not match what was applied.
    Migration(MigrationError),
    /// A user hook failed (or panicked).
    Hook {
        /// The hook.
        phase: &'static str,
        /// What it said.
        message: String,
    },
    /// Strict mode: a phase the preload should serve made KV round trips.
    RoundTrips {
        /// The phase.
        phase: &'static str,
        /// How many.
        round_trips: u64,
    },
    /// Another instance of the actor wrote since this one woke: this one must wake again.
    Moved,
    /// A fork's new actor already exists.
    ActorExists(String),
    /// The OS's random source failed (an instance id or a token could not be made).
    Random(startup::RandomError),
    /// The database (or the VFS) refused an operation.
    Vfs(VfsError),
    /// SQLite failed.
    Sqlite(rusqlite::Error),
}

impl fmt::Display for ActorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorError::InvalidConfig(m) => write!(f, "invalid actor config: {m}"),
            ActorError::ActorExists(a) => write!(f, "actor {a:?} already exists"),
            ActorError::Random(e) => write!(f, "{e}"),
            ActorError::InvalidActor(e) => write!(f, "{e}"),
            ActorError::AlreadyRunning { actor } => write!(
                f,
                "actor {actor:?} is already running in this process on this store"
            ),
            ActorError::Kv(e) => write!(f, "{e}"),
            ActorError::Open(e) => write!(f, "cannot open the actor's database: {e}"),
            ActorError::Corrupt(m) => write!(f, "actor record is corrupt: {m}"),
            ActorError::Migration(e) => write!(f, "{e}"),
            ActorError::Hook { phase, message } => write!(f, "hook {phase} failed: {message}"),
            ActorError::RoundTrips { phase, round_trips } => write!(
                f,
                "strict mode: phase {phase} made {round_trips} KV round trip(s); the preload should serve it"
            ),
            ActorError::Moved => write!(
                f,
                "actor moved: another instance wrote since this one woke; nothing was written"
            ),
            ActorError::Vfs(e) => write!(f, "{e}"),
            ActorError::Sqlite(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ActorError {}

impl From<rusqlite::Error> for ActorError {
    fn from(e: rusqlite::Error) -> Self {
        if is_moved_error(&e) {
            ActorError::Moved
        } else {
            ActorError::Sqlite(e)
        }
    }
}

impl From<VfsError> for ActorError {
    fn from(e: VfsError) -> Self {
        match e {
            VfsError::Moved => ActorError::Moved,
            e => ActorError::Vfs(e),
        }
    }
}

impl ActorError {
    /// True for [`ActorError::Moved`].
    pub fn is_moved(&self) -> bool {
        matches!(self, ActorError::Moved)
    }
}

/// True when an SQLite error is the fence's "actor moved" (`SQLITE_IOERR_VNODE`).
pub fn is_moved_error(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.extended_code == crate::vfs::MOVED_ERROR_CODE)
}

/// Actors running in this process: (store handle address, actor id).
static RUNNING: LazyLock<Mutex<HashSet<(usize, String)>>> =
    LazyLock::new(|| Mutex::new(HashSet::new()));

/// Marks an actor as running while alive.
struct RunningEntry(usize, String);

impl RunningEntry {
    fn claim(store: &SharedStore, actor: &str) -> Result<Self, ActorError> {
        let addr = Arc::as_ptr(store) as *const () as usize;
        if !RUNNING.lock().insert((addr, actor.to_string())) {
            return Err(ActorError::AlreadyRunning {
                actor: actor.to_string(),
            });
        }
        Ok(RunningEntry(addr, actor.to_string()))
    }
}

impl Drop for RunningEntry {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .remove(&(self.0, std::mem::take(&mut self.1)));
    }
}

/// The background fetch of hinted pages after a wake.
struct Prefetch {
    handle: Option<JoinHandle<()>>,
    round_trips: Arc<AtomicU64>,
    pages: Arc<AtomicU64>,
}

/// A running actor. [`Actor::sleep`] (or drop) ends it cleanly: it saves the hot-page hints and
/// any state change not yet written, in one fenced write.
pub struct Actor {
    // Field order is drop order: the query hook and the SQL guard go before the database they
    // are installed on.
    hook: Option<query_log::QueryHook>,
    guard: Option<guard::SqlGuard>,
    db: Option<Database>,
    id: String,
    state: Vec<u8>,
    state_dirty: bool,
    vars: Option<Vars>,
    token: String,
    counting: Arc<CountingStore>,
    /// `counting` as a store handle.
    kv: SharedStore,
    report: StartupReport,
    log: Arc<QueryLog>,
    prefixes: Vec<PrefixData>,
    prefetch: Prefetch,
    hints: bool,
    max_hint_pages: usize,
    startup_pages: Vec<u32>,
    /// Pages whose startup copies the wake found (deleted at sleep when no longer wanted).
    old_copies: Vec<u32>,
    preload_budget: usize,
    /// Alarm bookkeeping ([`alarms`]).
    alarm_state: alarms::AlarmState,
    /// The queue's messages in memory ([`queue`]).
    queue: queue::QueueState,
    /// Connection records and the current connection ([`connections`]).
    conns: connections::ConnState,
    /// The alarm and message hooks of the config.
    on_alarm: Option<AlarmHook>,
    on_message: Option<MessageHook>,
    _running: RunningEntry,
}

impl Actor {
    /// Wakes actor `actor_id` on `store` (creating it when the store has never held it) and
    /// returns it running. An existing actor costs one KV round trip; a new one, one read and one
    /// write (more only when its first write exceeds one put's limits, reported in
    /// [`StartupReport::kv_round_trips`]). A failed start leaves nothing open and, for a new
    /// actor, nothing written.
    pub fn start(
        store: SharedStore,
        actor_id: &str,
        config: &ActorConfig,
    ) -> Result<Actor, ActorError> {
        startup::start(store, actor_id, config)
    }

    /// The store handle this instance counts its round trips on.
    fn counting_store(&self) -> &SharedStore {
        &self.kv
    }

    fn alarm_state(&self) -> &alarms::AlarmState {
        &self.alarm_state
    }

    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The actor's database: a `rusqlite::Connection` through `Deref`.
    pub fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database lives until the actor ends")
    }

    /// The SQL guard of the actor's database: switch its [`guard::Mode`] around SQL that comes
    /// from elsewhere (`actor.sql_guard().scope(Mode::Remote)`), and explain its refusals.
    pub fn sql_guard(&self) -> &guard::SqlGuard {
        self.guard
            .as_ref()
            .expect("the guard lives until the actor ends")
    }

    /// The persisted state.
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// Replaces the persisted state. It is written at sleep (in the same write as the hints);
    /// [`Actor::save_state`] writes it now.
    pub fn set_state(&mut self, state: Vec<u8>) {
        self.state = state;
        self.state_dirty = true;
    }

    /// Writes the state now (one fenced round trip).
    pub fn save_state(&mut self) -> Result<(), ActorError> {
        self.db()
            .write_entries(vec![(records::state_key(), self.state.clone())], Vec::new())?;
        self.state_dirty = false;
        Ok(())
    }

    /// The vars `create_vars` built, if it built vars of type `T`.
    pub fn vars<T: 'static>(&self) -> Option<&T> {
        self.vars.as_ref().and_then(|v| v.downcast_ref::<T>())
    }

    /// The actor's inspector token.
    pub fn inspector_token(&self) -> &str {
        &self.token
    }

    /// The declared prefixes as the wake read them.
    pub fn prefixes(&self) -> &[PrefixData] {
        &self.prefixes
    }

    /// What the start cost, phase by phase.
    pub fn startup(&self) -> &StartupReport {
        &self.report
    }

    /// The query log (last statements, totals, latency histogram).
    pub fn query_log(&self) -> &Arc<QueryLog> {
        &self.log
    }

    /// Every KV round trip of this instance so far (its wake, its database, its writes), not
    /// counting the background prefetch.
    pub fn kv_round_trips(&self) -> u64 {
        self.counting.snapshot().round_trips()
    }

    /// The counting store behind [`Actor::kv_round_trips`], to read the counters without the
    /// actor (a host reads them after its output gate, while the next request holds the actor).
    pub fn kv_counting(&self) -> Arc<CountingStore> {
        Arc::clone(&self.counting)
    }

    /// Every KV call of this instance so far, by kind, with its keys and bytes (the same
    /// counting store as [`Actor::kv_round_trips`]; the background prefetch not included).
    pub fn kv_counters(&self) -> crate::kv::counting::KvCounters {
        self.counting.snapshot()
    }

    /// Waits until the background fetch of hinted pages (if any) is done; returns the pages it
    /// put into the cache.
    pub fn wait_prefetch(&mut self) -> u64 {
        if let Some(h) = self.prefetch.handle.take() {
            let _ = h.join();
        }
        self.prefetch.pages.load(Ordering::SeqCst)
    }

    /// The metrics document: the last start's gauges, the query counters and histogram.
    pub fn metrics(&self) -> MetricsDoc {
        let mut doc = MetricsDoc::new();
        self.report.fill(&mut doc);
        doc.gauge_int(
            "startup_prefetch_round_trips",
            "KV round trips of the background fetch of hinted pages after the wake",
            self.prefetch.round_trips.load(Ordering::SeqCst) as i64,
        );
        let t = self.log.totals();
        doc.counter("sql_statements", "SQL statements run", t.sql_statements);
        doc.counter(
            "kv_round_trips",
            "KV round trips made by SQL statements",
            t.kv_round_trips,
        );
        doc.counter(
            "kv_keys_read",
            "KV keys read by SQL statements",
            t.kv_keys_read,
        );
        doc.counter(
            "kv_keys_written",
            "KV keys written by SQL statements",
            t.kv_keys_written,
        );
        doc.histogram(
            "query_duration_us",
            "SQL statement latency in microseconds",
            self.log.latency(),
        );
        self.alarm_state.fill(&mut doc);
        self.queue.fill(&mut doc);
        let s = self.db().snapshot();
        doc.counter(
            "history_image_bytes",
            "Bytes of page images the history kept, before compression",
            s.history_image_bytes,
        );
        doc.counter(
            "history_stored_bytes",
            "Bytes of those page images as stored (LZ4 where smaller)",
            s.history_stored_bytes,
        );
        doc.counter(
            "page_image_bytes",
            "Bytes of the current database's pages sent to the store, before compression",
            s.page_image_bytes,
        );
        doc.counter(
            "page_stored_bytes",
            "Bytes of those pages as sent and stored (LZ4 where smaller)",
            s.page_stored_bytes,
        );
        doc
    }

    /// Blocks until every commit the actor made so far is acknowledged by the store (see
    /// [`crate::vfs::OpenOptions::pipelined`], which `ActorConfig::open` sets; immediate
    /// when commits are not pipelined). Fails once a pipelined put failed: the actor must then
    /// be woken again.
    pub fn wait_durable(&self) -> Result<(), ActorError> {
        self.db().wait_durable().map_err(ActorError::from)
    }

    /// Ends the actor: saves the hot-page hints (with copies of the pages its startup read that
    /// the next wake's listing may miss) and any unsaved state, in one fenced write, then closes
    /// the database. An actor that moved writes nothing.
    pub fn sleep(mut self) -> Result<(), ActorError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ActorError> {
        if let Some(h) = self.prefetch.handle.take() {
            let _ = h.join();
        }
        let result = self.save_at_sleep();
        self.hook = None;
        self.guard = None;
        self.db = None;
        result
    }

    fn save_at_sleep(&mut self) -> Result<(), ActorError> {
        let Some(db) = self.db.as_ref() else {
            return Ok(());
        };
        if db.moved() {
            return Err(ActorError::Moved);
        }
        let mut entries = Vec::new();
        let mut deletes = Vec::new();
        if self.state_dirty {
            entries.push((records::state_key(), self.state.clone()));
        }
        if self.hints {
            let (e, d) = startup::sleep_hints(
                db,
                &self.startup_pages,
                &self.old_copies,
                self.preload_budget,
                self.max_hint_pages,
            );
            entries.extend(e);
            deletes = d;
        }
        if entries.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        db.write_entries(entries, deletes)?;
        self.state_dirty = false;
        Ok(())
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        if self.db.is_some() {
            if let Err(e) = self.finish() {
                tracing::warn!(actor = %self.id, "actor sleep on drop failed: {e}");
            }
        }
    }
}

impl fmt::Debug for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Actor").field("id", &self.id).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actor_can_move_between_threads_and_its_config_be_shared() {
        fn send<T: Send>() {}
        fn sync<T: Send + Sync>() {}
        send::<Actor>();
        sync::<ActorConfig>();
    }
}

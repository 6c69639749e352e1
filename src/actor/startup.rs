//! The start sequence of an actor, phase by phase, with its timings and its round-trip guard.
//!
//! Why it exists: the wake is the one place where round trips are won or lost, and where users
//! want to see what each step cost. Phases (in this order; `user` ones are the user's callbacks):
//!
//! | phase | group | what |
//! |---|---|---|
//! | `check_persist_data` | internal | the one wake batch read |
//! | `preload_kv` | internal | building the preload from its answer |
//! | `init_new_actor` | internal | a new actor: `create_state`, `on_create` (user, timed apart) |
//! | `instantiate` | internal | instance id, fence, open options |
//! | `load_state` | internal | the persisted state |
//! | `init_inspector_token` | internal | the token, read or made |
//! | `setup_database_client` | internal | opening the database on the preload |
//! | `db_migrate` | user | migrations (whenever configured) |
//! | `init_alarms` | internal | arms the earliest pending alarm from the preload (alarms configured) |
//! | `init_queue` | internal | takes the queued messages the wake batch read (queue configured) |
//! | `restore_connections` | internal | reads the connection records from the preload (connections configured) |
//! | `create_vars`, `on_wake` | user | callbacks |
//! | `on_before_actor_start` | internal | the last callback (before anything is written) |
//! | `flush_writes` | internal | a new actor's one put (the write collector) |
//!
//! Each phase logs `perf internal: <phase>` or `perf user: <phase>` (target `kvsqlite::perf`,
//! field `ms`). The internal phases after the wake read (and the migration check when nothing is
//! pending) are guarded: a KV read there is a warning once per start, or an error in strict
//! mode. User callbacks are never guarded.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{
    guard, migrations, query_log, records, records::Hints, Actor, ActorConfig, ActorError, HookCtx,
    Prefetch, PrefixData, RunningEntry,
};
use crate::kv::counting::{CountingStore, OpKind};
use crate::kv::{Key, ListRequest, ReadOp, ReadResult, SharedStore, Value};
use crate::metrics::MetricsDoc;
use crate::preload::{Lookup, Preload};
use crate::vfs::layout::{self, FileKind, Meta};
use crate::vfs::{open_database, Database, FenceSpec};

/// When a startup gauge is in an actor's metrics document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GaugeWhen {
    /// After every start.
    Always,
    /// After a start that created the actor.
    New,
    /// After a start with migrations configured (`ActorConfig::migrate`).
    Migrate,
    /// After a start with this hook set (`ActorConfig::hooks`), a new actor or not.
    Hook(&'static str),
    /// After a start with this hook set that created the actor.
    NewHook(&'static str),
    /// After a start with this feature configured (`alarms`: `ActorConfig::alarms`), passed
    /// to [`GaugeWhen::holds`] in its `hooks` list.
    Feature(&'static str),
}

impl GaugeWhen {
    /// The condition in words, as the book's table of startup gauges shows it.
    pub fn describe(self) -> String {
        match self {
            GaugeWhen::Always => "always".into(),
            GaugeWhen::New => "new actor".into(),
            GaugeWhen::Migrate => "migrations configured".into(),
            GaugeWhen::Hook(h) => format!("hook `{h}` set"),
            GaugeWhen::NewHook(h) => format!("new actor, hook `{h}` set"),
            GaugeWhen::Feature(f) => format!("{f} configured"),
        }
    }

    /// True when a start with these properties has the gauge (`hooks`: the hooks set and the
    /// features configured).
    pub fn holds(self, is_new: bool, migrate: bool, hooks: &[&str]) -> bool {
        match self {
            GaugeWhen::Always => true,
            GaugeWhen::New => is_new,
            GaugeWhen::Migrate => migrate,
            GaugeWhen::Hook(h) => hooks.contains(&h),
            GaugeWhen::NewHook(h) => is_new && hooks.contains(&h),
            GaugeWhen::Feature(f) => hooks.contains(&f),
        }
    }
}

/// Every startup gauge of [`crate::actor::Actor::metrics`], with when it is there: the one list
/// the code, the book's table (docs/src/library/actors.md) and the tests share
/// (`tests/actor_numbers.rs` keeps that table equal to it and the documents equal to it).
pub const STARTUP_GAUGES: &[(&str, GaugeWhen)] = &[
    ("startup_internal_check_persist_data_ms", GaugeWhen::Always),
    ("startup_internal_preload_kv_ms", GaugeWhen::Always),
    (
        "startup_user_create_state_ms",
        GaugeWhen::NewHook("create_state"),
    ),
    ("startup_user_on_create_ms", GaugeWhen::NewHook("on_create")),
    ("startup_internal_init_new_actor_ms", GaugeWhen::New),
    ("startup_internal_instantiate_ms", GaugeWhen::Always),
    ("startup_internal_load_state_ms", GaugeWhen::Always),
    (
        "startup_internal_init_inspector_token_ms",
        GaugeWhen::Always,
    ),
    (
        "startup_internal_setup_database_client_ms",
        GaugeWhen::Always,
    ),
    ("startup_user_db_migrate_ms", GaugeWhen::Migrate),
    (
        "startup_internal_init_alarms_ms",
        GaugeWhen::Feature("alarms"),
    ),
    (
        "startup_internal_init_queue_ms",
        GaugeWhen::Feature("queue"),
    ),
    (
        "startup_internal_restore_connections_ms",
        GaugeWhen::Feature("connections"),
    ),
    (
        "startup_user_create_vars_ms",
        GaugeWhen::Hook("create_vars"),
    ),
    ("startup_user_on_wake_ms", GaugeWhen::Hook("on_wake")),
    (
        "startup_user_on_before_actor_start_ms",
        GaugeWhen::Hook("on_before_actor_start"),
    ),
    (
        "startup_internal_on_before_actor_start_ms",
        GaugeWhen::Hook("on_before_actor_start"),
    ),
    ("startup_internal_flush_writes_ms", GaugeWhen::Always),
    ("startup_total_ms", GaugeWhen::Always),
    ("startup_kv_round_trips", GaugeWhen::Always),
    ("startup_is_new", GaugeWhen::Always),
    ("preload_kv_entries", GaugeWhen::Always),
    ("preload_kv_bytes", GaugeWhen::Always),
    ("startup_preload_hits", GaugeWhen::Always),
    ("startup_preload_misses", GaugeWhen::Always),
    ("flush_writes_entries", GaugeWhen::Always),
    ("startup_prefetch_round_trips", GaugeWhen::Always),
];

/// The names of [`STARTUP_GAUGES`] a start with these properties has, in the list's order.
pub fn startup_gauge_names(is_new: bool, migrate: bool, hooks: &[&str]) -> Vec<&'static str> {
    STARTUP_GAUGES
        .iter()
        .filter(|(_, w)| w.holds(is_new, migrate, hooks))
        .map(|(n, _)| *n)
        .collect()
}

/// Whose time a phase measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// kvsqlite's own work (`startup_internal_*_ms`).
    Internal,
    /// A user callback or the user's migrations (`startup_user_*_ms`).
    User,
}

impl Group {
    /// `internal` or `user`.
    pub fn name(self) -> &'static str {
        match self {
            Group::Internal => "internal",
            Group::User => "user",
        }
    }
}

/// One phase's duration.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseTiming {
    /// Internal or user.
    pub group: Group,
    /// The phase, in snake case.
    pub name: &'static str,
    /// Milliseconds.
    pub ms: f64,
    /// KV round trips made during the phase (a phase that contains others counts theirs too).
    pub kv_round_trips: u64,
}

/// Where a phase began: its clock and the instance's round trips so far.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    round_trips: u64,
}

/// What a start cost.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StartupReport {
    /// True when this start created the actor.
    pub is_new: bool,
    /// The phases that ran, in order.
    pub phases: Vec<PhaseTiming>,
    /// Wall time of the whole start, in milliseconds.
    pub total_ms: f64,
    /// KV round trips of the whole start (the actor's own calls and its database's).
    pub kv_round_trips: u64,
    /// Entries the wake read for the database preload.
    pub preload_entries: u64,
    /// Bytes of keys and values the wake read for the database preload.
    pub preload_bytes: u64,
    /// Page reads during the start served by the preload.
    pub preload_hits: u64,
    /// Page reads during the start that went to the store.
    pub preload_misses: u64,
    /// Entries a new actor's flush wrote (pages and records).
    pub flush_entries: u64,
}

impl StartupReport {
    /// The duration of phase `name`, if it ran.
    pub fn phase_ms(&self, name: &str) -> Option<f64> {
        self.phases.iter().find(|p| p.name == name).map(|p| p.ms)
    }

    /// Adds the startup gauges to a metrics document.
    pub fn fill(&self, doc: &mut MetricsDoc) {
        for p in &self.phases {
            let name = format!("startup_{}_{}_ms", p.group.name(), p.name);
            debug_assert!(
                STARTUP_GAUGES.iter().any(|(n, _)| *n == name),
                "{name} is missing from STARTUP_GAUGES"
            );
            doc.gauge_f64(
                &name,
                &format!(
                    "milliseconds of the {} startup phase {}",
                    p.group.name(),
                    p.name
                ),
                p.ms,
            );
        }
        doc.gauge_f64(
            "startup_total_ms",
            "milliseconds of the whole start",
            self.total_ms,
        );
        let ints = [
            (
                "startup_kv_round_trips",
                "KV round trips of the start",
                self.kv_round_trips,
            ),
            (
                "startup_is_new",
                "1 when the start created the actor",
                self.is_new as u64,
            ),
            (
                "preload_kv_entries",
                "entries the wake read for the preload",
                self.preload_entries,
            ),
            (
                "preload_kv_bytes",
                "bytes the wake read for the preload",
                self.preload_bytes,
            ),
            (
                "startup_preload_hits",
                "page reads of the start served by the preload",
                self.preload_hits,
            ),
            (
                "startup_preload_misses",
                "page reads of the start that went to the store",
                self.preload_misses,
            ),
            (
                "flush_writes_entries",
                "entries a new actor's creation wrote",
                self.flush_entries,
            ),
        ];
        for (name, help, v) in ints {
            debug_assert!(STARTUP_GAUGES.iter().any(|(n, _)| *n == name));
            doc.gauge_int(name, help, v as i64);
        }
    }
}

/// Times phases, logs them and guards them.
struct Phases {
    counting: Arc<CountingStore>,
    strict: bool,
    warned: bool,
    actor: String,
    timings: Vec<PhaseTiming>,
}

impl Phases {
    fn mark(&self) -> Mark {
        Mark {
            at: Instant::now(),
            round_trips: self.counting.snapshot().round_trips(),
        }
    }

    fn record(&mut self, group: Group, name: &'static str, started: Mark) {
        let ms = started.at.elapsed().as_secs_f64() * 1000.0;
        let kv_round_trips = self.counting.snapshot().round_trips() - started.round_trips;
        tracing::debug!(target: "kvsqlite::perf", actor = %self.actor, ms, kv_round_trips, "perf {}: {name}", group.name());
        self.timings.push(PhaseTiming {
            group,
            name,
            ms,
            kv_round_trips,
        });
    }

    fn reads(&self) -> u64 {
        let c = self.counting.snapshot();
        [OpKind::Get, OpKind::List, OpKind::BatchRead]
            .iter()
            .map(|&k| c.op(k).calls)
            .sum()
    }

    /// Runs an internal phase; with `guard`, a KV read inside it is reported.
    fn internal<T>(
        &mut self,
        name: &'static str,
        guard: bool,
        f: impl FnOnce() -> Result<T, ActorError>,
    ) -> Result<T, ActorError> {
        let before = self.reads();
        let t = self.mark();
        let r = f();
        self.record(Group::Internal, name, t);
        let r = r?;
        if guard {
            self.check(name, before)?;
        }
        Ok(r)
    }

    fn check(&mut self, name: &'static str, before: u64) -> Result<(), ActorError> {
        let n = self.reads() - before;
        if n == 0 {
            return Ok(());
        }
        if self.strict {
            return Err(ActorError::RoundTrips {
                phase: name,
                round_trips: n,
            });
        }
        if !self.warned {
            self.warned = true;
            tracing::warn!(actor = %self.actor, phase = name, round_trips = n, "KV round trip in a startup phase the preload should serve");
        }
        Ok(())
    }

    /// Runs a user callback (never guarded; a panic becomes an error).
    fn user<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, super::HookError>,
    ) -> Result<T, ActorError> {
        let t = self.mark();
        let r = catch_unwind(AssertUnwindSafe(f));
        self.record(Group::User, name, t);
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ActorError::Hook {
                phase: name,
                message: e.to_string(),
            }),
            Err(_) => Err(ActorError::Hook {
                phase: name,
                message: "panicked".into(),
            }),
        }
    }
}

/// Positions of the wake batch's operations.
const OP_ACTOR: usize = 0;
const OP_VFS: std::ops::Range<usize> = 1..4;
const OP_COPIES: usize = 4;
const OP_PREFIXES: usize = 5;

/// Most bytes of startup-page copies the wake reads.
const COPIES_MAX_BYTES: usize = 256 << 10;
/// Most startup pages copied at sleep.
const MAX_STARTUP_COPIES: usize = 32;

fn wake_ops(config: &ActorConfig) -> Vec<ReadOp> {
    let mut ops = vec![ReadOp::Get(vec![
        records::state_key(),
        records::token_key(),
        records::fence_key(),
        records::hints_key(),
    ])];
    ops.extend(layout::preload_reads(config.preload_budget));
    ops.push(ReadOp::List(
        ListRequest::prefix(records::startup_copy_prefix())
            .with_limit(MAX_STARTUP_COPIES)
            .with_max_bytes(COPIES_MAX_BYTES),
    ));
    for p in &config.prefixes {
        ops.push(ReadOp::List(
            ListRequest::prefix(p.prefix.clone()).with_max_bytes(p.max_bytes.max(1)),
        ));
    }
    if config.queue {
        ops.push(super::queue::wake_op());
    }
    ops
}

fn check_config(config: &ActorConfig) -> Result<(), ActorError> {
    if config.preload_budget == 0 {
        return Err(ActorError::InvalidConfig(
            "preload_budget must be at least 1 byte".into(),
        ));
    }
    for p in &config.prefixes {
        if matches!(
            p.prefix.first(),
            None | Some(&records::PREFIX) | Some(&layout::PREFIX)
        ) {
            return Err(ActorError::InvalidConfig(format!(
                "prefix {} is empty or starts with 0x01 or 0x08, which kvsqlite uses",
                crate::kv::display_key(&p.prefix)
            )));
        }
    }
    if config.migrate {
        migrations::validate(&config.migrations).map_err(ActorError::Migration)?;
    }
    Ok(())
}

/// 16 bytes from the OS's random source (the `getrandom` crate). Fails closed: when the
/// source cannot be read the caller gets the error, never a weaker substitute.
pub fn random_bytes() -> Result<[u8; 16], RandomError> {
    random_bytes_from(getrandom::fill)
}

/// [`random_bytes`] from the source `fill` (the seam its fail-closed test uses): the source's
/// error is the caller's error; nothing else fills the bytes in its place.
fn random_bytes_from<E: std::fmt::Display>(
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<[u8; 16], RandomError> {
    let mut b = [0u8; 16];
    fill(&mut b).map_err(|e| RandomError(e.to_string()))?;
    Ok(b)
}

/// The OS's random source could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomError(pub String);

impl std::fmt::Display for RandomError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the OS's random source failed: {}", self.0)
    }
}

impl std::error::Error for RandomError {}

/// A fresh token: 32 lowercase hex digits of [`random_bytes`] (actor tokens, the host's admin
/// token; two of them make an inspector session id). Fails when the random source does.
pub fn random_token() -> Result<String, RandomError> {
    random_token_from(getrandom::fill)
}

/// [`random_token`] from the source `fill` (see [`random_bytes_from`]).
fn random_token_from<E: std::fmt::Display>(
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<String, RandomError> {
    Ok(random_bytes_from(fill)?
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect())
}

/// What the wake batch answered, beyond the preload.
struct Wake {
    /// Pages whose startup copies the wake found in the store.
    copies: Vec<u32>,
    state: Option<Value>,
    token: Option<Value>,
    fence: Option<Value>,
    hints: Option<Hints>,
    prefixes: Vec<PrefixData>,
    /// The database's main file and journal do not exist.
    db_absent: bool,
}

fn read_wake(
    config: &ActorConfig,
    ops: &[ReadOp],
    results: &[ReadResult],
) -> Result<(Preload, Wake), ActorError> {
    if results.len() != ops.len() {
        return Err(ActorError::Corrupt(
            "the wake batch answered out of shape".into(),
        ));
    }
    let ReadResult::Get(actor) = &results[OP_ACTOR] else {
        return Err(ActorError::Corrupt(
            "the wake batch answered out of shape".into(),
        ));
    };
    let [state, token, fence, hints] = actor.as_slice() else {
        return Err(ActorError::Corrupt(
            "the wake batch answered out of shape".into(),
        ));
    };
    let mut preload = Preload::from_reads(&ops[OP_VFS], &results[OP_VFS]);
    let main = preload.lookup(&layout::meta_key(FileKind::Main));
    let journal = preload.lookup(&layout::meta_key(FileKind::Journal));
    let db_absent = matches!(main, Lookup::Absent) && matches!(journal, Lookup::Absent);
    let meta = match main {
        Lookup::Found(raw) => {
            Some(Meta::decode(FileKind::Main, raw).map_err(|e| ActorError::Corrupt(e.0))?)
        }
        _ => None,
    };
    let hints = hints.as_deref().and_then(Hints::decode);
    // Startup copies are current exactly when nobody wrote since the sleep that made them.
    if let (Some(h), Some(meta), ReadResult::List(page)) = (&hints, &meta, &results[OP_COPIES]) {
        if fence.as_deref() == Some(h.fence.as_slice()) {
            for (k, v) in &page.entries {
                let Some(idx) = records::parse_startup_copy_key(k) else {
                    continue;
                };
                let live = meta.live_key(idx);
                if h.startup.contains(&idx)
                    && (idx as u64) < meta.chunk_count()
                    && crate::vfs::codec::plausible(v, meta.chunk_size as usize)
                    && matches!(preload.lookup(&live), Lookup::NotPreloaded)
                {
                    preload.add_entry(live, v.clone());
                }
            }
        }
    }
    let mut prefixes = Vec::new();
    for (spec, res) in config.prefixes.iter().zip(&results[OP_PREFIXES..]) {
        let ReadResult::List(page) = res else {
            return Err(ActorError::Corrupt(
                "the wake batch answered out of shape".into(),
            ));
        };
        let complete = page.is_complete();
        if !complete && !spec.partial_ok {
            return Err(ActorError::InvalidConfig(format!(
                "prefix {} holds more than its budget of {} bytes",
                crate::kv::display_key(&spec.prefix),
                spec.max_bytes
            )));
        }
        prefixes.push(PrefixData {
            prefix: spec.prefix.clone(),
            entries: page.entries.clone(),
            complete,
        });
    }
    Ok((
        preload,
        Wake {
            copies: match &results[OP_COPIES] {
                ReadResult::List(page) => page
                    .entries
                    .iter()
                    .filter_map(|(k, _)| records::parse_startup_copy_key(k))
                    .collect(),
                ReadResult::Get(_) => Vec::new(),
            },
            state: state.clone(),
            token: token.clone(),
            fence: fence.clone(),
            hints,
            prefixes,
            db_absent,
        },
    ))
}

/// The start sequence (see the module documentation).
pub(super) fn start(
    store: SharedStore,
    actor_id: &str,
    config: &ActorConfig,
) -> Result<Actor, ActorError> {
    crate::kv::check_actor_id(actor_id).map_err(ActorError::InvalidActor)?;
    if super::alarms::is_reserved_namespace(actor_id) {
        return Err(ActorError::InvalidActor(
            crate::kv::KvError::InvalidActorId {
                reason: "ids starting with `_kvsqlite/` are reserved".into(),
            },
        ));
    }
    check_config(config)?;
    let running = RunningEntry::claim(&store, actor_id)?;
    let counting = CountingStore::wrap(store.clone());
    let shared: SharedStore = counting.shared();
    let t0 = Instant::now();
    let mut ph = Phases {
        counting: counting.clone(),
        strict: config.strict,
        warned: false,
        actor: actor_id.to_string(),
        timings: Vec::new(),
    };

    let ops = wake_ops(config);
    let results = ph.internal("check_persist_data", false, || {
        shared.batch_read(actor_id, &ops).map_err(ActorError::Kv)
    })?;
    let (preload, wake) = ph.internal("preload_kv", true, || read_wake(config, &ops, &results))?;
    let preload_entries = preload.len() as u64;
    let preload_bytes = preload.bytes() as u64;
    let is_new = wake.state.is_none();
    let prefixes = wake.prefixes;
    // A new actor's state comes from `create_state`; an existing one's from the wake batch,
    // decoded in `load_state` below.
    let mut state = Vec::new();

    if is_new {
        let t = ph.mark();
        let hooks = &config.hooks;
        if let Some(f) = &hooks.create_state {
            let mut s = Vec::new();
            let mut ctx = HookCtx::new(actor_id, is_new, &mut s, None, &prefixes);
            state = ph.user("create_state", || f(&mut ctx))?;
        }
        if let Some(f) = &hooks.on_create {
            let mut ctx = HookCtx::new(actor_id, is_new, &mut state, None, &prefixes);
            ph.user("on_create", || f(&mut ctx))?;
        }
        ph.record(Group::Internal, "init_new_actor", t);
    }

    let (instance, hold) = ph.internal("instantiate", true, || {
        Ok((
            random_bytes().map_err(ActorError::Random)?,
            is_new && wake.db_absent,
        ))
    })?;
    let mut state = ph.internal("load_state", true, || {
        Ok(match &wake.state {
            Some(stored) if !is_new => stored.clone(),
            _ => std::mem::take(&mut state),
        })
    })?;
    let (token, token_new) = ph.internal("init_inspector_token", true, || {
        Ok(match wake.token.as_deref().map(std::str::from_utf8) {
            Some(Ok(t)) if !t.is_empty() => (t.to_string(), false),
            _ => (random_token().map_err(ActorError::Random)?, true),
        })
    })?;

    let mut open = config.open.clone();
    open.history = config.retention.clone();
    open.preload = Some(preload);
    open.trust_preload = true;
    open.hold_writes = hold;
    open.create = true;
    open.read_only = false;
    open.fence = Some(FenceSpec {
        key: records::fence_key(),
        read: wake.fence.clone(),
        instance,
    });
    let current_conn = Arc::new(parking_lot::Mutex::new(None));
    let (db, log, hook, guard) = ph.internal("setup_database_client", true, || {
        let db = open_database(shared.clone(), actor_id, &open).map_err(ActorError::Open)?;
        db.track_reads(true);
        if config.connections {
            // Before the query log: its temporary outbox is not a statement of the actor's.
            super::connections::install(&db, &current_conn)?;
        }
        let (log, hook) = query_log::install_mode(&db, actor_id, db.stats(), config.query_log);
        let guard = guard::install(&db, &config.guard);
        Ok((db, log, hook, guard))
    })?;

    if config.migrate {
        let before = ph.reads();
        let t = ph.mark();
        let r = (|| {
            let pending = migrations::pending(&db, &config.migrations)?;
            let nothing = pending.is_empty();
            for i in pending {
                migrations::apply(&db, &config.migrations[i])?;
            }
            Ok::<bool, migrations::MigrationError>(nothing)
        })();
        ph.record(Group::User, "db_migrate", t);
        let r = r.map_err(|e| match e {
            // A refusal of the guard says what was refused.
            migrations::MigrationError::Failed {
                file,
                line,
                statement,
                source,
            } => migrations::MigrationError::Failed {
                file,
                line,
                statement,
                source: guard.explain(source),
            },
            e => e,
        });
        let nothing = r.map_err(|e| match e {
            migrations::MigrationError::Sqlite { source, .. }
            | migrations::MigrationError::Failed { source, .. }
                if super::is_moved_error(&source) =>
            {
                ActorError::Moved
            }
            e => ActorError::Migration(e),
        })?;
        if nothing && !is_new {
            ph.check("db_migrate", before)?;
        }
    }

    let next_alarm = if config.alarms {
        ph.internal("init_alarms", true, || Ok(super::alarms::earliest(&db)?))?
    } else {
        None
    };

    let queue = if config.queue {
        let res = &results[OP_PREFIXES + config.prefixes.len()];
        ph.internal("init_queue", true, || super::queue::init(&db, res))?
    } else {
        super::queue::QueueState::off()
    };

    let conns = if config.connections {
        ph.internal("restore_connections", true, || {
            super::connections::restore(&db, current_conn)
        })?
    } else {
        super::connections::ConnState::off()
    };

    let mut vars = None;
    if let Some(f) = &config.hooks.create_vars {
        let mut ctx = HookCtx::new(actor_id, is_new, &mut state, Some(&db), &prefixes);
        vars = Some(ph.user("create_vars", || f(&mut ctx))?);
    }
    if let Some(f) = &config.hooks.on_wake {
        let mut ctx = HookCtx::new(actor_id, is_new, &mut state, Some(&db), &prefixes);
        ph.user("on_wake", || f(&mut ctx))?;
    }

    if let Some(f) = &config.hooks.on_before_actor_start {
        let t = ph.mark();
        let mut ctx = HookCtx::new(actor_id, is_new, &mut state, Some(&db), &prefixes);
        let r = ph.user("on_before_actor_start", || f(&mut ctx));
        ph.record(Group::Internal, "on_before_actor_start", t);
        r?;
    }

    let written_before = counting.snapshot().total().keys_written;
    let state_changed = !is_new && wake.state.as_deref() != Some(state.as_slice());
    ph.internal("flush_writes", false, || {
        let mut entries = Vec::new();
        if is_new || state_changed {
            entries.push((records::state_key(), state.clone()));
        }
        if token_new {
            entries.push((records::token_key(), token.clone().into_bytes()));
        }
        if hold {
            db.flush_held(entries)?;
        } else if !entries.is_empty() {
            db.write_entries(entries, Vec::new())?;
        }
        Ok(())
    })?;
    let flush_entries = counting.snapshot().total().keys_written - written_before;

    // The database's counters are its own since the open (a fenced open never shares an open
    // database's state), so they count the open's page reads too.
    let d = db.snapshot();
    let startup_pages = db.recent_reads();
    db.release_preload();
    db.track_reads(true);
    let report = StartupReport {
        is_new,
        phases: ph.timings,
        total_ms: t0.elapsed().as_secs_f64() * 1000.0,
        kv_round_trips: counting.snapshot().round_trips(),
        preload_entries,
        preload_bytes,
        preload_hits: d.preload_hits,
        preload_misses: d.cache_misses,
        flush_entries,
    };
    tracing::debug!(target: "kvsqlite::perf", actor = %actor_id, ms = report.total_ms, round_trips = report.kv_round_trips, is_new, "perf internal: total");
    let prefetch = spawn_prefetch(
        &store,
        actor_id,
        &db,
        wake.hints.as_ref().map(|h| h.hot.as_slice()).unwrap_or(&[]),
        config.hints,
    );
    Ok(Actor {
        hook,
        guard: Some(guard),
        db: Some(db),
        id: actor_id.to_string(),
        state,
        state_dirty: false,
        vars,
        token,
        counting,
        report,
        log,
        prefixes,
        prefetch,
        hints: config.hints,
        max_hint_pages: config.max_hint_pages,
        startup_pages,
        old_copies: wake.copies,
        preload_budget: config.preload_budget,
        alarm_state: super::alarms::AlarmState::armed(config.alarms, next_alarm),
        kv: shared,
        queue,
        conns,
        on_alarm: config.hooks.on_alarm.clone(),
        on_message: config.hooks.on_message.clone(),
        _running: running,
    })
}

/// Starts the background fetch of the hinted pages the cache lacks: one `get` per
/// `max_get_keys` pages on the raw store (counted apart), offered to the cache only if nothing
/// was written meanwhile.
fn spawn_prefetch(
    store: &SharedStore,
    actor: &str,
    db: &Database,
    hot: &[u32],
    enabled: bool,
) -> Prefetch {
    let round_trips = Arc::new(AtomicU64::new(0));
    let pages = Arc::new(AtomicU64::new(0));
    let mut p = Prefetch {
        handle: None,
        round_trips: round_trips.clone(),
        pages: pages.clone(),
    };
    if !enabled {
        return p;
    }
    let (seq, plan) = db.prefetch_plan(hot);
    if plan.is_empty() {
        return p;
    }
    let sink = db.page_sink();
    let store = store.clone();
    let actor = actor.to_string();
    p.handle = std::thread::Builder::new()
        .name("kvsqlite-prefetch".into())
        .spawn(move || {
            let max = store.limits().max_get_keys.max(1);
            let mut fetched = Vec::new();
            for chunk in plan.chunks(max) {
                let keys: Vec<Key> = chunk.iter().map(|(_, k)| k.clone()).collect();
                round_trips.fetch_add(1, Ordering::SeqCst);
                match store.get(&actor, &keys) {
                    Ok(vals) => fetched.extend(
                        chunk
                            .iter()
                            .zip(vals)
                            .filter_map(|((i, _), v)| v.map(|v| (*i, v))),
                    ),
                    Err(e) => {
                        tracing::debug!(actor = %actor, "hinted-page prefetch failed: {e}");
                        return;
                    }
                }
            }
            let n = sink.offer_pages(seq, fetched);
            pages.store(n as u64, Ordering::SeqCst);
        })
        .ok();
    p
}

/// What `sleep()` writes: the hints record and copies of the startup pages the next wake's
/// listing may not reach (pages past the preload budget, or living under a stage key), within
/// one write's limits; and the copies the wake found (`old_copies`) that are no longer wanted,
/// to delete in the same write.
pub(super) fn sleep_hints(
    db: &Database,
    startup_pages: &[u32],
    old_copies: &[u32],
    budget: usize,
    max_hint_pages: usize,
) -> (Vec<(Key, Value)>, Vec<Key>) {
    let Some(fence) = db.next_fence_record() else {
        return (Vec::new(), Vec::new());
    };
    let mut hot = db.recent_reads();
    hot.truncate(max_hint_pages);
    let startup_pages = probe_startup_pages(db).unwrap_or_else(|e| {
        tracing::debug!("startup-page probe failed ({e}); using the pages this start read");
        startup_pages.to_vec()
    });
    let cs = db.page_size() as usize;
    let listed = budget / (cs + 8);
    let mut startup = Vec::new();
    let mut entries = Vec::new();
    let mut bytes = 0;
    for (idx, key) in db.live_keys(&startup_pages) {
        if startup.len() == MAX_STARTUP_COPIES || bytes + cs > COPIES_MAX_BYTES {
            break;
        }
        let staged = key.get(1) == Some(&0x10);
        if (idx as usize) + 1 < listed && !staged {
            continue;
        }
        if let Ok(page) = db.read_page(idx) {
            startup.push(idx);
            // Stored like the page itself: compressed when shorter (the wake's preload holds
            // it under the page's live key, where the VFS decodes it).
            let page = crate::vfs::codec::encode(&page).unwrap_or(page);
            bytes += page.len();
            entries.push((records::startup_copy_key(idx), page));
        }
    }
    let deletes = old_copies
        .iter()
        .filter(|i| !startup.contains(i))
        .map(|&i| records::startup_copy_key(i))
        .collect();
    let hints = Hints {
        fence,
        startup,
        hot,
    };
    entries.push((records::hints_key(), hints.encode()));
    (entries, deletes)
}

/// The pages a wake's startup reads, found by doing what it does on a second connection whose
/// SQLite cache is empty (its reads come from this database's cache, no round trip): read the
/// schema, the migrations table, the earliest alarm, the queue's done rows and the connection
/// records. A creating instance never read them through the VFS (it
/// wrote them), so its own log cannot tell.
fn probe_startup_pages(db: &Database) -> Result<Vec<u32>, rusqlite::Error> {
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        rusqlite::Connection::open_with_flags_and_vfs(db.path(), flags, crate::vfs::VFS_NAME)?;
    db.track_reads(true);
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = '_kvsqlite_migrations'",
        [],
        |r| r.get(0),
    )?;
    if tables > 0 {
        let mut stmt =
            conn.prepare("SELECT id, name, checksum FROM _kvsqlite_migrations ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
    }
    // What `init_alarms`, `init_queue` and `restore_connections` read (nothing when their
    // tables do not exist).
    super::alarms::earliest(&conn)?;
    super::queue::done_keys(&conn)?;
    super::connections::records(&conn)?;
    let pages = db.recent_reads();
    db.track_reads(true);
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn randomness_fails_closed_when_the_source_fails() {
        // A source that cannot be opened: the error, not hash-derived or zero bytes.
        let fail = |_: &mut [u8]| Err("cannot open /dev/urandom");
        assert_eq!(
            random_bytes_from(fail),
            Err(RandomError("cannot open /dev/urandom".into()))
        );
        // One that wrote part of the buffer before failing: still the error.
        let partial = |b: &mut [u8]| {
            b[..8].fill(0xab);
            Err("interrupted after 8 bytes")
        };
        assert_eq!(
            random_bytes_from(partial),
            Err(RandomError("interrupted after 8 bytes".into()))
        );
        let e = random_token_from(fail).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the OS's random source failed: cannot open /dev/urandom"
        );
        // A working source: exactly its bytes.
        let ok = |b: &mut [u8]| -> Result<(), &str> {
            for (i, x) in b.iter_mut().enumerate() {
                *x = i as u8;
            }
            Ok(())
        };
        assert_eq!(
            random_token_from(ok),
            Ok("000102030405060708090a0b0c0d0e0f".to_string())
        );
        // And the real one gives 32 hex digits, differing between calls.
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}

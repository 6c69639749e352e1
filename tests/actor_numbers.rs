//! Every number the actor layer names, checked against what was measured around it:
//!
//! - the startup gauges: the book's table (docs/src/library/actors.md) is
//!   `actor::startup::STARTUP_GAUGES`, a new actor's and a wake's documents hold exactly the
//!   names it gives them (with no hook and with every hook and feature), and every count equals
//!   what a `CountingStore` around the actor's store and `Database::snapshot()` measured over the
//!   start, misses included (a wake whose hook reads past the preload: each miss is one `get`);
//!   an over-budget wake is counted alone on the outer store (1 round trip) and its background
//!   prefetch alone (1), the prefetch held back by a gate until the wake was counted;
//! - the query log: each statement of a scripted session (a preloaded read in a hook, the
//!   start's migration and a migration the hook applies, a cold read, the same read cached, an
//!   autocommit write, an explicit transaction) has a record and a `tracing` event whose every
//!   field equals the deltas measured around it: around the call for the statements the test
//!   runs, between one query event and the next for the migrations' statements (the event
//!   collector reads the counting store, and the database's counters once a hook has them, as
//!   each event is emitted); `duration_us` lies between the store's delay per round trip (every
//!   store call made slow by a known delay) and the measured wall interval;
//! - refused starts (edited, gapped, duplicate, missing migrations, a failing statement): the
//!   whole store, fence included, is byte-equal before and after, and the counting store saw no
//!   write.

#[path = "common/actors.rs"]
mod actors;
use actors::{base, cfg, counted, m};

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvsqlite::actor::startup::{startup_gauge_names, STARTUP_GAUGES};
use kvsqlite::actor::{records, Actor, ActorError, MigrationError};
use kvsqlite::actor::{QueryRecord, StartupReport};
use kvsqlite::kv::counting::{CountingStore, KvCounters, OpKind};
use kvsqlite::kv::latency::LatencyStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{
    Key, KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};
use kvsqlite::vfs::stats::Snapshot;
use serde_json::Value as Json;

/// The integer value of gauge or counter `name` in a metrics document.
fn int(doc: &Json, name: &str) -> u64 {
    doc[name]["value"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not an integer in {doc}"))
}

/// The names of the document's gauges.
fn gauges(doc: &Json) -> BTreeSet<String> {
    doc.as_object()
        .expect("an object")
        .iter()
        .filter(|(_, v)| v["type"] == "gauge")
        .map(|(k, _)| k.clone())
        .collect()
}

fn set(names: Vec<&str>) -> BTreeSet<String> {
    names.into_iter().map(String::from).collect()
}

/// The dump's keys of the database's main file (`0x08 0x00 …`): what a wake under the preload
/// budget lists. `(entries, bytes of keys and values)`.
fn main_file(mem: &MemoryStore, actor: &str) -> (u64, u64) {
    let main: Vec<_> = mem
        .dump()
        .into_iter()
        .filter(|(a, k, _)| a == actor && k.starts_with(&[0x08, 0x00]))
        .collect();
    let bytes = main
        .iter()
        .map(|(_, k, v)| (k.len() + v.len()) as u64)
        .sum();
    (main.len() as u64, bytes)
}

fn value_len(mem: &MemoryStore, actor: &str, key: &[u8]) -> u64 {
    mem.dump()
        .into_iter()
        .find(|(a, k, _)| a == actor && k.as_slice() == key)
        .map_or(0, |(_, _, v)| v.len() as u64)
}

#[test]
fn the_book_table_of_startup_gauges_is_the_code_list() {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/src/library/actors.md"
    ))
    .expect("docs/src/library/actors.md");
    let begin = readme
        .find("<!-- startup-gauges: begin -->")
        .expect("the begin marker");
    let end = readme
        .find("<!-- startup-gauges: end -->")
        .expect("the end marker");
    let rows: Vec<(String, String)> = readme[begin..end]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            assert_eq!(cells.len(), 2, "row {l:?}");
            (cells[0].trim_matches('`').to_string(), cells[1].to_string())
        })
        .collect();
    let code: Vec<(String, String)> = STARTUP_GAUGES
        .iter()
        .map(|(n, w)| (n.to_string(), w.describe()))
        .collect();
    assert_eq!(rows, code);
}

/// Checks a start's document against the list and its counts against what was measured.
/// `d`: the outer counting store's delta over the start (before any prefetch).
fn check_counts(a: &Actor, d: &KvCounters, migrate: bool) -> Json {
    let r: &StartupReport = a.startup();
    let doc = a.metrics().to_json();
    assert_eq!(
        gauges(&doc),
        set(startup_gauge_names(r.is_new, migrate, &[])),
        "is_new {}",
        r.is_new
    );
    assert_eq!(int(&doc, "startup_is_new"), r.is_new as u64);
    assert_eq!(int(&doc, "startup_kv_round_trips"), d.round_trips());
    assert_eq!(int(&doc, "startup_kv_round_trips"), a.kv_round_trips());
    assert_eq!(d.op(OpKind::BatchRead).calls, 1, "{d:?}");
    // The start made no read past its wake batch: no page went to the store.
    assert_eq!(d.op(OpKind::Get).calls + d.op(OpKind::List).calls, 0);
    let db: Snapshot = a.db().snapshot();
    assert_eq!(int(&doc, "startup_preload_hits"), db.preload_hits);
    assert_eq!(int(&doc, "startup_preload_misses"), db.cache_misses);
    assert_eq!(db.cache_misses, 0);
    assert_eq!(
        int(&doc, "flush_writes_entries"),
        d.op(OpKind::Write).keys_written
    );
    doc
}

#[test]
fn a_new_actor_and_a_wake_have_exactly_the_listed_gauges_and_counts_equal_to_the_measured_ones() {
    let (mem, counting, store) = counted();
    let c = cfg(base());

    // A new actor: one read that finds nothing, then one write of every key it has.
    let before = counting.snapshot();
    let a = Actor::start(store.clone(), "n", &c).unwrap();
    let d = counting.snapshot().delta(&before);
    let doc = check_counts(&a, &d, true);
    assert_eq!(int(&doc, "startup_kv_round_trips"), 2);
    let read = d.op(OpKind::BatchRead);
    assert_eq!(
        (
            int(&doc, "preload_kv_entries"),
            int(&doc, "preload_kv_bytes")
        ),
        (0, 0)
    );
    assert_eq!(read.bytes_in, 0, "an empty store answers nothing");
    // Every key the store holds now came from the one write.
    assert_eq!(int(&doc, "flush_writes_entries"), mem.dump().len() as u64);
    assert_eq!(d.op(OpKind::Write).calls, 1);
    a.sleep().unwrap();

    // A wake: one read; the preload is the database's main file as the store holds it.
    let (entries, bytes) = main_file(&mem, "n");
    assert!(entries > 3, "{entries}");
    let copies = mem
        .dump()
        .iter()
        .filter(|(_, k, _)| k.starts_with(b"\x01sp"))
        .count();
    assert_eq!(copies, 0, "a database under the budget needs no copies");
    let actor_values: u64 = [
        records::state_key(),
        records::token_key(),
        records::fence_key(),
        records::hints_key(),
    ]
    .iter()
    .map(|k| value_len(&mem, "n", k))
    .sum();
    let meta = kvsqlite::vfs::layout::meta_key(kvsqlite::vfs::layout::FileKind::Main);
    let meta_len = value_len(&mem, "n", &meta);
    let before = counting.snapshot();
    let mut a = Actor::start(store.clone(), "n", &c).unwrap();
    let d = counting.snapshot().delta(&before);
    let doc = check_counts(&a, &d, true);
    assert_eq!(int(&doc, "startup_kv_round_trips"), 1);
    assert_eq!(int(&doc, "preload_kv_entries"), entries);
    assert_eq!(int(&doc, "preload_kv_bytes"), bytes);
    let read = d.op(OpKind::BatchRead);
    // Keys asked by its gets (4 actor records, 2 metadata keys) plus the entries its lists
    // returned (the main file; no stage, no copies).
    assert_eq!(read.keys_read, 6 + entries, "{read:?}");
    // Bytes received: the found records' values, the main metadata's value (asked by name and
    // listed), and the listing.
    assert_eq!(read.bytes_in, actor_values + meta_len + bytes, "{read:?}");
    // The migration check read the migrations table from the preload.
    assert!(int(&doc, "startup_preload_hits") > 0);
    assert_eq!(int(&doc, "flush_writes_entries"), 0);
    a.wait_prefetch();
    let after = counting.snapshot().delta(&before);
    assert_eq!(
        after.round_trips(),
        1 + int(&a.metrics().to_json(), "startup_prefetch_round_trips")
    );
    a.sleep().unwrap();
}

/// Every hook and every feature: `(hook and feature names, config)`. `on_wake` reads `cold`
/// (a statement whose pages may lie past the preload) when it is not empty.
fn everything(
    list: Vec<kvsqlite::actor::Migration>,
    cold: &'static str,
) -> (Vec<&'static str>, kvsqlite::actor::ActorConfig) {
    let mut c = cfg(list);
    c.hints = false;
    c.alarms = true;
    c.queue = true;
    c.connections = true;
    c.hooks.create_state = Some(Box::new(|_| Ok(b"state".to_vec())));
    c.hooks.on_create = Some(Box::new(|_| Ok(())));
    c.hooks.create_vars = Some(Box::new(|_| Ok(Box::new(7u32))));
    c.hooks.on_wake = Some(Box::new(move |ctx| {
        if !cold.is_empty() {
            let db = ctx.db.expect("the database is open in on_wake");
            let n: i64 = db.query_row(cold, [], |r| r.get(0)).unwrap();
            assert!(n > 0, "{cold}");
        }
        Ok(())
    }));
    c.hooks.on_before_actor_start = Some(Box::new(|_| Ok(())));
    let names = vec![
        "create_state",
        "on_create",
        "create_vars",
        "on_wake",
        "on_before_actor_start",
        "alarms",
        "queue",
        "connections",
    ];
    (names, c)
}

#[test]
fn with_every_hook_and_feature_the_gauges_are_exactly_the_listed_ones_and_misses_are_the_store_reads(
) {
    let (mem, counting, store) = counted();
    let (hooks, c) = everything(base(), "");

    // A new actor.
    let before = counting.snapshot();
    let a = Actor::start(store.clone(), "every", &c).unwrap();
    let d = counting.snapshot().delta(&before);
    let doc = a.metrics().to_json();
    assert!(a.startup().is_new);
    let want = set(startup_gauge_names(true, true, &hooks));
    // The document's gauges: the startup ones, and the queue's two (the queue's own, not the
    // start's: docs/src/library/actors.md lists them with the queue).
    let queue_gauges = set(vec!["queue_depth", "queue_oldest_age_ms"]);
    assert_eq!(
        gauges(&doc),
        want.union(&queue_gauges).cloned().collect::<BTreeSet<_>>()
    );
    // A new actor with every hook and feature has every name of the list.
    assert_eq!(
        want,
        STARTUP_GAUGES.iter().map(|(n, _)| n.to_string()).collect()
    );
    assert_eq!(int(&doc, "startup_kv_round_trips"), d.round_trips());
    assert_eq!(int(&doc, "startup_kv_round_trips"), 2);
    assert_eq!(
        int(&doc, "flush_writes_entries"),
        d.op(OpKind::Write).keys_written
    );
    assert_eq!(int(&doc, "flush_writes_entries"), mem.dump().len() as u64);
    let db: Snapshot = a.db().snapshot();
    assert_eq!(int(&doc, "startup_preload_misses"), db.cache_misses);
    assert_eq!(int(&doc, "startup_preload_misses"), 0);
    assert_eq!(int(&doc, "startup_preload_hits"), db.preload_hits);
    a.db()
        .execute(
            "INSERT INTO t(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300) SELECT hex(randomblob(200)) FROM s",
            [],
        )
        .unwrap();
    a.sleep().unwrap();

    // A wake with the same hooks and features: the hook reads rows past a small preload, so
    // the start has misses, each one `get` of the counting store.
    let (_, mut c) = everything(base(), "SELECT count(*) FROM t WHERE id > 400");
    c.preload_budget = 16 << 10;
    let before = counting.snapshot();
    let a = Actor::start(store.clone(), "every", &c).unwrap();
    let d = counting.snapshot().delta(&before);
    let doc = a.metrics().to_json();
    assert!(!a.startup().is_new);
    assert_eq!(
        gauges(&doc),
        set(startup_gauge_names(false, true, &hooks))
            .union(&queue_gauges)
            .cloned()
            .collect::<BTreeSet<_>>()
    );
    let missing: BTreeSet<String> = STARTUP_GAUGES
        .iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| !gauges(&doc).contains(n))
        .collect();
    assert_eq!(
        missing,
        set(vec![
            "startup_user_create_state_ms",
            "startup_user_on_create_ms",
            "startup_internal_init_new_actor_ms",
        ]),
        "a wake lacks only the creation's gauges"
    );
    let db: Snapshot = a.db().snapshot();
    let misses = int(&doc, "startup_preload_misses");
    assert!(misses > 0, "{doc}");
    assert_eq!(misses, db.cache_misses);
    // Each miss is one `get` (with its read-ahead), and nothing else of the start gets.
    assert_eq!(misses, d.op(OpKind::Get).calls, "{d:?}");
    assert_eq!(d.op(OpKind::List).calls, 0, "{d:?}");
    assert_eq!(
        int(&doc, "startup_kv_round_trips"),
        d.round_trips(),
        "{d:?}"
    );
    assert_eq!(d.round_trips(), 1 + misses, "the wake batch and the misses");
    assert_eq!(int(&doc, "startup_preload_hits"), db.preload_hits);
    assert_eq!(int(&doc, "flush_writes_entries"), 0);
    a.sleep().unwrap();
}

/// A store that holds every `get` until opened (bounded: 60 s), so a test can count a wake
/// before its background prefetch runs.
struct Gate {
    inner: SharedStore,
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }
}

impl KvStore for Gate {
    fn backend(&self) -> &'static str {
        "gate"
    }
    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }
    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        let open = self.open.lock().unwrap();
        let _open = self
            .cv
            .wait_timeout_while(open, Duration::from_secs(60), |o| !*o)
            .unwrap();
        drop(_open);
        self.inner.get(actor, keys)
    }
    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.inner.list(actor, req)
    }
    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        self.inner.write(actor, batch)
    }
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.inner.batch_read(actor, ops)
    }
}

#[test]
fn an_over_budget_wake_is_one_round_trip_on_the_outer_store_and_its_prefetch_one_more() {
    let (_mem, counting, counted_store) = counted();
    let gate = Arc::new(Gate {
        inner: counted_store,
        open: Mutex::new(true),
        cv: Condvar::new(),
    });
    let store: SharedStore = gate.clone();
    let mut c = cfg(base());
    c.preload_budget = 64 << 10;
    let a = Actor::start(store.clone(), "big", &c).unwrap();
    a.db()
        .execute_batch(
            "CREATE TABLE blobs(id INTEGER PRIMARY KEY, b BLOB);
             INSERT INTO blobs(b) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) SELECT randomblob(3000) FROM s;",
        )
        .unwrap();
    a.sleep().unwrap();
    // Read the last rows (past the budget) so the sleep saves them as hints.
    let a = Actor::start(store.clone(), "big", &c).unwrap();
    let tail: i64 = a
        .db()
        .query_row("SELECT sum(length(b)) FROM blobs WHERE id > 90", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(tail, 30_000);
    a.sleep().unwrap();

    gate.set(false);
    let before = counting.snapshot();
    let mut a = Actor::start(store.clone(), "big", &c).unwrap();
    let wake = counting.snapshot().delta(&before);
    assert_eq!(
        (wake.round_trips(), wake.op(OpKind::BatchRead).calls),
        (1, 1),
        "the wake alone: {wake:?}"
    );
    assert_eq!(a.startup().kv_round_trips, 1);
    let mid = counting.snapshot();
    gate.set(true);
    assert!(a.wait_prefetch() >= 10, "the hinted pages were fetched");
    let prefetch = counting.snapshot().delta(&mid);
    assert_eq!(
        (prefetch.round_trips(), prefetch.op(OpKind::Get).calls),
        (1, 1),
        "the prefetch alone: {prefetch:?}"
    );
    assert_eq!(
        int(&a.metrics().to_json(), "startup_prefetch_round_trips"),
        1
    );
    a.sleep().unwrap();
}

/// What was measured around one statement.
#[derive(Debug)]
struct Measured {
    round_trips: u64,
    keys_read: u64,
    keys_written: u64,
    preload_hits: u64,
    cache_hits: u64,
    rows: u64,
    wall_us: u64,
}

impl Measured {
    fn around(
        counting: &CountingStore,
        db: &kvsqlite::vfs::Database,
        f: impl FnOnce() -> u64,
    ) -> Measured {
        let (c0, s0, t0) = (counting.snapshot(), db.snapshot(), Instant::now());
        let rows = f();
        let wall_us = t0.elapsed().as_micros() as u64 + 1;
        let (c, s) = (counting.snapshot().delta(&c0), db.snapshot() - s0);
        // The database's own counters agree with the store's.
        assert_eq!(
            (s.kv_round_trips, s.keys_read, s.keys_written),
            (c.round_trips(), c.total().keys_read, c.total().keys_written)
        );
        Measured {
            round_trips: c.round_trips(),
            keys_read: c.total().keys_read,
            keys_written: c.total().keys_written,
            preload_hits: s.preload_hits,
            cache_hits: s.cache_hits,
            rows,
            wall_us,
        }
    }

    fn check(&self, r: &QueryRecord) {
        assert_eq!(
            (
                r.kv_round_trips,
                r.kv_keys_read,
                r.kv_keys_written,
                r.preload_hits,
                r.cache_hits,
                r.rows
            ),
            (
                self.round_trips,
                self.keys_read,
                self.keys_written,
                self.preload_hits,
                self.cache_hits,
                self.rows
            ),
            "{r:?} measured {self:?}"
        );
        assert!(r.duration_us <= self.wall_us, "{r:?} measured {self:?}");
    }

    /// [`Measured::check`], and `duration_us` at least `delay_us` per round trip: every call to
    /// the store took at least that long, inside the statement.
    fn check_slow(&self, r: &QueryRecord, delay_us: u64) {
        self.check(r);
        assert!(
            r.duration_us >= delay_us * self.round_trips,
            "duration_us below {delay_us} µs per round trip: {r:?} measured {self:?}"
        );
    }
}

/// What the probe read when a query event of actor `q` was emitted: the counting store's
/// counters and, once the test has the database, its counters.
type Probed = (KvCounters, Option<Snapshot>);

/// What the probe reads: the counting store and, once a hook has the database, its counters.
type Probe = (Arc<CountingStore>, Option<Arc<kvsqlite::vfs::Stats>>);

/// What the event collector reads at each event (set by the test that uses actor `q`).
static PROBE: Mutex<Option<Probe>> = Mutex::new(None);

fn probe_now() -> Option<Probed> {
    PROBE
        .lock()
        .unwrap()
        .as_ref()
        .map(|(c, s)| (c.snapshot(), s.as_ref().map(|s| s.snapshot())))
}

/// Checks record `r` against what the probe read at the previous event (`prev`) and at its own
/// (`cur`): its statement ran between them, and nothing else did, so its KV fields (and, when the
/// probe had the database, its page-read fields) equal the differences exactly.
fn check_between(r: &QueryRecord, prev: &Probed, cur: &Probed) {
    let c = cur.0.delta(&prev.0);
    assert_eq!(
        (r.kv_round_trips, r.kv_keys_read, r.kv_keys_written),
        (c.round_trips(), c.total().keys_read, c.total().keys_written),
        "{r:?} measured {c:?}"
    );
    if let (Some(p), Some(n)) = (prev.1, cur.1) {
        let s = n - p;
        assert_eq!(
            (r.preload_hits, r.cache_hits),
            (s.preload_hits, s.cache_hits),
            "{r:?} measured {s:?}"
        );
        assert_eq!(
            (s.kv_round_trips, s.keys_read, s.keys_written),
            (c.round_trips(), c.total().keys_read, c.total().keys_written)
        );
    }
}

/// The positions of one migration's statements in `recs`: from the `BEGIN IMMEDIATE` before
/// the first record whose SQL starts with `first` to the `COMMIT` after it.
fn migration_span(recs: &[QueryRecord], first: &str) -> std::ops::RangeInclusive<usize> {
    let at = recs
        .iter()
        .position(|r| r.sql.starts_with(first))
        .unwrap_or_else(|| panic!("no {first:?} in {recs:?}"));
    let begin = recs[..at]
        .iter()
        .rposition(|r| r.sql == "BEGIN IMMEDIATE")
        .expect("the migration's BEGIN");
    let commit = at
        + recs[at..]
            .iter()
            .position(|r| r.sql == "COMMIT")
            .expect("the migration's COMMIT");
    begin..=commit
}

/// Collects the fields of `kvsqlite::query` events of actor `q`, each with what the probe read
/// as it was emitted.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Collected>>>);

/// One collected event: its fields and what the probe read as it was emitted.
type Collected = (Fields, Option<Probed>);

/// One event's fields as `(name, value)`.
type Fields = Vec<(String, String)>;

/// The binary's one global subscriber, collecting actor `q`'s query events (a thread-local
/// default can miss events when other tests' threads register the same callsites first).
fn events() -> Events {
    use tracing_subscriber::layer::SubscriberExt;
    static EVENTS: std::sync::OnceLock<Events> = std::sync::OnceLock::new();
    EVENTS
        .get_or_init(|| {
            let events = Events::default();
            let subscriber = tracing_subscriber::registry()
                .with(events.clone())
                .with(tracing_subscriber::filter::LevelFilter::DEBUG);
            tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
            events
        })
        .clone()
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if e.metadata().target() != "kvsqlite::query" {
            return;
        }
        struct V(Vec<(String, String)>);
        impl tracing::field::Visit for V {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push((f.name().to_string(), format!("{v:?}")));
            }
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                self.0.push((f.name().to_string(), v.to_string()));
            }
        }
        let mut v = V(Vec::new());
        e.record(&mut v);
        if v.0.iter().any(|(k, val)| k == "actor" && val == "q") {
            let probed = probe_now();
            self.0.lock().unwrap().push((v.0, probed));
        }
    }
}

/// A record as its event shows it.
fn as_event(r: &QueryRecord, actor: &str) -> Vec<(String, String)> {
    [
        ("message", "query".to_string()),
        ("actor", actor.to_string()),
        ("sql", r.sql.clone()),
        ("duration_us", r.duration_us.to_string()),
        ("kv_round_trips", r.kv_round_trips.to_string()),
        ("kv_keys_read", r.kv_keys_read.to_string()),
        ("kv_keys_written", r.kv_keys_written.to_string()),
        ("preload_hits", r.preload_hits.to_string()),
        ("cache_hits", r.cache_hits.to_string()),
        ("rows", r.rows.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

const PRELOADED: &str = "SELECT v AS preloaded FROM t WHERE id = 1";

/// The delay of every store call once the start is done.
const DELAY_US: u64 = 5_000;
const DELAY: Duration = Duration::from_micros(DELAY_US);

#[test]
fn every_field_of_every_query_record_equals_what_was_measured_around_its_statement() {
    let mem = Arc::new(MemoryStore::new());
    // Every store call takes DELAY once the start is done, so a statement that makes a round
    // trip lasts at least that long.
    let slow = Arc::new(LatencyStore::new(mem.clone(), Duration::ZERO));
    let counting = CountingStore::wrap(slow.clone());
    let store = counting.shared();
    let events = events();

    // Creation: the migrations' statements are held, so they cost nothing; the start's one
    // write is the collector's, not a statement's.
    let mut c = cfg(base());
    c.hints = false;
    c.preload_budget = 16 << 10;
    let a = Actor::start(store.clone(), "q", &c).unwrap();
    let recs = a.query_log().records();
    assert!(recs.iter().any(|r| r.sql.starts_with("INSERT INTO t(v)")));
    let sum = |recs: &[QueryRecord], f: fn(&QueryRecord) -> u64| recs.iter().map(f).sum::<u64>();
    assert_eq!(sum(&recs, |r| r.kv_round_trips), 0);
    assert_eq!(sum(&recs, |r| r.kv_keys_written), 0);
    assert!(sum(&recs, |r| r.preload_hits) <= a.startup().preload_hits);
    a.db()
        .execute(
            "INSERT INTO t(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300) SELECT hex(randomblob(200)) FROM s",
            [],
        )
        .unwrap();
    a.sleep().unwrap();

    // A wake that applies a migration (0003), with a hook that reads preloaded pages and then
    // applies one more migration (0004) through `migrations::apply`, the function the start
    // applies its migrations with, while the probe reads the database's counters too.
    let mut list = base();
    list.push(m(
        "0003_more.sql",
        "CREATE TABLE u(x); INSERT INTO u VALUES (1), (2);",
    ));
    let hooked_migration = m(
        "0004_hooked.sql",
        "CREATE TABLE w(x); INSERT INTO w SELECT id FROM t WHERE id BETWEEN 210 AND 220; SELECT count(*) FROM t WHERE id BETWEEN 380 AND 400;",
    );
    let mut c = cfg(list);
    c.hints = false;
    c.preload_budget = 64 << 10;
    let hook_measure: Arc<Mutex<Option<Measured>>> = Arc::default();
    {
        let (counting, hook_measure) = (counting.clone(), hook_measure.clone());
        c.hooks.on_wake = Some(Box::new(move |ctx| {
            let db = ctx.db.expect("the database is open in on_wake");
            PROBE.lock().unwrap().as_mut().expect("the probe").1 = Some(db.stats());
            let m = Measured::around(&counting, db, || {
                let v: String = db.query_row(PRELOADED, [], |r| r.get(0)).unwrap();
                assert_eq!(v, "v001");
                1
            });
            *hook_measure.lock().unwrap() = Some(m);
            kvsqlite::actor::migrations::apply(db, &hooked_migration).unwrap();
            Ok(())
        }));
    }
    events.0.lock().unwrap().clear();
    *PROBE.lock().unwrap() = Some((counting.clone(), None));
    let before = counting.snapshot();
    let a = Actor::start(store.clone(), "q", &c).unwrap();
    let d = counting.snapshot().delta(&before);
    *PROBE.lock().unwrap() = None;
    let start_recs = a.query_log().records();
    let start_ev = events.0.lock().unwrap().clone();
    assert_eq!(
        start_ev.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
        start_recs
            .iter()
            .map(|r| as_event(r, "q"))
            .collect::<Vec<_>>(),
        "one event per record, in order"
    );
    let probed: Vec<Probed> = start_ev
        .iter()
        .map(|(_, p)| p.expect("the probe was set"))
        .collect();
    // The start's statements together cost exactly what the start cost past its wake batch.
    let reads = d.op(OpKind::Get) + d.op(OpKind::List);
    assert_eq!(sum(&start_recs, |r| r.kv_round_trips), d.round_trips() - 1);
    assert_eq!(
        d.op(OpKind::Write).calls,
        2,
        "the two migrations' commits: {d:?}"
    );
    assert_eq!(sum(&start_recs, |r| r.kv_keys_read), reads.keys_read);
    assert_eq!(
        sum(&start_recs, |r| r.kv_keys_written),
        d.op(OpKind::Write).keys_written
    );
    // Page reads while SQLite prepares a statement (loading the schema) belong to no
    // statement, so the statements' hits are at most the start's.
    assert!(sum(&start_recs, |r| r.preload_hits) <= a.startup().preload_hits);
    assert!(sum(&start_recs, |r| r.cache_hits) <= a.db().snapshot().cache_hits);

    // The start's own migration, one statement at a time: each record's KV fields equal what
    // the counting store counted between its event and the one before (no statement ran in
    // between: they run one at a time on the start's thread). Every statement before COMMIT
    // reads preloaded or cached pages and writes into the transaction (no round trip); COMMIT
    // is the migration's one put.
    let span = migration_span(&start_recs, "CREATE TABLE u");
    let sqls: Vec<&str> = start_recs[span.clone()]
        .iter()
        .map(|r| r.sql.as_str())
        .collect();
    assert_eq!(
        sqls,
        [
            "BEGIN IMMEDIATE",
            "CREATE TABLE IF NOT EXISTS _kvsqlite_migrations(id INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL)",
            "CREATE TABLE u(x);",
            "INSERT INTO u VALUES (1), (2);",
            "INSERT INTO _kvsqlite_migrations(id, name, checksum) VALUES (?1, ?2, ?3)",
            "COMMIT",
        ]
    );
    let commit_at = *span.end();
    for i in span.clone() {
        check_between(&start_recs[i], &probed[i - 1], &probed[i]);
        let r = &start_recs[i];
        assert_eq!(r.rows, 0, "{r:?}");
        if i == commit_at {
            assert_eq!((r.kv_round_trips, r.kv_keys_read), (1, 0), "{r:?}");
        } else {
            assert_eq!(
                (r.kv_round_trips, r.kv_keys_read, r.kv_keys_written),
                (0, 0, 0),
                "{r:?}"
            );
        }
    }
    let first_commit = start_recs[commit_at].kv_keys_written;

    // The preloaded read in the hook.
    let hooked = start_recs
        .iter()
        .position(|r| r.sql == PRELOADED)
        .expect("the hook's statement is logged");
    let hm = hook_measure.lock().unwrap().take().expect("the hook ran");
    hm.check(&start_recs[hooked]);
    assert!(hm.preload_hits > 0 && hm.round_trips == 0, "{hm:?}");

    // The hook's migration, one statement at a time, every field (the probe read the
    // database's counters from the preloaded read on).
    let span = migration_span(&start_recs, "CREATE TABLE w");
    assert_eq!(*span.start(), hooked + 1, "the migration follows the read");
    for i in span.clone() {
        check_between(&start_recs[i], &probed[i - 1], &probed[i]);
    }
    let rec = |prefix: &str| {
        start_recs[span.clone()]
            .iter()
            .find(|r| r.sql.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix}"))
            .clone()
    };
    let (copy, count, commit) = (
        rec("INSERT INTO w"),
        rec("SELECT count(*)"),
        start_recs[*span.end()].clone(),
    );
    assert_eq!((copy.rows, count.rows), (0, 1));
    assert!(
        copy.preload_hits > 0 && copy.kv_round_trips == 0,
        "{copy:?}"
    );
    assert!(
        count.kv_round_trips >= 1,
        "pages past the preload: {count:?}"
    );
    assert_eq!((commit.kv_round_trips, commit.kv_keys_read), (1, 0));
    assert_eq!(
        first_commit + commit.kv_keys_written,
        d.op(OpKind::Write).keys_written,
        "the two commits wrote every key the start wrote"
    );

    // After the start: one statement at a time, every store call taking DELAY_US.
    slow.set_rtt(DELAY);
    let db = a.db();
    let one = |sql: &str, rows: bool| -> (QueryRecord, Measured) {
        let n = a.query_log().records().len();
        let m = Measured::around(&counting, db, || {
            if rows {
                let mut stmt = db.prepare(sql).unwrap();
                let mut r = stmt.query([]).unwrap();
                let mut k = 0;
                while r.next().unwrap().is_some() {
                    k += 1;
                }
                k
            } else {
                db.execute(sql, []).unwrap();
                0
            }
        });
        let recs = a.query_log().records();
        assert_eq!(recs.len(), n + 1, "one record per statement: {sql}");
        let r = recs.last().unwrap().clone();
        assert_eq!(r.sql, sql);
        m.check_slow(&r, DELAY_US);
        (r, m)
    };
    // Cold: rows past the 64 KiB preload (about 30 pages in all), never read by this instance.
    let cold = "SELECT id, v FROM t WHERE id > 450";
    let (r, _) = one(cold, true);
    assert!(
        r.kv_round_trips >= 1 && r.kv_keys_read >= 1 && r.rows == 50,
        "{r:?}"
    );
    assert!(r.duration_us >= DELAY_US, "{r:?}");
    // The same read again: the VFS cache, no round trip.
    let (r, _) = one(cold, true);
    assert_eq!((r.kv_round_trips, r.kv_keys_read, r.rows), (0, 0, 50));
    assert!(r.cache_hits >= 1, "{r:?}");
    // Autocommit write: its commit's one put.
    let (r, _) = one("INSERT INTO t(v) VALUES ('auto')", false);
    assert!(r.kv_round_trips == 1 && r.kv_keys_written >= 2, "{r:?}");
    assert!(r.duration_us >= DELAY_US, "{r:?}");
    // An explicit transaction: only COMMIT writes.
    let (r, _) = one("BEGIN", false);
    assert_eq!((r.kv_round_trips, r.kv_keys_written), (0, 0));
    let (r, _) = one("INSERT INTO t(v) VALUES ('in-tx')", false);
    assert_eq!((r.kv_round_trips, r.kv_keys_written), (0, 0));
    let (r, _) = one("COMMIT", false);
    assert!(r.kv_round_trips == 1 && r.kv_keys_written >= 2, "{r:?}");
    assert!(r.duration_us >= DELAY_US, "{r:?}");
    slow.set_rtt(Duration::ZERO);

    // Every event equals its record, in order.
    let recs = a.query_log().records();
    let ev: Vec<Fields> = events
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|(f, _)| f.clone())
        .collect();
    let want: Vec<_> = recs.iter().map(|r| as_event(r, "q")).collect();
    assert_eq!(ev, want);
    a.sleep().unwrap();
}

#[test]
fn refused_starts_leave_every_byte_of_the_store_and_write_nothing() {
    let (mem, counting, store) = counted();
    Actor::start(store.clone(), "a", &cfg(base()))
        .unwrap()
        .sleep()
        .unwrap();
    // Actor `b` has a third migration applied that a later list lacks.
    let mut three = base();
    three.push(m("0003_u.sql", "CREATE TABLE u(x);"));
    Actor::start(store.clone(), "b", &cfg(three))
        .unwrap()
        .sleep()
        .unwrap();
    let before = mem.dump();
    for actor in ["a", "b"] {
        assert!(before
            .iter()
            .any(|(a, k, _)| a == actor && k.as_slice() == b"\x01fence"));
    }
    let mut edited = base();
    edited[0] = m(
        "0001_t.sql",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, extra);",
    );
    let mut gap = base();
    gap.push(m("0004_x.sql", "SELECT 1;"));
    let mut dup = base();
    dup.push(m("0002_again.sql", "SELECT 1;"));
    let mut failing = base();
    failing.push(m(
        "0003_bad.sql",
        "CREATE TABLE z(x);\nINSERT INTO nowhere VALUES (1);",
    ));
    for (what, actor, list) in [
        ("edited", "a", edited),
        ("gap", "a", gap),
        ("duplicate", "a", dup),
        ("missing", "b", base()),
        ("failing", "a", failing),
    ] {
        let c0 = counting.snapshot();
        let e = match Actor::start(store.clone(), actor, &cfg(list)) {
            Ok(_) => panic!("{what}: the start must fail"),
            Err(e) => e,
        };
        match (what, &e) {
            ("edited", ActorError::Migration(MigrationError::Edited { file, .. })) => {
                assert_eq!(file, "0001_t.sql")
            }
            ("gap", ActorError::Migration(MigrationError::Gap { missing: 3, .. })) => {}
            ("duplicate", ActorError::Migration(MigrationError::Duplicate { number: 2, .. })) => {}
            ("missing", ActorError::Migration(MigrationError::Missing { id: 3, name })) => {
                assert_eq!(name, "0003_u.sql")
            }
            (
                "failing",
                ActorError::Migration(MigrationError::Failed {
                    file,
                    line,
                    statement,
                    ..
                }),
            ) => assert_eq!(
                (file.as_str(), *line, statement.as_str()),
                ("0003_bad.sql", 2, "INSERT INTO nowhere VALUES (1);")
            ),
            _ => panic!("{what}: unexpected {e:?}"),
        }
        let d = counting.snapshot().delta(&c0);
        let w = d.op(OpKind::Write) + d.op(OpKind::DeleteRange);
        assert_eq!((w.calls, w.keys_written), (0, 0), "{what}: {d:?}");
        assert_eq!(mem.dump(), before, "{what}: the store changed");
    }
}

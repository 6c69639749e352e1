//! The actor shim's behaviour beyond round-trip counts: migration errors refuse the start and
//! leave the database as it was, failing hooks write nothing, the strict guard names its phase,
//! the preload never serves a stale page, every SQL path emits one query event with every field,
//! a crash at any KV call of a creation and its first transactions leaves either no actor or all
//! of its acknowledged commits, and 100 actors started at once stay isolated.

#[path = "common/sqlite.rs"]
mod sqlite;

#[path = "common/actors.rs"]
mod actors;
use actors::{base, cfg, m};

use std::sync::{Arc, Mutex};

use kvsqlite::actor::{Actor, ActorConfig, ActorError, Hooks, MigrationError};
use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;

fn mem() -> (Arc<MemoryStore>, SharedStore) {
    let m = Arc::new(MemoryStore::new());
    let s: SharedStore = m.clone();
    (m, s)
}

fn all_rows(a: &Actor, sql: &str) -> Vec<String> {
    let mut stmt = a.db().prepare(sql).unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

fn start_err(store: &SharedStore, id: &str, c: &ActorConfig) -> ActorError {
    match Actor::start(store.clone(), id, c) {
        Ok(_) => panic!("the start must fail"),
        Err(e) => e,
    }
}

#[test]
fn a_new_actor_whose_migration_fails_writes_nothing_at_all() {
    let (mem, store) = mem();
    let mut list = base();
    list.push(m(
        "0003_bad.sql",
        "CREATE TABLE u(x);\nINSERT INTO nope VALUES (1);",
    ));
    match start_err(&store, "a", &cfg(list)) {
        ActorError::Migration(MigrationError::Failed { file, line, .. }) => {
            assert_eq!((file.as_str(), line), ("0003_bad.sql", 2));
        }
        e => panic!("unexpected {e:?}"),
    }
    assert!(
        mem.dump().is_empty(),
        "a failed creation wrote {:?}",
        mem.dump()
    );
    // It starts fine once the migration is fixed, and is new.
    let mut list = base();
    list.push(m("0003_bad.sql", "CREATE TABLE u(x);"));
    let a = Actor::start(store, "a", &cfg(list)).unwrap();
    assert!(a.startup().is_new);
    a.sleep().unwrap();
}

#[test]
fn an_existing_actor_keeps_the_migrations_before_the_failing_one() {
    let (mem, store) = mem();
    Actor::start(store.clone(), "a", &cfg(base()))
        .unwrap()
        .sleep()
        .unwrap();
    let mut list = base();
    list.push(m(
        "0003_ok.sql",
        "ALTER TABLE t ADD COLUMN w TEXT DEFAULT 'w';",
    ));
    list.push(m(
        "0004_bad.sql",
        "UPDATE t SET v = 'changed';\nSELECT * FROM nope;",
    ));
    match start_err(&store, "a", &cfg(list)) {
        ActorError::Migration(MigrationError::Failed { file, line, .. }) => {
            assert_eq!((file.as_str(), line), ("0004_bad.sql", 2))
        }
        e => panic!("unexpected {e:?}"),
    }
    let mut kept = base();
    kept.push(m(
        "0003_ok.sql",
        "ALTER TABLE t ADD COLUMN w TEXT DEFAULT 'w';",
    ));
    let a = Actor::start(store.clone(), "a", &cfg(kept)).unwrap();
    assert_eq!(
        all_rows(&a, "SELECT name FROM _kvsqlite_migrations ORDER BY id"),
        ["0001_t.sql", "0002_seed.sql", "0003_ok.sql"]
    );
    assert_eq!(
        all_rows(&a, "SELECT DISTINCT v FROM t WHERE id = 7"),
        ["v007"]
    );
    assert_eq!(all_rows(&a, "SELECT DISTINCT w FROM t"), ["w"]);
    sqlite::assert_integrity(a.db());
    a.sleep().unwrap();
    let _ = mem;
}

#[test]
fn a_failing_or_panicking_hook_refuses_a_new_actor_and_writes_nothing() {
    type Setter = fn(&mut Hooks);
    let setters: Vec<(&str, Setter)> = vec![
        ("create_state", |h| {
            h.create_state = Some(Box::new(|_| Err("no state".into())))
        }),
        ("on_create", |h| {
            h.on_create = Some(Box::new(|_| Err("no".into())))
        }),
        ("create_vars", |h| {
            h.create_vars = Some(Box::new(|_| panic!("boom")))
        }),
        ("on_wake", |h| {
            h.on_wake = Some(Box::new(|ctx| {
                ctx.db
                    .unwrap()
                    .execute("INSERT INTO t(v) VALUES ('hook')", [])?;
                Err("after a write".into())
            }))
        }),
        ("on_before_actor_start", |h| {
            h.on_before_actor_start = Some(Box::new(|_| Err("late".into())))
        }),
    ];
    for (phase, set) in setters {
        let (mem, store) = mem();
        let mut c = cfg(base());
        set(&mut c.hooks);
        match start_err(&store, "h", &c) {
            ActorError::Hook { phase: p, .. } => assert_eq!(p, phase),
            e => panic!("{phase}: unexpected {e:?}"),
        }
        assert!(mem.dump().is_empty(), "{phase}: wrote {:?}", mem.dump());
    }
}

#[test]
fn hooks_see_the_state_and_build_vars() {
    let (_mem, store) = mem();
    let mut c = cfg(base());
    c.hooks.create_state = Some(Box::new(|_| Ok(b"fresh".to_vec())));
    c.hooks.create_vars = Some(Box::new(|ctx| {
        let n: i64 = ctx
            .db
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
        Ok(Box::new(n))
    }));
    let mut a = Actor::start(store.clone(), "v", &c).unwrap();
    assert_eq!(a.state(), b"fresh");
    assert_eq!(a.vars::<i64>(), Some(&200));
    a.set_state(b"changed".to_vec());
    a.sleep().unwrap();
    let a = Actor::start(store, "v", &c).unwrap();
    assert_eq!(a.state(), b"changed");
    assert!(!a.startup().is_new);
    a.sleep().unwrap();
}

#[test]
fn strict_mode_names_the_phase_that_made_a_round_trip() {
    let (_mem, store) = mem();
    let mut c = cfg(base());
    c.hints = false; // no copies of startup pages: a 1-byte budget preloads no page
    Actor::start(store.clone(), "s", &c)
        .unwrap()
        .sleep()
        .unwrap();
    c.preload_budget = 1;
    match start_err(&store, "s", &c) {
        ActorError::RoundTrips { phase, round_trips } => {
            // Opening reads page 1 (SQLite's journal-mode pragma), which a 1-byte budget does
            // not preload.
            assert_eq!(phase, "setup_database_client");
            assert!(round_trips >= 1);
        }
        e => panic!("unexpected {e:?}"),
    }
    // Without strict mode the same start works (and warns once).
    c.strict = false;
    let a = Actor::start(store, "s", &c).unwrap();
    assert!(a.startup().kv_round_trips > 1);
    a.sleep().unwrap();
}

#[test]
fn a_migration_rewriting_preloaded_pages_reads_its_own_writes_and_vacuum_leaves_no_stale_page() {
    let (mem, store) = mem();
    Actor::start(store.clone(), "p", &cfg(base()))
        .unwrap()
        .sleep()
        .unwrap();
    let mut list = base();
    list.push(m(
        "0003_rewrite.sql",
        "UPDATE t SET v = v || '!' WHERE id % 2 = 0;\nCREATE TABLE seen AS SELECT count(*) AS n FROM t WHERE v LIKE '%!';",
    ));
    list.push(m(
        "0004_check.sql",
        "INSERT INTO seen SELECT count(*) FROM t WHERE v LIKE '%!';",
    ));
    let mut c = cfg(list);
    c.hooks.on_wake = Some(Box::new(|ctx| {
        let db = ctx.db.unwrap();
        db.execute_batch("DELETE FROM t WHERE id > 20; VACUUM;")?;
        Ok(())
    }));
    let a = Actor::start(store.clone(), "p", &c).unwrap();
    assert_eq!(
        all_rows(&a, "SELECT CAST(n AS TEXT) FROM seen"),
        ["100", "100"]
    );
    assert_eq!(
        all_rows(&a, "SELECT v FROM t WHERE id IN (1, 2)"),
        ["v001", "v002!"]
    );
    sqlite::assert_integrity(a.db());
    let pages: i64 = a
        .db()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    a.sleep().unwrap();
    // VACUUM's deleted chunks are gone from the store, and a fresh wake sees the same data.
    let chunks = mem
        .dump()
        .into_iter()
        .filter(|(_, k, _)| k.starts_with(&[0x08, 0x00, 0x01]))
        .count() as i64;
    assert!(chunks <= pages, "{chunks} chunks for {pages} pages");
    let mut c = cfg(base());
    c.migrate = false;
    let a = Actor::start(store, "p", &c).unwrap();
    assert_eq!(all_rows(&a, "SELECT count(*) || '' FROM t"), ["20"]);
    sqlite::assert_integrity(a.db());
    a.sleep().unwrap();
}

/// Collects the fields of `kvsqlite::query` events.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Fields>>>);

/// One event's fields as `(name, value)`.
type Fields = Vec<(String, String)>;

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
        self.0.lock().unwrap().push(v.0);
    }
}

#[test]
fn every_sql_path_emits_one_query_event_with_every_field() {
    use tracing_subscriber::layer::SubscriberExt;
    let (_mem, store) = mem();
    let events = Events::default();
    let subscriber = tracing_subscriber::registry()
        .with(events.clone())
        .with(tracing_subscriber::filter::LevelFilter::DEBUG);
    tracing::subscriber::with_default(subscriber, || {
        let a = Actor::start(store.clone(), "q", &cfg(base())).unwrap();
        events.0.lock().unwrap().clear();
        let start = a.query_log().totals();
        let db = a.db();
        // Raw connection, autocommit: the commit's put is in the event.
        db.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
        // Prepared, with rows.
        let mut stmt = db.prepare("SELECT v FROM t WHERE id <= 3").unwrap();
        let n = stmt.query_map([], |_| Ok(())).unwrap().count();
        assert_eq!(n, 3);
        drop(stmt);
        // A batch: one event per statement; COMMIT carries the put.
        db.execute_batch("BEGIN; INSERT INTO t(v) VALUES ('y'); COMMIT;")
            .unwrap();
        let ev = events.0.lock().unwrap().clone();
        let field = |e: &Vec<(String, String)>, f: &str| {
            e.iter()
                .find(|(k, _)| k == f)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("event {e:?} lacks {f}"))
        };
        let sqls: Vec<String> = ev.iter().map(|e| field(e, "sql")).collect();
        assert_eq!(
            sqls,
            [
                "INSERT INTO t(v) VALUES ('x')",
                "SELECT v FROM t WHERE id <= 3",
                "BEGIN;",
                "INSERT INTO t(v) VALUES ('y');",
                "COMMIT;"
            ]
        );
        for e in &ev {
            for f in [
                "duration_us",
                "kv_round_trips",
                "kv_keys_read",
                "kv_keys_written",
                "preload_hits",
                "cache_hits",
                "rows",
            ] {
                field(e, f);
            }
        }
        let rts: Vec<String> = ev.iter().map(|e| field(e, "kv_round_trips")).collect();
        assert_eq!(rts, ["1", "0", "0", "0", "1"]);
        assert_eq!(field(&ev[1], "rows"), "3");
        assert_ne!(field(&ev[0], "kv_keys_written"), "0");
        // The records and counters agree with the events.
        let t = a.query_log().totals();
        assert_eq!(
            (
                t.sql_statements - start.sql_statements,
                t.kv_round_trips - start.kv_round_trips
            ),
            (5, 2)
        );
        let records = a.query_log().records();
        assert_eq!(records.len() as u64, t.sql_statements);
        assert_eq!(records.last().map(|r| r.sql.as_str()), Some("COMMIT;"));
        let doc = a.metrics().to_json();
        assert_eq!(doc["sql_statements"]["type"], "counter");
        assert_eq!(doc["sql_statements"]["value"], t.sql_statements);
        assert_eq!(doc["query_duration_us"]["value"]["count"], t.sql_statements);
        assert_eq!(doc["startup_is_new"]["value"], 1);
        a.sleep().unwrap();
    });
}

#[test]
fn a_crash_at_any_kv_call_of_creation_and_twenty_transactions_leaves_no_actor_or_every_acknowledged_commit(
) {
    for write in [CrashWrite::Apply, CrashWrite::Discard] {
        let mut k = 1;
        loop {
            let mem = Arc::new(MemoryStore::new());
            let faults = FaultStore::wrap(mem.clone(), FaultPlan::none().crash_at(k, write));
            let mut acked = 0i64;
            let mut created = false;
            if let Ok(a) = Actor::start(faults.shared(), "c", &cfg(base())) {
                created = true;
                for i in 0..20 {
                    if a.db()
                        .execute("INSERT INTO t(v) VALUES (?1)", [format!("tx{i}")])
                        .is_err()
                    {
                        break;
                    }
                    acked += 1;
                }
            }
            let crashed = faults.is_crashed();
            // Reopen on the store as the crash left it.
            let store: SharedStore = mem.clone();
            let existed = store.get("c", &[b"\x01state".to_vec()]).unwrap()[0].is_some();
            assert!(
                existed || !created,
                "k={k}: a started actor must exist in the store"
            );
            let a = Actor::start(store, "c", &cfg(base())).unwrap();
            sqlite::assert_integrity(a.db());
            let n: i64 = a
                .db()
                .query_row("SELECT count(*) FROM t WHERE v LIKE 'tx%'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            if existed {
                assert!(
                    n == acked || n == acked + 1,
                    "k={k} {write:?}: {n} rows, {acked} acked"
                );
                assert_eq!(
                    all_rows(&a, "SELECT count(*) || '' FROM t WHERE v LIKE 'v%'"),
                    ["200"]
                );
            } else {
                assert!(a.startup().is_new, "k={k}");
                assert_eq!(n, 0);
            }
            a.sleep().unwrap();
            if !crashed {
                break;
            }
            k += 1;
        }
        assert!(k > 20, "the workload made only {k} calls");
    }
}

#[test]
fn a_hundred_actors_started_at_once_from_several_threads_stay_isolated() {
    let (_mem, store) = mem();
    let c = Arc::new(cfg(base()));
    std::thread::scope(|s| {
        for t in 0..4 {
            let store = store.clone();
            let c = c.clone();
            s.spawn(move || {
                for i in 0..25 {
                    let id = format!("actor-{t}-{i}");
                    let a = Actor::start(store.clone(), &id, &c).unwrap();
                    assert_eq!(a.startup().kv_round_trips, 2);
                    a.db()
                        .execute("INSERT INTO t(v) VALUES (?1)", [&id])
                        .unwrap();
                    a.sleep().unwrap();
                }
            });
        }
    });
    for t in 0..4 {
        for i in [0, 24] {
            let id = format!("actor-{t}-{i}");
            let a = Actor::start(store.clone(), &id, &c).unwrap();
            assert_eq!(a.startup().kv_round_trips, 1);
            assert_eq!(
                all_rows(&a, "SELECT v FROM t WHERE id > 200"),
                [id.as_str()]
            );
            a.sleep().unwrap();
        }
    }
}

//! The host's Prometheus families under a scripted workload: small, staged and journalled
//! commits, cached and cold reads, a wake after a sleep, a moved conflict, and pages read ahead
//! then dropped unread by a restore (read-ahead waste). Each step's
//! effect on every family is asserted exactly (counters by their deltas, histograms by count
//! and sum; the KV families against a counting store under the host, which sees exactly what
//! the host sends). Every scrape is checked with the text format's rules
//! (`common/serve.rs::parse_prometheus`) and with `promtool check metrics`-style lint rules
//! (names, types, units, help, no duplicate series). The Grafana dashboard names exactly the
//! families a cluster member exports (a single host's and the cluster's four), and the book's
//! family lists (`serving/http.md`, `serving/cluster.md`) name exactly the exported ones.
//! `GET /inspector/top` and the inspector's poll are checked too.
//!
//! The host runs in this process (`kvsqlite::host::serve_with`) on a memory store, so that a
//! second instance of an actor can be started on the same store to make the moved conflict.

#[path = "common/serve.rs"]
mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kvsqlite::actor::{Actor, ActorConfig};
use kvsqlite::host::cluster::ClusterConfig;
use kvsqlite::host::HostConfig;
use kvsqlite::kv::counting::{CountingStore, KvCounters, OpKind};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use serde_json::{json, Value};

const ADMIN: &str = "families-admin-token-0123456789";

/// A host on `under` in this process ([`serve::InProcessHost`]); dropped, it shuts down.
struct Host(serve::InProcessHost);

impl std::ops::Deref for Host {
    type Target = serve::InProcessHost;
    fn deref(&self) -> &serve::InProcessHost {
        &self.0
    }
}

/// Writes of at most 8 entries: a transaction of more than 7 pages is staged.
fn limits() -> KvLimits {
    KvLimits {
        max_write_entries: 8,
        ..KvLimits::default()
    }
}

fn actor_config() -> ActorConfig {
    let mut c = ActorConfig {
        // Two pages preloaded: reads past them after a wake go to the store.
        preload_budget: 8192,
        // No background fetch of hinted pages: every read after a wake is counted where it
        // happens.
        hints: false,
        ..ActorConfig::default()
    };
    // A transaction of more than 16 dirty pages spills: the rollback-journal fallback.
    c.open.max_atomic_bytes = 64 * 1024;
    // Every wake reads table `t` when it exists: past the two preloaded pages, those reads
    // are the wake's preload misses.
    c.hooks.on_wake = Some(Box::new(|ctx| {
        let db = ctx.db.ok_or("no database")?;
        let n: i64 = db.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 't'",
            [],
            |r| r.get(0),
        )?;
        if n == 1 {
            db.query_row("SELECT sum(length(v)) FROM t", [], |r| {
                r.get::<_, Option<i64>>(0)
            })?;
        }
        Ok(())
    }));
    c
}

impl Host {
    fn start(store: SharedStore, max_awake: usize, idle_sleep: Duration) -> Host {
        Host::start_with(store, max_awake, idle_sleep, None)
    }

    /// A host; a one-member cluster named `cluster` when given (the store is this process's).
    fn start_with(
        store: SharedStore,
        max_awake: usize,
        idle_sleep: Duration,
        cluster: Option<&str>,
    ) -> Host {
        let config = HostConfig {
            actor: actor_config(),
            idle_sleep,
            max_awake,
            // Each step's deltas are exact only when a request's put is done at its answer's
            // accounting: with pipelining it is counted at the actor's next request.
            pipelined: false,
            ..HostConfig::new(store, ADMIN)
        };
        Host(serve::InProcessHost::start(config, |base| {
            cluster.map(|name| ClusterConfig {
                name: name.into(),
                advertise: base.trim_start_matches("http://").to_string(),
                ttl: Duration::from_secs(30),
            })
        }))
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        serve::get(&self.agent, &self.base, path, token)
    }

    fn query(&self, actor: &str, sql: &str) -> (u16, Value) {
        let body = json!({ "sql": sql, "params": [] }).to_string();
        let (st, text) = serve::post(
            &self.agent,
            &self.base,
            &format!("/actors/{actor}/query"),
            Some(ADMIN),
            &body,
        );
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn ok(&self, actor: &str, sql: &str) -> Value {
        let (st, v) = self.query(actor, sql);
        assert_eq!(st, 200, "{sql}: {v}");
        v
    }

    fn batch(&self, actor: &str, statements: &[String]) {
        let body = json!({
            "statements": statements.iter().map(|s| json!({"sql": s, "params": []})).collect::<Vec<_>>()
        })
        .to_string();
        let (st, text) = serve::post(
            &self.agent,
            &self.base,
            &format!("/actors/{actor}/batch"),
            Some(ADMIN),
            &body,
        );
        assert_eq!(st, 200, "{text}");
    }

    /// One scrape: checked with the format's rules and the lint rules, then parsed.
    fn scrape(&self) -> BTreeMap<String, f64> {
        let (st, text) = self.get("/metrics", None);
        assert_eq!(st, 200);
        lint(&text).unwrap_or_else(|e| panic!("lint: {e}\n{text}"));
        serve::parse_prometheus(&text).unwrap_or_else(|e| panic!("format: {e}\n{text}"))
    }
}

/// `promtool check metrics`-style rules: every family has HELP then TYPE; names are snake case
/// with the `kvsqlite_` prefix; counters (and only counters) end in `_total`; no family uses a
/// non-base unit (`_ms`, `_milliseconds`, `_us`, `_kilobytes`…); durations are `_seconds`
/// histograms; `le` only on histogram buckets; no `__` label; no series given twice.
fn lint(text: &str) -> Result<(), String> {
    let mut help: BTreeSet<String> = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut series: BTreeSet<String> = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').ok_or("HELP without text")?;
            if h.trim().is_empty() || !help.insert(name.to_string()) {
                return Err(format!("HELP of {name} empty or given twice"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').ok_or("TYPE without a type")?;
            if !help.contains(name) {
                return Err(format!("{name}: TYPE without HELP before it"));
            }
            if !name.starts_with("kvsqlite_")
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(format!("{name}: not a snake-case kvsqlite_ name"));
            }
            if (ty == "counter") != name.ends_with("_total") {
                return Err(format!("{name}: counters, and only they, end in _total"));
            }
            for bad in [
                "_ms",
                "_milliseconds",
                "_us",
                "_microseconds",
                "_kilobytes",
                "_kib",
                "_mib",
            ] {
                if name.contains(&format!("{bad}_")) || name.ends_with(bad) {
                    return Err(format!("{name}: not a base unit ({bad})"));
                }
            }
            if (name.contains("duration") || name.contains("time")) && !name.ends_with("_seconds") {
                return Err(format!("{name}: a duration must be in _seconds"));
            }
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        let key = line.rsplit_once(' ').ok_or("no value")?.0;
        let name = key.split('{').next().unwrap_or(key);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(format!("{name}: sample of no declared family"));
        }
        if key.contains("le=\"") && !name.ends_with("_bucket") {
            return Err(format!("{key}: le outside a histogram bucket"));
        }
        if key.contains("{__") || key.contains(",__") {
            return Err(format!("{key}: reserved label name"));
        }
        if !series.insert(key.to_string()) {
            return Err(format!("{key}: series given twice"));
        }
    }
    Ok(())
}

/// `after - before` of every series (absent counts as 0).
fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

const KINDS: [(OpKind, &str); 5] = [
    (OpKind::Get, "get"),
    (OpKind::List, "list"),
    (OpKind::Write, "write"),
    (OpKind::DeleteRange, "delete_range"),
    (OpKind::BatchRead, "batch_read"),
];

/// The KV families of one step equal what the counting store under the host saw; returns
/// the step's deltas without them (and without the series that change at every scrape).
fn check_kv(d: &BTreeMap<String, f64>, kv: &KvCounters, step: &str) -> BTreeMap<String, f64> {
    let mut rest = d.clone();
    fn take_from(rest: &mut BTreeMap<String, f64>, k: &str) -> u64 {
        rest.remove(k).unwrap_or(0.0) as u64
    }
    macro_rules! take {
        ($k:expr) => {
            take_from(&mut rest, $k)
        };
    }
    for (kind, name) in KINDS {
        let c = kv.op(kind);
        let l = format!("{{backend=\"memory\",op=\"{name}\"}}");
        assert_eq!(
            take!(&format!("kvsqlite_kv_calls_total{l}")),
            c.calls,
            "{step}: {name} calls"
        );
        assert_eq!(
            take!(&format!("kvsqlite_kv_call_errors_total{l}")),
            c.errors,
            "{step}: {name} errors"
        );
        assert_eq!(
            take!(&format!("kvsqlite_kv_call_duration_seconds_count{l}")),
            c.calls,
            "{step}: {name} latency count"
        );
        // Durations: the sum moves by the calls' wall time, which no test asserts.
        take!(&format!("kvsqlite_kv_call_duration_seconds_sum{l}"));
        rest.retain(|k, _| {
            !k.starts_with(&format!(
                "kvsqlite_kv_call_duration_seconds_bucket{{backend=\"memory\",op=\"{name}\","
            ))
        });
    }
    let t = kv.total();
    assert_eq!(
        take!("kvsqlite_kv_read_bytes_total{backend=\"memory\"}"),
        t.bytes_in,
        "{step}: read bytes"
    );
    assert_eq!(
        take!("kvsqlite_kv_written_bytes_total{backend=\"memory\"}"),
        t.bytes_out,
        "{step}: written bytes"
    );
    assert_eq!(
        take!("kvsqlite_kv_round_trips_total"),
        {
            // The older family counts the actors' round trips (not the host's token look-ups,
            // which this workload never makes).
            t.calls
        },
        "{step}: kvsqlite_kv_round_trips_total"
    );
    // Time-valued series: their counts are asserted by the step, their sums and buckets are
    // wall time.
    rest.retain(|k, _| {
        !(k.ends_with("_seconds_sum")
            || k.contains("_seconds_sum{")
            || k.contains("_seconds_bucket"))
    });
    rest
}

/// 3000 seeded random bytes in hex: incompressible, and the same every run.
fn noise(seed: u64) -> String {
    kvsqlite::rng::Rng::new(seed)
        .bytes(3000)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn m(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn every_family_moves_exactly_as_the_workload_says() {
    // SQLite's own randomness from a fixed seed: the journalled commit writes a rollback
    // journal whose header carries a random nonce, and its LZ4 size (so the commit's bytes)
    // moved by a byte now and then with it.
    // SAFETY: SQLITE_TESTCTRL_PRNG_SEED takes an int and a database handle (null: none).
    unsafe {
        rusqlite::ffi::sqlite3_test_control(
            rusqlite::ffi::SQLITE_TESTCTRL_PRNG_SEED,
            0x5eed as std::ffi::c_int,
            std::ptr::null_mut::<rusqlite::ffi::sqlite3>(),
        );
    }
    let mem = Arc::new(MemoryStore::with_limits(limits()));
    let under = CountingStore::wrap(mem.clone());
    let host = Host::start(under.shared(), 1, Duration::from_secs(3600));
    let mut before = host.scrape();
    let mut kv_before = under.snapshot();
    // Runs one step and returns its deltas other than the KV families (checked here).
    let mut step = |name: &str, f: &dyn Fn()| -> BTreeMap<String, f64> {
        f();
        let after = host.scrape();
        let kv_after = under.snapshot();
        let d = delta(&after, &before);
        let rest = check_kv(&d, &kv_after.delta(&kv_before), name);
        before = after;
        kv_before = kv_after;
        rest
    };

    // Each wake: its phases (one observation each, the `on_wake` hook's among them) and its
    // `round_trips`; a creation has one phase more.
    let wake = |created: bool, round_trips: f64| {
        let mut v = vec![
            ("kvsqlite_wakes_total", 1.0),
            ("kvsqlite_wake_duration_seconds_count", 1.0),
            ("kvsqlite_wake_kv_round_trips_count", 1.0),
            ("kvsqlite_wake_kv_round_trips_sum", round_trips),
        ];
        for phase in [
            "check_persist_data",
            "flush_writes",
            "init_inspector_token",
            "instantiate",
            "load_state",
            "preload_kv",
            // The host configures connections (`--max-sockets` > 0): every wake restores them.
            "restore_connections",
            "setup_database_client",
        ]
        .into_iter()
        .chain(created.then_some("init_new_actor"))
        {
            let k: &'static str = Box::leak(
                format!("kvsqlite_wake_phase_duration_seconds_count{{group=\"internal\",phase=\"{phase}\"}}")
                    .into_boxed_str(),
            );
            v.push((k, 1.0));
        }
        v.push((
            "kvsqlite_wake_phase_duration_seconds_count{group=\"user\",phase=\"on_wake\"}",
            1.0,
        ));
        if created {
            v.push(("kvsqlite_creations_total", 1.0));
        }
        v
    };
    // One commit of `pages` pages and `bytes` KV bytes by `path`.
    let commit = |path: &'static str, pages: f64, bytes: f64| {
        let k: &'static str =
            Box::leak(format!("kvsqlite_commits_total{{path=\"{path}\"}}").into_boxed_str());
        vec![
            (k, 1.0),
            ("kvsqlite_commit_pages_count", 1.0),
            ("kvsqlite_commit_pages_sum", pages),
            ("kvsqlite_commit_bytes_count", 1.0),
            ("kvsqlite_commit_bytes_sum", bytes),
        ]
    };
    let expect = |got: BTreeMap<String, f64>, parts: Vec<Vec<(&str, f64)>>| {
        let mut got: BTreeMap<String, f64> = got
            .into_iter()
            .filter(|(k, _)| !k.contains("_bucket"))
            .collect();
        let want = m(&parts.concat());
        // Compression: every page value a commit sends (its pages written) is 4 KiB before
        // LZ4 and never more after it; the history's images are at most those pages.
        let mut take = |what: &str, side: &str| {
            got.remove(&format!(
                "kvsqlite_compression_bytes_total{{what=\"{what}\",side=\"{side}\"}}"
            ))
            .unwrap_or(0.0)
        };
        let (pb, pa) = (take("page", "before"), take("page", "after"));
        let (hb, ha) = (take("history", "before"), take("history", "after"));
        let pages = want
            .get("kvsqlite_commit_pages_sum")
            .copied()
            .unwrap_or(0.0);
        assert_eq!(pb, pages * 4096.0, "{want:?}");
        assert!(pa <= pb && hb <= pb && ha <= hb, "{pa} {pb} {ha} {hb}");
        assert_eq!(got, want);
    };

    // A new actor and its table: the creation (a read and the creation's write; the hook's
    // one statement finds no table), one client statement, one atomic commit of page 1 and
    // the table's root page (two 4 KiB pages, both mostly empty and so sent LZ4-compressed,
    // with their keys, the file's metadata and the commit's redo record, its two page images
    // compressed too).
    let d = step("create", &|| {
        host.ok("a", "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)");
    });
    expect(
        d,
        vec![
            wake(true, 2.0),
            vec![
                ("kvsqlite_actors_awake", 1.0),
                ("kvsqlite_actors_awake_peak", 1.0),
                ("kvsqlite_query_duration_seconds_count", 1.0),
                ("kvsqlite_statements_total", 2.0),
            ],
            commit("atomic", 2.0, 571.0),
        ],
    );
    // A one-row insert: page 1 comes from the page cache; one atomic commit of two pages.
    let d = step("small commit", &|| {
        host.ok("a", "INSERT INTO t VALUES (1, x'00')");
    });
    let one_statement = vec![
        ("kvsqlite_query_duration_seconds_count", 1.0),
        ("kvsqlite_statements_total", 1.0),
    ];
    expect(
        d,
        vec![
            one_statement.clone(),
            vec![("kvsqlite_page_cache_hits_total", 1.0)],
            commit("atomic", 2.0, 573.0),
        ],
    );
    // Ten 3000-byte rows in one batch: 12 dirty pages, more than one put of 8 entries holds,
    // so staged. The actor's log counts 12 statements: the 10 inserts, BEGIN and COMMIT (the
    // host's transaction-control probe is not logged); 10 are client statements. Commit bytes
    // include the commit's redo record (history is on; the rows, [`noise`], do not compress).
    let rows = |from: i64, to: i64| {
        (from..to)
            .map(|i| format!("INSERT INTO t VALUES ({i}, x'{}')", noise(i as u64)))
            .collect::<Vec<_>>()
    };
    let d = step("staged commit", &|| host.batch("a", &rows(2, 12)));
    expect(
        d,
        vec![
            vec![
                ("kvsqlite_query_duration_seconds_count", 10.0),
                ("kvsqlite_statements_total", 12.0),
                ("kvsqlite_page_cache_hits_total", 1.0),
            ],
            commit("staged", 12.0, 67832.0),
        ],
    );
    // Forty more: past the 64 KiB of dirty pages a transaction may keep, SQLite spills and
    // falls back to the rollback journal.
    let d = step("journalled commit", &|| host.batch("a", &rows(12, 52)));
    expect(
        d,
        vec![
            vec![
                ("kvsqlite_query_duration_seconds_count", 40.0),
                ("kvsqlite_statements_total", 42.0),
                ("kvsqlite_page_cache_hits_total", 1.0),
            ],
            commit("journal", 45.0, 254855.0),
        ],
    );
    // A read of every row while awake: SQLite's own cache holds the pages; the VFS serves
    // page 1's change-counter check from its cache. No KV call.
    let d = step("cached read", &|| {
        host.ok("a", "SELECT count(*), sum(length(v)) FROM t");
    });
    expect(
        d,
        vec![
            one_statement.clone(),
            vec![("kvsqlite_page_cache_hits_total", 1.0)],
        ],
    );
    // With one actor awake at most, a new actor `b` puts `a` to sleep.
    let d = step("another actor (a sleeps)", &|| {
        host.ok("b", "SELECT 1");
    });
    expect(
        d,
        vec![
            wake(true, 2.0),
            vec![
                ("kvsqlite_query_duration_seconds_count", 1.0),
                ("kvsqlite_statements_total", 2.0),
                ("kvsqlite_sleeps_total", 1.0),
            ],
        ],
    );
    // `a` wakes (`b` sleeps) and its `on_wake` hook reads every row cold: the preload holds
    // the first pages (8 reads of them: its byte budget holds the pages as stored, compressed
    // where that is shorter), 3 reads go to the store (the wake's preload misses, so the wake
    // costs 1 + 3 round trips) and read-ahead fetches 44 more pages, all used. The client's
    // read after it is served from the caches.
    let d = step("wake and cold read", &|| {
        host.ok("a", "SELECT count(*), sum(length(v)) FROM t");
    });
    expect(
        d,
        vec![
            wake(false, 4.0),
            vec![
                ("kvsqlite_query_duration_seconds_count", 1.0),
                ("kvsqlite_statements_total", 3.0),
                ("kvsqlite_sleeps_total", 1.0),
                // 8 with compressed pages (more of them fit the wake's budget), and one more:
                // `restore_connections` reads the schema page.
                ("kvsqlite_preload_hits_total", 9.0),
                ("kvsqlite_preload_misses_total", 3.0),
                ("kvsqlite_page_cache_misses_total", 3.0),
                ("kvsqlite_page_cache_hits_total", 45.0),
                ("kvsqlite_readahead_prefetched_pages_total", 44.0),
                ("kvsqlite_readahead_used_pages_total", 44.0),
            ],
        ],
    );
    // A second instance of `a` (straight on the store) wakes and writes; the host's next write
    // on `a` finds its fence moved: 503, one moved conflict, no commit counted, `a` put to
    // sleep.
    let d = step("moved", &|| {
        let other = Actor::start(mem.clone(), "a", &actor_config()).expect("second instance");
        other
            .db()
            .execute_batch("INSERT INTO t VALUES (100, x'01')")
            .expect("its write");
        other.sleep().expect("its sleep");
        let (st, v) = host.query("a", "INSERT INTO t VALUES (101, x'02')");
        assert_eq!(st, 503, "{v}");
    });
    expect(
        d,
        vec![
            one_statement.clone(),
            vec![
                ("kvsqlite_moved_conflicts_total", 1.0),
                ("kvsqlite_errors_total{kind=\"unavailable\"}", 1.0),
                ("kvsqlite_page_cache_hits_total", 1.0),
                ("kvsqlite_sleeps_total", 1.0),
                ("kvsqlite_actors_awake", -1.0),
            ],
        ],
    );
    // The next request wakes `a` afresh and sees the other instance's row.
    let d = step("a wakes afresh", &|| {
        let v = host.ok("a", "SELECT count(*) FROM t");
        assert_eq!(v["rows"], json!([[52]]));
    });
    assert_eq!(d["kvsqlite_wakes_total"], 1.0);

    // Read-ahead waste. Actor `c` (its wake hook reads nothing: it has no table `t`) holds 30
    // rows of 3000 bytes ([`noise`]), one leaf page each, written by one commit and rewritten by the next.
    let fill = |seed: u64| {
        (0..30)
            .map(|i| {
                format!(
                    "INSERT OR REPLACE INTO u VALUES ({i}, x'{}')",
                    noise(seed * 1000 + i)
                )
            })
            .collect::<Vec<_>>()
    };
    let first_fill = std::cell::RefCell::new(Value::Null);
    let d = step("c's rows (a sleeps, then c)", &|| {
        host.ok("c", "CREATE TABLE u(id INTEGER PRIMARY KEY, v BLOB)");
        host.batch("c", &fill(1));
        host.batch("c", &fill(2));
        let (st, text) = host.get("/actors/c/history", Some(ADMIN));
        assert_eq!(st, 200, "{text}");
        let h: Value = serde_json::from_str(&text).expect("JSON");
        *first_fill.borrow_mut() = h["commits"][1]["bookmark"].clone();
        host.ok("a", "SELECT 1");
    });
    // Every page read ahead so far was read.
    assert_eq!(d.get("kvsqlite_readahead_wasted_pages_total"), None);
    // `c` wakes (`a` sleeps) in one round trip; the preload serves 4 page reads; the client's
    // read of rows 0 to 2 misses twice: a lone chunk, then the chunk after it, which starts a
    // sequential run of 8 chunks (7 read ahead). The read stops there: the 7 are never read.
    // Then a restore to the first fill writes the 31 pages changed since (the 30 leaves and
    // page 1, staged: more than one put holds) over the cache: the 7 are dropped unread.
    let d = step("read ahead, then dropped unread", &|| {
        let v = host.ok("c", "SELECT length(v) FROM u WHERE id < 3");
        assert_eq!(v["rows"], json!([[3000], [3000], [3000]]));
        let body = json!({ "to": first_fill.borrow().clone() }).to_string();
        let (st, text) = serve::post(
            &host.agent,
            &host.base,
            "/actors/c/restore",
            Some(ADMIN),
            &body,
        );
        assert_eq!(st, 200, "{text}");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!((&v["pages"], &v["restored_to"]), (&json!(31), &json!(2)));
    });
    expect(
        d,
        vec![
            wake(false, 1.0),
            vec![
                ("kvsqlite_query_duration_seconds_count", 1.0),
                // The wake hook's statement and the client's.
                ("kvsqlite_statements_total", 2.0),
                ("kvsqlite_sleeps_total", 1.0),
                ("kvsqlite_preload_hits_total", 4.0),
                // Reads of pages the wake left in the cache, and the restore's of page 1.
                ("kvsqlite_page_cache_hits_total", 5.0),
                ("kvsqlite_page_cache_misses_total", 2.0),
                ("kvsqlite_readahead_prefetched_pages_total", 7.0),
                ("kvsqlite_readahead_wasted_pages_total", 7.0),
            ],
            commit("staged", 31.0, 183992.0),
        ],
    );
}

/// The family names of one scrape (its `# TYPE` lines), with their types.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// Every `expr` string anywhere in a JSON document.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// Where the book keeps the dashboard and the scrape example (published with it).
const DASHBOARD: &str = "docs/src/operations/grafana/kvsqlite.json";
const SCRAPE: &str = "docs/src/operations/prometheus.yml";

/// The families only a cluster member exports (the book's cluster page lists them).
const CLUSTER_FAMILIES: [&str; 4] = [
    "kvsqlite_actor_moves_total",
    "kvsqlite_cluster_expulsions_total",
    "kvsqlite_cluster_members",
    "kvsqlite_requests_forwarded_total",
];

/// The families (with their types) of a host after one statement: outside a cluster, and as
/// the one member of a cluster. Each scrape passes the lint.
fn exported_families() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let scrape = |cluster: Option<&str>| {
        let mem: SharedStore = Arc::new(MemoryStore::new());
        let host = Host::start_with(mem, 4, Duration::from_secs(3600), cluster);
        host.ok("d", "CREATE TABLE t(x)");
        let (st, text) = host.get("/metrics", None);
        assert_eq!(st, 200);
        lint(&text).unwrap_or_else(|e| panic!("lint: {e}"));
        families(&text)
    };
    let (single, member) = (scrape(None), scrape(Some("families")));
    // A member exports every family of a single host, and the cluster's four.
    let mut extra = member.clone();
    for (name, ty) in &single {
        assert_eq!(extra.remove(name).as_ref(), Some(ty), "{name} in a cluster");
    }
    let extra: Vec<&str> = extra.keys().map(String::as_str).collect();
    assert_eq!(extra, CLUSTER_FAMILIES);
    (single, member)
}

#[test]
fn the_dashboard_names_exactly_the_families_the_host_exports() {
    // The dashboard covers a cluster member's families: a single host's and the cluster's.
    let (_, exported) = exported_families();
    let dir = env!("CARGO_MANIFEST_DIR");
    let raw = std::fs::read_to_string(format!("{dir}/{DASHBOARD}")).expect(DASHBOARD);
    let dash: Value = serde_json::from_str(&raw).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], json!("kvsqlite"));
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.iter().any(|p| p["type"] == json!("timeseries")));
    for p in panels.iter().filter(|p| p["type"] == json!("timeseries")) {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(!p["targets"].as_array().expect("targets").is_empty(), "{p}");
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let mut named = BTreeSet::new();
    for e in &all {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("kvsqlite_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            // A histogram's series name its family.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| exported.get(*f).is_some_and(|t| t == "histogram"))
                })
                .unwrap_or(name);
            named.insert(family.to_string());
            rest = &tail[end..];
        }
    }
    let exported: BTreeSet<String> = exported.into_keys().collect();
    assert_eq!(named, exported, "dashboard families vs exported families");
    let scrape = std::fs::read_to_string(format!("{dir}/{SCRAPE}")).expect(SCRAPE);
    assert!(scrape.contains("metrics_path: /metrics") && scrape.contains("job_name: kvsqlite"));
}

fn get_with(host: &Host, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = host.agent.get(format!("{}{path}", host.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    match req.call() {
        Ok(r) => {
            let st = r.status().as_u16();
            (st, r.into_body().read_to_string().unwrap_or_default())
        }
        Err(e) => (0, e.to_string()),
    }
}

fn statements_of(host: &Host, id: &str) -> f64 {
    let (st, text) = host.get(&format!("/actors/{id}/inspector/metrics"), Some(ADMIN));
    assert_eq!(st, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    v["sql_statements"]["value"]
        .as_f64()
        .expect("sql_statements")
}

#[test]
fn top_actors_and_an_inspector_poll_that_costs_nothing() {
    let mem = Arc::new(MemoryStore::new());
    let under = CountingStore::wrap(mem);
    let idle = Duration::from_millis(1500);
    let host = Host::start(under.shared(), 4, idle);
    let kv0 = under.snapshot();
    host.ok("x", "CREATE TABLE t(v)");
    host.ok("x", "INSERT INTO t VALUES (1)");
    host.ok("x", "INSERT INTO t VALUES (2)");
    host.ok("y", "SELECT 1");
    let kv = under.snapshot().delta(&kv0);

    // Token from the headers first; bad parameters are 400.
    assert_eq!(host.get("/inspector/top", None).0, 401);
    assert_eq!(host.get("/inspector/top?by=nope", None).0, 401);
    assert_eq!(host.get("/inspector/top?by=nope", Some(ADMIN)).0, 400);
    assert_eq!(host.get("/inspector/top?limit=0", Some(ADMIN)).0, 400);
    let top = |q: &str| -> Value {
        let (st, text) = host.get(&format!("/inspector/top{q}"), Some(ADMIN));
        assert_eq!(st, 200, "{text}");
        serde_json::from_str(&text).expect("JSON")
    };
    let t = top("");
    let actors = t["actors"].as_array().expect("actors");
    let ids: Vec<&str> = actors
        .iter()
        .map(|a| a["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["x", "y"], "{t}");
    // Client statements plus the wake hook's one (no table `t` at a creation).
    assert_eq!(actors[0]["statements"], json!(4));
    assert_eq!(actors[1]["statements"], json!(2));
    // Every round trip and byte of this workload is an actor's (no token look-ups yet).
    let sum = |k: &str| {
        actors
            .iter()
            .map(|a| a[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(sum("kv_round_trips"), kv.round_trips());
    assert_eq!(sum("kv_bytes"), kv.total().bytes_in + kv.total().bytes_out);
    // x: a creation (2 round trips) and three commits; y: a creation and no commit.
    assert_eq!(actors[0]["kv_round_trips"], json!(5));
    assert_eq!(actors[1]["kv_round_trips"], json!(2));
    assert_eq!(top("?limit=1")["actors"].as_array().map(Vec::len), Some(1));
    assert_eq!(top("?by=bytes")["actors"][0]["id"], json!("x"));

    // The page's poll: the live sections only, no statement, no cost, no use.
    let before_statements = statements_of(&host, "x");
    let before_top = top("")["actors"].clone();
    let poll = [
        ("Authorization", format!("Bearer {ADMIN}")),
        ("X-Inspector-Poll", "1".into()),
    ];
    let poll: Vec<(&str, &str)> = poll.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (st, page) = get_with(&host, "/actors/x/inspector", &poll);
    assert_eq!(st, 200);
    assert!(
        page.contains("id=\"wake\"")
            && page.contains("id=\"log-wrap\"")
            && page.contains("id=\"latency\"")
    );
    assert!(
        page.contains("INSERT INTO t VALUES (2)"),
        "the query log is shown"
    );
    assert_eq!(statements_of(&host, "x"), before_statements);
    assert_eq!(top("")["actors"], before_top, "a poll costs nothing");
    // A full page view runs the inspector's own statements: not the actor's statements either.
    let (st, _) = host.get("/actors/x/inspector", Some(ADMIN));
    assert_eq!(st, 200);
    assert_eq!(statements_of(&host, "x"), before_statements);

    // Polled every 200 ms, x still goes to sleep once idle (a bounded wait: 30 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (st, _) = get_with(&host, "/actors/x/inspector", &poll);
        if st == 204 {
            break;
        }
        assert_eq!(st, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "polls kept the actor awake"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, text) = host.get("/healthz", None);
    assert_eq!(st, 200);
    let h: Value = serde_json::from_str(&text).expect("JSON");
    assert!(h["actors_awake"].as_u64().is_some_and(|n| n <= 1), "{h}");
}

/// The family names a passage of the book lists: every code span naming a `kvsqlite_` family
/// (labels in braces dropped), and the table's short forms `…_suffix`, which replace as many
/// trailing words of the last full name on their line as they have (`kvsqlite_ws_pushes_
/// delivered_total`, `…_dropped_total` → `kvsqlite_ws_pushes_dropped_total`).
fn book_families(passage: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in passage.lines() {
        let mut last: Option<String> = None;
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 0 {
                continue;
            }
            let name = span.split('{').next().unwrap_or(span);
            if name.starts_with("kvsqlite_") {
                out.insert(name.to_string());
                last = Some(name.to_string());
            } else if let Some(short) = name.strip_prefix('…') {
                let full = last
                    .as_deref()
                    .unwrap_or_else(|| panic!("{span}: no full name before it: {line}"));
                let words: Vec<&str> = full.split('_').collect();
                let keep = words.len() - (short.split('_').count() - 1);
                out.insert(format!("{}{short}", words[..keep].join("_")));
            }
        }
    }
    out
}

/// The text of `path` (under the crate) between `from` and `to`, both required.
fn passage(path: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{path}: no {from:?}"));
    let len = text[start..]
        .find(to)
        .unwrap_or_else(|| panic!("{path}: no {to:?} after {from:?}"));
    text[start..start + len].to_string()
}

#[test]
fn the_books_family_lists_are_the_families_metrics_exports() {
    let (single, member) = exported_families();
    // The HTTP page's `/metrics` paragraph and table: every family of a host outside a cluster.
    let http = book_families(&passage(
        "docs/src/serving/http.md",
        "**`/metrics`**",
        "**Top actors.**",
    ));
    let single: BTreeSet<String> = single.into_keys().collect();
    assert_eq!(http, single, "serving/http.md vs /metrics");
    // The cluster page: what a member adds.
    let cluster = book_families(&passage(
        "docs/src/serving/cluster.md",
        "`/metrics` adds",
        "(with",
    ));
    let want: BTreeSet<String> = CLUSTER_FAMILIES.iter().map(|s| s.to_string()).collect();
    assert_eq!(cluster, want, "serving/cluster.md vs a member's /metrics");
    let both: BTreeSet<String> = http.union(&cluster).cloned().collect();
    let member: BTreeSet<String> = member.into_keys().collect();
    assert_eq!(both, member);
    // The short forms expand as the table means them.
    assert!(http.contains("kvsqlite_readahead_wasted_pages_total"));
    assert!(http.contains("kvsqlite_ws_pushes_unrouted_total"));
}

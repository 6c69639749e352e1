//! A busy actor's history stays within its retention: an actor that commits all the time and
//! never goes idle is compacted by `Actor::compact_if_due` (a library user without a host) and
//! by the host's periodic sweep, so that the store holds no history older than the window and
//! the byte bound holds. `compact_if_due` costs no round trip when nothing is due; commits and
//! wakes still cost exactly one round trip each.

use std::sync::Arc;
use std::time::Duration;

use kvsqlite::actor::{Actor, ActorConfig};
use kvsqlite::host::prom::HostMetrics;
use kvsqlite::host::registry::Registry;
use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvStore, ListRequest, SharedStore};
use kvsqlite::vfs::history::watch::UNKNOWN_AFTER_COMMITS;
use kvsqlite::vfs::history::{Clock, Header, HistoryOptions, TestClock};
use kvsqlite::vfs::layout::{parse_key, ParsedKey};

const WINDOW: Duration = Duration::from_secs(60);
const MAX_BYTES: u64 = 1 << 20;
/// The test clock's start (ms since the epoch) and its step per commit.
const T0: u64 = 1_800_000_000_000;
const STEP: Duration = Duration::from_secs(1);

fn config(clock: &TestClock) -> ActorConfig {
    ActorConfig {
        retention: HistoryOptions {
            retention: WINDOW,
            max_bytes: MAX_BYTES,
            clock: Clock::manual(clock),
        },
        ..ActorConfig::default()
    }
}

/// The history headers the store holds for `actor` (every key, listed to the end).
fn headers(store: &dyn KvStore, actor: &str) -> Vec<Header> {
    let mut out = Vec::new();
    let mut req = ListRequest::prefix(Vec::new());
    loop {
        let page = store.list(actor, &req).expect("list");
        for (k, v) in &page.entries {
            if let Some(ParsedKey::History(seq)) = parse_key(k) {
                out.push(Header::decode(seq, v).expect("a valid header"));
            }
        }
        match page.next_start {
            Some(k) => {
                req = ListRequest {
                    range: kvsqlite::kv::KeyRange::Range {
                        start: k,
                        end: None,
                    },
                    limit: None,
                    max_bytes: None,
                }
            }
            None => return out,
        }
    }
}

/// True when the store's history of `actor` is within the window (as of `now_ms`) and the
/// byte bound.
fn within_retention(store: &dyn KvStore, actor: &str, now_ms: u64) -> bool {
    let h = headers(store, actor);
    let cutoff = now_ms - WINDOW.as_millis() as u64;
    h.iter().all(|r| r.time_ms >= cutoff) && h.iter().map(|r| r.bytes).sum::<u64>() <= MAX_BYTES
}

/// A small commit (a few KB of redo record: 60 of them stay below the byte bound).
fn insert_sql(i: u64) -> String {
    format!("INSERT INTO t VALUES ({i}, randomblob(100))")
}

#[test]
fn compact_if_due_keeps_a_busy_actors_history_within_retention() {
    let clock = TestClock::new(T0);
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = Actor::start(store.clone(), "busy", &config(&clock)).unwrap();
    a.db()
        .execute("CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB)", [])
        .unwrap();
    let (mut by_time, mut by_bytes, mut idle_checks) = (0, 0, 0);
    for i in 0..400u64 {
        clock.advance(STEP);
        // Past 200 commits, big ones (about 100 KB of record each): the byte bound is reached
        // well inside the window.
        let sql = if i < 200 {
            insert_sql(i)
        } else {
            format!("INSERT INTO t VALUES ({i}, randomblob(100000))")
        };
        let before = a.kv_round_trips();
        a.db().execute(&sql, []).unwrap();
        assert_eq!(a.kv_round_trips() - before, 1, "commit {i}: one round trip");
        let due = a.compaction_due();
        // Due exactly when the store holds history past the window or over the bound.
        let h = headers(&*store, "busy");
        let cutoff = clock.now_ms() - WINDOW.as_millis() as u64;
        let old = h.iter().any(|r| r.time_ms < cutoff);
        let over = h.iter().map(|r| r.bytes).sum::<u64>() > MAX_BYTES;
        assert_eq!(due, old || over, "commit {i}");
        let before = a.kv_round_trips();
        let done = a.compact_if_due().unwrap();
        if !due {
            assert_eq!(done, None, "commit {i}");
            assert_eq!(a.kv_round_trips(), before, "not due: no round trip");
            idle_checks += 1;
            continue;
        }
        let r = done.expect("due: compacted");
        assert!(r.records_deleted >= 1, "commit {i}: due means work: {r:?}");
        by_time += old as u32;
        by_bytes += over as u32;
        assert!(
            within_retention(&*store, "busy", clock.now_ms()),
            "commit {i}"
        );
        assert!(r.bytes_kept <= MAX_BYTES, "{r:?}");
        // Right after a compaction nothing is due: the next check costs nothing.
        let before = a.kv_round_trips();
        assert!(!a.compaction_due());
        assert_eq!(a.compact_if_due().unwrap(), None);
        assert_eq!(a.kv_round_trips(), before);
    }
    // A 60 s window and a commit a second: the window makes one due every commit past the
    // 60th while commits are small; then the byte bound does (before the window could).
    assert!(by_time >= 140, "commits 60..200 at least: {by_time}");
    assert!(by_bytes >= 150, "{by_bytes}");
    assert!(idle_checks >= 60, "{idle_checks}");
    // Reads and the clock moving on inside the window make nothing due.
    assert!(!a.compaction_due());
    a.sleep().unwrap();

    // A wake: one round trip; the wake does not read the history, so the summary is unknown,
    // and compaction is due only once the actor has committed UNKNOWN_AFTER_COMMITS times
    // (a short wake is compacted by its sleep; none costs a round trip after every wake).
    let a = Actor::start(store.clone(), "busy", &config(&clock)).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1, "a wake is one round trip");
    assert!(!a.compaction_due(), "not at once after a wake");
    let before = a.kv_round_trips();
    assert_eq!(a.compact_if_due().unwrap(), None);
    assert_eq!(a.kv_round_trips(), before, "nothing due, nothing read");
    for i in 0..UNKNOWN_AFTER_COMMITS {
        assert!(!a.compaction_due());
        a.db()
            .execute(
                "INSERT INTO t VALUES (?1, randomblob(100))",
                [400 + i as i64],
            )
            .unwrap();
    }
    assert!(a.compaction_due(), "unknown, after enough commits");
    clock.advance(WINDOW + Duration::from_millis(1));
    assert!(a.compact_if_due().unwrap().is_some());
    let h = headers(&*store, "busy");
    assert!(
        h.is_empty(),
        "every record is past the window now: {} left",
        h.len()
    );
    let before = a.kv_round_trips();
    assert_eq!(a.compact_if_due().unwrap(), None);
    assert_eq!(a.kv_round_trips(), before);
    // The database is whole.
    let n: i64 = a
        .db()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 400 + UNKNOWN_AFTER_COMMITS as i64);
}

#[test]
fn a_stale_instances_compact_if_due_is_refused_and_writes_nothing() {
    let clock = TestClock::new(T0);
    let mem = Arc::new(MemoryStore::new());
    // Two instances of one actor: each on a store handle of its own, as two hosts are.
    let store: SharedStore = mem.clone();
    let old = Actor::start(
        CountingStore::wrap(mem.clone()).shared(),
        "a",
        &config(&clock),
    )
    .unwrap();
    old.db().execute("CREATE TABLE t(x)", []).unwrap();
    for i in 0..5 {
        old.db().execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    // Another instance takes the actor over; the old one still believes compaction is due.
    let new = Actor::start(
        CountingStore::wrap(mem.clone()).shared(),
        "a",
        &config(&clock),
    )
    .unwrap();
    // Its first write moves the fence.
    new.db().execute("INSERT INTO t VALUES (5)", []).unwrap();
    clock.advance(WINDOW * 2);
    assert!(old.compaction_due());
    assert!(headers(&*store, "a").len() >= 6);
    let before = mem.dump();
    let e = old.compact_if_due().unwrap_err();
    assert!(e.is_moved(), "{e}");
    assert_eq!(mem.dump(), before, "the stale instance wrote nothing");
    // The new instance's summary is unknown (it woke on a history): compacting explicitly.
    new.compact_history().unwrap();
    assert!(headers(&*store, "a").is_empty());
}

#[test]
fn the_host_sweep_compacts_an_actor_that_never_goes_idle() {
    let clock = TestClock::new(T0);
    let store: SharedStore = Arc::new(MemoryStore::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let registry = Arc::new(Registry::new(
        store.clone(),
        config(&clock),
        4,
        Arc::new(HostMetrics::default()),
    ));
    // Each request answers the actor's round trips (the background prefetch not counted) as
    // it starts, and whether its compaction is due.
    let sql = |s: Option<String>| -> kvsqlite::host::registry::Work {
        Box::new(move |a: &Actor| {
            let rt = a.kv_round_trips();
            if let Some(s) = &s {
                a.db()
                    .execute(s, [])
                    .map_err(|e| kvsqlite::host::HostError::Internal(e.to_string()))?;
            }
            Ok(serde_json::json!([rt, a.compaction_due()]))
        })
    };
    let timeout = Duration::from_secs(30);
    // Never idle for the sweep: its idle period is an hour.
    let idle = Duration::from_secs(3600);
    rt.block_on(async {
        let run = |s: Option<String>| {
            let registry = registry.clone();
            async move {
                let v = registry.run("busy", timeout, sql(s)).await.unwrap();
                (v[0].as_u64().unwrap(), v[1].as_bool().unwrap())
            }
        };
        // The sweep counts an actor last used at the registry's first millisecond as idle
        // for any idle period (its times are milliseconds since the registry started).
        tokio::time::sleep(Duration::from_millis(5)).await;
        run(Some("CREATE TABLE t(i INTEGER PRIMARY KEY, b BLOB)".into())).await;
        let mut compactions = 0;
        for i in 0..300u64 {
            clock.advance(STEP);
            let (before, _) = run(Some(insert_sql(i))).await;
            let (after, due) = run(None).await;
            assert_eq!(after - before, 1, "commit {i}: one round trip");
            let within = within_retention(&*store, "busy", clock.now_ms());
            assert_eq!(due, !within, "commit {i}");
            registry.sleep_idle(idle).await;
            if !due {
                // Nothing due: the sweep costs no round trip.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let (again, due2) = run(None).await;
                assert_eq!(again, after, "commit {i} (due now: {due2})");
                continue;
            }
            // The sweep's compaction runs in a task of its own, in its turn for the lock.
            let mut waited = 0;
            while !within_retention(&*store, "busy", clock.now_ms()) {
                assert!(waited < 2_000, "commit {i}: the sweep never compacted");
                tokio::time::sleep(Duration::from_millis(5)).await;
                waited += 1;
            }
            compactions += 1;
        }
        assert!(compactions >= 200, "{compactions}");
        assert!(registry.is_awake("busy"), "the actor never slept");
        assert_eq!(
            registry
                .metrics()
                .sleeps
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    });
}

//! History under failure and over time: a crash at every KV call of commits, compaction and
//! restore (the write in flight applied, then discarded) leaves an acknowledged database whose
//! every listed bookmark restores to its oracle hash; retention past the window (a test clock)
//! and the byte bound leave no older history; a stale instance can neither restore, compact nor
//! read a fork's image.

#[path = "common/history.rs"]
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvStore, SharedStore};
use kvsqlite::vfs::history::{parse_bookmark, Clock, HistoryOptions, Target, TestClock};
use kvsqlite::vfs::layout::{self, FileKind, ParsedKey};
use kvsqlite::vfs::{open_database, Database, FenceSpec, OpenOptions, VfsError};
use workload::{apply, content_hash, Tx};

const HOUR: u64 = 3_600_000;

fn opts(clock: &TestClock, retention_h: u64, max_bytes: u64) -> OpenOptions {
    OpenOptions {
        max_atomic_bytes: 256 << 10,
        history: HistoryOptions {
            retention: Duration::from_millis(retention_h * HOUR),
            max_bytes,
            clock: Clock::manual(clock),
        },
        ..OpenOptions::default()
    }
}

fn seq_of(db: &Database) -> u64 {
    parse_bookmark(&db.bookmark().unwrap()).unwrap().1
}

enum Op {
    Tx(Tx),
    Compact,
    Restore(usize),
}

/// Commits (small, one staged, one journal fallback, a VACUUM), a compaction past a 10-hour
/// window, a restore, more commits, another compaction: one hour between operations.
fn scenario() -> Vec<Op> {
    let mut ops: Vec<Op> = workload::workload(11, 16).into_iter().map(Op::Tx).collect();
    let blob = |n: usize| rusqlite::types::Value::Blob(vec![7u8; n]);
    ops.insert(
        5,
        Op::Tx(Tx {
            kind: "staged",
            stmts: vec![(
                "INSERT INTO t0(a, c) VALUES (-1, ?1)".into(),
                vec![blob(600_000)],
            )],
        }),
    );
    ops.insert(
        9,
        Op::Tx(Tx {
            kind: "journal",
            stmts: vec![(
                "INSERT INTO t0(a, c) VALUES (-2, ?1)".into(),
                vec![blob(400_000)],
            )],
        }),
    );
    ops.insert(
        11,
        Op::Tx(Tx {
            kind: "vacuum",
            stmts: vec![],
        }),
    );
    ops.push(Op::Compact);
    ops.push(Op::Restore(3));
    ops.push(Op::Tx(Tx {
        kind: "small",
        stmts: vec![("INSERT INTO t0(a, b) VALUES (5, 'after')".into(), vec![])],
    }));
    ops.push(Op::Compact);
    ops.push(Op::Restore(1));
    ops
}

/// Runs the scenario until an operation fails. Returns the oracle's hash by seq (for the
/// operations that returned OK), the hash of the last acknowledged state, and the hash the
/// failed operation would have left.
struct Outcome {
    hashes: BTreeMap<u64, u64>,
    acked: u64,
    in_flight: Option<u64>,
}

fn run(
    store: SharedStore,
    clock: &TestClock,
    hashes_known: Option<&BTreeMap<u64, u64>>,
) -> Outcome {
    let oracle = rusqlite::Connection::open_in_memory().unwrap();
    let mut out = Outcome {
        hashes: BTreeMap::new(),
        acked: content_hash(&oracle),
        in_flight: None,
    };
    let Ok(db) = open_database(store, "h", &opts(clock, 10, 1 << 30)) else {
        return out;
    };
    for op in scenario() {
        clock.advance(Duration::from_millis(HOUR));
        let expect;
        let r: Result<(), String> = match &op {
            Op::Tx(tx) => {
                apply(&oracle, tx);
                expect = content_hash(&oracle);
                try_apply(&db, tx)
            }
            Op::Compact => {
                expect = out.acked;
                db.compact_history().map(|_| ()).map_err(|e| e.to_string())
            }
            Op::Restore(back) => {
                let listed: Vec<u64> = match db.history() {
                    Ok(h) => h.iter().map(|c| c.seq).collect(),
                    Err(_) => return out,
                };
                let target = listed[listed.len() - 1 - back];
                expect = match hashes_known {
                    Some(h) => h[&target],
                    None => out.hashes[&target],
                };
                let r = db
                    .restore(&Target::Seq(target))
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                if r.is_ok() {
                    reset_oracle(&oracle, &db);
                }
                r
            }
        };
        if r.is_err() {
            out.in_flight = Some(expect);
            return out;
        }
        out.acked = expect;
        out.hashes.insert(seq_of(&db), expect);
    }
    out
}

/// A restore changed the database to an older state: the oracle follows by copying it.
fn reset_oracle(oracle: &rusqlite::Connection, db: &Database) {
    let mut tables: Vec<String> = Vec::new();
    {
        let mut st = oracle
            .prepare("SELECT name FROM sqlite_master WHERE type='table'")
            .unwrap();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            tables.push(r.get(0).unwrap());
        }
    }
    for t in tables {
        oracle.execute_batch(&format!("DROP TABLE {t}")).unwrap();
    }
    let src: Vec<String> = {
        let mut st = db
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    let names: Vec<String> = {
        let mut st = db
            .prepare("SELECT name FROM sqlite_master WHERE type='table'")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    for sql in src {
        oracle.execute_batch(&sql).unwrap();
    }
    for t in names {
        let mut st = db
            .prepare(&format!("SELECT * FROM {t} ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let rows: Vec<Vec<rusqlite::types::Value>> = st
            .query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let marks = vec!["?"; n].join(",");
        for row in rows {
            oracle
                .execute(
                    &format!("INSERT INTO {t} VALUES ({marks})"),
                    rusqlite::params_from_iter(row.iter()),
                )
                .unwrap();
        }
    }
    assert_eq!(content_hash(oracle), content_hash(db));
}

fn try_apply(db: &Database, tx: &Tx) -> Result<(), String> {
    let r = if tx.kind == "vacuum" {
        db.execute_batch("VACUUM")
    } else {
        (|| {
            db.execute_batch("BEGIN")?;
            for (sql, params) in &tx.stmts {
                db.execute(sql, rusqlite::params_from_iter(params.iter()))?;
            }
            db.execute_batch("COMMIT")
        })()
    };
    if r.is_err() {
        let _ = db.execute_batch("ROLLBACK");
    }
    r.map_err(|e| e.to_string())
}

/// Every listed commit restores to its oracle hash (on `store`, after a crash). Commits up to
/// the one the store held at the crash have the seqs of the run without faults; any later one
/// is the recovery's (a hot journal rolled back), holding the recovered state.
fn check_survivor(
    store: SharedStore,
    clock: &TestClock,
    want: &BTreeMap<u64, u64>,
    o: &Outcome,
    at: String,
) {
    // The open itself rolls a hot journal back: read the seq the crash left first.
    let at_crash = match store
        .get("h", &[layout::meta_key(FileKind::Main)])
        .unwrap()
        .pop()
        .flatten()
    {
        Some(v) => layout::Meta::decode(FileKind::Main, &v).unwrap().seq,
        None => 0,
    };
    let db = open_database(store, "h", &opts(clock, 10, 1 << 30)).unwrap();
    let h = content_hash(&db);
    assert!(
        h == o.acked || Some(h) == o.in_flight,
        "{at}: the database holds neither the acknowledged state nor the one in flight"
    );
    let listed = db.history().unwrap();
    for c in &listed {
        let expect = if c.seq <= at_crash { want[&c.seq] } else { h };
        db.restore(&Target::Bookmark(c.bookmark.clone())).unwrap();
        assert_eq!(content_hash(&db), expect, "{at}: restoring seq {}", c.seq);
    }
}

#[test]
fn a_crash_at_every_call_of_commit_compaction_and_restore_keeps_every_bookmark() {
    let clock = TestClock::new(1_000 * HOUR);
    let counter = FaultStore::wrap(Arc::new(MemoryStore::new()), FaultPlan::none());
    let full = run(counter.shared(), &clock, None);
    assert_eq!(full.in_flight, None, "the scenario runs without faults");
    let total = counter.calls();
    assert!(total > 40, "{total}");
    // Intermediate seqs (a VACUUM's write before its truncation) hold the next one's content.
    let mut want = full.hashes.clone();
    let max = *want.keys().last().unwrap();
    for s in 1..=max {
        if !want.contains_key(&s) {
            if let Some((_, &h)) = want.clone().range(s..).next() {
                want.insert(s, h);
            }
        }
    }
    for k in 1..=total {
        for w in [CrashWrite::Apply, CrashWrite::Discard] {
            let clock = TestClock::new(1_000 * HOUR);
            let inner: SharedStore = Arc::new(MemoryStore::new());
            let f = FaultStore::wrap(inner.clone(), FaultPlan::none().crash_at(k, w));
            let o = run(f.shared(), &clock, Some(&want));
            check_survivor(
                inner,
                &clock,
                &want,
                &o,
                format!("crash at call {k} ({w:?})"),
            );
        }
    }
}

#[test]
fn retention_past_the_window_and_the_byte_bound_leave_no_older_history() {
    let clock = TestClock::new(1_000 * HOUR);
    let store = Arc::new(MemoryStore::new());
    let db = open_database(store.clone(), "r", &opts(&clock, 24, 1 << 30)).unwrap();
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)")
        .unwrap();
    let mut hashes = BTreeMap::new();
    for i in 0..40 {
        clock.advance(Duration::from_millis(HOUR));
        db.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [100 + i * 50])
            .unwrap();
        hashes.insert(seq_of(&db), content_hash(&db));
    }
    let r = db.compact_history().unwrap();
    let now = clock.now_ms();
    let cutoff = now - 24 * HOUR;
    // Commits at hours 0 (the table) and 1..=40; the window keeps hours 16..=40.
    assert_eq!(r.records_deleted, 16, "{r:?}");
    let listed = db.history().unwrap();
    assert_eq!(listed.len(), 25);
    assert!(listed.iter().all(|c| c.time_ms >= cutoff));
    let dump = store.dump();
    let mut history_bytes = 0;
    for (_, k, v) in &dump {
        match layout::parse_key(k) {
            Some(ParsedKey::History(s)) | Some(ParsedKey::HistoryPart(s, _)) => {
                let c = listed.iter().find(|c| c.seq == s);
                assert!(c.is_some(), "history key of seq {s}, older than the window");
                history_bytes += k.len() + v.len();
            }
            _ => {}
        }
    }
    assert_eq!(
        history_bytes as u64,
        listed.iter().map(|c| c.bytes).sum::<u64>()
    );
    for c in &listed {
        db.restore(&Target::Seq(c.seq)).unwrap();
        assert_eq!(content_hash(&db), hashes[&c.seq]);
    }
    drop(db);
    // The byte bound: at most 100 KB of redo records (the restores above wrote records of up
    // to 50 KB).
    let db = open_database(store.clone(), "r", &opts(&clock, 24, 100_000)).unwrap();
    let before: u64 = db.history().unwrap().iter().map(|c| c.bytes).sum();
    assert!(before > 100_000);
    let r = db.compact_history().unwrap();
    assert!(r.bytes_kept <= 100_000 && r.records_kept > 0, "{r:?}");
    let listed = db.history().unwrap();
    let kept: u64 = listed.iter().map(|c| c.bytes).sum();
    assert_eq!(kept, r.bytes_kept);
    let oldest = listed[0].seq;
    db.restore(&Target::Seq(oldest)).unwrap();
    assert_eq!(
        content_hash(&db),
        hashes
            .get(&oldest)
            .copied()
            .unwrap_or_else(|| content_hash(&db))
    );
    // History off: compaction deletes every record.
    drop(db);
    let off = OpenOptions {
        history: HistoryOptions::off(),
        ..OpenOptions::default()
    };
    let db = open_database(store.clone(), "r", &off).unwrap();
    db.compact_history().unwrap();
    assert!(store.dump().iter().all(|(_, k, _)| !matches!(
        layout::parse_key(k),
        Some(ParsedKey::History(_) | ParsedKey::HistoryPart(..))
    )));
    assert_eq!(db.history().unwrap(), vec![]);
}

#[test]
fn a_stale_instance_can_neither_restore_compact_nor_fork_and_writes_nothing() {
    let mem = Arc::new(MemoryStore::new());
    let a_store: SharedStore = CountingStore::wrap(mem.clone()).shared();
    let b_store: SharedStore = CountingStore::wrap(mem.clone()).shared();
    let fence = |read, id| FenceSpec {
        key: b"\x01fence".to_vec(),
        read,
        instance: [id; 16],
    };
    let a = open_database(
        a_store,
        "f",
        &OpenOptions {
            fence: Some(fence(None, 1)),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);")
        .unwrap();
    let first = a.history().unwrap()[0].bookmark.clone();
    let read = mem
        .get("f", &[b"\x01fence".to_vec()])
        .unwrap()
        .pop()
        .flatten();
    let b = open_database(
        b_store,
        "f",
        &OpenOptions {
            fence: Some(fence(read, 2)),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    b.execute("INSERT INTO t VALUES (3)", []).unwrap();
    let before = mem.dump();
    let t = Target::Bookmark(first);
    assert!(matches!(a.restore(&t), Err(VfsError::Moved)));
    assert!(matches!(a.compact_history(), Err(VfsError::Moved)));
    assert!(matches!(a.image_at(&t), Err(VfsError::Moved)));
    assert_eq!(mem.dump(), before, "the stale instance wrote nothing");
    // The fence holder restores, and the stale one stays refused.
    b.restore(&t).unwrap();
    let n: i64 = b
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    assert!(a.execute("INSERT INTO t VALUES (9)", []).is_err());
}

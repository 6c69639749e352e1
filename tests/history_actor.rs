//! History through the actor layer: forks at every 10th commit hold the oracle's content and
//! leave the source unchanged; exact round trips of a wake, a restore and a fork; a stale
//! instance can neither restore, compact nor fork; a format-1 store (committed as a fixture)
//! opens, reads right and starts its history at its next commit.

#[path = "common/history.rs"]
mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;

use kvsqlite::actor::{Actor, ActorConfig, ActorError};
use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, KvStore, ListRequest, SharedStore};
use kvsqlite::vfs::history::{parse_bookmark, HistoryOptions, Target};
use kvsqlite::vfs::layout::{self, FileKind, Meta, ParsedKey};
use workload::{apply, content_hash, workload};

fn config() -> ActorConfig {
    let mut c = ActorConfig {
        strict: true,
        ..ActorConfig::default()
    };
    c.open.max_atomic_bytes = 1 << 20;
    c
}

fn seq_of(a: &Actor) -> u64 {
    parse_bookmark(&a.bookmark().unwrap()).unwrap().1
}

#[test]
fn forks_at_every_tenth_commit_hold_the_oracles_content_and_leave_the_source_alone() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = Actor::start(store.clone(), "src", &config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let oracle = rusqlite::Connection::open(dir.path().join("oracle.db")).unwrap();
    let mut hashes = BTreeMap::new();
    for tx in workload(3, 120) {
        apply(a.db(), &tx);
        apply(&oracle, &tx);
        hashes.insert(seq_of(&a), content_hash(&oracle));
    }
    let listed = a.history().unwrap();
    let source_hash = content_hash(a.db());
    let source_bookmark = a.bookmark().unwrap();
    let mut forks = 0;
    for c in listed.iter().filter(|c| c.seq % 10 == 0) {
        let Some(&want) = hashes.get(&c.seq) else {
            continue; // a VACUUM's write before its truncation
        };
        let name = format!("fork-{}", c.seq);
        let r = a
            .fork(
                &Target::Bookmark(c.bookmark.clone()),
                &name,
                &HistoryOptions::default(),
            )
            .unwrap();
        assert_eq!(r.seq_of_source, c.seq);
        let f = Actor::start(store.clone(), &name, &config()).unwrap();
        assert_eq!(content_hash(f.db()), want, "fork at seq {}", c.seq);
        assert_eq!(
            f.startup().kv_round_trips,
            1,
            "a fork wakes in one round trip"
        );
        // Its history starts at the fork, as commit 1.
        let h = f.history().unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].seq, 1);
        f.sleep().unwrap();
        forks += 1;
    }
    assert!(forks >= 10, "{forks}");
    assert_eq!(content_hash(a.db()), source_hash, "the source is unchanged");
    assert_eq!(a.bookmark().unwrap(), source_bookmark);
    assert_eq!(a.history().unwrap(), listed);
}

#[test]
fn exact_round_trips_of_wake_commit_restore_and_fork() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = Actor::start(store.clone(), "rt", &config()).unwrap();
    a.db()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let first = a.bookmark().unwrap();
    let rt = a.kv_round_trips();
    a.db().execute("INSERT INTO t VALUES (2)", []).unwrap();
    assert_eq!(a.kv_round_trips() - rt, 1, "a commit: one put");
    a.sleep().unwrap();
    let a = Actor::start(store.clone(), "rt", &config()).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1, "a wake: one round trip");
    let rt = a.kv_round_trips();
    let out = a.restore(&Target::Bookmark(first.clone())).unwrap();
    assert_eq!(
        a.kv_round_trips() - rt,
        3,
        "a restore: list (and fence), get, put"
    );
    let n: i64 = a
        .db()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let rt = a.kv_round_trips();
    let r = a
        .fork(
            &Target::Bookmark(out.undo),
            "rt-fork",
            &HistoryOptions::default(),
        )
        .unwrap();
    // The image: list (and fence) + get of the changed pages; the new actor: its open's read
    // and one put.
    assert_eq!((r.kv_round_trips, a.kv_round_trips() - rt), (4, 4));
    let f = Actor::start(store.clone(), "rt-fork", &config()).unwrap();
    let n: i64 = f
        .db()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    drop(f);
    // A fork onto an existing actor is refused and writes nothing.
    let before = store.list("rt-fork", &ListRequest::prefix(vec![])).unwrap();
    let e = a.fork(
        &Target::Bookmark(first),
        "rt-fork",
        &HistoryOptions::default(),
    );
    assert!(matches!(e, Err(ActorError::ActorExists(_))), "{e:?}");
    assert_eq!(
        store.list("rt-fork", &ListRequest::prefix(vec![])).unwrap(),
        before
    );
}

#[test]
fn a_stale_actor_instance_can_neither_restore_compact_nor_fork() {
    let mem = Arc::new(MemoryStore::new());
    let a = Actor::start(CountingStore::wrap(mem.clone()).shared(), "st", &config()).unwrap();
    a.db()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let first = a.history().unwrap()[0].bookmark.clone();
    let b = Actor::start(CountingStore::wrap(mem.clone()).shared(), "st", &config()).unwrap();
    b.db().execute("INSERT INTO t VALUES (2)", []).unwrap();
    let before = mem.dump();
    let t = Target::Bookmark(first);
    assert!(a.restore(&t).unwrap_err().is_moved());
    assert!(a.compact_history().unwrap_err().is_moved());
    assert!(a
        .fork(&t, "st-fork", &HistoryOptions::default())
        .unwrap_err()
        .is_moved());
    assert_eq!(mem.dump(), before, "nothing written");
    drop(a);
    b.restore(&t).unwrap();
}

#[test]
fn a_format_1_store_opens_reads_right_and_starts_its_history_at_its_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.redb");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1.redb"),
        &path,
    )
    .unwrap();
    let store: SharedStore = Arc::new(RedbStore::open(&path, KvLimits::default()).unwrap());
    let raw = store
        .get("v1", &[layout::meta_key(FileKind::Main)])
        .unwrap()
        .pop()
        .flatten()
        .unwrap();
    assert_eq!(raw[0], 1, "the fixture is format 1");
    let keys = |s: &SharedStore| s.list("v1", &ListRequest::prefix(vec![0x08])).unwrap();
    let before = keys(&store);
    let a = Actor::start(store.clone(), "v1", &config()).unwrap();
    let read = |a: &Actor| -> (i64, i64, String) {
        a.db()
            .query_row(
                "SELECT count(*), sum(length(blob)), group_concat(body, '|') FROM notes",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap()
    };
    let (n, bytes, bodies) = read(&a);
    assert_eq!((n, bytes), (43, 43010));
    assert!(bodies.starts_with("first, edited|second|third|row 1|row 2|"));
    assert!(bodies.ends_with("|row 40"));
    assert_eq!(
        a.history().unwrap(),
        vec![],
        "no history before its first commit"
    );
    assert_eq!(
        keys(&store),
        before,
        "reading wrote nothing under the VFS prefix"
    );
    // The first commit upgrades the metadata to format 3 (pages it writes may be compressed)
    // and writes a base image of every page.
    a.db()
        .execute("DELETE FROM notes WHERE id > 3", [])
        .unwrap();
    let raw = store
        .get("v1", &[layout::meta_key(FileKind::Main)])
        .unwrap()
        .pop()
        .flatten()
        .unwrap();
    let meta = Meta::decode(FileKind::Main, &raw).unwrap();
    assert_eq!((raw[0], meta.seq, meta.hist_start), (3, 1, 1));
    // The pages that commit wrote are compressed; the others are still the raw values the
    // format-1 build wrote, and both read back (below).
    let chunks: Vec<Vec<u8>> = keys(&store)
        .entries
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                layout::parse_key(k),
                Some(ParsedKey::Chunk(FileKind::Main, _))
            )
        })
        .map(|(_, v)| v)
        .collect();
    assert!(chunks.iter().any(|v| v.len() < 4096) && chunks.iter().any(|v| v.len() == 4096));
    let bases = keys(&store)
        .entries
        .iter()
        .filter(|(k, _)| matches!(layout::parse_key(k), Some(ParsedKey::HistoryBase(_))))
        .count();
    assert_eq!(
        bases, 14,
        "one base image per page of the format-1 database"
    );
    let h = a.history().unwrap();
    assert_eq!(h.len(), 1);
    a.db()
        .execute("INSERT INTO notes(body) VALUES ('new')", [])
        .unwrap();
    a.restore(&Target::Seq(1)).unwrap();
    assert_eq!(read(&a).0, 3);
    let n: i64 = a
        .db()
        .query_row("PRAGMA integrity_check = 1", [], |r| {
            r.get::<_, String>(0).map(|s| (s == "ok") as i64)
        })
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_crash_at_every_kv_call_of_a_fork_leaves_no_fork_or_a_whole_one_and_the_source_alone() {
    use kvsqlite::actor::records;
    use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
    // The source: a few commits, one of them large enough to make the fork's image span
    // several writes under an 8-entry limit.
    let limits = KvLimits {
        max_write_entries: 8,
        ..KvLimits::default()
    };
    let build = || {
        let mem = Arc::new(MemoryStore::with_limits(limits));
        let a = Actor::start(mem.clone(), "src", &config()).unwrap();
        a.db()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        a.db()
            .execute(
                "INSERT INTO t SELECT randomblob(3000) FROM (WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<20) SELECT i FROM c)",
                [],
            )
            .unwrap();
        // The fork's image at an older commit: the pages changed since come from the history.
        let at = a.bookmark().unwrap();
        let want = content_hash(a.db());
        a.db()
            .execute("DELETE FROM t WHERE rowid % 2 = 0", [])
            .unwrap();
        let source = content_hash(a.db());
        a.sleep().unwrap();
        (mem, at, want, source)
    };
    let mut k = 1;
    loop {
        let mut done = false;
        for w in [CrashWrite::Apply, CrashWrite::Discard] {
            let (mem, at, want, source) = build();
            let f = FaultStore::wrap(mem.clone(), FaultPlan::none().crash_at(k, w));
            let r = Actor::start(f.shared(), "src", &config()).and_then(|a| {
                a.fork(
                    &Target::Bookmark(at.clone()),
                    "dst",
                    &HistoryOptions::default(),
                )
            });
            done |= r.is_ok();
            let state = mem
                .get("dst", &[records::state_key()])
                .unwrap()
                .pop()
                .flatten();
            let meta = mem
                .get("dst", &[layout::meta_key(FileKind::Main)])
                .unwrap()
                .pop()
                .flatten();
            // The fork's one commit write carries its state, token, fence and metadata together.
            assert_eq!(state.is_some(), meta.is_some(), "crash at {k} ({w:?})");
            if r.is_ok() {
                assert!(state.is_some(), "an acknowledged fork exists");
            }
            let s: SharedStore = mem.clone();
            let a = Actor::start(s.clone(), "src", &config()).unwrap();
            assert_eq!(content_hash(a.db()), source, "the source is unchanged");
            if state.is_none() {
                // Nothing of the fork is visible, and a retry takes over what a crash left.
                a.fork(
                    &Target::Bookmark(at.clone()),
                    "dst",
                    &HistoryOptions::default(),
                )
                .unwrap_or_else(|e| panic!("crash at {k} ({w:?}): retry: {e}"));
            }
            a.sleep().unwrap();
            let d = Actor::start(s, "dst", &config()).unwrap();
            assert_eq!(content_hash(d.db()), want, "crash at {k} ({w:?})");
            d.sleep().unwrap();
        }
        if done {
            break;
        }
        k += 1;
        assert!(k < 200, "the fork never finished");
    }
    // The wake, the image (list, get, the current pages), the new actor's read, then its
    // staged writes.
    assert!(k > 8, "{k} calls");
}

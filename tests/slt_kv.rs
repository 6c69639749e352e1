//! The kvsqlite target itself: one fresh actor per script, `control restart` reopening from the
//! store with nothing cached, KV round trips reported, keys removed afterwards (or kept).

use std::path::Path;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{ListRequest, SharedStore};
use kvsqlite::slt::{self, KvTarget, RunConfig, Session, Target};

fn memory() -> (Arc<MemoryStore>, SharedStore) {
    let m = Arc::new(MemoryStore::new());
    let s: SharedStore = m.clone();
    (m, s)
}

fn keys_of(store: &SharedStore, actor: &str) -> usize {
    store
        .list(actor, &ListRequest::prefix(Vec::new()))
        .unwrap()
        .entries
        .len()
}

/// A restart reopens from the store: with the actor's keys deleted behind its back, the
/// reopen finds no database at all (nothing of it was cached in the process).
#[test]
fn restart_reads_the_store_again() {
    let (_, store) = memory();
    let mut target = KvTarget::new(store.clone()).keep_data(true);
    let mut session = target.open_session(Path::new("x/restart.test")).unwrap();
    let actor = session.actor().to_string();
    assert!(actor.starts_with(target.actor_prefix()) && actor.ends_with("1-restart"));
    let conn = session.connection().unwrap();
    conn.execute_batch("CREATE TABLE t(a); INSERT INTO t VALUES(42);")
        .unwrap();
    session.restart().unwrap();
    let n: i64 = session
        .connection()
        .unwrap()
        .query_row("SELECT a FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 42);
    // The reopened database made its own KV reads (a fresh VFS state).
    let fresh = session.database().unwrap().snapshot();
    assert!(fresh.kv_reads >= 1, "{fresh:?}");
    assert!(session.kv_round_trips().unwrap() > fresh.kv_round_trips);

    store.delete_range(&actor, b"\0", None).unwrap();
    let err = session.restart().unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    assert!(session.connection().is_err());
    Box::new(session).finish().unwrap();
}

/// Each script gets its own actor; its keys are deleted when it ends unless kept.
#[test]
fn fresh_actor_per_script_and_cleanup() {
    let script = "statement ok\nCREATE TABLE t(a)\n\nstatement ok\nINSERT INTO t VALUES(1)\n\n\
                  control restart\n\nquery I nosort\nSELECT count(*) FROM t\n----\n1\n";
    let (mem, store) = memory();
    let mut target = KvTarget::new(store.clone());
    for name in ["a.test", "b.test"] {
        let r = slt::run_script(&mut target, Path::new(name), script, &RunConfig::default());
        assert_eq!((r.passed, r.failed), (4, 0), "{:?}", r.failures);
        assert!(r.kv_round_trips.unwrap() >= 2, "{r:?}");
        assert!(r.summary_line().contains(" KV round trips)"));
    }
    assert!(mem.dump().is_empty(), "cleaned up: {:?}", mem.dump().len());

    let mut keep = KvTarget::new(store.clone()).keep_data(true);
    let prefix = keep.actor_prefix().to_string();
    let r = slt::run_script(
        &mut keep,
        Path::new("a.test"),
        script,
        &RunConfig::default(),
    );
    assert_eq!(r.failed, 0);
    let r = slt::run_script(
        &mut keep,
        Path::new("b.test"),
        script,
        &RunConfig::default(),
    );
    assert_eq!(r.failed, 0);
    assert!(keys_of(&store, &format!("{prefix}1-a")) > 0);
    assert!(keys_of(&store, &format!("{prefix}2-b")) > 0);
    assert_eq!(keep.name(), "memory");
}

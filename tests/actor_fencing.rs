//! Fencing: two instances of one actor woken from the same stored state — in one process (two
//! store handles) and in two OS processes on PostgreSQL — never both write. The first to commit
//! wins, the other gets "actor moved" with nothing written, and the stored data is the
//! winner's alone; a commit the old instance lands between the new one's wake read and first
//! write is never overwritten.

#[path = "common/fence_child.rs"]
mod fence_child;
#[path = "common/pg.rs"]
mod pg;

use std::sync::Arc;

use kvsqlite::actor::{Actor, ActorConfig, ActorError, Migration};
use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;

fn config() -> ActorConfig {
    ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_t.sql",
        "CREATE TABLE t(who TEXT, n INTEGER);",
    )
    .unwrap()])
}

fn rows(a: &Actor) -> Vec<(String, i64)> {
    let mut stmt = a
        .db()
        .prepare("SELECT who, n FROM t ORDER BY rowid")
        .unwrap();
    let r = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    r
}

/// Two handles on one store: the actor registry allows one instance per handle.
fn two_handles() -> (Arc<MemoryStore>, SharedStore, SharedStore) {
    let mem = Arc::new(MemoryStore::new());
    let a: SharedStore = mem.clone();
    let b: SharedStore = CountingStore::wrap(mem.clone()).shared();
    (mem, a, b)
}

fn insert(a: &Actor, who: &str, n: i64) -> Result<usize, rusqlite::Error> {
    a.db()
        .execute("INSERT INTO t VALUES (?1, ?2)", rusqlite::params![who, n])
}

fn assert_moved(r: Result<usize, rusqlite::Error>) {
    let e = r.expect_err("a stale instance's commit must fail");
    assert!(
        kvsqlite::actor::is_moved_error(&e),
        "not actor moved: {e:?}"
    );
    assert!(ActorError::from(e).is_moved());
}

#[test]
fn a_second_start_on_the_same_handle_is_refused() {
    let (_m, a, _b) = two_handles();
    let first = Actor::start(a.clone(), "solo", &config()).unwrap();
    match Actor::start(a.clone(), "solo", &config()) {
        Err(ActorError::AlreadyRunning { actor }) => assert_eq!(actor, "solo"),
        other => panic!("expected AlreadyRunning, got {other:?}"),
    }
    first.sleep().unwrap();
    Actor::start(a, "solo", &config()).unwrap().sleep().unwrap();
}

/// With `first_is_old`, the old instance lands its commit between the new instance's wake read
/// and its first write: the new instance must be refused (its first write is conditioned on the
/// fence record its wake read, which that commit moved), and the old commit survives.
#[test]
fn first_to_commit_wins_and_the_other_is_moved_with_nothing_written() {
    for first_is_old in [true, false] {
        let (mem, ha, hb) = two_handles();
        let setup = Actor::start(ha.clone(), "f", &config()).unwrap();
        insert(&setup, "setup", 0).unwrap();
        setup.sleep().unwrap();
        // Both wake from the same stored state.
        let old = Actor::start(ha.clone(), "f", &config()).unwrap();
        let new = Actor::start(hb.clone(), "f", &config()).unwrap();
        let (winner, loser) = if first_is_old {
            (&old, &new)
        } else {
            (&new, &old)
        };
        insert(winner, "winner", 1).unwrap();
        let snapshot = mem.dump();
        assert_moved(insert(loser, "loser", 2));
        assert_eq!(mem.dump(), snapshot, "a moved instance changed the store");
        assert!(loser.db().moved());
        // Every later write of the loser fails the same way, still writing nothing.
        assert_moved(insert(loser, "loser", 3));
        assert_eq!(mem.dump(), snapshot);
        insert(winner, "winner", 4).unwrap();
        drop(old);
        drop(new);
        let check = Actor::start(ha.clone(), "f", &config()).unwrap();
        assert_eq!(
            rows(&check),
            vec![
                ("setup".into(), 0),
                ("winner".into(), 1),
                ("winner".into(), 4)
            ]
        );
        check.sleep().unwrap();
    }
}

/// Child mode of the two-process test: `KVSQLITE_FENCE_CHILD=<actor>`. Wakes the actor on the
/// PostgreSQL test server, prints `woke`, then for each stdin line `commit WHO` inserts a row and
/// prints `ok` or `moved`; stdin closed ends it.
#[test]
#[ignore = "the child process of two_processes_on_postgres_first_commit_wins, started by it"]
fn fence_child() {
    let Ok(actor) = std::env::var(fence_child::ACTOR_VAR) else {
        return;
    };
    let store: SharedStore = Arc::new(
        kvsqlite::kv::postgres::PostgresStore::connect_with(&pg::test_url(), Default::default())
            .expect("the parent reached the server"),
    );
    let a = Actor::start(store, &actor, &config()).unwrap();
    fence_child::serve_commits(|who| insert(&a, who, 1));
}

#[test]
fn two_processes_on_postgres_first_commit_wins() {
    let Some(t) = pg::test_store() else {
        return;
    };
    let actor = t.actor("fence");
    let store: SharedStore = t.store.clone();
    let setup = Actor::start(store.clone(), &actor, &config()).unwrap();
    insert(&setup, "setup", 0).unwrap();
    setup.sleep().unwrap();
    let mut c1 = fence_child::spawn(&actor, &[]);
    let mut c2 = fence_child::spawn(&actor, &[]);
    assert_eq!(c1.next_line(), "woke");
    assert_eq!(c2.next_line(), "woke");
    assert_eq!(c2.commit("second-process"), "ok");
    assert_eq!(c1.commit("first-process"), "moved");
    c1.finish();
    c2.finish();
    let check = Actor::start(store, &actor, &config()).unwrap();
    assert_eq!(
        rows(&check),
        vec![("setup".into(), 0), ("second-process".into(), 1)]
    );
    check.sleep().unwrap();
}

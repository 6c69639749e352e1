//! The actor shim's round-trip promises, counted at the KV call by a `CountingStore` under
//! the actor: an existing actor wakes in exactly one round trip, a new one (three migrations,
//! an index and a 200-row insert included) costs one read and one write, queries on preloaded
//! pages cost none, and the hinted pages fetched after a wake cost none either.

use std::sync::Arc;

use kvsqlite::actor::{Actor, ActorConfig, Migration};
use kvsqlite::kv::counting::{CountingStore, OpKind};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;

fn migrations() -> Vec<Migration> {
    vec![
        Migration::new(
            "0001_init.sql",
            "CREATE TABLE notes(id INTEGER PRIMARY KEY, room TEXT NOT NULL, body TEXT NOT NULL);",
        )
        .unwrap(),
        Migration::new("0002_index.sql", "CREATE INDEX notes_room ON notes(room);").unwrap(),
        Migration::new(
            "0003_seed.sql",
            "INSERT INTO notes(room, body) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200) SELECT 'room' || (i % 7), printf('note %04d', i) FROM s;",
        )
        .unwrap(),
    ]
}

fn config() -> ActorConfig {
    let mut c = ActorConfig::default().with_migrations(migrations());
    c.strict = true;
    c
}

fn counted() -> (Arc<MemoryStore>, Arc<CountingStore>, SharedStore) {
    let mem = Arc::new(MemoryStore::new());
    let counting = CountingStore::wrap(mem.clone());
    let shared = counting.shared();
    (mem, counting, shared)
}

fn count(a: &Actor, sql: &str) -> i64 {
    a.db().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_new_actor_costs_one_read_and_one_write_and_a_wake_one_read() {
    let (_mem, counting, store) = counted();
    let before = counting.snapshot();
    let a = Actor::start(store.clone(), "chat-1", &config()).unwrap();
    let d = counting.snapshot().delta(&before);
    assert_eq!(
        (d.round_trips(), d.op(OpKind::BatchRead).calls, d.op(OpKind::Write).calls),
        (2, 1, 1),
        "{d:?}"
    );
    assert!(a.startup().is_new);
    assert_eq!(a.startup().kv_round_trips, 2);
    assert_eq!(count(&a, "SELECT count(*) FROM notes"), 200);
    a.sleep().unwrap();

    let before = counting.snapshot();
    let a = Actor::start(store.clone(), "chat-1", &config()).unwrap();
    let d = counting.snapshot().delta(&before);
    assert_eq!((d.round_trips(), d.op(OpKind::BatchRead).calls), (1, 1), "{d:?}");
    assert!(!a.startup().is_new);
    assert_eq!(a.startup().kv_round_trips, 1);
    let before = counting.snapshot();
    assert_eq!(count(&a, "SELECT count(*) FROM notes WHERE room = 'room3'"), 29);
    assert_eq!(counting.snapshot().delta(&before).round_trips(), 0);
    // A write transaction: one put.
    let before = counting.snapshot();
    a.db()
        .execute("INSERT INTO notes(room, body) VALUES ('room1', 'hi')", [])
        .unwrap();
    assert_eq!(counting.snapshot().delta(&before).round_trips(), 1);
    a.sleep().unwrap();
}

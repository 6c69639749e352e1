//! The actor shim's round-trip promises, counted at the KV call by a `CountingStore` under
//! the actor: an existing actor wakes in exactly one round trip, a new one (three migrations,
//! an index and a 200-row insert included) costs one read and one write, queries on preloaded
//! pages cost none, and the hinted pages fetched after a wake cost none either.

#[path = "common/actors.rs"]
mod actors;
use actors::counted;

use kvsqlite::actor::{Actor, ActorConfig, Migration};
use kvsqlite::kv::counting::OpKind;

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
        (
            d.round_trips(),
            d.op(OpKind::BatchRead).calls,
            d.op(OpKind::Write).calls
        ),
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
    assert_eq!(
        (d.round_trips(), d.op(OpKind::BatchRead).calls),
        (1, 1),
        "{d:?}"
    );
    assert!(!a.startup().is_new);
    assert_eq!(a.startup().kv_round_trips, 1);
    let before = counting.snapshot();
    assert_eq!(
        count(&a, "SELECT count(*) FROM notes WHERE room = 'room3'"),
        29
    );
    assert_eq!(counting.snapshot().delta(&before).round_trips(), 0);
    // A write transaction: one put.
    let before = counting.snapshot();
    a.db()
        .execute("INSERT INTO notes(room, body) VALUES ('room1', 'hi')", [])
        .unwrap();
    assert_eq!(counting.snapshot().delta(&before).round_trips(), 1);
    a.sleep().unwrap();
}

fn fill_blobs(a: &Actor, rows: i64) {
    a.db()
        .execute_batch("CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, b BLOB)")
        .unwrap();
    a.db()
        .execute(
            "INSERT INTO blobs(b) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?1) SELECT randomblob(3000) FROM s",
            [rows],
        )
        .unwrap();
}

#[test]
fn a_database_four_times_the_budget_still_wakes_in_one_round_trip_and_hinted_pages_cost_none() {
    let (_mem, counting, store) = counted();
    let mut c = config();
    c.preload_budget = 64 << 10;
    let a = Actor::start(store.clone(), "big", &c).unwrap();
    fill_blobs(&a, 100); // ~300 KiB: more than 4 x 64 KiB
    let pages: i64 = count(&a, "PRAGMA page_count");
    assert!(pages * 4096 > 4 * (64 << 10), "{pages} pages");
    a.sleep().unwrap();
    // Wake, read the last rows (pages past the budget), sleep: they become hints.
    let a = Actor::start(store.clone(), "big", &c).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1);
    let tail = count(&a, "SELECT sum(length(b)) FROM blobs WHERE id > 90");
    assert_eq!(tail, 10 * 3000);
    a.sleep().unwrap();

    let before = counting.snapshot();
    let mut a = Actor::start(store.clone(), "big", &c).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1);
    assert!(a.wait_prefetch() >= 10, "hinted pages fetched");
    // The wake's one read and the background fetch's one get.
    assert_eq!(counting.snapshot().delta(&before).round_trips(), 2);
    let m = a.metrics();
    assert_eq!(
        m.to_json()["startup_prefetch_round_trips"]["value"],
        serde_json::json!(1)
    );
    let before = counting.snapshot();
    assert_eq!(
        count(&a, "SELECT sum(length(b)) FROM blobs WHERE id > 90"),
        tail
    );
    assert_eq!(counting.snapshot().delta(&before).round_trips(), 0);
    a.sleep().unwrap();
}

#[test]
fn a_creation_over_one_puts_limits_is_staged_and_startup_pages_under_stage_keys_are_copied_at_sleep(
) {
    let (_mem, counting, store) = counted();
    let mut list = migrations();
    list.push(
        Migration::new(
            "0004_big.sql",
            "CREATE TABLE big(b BLOB); INSERT INTO big WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300) SELECT randomblob(3500) FROM s;",
        )
        .unwrap(),
    );
    let mut c = ActorConfig::default().with_migrations(list);
    c.strict = true;
    let before = counting.snapshot();
    let a = Actor::start(store.clone(), "staged", &c).unwrap();
    let d = counting.snapshot().delta(&before);
    // One read, then ceil(pages / 127) writes at most: the report tells the true count.
    let pages = count(&a, "PRAGMA page_count") as u64;
    assert_eq!(d.op(OpKind::BatchRead).calls, 1);
    assert_eq!(d.round_trips(), a.startup().kv_round_trips);
    assert!(d.op(OpKind::Write).calls >= 3 && d.op(OpKind::Write).calls <= pages.div_ceil(127) + 1);
    assert_eq!(count(&a, "SELECT count(*) FROM big"), 300);
    a.sleep().unwrap();
    let copies = _mem
        .dump()
        .into_iter()
        .filter(|(_, k, _)| k.starts_with(b"\x01sp"))
        .count();
    assert_eq!(copies, 2, "pages 1 and 2 live under stage keys: copied");
    let a = Actor::start(store.clone(), "staged", &c).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1);
    assert_eq!(count(&a, "SELECT count(*) FROM notes"), 200);
    // A small commit puts page 1 under its chunk key, inside the listing: its copy is no longer
    // needed and the sleep deletes it in its one write; the migrations table's page still lives
    // under the stage key, so its copy stays.
    a.db()
        .execute("INSERT INTO notes(room, body) VALUES ('x', 'y')", [])
        .unwrap();
    a.sleep().unwrap();
    let left: Vec<Vec<u8>> = _mem
        .dump()
        .into_iter()
        .filter(|(_, k, _)| k.starts_with(b"\x01sp"))
        .map(|(_, k, _)| k)
        .collect();
    assert_eq!(left, vec![b"\x01sp\x00\x00\x00\x01".to_vec()]);
    let a = Actor::start(store.clone(), "staged", &c).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1);
    a.sleep().unwrap();
}

#[test]
fn waking_again_and_again_grows_nothing_in_the_vfs_registry() {
    let (_mem, _counting, store) = counted();
    let c = config();
    Actor::start(store.clone(), "again", &c)
        .unwrap()
        .sleep()
        .unwrap();
    // Each wake registers its own counting wrapper; dropped ones are pruned.
    for _ in 0..500 {
        let a = Actor::start(store.clone(), "again", &c).unwrap();
        assert_eq!(a.startup().kv_round_trips, 1);
        a.sleep().unwrap();
    }
    // Other tests of this binary run at once and hold a few live handles each.
    let n = kvsqlite::vfs::registered_stores();
    assert!(n <= 200, "{n} store handles registered after 500 wakes");
}

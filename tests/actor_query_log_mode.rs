//! `ActorConfig::query_log` through an actor: `Full` keeps every statement, `Sampled(n)` one
//! in `n` (records and counters alike), `Off` nothing, and the statements run the same in each.

use std::sync::Arc;

use kvsqlite::actor::{Actor, ActorConfig, Migration, QueryLogMode};
use kvsqlite::kv::memory::MemoryStore;

/// Starts an actor in `mode`, runs 12 point `SELECT`s, and returns the SQL of its records
/// and its `sql_statements` counter.
fn run(mode: QueryLogMode) -> (Vec<String>, u64) {
    let mut config = ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_t.sql",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    )
    .unwrap()]);
    config.query_log = mode;
    let actor = Actor::start(Arc::new(MemoryStore::new()), "a", &config).unwrap();
    let before = actor.query_log().records().len();
    let before_n = actor.query_log().totals().sql_statements;
    for i in 0..12 {
        let v: String = actor
            .db()
            .query_row(
                &format!("SELECT v FROM t WHERE id = {}", 1 + i % 2),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(v, if i % 2 == 0 { "a" } else { "b" });
    }
    let records = actor.query_log().records()[before..]
        .iter()
        .map(|r| r.sql.clone())
        .collect();
    let n = actor.query_log().totals().sql_statements - before_n;
    let doc = actor.metrics().to_json();
    assert_eq!(
        doc["sql_statements"]["value"].as_u64(),
        Some(actor.query_log().totals().sql_statements)
    );
    actor.sleep().unwrap();
    (records, n)
}

#[test]
fn full_keeps_every_statement_sampled_one_in_n_off_none() {
    let sql = |i: u32| format!("SELECT v FROM t WHERE id = {}", 1 + i % 2);
    let (full, n) = run(QueryLogMode::Full);
    assert_eq!(full, (0..12).map(sql).collect::<Vec<_>>());
    assert_eq!(n, 12);
    // The migrations' statements ran before: which 12 starts are sampled depends on how many
    // there were, but exactly one in three of any 12 consecutive starts is.
    let (sampled, n) = run(QueryLogMode::Sampled(3));
    assert_eq!((sampled.len(), n), (4, 4), "{sampled:?}");
    assert!(sampled.iter().all(|s| full.contains(s)), "{sampled:?}");
    let (off, n) = run(QueryLogMode::Off);
    assert_eq!((off, n), (Vec::<String>::new(), 0));
}

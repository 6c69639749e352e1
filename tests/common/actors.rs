//! The small actor fixtures several suites share: a two-migration schema (a table and 200 seeded
//! rows), a strict config over a migration list, and a memory store behind a counting wrapper.
#![allow(dead_code)]

use std::sync::Arc;

use kvsqlite::actor::{ActorConfig, Migration};
use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;

/// A migration from its file name and SQL (valid by construction in these tests).
pub fn m(name: &str, sql: &str) -> Migration {
    Migration::new(name, sql).unwrap()
}

/// `0001_t.sql` (table `t(id, v)`) and `0002_seed.sql` (200 rows `v001`…`v200`).
pub fn base() -> Vec<Migration> {
    vec![
        m("0001_t.sql", "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"),
        m(
            "0002_seed.sql",
            "INSERT INTO t(v) WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200) SELECT printf('v%03d', i) FROM s;",
        ),
    ]
}

/// A strict-mode config (a round trip where the preload should serve is an error) that runs
/// `list`.
pub fn cfg(list: Vec<Migration>) -> ActorConfig {
    let mut c = ActorConfig::default().with_migrations(list);
    c.strict = true;
    c
}

/// A memory store, the counting wrapper over it, and the wrapper as a shared store.
pub fn counted() -> (Arc<MemoryStore>, Arc<CountingStore>, SharedStore) {
    let mem = Arc::new(MemoryStore::new());
    let counting = CountingStore::wrap(mem.clone());
    let shared = counting.shared();
    (mem, counting, shared)
}

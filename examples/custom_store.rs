//! Bring your own store: a small, complete `KvStore` written only against kvsqlite's public API
//! (one `BTreeMap` of `(actor, key)` behind a `Mutex`), checked by the KV conformance suite of
//! the `testkit` feature, then used as the store of an actor's SQLite database.
//!
//! ```sh
//! cargo run --example custom_store --features testkit
//! ```
//!
//! `cargo test` runs it too (`tests/testkit_example.rs` includes this file).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use kvsqlite::kv::{
    check_actor_id, check_batch_read, key_after, range_is_empty, Key, KvError, KvLimits, KvStore,
    ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value, WriteBatch,
};

/// Every actor's entries in one sorted map keyed by `(actor, key)`.
#[derive(Default)]
pub struct BTreeStore {
    limits: KvLimits,
    map: Mutex<BTreeMap<(String, Key), Value>>,
}

impl BTreeStore {
    /// The map, even after a panic in another thread poisoned the lock (each call is applied
    /// whole or not at all, so the map is never half-written).
    fn map(&self) -> MutexGuard<'_, BTreeMap<(String, Key), Value>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One page of `req` over `actor`'s entries, honouring the limit and the byte budget.
fn list_in(
    map: &BTreeMap<(String, Key), Value>,
    actor: &str,
    limit: usize,
    req: &ListRequest,
) -> ListPage {
    let (start, end) = req.range.bounds();
    let mut page = ListPage::default();
    if range_is_empty(&start, end.as_deref()) {
        return page;
    }
    let lower = Bound::Included((actor.to_string(), start));
    let upper = match end {
        Some(end) => Bound::Excluded((actor.to_string(), end)),
        // Every key of this actor sorts below the next actor id.
        None => Bound::Excluded((format!("{actor}\0"), Vec::new())),
    };
    let mut bytes = 0usize;
    for ((_, k), v) in map.range((lower, upper)) {
        let over_budget = !page.entries.is_empty() && req.max_bytes.is_some_and(|m| bytes >= m);
        if page.entries.len() == limit || over_budget {
            page.next_start = page.entries.last().map(|(k, _)| key_after(k));
            break;
        }
        bytes += k.len() + v.len();
        page.entries.push((k.clone(), v.clone()));
    }
    page
}

impl KvStore for BTreeStore {
    fn backend(&self) -> &'static str {
        "btree-example"
    }

    fn limits(&self) -> &KvLimits {
        &self.limits
    }

    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        check_actor_id(actor)?;
        self.limits.check_get(keys)?;
        let map = self.map();
        Ok(keys
            .iter()
            .map(|k| map.get(&(actor.to_string(), k.clone())).cloned())
            .collect())
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        check_actor_id(actor)?;
        let limit = self.limits.list_limit(req.limit)?;
        Ok(list_in(&self.map(), actor, limit, req))
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        check_actor_id(actor)?;
        self.limits.check_write(batch)?;
        batch.check_distinct()?;
        let mut map = self.map();
        for p in &batch.preconditions {
            if map.get(&(actor.to_string(), p.key.clone())) != p.expected.as_ref() {
                return Err(KvError::Conflict { key: p.key.clone() });
            }
        }
        for k in &batch.deletes {
            map.remove(&(actor.to_string(), k.clone()));
        }
        for (k, v) in &batch.puts {
            map.insert((actor.to_string(), k.clone()), v.clone());
        }
        Ok(())
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        check_actor_id(actor)?;
        if range_is_empty(start, end) {
            return Ok(());
        }
        let mut map = self.map();
        let req = ListRequest::range(start.to_vec(), end.map(<[u8]>::to_vec));
        let doomed = list_in(&map, actor, usize::MAX, &req);
        for (k, _) in doomed.entries {
            map.remove(&(actor.to_string(), k));
        }
        Ok(())
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        check_actor_id(actor)?;
        check_batch_read(&self.limits, ops)?;
        let map = self.map();
        ops.iter()
            .map(|op| match op {
                ReadOp::Get(keys) => Ok(ReadResult::Get(
                    keys.iter()
                        .map(|k| map.get(&(actor.to_string(), k.clone())).cloned())
                        .collect(),
                )),
                ReadOp::List(req) => {
                    let limit = self.limits.list_limit(req.limit)?;
                    Ok(ReadResult::List(list_in(&map, actor, limit, req)))
                }
            })
            .collect()
    }
}

/// Runs the whole conformance suite on fresh `BTreeStore`s, then an actor database on one.
pub fn check() -> Result<(), Box<dyn std::error::Error>> {
    let checks = kvsqlite::testkit::run_conformance("btree", || {
        Arc::new(BTreeStore::default()) as SharedStore
    });
    let store: SharedStore = Arc::new(BTreeStore::default());
    let db = kvsqlite::vfs::open_database(store, "actor-1", &Default::default())?;
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")?;
    let n: i64 = db.query_row("SELECT sum(x) FROM t", [], |r| r.get(0))?;
    assert_eq!(n, 3);
    println!("BTreeStore passed all {checks} conformance checks and holds a SQLite database");
    Ok(())
}

#[allow(dead_code)] // the test that includes this file calls `check` instead
fn main() -> Result<(), Box<dyn std::error::Error>> {
    check()
}

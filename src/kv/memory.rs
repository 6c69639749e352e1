//! The `memory` backend: every actor's namespace in a sorted map behind one lock.
//!
//! For tests and benchmarks. Nothing persists past the process. Each call takes the lock once,
//! so it is atomic the same way a round trip to a real store is.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use parking_lot::RwLock;

use super::{
    check_actor_id, check_batch_read, key_after, range_is_empty, KvError, KvLimits, KvStore,
    ListPage, ListRequest, ReadOp, ReadResult, Value, WriteBatch,
};

type Namespace = BTreeMap<Vec<u8>, Value>;

/// An in-process store. Cheap to create; share it with `Arc`.
#[derive(Default)]
pub struct MemoryStore {
    limits: KvLimits,
    actors: RwLock<HashMap<String, Namespace>>,
}

impl MemoryStore {
    /// An empty store with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: KvLimits) -> Self {
        MemoryStore {
            limits,
            actors: RwLock::default(),
        }
    }

    /// Every entry of every actor, sorted: a snapshot for tests that compare whole stores.
    pub fn dump(&self) -> Vec<(String, Vec<u8>, Value)> {
        let actors = self.actors.read();
        let mut out: Vec<_> = actors
            .iter()
            .flat_map(|(a, ns)| {
                ns.iter()
                    .map(move |(k, v)| (a.clone(), k.clone(), v.clone()))
            })
            .collect();
        out.sort();
        out
    }
}

/// Lists `req` over one sorted namespace, honouring the limit and byte budget.
pub(crate) fn list_map(ns: Option<&Namespace>, limit: usize, req: &ListRequest) -> ListPage {
    let (start, end) = req.range.bounds();
    let mut page = ListPage::default();
    let Some(ns) = ns else { return page };
    if range_is_empty(&start, end.as_deref()) {
        return page;
    }
    let upper = match &end {
        Some(e) => Bound::Excluded(e.as_slice()),
        None => Bound::Unbounded,
    };
    let mut bytes = 0usize;
    for (k, v) in ns.range::<[u8], _>((Bound::Included(start.as_slice()), upper)) {
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

impl KvStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn limits(&self) -> &KvLimits {
        &self.limits
    }

    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        check_actor_id(actor)?;
        self.limits.check_get(keys)?;
        let actors = self.actors.read();
        let ns = actors.get(actor);
        Ok(keys
            .iter()
            .map(|k| ns.and_then(|ns| ns.get(k).cloned()))
            .collect())
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        check_actor_id(actor)?;
        let limit = self.limits.list_limit(req.limit)?;
        let actors = self.actors.read();
        Ok(list_map(actors.get(actor), limit, req))
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        check_actor_id(actor)?;
        self.limits.check_write(batch)?;
        batch.check_distinct()?;
        let mut actors = self.actors.write();
        let current = actors.get(actor);
        for p in &batch.preconditions {
            let have = current.and_then(|ns| ns.get(&p.key));
            if have != p.expected.as_ref() {
                return Err(KvError::Conflict { key: p.key.clone() });
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let ns = actors.entry(actor.to_string()).or_default();
        for k in &batch.deletes {
            ns.remove(k);
        }
        for (k, v) in &batch.puts {
            ns.insert(k.clone(), v.clone());
        }
        if ns.is_empty() {
            actors.remove(actor);
        }
        Ok(())
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        check_actor_id(actor)?;
        if range_is_empty(start, end) {
            return Ok(());
        }
        let mut actors = self.actors.write();
        if let Some(ns) = actors.get_mut(actor) {
            let doomed: Vec<Vec<u8>> = ns
                .range::<[u8], _>((
                    Bound::Included(start),
                    end.map_or(Bound::Unbounded, Bound::Excluded),
                ))
                .map(|(k, _)| k.clone())
                .collect();
            for k in doomed {
                ns.remove(&k);
            }
            if ns.is_empty() {
                actors.remove(actor);
            }
        }
        Ok(())
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        check_actor_id(actor)?;
        check_batch_read(&self.limits, ops)?;
        let actors = self.actors.read();
        let ns = actors.get(actor);
        ops.iter()
            .map(|op| match op {
                ReadOp::Get(keys) => Ok(ReadResult::Get(
                    keys.iter()
                        .map(|k| ns.and_then(|ns| ns.get(k).cloned()))
                        .collect(),
                )),
                ReadOp::List(req) => {
                    let limit = self.limits.list_limit(req.limit)?;
                    Ok(ReadResult::List(list_map(ns, limit, req)))
                }
            })
            .collect()
    }
}

//! Hold mode: the writes of a database being created, kept in memory until the actor layer
//! flushes them in one put.
//!
//! Why it exists: a new actor must cost one read and one write round trip in all, yet its
//! migrations run as ordinary SQLite transactions (each its own, so a failing one leaves the
//! others as they were). While a database is held, every KV write the VFS would send (commits,
//! journal writes, deletes) is applied here instead, and reads of those keys are answered from
//! here; nothing reaches the store. A crash before the flush means the actor was never created.
//! Hold mode is only for a database whose main file and journal do not exist in the store, so
//! what is held is the whole truth about its live keys.

use std::collections::BTreeMap;

use crate::kv::{Key, Value, WriteBatch};

/// The held writes: the latest value of every key written since hold began (deleted keys are
/// simply gone, since none of them exists in the store).
#[derive(Debug, Default)]
pub(super) struct Held {
    map: BTreeMap<Key, Value>,
}

impl Held {
    /// Applies one write (its preconditions are the flush's business).
    pub fn apply(&mut self, batch: &WriteBatch) {
        for k in &batch.deletes {
            self.map.remove(k);
        }
        for (k, v) in &batch.puts {
            self.map.insert(k.clone(), v.clone());
        }
    }

    /// The held value of `key` (`None`: never written, or deleted).
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        self.map.get(key)
    }
}

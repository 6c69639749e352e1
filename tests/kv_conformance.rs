//! The KV conformance suite against the embedded backends (`memory`, `redb`), plus tests of
//! per-store limits. PostgreSQL plugs into the same suite from its own test file.

#[path = "common/conformance.rs"]
mod conformance;

use std::sync::Arc;

use conformance::Fixture;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvLimits, SharedStore};

fn memory_fixture() -> Option<Fixture> {
    Some(Fixture::new(
        Arc::new(MemoryStore::new()) as SharedStore,
        "memory",
    ))
}

kv_conformance_tests!(memory, memory_fixture);

fn small_limits() -> KvLimits {
    KvLimits {
        max_key_bytes: 16,
        max_value_bytes: 100,
        max_write_entries: 60,
        max_write_bytes: 10_000,
        default_list_limit: 50,
        max_get_keys: 70,
    }
}

#[test]
fn memory_custom_limits_enforced() {
    let store = MemoryStore::with_limits(small_limits());
    conformance::custom_limits_enforced(&store, "actor", small_limits());
}

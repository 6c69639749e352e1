//! The shared KV conformance suite on the Redis backend: on a real Redis Cluster of 3 masters
//! and 3 replicas (`redis-cluster://`) and on one plain server (`redis://`), both started by
//! `common/redis_cluster.rs`. What the servers themselves see is in `kv_redis_server.rs`.

#[path = "common/conformance.rs"]
mod conformance;

#[path = "common/redis_cluster.rs"]
mod cluster_helper;
use cluster_helper as rc;

use std::sync::Arc;

use conformance::Fixture;
use kvsqlite::kv::redis::RedisStore;
use kvsqlite::kv::SharedStore;

/// A fresh store on `url` for one conformance test (actor ids unique to the test).
fn fixture_at(url: Option<String>, backend: &str) -> Result<Fixture, String> {
    let url = url.ok_or("redis-server is not installed")?;
    let store = RedisStore::connect(&url).map_err(|e| e.to_string())?;
    Ok(
        Fixture::new(Arc::new(store) as SharedStore, backend).with_reopen(move || {
            Arc::new(RedisStore::connect(&url).expect("reopen the redis store")) as SharedStore
        }),
    )
}

/// The conformance suite on the shared cluster.
fn redis_cluster_fixture() -> Result<Fixture, String> {
    fixture_at(rc::shared().map(|c| c.url("")), "redis-cluster")
}

kv_conformance_tests!(redis_cluster, redis_cluster_fixture);

/// The same suite on one plain Redis server through a `redis://` URL.
fn redis_single_fixture() -> Result<Fixture, String> {
    fixture_at(rc::shared_single().map(|s| s.url("")), "redis-single")
}

kv_conformance_tests!(redis_single, redis_single_fixture);

#[test]
fn redis_cluster_custom_limits_are_enforced() {
    let Some(c) = rc::shared() else { return };
    let limits = kvsqlite::kv::KvLimits {
        max_key_bytes: 16,
        max_value_bytes: 64,
        max_write_entries: 4,
        max_write_bytes: 1024,
        default_list_limit: 3,
        max_get_keys: 8,
    };
    let store = RedisStore::connect_with_limits(&c.url(""), limits).unwrap();
    let actor = conformance::unique_prefix("redis-limits");
    conformance::custom_limits_enforced(&store, &actor, limits);
}

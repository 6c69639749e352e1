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

/// The conformance suite on the shared cluster: a fresh store per test, actor ids unique to it.
fn redis_cluster_fixture() -> Result<Fixture, String> {
    let Some(cluster) = rc::shared() else {
        return Err("redis-server is not installed".into());
    };
    let url = cluster.url("");
    let store = RedisStore::connect(&url).map_err(|e| e.to_string())?;
    Ok(
        Fixture::new(Arc::new(store) as SharedStore, "redis-cluster").with_reopen(move || {
            Arc::new(RedisStore::connect(&url).expect("reopen the redis store")) as SharedStore
        }),
    )
}

kv_conformance_tests!(redis_cluster, redis_cluster_fixture);

/// The same suite on one plain Redis server through a `redis://` URL.
fn redis_single_fixture() -> Result<Fixture, String> {
    let Some(server) = rc::shared_single() else {
        return Err("redis-server is not installed".into());
    };
    let url = server.url("");
    let store = RedisStore::connect(&url).map_err(|e| e.to_string())?;
    Ok(
        Fixture::new(Arc::new(store) as SharedStore, "redis-single").with_reopen(move || {
            Arc::new(RedisStore::connect(&url).expect("reopen the redis store")) as SharedStore
        }),
    )
}

kv_conformance_tests!(redis_single, redis_single_fixture);

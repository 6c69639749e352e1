//! The delay proxy in front of the real PostgreSQL test server (see `common/pg.rs` for the URL,
//! the skip rule and cleanup): bytes pass intact, and round trips counted on the wire (the
//! proxy's turns) are exact: a 128-entry put is 1, a mixed read batch is 1, the same keys one
//! call per key are 128. Then `kvsqlite bench pg-batch --json`. No test asserts a time.
//!
//! Why one turn and not more: the backend sends every call with `query_typed`, which writes
//! Parse, Bind, Describe, Execute and Sync for an unnamed statement in one buffer and only then
//! reads the answers (ParseComplete, BindComplete, RowDescription, the rows, ReadyForQuery). The
//! extended protocol is pipelined in one flight: the client never waits between its messages,
//! so the proxy sees one client→server transmission per call. (A named prepared statement
//! would cost a separate Parse/Describe/Sync turn first, and a Close later.)

#[path = "common/pg.rs"]
mod pg;

#[path = "common/cli.rs"]
mod cli;

use std::net::ToSocketAddrs;
use std::time::Duration;

use kvsqlite::bench::delay_proxy::DelayProxy;
use kvsqlite::bench::pg_batch::proxied_url;
use kvsqlite::kv::postgres::{PostgresOptions, PostgresStore};
use kvsqlite::kv::{KvStore, ListRequest, ReadOp, ReadResult, WriteBatch};

/// A store on the test server reached through a proxy adding `delay` per direction, with the
/// cleanup of its actors, or `None` after the skip message (outside CI).
fn through_proxy(delay: Duration) -> Option<(DelayProxy, PostgresStore, pg::PgTest)> {
    // Reach the server directly first: this applies the skip rule (and fails under CI=true).
    let direct = pg::test_store_with(PostgresOptions::default())?;
    let url = pg::test_url();
    let (upstream, _) = proxied_url(&url, "127.0.0.1:1".parse().unwrap()).unwrap();
    let target = upstream.to_socket_addrs().unwrap().next().unwrap();
    let proxy = DelayProxy::start(target, delay).unwrap();
    let (_, via) = proxied_url(&url, proxy.addr()).unwrap();
    let store = PostgresStore::connect(&via).unwrap();
    Some((proxy, store, direct))
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:04}").into_bytes()
}

#[test]
fn the_proxy_forwards_postgres_traffic_intact() {
    let Some((proxy, store, t)) = through_proxy(Duration::from_millis(1)) else {
        return;
    };
    let a = t.actor("intact");
    // Every byte value in keys and values, and the largest value a write accepts (128 KiB,
    // more than one read of the proxy's 64 KiB buffer).
    let all: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..128 * 1024u32)
        .map(|i| (i * 13 + i / 256) as u8)
        .collect();
    let entries = vec![
        (all.clone(), all.iter().rev().copied().collect::<Vec<u8>>()),
        (b"big".to_vec(), big.clone()),
        (vec![0u8], Vec::new()),
    ];
    store.put(&a, entries.clone()).unwrap();
    let got = store
        .get(&a, &[all.clone(), b"big".to_vec(), vec![0u8]])
        .unwrap();
    assert_eq!(
        got,
        entries
            .iter()
            .map(|(_, v)| Some(v.clone()))
            .collect::<Vec<_>>()
    );
    // The same entries read directly from the server, not through the proxy.
    let page = t.store.list(&a, &ListRequest::prefix(Vec::new())).unwrap();
    let mut want = entries.clone();
    want.sort();
    assert_eq!(page.entries, want);
    let c = proxy.counters();
    assert_eq!((c.connections, c.failed_connections), (1, 0));
    assert!(c.bytes_to_server > big.len() as u64, "{c:?}");
    assert!(c.bytes_to_client > big.len() as u64, "{c:?}");
}

#[test]
fn batches_take_one_turn_and_per_key_calls_one_each() {
    let Some((proxy, store, t)) = through_proxy(Duration::from_millis(1)) else {
        return;
    };
    let a = t.actor("turns");
    // Warm the connection: the set-up (handshake, backend-pid query, schema check) takes turns
    // of its own, which no call pays again.
    store.get(&a, &[key(0)]).unwrap();
    let turns = |f: &dyn Fn()| {
        let (p, x) = (proxy.counters(), store.exchanges());
        f();
        ((proxy.counters() - p).turns, store.exchanges() - x)
    };
    let puts: Vec<(Vec<u8>, Vec<u8>)> = (0..128).map(|i| (key(i), vec![i as u8; 4096])).collect();

    // A 128-entry put (one WriteBatch): one call of the write function, one turn.
    assert_eq!(
        turns(&|| store.write(&a, &WriteBatch::puts(puts.clone())).unwrap()),
        (1, 1)
    );

    // A mixed read: 64 present and 64 absent keys in one get, one turn.
    let keys: Vec<Vec<u8>> = (0..64)
        .flat_map(|i| [key(2 * i), format!("absent{i}").into_bytes()])
        .collect();
    assert_eq!(
        turns(&|| {
            let got = store.get(&a, &keys).unwrap();
            assert_eq!(got.iter().filter(|v| v.is_some()).count(), 64);
            assert_eq!(got[0].as_deref(), Some(&[0u8; 4096][..]));
            assert_eq!(got[1], None);
        }),
        (1, 1)
    );

    // A batch of a get and two lists (the preload's shape): one UNION ALL statement, one turn.
    assert_eq!(
        turns(&|| {
            let got = store
                .batch_read(
                    &a,
                    &[
                        ReadOp::Get(keys.clone()),
                        ReadOp::List(ListRequest::prefix(b"k00".to_vec())),
                        ReadOp::List(ListRequest::prefix(b"nothing".to_vec())),
                    ],
                )
                .unwrap();
            match &got[1] {
                ReadResult::List(page) => assert_eq!(page.entries.len(), 100),
                other => panic!("{other:?}"),
            }
        }),
        (1, 1)
    );

    // The naive baseline: one call per key is one turn per key.
    assert_eq!(
        turns(&|| {
            for p in &puts {
                store.write(&a, &WriteBatch::puts(vec![p.clone()])).unwrap();
            }
        }),
        (128, 128)
    );
    assert_eq!(
        turns(&|| {
            for k in &keys {
                store.get(&a, std::slice::from_ref(k)).unwrap();
            }
        }),
        (128, 128)
    );
    assert_eq!(proxy.counters().connections, 1);
}

#[test]
fn bench_pg_batch_json_has_every_field_and_exact_turns() {
    // Applies the skip rule (and fails under CI=true when the server is missing).
    let Some(t) = pg::test_store() else { return };
    let url = pg::test_url();
    let v = cli::json_of(&[
        "--kv",
        &url,
        "bench",
        "pg-batch",
        "--delay-ms",
        "0.5",
        "--runs",
        "2",
        "--json",
    ]);
    let mut fields: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "actor",
            "backend",
            "connect",
            "connections",
            "delay_ms",
            "entries",
            "ops",
            "runs",
            "upstream",
            "value_bytes"
        ]
    );
    assert_eq!(v["backend"], "postgres");
    assert_eq!(v["delay_ms"], 0.5);
    assert_eq!(v["entries"], 128);
    assert_eq!(v["value_bytes"], 4096);
    assert_eq!(v["runs"], 2);
    assert_eq!(v["connections"], 1);
    assert!(v["connect"]["wall_ms"].as_f64().is_some(), "{v}");
    assert_eq!(v["connect"]["proxy_turns"], 3, "{v}");
    let ops = v["ops"].as_array().unwrap();
    let got: Vec<(&str, u64, u64, u64)> = ops
        .iter()
        .map(|o| {
            assert!(o["wall_ms"].as_f64().is_some(), "{o}");
            (
                o["op"].as_str().unwrap(),
                o["keys"].as_u64().unwrap(),
                o["proxy_turns"].as_u64().unwrap(),
                o["kv_round_trips"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("batch_put", 128, 1, 1),
            ("batch_get", 128, 1, 1),
            ("per_key_put", 128, 128, 128),
            ("per_key_get", 128, 128, 128),
        ]
    );
    // The benchmark's actor is gone.
    let actor = v["actor"].as_str().unwrap();
    let rows: i64 = t
        .admin()
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\" WHERE actor_id = $1",
                t.store.table()
            ),
            &[&actor],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "{actor}");

    // The table names the same operations.
    let text = cli::stdout_of(&[
        "--kv",
        &url,
        "bench",
        "pg-batch",
        "--delay-ms",
        "0",
        "--runs",
        "1",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(lines[1].starts_with("op "), "{text}");
    for (line, op) in
        lines[2..6]
            .iter()
            .zip(["batch_put", "batch_get", "per_key_put", "per_key_get"])
    {
        assert!(line.starts_with(op), "{text}");
    }
    assert!(lines[6].starts_with("connect: "), "{text}");
}

#[test]
fn bench_pg_batch_refuses_other_stores_and_rtt() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--kv", "memory:", "bench", "pg-batch"],
            "kvsqlite bench pg-batch: it measures the PostgreSQL backend: --kv must be a \
             postgres://USER@HOST:PORT/DB URL, not \"memory:\"\n",
        ),
        (
            &[
                "--kv",
                "postgres://u@127.0.0.1:5432/d",
                "--rtt",
                "5",
                "bench",
                "pg-batch",
            ],
            "kvsqlite bench pg-batch: bench pg-batch delays the wire itself: give --delay-ms, \
             not --rtt\n",
        ),
        (
            &[
                "--kv",
                "postgres://u@h1:5432,h2:5432/d",
                "bench",
                "pg-batch",
            ],
            "kvsqlite bench pg-batch: \"postgres://u@h1:5432,h2:5432/d\" names several hosts; \
             the proxy forwards to one server\n",
        ),
    ];
    for (args, want) in cases {
        let out = cli::kvsqlite(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), want, "{args:?}");
        assert!(out.stdout.is_empty());
    }
    let out = cli::kvsqlite(&["--kv", "memory:", "bench", "pg-batch", "--delay-ms", "-1"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn connecting_takes_a_fixed_number_of_turns() {
    let Some((proxy, store, _t)) = through_proxy(Duration::from_millis(1)) else {
        return;
    };
    // The handshake (startup, trust authentication: one turn), the backend-pid query (one
    // flight of Parse/Bind/Describe/Execute/Sync: one turn) and the schema set-up (one simple
    // query: one turn). Nothing is left to send afterwards, so the count is the same on any
    // machine and at any delay.
    assert_eq!(proxy.counters().turns, 3, "{:?}", proxy.counters());
    assert_eq!(store.connections_opened(), 1);
}

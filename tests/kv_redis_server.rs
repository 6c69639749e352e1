//! What the Redis servers themselves see of the redis backend, on a cluster of 3 masters and 3
//! replicas that only this test binary uses (its tests take turns, so the servers' counters
//! move only by what each test does): one exchange per call in `INFO commandstats`, actors
//! spread over all three masters with each actor's keys in one slot, `wait=N` acknowledged or
//! reported, the `NOSCRIPT` fallback, `ASK` and `MOVED` during a slot migration, an unreachable
//! cluster, `bench commit` round trips equal to memory's, an actor woken in one exchange, and the
//! missing-server rule.

#[path = "common/rerun.rs"]
mod rerun;

#[path = "common/redis_cluster.rs"]
mod cluster_helper;
use cluster_helper as rc;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use kvsqlite::kv::redis::RedisStore;
use kvsqlite::kv::{KvError, KvStore, ListRequest, Precondition, ReadOp};

/// Tests of this binary run one at a time: they read server-wide counters.
static TURN: Mutex<()> = Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// `INFO commandstats` of one node as `command → calls`.
fn command_calls(port: u16) -> BTreeMap<String, u64> {
    rc::info(port, "commandstats")
        .into_iter()
        .filter_map(|(name, v)| {
            let cmd = name.strip_prefix("cmdstat_")?.to_string();
            let calls = v.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((cmd, calls.parse().ok()?))
        })
        .collect()
}

/// Every node's commandstats.
fn all_calls(c: &rc::Cluster) -> Vec<BTreeMap<String, u64>> {
    c.nodes.iter().map(|n| command_calls(n.port)).collect()
}

/// The commands whose call count changed between two readings of one node, with the change;
/// the `INFO` of the reading itself is left out.
fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(cmd, _)| cmd.as_str() != "info")
        .filter_map(|(cmd, n)| {
            let d = n - before.get(cmd).copied().unwrap_or(0);
            (d > 0).then(|| (cmd.clone(), d))
        })
        .collect()
}

/// Commands the two scripts run inside Redis (counted by commandstats too, but not sent by
/// the client).
const SCRIPT_INNER: [&str; 7] = [
    "hget",
    "hset",
    "hdel",
    "zadd",
    "zrem",
    "zrangebylex",
    "zremrangebylex",
];

/// Commands of the replication stream, not sent by any client: a replica applies a script's
/// effects as `MULTI`/`EXEC` of its inner commands, `WAIT` makes the master ask its replicas
/// for `REPLCONF ACK`, and masters `PING` their replicas.
const REPLICATION: [&str; 4] = ["multi", "exec", "replconf", "ping"];

/// An actor id (starting with `stem`) whose slot the store maps to `node`.
fn actor_on(store: &RedisStore, node: &str, stem: &str) -> String {
    (0..10_000)
        .map(|i| format!("{stem}-{i}"))
        .find(|a| store.node_for(a).as_deref() == Some(node))
        .expect("some actor id lands on every master")
}

/// A call to make and whether it writes.
type Step<'a> = (&'a dyn Fn(), bool);

#[test]
fn redis_cluster_each_call_is_one_exchange_at_the_server() {
    let _t = turn();
    let Some(c) = rc::shared() else { return };
    let store = RedisStore::connect(&c.url("wait=1")).unwrap();
    let master = &c.nodes[1];
    let a = actor_on(&store, &master.addr(), "stats");
    // Open the connection (and load the scripts) before counting.
    store.get(&a, &[k("warm")]).unwrap();
    let put = || {
        store
            .put(&a, vec![(k("a1"), k("1")), (k("a2"), k("2"))])
            .unwrap()
    };
    let get = || {
        store.get(&a, &[k("a1"), k("zz")]).unwrap();
    };
    let list = || {
        store.list(&a, &ListRequest::prefix(k("a"))).unwrap();
    };
    let batch = || {
        store
            .batch_read(
                &a,
                &[
                    ReadOp::Get(vec![k("a1")]),
                    ReadOp::List(ListRequest::prefix(k("a")).with_limit(1)),
                    ReadOp::List(ListRequest::prefix(k("b"))),
                ],
            )
            .unwrap();
    };
    let conflict = || {
        let err = store
            .put_if(
                &a,
                vec![(k("a1"), k("x"))],
                vec![Precondition::absent(k("a1"))],
            )
            .unwrap_err();
        assert_eq!(err, KvError::Conflict { key: k("a1") });
    };
    let delete = || store.delete(&a, vec![k("a2")]).unwrap();
    let range = || store.delete_range(&a, b"a", Some(b"b")).unwrap();
    let steps: Vec<(&str, Step)> = vec![
        ("put", (&put as &dyn Fn(), true)),
        ("get", (&get as &dyn Fn(), false)),
        ("list", (&list as &dyn Fn(), false)),
        ("batch_read", (&batch as &dyn Fn(), false)),
        ("conflicting put_if", (&conflict as &dyn Fn(), true)),
        ("delete", (&delete as &dyn Fn(), true)),
        ("delete_range", (&range as &dyn Fn(), true)),
    ];
    for (what, (f, writes)) in steps {
        let before = all_calls(c);
        let exchanges = store.exchanges();
        f();
        let after = all_calls(c);
        assert_eq!(store.exchanges() - exchanges, 1, "{what}");
        for (i, n) in c.nodes.iter().enumerate() {
            let d = delta(&before[i], &after[i]);
            let sent: BTreeMap<&str, u64> = d
                .iter()
                .filter(|(cmd, _)| {
                    !SCRIPT_INNER.contains(&cmd.as_str()) && !REPLICATION.contains(&cmd.as_str())
                })
                .map(|(cmd, n)| (cmd.as_str(), *n))
                .collect();
            let want: BTreeMap<&str, u64> = if n.port != master.port {
                BTreeMap::new()
            } else if writes {
                BTreeMap::from([("evalsha", 1), ("wait", 1)])
            } else {
                BTreeMap::from([("evalsha", 1)])
            };
            assert_eq!(sent, want, "{what} on node {}: {d:?}", n.addr());
        }
        println!(
            "{what}: one EVALSHA{} at {}",
            if writes { " + WAIT" } else { "" },
            master.addr()
        );
    }
}

#[test]
fn redis_cluster_actors_spread_over_all_masters_each_in_one_slot() {
    let _t = turn();
    let Some(c) = rc::shared() else { return };
    let store = RedisStore::connect(&c.url("")).unwrap();
    let prefix = format!("spread-{}-", std::process::id());
    let mut per_master: BTreeMap<String, usize> = BTreeMap::new();
    let mut slots = BTreeSet::new();
    for i in 0..30 {
        let a = format!("{prefix}{i}");
        let pages: Vec<(Vec<u8>, Vec<u8>)> = (0u32..20)
            .map(|p| (p.to_be_bytes().to_vec(), vec![i as u8; 100]))
            .collect();
        store.put(&a, pages).unwrap();
        let slot = store.slot(&a);
        slots.insert(slot);
        let node = store.node_for(&a).unwrap();
        *per_master.entry(node.clone()).or_default() += 1;
        // The server agrees on the slot of both keys, and holds both on that master only.
        let (h, z) = store.redis_keys(&a);
        for key in [&h, &z] {
            let key = String::from_utf8(key.clone()).unwrap();
            let server_slot =
                match rc::command(c.nodes[0].port, &["CLUSTER", "KEYSLOT", &key]).unwrap() {
                    redis::Value::Int(s) => s,
                    other => panic!("{other:?}"),
                };
            assert_eq!(server_slot, i64::from(slot), "{key}");
            let port: u16 = node.rsplit_once(':').unwrap().1.parse().unwrap();
            assert_eq!(
                rc::command(port, &["EXISTS", &key]).unwrap(),
                redis::Value::Int(1)
            );
        }
        let port: u16 = node.rsplit_once(':').unwrap().1.parse().unwrap();
        assert_eq!(
            rc::command(port, &["HLEN", &String::from_utf8(h).unwrap()]).unwrap(),
            redis::Value::Int(20)
        );
    }
    println!("30 actors over {} slots: {per_master:?}", slots.len());
    let masters: BTreeSet<String> = store.masters().into_iter().collect();
    assert_eq!(masters.len(), 3);
    assert_eq!(
        per_master.keys().cloned().collect::<BTreeSet<_>>(),
        masters,
        "every master holds some actors"
    );
    // Each master's key count is exactly two keys per actor it serves.
    for m in &masters {
        let port: u16 = m.rsplit_once(':').unwrap().1.parse().unwrap();
        let mut found = 0;
        for i in 0..30 {
            let a = format!("{prefix}{i}");
            if store.node_for(&a).as_deref() == Some(m.as_str()) {
                let slot = store.slot(&a).to_string();
                let n = match rc::command(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot]).unwrap() {
                    redis::Value::Int(n) => n,
                    other => panic!("{other:?}"),
                };
                assert!(n >= 2, "slot {slot} on {m} holds {n} keys");
                found += 1;
            }
        }
        assert_eq!(found, per_master[m]);
    }
}

#[test]
fn redis_cluster_wait_acknowledges_or_says_the_write_is_not_replicated() {
    let _t = turn();
    let Some(c) = rc::shared() else { return };
    let a = format!("wait-{}", std::process::id());
    // One replica per master: wait=1 is acknowledged.
    let one = RedisStore::connect(&c.url("wait=1")).unwrap();
    one.put(&a, vec![(k("x"), k("1"))]).unwrap();
    // wait=2 cannot be met: the write is applied on the master, and the error says so.
    let two = RedisStore::connect(&c.url("wait=2&wait_timeout_ms=50")).unwrap();
    let err = two.put(&a, vec![(k("x"), k("2"))]).unwrap_err();
    let KvError::Unavailable { backend, message } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*backend, "redis");
    assert!(
        message.contains("only 1 of 2 replicas acknowledged it within 50 ms"),
        "{message}"
    );
    assert_eq!(one.get(&a, &[k("x")]).unwrap(), vec![Some(k("2"))]);
    // A conflict wrote nothing, so it is a conflict whatever WAIT says.
    let err = two
        .put_if(
            &a,
            vec![(k("y"), k("1"))],
            vec![Precondition::absent(k("x"))],
        )
        .unwrap_err();
    assert_eq!(err, KvError::Conflict { key: k("x") });
}

#[test]
fn redis_cluster_noscript_falls_back_to_eval_once() {
    let _t = turn();
    let Some(c) = rc::shared() else { return };
    let store = RedisStore::connect(&c.url("")).unwrap();
    let a = format!("noscript-{}", std::process::id());
    store.put(&a, vec![(k("x"), k("1"))]).unwrap();
    for n in &c.nodes {
        rc::text(n.port, &["SCRIPT", "FLUSH"]).unwrap();
    }
    let before = store.exchanges();
    assert_eq!(store.get(&a, &[k("x")]).unwrap(), vec![Some(k("1"))]);
    // EVALSHA answered NOSCRIPT, EVAL ran it (and loaded it again).
    assert_eq!(store.exchanges() - before, 2);
    store.put(&a, vec![(k("x"), k("2"))]).unwrap();
    let before = store.exchanges();
    assert_eq!(store.get(&a, &[k("x")]).unwrap(), vec![Some(k("2"))]);
    assert_eq!(store.exchanges() - before, 1);
}

#[test]
fn redis_unreachable_nodes_are_unavailable() {
    let _t = turn();
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::connect(&format!("redis-cluster://127.0.0.1:{port}?timeout_ms=500"))
        .err()
        .expect("no cluster there");
    assert!(
        matches!(&err, KvError::Unavailable { backend: "redis", message }
            if message.contains("no node answered CLUSTER SLOTS")),
        "{err}"
    );
    let store = RedisStore::connect(&format!(
        "redis://127.0.0.1:{port}?timeout_ms=500&retry_ms=300"
    ))
    .unwrap();
    let err = store.get("a", &[k("x")]).unwrap_err();
    assert!(
        matches!(&err, KvError::Unavailable { backend: "redis", message }
            if message.contains("nothing was written") && message.contains("cannot connect")),
        "{err}"
    );
}

/// The missing-server rule: this binary re-runs one test with a server binary that does not
/// exist, once with `CI=true` (it must fail, saying why) and once without (it must pass,
/// printing that it skipped).
#[test]
fn missing_redis_server_skips_or_fails_under_ci() {
    let run = |ci: Option<&str>| {
        rerun::rerun_test(
            "redis_cluster_noscript_falls_back_to_eval_once",
            ("KVSQLITE_TEST_REDIS_SERVER", "/nonexistent/redis-server"),
            ci,
        )
    };
    let (ok, text) = run(Some("true"));
    assert!(!ok, "{text}");
    assert!(
        text.contains(
            "CI=true and redis-cluster unavailable: /nonexistent/redis-server is not installed"
        ),
        "{text}"
    );
    let (ok, text) = run(None);
    assert!(ok, "{text}");
    assert!(
        text.contains(
            "SKIPPED: redis-cluster unavailable: /nonexistent/redis-server is not installed"
        ),
        "{text}"
    );
}

/// `kvsqlite bench commit --json` on a store, each transaction's object without its wall time:
/// `{"rows":…,"row_bytes":…,"pages_written":…,"kv_round_trips":…}`.
fn bench_commit(url: &str) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["--kv", url, "bench", "commit", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{url}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split("},")
        .map(|o| match o.split_once(",\"wall_ms\":") {
            Some((counts, _)) => format!("{counts}}}"),
            None => panic!("no wall_ms in {o}"),
        })
        .collect()
}

#[test]
fn redis_cluster_bench_commit_round_trips_equal_memory() {
    let _t = turn();
    let Some(c) = rc::shared() else { return };
    let memory = bench_commit("memory:");
    let redis = bench_commit(&c.url("wait=1"));
    println!("memory: {memory:?}\nredis-cluster: {redis:?}");
    assert_eq!(memory.len(), 7);
    assert!(memory[4].contains("\"kv_round_trips\":3"), "{}", memory[4]);
    assert_eq!(redis, memory);
}

/// `CLUSTER MYID` of a node.
fn node_id(port: u16) -> String {
    rc::text(port, &["CLUSTER", "MYID"]).unwrap()
}

#[test]
fn redis_cluster_follows_ask_and_moved_while_a_slot_migrates() {
    let _t = turn();
    let Some(c) = rc::shared() else { return };
    let store = RedisStore::connect(&c.url("")).unwrap();
    let (from, to) = (&c.nodes[0], &c.nodes[1]);
    // An actor alone in its slot (other tests' actors may share slots; those would stay).
    let a = (0..10_000)
        .map(|i| format!("migrate-{i}"))
        .find(|a| {
            store.node_for(a) == Some(from.addr())
                && rc::command(
                    from.port,
                    &["CLUSTER", "COUNTKEYSINSLOT", &store.slot(a).to_string()],
                ) == Ok(redis::Value::Int(0))
        })
        .expect("an empty slot on the first master");
    let slot = store.slot(&a).to_string();
    store
        .put(&a, vec![(k("x"), k("1")), (k("y"), k("2"))])
        .unwrap();
    // Migrate the actor's slot from `from` to `to`, its two keys first.
    let (h, z) = store.redis_keys(&a);
    let (h, z) = (String::from_utf8(h).unwrap(), String::from_utf8(z).unwrap());
    let (from_id, to_id) = (node_id(from.port), node_id(to.port));
    rc::text(
        to.port,
        &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id],
    )
    .unwrap();
    rc::text(
        from.port,
        &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id],
    )
    .unwrap();
    let to_port = to.port.to_string();
    let migrated = rc::text(
        from.port,
        &[
            "MIGRATE",
            "127.0.0.1",
            &to_port,
            "",
            "0",
            "5000",
            "KEYS",
            &h,
            &z,
        ],
    )
    .unwrap();
    assert_eq!(migrated, "OK");

    // `from` answers ASK: the call goes again to `to` with ASKING; the slot map is unchanged.
    let ex = store.exchanges();
    assert_eq!(
        store.get(&a, &[k("x"), k("y")]).unwrap(),
        vec![Some(k("1")), Some(k("2"))]
    );
    assert_eq!(store.exchanges() - ex, 2);
    store.put(&a, vec![(k("x"), k("3"))]).unwrap();
    assert_eq!(store.node_for(&a), Some(from.addr()));

    // The slot is `to`'s now: `from` answers MOVED, the store re-reads the map and follows.
    for m in &c.nodes[..3] {
        rc::text(m.port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).unwrap();
    }
    let ex = store.exchanges();
    assert_eq!(
        store.get(&a, &[k("x"), k("y")]).unwrap(),
        vec![Some(k("3")), Some(k("2"))]
    );
    assert_eq!(store.exchanges() - ex, 2);
    assert_eq!(store.node_for(&a), Some(to.addr()));
    let ex = store.exchanges();
    store.put(&a, vec![(k("z"), k("4"))]).unwrap();
    assert_eq!(store.exchanges() - ex, 1);
    // The actor's keys are on `to` only.
    assert_eq!(
        rc::command(to.port, &["EXISTS", &h, &z]).unwrap(),
        redis::Value::Int(2)
    );
    let left = rc::command(from.port, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).unwrap();
    let redis::Value::Array(left) = left else {
        panic!("{left:?}")
    };
    for key in [&h, &z] {
        assert!(!left.contains(&redis::Value::BulkString(key.clone().into_bytes())));
    }
}

#[test]
fn redis_cluster_actor_is_created_in_two_exchanges_and_wakes_in_one() {
    use kvsqlite::actor::{Actor, ActorConfig, Migration};
    let _t = turn();
    let Some(c) = rc::shared() else { return };
    let redis = std::sync::Arc::new(RedisStore::connect(&c.url("wait=1")).unwrap());
    let store: kvsqlite::kv::SharedStore = redis.clone();
    let mut config = ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_init.sql",
        "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL); \
         INSERT INTO notes(body) VALUES ('a'), ('b');",
    )
    .unwrap()]);
    config.strict = true;
    let id = format!("actor-{}", std::process::id());
    let master = redis.node_for(&id).unwrap();
    let port: u16 = master.rsplit_once(':').unwrap().1.parse().unwrap();
    // Open the connection (and load the scripts) before counting.
    redis.get(&id, &[k("warm")]).unwrap();
    let evalsha = |p: u16| command_calls(p).get("evalsha").copied().unwrap_or(0);

    let (ex, calls) = (redis.exchanges(), evalsha(port));
    let a = Actor::start(store.clone(), &id, &config).unwrap();
    assert!(a.startup().is_new);
    assert_eq!((redis.exchanges() - ex, evalsha(port) - calls), (2, 2));
    a.sleep().unwrap();

    let (ex, calls) = (redis.exchanges(), evalsha(port));
    let a = Actor::start(store.clone(), &id, &config).unwrap();
    assert!(!a.startup().is_new);
    assert_eq!((redis.exchanges() - ex, evalsha(port) - calls), (1, 1));
    let n: i64 = a
        .db()
        .query_row("SELECT count(*) FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!((redis.exchanges() - ex, evalsha(port) - calls), (1, 1));
    a.sleep().unwrap();
}

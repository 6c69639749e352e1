//! A master of the Redis Cluster is killed with `kill -9` while 8 threads commit SQLite
//! transactions to actors whose slots it serves. Its replica takes over; writes and reads work
//! again through the same store; every transaction acknowledged with `wait=1` is in the
//! database afterwards, and `integrity_check` is ok.
//!
//! A commit whose KV write fails is usually not an error at the SQL level: SQLite answers a
//! failed batch-atomic commit by committing again through its rollback journal, which the
//! store retries until the new master serves the slot. What the store itself does with a
//! write whose connection died is checked on a second store: unknown outcome, not retried.
//!
//! With one replica per master, the promoted replica has no replica of its own, so `wait=1`
//! cannot be met until one is back: its writes apply but are reported unacknowledged. The
//! test therefore restarts the killed node once the replica has taken over (it rejoins as the
//! new master's replica), which is what an operator or a spare replica provides.

#[path = "common/redis_cluster.rs"]
mod cluster_helper;
use cluster_helper as rc;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvsqlite::kv::redis::RedisStore;
use kvsqlite::kv::{KvError, KvStore, SharedStore};
use kvsqlite::vfs::{open_database, Database, OpenOptions};

const THREADS: usize = 8;
/// Commits each thread makes before the kill, and again after it.
const COMMITS_EACH_SIDE: usize = 15;
/// Bound on the whole run.
const DEADLINE: Duration = Duration::from_secs(90);

/// What one writer saw.
#[derive(Default)]
struct Log {
    /// Row ids whose commit returned OK.
    acked: BTreeSet<i64>,
    /// Row ids whose commit returned an error (they may or may not be there).
    failed: BTreeSet<i64>,
    /// Commits that returned OK after the kill.
    acked_after_kill: usize,
    /// Errors seen (opens and commits).
    errors: Vec<String>,
}

/// Opens `actor`'s database, retrying while the cluster fails over (bounded by the deadline).
fn open_retrying(store: &SharedStore, actor: &str, log: &mut Log, started: Instant) -> Database {
    loop {
        match open_database(store.clone(), actor, &OpenOptions::default()) {
            Ok(db) => return db,
            Err(e) => {
                let kv = store.get(actor, &[b"x".to_vec()]).err();
                log.errors.push(format!("open: {e} (KV: {kv:?})"));
                assert!(
                    started.elapsed() < DEADLINE,
                    "{actor}: cannot open: {e}: {:?}",
                    log.errors.last()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn redis_cluster_master_killed_mid_writes_loses_no_acknowledged_commit() {
    let Some(mut cluster) = rc::Cluster::start().map_or_else(
        |why| {
            rc::skipped(&format!("redis-cluster unavailable: {why}"));
            None
        },
        Some,
    ) else {
        return;
    };
    let started = Instant::now();
    let url = cluster.url("wait=1&retry_ms=20000");
    let redis_store = Arc::new(RedisStore::connect(&url).unwrap());
    let store: SharedStore = redis_store.clone();
    let redis = RedisStore::connect(&url).unwrap();
    let victim = cluster.nodes[0].addr();
    let actors: Vec<String> = (0..10_000)
        .map(|i| format!("failover-{i}"))
        .filter(|a| redis.node_for(a).as_deref() == Some(victim.as_str()))
        .take(THREADS)
        .collect();
    assert_eq!(actors.len(), THREADS);

    let killed = Arc::new(AtomicBool::new(false));
    let before_kill = Arc::new(AtomicUsize::new(0));
    let logs: Vec<Arc<Mutex<Log>>> = (0..THREADS).map(|_| Arc::default()).collect();
    let workers: Vec<_> = actors
        .iter()
        .zip(&logs)
        .map(|(actor, log)| {
            let (store, actor, log) = (store.clone(), actor.clone(), log.clone());
            let (killed, before_kill) = (killed.clone(), before_kill.clone());
            std::thread::spawn(move || {
                let mut l = Log::default();
                let mut db = open_retrying(&store, &actor, &mut l, started);
                db.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
                    .unwrap();
                let mut id = 0i64;
                let mut counted = false;
                while l.acked_after_kill < COMMITS_EACH_SIDE {
                    assert!(
                        started.elapsed() < DEADLINE,
                        "{actor}: writes never resumed"
                    );
                    id += 1;
                    let after_kill = killed.load(Ordering::SeqCst);
                    let sql = format!(
                        "BEGIN; INSERT INTO t VALUES ({id}, printf('%.200c', 'x')); COMMIT;"
                    );
                    match db.execute_batch(&sql) {
                        Ok(()) => {
                            l.acked.insert(id);
                            if after_kill {
                                l.acked_after_kill += 1;
                            } else if l.acked.len() >= COMMITS_EACH_SIDE && !counted {
                                counted = true;
                                before_kill.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => {
                            l.failed.insert(id);
                            l.errors.push(format!("commit {id}: {e}"));
                            // The outcome is unknown: read the database again from the store.
                            drop(db);
                            db = open_retrying(&store, &actor, &mut l, started);
                        }
                    }
                }
                *log.lock().unwrap() = l;
            })
        })
        .collect();

    // Kill the master once every writer has its first commits acknowledged.
    while before_kill.load(Ordering::SeqCst) < THREADS {
        assert!(started.elapsed() < DEADLINE, "writers never got going");
        std::thread::sleep(Duration::from_millis(10));
    }
    let replica_port = cluster.nodes[3].port;
    // A second store with a warm connection to the master, idle while it dies.
    let probe = (0..10_000)
        .map(|i| format!("probe-{i}"))
        .find(|a| redis.node_for(a).as_deref() == Some(victim.as_str()))
        .unwrap();
    redis
        .put(&probe, vec![(b"k".to_vec(), b"1".to_vec())])
        .unwrap();
    rc::kill9(cluster.node(&victim));
    killed.store(true, Ordering::SeqCst);
    println!(
        "killed master {victim} with kill -9 at {:?}",
        started.elapsed()
    );
    // Its write was sent on a connection that died: the outcome is unknown, and it is not
    // retried (so it returns before the failover).
    let err = redis
        .put(&probe, vec![(b"k".to_vec(), b"2".to_vec())])
        .unwrap_err();
    assert!(
        matches!(&err, KvError::Unavailable { message, .. } if message.contains("outcome is unknown")),
        "{err}"
    );
    assert!(
        !rc::Cluster::is_master(replica_port),
        "the write waited for the failover"
    );
    // A read is retried until the replica has taken over, and sees the acknowledged value.
    assert_eq!(
        redis.get(&probe, &[b"k".to_vec()]).unwrap(),
        vec![Some(b"1".to_vec())]
    );
    println!(
        "a read after the kill waited for the failover: {:?}",
        started.elapsed()
    );

    // The replica takes over; then the killed node comes back as its replica.
    while !rc::Cluster::is_master(replica_port) {
        assert!(started.elapsed() < DEADLINE, "the replica never took over");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "127.0.0.1:{replica_port} is master after {:?}",
        started.elapsed()
    );
    cluster.restart(&victim);
    for w in workers {
        w.join().expect("writer panicked");
    }

    // The replica is the master of those slots now, and the store followed it.
    cluster.wait_until_ok(Duration::from_secs(60));
    assert!(cluster.master_ports().contains(&replica_port));
    assert!(!rc::Cluster::is_master(cluster.node(&victim).port));
    let now = redis_store.node_for(&actors[0]);
    println!(
        "store: {} exchanges, {} slot map reads, {} connections",
        redis_store.exchanges(),
        redis_store.slot_map_refreshes(),
        redis_store.connections_opened()
    );
    println!("slots of the actors now on {now:?} (replica was 127.0.0.1:{replica_port})");

    // A fresh store: every acknowledged row is there, nothing that was never written is,
    // integrity_check is ok.
    let fresh: SharedStore = Arc::new(RedisStore::connect(&url).unwrap());
    let mut total_acked = 0;
    let mut total_failed = 0;
    for (actor, log) in actors.iter().zip(&logs) {
        let log = log.lock().unwrap();
        let db = open_database(fresh.clone(), actor, &OpenOptions::default()).unwrap();
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "{actor}");
        let mut st = db.prepare("SELECT id FROM t ORDER BY id").unwrap();
        let rows: BTreeSet<i64> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let missing: Vec<_> = log.acked.difference(&rows).collect();
        assert!(
            missing.is_empty(),
            "{actor}: acknowledged rows lost: {missing:?}"
        );
        let unknown: BTreeSet<i64> = log.acked.union(&log.failed).copied().collect();
        let extra: Vec<_> = rows.difference(&unknown).collect();
        assert!(extra.is_empty(), "{actor}: rows never written: {extra:?}");
        assert!(log.acked_after_kill >= COMMITS_EACH_SIDE);
        total_acked += log.acked.len();
        total_failed += log.failed.len();
        println!(
            "{actor}: {} acknowledged ({} after the kill), {} failed, first errors: {:?}",
            log.acked.len(),
            log.acked_after_kill,
            log.failed.len(),
            log.errors.iter().take(2).collect::<Vec<_>>()
        );
    }
    println!(
        "{total_acked} commits acknowledged with wait=1, all present; {total_failed} failed \
         during the failover; {:?} in all",
        started.elapsed()
    );
}

//! The host's output gate: `kvsqlite serve` pipelines commits (a COMMIT returns once its put is
//! queued) but answers a request only once every commit it saw is durable. Under load from
//! concurrent clients on one actor with a 5 ms store (`--rtt 5`), the host is killed with
//! SIGKILL after a seeded number of answers; reopened, the store holds every write that was
//! answered 200, and the database passes `integrity_check`. Three rounds, each continuing on
//! the same store.

#[path = "common/serve.rs"]
mod serve;
#[path = "common/sqlite.rs"]
mod sqlite_checks;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kvsqlite::kv::url::open_store;
use kvsqlite::vfs::{open_database, OpenOptions};
use serde_json::json;
use serve::Server;
use sqlite_checks::assert_integrity;

const CLIENTS: u64 = 16;
/// Answers each round waits for before the kill.
const ANSWERS_BEFORE_KILL: [u64; 3] = [150, 317, 89];

fn stored_ids(kv: &str) -> BTreeSet<i64> {
    let store = open_store(kv, kvsqlite::kv::KvLimits::default(), None).expect("open the store");
    let db = open_database(store, "gate", &OpenOptions::default()).expect("open the actor");
    assert_integrity(&db);
    let mut stmt = db.prepare("SELECT id FROM t").unwrap();
    let ids = stmt
        .query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .collect::<Result<BTreeSet<_>, _>>()
        .unwrap();
    ids
}

#[test]
fn kill_9_under_pipelined_load_loses_no_answered_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let mut answered_all: BTreeSet<i64> = BTreeSet::new();
    for (round, &kill_after) in ANSWERS_BEFORE_KILL.iter().enumerate() {
        let s = Server::start(&kv, &["--rtt", "5", "--idle-sleep-ms", "600000"]);
        if round == 0 {
            s.sql(
                "gate",
                "CREATE TABLE t(id INTEGER PRIMARY KEY, c INTEGER)",
                json!([]),
            );
        }
        let answered = Arc::new(Mutex::new(Vec::<i64>::new()));
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (base, admin) = (s.base.clone(), s.admin.clone());
            let (answered, count, stop) = (answered.clone(), count.clone(), stop.clone());
            clients.push(std::thread::spawn(move || {
                let agent = serve::agent();
                // Ids unique across rounds and clients; at most 10,000 requests per client.
                for n in 0..10_000i64 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let id = (round as i64 * 1_000 + c as i64) * 100_000 + n;
                    let body = json!({
                        "sql": "INSERT INTO t VALUES (?1, ?2)",
                        "params": [id, c]
                    })
                    .to_string();
                    let (status, _) =
                        serve::post(&agent, &base, "/actors/gate/query", Some(&admin), &body);
                    if status != 200 {
                        // The host is gone (or refused): this client stops.
                        return;
                    }
                    answered.lock().unwrap().push(id);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        // Bounded wait for the seeded number of answers, then SIGKILL mid-load.
        for _ in 0..60_000 {
            if count.load(Ordering::SeqCst) >= kill_after {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(
            count.load(Ordering::SeqCst) >= kill_after,
            "round {round}: only {} answers",
            count.load(Ordering::SeqCst)
        );
        s.kill9();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().expect("client thread");
        }
        answered_all.extend(answered.lock().unwrap().iter().copied());
        let stored = stored_ids(&kv);
        let missing: Vec<_> = answered_all.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} answered writes missing after kill -9: {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

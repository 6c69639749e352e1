//! `kvsqlite serve` under load: a bounded mixed load test whose final contents must equal what
//! the client committed, and no acknowledged write lost across a graceful shutdown (SIGTERM) or
//! a `kill -9` of the host under load (same redb file, restart, compare).

#[path = "common/serve.rs"]
mod serve;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve::{Server, ADMIN};

const ACTORS: usize = 50;
const REQUESTS_PER_ACTOR: usize = 200;
const CLIENT_THREADS: usize = 8;

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn call(
    agent: &ureq::Agent,
    base: &str,
    actor: &str,
    route: &str,
    body: &Value,
) -> Result<Value, String> {
    let (st, text) = serve::post(
        agent,
        base,
        &format!("/actors/{actor}/{route}"),
        Some(ADMIN),
        &body.to_string(),
    );
    if st != 200 {
        return Err(format!("{actor} {route} {body}: {st} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| format!("{actor}: not JSON ({e}): {text}"))
}

/// Each actor's id and the contents the client committed to it.
type Models = Vec<(String, BTreeMap<i64, i64>)>;

/// Each actor's id and the ids acknowledged on it.
type Acked = Vec<(String, Vec<i64>)>;

const UPSERT: &str =
    "INSERT INTO kv(k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v";

/// One client thread: its actors, request by request, against a model of their contents.
fn client(base: String, actors: Vec<usize>) -> Result<Models, String> {
    let agent = serve::agent();
    let mut models: Models = actors
        .iter()
        .map(|a| (format!("load-{a}"), BTreeMap::new()))
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ actors[0] as u64);
    for round in 0..REQUESTS_PER_ACTOR {
        for (actor, model) in models.iter_mut() {
            if round == 0 {
                call(
                    &agent,
                    &base,
                    actor,
                    "query",
                    &json!({"sql": "CREATE TABLE kv(k INTEGER PRIMARY KEY, v INTEGER)"}),
                )?;
                continue;
            }
            let r = rng.next();
            let (k, v) = ((r >> 8) as i64 % 40, (r >> 20) as i64 % 1_000_000);
            match r % 10 {
                0..=3 => {
                    call(
                        &agent,
                        &base,
                        actor,
                        "query",
                        &json!({"sql": UPSERT, "params": [k, v]}),
                    )?;
                    model.insert(k, v);
                }
                4..=5 => {
                    let k2 = (k + 7) % 40;
                    let body = json!({"statements": [
                        {"sql": UPSERT, "params": [k, v]},
                        {"sql": "DELETE FROM kv WHERE k = ?", "params": [k2]},
                        {"sql": UPSERT, "params": [k2 + 40, v + 1]},
                    ]});
                    call(&agent, &base, actor, "batch", &body)?;
                    model.insert(k, v);
                    model.remove(&k2);
                    model.insert(k2 + 40, v + 1);
                }
                _ => {
                    let out = call(
                        &agent,
                        &base,
                        actor,
                        "query",
                        &json!({"sql": "SELECT count(*), coalesce(sum(v), 0) FROM kv"}),
                    )?;
                    let want = json!([[model.len(), model.values().sum::<i64>()]]);
                    if out["rows"] != want {
                        return Err(format!(
                            "{actor}: read {} but committed {want}",
                            out["rows"]
                        ));
                    }
                }
            }
        }
    }
    Ok(models)
}

#[test]
fn load_50_actors_200_requests_8_threads_zero_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &[]);
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            let base = s.base.clone();
            let mine: Vec<usize> = (0..ACTORS).filter(|a| a % CLIENT_THREADS == t).collect();
            std::thread::spawn(move || client(base, mine))
        })
        .collect();
    let mut models = Vec::new();
    for t in threads {
        models.extend(t.join().expect("client thread").expect("zero errors"));
    }
    let elapsed = started.elapsed();
    let requests = ACTORS * REQUESTS_PER_ACTOR;
    println!(
        "load: {requests} requests in {:.2} s ({:.0} requests/s)",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
    let m = s.metrics();
    assert_eq!(m["kvsqlite_errors_total{kind=\"sql\"}"], 0.0);
    assert_eq!(m["kvsqlite_errors_total{kind=\"unavailable\"}"], 0.0);
    assert_eq!(m["kvsqlite_creations_total"], ACTORS as f64);
    for (actor, model) in &models {
        let out = s.sql(actor, "SELECT k, v FROM kv ORDER BY k", json!([]));
        let want: Vec<Value> = model.iter().map(|(k, v)| json!([k, v])).collect();
        assert_eq!(out["rows"], json!(want), "{actor}");
    }
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

/// Writers insert increasing ids into a few actors until told to stop or until the server
/// stops answering; returns the ids acknowledged (200) per actor.
fn writers_until_stopped(
    base: &str,
    actors: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<Acked>> {
    (0..4)
        .map(|t| {
            let base = base.to_string();
            let stop = stop.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let agent = serve::agent();
                let mine: Vec<String> = (0..actors)
                    .filter(|a| a % 4 == t)
                    .map(|a| format!("w-{a}"))
                    .collect();
                let mut out: Acked = mine.iter().map(|a| (a.clone(), Vec::new())).collect();
                let mut failures = 0;
                for n in 0..20_000i64 {
                    if stop.load(Ordering::Relaxed) || failures > 20 {
                        break;
                    }
                    let (actor, ids) = &mut out[n as usize % mine.len()];
                    let body = json!({"sql": "INSERT INTO t(id) VALUES (?)", "params": [n]});
                    match serve::post(
                        &agent,
                        &base,
                        &format!("/actors/{actor}/query"),
                        Some(ADMIN),
                        &body.to_string(),
                    ) {
                        (200, _) => {
                            ids.push(n);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failures += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                }
                out
            })
        })
        .collect()
}

fn no_acknowledged_write_lost(kill: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let actors = 8;
    let s = Server::start(&kv, &[]);
    for a in 0..actors {
        s.sql(
            &format!("w-{a}"),
            "CREATE TABLE t(id INTEGER PRIMARY KEY)",
            json!([]),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writers = writers_until_stopped(&s.base, actors, stop.clone(), acked.clone());
    // Let some writes land (bounded), then stop the host under load.
    for _ in 0..400 {
        if acked.load(Ordering::Relaxed) >= 300 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        acked.load(Ordering::Relaxed) > 0,
        "no write was acknowledged"
    );
    if kill {
        s.kill9();
    } else {
        let (status, stderr) = s.terminate();
        assert!(
            status.success(),
            "graceful shutdown exit {status:?}: {stderr}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let acked_ids: Acked = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    let total: usize = acked_ids.iter().map(|(_, ids)| ids.len()).sum();
    println!(
        "{}: {total} acknowledged writes checked after restart",
        if kill { "kill -9" } else { "SIGTERM" }
    );

    let s = Server::start(&kv, &[]);
    for (actor, ids) in &acked_ids {
        let out = s.sql(actor, "SELECT id FROM t ORDER BY id", json!([]));
        let stored: BTreeSet<i64> = out["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .filter_map(|r| r[0].as_i64())
            .collect();
        for id in ids {
            assert!(stored.contains(id), "{actor}: acknowledged id {id} lost");
        }
    }
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

#[test]
fn graceful_shutdown_under_load_loses_no_acknowledged_write() {
    no_acknowledged_write_lost(false);
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_write() {
    no_acknowledged_write_lost(true);
}

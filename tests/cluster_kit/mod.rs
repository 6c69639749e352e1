//! What the cluster tests share: `kvsqlite serve --cluster` hosts as child processes of the
//! built binary on loopback ports, signals (TERM, KILL, STOP, CONT), and a load of 8 clients
//! that read and write 200 actors through random hosts, every answer checked against a model.
//!
//! Include it with `#[path = "cluster_kit/mod.rs"] mod kit;`.
#![allow(dead_code)]

#[path = "../common/serve.rs"]
pub mod serve;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use serve::ADMIN;

/// The member TTL of every test host: short, so that a dead host's actors move fast.
pub const TTL: &str = "2s";
/// [`TTL`] as a duration.
pub const TTL_D: Duration = Duration::from_secs(2);
/// Clients of the load.
pub const CLIENTS: usize = 8;
/// Actors of the load.
pub const ACTORS: usize = 200;

/// A `kvsqlite serve --cluster` process.
pub struct Host {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    kv: String,
    cluster: String,
    extra: Vec<String>,
    stderr: Option<JoinHandle<String>>,
    /// What earlier processes of this host wrote to stderr.
    pub old_stderr: String,
}

impl Host {
    /// Starts a host of `cluster` on store `kv` (on a free port when `listen` is port 0).
    pub fn start(kv: &str, cluster: &str, listen: &str, extra: &[&str]) -> Host {
        let mut h = Host {
            child: None,
            addr: String::new(),
            base: String::new(),
            kv: kv.into(),
            cluster: cluster.into(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            stderr: None,
            old_stderr: String::new(),
        };
        h.spawn(listen);
        h
    }

    fn spawn(&mut self, listen: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvsqlite"));
        cmd.args(["--kv", &self.kv, "serve", "--listen", listen]);
        if !self.extra.iter().any(|a| a == "--idle-sleep-ms") {
            cmd.args(["--idle-sleep-ms", "600000"]);
        }
        cmd.args(["--cluster", &self.cluster, "--member-ttl", TTL])
            .args([
                "--statement-timeout-ms",
                "5000",
                "--shutdown-deadline-ms",
                "5000",
            ])
            .args(&self.extra)
            .env_remove("KVSQLITE_KV")
            .env("RUST_LOG", "kvsqlite=info")
            .env("KVSQLITE_ADMIN_TOKEN", ADMIN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kvsqlite serve");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("listening on ") {
                        break a.to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "kvsqlite serve ended before it listened: {}",
                        stderr.join().unwrap_or_default()
                    );
                }
            }
        };
        std::thread::spawn(move || for _ in lines {});
        self.base = format!("http://{addr}");
        self.addr = addr;
        self.child = Some(child);
        self.stderr = Some(stderr);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("a running host")
    }

    /// Sends a signal (`-STOP`, `-CONT`, `-TERM`, `-KILL`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} failed");
    }

    fn reap(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running host");
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                panic!("the host did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(h) = self.stderr.take() {
            self.old_stderr.push_str(&h.join().unwrap_or_default());
        }
        status
    }

    /// kill -9, reaped.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.reap();
    }

    /// SIGTERM, waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        self.reap()
    }

    /// Starts the host again on the same address.
    pub fn restart(&mut self) {
        let addr = self.addr.clone();
        self.spawn(&addr);
    }

    /// `GET /cluster` as admin.
    pub fn cluster(&self) -> Value {
        let (st, text) = serve::get(&serve::agent(), &self.base, "/cluster", Some(ADMIN));
        assert_eq!(st, 200, "GET /cluster: {text}");
        serde_json::from_str(&text).expect("JSON")
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (st, text) = serve::get(&serve::agent(), &self.base, "/metrics", None);
        assert_eq!(st, 200);
        serve::parse_prometheus(&text).unwrap_or_else(|e| panic!("bad Prometheus text: {e}"))
    }

    /// What the host wrote to stderr so far (only once it exited).
    pub fn stderr_text(&self) -> &str {
        &self.old_stderr
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts three hosts of a fresh cluster on `kv`.
pub fn three_hosts(kv: &str, cluster: &str, extra: &[&str]) -> Vec<Host> {
    let hosts: Vec<Host> = (0..3)
        .map(|_| Host::start(kv, cluster, "127.0.0.1:0", extra))
        .collect();
    wait_members(&hosts.iter().collect::<Vec<_>>(), 3);
    hosts
}

/// Waits (at most 20 s) until every host in `hosts` lists `n` members, none leaving, and has
/// served for a third of a TTL since (each member serves its actors by then).
pub fn wait_members(hosts: &[&Host], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = hosts.iter().all(|h| {
            let (st, text) = serve::get(&serve::agent(), &h.base, "/cluster", Some(ADMIN));
            st == 200
                && serde_json::from_str::<Value>(&text).is_ok_and(|v| {
                    v["members"].as_array().is_some_and(|m| {
                        m.len() == n && m.iter().all(|x| x["leaving"] == json!(false))
                    })
                })
        });
        if ok {
            std::thread::sleep(TTL_D / 2);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the hosts never agreed on {n} members"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One actor's model: the values acknowledged (in order) and those whose write got no
/// acknowledgement (they may or may not have landed).
#[derive(Default, Debug)]
pub struct ActorModel {
    pub acked: Vec<i64>,
    pub maybe: BTreeSet<i64>,
    /// The last requests (for a failure's message): what, answer, which hosts.
    pub recent: std::collections::VecDeque<String>,
}

/// What the load counted.
#[derive(Default, Debug)]
pub struct Counts {
    pub ok: AtomicU64,
    pub unavailable: AtomicU64,
    pub refused_connections: AtomicU64,
    /// Requests whose host died with them in flight (outcome unknown; not answers).
    pub lost_in_flight: AtomicU64,
    pub writes_acked: AtomicU64,
    pub reads_checked: AtomicU64,
    pub forwarded: AtomicU64,
}

/// The load: 8 clients, each the only client of its 25 actors (so each actor's model is
/// sequential), sending reads and writes to random live hosts.
pub struct Load {
    pub prefix: String,
    pub hosts: Arc<RwLock<Vec<String>>>,
    pub models: Arc<Vec<Mutex<ActorModel>>>,
    pub counts: Arc<Counts>,
    pub failures: Arc<Mutex<Vec<String>>>,
    /// Actor → the hosts that ran its requests (the `kvsqlite-served-by` answers).
    pub served_by: Arc<Mutex<HashMap<String, BTreeSet<String>>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// One answer.
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub served_by: Option<String>,
    pub forwarded_by: Option<String>,
    pub retry_after: Option<String>,
}

/// POSTs `body` to `base` + `path` as admin.
pub fn post(agent: &ureq::Agent, base: &str, path: &str, body: &Value) -> Answer {
    let req = agent
        .post(format!("{base}{path}"))
        .header("Authorization", format!("Bearer {ADMIN}"));
    match req.send(body.to_string()) {
        Ok(resp) => {
            let h = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from)
            };
            let (served_by, forwarded_by, retry_after) = (
                h("kvsqlite-served-by"),
                h("kvsqlite-forwarded-by"),
                h("retry-after"),
            );
            Answer {
                status: resp.status().as_u16(),
                body: resp.into_body().read_to_string().unwrap_or_default(),
                served_by,
                forwarded_by,
                retry_after,
            }
        }
        // 0: the connection was refused (nothing was sent); 1: no answer after it may have
        // been sent (its outcome is unknown).
        Err(e) => Answer {
            status: if matches!(&e, ureq::Error::ConnectionFailed)
                || matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
            {
                0
            } else {
                1
            },
            body: e.to_string(),
            served_by: None,
            forwarded_by: None,
            retry_after: None,
        },
    }
}

/// A small xorshift generator (tests need no crate for it).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The rows of a `SELECT v FROM log ORDER BY id` answer.
pub fn values(body: &str) -> Result<Vec<i64>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}: {body}"))?;
    v["rows"]
        .as_array()
        .ok_or(format!("no rows: {body}"))?
        .iter()
        .map(|r| r[0].as_i64().ok_or(format!("bad row {r}")))
        .collect()
}

/// Checks a read against the model: every acknowledged value present, in order, and nothing
/// else but values whose write had no answer. On success the model takes what was read.
pub fn check_read(m: &mut ActorModel, rows: &[i64]) -> Result<(), String> {
    let mut j = 0;
    for r in rows {
        if j < m.acked.len() && *r == m.acked[j] {
            j += 1;
        } else if !m.maybe.contains(r) {
            return Err(format!("value {r} was never written (acked {:?})", m.acked));
        }
    }
    if j != m.acked.len() {
        return Err(format!(
            "acknowledged values missing: read {rows:?}, acknowledged {:?}",
            m.acked
        ));
    }
    for r in rows {
        m.maybe.remove(r);
    }
    m.acked = rows.to_vec();
    Ok(())
}

impl Load {
    /// Creates the 200 actors (table `log`), through random hosts, then nothing else.
    pub fn setup(prefix: &str, hosts: &[&Host]) -> Load {
        let bases: Vec<String> = hosts.iter().map(|h| h.base.clone()).collect();
        let load = Load {
            prefix: prefix.into(),
            hosts: Arc::new(RwLock::new(bases)),
            models: Arc::new((0..ACTORS).map(|_| Mutex::default()).collect()),
            counts: Arc::default(),
            failures: Arc::default(),
            served_by: Arc::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        let threads: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (hosts, prefix) = (load.hosts.clone(), load.prefix.clone());
                std::thread::spawn(move || {
                    let agent = serve::agent();
                    let mut rng = Rng::new(c as u64 + 1);
                    for a in (c..ACTORS).step_by(CLIENTS) {
                        let body = json!({"sql": "CREATE TABLE IF NOT EXISTS log(id INTEGER PRIMARY KEY, v INTEGER NOT NULL)"});
                        let hs = hosts.read().unwrap().clone();
                        let base = &hs[rng.below(hs.len())];
                        let ans = post(&agent, base, &format!("/actors/{prefix}{a}/query"), &body);
                        assert_eq!(ans.status, 200, "create {a}: {}", ans.body);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("setup client");
        }
        load
    }

    /// Starts the clients: each sends requests (half writes) until [`Load::stop`].
    pub fn start(&mut self) {
        self.stop.store(false, Ordering::Relaxed);
        for c in 0..CLIENTS {
            let hosts = self.hosts.clone();
            let models = self.models.clone();
            let counts = self.counts.clone();
            let failures = self.failures.clone();
            let served = self.served_by.clone();
            let stop = self.stop.clone();
            let prefix = self.prefix.clone();
            let seed = counts.ok.load(Ordering::Relaxed) + c as u64 * 7919 + 17;
            self.threads.push(std::thread::spawn(move || {
                let agent = serve::agent();
                let mut rng = Rng::new(seed);
                let mine: Vec<usize> = (c..ACTORS).step_by(CLIENTS).collect();
                let mut next_value = (c as i64 + 1) * 1_000_000_000 + seed as i64 * 1000;
                while !stop.load(Ordering::Relaxed) {
                    let a = mine[rng.below(mine.len())];
                    let write = rng.below(2) == 0;
                    let path = format!("/actors/{prefix}{a}/query");
                    let v = next_value;
                    let body = if write {
                        next_value += 1;
                        json!({"sql": "INSERT INTO log(v) VALUES (?)", "params": [v]})
                    } else {
                        json!({"sql": "SELECT v FROM log ORDER BY id"})
                    };
                    // A host that is down refuses the connection: the client tries another.
                    let mut ans = None;
                    for _ in 0..50 {
                        let hs = hosts.read().unwrap().clone();
                        let base = hs[rng.below(hs.len())].clone();
                        let x = post(&agent, &base, &path, &body);
                        if x.status == 0 {
                            counts.refused_connections.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        ans = Some(x);
                        break;
                    }
                    let Some(ans) = ans else {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{path}: no host answered"));
                        continue;
                    };
                    let mut m = models[a].lock().unwrap();
                    m.recent.push_back(format!(
                        "{} {} -> {} served by {:?} forwarded by {:?}",
                        if write { "write" } else { "read" },
                        v,
                        ans.status,
                        ans.served_by,
                        ans.forwarded_by
                    ));
                    if m.recent.len() > 6 {
                        m.recent.pop_front();
                    }
                    match ans.status {
                        1 => {
                            counts.lost_in_flight.fetch_add(1, Ordering::Relaxed);
                            if write {
                                m.maybe.insert(v);
                            }
                        }
                        200 => {
                            counts.ok.fetch_add(1, Ordering::Relaxed);
                            if ans.forwarded_by.is_some() {
                                counts.forwarded.fetch_add(1, Ordering::Relaxed);
                            }
                            if let Some(s) = ans.served_by {
                                served
                                    .lock()
                                    .unwrap()
                                    .entry(format!("{prefix}{a}"))
                                    .or_default()
                                    .insert(s);
                            }
                            if write {
                                m.acked.push(v);
                                counts.writes_acked.fetch_add(1, Ordering::Relaxed);
                            } else {
                                match values(&ans.body).and_then(|rows| check_read(&mut m, &rows)) {
                                    Ok(()) => {
                                        counts.reads_checked.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => failures
                                        .lock()
                                        .unwrap()
                                        .push(format!("{path}: {e}; last requests {:?}", m.recent)),
                                }
                            }
                        }
                        503 => {
                            counts.unavailable.fetch_add(1, Ordering::Relaxed);
                            if ans.retry_after.is_none() {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("{path}: 503 without Retry-After: {}", ans.body));
                            }
                            if write {
                                m.maybe.insert(v);
                            }
                        }
                        s => failures
                            .lock()
                            .unwrap()
                            .push(format!("{path}: {s} {}", ans.body)),
                    }
                }
            }));
        }
    }

    /// Stops the clients and waits for them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("load client");
        }
    }

    /// Requests answered so far (200 + 503).
    pub fn answered(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed) + self.counts.unavailable.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests were answered (at most 60 s).
    pub fn run_for_answers(&self, n: u64) {
        let target = self.answered() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.answered() < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Panics with the failures, if any.
    pub fn assert_no_failures(&self) {
        let f = self.failures.lock().unwrap();
        assert!(
            f.is_empty(),
            "{} failures, first ones: {:#?}",
            f.len(),
            &f[..f.len().min(10)]
        );
    }

    /// After the load: every actor, through `base`, answers its read at once (200) and matches
    /// its model, and `PRAGMA integrity_check` says ok.
    pub fn verify_all(&self, base: &str) {
        let agent = serve::agent();
        for a in 0..ACTORS {
            let path = format!("/actors/{}{a}/query", self.prefix);
            let ans = post(
                &agent,
                base,
                &path,
                &json!({"sql": "SELECT v FROM log ORDER BY id"}),
            );
            assert_eq!(ans.status, 200, "{path}: {}", ans.body);
            let rows = values(&ans.body).expect("rows");
            let mut m = self.models[a].lock().unwrap();
            check_read(&mut m, &rows).unwrap_or_else(|e| panic!("{path}: {e}"));
            let ic = post(
                &agent,
                base,
                &path,
                &json!({"sql": "PRAGMA integrity_check"}),
            );
            assert_eq!(ic.status, 200, "{path}: {}", ic.body);
            let v: Value = serde_json::from_str(&ic.body).expect("JSON");
            assert_eq!(v["rows"], json!([["ok"]]), "{path}");
        }
    }
}

/// The owner of every actor awake anywhere, from `GET /cluster`: actor → hosts it is awake on.
pub fn awake_map(h: &Host) -> BTreeMap<String, Vec<String>> {
    let v = h.cluster();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in v["members"].as_array().expect("members") {
        let addr = m["addr"].as_str().expect("addr").to_string();
        for a in m["awake"]
            .as_array()
            .unwrap_or_else(|| panic!("member {m} did not answer"))
        {
            out.entry(a.as_str().expect("id").to_string())
                .or_default()
                .push(addr.clone());
        }
    }
    out
}

/// The PostgreSQL server of the tests, or `None` after the skip line (a failure under CI).
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("KVSQLITE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    match postgres::Client::connect(&url, postgres::NoTls) {
        Ok(_) => Some(url),
        Err(e) => {
            kvsqlite::testkit::skip(&format!("postgres unavailable: {e}"));
            None
        }
    }
}

/// A table of its own for one test (dropped with its write function when this drops): the
/// test's store URL is `url?table=NAME`.
pub struct PgTable {
    url: String,
    pub name: String,
}

impl PgTable {
    pub fn new(url: &str, tag: &str) -> PgTable {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        PgTable {
            url: url.into(),
            name: format!("kvc_{tag}_{}_{nanos}", std::process::id()),
        }
    }

    /// The store URL of this table.
    pub fn kv(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}table={}", self.url, self.name)
    }
}

impl Drop for PgTable {
    fn drop(&mut self) {
        if let Ok(mut c) = postgres::Client::connect(&self.url, postgres::NoTls) {
            let _ = c.batch_execute(&format!(
                "DROP TABLE IF EXISTS \"{0}\"; DROP FUNCTION IF EXISTS \"{0}_write_v1\"",
                self.name
            ));
        }
    }
}

//! A real Redis Cluster for the tests: 3 masters and 3 replicas of `/usr/bin/redis-server`
//! (`KVSQLITE_TEST_REDIS_SERVER` names another binary) on free loopback ports (never 6379), each
//! with `appendonly yes` and `appendfsync always` in a temporary directory.
//!
//! Include it with `#[path = "common/redis_cluster.rs"] mod redis_cluster;`.
//!
//! - Every server runs under a `sh` watchdog that reads the test process's pipe: when the
//!   [`Cluster`] drops, or the test process ends in any way (a panic, an abort, a kill), the pipe
//!   closes and the watchdog kills its server with `kill -9` and removes its data. Nothing
//!   outlives the tests, not even the directory of a cluster kept in a `static`.
//! - A missing `redis-server` is a skip printed on standard error (`SKIPPED: redis-cluster
//!   unavailable: …`), or a failure under `CI=true`.
//! - [`shared`] gives every test of one test binary the same cluster (started once); tests that
//!   kill nodes start their own with [`Cluster::start`]. [`shared_single`] is one plain server
//!   (no cluster) for `redis://` URLs.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The redis-server binary the tests use.
pub fn server_binary() -> PathBuf {
    std::env::var_os("KVSQLITE_TEST_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}

/// One `redis-server` under its watchdog.
pub struct Node {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The server's own process id (`INFO server`), for `kill -9`.
    pub pid: u32,
    watchdog: Child,
    pipe: Option<ChildStdin>,
}

impl Node {
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        // Tell the watchdog to keep the data (a restart reuses it), then let it go too.
        if let Some(pipe) = self.pipe.as_mut() {
            let _ = pipe.write_all(b"keep\n");
            let _ = pipe.flush();
        }
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
        self.pipe.take();
        let _ = self.watchdog.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.pipe.take();
        let _ = self.watchdog.wait();
    }
}

/// A running cluster.
pub struct Cluster {
    /// Its nodes, in start order.
    pub nodes: Vec<Node>,
    /// Keeps the data directory until the cluster drops.
    pub dir: tempfile::TempDir,
}

/// A port `p` such that `p` and `p + 10000` (the cluster bus) are free on 127.0.0.1 now.
fn free_port_pair(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        let p = l.local_addr().expect("local addr").port();
        if p == 6379 || !(1024..=55535).contains(&p) || taken.contains(&p) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, p + 10000)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of loopback ports found");
}

/// Runs one command on a node and returns its reply.
pub fn command(port: u16, args: &[&str]) -> Result<redis::Value, String> {
    let client =
        redis::Client::open(format!("redis://127.0.0.1:{port}")).map_err(|e| e.to_string())?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut conn).map_err(|e| e.to_string())
}

/// A command's reply as text (bulk or status).
pub fn text(port: u16, args: &[&str]) -> Result<String, String> {
    match command(port, args)? {
        redis::Value::BulkString(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        redis::Value::SimpleString(s) => Ok(s),
        redis::Value::VerbatimString { text, .. } => Ok(text),
        redis::Value::Okay => Ok("OK".into()),
        other => Err(format!("{args:?} answered {other:?}")),
    }
}

/// The `field:value` lines of an `INFO` section.
pub fn info(port: u16, section: &str) -> Vec<(String, String)> {
    text(port, &["INFO", section])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

fn start_node(bin: &Path, dir: &Path, port: u16, cluster: bool) -> Result<Node, String> {
    let data = dir.join(port.to_string());
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let mut args = vec![
        "--port".to_string(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        data.display().to_string(),
        "--appendonly".into(),
        "yes".into(),
        "--appendfsync".into(),
        "always".into(),
        // Replicas sync at once (the default waits 5 s for more replicas to join a sync).
        "--repl-diskless-sync-delay".into(),
        "0".into(),
        "--save".into(),
        "".into(),
        "--daemonize".into(),
        "no".into(),
        "--logfile".into(),
        data.join("redis.log").display().to_string(),
    ];
    if cluster {
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ]
            .map(String::from),
        );
    }
    // The watchdog: starts the server, then waits for its stdin to close (this process
    // dropped the node or ended), kills the server and removes its data directory (and the
    // cluster's directory once empty), unless it was told to keep the data.
    let script = r#"bin="$1"; data="$2"; shift 2; "$bin" "$@" & pid=$!; keep=""; while read -r line; do [ "$line" = keep ] && keep=1; done; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null; if [ -z "$keep" ]; then rm -rf "$data"; rmdir "$(dirname "$data")" 2>/dev/null; fi; exit 0"#;
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("watchdog")
        .arg(bin)
        .arg(&data)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pipe = watchdog.stdin.take();
    let mut node = Node {
        port,
        pid: 0,
        watchdog,
        pipe,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            if let Some(pid) = info(port, "server")
                .into_iter()
                .find(|(k, _)| k == "process_id")
                .and_then(|(_, v)| v.parse().ok())
            {
                node.pid = pid;
                return Ok(node);
            }
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(data.join("redis.log")).unwrap_or_default();
            return Err(format!("redis-server on port {port} did not start: {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The server binary and a fresh data directory; `Err(why)` when either is missing (the caller
/// skips, which fails under `CI=true`).
fn prepare() -> Result<(PathBuf, tempfile::TempDir), String> {
    let bin = server_binary();
    if !bin.exists() {
        return Err(format!("{} is not installed", bin.display()));
    }
    let dir = tempfile::Builder::new()
        .prefix("kvsqlite-redis-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    Ok((bin, dir))
}

impl Cluster {
    /// Starts 3 masters and 3 replicas and waits until every node reports `cluster_state:ok`
    /// with all 16384 slots assigned. `Err(why)` when `redis-server` is missing outside CI; a
    /// panic under `CI=true` or when a present server fails to form a cluster.
    pub fn start() -> Result<Cluster, String> {
        let (bin, dir) = prepare()?;
        let mut ports = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let p = free_port_pair(&ports);
            ports.push(p);
            nodes.push(start_node(&bin, dir.path(), p, true).unwrap_or_else(|e| panic!("{e}")));
        }
        let cluster = Cluster { nodes, dir };
        cluster.create();
        Ok(cluster)
    }

    /// Assigns the slots to the first three nodes and makes node `i + 3` replicate node `i`,
    /// with plain commands (no `redis-cli`), then waits for the cluster to agree.
    fn create(&self) {
        let p: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        for &port in &p[1..] {
            text(p[0], &["CLUSTER", "MEET", "127.0.0.1", &port.to_string()])
                .unwrap_or_else(|e| panic!("CLUSTER MEET: {e}"));
        }
        let ranges = [(0u16, 5460u16), (5461, 10922), (10923, 16383)];
        for (i, (a, b)) in ranges.iter().enumerate() {
            text(
                p[i],
                &["CLUSTER", "ADDSLOTSRANGE", &a.to_string(), &b.to_string()],
            )
            .unwrap_or_else(|e| panic!("ADDSLOTSRANGE: {e}"));
        }
        let ids: Vec<String> = p
            .iter()
            .map(|&port| text(port, &["CLUSTER", "MYID"]).expect("CLUSTER MYID"))
            .collect();
        // A replica can only be attached once it knows its master.
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..3 {
            loop {
                match text(p[i + 3], &["CLUSTER", "REPLICATE", &ids[i]]) {
                    Ok(_) => break,
                    Err(e) if Instant::now() > deadline => panic!("CLUSTER REPLICATE: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        self.wait_until_ok(Duration::from_secs(60));
        // Replicas in sync (so a failover test starts from a replicated state).
        for i in 0..3 {
            loop {
                let up = info(p[i + 3], "replication")
                    .iter()
                    .any(|(k, v)| k == "master_link_status" && v == "up");
                if up {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replica {} never synced",
                    p[i + 3]
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Waits until every live node says `cluster_state:ok` and sees all slots assigned.
    pub fn wait_until_ok(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.nodes.iter().filter(|n| n.pid != 0).all(|n| {
                let info = text(n.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_slots_assigned:16384")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seed URL of the cluster: `redis-cluster://` with every node, then `query` if any.
    pub fn url(&self, query: &str) -> String {
        let nodes: Vec<String> = self.nodes.iter().map(|n| n.addr()).collect();
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("redis-cluster://{}{q}", nodes.join(","))
    }

    /// The node listening on `addr` (`127.0.0.1:PORT`).
    pub fn node(&mut self, addr: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.addr() == addr)
            .unwrap_or_else(|| panic!("no node {addr}"))
    }

    /// Starts the node on `addr` again (after [`kill9`]) on its old port, data directory and
    /// cluster config: it rejoins the cluster, as a replica if it was failed over.
    pub fn restart(&mut self, addr: &str) {
        let dir = self.dir.path().to_path_buf();
        let node = self.node(addr);
        assert_eq!(node.pid, 0, "{addr} is still running");
        *node =
            start_node(&server_binary(), &dir, node.port, true).unwrap_or_else(|e| panic!("{e}"));
    }

    /// True when the node on `port` reports `role:master`.
    pub fn is_master(port: u16) -> bool {
        info(port, "replication")
            .iter()
            .any(|(k, v)| k == "role" && v == "master")
    }

    /// The ports of the nodes that are masters now.
    pub fn master_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.pid != 0)
            .filter(|n| Cluster::is_master(n.port))
            .map(|n| n.port)
            .collect()
    }
}

/// One plain (non-cluster) `redis-server`, for `redis://` URLs.
pub struct Single {
    /// The server.
    pub node: Node,
    /// Keeps the data directory until the server drops.
    pub dir: tempfile::TempDir,
}

impl Single {
    /// Starts one server; the same skip and CI rules as [`Cluster::start`].
    pub fn start() -> Result<Single, String> {
        let (bin, dir) = prepare()?;
        let port = free_port_pair(&[]);
        let node = start_node(&bin, dir.path(), port, false)?;
        Ok(Single { node, dir })
    }

    /// `redis://127.0.0.1:PORT`, then `query` if any.
    pub fn url(&self, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        format!("redis://{}{q}", self.node.addr())
    }
}

/// The single server every test of this test binary shares, started on first use.
pub fn shared_single() -> Option<&'static Single> {
    static SINGLE: OnceLock<Result<Single, String>> = OnceLock::new();
    match SINGLE.get_or_init(Single::start) {
        Ok(s) => Some(s),
        Err(why) => {
            skipped(&format!("redis unavailable: {why}"));
            None
        }
    }
}

/// Kills a node and marks it dead (its `pid` becomes 0).
pub fn kill9(node: &mut Node) {
    node.kill9();
    node.pid = 0;
}

/// The skip rule (`kvsqlite::testkit::skip`): fails the test under `CI=true`, whatever kept
/// the servers from starting; otherwise prints `SKIPPED: WHY` where `cargo test` shows it.
pub fn skipped(why: &str) {
    kvsqlite::testkit::skip(why);
}

/// The cluster every test of this test binary shares, started on first use; `None` after
/// printing `SKIPPED: redis-cluster unavailable: …` when `redis-server` is missing (outside CI).
pub fn shared() -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(c) => Some(c),
        Err(why) => {
            skipped(&format!("redis-cluster unavailable: {why}"));
            None
        }
    }
}

//! A `kvsqlite serve` process for tests: started on an ephemeral port of 127.0.0.1 from the
//! built binary, talked to with a real HTTP client (`ureq`), stopped with SIGTERM or SIGKILL.
//! Also a strict checker of the Prometheus text format.
//!
//! Include it with `#[path = "common/serve.rs"] mod serve;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The admin token every test server gets (through `KVSQLITE_ADMIN_TOKEN`).
pub const ADMIN: &str = "test-admin-token-0123456789";

/// A running server.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin token.
    pub admin: String,
    agent: ureq::Agent,
    stderr: Option<std::thread::JoinHandle<String>>,
}

/// A host served in this process (`kvsqlite::host::serve_with`, any store and configuration)
/// on an ephemeral port of 127.0.0.1, on a runtime of its own; shut down gracefully (waiting
/// at most 60 s) when dropped.
pub struct InProcessHost {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client ([`agent`]).
    pub agent: ureq::Agent,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessHost {
    /// Serves `config`, as a member of the cluster `cluster` makes of the host's base URL when
    /// it makes one. A host that fails panics its task (the test sees its requests fail).
    pub fn start(
        config: kvsqlite::host::HostConfig,
        cluster: impl FnOnce(&str) -> Option<kvsqlite::host::cluster::ClusterConfig>,
    ) -> InProcessHost {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let cluster = cluster(&base);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(async move {
            let stopped = async move {
                let _ = rx.await;
            };
            if let Err(e) = kvsqlite::host::serve_with(listener, config, cluster, stopped).await {
                panic!("the host failed: {e}");
            }
        });
        InProcessHost {
            base,
            agent: agent(),
            rt,
            stop: Some(tx),
            done: Some(done),
        }
    }
}

impl Drop for InProcessHost {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(60), done).await });
        }
    }
}

/// An HTTP client that returns every status as a response and gives up after 60 s.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Server {
    /// Starts `kvsqlite --kv KV serve --listen 127.0.0.1:0 ARGS…` with the admin token [`ADMIN`].
    pub fn start(kv: &str, args: &[&str]) -> Server {
        Self::start_env(kv, args, Some(ADMIN))
    }

    /// Like [`Server::start`]; `admin: None` leaves `KVSQLITE_ADMIN_TOKEN` unset, and the
    /// token printed at start is used.
    pub fn start_env(kv: &str, args: &[&str], admin: Option<&str>) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvsqlite"));
        cmd.args(["--kv", kv, "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("KVSQLITE_KV")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match admin {
            Some(t) => cmd.env("KVSQLITE_ADMIN_TOKEN", t),
            None => cmd.env_remove("KVSQLITE_ADMIN_TOKEN"),
        };
        let mut child = cmd.spawn().expect("spawn kvsqlite serve");
        let mut stderr = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let mut base = None;
        let mut token = admin.map(String::from);
        while base.is_none() || token.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "kvsqlite serve ended before it listened: {}",
                    stderr.join().unwrap_or_default()
                );
            };
            if let Some(a) = line.strip_prefix("listening on ") {
                base = Some(format!("http://{a}"));
            } else if let Some(t) = line.strip_prefix("admin token: ") {
                token = Some(t.to_string());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base: base.unwrap_or_default(),
            admin: token.unwrap_or_default(),
            agent: agent(),
            stderr: Some(stderr),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// POSTs `body` to `path` with an optional bearer token: (status, body).
    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        post(&self.agent, &self.base, path, token, body)
    }

    /// GETs `path` with an optional bearer token: (status, body).
    pub fn get(&self, path: &str, token: Option<&str>) -> (u16, String) {
        get(&self.agent, &self.base, path, token)
    }

    /// POSTs `body` as JSON with the admin token: (status, the answer as JSON, or `Null` when
    /// it is not JSON).
    pub fn admin_post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (st, text) = self.post(path, Some(&self.admin), &body.to_string());
        (st, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// GETs `path` with the admin token; it must answer 200 with JSON.
    pub fn admin_get(&self, path: &str) -> Value {
        let (st, text) = self.get(path, Some(&self.admin));
        assert_eq!(st, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    /// DELETEs `path` with the admin token: (status, body); status 0 with the error's text when
    /// there was no answer.
    pub fn admin_delete(&self, path: &str) -> (u16, String) {
        match self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.admin))
            .call()
        {
            Ok(r) => {
                let st = r.status().as_u16();
                (st, r.into_body().read_to_string().unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// The inspector tests' actor `shop`: a table `items(n, label)` of 45 rows `item-00` …
    /// `item-44`, one more row `999` labelled `hostile` (markup the pages must escape), and a
    /// query whose column holds `hostile_query`.
    pub fn seed_shop(&self, hostile: &str, hostile_query: &str) {
        self.sql(
            "shop",
            "CREATE TABLE items(n INTEGER, label TEXT)",
            serde_json::json!([]),
        );
        for i in 0..45 {
            self.sql(
                "shop",
                "INSERT INTO items VALUES (?, ?)",
                serde_json::json!([i, format!("item-{i:02}")]),
            );
        }
        self.sql(
            "shop",
            "INSERT INTO items VALUES (?, ?)",
            serde_json::json!([999, hostile]),
        );
        let sql = format!("SELECT '{hostile_query}' AS x, count(*) FROM items");
        self.sql("shop", &sql, serde_json::json!([]));
    }

    /// Runs one statement on `actor` as admin; panics unless it answers 200.
    pub fn sql(&self, actor: &str, sql: &str, params: Value) -> Value {
        let body = serde_json::json!({ "sql": sql, "params": params }).to_string();
        let (status, text) = self.post(&format!("/actors/{actor}/query"), Some(&self.admin), &body);
        assert_eq!(status, 200, "{sql}: {text}");
        serde_json::from_str(&text).expect("JSON answer")
    }

    /// The host's `/metrics`, checked strictly and parsed: `name{labels}` → value.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let (status, text) = self.get("/metrics", None);
        assert_eq!(status, 200);
        parse_prometheus(&text).unwrap_or_else(|e| panic!("bad Prometheus text: {e}\n{text}"))
    }

    /// Sends SIGTERM and waits (at most 60 s) for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        signal(self.pid(), "-TERM");
        let status = wait_bounded(&mut self.child, Duration::from_secs(60));
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, err)
    }

    /// Sends SIGTERM without waiting.
    pub fn send_term(&self) {
        signal(self.pid(), "-TERM");
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits (at most 60 s) for the exit: the status and what the process wrote to stderr.
    pub fn wait_exit(mut self) -> (ExitStatus, String) {
        let status = wait_bounded(&mut self.child, Duration::from_secs(60));
        let err = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, err)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill9(mut self) {
        signal(self.pid(), "-KILL");
        let _ = wait_bounded(&mut self.child, Duration::from_secs(60));
    }

    /// The server's peak resident set (VmHWM) in KiB.
    pub fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM line")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the server did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POST with an agent of one's own (for client threads).
pub fn post(
    agent: &ureq::Agent,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut req = agent.post(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    match req.send(body) {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (
                status,
                resp.into_body().read_to_string().unwrap_or_default(),
            )
        }
        Err(e) => (0, e.to_string()),
    }
}

/// GET with an agent of one's own.
pub fn get(agent: &ureq::Agent, base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = agent.get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    match req.call() {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (
                status,
                resp.into_body().read_to_string().unwrap_or_default(),
            )
        }
        Err(e) => (0, e.to_string()),
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

/// Parses `{k="v",…}`; returns the labels in order.
fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or(format!("bad label in {s:?}"))?;
        if !valid_name(name) || name.contains(':') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err(format!("bad escape in {s:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in {s:?}")),
            }
        };
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after a label in {s:?}"));
        }
    }
    Ok(out)
}

/// A strict check of the Prometheus text format 0.0.4: every line is a `# HELP`, a `# TYPE`
/// (once per family, before its samples, a known type) or a sample `name{labels} value` of a
/// declared family; histograms have cumulative buckets ending with `le="+Inf"` equal to
/// `_count`, plus `_sum`. Returns `name{labels}` → value.
pub fn parse_prometheus(text: &str) -> Result<BTreeMap<String, f64>, String> {
    if !text.ends_with('\n') {
        return Err("the text does not end with a newline".into());
    }
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts
                .next()
                .ok_or(format!("comment without a name: {line:?}"))?;
            let arg = parts
                .next()
                .ok_or(format!("comment without text: {line:?}"))?;
            if !valid_name(name) {
                return Err(format!("bad metric name {name:?}"));
            }
            match kw {
                "HELP" => {}
                "TYPE" => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg) {
                        return Err(format!("unknown type {arg:?}"));
                    }
                    if types.insert(name.to_string(), arg.to_string()).is_some() {
                        return Err(format!("TYPE of {name} given twice"));
                    }
                }
                _ => return Err(format!("unknown comment {line:?}")),
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            return Err(format!("unexpected line {line:?}"));
        }
        let (key, value) = line.rsplit_once(' ').ok_or(format!("no value: {line:?}"))?;
        let value = parse_value(value).ok_or(format!("bad value in {line:?}"))?;
        let (name, labels) = match key.split_once('{') {
            Some((n, l)) => (
                n,
                parse_labels(l.strip_suffix('}').ok_or(format!("bad labels: {line:?}"))?)?,
            ),
            None => (key, Vec::new()),
        };
        if !valid_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let ty = types
            .get(family)
            .ok_or(format!("sample {name} before its TYPE"))?;
        if ty == "histogram" {
            if name.ends_with("_bucket") {
                let le = labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or(format!("bucket without le: {line:?}"))?;
                let le = parse_value(&le.1).ok_or(format!("bad le in {line:?}"))?;
                // One series per label set other than `le`.
                let rest: Vec<String> = labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect();
                let series = if rest.is_empty() {
                    family.to_string()
                } else {
                    format!("{family}{{{}}}", rest.join(","))
                };
                buckets.entry(series).or_default().push((le, value));
            } else if name == family {
                return Err(format!("histogram sample without a suffix: {line:?}"));
            }
        } else if ty == "counter" && value < 0.0 {
            return Err(format!("negative counter: {line:?}"));
        }
        if samples.insert(key.to_string(), value).is_some() {
            return Err(format!("sample {key} given twice"));
        }
    }
    for (series, b) in &buckets {
        if !b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1) {
            return Err(format!("{series}: buckets not increasing and cumulative"));
        }
        let last = b.last().ok_or("no buckets")?;
        if last.0 != f64::INFINITY {
            return Err(format!("{series}: no le=\"+Inf\" bucket"));
        }
        let (family, labels) = match series.split_once('{') {
            Some((f, l)) => (f, format!("{{{l}")),
            None => (series.as_str(), String::new()),
        };
        if samples.get(&format!("{family}_count{labels}")) != Some(&last.1) {
            return Err(format!("{series}: _count differs from the +Inf bucket"));
        }
        if !samples.contains_key(&format!("{family}_sum{labels}")) {
            return Err(format!("{series}: no _sum"));
        }
    }
    Ok(samples)
}

//! Routing by hash slot: the slot map, one small pool of connections per node, and the one
//! exchange a call makes, with the retries that are safe.
//!
//! Why it exists: the `redis` crate's cluster client retries on its own (a write could be sent
//! twice) and cannot send a script and `WAIT` to one node in one exchange. This module does both
//! itself: it reads `CLUSTER SLOTS`, sends each call's pipeline to the master of the actor's slot
//! over one connection, follows `MOVED` and `ASK`, and retries only what is known not to have
//! run (a redirect, `CLUSTERDOWN`/`TRYAGAIN`/`LOADING`/`MASTERDOWN`/`READONLY`, a refused
//! connection) or what changes nothing (a read). A write whose connection failed after it was
//! sent is never retried: its outcome is unknown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use redis::{ConnectionLike, Value};

use super::RedisOptions;
use crate::kv::KvError;

pub(super) const BACKEND: &str = "redis";

/// Hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Most attempts of one call (redirects and safe retries included); the retry window
/// ([`RedisOptions::retry_for`]) bounds them in time too.
const MAX_ATTEMPTS: u32 = 64;

/// Idle connections kept per node.
const MAX_IDLE: usize = 32;

/// The hash slot of a key whose hash tag is `tag`: CRC16 (XMODEM) modulo 16384, as Redis
/// Cluster computes it.
pub fn slot_of(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in tag {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

/// Whether the store follows a cluster's slot map or talks to one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `redis://HOST:PORT`: every slot lives on the one server.
    Single,
    /// `redis-cluster://…`: the slot map comes from `CLUSTER SLOTS`.
    Cluster,
}

/// Which master serves each slot range.
#[derive(Clone, Debug, Default)]
struct SlotMap {
    /// `(first, last, "host:port")`, sorted by `first`.
    ranges: Vec<(u16, u16, Arc<str>)>,
}

impl SlotMap {
    fn node_for(&self, slot: u16) -> Option<Arc<str>> {
        let i = self.ranges.partition_point(|r| r.1 < slot);
        self.ranges
            .get(i)
            .filter(|r| r.0 <= slot && slot <= r.1)
            .map(|r| r.2.clone())
    }

    fn masters(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.ranges.iter().map(|r| r.2.clone()).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Points one slot at `node` (after a `MOVED`), until the next full refresh.
    fn set(&mut self, slot: u16, node: Arc<str>) {
        let mut ranges = Vec::with_capacity(self.ranges.len() + 2);
        for (a, b, n) in self.ranges.drain(..) {
            if a <= slot && slot <= b {
                if a < slot {
                    ranges.push((a, slot - 1, n.clone()));
                }
                if slot < b {
                    ranges.push((slot + 1, b, n));
                }
            } else {
                ranges.push((a, b, n));
            }
        }
        ranges.push((slot, slot, node));
        ranges.sort_by_key(|r| r.0);
        self.ranges = ranges;
    }
}

/// The idle connections to one node.
type NodePool = Arc<Mutex<Vec<redis::Connection>>>;

/// How one exchange ended.
pub(super) enum Outcome {
    /// The script's reply and, when `WAIT` was sent, how many replicas acknowledged.
    Done(Value, Option<i64>),
}

/// The connections and the slot map of one store.
pub(super) struct Router {
    mode: Mode,
    seeds: Vec<Arc<str>>,
    userinfo: Option<String>,
    options: RedisOptions,
    map: RwLock<SlotMap>,
    /// When the map was last refreshed (refreshes closer together than this are skipped).
    refreshed: Mutex<Option<Instant>>,
    pools: Mutex<HashMap<Arc<str>, NodePool>>,
    /// Scripts loaded on every new connection: `(sha1, source)`.
    scripts: Vec<(String, &'static str)>,
    pub(super) exchanges: AtomicU64,
    pub(super) connections_opened: AtomicU64,
    pub(super) refreshes: AtomicU64,
}

/// One request: the script to call, its two keys, its arguments, and whether it writes.
pub(super) struct Request<'a> {
    pub slot: u16,
    pub sha: &'a str,
    pub source: &'a str,
    pub keys: [&'a [u8]; 2],
    pub args: &'a [Vec<u8>],
    pub write: bool,
}

impl Router {
    pub(super) fn new(
        mode: Mode,
        seeds: Vec<String>,
        userinfo: Option<String>,
        options: RedisOptions,
        scripts: Vec<(String, &'static str)>,
    ) -> Router {
        let seeds: Vec<Arc<str>> = seeds.into_iter().map(Arc::from).collect();
        let mut map = SlotMap::default();
        if let (Mode::Single, Some(seed)) = (mode, seeds.first()) {
            map.ranges.push((0, SLOTS - 1, seed.clone()));
        }
        Router {
            mode,
            seeds,
            userinfo,
            options,
            map: RwLock::new(map),
            refreshed: Mutex::new(None),
            pools: Mutex::new(HashMap::new()),
            scripts,
            exchanges: AtomicU64::new(0),
            connections_opened: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
        }
    }

    /// The master currently mapped to `slot`, if the map knows one.
    pub(super) fn node_for(&self, slot: u16) -> Option<String> {
        self.map.read().node_for(slot).map(|n| n.to_string())
    }

    /// The masters of the current slot map.
    pub(super) fn masters(&self) -> Vec<String> {
        self.map
            .read()
            .masters()
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    fn unavailable(&self, message: String) -> KvError {
        KvError::Unavailable {
            backend: BACKEND,
            message,
        }
    }

    fn node_url(&self, node: &str) -> String {
        // CLUSTER SLOTS gives IPv6 addresses bare; a URL needs them in brackets.
        let addr = match node.rsplit_once(':') {
            Some((host, port)) if host.contains(':') && !host.starts_with('[') => {
                format!("[{host}]:{port}")
            }
            _ => node.to_string(),
        };
        match &self.userinfo {
            Some(u) => format!("redis://{u}@{addr}"),
            None => format!("redis://{addr}"),
        }
    }

    /// Opens a connection to `node` with the store's timeouts and loads the scripts on it.
    fn connect(&self, node: &str) -> Result<redis::Connection, String> {
        let client = redis::Client::open(self.node_url(node)).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_connection_with_timeout(self.options.timeout)
            .map_err(|e| format!("cannot connect to {node}: {e}"))?;
        let io = self.options.timeout + self.options.wait_timeout;
        conn.set_read_timeout(Some(io)).map_err(|e| e.to_string())?;
        conn.set_write_timeout(Some(io))
            .map_err(|e| e.to_string())?;
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        let mut pipe = redis::pipe();
        for (_, source) in &self.scripts {
            pipe.cmd("SCRIPT").arg("LOAD").arg(*source);
        }
        let _: Vec<Value> = pipe
            .query(&mut conn)
            .map_err(|e| format!("loading the scripts on {node}: {e}"))?;
        Ok(conn)
    }

    fn pool(&self, node: &Arc<str>) -> NodePool {
        self.pools.lock().entry(node.clone()).or_default().clone()
    }

    /// Drops every idle connection to `node` (after one of them failed, the rest are suspect).
    fn forget_node(&self, node: &Arc<str>) {
        self.pool(node).lock().clear();
    }

    /// Reads the slot map again from the cluster (no-op for a single server, and skipped when
    /// another thread refreshed it within the last 50 ms).
    pub(super) fn refresh(&self) -> Result<(), KvError> {
        if self.mode == Mode::Single {
            return Ok(());
        }
        let mut last = self.refreshed.lock();
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(50)) {
            return Ok(());
        }
        let mut candidates = self.map.read().masters();
        candidates.extend(self.seeds.iter().cloned());
        let mut seen = Vec::new();
        let mut errors = Vec::new();
        for node in candidates {
            if seen.contains(&node) {
                continue;
            }
            seen.push(node.clone());
            match self.read_slots(&node) {
                Ok(map) if !map.ranges.is_empty() => {
                    *self.map.write() = map;
                    *last = Some(Instant::now());
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(_) => errors.push(format!("{node}: CLUSTER SLOTS is empty")),
                Err(e) => errors.push(e),
            }
        }
        *last = Some(Instant::now());
        Err(self.unavailable(format!(
            "no node answered CLUSTER SLOTS ({})",
            errors.join("; ")
        )))
    }

    fn read_slots(&self, node: &Arc<str>) -> Result<SlotMap, String> {
        let client = redis::Client::open(self.node_url(node)).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_connection_with_timeout(self.options.timeout)
            .map_err(|e| format!("{node}: {e}"))?;
        conn.set_read_timeout(Some(self.options.timeout))
            .map_err(|e| e.to_string())?;
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut conn)
            .map_err(|e| format!("{node}: CLUSTER SLOTS: {e}"))?;
        let default_host = node.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
        parse_slots(&reply, default_host).map_err(|e| format!("{node}: {e}"))
    }

    /// Sends `req` to the master of its slot as one exchange (`ASKING` first after an `ASK`
    /// redirect, `WAIT` after it when the store waits for replicas), following redirects and
    /// retrying only what is safe, within the attempt and time bounds.
    pub(super) fn call(&self, req: &Request<'_>) -> Result<Outcome, KvError> {
        let started = Instant::now();
        let mut ask: Option<Arc<str>> = None;
        let mut use_eval = false;
        let mut last_problem = String::new();
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 && started.elapsed() >= self.options.retry_for {
                break;
            }
            let node = match ask.take() {
                Some(n) => Some((n, true)),
                None => self.map.read().node_for(req.slot).map(|n| (n, false)),
            };
            let Some((node, asking)) = node else {
                last_problem = format!("no node serves slot {}", req.slot);
                self.pause(attempt);
                let _ = self.refresh();
                continue;
            };
            let pool = self.pool(&node);
            let idle = pool.lock().pop();
            let mut conn = match idle {
                Some(c) => c,
                None => match self.connect(&node) {
                    Ok(c) => c,
                    Err(e) => {
                        // Nothing was sent: retrying is safe, after the map may have changed.
                        last_problem = e;
                        self.pause(attempt);
                        let _ = self.refresh();
                        continue;
                    }
                },
            };
            let mut pipe = redis::pipe();
            if asking {
                pipe.cmd("ASKING");
            }
            if use_eval {
                pipe.cmd("EVAL").arg(req.source);
            } else {
                pipe.cmd("EVALSHA").arg(req.sha);
            }
            pipe.arg(2).arg(req.keys[0]).arg(req.keys[1]);
            for a in req.args {
                pipe.arg(a.as_slice());
            }
            let waits = req.write && self.options.wait_replicas > 0;
            if waits {
                pipe.cmd("WAIT")
                    .arg(self.options.wait_replicas)
                    .arg(duration_ms(self.options.wait_timeout));
            }
            let count = 1 + usize::from(asking) + usize::from(waits);
            self.exchanges.fetch_add(1, Ordering::Relaxed);
            let replies = match conn.req_packed_commands(&pipe.get_packed_pipeline(), 0, count) {
                Ok(r) => r,
                Err(e) => {
                    drop(conn);
                    self.forget_node(&node);
                    if req.write {
                        return Err(self.unavailable(format!(
                            "connection to {node} failed after the write was sent, so its \
                             outcome is unknown (it applied completely or not at all; not \
                             retried): {e}"
                        )));
                    }
                    last_problem = format!("{node}: {e}");
                    self.pause(attempt);
                    let _ = self.refresh();
                    continue;
                }
            };
            let mut replies = replies.into_iter().skip(usize::from(asking));
            let script = replies.next().unwrap_or(Value::Nil);
            let acked = match replies.next() {
                Some(Value::Int(n)) => Some(n),
                Some(other) if waits => {
                    return Err(surprise(format!("WAIT answered {other:?}")));
                }
                _ => None,
            };
            match script {
                Value::ServerError(err) => {
                    let code = err.code().to_string();
                    let detail = err.details().unwrap_or("").to_string();
                    // Every error below is returned before the script runs: nothing was
                    // written, so the call can go again.
                    match code.as_str() {
                        "NOSCRIPT" if !use_eval => {
                            self.keep(&pool, conn);
                            use_eval = true;
                            last_problem = format!("{node}: NOSCRIPT");
                            continue;
                        }
                        "MOVED" | "ASK" => {
                            let target = parse_redirect(&detail).ok_or_else(|| {
                                surprise(format!("{code} without a node: {detail:?}"))
                            })?;
                            self.keep(&pool, conn);
                            last_problem = format!("{node}: {code} {detail}");
                            let target: Arc<str> = Arc::from(target.as_str());
                            if code == "ASK" {
                                ask = Some(target);
                            } else {
                                // Re-read the map for the other slots, then trust the redirect
                                // for this one (a lagging node may still name the old owner).
                                let _ = self.refresh();
                                self.map.write().set(req.slot, target);
                            }
                            continue;
                        }
                        "CLUSTERDOWN" | "TRYAGAIN" | "LOADING" | "MASTERDOWN" | "READONLY" => {
                            self.keep(&pool, conn);
                            last_problem = format!("{node}: {code} {detail}");
                            self.pause(attempt);
                            let _ = self.refresh();
                            continue;
                        }
                        _ => {
                            self.keep(&pool, conn);
                            return Err(KvError::Backend {
                                backend: BACKEND,
                                message: format!("{node} answered {code} {detail}"),
                            });
                        }
                    }
                }
                value => {
                    self.keep(&pool, conn);
                    return Ok(Outcome::Done(value, acked));
                }
            }
        }
        Err(self.unavailable(format!(
            "slot {} not served after {} ms (gave up; nothing was written): {last_problem}",
            req.slot,
            started.elapsed().as_millis()
        )))
    }

    fn keep(&self, pool: &Mutex<Vec<redis::Connection>>, conn: redis::Connection) {
        let mut idle = pool.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// Waits before a retry: 20 ms, growing to 250 ms.
    fn pause(&self, attempt: u32) {
        std::thread::sleep(Duration::from_millis((20 * u64::from(attempt)).min(250)));
    }
}

/// Milliseconds for a command argument (at least 1, so `WAIT` never blocks forever).
pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub(super) fn surprise(message: String) -> KvError {
    KvError::Backend {
        backend: BACKEND,
        message: format!("unexpected answer from the server: {message}"),
    }
}

/// `"3999 127.0.0.1:6381"` → `"127.0.0.1:6381"`.
fn parse_redirect(detail: &str) -> Option<String> {
    let mut parts = detail.split_whitespace();
    parts.next()?.parse::<u16>().ok()?;
    let node = parts.next()?;
    node.rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
        .map(|_| node.to_string())
}

/// Parses a `CLUSTER SLOTS` reply: `[[first, last, [host, port, id…], replicas…], …]`. An
/// empty host means the node that answered.
fn parse_slots(reply: &Value, default_host: &str) -> Result<SlotMap, String> {
    let Value::Array(entries) = reply else {
        return Err(format!("CLUSTER SLOTS answered {reply:?}"));
    };
    let mut map = SlotMap::default();
    for entry in entries {
        let bad = || format!("malformed CLUSTER SLOTS entry {entry:?}");
        let Value::Array(fields) = entry else {
            return Err(bad());
        };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return Err(bad());
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err(bad()),
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return Err(bad());
        };
        let host = if host.is_empty() || host == "?" {
            default_host.to_string()
        } else {
            host
        };
        let (Ok(first), Ok(last), Ok(port)) = (
            u16::try_from(*first),
            u16::try_from(*last),
            u16::try_from(*port),
        ) else {
            return Err(bad());
        };
        if first > last || last >= SLOTS {
            return Err(bad());
        }
        map.ranges
            .push((first, last, Arc::from(format!("{host}:{port}").as_str())));
    }
    map.ranges.sort_by_key(|r| r.0);
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"123456789"), 0x31C3 % SLOTS);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b""), 0);
    }

    #[test]
    fn slot_map_lookup_and_moved() {
        let mut m = SlotMap::default();
        m.ranges.push((0, 5460, Arc::from("a:1")));
        m.ranges.push((5461, 10922, Arc::from("b:2")));
        m.ranges.push((10923, 16383, Arc::from("c:3")));
        assert_eq!(m.node_for(0).as_deref(), Some("a:1"));
        assert_eq!(m.node_for(5461).as_deref(), Some("b:2"));
        assert_eq!(m.node_for(16383).as_deref(), Some("c:3"));
        m.set(5461, Arc::from("d:4"));
        assert_eq!(m.node_for(5461).as_deref(), Some("d:4"));
        assert_eq!(m.node_for(5462).as_deref(), Some("b:2"));
        assert_eq!(m.node_for(5460).as_deref(), Some("a:1"));
        assert_eq!(m.masters().len(), 4);
        assert_eq!(
            parse_redirect("3999 127.0.0.1:6381").as_deref(),
            Some("127.0.0.1:6381")
        );
        assert_eq!(parse_redirect("x 127.0.0.1:6381"), None);
        assert_eq!(parse_redirect("1 nohost"), None);
    }

    #[test]
    fn malformed_cluster_slots_are_errors() {
        assert!(parse_slots(&Value::Int(1), "h").is_err());
        assert!(parse_slots(&Value::Array(vec![Value::Int(1)]), "h").is_err());
        let ok = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![Value::BulkString(b"".to_vec()), Value::Int(7000)]),
        ])]);
        assert_eq!(
            parse_slots(&ok, "10.0.0.1")
                .unwrap()
                .node_for(77)
                .as_deref(),
            Some("10.0.0.1:7000")
        );
    }
}

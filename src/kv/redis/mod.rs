//! The `redis` backend: every actor's namespace in one hash slot of a Redis Cluster (or on one
//! Redis server), each trait call one atomic script call.
//!
//! Why it exists: a real distributed store that shards by actor and runs on this machine, with
//! replicas that take over when a master dies. All of an actor's keys share the hash tag of its
//! id, so they live in one slot on one master, where a Lua script is atomic: every call stays
//! one round trip and every write stays all-or-nothing.
//!
//! # Layout
//!
//! For actor `A` and prefix `P` (default [`DEFAULT_PREFIX`]), with `T` = `A` where `%`, `{` and
//! `}` are written `%25`, `%7B` and `%7D` (so the hash tag is exactly the escaped id, and two ids
//! never share keys):
//!
//! - `P{T}:v` — a hash: field = KV key, value = KV value;
//! - `P{T}:k` — a sorted set of the KV keys, all with score 0, so `ZRANGEBYLEX` lists them in
//!   plain byte order (memcmp, shorter first), the order the trait promises.
//!
//! Both keys carry the tag `{T}`, so they are in slot `CRC16(T) mod 16384`. The hash answers a
//! get in O(1) per key; the sorted set answers a range or prefix in O(log n + page). (One sorted
//! set holding key and value in its member cannot do both: a get would be a range scan.)
//!
//! # One exchange per call
//!
//! A get, list or batch read is one `EVALSHA` of [`scripts::READ_SCRIPT`]; a write or range
//! delete one `EVALSHA` of [`scripts::WRITE_SCRIPT`], followed in the same pipeline by
//! `WAIT N TIMEOUT` when the URL says `wait=N`. The scripts are loaded (`SCRIPT LOAD`) on every
//! new connection; a `NOSCRIPT` answer (a server that restarted or flushed its scripts) makes the
//! call go again with `EVAL` on the same connection. A call with nothing to do (an empty get or
//! batch read, a write with no entries and no preconditions, an empty range) sends nothing.
//!
//! # Failures
//!
//! See [`cluster`]: redirects and refusals that mean the script did not run are followed or
//! retried for at most [`RedisOptions::retry_for`]; a read whose connection fails is retried; a
//! write whose connection fails after sending is [`KvError::Unavailable`] saying its outcome is
//! unknown, never retried. A write that fewer than `N` replicas acknowledged within the wait
//! timeout is also [`KvError::Unavailable`]: it is applied on the master but may be lost if that
//! master fails before a replica has it.

pub mod cluster;
pub mod scripts;

use std::sync::atomic::Ordering;
use std::time::Duration;

use cluster::{Mode, Outcome, Request, Router, BACKEND};
use scripts::{READ_SCRIPT, WRITE_SCRIPT};

use super::url::redact_password as redact;
use super::{
    check_actor_id, check_batch_read, range_is_empty, Key, KvError, KvLimits, KvStore, ListPage,
    ListRequest, ReadOp, ReadResult, Value, WriteBatch,
};

/// The key prefix used when the URL names none.
pub const DEFAULT_PREFIX: &str = "kvsqlite:";

/// How a [`RedisStore`] behaves beyond its addresses. Every field can be set in the URL query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// `prefix=`: put before every Redis key (no `{` or `}`; default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// `wait=N`: a write is acknowledged only after `N` replicas have it (`WAIT N` in the same
    /// exchange). Default 0: acknowledged when the master has applied it.
    pub wait_replicas: u32,
    /// `wait_timeout_ms=`: how long `WAIT` waits for the replicas (default 1000 ms).
    pub wait_timeout: Duration,
    /// `timeout_ms=`: connecting, and waiting for an answer beyond the `WAIT` time
    /// (default 5000 ms).
    pub timeout: Duration,
    /// `retry_ms=`: how long a call keeps retrying what is safe to retry (redirects, a cluster
    /// electing a new master, a refused connection, a failed read) before it is
    /// [`KvError::Unavailable`] (default 5000 ms).
    pub retry_for: Duration,
    /// Limits enforced before anything is sent.
    pub limits: KvLimits,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(1000),
            timeout: Duration::from_millis(5000),
            retry_for: Duration::from_millis(5000),
            limits: KvLimits::default(),
        }
    }
}

/// A [`KvStore`] on a Redis Cluster or one Redis server. Thread-safe; share it with `Arc`.
pub struct RedisStore {
    options: RedisOptions,
    router: Router,
    read_sha: String,
    write_sha: String,
}

impl RedisStore {
    /// Opens `redis://HOST:PORT` (one server) or `redis-cluster://HOST:PORT[,HOST:PORT…]` (seed
    /// nodes of a cluster), with options from the URL query over the defaults.
    pub fn connect(url: &str) -> Result<Self, KvError> {
        Self::connect_with(url, RedisOptions::default())
    }

    /// Like [`RedisStore::connect`] with the given limits.
    pub fn connect_with_limits(url: &str, limits: KvLimits) -> Result<Self, KvError> {
        Self::connect_with(
            url,
            RedisOptions {
                limits,
                ..RedisOptions::default()
            },
        )
    }

    /// Opens the store with `options`, overridden by the URL's query. A cluster's slot map is
    /// read right away, so an unreachable cluster fails here ([`KvError::Unavailable`]); a
    /// single server is first contacted by the first call.
    pub fn connect_with(url: &str, mut options: RedisOptions) -> Result<Self, KvError> {
        let parsed = parse_url(url, &mut options)?;
        let read_sha = redis::Script::new(READ_SCRIPT).get_hash().to_string();
        let write_sha = redis::Script::new(WRITE_SCRIPT).get_hash().to_string();
        let router = Router::new(
            parsed.mode,
            parsed.nodes,
            parsed.userinfo,
            options.clone(),
            vec![
                (read_sha.clone(), READ_SCRIPT),
                (write_sha.clone(), WRITE_SCRIPT),
            ],
        );
        if parsed.mode == Mode::Cluster {
            router.refresh()?;
        }
        Ok(RedisStore {
            options,
            router,
            read_sha,
            write_sha,
        })
    }

    /// The options in force.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// Exchanges sent by trait calls so far: one per call that had something to do, plus one
    /// per redirect, safe retry or `NOSCRIPT` fallback.
    pub fn exchanges(&self) -> u64 {
        self.router.exchanges.load(Ordering::Relaxed)
    }

    /// Connections opened so far (each loads the two scripts once).
    pub fn connections_opened(&self) -> u64 {
        self.router.connections_opened.load(Ordering::Relaxed)
    }

    /// Times the slot map was read from the cluster.
    pub fn slot_map_refreshes(&self) -> u64 {
        self.router.refreshes.load(Ordering::Relaxed)
    }

    /// The Redis keys holding `actor`'s values and key index: `(hash, sorted set)`.
    pub fn redis_keys(&self, actor: &str) -> (Vec<u8>, Vec<u8>) {
        let tag = escape_actor(actor);
        let base = format!("{}{{{tag}}}", self.options.prefix);
        (
            format!("{base}:v").into_bytes(),
            format!("{base}:k").into_bytes(),
        )
    }

    /// The hash slot of `actor`'s keys.
    pub fn slot(&self, actor: &str) -> u16 {
        cluster::slot_of(escape_actor(actor).as_bytes())
    }

    /// The master (`host:port`) the slot map currently names for `actor`.
    pub fn node_for(&self, actor: &str) -> Option<String> {
        self.router.node_for(self.slot(actor))
    }

    /// The masters of the current slot map.
    pub fn masters(&self) -> Vec<String> {
        self.router.masters()
    }

    fn run(&self, actor: &str, write: bool, args: &[Vec<u8>]) -> Result<Outcome, KvError> {
        let (h, z) = self.redis_keys(actor);
        let (sha, source) = if write {
            (&self.write_sha, WRITE_SCRIPT)
        } else {
            (&self.read_sha, READ_SCRIPT)
        };
        self.router.call(&Request {
            slot: self.slot(actor),
            sha,
            source,
            keys: [&h, &z],
            args,
            write,
        })
    }

    fn read(&self, actor: &str, args: &[Vec<u8>]) -> Result<redis::Value, KvError> {
        let Outcome::Done(v, _) = self.run(actor, false, args)?;
        match v {
            redis::Value::Array(mut items) if items.len() == 1 => Ok(items.remove(0)),
            other => Err(cluster::surprise(format!(
                "the read script answered {other:?} to one op"
            ))),
        }
    }

    /// Runs the write script; `Ok(Some(i))` when precondition `i` was unmet.
    fn write_args(&self, actor: &str, args: &[Vec<u8>]) -> Result<Option<usize>, KvError> {
        let Outcome::Done(v, acked) = self.run(actor, true, args)?;
        let failed = match v {
            redis::Value::Int(-1) => None,
            redis::Value::Int(i) => Some(
                usize::try_from(i)
                    .map_err(|_| cluster::surprise(format!("the write script answered {i}")))?,
            ),
            other => {
                return Err(cluster::surprise(format!(
                    "the write script answered {other:?}"
                )))
            }
        };
        let want = i64::from(self.options.wait_replicas);
        if failed.is_none() && want > 0 {
            let got = acked.unwrap_or(0);
            if got < want {
                return Err(KvError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "the write was applied on the master of slot {} but only {got} of \
                         {want} replicas acknowledged it within {} ms; it may be lost if that \
                         master fails now",
                        self.slot(actor),
                        self.options.wait_timeout.as_millis()
                    ),
                });
            }
        }
        Ok(failed)
    }
}

/// The actor id as a hash tag: `%`, `{` and `}` escaped, so the tag is the whole id.
fn escape_actor(actor: &str) -> String {
    actor
        .replace('%', "%25")
        .replace('{', "%7B")
        .replace('}', "%7D")
}

fn count(n: usize) -> Vec<u8> {
    n.to_string().into_bytes()
}

impl KvStore for RedisStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn limits(&self) -> &KvLimits {
        &self.options.limits
    }

    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        check_actor_id(actor)?;
        self.options.limits.check_get(keys)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::with_capacity(keys.len() + 2);
        scripts::push_get(&mut args, keys);
        scripts::decode_get(self.read(actor, &args)?, keys.len())
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        check_actor_id(actor)?;
        let limit = self.options.limits.list_limit(req.limit)?;
        let (start, end) = req.range.bounds();
        if range_is_empty(&start, end.as_deref()) {
            return Ok(ListPage::default());
        }
        let mut args = Vec::with_capacity(5);
        scripts::push_list(&mut args, req, limit);
        scripts::decode_list(self.read(actor, &args)?)
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        if !batch.check_before_send(actor, &self.options.limits)? {
            return Ok(());
        }
        let mut args = Vec::with_capacity(
            4 + 3 * batch.preconditions.len() + batch.deletes.len() + 2 * batch.puts.len(),
        );
        args.push(count(batch.preconditions.len()));
        for p in &batch.preconditions {
            args.push(p.key.clone());
            match &p.expected {
                Some(v) => {
                    args.push(b"1".to_vec());
                    args.push(v.clone());
                }
                None => {
                    args.push(b"0".to_vec());
                    args.push(Vec::new());
                }
            }
        }
        args.push(count(batch.deletes.len()));
        args.extend(batch.deletes.iter().cloned());
        args.push(count(batch.puts.len()));
        for (k, v) in &batch.puts {
            args.push(k.clone());
            args.push(v.clone());
        }
        args.push(b"0".to_vec());
        match self.write_args(actor, &args)? {
            None => Ok(()),
            Some(i) => Err(batch
                .conflict_at(i)
                .ok_or_else(|| cluster::surprise(format!("unknown failed precondition {i}")))?),
        }
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        check_actor_id(actor)?;
        if range_is_empty(start, end) {
            return Ok(());
        }
        let (min, max) = scripts::lex_bounds(start, end);
        let args = vec![count(0), count(0), count(0), b"1".to_vec(), min, max];
        match self.write_args(actor, &args)? {
            None => Ok(()),
            Some(i) => Err(cluster::surprise(format!(
                "a range delete reported failed precondition {i}"
            ))),
        }
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        check_actor_id(actor)?;
        check_batch_read(&self.options.limits, ops)?;
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = Vec::new();
        let mut live = Vec::new();
        let mut results: Vec<Option<ReadResult>> = vec![None; ops.len()];
        for (i, op) in ops.iter().enumerate() {
            match op {
                ReadOp::Get(keys) if keys.is_empty() => {
                    results[i] = Some(ReadResult::Get(Vec::new()))
                }
                ReadOp::Get(keys) => {
                    scripts::push_get(&mut args, keys);
                    live.push(op.clone());
                }
                ReadOp::List(req) => {
                    let (start, end) = req.range.bounds();
                    if range_is_empty(&start, end.as_deref()) {
                        results[i] = Some(ReadResult::List(ListPage::default()));
                    } else {
                        let limit = self.options.limits.list_limit(req.limit)?;
                        scripts::push_list(&mut args, req, limit);
                        live.push(op.clone());
                    }
                }
            }
        }
        if !live.is_empty() {
            let Outcome::Done(v, _) = self.run(actor, false, &args)?;
            let mut answers = scripts::decode_batch(v, &live)?.into_iter();
            for slot in results.iter_mut().filter(|r| r.is_none()) {
                *slot = answers.next();
            }
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| cluster::surprise("a batch read lost an answer".into())))
            .collect()
    }
}

/// Checks a Redis store URL and its options without connecting (for [`super::url`]).
pub fn check_url(url: &str, options: &mut RedisOptions) -> Result<(), KvError> {
    parse_url(url, options).map(|_| ())
}

/// What a URL names: the mode, the nodes, and the user info (`user:password`) if any.
#[derive(Debug)]
struct ParsedUrl {
    mode: Mode,
    nodes: Vec<String>,
    userinfo: Option<String>,
}

/// Parses `redis://[USER:PASSWORD@]HOST:PORT[?…]` or `redis-cluster://…HOST:PORT[,HOST:PORT…]`,
/// taking the query options into `options`.
fn parse_url(url: &str, options: &mut RedisOptions) -> Result<ParsedUrl, KvError> {
    let invalid = |reason: String| KvError::InvalidUrl {
        url: redact(url),
        reason,
    };
    let (mode, rest) = if let Some(r) = url.strip_prefix("redis-cluster://") {
        (Mode::Cluster, r)
    } else if let Some(r) = url.strip_prefix("redis://") {
        (Mode::Single, r)
    } else {
        return Err(invalid(
            "a Redis store URL is redis://HOST:PORT or redis-cluster://HOST:PORT[,HOST:PORT...]"
                .into(),
        ));
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let mut nodes = Vec::new();
    for node in hosts.split(',') {
        let Some((host, port)) = node.rsplit_once(':') else {
            return Err(invalid(format!("node {node:?} is not HOST:PORT")));
        };
        if host.is_empty() || host.contains('/') {
            return Err(invalid(format!("node {node:?} names no host")));
        }
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(invalid(format!("port {port:?} is not a number 1..=65535")));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        nodes.push(format!("{host}:{port}"));
    }
    if mode == Mode::Single && nodes.len() != 1 {
        return Err(invalid(
            "redis:// names one server; use redis-cluster:// for several seed nodes".into(),
        ));
    }
    let ms = |k: &str, v: &str| -> Result<Duration, KvError> {
        v.parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| invalid(format!("{k} {v:?} is not a number of milliseconds")))
    };
    for pair in query.into_iter().flat_map(|q| q.split('&')) {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "prefix" => {
                if v.contains(['{', '}']) {
                    return Err(invalid("prefix must not contain '{' or '}'".into()));
                }
                options.prefix = v.to_string();
            }
            "wait" => {
                options.wait_replicas = v
                    .parse()
                    .map_err(|_| invalid(format!("wait {v:?} is not a number of replicas")))?;
            }
            "wait_timeout_ms" => options.wait_timeout = ms(k, v)?,
            "timeout_ms" => options.timeout = ms(k, v)?,
            "retry_ms" => options.retry_for = ms(k, v)?,
            _ => {
                return Err(invalid(format!(
                    "unknown option {k:?} (accepted: prefix, wait, wait_timeout_ms, \
                     timeout_ms, retry_ms)"
                )))
            }
        }
    }
    if options.timeout.is_zero() {
        return Err(invalid("timeout_ms must be at least 1".into()));
    }
    Ok(ParsedUrl {
        mode,
        nodes,
        userinfo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_options() {
        let mut o = RedisOptions::default();
        let p = parse_url(
            "redis-cluster://127.0.0.1:7000,127.0.0.1:7001?wait=1&prefix=app:&retry_ms=9000",
            &mut o,
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Cluster);
        assert_eq!(p.nodes, vec!["127.0.0.1:7000", "127.0.0.1:7001"]);
        assert_eq!(o.wait_replicas, 1);
        assert_eq!(o.prefix, "app:");
        assert_eq!(o.retry_for, Duration::from_millis(9000));
        let p = parse_url("redis://u:pw@[::1]:7000", &mut o).unwrap();
        assert_eq!(p.mode, Mode::Single);
        assert_eq!(p.nodes, vec!["::1:7000"]);
        assert_eq!(p.userinfo.as_deref(), Some("u:pw"));
        for bad in [
            "redis://",
            "redis://h",
            "redis://h:0",
            "redis://h:x",
            "redis://a:1,b:2",
            "redis-cluster://a:1,",
            "redis://h:1?prefix={x}",
            "redis://h:1?wait=x",
            "redis://h:1?bogus=1",
            "redis://h:1?timeout_ms=0",
            "rediss://h:1",
        ] {
            assert!(
                matches!(
                    parse_url(bad, &mut RedisOptions::default()),
                    Err(KvError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
        let err = parse_url("redis://u:secret@h:x", &mut o).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn actor_ids_map_to_one_tag_each() {
        assert_eq!(escape_actor("a{b}%"), "a%7Bb%7D%25");
        assert_ne!(escape_actor("%7B"), escape_actor("{"));
    }
}

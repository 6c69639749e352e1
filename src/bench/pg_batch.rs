//! `kvsqlite bench pg-batch`: what a batched put and a batched read cost on the wire to
//! PostgreSQL, against the same keys one call per key, through a [`DelayProxy`].
//!
//! Why it exists: the PostgreSQL backend promises one exchange per KV call (a 128-entry put is
//! one call of its write function; a read batch one `UNION ALL` statement). Its own counter
//! ([`PostgresStore::exchanges`]) and the KV layer's ([`CountingStore`]) count calls; this
//! benchmark counts round trips where they happen, on the TCP connection, with the proxy's
//! turns, and adds a per-direction delay so each turn costs what it would against a remote
//! server.
//!
//! Workload, on a fresh actor: the store connects through the proxy (reported apart as
//! `connect`: the driver's handshake, its backend-pid query and the schema check take turns
//! that no batch pays again), one warm-up get, then `runs` times each of
//! - `batch_put`: one [`WriteBatch`] of [`ENTRIES`] puts of [`VALUE_BYTES`]-byte values;
//! - `batch_get`: one `get` of [`ENTRIES`] keys, half of them present, half absent;
//! - `per_key_put`: the same puts, one `write` call per key (the naive baseline);
//! - `per_key_get`: the same keys, one `get` call per key.
//!
//! Every read is checked against what was written. The actor is deleted afterwards (also when a
//! step failed).

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use super::delay_proxy::DelayProxy;
use crate::kv::counting::CountingStore;
use crate::kv::postgres::PostgresStore;
use crate::kv::url::{redact_password, StoreUrl};
use crate::kv::{Key, KvStore, SharedStore, Value, WriteBatch};

/// Entries of the batched put, and keys of the batched get.
pub const ENTRIES: usize = 128;
/// Bytes of each value (one SQLite page).
pub const VALUE_BYTES: usize = 4096;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PgBatchConfig {
    /// Delay the proxy adds to each chunk in each direction.
    pub delay: Duration,
    /// Times each measurement is repeated (at least 1).
    pub runs: usize,
}

/// One measured operation, over all runs.
#[derive(Clone, Debug, PartialEq)]
pub struct OpMeasure {
    /// `batch_put`, `batch_get`, `per_key_put` or `per_key_get`.
    pub name: &'static str,
    /// Keys written or asked for by one run.
    pub keys: usize,
    /// Median wall time of one run, in milliseconds.
    pub wall_ms: f64,
    /// The most proxy turns (TCP round trips) one run took.
    pub proxy_turns: u64,
    /// The most KV round trips (`kv::counting` calls) one run took.
    pub kv_round_trips: u64,
}

/// The connection set-up, measured once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnectMeasure {
    /// Wall time of [`PostgresStore::connect`] through the proxy, in milliseconds.
    pub wall_ms: f64,
    /// Proxy turns it took (handshake, backend-pid query, schema check).
    pub proxy_turns: u64,
}

/// The whole benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct PgBatchReport {
    /// The server the proxy forwarded to (`HOST:PORT`).
    pub upstream: String,
    /// The delay added per direction, in milliseconds.
    pub delay_ms: f64,
    /// Runs of each measurement.
    pub runs: usize,
    /// The actor used (deleted afterwards).
    pub actor: String,
    /// The connection set-up.
    pub connect: ConnectMeasure,
    /// Connections the proxy forwarded during the whole benchmark.
    pub connections: u64,
    /// The four operations, in the order listed in the module documentation.
    pub ops: Vec<OpMeasure>,
}

impl PgBatchReport {
    /// The measurement named `name`, if any.
    pub fn op(&self, name: &str) -> Option<&OpMeasure> {
        self.ops.iter().find(|o| o.name == name)
    }

    /// One JSON object; the fields are documented in docs/src/benchmarks/commands.md.
    pub fn to_json(&self) -> Json {
        let ms = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "backend": "postgres",
            "upstream": self.upstream,
            "delay_ms": ms(self.delay_ms),
            "entries": ENTRIES,
            "value_bytes": VALUE_BYTES,
            "runs": self.runs,
            "actor": self.actor,
            "connect": {
                "wall_ms": ms(self.connect.wall_ms),
                "proxy_turns": self.connect.proxy_turns,
            },
            "connections": self.connections,
            "ops": self.ops.iter().map(|o| json!({
                "op": o.name,
                "keys": o.keys,
                "wall_ms": ms(o.wall_ms),
                "proxy_turns": o.proxy_turns,
                "kv_round_trips": o.kv_round_trips,
            })).collect::<Vec<_>>(),
        })
    }

    /// The readable form: one row per operation, then the connection set-up.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "postgres at {} through a delay proxy: {} ms per direction, {} run(s), {ENTRIES} \
             keys of {VALUE_BYTES} B\n{:<14}{:>6}{:>12}{:>13}{:>16}\n",
            self.upstream,
            self.delay_ms,
            self.runs,
            "op",
            "keys",
            "wall_ms",
            "proxy_turns",
            "kv_round_trips"
        );
        for o in &self.ops {
            s += &format!(
                "{:<14}{:>6}{:>12.3}{:>13}{:>16}\n",
                o.name, o.keys, o.wall_ms, o.proxy_turns, o.kv_round_trips
            );
        }
        s += &format!(
            "connect: {:.3} ms, {} proxy turns (not part of any row above); {} connection(s)\n",
            self.connect.wall_ms, self.connect.proxy_turns, self.connections
        );
        s
    }
}

/// The upstream `HOST:PORT` a `postgres://` URL names, and the same URL pointed at `proxy`.
///
/// Errors (a message for the user): not a postgres URL; several hosts, or a host or port given
/// as a query parameter (the proxy forwards to one server named in the URL's authority).
pub fn proxied_url(url: &str, proxy: SocketAddr) -> Result<(String, String), String> {
    let shown = redact_password(url);
    match StoreUrl::parse(url) {
        Ok(StoreUrl::Postgres(_)) => {}
        Ok(_) => {
            return Err(format!(
                "it measures the PostgreSQL backend: --kv must be a \
                 postgres://USER@HOST:PORT/DB URL, not {shown:?}"
            ))
        }
        Err(e) => return Err(e.to_string()),
    }
    let url = url.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{shown:?} has no ://"))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if let Some((_, query)) = tail.split_once('?') {
        if let Some(p) = query.split('&').find(|p| {
            let name = p.split('=').next().unwrap_or("");
            matches!(name, "host" | "hostaddr" | "port")
        }) {
            return Err(format!(
                "{shown:?}: give the server in the URL's HOST:PORT, not as the query \
                 parameter {:?} (the proxy forwards to that one server)",
                p.split('=').next().unwrap_or(p)
            ));
        }
    }
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if hostport.contains(',') {
        return Err(format!(
            "{shown:?} names several hosts; the proxy forwards to one server"
        ));
    }
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (h, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("{shown:?}: unclosed [ in the host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{shown:?} names no host"));
    }
    let port: u16 = match port {
        None | Some("") => 5432,
        Some(p) => p
            .parse()
            .map_err(|_| format!("{shown:?}: port {p:?} is not a number 0..=65535"))?,
    };
    let upstream = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    Ok((upstream, format!("{scheme}://{user}{proxy}{tail}")))
}

/// Runs the benchmark against the server `url` names. `progress(step, of)` is called before
/// each step.
///
/// Errors: `url` is not a usable postgres URL, the server cannot be reached, a call fails, or
/// a read returns something other than what was written.
pub fn run(
    url: &str,
    config: &PgBatchConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<PgBatchReport, String> {
    if config.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    // The upstream address is only known once the URL is parsed; the proxy's port only once it
    // is bound. Parse with a placeholder first, then rewrite with the real port.
    let placeholder = SocketAddr::from(([127, 0, 0, 1], 0));
    let (upstream, _) = proxied_url(url, placeholder)?;
    let target = upstream
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {upstream}: {e}"))?
        .next()
        .ok_or_else(|| format!("{upstream} resolves to no address"))?;
    let proxy = DelayProxy::start(target, config.delay)
        .map_err(|e| format!("cannot start the delay proxy: {e}"))?;
    let (_, via_proxy) = proxied_url(url, proxy.addr())?;

    let t0 = Instant::now();
    let before = proxy.counters();
    let pg = PostgresStore::connect(&via_proxy).map_err(|e| e.to_string())?;
    let connect = ConnectMeasure {
        wall_ms: ms_since(t0),
        proxy_turns: (proxy.counters() - before).turns,
    };
    let counting = CountingStore::wrap(Arc::new(pg) as SharedStore);
    let actor = unique_actor();
    let outcome = measure(&proxy, &counting, &actor, config, progress);
    let cleanup = counting.delete_range(&actor, &[], None);
    let ops = outcome?;
    cleanup.map_err(|e| format!("benchmark ran, but deleting its actor failed: {e}"))?;
    Ok(PgBatchReport {
        upstream,
        delay_ms: config.delay.as_secs_f64() * 1000.0,
        runs: config.runs,
        actor,
        connect,
        connections: proxy.counters().connections,
        ops,
    })
}

fn unique_actor() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench-pg-batch-{}-{nanos}", std::process::id())
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The keys put (`k0000`…) and their values: distinct, every byte value present.
fn entries() -> Vec<(Key, Value)> {
    (0..ENTRIES)
        .map(|i| {
            let value = (0..VALUE_BYTES)
                .map(|j| (i * 31 + j * 7 + j / 256) as u8)
                .collect();
            (format!("k{i:04}").into_bytes(), value)
        })
        .collect()
}

/// The keys read: every other key put (present), each followed by one never put (absent).
fn read_keys() -> Vec<(Key, Option<usize>)> {
    (0..ENTRIES / 2)
        .flat_map(|i| {
            [
                (format!("k{:04}", 2 * i).into_bytes(), Some(2 * i)),
                (format!("absent{i:04}").into_bytes(), None),
            ]
        })
        .collect()
}

fn measure(
    proxy: &DelayProxy,
    store: &Arc<CountingStore>,
    actor: &str,
    config: &PgBatchConfig,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<OpMeasure>, String> {
    let e = |e: crate::kv::KvError| e.to_string();
    let puts = entries();
    let reads = read_keys();
    let keys: Vec<Key> = reads.iter().map(|(k, _)| k.clone()).collect();
    let check = |got: &[Option<Value>]| -> Result<(), String> {
        for ((key, want), got) in reads.iter().zip(got) {
            let want = want.map(|i| &puts[i].1);
            if want != got.as_ref() {
                return Err(format!(
                    "read {} back wrong: expected {}, got {}",
                    String::from_utf8_lossy(key),
                    if want.is_some() {
                        "its value"
                    } else {
                        "absent"
                    },
                    if got.is_some() { "a value" } else { "absent" }
                ));
            }
        }
        if got.len() != reads.len() {
            return Err(format!("asked {} keys, got {}", reads.len(), got.len()));
        }
        Ok(())
    };
    // Warm-up: the connection is open (connect made it); one call settles whatever the
    // driver still had in flight from the set-up.
    store.get(actor, &keys[..1]).map_err(e)?;

    type Step<'a> = Box<dyn Fn() -> Result<(), String> + 'a>;
    let steps: [(&'static str, usize, Step); 4] = [
        (
            "batch_put",
            ENTRIES,
            Box::new(|| {
                store
                    .write(actor, &WriteBatch::puts(puts.clone()))
                    .map_err(e)
            }),
        ),
        (
            "batch_get",
            keys.len(),
            Box::new(|| check(&store.get(actor, &keys).map_err(e)?)),
        ),
        (
            "per_key_put",
            ENTRIES,
            Box::new(|| {
                puts.iter().try_for_each(|kv| {
                    store
                        .write(actor, &WriteBatch::puts(vec![kv.clone()]))
                        .map_err(e)
                })
            }),
        ),
        (
            "per_key_get",
            keys.len(),
            Box::new(|| {
                let mut got = Vec::with_capacity(keys.len());
                for k in &keys {
                    got.extend(store.get(actor, std::slice::from_ref(k)).map_err(e)?);
                }
                check(&got)
            }),
        ),
    ];
    let mut samples: Vec<(Vec<f64>, u64, u64)> = vec![(Vec::new(), 0, 0); steps.len()];
    let total = steps.len() * config.runs;
    for run in 0..config.runs {
        for (i, (_, _, step)) in steps.iter().enumerate() {
            progress(run * steps.len() + i, total);
            let (p0, k0) = (proxy.counters(), store.snapshot());
            let t = Instant::now();
            step()?;
            let wall = ms_since(t);
            let turns = (proxy.counters() - p0).turns;
            let kv = store.snapshot().delta(&k0).round_trips();
            let s = &mut samples[i];
            s.0.push(wall);
            s.1 = s.1.max(turns);
            s.2 = s.2.max(kv);
        }
    }
    progress(total, total);
    Ok(steps
        .iter()
        .zip(samples)
        .map(|((name, keys, _), (mut walls, turns, kv))| {
            walls.sort_by(f64::total_cmp);
            OpMeasure {
                name,
                keys: *keys,
                wall_ms: walls[walls.len() / 2],
                proxy_turns: turns,
                kv_round_trips: kv,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_pointed_at_the_proxy() {
        let p = SocketAddr::from(([127, 0, 0, 1], 6000));
        let ok = |u: &str| proxied_url(u, p).unwrap();
        assert_eq!(
            ok("postgres://postgres@127.0.0.1:5432/test"),
            (
                "127.0.0.1:5432".into(),
                "postgres://postgres@127.0.0.1:6000/test".into()
            )
        );
        assert_eq!(
            ok("postgresql://u:pw@db.example:5433/x?table=t&pool_size=2"),
            (
                "db.example:5433".into(),
                "postgresql://u:pw@127.0.0.1:6000/x?table=t&pool_size=2".into()
            )
        );
        assert_eq!(
            ok("postgres://u@localhost/d"),
            (
                "localhost:5432".into(),
                "postgres://u@127.0.0.1:6000/d".into()
            )
        );
        assert_eq!(ok("postgres://[::1]:5434/d").0, "[::1]:5434".to_string());
        for bad in [
            "memory:",
            "redb:/tmp/x.redb",
            "postgres://u@h1:5432,h2:5432/d",
            "postgres://u@h/d?host=/tmp",
            "postgres://u@h/d?port=5",
        ] {
            assert!(proxied_url(bad, p).is_err(), "{bad}");
        }
        let err = proxied_url("memory:", p).unwrap_err();
        assert!(err.contains("--kv must be a postgres://"), "{err}");
    }

    #[test]
    fn reads_are_half_present_and_checked_against_the_puts() {
        let reads = read_keys();
        assert_eq!(reads.len(), ENTRIES);
        assert_eq!(
            reads.iter().filter(|(_, i)| i.is_some()).count(),
            ENTRIES / 2
        );
        let puts = entries();
        assert_eq!(puts.len(), ENTRIES);
        assert!(puts.iter().all(|(_, v)| v.len() == VALUE_BYTES));
        assert_ne!(puts[0].1, puts[1].1);
    }
}

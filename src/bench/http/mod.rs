//! `kvsqlite bench http`: a bounded load against `kvsqlite serve` over loopback HTTP.
//!
//! Why it exists: the other benchmarks call the VFS directly; this one measures what a client
//! of the host sees, the HTTP layer, the actor registry and its sleep and wake included. It
//! measures two latencies apart: the **wake latency** (the first request to a sleeping actor,
//! its wake plus its query) and the **query latency** (requests to awake actors).
//!
//! The run, in order:
//!
//! 1. **Host.** [`Server::InProcess`] starts the same host `kvsqlite serve` runs
//!    ([`crate::host::serve`]) on `127.0.0.1:0` in this process, over the given store, with a
//!    fresh admin token and a short idle sleep; [`Server::Url`] uses a running one.
//! 2. **Setup** (not timed). Each of the `actors` actors gets, in one batch, a table
//!    `kv(k INTEGER PRIMARY KEY, v TEXT)` (`IF NOT EXISTS`: a server's migrations may create
//!    it) of `rows` rows of 64 hex characters.
//! 3. **Sleep** (not timed). The bench waits until the host's `kvsqlite_sleeps_total` has grown
//!    by `actors` since before the setup: every actor went to sleep on the idle timeout.
//! 4. **Wake.** `concurrency` clients send one point read to each actor: each is the first
//!    request to a sleeping actor, so its latency is a wake plus a query.
//! 5. **Load.** `concurrency` clients, each on its own keep-alive connection, send requests
//!    back to back until `requests` in all were sent or `duration` passed. Each request goes to
//!    an actor picked at random; `write_percent` of them are one-row writes
//!    (`UPDATE kv SET v = ?1 WHERE k = ?2`, one commit: one KV write), the others point reads
//!    (`SELECT v FROM kv WHERE k = ?1`), at a random key.
//! 6. **Cleanup.** An in-process host is shut down (every actor sleeps), then the bench's
//!    actors are deleted from the store. Over `--url` they are left in the server's store (the
//!    host has no route that deletes an actor); their ids start with the reported prefix.
//!
//! Counts come from the host's own `/metrics` read between the phases: the wakes of the wake
//! phase, their KV round trips (`kvsqlite_wake_kv_round_trips`), the wakes during the load (an
//! actor that slept in the middle) and the KV round trips per load request. Any status other
//! than 2xx (or a request that got no answer) is an error: counted, its latency not recorded,
//! the first one kept with its status and body.
//!
//! The submodules: `client` (the in-process host, the HTTP client, the `/metrics` counters),
//! `report` (the JSON and the table) and `cluster` (`--url A,B,C`: the hosts of a cluster,
//! direct and forwarded latency, `--kill-one`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::kv::SharedStore;
use crate::metrics::LatencyHistogram;
use crate::rng::Rng;

mod client;
mod cluster;
mod report;

pub use cluster::{ClusterPhase, KillRecovery};

pub use client::HostCounters;
use client::{agent, delta, post, Answer, InProcessHost};
pub use report::{HttpReport, Latency, LoadPhase, WakePhase};

/// How long the bench waits for the actors to fall asleep before it gives up.
pub const SLEEP_WAIT: Duration = Duration::from_secs(120);

/// How long one request may take before it counts as an error (no answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest part of an error body kept in [`HttpReport::first_error`].
const ERROR_BODY_MAX: usize = 300;

/// When the load phase stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoadStop {
    /// After this many requests in all.
    Requests(u64),
    /// After this much wall time (requests in flight finish and count).
    Duration(Duration),
}

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HttpConfig {
    /// Actors (at least 1).
    pub actors: usize,
    /// Clients sending at once (at least 1), each on its own connection.
    pub concurrency: usize,
    /// When the load phase stops.
    pub stop: LoadStop,
    /// Percentage of load requests that write (0 to 100).
    pub write_percent: u32,
    /// Rows of each actor's table (at least 1).
    pub rows: u64,
    /// An in-process host puts an actor to sleep after this long without requests.
    pub idle_sleep: Duration,
    /// Seed of the actors and keys picked.
    pub seed: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            actors: 32,
            concurrency: 8,
            stop: LoadStop::Requests(4_000),
            write_percent: 20,
            rows: 100,
            idle_sleep: Duration::from_millis(1_000),
            seed: 1,
        }
    }
}

impl HttpConfig {
    /// Checks the configuration: a message naming the option when it is out of range.
    pub fn check(&self) -> Result<(), String> {
        if self.actors == 0 {
            return Err("--actors must be at least 1".into());
        }
        if self.concurrency == 0 {
            return Err("--concurrency must be at least 1".into());
        }
        if self.stop == LoadStop::Requests(0) {
            return Err("--requests must be at least 1".into());
        }
        if self.write_percent > 100 {
            return Err("--write-percent must be from 0 to 100".into());
        }
        if self.rows == 0 {
            return Err("--rows must be at least 1".into());
        }
        if self.idle_sleep.is_zero() {
            return Err("--idle-sleep-ms must be at least 1".into());
        }
        Ok(())
    }
}

/// The host to load.
pub enum Server {
    /// Start the host in this process on `127.0.0.1:0`, over this store; the bench's actors
    /// are deleted from it afterwards.
    InProcess(SharedStore),
    /// A running `kvsqlite serve`.
    Url {
        /// `http://HOST:PORT`, without a trailing slash.
        base: String,
        /// Its admin token.
        token: String,
    },
    /// The hosts of a running cluster (`serve --cluster`): each request goes to one picked at
    /// random (setup and wake: in turn).
    Cluster {
        /// `http://HOST:PORT` of each host, without a trailing slash.
        bases: Vec<String>,
        /// Their admin token.
        token: String,
        /// After the load, kill -9 the last host and time until every actor answers again.
        kill_one: bool,
    },
}

/// What the clients of one phase share.
struct Tally {
    /// Requests claimed so far (the next actor in the wake phase, the request count in the
    /// load phase).
    claimed: AtomicU64,
    /// Requests answered (for the progress bar).
    done: AtomicU64,
    /// Set when the phase must stop early: a failed setup request (the bench cannot measure
    /// without every actor), or a client thread that panicked. Failed wake and load requests
    /// do not set it: they are counted and the phase goes on.
    abort: AtomicBool,
    /// The first failed request, `phase: status: body`.
    first_error: parking_lot::Mutex<Option<String>>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            claimed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            first_error: parking_lot::Mutex::new(None),
        }
    }

    fn failed(&self, phase: &str, path: &str, a: &Answer) {
        let mut first = self.first_error.lock();
        if first.is_none() {
            let body: String = a.text.chars().take(ERROR_BODY_MAX).collect();
            *first = Some(format!("{phase}: POST {path}: status {}: {body}", a.status));
        }
    }
}

/// What one client measured.
#[derive(Default)]
struct Measured {
    ok: u64,
    errors: u64,
    reads: u64,
    writes: u64,
    reads_h: LatencyHistogram,
    writes_h: LatencyHistogram,
    start: Option<Instant>,
    end: Option<Instant>,
    /// Successful requests a cluster host forwarded, and their latency; then the direct ones.
    forwarded: u64,
    forwarded_h: LatencyHistogram,
    direct_h: LatencyHistogram,
}

impl Measured {
    fn add(&mut self, o: Measured) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.reads += o.reads;
        self.writes += o.writes;
        self.reads_h.merge(&o.reads_h);
        self.writes_h.merge(&o.writes_h);
        self.forwarded += o.forwarded;
        self.forwarded_h.merge(&o.forwarded_h);
        self.direct_h.merge(&o.direct_h);
        self.start = match (self.start, o.start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.end = match (self.end, o.end) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Counts one request sent at `t0` and answered now by `a`: a read or a write, ok (its
    /// latency recorded) or an error. Returns whether it was ok.
    fn count(&mut self, write: bool, t0: Instant, a: &Answer) -> bool {
        let end = Instant::now();
        self.end = Some(end);
        let (n, h) = if write {
            (&mut self.writes, &mut self.writes_h)
        } else {
            (&mut self.reads, &mut self.reads_h)
        };
        *n += 1;
        if a.ok() {
            self.ok += 1;
            let us = (end - t0).as_micros() as u64;
            h.record(us);
            if a.forwarded {
                self.forwarded += 1;
                self.forwarded_h.record(us);
            } else {
                self.direct_h.record(us);
            }
            true
        } else {
            self.errors += 1;
            false
        }
    }

    fn wall_s(&self) -> f64 {
        match (self.start, self.end) {
            (Some(s), Some(e)) => (e - s).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Runs `client(i)` on `n` threads while the calling thread reports progress
/// (`progress(phase, fraction)`, about 20 times a second) from `fraction()`; merges what they
/// measured.
fn run_clients(
    n: usize,
    phase: &str,
    tally: &Tally,
    fraction: &(dyn Fn() -> f64 + Sync),
    progress: &dyn Fn(&str, f64),
    client: &(dyn Fn(usize) -> Measured + Sync),
) -> Result<Measured, String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || client(i))).collect();
        while !handles.iter().all(|h| h.is_finished()) {
            progress(phase, fraction().min(1.0));
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut all = Measured::default();
        for h in handles {
            match h.join() {
                Ok(m) => all.add(m),
                Err(_) => {
                    tally.abort.store(true, Ordering::SeqCst);
                    return Err(format!("a client thread of the {phase} phase panicked"));
                }
            }
        }
        Ok(all)
    })
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench-http-{}-{nanos}", std::process::id())
}

/// A value of 64 hex characters from the generator.
fn hex_value(rng: &mut Rng) -> String {
    (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect()
}

/// Runs the benchmark (see the module comment). `progress(phase, fraction)` is called while
/// the `setup`, `sleep`, `wake` and `load` phases run. `rtt` is only reported.
pub fn run(
    config: &HttpConfig,
    server: Server,
    rtt: Option<Duration>,
    progress: &dyn Fn(&str, f64),
) -> Result<HttpReport, String> {
    config.check()?;
    let prefix = unique_prefix();
    let (mut host, store, base, token, url) = match server {
        Server::InProcess(store) => {
            let h = InProcessHost::start(store.clone(), config)?;
            let (base, token) = (h.base.clone(), h.token.clone());
            (Some(h), Some(store), base, token, None)
        }
        Server::Url { base, token } => (None, None, base.clone(), token, Some(base)),
        Server::Cluster {
            bases,
            token,
            kill_one,
        } => {
            let url = bases.join(",");
            return cluster_run(config, &bases, &token, &prefix, kill_one, url, progress);
        }
    };
    let measured = measure(config, &[base], &token, &prefix, progress);
    // Cleanup whatever happened: the host stops (every actor sleeps, its last write done),
    // then the actors are deleted.
    let stopped = host.as_mut().map_or(Ok(()), |h| h.stop());
    drop(host);
    let deleted = match &store {
        Some(store) => (0..config.actors).try_for_each(|i| {
            let id = format!("{prefix}-{i}");
            store
                .delete_range(&id, &[], None)
                .map_err(|e| format!("deleting actor {id}: {e}"))
        }),
        None => Ok(()),
    };
    let (wake, load, first_error, _) = measured?;
    stopped?;
    deleted?;
    Ok(HttpReport {
        config: *config,
        backend: store.as_ref().map(|s| s.backend()),
        rtt_ms: match url {
            None => Some(rtt.map_or(0.0, |d| d.as_secs_f64() * 1000.0)),
            Some(_) => None,
        },
        url,
        actor_prefix: prefix,
        wake,
        load,
        first_error,
        actors_deleted: store.is_some(),
        cluster: None,
    })
}

/// [`run`] over the hosts of a cluster (their actors are left in the store, as over `--url`).
fn cluster_run(
    config: &HttpConfig,
    bases: &[String],
    token: &str,
    prefix: &str,
    kill_one: bool,
    url: String,
    progress: &dyn Fn(&str, f64),
) -> Result<HttpReport, String> {
    if bases.is_empty() {
        return Err("--url names no host".into());
    }
    let (wake, load, first_error, loaded) = measure(config, bases, token, prefix, progress)?;
    let kill = if kill_one {
        Some(cluster::kill_and_recover(
            bases,
            token,
            prefix,
            config.actors as u64,
            progress,
        )?)
    } else {
        None
    };
    Ok(HttpReport {
        config: *config,
        backend: None,
        rtt_ms: None,
        url: Some(url),
        actor_prefix: prefix.to_string(),
        wake,
        load,
        first_error,
        actors_deleted: false,
        cluster: Some(ClusterPhase {
            hosts: bases.to_vec(),
            forwarded: loaded.forwarded,
            direct: loaded.ok - loaded.forwarded,
            direct_latency_ms: Latency::of(&loaded.direct_h),
            forwarded_latency_ms: Latency::of(&loaded.forwarded_h),
            kill,
        }),
    })
}

type Phases = (WakePhase, LoadPhase, Option<String>, Measured);

fn measure(
    config: &HttpConfig,
    bases: &[String],
    token: &str,
    prefix: &str,
    progress: &dyn Fn(&str, f64),
) -> Result<Phases, String> {
    let admin = agent();
    // Setup and wake send to the hosts in turn, the load to one picked at random.
    let actor_url_at = |b: usize, i: u64, route: &str| {
        format!("{}/actors/{prefix}-{i}/{route}", bases[b % bases.len()])
    };
    let actor_url = |i: u64, route: &str| actor_url_at(i as usize, i, route);
    let actors = config.actors as u64;
    let at_start = cluster::counters(&admin, bases)?;

    // Setup: each actor's table, in one batch; a failure here stops the bench.
    let setup = Tally::new();
    let setup_body = json!({"statements": [
        {"sql": "CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v TEXT NOT NULL)"},
        {"sql": "WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < ?1) \
                 INSERT INTO kv(k, v) SELECT k, lower(hex(randomblob(32))) FROM n",
         "params": [config.rows]},
    ]})
    .to_string();
    run_clients(
        config.concurrency.min(config.actors),
        "setup",
        &setup,
        &|| setup.done.load(Ordering::Relaxed) as f64 / actors as f64,
        progress,
        &|_| {
            let agent = agent();
            let mut m = Measured::default();
            loop {
                let i = setup.claimed.fetch_add(1, Ordering::SeqCst);
                if i >= actors || setup.abort.load(Ordering::SeqCst) {
                    break;
                }
                let a = post(&agent, &actor_url(i, "batch"), token, &setup_body);
                if a.ok() {
                    m.ok += 1;
                } else {
                    setup.failed("setup", &format!("/actors/{prefix}-{i}/batch"), &a);
                    setup.abort.store(true, Ordering::SeqCst);
                    m.errors += 1;
                }
                setup.done.fetch_add(1, Ordering::Relaxed);
            }
            m
        },
    )?;
    if let Some(e) = setup.first_error.lock().take() {
        return Err(format!("creating the bench's actors failed: {e}"));
    }

    // Sleep: wait until the host put every one of them to sleep.
    let begun = Instant::now();
    loop {
        let now = cluster::counters(&admin, bases)?;
        let slept = delta(now.sleeps, at_start.sleeps);
        progress("sleep", slept as f64 / actors as f64);
        if slept >= actors {
            break;
        }
        if begun.elapsed() > SLEEP_WAIT {
            return Err(format!(
                "only {slept} of the {actors} actors fell asleep within {} s (a server given \
                 with --url must put idle actors to sleep sooner: --idle-sleep-ms)",
                SLEEP_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Wake: the first request to each sleeping actor.
    let before_wake = cluster::counters(&admin, bases)?;
    let wake = Tally::new();
    let read_body = |rng: &mut Rng| {
        json!({"sql": "SELECT v FROM kv WHERE k = ?1", "params": [1 + rng.below(config.rows)]})
            .to_string()
    };
    let woke = run_clients(
        config.concurrency.min(config.actors),
        "wake",
        &wake,
        &|| wake.done.load(Ordering::Relaxed) as f64 / actors as f64,
        progress,
        &|c| {
            let agent = agent();
            let mut rng = Rng::new(config.seed ^ (0xA5A5 + c as u64));
            let mut m = Measured {
                start: Some(Instant::now()),
                ..Measured::default()
            };
            loop {
                let i = wake.claimed.fetch_add(1, Ordering::SeqCst);
                if i >= actors {
                    break;
                }
                let body = read_body(&mut rng);
                let t0 = Instant::now();
                let a = post(&agent, &actor_url(i, "query"), token, &body);
                if !m.count(false, t0, &a) {
                    wake.failed("wake", &format!("/actors/{prefix}-{i}/query"), &a);
                }
                wake.done.fetch_add(1, Ordering::Relaxed);
            }
            m
        },
    )?;
    let after_wake = cluster::counters(&admin, bases)?;
    let wake_count = delta(
        after_wake.wake_round_trips_count,
        before_wake.wake_round_trips_count,
    );
    let wake_phase = WakePhase {
        requests: woke.reads,
        ok: woke.ok,
        errors: woke.errors,
        wakes: delta(after_wake.wakes, before_wake.wakes),
        kv_round_trips: delta(after_wake.kv_round_trips, before_wake.kv_round_trips),
        kv_round_trips_per_wake: (wake_count > 0).then(|| {
            (after_wake.wake_round_trips_sum - before_wake.wake_round_trips_sum) / wake_count as f64
        }),
        wall_s: woke.wall_s(),
        latency_ms: Latency::of(&woke.reads_h),
    };

    // Load: requests to awake actors, reads and writes mixed.
    let load = Tally::new();
    let begun = Instant::now();
    let loaded = run_clients(
        config.concurrency,
        "load",
        &load,
        &|| match config.stop {
            LoadStop::Requests(n) => load.done.load(Ordering::Relaxed) as f64 / n as f64,
            LoadStop::Duration(d) => begun.elapsed().as_secs_f64() / d.as_secs_f64(),
        },
        progress,
        &|c| {
            let agent = agent();
            let mut rng = Rng::new(config.seed.wrapping_mul(0x9E37_79B9) ^ c as u64);
            let mut m = Measured {
                start: Some(Instant::now()),
                ..Measured::default()
            };
            loop {
                let more = match config.stop {
                    LoadStop::Requests(n) => load.claimed.fetch_add(1, Ordering::SeqCst) < n,
                    LoadStop::Duration(d) => begun.elapsed() < d,
                };
                if !more {
                    break;
                }
                let i = rng.below(actors);
                let write = rng.below(100) < u64::from(config.write_percent);
                let body = if write {
                    json!({"sql": "UPDATE kv SET v = ?1 WHERE k = ?2",
                           "params": [hex_value(&mut rng), 1 + rng.below(config.rows)]})
                    .to_string()
                } else {
                    read_body(&mut rng)
                };
                let t0 = Instant::now();
                let host = rng.below(bases.len() as u64) as usize;
                let a = post(&agent, &actor_url_at(host, i, "query"), token, &body);
                if !m.count(write, t0, &a) {
                    load.failed("load", &format!("/actors/{prefix}-{i}/query"), &a);
                }
                load.done.fetch_add(1, Ordering::Relaxed);
            }
            m
        },
    )?;
    let after_load = cluster::counters(&admin, bases)?;
    let requests = loaded.reads + loaded.writes;
    let wall_s = loaded.wall_s();
    let mut all = LatencyHistogram::new();
    all.merge(&loaded.reads_h);
    all.merge(&loaded.writes_h);
    let load_phase = LoadPhase {
        requests,
        ok: loaded.ok,
        errors: loaded.errors,
        reads: loaded.reads,
        writes: loaded.writes,
        wall_s,
        requests_per_sec: crate::bench::latency::per_sec(requests, wall_s),
        latency_ms: Latency::of(&all),
        read_latency_ms: Latency::of(&loaded.reads_h),
        write_latency_ms: Latency::of(&loaded.writes_h),
        wakes: delta(after_load.wakes, after_wake.wakes),
        kv_round_trips: delta(after_load.kv_round_trips, after_wake.kv_round_trips),
        kv_round_trips_per_request: (requests > 0).then(|| {
            (after_load.kv_round_trips - after_wake.kv_round_trips).max(0.0) / requests as f64
        }),
    };
    let first_error = wake
        .first_error
        .lock()
        .take()
        .or_else(|| load.first_error.lock().take());
    Ok((wake_phase, load_phase, first_error, loaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_prometheus_text() {
        let text = "# HELP kvsqlite_wakes_total x\n# TYPE kvsqlite_wakes_total counter\n\
                    kvsqlite_wakes_total 7\nkvsqlite_sleeps_total 5\n\
                    kvsqlite_kv_round_trips_total 40\n\
                    kvsqlite_wake_kv_round_trips_bucket{le=\"1\"} 6\n\
                    kvsqlite_wake_kv_round_trips_sum 9\nkvsqlite_wake_kv_round_trips_count 7\n";
        assert_eq!(
            HostCounters::parse(text),
            Ok(HostCounters {
                wakes: 7.0,
                sleeps: 5.0,
                kv_round_trips: 40.0,
                wake_round_trips_sum: 9.0,
                wake_round_trips_count: 7.0,
            })
        );
        assert_eq!(
            HostCounters::parse("kvsqlite_wakes_total x\n"),
            Err(
                "the server's /metrics has no numeric kvsqlite_wakes_total: is it kvsqlite serve?"
                    .into()
            )
        );
    }

    #[test]
    fn config_checks_name_the_option() {
        assert_eq!(HttpConfig::default().check(), Ok(()));
        let bad = |c: HttpConfig| c.check().unwrap_err();
        let d = HttpConfig::default();
        assert_eq!(
            bad(HttpConfig { actors: 0, ..d }),
            "--actors must be at least 1"
        );
        assert_eq!(
            bad(HttpConfig {
                concurrency: 0,
                ..d
            }),
            "--concurrency must be at least 1"
        );
        assert_eq!(
            bad(HttpConfig {
                stop: LoadStop::Requests(0),
                ..d
            }),
            "--requests must be at least 1"
        );
        assert_eq!(
            bad(HttpConfig {
                write_percent: 101,
                ..d
            }),
            "--write-percent must be from 0 to 100"
        );
    }
}

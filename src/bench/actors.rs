//! `kvsqlite bench actors`: many actors, each its own kvsqlite database, writing small
//! transactions at once on one store.
//!
//! Why it exists: a host runs many actors on one embedded store, and what limits its write
//! throughput is how many commits share an fsync. This workload measures commits per second and
//! their latency percentiles, and on redb measures the same workload again on the same file with
//! group commit off (one transaction and fsync per write), so the ratio comes from one run.
//!
//! Each thread owns `actors / threads` actors (round robin) and commits one autocommit
//! `INSERT` of `row_bytes` random bytes on each in turn: one KV write per commit. Setup (opening
//! every database and creating its table) is not timed; the databases are deleted afterwards.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

pub use crate::bench::latency::Latency;
use crate::kv::latency::LatencyStore;
use crate::kv::redb_store::{RedbOptions, RedbStore};
use crate::kv::url::{open_store, StoreUrl};
use crate::kv::{KvLimits, SharedStore};
use crate::metrics::LatencyHistogram;
use crate::vfs::{open_database, OpenOptions};

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StopAfter {
    /// After this much wall time.
    Duration(Duration),
    /// After this many commits in all.
    Commits(u64),
}

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActorsConfig {
    /// Actors, each its own database (at least 1).
    pub actors: usize,
    /// Writer threads (1..=actors).
    pub threads: usize,
    /// When each run stops.
    pub stop: StopAfter,
    /// Bytes of the row each commit inserts.
    pub row_bytes: usize,
}

impl Default for ActorsConfig {
    fn default() -> Self {
        ActorsConfig {
            actors: 64,
            threads: 64,
            stop: StopAfter::Duration(Duration::from_secs(5)),
            row_bytes: 100,
        }
    }
}

/// A store to run on.
pub struct Target {
    /// The store the databases use (with the latency wrapper when an RTT is given).
    pub store: SharedStore,
    /// For redb: a handle on the same file, to read its transaction counters.
    pub redb: Option<Arc<RedbStore>>,
}

/// The stores a URL names for this benchmark: the store as given, and for a redb URL with group
/// commit on, the same file through a handle with group commit off (the baseline).
pub fn targets(
    url: &str,
    limits: KvLimits,
    rtt: Option<Duration>,
) -> Result<(Target, Option<Target>), String> {
    let wrap = |s: SharedStore| -> SharedStore {
        match rtt {
            Some(rtt) => Arc::new(LatencyStore::new(s, rtt)),
            None => s,
        }
    };
    match StoreUrl::parse(url).map_err(|e| e.to_string())? {
        StoreUrl::Redb(path, options) => {
            let run =
                Arc::new(RedbStore::open_with(&path, limits, options).map_err(|e| e.to_string())?);
            let baseline = options.group_commit.then(|| {
                Arc::new(run.with_options(RedbOptions {
                    group_commit: false,
                }))
            });
            let target = |s: Arc<RedbStore>| Target {
                store: wrap(Arc::clone(&s) as SharedStore),
                redb: Some(s),
            };
            Ok((target(run), baseline.map(target)))
        }
        _ => {
            let store = open_store(url, limits, rtt).map_err(|e| e.to_string())?;
            Ok((Target { store, redb: None }, None))
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// For redb: whether group commit was on; `None` for other stores.
    pub group_commit: Option<bool>,
    /// Commits made.
    pub commits: u64,
    /// Wall time of the timed part, in seconds.
    pub wall_s: f64,
    /// `commits / wall_s`.
    pub commits_per_sec: f64,
    /// Commit latency.
    pub latency_ms: Latency,
    /// For redb: write transactions (each one fsync) during the run.
    pub transactions: Option<u64>,
    /// For redb: writes per transaction (commits sharing one fsync), on average.
    pub writes_per_transaction: Option<f64>,
}

/// The whole benchmark: the run on the store as given and, on redb, the baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct ActorsReport {
    /// The store's backend name.
    pub backend: &'static str,
    /// The configuration run.
    pub config: ActorsConfig,
    /// The simulated round-trip time, in milliseconds (0 without `--rtt`).
    pub rtt_ms: f64,
    /// The store as the URL names it.
    pub run: RunResult,
    /// The same file with group commit off (redb with group commit on only).
    pub baseline: Option<RunResult>,
}

impl ActorsReport {
    /// `run.commits_per_sec / baseline.commits_per_sec`, when there is a baseline.
    pub fn speedup(&self) -> Option<f64> {
        let b = self.baseline.as_ref()?;
        (b.commits_per_sec > 0.0).then(|| self.run.commits_per_sec / b.commits_per_sec)
    }

    /// One JSON object; the field names are documented in docs/src/benchmarks/commands.md.
    pub fn to_json(&self) -> String {
        let (duration, commits) = match self.config.stop {
            StopAfter::Duration(d) => (num(Some(d.as_secs_f64())), "null".to_string()),
            StopAfter::Commits(n) => ("null".to_string(), n.to_string()),
        };
        format!(
            "{{\"backend\":\"{}\",\"actors\":{},\"threads\":{},\"row_bytes\":{},\"rtt_ms\":{},\
             \"duration_s\":{},\"commits_target\":{},\"run\":{},\"baseline\":{},\"speedup\":{}}}",
            self.backend,
            self.config.actors,
            self.config.threads,
            self.config.row_bytes,
            num(Some(self.rtt_ms)),
            duration,
            commits,
            run_json(&self.run),
            self.baseline
                .as_ref()
                .map_or_else(|| "null".to_string(), run_json),
            num(self.speedup()),
        )
    }
}

/// A JSON number with three decimals, or `null` (wall times get six: microseconds).
fn num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        _ => "null".to_string(),
    }
}

fn run_json(r: &RunResult) -> String {
    let l = &r.latency_ms;
    let wall_s = format!("{:.6}", r.wall_s);
    format!(
        "{{\"group_commit\":{},\"commits\":{},\"wall_s\":{},\"commits_per_sec\":{},\
         \"latency_ms\":{{\"mean\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}},\
         \"transactions\":{},\"writes_per_transaction\":{}}}",
        r.group_commit
            .map_or_else(|| "null".to_string(), |g| g.to_string()),
        r.commits,
        wall_s,
        num(Some(r.commits_per_sec)),
        num(Some(l.mean)),
        num(Some(l.p50)),
        num(Some(l.p90)),
        num(Some(l.p99)),
        num(Some(l.max)),
        r.transactions
            .map_or_else(|| "null".to_string(), |t| t.to_string()),
        num(r.writes_per_transaction),
    )
}

/// Runs the benchmark on `run` and then, if given, on `baseline`. While a mode runs,
/// `progress(mode, fraction)` is called about 20 times a second with the mode's name
/// (`group_commit`, `one_fsync_per_write` or `run`) and how much of it is done (0.0 to 1.0).
pub fn bench_actors(
    config: &ActorsConfig,
    run: &Target,
    baseline: Option<&Target>,
    rtt: Option<Duration>,
    progress: &dyn Fn(&str, f64),
) -> Result<ActorsReport, String> {
    if config.actors == 0 {
        return Err("--actors must be at least 1".into());
    }
    if config.threads == 0 || config.threads > config.actors {
        return Err(format!(
            "--threads must be from 1 to the number of actors ({})",
            config.actors
        ));
    }
    if config.stop == StopAfter::Commits(0) {
        return Err("--commits must be at least 1".into());
    }
    let tag = unique_tag();
    let measured = run_once(config, run, &format!("{tag}-run"), progress)?;
    let base = match baseline {
        Some(b) => Some(run_once(config, b, &format!("{tag}-baseline"), progress)?),
        None => None,
    };
    Ok(ActorsReport {
        backend: run.store.backend(),
        config: *config,
        rtt_ms: rtt.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        run: measured,
        baseline: base,
    })
}

/// The actor counts of a sweep when none are given.
pub const SWEEP_ACTORS: [usize; 5] = [1, 4, 16, 64, 256];

/// Runs [`bench_actors`] at every actor count of `counts` (one writer thread per actor), each
/// on `run` and then on `baseline`, for commits per second against actor count. `stop`,
/// `row_bytes` and `rtt` are the same at every point. `progress` gets the mode's name prefixed
/// with the actor count (`16 actors, group_commit`).
///
/// Errors: an empty list or a count of 0, and whatever [`bench_actors`] reports.
pub fn sweep(
    counts: &[usize],
    stop: StopAfter,
    row_bytes: usize,
    run: &Target,
    baseline: &Target,
    rtt: Option<Duration>,
    progress: &dyn Fn(&str, f64),
) -> Result<Vec<ActorsReport>, String> {
    if counts.is_empty() || counts.contains(&0) {
        return Err("--actors-list needs actor counts of at least 1".into());
    }
    counts
        .iter()
        .map(|&n| {
            let config = ActorsConfig {
                actors: n,
                threads: n,
                stop,
                row_bytes,
            };
            let labelled = |mode: &str, done: f64| progress(&format!("{n} actors, {mode}"), done);
            bench_actors(&config, run, Some(baseline), rtt, &labelled)
        })
        .collect()
}

/// A sweep as one JSON object, `{"sweep": [point, ...]}`, each point the object
/// [`ActorsReport::to_json`] prints for one count.
pub fn sweep_json(reports: &[ActorsReport]) -> String {
    let points: Vec<String> = reports.iter().map(ActorsReport::to_json).collect();
    format!("{{\"sweep\":[{}]}}", points.join(","))
}

fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench-actors-{}-{nanos}", std::process::id())
}

/// The name of a mode in the table and in progress reports.
pub fn mode_name(group_commit: Option<bool>) -> &'static str {
    match group_commit {
        Some(true) => "group_commit",
        Some(false) => "one_fsync_per_write",
        None => "run",
    }
}

/// What the writer threads share.
struct Shared {
    /// Set when a thread fails: the others stop.
    abort: AtomicBool,
    /// Commits claimed so far (for [`StopAfter::Commits`]).
    claimed: AtomicU64,
    /// Writers that stopped committing.
    stopped: AtomicUsize,
}

fn run_once(
    config: &ActorsConfig,
    target: &Target,
    tag: &str,
    progress: &dyn Fn(&str, f64),
) -> Result<RunResult, String> {
    let shared = Arc::new(Shared {
        abort: AtomicBool::new(false),
        claimed: AtomicU64::new(0),
        stopped: AtomicUsize::new(0),
    });
    let mode = mode_name(target.redb.as_ref().map(|s| s.options().group_commit));
    let phases = Arc::new(Phases::new(config.threads + 1));
    let handles: Vec<_> = (0..config.threads)
        .map(|t| {
            let actors: Vec<String> = (t..config.actors)
                .step_by(config.threads)
                .map(|i| format!("{tag}-{i}"))
                .collect();
            let (store, phases, shared, config) = (
                target.store.clone(),
                Arc::clone(&phases),
                Arc::clone(&shared),
                *config,
            );
            std::thread::spawn(move || writer(store, actors, config, &phases, &shared))
        })
        .collect();
    let stats = || target.redb.as_ref().map(|s| s.commit_stats());
    // Every phase change waits for all writers, so the counters and the clock cover exactly the
    // timed commits: not the setup before, nor the cleanup after.
    phases.ready.wait();
    let before = stats();
    phases.go.wait();
    let begun = Instant::now();
    let mut drawn: Option<Instant> = None;
    while shared.stopped.load(Ordering::SeqCst) < config.threads {
        if drawn.is_none_or(|t| t.elapsed() >= Duration::from_millis(50)) {
            let done = match config.stop {
                StopAfter::Duration(d) => begun.elapsed().as_secs_f64() / d.as_secs_f64(),
                StopAfter::Commits(n) => shared.claimed.load(Ordering::SeqCst) as f64 / n as f64,
            };
            progress(mode, done.min(1.0));
            drawn = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    phases.done.wait();
    let after = stats();
    phases.cleanup.wait();
    let mut histogram = LatencyHistogram::new();
    let mut commits = 0u64;
    let mut failure = None;
    let mut span: Option<(Instant, Instant)> = None;
    for h in handles {
        let outcome = h
            .join()
            .unwrap_or_else(|_| Err("a writer thread panicked".into()));
        match outcome {
            Ok(w) => {
                commits += w.commits;
                histogram.merge(&w.histogram);
                span = Some(match span {
                    None => (w.start, w.end),
                    Some((s, e)) => (s.min(w.start), e.max(w.end)),
                });
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    // From the first writer's start to the last writer's last commit.
    let wall_s = span.map_or(0.0, |(s, e)| (e - s).as_secs_f64());
    let transactions = before
        .zip(after)
        .map(|(b, a)| a.transactions.saturating_sub(b.transactions));
    Ok(RunResult {
        group_commit: target.redb.as_ref().map(|s| s.options().group_commit),
        commits,
        wall_s,
        commits_per_sec: super::latency::per_sec(commits, wall_s),
        latency_ms: Latency::of(&histogram),
        transactions,
        writes_per_transaction: transactions
            .filter(|t| *t > 0)
            .map(|t| commits as f64 / t as f64),
    })
}

/// The points where every writer and the timing thread meet.
struct Phases {
    /// Every database is open.
    ready: Barrier,
    /// The clock starts.
    go: Barrier,
    /// Every writer stopped committing.
    done: Barrier,
    /// The counters are read: writers may delete their actors.
    cleanup: Barrier,
}

impl Phases {
    fn new(n: usize) -> Self {
        Phases {
            ready: Barrier::new(n),
            go: Barrier::new(n),
            done: Barrier::new(n),
            cleanup: Barrier::new(n),
        }
    }
}

/// What one writer thread measured.
struct Written {
    commits: u64,
    histogram: LatencyHistogram,
    /// When it started committing.
    start: Instant,
    /// When its last commit returned.
    end: Instant,
}

/// One writer thread: opens its actors' databases, commits from `go` until the run stops, and
/// deletes its actors after `cleanup`. It reaches every phase whatever fails (a panic included),
/// so a failing thread never leaves the others waiting.
fn writer(
    store: SharedStore,
    actors: Vec<String>,
    config: ActorsConfig,
    phases: &Phases,
    shared: &Shared,
) -> Result<Written, String> {
    let setup = std::panic::catch_unwind(AssertUnwindSafe(|| {
        actors
            .iter()
            .map(|a| {
                let db = open_database(store.clone(), a, &OpenOptions::default())
                    .map_err(|e| format!("opening actor {a}: {e}"))?;
                db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
                    .map_err(|e| format!("creating the table of actor {a}: {e}"))?;
                Ok(db)
            })
            .collect::<Result<Vec<_>, String>>()
    }))
    .unwrap_or_else(|_| Err("a writer thread panicked while opening its databases".into()));
    if setup.is_err() {
        shared.abort.store(true, Ordering::SeqCst);
    }
    phases.ready.wait();
    phases.go.wait();
    let start = Instant::now();
    let written = setup.and_then(|dbs| {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            commit_loop(&dbs, config, start, shared)
        }))
        .unwrap_or_else(|_| Err("a writer thread panicked while committing".into()));
        if outcome.is_err() {
            shared.abort.store(true, Ordering::SeqCst);
        }
        outcome
    });
    shared.stopped.fetch_add(1, Ordering::SeqCst);
    phases.done.wait();
    phases.cleanup.wait();
    let cleanup = actors.iter().try_for_each(|a| {
        store
            .delete_range(a, &[], None)
            .map_err(|e| format!("deleting actor {a}: {e}"))
    });
    let written = written?;
    cleanup?;
    Ok(written)
}

fn commit_loop(
    dbs: &[crate::vfs::Database],
    config: ActorsConfig,
    start: Instant,
    shared: &Shared,
) -> Result<Written, String> {
    let mut histogram = LatencyHistogram::new();
    let mut commits = 0u64;
    let mut end = start;
    for db in dbs.iter().cycle() {
        if shared.abort.load(Ordering::SeqCst) {
            break;
        }
        let more = match config.stop {
            StopAfter::Duration(d) => start.elapsed() < d,
            StopAfter::Commits(n) => shared.claimed.fetch_add(1, Ordering::SeqCst) < n,
        };
        if !more {
            break;
        }
        let t0 = Instant::now();
        db.prepare_cached("INSERT INTO t(v) VALUES (randomblob(?1))")
            .and_then(|mut st| st.execute([config.row_bytes as i64]))
            .map_err(|e| format!("commit failed: {e}"))?;
        end = Instant::now();
        histogram.record(((end - t0).as_micros() as u64).max(1));
        commits += 1;
    }
    Ok(Written {
        commits,
        histogram,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_documented_field() {
        let run = RunResult {
            group_commit: Some(true),
            commits: 10,
            wall_s: 0.5,
            commits_per_sec: 20.0,
            latency_ms: Latency {
                mean: 1.0,
                p50: 1.0,
                p90: 2.0,
                p99: 3.0,
                max: 4.0,
            },
            transactions: Some(2),
            writes_per_transaction: Some(5.0),
        };
        let report = ActorsReport {
            backend: "redb",
            config: ActorsConfig {
                actors: 4,
                threads: 2,
                stop: StopAfter::Commits(10),
                row_bytes: 100,
            },
            rtt_ms: 0.0,
            run: run.clone(),
            baseline: Some(RunResult {
                group_commit: Some(false),
                commits_per_sec: 5.0,
                transactions: Some(10),
                writes_per_transaction: Some(1.0),
                ..run
            }),
        };
        assert_eq!(
            report.to_json(),
            "{\"backend\":\"redb\",\"actors\":4,\"threads\":2,\"row_bytes\":100,\"rtt_ms\":0.000,\
             \"duration_s\":null,\"commits_target\":10,\"run\":{\"group_commit\":true,\
             \"commits\":10,\"wall_s\":0.500000,\"commits_per_sec\":20.000,\"latency_ms\":{\
             \"mean\":1.000,\"p50\":1.000,\"p90\":2.000,\"p99\":3.000,\"max\":4.000},\
             \"transactions\":2,\"writes_per_transaction\":5.000},\"baseline\":{\
             \"group_commit\":false,\"commits\":10,\"wall_s\":0.500000,\"commits_per_sec\":5.000,\
             \"latency_ms\":{\"mean\":1.000,\"p50\":1.000,\"p90\":2.000,\"p99\":3.000,\
             \"max\":4.000},\"transactions\":10,\"writes_per_transaction\":1.000},\
             \"speedup\":4.000}"
        );
    }
}

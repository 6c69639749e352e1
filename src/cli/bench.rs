//! `kvsqlite bench`: benchmarks of the VFS over a store.
//!
//! `bench commit` measures write transactions on a warm database: 1, 10, 100, 1,000 and 10,000
//! rows of 100 bytes, then one transaction of 2,000 rows of 4,000 bytes (about 2,000 pages,
//! 8 MB), then one more 1-row transaction (the one right after a big one). For each it reports
//! the rows, row bytes, pages written, KV round trips and wall time, and as extra fields of the
//! same row the journaled baseline: the same transaction on a second actor opened with
//! batch-atomic writes off (`OpenOptions::batch_atomic`), `journal_kv_round_trips` and
//! `journal_wall_ms`. The benchmark's actors are deleted from the store afterwards.
//!
//! `bench actors` runs N actors (default 64), each its own database on one store, committing
//! small transactions at once (the workload is `kvsqlite::bench::actors`), and prints commits
//! per second and latency percentiles; on redb with group commit on it runs the same again with
//! group commit off and prints the ratio. With `--sweep` it does that at every actor count of
//! `--actors-list` and can chart commits per second against actors (`--chart FILE`).
//!
//! `bench pg-batch` (in `bench_pg.rs`) and `bench startup` (in `bench_startup.rs`) have modules
//! of their own.
//!
//! `bench http` starts the host of `kvsqlite serve` in this process (or loads one at `--url`)
//! and measures, over loopback HTTP, the wake latency of sleeping actors and the latency and
//! rate of a bounded mixed load (the workload is `kvsqlite::bench::http`).
//!
//! Exit codes: 0 when the benchmark ran, 2 when it could not (store unreachable, an error
//! while running; one line on standard error). `bench http` also exits 2 when any request
//! failed (a status other than 2xx): its report is printed first, then one line with the
//! count and the first failure.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kvsqlite::bench::actors::{self, ActorsConfig, ActorsReport, RunResult, StopAfter};
use kvsqlite::bench::{http, speedtest};
use kvsqlite::vfs::{open_database, OpenOptions};

use std::io::Write;

use super::{output_error, GlobalArgs, Stop};

/// Arguments of `kvsqlite bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Write transactions of growing size on a warm database.
    Commit {
        /// Print a JSON array (one object per transaction) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// An actor's wake (one round trip) against a new actor's creation and a naive wake
    /// without preload (see `kvsqlite::bench::startup`).
    Startup(super::bench_startup::StartupArgs),
    /// A 128-entry put and a 128-key read batch against the same keys one call per key, on
    /// PostgreSQL through a TCP delay proxy that counts round trips on the wire (see
    /// `kvsqlite::bench::pg_batch`).
    PgBatch(super::bench_pg::PgBatchArgs),
    /// Many actors committing small transactions at once on one store: commits per second and
    /// latency percentiles, and on redb the same with group commit off (one fsync per write).
    Actors {
        /// Actors, each its own database.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        actors: u64,
        /// Writer threads, each committing on its share of the actors in turn [default: one per
        /// actor].
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        threads: Option<u64>,
        /// Seconds each run lasts (fractions allowed) [default: 5].
        #[arg(long, value_parser = parse_seconds, conflicts_with = "commits")]
        duration: Option<Duration>,
        /// Stop each run after this many commits in all, instead of after a duration.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        commits: Option<u64>,
        /// Measure at every actor count of --actors-list (one thread per actor), each with
        /// group commit and with one fsync per write (a redb URL with group commit on only).
        #[arg(long, conflicts_with_all = ["actors", "threads"])]
        sweep: bool,
        /// The actor counts of --sweep, comma-separated [default: 1,4,16,64,256].
        #[arg(long, value_name = "N,…", value_delimiter = ',', requires = "sweep",
              value_parser = clap::value_parser!(u64).range(1..=100_000))]
        actors_list: Vec<u64>,
        /// With --sweep, also write an SVG chart of commits per second against actors to this
        /// file.
        #[arg(long, value_name = "FILE", requires = "sweep")]
        chart: Option<std::path::PathBuf>,
        /// Print one JSON object (fields in docs/src/benchmarks/commands.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A bounded load against `kvsqlite serve` over loopback HTTP: wake latency (the first
    /// request to a sleeping actor) and query latency, requests per second (see
    /// `kvsqlite::bench::http`).
    Http(HttpArgs),
    /// History: restoring the last commit and one 1,000 commits back, forking an 8 MB actor,
    /// a small commit's bytes with history and page compression on and off, and speedtest1's
    /// round trips and bytes in those configurations (see `kvsqlite::bench::history`).
    History {
        /// Commits between the second restore's target and now.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        back: u64,
        /// Rows of 4,000 bytes in the forked actor (2,000: about 8 MB).
        #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        fork_rows: u64,
        /// A speedtest1 script to replay with history on and off, page compression on and
        /// off (round trips and KV bytes written); said plainly when absent. `none` skips it.
        #[arg(long, default_value = "../shared/corpus/speedtest1/main_size10.sql")]
        speedtest: String,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cold sequential scans and random point lookups, with and without read-ahead (see
    /// `kvsqlite::bench::scan`).
    Scan {
        /// Pages of the table (about; rows of 1,000 bytes, four to a page).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        pages: u64,
        /// Random point lookups per pass.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=10_000_000))]
        lookups: u64,
        /// Seed of the random ids.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print one JSON object (fields in docs/src/benchmarks/commands.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A speedtest1 script replayed through kvsqlite and stock SQLite (rollback journal, WAL,
    /// in memory), alternating: medians per test and speed ratios (see
    /// `kvsqlite::bench::speedtest`).
    Speedtest {
        /// The script (`speedtest1 --script` output, `-- begin test N` markers).
        file: std::path::PathBuf,
        /// Runs of each of the six replays; medians are reported.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
        runs: u64,
        /// kvsqlite's replays store page values as they are, uncompressed
        /// (`OpenOptions::compress_pages = false`): what page compression costs and saves.
        #[arg(long = "no-compress")]
        no_compress: bool,
        /// Print `{"tests": [...], "total": {...}}` (fields in docs/src/benchmarks/commands.md) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `kvsqlite bench http`.
#[derive(Args, Debug)]
struct HttpArgs {
    /// Actors, each woken once then loaded.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    actors: u64,
    /// Clients sending at once, each on its own keep-alive connection.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1_024))]
    concurrency: u64,
    /// Load requests in all [default: 4000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "duration")]
    requests: Option<u64>,
    /// Seconds the load lasts (fractions allowed), instead of a number of requests.
    #[arg(long, value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Percentage of load requests that write one row (the others read one).
    #[arg(long = "write-percent", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100))]
    write_percent: u32,
    /// Rows of each actor's table.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rows: u64,
    /// The in-process host puts an actor to sleep after this many milliseconds without
    /// requests.
    #[arg(long = "idle-sleep-ms", value_name = "N", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000), conflicts_with = "url")]
    idle_sleep_ms: u64,
    /// Seed of the actors and keys each request picks.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Load a running `kvsqlite serve` at http://HOST:PORT instead of starting one (its admin
    /// token from KVSQLITE_ADMIN_TOKEN; --kv and --rtt are then not used); several URLs
    /// separated by commas: the hosts of a cluster, each request sent to one at random.
    #[arg(long, value_name = "URL[,URL…]")]
    url: Option<String>,
    /// After the load, kill -9 the last host of --url (it must run on this machine) and
    /// report the time until every actor answers again through the others.
    #[arg(long = "kill-one", requires = "url")]
    kill_one: bool,
    /// Print one JSON object (fields in docs/src/benchmarks/commands.md) instead of a table.
    #[arg(long)]
    json: bool,
}

/// Parses `--duration SECS`: a finite number of seconds above 0 and at most one day.
fn parse_seconds(arg: &str) -> Result<Duration, String> {
    let bad = || "expected a number of seconds above 0 and at most 86400".to_string();
    let s: f64 = arg.trim().parse().map_err(|_| bad())?;
    if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(s))
}

/// One measured transaction.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitResult {
    /// Rows inserted.
    pub rows: u64,
    /// Bytes per row.
    pub row_bytes: u64,
    /// Pages the VFS put.
    pub pages_written: u64,
    /// KV round trips of the transaction.
    pub kv_round_trips: u64,
    /// Wall time in milliseconds.
    pub wall_ms: f64,
    /// KV round trips of the same transaction with batch-atomic writes off (rollback journal).
    pub journal_kv_round_trips: u64,
    /// Wall time in milliseconds of the same transaction with batch-atomic writes off.
    pub journal_wall_ms: f64,
    /// Key and value bytes the transaction wrote (history on, the default: its redo record
    /// included).
    pub kv_bytes_written: u64,
    /// The same with history off.
    pub kv_bytes_written_no_history: u64,
}

/// Runs `kvsqlite bench`.
pub fn run(global: &GlobalArgs, args: BenchArgs) -> i32 {
    match args.command {
        BenchCommand::Commit { json } => super::finish("bench commit", commit(global, json)),
        BenchCommand::Startup(args) => super::bench_startup::run(global, args),
        BenchCommand::PgBatch(args) => super::bench_pg::run(global, args),
        BenchCommand::Actors {
            actors,
            threads,
            duration,
            commits,
            sweep,
            actors_list,
            chart,
            json,
        } => {
            let config = ActorsConfig {
                actors: actors as usize,
                threads: threads.unwrap_or(actors) as usize,
                stop: match commits {
                    Some(n) => StopAfter::Commits(n),
                    None => StopAfter::Duration(duration.unwrap_or(Duration::from_secs(5))),
                },
                ..ActorsConfig::default()
            };
            let outcome = if sweep {
                let counts: Vec<usize> = if actors_list.is_empty() {
                    actors::SWEEP_ACTORS.to_vec()
                } else {
                    actors_list.iter().map(|&n| n as usize).collect()
                };
                bench_actors_sweep(global, &config, &counts, chart.as_deref(), json)
            } else {
                bench_actors(global, &config, json)
            };
            super::finish("bench actors", outcome)
        }
        BenchCommand::Http(args) => super::finish("bench http", bench_http(global, args)),
        BenchCommand::Scan {
            pages,
            lookups,
            seed,
            json,
        } => super::finish("bench scan", bench_scan(global, pages, lookups, seed, json)),
        BenchCommand::History {
            back,
            fork_rows,
            speedtest,
            json,
        } => super::finish(
            "bench history",
            bench_history(global, back, fork_rows, &speedtest, json),
        ),
        BenchCommand::Speedtest {
            file,
            runs,
            no_compress,
            json,
        } => super::finish(
            "bench speedtest",
            bench_speedtest(global, &file, runs as usize, !no_compress, json),
        ),
    }
}

fn bench_actors(global: &GlobalArgs, config: &ActorsConfig, json: bool) -> Result<i32, Stop> {
    let (run, baseline) =
        actors::targets(&global.url(), kvsqlite::kv::KvLimits::default(), global.rtt)?;
    let report = with_progress(|draw| {
        let progress = |mode: &str, done: f64| draw((done * 100.0) as usize, 100, mode);
        actors::bench_actors(config, &run, baseline.as_ref(), global.rtt, &progress)
    })?;
    print_report(json, report.to_json(), || actors_table(&report))
}

/// The server of `bench http --url URL`: `http://HOST:PORT` (a trailing `/` allowed) and the
/// admin token from `KVSQLITE_ADMIN_TOKEN`.
fn http_server(url: &str, kill_one: bool) -> Result<http::Server, String> {
    let mut bases = Vec::new();
    for one in url.split(',') {
        let base = one.trim().trim_end_matches('/');
        let authority = base.strip_prefix("http://").unwrap_or("");
        if authority.is_empty() || authority.contains(['/', '?', '#', ' ', '@']) {
            return Err(if url.contains(',') {
                format!("--url must be http://HOST:PORT[,http://HOST:PORT…] (got {url:?})")
            } else {
                format!("--url must be http://HOST:PORT (got {url:?})")
            });
        }
        bases.push(base.to_string());
    }
    if kill_one && bases.len() < 2 {
        return Err("--kill-one needs the hosts of a cluster: --url A,B[,C…]".into());
    }
    let token = std::env::var(super::serve::ADMIN_TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            format!(
                "--url needs the server's admin token in {}",
                super::serve::ADMIN_TOKEN_ENV
            )
        })?;
    if bases.len() > 1 {
        return Ok(http::Server::Cluster {
            bases,
            token,
            kill_one,
        });
    }
    Ok(http::Server::Url {
        base: bases.remove(0),
        token,
    })
}

fn bench_http(global: &GlobalArgs, args: HttpArgs) -> Result<i32, Stop> {
    let config = http::HttpConfig {
        actors: args.actors as usize,
        concurrency: args.concurrency as usize,
        stop: match args.duration {
            Some(d) => http::LoadStop::Duration(d),
            None => http::LoadStop::Requests(args.requests.unwrap_or(4_000)),
        },
        write_percent: args.write_percent,
        rows: args.rows,
        idle_sleep: Duration::from_millis(args.idle_sleep_ms),
        seed: args.seed,
    };
    config.check()?;
    let server = match &args.url {
        Some(url) => http_server(url, args.kill_one)?,
        None => http::Server::InProcess(global.open_store()?),
    };
    let report = with_progress(|draw| {
        let progress = |phase: &str, done: f64| draw((done * 100.0) as usize, 100, phase);
        http::run(&config, server, global.rtt, &progress)
    })?;
    print_report(args.json, report.to_json(), || report.to_table())?;
    match &report.first_error {
        Some(first) if report.errors() > 0 => Err(Stop::Error(format!(
            "{} requests failed; the first: {first}",
            report.errors()
        ))),
        _ => Ok(0),
    }
}

/// `bench actors --sweep`: the workload of `config` (its stop and row size) at every count of
/// `counts`, on a redb URL with group commit on and on the same file with it off.
fn bench_actors_sweep(
    global: &GlobalArgs,
    config: &ActorsConfig,
    counts: &[usize],
    chart: Option<&std::path::Path>,
    json: bool,
) -> Result<i32, Stop> {
    let (run, baseline) =
        actors::targets(&global.url(), kvsqlite::kv::KvLimits::default(), global.rtt)?;
    let Some(baseline) = baseline else {
        return Err(
            "--sweep compares group commit with one fsync per write: it needs a redb:PATH URL \
             with group commit on"
                .to_string()
                .into(),
        );
    };
    let reports = with_progress(|draw| {
        let progress = |mode: &str, done: f64| draw((done * 100.0) as usize, 100, mode);
        actors::sweep(
            counts,
            config.stop,
            config.row_bytes,
            &run,
            &baseline,
            global.rtt,
            &progress,
        )
    })?;
    if let Some(path) = chart {
        let svg = kvsqlite::bench::chart::commits_vs_actors_svg(&reports)?;
        std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    print_report(json, actors::sweep_json(&reports), || sweep_table(&reports))
}

/// The readable form of `bench actors --sweep`: one row per actor count.
fn sweep_table(reports: &[ActorsReport]) -> String {
    let mut s = String::new();
    if let Some(first) = reports.first() {
        let stop = match first.config.stop {
            StopAfter::Duration(d) => format!("{:.1} s per run", d.as_secs_f64()),
            StopAfter::Commits(n) => format!("{n} commits per run"),
        };
        s += &format!(
            "store {}, {} B rows, rtt {} ms, {stop}, one thread per actor\n",
            first.backend, first.config.row_bytes, first.rtt_ms
        );
    }
    s += "actors\tgroup_commit_per_sec\tone_fsync_per_sec\tspeedup\tgroup_p50_ms\tone_fsync_p50_ms\twrites_per_fsync\n";
    for r in reports {
        let (b_rate, b_p50) = r.baseline.as_ref().map_or((f64::NAN, f64::NAN), |b| {
            (b.commits_per_sec, b.latency_ms.p50)
        });
        s += &format!(
            "{}\t{:.0}\t{:.0}\t{}\t{:.2}\t{:.2}\t{}\n",
            r.config.actors,
            r.run.commits_per_sec,
            b_rate,
            r.speedup()
                .map_or_else(|| "-".to_string(), |x| format!("{x:.2}x")),
            r.run.latency_ms.p50,
            b_p50,
            r.run
                .writes_per_transaction
                .map_or_else(|| "-".to_string(), |w| format!("{w:.1}"))
        );
    }
    s
}

pub(super) use super::progress::with_progress;

/// Prints a report: its JSON with `--json`, else its table; exit code 0.
pub(super) fn print_report(
    json: bool,
    doc: impl std::fmt::Display,
    table: impl FnOnce() -> String,
) -> Result<i32, Stop> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{doc}").map_err(output_error)?;
    } else {
        write!(out, "{}", table()).map_err(output_error)?;
    }
    Ok(0)
}

fn bench_scan(
    global: &GlobalArgs,
    pages: u64,
    lookups: u64,
    seed: u64,
    json: bool,
) -> Result<i32, Stop> {
    let store = global.open_store()?;
    let report = kvsqlite::bench::scan::run(&store, pages, lookups, seed)?;
    print_report(json, report.to_json(), || report.to_table())
}

fn bench_speedtest(
    global: &GlobalArgs,
    file: &std::path::Path,
    runs: usize,
    compress: bool,
    json: bool,
) -> Result<i32, Stop> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let script = speedtest::parse_script(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let store = global.open_store()?;
    let config = speedtest::SpeedtestConfig {
        runs,
        open: kvsqlite::vfs::OpenOptions {
            compress_pages: compress,
            ..Default::default()
        },
    };
    let report = with_progress(|draw| speedtest::run(&store, &script, &config, draw))?;
    print_report(json, report.to_json(), || report.to_table())
}

/// The readable form of `bench actors`.
fn actors_table(r: &ActorsReport) -> String {
    let c = &r.config;
    let stop = match c.stop {
        StopAfter::Duration(d) => format!("{:.1} s per run", d.as_secs_f64()),
        StopAfter::Commits(n) => format!("{n} commits per run"),
    };
    let mut s = format!(
        "{} actors, {} threads, {} B rows, store {}, rtt {} ms, {stop}\n\
         mode\tcommits\twall_s\tcommits_per_sec\tmean_ms\tp50_ms\tp90_ms\tp99_ms\tmax_ms\twrites_per_fsync\n",
        c.actors, c.threads, c.row_bytes, r.backend, r.rtt_ms
    );
    let row = |name: &str, x: &RunResult| {
        let l = &x.latency_ms;
        format!(
            "{name}\t{}\t{:.2}\t{:.0}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{}\n",
            x.commits,
            x.wall_s,
            x.commits_per_sec,
            l.mean,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            x.writes_per_transaction
                .map_or_else(|| "-".to_string(), |w| format!("{w:.1}"))
        )
    };
    s.push_str(&row(actors::mode_name(r.run.group_commit), &r.run));
    if let Some(b) = &r.baseline {
        s.push_str(&row("one_fsync_per_write", b));
    }
    if let Some(x) = r.speedup() {
        s.push_str(&format!(
            "speedup {x:.2}x (group commit / one fsync per write)\n"
        ));
    }
    s
}

fn bench_history(
    global: &GlobalArgs,
    back: u64,
    fork_rows: u64,
    speedtest: &str,
    json: bool,
) -> Result<i32, Stop> {
    let store = global.open_store()?;
    let speedtest = (speedtest != "none").then(|| std::path::PathBuf::from(speedtest));
    let plan = kvsqlite::bench::history::HistoryPlan {
        back,
        fork_rows,
        speedtest,
    };
    let r = kvsqlite::bench::history::run(&store, &plan)?;
    print_report(json, r.to_json(), || r.table())
}

fn commit(global: &GlobalArgs, json: bool) -> Result<i32, Stop> {
    let results = bench_commit(global)?;
    let table = || {
        let names: Vec<&str> = commit_fields(&CommitResult::default())
            .iter()
            .map(|(name, _)| *name)
            .collect();
        let mut s = names.join("\t") + "\n";
        for r in &results {
            let values: Vec<String> = commit_fields(r).into_iter().map(|(_, v)| v).collect();
            s += &(values.join("\t") + "\n");
        }
        s
    };
    print_report(json, to_json(&results), table)
}

/// One row's fields, named as the JSON and the table's header name them, in their order.
fn commit_fields(r: &CommitResult) -> [(&'static str, String); 9] {
    [
        ("rows", r.rows.to_string()),
        ("row_bytes", r.row_bytes.to_string()),
        ("pages_written", r.pages_written.to_string()),
        ("kv_round_trips", r.kv_round_trips.to_string()),
        ("wall_ms", format!("{:.3}", r.wall_ms)),
        (
            "journal_kv_round_trips",
            r.journal_kv_round_trips.to_string(),
        ),
        ("journal_wall_ms", format!("{:.3}", r.journal_wall_ms)),
        ("kv_bytes_written", r.kv_bytes_written.to_string()),
        (
            "kv_bytes_written_no_history",
            r.kv_bytes_written_no_history.to_string(),
        ),
    ]
}

/// Renders the results as a JSON array of objects.
pub fn to_json(results: &[CommitResult]) -> String {
    let items: Vec<String> = results
        .iter()
        .map(|r| {
            let fields: Vec<String> = commit_fields(r)
                .iter()
                .map(|(name, v)| format!("\"{name}\":{v}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The transactions of `bench commit`: (rows, bytes per row).
const COMMIT_PLAN: [(u64, u64); 7] = [
    (1, 100),
    (10, 100),
    (100, 100),
    (1_000, 100),
    (10_000, 100),
    (2_000, 4_000),
    (1, 100),
];

/// One transaction's pages written, KV round trips, wall milliseconds and bytes written.
type PlanRow = (u64, u64, f64, u64);

/// [`PlanRow`]s of each transaction of [`COMMIT_PLAN`] on a fresh actor's warm database opened
/// with `opts`; the actor is deleted afterwards.
fn run_commit_plan(
    store: &kvsqlite::kv::SharedStore,
    tag: &str,
    opts: &OpenOptions,
) -> Result<Vec<PlanRow>, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let actor = format!("bench-commit-{tag}-{}-{nanos}", std::process::id());
    let result: Result<Vec<PlanRow>, String> = (|| {
        let db = open_database(store.clone(), &actor, opts).map_err(|e| e.to_string())?;
        let e = |e: rusqlite::Error| e.to_string();
        db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .map_err(e)?;
        db.execute("INSERT INTO t(v) VALUES (zeroblob(100))", [])
            .map_err(e)?;
        let mut out = Vec::new();
        for (rows, row_bytes) in COMMIT_PLAN {
            let before = db.snapshot();
            let start = Instant::now();
            db.execute_batch("BEGIN").map_err(e)?;
            {
                let mut st = db
                    .prepare_cached("INSERT INTO t(v) VALUES (randomblob(?1))")
                    .map_err(e)?;
                for _ in 0..rows {
                    st.execute([row_bytes as i64]).map_err(e)?;
                }
            }
            db.execute_batch("COMMIT").map_err(e)?;
            let wall = start.elapsed();
            let d = db.snapshot() - before;
            out.push((
                d.pages_written,
                d.kv_round_trips,
                wall.as_secs_f64() * 1000.0,
                d.bytes_written,
            ));
        }
        Ok(out)
    })();
    let cleanup = store.delete_range(&actor, &[], None);
    let out = result?;
    cleanup.map_err(|e| format!("benchmark ran, but deleting its actor failed: {e}"))?;
    Ok(out)
}

/// Rounds of [`bench_commit`]: each runs both modes, in alternating order.
const COMMIT_ROUNDS: usize = 3;

/// Runs [`COMMIT_PLAN`] batch-atomically and with batch-atomic writes off (every transaction
/// through the rollback journal: the baseline), [`COMMIT_ROUNDS`] times each, alternating which
/// goes first (the first run of a process pays for growing the heap), and keeps each
/// transaction's median wall time. Round trips and pages do not vary between rounds.
fn bench_commit(global: &GlobalArgs) -> Result<Vec<CommitResult>, String> {
    let store = global.open_store()?;
    let journal_opts = OpenOptions {
        batch_atomic: false,
        ..OpenOptions::default()
    };
    let (mut atomic_runs, mut journal_runs) = (Vec::new(), Vec::new());
    for round in 0..COMMIT_ROUNDS {
        for journal_turn in [round % 2 == 1, round % 2 == 0] {
            if journal_turn {
                journal_runs.push(run_commit_plan(&store, "journal", &journal_opts)?);
            } else {
                atomic_runs.push(run_commit_plan(&store, "atomic", &OpenOptions::default())?);
            }
        }
    }
    let atomic = median_runs(&atomic_runs);
    let journal = median_runs(&journal_runs);
    // Bytes do not vary between rounds: one run with history off gives the baseline.
    let no_history = OpenOptions {
        history: kvsqlite::vfs::history::HistoryOptions::off(),
        ..OpenOptions::default()
    };
    let plain = run_commit_plan(&store, "no-history", &no_history)?;
    Ok(COMMIT_PLAN
        .iter()
        .zip(atomic.iter().zip(journal.iter().zip(plain.iter())))
        .map(
            |(&(rows, row_bytes), (&(pages_written, kv_round_trips, wall_ms, bytes), (j, p)))| {
                CommitResult {
                    rows,
                    row_bytes,
                    pages_written,
                    kv_round_trips,
                    wall_ms,
                    journal_kv_round_trips: j.1,
                    journal_wall_ms: j.2,
                    kv_bytes_written: bytes,
                    kv_bytes_written_no_history: p.3,
                }
            },
        )
        .collect())
}

/// The first run's pages, round trips and bytes with each transaction's median wall time.
fn median_runs(runs: &[Vec<PlanRow>]) -> Vec<PlanRow> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, &(pages, rts, _, bytes))| {
            let mut walls: Vec<f64> = runs.iter().filter_map(|r| r.get(i)).map(|r| r.2).collect();
            walls.sort_by(f64::total_cmp);
            (pages, rts, walls[walls.len() / 2], bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_runs_keeps_the_counts_and_takes_the_middle_wall_time() {
        let runs = vec![
            vec![(2, 1, 5.0, 80), (9, 3, 1.0, 90)],
            vec![(2, 1, 1.0, 80), (9, 3, 2.0, 90)],
            vec![(2, 1, 3.0, 80), (9, 3, 9.0, 90)],
        ];
        assert_eq!(median_runs(&runs), vec![(2, 1, 3.0, 80), (9, 3, 2.0, 90)]);
        assert!(median_runs(&[]).is_empty());
    }

    #[test]
    fn json_is_an_array_of_objects() {
        let r = CommitResult {
            rows: 10,
            row_bytes: 100,
            pages_written: 2,
            kv_round_trips: 1,
            wall_ms: 0.5,
            journal_kv_round_trips: 6,
            journal_wall_ms: 1.25,
            kv_bytes_written: 9000,
            kv_bytes_written_no_history: 8300,
        };
        let one = "{\"rows\":10,\"row_bytes\":100,\"pages_written\":2,\"kv_round_trips\":1,\"wall_ms\":0.500,\"journal_kv_round_trips\":6,\"journal_wall_ms\":1.250,\"kv_bytes_written\":9000,\"kv_bytes_written_no_history\":8300}";
        assert_eq!(to_json(&[r.clone(), r]), format!("[{one},{one}]"));
    }
}

//! Command-line interface: argument parsing and one module per subcommand.
//!
//! Every subcommand returns a process exit code, the same for all of them: **0** it did what
//! was asked, **1** it ran and found a failure it reports (a failed `slt` record, a key `kv get`
//! found absent), **2** it could not run (bad arguments, a malformed `--kv` URL, a store that
//! cannot be opened or reached, a missing path; or its standard output was closed before it
//! finished, as in `… | head`, which stops it quietly). Errors are printed as one line on
//! standard error, `kvsqlite <command>: <what is wrong>`, never as a panic.

mod bench;
mod bench_pg;
mod bench_startup;
mod history;
mod interop;
mod kv;
mod progress;
mod run;
mod serve;
mod slt;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// kvsqlite: per-actor SQLite databases whose pages live in a key-value store.
#[derive(Parser, Debug)]
#[command(
    name = "kvsqlite",
    version,
    about,
    after_help = "Exit codes: 0 success; 1 the command ran and reports a failure (a failed slt \
                  record, an absent key in `kv get`); 2 it could not run (bad arguments, bad \
                  store URL, store unreachable, missing path)."
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand accepts.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The store: memory:, redb:PATH, postgres://USER@HOST:PORT/DB, redis://HOST:PORT or
    /// redis-cluster://HOST:PORT[,HOST:PORT...] [env: KVSQLITE_KV, when set and not empty]
    /// [default: redb:./kvsqlite-data/kv.redb]
    #[arg(long = "kv", global = true, value_name = "URL")]
    pub kv: Option<String>,
    /// Simulate a remote store: sleep this many milliseconds once per KV round trip.
    #[arg(
        long = "rtt",
        global = true,
        value_name = "MS",
        allow_negative_numbers = true,
        value_parser = parse_rtt
    )]
    pub rtt: Option<Duration>,
}

/// The largest `--rtt`: one hour per round trip is already far past any real store.
const MAX_RTT_MS: f64 = 3_600_000.0;

/// Parses `--rtt MS`: a finite number of milliseconds from 0 to [`MAX_RTT_MS`] (fractions
/// allowed). Anything else is a usage error (exit code 2).
fn parse_rtt(arg: &str) -> Result<Duration, String> {
    let bad = || format!("expected a number of milliseconds from 0 to {MAX_RTT_MS}");
    let ms: f64 = arg.trim().parse().map_err(|_| bad())?;
    if !(ms.is_finite() && (0.0..=MAX_RTT_MS).contains(&ms)) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

impl GlobalArgs {
    /// The store URL: `--kv`, else `KVSQLITE_KV` when set and not empty, else the default.
    pub fn url(&self) -> String {
        kvsqlite::kv::url::resolve_url(self.kv.as_deref())
    }

    /// Opens the store named by `--kv` (or `KVSQLITE_KV`), wrapped in latency when `--rtt` is
    /// given.
    pub fn open_store(&self) -> Result<kvsqlite::kv::SharedStore, String> {
        kvsqlite::kv::url::open_store(&self.url(), kvsqlite::kv::KvLimits::default(), self.rtt)
            .map_err(|e| e.to_string())
    }
}

/// Why a subcommand stopped before its end.
#[derive(Debug)]
pub enum Stop {
    /// It could not do what was asked: the message is printed and the exit code is 2.
    Error(String),
    /// Standard output was closed by its reader (`kvsqlite kv list | head`): nothing more can
    /// be shown, so the command stops quietly, with exit code 2 since it did not finish (never
    /// 0: `kvsqlite slt … | head` must not pass when failures were never seen).
    OutputClosed,
}

impl From<String> for Stop {
    fn from(message: String) -> Self {
        Stop::Error(message)
    }
}

/// Maps a failed write to standard output: a closed pipe ends the command quietly, any other
/// failure is an error.
pub fn output_error(e: std::io::Error) -> Stop {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Stop::OutputClosed
    } else {
        Stop::Error(format!("cannot write to standard output: {e}"))
    }
}

/// Turns a subcommand's outcome into its exit code: its own code on success; 2 without a
/// message when its reader closed standard output; otherwise the error printed as
/// `kvsqlite <command>: <message>` and 2 (it could not run).
pub fn finish(command: &str, outcome: Result<i32, Stop>) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(Stop::OutputClosed) => 2,
        Err(Stop::Error(msg)) => {
            eprintln!("kvsqlite {command}: {msg}");
            2
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Wake (or create) an actor and run SQL files on its database.
    Run(run::RunArgs),
    /// Inspect and edit an actor's raw keys.
    Kv(kv::KvArgs),
    /// Run sqllogictest files through kvsqlite databases.
    Slt(slt::SltArgs),
    /// Benchmarks.
    Bench(bench::BenchArgs),
    /// Serve actors over HTTP (query, batch, inspector, Prometheus metrics).
    Serve(serve::ServeArgs),
    /// Load an ordinary SQLite file into an actor (refuses an existing actor without --replace).
    Import(interop::ImportArgs),
    /// Write an actor's database to an ordinary SQLite file (refuses an existing file without
    /// --force).
    Export(interop::ExportArgs),
    /// List the commits an actor's history keeps (seq, time, pages, bytes, bookmark).
    History(history::HistoryArgs),
    /// Restore an actor's database in place to a bookmark, a time or a seq (itself undoable).
    Restore(history::RestoreArgs),
    /// Create a new actor holding another's database as of a bookmark, a time or a seq.
    Fork(history::ForkArgs),
    /// Print a shell completion script (bash, elvish, fish, powershell, zsh) on standard
    /// output, e.g. `kvsqlite completions bash > ~/.local/share/bash-completion/completions/kvsqlite`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Writes the completion script for `shell` to standard output. It is generated into memory
/// first: clap_complete panics on a failed write, and a closed pipe or a full disk must end the
/// command with an error, not a panic.
fn completions(shell: clap_complete::Shell) -> Result<i32, Stop> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kvsqlite", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(output_error)?;
    Ok(0)
}

/// Logs `tracing` events on standard error, one line per event with its fields as `key=value`,
/// filtered by `RUST_LOG` (unset: errors only). `RUST_LOG=kvsqlite=debug` shows every SQL
/// statement an actor runs (target `kvsqlite::query`) and the startup phases (`kvsqlite::perf`).
fn install_logging() {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// When this environment variable is set, `kvsqlite` only parses its command line: exit code 0
/// when it parses, 2 with clap's message when it does not; nothing runs and nothing is opened.
const PARSE_ONLY_ENV: &str = "KVSQLITE_PARSE_ONLY";

/// Parses the command line and runs the subcommand; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // Checking a command line without running it (the docs test checks every `kvsqlite …`
    // line of the README and the book this way): it parsed, so exit 0 and do nothing else.
    if std::env::var_os(PARSE_ONLY_ENV).is_some() {
        return 0;
    }
    install_logging();
    match cli.command {
        Command::Run(args) => run::run(&cli.global, args),
        Command::Kv(args) => kv::run(&cli.global, args),
        Command::Slt(args) => slt::run(&cli.global, args),
        Command::Bench(args) => bench::run(&cli.global, args),
        Command::Serve(args) => serve::run(&cli.global, args),
        Command::Import(args) => interop::run_import(&cli.global, args),
        Command::Export(args) => interop::run_export(&cli.global, args),
        Command::History(args) => history::run_history(&cli.global, args),
        Command::Restore(args) => history::run_restore(&cli.global, args),
        Command::Fork(args) => history::run_fork(&cli.global, args),
        Command::Completions { shell } => finish("completions", completions(shell)),
    }
}

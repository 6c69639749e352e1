//! Command-line interface: argument parsing and one module per subcommand.
//!
//! Every subcommand returns a process exit code; errors are printed as one clear line on
//! standard error, never as a panic.

mod bench;
mod kv;
mod slt;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// kvsqlite: per-actor SQLite databases whose pages live in a key-value store.
#[derive(Parser, Debug)]
#[command(name = "kvsqlite", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand accepts.
#[derive(Args, Debug, Clone)]
pub struct GlobalArgs {
    /// The store: memory:, redb:PATH or postgres://USER@HOST:PORT/DB.
    #[arg(long = "kv", global = true, env = "KVSQLITE_KV", hide_env_values = true, default_value = kvsqlite::kv::url::DEFAULT_STORE_URL)]
    pub kv: String,
    /// Simulate a remote store: sleep this many milliseconds once per KV round trip.
    #[arg(long = "rtt", global = true, value_name = "MS")]
    pub rtt: Option<f64>,
}

impl GlobalArgs {
    /// The `--rtt` value as a duration (negative or non-finite values are refused by `open_store`).
    pub fn rtt(&self) -> Result<Option<Duration>, String> {
        match self.rtt {
            None => Ok(None),
            Some(ms) if ms.is_finite() && ms >= 0.0 => {
                Ok(Some(Duration::from_secs_f64(ms / 1000.0)))
            }
            Some(ms) => Err(format!(
                "--rtt must be a non-negative number of milliseconds, got {ms}"
            )),
        }
    }

    /// Opens the store named by `--kv`, wrapped in latency when `--rtt` is given.
    pub fn open_store(&self) -> Result<kvsqlite::kv::SharedStore, String> {
        let rtt = self.rtt()?;
        kvsqlite::kv::url::open_store(&self.kv, kvsqlite::kv::KvLimits::default(), rtt)
            .map_err(|e| e.to_string())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect and edit an actor's raw keys.
    Kv(kv::KvArgs),
    /// Run sqllogictest files through kvsqlite databases.
    Slt(slt::SltArgs),
    /// Benchmarks.
    Bench(bench::BenchArgs),
}

/// Parses the command line and runs the subcommand; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Kv(args) => kv::run(&cli.global, args),
        Command::Slt(args) => slt::run(&cli.global, args),
        Command::Bench(args) => bench::run(&cli.global, args),
    }
}

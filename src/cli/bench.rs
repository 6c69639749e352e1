//! `kvsqlite bench` (being built).

use super::GlobalArgs;

/// Arguments of `kvsqlite bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs `kvsqlite bench`.
pub fn run(_global: &GlobalArgs, _args: BenchArgs) -> i32 {
    eprintln!("kvsqlite bench: not built yet");
    2
}

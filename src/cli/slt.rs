//! `kvsqlite slt` (being built).

use super::GlobalArgs;

/// Arguments of `kvsqlite slt`.
#[derive(clap::Args, Debug)]
pub struct SltArgs {}

/// Runs `kvsqlite slt`.
pub fn run(_global: &GlobalArgs, _args: SltArgs) -> i32 {
    eprintln!("kvsqlite slt: not built yet");
    2
}

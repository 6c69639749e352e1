//! `kvsqlite kv` (being built).

use super::GlobalArgs;

/// Arguments of `kvsqlite kv`.
#[derive(clap::Args, Debug)]
pub struct KvArgs {}

/// Runs `kvsqlite kv`.
pub fn run(_global: &GlobalArgs, _args: KvArgs) -> i32 {
    eprintln!("kvsqlite kv: not built yet");
    2
}

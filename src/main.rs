//! The `kvsqlite` command: a thin entry point; everything lives in `cli`.
mod cli;

fn main() {
    std::process::exit(cli::main());
}

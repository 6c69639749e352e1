fn main() {
    std::process::exit(kvsqlite_cli_main());
}

fn kvsqlite_cli_main() -> i32 {
    0
}

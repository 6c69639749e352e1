//! Running the built `kvsqlite` binary from a test, and parsing a one-line JSON output.
//! (Each test binary uses some of these.)
#![allow(dead_code)]

use std::process::{Command, Output};

use serde_json::Value;

/// Runs `kvsqlite ARGS` (without `KVSQLITE_KV` from the environment).
pub fn kvsqlite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .env_remove("KVSQLITE_KV")
        .output()
        .unwrap()
}

/// Runs `kvsqlite ARGS`, asserts it succeeded (showing its standard error if not), and returns
/// its standard output.
pub fn stdout_of(args: &[&str]) -> String {
    let out = kvsqlite(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `kvsqlite ARGS`, asserts success and one line of output, and parses it as JSON.
pub fn json_of(args: &[&str]) -> Value {
    let text = stdout_of(args);
    assert_eq!(text.lines().count(), 1, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

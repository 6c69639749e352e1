//! Skipping a test whose fixture (a server, a corpus, a backend) is missing: a failure under
//! `CI=true`, and a visible line otherwise.
//!
//! The line is written straight to the process's standard error, not with `println!` or
//! `eprintln!`: the test harness captures those and shows them only for failing tests, so a
//! skipped test would pass silently. `cargo test` shows this line in its output.
#![allow(dead_code)]

use std::io::Write;

/// True when `CI=true`: a missing fixture must then fail the test.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails the test under `CI=true` (`CI=true and WHY`); otherwise prints `SKIPPED: WHY` where
/// `cargo test` shows it, and returns.
pub fn skip(why: &str) {
    if under_ci() {
        panic!("CI=true and {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

//! Skipping a test whose fixture (a server, a corpus, a backend) is missing: a failure under
//! `CI=true`, and a visible line otherwise.
//!
//! The line is written straight to the process's standard error, not with `println!` or
//! `eprintln!`: the test harness captures those and shows them only for failing tests, so a
//! skipped test would pass silently. `cargo test` shows this line in its output. The rule is
//! the test kit's own ([`kvsqlite::testkit::skip`]), which users' store tests follow too.
#![allow(dead_code)]

pub use kvsqlite::testkit::skip;

/// True when `CI=true`: a missing fixture must then fail the test.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

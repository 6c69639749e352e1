//! The PostgreSQL test server, in one place for every test file that needs it.
//!
//! Include it with `#[path = "common/pg.rs"] mod pg;` (or through `common/mod.rs`).
//!
//! - The URL is `KVSQLITE_TEST_POSTGRES`, default [`DEFAULT_URL`].
//! - Unreachable server: with `CI=true` the test fails; otherwise it prints
//!   `SKIPPED: postgres unavailable: …` where `cargo test` shows it (see `skip.rs`) and
//!   [`test_store`] returns `None`.
//! - The server outlives test runs, so every [`PgTest`] hands out actor ids unique to this run
//!   (pid, nanosecond clock, counter) and deletes their rows when dropped.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kvsqlite::kv::postgres::{PostgresOptions, PostgresStore};

// pg.rs and conformance.rs both include it, in one test crate (kv_postgres).
#[allow(clippy::duplicate_mod)]
#[path = "skip.rs"]
mod skip;
use kvsqlite::kv::KvError;

/// The test server when `KVSQLITE_TEST_POSTGRES` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The URL of the test server.
pub fn test_url() -> String {
    std::env::var("KVSQLITE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// Deletes, when dropped, every row of `table` whose actor id starts with `prefix`.
pub struct Cleanup {
    /// The table the test wrote to.
    pub table: String,
    /// The prefix of every actor id the test used.
    pub prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Clean up even after a failed test; a cleanup failure must not hide the test's own.
        if let Ok(mut client) = admin_client() {
            let sql = format!(
                "DELETE FROM \"{}\" WHERE actor_id LIKE $1 || '%'",
                self.table
            );
            // LIKE wildcards in the prefix are escaped (backslash is LIKE's escape).
            let pattern = self
                .prefix
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let _ = client.execute(&sql, &[&pattern]);
        }
    }
}

/// A store on the test server plus the actor ids this test created.
pub struct PgTest {
    /// The store under test.
    pub store: Arc<PostgresStore>,
    /// Every actor id of this test starts with this.
    pub prefix: String,
    counter: AtomicU64,
    _cleanup: Cleanup,
}

impl PgTest {
    /// A fresh actor id, unique to this run; its rows are deleted when `self` drops.
    pub fn actor(&self, name: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}{name}-{n}", self.prefix)
    }

    /// A plain client on the test server (for checks and cleanup outside the store).
    pub fn admin(&self) -> postgres::Client {
        admin_client().expect("the test server answered a moment ago")
    }
}

/// A plain client on the test server.
pub fn admin_client() -> Result<postgres::Client, postgres::Error> {
    postgres::Client::connect(&test_url(), postgres::NoTls)
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A prefix unique to this process, this moment and this call.
pub fn unique_prefix(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("test-{tag}-{}-{nanos}-{n}/", std::process::id())
}

/// Connects to the test server. An unreachable server is `Err(why)` outside CI and a test
/// failure (panic) under `CI=true`; any other error (a malformed test URL) always fails.
/// A caller that gets `Err` reports the skip (the conformance runner does, via `skip.rs`).
pub fn connect(options: PostgresOptions) -> Result<PostgresStore, String> {
    match PostgresStore::connect_with(&test_url(), options) {
        Ok(store) => Ok(store),
        Err(err @ KvError::Unavailable { .. }) => {
            if skip::under_ci() {
                panic!("CI=true and the postgres test server is unavailable: {err}");
            }
            Err(err.to_string())
        }
        Err(err) => panic!("the postgres test URL {} is unusable: {err}", test_url()),
    }
}

/// A store on the test server with the default options, or `None` after printing
/// `SKIPPED: postgres unavailable: …` (outside CI).
pub fn test_store() -> Option<PgTest> {
    test_store_with(PostgresOptions::default())
}

/// Like [`test_store`] with explicit options.
pub fn test_store_with(options: PostgresOptions) -> Option<PgTest> {
    match connect(options) {
        Ok(store) => {
            let prefix = unique_prefix("kv");
            Some(PgTest {
                _cleanup: Cleanup {
                    table: store.table().to_string(),
                    prefix: prefix.clone(),
                },
                store: Arc::new(store),
                prefix,
                counter: AtomicU64::new(0),
            })
        }
        Err(why) => {
            skip::skip(&format!("postgres unavailable: {why}"));
            None
        }
    }
}

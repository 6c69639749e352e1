//! The PostgreSQL test server, in one place for every test file that needs it.
//!
//! Include it with `#[path = "common/pg.rs"] mod pg;` (or through `common/mod.rs`).
//!
//! - The URL is `KVSQLITE_TEST_POSTGRES`, default [`DEFAULT_URL`].
//! - Unreachable server: with `CI=true` the test fails; otherwise it prints
//!   `skipped: postgres unavailable: …` and [`test_store`] returns `None`.
//! - The server outlives test runs, so every [`PgTest`] hands out actor ids unique to this run
//!   (pid, nanosecond clock, counter) and deletes their rows when dropped.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kvsqlite::kv::postgres::{PostgresOptions, PostgresStore};
use kvsqlite::kv::KvError;

/// The test server when `KVSQLITE_TEST_POSTGRES` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The URL of the test server.
pub fn test_url() -> String {
    std::env::var("KVSQLITE_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// A store on the test server plus the actor ids this test created.
pub struct PgTest {
    /// The store under test.
    pub store: Arc<PostgresStore>,
    /// Every actor id of this test starts with this.
    pub prefix: String,
    counter: AtomicU64,
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

impl Drop for PgTest {
    fn drop(&mut self) {
        // Clean up even after a failed test; a cleanup failure must not hide the test's own.
        if let Ok(mut client) = admin_client() {
            let sql = format!(
                "DELETE FROM \"{}\" WHERE actor_id LIKE $1 || '%'",
                self.store.table()
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

fn admin_client() -> Result<postgres::Client, postgres::Error> {
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

/// Decides what an unreachable server means: a failure under `CI=true`, a printed skip
/// otherwise.
pub fn unavailable(err: &KvError) -> Option<PgTest> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and the postgres test server is unavailable: {err}");
    }
    println!("skipped: postgres unavailable: {err}");
    None
}

/// A store on the test server with the default options, or `None` (skipped) when the server is
/// unreachable outside CI.
pub fn test_store() -> Option<PgTest> {
    test_store_with(PostgresOptions::default())
}

/// Like [`test_store`] with explicit options.
pub fn test_store_with(options: PostgresOptions) -> Option<PgTest> {
    match PostgresStore::connect_with(&test_url(), options) {
        Ok(store) => Some(PgTest {
            store: Arc::new(store),
            prefix: unique_prefix("kv"),
            counter: AtomicU64::new(0),
        }),
        Err(err @ KvError::Unavailable { .. }) => unavailable(&err),
        Err(err) => panic!("the postgres test URL {} is unusable: {err}", test_url()),
    }
}

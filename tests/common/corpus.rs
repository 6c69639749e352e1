//! Where the tests find SQLite's sqllogictest corpus, and what they do when it is absent.
//!
//! The corpus lives outside the project (`../shared/corpus/sqllogictest`, or the directory named
//! by `KVSQLITE_SLT_CORPUS`). A missing corpus is printed as a skip, or fails the test when
//! `CI=true`, so CI can never pass without having run it.

use std::path::{Path, PathBuf};

// pg.rs and conformance.rs both include it, in one test crate (kv_postgres).
#[allow(clippy::duplicate_mod)]
#[path = "skip.rs"]
mod skip;

/// The corpus directory, or `None` (printed as `SKIPPED: …`) when it is absent; panics when it is
/// absent and `CI=true`.
pub fn corpus() -> Option<PathBuf> {
    let dir = match std::env::var_os("KVSQLITE_SLT_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/sqllogictest"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    skip::skip(&format!(
        "the sqllogictest corpus is missing at {}",
        dir.display()
    ));
    None
}

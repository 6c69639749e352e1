//! sqllogictest: SQLite's SQL test-script format, run through kvsqlite databases.
//!
//! Why it exists: the strongest evidence that the VFS is right is that SQLite behaves through it
//! exactly as it does on a file. This module parses the format ([`parser`]), prints and hashes
//! values exactly like the reference runner ([`format`](mod@format), [`md5`]), runs records on a connection
//! ([`exec`]) and runs whole scripts on a [`target::Target`] ([`runner`]): stock SQLite on a file
//! ([`target::NativeTarget`]) or a kvsqlite database on a store ([`kv_target::KvTarget`], one
//! fresh actor per script).
//!
//! # Format
//! The full SQLite sqllogictest format: `statement ok|error`, `query TYPES [nosort|rowsort|
//! valuesort [LABEL]]` with `----` and one expected value per line, `hash-threshold N` (default
//! 8: results with more values are compared as `N values hashing to MD5`), `skipif`/`onlyif`
//! guards (the engine is `sqlite`), `halt`, `#` comment lines, CRLF line endings. Where the
//! reference runner is lenient this one is strict: a result with more or fewer lines than
//! expected fails, a query must hold exactly one statement and return exactly as many columns as
//! its type string names, an unparsable record fails at its line, and `statement error` is not
//! satisfied by a storage error (I/O, corruption, out of memory, locking: see
//! [`exec::SqlError::is_storage_fault`]).
//!
//! # Our directive: `control restart`
//! ```text
//! control restart
//! ```
//! closes the script's database and opens it again from its store with every cache dropped (a
//! fresh VFS file, no page cache, no preload carried over), so a script can assert that
//! everything committed survives a reopen. Under `--native` it closes and reopens the file. The
//! reference runner does not know it: scripts that use it are kvsqlite-only.
//!
//! # Known deviations
//! [`deviations`] reads the checked-in list of records that cannot match; a listed record that
//! fails is reported as *expected-different*, never silently skipped.

pub mod deviations;
pub mod exec;
pub mod format;
pub mod kv_target;
pub mod md5;
pub mod parser;
pub mod runner;
pub mod target;

pub use deviations::KnownDeviations;
pub use kv_target::{KvSession, KvTarget};
pub use runner::{
    collect_scripts, complete, run_all, run_file, run_script, FileReport, QueryOutput, RunConfig,
    Summary, DEFAULT_HASH_THRESHOLD,
};
pub use target::{NativeTarget, Session, Target};

//! kvsqlite: every actor gets its own SQLite database whose pages live in a key-value store.
//!
//! Layers, bottom up (each imports only the ones below it):
//! - [`kv`]: the key-value store trait, its backends and wrappers. Every trait call is one round trip.
//! - [`rng`]: a seeded generator for fault injection, tests and workloads.
//! - [`vfs`]: the SQLite VFS over the KV layer; [`preload`]: the preload map it reads first.
//! - [`actor`]: the actor shim over a database: one-round-trip wake, creation in one put,
//!   fencing, migrations, startup timings, the per-query log; [`metrics`]: its JSON document.
//! - [`slt`]: sqllogictest scripts run through kvsqlite databases (or stock SQLite, to compare).
//! - [`bench`](mod@bench): benchmark workloads behind `kvsqlite bench` (startup, commit, scan, speedtest,
//!   actors, http, pg-batch).
//! - `testkit` (feature `testkit`): the KV conformance suite for any `KvStore`.
//! - [`interop`]: plain SQLite files in and out of actors (`kvsqlite import`/`export`).
//!
//! Features: `bundled` (default) compiles SQLite in; `full` (default) adds every layer above the
//! VFS and the binary; `loadable_extension` (with neither) is the KV layer and the VFS calling
//! SQLite through a host's API table, for the `ext/` crate (`sqlite3_kvsqlite_init`).
#![warn(missing_docs)]

#[cfg(feature = "full")]
pub mod actor;
#[cfg(feature = "full")]
pub mod bench;
#[cfg(feature = "full")]
pub mod host;
#[cfg(feature = "full")]
pub mod interop;
pub mod kv;
#[cfg(feature = "full")]
pub mod metrics;
pub mod preload;
pub mod rng;
#[cfg(feature = "full")]
pub mod slt;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod vfs;

/// The README's Rust examples, compiled and run as doctests by `cargo test` so that what the
/// README shows keeps working.
#[cfg(all(doctest, feature = "full"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The book's Rust examples (`docs/src`), compiled and run as doctests like the README's.
#[cfg(all(doctest, feature = "full"))]
pub mod book_doctests {
    #[doc = include_str!("../docs/src/library/rust.md")]
    pub struct LibraryRust;
    #[doc = include_str!("../docs/src/library/actors.md")]
    pub struct LibraryActors;
    #[doc = include_str!("../docs/src/library/history.md")]
    pub struct LibraryHistory;
    #[doc = include_str!("../docs/src/stores/custom.md")]
    pub struct StoresCustom;
}

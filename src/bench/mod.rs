//! Benchmark workloads, kept out of the CLI so the command only parses options and prints.
//!
//! Why it exists: each performance claim (README, book) is a ratio measured side by side in one
//! run; the code that produces it lives here, where tests can run it with tiny sizes.
//!
//! - [`actors`]: many actors committing small transactions at once (group commit's gain).
//! - [`chart`]: SVG charts of the results (`--chart FILE`).
//! - [`latency`]: latency percentiles in milliseconds, as the reports give them.
//! - [`http`]: a bounded load against `kvsqlite serve` over loopback: wake and query latency.
//! - [`delay_proxy`]: a loopback TCP proxy that delays traffic and counts round trips on the wire.
//! - [`history`]: restores, a fork, and a commit's bytes with history on and off.
//! - [`pg_batch`]: a batched put and read against one call per key, on PostgreSQL through the proxy.
//! - [`scan`]: cold sequential scans and random lookups, with and without read-ahead.
//! - [`speedtest`]: a speedtest1 script through kvsqlite and stock SQLite, side by side.
//! - [`startup`]: an actor's wake against a new actor's creation and a naive wake without preload.

pub mod actors;
pub mod chart;
pub mod delay_proxy;
pub mod history;
pub mod http;
pub mod latency;
pub mod pg_batch;
pub mod scan;
pub mod speedtest;
pub mod startup;

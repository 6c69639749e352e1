//! Benchmark workloads the CLI's `kvsqlite bench` runs and prints (the CLI only parses and
//! prints; the measuring lives here so tests and other tools can call it).
//!
//! - [`startup`]: an actor's wake against a new actor's creation and a naive wake without preload.

pub mod startup;

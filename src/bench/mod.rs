//! Benchmark workloads, kept out of the CLI so the command only parses options and prints.
//!
//! Why it exists: each performance claim in the README is a ratio measured side by side in one
//! run; the code that produces it lives here, where tests can run it with tiny sizes.

pub mod actors;

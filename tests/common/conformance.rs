//! The KV conformance suite, now public in `kvsqlite::testkit` (the `testkit` feature, enabled
//! for this repository's tests by its self dev-dependency): this shim keeps the test files'
//! `conformance::…` paths and their unqualified `kv_conformance_tests!`.
#![allow(unused_imports)]

pub use kvsqlite::testkit::*;

/// `kvsqlite::kv_conformance_tests!`, callable unqualified in the including test crate.
#[macro_export]
macro_rules! kv_conformance_tests {
    ($($args:tt)*) => {
        kvsqlite::kv_conformance_tests!($($args)*);
    };
}

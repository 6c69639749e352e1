//! The test kit from outside the library: `examples/custom_store.rs` (a `BTreeMap` store written
//! only against the public API) must pass the whole KV conformance suite. Plain `cargo test`
//! runs this because the crate's self dev-dependency turns the `testkit` feature on for tests.

#[path = "../examples/custom_store.rs"]
mod custom_store;

#[test]
fn the_example_store_passes_the_conformance_suite() {
    custom_store::check().expect("the example store");
}

//! The test kit from outside the library: `examples/custom_store.rs` (a `BTreeMap` store written
//! only against the public API) must pass the whole KV conformance suite. Plain `cargo test`
//! runs this because the crate's self dev-dependency turns the `testkit` feature on for tests.

#[path = "../examples/custom_store.rs"]
mod custom_store;

#[test]
fn the_example_store_passes_the_conformance_suite() {
    custom_store::check().expect("the example store");
}

/// The kit has teeth from outside too: the example store with its preconditions ignored fails
/// the precondition check.
#[test]
fn a_store_that_ignores_preconditions_fails_the_kit() {
    use std::sync::Arc;

    use kvsqlite::kv::{
        KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore,
        WriteBatch,
    };
    use kvsqlite::testkit::{preconditions_met_and_unmet, Fixture};

    struct Careless(custom_store::BTreeStore);
    impl KvStore for Careless {
        fn backend(&self) -> &'static str {
            "careless"
        }
        fn limits(&self) -> &KvLimits {
            self.0.limits()
        }
        fn get(&self, a: &str, k: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, KvError> {
            self.0.get(a, k)
        }
        fn list(&self, a: &str, r: &ListRequest) -> Result<ListPage, KvError> {
            self.0.list(a, r)
        }
        fn write(&self, a: &str, b: &WriteBatch) -> Result<(), KvError> {
            let mut b = b.clone();
            b.preconditions.clear();
            self.0.write(a, &b)
        }
        fn delete_range(&self, a: &str, s: &[u8], e: Option<&[u8]>) -> Result<(), KvError> {
            self.0.delete_range(a, s, e)
        }
        fn batch_read(&self, a: &str, o: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
            self.0.batch_read(a, o)
        }
    }

    let store: SharedStore = Arc::new(Careless(custom_store::BTreeStore::default()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        preconditions_met_and_unmet(Fixture::new(store, "careless"));
    }));
    let payload = outcome.expect_err("a store ignoring preconditions passed");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    // It failed where it must: at the first unmet precondition it let through.
    assert!(
        message.contains(kvsqlite::testkit::UNMET_WRITTEN),
        "{message}"
    );
}

//! The KV conformance suite, public behind the `testkit` feature: one set of behavioural
//! checks every [`KvStore`] must pass for the VFS to rely on it. The repository's own backends
//! run it (`tests/kv_conformance.rs`, `kv_postgres.rs`, `kv_redis.rs`), and so can a store of
//! your own: [`run_conformance`] runs every check on fresh stores from a closure, and
//! `examples/custom_store.rs` shows a small complete backend passing it.
//!
//! Or one `#[test]` per check, from a test file:
//!
//! ```ignore
//! use crate::kv_conformance_tests;
//! use crate::testkit::Fixture;
//!
//! fn memory_fixture() -> Option<Fixture> {
//!     Some(Fixture::new(Arc::new(MemoryStore::new()), "memory"))
//! }
//! kv_conformance_tests!(memory, memory_fixture);
//! ```
//!
//! `kv_conformance_tests!(NAME, FIXTURE_FN)` expands to `mod NAME { #[test] fn … }`, one test per
//! behaviour, so every test name contains the backend name; `kv_conformance_tests!(NAME,
//! FIXTURE_FN, [EXTRA, …])` adds tests that only some backends take (persistent ones:
//! `persistence_across_reopen`). `FIXTURE_FN` returns either
//! `Option<Fixture>` or `Result<Fixture, String>`; `None`/`Err(why)` means the backend is
//! unavailable: under `CI=true` the test fails, otherwise it prints `SKIPPED: NAME
//! unavailable: why` where `cargo test` shows it (see `skip.rs`) and returns.
//!
//! Each test gets a fresh fixture whose `prefix` is unique (process id, time, counter), and uses
//! only actor ids starting with it, so runs against a long-lived server never see each other's
//! data.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::kv::{key_after, KeyRange, KvError, KvStore, ListPage, ListRequest, SharedStore};

mod checks_a;
mod checks_b;
pub use checks_a::*;
pub use checks_b::*;

/// Fails the calling test under `CI=true` (`CI=true and WHY`); otherwise prints `SKIPPED: WHY`
/// straight to standard error (not captured by the test harness) and returns.
pub fn skip(why: &str) {
    use std::io::Write;
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// A store under test.
pub struct Fixture {
    /// A fresh store handle.
    pub store: SharedStore,
    /// A prefix unique to this test; every actor id the test uses starts with it.
    pub prefix: String,
    /// Opens the same store again (after the test dropped every handle to it); `None` for stores
    /// that do not persist.
    pub reopen: Option<Box<dyn Fn() -> SharedStore>>,
    /// Anything that must live as long as the store (a temporary directory).
    pub guard: Option<Box<dyn std::any::Any>>,
}

impl Fixture {
    /// A fixture over `store` with a fresh unique prefix derived from `backend`.
    pub fn new(store: SharedStore, backend: &str) -> Self {
        Fixture {
            store,
            prefix: unique_prefix(backend),
            reopen: None,
            guard: None,
        }
    }

    /// The same fixture, able to reopen its store.
    pub fn with_reopen(mut self, reopen: impl Fn() -> SharedStore + 'static) -> Self {
        self.reopen = Some(Box::new(reopen));
        self
    }

    /// The same fixture, keeping `guard` alive as long as itself.
    pub fn with_guard(mut self, guard: impl std::any::Any) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// An actor id unique to this test.
    pub fn actor(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name)
    }
}

/// A prefix no other test (in this or any other process) uses: backend, process id, time, counter.
pub fn unique_prefix(backend: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{backend}-{}-{nanos}-{}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// What a fixture function may return: `Option<Fixture>` or `Result<Fixture, String>`.
pub trait IntoFixture {
    /// The fixture, or why the backend is unavailable.
    fn into_fixture(self) -> Result<Fixture, String>;
}

impl IntoFixture for Option<Fixture> {
    fn into_fixture(self) -> Result<Fixture, String> {
        self.ok_or_else(|| "the fixture returned None".to_string())
    }
}

impl IntoFixture for Result<Fixture, String> {
    fn into_fixture(self) -> Result<Fixture, String> {
        self
    }
}

/// Runs one conformance test. A fixture that cannot be made fails the test under `CI=true`,
/// and otherwise prints `SKIPPED: BACKEND unavailable: why` where `cargo test` shows it.
pub fn run<F: IntoFixture>(backend: &str, fixture: fn() -> F, test: fn(Fixture)) {
    match fixture().into_fixture() {
        Ok(fx) => test(fx),
        Err(why) => skip(&format!("{backend} unavailable: {why}")),
    }
}

/// Expands to `mod $backend { #[test] fn … }`: the whole conformance suite against one backend.
#[macro_export]
macro_rules! kv_conformance_tests {
    ($backend:ident, $fixture:path) => {
        $crate::kv_conformance_tests!($backend, $fixture, []);
    };
    ($backend:ident, $fixture:path, [$($extra:ident),* $(,)?]) => {
        $crate::kv_conformance_tests!(@each $backend, $fixture, [
            get_put_delete_round_trip,
            empty_value_is_a_value,
            list_order_and_prefix_edges,
            list_limit_and_continuation,
            list_byte_budget,
            list_matches_model_seeded,
            random_ops_match_model_seeded,
            delete_range_bounds,
            limit_errors_write_nothing,
            limits_accept_exact_maxima,
            preconditions_met_and_unmet,
            precondition_race_16_threads_one_wins,
            crash_put_is_all_or_nothing,
            crash_at_every_call_of_a_workload,
            injected_faults_are_not_applied,
            actors_are_isolated,
            concurrent_16_threads_many_actors,
            mixed_batch_read,
            one_round_trip_per_call,
            $($extra,)*
        ], [$($extra),*]);
    };
    (@each $backend:ident, $fixture:path, [$($test:ident),* $(,)?], [$($extra:ident),*]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;

            /// The list above is kept by hand beside `testkit::CHECKS`: the two must name the
            /// same checks in the same order (then the extras), or the macro and
            /// `run_conformance` would run different suites.
            #[test]
            fn the_list_is_testkit_checks() {
                let listed: &[&str] = &[$(stringify!($test)),*];
                let expected: Vec<&str> = $crate::testkit::CHECKS
                    .iter()
                    .map(|(name, _)| *name)
                    .chain([$(stringify!($extra)),*])
                    .collect();
                assert_eq!(listed, expected.as_slice());
            }
            $(
                #[test]
                fn $test() {
                    $crate::testkit::run(
                        stringify!($backend),
                        $fixture,
                        $crate::testkit::$test,
                    );
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `s` as key bytes.
pub fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Every entry of `actor`, paging through the listing with a small limit.
pub fn list_all(store: &dyn KvStore, actor: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut req = ListRequest::prefix(Vec::new()).with_limit(1000);
    loop {
        let page = store.list(actor, &req).expect("list");
        out.extend(page.entries);
        match page.next_start {
            Some(next) => {
                req = ListRequest::range(next, None).with_limit(1000);
            }
            None => return out,
        }
    }
}

/// What a listing of `req` over `model` must return, computed independently of any backend:
/// entries of the range in order, stopping at `limit` or once the byte budget is reached (but
/// never before the first entry); `next_start` only when keys remain.
pub fn model_list(
    model: &BTreeMap<Vec<u8>, Vec<u8>>,
    req: &ListRequest,
    default_limit: usize,
) -> ListPage {
    let limit = req.limit.unwrap_or(default_limit);
    let matching: Vec<(&Vec<u8>, &Vec<u8>)> = model
        .iter()
        .filter(|(k, _)| match &req.range {
            KeyRange::Prefix(p) => k.starts_with(p),
            KeyRange::Range { start, end } => {
                k.as_slice() >= start.as_slice()
                    && end.as_ref().is_none_or(|e| k.as_slice() < e.as_slice())
            }
        })
        .collect();
    let mut page = ListPage::default();
    let mut bytes = 0;
    for (i, (k, v)) in matching.iter().enumerate() {
        let budget_spent = i > 0 && req.max_bytes.is_some_and(|m| bytes >= m);
        if i == limit || budget_spent {
            page.next_start = Some(key_after(&page.entries.last().expect("entry").0));
            break;
        }
        bytes += k.len() + v.len();
        page.entries.push(((*k).clone(), (*v).clone()));
    }
    page
}

pub(crate) fn entries(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs.iter().map(|(a, b)| (k(a), k(b))).collect()
}

pub(crate) fn is_conflict_on(err: &KvError, key: &[u8]) -> bool {
    matches!(err, KvError::Conflict { key: k } if k == key)
}

/// One conformance check: it takes a fixture and panics on a broken promise.
pub type Check = fn(Fixture);

/// Every check [`kv_conformance_tests!`](crate::kv_conformance_tests) runs on every backend, by
/// name (the persistent stores' `persistence_across_reopen` takes a reopen function and is not
/// among them).
pub const CHECKS: &[(&str, Check)] = &[
    ("get_put_delete_round_trip", get_put_delete_round_trip),
    ("empty_value_is_a_value", empty_value_is_a_value),
    ("list_order_and_prefix_edges", list_order_and_prefix_edges),
    ("list_limit_and_continuation", list_limit_and_continuation),
    ("list_byte_budget", list_byte_budget),
    ("list_matches_model_seeded", list_matches_model_seeded),
    (
        "random_ops_match_model_seeded",
        random_ops_match_model_seeded,
    ),
    ("delete_range_bounds", delete_range_bounds),
    ("limit_errors_write_nothing", limit_errors_write_nothing),
    ("limits_accept_exact_maxima", limits_accept_exact_maxima),
    ("preconditions_met_and_unmet", preconditions_met_and_unmet),
    (
        "precondition_race_16_threads_one_wins",
        precondition_race_16_threads_one_wins,
    ),
    ("crash_put_is_all_or_nothing", crash_put_is_all_or_nothing),
    (
        "crash_at_every_call_of_a_workload",
        crash_at_every_call_of_a_workload,
    ),
    (
        "injected_faults_are_not_applied",
        injected_faults_are_not_applied,
    ),
    ("actors_are_isolated", actors_are_isolated),
    (
        "concurrent_16_threads_many_actors",
        concurrent_16_threads_many_actors,
    ),
    ("mixed_batch_read", mixed_batch_read),
    ("one_round_trip_per_call", one_round_trip_per_call),
];

/// Runs every check of [`CHECKS`] on a fresh store from `make_store`, in order, printing each
/// name on standard error; a check that fails panics with what it found. Returns how many ran.
///
/// `make_store` must return an empty store (or one the checks' unique actor prefixes keep
/// apart from other data) with [`KvLimits::default`]: several checks test the default limits.
pub fn run_conformance(backend: &str, make_store: impl Fn() -> SharedStore) -> usize {
    for (name, check) in CHECKS {
        eprintln!("conformance {backend}: {name}");
        check(Fixture::new(make_store(), backend));
    }
    CHECKS.len()
}

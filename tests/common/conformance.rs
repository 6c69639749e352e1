//! The KV conformance suite: one set of behavioural tests every backend must pass.
//!
//! How to use it from a test file (the module must be mounted as `conformance` at the crate root,
//! because the macro refers to `$crate::conformance`):
//!
//! ```ignore
//! #[path = "common/conformance.rs"]
//! mod conformance;
//! use conformance::Fixture;
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
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use kvsqlite::kv::counting::{CountingStore, OpKind};
use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::{
    key_after, KeyRange, KvError, KvLimits, KvStore, ListPage, ListRequest, Precondition, ReadOp,
    ReadResult, SharedStore, WriteBatch,
};
use kvsqlite::rng::Rng;

// pg.rs and conformance.rs both include it, in one test crate (kv_postgres).
#[allow(clippy::duplicate_mod)]
#[path = "skip.rs"]
mod skip;

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
        Err(why) => skip::skip(&format!("{backend} unavailable: {why}")),
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
        ]);
    };
    (@each $backend:ident, $fixture:path, [$($test:ident),* $(,)?]) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $test() {
                    $crate::conformance::run(
                        stringify!($backend),
                        $fixture,
                        $crate::conformance::$test,
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

fn entries(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs.iter().map(|(a, b)| (k(a), k(b))).collect()
}

fn is_conflict_on(err: &KvError, key: &[u8]) -> bool {
    matches!(err, KvError::Conflict { key: k } if k == key)
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Puts, gets (in the order asked, absent keys as `None`), overwrites and deletes.
pub fn get_put_delete_round_trip(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    assert_eq!(s.get(&a, &[k("x")]).unwrap(), vec![None]);
    s.put(&a, entries(&[("x", "1"), ("y", "2"), ("z", "3")]))
        .unwrap();
    assert_eq!(
        s.get(&a, &[k("z"), k("nope"), k("x"), k("y"), k("x")])
            .unwrap(),
        vec![Some(k("3")), None, Some(k("1")), Some(k("2")), Some(k("1"))]
    );
    s.put(&a, entries(&[("y", "two")])).unwrap();
    assert_eq!(s.get(&a, &[k("y")]).unwrap(), vec![Some(k("two"))]);
    s.delete(&a, vec![k("x"), k("never-there")]).unwrap();
    assert_eq!(
        s.get(&a, &[k("x"), k("y"), k("z")]).unwrap(),
        vec![None, Some(k("two")), Some(k("3"))]
    );
    // A write mixing puts and deletes is one atomic batch.
    s.write(
        &a,
        &WriteBatch {
            puts: entries(&[("w", "4")]),
            deletes: vec![k("z")],
            preconditions: vec![],
        },
    )
    .unwrap();
    assert_eq!(
        list_all(s.as_ref(), &a),
        entries(&[("w", "4"), ("y", "two")])
    );
    // An empty get is fine and answers nothing.
    assert_eq!(s.get(&a, &[]).unwrap(), Vec::<Option<Vec<u8>>>::new());
    // Binary keys and values survive unchanged.
    let bin_k = vec![0u8, 0xFF, 0x80, 0x00];
    let bin_v: Vec<u8> = (0..=255u8).collect();
    s.put(&a, vec![(bin_k.clone(), bin_v.clone())]).unwrap();
    assert_eq!(s.get(&a, &[bin_k]).unwrap(), vec![Some(bin_v)]);
}

/// An empty value is stored and read back as an empty value, distinct from an absent key.
pub fn empty_value_is_a_value(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    s.put(&a, vec![(k("e"), vec![])]).unwrap();
    assert_eq!(
        s.get(&a, &[k("e"), k("f")]).unwrap(),
        vec![Some(vec![]), None]
    );
    assert_eq!(list_all(s.as_ref(), &a), vec![(k("e"), vec![])]);
    // Preconditions tell an empty value from an absent key.
    let err = s
        .put_if(
            &a,
            entries(&[("g", "1")]),
            vec![Precondition::absent(k("e"))],
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"e"), "{err:?}");
    s.put_if(
        &a,
        entries(&[("g", "1")]),
        vec![Precondition::equals(k("e"), vec![])],
    )
    .unwrap();
    let err = s
        .put_if(
            &a,
            entries(&[("h", "1")]),
            vec![Precondition::equals(k("f"), vec![])],
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"f"), "{err:?}");
}

fn put_keys(s: &SharedStore, actor: &str, keys: &[Vec<u8>]) {
    for chunk in keys.chunks(100) {
        s.put(
            actor,
            chunk.iter().map(|k| (k.clone(), k.clone())).collect(),
        )
        .unwrap();
    }
}

fn keys_of(page: &ListPage) -> Vec<Vec<u8>> {
    page.entries.iter().map(|(k, _)| k.clone()).collect()
}

/// Byte order, prefixes ending in 0xFF, the empty prefix, exclusive ends, inverted ranges.
pub fn list_order_and_prefix_edges(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    let keys: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x01],
        vec![0x01, 0x00],
        vec![0x01, 0xFE, 0xFF],
        vec![0x01, 0xFF],
        vec![0x01, 0xFF, 0x00],
        vec![0x01, 0xFF, 0xFF],
        vec![0x02],
        vec![0x7F],
        vec![0x80],
        vec![0xFF],
        vec![0xFF, 0x00],
        vec![0xFF, 0xFF],
        vec![0xFF, 0xFF, 0xFF],
    ];
    // Insert out of order.
    let mut shuffled = keys.clone();
    shuffled.reverse();
    put_keys(s, &a, &shuffled);
    let all = s.list(&a, &ListRequest::prefix(vec![])).unwrap();
    assert_eq!(
        keys_of(&all),
        keys,
        "empty prefix lists everything in byte order"
    );
    assert!(all.is_complete());

    let l = |req: ListRequest| keys_of(&s.list(&a, &req).unwrap());
    assert_eq!(
        l(ListRequest::prefix(vec![0x01, 0xFF])),
        vec![
            vec![0x01, 0xFF],
            vec![0x01, 0xFF, 0x00],
            vec![0x01, 0xFF, 0xFF]
        ]
    );
    assert_eq!(
        l(ListRequest::prefix(vec![0xFF])),
        vec![
            vec![0xFF],
            vec![0xFF, 0x00],
            vec![0xFF, 0xFF],
            vec![0xFF, 0xFF, 0xFF]
        ]
    );
    assert_eq!(
        l(ListRequest::prefix(vec![0xFF, 0xFF])),
        vec![vec![0xFF, 0xFF], vec![0xFF, 0xFF, 0xFF]]
    );
    assert_eq!(
        l(ListRequest::prefix(vec![0xFF, 0xFF, 0xFF, 0xFF])),
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(
        l(ListRequest::prefix(vec![0x01])),
        vec![
            vec![0x01],
            vec![0x01, 0x00],
            vec![0x01, 0xFE, 0xFF],
            vec![0x01, 0xFF],
            vec![0x01, 0xFF, 0x00],
            vec![0x01, 0xFF, 0xFF]
        ]
    );
    assert_eq!(l(ListRequest::prefix(vec![0x03])), Vec::<Vec<u8>>::new());
    // [start, end): start inclusive, end exclusive.
    assert_eq!(
        l(ListRequest::range(vec![0x01, 0xFF], Some(vec![0x7F]))),
        vec![
            vec![0x01, 0xFF],
            vec![0x01, 0xFF, 0x00],
            vec![0x01, 0xFF, 0xFF],
            vec![0x02]
        ]
    );
    assert_eq!(
        l(ListRequest::range(vec![0x80], None)),
        vec![
            vec![0x80],
            vec![0xFF],
            vec![0xFF, 0x00],
            vec![0xFF, 0xFF],
            vec![0xFF, 0xFF, 0xFF]
        ]
    );
    // Empty and inverted ranges list nothing (and do not fail).
    assert_eq!(
        l(ListRequest::range(vec![0x02], Some(vec![0x02]))),
        Vec::<Vec<u8>>::new()
    );
    assert_eq!(
        l(ListRequest::range(vec![0x80], Some(vec![0x02]))),
        Vec::<Vec<u8>>::new()
    );
    // An actor with no keys lists nothing, completely.
    let empty = s
        .list(&fx.actor("nobody"), &ListRequest::prefix(vec![]))
        .unwrap();
    assert_eq!(empty, ListPage::default());
}

/// A limit stops the listing; `next_start` continues it exactly; the last page is complete.
pub fn list_limit_and_continuation(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    let keys: Vec<Vec<u8>> = (0..10u8).map(|i| vec![b'k', i]).collect();
    put_keys(s, &a, &keys);
    // Another prefix, to check the continuation stays inside the prefix.
    put_keys(s, &a, &[k("l"), k("m")]);
    let mut got = Vec::new();
    let mut req = ListRequest::prefix(k("k")).with_limit(3);
    let mut pages = 0;
    loop {
        let page = s.list(&a, &req).unwrap();
        pages += 1;
        assert!(page.entries.len() <= 3);
        got.extend(keys_of(&page));
        match page.next_start {
            Some(next) => {
                assert_eq!(next, key_after(&got[got.len() - 1]));
                req = ListRequest::range(next, Some(k("l"))).with_limit(3);
            }
            None => break,
        }
    }
    assert_eq!(got, keys);
    assert_eq!(pages, 4, "3 + 3 + 3 + 1");
    // A limit equal to the number of keys reads the range completely.
    let page = s
        .list(&a, &ListRequest::prefix(k("k")).with_limit(10))
        .unwrap();
    assert_eq!(page.entries.len(), 10);
    assert!(
        page.is_complete(),
        "no key remains, so the page is complete"
    );
    let page = s
        .list(&a, &ListRequest::prefix(k("k")).with_limit(9))
        .unwrap();
    assert_eq!(page.next_start, Some(key_after(&keys[8])));
    // Limit 1 over everything.
    let page = s
        .list(&a, &ListRequest::prefix(vec![]).with_limit(1))
        .unwrap();
    assert_eq!(keys_of(&page), vec![keys[0].clone()]);
    assert_eq!(page.next_start, Some(key_after(&keys[0])));
}

/// A byte budget stops the listing once reached, never before the first entry.
pub fn list_byte_budget(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    // Keys of 2 bytes, values of 10: each entry is 12 bytes.
    let e: Vec<(Vec<u8>, Vec<u8>)> = (0..5u8).map(|i| (vec![b'b', i], vec![i; 10])).collect();
    s.put(&a, e.clone()).unwrap();
    let page = |budget: usize| {
        s.list(&a, &ListRequest::prefix(k("b")).with_max_bytes(budget))
            .unwrap()
    };
    // 12 < 25, 24 < 25, 36 >= 25: three entries.
    let p = page(25);
    assert_eq!(p.entries, e[..3].to_vec());
    assert_eq!(p.next_start, Some(key_after(&e[2].0)));
    // Exactly reaching the budget stops: 12, 24 >= 24.
    let p = page(24);
    assert_eq!(p.entries, e[..2].to_vec());
    // A budget smaller than one entry still returns one.
    for budget in [0, 1] {
        let p = page(budget);
        assert_eq!(p.entries, e[..1].to_vec(), "budget {budget}");
        assert_eq!(p.next_start, Some(key_after(&e[0].0)));
    }
    // A budget covering everything is complete.
    let p = page(1000);
    assert_eq!(p.entries, e);
    assert!(p.is_complete());
    // Budget and limit together: whichever comes first.
    let p = s
        .list(
            &a,
            &ListRequest::prefix(k("b"))
                .with_max_bytes(1000)
                .with_limit(2),
        )
        .unwrap();
    assert_eq!(p.entries, e[..2].to_vec());
}

/// Seeded property test: random keys over a tiny alphabet (many shared prefixes and 0xFF bytes),
/// random prefixes, ranges, limits and budgets, compared with an independent model.
pub fn list_matches_model_seeded(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    let alphabet = [0x00u8, 0x01, 0x7F, 0x80, 0xFE, 0xFF];
    let mut rng = Rng::new(0x5EED_0001);
    let mut model = BTreeMap::new();
    let rand_key = |rng: &mut Rng, min: u64| -> Vec<u8> {
        let len = min + rng.below(4 - min);
        (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect()
    };
    let mut batch = Vec::new();
    for _ in 0..150 {
        let key = rand_key(&mut rng, 1);
        let vlen = rng.below(20) as usize;
        let val = rng.bytes(vlen);
        if model.insert(key.clone(), val.clone()).is_none() {
            batch.push((key, val));
        } else {
            // An overwrite: flush the pending batch first so the later value wins.
            s.put(&a, std::mem::take(&mut batch)).unwrap();
            s.put(&a, vec![(key, val)]).unwrap();
        }
        if batch.len() == 50 {
            s.put(&a, std::mem::take(&mut batch)).unwrap();
        }
    }
    s.put(&a, batch).unwrap();
    let default_limit = s.limits().default_list_limit;
    for round in 0..300 {
        let mut req = if rng.below(2) == 0 {
            ListRequest::prefix(rand_key(&mut rng, 0))
        } else {
            let start = rand_key(&mut rng, 0);
            let end = (rng.below(4) != 0).then(|| rand_key(&mut rng, 1));
            ListRequest::range(start, end)
        };
        if rng.below(2) == 0 {
            req = req.with_limit(1 + rng.below(8) as usize);
        }
        if rng.below(3) == 0 {
            req = req.with_max_bytes(rng.below(60) as usize);
        }
        let got = s.list(&a, &req).unwrap();
        assert_eq!(
            got,
            model_list(&model, &req, default_limit),
            "round {round}: {req:?}"
        );
    }
}

/// Seeded differential test: a random sequence of puts, deletes, range deletes, conditional
/// writes (met and unmet) and reads over two actors, checked against an in-test model after
/// every call.
pub fn random_ops_match_model_seeded(fx: Fixture) {
    let s = &fx.store;
    let actors = [fx.actor("x"), fx.actor("y")];
    let mut models = [BTreeMap::new(), BTreeMap::new()];
    let mut rng = Rng::new(0xD1FF);
    let key = |rng: &mut Rng| -> Vec<u8> {
        let len = 1 + rng.below(3) as usize;
        (0..len)
            .map(|_| [0x00u8, 0x10, 0xFF][rng.below(3) as usize])
            .collect()
    };
    for step in 0..300 {
        let i = rng.below(2) as usize;
        let (a, model) = (&actors[i], &mut models[i]);
        match rng.below(7) {
            0 | 1 => {
                let mut puts = BTreeMap::new();
                for _ in 0..1 + rng.below(5) {
                    let k = key(&mut rng);
                    let vlen = rng.below(40) as usize;
                    puts.insert(k, rng.bytes(vlen));
                }
                let mut deletes = Vec::new();
                if rng.below(2) == 0 {
                    let k = key(&mut rng);
                    if !puts.contains_key(&k) {
                        deletes.push(k);
                    }
                }
                s.write(
                    a,
                    &WriteBatch {
                        puts: puts.clone().into_iter().collect(),
                        deletes: deletes.clone(),
                        preconditions: vec![],
                    },
                )
                .unwrap();
                for k in deletes {
                    model.remove(&k);
                }
                model.extend(puts);
            }
            2 => {
                // A conditional write whose precondition is met or not, decided by the model.
                let guard = key(&mut rng);
                let met = rng.below(2) == 0;
                let current = model.get(&guard).cloned();
                let expected = if met {
                    current.clone()
                } else {
                    match &current {
                        Some(_) => None,
                        None => Some(vec![9]),
                    }
                };
                let k = key(&mut rng);
                let v = rng.bytes(8);
                let r = s.put_if(
                    a,
                    vec![(k.clone(), v.clone())],
                    vec![Precondition {
                        key: guard.clone(),
                        expected,
                    }],
                );
                if met {
                    r.unwrap();
                    model.insert(k, v);
                } else {
                    assert_eq!(
                        r.unwrap_err(),
                        KvError::Conflict { key: guard },
                        "step {step}"
                    );
                }
            }
            3 => {
                let (mut lo, mut hi) = (key(&mut rng), key(&mut rng));
                if lo > hi {
                    std::mem::swap(&mut lo, &mut hi);
                }
                let end = (rng.below(4) != 0).then_some(hi);
                s.delete_range(a, &lo, end.as_deref()).unwrap();
                model.retain(|k, _| {
                    k.as_slice() < lo.as_slice() || end.as_ref().is_some_and(|e| k >= e)
                });
            }
            4 => {
                let keys: Vec<Vec<u8>> = (0..3).map(|_| key(&mut rng)).collect();
                let want: Vec<_> = keys.iter().map(|k| model.get(k).cloned()).collect();
                assert_eq!(s.get(a, &keys).unwrap(), want, "step {step}");
            }
            5 => {
                let req = ListRequest::prefix(key(&mut rng)).with_limit(1 + rng.below(5) as usize);
                let want = model_list(model, &req, s.limits().default_list_limit);
                assert_eq!(s.list(a, &req).unwrap(), want, "step {step}");
            }
            _ => {
                let req = ListRequest::range(key(&mut rng), None).with_max_bytes(30);
                let keys = vec![key(&mut rng)];
                let got = s
                    .batch_read(a, &[ReadOp::List(req.clone()), ReadOp::Get(keys.clone())])
                    .unwrap();
                let default_limit = s.limits().default_list_limit;
                assert_eq!(
                    got,
                    vec![
                        ReadResult::List(model_list(model, &req, default_limit)),
                        ReadResult::Get(vec![model.get(&keys[0]).cloned()]),
                    ],
                    "step {step}"
                );
            }
        }
    }
    for (a, model) in actors.iter().zip(&models) {
        assert_eq!(
            list_all(s.as_ref(), a),
            model.clone().into_iter().collect::<Vec<_>>()
        );
    }
}

/// `delete_range` removes exactly `[start, end)` of one actor, atomically.
pub fn delete_range_bounds(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    let b = fx.actor("b");
    let keys: Vec<Vec<u8>> = vec![
        vec![0x01],
        vec![0x01, 0x00],
        vec![0x02],
        vec![0x02, 0xFF],
        vec![0x03],
        vec![0xFF, 0xFF],
    ];
    put_keys(s, &a, &keys);
    put_keys(s, &b, &keys);
    s.delete_range(&a, &[0x01, 0x00], Some(&[0x03])).unwrap();
    let left: Vec<Vec<u8>> = list_all(s.as_ref(), &a).into_iter().map(|e| e.0).collect();
    assert_eq!(left, vec![vec![0x01], vec![0x03], vec![0xFF, 0xFF]]);
    // Inverted and empty ranges delete nothing.
    s.delete_range(&a, &[0x03], Some(&[0x01])).unwrap();
    s.delete_range(&a, &[0x03], Some(&[0x03])).unwrap();
    assert_eq!(list_all(s.as_ref(), &a).len(), 3);
    // No upper bound.
    s.delete_range(&a, &[0x02], None).unwrap();
    let left: Vec<Vec<u8>> = list_all(s.as_ref(), &a).into_iter().map(|e| e.0).collect();
    assert_eq!(left, vec![vec![0x01]]);
    // Everything.
    s.delete_range(&a, &[], None).unwrap();
    assert!(list_all(s.as_ref(), &a).is_empty());
    // The other actor is untouched.
    let other: Vec<Vec<u8>> = list_all(s.as_ref(), &b).into_iter().map(|e| e.0).collect();
    assert_eq!(other, keys);
}

/// Every limit is its own error, raised before anything is written.
pub fn limit_errors_write_nothing(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    let lim = *s.limits();
    let ok = (k("ok"), k("v"));
    let big_key = vec![b'k'; lim.max_key_bytes + 1];
    let expect = |r: Result<(), KvError>, what: &str, check: &dyn Fn(&KvError) -> bool| {
        let err = r.expect_err(what);
        assert!(check(&err), "{what}: unexpected error {err:?}");
        assert!(err.is_rejected_before_send(), "{what}: {err:?}");
        assert!(
            list_all(s.as_ref(), &a).is_empty(),
            "{what}: something was written"
        );
    };
    expect(
        s.put(&a, vec![ok.clone(), (vec![], k("v"))]),
        "empty key",
        &|e| *e == KvError::EmptyKey,
    );
    expect(
        s.put(&a, vec![ok.clone(), (big_key.clone(), k("v"))]),
        "key too large",
        &|e| {
            *e == KvError::KeyTooLarge {
                len: lim.max_key_bytes + 1,
                max: lim.max_key_bytes,
            }
        },
    );
    expect(
        s.put(
            &a,
            vec![ok.clone(), (k("big"), vec![0; lim.max_value_bytes + 1])],
        ),
        "value too large",
        &|e| {
            *e == KvError::ValueTooLarge {
                key: k("big"),
                len: lim.max_value_bytes + 1,
                max: lim.max_value_bytes,
            }
        },
    );
    let many: Vec<_> = (0..=lim.max_write_entries)
        .map(|i| (format!("k{i:05}").into_bytes(), k("v")))
        .collect();
    expect(s.put(&a, many), "too many entries", &|e| {
        *e == KvError::TooManyEntries {
            count: lim.max_write_entries + 1,
            max: lim.max_write_entries,
        }
    });
    // Entries each under the value limit whose total exceeds the payload limit.
    let per = lim.max_value_bytes;
    let n = lim.max_write_bytes / per + 1;
    let heavy: Vec<_> = (0..n)
        .map(|i| (vec![b'h', i as u8], vec![7u8; per]))
        .collect();
    let total = n * (per + 2);
    expect(s.put(&a, heavy), "payload too large", &|e| {
        *e == KvError::PayloadTooLarge {
            bytes: total,
            max: lim.max_write_bytes,
        }
    });
    expect(
        s.write(
            &a,
            &WriteBatch {
                puts: vec![ok.clone()],
                deletes: vec![k("ok")],
                preconditions: vec![],
            },
        ),
        "duplicate key",
        &|e| *e == KvError::DuplicateKey { key: k("ok") },
    );
    expect(
        s.put(&a, vec![ok.clone(), ok.clone()]),
        "duplicate put",
        &|e| *e == KvError::DuplicateKey { key: k("ok") },
    );
    expect(
        s.put_if(&a, vec![ok.clone()], vec![Precondition::absent(vec![])]),
        "empty precondition key",
        &|e| *e == KvError::EmptyKey,
    );
    expect(s.delete(&a, vec![vec![]]), "empty delete key", &|e| {
        *e == KvError::EmptyKey
    });
    expect(s.put("", vec![ok.clone()]), "empty actor", &|e| {
        matches!(e, KvError::InvalidActorId { .. })
    });
    // Reads: the same limits, typed.
    assert_eq!(s.get(&a, &[vec![]]).unwrap_err(), KvError::EmptyKey);
    assert_eq!(
        s.get(&a, &[big_key]).unwrap_err(),
        KvError::KeyTooLarge {
            len: lim.max_key_bytes + 1,
            max: lim.max_key_bytes
        }
    );
    let too_many_keys: Vec<Vec<u8>> = (0..=lim.max_get_keys)
        .map(|i| (i as u32).to_be_bytes().to_vec())
        .collect();
    assert_eq!(
        s.get(&a, &too_many_keys).unwrap_err(),
        KvError::TooManyKeys {
            count: lim.max_get_keys + 1,
            max: lim.max_get_keys
        }
    );
    for bad in [0, lim.default_list_limit + 1] {
        assert_eq!(
            s.list(&a, &ListRequest::prefix(vec![]).with_limit(bad))
                .unwrap_err(),
            KvError::InvalidListLimit {
                limit: bad,
                max: lim.default_list_limit
            }
        );
        assert_eq!(
            s.batch_read(
                &a,
                &[ReadOp::List(ListRequest::prefix(vec![]).with_limit(bad))]
            )
            .unwrap_err(),
            KvError::InvalidListLimit {
                limit: bad,
                max: lim.default_list_limit
            }
        );
    }
    assert_eq!(
        s.batch_read(&a, &[ReadOp::Get(vec![k("x")]), ReadOp::Get(vec![vec![]])])
            .unwrap_err(),
        KvError::EmptyKey
    );
    // The gets of one batch read share the key limit.
    let half = lim.max_get_keys / 2 + 1;
    let split = |from: usize| -> Vec<Vec<u8>> {
        (from..from + half)
            .map(|i| (i as u32).to_be_bytes().to_vec())
            .collect()
    };
    assert_eq!(
        s.batch_read(&a, &[ReadOp::Get(split(0)), ReadOp::Get(split(half))])
            .unwrap_err(),
        KvError::TooManyKeys {
            count: 2 * half,
            max: lim.max_get_keys
        }
    );
    assert!(matches!(
        s.get("", &[k("x")]).unwrap_err(),
        KvError::InvalidActorId { .. }
    ));
    assert!(matches!(
        s.list("a\0b", &ListRequest::prefix(vec![])).unwrap_err(),
        KvError::InvalidActorId { .. }
    ));
    assert!(list_all(s.as_ref(), &a).is_empty());
}

/// Writes exactly at every limit succeed.
pub fn limits_accept_exact_maxima(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    let lim = *s.limits();
    let max_key = vec![b'K'; lim.max_key_bytes];
    s.put(&a, vec![(max_key.clone(), vec![1; lim.max_value_bytes])])
        .unwrap();
    assert_eq!(
        s.get(&a, std::slice::from_ref(&max_key)).unwrap(),
        vec![Some(vec![1; lim.max_value_bytes])]
    );
    let many: Vec<_> = (0..lim.max_write_entries)
        .map(|i| (format!("e{i:05}").into_bytes(), vec![]))
        .collect();
    s.put(&a, many).unwrap();
    // Exactly max_write_bytes of keys and values, in entries under the value limit.
    let mut heavy = Vec::new();
    let mut left = lim.max_write_bytes;
    while left > 4 {
        let key = format!("p{:03}", heavy.len()).into_bytes();
        let v = (left - key.len()).min(lim.max_value_bytes);
        left -= key.len() + v;
        heavy.push((key, vec![2u8; v]));
    }
    let total: usize = heavy.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(total, lim.max_write_bytes);
    s.put(&a, heavy.clone()).unwrap();
    let keys: Vec<Vec<u8>> = heavy.iter().map(|e| e.0.clone()).collect();
    let got = s.get(&a, &keys).unwrap();
    assert_eq!(
        got,
        heavy.into_iter().map(|e| Some(e.1)).collect::<Vec<_>>()
    );
    // The largest list limit is accepted.
    let page = s
        .list(
            &a,
            &ListRequest::prefix(k("e")).with_limit(lim.default_list_limit),
        )
        .unwrap();
    assert_eq!(page.entries.len(), lim.max_write_entries);
    assert!(page.is_complete());
}

/// Preconditions: met → written; unmet → `Conflict` naming the key, nothing written.
pub fn preconditions_met_and_unmet(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    s.put_if(
        &a,
        entries(&[("gen", "1"), ("p", "a")]),
        vec![Precondition::absent(k("gen"))],
    )
    .unwrap();
    s.put_if(
        &a,
        entries(&[("gen", "2"), ("p", "b")]),
        vec![
            Precondition::equals(k("gen"), k("1")),
            Precondition::absent(k("other")),
        ],
    )
    .unwrap();
    let before = list_all(s.as_ref(), &a);
    assert_eq!(before, entries(&[("gen", "2"), ("p", "b")]));
    // Wrong value.
    let err = s
        .put_if(
            &a,
            entries(&[("gen", "3"), ("q", "x")]),
            vec![Precondition::equals(k("gen"), k("1"))],
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"gen"), "{err:?}");
    // Present where absence was required.
    let err = s
        .put_if(
            &a,
            entries(&[("q", "x")]),
            vec![Precondition::absent(k("p"))],
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"p"), "{err:?}");
    // Absent where a value was required.
    let err = s
        .put_if(
            &a,
            entries(&[("q", "x")]),
            vec![Precondition::equals(k("missing"), k("1"))],
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"missing"), "{err:?}");
    // Several preconditions: the unmet one is named, even when others hold.
    let err = s
        .write(
            &a,
            &WriteBatch {
                puts: entries(&[("q", "x")]),
                deletes: vec![k("p")],
                preconditions: vec![
                    Precondition::equals(k("gen"), k("2")),
                    Precondition::absent(k("gen2")),
                    Precondition::equals(k("p"), k("zzz")),
                ],
            },
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"p"), "{err:?}");
    // Preconditions see only this actor's keys.
    let err = s
        .put_if(
            &fx.actor("b"),
            entries(&[("q", "x")]),
            vec![Precondition::equals(k("gen"), k("2"))],
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"gen"), "{err:?}");
    assert!(list_all(s.as_ref(), &fx.actor("b")).is_empty());
    assert_eq!(
        list_all(s.as_ref(), &a),
        before,
        "nothing was written by failed writes"
    );
    // A write with preconditions only: checks, writes nothing.
    s.write(
        &a,
        &WriteBatch {
            preconditions: vec![Precondition::equals(k("gen"), k("2"))],
            ..Default::default()
        },
    )
    .unwrap();
    let err = s
        .write(
            &a,
            &WriteBatch {
                preconditions: vec![Precondition::absent(k("gen"))],
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(is_conflict_on(&err, b"gen"));
    // A precondition on a key the same write deletes is checked against the old value.
    s.write(
        &a,
        &WriteBatch {
            puts: vec![],
            deletes: vec![k("gen")],
            preconditions: vec![Precondition::equals(k("gen"), k("2"))],
        },
    )
    .unwrap();
    assert_eq!(list_all(s.as_ref(), &a), entries(&[("p", "b")]));
}

/// 16 threads race to create one key with an "absent" precondition: exactly one wins.
pub fn precondition_race_16_threads_one_wins(fx: Fixture) {
    let a = fx.actor("race");
    for round in 0..3 {
        let key = format!("lock{round}").into_bytes();
        let barrier = Arc::new(Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let s = fx.store.clone();
                let a = a.clone();
                let key = key.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = s.put_if(
                        &a,
                        vec![
                            (key.clone(), format!("t{t}").into_bytes()),
                            (format!("by{t}").into_bytes(), vec![]),
                        ],
                        vec![Precondition::absent(key.clone())],
                    );
                    (t, r)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (_, r) in &results {
            if let Err(e) = r {
                assert!(is_conflict_on(e, &key), "{e:?}");
            }
        }
        let w = winners[0];
        assert_eq!(
            fx.store.get(&a, std::slice::from_ref(&key)).unwrap(),
            vec![Some(format!("t{w}").into_bytes())]
        );
        // Only the winner's side entry exists.
        let sides: Vec<Vec<u8>> = list_all(fx.store.as_ref(), &a)
            .into_iter()
            .map(|e| e.0)
            .filter(|k| k.starts_with(b"by"))
            .collect();
        assert_eq!(sides, vec![format!("by{w}").into_bytes()]);
        fx.store.delete_range(&a, b"by", Some(b"bz")).unwrap();
    }
}

/// With `faults` in crash mode, a put in flight at the crash is visible wholly or not at all,
/// as the crash report says; every later call fails with `Crashed`.
pub fn crash_put_is_all_or_nothing(fx: Fixture) {
    let mut seen = [false, false];
    let choices = [CrashWrite::Apply, CrashWrite::Discard]
        .into_iter()
        .chain((0..12).map(CrashWrite::Seeded));
    for (i, choice) in choices.enumerate() {
        let a = fx.actor(&format!("crash{i}"));
        let faults = FaultStore::new(fx.store.clone(), FaultPlan::none().crash_at(2, choice));
        faults.put(&a, entries(&[("before", "1")])).unwrap();
        let big: Vec<_> = (0..100u8).map(|j| (vec![b'e', j], vec![j; 500])).collect();
        assert_eq!(faults.put(&a, big.clone()).unwrap_err(), KvError::Crashed);
        assert_eq!(
            faults.get(&a, &[k("before")]).unwrap_err(),
            KvError::Crashed
        );
        assert_eq!(
            faults.put(&a, entries(&[("after", "1")])).unwrap_err(),
            KvError::Crashed
        );
        let report = faults.crash_report().expect("crashed");
        assert_eq!(report.call, 2);
        assert_eq!(report.op, OpKind::Write);
        assert_eq!(faults.calls(), 4);
        let applied = report.write_applied.expect("a write");
        match choice {
            CrashWrite::Apply => assert!(applied),
            CrashWrite::Discard => assert!(!applied),
            CrashWrite::Seeded(seed) => assert_eq!(applied, Rng::new(seed).next_u64() & 1 == 1),
        }
        seen[applied as usize] = true;
        let survived = list_all(faults.inner().as_ref(), &a);
        let mut expected = entries(&[("before", "1")]);
        if applied {
            expected.extend(big);
            expected.sort();
        }
        assert_eq!(survived, expected, "choice {choice:?}");
    }
    assert_eq!(
        seen,
        [true, true],
        "the seeded choices covered both outcomes"
    );
}

/// Runs a small workload of reads and writes, crashing at every call in turn; what survives is
/// always exactly the writes before the crash plus, if applied, the one in flight.
pub fn crash_at_every_call_of_a_workload(fx: Fixture) {
    // Each step is a call; writes are applied to a model when they happen.
    fn workload(s: &dyn KvStore, a: &str) -> Result<(), KvError> {
        s.put(a, vec![(k("gen"), k("1")), (k("p1"), vec![1; 100])])?;
        s.get(a, &[k("gen")])?;
        s.put_if(
            a,
            vec![(k("p2"), vec![2; 100])],
            vec![Precondition::equals(k("gen"), k("1"))],
        )?;
        s.list(a, &ListRequest::prefix(k("p")))?;
        s.write(
            a,
            &WriteBatch {
                puts: vec![(k("gen"), k("2")), (k("p3"), vec![3; 100])],
                deletes: vec![k("p1")],
                preconditions: vec![Precondition::equals(k("gen"), k("1"))],
            },
        )?;
        s.delete_range(a, b"p2", Some(b"p3"))?;
        s.batch_read(
            a,
            &[
                ReadOp::Get(vec![k("gen")]),
                ReadOp::List(ListRequest::prefix(k("p"))),
            ],
        )?;
        Ok(())
    }
    // States after each write of the workload, in order (index = writes done).
    let states: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![
        vec![],
        vec![(k("gen"), k("1")), (k("p1"), vec![1; 100])],
        vec![
            (k("gen"), k("1")),
            (k("p1"), vec![1; 100]),
            (k("p2"), vec![2; 100]),
        ],
        vec![
            (k("gen"), k("2")),
            (k("p2"), vec![2; 100]),
            (k("p3"), vec![3; 100]),
        ],
        vec![(k("gen"), k("2")), (k("p3"), vec![3; 100])],
    ];
    let is_write_call = [true, false, true, false, true, true, false];
    // Count the calls first.
    let counter = FaultStore::new(fx.store.clone(), FaultPlan::none());
    let a0 = fx.actor("count");
    workload(&counter, &a0).unwrap();
    let total = counter.calls();
    assert_eq!(total, 7);
    assert_eq!(list_all(fx.store.as_ref(), &a0), states[4]);
    for crash in 1..=total {
        for choice in [CrashWrite::Apply, CrashWrite::Discard] {
            let a = fx.actor(&format!("w{crash}-{choice:?}"));
            let faults =
                FaultStore::new(fx.store.clone(), FaultPlan::none().crash_at(crash, choice));
            assert_eq!(workload(&faults, &a).unwrap_err(), KvError::Crashed);
            let idx = (crash - 1) as usize;
            let writes_before = is_write_call[..idx].iter().filter(|w| **w).count();
            let applied = faults.crash_report().expect("crashed").write_applied;
            assert_eq!(applied.is_some(), is_write_call[idx]);
            let done = writes_before + usize::from(applied == Some(true));
            assert_eq!(
                list_all(faults.inner().as_ref(), &a),
                states[done],
                "crash at call {crash} ({choice:?})"
            );
        }
    }
}

/// Injected failures (call N, or seeded random) fail that call only and apply nothing.
pub fn injected_faults_are_not_applied(fx: Fixture) {
    let a = fx.actor("a");
    let faults = FaultStore::new(fx.store.clone(), FaultPlan::none().fail_call(2));
    faults.put(&a, entries(&[("x", "1")])).unwrap();
    assert_eq!(
        faults.put(&a, entries(&[("y", "2")])).unwrap_err(),
        KvError::InjectedFault { call: 2 }
    );
    faults.put(&a, entries(&[("z", "3")])).unwrap();
    assert_eq!(
        list_all(fx.store.as_ref(), &a),
        entries(&[("x", "1"), ("z", "3")])
    );
    assert_eq!(faults.calls(), 3);
    // A lost reply: applied, but the caller hears an error.
    let lossy = FaultStore::new(fx.store.clone(), FaultPlan::none().lose_reply(1));
    assert_eq!(
        lossy.put(&a, entries(&[("w", "0")])).unwrap_err(),
        KvError::InjectedFault { call: 1 }
    );
    assert_eq!(lossy.get(&a, &[k("w")]).unwrap(), vec![Some(k("0"))]);
    fx.store.delete(&a, vec![k("w")]).unwrap();
    // Random faults are reproducible from the seed.
    let pattern = |seed: u64, actor: &str| -> Vec<bool> {
        let f = FaultStore::new(fx.store.clone(), FaultPlan::none().fail_randomly(seed, 0.3));
        (0..40u8)
            .map(|i| match f.put(actor, vec![(vec![b'r', i], vec![i])]) {
                Ok(()) => true,
                Err(KvError::InjectedFault { call }) => {
                    assert_eq!(call, u64::from(i) + 1);
                    false
                }
                Err(e) => panic!("unexpected {e:?}"),
            })
            .collect()
    };
    let b1 = fx.actor("r1");
    let b2 = fx.actor("r2");
    let p1 = pattern(99, &b1);
    let p2 = pattern(99, &b2);
    assert_eq!(p1, p2);
    let failures = p1.iter().filter(|ok| !**ok).count();
    assert!(
        (1..40).contains(&failures),
        "{failures} failures of 40 at p=0.3"
    );
    let stored: Vec<Vec<u8>> = list_all(fx.store.as_ref(), &b1)
        .into_iter()
        .map(|e| e.0)
        .collect();
    let expected: Vec<Vec<u8>> = (0..40u8)
        .filter(|i| p1[*i as usize])
        .map(|i| vec![b'r', i])
        .collect();
    assert_eq!(stored, expected);
}

/// Actors never see each other's keys, including actors whose ids prefix one another.
pub fn actors_are_isolated(fx: Fixture) {
    let s = &fx.store;
    let ids = [
        fx.actor("a"),
        fx.actor("ab"),
        fx.actor("b"),
        fx.actor("a/b"),
    ];
    for (i, id) in ids.iter().enumerate() {
        s.put(
            id,
            vec![
                (k("k"), vec![i as u8]),
                (k("b"), vec![i as u8]),
                (vec![0xFF], vec![i as u8]),
            ],
        )
        .unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let v = vec![i as u8];
        assert_eq!(
            list_all(s.as_ref(), id),
            vec![
                (k("b"), v.clone()),
                (k("k"), v.clone()),
                (vec![0xFF], v.clone())
            ]
        );
        assert_eq!(s.get(id, &[k("k")]).unwrap(), vec![Some(v)]);
    }
    s.delete_range(&ids[0], &[], None).unwrap();
    s.delete(&ids[1], vec![k("k")]).unwrap();
    assert!(list_all(s.as_ref(), &ids[0]).is_empty());
    assert_eq!(list_all(s.as_ref(), &ids[1]).len(), 2);
    assert_eq!(list_all(s.as_ref(), &ids[2]).len(), 3);
    assert_eq!(list_all(s.as_ref(), &ids[3]).len(), 3);
    // A batch read of one actor sees only its keys.
    let r = s
        .batch_read(
            &ids[2],
            &[
                ReadOp::List(ListRequest::prefix(vec![])),
                ReadOp::Get(vec![k("k")]),
            ],
        )
        .unwrap();
    assert_eq!(r[1], ReadResult::Get(vec![Some(vec![2])]));
}

/// Data written before the store is closed is there after it is reopened. Only for persistent
/// backends (`kv_conformance_tests!(NAME, FIXTURE, [persistence_across_reopen])`).
pub fn persistence_across_reopen(fx: Fixture) {
    let Fixture {
        store,
        prefix,
        reopen,
        guard,
    } = fx;
    let reopen = reopen.expect("a persistent backend's fixture can reopen its store");
    let a = format!("{prefix}a");
    let b = format!("{prefix}b");
    store.put(&a, entries(&[("x", "1"), ("y", "2")])).unwrap();
    store.put(&b, entries(&[("x", "other")])).unwrap();
    store.delete(&a, vec![k("y")]).unwrap();
    drop(store);
    let store = reopen();
    assert_eq!(list_all(store.as_ref(), &a), entries(&[("x", "1")]));
    assert_eq!(list_all(store.as_ref(), &b), entries(&[("x", "other")]));
    store.put(&a, entries(&[("z", "3")])).unwrap();
    drop(store);
    let store = reopen();
    assert_eq!(
        list_all(store.as_ref(), &a),
        entries(&[("x", "1"), ("z", "3")])
    );
    drop(store);
    drop(guard);
}

/// 16 threads, each owning several actors, write and read concurrently; every actor ends up
/// exactly as its thread's model says, and reads during the run are consistent.
pub fn concurrent_16_threads_many_actors(fx: Fixture) {
    let threads: Vec<_> = (0..16u64)
        .map(|t| {
            let s = fx.store.clone();
            let actors: Vec<String> = (0..6).map(|i| fx.actor(&format!("t{t}-a{i}"))).collect();
            std::thread::spawn(move || {
                let mut rng = Rng::new(1000 + t);
                let mut models: Vec<BTreeMap<Vec<u8>, Vec<u8>>> =
                    vec![BTreeMap::new(); actors.len()];
                for step in 0..40 {
                    let i = rng.below(actors.len() as u64) as usize;
                    let (a, model) = (&actors[i], &mut models[i]);
                    match rng.below(4) {
                        0 | 1 => {
                            let mut batch = BTreeMap::new();
                            for _ in 0..1 + rng.below(6) {
                                let key = vec![b'k', rng.below(20) as u8];
                                let vlen = rng.below(64) as usize;
                                batch.insert(key, rng.bytes(vlen));
                            }
                            s.put(a, batch.clone().into_iter().collect()).unwrap();
                            model.extend(batch);
                        }
                        2 => {
                            let key = vec![b'k', rng.below(20) as u8];
                            s.delete(a, vec![key.clone()]).unwrap();
                            model.remove(&key);
                        }
                        _ => {
                            let keys: Vec<Vec<u8>> =
                                (0..3).map(|_| vec![b'k', rng.below(20) as u8]).collect();
                            let got = s.get(a, &keys).unwrap();
                            let want: Vec<_> = keys.iter().map(|k| model.get(k).cloned()).collect();
                            assert_eq!(got, want, "thread {t} step {step}");
                        }
                    }
                }
                for (a, model) in actors.iter().zip(&models) {
                    let got = list_all(s.as_ref(), a);
                    let want: Vec<_> = model.clone().into_iter().collect();
                    assert_eq!(got, want, "thread {t} actor {a}");
                }
            })
        })
        .collect();
    for h in threads {
        h.join().expect("worker thread panicked");
    }
}

/// One batch read answers gets and lists in order, the same as separate calls would.
pub fn mixed_batch_read(fx: Fixture) {
    let s = &fx.store;
    let a = fx.actor("a");
    s.put(
        &a,
        vec![
            (k("meta"), k("m")),
            (vec![0x01, 0x00], vec![1; 10]),
            (vec![0x01, 0x01], vec![2; 10]),
            (vec![0x01, 0x02], vec![3; 10]),
            (vec![0x02, 0x00], vec![4; 10]),
            (vec![0x02, 0xFF], vec![5; 10]),
        ],
    )
    .unwrap();
    let ops = vec![
        ReadOp::Get(vec![k("meta"), k("absent")]),
        ReadOp::List(ListRequest::prefix(vec![0x01])),
        ReadOp::List(ListRequest::prefix(vec![0x01]).with_limit(2)),
        ReadOp::List(ListRequest::prefix(vec![]).with_max_bytes(20)),
        ReadOp::List(ListRequest::range(vec![0x02], None)),
        ReadOp::Get(vec![]),
        ReadOp::List(ListRequest::prefix(vec![0x03])),
        ReadOp::Get(vec![vec![0x02, 0xFF]]),
    ];
    let got = s.batch_read(&a, &ops).unwrap();
    assert_eq!(got.len(), ops.len());
    assert_eq!(got[0], ReadResult::Get(vec![Some(k("m")), None]));
    let ReadResult::List(p) = &got[1] else {
        panic!("{:?}", got[1])
    };
    assert_eq!(p.entries.len(), 3);
    assert!(p.is_complete());
    let ReadResult::List(p) = &got[2] else {
        panic!("{:?}", got[2])
    };
    assert_eq!(p.entries.len(), 2);
    assert_eq!(p.next_start, Some(vec![0x01, 0x01, 0x00]));
    let ReadResult::List(p) = &got[3] else {
        panic!("{:?}", got[3])
    };
    assert_eq!(keys_of(p), vec![vec![0x01, 0x00], vec![0x01, 0x01]]);
    assert_eq!(got[5], ReadResult::Get(vec![]));
    assert_eq!(got[6], ReadResult::List(ListPage::default()));
    assert_eq!(got[7], ReadResult::Get(vec![Some(vec![5; 10])]));
    // Each answer equals the single call.
    for (op, res) in ops.iter().zip(&got) {
        let single = match op {
            ReadOp::Get(keys) => ReadResult::Get(s.get(&a, keys).unwrap()),
            ReadOp::List(req) => ReadResult::List(s.list(&a, req).unwrap()),
        };
        assert_eq!(&single, res, "{op:?}");
    }
    // An empty batch answers nothing; an unknown actor answers absences.
    assert_eq!(s.batch_read(&a, &[]).unwrap(), vec![]);
    assert_eq!(
        s.batch_read(&fx.actor("nobody"), &ops[..2]).unwrap(),
        vec![
            ReadResult::Get(vec![None, None]),
            ReadResult::List(ListPage::default())
        ]
    );
}

/// Through `counting`, every trait call is exactly one round trip (batch read included);
/// failed calls count as round trips and errors; calls rejected by limits count nothing.
pub fn one_round_trip_per_call(fx: Fixture) {
    let c = CountingStore::wrap(fx.store.clone());
    let s = c.shared();
    let a = fx.actor("a");
    let step = |what: &str, kind: OpKind, f: &dyn Fn()| {
        let before = c.snapshot();
        f();
        let d = c.snapshot() - before;
        assert_eq!(d.round_trips(), 1, "{what}: {d}");
        assert_eq!(d.op(kind).calls, 1, "{what}: {d}");
        d
    };
    let d = step("put", OpKind::Write, &|| {
        s.put(
            &a,
            vec![
                (k("a1"), vec![0; 100]),
                (k("a2"), vec![0; 50]),
                (k("b1"), vec![]),
            ],
        )
        .unwrap()
    });
    assert_eq!(d.op(OpKind::Write).keys_written, 3);
    assert_eq!(d.op(OpKind::Write).bytes_out, 156);
    let d = step("get", OpKind::Get, &|| {
        s.get(&a, &[k("a1"), k("zz")]).unwrap();
    });
    assert_eq!(d.op(OpKind::Get).keys_read, 2);
    assert_eq!(d.op(OpKind::Get).bytes_in, 100);
    let d = step("list", OpKind::List, &|| {
        s.list(&a, &ListRequest::prefix(k("a"))).unwrap();
    });
    assert_eq!(d.op(OpKind::List).keys_read, 2);
    assert_eq!(d.op(OpKind::List).bytes_in, 154);
    let d = step("batch_read", OpKind::BatchRead, &|| {
        s.batch_read(
            &a,
            &[
                ReadOp::Get(vec![k("a1"), k("a2"), k("b1")]),
                ReadOp::List(ListRequest::prefix(k("a"))),
                ReadOp::List(ListRequest::prefix(k("b"))),
            ],
        )
        .unwrap();
    });
    assert_eq!(d.op(OpKind::BatchRead).keys_read, 6);
    step("put_if", OpKind::Write, &|| {
        s.put_if(
            &a,
            vec![(k("c"), k("1"))],
            vec![Precondition::absent(k("c"))],
        )
        .unwrap()
    });
    let d = step("conflicting put_if", OpKind::Write, &|| {
        s.put_if(
            &a,
            vec![(k("c"), k("2"))],
            vec![Precondition::absent(k("c"))],
        )
        .unwrap_err();
    });
    assert_eq!(d.op(OpKind::Write).errors, 1);
    assert_eq!(d.op(OpKind::Write).keys_written, 0);
    step("delete", OpKind::Write, &|| {
        s.delete(&a, vec![k("c")]).unwrap()
    });
    step("delete_range", OpKind::DeleteRange, &|| {
        s.delete_range(&a, b"a", Some(b"b")).unwrap()
    });
    // Rejected before sending: no round trip.
    let before = c.snapshot();
    s.put(&a, vec![(vec![], k("v"))]).unwrap_err();
    s.list(&a, &ListRequest::prefix(vec![]).with_limit(0))
        .unwrap_err();
    assert_eq!((c.snapshot() - before).round_trips(), 0);
    assert_eq!(c.snapshot().round_trips(), 8);
    // Through ActorKv, the same.
    let actor = kvsqlite::kv::ActorKv::new(s.clone(), &a).unwrap();
    let before = c.snapshot();
    actor.get(&[k("b1")]).unwrap();
    actor.batch_read(&[ReadOp::Get(vec![k("b1")])]).unwrap();
    assert_eq!((c.snapshot() - before).round_trips(), 2);
}

/// Checks a store built with custom limits enforces those (used by per-backend tests).
pub fn custom_limits_enforced(store: &dyn KvStore, actor: &str, limits: KvLimits) {
    assert_eq!(*store.limits(), limits);
    let err = store
        .put(actor, vec![(vec![b'k'; limits.max_key_bytes + 1], vec![])])
        .unwrap_err();
    assert_eq!(
        err,
        KvError::KeyTooLarge {
            len: limits.max_key_bytes + 1,
            max: limits.max_key_bytes
        }
    );
    let err = store
        .put(actor, vec![(k("v"), vec![0; limits.max_value_bytes + 1])])
        .unwrap_err();
    assert!(matches!(err, KvError::ValueTooLarge { .. }));
    let n = limits.max_write_entries + 1;
    let err = store
        .put(
            actor,
            (0..n)
                .map(|i| ((i as u32).to_be_bytes().to_vec(), vec![]))
                .collect(),
        )
        .unwrap_err();
    assert_eq!(
        err,
        KvError::TooManyEntries {
            count: n,
            max: limits.max_write_entries
        }
    );
    store
        .put(
            actor,
            vec![(
                vec![b'k'; limits.max_key_bytes],
                vec![0; limits.max_value_bytes],
            )],
        )
        .unwrap();
    let keys: Vec<Vec<u8>> = (0..limits.max_write_entries as u32)
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    store
        .put(actor, keys.iter().map(|k| (k.clone(), vec![])).collect())
        .unwrap();
    let page = store.list(actor, &ListRequest::prefix(vec![])).unwrap();
    assert_eq!(
        page.entries.len(),
        limits.default_list_limit.min(keys.len() + 1)
    );
}

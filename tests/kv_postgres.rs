//! The PostgreSQL backend against a real server (see `common/pg.rs` for the URL, the skip
//! rule and cleanup): exact contents, key order, atomic conditional writes under races, one
//! exchange per call, reconnects, and a differential run against the memory backend.

#[path = "common/pg.rs"]
mod pg;

#[path = "common/conformance.rs"]
mod conformance;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use conformance::Fixture;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::postgres::{PostgresOptions, PostgresStore};
use kvsqlite::kv::{
    KeyRange, KvError, KvLimits, KvStore, ListPage, ListRequest, Precondition, ReadOp, ReadResult,
    SharedStore, WriteBatch,
};
use kvsqlite::rng::Rng;

/// The shared conformance suite on the test server; every actor id it uses starts with the
/// fixture's unique prefix, and those rows are deleted when the fixture drops.
fn postgres_fixture() -> Result<Fixture, String> {
    let store = pg::connect(PostgresOptions::default())?;
    let table = store.table().to_string();
    let fx = Fixture::new(Arc::new(store) as SharedStore, "postgres");
    let cleanup = pg::Cleanup {
        table,
        prefix: fx.prefix.clone(),
    };
    Ok(fx
        .with_reopen(|| {
            Arc::new(PostgresStore::connect(&pg::test_url()).expect("reopen the postgres store"))
                as SharedStore
        })
        .with_guard(cleanup))
}

kv_conformance_tests!(postgres, postgres_fixture, [persistence_across_reopen]);

fn kv(k: &[u8], v: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (k.to_vec(), v.to_vec())
}

#[test]
fn postgres_keys_order_bytewise_with_ff_bytes_and_prefixes() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let a = t.actor("order");
    let keys: Vec<&[u8]> = vec![
        b"\xff",
        b"\xff\xff",
        b"\xff\x00",
        b"a",
        b"a\x00",
        b"a\xff",
        b"ab",
        b"\x00",
        b"\x00\x00",
        b"\x7f",
        b"\x80",
    ];
    s.put(&a, keys.iter().map(|k| kv(k, k)).collect()).unwrap();
    let mut want: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    want.sort();
    let page = s.list(&a, &ListRequest::prefix(Vec::new())).unwrap();
    let got: Vec<Vec<u8>> = page.entries.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(got, want);
    assert!(page.is_complete());
    for (k, v) in &page.entries {
        assert_eq!(k, v);
    }

    // Prefix 0xFF: its successor does not exist, so the range is unbounded above.
    let page = s.list(&a, &ListRequest::prefix(vec![0xff])).unwrap();
    let got: Vec<Vec<u8>> = page.entries.into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, vec![vec![0xff], vec![0xff, 0x00], vec![0xff, 0xff]]);

    // Prefix "a" does not include "ab"'s neighbour "b" or anything below "a".
    let page = s.list(&a, &ListRequest::prefix(b"a".to_vec())).unwrap();
    let got: Vec<Vec<u8>> = page.entries.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        got,
        vec![
            b"a".to_vec(),
            b"a\x00".to_vec(),
            b"ab".to_vec(),
            b"a\xff".to_vec()
        ]
    );

    // A range with an exclusive end.
    let page = s
        .list(
            &a,
            &ListRequest::range(b"\x00\x00".to_vec(), Some(b"\x80".to_vec())),
        )
        .unwrap();
    let got: Vec<Vec<u8>> = page.entries.into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        got,
        vec![
            b"\x00\x00".to_vec(),
            b"a".to_vec(),
            b"a\x00".to_vec(),
            b"ab".to_vec(),
            b"a\xff".to_vec(),
            b"\x7f".to_vec()
        ]
    );
}

#[test]
fn postgres_get_answers_in_asked_order_and_namespaces_are_separate() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let a = t.actor("get-a");
    let b = t.actor("get-b");
    s.put(&a, vec![kv(b"k1", b"v1"), kv(b"k2", b""), kv(b"k3", b"v3")])
        .unwrap();
    s.put(&b, vec![kv(b"k1", b"other")]).unwrap();
    let got = s
        .get(
            &a,
            &[
                b"k3".to_vec(),
                b"missing".to_vec(),
                b"k1".to_vec(),
                b"k2".to_vec(),
                b"k1".to_vec(),
            ],
        )
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(b"v3".to_vec()),
            None,
            Some(b"v1".to_vec()),
            Some(Vec::new()),
            Some(b"v1".to_vec())
        ]
    );
    assert_eq!(
        s.get(&b, &[b"k1".to_vec(), b"k2".to_vec()]).unwrap(),
        vec![Some(b"other".to_vec()), None]
    );
    // An actor id that needs escaping in SQL is just another namespace.
    let odd = format!("{}'; DROP TABLE kvsqlite_kv; --\\", t.actor("odd"));
    s.put(&odd, vec![kv(b"k1", b"odd")]).unwrap();
    assert_eq!(
        s.get(&odd, &[b"k1".to_vec()]).unwrap(),
        vec![Some(b"odd".to_vec())]
    );
    assert_eq!(
        s.get(&a, &[b"k1".to_vec()]).unwrap(),
        vec![Some(b"v1".to_vec())]
    );
}

#[test]
fn postgres_list_limit_and_byte_budget_pages() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let a = t.actor("pages");
    // Ten entries of 1 + 9 = 10 bytes each.
    let entries: Vec<_> = (0u8..10).map(|i| (vec![b'a' + i], vec![i; 9])).collect();
    s.put(&a, entries.clone()).unwrap();

    let p = s
        .list(&a, &ListRequest::prefix(Vec::new()).with_limit(3))
        .unwrap();
    assert_eq!(p.entries, entries[..3].to_vec());
    assert_eq!(p.next_start, Some(b"c\x00".to_vec()));

    // Exactly the limit left: complete.
    let p = s
        .list(&a, &ListRequest::range(b"h".to_vec(), None).with_limit(3))
        .unwrap();
    assert_eq!(p.entries, entries[7..].to_vec());
    assert_eq!(p.next_start, None);

    // Budget 25: rows are added while fewer than 25 bytes were returned (10, 20, then 30).
    let p = s
        .list(&a, &ListRequest::prefix(Vec::new()).with_max_bytes(25))
        .unwrap();
    assert_eq!(p.entries, entries[..3].to_vec());
    assert_eq!(p.next_start, Some(b"c\x00".to_vec()));

    // Budget 20 stops after exactly two rows.
    let p = s
        .list(&a, &ListRequest::prefix(Vec::new()).with_max_bytes(20))
        .unwrap();
    assert_eq!(p.entries, entries[..2].to_vec());
    assert_eq!(p.next_start, Some(b"b\x00".to_vec()));

    // A tiny budget still returns one entry.
    let p = s
        .list(&a, &ListRequest::prefix(Vec::new()).with_max_bytes(1))
        .unwrap();
    assert_eq!(p.entries, entries[..1].to_vec());
    assert_eq!(p.next_start, Some(b"a\x00".to_vec()));

    // Budget and limit together: the limit wins here.
    let p = s
        .list(
            &a,
            &ListRequest::prefix(Vec::new())
                .with_limit(2)
                .with_max_bytes(1000),
        )
        .unwrap();
    assert_eq!(p.entries, entries[..2].to_vec());
    assert_eq!(p.next_start, Some(b"b\x00".to_vec()));

    // A budget covering everything: complete.
    let p = s
        .list(&a, &ListRequest::prefix(Vec::new()).with_max_bytes(100))
        .unwrap();
    assert_eq!(p.entries, entries);
    assert_eq!(p.next_start, None);

    // Paging through with the continuation key visits everything once.
    let mut all = Vec::new();
    let mut start = Vec::new();
    loop {
        let p = s
            .list(&a, &ListRequest::range(start.clone(), None).with_limit(4))
            .unwrap();
        all.extend(p.entries);
        match p.next_start {
            Some(n) => start = n,
            None => break,
        }
    }
    assert_eq!(all, entries);

    assert!(matches!(
        s.list(&a, &ListRequest::prefix(Vec::new()).with_limit(0)),
        Err(KvError::InvalidListLimit { limit: 0, .. })
    ));
}

#[test]
fn postgres_conditional_write_is_all_or_nothing() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let a = t.actor("cond");
    s.put(
        &a,
        vec![kv(b"gen", b"1"), kv(b"page", b"old"), kv(b"doomed", b"x")],
    )
    .unwrap();

    // The second precondition fails: Conflict names it, nothing changes.
    let batch = WriteBatch {
        puts: vec![kv(b"page", b"new"), kv(b"fresh", b"y")],
        deletes: vec![b"doomed".to_vec()],
        preconditions: vec![
            Precondition::equals(b"gen".to_vec(), b"1".to_vec()),
            Precondition::absent(b"page".to_vec()),
            Precondition::equals(b"gen".to_vec(), b"2".to_vec()),
        ],
    };
    assert_eq!(
        s.write(&a, &batch),
        Err(KvError::Conflict {
            key: b"page".to_vec()
        })
    );
    let all = s.list(&a, &ListRequest::prefix(Vec::new())).unwrap();
    assert_eq!(
        all.entries,
        vec![kv(b"doomed", b"x"), kv(b"gen", b"1"), kv(b"page", b"old")]
    );

    // Every precondition holds: puts and deletes all land.
    let batch = WriteBatch {
        puts: vec![kv(b"page", b"new"), kv(b"fresh", b"y"), kv(b"gen", b"2")],
        deletes: vec![b"doomed".to_vec(), b"never-existed".to_vec()],
        preconditions: vec![
            Precondition::equals(b"gen".to_vec(), b"1".to_vec()),
            Precondition::absent(b"fresh".to_vec()),
        ],
    };
    s.write(&a, &batch).unwrap();
    let all = s.list(&a, &ListRequest::prefix(Vec::new())).unwrap();
    assert_eq!(
        all.entries,
        vec![kv(b"fresh", b"y"), kv(b"gen", b"2"), kv(b"page", b"new")]
    );

    // An empty value is a value, not absence.
    s.put(&a, vec![kv(b"empty", b"")]).unwrap();
    assert_eq!(
        s.put_if(
            &a,
            vec![kv(b"z", b"1")],
            vec![Precondition::absent(b"empty".to_vec())]
        ),
        Err(KvError::Conflict {
            key: b"empty".to_vec()
        })
    );
    s.put_if(
        &a,
        vec![kv(b"z", b"1")],
        vec![Precondition::equals(b"empty".to_vec(), Vec::new())],
    )
    .unwrap();

    // A precondition-only write checks without writing.
    assert_eq!(
        s.write(
            &a,
            &WriteBatch {
                preconditions: vec![Precondition::absent(b"z".to_vec())],
                ..Default::default()
            }
        ),
        Err(KvError::Conflict { key: b"z".to_vec() })
    );

    // Duplicates and limits are refused before anything is sent.
    let before = s.exchanges();
    assert_eq!(
        s.write(
            &a,
            &WriteBatch {
                puts: vec![kv(b"d", b"1")],
                deletes: vec![b"d".to_vec()],
                ..Default::default()
            }
        ),
        Err(KvError::DuplicateKey { key: b"d".to_vec() })
    );
    let too_many: Vec<_> = (0..129u32)
        .map(|i| (i.to_be_bytes().to_vec(), vec![1]))
        .collect();
    assert_eq!(
        s.put(&a, too_many),
        Err(KvError::TooManyEntries {
            count: 129,
            max: 128
        })
    );
    assert_eq!(s.put(&a, vec![kv(b"", b"1")]), Err(KvError::EmptyKey));
    assert!(matches!(
        s.get("", &[b"k".to_vec()]),
        Err(KvError::InvalidActorId { .. })
    ));
    assert_eq!(s.exchanges(), before);
    assert_eq!(
        s.get(&a, &[b"d".to_vec()]).unwrap(),
        vec![None],
        "the refused batch wrote nothing"
    );
}

#[test]
fn postgres_delete_and_delete_range() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let a = t.actor("del");
    let other = t.actor("del-other");
    let entries: Vec<_> = (0u8..8).map(|i| (vec![i], vec![i])).collect();
    s.put(&a, entries.clone()).unwrap();
    s.put(&other, entries.clone()).unwrap();
    s.delete(&a, vec![vec![0], vec![200]]).unwrap();
    s.delete_range(&a, &[2], Some(&[5])).unwrap();
    let got = s.list(&a, &ListRequest::prefix(Vec::new())).unwrap();
    assert_eq!(
        got.entries,
        vec![
            kv(&[1], &[1]),
            kv(&[5], &[5]),
            kv(&[6], &[6]),
            kv(&[7], &[7])
        ]
    );
    s.delete_range(&a, &[6], None).unwrap();
    let got = s.list(&a, &ListRequest::prefix(Vec::new())).unwrap();
    assert_eq!(got.entries, vec![kv(&[1], &[1]), kv(&[5], &[5])]);
    s.delete_range(&a, &[], None).unwrap();
    assert_eq!(
        s.list(&a, &ListRequest::prefix(Vec::new())).unwrap(),
        ListPage::default()
    );
    // The other actor is untouched.
    assert_eq!(
        s.list(&other, &ListRequest::prefix(Vec::new()))
            .unwrap()
            .entries,
        entries
    );
}

#[test]
fn postgres_mixed_batch_read_is_one_exchange_and_answers_in_order() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let a = t.actor("batch");
    s.put(
        &a,
        vec![
            kv(b"meta", b"m"),
            kv(b"p\x00\x01", b"one"),
            kv(b"p\x00\x02", b"two"),
            kv(b"p\x00\x03", b"three"),
            kv(b"q1", b"q"),
        ],
    )
    .unwrap();
    let ops = vec![
        ReadOp::Get(vec![b"meta".to_vec(), b"nope".to_vec()]),
        ReadOp::List(ListRequest::prefix(b"p".to_vec()).with_limit(2)),
        ReadOp::List(ListRequest::prefix(b"q".to_vec())),
        ReadOp::Get(vec![b"q1".to_vec()]),
        ReadOp::List(ListRequest::prefix(b"p".to_vec()).with_max_bytes(8)),
        ReadOp::List(ListRequest::prefix(b"zzz".to_vec())),
    ];
    let before = s.exchanges();
    let got = s.batch_read(&a, &ops).unwrap();
    assert_eq!(s.exchanges(), before + 1);
    assert_eq!(
        got,
        vec![
            ReadResult::Get(vec![Some(b"m".to_vec()), None]),
            ReadResult::List(ListPage {
                entries: vec![kv(b"p\x00\x01", b"one"), kv(b"p\x00\x02", b"two")],
                next_start: Some(b"p\x00\x02\x00".to_vec()),
            }),
            ReadResult::List(ListPage {
                entries: vec![kv(b"q1", b"q")],
                next_start: None,
            }),
            ReadResult::Get(vec![Some(b"q".to_vec())]),
            ReadResult::List(ListPage {
                entries: vec![kv(b"p\x00\x01", b"one"), kv(b"p\x00\x02", b"two")],
                next_start: Some(b"p\x00\x02\x00".to_vec()),
            }),
            ReadResult::List(ListPage::default()),
        ]
    );
    // The same answers as the single calls.
    let mem = MemoryStore::new();
    mem.put(
        &a,
        s.list(&a, &ListRequest::prefix(Vec::new()))
            .unwrap()
            .entries,
    )
    .unwrap();
    assert_eq!(mem.batch_read(&a, &ops).unwrap(), got);
}

#[test]
fn postgres_one_exchange_per_call() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let a = t.actor("count");
    let page = vec![0xA5u8; 4096];
    let puts: Vec<_> = (0u32..128)
        .map(|i| (i.to_be_bytes().to_vec(), page.clone()))
        .collect();
    let keys: Vec<Vec<u8>> = puts.iter().map(|(k, _)| k.clone()).collect();

    let mut last = s.exchanges();
    let mut step = |what: &str| {
        let now = s.exchanges();
        assert_eq!(now, last + 1, "{what} must cost exactly one exchange");
        last = now;
    };
    s.put(&a, puts.clone()).unwrap();
    step("a put of 128 x 4 KiB");
    let got = s.get(&a, &keys).unwrap();
    assert!(got.iter().all(|v| v.as_deref() == Some(page.as_slice())));
    step("a get of 128 keys");
    assert_eq!(
        s.list(&a, &ListRequest::prefix(Vec::new()))
            .unwrap()
            .entries
            .len(),
        128
    );
    step("a list");
    assert_eq!(
        s.list(
            &a,
            &ListRequest::prefix(Vec::new()).with_max_bytes(3 * 4100)
        )
        .unwrap()
        .entries
        .len(),
        3
    );
    step("a list with a byte budget");
    s.put_if(
        &a,
        vec![kv(b"x", b"1")],
        vec![Precondition::absent(b"x".to_vec())],
    )
    .unwrap();
    step("a conditional put");
    assert!(matches!(
        s.put_if(
            &a,
            vec![kv(b"x", b"2")],
            vec![Precondition::absent(b"x".to_vec())]
        ),
        Err(KvError::Conflict { .. })
    ));
    step("a conflicting put");
    s.delete(&a, keys[..10].to_vec()).unwrap();
    step("a delete");
    s.delete_range(&a, &keys[10], Some(&keys[20])).unwrap();
    step("a delete_range");
    let r = s
        .batch_read(
            &a,
            &[
                ReadOp::Get(keys[..30].to_vec()),
                ReadOp::List(ListRequest::range(keys[30].clone(), None).with_limit(5)),
                ReadOp::List(ListRequest::prefix(b"x".to_vec())),
            ],
        )
        .unwrap();
    step("a mixed batch read");
    match &r[0] {
        ReadResult::Get(v) => {
            assert!(v[..20].iter().all(Option::is_none));
            assert!(v[20..].iter().all(Option::is_some));
        }
        other => panic!("expected a get result, got {other:?}"),
    }
}

#[test]
fn postgres_data_persists_across_reopen() {
    let Some(t) = pg::test_store() else { return };
    let a = t.actor("persist");
    t.store
        .put(&a, vec![kv(b"k", b"durable"), kv(b"\xff", b"\x00")])
        .unwrap();
    let reopened = PostgresStore::connect(&pg::test_url()).unwrap();
    assert_eq!(
        reopened
            .get(&a, &[b"k".to_vec(), b"\xff".to_vec(), b"absent".to_vec()])
            .unwrap(),
        vec![Some(b"durable".to_vec()), Some(vec![0]), None]
    );
}

#[test]
fn postgres_custom_table_from_url() {
    let Some(t) = pg::test_store() else { return };
    let table = format!(
        "kvsqlite_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let url = format!("{}?table={table}&pool_size=2", pg::test_url());
    let store = PostgresStore::connect(&url).unwrap();
    assert_eq!(store.table(), table);
    let a = t.actor("table");
    store.put(&a, vec![kv(b"k", b"v")]).unwrap();
    let mut admin = t.admin();
    let n: i64 = admin
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .unwrap()
        .get(0);
    let in_default = t.store.get(&a, &[b"k".to_vec()]).unwrap();
    admin
        .batch_execute(&format!(
            "DROP TABLE \"{table}\"; DROP FUNCTION \"{table}_write_v1\""
        ))
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(in_default, vec![None]);

    assert!(matches!(
        PostgresStore::connect(&format!("{}?table=bad-name", pg::test_url())),
        Err(KvError::InvalidUrl { .. })
    ));
}

#[test]
fn postgres_wrong_port_is_unavailable() {
    let err = match PostgresStore::connect("postgres://postgres@127.0.0.1:1/test") {
        Ok(_) => panic!("connected to port 1"),
        Err(e) => e,
    };
    match &err {
        KvError::Unavailable { backend, message } => {
            assert_eq!(*backend, "postgres");
            assert!(
                message.starts_with("cannot connect to postgres://postgres@127.0.0.1:1/test: "),
                "the message names the target: {message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        PostgresStore::connect("postgres://u@h:notaport/db"),
        Err(KvError::InvalidUrl { .. })
    ));
}

#[test]
fn postgres_precondition_race_has_exactly_one_winner() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    const THREADS: usize = 16;

    // Absent key: exactly one of 16 racing creators wins.
    for round in 0..3 {
        let a = t.actor(&format!("race-absent-{round}"));
        let barrier = Barrier::new(THREADS);
        let winners = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for i in 0..THREADS {
                let (a, barrier, winners) = (&a, &barrier, &winners);
                scope.spawn(move || {
                    barrier.wait();
                    match s.put_if(
                        a,
                        vec![kv(b"owner", &[i as u8]), kv(&[b'w', i as u8], b"1")],
                        vec![Precondition::absent(b"owner".to_vec())],
                    ) {
                        Ok(()) => {
                            winners.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(KvError::Conflict { key }) => assert_eq!(key, b"owner".to_vec()),
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                });
            }
        });
        assert_eq!(winners.load(Ordering::Relaxed), 1);
        // Only the winner's entries exist.
        let all = s
            .list(&a, &ListRequest::prefix(Vec::new()))
            .unwrap()
            .entries;
        assert_eq!(all.len(), 2);
        let owner = all[0].1[0];
        assert_eq!(all[0].0, b"owner".to_vec());
        assert_eq!(all[1], kv(&[b'w', owner], b"1"));
    }

    // Compare-and-set on an existing key: in each round exactly one increment wins.
    let a = t.actor("race-cas");
    s.put(&a, vec![kv(b"n", b"0")]).unwrap();
    for round in 0u32..3 {
        let barrier = Barrier::new(THREADS);
        let winners = AtomicUsize::new(0);
        let current = round.to_string().into_bytes();
        let next = (round + 1).to_string().into_bytes();
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                let (a, barrier, winners, current, next) =
                    (&a, &barrier, &winners, &current, &next);
                scope.spawn(move || {
                    barrier.wait();
                    if s.put_if(
                        a,
                        vec![(b"n".to_vec(), next.clone())],
                        vec![Precondition::equals(b"n".to_vec(), current.clone())],
                    )
                    .is_ok()
                    {
                        winners.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(winners.load(Ordering::Relaxed), 1, "round {round}");
        assert_eq!(s.get(&a, &[b"n".to_vec()]).unwrap(), vec![Some(next)]);
    }
}

#[test]
fn postgres_sixteen_threads_many_actors() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    const THREADS: usize = 16;
    const ACTORS_PER_THREAD: usize = 4;
    const ROUNDS: u32 = 5;
    let actors: Vec<Vec<String>> = (0..THREADS)
        .map(|i| {
            (0..ACTORS_PER_THREAD)
                .map(|j| t.actor(&format!("many-{i}-{j}")))
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for mine in &actors {
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    for a in mine {
                        let gen_now = round.to_be_bytes().to_vec();
                        let gen_next = (round + 1).to_be_bytes().to_vec();
                        let pre = if round == 0 {
                            Precondition::absent(b"gen".to_vec())
                        } else {
                            Precondition::equals(b"gen".to_vec(), gen_now)
                        };
                        let mut puts = vec![(b"gen".to_vec(), gen_next)];
                        puts.push((
                            format!("page-{round}").into_bytes(),
                            format!("{a}:{round}").into_bytes(),
                        ));
                        s.put_if(a, puts, vec![pre]).unwrap();
                    }
                }
            });
        }
    });
    for a in actors.iter().flatten() {
        let page = s.list(a, &ListRequest::prefix(Vec::new())).unwrap();
        let mut want = vec![(b"gen".to_vec(), ROUNDS.to_be_bytes().to_vec())];
        for round in 0..ROUNDS {
            want.push((
                format!("page-{round}").into_bytes(),
                format!("{a}:{round}").into_bytes(),
            ));
        }
        want.sort();
        assert_eq!(page.entries, want, "actor {a}");
    }
    assert!(t.store.connections_opened() <= 16);
}

/// Waits until none of `pids` is a live backend.
fn wait_gone(admin: &mut ::postgres::Client, pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .unwrap()
            .get(0);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "backends {pids:?} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn postgres_reconnects_after_the_server_closes_connections() {
    let Some(t) = pg::test_store_with(PostgresOptions {
        pool_size: 2,
        // Probe every idle connection, however briefly idle, so the test need not wait.
        probe_after_idle: Duration::ZERO,
        ..PostgresOptions::default()
    }) else {
        return;
    };
    let s = &t.store;
    let a = t.actor("reconnect");
    s.put(&a, vec![kv(b"k", b"v1")]).unwrap();
    let pids = s.idle_backend_pids();
    assert_eq!(pids.len(), 1);
    let opened = s.connections_opened();

    let mut admin = t.admin();
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pids[0]])
        .unwrap()
        .get(0);
    assert!(killed);
    wait_gone(&mut admin, &pids);

    // The dead connection is noticed before anything is sent: a write is safe, and costs one
    // exchange on a new connection.
    let before = s.exchanges();
    s.put(&a, vec![kv(b"k", b"v2")]).unwrap();
    assert_eq!(s.exchanges(), before + 1);
    assert_eq!(s.connections_opened(), opened + 1);
    assert_eq!(
        s.get(&a, &[b"k".to_vec()]).unwrap(),
        vec![Some(b"v2".to_vec())]
    );

    // Again for a read.
    let pids = s.idle_backend_pids();
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pids[0]])
        .unwrap();
    wait_gone(&mut admin, &pids);
    let before = s.exchanges();
    assert_eq!(
        s.get(&a, &[b"k".to_vec()]).unwrap(),
        vec![Some(b"v2".to_vec())]
    );
    assert_eq!(s.exchanges(), before + 1);
    assert_eq!(s.connections_opened(), opened + 2);
}

#[test]
fn postgres_write_cut_off_mid_flight_is_unavailable_and_not_retried() {
    let Some(t) = pg::test_store() else { return };
    let s = Arc::clone(&t.store);
    let a = t.actor("midflight");
    s.put(&a, vec![kv(b"k", b"v1")]).unwrap();

    // Hold the actor's write lock from another session so the store's write blocks inside
    // the server, then terminate the store's session while the write waits.
    let mut holder = t.admin();
    let mut tx = holder.transaction().unwrap();
    tx.query_one(
        "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))",
        &[&s.table(), &a],
    )
    .unwrap();
    let writer = {
        let (s, a) = (Arc::clone(&s), a.clone());
        std::thread::spawn(move || s.put(&a, vec![kv(b"k", b"v2")]))
    };
    let mut admin = t.admin();
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        // The session waiting for this actor's advisory lock (two int4 keys: objsubid 2).
        let rows = admin
            .query(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND classid = hashtext($1)::oid AND objid = hashtext($2)::oid \
                 AND objsubid = 2",
                &[&s.table(), &a],
            )
            .unwrap();
        if let Some(row) = rows.first() {
            break row.get(0);
        }
        assert!(Instant::now() < deadline, "the write never blocked");
        std::thread::sleep(Duration::from_millis(10));
    };
    admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let result = writer.join().unwrap();
    match result {
        Err(KvError::Unavailable { message, .. }) => {
            assert!(message.contains("outcome is unknown"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    tx.rollback().unwrap();
    // Killed while waiting for the lock, the write never applied; the store carries on.
    assert_eq!(
        s.get(&a, &[b"k".to_vec()]).unwrap(),
        vec![Some(b"v1".to_vec())]
    );
    s.put(&a, vec![kv(b"k", b"v3")]).unwrap();
    assert_eq!(
        s.get(&a, &[b"k".to_vec()]).unwrap(),
        vec![Some(b"v3".to_vec())]
    );
}

/// Random operations through PostgreSQL and the memory backend give the same answers.
#[test]
fn postgres_matches_memory_on_random_operations() {
    let Some(t) = pg::test_store() else { return };
    let s = &t.store;
    let seed = 0x5EED_0001;
    let mut rng = Rng::new(seed);
    let mem = MemoryStore::with_limits(KvLimits::default());
    let actors = [t.actor("diff-0"), t.actor("diff-1")];
    let key = |rng: &mut Rng| -> Vec<u8> {
        // Small alphabet with 0x00 and 0xFF so prefixes and edges collide often.
        let alphabet = [0x00u8, 0x01, b'a', b'b', 0x7f, 0x80, 0xfe, 0xff];
        let len = 1 + rng.below(3) as usize;
        (0..len)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect()
    };
    for step in 0..300 {
        let a = &actors[rng.below(2) as usize];
        let what = rng.below(100);
        let ctx = format!("seed {seed:#x} step {step}");
        if what < 35 {
            let n = 1 + rng.below(6) as usize;
            let mut batch = WriteBatch::default();
            let mut used = std::collections::BTreeSet::new();
            for _ in 0..n {
                let k = key(&mut rng);
                if !used.insert(k.clone()) {
                    continue;
                }
                if rng.chance(0.25) {
                    batch.deletes.push(k);
                } else {
                    let len = rng.below(20) as usize;
                    batch.puts.push((k, rng.bytes(len)));
                }
            }
            if rng.chance(0.4) {
                let k = key(&mut rng);
                let current = mem.get(a, std::slice::from_ref(&k)).unwrap().remove(0);
                let expected = if rng.chance(0.7) {
                    current
                } else {
                    Some(b"nope".to_vec())
                };
                batch.preconditions.push(Precondition { key: k, expected });
            }
            assert_eq!(s.write(a, &batch), mem.write(a, &batch), "{ctx}: write");
        } else if what < 50 {
            let keys: Vec<_> = (0..1 + rng.below(5)).map(|_| key(&mut rng)).collect();
            assert_eq!(s.get(a, &keys), mem.get(a, &keys), "{ctx}: get");
        } else if what < 75 {
            let (x, y) = (key(&mut rng), key(&mut rng));
            let req = random_list(&mut rng, x, y);
            assert_eq!(s.list(a, &req), mem.list(a, &req), "{ctx}: list {req:?}");
        } else if what < 80 {
            let (x, y) = (key(&mut rng), key(&mut rng));
            let (start, end) = if x <= y { (x, y) } else { (y, x) };
            let end = rng.chance(0.8).then_some(end);
            assert_eq!(
                s.delete_range(a, &start, end.as_deref()),
                mem.delete_range(a, &start, end.as_deref()),
                "{ctx}: delete_range"
            );
        } else {
            let ops: Vec<ReadOp> = (0..1 + rng.below(4))
                .map(|_| {
                    if rng.chance(0.5) {
                        ReadOp::Get((0..1 + rng.below(4)).map(|_| key(&mut rng)).collect())
                    } else {
                        let (x, y) = (key(&mut rng), key(&mut rng));
                        ReadOp::List(random_list(&mut rng, x, y))
                    }
                })
                .collect();
            assert_eq!(
                s.batch_read(a, &ops),
                mem.batch_read(a, &ops),
                "{ctx}: batch_read {ops:?}"
            );
        }
    }
    // Whole namespaces agree at the end.
    for a in &actors {
        assert_eq!(
            s.list(a, &ListRequest::prefix(Vec::new())),
            mem.list(a, &ListRequest::prefix(Vec::new()))
        );
    }
}

fn random_list(rng: &mut Rng, x: Vec<u8>, y: Vec<u8>) -> ListRequest {
    let range = if rng.chance(0.5) {
        let len = rng.below(x.len() as u64 + 1) as usize;
        KeyRange::Prefix(x[..len].to_vec())
    } else {
        let (start, end) = if x <= y { (x, y) } else { (y, x) };
        KeyRange::Range {
            start,
            end: rng.chance(0.7).then_some(end),
        }
    };
    ListRequest {
        range,
        limit: rng.chance(0.5).then(|| 1 + rng.below(6) as usize),
        // Zero included: a budget never stops the first entry.
        max_bytes: rng.chance(0.5).then(|| rng.below(60) as usize),
    }
}

#[test]
fn postgres_store_urls_open_the_backend() {
    use kvsqlite::kv::url::open_store;
    match open_store(
        "postgres://postgres@127.0.0.1:1/test",
        KvLimits::default(),
        None,
    ) {
        Err(KvError::Unavailable { backend, .. }) => assert_eq!(backend, "postgres"),
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to port 1"),
    }
    let Some(t) = pg::test_store() else { return };
    let limits = KvLimits {
        max_write_entries: 2,
        ..KvLimits::default()
    };
    let s = open_store(&pg::test_url(), limits, Some(Duration::ZERO)).unwrap();
    assert_eq!(s.backend(), "postgres");
    assert_eq!(s.limits(), &limits);
    let a = t.actor("url");
    assert_eq!(
        s.put(&a, vec![kv(b"1", b""), kv(b"2", b""), kv(b"3", b"")]),
        Err(KvError::TooManyEntries { count: 3, max: 2 })
    );
    s.put(&a, vec![kv(b"1", b"x")]).unwrap();
    assert_eq!(
        t.store.get(&a, &[b"1".to_vec()]).unwrap(),
        vec![Some(b"x".to_vec())]
    );
}

#[test]
fn postgres_read_is_retried_on_a_dead_connection_but_a_write_is_not() {
    // Never probe: the pool cannot notice the kill before sending, so the calls below really
    // go out on a dead connection.
    let Some(t) = pg::test_store_with(PostgresOptions {
        pool_size: 1,
        probe_after_idle: Duration::MAX,
        ..PostgresOptions::default()
    }) else {
        return;
    };
    let s = &t.store;
    let a = t.actor("dead");
    s.put(&a, vec![kv(b"k", b"v1")]).unwrap();
    let mut admin = t.admin();
    let kill = |admin: &mut ::postgres::Client| {
        let pids = s.idle_backend_pids();
        assert_eq!(pids.len(), 1);
        admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pids[0]])
            .unwrap();
        wait_gone(admin, &pids);
    };

    // A read: sent, fails, retried once on a new connection — two exchanges, right answer.
    kill(&mut admin);
    let (before, opened) = (s.exchanges(), s.connections_opened());
    assert_eq!(
        s.get(&a, &[b"k".to_vec()]).unwrap(),
        vec![Some(b"v1".to_vec())]
    );
    assert_eq!(s.exchanges(), before + 2);
    assert_eq!(s.connections_opened(), opened + 1);

    // A write: sent, fails, not retried; the caller learns the outcome is unknown.
    kill(&mut admin);
    let before = s.exchanges();
    match s.put(&a, vec![kv(b"k", b"v2")]) {
        Err(KvError::Unavailable { message, .. }) => {
            assert!(message.contains("outcome is unknown"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(s.exchanges(), before + 1);
    // The server never received it (the session was gone), and the store carries on.
    assert_eq!(
        s.get(&a, &[b"k".to_vec()]).unwrap(),
        vec![Some(b"v1".to_vec())]
    );
}

#[test]
fn postgres_stores_starting_together_create_the_schema_once() {
    let Some(t) = pg::test_store() else { return };
    let table = format!(
        "kvsqlite_race_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let url = format!("{}?table={table}&pool_size=1", pg::test_url());
    let barrier = Barrier::new(8);
    let results: Vec<Result<(), KvError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let (url, barrier, a) = (&url, &barrier, t.actor("schema"));
                scope.spawn(move || {
                    barrier.wait();
                    let store = PostgresStore::connect(url)?;
                    store.put(&a, vec![kv(&[i], &[i])])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut admin = t.admin();
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM \"{table}\""), &[])
        .unwrap()
        .get(0);
    admin
        .batch_execute(&format!(
            "DROP TABLE \"{table}\"; DROP FUNCTION \"{table}_write_v1\""
        ))
        .unwrap();
    assert_eq!(results, vec![Ok(()); 8]);
    assert_eq!(rows, 8);
}

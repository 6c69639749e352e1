//! Conformance checks, first half: reads, writes, listings, a model, limits.

use std::collections::BTreeMap;

use crate::kv::{
    key_after, KvError, ListPage, ListRequest, Precondition, ReadOp, ReadResult, SharedStore,
    WriteBatch,
};
use crate::rng::Rng;

use super::*;

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

pub(crate) fn put_keys(s: &SharedStore, actor: &str, keys: &[Vec<u8>]) {
    for chunk in keys.chunks(100) {
        s.put(
            actor,
            chunk.iter().map(|k| (k.clone(), k.clone())).collect(),
        )
        .unwrap();
    }
}

pub(crate) fn keys_of(page: &ListPage) -> Vec<Vec<u8>> {
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

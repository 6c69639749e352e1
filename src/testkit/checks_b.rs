//! Conformance checks, second half: preconditions, crashes, faults, isolation, persistence,
//! concurrency, batch reads, round trips, custom limits.

use std::collections::BTreeMap;
use std::sync::{Arc, Barrier};

use crate::kv::counting::{CountingStore, OpKind};
use crate::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use crate::kv::{
    KvError, KvLimits, KvStore, ListPage, ListRequest, Precondition, ReadOp, ReadResult, WriteBatch,
};
use crate::rng::Rng;

use super::*;

/// The panic message of [`preconditions_met_and_unmet`] when a store wrote a batch whose
/// precondition does not hold.
pub const UNMET_WRITTEN: &str = "the store wrote a batch whose precondition does not hold";

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
        .expect_err(UNMET_WRITTEN);
    assert!(is_conflict_on(&err, b"gen"), "{err:?}");
    // Present where absence was required.
    let err = s
        .put_if(
            &a,
            entries(&[("q", "x")]),
            vec![Precondition::absent(k("p"))],
        )
        .expect_err(UNMET_WRITTEN);
    assert!(is_conflict_on(&err, b"p"), "{err:?}");
    // Absent where a value was required.
    let err = s
        .put_if(
            &a,
            entries(&[("q", "x")]),
            vec![Precondition::equals(k("missing"), k("1"))],
        )
        .expect_err(UNMET_WRITTEN);
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
        .expect_err(UNMET_WRITTEN);
    assert!(is_conflict_on(&err, b"p"), "{err:?}");
    // Preconditions see only this actor's keys.
    let err = s
        .put_if(
            &fx.actor("b"),
            entries(&[("q", "x")]),
            vec![Precondition::equals(k("gen"), k("2"))],
        )
        .expect_err(UNMET_WRITTEN);
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
        .expect_err(UNMET_WRITTEN);
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
    match &r[0] {
        ReadResult::List(page) => {
            assert_eq!(page.entries, list_all(s.as_ref(), &ids[2]));
            assert_eq!(page.entries.len(), 3);
        }
        other => panic!("a list answered as {other:?}"),
    }
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
    let actor = crate::kv::ActorKv::new(s.clone(), &a).unwrap();
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

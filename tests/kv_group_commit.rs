//! Group commit in the redb backend: writes of many actors sharing one transaction keep their
//! own preconditions, results and all-or-nothing; nothing acknowledged is lost to a crash
//! (the faults wrapper) or to a kill -9 of a process with many writers in flight.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{
    KvError, KvLimits, KvStore, ListRequest, Precondition, SharedStore, WriteBatch,
};

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

fn conflict(k: &str) -> Result<(), KvError> {
    Err(KvError::Conflict {
        key: k.as_bytes().to_vec(),
    })
}

/// Every entry of `actor`, as text.
fn contents(store: &dyn KvStore, actor: &str) -> BTreeMap<String, String> {
    let page = store.list(actor, &ListRequest::prefix(vec![])).unwrap();
    assert!(page.is_complete());
    page.entries
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A writer thread of the one-group test.
type Pending = JoinHandle<Result<(), KvError>>;

/// A queued operation of the one-group test.
enum Op {
    Write(&'static str, WriteBatch),
    DeleteRange(&'static str),
}

/// Fifteen writes of nine actors held into one group, in a known order: independent writes all
/// land; of two writes racing for the same absent key the first wins; compare-and-set steps
/// chain within the group (each sees the one before) and a stale one fails; a write with one
/// unmet precondition among several writes nothing; a range delete applies; limits and empty
/// writes are answered at once without joining the group. One transaction for all of it.
#[test]
fn one_group_keeps_each_writes_preconditions_and_result() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).unwrap());
    store.put("cas", vec![kv("counter", "0")]).unwrap();
    store
        .put("gone", vec![kv("a", "1"), kv("b", "2"), kv("c", "3")])
        .unwrap();
    store.put("mixed", vec![kv("z", "here")]).unwrap();
    let before = store.commit_stats();

    let absent = |k: &str| Precondition::absent(k.as_bytes().to_vec());
    let equals =
        |k: &str, v: &str| Precondition::equals(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    let write = |puts: Vec<(Vec<u8>, Vec<u8>)>, preconditions: Vec<Precondition>| WriteBatch {
        puts,
        deletes: vec![],
        preconditions,
    };
    let ops: Vec<(Op, Result<(), KvError>)> = vec![
        (
            Op::Write("ind0", write(vec![kv("k", "v0")], vec![absent("k")])),
            Ok(()),
        ),
        (
            Op::Write(
                "lock",
                write(vec![kv("owner", "first")], vec![absent("owner")]),
            ),
            Ok(()),
        ),
        (
            Op::Write("ind1", write(vec![kv("k", "v1")], vec![absent("k")])),
            Ok(()),
        ),
        (
            Op::Write(
                "lock",
                write(vec![kv("owner", "second")], vec![absent("owner")]),
            ),
            conflict("owner"),
        ),
        (
            Op::Write(
                "cas",
                write(vec![kv("counter", "1")], vec![equals("counter", "0")]),
            ),
            Ok(()),
        ),
        (
            Op::Write(
                "cas",
                write(vec![kv("counter", "2")], vec![equals("counter", "1")]),
            ),
            Ok(()),
        ),
        (
            Op::Write(
                "cas",
                write(vec![kv("counter", "9")], vec![equals("counter", "0")]),
            ),
            conflict("counter"),
        ),
        (
            Op::Write(
                "mixed",
                write(
                    vec![kv("x", "1"), kv("y", "1")],
                    vec![absent("x"), equals("z", "nope")],
                ),
            ),
            conflict("z"),
        ),
        (Op::DeleteRange("gone"), Ok(())),
        (
            Op::Write(
                "ind2",
                WriteBatch {
                    puts: vec![kv("k", "v2")],
                    deletes: vec![b"never-there".to_vec()],
                    preconditions: vec![absent("k")],
                },
            ),
            Ok(()),
        ),
        (
            Op::Write(
                "lock",
                write(vec![kv("owner", "third")], vec![equals("owner", "first")]),
            ),
            Ok(()),
        ),
        (
            Op::Write("ind3", write(vec![kv("k", "v3")], vec![])),
            Ok(()),
        ),
        (
            Op::Write("ind4", write(vec![kv("k", "v4")], vec![absent("k")])),
            Ok(()),
        ),
        (
            Op::Write("ind5", write(vec![kv("k", "v5")], vec![absent("k")])),
            Ok(()),
        ),
        (
            Op::Write("ind6", write(vec![kv("k", "v6")], vec![equals("k", "v6")])),
            conflict("k"),
        ),
    ];
    let hold = store.hold_commits();
    let mut handles: Vec<(Pending, Result<(), KvError>)> = Vec::new();
    for (i, (op, want)) in ops.into_iter().enumerate() {
        let s = Arc::clone(&store);
        let h = std::thread::spawn(move || match op {
            Op::Write(actor, batch) => s.write(actor, &batch),
            Op::DeleteRange(actor) => s.delete_range(actor, &[], None),
        });
        while store.commit_stats().queued != i + 1 {
            std::thread::yield_now();
        }
        handles.push((h, want));
    }
    // While the group is held: a write over the limits and a write with nothing to write are
    // answered at once (they never join a group).
    let too_many: Vec<_> = (0..129).map(|i| kv(&format!("k{i}"), "v")).collect();
    assert_eq!(
        store.put("ind0", too_many),
        Err(KvError::TooManyEntries {
            count: 129,
            max: 128
        })
    );
    assert_eq!(
        store.write("cas", &write(vec![], vec![equals("counter", "0")])),
        Ok(())
    );
    assert_eq!(
        store.write("cas", &write(vec![], vec![equals("counter", "2")])),
        conflict("counter")
    );
    assert_eq!(store.commit_stats().queued, 15);
    drop(hold);
    for (i, (h, want)) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), want, "write {i}");
    }
    let after = store.commit_stats();
    assert_eq!(after.transactions - before.transactions, 1);
    assert_eq!(after.groups_started - before.groups_started, 1);
    assert_eq!(after.writes - before.writes, 11);
    assert_eq!(after.queued, 0);

    // Read back from a fresh open of the file.
    drop(store);
    let store = RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).unwrap();
    for (i, actor) in ["ind0", "ind1", "ind2", "ind3", "ind4", "ind5"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            contents(&store, actor),
            map(&[("k", &format!("v{i}"))]),
            "{actor}"
        );
    }
    assert_eq!(contents(&store, "ind6"), map(&[]));
    assert_eq!(contents(&store, "lock"), map(&[("owner", "third")]));
    assert_eq!(contents(&store, "cas"), map(&[("counter", "2")]));
    assert_eq!(contents(&store, "mixed"), map(&[("z", "here")]));
    assert_eq!(contents(&store, "gone"), map(&[]));
}

/// Many threads writing at once, unheld: each of 12 actors chains 30 compare-and-set steps
/// (all succeed), and 6 threads race 20 increments each on one shared counter, retrying on
/// conflict: every increment lands exactly once (the values written are exactly 1..=120).
#[test]
fn concurrent_writers_lose_nothing_and_conflict_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).unwrap());
    let before = store.commit_stats();
    let own: Vec<_> = (0..12)
        .map(|t| {
            let s = Arc::clone(&store);
            std::thread::spawn(move || {
                let actor = format!("own{t}");
                for i in 0..30u32 {
                    let pre = match i {
                        0 => Precondition::absent(b"n".to_vec()),
                        _ => Precondition::equals(b"n".to_vec(), (i - 1).to_string().into_bytes()),
                    };
                    s.put_if(
                        &actor,
                        vec![kv("n", &i.to_string()), kv(&format!("step{i:02}"), "x")],
                        vec![pre],
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    let hot: Vec<_> = (0..6)
        .map(|_| {
            let s = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut wrote = Vec::new();
                while wrote.len() < 20 {
                    let cur = s.get("hot", &[b"n".to_vec()]).unwrap().remove(0);
                    let n: u32 = cur
                        .as_deref()
                        .map_or(0, |v| std::str::from_utf8(v).unwrap().parse().unwrap());
                    let pre = match cur {
                        None => Precondition::absent(b"n".to_vec()),
                        Some(v) => Precondition::equals(b"n".to_vec(), v),
                    };
                    match s.put_if("hot", vec![kv("n", &(n + 1).to_string())], vec![pre]) {
                        Ok(()) => wrote.push(n + 1),
                        Err(KvError::Conflict { key }) => assert_eq!(key, b"n"),
                        Err(e) => panic!("{e}"),
                    }
                }
                wrote
            })
        })
        .collect();
    for h in own {
        h.join().unwrap();
    }
    let mut written: Vec<u32> = hot.into_iter().flat_map(|h| h.join().unwrap()).collect();
    written.sort_unstable();
    assert_eq!(written, (1..=120).collect::<Vec<_>>());
    assert_eq!(contents(&*store, "hot"), map(&[("n", "120")]));
    for t in 0..12 {
        let c = contents(&*store, &format!("own{t}"));
        assert_eq!(c.len(), 31);
        assert_eq!(c["n"], "29");
    }
    let after = store.commit_stats();
    assert_eq!(after.writes - before.writes, 12 * 30 + 120);
    println!(
        "{} writes in {} transactions",
        after.writes - before.writes,
        after.transactions - before.transactions
    );
}

/// Batch `i` of a writer: ten entries `i/j` plus `last = i`, on the condition that `last` holds
/// `i - 1` (absent for the first).
fn batch(i: u32) -> WriteBatch {
    let mut puts: Vec<_> = (0..10u32)
        .map(|j| {
            let mut k = i.to_be_bytes().to_vec();
            k.push(b'/');
            k.extend_from_slice(&j.to_be_bytes());
            (k, vec![(i % 251) as u8; 200])
        })
        .collect();
    puts.push((b"last".to_vec(), i.to_be_bytes().to_vec()));
    let pre = match i {
        0 => Precondition::absent(b"last".to_vec()),
        _ => Precondition::equals(b"last".to_vec(), (i - 1).to_be_bytes().to_vec()),
    };
    WriteBatch {
        puts,
        deletes: vec![],
        preconditions: vec![pre],
    }
}

/// How many batches of `actor` are present: checks that they are whole, exactly as written,
/// and a prefix `0..n` of the sequence with `last = n - 1`.
fn present_batches(store: &dyn KvStore, actor: &str) -> u32 {
    let page = store.list(actor, &ListRequest::prefix(vec![])).unwrap();
    assert!(page.is_complete());
    let mut counts = BTreeMap::<u32, usize>::new();
    let mut last = None;
    for (k, v) in &page.entries {
        if k == b"last" {
            last = Some(u32::from_be_bytes(v[..].try_into().unwrap()));
            continue;
        }
        let i = u32::from_be_bytes(k[..4].try_into().unwrap());
        assert_eq!(v, &vec![(i % 251) as u8; 200], "{actor}: batch {i}");
        *counts.entry(i).or_default() += 1;
    }
    assert!(
        counts.values().all(|c| *c == 10),
        "{actor}: a torn batch: {counts:?}"
    );
    let n = counts.len() as u32;
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        (0..n).collect::<Vec<_>>(),
        "{actor}"
    );
    assert_eq!(last, n.checked_sub(1), "{actor}");
    n
}

/// Writers on a faults-wrapped redb store crash at a chosen call with many writes in flight:
/// after reopening the file, every acknowledged batch is present, every batch is whole, and
/// the only batch present without an acknowledgement is the crash call's write, exactly when
/// the crash applied it.
#[test]
fn crash_with_many_writers_in_flight_keeps_every_acknowledged_write() {
    for (round, (call, write)) in [
        (3, CrashWrite::Apply),
        (40, CrashWrite::Discard),
        (97, CrashWrite::Seeded(7)),
        (150, CrashWrite::Seeded(8)),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let inner: SharedStore = Arc::new(RedbStore::open(&path, KvLimits::default()).unwrap());
        let faults = FaultStore::wrap(inner, FaultPlan::none().crash_at(call, write));
        let writers: Vec<_> = (0..8)
            .map(|t| {
                let s = faults.shared();
                std::thread::spawn(move || {
                    let actor = format!("w{t}");
                    let mut acked = 0u32;
                    loop {
                        match s.write(&actor, &batch(acked)) {
                            Ok(()) => acked += 1,
                            Err(KvError::Crashed) => return acked,
                            Err(e) => panic!("{actor}: {e}"),
                        }
                    }
                })
            })
            .collect();
        let acked: Vec<u32> = writers.into_iter().map(|h| h.join().unwrap()).collect();
        let report = faults.crash_report().expect("the crash happened");
        assert_eq!(report.call, call);
        // Every call before the crash was a write that reached the store and was acknowledged.
        assert_eq!(acked.iter().sum::<u32>() as u64, call - 1, "round {round}");
        drop(faults);
        let store = RedbStore::open(&path, KvLimits::default()).unwrap();
        let mut extra = 0;
        for (t, a) in acked.iter().enumerate() {
            let n = present_batches(&store, &format!("w{t}"));
            assert!(
                n == *a || n == a + 1,
                "round {round} w{t}: acked {a}, present {n}"
            );
            extra += n - a;
        }
        assert_eq!(
            extra,
            u32::from(report.write_applied == Some(true)),
            "round {round}: {report:?}, acked {acked:?}"
        );
    }
}

/// Child half of `kill_9_with_many_writers_in_flight_loses_no_acknowledged_write`: with
/// `KVSQLITE_GROUP_CHILD=PATH`, 16 threads each write batches to their own actor forever,
/// printing `ack T I` after batch I of thread T returns. Run directly, it only says so.
#[test]
fn group_commit_child_writers() {
    let Ok(path) = std::env::var("KVSQLITE_GROUP_CHILD") else {
        println!("helper for kill_9_with_many_writers_in_flight_loses_no_acknowledged_write");
        return;
    };
    let store = Arc::new(RedbStore::open(path, KvLimits::default()).expect("child opens"));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let s = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0u32.. {
                    s.write(&format!("w{t}"), &batch(i)).expect("child write");
                    println!("ack {t} {i}");
                }
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
}

/// A process with 16 writers in flight on one redb file is killed with SIGKILL at a seeded
/// point: after reopening, every batch whose write returned in the child (its `ack` line was
/// read) is present, every batch is whole, and each writer's batches are a prefix.
#[test]
fn kill_9_with_many_writers_in_flight_loses_no_acknowledged_write() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut rng = kvsqlite::rng::Rng::new(0x6C0_FFEE);
    for round in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let kill_after = 40 + rng.below(200);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "group_commit_child_writers",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KVSQLITE_GROUP_CHILD", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut acked = [None::<u32>; 16];
        let mut seen = 0u64;
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest prints `test NAME ... ` without a newline before the first ack.
            let Some(rest) = line.find("ack ").map(|at| &line[at + 4..]) else {
                continue;
            };
            let (t, i) = rest.split_once(' ').unwrap();
            let (t, i): (usize, u32) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                acked[t].map_or(0, |a| a + 1),
                i,
                "acks of writer {t} in order"
            );
            acked[t] = Some(i);
            seen += 1;
            if seen >= kill_after {
                child.kill().unwrap();
                break;
            }
        }
        child.wait().unwrap();
        assert!(
            seen >= kill_after,
            "the child stopped on its own after {seen} acks"
        );
        check_after_kill(&path, &acked, round);
    }
}

fn check_after_kill(path: &Path, acked: &[Option<u32>], round: usize) {
    let store = RedbStore::open(path, KvLimits::default()).unwrap();
    let mut total = 0;
    for (t, a) in acked.iter().enumerate() {
        let n = present_batches(&store, &format!("w{t}"));
        let want = a.map_or(0, |a| a + 1);
        assert!(
            n >= want,
            "round {round} w{t}: batch {a:?} acknowledged, {n} present"
        );
        total += n;
    }
    println!("round {round}: {total} batches present, acked {acked:?}");
}

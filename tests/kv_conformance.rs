//! The KV conformance suite against the embedded backends, `memory` and `redb` (a temp dir per
//! test), plus per-store limits, redb file handling and URLs. PostgreSQL runs the same suite
//! from `tests/kv_postgres.rs`.

#[path = "common/conformance.rs"]
mod conformance;

use std::sync::Arc;

use conformance::Fixture;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::url::open_store;
use kvsqlite::kv::{KvError, KvLimits, KvStore, SharedStore};

fn memory_fixture() -> Option<Fixture> {
    Some(Fixture::new(
        Arc::new(MemoryStore::new()) as SharedStore,
        "memory",
    ))
}

kv_conformance_tests!(memory, memory_fixture);

fn redb_fixture() -> Result<Fixture, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let path = dir.path().join("kv.redb");
    let store = RedbStore::open(&path, KvLimits::default()).map_err(|e| e.to_string())?;
    Ok(Fixture::new(Arc::new(store) as SharedStore, "redb")
        .with_reopen(move || {
            Arc::new(RedbStore::open(&path, KvLimits::default()).expect("reopen redb"))
                as SharedStore
        })
        .with_guard(dir))
}

kv_conformance_tests!(redb, redb_fixture, [persistence_across_reopen]);

/// A backend whose fixture cannot be made: the conformance runner's skip path.
fn broken_fixture() -> Result<Fixture, String> {
    Err("the fixture failed on purpose".to_string())
}

/// Run by `a_broken_fixture_fails_under_ci_and_skips_visibly_otherwise` only.
#[test]
#[ignore = "started by a_broken_fixture_fails_under_ci_and_skips_visibly_otherwise"]
fn broken_fixture_helper() {
    conformance::run(
        "broken",
        broken_fixture,
        conformance::get_put_delete_round_trip,
    );
}

/// The skip rule of the conformance runner: this binary re-runs `broken_fixture_helper`, whose
/// fixture fails, once with `CI=true` (the test must fail, saying why) and once without (it
/// passes, and says it skipped on standard error, which `cargo test` shows: no `--nocapture`).
#[test]
fn a_broken_fixture_fails_under_ci_and_skips_visibly_otherwise() {
    let run = |ci: bool| {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "broken_fixture_helper", "--ignored"]);
        if ci {
            cmd.env("CI", "true");
        } else {
            cmd.env_remove("CI");
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = run(true);
    assert!(!ok, "{stdout}{stderr}");
    assert!(
        stdout.contains("CI=true and broken unavailable: the fixture failed on purpose"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, stderr) = run(false);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    assert_eq!(
        stderr, "SKIPPED: broken unavailable: the fixture failed on purpose\n",
        "{stdout}"
    );
}

fn small_limits() -> KvLimits {
    KvLimits {
        max_key_bytes: 16,
        max_value_bytes: 100,
        max_write_entries: 60,
        max_write_bytes: 10_000,
        default_list_limit: 50,
        max_get_keys: 70,
    }
}

#[test]
fn memory_custom_limits_enforced() {
    let store = MemoryStore::with_limits(small_limits());
    conformance::custom_limits_enforced(&store, "actor", small_limits());
}

#[test]
fn redb_custom_limits_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path().join("kv.redb"), small_limits()).unwrap();
    conformance::custom_limits_enforced(&store, "actor", small_limits());
}

#[test]
fn redb_same_path_twice_in_one_process_shares_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/kv.redb");
    let a = RedbStore::open(&path, KvLimits::default()).unwrap();
    // A different spelling of the same file.
    let b = RedbStore::open(
        dir.path().join("nested/./dirs/../dirs/kv.redb"),
        KvLimits::default(),
    )
    .unwrap();
    assert_eq!(a.path(), b.path());
    a.put("x", vec![(b"k".to_vec(), b"1".to_vec())]).unwrap();
    assert_eq!(
        b.get("x", &[b"k".to_vec()]).unwrap(),
        vec![Some(b"1".to_vec())]
    );
    // Closing one handle leaves the other working; closing both and reopening reads the file.
    drop(a);
    b.put("x", vec![(b"k2".to_vec(), b"2".to_vec())]).unwrap();
    drop(b);
    let c = open_store(
        &format!("redb:{}", path.display()),
        KvLimits::default(),
        None,
    )
    .unwrap();
    assert_eq!(
        c.get("x", &[b"k".to_vec(), b"k2".to_vec()]).unwrap(),
        vec![Some(b"1".to_vec()), Some(b"2".to_vec())]
    );
}

#[test]
fn redb_open_and_close_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                for i in 0..20u8 {
                    let s = RedbStore::open(&path, KvLimits::default()).expect("open");
                    s.put("a", vec![(vec![t, i], vec![i])]).expect("put");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = RedbStore::open(&path, KvLimits::default()).unwrap();
    let page = s
        .list("a", &kvsqlite::kv::ListRequest::prefix(vec![]))
        .unwrap();
    assert_eq!(page.entries.len(), 8 * 20);
}

#[test]
fn redb_non_redb_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, vec![0x42u8; 10_000]).unwrap();
    let err = RedbStore::open(&path, KvLimits::default())
        .err()
        .expect("must fail");
    match &err {
        KvError::Backend {
            backend: "redb",
            message,
        } => {
            assert!(message.contains("garbage.redb"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The file is left as it was.
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x42u8; 10_000]);
    // A directory where the file should be.
    let err = RedbStore::open(dir.path(), KvLimits::default())
        .err()
        .expect("must fail");
    assert!(
        matches!(err, KvError::Backend { .. } | KvError::Unavailable { .. }),
        "{err:?}"
    );
}

#[test]
fn redb_truncated_database_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let s = RedbStore::open(&path, KvLimits::default()).unwrap();
        s.put("a", vec![(b"k".to_vec(), vec![1; 5000])]).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    // Keep redb's header but cut the file short, and flip bytes in another copy.
    let cut = dir.path().join("cut.redb");
    std::fs::write(&cut, &bytes[..bytes.len().min(700)]).unwrap();
    let r = RedbStore::open(&cut, KvLimits::default());
    // redb may recover (then the data must be readable or absent, never garbage) or refuse.
    match r {
        Ok(s) => {
            let got = s.get("a", &[b"k".to_vec()]);
            assert!(
                matches!(&got, Ok(v) if v[0].is_none() || v[0] == Some(vec![1; 5000]))
                    || matches!(got, Err(KvError::Backend { .. })),
                "{got:?}"
            );
        }
        Err(e) => assert!(matches!(e, KvError::Backend { .. }), "{e:?}"),
    }
}

#[test]
fn url_errors_list_accepted_forms() {
    for bad in [
        "",
        "mem:",
        "redb:",
        "memory:x",
        "http://x",
        "postgres:/nohost",
        "postgres://h:port/db",
    ] {
        let err = open_store(bad, KvLimits::default(), None).err().expect(bad);
        let text = err.to_string();
        assert!(
            matches!(err, KvError::InvalidUrl { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(
            text.contains("memory:") && text.contains("redb:PATH") && text.contains("postgres://"),
            "{bad:?}: {text}"
        );
    }
}

#[test]
fn memory_store_via_url_is_memory() {
    let s = open_store("memory:", KvLimits::default(), None).unwrap();
    assert_eq!(s.backend(), "memory");
}

/// Child-process half of `redb_kill_9_mid_write_keeps_batches_whole`, which starts it (with
/// `KVSQLITE_REDB_CHILD` set to `PATH ACTOR`): writes numbered 100-entry batches forever,
/// printing `committed N` after each put returns. Ignored in a normal run (it asserts nothing
/// on its own).
#[test]
#[ignore = "the child process of redb_kill_9_mid_write_keeps_batches_whole, started by it"]
fn redb_crash_child_writer() {
    let spec = std::env::var("KVSQLITE_REDB_CHILD").expect("KVSQLITE_REDB_CHILD=PATH ACTOR");
    let (path, actor) = spec.split_once(' ').expect("PATH ACTOR");
    let store = RedbStore::open(path, KvLimits::default()).expect("child opens the store");
    for i in 0u32.. {
        let batch = (0..100u32)
            .map(|j| {
                let mut k = i.to_be_bytes().to_vec();
                k.extend_from_slice(&j.to_be_bytes());
                (k, vec![(i % 251) as u8; 1000])
            })
            .collect();
        store.put(actor, batch).expect("child put");
        println!("committed {i}");
    }
}

/// A writer process killed with SIGKILL at a seeded point mid-stream: after reopening, every
/// batch is either wholly present or wholly absent, every batch whose put returned is present
/// (durable on return), and the present batches are exactly a prefix of the sequence.
#[test]
fn redb_kill_9_mid_write_keeps_batches_whole() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let mut rng = kvsqlite::rng::Rng::new(0xC0FFEE);
    for round in 0..3 {
        let actor = format!("round{round}");
        let kill_after = 2 + rng.below(6) as u32;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "redb_crash_child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KVSQLITE_REDB_CHILD", format!("{} {actor}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut last_acked: Option<u32> = None;
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("committed ") {
                let n: u32 = n.parse().unwrap();
                last_acked = Some(n);
                if n >= kill_after {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        child.wait().unwrap();
        let last_acked = last_acked.expect("the child committed something");
        let store = RedbStore::open(&path, KvLimits::default()).unwrap();
        let mut counts = std::collections::BTreeMap::<u32, usize>::new();
        let mut req = kvsqlite::kv::ListRequest::prefix(vec![]);
        loop {
            let page = store.list(&actor, &req).unwrap();
            for (k, v) in &page.entries {
                let i = u32::from_be_bytes(k[..4].try_into().unwrap());
                assert_eq!(v, &vec![(i % 251) as u8; 1000]);
                *counts.entry(i).or_default() += 1;
            }
            match page.next_start {
                Some(n) => req = kvsqlite::kv::ListRequest::range(n, None),
                None => break,
            }
        }
        let present: Vec<u32> = counts.keys().copied().collect();
        println!(
            "round {round}: acked {last_acked}, present {}",
            present.len()
        );
        assert!(
            counts.values().all(|c| *c == 100),
            "round {round}: a torn batch: {counts:?}"
        );
        assert_eq!(
            present,
            (0..present.len() as u32).collect::<Vec<_>>(),
            "round {round}: present batches are a prefix"
        );
        assert!(
            present.len() as u32 > last_acked,
            "round {round}: batch {last_acked} was acknowledged but is missing ({} present)",
            present.len()
        );
    }
}

/// Bytes flipped at seeded places in a redb file: opening and reading either fail with a
/// clear error naming the file, or return only values exactly as written (every stored value
/// carries a checksum of its key and value). Never a panic, never a wrong value.
#[test]
fn redb_flipped_bytes_are_errors_never_wrong_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    let value_of = |i: u8, j: u8| vec![i ^ j; 300];
    {
        let s = RedbStore::open(&path, KvLimits::default()).unwrap();
        for i in 0..20u8 {
            s.put(
                "a",
                (0..50u8).map(|j| (vec![i, j], value_of(i, j))).collect(),
            )
            .unwrap();
        }
    }
    let good = std::fs::read(&path).unwrap();
    let mut rng = kvsqlite::rng::Rng::new(0xBADB17);
    let mut detected = 0;
    for case in 0..60 {
        let mut bytes = good.clone();
        let off = rng.below(bytes.len() as u64) as usize;
        for b in bytes.iter_mut().skip(off).take(16) {
            *b ^= 0x5A;
        }
        let copy = dir.path().join(format!("flipped{case}.redb"));
        std::fs::write(&copy, &bytes).unwrap();
        let result = RedbStore::open(&copy, KvLimits::default()).and_then(|s| {
            let listed = s.list("a", &kvsqlite::kv::ListRequest::prefix(vec![]))?;
            let got = s.get("a", &[vec![3, 7], vec![19, 49]])?;
            Ok((listed, got))
        });
        match result {
            Ok((listed, got)) => {
                for (k, v) in &listed.entries {
                    assert_eq!(k.len(), 2, "case {case} (offset {off}): key {k:?}");
                    assert_eq!(v, &value_of(k[0], k[1]), "case {case} (offset {off})");
                }
                for (v, (i, j)) in got.iter().zip([(3, 7), (19, 49)]) {
                    assert!(
                        v.is_none() || v.as_ref() == Some(&value_of(i, j)),
                        "case {case}"
                    );
                }
            }
            Err(e) => {
                detected += 1;
                assert!(
                    matches!(e, KvError::Backend { .. } | KvError::Unavailable { .. }),
                    "case {case}: {e:?}"
                );
                assert!(e.to_string().contains("flipped"), "case {case}: {e}");
            }
        }
    }
    assert!(
        detected > 0,
        "some flips must land in live data and be caught"
    );
}

/// A file written by a build with another layout version is refused, naming both versions.
#[test]
fn redb_other_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let db = ::redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(::redb::TableDefinition::<&str, u64>::new("kvsqlite_meta"))
                .unwrap();
            meta.insert("format_version", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = RedbStore::open(&path, KvLimits::default())
        .err()
        .expect("must refuse");
    let text = err.to_string();
    assert!(matches!(err, KvError::Backend { .. }), "{err:?}");
    assert!(
        text.contains("version 99") && text.contains("version 1") && text.contains("kv.redb"),
        "{text}"
    );
}

/// The redb layout, pinned: table `kvsqlite_kv`, key `u16 BE actor length ‖ actor ‖ key`,
/// value `value ‖ CRC-32 LE of (composite key ‖ value)`, and format version 1 in
/// `kvsqlite_meta`. Changing any of it must change `FORMAT_VERSION`.
#[test]
fn redb_layout_is_pinned() {
    use ::redb::{ReadableDatabase, ReadableTable, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let s = RedbStore::open(&path, KvLimits::default()).unwrap();
        s.put(
            "ab",
            vec![(b"k".to_vec(), b"v".to_vec()), (vec![0xFF], vec![])],
        )
        .unwrap();
    }
    assert_eq!(kvsqlite::kv::redb_store::FORMAT_VERSION, 1);
    let db = ::redb::Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn
        .open_table(TableDefinition::<&str, u64>::new("kvsqlite_meta"))
        .unwrap();
    assert_eq!(meta.get("format_version").unwrap().unwrap().value(), 1);
    let table = txn
        .open_table(TableDefinition::<&[u8], &[u8]>::new("kvsqlite_kv"))
        .unwrap();
    let rows: Vec<(Vec<u8>, Vec<u8>)> = table
        .iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect();
    // CRC-32/ISO-HDLC, bit by bit: an independent implementation of the checksum.
    fn crc(bytes: &[u8]) -> [u8; 4] {
        let mut c = !0u32;
        for b in bytes {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        (!c).to_le_bytes()
    }
    let k1 = vec![0, 2, b'a', b'b', b'k'];
    let k2 = vec![0, 2, b'a', b'b', 0xFF];
    let mut v1 = b"v".to_vec();
    v1.extend_from_slice(&crc(&[k1.as_slice(), b"v"].concat()));
    let v2 = crc(&k2).to_vec();
    assert_eq!(rows, vec![(k1, v1), (k2, v2)]);
}

//! The KV conformance suite against the embedded backends (`memory`, `redb`), plus tests of
//! per-store limits. PostgreSQL plugs into the same suite from its own test file.

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

kv_conformance_tests!(redb, redb_fixture);

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

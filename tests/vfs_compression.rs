//! Page compression at rest and on the wire (format 3): every page kind round trips through its
//! compressed value, incompressible pages are stored as they are (exact bytes, from the
//! counting store), a format-2 store's raw values and new compressed ones read back together
//! exactly as a stock SQLite file, malformed compressed values are a clear `SQLITE_CORRUPT`,
//! and compression changes no round trip of a commit or an open.

#[allow(dead_code)]
#[path = "common/history.rs"]
mod history_common;
use history_common::content_hash;

use std::sync::Arc;

use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvStore, SharedStore, WriteBatch};
use kvsqlite::rng::Rng;
use kvsqlite::vfs::history::HistoryOptions;
use kvsqlite::vfs::layout::{self, FileKind, ParsedKey};
use kvsqlite::vfs::{codec, open_database, OpenOptions};
use rusqlite::ErrorCode;

fn keys_of(m: &MemoryStore, actor: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.dump()
        .into_iter()
        .filter(|(a, _, _)| a == actor)
        .map(|(_, k, v)| (k, v))
        .collect()
}

/// The main file's chunk values of an actor, by chunk index.
fn chunks_of(m: &MemoryStore, actor: &str) -> Vec<(u32, Vec<u8>)> {
    keys_of(m, actor)
        .into_iter()
        .filter_map(|(k, v)| match layout::parse_key(&k) {
            Some(ParsedKey::Chunk(FileKind::Main, i)) => Some((i, v)),
            _ => None,
        })
        .collect()
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.next_u64() as u8).collect()
}

/// The same statements on a kvsqlite database and a stock SQLite file.
struct Pair {
    db: kvsqlite::vfs::Database,
    oracle: rusqlite::Connection,
    _dir: tempfile::TempDir,
}

impl Pair {
    fn new(store: SharedStore, actor: &str, opts: &OpenOptions) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let oracle = rusqlite::Connection::open(dir.path().join("oracle.db")).unwrap();
        Pair {
            db: open_database(store, actor, opts).unwrap(),
            oracle,
            _dir: dir,
        }
    }

    fn run(&self, sql: &str, params: &[rusqlite::types::Value]) {
        let p = rusqlite::params_from_iter(params.iter());
        self.db.execute(sql, p).unwrap();
        let p = rusqlite::params_from_iter(params.iter());
        self.oracle.execute(sql, p).unwrap();
    }

    fn batch(&self, sql: &str) {
        self.db.execute_batch(sql).unwrap();
        self.oracle.execute_batch(sql).unwrap();
    }

    fn same(&self) {
        assert_eq!(content_hash(&self.db), content_hash(&self.oracle));
    }
}

/// Every kind of page SQLite writes — page 1, table and index B-tree pages (leaf and
/// interior), overflow pages, freelist pages — decodes from its stored value to the page SQLite
/// reads, and the decoded chunks put together are a valid SQLite file with the oracle's
/// content.
#[test]
fn every_page_kind_round_trips_through_its_compressed_value() {
    let m = Arc::new(MemoryStore::new());
    let store: SharedStore = m.clone();
    let opts = OpenOptions {
        history: HistoryOptions::off(),
        ..OpenOptions::default()
    };
    let p = Pair::new(store.clone(), "kinds", &opts);
    let mut rng = Rng::new(7);
    p.batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB);
         CREATE INDEX t_name ON t(name);",
    );
    p.batch("BEGIN");
    for i in 0..3000i64 {
        p.run(
            "INSERT INTO t(name, body) VALUES (?1, ?2)",
            &[
                format!("name {:08}", (i * 7919) % 3000).into(),
                vec![(i % 251) as u8; 40].into(),
            ],
        );
    }
    // Overflow pages: rows far bigger than a page, half of them incompressible.
    for i in 0..6 {
        let body = if i % 2 == 0 {
            random_bytes(&mut rng, 20_000)
        } else {
            vec![b'x'; 20_000]
        };
        p.run(
            "INSERT INTO t(name, body) VALUES ('big', ?1)",
            &[body.into()],
        );
    }
    p.batch("COMMIT");
    // Freelist pages: delete half of the rows, no VACUUM.
    p.batch("DELETE FROM t WHERE id BETWEEN 100 AND 1600");
    p.same();
    let size = p.db.known_size().unwrap();
    let cs = p.db.page_size() as usize;
    let chunks = chunks_of(&m, "kinds");
    assert_eq!(chunks.len() as u64, size / cs as u64);
    let mut file = Vec::new();
    let (mut compressed, mut raw) = (0, 0);
    let mut kinds = std::collections::BTreeSet::new();
    for (i, v) in &chunks {
        let page = codec::decode(v, cs).unwrap();
        assert!(
            page.as_ref() == &p.db.read_page(*i).unwrap()[..],
            "page {i}"
        );
        if codec::is_compressed(v, cs) {
            compressed += 1;
        } else {
            assert_eq!(v.len(), cs);
            raw += 1;
        }
        let off = if *i == 0 { 100 } else { 0 };
        kinds.insert(page[off]);
        file.extend_from_slice(&page);
    }
    // Interior and leaf pages of table and index B-trees.
    for kind in [0x02, 0x05, 0x0a, 0x0d] {
        assert!(
            kinds.contains(&kind),
            "no page of kind {kind:#04x}: {kinds:?}"
        );
    }
    let freelist = u32::from_be_bytes(file[36..40].try_into().unwrap());
    assert!(freelist > 10, "{freelist} free pages");
    // The random overflow pages do not compress: stored as they are.
    assert!(raw >= 12, "{raw} raw of {}", chunks.len());
    assert!(
        compressed > chunks.len() / 2,
        "{compressed} of {}",
        chunks.len()
    );
    // The decoded chunks are the database file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("decoded.db");
    std::fs::write(&path, &file).unwrap();
    let decoded = rusqlite::Connection::open(&path).unwrap();
    let ok: String = decoded
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(content_hash(&decoded), content_hash(&p.oracle));
    // A fresh open (no cache) reads it all back from the compressed values.
    drop(p.db);
    let again = open_database(store, "kinds", &opts).unwrap();
    assert_eq!(content_hash(&again), content_hash(&p.oracle));
}

/// An incompressible page is sent and stored as it is and a compressible one compressed: the
/// bytes the counting store saw are exactly the keys and values now in the store.
#[test]
fn incompressible_pages_are_stored_raw_with_exact_byte_counts() {
    let m = Arc::new(MemoryStore::new());
    let counting = CountingStore::wrap(m.clone());
    let opts = OpenOptions {
        history: HistoryOptions::off(),
        ..OpenOptions::default()
    };
    let db = open_database(counting.shared(), "raw", &opts).unwrap();
    db.execute_batch("CREATE TABLE t(b BLOB)").unwrap();
    let mut rng = Rng::new(11);
    // Noise over three overflow pages: at least two of them are nothing but noise.
    let noise = random_bytes(&mut rng, 3 * 4092);
    let (kv0, s0) = (counting.snapshot(), db.snapshot());
    db.execute("INSERT INTO t VALUES (?1)", [&noise]).unwrap();
    let (kv, d) = (counting.snapshot() - kv0, db.snapshot() - s0);
    let pages = db.known_size().unwrap() / 4096;
    assert_eq!((kv.round_trips(), d.pages_written), (1, pages));
    let chunks = chunks_of(&m, "raw");
    assert_eq!(chunks.len() as u64, pages);
    let (mut raw, mut compressed, mut stored) = (0, 0, 0);
    for (i, v) in &chunks {
        let page = db.read_page(*i).unwrap();
        match codec::encode(&page) {
            Some(c) => {
                assert!(*v == c, "chunk {i} is stored compressed");
                compressed += 1;
            }
            None => {
                assert!(*v == page, "chunk {i} is stored as it is");
                assert_eq!(v.len(), 4096);
                raw += 1;
            }
        }
        stored += v.len();
    }
    // Page 1 (the schema) and the table's leaf compress; the full overflow pages do not.
    assert!(
        raw >= 2 && compressed >= 2,
        "{raw} raw, {compressed} compressed"
    );
    assert_eq!(d.page_image_bytes, pages * 4096);
    assert_eq!(d.page_stored_bytes, stored as u64);
    // The write sent the chunks and the metadata record: keys and values, nothing else.
    let meta = keys_of(&m, "raw")
        .into_iter()
        .find(|(k, _)| *k == layout::meta_key(FileKind::Main))
        .map(|(_, v)| v)
        .unwrap();
    let sent = 7 * pages as usize + stored + 3 + meta.len();
    assert_eq!(kv.total().bytes_out, sent as u64);
    assert_eq!(d.bytes_written, sent as u64);
    // Without compression the same transaction sends every page whole.
    let plain = OpenOptions {
        compress_pages: false,
        ..opts.clone()
    };
    let db2 = open_database(counting.shared(), "raw2", &plain).unwrap();
    db2.execute_batch("CREATE TABLE t(b BLOB)").unwrap();
    let (kv0, s0) = (counting.snapshot(), db2.snapshot());
    db2.execute("INSERT INTO t VALUES (?1)", [&noise]).unwrap();
    let (kv2, d2) = (counting.snapshot() - kv0, db2.snapshot() - s0);
    assert_eq!(kv2.round_trips(), 1);
    assert_eq!(
        (d2.page_image_bytes, d2.page_stored_bytes),
        (pages * 4096, pages * 4096)
    );
    assert_eq!(
        kv2.total().bytes_out,
        ((7 + 4096) * pages as usize + 3 + meta.len()) as u64
    );
    assert!(chunks_of(&m, "raw2").iter().all(|(_, v)| v.len() == 4096));
}

/// A store written without compression, with its metadata marked format 2 (exactly what the
/// format-2 build left), then written on with compression: raw and compressed values side by
/// side read back as the stock SQLite oracle at every step, through fresh opens.
#[test]
fn a_mixed_store_of_format_2_raw_values_and_compressed_ones_reads_like_the_oracle() {
    let m = Arc::new(MemoryStore::new());
    let store: SharedStore = m.clone();
    let raw_opts = OpenOptions {
        compress_pages: false,
        ..OpenOptions::default()
    };
    let p = Pair::new(store.clone(), "mixed", &raw_opts);
    p.batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); CREATE INDEX t_v ON t(v);");
    p.batch("BEGIN");
    for i in 0..800i64 {
        p.run(
            "INSERT INTO t(v, b) VALUES (?1, ?2)",
            &[format!("v{}", i % 97).into(), vec![i as u8; 100].into()],
        );
    }
    p.batch("COMMIT");
    p.same();
    let Pair { db, oracle, _dir } = p;
    drop(db);
    let cs = 4096;
    assert!(chunks_of(&m, "mixed").iter().all(|(_, v)| v.len() == cs));
    // Mark the metadata format 2 (the record is the same but for its version byte).
    let mk = layout::meta_key(FileKind::Main);
    let mut meta = keys_of(&m, "mixed")
        .into_iter()
        .find(|(k, _)| *k == mk)
        .unwrap()
        .1;
    assert_eq!(meta[0], layout::FORMAT_VERSION);
    meta[0] = 2;
    m.write("mixed", &WriteBatch::puts(vec![(mk.clone(), meta)]))
        .unwrap();
    let db = open_database(store.clone(), "mixed", &OpenOptions::default()).unwrap();
    let p = Pair { db, oracle, _dir };
    p.same();
    for round in 0..5i64 {
        p.run(
            "UPDATE t SET v = ?1 WHERE id % 50 = ?2",
            &[format!("round {round}").into(), round.into()],
        );
        p.run("INSERT INTO t(v, b) VALUES ('new', zeroblob(3000))", &[]);
        p.same();
    }
    let Pair { db, oracle, _dir } = p;
    drop(db);
    let chunks = chunks_of(&m, "mixed");
    let compressed = chunks
        .iter()
        .filter(|(_, v)| codec::is_compressed(v, cs))
        .count();
    assert!(
        compressed > 0 && compressed < chunks.len(),
        "{compressed} of {} compressed",
        chunks.len()
    );
    let meta = keys_of(&m, "mixed")
        .into_iter()
        .find(|(k, _)| *k == mk)
        .unwrap()
        .1;
    assert_eq!(meta[0], 3, "a commit writes format 3");
    let db = open_database(store.clone(), "mixed", &OpenOptions::default()).unwrap();
    assert_eq!(content_hash(&db), content_hash(&oracle));
    // The image a fork or an export takes (here at the current commit) reads both kinds of
    // value too.
    let seqs: Vec<u64> = db.history().unwrap().iter().map(|c| c.seq).collect();
    assert!(!seqs.is_empty());
    let img = db
        .image_at(&kvsqlite::vfs::history::Target::Seq(*seqs.last().unwrap()))
        .unwrap();
    let mut file = Vec::new();
    for (_, page) in img.pages {
        file.extend_from_slice(&page);
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("img.db"), &file).unwrap();
    let f = rusqlite::Connection::open(dir.path().join("img.db")).unwrap();
    assert_eq!(content_hash(&f), content_hash(&oracle));
}

/// Malformed compressed values — an LZ4 block that does not decode, one that decodes to the
/// wrong length, an unknown encoding byte — fail the read with `SQLITE_CORRUPT` naming the
/// chunk; nothing panics.
#[test]
fn corrupt_compressed_pages_are_a_clear_corruption_error() {
    let m = Arc::new(MemoryStore::new());
    let store: SharedStore = m.clone();
    let db = open_database(store.clone(), "bad", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x TEXT); INSERT INTO t VALUES ('hello');")
        .unwrap();
    drop(db);
    let key = layout::chunk_key(FileKind::Main, 1);
    let good = keys_of(&m, "bad")
        .into_iter()
        .find(|(k, _)| *k == key)
        .unwrap()
        .1;
    assert!(codec::is_compressed(&good, 4096), "{}", good.len());
    let mut garbled = good.clone();
    for b in garbled.iter_mut().skip(1) {
        *b = 0xFF;
    }
    let short = codec::encode(&vec![1u8; 1024]).unwrap();
    let mut unknown = good.clone();
    unknown[0] = 7;
    for (what, bad, says) in [
        ("garbled", garbled, "not a valid LZ4 block"),
        ("short", short, "decodes to 1024 bytes"),
        ("unknown", unknown, "unknown encoding"),
    ] {
        m.write("bad", &WriteBatch::puts(vec![(key.clone(), bad)]))
            .unwrap();
        let db = open_database(store.clone(), "bad", &OpenOptions::default()).unwrap();
        let e = db
            .query_row("SELECT x FROM t", [], |r| r.get::<_, String>(0))
            .unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseCorrupt),
            "{what}: {e}"
        );
        drop(db);
        // The reason, as the VFS says it.
        let kv = kvsqlite::kv::ActorKv::new(store.clone(), "bad").unwrap();
        let v = kv
            .get(std::slice::from_ref(&key))
            .unwrap()
            .pop()
            .flatten()
            .unwrap();
        let err = codec::decode(&v, 4096).unwrap_err();
        assert!(err.0.contains(says), "{what}: {err}");
    }
    m.write("bad", &WriteBatch::puts(vec![(key.clone(), good)]))
        .unwrap();
    let db = open_database(store, "bad", &OpenOptions::default()).unwrap();
    let x: String = db.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, "hello");
}

/// Compression changes no round trip: a small commit is one put and a reopen one read, with
/// and without it, and the counting store agrees with the VFS.
#[test]
fn compression_adds_no_round_trip_to_a_commit_or_an_open() {
    for compress in [true, false] {
        let counting = CountingStore::wrap(Arc::new(MemoryStore::new()));
        let opts = OpenOptions {
            compress_pages: compress,
            ..OpenOptions::default()
        };
        let actor = format!("rt{compress}");
        let kv0 = counting.snapshot();
        let db = open_database(counting.shared(), &actor, &opts).unwrap();
        assert_eq!((counting.snapshot() - kv0).round_trips(), 1, "open");
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        for i in 0..20 {
            let kv0 = counting.snapshot();
            db.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            let kv = counting.snapshot() - kv0;
            assert_eq!((kv.round_trips(), kv.total().errors), (1, 0), "commit {i}");
        }
        drop(db);
        let kv0 = counting.snapshot();
        let db = open_database(counting.shared(), &actor, &opts).unwrap();
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 20);
        assert_eq!(
            (counting.snapshot() - kv0).round_trips(),
            1,
            "reopen and read"
        );
    }
}

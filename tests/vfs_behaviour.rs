//! VFS behaviour: the pinned layout, page sizes, refused pragmas, time, bad names, corrupt
//! data, in-process locking, preload coherence and VACUUM (injected faults: `vfs_faults.rs`).

#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{KvStore, SharedStore};
use kvsqlite::preload::Preload;
use kvsqlite::vfs::layout::{self, FileKind, Meta};
use kvsqlite::vfs::{self, open_database, OpenError, OpenOptions, VFS_NAME};
use rusqlite::{ErrorCode, OpenFlags};

fn mem() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new())
}

fn keys_of(m: &MemoryStore, actor: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.dump()
        .into_iter()
        .filter(|(a, _, _)| a == actor)
        .map(|(_, k, v)| (k, v))
        .collect()
}

/// The main file's chunk values of an actor (its history keys left out).
fn chunks_of(m: &MemoryStore, actor: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    keys_of(m, actor)
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                layout::parse_key(k),
                Some(layout::ParsedKey::Chunk(FileKind::Main, _))
            )
        })
        .collect()
}

/// True when a stored chunk value holds a page of `ps` bytes (raw, or compressed and decoding
/// to exactly that).
fn is_page(v: &[u8], ps: u32) -> bool {
    kvsqlite::vfs::codec::decode(v, ps as usize).is_ok()
}

fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    e.sqlite_error_code()
}

#[test]
fn layout_is_pinned() {
    let m = mem();
    let clock = kvsqlite::vfs::history::TestClock::new(1_000);
    let opts = OpenOptions {
        history: kvsqlite::vfs::history::HistoryOptions {
            clock: kvsqlite::vfs::history::Clock::manual(&clock),
            ..Default::default()
        },
        ..OpenOptions::default()
    };
    let db = open_database(m.clone(), "pin", &opts).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(db);
    let kv = keys_of(&m, "pin");
    let keys: Vec<&[u8]> = kv.iter().map(|(k, _)| k.as_slice()).collect();
    // Two commits (two statements): the pages, then the history's headers and parts.
    assert_eq!(
        keys,
        vec![
            &[0x08, 0x00, 0x00][..],
            &[0x08, 0x00, 0x01, 0, 0, 0, 0][..],
            &[0x08, 0x00, 0x01, 0, 0, 0, 1][..],
            &[0x08, 0x20, 0, 0, 0, 0, 0, 0, 0, 1][..],
            &[0x08, 0x20, 0, 0, 0, 0, 0, 0, 0, 2][..],
            &[0x08, 0x21, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0][..],
            &[0x08, 0x21, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0][..],
        ]
    );
    let mut meta = vec![3u8, 0];
    meta.extend_from_slice(&4096u32.to_be_bytes());
    meta.extend_from_slice(&8192u64.to_be_bytes());
    meta.extend_from_slice(&0u64.to_be_bytes()); // next stage
    meta.extend_from_slice(&2u64.to_be_bytes()); // seq
    meta.extend_from_slice(&1_000u64.to_be_bytes()); // time
    meta.extend_from_slice(&1u64.to_be_bytes()); // history start
    meta.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(kv[0].1, meta);
    // The second commit's part: version, then per page its index, encoding (1: LZ4, these
    // mostly empty pages compress), length and bytes.
    // The two pages, decoded from their values (format 3: `01` ‖ an LZ4 block, used because
    // these mostly empty pages compress).
    let chunk = |i: usize| {
        kvsqlite::vfs::codec::decode(&kv[i].1, 4096)
            .unwrap()
            .into_owned()
    };
    let part = &kv[6].1;
    let entries = kvsqlite::vfs::history::record::part_entries(2, part).unwrap();
    assert_eq!(entries.len(), 2);
    for (i, (page, enc, data)) in entries.iter().enumerate() {
        assert_eq!((*page, *enc), (i as u32, 1));
        let img = kvsqlite::vfs::history::record::decode_image(*enc, data, 4096).unwrap();
        assert!(img == chunk(1 + i), "the image is the page");
    }
    // Its header: version, flags, time, size, chunk size, bytes, 1 part, 2 pages (0 and 1),
    // 2 pages in the part.
    let mut header = vec![1u8, 0];
    header.extend_from_slice(&1_000u64.to_be_bytes());
    header.extend_from_slice(&8192u64.to_be_bytes());
    header.extend_from_slice(&4096u32.to_be_bytes());
    let bytes = 10 + (36 + 8 + 4) + 12 + part.len();
    header.extend_from_slice(&(bytes as u64).to_be_bytes());
    header.extend_from_slice(&1u16.to_be_bytes());
    header.extend_from_slice(&2u32.to_be_bytes());
    header.extend_from_slice(&0u32.to_be_bytes());
    header.extend_from_slice(&1u32.to_be_bytes());
    header.extend_from_slice(&2u32.to_be_bytes());
    assert_eq!(kv[4].1, header);
    assert_eq!(
        &part[..10],
        &[1, 0, 0, 0, 0, 1, 0, 0, 0, entries[0].2.len() as u8][..]
    );
    for i in [1, 2] {
        assert_eq!(kv[i].1[0], kvsqlite::vfs::codec::TAG_LZ4);
        assert_eq!(
            kv[i].1,
            kvsqlite::vfs::codec::encode(&chunk(i)).unwrap(),
            "chunk {i} is its page compressed"
        );
        assert!(kv[i].1.len() < 200, "{}", kv[i].1.len());
    }
    assert_eq!(&chunk(1)[..16], b"SQLite format 3\0");
    assert_eq!(chunk(2).len(), 4096);
    assert_eq!(layout::stage_key(1, 2), {
        let mut k = vec![0x08, 0x10];
        k.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
        k.extend_from_slice(&2u32.to_be_bytes());
        k
    });
    let s = layout::summarize(&kv);
    assert_eq!(s.files[0].chunks, 2);
    assert_eq!(s.files[0].missing_chunks, 0);
    assert_eq!(s.files[1].meta, None);
}

#[test]
fn page_sizes_work_or_are_refused_clearly() {
    let m = mem();
    for ps in [512u32, 1024, 8192, 65536] {
        let actor = format!("ps{ps}");
        let opts = OpenOptions {
            page_size: ps,
            ..OpenOptions::default()
        };
        {
            let db = open_database(m.clone(), &actor, &opts).unwrap();
            db.execute_batch(
                "CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 200) SELECT zeroblob(300) FROM s;",
            )
            .unwrap();
            let got: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
            assert_eq!(got, ps as i64);
        }
        let db = open_database(m.clone(), &actor, &OpenOptions::default()).unwrap();
        assert_eq!(db.page_size(), ps);
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 200);
        assert_integrity(&db);
        assert!(chunks_of(&m, &actor).iter().all(|(_, v)| is_page(v, ps)));
    }
    for ps in [0u32, 256, 1000, 131072] {
        let opts = OpenOptions {
            page_size: ps,
            ..OpenOptions::default()
        };
        match open_database(m.clone(), "bad-ps", &opts) {
            Err(OpenError::InvalidOptions(msg)) => assert!(msg.contains("page size"), "{msg}"),
            other => panic!("page size {ps}: {:?}", other.map(|_| ())),
        }
    }
    // A page that does not fit one value of the store is refused up front.
    let small: SharedStore = Arc::new(MemoryStore::with_limits(kvsqlite::kv::KvLimits {
        max_value_bytes: 8192,
        ..Default::default()
    }));
    let opts = OpenOptions {
        page_size: 16384,
        ..OpenOptions::default()
    };
    match open_database(small, "too-big", &opts) {
        Err(OpenError::InvalidOptions(msg)) => assert!(msg.contains("limits"), "{msg}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Changing the page size later (VACUUM) keeps working over 4096-byte chunks.
    let db = open_database(m.clone(), "resize", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 500) SELECT randomblob(100) FROM s;")
        .unwrap();
    let before: String = db
        .query_row("SELECT group_concat(hex(x), '') FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before.len(), 500 * 200);
    db.execute_batch("PRAGMA page_size=16384; VACUUM;").unwrap();
    let ps: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(ps, 16384);
    let after: String = db
        .query_row("SELECT group_concat(hex(x), '') FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(before, after);
    drop(db);
    let db = open_database(m, "resize", &OpenOptions::default()).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 500);
    assert_integrity(&db);
}

/// One statement's outcome: its first value (`Debug`), `None` for no row, or the error text.
type Outcome = Result<Option<String>, String>;

/// Runs `steps` on a fresh kvsqlite database and on a fresh stock SQLite file, one statement
/// per step, and returns both outcome lists (kvsqlite's first): the first column of the first
/// row (`Debug` of the value, so types count), `None` for no row, or the error text.
fn page_size_differential(
    store: SharedStore,
    actor: &str,
    steps: &[&str],
) -> (Vec<Outcome>, Vec<Outcome>) {
    fn run(conn: &rusqlite::Connection, sql: &str) -> Outcome {
        let mut st = conn.prepare(sql).map_err(|e| e.to_string())?;
        let mut rows = st.query([]).map_err(|e| e.to_string())?;
        match rows.next().map_err(|e| e.to_string())? {
            Some(r) => Ok(Some(
                r.get::<_, rusqlite::types::Value>(0)
                    .map(|v| format!("{v:?}"))
                    .map_err(|e| e.to_string())?,
            )),
            None => Ok(None),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let stock = rusqlite::Connection::open(dir.path().join("stock.db")).unwrap();
    stock
        .execute_batch("PRAGMA journal_mode=DELETE; PRAGMA synchronous=NORMAL")
        .unwrap();
    let db = open_database(store, actor, &OpenOptions::default()).unwrap();
    let ours: Vec<_> = steps.iter().map(|s| run(&db, s)).collect();
    let theirs: Vec<_> = steps.iter().map(|s| run(&stock, s)).collect();
    (ours, theirs)
}

const PAGE_SIZE_WORKLOAD: [&str; 6] = [
    "CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT)",
    "INSERT INTO t(pad) WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) SELECT printf('%0300d', i) FROM n",
    "PRAGMA page_size",
    "PRAGMA page_count",
    "SELECT sum(length(pad)) FROM t",
    "PRAGMA integrity_check",
];

#[test]
fn page_size_pragma_before_the_first_write_works_as_in_stock_sqlite() {
    let m = mem();
    for ps in [512u32, 1024, 2048, 8192, 16384, 32768, 65536] {
        let actor = format!("pragma{ps}");
        let set = format!("PRAGMA page_size = {ps}");
        // A read before and after the pragma (the pragma only takes effect for SQLite at the
        // connection's next transaction, here the SELECT), then real writes.
        let mut steps = vec!["SELECT count(*) FROM sqlite_master", set.as_str()];
        steps.push("SELECT count(*) FROM sqlite_master");
        steps.push("PRAGMA page_size");
        steps.extend(PAGE_SIZE_WORKLOAD);
        let (ours, theirs) = page_size_differential(m.clone(), &actor, &steps);
        assert_eq!(ours, theirs, "page size {ps}");
        assert_eq!(ours[3], Ok(Some(format!("Integer({ps})"))));
        // The store holds pages of the new size, and a reopen (a restart) reads them back.
        assert!(chunks_of(&m, &actor).iter().all(|(_, v)| is_page(v, ps)));
        let db = open_database(m.clone(), &actor, &OpenOptions::default()).unwrap();
        assert_eq!(db.page_size(), ps);
        let (got, ok, sum): (i64, String, i64) = db
            .query_row(
                "SELECT page_size, (SELECT integrity_check FROM pragma_integrity_check()), (SELECT sum(length(pad)) FROM t) FROM pragma_page_size()",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((got, ok.as_str(), sum), (ps as i64, "ok", 300 * 300));
        // Once written, the page size is fixed (stock SQLite ignores the pragma) until VACUUM.
        db.execute_batch("PRAGMA page_size = 4096; INSERT INTO t(pad) VALUES ('x')")
            .unwrap();
        assert_eq!(db.page_size(), ps);
        let got: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(got, ps as i64);
    }
    // The one difference: SQLite reads the new page size from page 1 at the connection's next
    // transaction, so a `PRAGMA page_size` read straight after the set (no transaction in
    // between) still reports the old size; stock SQLite reports the new one.
    let steps = [
        "PRAGMA page_size = 8192",
        "PRAGMA page_size",
        "SELECT 1 FROM sqlite_master",
        "PRAGMA page_size",
    ];
    let (ours, theirs) = page_size_differential(m.clone(), "immediate", &steps);
    assert_eq!(ours[1], Ok(Some("Integer(4096)".into())));
    assert_eq!(theirs[1], Ok(Some("Integer(8192)".into())));
    assert_eq!(ours[2..], theirs[2..]);
    assert_eq!(ours[3], Ok(Some("Integer(8192)".into())));
    // Edge cases, compared with stock SQLite: a rolled-back first transaction (a write
    // transaction that began fixes the page size, as in stock SQLite), a VACUUM of the
    // still-empty database.
    for (i, steps) in [
        vec![
            "PRAGMA page_size = 8192",
            "BEGIN",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT)",
            "ROLLBACK",
            "PRAGMA page_size = 2048",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT)",
            "PRAGMA page_size",
        ],
        vec![
            "PRAGMA page_size = 8192",
            "VACUUM",
            "PRAGMA page_size",
            "PRAGMA page_size = 1024",
            "CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT)",
            "PRAGMA page_size",
        ],
    ]
    .into_iter()
    .enumerate()
    {
        let (ours, theirs) = page_size_differential(m.clone(), &format!("edge{i}"), &steps);
        assert_eq!(ours, theirs, "edge case {i}");
    }
    // Set twice, and set back to the size the database already had.
    let steps = [
        "PRAGMA page_size = 8192",
        "PRAGMA page_size = 1024",
        "CREATE TABLE t(id INTEGER PRIMARY KEY, pad TEXT)",
        "PRAGMA page_size",
        "PRAGMA page_size = 4096",
        "PRAGMA page_size",
    ];
    let (ours, theirs) = page_size_differential(m.clone(), "twice", &steps);
    assert_eq!(ours, theirs);
    assert_eq!(ours[3], Ok(Some("Integer(1024)".into())));
    let steps = ["PRAGMA page_size = 8192", "PRAGMA page_size = 4096"];
    let mut steps = steps.to_vec();
    steps.extend(PAGE_SIZE_WORKLOAD);
    let (ours, theirs) = page_size_differential(m.clone(), "back", &steps);
    assert_eq!(ours, theirs);
    assert_eq!(ours[4], Ok(Some("Integer(4096)".into())));
}

#[test]
fn invalid_page_sizes_are_ignored_as_in_stock_sqlite() {
    let m = mem();
    for (i, bad) in [
        "0",
        "256",
        "1000",
        "131072",
        "-1024",
        "'abc'",
        "4097",
        "1048576",
        "' 8192'",
        "'+0x2000'",
    ]
    .iter()
    .enumerate()
    {
        let set = format!("PRAGMA page_size = {bad}");
        let mut steps = vec![set.as_str()];
        steps.extend(PAGE_SIZE_WORKLOAD);
        let (ours, theirs) = page_size_differential(m.clone(), &format!("bad{i}"), &steps);
        assert_eq!(ours, theirs, "{bad}");
        assert_eq!(ours[3], Ok(Some("Integer(4096)".into())), "{bad}");
    }
    // Quoted, hex and trailing-text forms that SQLite accepts work too.
    for (i, good) in [
        "'8192'",
        "0x2000",
        "+8192",
        "'8192abc'",
        "8192.0",
        "'0x2000'",
    ]
    .iter()
    .enumerate()
    {
        let set = format!("PRAGMA page_size = {good}");
        let mut steps = vec![set.as_str()];
        steps.extend(PAGE_SIZE_WORKLOAD);
        let (ours, theirs) = page_size_differential(m.clone(), &format!("good{i}"), &steps);
        assert_eq!(ours, theirs, "{good}");
        assert_eq!(ours[3], Ok(Some("Integer(8192)".into())), "{good}");
    }
}

#[test]
fn page_size_pragma_is_refused_clearly_when_it_cannot_work() {
    // A page bigger than one value of the store.
    let small = Arc::new(MemoryStore::with_limits(kvsqlite::kv::KvLimits {
        max_value_bytes: 8192,
        ..Default::default()
    }));
    let db = open_database(small.clone(), "small", &OpenOptions::default()).unwrap();
    let e = db.execute_batch("PRAGMA page_size = 16384").unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Unknown), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("page_size=16384") && msg.contains("values up to 8192 bytes"),
        "{msg}"
    );
    // Nothing changed: the database is still new, and a size that fits works.
    assert!(small.dump().is_empty());
    db.execute_batch("PRAGMA page_size = 8192; CREATE TABLE t(x)")
        .unwrap();
    assert_eq!(db.page_size(), 8192);
    drop(db);
    // A transaction is open on the new database (this connection or another one).
    let m = mem();
    let db = open_database(m.clone(), "txn", &OpenOptions::default()).unwrap();
    db.execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
        .unwrap();
    let e = db.execute_batch("PRAGMA page_size = 8192").unwrap_err();
    assert!(e.to_string().contains("transaction is open"), "{e}");
    db.execute_batch("COMMIT").unwrap();
    let other = rusqlite::Connection::open_with_flags_and_vfs(
        db.path(),
        OpenFlags::SQLITE_OPEN_READ_WRITE,
        VFS_NAME,
    )
    .unwrap();
    other
        .execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
        .unwrap();
    let e = db.execute_batch("PRAGMA page_size = 8192").unwrap_err();
    assert!(e.to_string().contains("transaction is open"), "{e}");
    other.execute_batch("COMMIT").unwrap();
    // Once both are idle it works, and the other connection adopts the new size too.
    db.execute_batch("PRAGMA page_size = 8192").unwrap();
    other.execute_batch("CREATE TABLE t(x)").unwrap();
    let got: i64 = other
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(got, 8192);
    db.execute_batch("INSERT INTO t VALUES (1)").unwrap();
    let got: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert_eq!(got, 8192);
    assert!(chunks_of(&m, "txn").iter().all(|(_, v)| is_page(v, 8192)));
}

#[test]
fn synchronous_off_and_wal_are_refused_and_nothing_changes() {
    let db = open_database(mem(), "prag", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x)").unwrap();
    for sql in [
        "PRAGMA synchronous=OFF",
        "PRAGMA synchronous=0",
        "PRAGMA main.synchronous = 'no'",
        // Numbers SQLite turns into OFF too ((n + 1) & 7 is 0 or 1; an overflow reads as 0).
        "PRAGMA synchronous=7",
        "PRAGMA synchronous=8",
        "PRAGMA synchronous=0x10",
        "PRAGMA synchronous=99999999999",
    ] {
        let e = db.execute_batch(sql).unwrap_err();
        assert!(e.to_string().contains("synchronous=OFF"), "{sql}: {e}");
    }
    let s: i64 = db
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(s, 1); // NORMAL
    for mode in ["WAL", "wal", "OFF", "MEMORY"] {
        let e = db
            .query_row(&format!("PRAGMA journal_mode={mode}"), [], |r| {
                r.get::<_, String>(0)
            })
            .unwrap_err();
        assert!(e.to_string().contains("journal_mode"), "{mode}: {e}");
    }
    let m: String = db
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(m, "delete");
    db.execute_batch("PRAGMA synchronous=FULL; PRAGMA synchronous=NORMAL")
        .unwrap();
    let before = db.snapshot();
    db.execute("INSERT INTO t VALUES (1)", []).unwrap();
    assert_eq!((db.snapshot() - before).atomic_commits, 1);
}

#[test]
fn current_time_is_today() {
    let db = open_database(mem(), "time", &OpenOptions::default()).unwrap();
    let stock = rusqlite::Connection::open_in_memory().unwrap();
    let q = "SELECT date('now')";
    let a: String = stock.query_row(q, [], |r| r.get(0)).unwrap();
    let ours: String = db.query_row(q, [], |r| r.get(0)).unwrap();
    let b: String = stock.query_row(q, [], |r| r.get(0)).unwrap();
    assert!(ours == a || ours == b, "{ours} vs {a}/{b}");
    assert!(ours.as_str() > "2024-01-01");
}

#[test]
fn unmappable_names_and_missing_databases_are_clear_errors() {
    vfs::register();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
    for name in [
        "plain.db",
        "/x/actor",
        "/999999/actor",
        "/0/bad%zz",
        "/0/a-wal",
        "/0/",
    ] {
        let e = rusqlite::Connection::open_with_flags_and_vfs(name, flags, VFS_NAME)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::CannotOpen), "{name}: {e}");
    }
    let m = mem();
    let ro = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    match open_database(m.clone(), "nobody", &ro) {
        Err(e @ OpenError::NotFound { .. }) => assert_eq!(
            e.to_string(),
            "database of actor \"nobody\" does not exist (open without create)"
        ),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The same through SQLite directly: a missing database opened read-only cannot be opened.
    {
        let store: SharedStore = m.clone();
        let path = vfs::database_path(vfs::register_store(&store), "nobody");
        let e = rusqlite::Connection::open_with_flags_and_vfs(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY,
            VFS_NAME,
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(code(&e), Some(ErrorCode::CannotOpen), "{e}");
    }
    let no_create = OpenOptions {
        create: false,
        ..OpenOptions::default()
    };
    assert!(matches!(
        open_database(m.clone(), "nobody", &no_create),
        Err(OpenError::NotFound { .. })
    ));
    assert!(matches!(
        open_database(m.clone(), "", &OpenOptions::default()),
        Err(OpenError::InvalidActor(_))
    ));
    // Nothing was written for any of them.
    assert!(m.dump().is_empty());
    // Raw rusqlite through the VFS, and an odd actor id round-trips through the path.
    let actor = "we/ird -journal%";
    let store: SharedStore = m.clone();
    let id = vfs::register_store(&store);
    let path = vfs::database_path(id, actor);
    assert_eq!(vfs::parse_name(&path).unwrap().actor, actor);
    let conn = rusqlite::Connection::open_with_flags_and_vfs(&path, flags, VFS_NAME).unwrap();
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (42)")
        .unwrap();
    drop(conn);
    let db = open_database(m.clone(), actor, &ro).unwrap();
    let x: i64 = db.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(x, 42);
    let e = db.execute("INSERT INTO t VALUES (1)", []).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::ReadOnly));
}

fn corrupt_case(m: &Arc<MemoryStore>, actor: &str, edit: impl FnOnce(&MemoryStore)) -> String {
    {
        let db = open_database(m.clone(), actor, &OpenOptions::default()).unwrap();
        db.execute_batch(
            "CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 40) SELECT zeroblob(1000) FROM s;",
        )
        .unwrap();
    }
    edit(m);
    match open_database(m.clone(), actor, &OpenOptions::default()) {
        Err(e) => {
            // The VFS finds bad metadata; SQLite finds a bad page 1 itself.
            let sqlite_code = match &e {
                OpenError::Sqlite(s) => code(s),
                _ => None,
            };
            assert!(
                matches!(e, OpenError::Vfs(vfs::file::VfsError::Corrupt(_)))
                    || matches!(
                        sqlite_code,
                        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
                    ),
                "{e:?}"
            );
            e.to_string()
        }
        Ok(db) => {
            let e = db
                .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .map(|n| format!("no error: {n}"))
                .unwrap_or_else(|e| {
                    assert_eq!(code(&e), Some(ErrorCode::DatabaseCorrupt), "{e}");
                    e.to_string()
                });
            e
        }
    }
}

#[test]
fn corrupt_data_is_an_error_not_a_panic_and_others_keep_working() {
    let m = mem();
    let healthy = open_database(m.clone(), "healthy", &OpenOptions::default()).unwrap();
    healthy
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        .unwrap();
    let chunk5 = layout::chunk_key(FileKind::Main, 5);
    let c = chunk5.clone();
    let e = corrupt_case(&m, "truncated", |s| {
        s.put("truncated", vec![(c, vec![0; 100])]).unwrap()
    });
    assert!(e.contains("malformed"), "{e}");
    let c = chunk5.clone();
    let e = corrupt_case(&m, "oversized", |s| {
        s.put("oversized", vec![(c, vec![0; 5000])]).unwrap()
    });
    assert!(e.contains("malformed"), "{e}");
    let c = chunk5.clone();
    let e = corrupt_case(&m, "missing", |s| s.delete("missing", vec![c]).unwrap());
    assert!(e.contains("malformed"), "{e}");
    let e = corrupt_case(&m, "badversion", |s| {
        let k = layout::meta_key(FileKind::Main);
        let mut v = s.get("badversion", std::slice::from_ref(&k)).unwrap()[0]
            .clone()
            .unwrap();
        v[0] = 9;
        s.put("badversion", vec![(k, v)]).unwrap()
    });
    assert!(e.contains("format version 9"), "{e}");
    let e = corrupt_case(&m, "shortmeta", |s| {
        s.put(
            "shortmeta",
            vec![(layout::meta_key(FileKind::Main), vec![1, 0, 0])],
        )
        .unwrap()
    });
    assert!(e.contains("metadata"), "{e}");
    // Page 1 garbage: SQLite itself refuses the file.
    let e = corrupt_case(&m, "garbage", |s| {
        s.put(
            "garbage",
            vec![(layout::chunk_key(FileKind::Main, 0), vec![0xAB; 4096])],
        )
        .unwrap()
    });
    assert!(
        e.contains("not a database") || e.contains("malformed"),
        "{e}"
    );
    healthy.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let n: i64 = healthy
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

/// Sets the main metadata of `actor` to `edit(decoded)` re-encoded.
fn edit_meta(m: &MemoryStore, actor: &str, edit: impl FnOnce(&mut Meta)) {
    let k = layout::meta_key(FileKind::Main);
    let v = m.get(actor, std::slice::from_ref(&k)).unwrap()[0]
        .clone()
        .unwrap();
    let mut meta = Meta::decode(FileKind::Main, &v).unwrap();
    edit(&mut meta);
    m.put(actor, vec![(k, meta.encode())]).unwrap();
}

#[test]
fn more_corrupt_metadata_and_chunks_are_corrupt_errors_on_every_path() {
    let m = mem();
    let healthy = open_database(m.clone(), "healthy2", &OpenOptions::default()).unwrap();
    healthy
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
        .unwrap();
    let set_byte = |actor: &'static str, at: usize, bytes: Vec<u8>| {
        move |s: &MemoryStore| {
            let k = layout::meta_key(FileKind::Main);
            let mut v = s.get(actor, std::slice::from_ref(&k)).unwrap()[0]
                .clone()
                .unwrap();
            v[at..at + bytes.len()].copy_from_slice(&bytes);
            s.put(actor, vec![(k, v)]).unwrap()
        }
    };
    // Bad metadata fields: refused at open with a Corrupt error naming the field.
    let e = corrupt_case(
        &m,
        "badchunk",
        set_byte("badchunk", 2, 3000u32.to_be_bytes().into()),
    );
    assert!(e.contains("chunk size 3000"), "{e}");
    let e = corrupt_case(&m, "badtag", set_byte("badtag", 1, vec![1]));
    assert!(e.contains("file tag"), "{e}");
    let e = corrupt_case(
        &m,
        "badgroups",
        set_byte("badgroups", 46, 5u32.to_be_bytes().into()),
    );
    assert!(e.contains("overlay group cut short"), "{e}");
    let e = corrupt_case(&m, "badjournal", |s| {
        s.put(
            "badjournal",
            vec![(layout::meta_key(FileKind::Journal), vec![1, 1, 0])],
        )
        .unwrap()
    });
    assert!(e.contains("journal metadata"), "{e}");
    // An overlay pointing at a stage the store does not hold: the chunk is missing.
    let e = corrupt_case(&m, "ghoststage", |s| {
        edit_meta(s, "ghoststage", |meta| {
            meta.overlay.insert(5, 0);
            meta.next_stage = 1;
        })
    });
    assert!(e.contains("malformed"), "{e}");
    // A size past the stored chunks (chunks missing at the end): SQLite trusts the page count
    // in its header and never reads them, so the database reads and checks as before.
    let e = corrupt_case(&m, "grown", |s| {
        edit_meta(s, "grown", |meta| meta.size += 40 * 4096)
    });
    assert_eq!(e, "no error: 40");
    let db = open_database(m.clone(), "grown", &OpenOptions::default()).unwrap();
    assert_integrity(&db);
    drop(db);

    // A truncated chunk served by the preload (no KV read) is corrupt too.
    {
        let db = open_database(m.clone(), "prebad", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 40) SELECT zeroblob(1000) FROM s;")
            .unwrap();
    }
    m.put(
        "prebad",
        vec![(layout::chunk_key(FileKind::Main, 5), vec![0; 10])],
    )
    .unwrap();
    let ops = layout::preload_reads(1 << 20);
    let results = m.batch_read("prebad", &ops).unwrap();
    let opts = OpenOptions {
        preload: Some(Preload::from_reads(&ops, &results)),
        ..OpenOptions::default()
    };
    let db = open_database(m.clone(), "prebad", &opts).unwrap();
    let e = db
        .query_row("SELECT sum(length(x)) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DatabaseCorrupt), "{e}");
    assert_eq!(db.snapshot().kv_round_trips, 0);
    // A write that must read the bad page fails and writes nothing.
    let before: Vec<_> = keys_of(&m, "prebad");
    let e = db
        .execute_batch("UPDATE t SET x = zeroblob(999)")
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DatabaseCorrupt), "{e}");
    assert_eq!(keys_of(&m, "prebad"), before);
    drop(db);

    // Other databases of the process keep working throughout.
    healthy.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let n: i64 = healthy
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

#[test]
fn two_connections_lock_in_process() {
    let m = mem();
    let a = open_database(m.clone(), "shared", &OpenOptions::default()).unwrap();
    a.execute_batch("CREATE TABLE t(x)").unwrap();
    let b = open_database(m.clone(), "shared", &OpenOptions::default()).unwrap();
    a.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
        .unwrap();
    let e = b.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DatabaseBusy), "{e}");
    // Readers still read the committed state while A holds RESERVED.
    let n: i64 = b
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    a.execute_batch("COMMIT").unwrap();
    b.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let n: i64 = a
        .query_row("SELECT sum(x) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 3);
    // A reader holding SHARED blocks the writer's commit (BUSY), not the data.
    b.execute_batch("BEGIN; SELECT count(*) FROM t;").unwrap();
    let e = a.execute("INSERT INTO t VALUES (4)", []).unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::DatabaseBusy), "{e}");
    b.execute_batch("COMMIT").unwrap();
    a.execute("INSERT INTO t VALUES (4)", []).unwrap();
    assert_eq!(a.stats().snapshot(), b.stats().snapshot()); // one shared state
}

#[test]
fn preloaded_open_costs_nothing_and_stays_coherent_after_writes() {
    let m = mem();
    {
        let db = open_database(m.clone(), "pre", &OpenOptions::default()).unwrap();
        db.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 300) SELECT value, 'old' FROM s;",
        )
        .unwrap();
    }
    let ops = layout::preload_reads(1 << 20);
    let results = m.batch_read("pre", &ops).unwrap();
    let preload = Preload::from_reads(&ops, &results);
    let opts = OpenOptions {
        preload: Some(preload),
        cache_pages: 0,
        ..OpenOptions::default()
    };
    let a = open_database(m.clone(), "pre", &opts).unwrap();
    let n: i64 = a
        .query_row("SELECT count(*) FROM t WHERE v = 'old'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 300);
    let s = a.snapshot();
    assert_eq!(s.kv_round_trips, 0, "{s:?}");
    assert!(s.preload_hits > 0);
    a.execute_batch("UPDATE t SET v = 'new' WHERE id % 2 = 0")
        .unwrap();
    assert_eq!(a.snapshot().kv_round_trips, 1);
    // A second connection has an empty SQLite cache and the VFS cache holds nothing: every
    // page comes from the preload, which must hold the new pages.
    let b = open_database(m.clone(), "pre", &OpenOptions::default()).unwrap();
    let n: i64 = b
        .query_row("SELECT count(*) FROM t WHERE v = 'new'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 150);
    assert_eq!(a.snapshot().kv_reads, 0);
}

#[test]
fn vacuum_that_shrinks_deletes_chunks_past_the_end() {
    let m = mem();
    let db = open_database(m.clone(), "vac", &OpenOptions::default()).unwrap();
    db.execute_batch(
        "CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 300) SELECT zeroblob(2000) FROM s;",
    )
    .unwrap();
    let big: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    db.execute_batch("DELETE FROM t WHERE rowid > 10; VACUUM;")
        .unwrap();
    let small: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    assert!(small * 5 < big, "{small} vs {big}");
    let kv = keys_of(&m, "vac");
    let chunks = kv
        .iter()
        .filter(|(k, _)| {
            matches!(
                layout::parse_key(k),
                Some(layout::ParsedKey::Chunk(FileKind::Main, _))
            )
        })
        .count() as i64;
    assert_eq!(chunks, small);
    let meta = Meta::decode(FileKind::Main, &kv[0].1).unwrap();
    assert_eq!(meta.size, small as u64 * 4096);
    assert!(kv.iter().all(|(k, _)| !k.starts_with(&[0x08, 0x01]))); // no journal left
}

#[test]
fn many_actors_on_one_store_are_independent() {
    let m = mem();
    let dbs: Vec<_> = (0..20)
        .map(|i| open_database(m.clone(), &format!("actor-{i}"), &OpenOptions::default()).unwrap())
        .collect();
    for (i, db) in dbs.iter().enumerate() {
        db.execute_batch(&format!("CREATE TABLE t(x); INSERT INTO t VALUES ({i});"))
            .unwrap();
    }
    for round in 0..3 {
        for (i, db) in dbs.iter().enumerate() {
            db.execute("INSERT INTO t VALUES (?1)", [(i * 100 + round) as i64])
                .unwrap();
        }
    }
    drop(dbs);
    for i in 0..20 {
        let db = open_database(m.clone(), &format!("actor-{i}"), &OpenOptions::default()).unwrap();
        let mut st = db.prepare("SELECT x FROM t ORDER BY rowid").unwrap();
        let xs: Vec<i64> = st
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let i = i as i64;
        assert_eq!(xs, vec![i, i * 100, i * 100 + 1, i * 100 + 2]);
    }
}

#[test]
fn threads_share_a_store_and_two_writers_share_one_database() {
    let m = mem();
    let mut threads = Vec::new();
    for t in 0..4 {
        let m = m.clone();
        threads.push(std::thread::spawn(move || {
            let db = open_database(m, &format!("thread-{t}"), &OpenOptions::default()).unwrap();
            db.execute_batch("CREATE TABLE t(x)").unwrap();
            for i in 0..50 {
                db.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
            }
        }));
    }
    {
        let db = open_database(m.clone(), "both", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(w, i)").unwrap();
    }
    for w in 0..2 {
        let m = m.clone();
        threads.push(std::thread::spawn(move || {
            let db = open_database(m, "both", &OpenOptions::default()).unwrap();
            db.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
            for i in 0..50 {
                db.execute("INSERT INTO t VALUES (?1, ?2)", [w, i]).unwrap();
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..4 {
        let db = open_database(m.clone(), &format!("thread-{t}"), &OpenOptions::default()).unwrap();
        let s: i64 = db
            .query_row("SELECT sum(x) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(s, (0..50).sum::<i64>());
    }
    let db = open_database(m, "both", &OpenOptions::default()).unwrap();
    let (n, s): (i64, i64) = db
        .query_row("SELECT count(*), sum(w * 1000 + i) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(n, 100);
    assert_eq!(s, 1000 * 50 + 2 * (0..50).sum::<i64>());
    assert_integrity(&db);
}

#[test]
fn longest_actor_id_of_escaped_bytes_opens() {
    let m = mem();
    let actor = "é".repeat(256); // 512 bytes, every one percent-encoded
    assert_eq!(actor.len(), 512);
    let db = open_database(m.clone(), &actor, &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    // A journalled transaction opens the `-journal` name too.
    db.execute_batch("PRAGMA cache_spill=1; PRAGMA cache_size=2")
        .unwrap();
    db.execute_batch("BEGIN; INSERT INTO t SELECT zeroblob(4000) FROM t, t AS b, t AS c; COMMIT;")
        .unwrap();
    for _ in 0..4 {
        db.execute_batch("INSERT INTO t SELECT zeroblob(4000) FROM t")
            .unwrap();
    }
    assert!(db.snapshot().journal_fallbacks >= 1, "{:?}", db.snapshot());
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 32);
}

#[test]
fn attach_writes_one_database_atomically_and_refuses_multi_database_commits() {
    let m = mem();
    let store: SharedStore = m.clone();
    let db = open_database(store.clone(), "att-main", &OpenOptions::default()).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    let side = vfs::database_path(vfs::register_store(&store), "att-side");
    db.execute(&format!("ATTACH '{side}' AS side"), []).unwrap();
    db.execute_batch("CREATE TABLE side.s(y); INSERT INTO side.s VALUES (1);")
        .unwrap();
    // One database per transaction: batch-atomic on each.
    let before = db.snapshot();
    db.execute("INSERT INTO t VALUES (2)", []).unwrap();
    db.execute("INSERT INTO side.s VALUES (2)", []).unwrap();
    let d = db.snapshot() - before;
    assert_eq!((d.kv_round_trips, d.journal_fallbacks), (1, 0), "{d:?}");
    // Both in one transaction needs a super-journal, whose recorded path would not survive a
    // restart: refused at commit, nothing written to either database.
    let snapshot = m.dump();
    let e = db
        .execute_batch("BEGIN; INSERT INTO t VALUES (3); INSERT INTO side.s VALUES (3); COMMIT;")
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::CannotOpen), "{e}");
    let _ = db.execute_batch("ROLLBACK");
    assert_eq!(m.dump(), snapshot);
    let (a, b): (i64, i64) = db
        .query_row(
            "SELECT (SELECT sum(x) FROM t), (SELECT sum(y) FROM side.s)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((a, b), (3, 3));
    // The connection keeps working.
    db.execute("INSERT INTO side.s VALUES (4)", []).unwrap();
}

/// A store whose `get` panics once armed: a buggy backend.
struct PanickyStore {
    inner: MemoryStore,
    armed: std::sync::atomic::AtomicBool,
}

impl KvStore for PanickyStore {
    fn backend(&self) -> &'static str {
        "panicky"
    }
    fn limits(&self) -> &kvsqlite::kv::KvLimits {
        self.inner.limits()
    }
    fn get(
        &self,
        actor: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, kvsqlite::kv::KvError> {
        if self.armed.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("backend bug");
        }
        self.inner.get(actor, keys)
    }
    fn list(
        &self,
        actor: &str,
        req: &kvsqlite::kv::ListRequest,
    ) -> Result<kvsqlite::kv::ListPage, kvsqlite::kv::KvError> {
        self.inner.list(actor, req)
    }
    fn write(
        &self,
        actor: &str,
        batch: &kvsqlite::kv::WriteBatch,
    ) -> Result<(), kvsqlite::kv::KvError> {
        self.inner.write(actor, batch)
    }
    fn delete_range(
        &self,
        actor: &str,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> Result<(), kvsqlite::kv::KvError> {
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(
        &self,
        actor: &str,
        ops: &[kvsqlite::kv::ReadOp],
    ) -> Result<Vec<kvsqlite::kv::ReadResult>, kvsqlite::kv::KvError> {
        self.inner.batch_read(actor, ops)
    }
}

#[test]
fn a_panicking_backend_becomes_an_io_error_not_an_abort() {
    let p = Arc::new(PanickyStore {
        inner: MemoryStore::new(),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let store: SharedStore = p.clone();
    {
        let db = open_database(store.clone(), "boom", &OpenOptions::default()).unwrap();
        db.execute_batch(
            "CREATE TABLE t(x); INSERT INTO t WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 50) SELECT zeroblob(3000) FROM s;",
        )
        .unwrap();
    }
    let db = open_database(store, "boom", &OpenOptions::default()).unwrap();
    p.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let e = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::SystemIoFailure), "{e}");
    p.armed.store(false, std::sync::atomic::Ordering::SeqCst);
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 50);
}

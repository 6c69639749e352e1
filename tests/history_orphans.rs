//! Redo-record parts that belong to no commit: a staged commit writes its record's parts with
//! its stage writes, so one whose commit record never lands leaves parts under the seq it would
//! have taken. Compaction deletes them — those past the current seq at once, those under a seq
//! a later commit took with fewer parts together with that commit's record — found by lists in
//! the reads it makes anyway (no round trip added; counted here by a counting store).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvsqlite::kv::counting::CountingStore;
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{
    KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};
use kvsqlite::vfs::history::{Clock, HistoryOptions, TestClock};
use kvsqlite::vfs::layout::{self, FileKind, ParsedKey};
use kvsqlite::vfs::{open_database, OpenOptions};

/// Forwards every call, but while armed refuses (writing nothing) the first write that
/// carries the main file's metadata and every write after it, as a crash there would: a staged
/// commit's stage writes land, its commit record and nothing later does.
struct NoCommitRecord {
    inner: SharedStore,
    armed: AtomicBool,
    dead: AtomicBool,
}

impl KvStore for NoCommitRecord {
    fn backend(&self) -> &'static str {
        "no-commit-record"
    }
    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }
    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        self.inner.get(actor, keys)
    }
    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.inner.list(actor, req)
    }
    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        let meta = layout::meta_key(FileKind::Main);
        if self.armed.load(Ordering::SeqCst) && batch.puts.iter().any(|(k, _)| *k == meta) {
            self.dead.store(true, Ordering::SeqCst);
        }
        if self.dead.load(Ordering::SeqCst) {
            return Err(KvError::Backend {
                backend: "no-commit-record",
                message: "the commit record is refused".into(),
            });
        }
        self.inner.write(actor, batch)
    }
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(KvError::Backend {
                backend: "no-commit-record",
                message: "down".into(),
            });
        }
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.inner.batch_read(actor, ops)
    }
}

/// (seq, part) of every history part key in the store, and the seqs with a header.
fn parts_and_headers(m: &MemoryStore) -> (Vec<(u64, u16)>, Vec<u64>) {
    let (mut parts, mut headers) = (Vec::new(), Vec::new());
    for (_, k, _) in m.dump() {
        match layout::parse_key(&k) {
            Some(ParsedKey::HistoryPart(s, n)) => parts.push((s, n)),
            Some(ParsedKey::History(s)) => headers.push(s),
            _ => {}
        }
    }
    (parts, headers)
}

struct Setup {
    mem: Arc<MemoryStore>,
    counting: Arc<CountingStore>,
    gate: Arc<NoCommitRecord>,
    clock: TestClock,
}

fn setup() -> Setup {
    let mem = Arc::new(MemoryStore::new());
    let gate = Arc::new(NoCommitRecord {
        inner: mem.clone(),
        armed: AtomicBool::new(false),
        dead: AtomicBool::new(false),
    });
    let counting = CountingStore::wrap(gate.clone());
    Setup {
        mem,
        counting,
        gate,
        clock: TestClock::new(1_000_000),
    }
}

fn opts(clock: &TestClock) -> OpenOptions {
    OpenOptions {
        history: HistoryOptions {
            retention: Duration::from_secs(3600),
            clock: Clock::manual(clock),
            ..HistoryOptions::default()
        },
        ..OpenOptions::default()
    }
}

/// A 300-row transaction of random rows (staged: more pages than one put holds) whose commit
/// record is refused; the database is then dropped, as a crash would. Returns the seq it
/// would have taken and its orphan parts.
fn fail_a_staged_commit(s: &Setup) -> (u64, Vec<u16>) {
    let db = open_database(s.counting.shared(), "o", &opts(&s.clock)).unwrap();
    let seq: u64 = kvsqlite::vfs::history::parse_bookmark(&db.bookmark().unwrap())
        .unwrap()
        .1;
    s.gate.armed.store(true, Ordering::SeqCst);
    let r = db.execute_batch(
        "BEGIN;
         WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300)
         INSERT INTO t SELECT randomblob(3000) FROM c;
         COMMIT;",
    );
    assert!(r.is_err(), "the commit record was refused");
    drop(db);
    s.gate.armed.store(false, Ordering::SeqCst);
    s.gate.dead.store(false, Ordering::SeqCst);
    let (parts, headers) = parts_and_headers(&s.mem);
    assert!(!headers.contains(&(seq + 1)));
    let orphans: Vec<u16> = parts
        .iter()
        .filter(|(q, _)| *q == seq + 1)
        .map(|(_, n)| *n)
        .collect();
    assert!(orphans.len() >= 2, "{orphans:?}");
    (seq + 1, orphans)
}

#[test]
fn orphan_parts_past_the_current_seq_go_at_the_next_compaction() {
    let s = setup();
    let db = open_database(s.counting.shared(), "o", &opts(&s.clock)).unwrap();
    db.execute_batch("CREATE TABLE t(b BLOB); INSERT INTO t VALUES (x'01');")
        .unwrap();
    drop(db);
    let (seq, orphans) = fail_a_staged_commit(&s);
    let db = open_database(s.counting.shared(), "o", &opts(&s.clock)).unwrap();
    let kv0 = s.counting.snapshot();
    let r = db.compact_history().unwrap();
    let kv = s.counting.snapshot() - kv0;
    assert_eq!(r.orphan_parts, orphans.len() as u64, "{r:?}");
    assert_eq!((r.records_deleted, r.records_kept), (0, 2), "{r:?}");
    // One read (the headers, the fence-free database's orphans listed with them), one write
    // (their deletion).
    assert_eq!(kv.round_trips(), 2, "{kv}");
    let (parts, _) = parts_and_headers(&s.mem);
    assert!(parts.iter().all(|(q, _)| *q < seq), "{parts:?}");
    // Nothing left to do: the next compaction is one read again, as it always was.
    let kv0 = s.counting.snapshot();
    let r = db.compact_history().unwrap();
    assert_eq!(
        (r.orphan_parts, (s.counting.snapshot() - kv0).round_trips()),
        (0, 1)
    );
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "the failed transaction left no row");
}

#[test]
fn orphan_parts_under_a_reused_seq_go_with_that_commits_record() {
    let s = setup();
    let db = open_database(s.counting.shared(), "o", &opts(&s.clock)).unwrap();
    db.execute_batch("CREATE TABLE t(b BLOB)").unwrap();
    drop(db);
    let (seq, orphans) = fail_a_staged_commit(&s);
    // The next commit takes the same seq, with one part: the failed one's parts past it stay.
    let db = open_database(s.counting.shared(), "o", &opts(&s.clock)).unwrap();
    db.execute("INSERT INTO t VALUES (x'02')", []).unwrap();
    let (parts, headers) = parts_and_headers(&s.mem);
    assert!(headers.contains(&seq));
    let mine: Vec<u16> = parts
        .iter()
        .filter(|(q, _)| *q == seq)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(mine, orphans, "part 0 rewritten, the others left");
    // Kept records keep them (they are listed only when their record goes) ...
    let r = db.compact_history().unwrap();
    assert_eq!((r.orphan_parts, r.records_deleted), (0, 0));
    // ... and once every record is past the window, they go with it, in the group's own
    // read and write: one read (headers), one read (parts, with the leftover list), one write.
    s.clock.advance(Duration::from_secs(2 * 3600));
    let kv0 = s.counting.snapshot();
    let r = db.compact_history().unwrap();
    let kv = s.counting.snapshot() - kv0;
    assert_eq!(r.records_deleted, 2, "{r:?}");
    assert_eq!(r.orphan_parts, orphans.len() as u64 - 1, "{r:?}");
    assert_eq!(kv.round_trips(), 3, "{kv}");
    let (parts, headers) = parts_and_headers(&s.mem);
    assert_eq!(
        (parts, headers),
        (vec![], vec![]),
        "no history part is left"
    );
    let n: i64 = db
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

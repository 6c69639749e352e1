//! Kills at chosen moments, not random ones: a child process writes transactions through the
//! VFS over a KV wrapper that reports every write and `delete_range` on its standard output
//! (`call N write stage|commit|other puts=K`, then `answered N ok|err`) and waits for the
//! parent's `go` on its standard input before sending the call and again before returning its
//! answer. The parent so stops the child exactly where it wants and kills it there (`kill -9`):
//!
//! 1. between two stage puts of a staged commit: the first stage put's entries are left in the
//!    store as an unfinished stage;
//! 2. during recovery at the next open, before its delete of that stage is sent: the leftovers
//!    are all still there;
//! 3. during recovery, once the store answered that delete: none is left, and the interrupted
//!    transaction is absent;
//! 4. with a commit record's put about to be sent: the transaction is absent (the store never
//!    had it) and its stage is collected by the next open;
//! 5. once the store answered a commit record's put, before SQLite heard of it: the transaction
//!    is present, exactly, though it was never acknowledged to the writer.
//!
//! After each round the parent checks what must hold there, on the raw store first (no open,
//! which would recover) and then through an open: `integrity_check` ok, every acknowledged
//! transaction exactly, the in-flight one present or absent as the store's answer says, no
//! unfinished stage left. On redb and on the PostgreSQL test server (see `common/pg.rs`).

#[path = "common/pg.rs"]
mod pg;
#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use kvsqlite::kv::url::open_store;
use kvsqlite::kv::{
    Key, KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};
use kvsqlite::rng::Rng;
use kvsqlite::vfs::layout::{self, FileKind, Meta};
use kvsqlite::vfs::{open_database, OpenOptions};

/// `ACTOR URL`: set by the parent for the child.
const CHILD_ENV: &str = "KVSQLITE_KILL_POINT_CHILD";

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS t(txn INTEGER NOT NULL, seq INTEGER NOT NULL, v BLOB NOT NULL, \
     PRIMARY KEY (txn, seq))";

/// The rows of transaction `n`: even ones are one small row (one put), odd ones 400 rows of
/// 3,000 random bytes (about 400 pages: a staged commit of several puts).
fn txn_rows(n: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(0x4B17 ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (rows, len) = if n % 2 == 0 { (1, 100) } else { (400, 3000) };
    (0..rows).map(|_| rng.bytes(len)).collect()
}

/// The child's KV wrapper: reports writes and deletes and waits for `go` around each.
struct Reporter {
    inner: SharedStore,
    /// The call counter and the parent's lines.
    line: Mutex<(u64, Lines<BufReader<std::io::Stdin>>)>,
}

impl Reporter {
    fn say(&self, s: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    }

    /// Waits for the parent's `go`; a closed pipe means the parent is gone: exit.
    fn wait_go(lines: &mut Lines<BufReader<std::io::Stdin>>) {
        match lines.next() {
            Some(Ok(l)) if l == "go" => {}
            _ => std::process::exit(3),
        }
    }

    fn call<T>(&self, what: &str, f: impl FnOnce() -> Result<T, KvError>) -> Result<T, KvError> {
        let mut g = self.line.lock().unwrap();
        g.0 += 1;
        let n = g.0;
        self.say(&format!("call {n} {what}"));
        Self::wait_go(&mut g.1);
        let r = f();
        self.say(&format!(
            "answered {n} {}",
            if r.is_ok() { "ok" } else { "err" }
        ));
        Self::wait_go(&mut g.1);
        r
    }
}

/// The kind of a write: `commit` (it carries the main file's metadata: the commit record),
/// `stage` (stage pages only), or `other`.
fn write_kind(batch: &WriteBatch) -> &'static str {
    let meta = layout::meta_key(FileKind::Main);
    if batch.puts.iter().any(|(k, _)| *k == meta) {
        "commit"
    } else if batch
        .puts
        .iter()
        .any(|(k, _)| layout::parse_stage_key(k).is_some())
    {
        "stage"
    } else {
        "other"
    }
}

impl KvStore for Reporter {
    fn backend(&self) -> &'static str {
        "reporter"
    }
    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }
    fn get(&self, actor: &str, keys: &[Key]) -> Result<Vec<Option<Value>>, KvError> {
        self.inner.get(actor, keys)
    }
    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.inner.list(actor, req)
    }
    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        let what = format!("write {} puts={}", write_kind(batch), batch.puts.len());
        self.call(&what, || self.inner.write(actor, batch))
    }
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.call("delete_range", || {
            self.inner.delete_range(actor, start, end)
        })
    }
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.inner.batch_read(actor, ops)
    }
}

/// The child: opens the database (recovering what a crash left), then writes transactions
/// from the first one not in the database, printing `opened`, `start N` and `ack N`.
#[test]
#[ignore = "the child process of the kill-point tests, started by them"]
fn kill_point_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (actor, url) = spec.split_once(' ').expect("ACTOR URL");
    let inner = open_store(url, KvLimits::default(), None).expect("child opens the store");
    let reporter = Arc::new(Reporter {
        inner,
        line: Mutex::new((0, BufReader::new(std::io::stdin()).lines())),
    });
    let store: SharedStore = reporter.clone();
    let db = open_database(store, actor, &OpenOptions::default()).expect("child opens the db");
    reporter.say("opened");
    db.execute_batch(SCHEMA).expect("schema");
    let start: u64 = db
        .query_row("SELECT coalesce(max(txn) + 1, 0) FROM t", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("first transaction") as u64;
    reporter.say(&format!("start {start}"));
    for n in start.. {
        db.execute_batch("BEGIN").expect("begin");
        {
            let mut st = db
                .prepare_cached("INSERT INTO t(txn, seq, v) VALUES (?1, ?2, ?3)")
                .expect("prepare");
            for (seq, v) in txn_rows(n).iter().enumerate() {
                st.execute(rusqlite::params![n as i64, seq as i64, v])
                    .expect("insert");
            }
        }
        db.execute_batch("COMMIT").expect("commit");
        reporter.say(&format!("ack {n}"));
    }
}

/// What the child printed.
#[derive(Clone, Debug, PartialEq)]
enum Event {
    Opened,
    Start(u64),
    Ack(u64),
    /// A call about to be sent: its number and what it is (`write stage puts=K`, …).
    Call(u64, String),
    /// The store's answer to call N: `true` for ok.
    Answered(u64, bool),
}

/// A running child, stopped at each call.
struct Writer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// The transaction the child is writing (its start plus its acknowledgements).
    current: Option<u64>,
    acked: Vec<u64>,
    opened: bool,
}

impl Writer {
    fn spawn(actor: &str, url: &str) -> Writer {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill_point_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{actor} {url}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Writer {
            child,
            stdin,
            lines,
            current: None,
            acked: Vec::new(),
            opened: false,
        }
    }

    /// The next event (the harness's own lines skipped).
    fn next(&mut self) -> Event {
        loop {
            let line = self
                .lines
                .next()
                .expect("the child ended before the kill point")
                .unwrap();
            // The harness prints `test NAME ... ` without a newline before the first line.
            let line = line.rsplit("... ").next().unwrap_or("").trim().to_string();
            let ev = if line == "opened" {
                Event::Opened
            } else if let Some(n) = line.strip_prefix("start ") {
                Event::Start(n.parse().unwrap())
            } else if let Some(n) = line.strip_prefix("ack ") {
                Event::Ack(n.parse().unwrap())
            } else if let Some(rest) = line.strip_prefix("call ") {
                let (n, what) = rest.split_once(' ').unwrap();
                Event::Call(n.parse().unwrap(), what.to_string())
            } else if let Some(rest) = line.strip_prefix("answered ") {
                let (n, ok) = rest.split_once(' ').unwrap();
                Event::Answered(n.parse().unwrap(), ok == "ok")
            } else {
                continue;
            };
            match &ev {
                Event::Opened => self.opened = true,
                Event::Start(n) => self.current = Some(*n),
                Event::Ack(n) => {
                    self.acked.push(*n);
                    self.current = Some(n + 1);
                }
                _ => {}
            }
            return ev;
        }
    }

    fn go(&mut self) {
        writeln!(self.stdin, "go").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Lets the child run until `stop` holds for an event (the child then waits on it), and
    /// returns that event and the last call's description. Bounded.
    fn run_until(&mut self, mut stop: impl FnMut(&Event, &Writer) -> bool) -> Event {
        for _ in 0..100_000 {
            let ev = self.next();
            if stop(&ev, self) {
                return ev;
            }
            if matches!(ev, Event::Call(..) | Event::Answered(..)) {
                self.go();
            }
        }
        panic!("the kill point never came");
    }

    /// `kill -9` while the child waits; returns its acknowledgements.
    fn kill(mut self) -> (Vec<u64>, bool) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        (self.acked, self.opened)
    }
}

/// `(unfinished stage keys, every stage key)` in the raw store: an unfinished stage's keys
/// have ids at or past the main file's `next_stage`.
fn stage_keys(store: &SharedStore, actor: &str) -> (usize, usize) {
    let meta = store
        .get(actor, &[layout::meta_key(FileKind::Main)])
        .unwrap()
        .pop()
        .flatten()
        .map(|v| Meta::decode(FileKind::Main, &v).unwrap());
    let next = meta.map_or(0, |m| m.next_stage);
    let (s, e) = layout::stage_area();
    let page = store.list(actor, &ListRequest::range(s, Some(e))).unwrap();
    assert!(page.is_complete());
    let ids: Vec<u64> = page
        .entries
        .iter()
        .filter_map(|(k, _)| layout::parse_stage_key(k).map(|(id, _)| id))
        .collect();
    (ids.iter().filter(|&&id| id >= next).count(), ids.len())
}

/// Redo-record parts of commits past the stored metadata's seq: what a staged commit's stage
/// puts carry besides its pages (format 2), before its commit record lands.
fn unfinished_parts(store: &SharedStore, actor: &str) -> usize {
    let seq = store
        .get(actor, &[layout::meta_key(FileKind::Main)])
        .unwrap()
        .pop()
        .flatten()
        .map_or(0, |v| Meta::decode(FileKind::Main, &v).unwrap().seq);
    let (s, e) = layout::history_area(layout::TAG_HISTORY_PARTS);
    let page = store.list(actor, &ListRequest::range(s, Some(e))).unwrap();
    assert!(page.is_complete());
    page.entries
        .iter()
        .filter(|(k, _)| u64::from_be_bytes(k[2..10].try_into().unwrap()) > seq)
        .count()
}

/// Opens the database in this process (recovering) and checks it holds exactly `txns`.
fn check_open(store: &SharedStore, actor: &str, txns: &[u64], what: &str) {
    let db = open_database(store.clone(), actor, &OpenOptions::default())
        .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    assert_integrity(&db);
    let mut st = db
        .prepare("SELECT txn, seq, v FROM t ORDER BY txn, seq")
        .unwrap();
    let mut stored: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
    let mut rows = st.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let (txn, v): (i64, Vec<u8>) = (r.get(0).unwrap(), r.get(2).unwrap());
        if stored.last().map(|(t, _)| *t) != Some(txn as u64) {
            stored.push((txn as u64, Vec::new()));
        }
        stored.last_mut().unwrap().1.push(v);
    }
    let numbers: Vec<u64> = stored.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, txns, "{what}: the transactions stored");
    for (n, rows) in &stored {
        assert!(
            *rows == txn_rows(*n),
            "{what}: transaction {n} is not exact"
        );
    }
    drop(rows);
    drop(st);
    drop(db);
    assert_eq!(
        stage_keys(store, actor).0,
        0,
        "{what}: the open left an unfinished stage"
    );
}

fn is_call(ev: &Event, kind: &str) -> bool {
    matches!(ev, Event::Call(_, what) if what.starts_with(kind))
}

fn kill_points(url: &str, actor: &str) {
    // Opened for each check and closed before the next child: a redb file has one owner.
    let store = || open_store(url, KvLimits::default(), None).unwrap();

    // 1. Between two stage puts of transaction 1 (transaction 0 acknowledged before).
    let mut w = Writer::spawn(actor, url);
    let mut first_stage_puts = 0usize;
    let mut stage_answered = false;
    w.run_until(|ev, w| {
        if w.current != Some(1) {
            return false;
        }
        match ev {
            Event::Call(_, what) if what.starts_with("write stage") => {
                if stage_answered {
                    return true;
                }
                first_stage_puts = what.rsplit("puts=").next().unwrap().parse().unwrap();
                false
            }
            Event::Answered(_, ok) if first_stage_puts > 0 => {
                assert!(ok, "the first stage put failed");
                stage_answered = true;
                false
            }
            _ => false,
        }
    });
    let (acked, _) = w.kill();
    assert_eq!(acked, [0]);
    assert!(first_stage_puts > 0);
    assert_eq!(
        stage_keys(&store(), actor).0 + unfinished_parts(&store(), actor),
        first_stage_puts,
        "1: the first stage put's entries are the unfinished stage (its pages and redo parts)"
    );

    // 2. The next open's recovery, killed before its delete of the stage is sent.
    let mut w = Writer::spawn(actor, url);
    let ev = w.run_until(|ev, _| is_call(ev, "delete_range") || *ev == Event::Opened);
    assert!(
        is_call(&ev, "delete_range"),
        "2: the open recovered nothing: {ev:?}"
    );
    let (acked, opened) = w.kill();
    assert!(acked.is_empty() && !opened, "2: killed inside the open");
    assert_eq!(
        stage_keys(&store(), actor).0 + unfinished_parts(&store(), actor),
        first_stage_puts,
        "2: the leftovers are all still there"
    );

    // 3. Recovery again, killed once the store answered the delete.
    let mut w = Writer::spawn(actor, url);
    let mut deleting = false;
    let ev = w.run_until(|ev, _| {
        if is_call(ev, "delete_range") {
            deleting = true;
        }
        *ev == Event::Opened || deleting && matches!(ev, Event::Answered(_, true))
    });
    assert!(
        deleting && ev != Event::Opened,
        "3: the open recovered nothing"
    );
    let (acked, opened) = w.kill();
    assert!(acked.is_empty() && !opened, "3: killed inside the open");
    assert_eq!(
        stage_keys(&store(), actor).0,
        0,
        "3: the leftovers collected"
    );
    check_open(&store(), actor, &[0], "3");

    // 4. Transaction 1's commit record about to be sent: absent, its stage collected.
    let mut w = Writer::spawn(actor, url);
    w.run_until(|ev, w| w.current == Some(1) && is_call(ev, "write commit"));
    let (acked, _) = w.kill();
    assert!(acked.is_empty());
    assert!(
        stage_keys(&store(), actor).0 > 0,
        "4: the staged pages are there, unfinished"
    );
    check_open(&store(), actor, &[0], "4");

    // 5. The store answered transaction 1's commit record; the writer never heard: present.
    let mut w = Writer::spawn(actor, url);
    w.run_until(|ev, w| w.current == Some(1) && is_call(ev, "write commit"));
    w.go();
    let ev = w.next();
    assert!(matches!(ev, Event::Answered(_, true)), "5: {ev:?}");
    let (acked, _) = w.kill();
    assert!(acked.is_empty(), "5: the writer was never told");
    check_open(&store(), actor, &[0, 1], "5");

    // The small transaction after it, committed and acknowledged as usual.
    let mut w = Writer::spawn(actor, url);
    w.run_until(|ev, _| matches!(ev, Event::Ack(2)));
    let (acked, _) = w.kill();
    assert_eq!(acked, [2]);
    check_open(&store(), actor, &[0, 1, 2], "after");
}

#[test]
fn kills_at_chosen_moments_on_redb_leave_what_each_moment_requires() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("kv.redb").display());
    kill_points(&url, "points");
}

#[test]
fn kills_at_chosen_moments_on_postgres_leave_what_each_moment_requires() {
    let Some(pg) = pg::test_store() else {
        return; // printed as skipped (a failure under CI=true)
    };
    kill_points(&pg::test_url(), &pg.actor("points"));
    drop(pg); // deletes every row of the actors it used
}

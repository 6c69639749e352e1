//! Process-level crashes: a child process writes a seeded mix of transactions through the VFS
//! (small ones, ~75-page ones, overflow blobs and 8 MB staged ones), printing `ack N` after
//! each COMMIT returns, and the parent `kill -9`s it at seeded random moments: after a seeded
//! number of acknowledgements plus a seeded delay, so kills land mid-commit, mid-open and
//! mid-recovery. After each kill the parent reopens the database and checks: integrity ok,
//! every acknowledged transaction present with exactly its rows, nothing past the last
//! acknowledgement but the one in flight (complete or absent), and the next child continues
//! from there. On redb and on the PostgreSQL test server (see `common/pg.rs`).

#[path = "common/pg.rs"]
mod pg;
#[path = "common/sqlite.rs"]
mod sqlite_checks;
use sqlite_checks::assert_integrity;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use kvsqlite::kv::url::open_store;
use kvsqlite::kv::KvLimits;
use kvsqlite::rng::Rng;
use kvsqlite::vfs::{open_database, OpenOptions};

/// `SEED ACTOR URL`: set by the parent for the child.
const CHILD_ENV: &str = "KVSQLITE_KILL9_CHILD";

const SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS t(txn INTEGER NOT NULL, seq INTEGER NOT NULL, v BLOB NOT NULL, \
     PRIMARY KEY (txn, seq))";

/// Rounds (child processes killed) per backend; the actor changes every `ROUNDS_PER_ACTOR` so
/// the database stays small enough to check in full after every kill.
const ROUNDS: u64 = 20;
const ROUNDS_PER_ACTOR: u64 = 5;

/// The kind of transaction `n`: what its size makes the VFS do.
fn kind(seed: u64, n: u64) -> &'static str {
    match txn_rows(seed, n).len() {
        2000 => "8 MB staged",
        75 => "75-page",
        _ if txn_rows(seed, n)[0].len() >= 40_000 => "overflow",
        _ => "small",
    }
}

/// The rows of transaction `n` (its `v` values, `seq` = position): deterministic in
/// `(seed, n)`, random bytes throughout.
fn txn_rows(seed: u64, n: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (rows, len) = match rng.below(10) {
        0 => (2000, 4000),                                 // 8 MB: a staged commit
        1..=3 => (75, 3900),                               // ~75 pages: one put
        4..=6 => (1, 40_000 + rng.below(60_000) as usize), // an overflow chain
        _ => (1 + rng.below(3) as usize, 1 + rng.below(200) as usize), // small
    };
    (0..rows).map(|_| rng.bytes(len)).collect()
}

/// The child: writes transactions from the first one not in the database, forever.
#[test]
#[ignore = "the child process of the kill -9 tests, started by them"]
fn kill9_child_writer() {
    let spec = std::env::var(CHILD_ENV).expect("KVSQLITE_KILL9_CHILD=SEED ACTOR URL");
    let mut it = spec.splitn(3, ' ');
    let (Some(seed), Some(actor), Some(url)) = (it.next(), it.next(), it.next()) else {
        panic!("KVSQLITE_KILL9_CHILD={spec}: expected SEED ACTOR URL");
    };
    let seed: u64 = seed.parse().expect("seed");
    let store = open_store(url, KvLimits::default(), None).expect("child opens the store");
    let db = open_database(store, actor, &OpenOptions::default()).expect("child opens the db");
    db.execute_batch(SCHEMA).expect("schema");
    let start: u64 = db
        .query_row("SELECT coalesce(max(txn) + 1, 0) FROM t", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect("first transaction") as u64;
    println!("start {start}");
    for n in start.. {
        let rows = txn_rows(seed, n);
        db.execute_batch("BEGIN").expect("begin");
        {
            let mut st = db
                .prepare_cached("INSERT INTO t(txn, seq, v) VALUES (?1, ?2, ?3)")
                .expect("prepare");
            for (seq, v) in rows.iter().enumerate() {
                st.execute(rusqlite::params![n as i64, seq as i64, v])
                    .expect("insert");
            }
        }
        db.execute_batch("COMMIT").expect("commit");
        println!("ack {n}");
    }
}

/// Runs one child until it is killed: after `acks` acknowledgements and then `delay`. Returns
/// the transaction it started from and the acknowledgements it printed.
fn run_child(spec: &str, acks: usize, delay: Duration) -> (u64, Vec<u64>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "kill9_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut start = None;
    let mut acked = Vec::new();
    let mut killed = false;
    // Until the kill, read what the child printed; then the rest of the pipe: every
    // acknowledgement it printed before it died.
    if acks == 0 {
        std::thread::sleep(delay);
        child.kill().unwrap();
        killed = true;
    }
    for line in lines.by_ref() {
        let line = line.unwrap();
        // The harness prints `test NAME ... ` without a newline before the child's first line.
        if let Some((_, n)) = line.split_once("start ") {
            start = Some(n.parse().unwrap());
        } else if let Some(n) = line.strip_prefix("ack ") {
            acked.push(n.parse().unwrap());
            if !killed && acked.len() >= acks {
                std::thread::sleep(delay);
                child.kill().unwrap();
                killed = true;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(killed, "the child exited on its own: {status}");
    // A kill during the child's start leaves no `start` line: it had not read anything yet.
    (start.unwrap_or(u64::MAX), acked)
}

/// Every transaction in the database, in order, with its rows.
fn stored(db: &rusqlite::Connection) -> Vec<(u64, Vec<Vec<u8>>)> {
    let has: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 't'",
            [],
            |r| r.get(0),
        )
        .expect("schema");
    if has == 0 {
        return Vec::new();
    }
    let mut st = db
        .prepare("SELECT txn, seq, v FROM t ORDER BY txn, seq")
        .expect("prepare");
    let mut rows = st.query([]).expect("query");
    let mut out: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
    while let Some(r) = rows.next().expect("row") {
        let (txn, seq, v): (i64, i64, Vec<u8>) =
            (r.get(0).unwrap(), r.get(1).unwrap(), r.get(2).unwrap());
        if out.last().map(|(t, _)| *t) != Some(txn as u64) {
            out.push((txn as u64, Vec::new()));
        }
        let rows = &mut out.last_mut().unwrap().1;
        assert_eq!(
            seq as usize,
            rows.len(),
            "transaction {txn}: rows out of order"
        );
        rows.push(v);
    }
    out
}

/// How the parent waits, after a kill, for a write the child left in flight to end.
enum Backend {
    /// Nothing outlives the process.
    Embedded,
    /// A server may still be running the dead child's last write: each child connects with its
    /// own `application_name`, and the parent waits until no server process has that name.
    Postgres,
}

/// Waits until the PostgreSQL server has no connection named `app` (the dead child's).
fn wait_for_server_side_end(app: &str) {
    let mut admin = pg::admin_client().expect("the test server");
    for _ in 0..3000 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the server still runs connections of the killed child {app}");
}

/// The kill -9 rounds on the store at `url` (`tag` names it in messages).
fn kill_rounds(url: &str, backend: Backend, tag: &str, actor_prefix: &str, seed: u64) {
    let mut rng = Rng::new(seed);
    // The last acknowledged transaction of the current actor, if any.
    let mut last_ack: Option<u64> = None;
    let mut actor = String::new();
    let mut kills_before_first_ack = 0;
    let mut planned_before_first_ack = 0;
    let mut in_flight_landed = 0;
    for round in 0..ROUNDS {
        if round % ROUNDS_PER_ACTOR == 0 {
            actor = format!("{actor_prefix}kill9-{}", round / ROUNDS_PER_ACTOR);
            last_ack = None;
        }
        let acks = rng.below(4) as usize;
        planned_before_first_ack += (acks == 0) as u32;
        let delay = Duration::from_millis(rng.below(60));
        let app = format!("kill9_{}_{round}", std::process::id());
        let child_url = match backend {
            Backend::Embedded => url.to_string(),
            Backend::Postgres => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}application_name={app}")
            }
        };
        let (start, acked) = run_child(&format!("{seed} {actor} {child_url}"), acks, delay);
        if let Backend::Postgres = backend {
            wait_for_server_side_end(&app);
        }
        let what = format!("{tag} round {round} ({acks} acks + {delay:?})");
        kills_before_first_ack += acked.is_empty() as u32;
        // A round that waits for acknowledgements is killed only after them.
        assert!(
            acks == 0 || acked.len() >= acks,
            "{what}: killed before its acks"
        );
        if !acked.is_empty() {
            let next = last_ack.map_or(0, |a| a + 1);
            // The child went on from the last one stored.
            assert_eq!(start, next, "{what}: started at {start}");
            let want: Vec<u64> = (start..start + acked.len() as u64).collect();
            assert_eq!(acked, want, "{what}: acknowledgements out of order");
            last_ack = acked.last().copied();
        }
        // Check: integrity, every acknowledged transaction exactly, at most one more.
        let store = open_store(url, KvLimits::default(), None).unwrap();
        let db = open_database(store, &actor, &OpenOptions::default())
            .unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
        assert_integrity(&db);
        let txns = stored(&db);
        let acked_count = last_ack.map_or(0, |a| a + 1);
        assert!(
            txns.len() as u64 == acked_count || txns.len() as u64 == acked_count + 1,
            "{what}: {} transactions stored, last acknowledged {last_ack:?}",
            txns.len()
        );
        for (i, (n, rows)) in txns.iter().enumerate() {
            assert_eq!(*n, i as u64, "{what}: transaction numbers have a gap");
            assert!(
                *rows == txn_rows(seed, *n),
                "{what}: transaction {n} is not exactly as written ({} rows)",
                rows.len()
            );
        }
        if txns.len() as u64 > acked_count {
            in_flight_landed += 1;
            last_ack = Some(txns.len() as u64 - 1); // landed: the next child goes on after it
        }
        eprintln!(
            "{what}: {} acknowledged this round, {} transactions stored; next in line: a {} \
             transaction",
            acked.len(),
            txns.len(),
            kind(seed, acked_count)
        );
    }
    eprintln!(
        "{tag}: {ROUNDS} kills, {kills_before_first_ack} before a round's first ack, \
         in-flight transaction landed {in_flight_landed} times"
    );
    // The seeded plan kills some children before their first acknowledgement (during their
    // start, open and recovery), and only those rounds can end without one. Whether a random
    // kill lands inside a commit is up to timing: `vfs_kill_points` stops the child there.
    assert!(
        planned_before_first_ack > 0,
        "{tag}: the plan never kills before a first ack"
    );
    assert!(
        kills_before_first_ack <= planned_before_first_ack,
        "{tag}: {kills_before_first_ack} rounds without an ack, {planned_before_first_ack} planned"
    );
}

#[test]
fn kill_9_at_random_moments_on_redb_loses_no_acknowledged_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redb:{}", dir.path().join("kv.redb").display());
    kill_rounds(&url, Backend::Embedded, "redb", "", 0x4B11);
}

#[test]
fn kill_9_at_random_moments_on_postgres_loses_no_acknowledged_transaction() {
    let Some(pg) = pg::test_store() else {
        return; // printed as skipped (a failure under CI=true)
    };
    kill_rounds(
        &pg::test_url(),
        Backend::Postgres,
        "postgres",
        &pg.prefix,
        0x4B12,
    );
    drop(pg); // deletes every row of the actors it used
}

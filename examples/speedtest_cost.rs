//! A speedtest1 script replayed once on one target, for instruction counting: `kvsqlite` (an
//! actor's database on the memory store, default options), `pipelined` (the same with
//! pipelined commits, one `wait_durable` at the end), `mem` (stock SQLite in memory, the same
//! pragmas as `bench speedtest`), `redb` and `redb_pipelined` (kvsqlite on a redb file in a
//! fresh directory) or `wal` and `wal_full` (stock SQLite on a file in WAL mode, `synchronous`
//! `NORMAL` and `FULL`). The file targets use `$TMPDIR` (a tmpfs there takes the disk's
//! fsync out of the wall time; the instruction counts do not include the kernel's work).
//!
//! `valgrind --tool=callgrind --toggle-collect='*speedtest_cost::replay*' \
//!   target/release/examples/speedtest_cost TARGET FILE.sql [--no-compress]` counts only the
//! replay (the preamble and the tests) on the thread that runs SQLite, so two counts compare
//! the VFS's cost with none, free of the machine's noise. `--no-compress` stores kvsqlite's page values uncompressed
//! (`OpenOptions::compress_pages = false`; the history's images are compressed either way).

use std::sync::Arc;

use kvsqlite::bench::speedtest::{parse_script, run_sql, stock_pragmas};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::vfs::{open_database, OpenOptions};
use rusqlite::Connection;

#[inline(never)]
fn replay(conn: &Connection, script: &kvsqlite::bench::speedtest::Script) {
    run_sql(conn, &script.preamble).expect("preamble");
    for t in &script.tests {
        run_sql(conn, &t.sql).unwrap_or_else(|e| panic!("test {}: {e}", t.id));
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "kvsqlite".into());
    let file = args
        .next()
        .expect("usage: speedtest_cost TARGET FILE.sql (TARGET: kvsqlite, pipelined, mem, redb, redb_pipelined, wal, wal_full)");
    let text = std::fs::read_to_string(&file).expect("read the script");
    let script = parse_script(&text).expect("parse the script");
    let opts = OpenOptions {
        pipelined: target.ends_with("pipelined"),
        compress_pages: args.next().as_deref() != Some("--no-compress"),
        ..OpenOptions::default()
    };
    let dir = std::env::temp_dir().join(format!("speedtest-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the temporary directory");
    let mut db = None;
    let mem;
    let conn: &Connection = match target.as_str() {
        "kvsqlite" | "pipelined" => {
            let store: SharedStore = Arc::new(MemoryStore::new());
            db.insert(open_database(store, "cost", &opts).expect("open"))
        }
        "redb" | "redb_pipelined" => {
            let store: SharedStore = Arc::new(
                RedbStore::open(dir.join("store.redb"), KvLimits::default()).expect("open redb"),
            );
            db.insert(open_database(store, "cost", &opts).expect("open"))
        }
        "mem" => {
            mem = Connection::open_in_memory().expect("open");
            stock_pragmas(&mem, &opts, "memory").expect("pragmas");
            &mem
        }
        "wal" | "wal_full" => {
            mem = Connection::open(dir.join("stock.db")).expect("open");
            stock_pragmas(&mem, &opts, "wal").expect("pragmas");
            if target == "wal_full" {
                mem.execute_batch("PRAGMA synchronous=FULL").expect("pragma");
            }
            &mem
        }
        other => panic!("unknown target {other:?}: kvsqlite, pipelined, mem, redb, redb_pipelined, wal, wal_full"),
    };
    let t = std::time::Instant::now();
    replay(conn, &script);
    if let Some(db) = &db {
        db.wait_durable().expect("durable");
    }
    println!("{target}: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    drop(db);
    let _ = std::fs::remove_dir_all(&dir);
}

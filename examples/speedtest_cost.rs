//! A speedtest1 script replayed once on one target, for instruction counting: `kvsqlite` (an
//! actor's database on the memory store, default options), `pipelined` (the same with
//! pipelined commits, one `wait_durable` at the end) or `mem` (stock SQLite in memory,
//! the same pragmas as `bench speedtest`).
//!
//! `valgrind --tool=callgrind --toggle-collect='*speedtest_cost::replay*' \
//!   target/release/examples/speedtest_cost {kvsqlite,pipelined,mem} FILE.sql` counts only the replay (the
//! preamble and the tests), so the two counts compare the VFS's cost with none, free of the
//! machine's noise.

use std::sync::Arc;

use kvsqlite::bench::speedtest::{parse_script, run_sql, stock_pragmas};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
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
        .expect("usage: speedtest_cost kvsqlite|pipelined|mem FILE.sql");
    let text = std::fs::read_to_string(&file).expect("read the script");
    let script = parse_script(&text).expect("parse the script");
    let opts = OpenOptions {
        pipelined: target == "pipelined",
        ..OpenOptions::default()
    };
    let store: SharedStore = Arc::new(MemoryStore::new());
    let mut db = None;
    let mem;
    let conn: &Connection = if target == "kvsqlite" || target == "pipelined" {
        db.insert(open_database(store, "cost", &opts).expect("open"))
    } else {
        mem = Connection::open_in_memory().expect("open");
        stock_pragmas(&mem, &opts, "memory").expect("pragmas");
        &mem
    };
    let t = std::time::Instant::now();
    replay(conn, &script);
    if let Some(db) = &db {
        db.wait_durable().expect("durable");
    }
    println!("{target}: {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
}

//! The per-query log's fixed cost, for instruction counting: `N` point `SELECT`s on a warm
//! memory-store database, with the full log installed (`logged`), one statement in `K` logged
//! (`sampled:K`), or no log (`plain`, which is also what `QueryLogMode::Off` installs).
//!
//! `valgrind --tool=callgrind --toggle-collect='query_log_cost::run' \
//!   target/release/examples/query_log_cost logged 20000` counts only the loop; the instructions
//! per statement are the total over `N`, and `logged` minus `plain` is the log's share.

use std::hint::black_box;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
use kvsqlite::vfs::{open_database, OpenOptions};

#[inline(never)]
fn run(st: &mut rusqlite::Statement<'_>, n: i64) -> i64 {
    let mut sum = 0;
    for i in 0..n {
        let id = i % 1000 + 1;
        sum += st.query_row([id], |r| r.get::<_, i64>(0)).expect("select");
    }
    sum
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "logged".into());
    let n: i64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let store: SharedStore = Arc::new(MemoryStore::new());
    let db = open_database(store, "cost", &OpenOptions::default()).expect("open");
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        .expect("create");
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO t(id, v) SELECT i, randomblob(100) FROM n",
        [],
    )
    .expect("fill");
    use kvsqlite::actor::query_log::{install_mode, QueryLogMode};
    let log_mode = match mode.as_str() {
        "logged" => QueryLogMode::Full,
        "plain" => QueryLogMode::Off,
        m => match m.strip_prefix("sampled:").and_then(|k| k.parse().ok()) {
            Some(k) => QueryLogMode::Sampled(k),
            None => {
                eprintln!("usage: query_log_cost plain|logged|sampled:K [N]");
                std::process::exit(2);
            }
        },
    };
    let (_log, hook) = install_mode(db.conn(), "cost", db.stats(), log_mode);
    let mut st = db
        .prepare("SELECT length(v) FROM t WHERE id = ?1")
        .expect("prepare");
    run(&mut st, 1000);
    let t = std::time::Instant::now();
    black_box(run(&mut st, n));
    let ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("{mode}: {n} statements, {ns:.0} ns each");
    drop(st);
    drop(hook);
}

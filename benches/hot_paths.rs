//! criterion benches of kvsqlite's hot paths (`cargo bench --bench hot_paths`):
//! - `preload_lookup`: a [`Preload`] lookup among 1,000 entries (found, and not preloaded);
//! - `vfs_page_read_hit`: [`Database::read_page`] of a page the VFS cache holds;
//! - `commit_1_row`: a 1-row autocommit `INSERT` on the memory store (the one-put commit path);
//! - `query_instrumentation`: a point `SELECT` on a connection with the per-query log installed
//!   (no `tracing` subscriber, so its level is off) against an uninstrumented one (target: at
//!   most 2% over): the full log (`log_level_off`) and one statement in 10 and in 100
//!   (`QueryLogMode::Sampled`); `QueryLogMode::Off` installs nothing, so it is the
//!   uninstrumented case.
//!
//! Short measurement times: these are to compare, not to publish to the nanosecond.

use std::sync::Arc;
use std::time::Duration;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
use kvsqlite::preload::Preload;
use kvsqlite::vfs::{open_database, Database, OpenOptions};

fn preload_lookup(c: &mut Criterion) {
    let mut p = Preload::new();
    for i in 0..1000u32 {
        p.add_entry(i.to_be_bytes().to_vec(), vec![0u8; 64]);
    }
    let mut g = c.benchmark_group("preload_lookup");
    g.bench_function("found", |b| {
        b.iter(|| black_box(p.lookup(black_box(&500u32.to_be_bytes()))))
    });
    g.bench_function("not_preloaded", |b| {
        b.iter(|| black_box(p.lookup(black_box(&5000u32.to_be_bytes()))))
    });
    g.finish();
}

/// A warm database on a fresh memory store with `rows` rows of 100 bytes.
fn warm_db(actor: &str, rows: i64) -> Database {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let db = open_database(store, actor, &OpenOptions::default()).expect("open");
    db.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
        .expect("create");
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO t(id, v) SELECT i, randomblob(100) FROM n",
        [rows],
    )
    .expect("fill");
    db
}

fn vfs_page_read_hit(c: &mut Criterion) {
    let db = warm_db("read-hit", 1000);
    db.read_page(1).expect("read");
    c.bench_function("vfs_page_read_hit", |b| {
        b.iter(|| black_box(db.read_page(black_box(1)).expect("read").len()))
    });
}

fn commit_1_row(c: &mut Criterion) {
    let db = warm_db("commit", 10);
    let mut st = db
        .prepare("INSERT INTO t(v) VALUES (zeroblob(100))")
        .expect("prepare");
    c.bench_function("commit_1_row", |b| {
        b.iter(|| black_box(st.execute([]).expect("insert")))
    });
}

fn query_instrumentation(c: &mut Criterion) {
    use kvsqlite::actor::query_log::{install_mode, QueryLogMode};
    let plain = warm_db("plain", 1000);
    let logged = warm_db("logged", 1000);
    let sampled10 = warm_db("sampled10", 1000);
    let sampled100 = warm_db("sampled100", 1000);
    let _hooks = [
        (&logged, QueryLogMode::Full),
        (&sampled10, QueryLogMode::Sampled(10)),
        (&sampled100, QueryLogMode::Sampled(100)),
    ]
    .map(|(db, mode)| install_mode(db.conn(), "logged", db.stats(), mode));
    let mut g = c.benchmark_group("query_instrumentation");
    for (name, db) in [
        ("uninstrumented", &plain),
        ("log_level_off", &logged),
        ("log_sampled_10", &sampled10),
        ("log_sampled_100", &sampled100),
    ] {
        let mut st = db
            .prepare("SELECT length(v) FROM t WHERE id = ?1")
            .expect("prepare");
        let mut id = 0i64;
        g.bench_function(name, |b| {
            b.iter(|| {
                id = id % 1000 + 1;
                black_box(st.query_row([id], |r| r.get::<_, i64>(0)).expect("select"))
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = preload_lookup, vfs_page_read_hit, commit_1_row, query_instrumentation
}
criterion_main!(benches);

//! The embedded store's write path, engine against engine (`cargo bench --bench store_engines`):
//! kvsqlite's redb store (its `KvStore`, checksummed values, group commit) against `fjall` (an
//! LSM tree with a journal) for kvsqlite's pattern — pages of 4 KiB under one actor's keys — with
//! raw redb (no kvsqlite layer) and a plain append + `fdatasync` as references:
//!
//! - commit latency of one write of 2, 30, 300 and 2,000 pages (overwriting a working set),
//!   each durable (fsynced) before it returns;
//! - group commit: 16 threads, each committing 2-page writes to its own actor;
//! - point reads (one random page) and range reads (128 consecutive pages) of 10,000 pages;
//! - space over time: the file (or directory) size while a 2,000-page working set is
//!   overwritten 20 times in 30-page commits;
//! - recovery after `kill -9`: a child process commits 30-page writes and reports each one
//!   acknowledged; it is killed with SIGKILL, the store reopened, and the last acknowledged
//!   commit checked present (the reopen's time reported).
//!
//! Every figure of one run comes from the same process on the same disk, engine after engine;
//! the ratios are what to compare (the machine is shared, so wall times swing between runs).
//! Options after `--`: `--dir DIR` (default: a temporary directory under the target dir, on
//! the disk a store would live on; a tmpfs such as `/dev/shm/x` makes fsync free and leaves
//! each engine's CPU cost), `--quick` (fewer rounds, for a smoke test), `--engines a,b` (a
//! subset of `redb,redb-raw,fjall,append`), `--only latency,group,reads,space,recovery`, `--sizes 2,30,300,2000` (the commit sizes timed).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, KvStore, ListRequest, WriteBatch};

const PAGE: usize = 4096;
const ALL_ENGINES: [&str; 4] = ["redb", "redb-raw", "fjall", "append"];

/// One engine under test, opened on a directory of its own.
trait Engine: Send + Sync {
    /// Writes `pages` (page number, bytes) for `actor` as one durable commit.
    fn commit(&self, actor: &str, pages: &[(u32, Vec<u8>)]);
    /// Reads one page.
    fn get(&self, actor: &str, page: u32) -> Option<Vec<u8>>;
    /// Reads `n` consecutive pages from `first`; returns how many it found.
    fn range(&self, actor: &str, first: u32, n: usize) -> usize;
    /// Bytes on disk.
    fn space(&self) -> u64;
}

fn page_key(page: u32) -> Vec<u8> {
    let mut k = b"p".to_vec();
    k.extend_from_slice(&page.to_be_bytes());
    k
}

/// A page's bytes: its number and a version stamped in, the rest pseudo-random (incompressible,
/// as many real pages are not, and so no engine gains from compressing it).
fn page_bytes(page: u32, version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGE);
    let mut x = (u64::from(page) << 32) ^ version ^ 0x9E37_79B9_7F4A_7C15;
    while out.len() < PAGE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out[..4].copy_from_slice(&page.to_be_bytes());
    out[4..12].copy_from_slice(&version.to_le_bytes());
    out
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(p) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    std::fs::read_dir(p)
        .map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

// ---- kvsqlite's redb store -------------------------------------------------------------

struct KvRedb {
    store: RedbStore,
    path: PathBuf,
}

impl KvRedb {
    fn open(dir: &Path) -> Self {
        let path = dir.join("kv.redb");
        KvRedb {
            // One write carries up to 2,000 pages here, to time the engine's transaction (the VFS
            // splits a commit into puts of at most 128 entries under the default limits).
            store: RedbStore::open(
                &path,
                KvLimits {
                    max_write_entries: 4096,
                    max_write_bytes: 32 << 20,
                    ..KvLimits::default()
                },
            )
            .expect("open redb store"),
            path,
        }
    }
}

impl Engine for KvRedb {
    fn commit(&self, actor: &str, pages: &[(u32, Vec<u8>)]) {
        let mut batch = WriteBatch::default();
        for (p, v) in pages {
            batch.puts.push((page_key(*p), v.clone()));
        }
        self.store.write(actor, &batch).expect("redb write");
    }
    fn get(&self, actor: &str, page: u32) -> Option<Vec<u8>> {
        self.store
            .get(actor, &[page_key(page)])
            .expect("redb get")
            .pop()
            .flatten()
    }
    fn range(&self, actor: &str, first: u32, n: usize) -> usize {
        let req = ListRequest::range(page_key(first), None).with_limit(n);
        self.store
            .list(actor, &req)
            .expect("redb list")
            .entries
            .len()
    }
    fn space(&self) -> u64 {
        dir_size(&self.path)
    }
}

// ---- raw redb: the same keys, no kvsqlite layer ---------------------------------------

const RAW: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct RawRedb {
    db: redb::Database,
    path: PathBuf,
}

fn composite(actor: &str, page: u32) -> Vec<u8> {
    let mut k = (actor.len() as u16).to_be_bytes().to_vec();
    k.extend_from_slice(actor.as_bytes());
    k.extend_from_slice(&page_key(page));
    k
}

impl RawRedb {
    fn open(dir: &Path) -> Self {
        let path = dir.join("raw.redb");
        RawRedb {
            db: redb::Database::create(&path).expect("open raw redb"),
            path,
        }
    }
}

impl Engine for RawRedb {
    fn commit(&self, actor: &str, pages: &[(u32, Vec<u8>)]) {
        let txn = self.db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(RAW).expect("table");
            for (p, v) in pages {
                t.insert(composite(actor, *p).as_slice(), v.as_slice())
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    fn get(&self, actor: &str, page: u32) -> Option<Vec<u8>> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().expect("read");
        let t = txn.open_table(RAW).ok()?;
        let got = t.get(composite(actor, page).as_slice()).expect("get");
        got.map(|v| v.value().to_vec())
    }
    fn range(&self, actor: &str, first: u32, n: usize) -> usize {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().expect("read");
        let t = txn.open_table(RAW).expect("table");
        let lo = composite(actor, first);
        let r = t.range::<&[u8]>(lo.as_slice()..).expect("range");
        // Each value copied out, as a store's list returns it.
        let mut found = 0;
        for e in r.take(n) {
            let v = e.expect("entry").1.value().to_vec();
            found += usize::from(v.len() == PAGE);
        }
        found
    }
    fn space(&self) -> u64 {
        dir_size(&self.path)
    }
}

// ---- fjall: one partition, the same keys, each batch fsynced (SyncData) ----------------

struct Fjall {
    keyspace: fjall::Keyspace,
    part: fjall::PartitionHandle,
    path: PathBuf,
}

impl Fjall {
    fn open(dir: &Path) -> Self {
        let path = dir.join("fjall");
        let keyspace = fjall::Config::new(&path).open().expect("open fjall");
        let part = keyspace
            .open_partition("kv", fjall::PartitionCreateOptions::default())
            .expect("partition");
        Fjall {
            keyspace,
            part,
            path,
        }
    }
}

impl Engine for Fjall {
    fn commit(&self, actor: &str, pages: &[(u32, Vec<u8>)]) {
        let mut b = self
            .keyspace
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for (p, v) in pages {
            b.insert(&self.part, composite(actor, *p), v.as_slice());
        }
        b.commit().expect("fjall commit");
    }
    fn get(&self, actor: &str, page: u32) -> Option<Vec<u8>> {
        self.part
            .get(composite(actor, page))
            .expect("fjall get")
            .map(|v| v.to_vec())
    }
    fn range(&self, actor: &str, first: u32, n: usize) -> usize {
        let mut found = 0;
        for e in self.part.range(composite(actor, first)..).take(n) {
            found += usize::from(e.expect("fjall entry").1.len() == PAGE);
        }
        found
    }
    fn space(&self) -> u64 {
        dir_size(&self.path)
    }
}

// ---- the floor: append every page to a file, fdatasync ---------------------------------

/// The log file and where each (actor, page) was last written.
type AppendLog = (File, HashMap<(String, u32), u64>);

struct Append {
    file: parking_lot::Mutex<AppendLog>,
    path: PathBuf,
}

impl Append {
    fn open(dir: &Path) -> Self {
        let path = dir.join("append.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .expect("open log");
        Append {
            file: parking_lot::Mutex::new((file, HashMap::new())),
            path,
        }
    }
}

impl Engine for Append {
    fn commit(&self, actor: &str, pages: &[(u32, Vec<u8>)]) {
        let mut g = self.file.lock();
        let mut buf = Vec::with_capacity(pages.len() * (PAGE + 8));
        let mut at = g.0.metadata().expect("len").len();
        for (p, v) in pages {
            buf.extend_from_slice(&p.to_be_bytes());
            buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
            g.1.insert((actor.to_string(), *p), at + 8);
            buf.extend_from_slice(v);
            at += 8 + v.len() as u64;
        }
        g.0.write_all(&buf).expect("append");
        g.0.sync_data().expect("fdatasync");
    }
    fn get(&self, actor: &str, page: u32) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let g = self.file.lock();
        let at = *g.1.get(&(actor.to_string(), page))?;
        let mut out = vec![0u8; PAGE];
        g.0.read_exact_at(&mut out, at).ok()?;
        Some(out)
    }
    fn range(&self, actor: &str, first: u32, n: usize) -> usize {
        (first..first + n as u32)
            .filter(|p| self.get(actor, *p).is_some())
            .count()
    }
    fn space(&self) -> u64 {
        dir_size(&self.path)
    }
}

fn open(engine: &str, dir: &Path) -> Box<dyn Engine> {
    std::fs::create_dir_all(dir).expect("mkdir");
    match engine {
        "redb" => Box::new(KvRedb::open(dir)),
        "redb-raw" => Box::new(RawRedb::open(dir)),
        "fjall" => Box::new(Fjall::open(dir)),
        "append" => Box::new(Append::open(dir)),
        other => panic!("unknown engine {other}"),
    }
}

// ---- the measurements ------------------------------------------------------------------

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of a durable commit of `size` pages, `rounds` times, overwriting pages
/// of a 2,000-page working set.
fn commit_latency(e: &dyn Engine, size: usize, rounds: usize, version: &mut u64) -> f64 {
    let mut times = Vec::with_capacity(rounds);
    for r in 0..rounds {
        *version += 1;
        let first = ((r * size) % 2000) as u32;
        let pages: Vec<_> = (0..size as u32)
            .map(|i| {
                let p = (first + i) % 2000;
                (p, page_bytes(p, *version))
            })
            .collect();
        let t = Instant::now();
        e.commit("a", &pages);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

/// Commits per second with `threads` writers of 2-page commits, each to its own actor.
fn group_commit(e: Arc<dyn Engine>, threads: usize, dur: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (e, stop, done) = (e.clone(), stop.clone(), done.clone());
            std::thread::spawn(move || {
                let actor = format!("g{t}");
                let mut v = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    v += 1;
                    let pages = vec![(1, page_bytes(1, v)), (2, page_bytes(2, v))];
                    e.commit(&actor, &pages);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().expect("writer");
    }
    done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

struct Reads {
    point_us: f64,
    range_us: f64,
}

/// Loads 10,000 pages (in 300-page commits), then times random point reads and 128-page ranges.
fn reads(e: &dyn Engine, point: usize, ranges: usize) -> Reads {
    const N: u32 = 10_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(300) {
        let pages: Vec<_> = chunk.iter().map(|p| (*p, page_bytes(*p, 0))).collect();
        e.commit("r", &pages);
    }
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let t = Instant::now();
    for _ in 0..point {
        let p = (next() % u64::from(N)) as u32;
        let v = e.get("r", p).expect("page present");
        assert_eq!(&v[..4], &p.to_be_bytes());
    }
    let point_us = t.elapsed().as_secs_f64() * 1e6 / point as f64;
    let t = Instant::now();
    for _ in 0..ranges {
        let p = (next() % u64::from(N - 128)) as u32;
        assert_eq!(e.range("r", p, 128), 128);
    }
    let range_us = t.elapsed().as_secs_f64() * 1e6 / ranges as f64;
    Reads { point_us, range_us }
}

/// Space (MiB) after loading 2,000 pages and after overwriting them `rounds` times in 30-page
/// commits, sampled at the given rounds.
fn space_over_time(e: &dyn Engine, rounds: usize, at: &[usize]) -> Vec<(usize, f64)> {
    let mut out = Vec::new();
    for round in 0..=rounds {
        let version = 1_000_001 + round as u64;
        for first in (0..2000u32).step_by(30) {
            let pages: Vec<_> = (first..(first + 30).min(2000))
                .map(|p| (p, page_bytes(p, version)))
                .collect();
            e.commit("s", &pages);
        }
        if at.contains(&round) {
            out.push((round, e.space() as f64 / (1024.0 * 1024.0)));
        }
    }
    out
}

/// The child of the recovery test: commits 30-page writes forever, printing each acknowledged
/// version on its own line.
fn child(engine: &str, dir: &Path) {
    let e = open(engine, dir);
    let mut out = std::io::stdout();
    for version in 1u64.. {
        let pages: Vec<_> = (0..30u32).map(|p| (p, page_bytes(p, version))).collect();
        e.commit("k", &pages);
        if writeln!(out, "{version}")
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
    }
}

struct Recovery {
    acknowledged: u64,
    reopen_ms: f64,
    present: bool,
}

fn recovery(engine: &str, dir: &Path, run_for: Duration) -> Recovery {
    let exe = std::env::current_exe().expect("own path");
    let mut c = Command::new(exe)
        .args(["--child", engine, &dir.display().to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let lines = BufReader::new(c.stdout.take().expect("stdout"));
    let acknowledged = Arc::new(AtomicU64::new(0));
    let ack = acknowledged.clone();
    let reader = std::thread::spawn(move || {
        for l in lines.lines() {
            let Ok(l) = l else { break };
            if let Ok(v) = l.trim().parse::<u64>() {
                ack.store(v, Ordering::SeqCst);
            }
        }
    });
    std::thread::sleep(run_for);
    let acked = acknowledged.load(Ordering::SeqCst);
    c.kill().expect("kill -9"); // SIGKILL
    let _ = c.wait();
    let _ = reader.join();
    let t = Instant::now();
    let e = open(engine, dir);
    let reopen_ms = t.elapsed().as_secs_f64() * 1e3;
    // Every page of the last acknowledged commit (or a later one that landed) is present.
    let present = (0..30u32).all(|p| {
        e.get("k", p).is_some_and(|v| {
            let version = u64::from_le_bytes(v[4..12].try_into().expect("8 bytes"));
            v[..4] == p.to_be_bytes() && version >= acked && v == page_bytes(p, version)
        })
    });
    Recovery {
        acknowledged: acked,
        reopen_ms,
        present,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        child(&args[i + 1], Path::new(&args[i + 2]));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let base = match args.iter().position(|a| a == "--dir") {
        Some(i) => PathBuf::from(&args[i + 1]),
        None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("store_engines"),
    };
    let _ = std::fs::remove_dir_all(&base);
    let scale = if quick { 10 } else { 1 };
    let list = |flag: &str| {
        args.iter().position(|a| a == flag).map(|i| {
            args[i + 1]
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
    };
    let picked = list("--engines");
    let engines_named: Vec<&str> = ALL_ENGINES
        .into_iter()
        .filter(|e| picked.as_ref().is_none_or(|p| p.iter().any(|x| x == e)))
        .collect();
    let engines = engines_named.as_slice();
    let only = list("--only");
    let run = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == section));
    let sizes: Vec<(usize, usize)> = [(2, 200), (30, 100), (300, 30), (2000, 10)]
        .into_iter()
        .filter(|(n, _)| list("--sizes").is_none_or(|l| l.iter().any(|x| x.parse() == Ok(*n))))
        .collect();

    println!("# store_engines: 4 KiB pages, every commit durable (fsynced) before it returns");
    println!("# dir {}", base.display());
    if run("latency") {
        let mut lat: HashMap<&str, Vec<f64>> = HashMap::new();
        // Engines alternate per size, so a swing of the disk hits each of them alike.
        let opened: Vec<(&str, Box<dyn Engine>)> = engines
            .iter()
            .map(|n| (*n, open(n, &base.join("latency").join(n))))
            .collect();
        let mut version = 0u64;
        for (_, e) in &opened {
            // Warm up: the working set exists before anything is timed.
            let _ = commit_latency(&**e, 2000, 1, &mut version);
        }
        for &(size, rounds) in &sizes {
            for (name, e) in &opened {
                let ms = commit_latency(&**e, size, (rounds / scale).max(3), &mut version);
                lat.entry(name).or_default().push(ms);
            }
        }
        drop(opened);
        println!("\n## commit latency, median ms (ratio to {})", engines[0]);
        println!("| pages | {} |", engines.join(" | "));
        println!("|---|{}", "---|".repeat(engines.len()));
        for (i, (size, _)) in sizes.iter().enumerate() {
            let redb = lat[engines[0]][i];
            let cells: Vec<String> = engines
                .iter()
                .map(|n| {
                    let v = lat[n][i];
                    format!("{v:.2} ({:.2}×)", v / redb)
                })
                .collect();
            println!("| {size} | {} |", cells.join(" | "));
        }
    }

    if run("group") {
        println!("\n## group commit: 16 threads, 2-page commits to their own actors, commits/s");
        let dur = Duration::from_millis(if quick { 300 } else { 2000 });
        for &name in engines {
            let e: Arc<dyn Engine> = Arc::from(open(name, &base.join("group").join(name)));
            let one = group_commit(e.clone(), 1, dur);
            let many = group_commit(e, 16, dur);
            println!(
                "| {name} | 1 thread {one:.0}/s | 16 threads {many:.0}/s | {:.1}× |",
                many / one
            );
        }
    }

    if run("reads") {
        println!("\n## reads of 10,000 pages: µs per random point read, per 128-page range");
        for &name in engines {
            let e = open(name, &base.join("reads").join(name));
            let r = reads(&*e, 20_000 / scale, 500 / scale);
            println!(
                "| {name} | point {:.1} µs | range {:.0} µs |",
                r.point_us, r.range_us
            );
        }
    }

    if run("space") {
        println!("\n## space: 2,000 pages (7.8 MiB live) overwritten in 30-page commits, MiB after round");
        let rounds = if quick { 2 } else { 20 };
        let at: Vec<usize> = [0, 1, 5, 10, 20]
            .into_iter()
            .filter(|r| *r <= rounds)
            .collect();
        for &name in engines {
            let e = open(name, &base.join("space").join(name));
            let s = space_over_time(&*e, rounds, &at);
            let cells: Vec<String> = s.iter().map(|(r, m)| format!("{r}: {m:.1}")).collect();
            println!("| {name} | {} |", cells.join(" | "));
        }
    }

    if run("recovery") {
        println!("\n## recovery after kill -9 of a process committing 30-page writes");
        for name in engines.iter().filter(|n| **n != "append") {
            let r = recovery(
                name,
                &base.join("recovery").join(name),
                Duration::from_millis(if quick { 300 } else { 1500 }),
            );
            println!(
            "| {name} | {} commits acknowledged | reopen {:.1} ms | last acknowledged present: {} |",
            r.acknowledged, r.reopen_ms, r.present
        );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
}

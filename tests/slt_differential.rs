//! Differential property test through the runner: scripts generated from seeds (inserts of
//! small rows and multi-page blobs of random bytes, updates, deletes, transactions committed and rolled back,
//! savepoints, VACUUM, restarts), completed with stock SQLite's results, must then pass
//! record for record on the memory and redb stores.

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::KvLimits;
use kvsqlite::rng::Rng;
use kvsqlite::slt::{self, KvTarget, NativeTarget, RunConfig, Target};

/// The queries every checkpoint asks: totals, every row with every byte of its blob (compared
/// as the MD5 of all values, past the hash threshold), a range, integrity.
fn checkpoint(s: &mut String, rng: &mut Rng) {
    s.push_str(
        "query IIII nosort\nSELECT count(*), total(k), total(length(s)), total(length(b)) FROM t\n\n",
    );
    s.push_str("query IITT nosort\nSELECT id, k, s, hex(b) FROM t ORDER BY id\n\n");
    let lo = rng.below(1000);
    let _ = write!(
        s,
        "query IT rowsort\nSELECT id, hex(b) FROM t WHERE k BETWEEN {lo} AND {}\n\n",
        lo + 100
    );
    s.push_str("query T nosort\nPRAGMA integrity_check\n\n");
}

/// `n` random bytes as an SQL blob literal: every byte matters to the checkpoints.
fn blob_literal(rng: &mut Rng, n: usize) -> String {
    let mut out = String::with_capacity(2 * n + 3);
    out.push_str("x'");
    for b in rng.bytes(n) {
        let _ = write!(out, "{b:02x}");
    }
    out.push('\'');
    out
}

/// A script of `ops` random operations, deterministic in `seed`; its queries have no expected
/// results yet.
fn generate(seed: u64, ops: usize) -> String {
    let mut rng = Rng::new(seed);
    let mut s = String::from(
        "statement ok\nCREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, s TEXT, b BLOB)\n\n\
         statement ok\nCREATE INDEX t_k ON t(k)\n\n",
    );
    let mut next_id = 1u64;
    let mut in_txn = false;
    for _ in 0..ops {
        match rng.below(100) {
            0..=34 => {
                let n = 1 + rng.below(40);
                let mut vals = Vec::new();
                for _ in 0..n {
                    let blob = if rng.chance(0.1) {
                        // 4 KB to 40 KB: overflow chains over several pages.
                        4000 + rng.below(36_000)
                    } else {
                        rng.below(300)
                    };
                    let k = rng.below(1000);
                    let len = rng.below(200);
                    let c = (b'a' + rng.below(26) as u8) as char;
                    vals.push(format!(
                        "({next_id}, {k}, printf('%.*c', {len}, '{c}'), {})",
                        blob_literal(&mut rng, blob as usize)
                    ));
                    next_id += 1;
                }
                let _ = write!(
                    s,
                    "statement ok\nINSERT INTO t VALUES {}\n\n",
                    vals.join(", ")
                );
            }
            35..=49 => {
                let lo = rng.below(next_id.max(1));
                let _ = write!(
                    s,
                    "statement ok\nUPDATE t SET k = k + {}, s = s || '{}' WHERE id BETWEEN {lo} AND {}\n\n",
                    rng.below(50),
                    rng.below(10),
                    lo + rng.below(30)
                );
            }
            50..=59 => {
                let lo = rng.below(next_id.max(1));
                let _ = write!(
                    s,
                    "statement ok\nDELETE FROM t WHERE id BETWEEN {lo} AND {}\n\n",
                    lo + rng.below(20)
                );
            }
            60..=69 => {
                if in_txn {
                    let end = if rng.chance(0.5) {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    let _ = write!(s, "statement ok\n{end}\n\n");
                } else {
                    s.push_str("statement ok\nBEGIN\n\n");
                }
                in_txn = !in_txn;
            }
            70..=76 => {
                let sp = format!("sp{}", rng.below(3));
                let end = if rng.chance(0.5) {
                    "RELEASE"
                } else {
                    "ROLLBACK TO"
                };
                let _ = write!(
                    s,
                    "statement ok\nSAVEPOINT {sp}\n\nstatement ok\nUPDATE t SET k = -k WHERE id % 7 = {}\n\n\
                     statement ok\n{end} {sp}\n\n",
                    rng.below(7)
                );
                if end == "ROLLBACK TO" {
                    let _ = write!(s, "statement ok\nRELEASE {sp}\n\n");
                }
            }
            77..=80 if !in_txn => s.push_str("statement ok\nVACUUM\n\n"),
            81..=87 => {
                // A restart inside a transaction rolls it back, on every target alike.
                s.push_str("control restart\n\n");
                in_txn = false;
            }
            _ => checkpoint(&mut s, &mut rng),
        }
    }
    if in_txn {
        s.push_str("statement ok\nCOMMIT\n\n");
    }
    checkpoint(&mut s, &mut rng);
    s.push_str("control restart\n\n");
    checkpoint(&mut s, &mut rng);
    s
}

/// Completes `script` on stock SQLite and returns the result; every record must run there
/// (only wrong results, which completion replaces, are allowed).
fn complete_on_native(script: &str) -> String {
    let config = RunConfig {
        collect_outputs: true,
        ..RunConfig::default()
    };
    let mut native = NativeTarget::new().unwrap();
    let r = slt::run_script(&mut native, Path::new("gen.test"), script, &config);
    if let Some(f) = r
        .failures
        .iter()
        .find(|f| !f.message.starts_with("wrong result"))
    {
        panic!("{f}\n{script}");
    }
    slt::complete(script, &r.outputs)
}

fn check_on(target: &mut dyn Target, seed: u64, script: &str) {
    let r = slt::run_script(target, Path::new("gen.test"), script, &RunConfig::default());
    assert!(
        r.failures.is_empty(),
        "seed {seed} on {}: {}",
        target.name(),
        r.failures[0]
    );
    assert!(r.passed > 20, "seed {seed}: {}", r.summary_line());
    println!("seed {seed} on {}: {}", target.name(), r.summary_line());
}

const SEEDS: std::ops::Range<u64> = 1..9;

#[test]
fn generated_scripts_match_stock_sqlite_on_memory_and_redb() {
    let dir = tempfile::tempdir().unwrap();
    let redb = Arc::new(RedbStore::open(dir.path().join("kv.redb"), KvLimits::default()).unwrap());
    let mut memory = KvTarget::new(Arc::new(MemoryStore::new()));
    let mut redb = KvTarget::new(redb);
    for seed in SEEDS {
        let script = complete_on_native(&generate(seed, 80));
        assert!(script.contains("values hashing to"), "seed {seed}");
        check_on(&mut memory, seed, &script);
        check_on(&mut redb, seed, &script);
    }
}

/// Completion writes exactly the outputs and keeps everything else; a completed script passes
/// where it was completed, and a changed value then fails at its record.
#[test]
fn completion_round_trip() {
    let script =
        "# c\nstatement ok\nCREATE TABLE t(a)\n\nstatement ok\nINSERT INTO t VALUES(1),(2)\n\n\
                  query I nosort\nSELECT a FROM t ORDER BY a\n----\n7\n\nquery T\nSELECT 'x'\n";
    let done = complete_on_native(script);
    assert_eq!(
        done,
        "# c\nstatement ok\nCREATE TABLE t(a)\n\nstatement ok\nINSERT INTO t VALUES(1),(2)\n\n\
         query I nosort\nSELECT a FROM t ORDER BY a\n----\n1\n2\n\nquery T\nSELECT 'x'\n----\nx\n"
    );
    let mut native = NativeTarget::new().unwrap();
    let r = slt::run_script(
        &mut native,
        Path::new("c.test"),
        &done,
        &RunConfig::default(),
    );
    assert_eq!((r.passed, r.failed), (4, 0));
    let broken = done.replace("----\n1\n2\n", "----\n1\n3\n");
    let r = slt::run_script(
        &mut native,
        Path::new("c.test"),
        &broken,
        &RunConfig::default(),
    );
    assert_eq!((r.passed, r.failed, r.failures[0].line), (3, 1, 8));
}

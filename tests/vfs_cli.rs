//! The VFS's command-line surface: `kvsqlite kv files` and `kvsqlite bench commit --json`.

use std::process::{Command, Output};
use std::sync::Arc;

use kvsqlite::kv::redb_store::RedbStore;
use kvsqlite::kv::{KvLimits, SharedStore};
use kvsqlite::vfs::{open_database, OpenOptions};

fn kvsqlite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(args)
        .env_remove("KVSQLITE_KV")
        .output()
        .unwrap()
}

#[test]
fn kv_files_decodes_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let store: SharedStore = Arc::new(RedbStore::open(&path, KvLimits::default()).unwrap());
        let db = open_database(store, "files", &OpenOptions::default()).unwrap();
        db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
    }
    let url = format!("redb:{}", path.display());
    let out = kvsqlite(&["--kv", &url, "kv", "files", "--actor", "files"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        "main     size 8192 bytes, chunk size 4096, 2 chunks (0 in stages), 2 chunk keys, 0 missing, 0 malformed, 0 past the end\n\
         journal  absent\n\
         stages   none\n"
    );
    let out = kvsqlite(&["--kv", &url, "kv", "files", "--actor", "nobody"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "main     absent\njournal  absent\nstages   none\n"
    );
}

#[test]
fn bench_commit_prints_round_trips_as_json() {
    let out = kvsqlite(&["--kv", "memory:", "bench", "commit", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.trim();
    assert!(text.starts_with("[{") && text.ends_with("}]"), "{text}");
    let objects: Vec<&str> = text[2..text.len() - 2].split("},{").collect();
    assert_eq!(objects.len(), 7, "{text}");
    let field = |o: &str, name: &str| -> u64 {
        let start = o.find(&format!("\"{name}\":")).unwrap() + name.len() + 3;
        o[start..]
            .split([',', '}'])
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap() as u64
    };
    let rows: Vec<u64> = objects.iter().map(|o| field(o, "rows")).collect();
    assert_eq!(rows, vec![1, 10, 100, 1000, 10000, 2000, 1]);
    let rts: Vec<u64> = objects.iter().map(|o| field(o, "kv_round_trips")).collect();
    let pages: Vec<u64> = objects.iter().map(|o| field(o, "pages_written")).collect();
    // The README's table exactly: one put each within the limits; 10,000 rows (273 pages) and
    // 8 MB (2,007 pages) in ⌈(pages + 1)/128⌉ (pages staged 128 to a put, the commit record
    // riding in the last); the small transaction right after the big one: one round trip again.
    assert_eq!(rts, vec![1, 1, 1, 1, 3, 16, 1], "{text}");
    assert_eq!(pages, vec![2, 2, 6, 30, 273, 2007, 3], "{text}");
    for i in [4, 5] {
        assert_eq!(rts[i], (pages[i] + 1).div_ceil(128), "{}", objects[i]);
    }
}

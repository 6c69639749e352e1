//! Bounded memory: 5,000 distinct actors touched once each through a host with
//! `--max-awake 64` on a temporary redb file. The host's peak gauge `kvsqlite_actors_awake_peak`
//! (taken where each wake reserves its place, so nothing slips between samples) is exactly 64,
//! every actor's data is intact afterwards, and the host's
//! peak RSS (VmHWM) stays under [`RSS_BOUND_MIB`] (which includes redb's page cache).

#[path = "common/serve.rs"]
mod serve;

use std::sync::Arc;

use serde_json::json;
use serve::{Server, ADMIN};

const ACTORS: usize = 5_000;
const MAX_AWAKE: usize = 64;
const THREADS: usize = 8;
/// The bound on the host's peak resident set. Measured on the 2-core development machine:
/// 84 MiB after 1,500 actors and 175 MiB after 5,000. The growth is not the actors (at most 64
/// awake; sleeping ones leave only a bounded cache of metrics documents) but redb's own page
/// cache (1 GiB by default), which keeps the pages of a file that grows to about 45 KiB per
/// actor. 256 MiB states that bound with some room.
const RSS_BOUND_MIB: u64 = 256;

fn each_actor(base: &str, f: impl Fn(&ureq::Agent, &str, usize) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let base = base.to_string();
            let f = f.clone();
            std::thread::spawn(move || {
                let agent = serve::agent();
                for i in (t..ACTORS).step_by(THREADS) {
                    f(&agent, &base, i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
}

#[test]
fn five_thousand_actors_with_max_awake_64_stay_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kv = format!("redb:{}", dir.path().join("kv.redb").display());
    let s = Server::start(&kv, &["--max-awake", &MAX_AWAKE.to_string()]);

    each_actor(&s.base, |agent, base, i| {
        let body = json!({"statements": [
            {"sql": "CREATE TABLE t(v INTEGER, s TEXT)"},
            {"sql": "INSERT INTO t VALUES (?, ?)", "params": [i, format!("actor {i}")]},
        ]});
        let (st, text) = serve::post(
            agent,
            base,
            &format!("/actors/m-{i}/batch"),
            Some(ADMIN),
            &body.to_string(),
        );
        assert_eq!(st, 200, "m-{i}: {text}");
    });
    let after_writes = s.metrics();
    assert_eq!(after_writes["kvsqlite_creations_total"], ACTORS as f64);
    assert!(after_writes["kvsqlite_actors_awake"] <= MAX_AWAKE as f64);
    assert!(after_writes["kvsqlite_sleeps_total"] >= (ACTORS - MAX_AWAKE) as f64);

    // Every actor's data, read back (each read wakes a sleeping actor).
    each_actor(&s.base, |agent, base, i| {
        let body = json!({"sql": "SELECT v, s FROM t"}).to_string();
        let (st, text) = serve::post(
            agent,
            base,
            &format!("/actors/m-{i}/query"),
            Some(ADMIN),
            &body,
        );
        assert_eq!(st, 200, "m-{i}: {text}");
        let out: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(out["rows"], json!([[i, format!("actor {i}")]]), "m-{i}");
    });
    let m = s.metrics();
    let hwm_mib = s.vm_hwm_kib() / 1024;
    let file_mib = std::fs::metadata(dir.path().join("kv.redb"))
        .map(|m| m.len())
        .unwrap_or(0)
        >> 20;
    println!(
        "memory: {ACTORS} actors, max-awake {MAX_AWAKE}: actors_awake peaked at {}; \
         wakes {}, sleeps {}; peak RSS (VmHWM) {hwm_mib} MiB (bound {RSS_BOUND_MIB} MiB); redb file {file_mib} MiB",
        m["kvsqlite_actors_awake_peak"], m["kvsqlite_wakes_total"], m["kvsqlite_sleeps_total"]
    );
    assert_eq!(m["kvsqlite_actors_awake_peak"], MAX_AWAKE as f64);
    assert!(m["kvsqlite_actors_awake"] <= MAX_AWAKE as f64);
    assert!(hwm_mib < RSS_BOUND_MIB, "peak RSS {hwm_mib} MiB");
    let (status, stderr) = s.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
}

//! Measures the per-call cost of the PostgreSQL backend: a put of 128 × 4 KiB entries and a
//! get of those 128 keys, a mixed batch read and a one-page put, each one exchange. Not a test: it prints numbers.
//!
//! ```sh
//! cargo run --release --example postgres_cost -- [URL] [ITERATIONS]
//! ```
//! URL defaults to `KVSQLITE_TEST_POSTGRES` or `postgres://postgres@127.0.0.1:5432/test`.

use std::time::{Duration, Instant};

use kvsqlite::kv::postgres::PostgresStore;
use kvsqlite::kv::{KvError, KvStore, ListRequest, ReadOp};
use kvsqlite::rng::Rng;

/// Stops the measurement on a store error: one line, exit code 2 (the rows this run wrote stay
/// under its `bench-PID` actor).
fn fail<T>(what: &str, e: KvError) -> T {
    eprintln!("postgres_cost: {what} failed: {e}");
    std::process::exit(2)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| {
        std::env::var("KVSQLITE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    });
    // Exit codes as the kvsqlite command's: 2 when it cannot run.
    let iterations: usize = match args.next() {
        None => 200,
        Some(n) => match n.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("postgres_cost: ITERATIONS must be a positive integer, got {n:?}");
                std::process::exit(2);
            }
        },
    };
    let store = match PostgresStore::connect(&url) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postgres_cost: {e}");
            std::process::exit(2);
        }
    };
    let actor = format!("bench-{}", std::process::id());
    let mut rng = Rng::new(42);
    let keys: Vec<Vec<u8>> = (0u32..128).map(|i| i.to_be_bytes().to_vec()).collect();

    let mut put = Vec::with_capacity(iterations);
    let mut get = Vec::with_capacity(iterations);
    let mut batch = Vec::with_capacity(iterations);
    let mut small = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        // Random pages: incompressible, like real SQLite pages.
        let entries: Vec<_> = keys.iter().map(|k| (k.clone(), rng.bytes(4096))).collect();
        let t = Instant::now();
        store
            .put(&actor, entries)
            .unwrap_or_else(|e| fail("put", e));
        put.push(t.elapsed());
        let t = Instant::now();
        let got = store.get(&actor, &keys).unwrap_or_else(|e| fail("get", e));
        get.push(t.elapsed());
        if !got.iter().all(|v| v.as_ref().map(Vec::len) == Some(4096)) {
            fail::<()>(
                "get",
                KvError::Backend {
                    backend: "postgres",
                    message: "a value read back is not the 4 KiB page just written".into(),
                },
            );
        }
        let t = Instant::now();
        store
            .batch_read(
                &actor,
                &[
                    ReadOp::Get(keys[..4].to_vec()),
                    ReadOp::List(ListRequest::prefix(Vec::new()).with_max_bytes(64 * 4100)),
                ],
            )
            .unwrap_or_else(|e| fail("batch_read", e));
        batch.push(t.elapsed());
        let page = vec![(keys[0].clone(), rng.bytes(4096))];
        let t = Instant::now();
        store
            .put(&actor, page)
            .unwrap_or_else(|e| fail("small put", e));
        small.push(t.elapsed());
    }
    let exchanges = store.exchanges();
    store
        .delete_range(&actor, &[], None)
        .unwrap_or_else(|e| fail("cleanup", e));
    report("put 128 x 4 KiB", &mut put);
    report("get 128 keys", &mut get);
    report("batch: get 4 + list 64 pages", &mut batch);
    report("put 1 x 4 KiB", &mut small);
    println!(
        "exchanges: {exchanges} for {} calls; connections opened: {}",
        4 * iterations,
        store.connections_opened()
    );
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    println!(
        "{what:32} mean {:7.3} ms  p50 {:7.3} ms  p99 {:7.3} ms  ({} calls)",
        mean,
        ms(samples[samples.len() / 2]),
        ms(samples[(samples.len() * 99 / 100).min(samples.len() - 1)]),
        samples.len()
    );
}

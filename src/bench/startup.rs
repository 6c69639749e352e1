//! `kvsqlite bench startup`: what waking an actor costs, against creating one and against a
//! naive wake that reads everything it needs one request at a time.
//!
//! Why it exists: the wake is where round trips are won or lost (one for an existing actor, two
//! for a new one); this benchmark shows it on any store, with `--rtt` turning round trips into
//! wall time.
//!
//! Workload: an actor is created with the example chat app's migrations (`sql/migrations`,
//! embedded, so the benchmark runs from any directory) plus about `db_kib` KiB of extra messages,
//! then slept. Then, each measured once:
//! - `existing`: [`Actor::start`] of that actor (its round trips are the ones the actor's own
//!   counting wrapper saw during the start: the background fetch of hinted pages is reported
//!   apart, as `prefetch_round_trips`);
//! - `new`: [`Actor::start`] of a fresh actor with the same migrations;
//! - `naive_existing`: the same existing actor opened with plain [`open_database`] (no
//!   preload), then its state and inspector token read with one `get` each and the migrations'
//!   [`pending`](crate::actor::migrations::pending) check run: every read its own round trip,
//!   counted by a [`CountingStore`] around the store.
//!
//! Both actors are deleted from the store afterwards (also when a step failed).
//!
//! [`sweep`] repeats all of it over database sizes and simulated RTTs (a latency wrapper), for
//! wake time against RTT.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::actor::migrations::{self, Migration};
use crate::actor::records;
use crate::actor::{Actor, ActorConfig};
use crate::kv::counting::CountingStore;
use crate::kv::SharedStore;
use crate::vfs::{open_database, OpenOptions};

/// The example app's migrations, embedded.
const MIGRATIONS: [(&str, &str); 3] = [
    (
        "0001_users_rooms_members.sql",
        include_str!("../../sql/migrations/0001_users_rooms_members.sql"),
    ),
    (
        "0002_messages.sql",
        include_str!("../../sql/migrations/0002_messages.sql"),
    ),
    (
        "0003_seed_history.sql",
        include_str!("../../sql/migrations/0003_seed_history.sql"),
    ),
];

/// Bytes of each extra message body (so `db_kib` KiB is about `db_kib` messages).
const FILLER_BODY_BYTES: usize = 1000;

/// The example app's migrations (`sql/migrations`, embedded at build time).
pub fn example_migrations() -> Result<Vec<Migration>, String> {
    MIGRATIONS
        .iter()
        .map(|(name, sql)| Migration::new(name, *sql).map_err(|e| e.to_string()))
        .collect()
}

/// One measured start.
#[derive(Clone, Debug, PartialEq)]
pub struct StartMeasure {
    /// KV round trips of the start, counted at the KV call.
    pub kv_round_trips: u64,
    /// Wall time of the start, in milliseconds.
    pub wall_ms: f64,
    /// Phase timings in the order they ran: (name, milliseconds).
    pub phases: Vec<(String, f64)>,
    /// Round trips of the background fetch of hinted pages (not part of the start), when the
    /// start was an [`Actor::start`].
    pub prefetch_round_trips: Option<u64>,
}

impl StartMeasure {
    /// `{"kv_round_trips", "wall_ms", "phases_ms": {name: ms}, ["prefetch_round_trips"]}`.
    pub fn to_json(&self) -> Value {
        let mut phases = Map::new();
        for (name, ms) in &self.phases {
            phases.insert(name.clone(), json!(round3(*ms)));
        }
        let mut o = Map::new();
        o.insert("kv_round_trips".into(), json!(self.kv_round_trips));
        o.insert("wall_ms".into(), json!(round3(self.wall_ms)));
        o.insert("phases_ms".into(), Value::Object(phases));
        if let Some(p) = self.prefetch_round_trips {
            o.insert("prefetch_round_trips".into(), json!(p));
        }
        Value::Object(o)
    }
}

/// The three measures of `bench startup`.
#[derive(Clone, Debug, PartialEq)]
pub struct StartupBench {
    /// Waking the existing actor.
    pub existing: StartMeasure,
    /// Creating a fresh actor with the migrations.
    pub new: StartMeasure,
    /// Opening the existing actor without preload, one request per read.
    pub naive_existing: StartMeasure,
}

impl StartupBench {
    /// `{"existing": {...}, "new": {...}, "naive_existing": {...}}`.
    pub fn to_json(&self) -> Value {
        json!({
            "existing": self.existing.to_json(),
            "new": self.new.to_json(),
            "naive_existing": self.naive_existing.to_json(),
        })
    }
}

fn round3(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Runs the benchmark on `store` with about `db_kib` KiB of extra data in the existing actor.
pub fn run(store: SharedStore, db_kib: u64) -> Result<StartupBench, String> {
    let suffix = unique_suffix();
    let existing_id = format!("bench-startup-{suffix}-existing");
    let new_id = format!("bench-startup-{suffix}-new");
    let result = measure(&store, &existing_id, &new_id, db_kib);
    let mut cleanup = Ok(());
    for id in [&existing_id, &new_id] {
        if let Err(e) = store.delete_range(id, &[], None) {
            cleanup = Err(format!("deleting the benchmark's actor {id:?} failed: {e}"));
        }
    }
    let out = result?;
    cleanup.map_err(|e| format!("benchmark ran, but {e}"))?;
    Ok(out)
}

/// The RTTs of a sweep when none are given, in milliseconds.
pub const SWEEP_RTTS_MS: [f64; 5] = [0.0, 1.0, 5.0, 10.0, 20.0];

/// The database sizes of a sweep when none are given, in KiB.
pub const SWEEP_DB_KIB: [u64; 3] = [64, 256, 1024];

/// One point of a sweep: a database size, an RTT, and the three starts measured there.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPoint {
    /// KiB of extra data in the existing actor.
    pub db_kib: u64,
    /// The simulated round-trip time, in milliseconds.
    pub rtt_ms: f64,
    /// The starts.
    pub bench: StartupBench,
}

impl SweepPoint {
    /// `{"db_kb", "rtt_ms", "existing", "new", "naive_existing", "existing_wall_per_rtt"}`
    /// (the last is `null` at 0 ms).
    pub fn to_json(&self) -> Value {
        let mut v = self.bench.to_json();
        v["db_kb"] = json!(self.db_kib);
        v["rtt_ms"] = json!(self.rtt_ms);
        v["existing_wall_per_rtt"] = if self.rtt_ms > 0.0 {
            json!(round3(self.bench.existing.wall_ms / self.rtt_ms))
        } else {
            Value::Null
        };
        v
    }
}

/// Runs [`run`] at every database size of `sizes_kib` and every RTT of `rtts_ms` (a latency
/// wrapper around `store`, which should have none of its own). `progress` is called with
/// (points done, points in all, the point about to run).
pub fn sweep(
    store: &SharedStore,
    sizes_kib: &[u64],
    rtts_ms: &[f64],
    progress: &dyn Fn(usize, usize, &str),
) -> Result<Vec<SweepPoint>, String> {
    let all = sizes_kib.len() * rtts_ms.len();
    let mut out = Vec::with_capacity(all);
    for &db_kib in sizes_kib {
        for &rtt_ms in rtts_ms {
            if !(rtt_ms.is_finite() && rtt_ms >= 0.0) {
                return Err(format!("RTT {rtt_ms} ms is not a number of milliseconds"));
            }
            progress(out.len(), all, &format!("{db_kib} KiB at {rtt_ms} ms"));
            let s: SharedStore = if rtt_ms > 0.0 {
                std::sync::Arc::new(crate::kv::latency::LatencyStore::new(
                    store.clone(),
                    std::time::Duration::from_secs_f64(rtt_ms / 1000.0),
                ))
            } else {
                store.clone()
            };
            out.push(SweepPoint {
                db_kib,
                rtt_ms,
                bench: run(s, db_kib)?,
            });
        }
    }
    progress(all, all, "done");
    Ok(out)
}

fn measure(
    store: &SharedStore,
    existing_id: &str,
    new_id: &str,
    db_kib: u64,
) -> Result<StartupBench, String> {
    let list = example_migrations()?;
    let config = ActorConfig::default().with_migrations(list.clone());
    let e = |e: crate::actor::ActorError| e.to_string();

    // The existing actor: created, filled, slept.
    let actor = Actor::start(store.clone(), existing_id, &config).map_err(e)?;
    fill(&actor, db_kib).map_err(|e| format!("filling the benchmark's actor: {e}"))?;
    actor.sleep().map_err(e)?;

    let existing = measure_actor(store, existing_id, &config)?;
    let new = measure_actor(store, new_id, &config)?;
    let naive_existing = measure_naive(store, existing_id, &list)?;
    Ok(StartupBench {
        existing,
        new,
        naive_existing,
    })
}

/// Adds `kib` messages of [`FILLER_BODY_BYTES`] bytes to #general, in one transaction.
fn fill(actor: &Actor, kib: u64) -> rusqlite::Result<()> {
    let db = actor.db();
    db.execute_batch("BEGIN")?;
    {
        let mut st = db.prepare(
            "INSERT INTO messages(room_id, author_id, body, sent_at) \
             VALUES (1, 1 + (?1 % 5), printf('%.*c', ?2, 'x'), 1767300000 + ?1)",
        )?;
        for i in 0..kib as i64 {
            st.execute([i, FILLER_BODY_BYTES as i64])?;
        }
    }
    db.execute_batch("COMMIT")
}

fn measure_actor(
    store: &SharedStore,
    id: &str,
    config: &ActorConfig,
) -> Result<StartMeasure, String> {
    let t = Instant::now();
    let mut actor = Actor::start(store.clone(), id, config).map_err(|e| e.to_string())?;
    let wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    actor.wait_prefetch();
    let report = actor.startup();
    let prefetch = actor
        .metrics()
        .get("startup_prefetch_round_trips")
        .and_then(|m| m.value.to_json().as_u64());
    let m = StartMeasure {
        kv_round_trips: report.kv_round_trips,
        wall_ms,
        phases: report
            .phases
            .iter()
            .map(|p| (p.name.to_string(), p.ms))
            .collect(),
        prefetch_round_trips: prefetch,
    };
    actor.sleep().map_err(|e| e.to_string())?;
    Ok(m)
}

fn measure_naive(
    store: &SharedStore,
    id: &str,
    list: &[Migration],
) -> Result<StartMeasure, String> {
    let counting = CountingStore::wrap(store.clone());
    let shared: SharedStore = counting.shared();
    let mut phases = Vec::new();
    let mut phase = |name: &str, t: Instant| {
        phases.push((name.to_string(), t.elapsed().as_secs_f64() * 1000.0));
    };
    let start = Instant::now();
    let t = Instant::now();
    let db = open_database(shared.clone(), id, &OpenOptions::default())
        .map_err(|e| format!("naive open: {e}"))?;
    phase("open_database", t);
    let t = Instant::now();
    shared
        .get(id, &[records::state_key()])
        .map_err(|e| format!("naive state read: {e}"))?;
    phase("read_state", t);
    let t = Instant::now();
    shared
        .get(id, &[records::token_key()])
        .map_err(|e| format!("naive token read: {e}"))?;
    phase("read_token", t);
    let t = Instant::now();
    let pending =
        migrations::pending(&db, list).map_err(|e| format!("naive migrations check: {e}"))?;
    phase("db_migrate", t);
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    if !pending.is_empty() {
        return Err(format!(
            "naive migrations check: {} migration(s) pending on an existing actor",
            pending.len()
        ));
    }
    drop(db);
    Ok(StartMeasure {
        kv_round_trips: counting.snapshot().round_trips(),
        wall_ms,
        phases,
        prefetch_round_trips: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_migrations_are_the_example_apps() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/migrations");
        let on_disk = migrations::load_dir(&dir).unwrap();
        assert_eq!(example_migrations().unwrap(), on_disk);
    }

    #[test]
    fn a_wake_costs_one_round_trip_a_creation_two_and_the_actors_are_deleted() {
        let mem = std::sync::Arc::new(crate::kv::memory::MemoryStore::new());
        let store: SharedStore = mem.clone();
        let b = run(store.clone(), 64).unwrap();
        assert_eq!(b.existing.kv_round_trips, 1, "{b:?}");
        assert_eq!(b.new.kv_round_trips, 2, "{b:?}");
        assert!(b.naive_existing.kv_round_trips > 1, "{b:?}");
        let names: Vec<&str> = b
            .naive_existing
            .phases
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            names,
            ["open_database", "read_state", "read_token", "db_migrate"]
        );
        assert!(b
            .existing
            .phases
            .iter()
            .any(|(n, _)| n == "check_persist_data"));
        assert_eq!(mem.dump(), Vec::new(), "the benchmark's actors are deleted");
    }

    #[test]
    fn json_has_the_three_measures() {
        let m = StartMeasure {
            kv_round_trips: 1,
            wall_ms: 0.12345,
            phases: vec![("check_persist_data".into(), 0.1)],
            prefetch_round_trips: Some(0),
        };
        let b = StartupBench {
            existing: m.clone(),
            new: m.clone(),
            naive_existing: StartMeasure {
                prefetch_round_trips: None,
                ..m
            },
        };
        assert_eq!(
            b.to_json()["existing"],
            json!({"kv_round_trips": 1, "wall_ms": 0.123, "phases_ms": {"check_persist_data": 0.1}, "prefetch_round_trips": 0})
        );
        assert!(b.to_json()["naive_existing"]
            .get("prefetch_round_trips")
            .is_none());
    }
}

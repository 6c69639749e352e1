//! Alarms (issue 21, part 1): stored in the actor's table and a sharded due index; a tick
//! wakes a sleeping actor whose alarm is due, fires it once in effect (the handler's writes and
//! the alarm's deletion in one commit), and lets it sleep again; a wake with alarms stays one
//! round trip; a crash at every KV call of schedule and fire leaves the index covering the
//! table and no alarm fired twice in effect. Times are explicit (no test waits on a clock).

use std::sync::Arc;

use kvsqlite::actor::alarms::{self, Alarm};
use kvsqlite::actor::{Actor, ActorConfig, ActorError, HookError, Migration};
use kvsqlite::kv::counting::{CountingStore, OpKind};
use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
use kvsqlite::metrics::MetricValue;
use kvsqlite::vfs::Database;

const T: u64 = 1_700_000_000_000;

fn config() -> ActorConfig {
    let mut c = ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_log.sql",
        "CREATE TABLE log(id INTEGER PRIMARY KEY, name TEXT NOT NULL, payload BLOB NOT NULL);",
    )
    .unwrap()]);
    c.alarms = true;
    c.strict = true;
    c
}

fn log_handler(db: &Database, a: &Alarm) -> Result<(), HookError> {
    db.execute(
        "INSERT INTO log(name, payload) VALUES (?1, ?2)",
        rusqlite::params![a.name, a.payload],
    )?;
    Ok(())
}

/// A host's tick in library form: wake each listed actor, fire, sleep it again.
fn tick(store: &SharedStore, now: u64) -> alarms::TickReport {
    alarms::tick(store, now, 1000, |id, ats| {
        let a = Actor::start(store.clone(), id, &config())?;
        a.fire_and_clear(now, ats, &mut log_handler)?;
        a.sleep()
    })
    .unwrap()
}

fn log_rows(a: &Actor) -> Vec<(String, Vec<u8>)> {
    let mut st = a
        .db()
        .prepare("SELECT name, payload FROM log ORDER BY id")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn an_alarm_fires_once_on_a_sleeping_actor_at_its_tick_and_the_actor_sleeps_again() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = Actor::start(store.clone(), "a1", &config()).unwrap();
    let id = a.schedule_at(T + 500, "digest", b"p1").unwrap();
    assert_eq!(a.next_alarm(), Some(T + 500));
    assert_eq!(
        a.alarms().unwrap(),
        vec![Alarm {
            id,
            at_ms: T + 500,
            name: "digest".into(),
            payload: b"p1".to_vec(),
            attempts: 0
        }]
    );
    a.sleep().unwrap();

    // Not due yet: nobody is woken.
    assert_eq!(tick(&store, T + 499).actors, Vec::<String>::new());
    // Due: woken, fired, asleep again (a fresh start would fail with AlreadyRunning otherwise).
    assert_eq!(tick(&store, T + 500).actors, vec!["a1".to_string()]);
    // The index entry is gone: the next tick finds nothing.
    assert_eq!(tick(&store, T + 10_000).actors, Vec::<String>::new());
    assert_eq!(
        alarms::list_due(&store, u64::MAX >> 1, 100).unwrap(),
        vec![]
    );

    let a = Actor::start(store.clone(), "a1", &config()).unwrap();
    assert_eq!(log_rows(&a), vec![("digest".to_string(), b"p1".to_vec())]);
    assert_eq!(a.alarms().unwrap(), vec![]);
    assert_eq!(a.next_alarm(), None);
}

#[test]
fn a_wake_with_pending_alarms_is_one_round_trip_and_arms_the_earliest() {
    let mem = Arc::new(MemoryStore::new());
    let a = Actor::start(mem.clone(), "a2", &config()).unwrap();
    a.schedule_at(T + 300, "b", b"").unwrap();
    a.schedule_at(T + 200, "a", b"").unwrap();
    a.sleep().unwrap();

    let counting = CountingStore::wrap(mem.clone());
    let a = Actor::start(counting.shared(), "a2", &config()).unwrap();
    let c = counting.snapshot();
    assert_eq!(
        (c.round_trips(), c.op(OpKind::BatchRead).calls),
        (1, 1),
        "{c:?}"
    );
    assert_eq!(a.startup().kv_round_trips, 1);
    assert_eq!(a.next_alarm(), Some(T + 200));
    let doc = a.metrics();
    assert!(doc.get("startup_internal_init_alarms_ms").is_some());
    assert_eq!(doc.get("alarm_retries").unwrap().value, MetricValue::Int(0));

    // Without alarms configured the phase and its gauge are absent.
    let mut plain = config();
    plain.alarms = false;
    a.sleep().unwrap();
    let a = Actor::start(mem.clone(), "a2", &plain).unwrap();
    assert!(a.metrics().get("startup_internal_init_alarms_ms").is_none());
    assert!(a.metrics().get("alarm_retries").is_none());
}

#[test]
fn a_cancel_committed_with_other_writes_wins_over_a_due_alarm() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = Actor::start(store.clone(), "a3", &config()).unwrap();
    let due = a.schedule_at(T, "due", b"").unwrap();
    // Scheduled and cancelled in one transaction: never fires either.
    a.db().execute_batch("BEGIN").unwrap();
    let both = a.schedule_at(T, "both", b"").unwrap();
    assert!(a.cancel(due).unwrap());
    assert!(a.cancel(both).unwrap());
    a.db()
        .execute("INSERT INTO log(name, payload) VALUES ('user', x'')", [])
        .unwrap();
    a.db().execute_batch("COMMIT").unwrap();
    assert!(!a.cancel(due).unwrap());
    a.sleep().unwrap();

    // The stale index entry wakes the actor once; nothing runs, and the entry goes.
    assert_eq!(tick(&store, T + 1).actors, vec!["a3".to_string()]);
    assert_eq!(tick(&store, T + 2).actors, Vec::<String>::new());
    let a = Actor::start(store.clone(), "a3", &config()).unwrap();
    assert_eq!(log_rows(&a), vec![("user".to_string(), Vec::new())]);
}

#[test]
fn a_failing_handler_is_rolled_back_and_retried_with_a_backoff_and_counted() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = Actor::start(store.clone(), "a4", &config()).unwrap();
    a.schedule_at(T, "flaky", b"").unwrap();
    let mut fail = |db: &Database, _: &Alarm| -> Result<(), HookError> {
        db.execute("INSERT INTO log(name, payload) VALUES ('half', x'')", [])?;
        Err("downstream refused".into())
    };
    let r = a.fire_due_alarms(T, &mut fail).unwrap();
    assert_eq!((r.fired.len(), r.failed.len()), (0, 1));
    assert_eq!(r.next_ms, Some(T + 1_000));
    let r = a.fire_due_alarms(T + 1_000, &mut fail).unwrap();
    assert_eq!(r.next_ms, Some(T + 1_000 + 2_000));
    assert_eq!(a.alarm_retries(), 2);
    assert_eq!(a.alarms().unwrap()[0].attempts, 2);
    // Nothing of the failed attempts stayed.
    assert_eq!(log_rows(&a), vec![]);
    a.sleep().unwrap();

    // The index entries of the failed attempts wake the actor before the backoff ends, but
    // nothing is due yet (fire_due_alarms, unlike a tick, leaves them); due after it, the
    // alarm fires once.
    assert_eq!(tick(&store, T + 2_999).actors, vec!["a4".to_string()]);
    assert_eq!(tick(&store, T + 2_999).actors, Vec::<String>::new());
    let a = Actor::start(store.clone(), "a4", &config()).unwrap();
    assert_eq!(log_rows(&a), vec![]);
    a.sleep().unwrap();
    assert_eq!(tick(&store, T + 3_000).actors, vec!["a4".to_string()]);
    let a = Actor::start(store.clone(), "a4", &config()).unwrap();
    assert_eq!(log_rows(&a), vec![("flaky".to_string(), Vec::new())]);
    // The counters are this instance's (it fired nothing).
    assert_eq!(
        a.metrics().get("alarms_fired").unwrap().value,
        MetricValue::Int(0)
    );
}

#[test]
fn reserved_namespaces_are_refused_as_actor_ids() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let e = Actor::start(store, &alarms::shard_namespace(3), &config()).unwrap_err();
    assert!(matches!(e, ActorError::InvalidActor(_)), "{e}");
}

/// Every alarm row has a due-index entry at or before its time.
fn assert_index_covers_table(mem: &Arc<MemoryStore>, id: &str) {
    let store: SharedStore = mem.clone();
    let index: Vec<u64> = alarms::list_due(&store, u64::MAX >> 1, 1000)
        .unwrap()
        .into_iter()
        .filter(|(_, _, a)| a == id)
        .map(|(_, at, _)| at)
        .collect();
    let mut c = config();
    c.strict = false;
    let a = Actor::start(store, id, &c).unwrap();
    for alarm in a.alarms().unwrap() {
        assert!(
            index.iter().any(|&at| at <= alarm.at_ms),
            "alarm {alarm:?} has no index entry (index {index:?})"
        );
    }
    a.sleep().unwrap();
}

#[test]
fn a_crash_at_every_kv_call_of_schedule_and_fire_keeps_the_index_covering_the_table_and_fires_at_most_once(
) {
    for write in [CrashWrite::Apply, CrashWrite::Discard] {
        let mut k = 1;
        loop {
            let mem = Arc::new(MemoryStore::new());
            Actor::start(mem.clone(), "c", &config())
                .unwrap()
                .sleep()
                .unwrap();
            let faults = FaultStore::wrap(mem.clone(), FaultPlan::none().crash_at(k, write));
            let fs = faults.shared();
            let mut acked = false;
            let mut c = config();
            c.strict = false;
            if let Ok(a) = Actor::start(fs.clone(), "c", &c) {
                acked = a.schedule_at(T, "once", b"x").is_ok();
                let _ = a.sleep();
                let _ = alarms::tick(&fs, T, 1000, |id, ats| {
                    let a = Actor::start(fs.clone(), id, &c)?;
                    a.fire_and_clear(T, ats, &mut log_handler)?;
                    a.sleep()
                });
            }
            let crashed = faults.is_crashed();
            drop(faults);
            assert_index_covers_table(&mem, "c");
            // After the "restart", ticks fire what is left; nothing fires twice.
            let store: SharedStore = mem.clone();
            tick(&store, T);
            assert_eq!(tick(&store, T + 1).actors, Vec::<String>::new(), "k={k}");
            let a = Actor::start(store.clone(), "c", &config()).unwrap();
            let n = log_rows(&a).len();
            assert!(n <= 1, "k={k} {write:?}: fired {n} times");
            if acked {
                assert_eq!(n, 1, "k={k} {write:?}: an acknowledged alarm must fire");
            }
            assert_eq!(a.alarms().unwrap(), vec![], "k={k} {write:?}");
            a.sleep().unwrap();
            if !crashed {
                assert!(k > 3, "the loop must have crashed somewhere");
                break;
            }
            k += 1;
        }
    }
}

#[test]
fn a_handler_that_commits_on_its_own_still_fires_once() {
    let store: SharedStore = Arc::new(MemoryStore::new());
    let a = Actor::start(store.clone(), "a5", &config()).unwrap();
    a.schedule_at(T, "self-committing", b"").unwrap();
    let mut commits = |db: &Database, al: &Alarm| -> Result<(), HookError> {
        log_handler(db, al)?;
        db.execute_batch("COMMIT")?;
        Ok(())
    };
    let r = a.fire_due_alarms(T, &mut commits).unwrap();
    assert_eq!((r.fired.len(), r.next_ms), (1, None));
    assert_eq!(
        a.fire_due_alarms(T, &mut commits).unwrap().fired,
        Vec::<i64>::new()
    );
    assert_eq!(log_rows(&a).len(), 1);
}

//! The durable queue (issue 21, part 2): enqueueing is one put that wakes nobody; a sleeping
//! actor takes its messages from its one wake round trip; each is handled once in effect, in
//! order, across a crash at every KV call of a drain; a wake with alarms and a queue is still
//! exactly one round trip.

use std::sync::Arc;

use kvsqlite::actor::queue::{self, Message};
use kvsqlite::actor::{Actor, ActorConfig, HookError, Migration};
use kvsqlite::kv::counting::{CountingStore, OpKind};
use kvsqlite::kv::faults::{CrashWrite, FaultPlan, FaultStore};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::SharedStore;
use kvsqlite::metrics::MetricValue;
use kvsqlite::vfs::Database;

fn config() -> ActorConfig {
    let mut c = ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_log.sql",
        "CREATE TABLE log(id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .unwrap()]);
    c.queue = true;
    c.strict = true;
    c
}

fn handler(db: &Database, m: &Message) -> Result<(), HookError> {
    db.execute(
        "INSERT INTO log(body) VALUES (?1)",
        [String::from_utf8(m.body.clone())?],
    )?;
    Ok(())
}

fn log(a: &Actor) -> Vec<String> {
    let mut st = a.db().prepare("SELECT body FROM log ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn ten_thousand_messages_to_a_hundred_sleeping_actors_wake_none_and_are_each_handled_once_in_order()
{
    let mem = Arc::new(MemoryStore::new());
    let ids: Vec<String> = (0..100).map(|i| format!("q{i:03}")).collect();
    for id in &ids {
        Actor::start(mem.clone(), id, &config())
            .unwrap()
            .sleep()
            .unwrap();
    }
    let fences: Vec<_> = ids
        .iter()
        .map(|id| {
            let s: SharedStore = mem.clone();
            s.get(id, &[b"\x01fence".to_vec()]).unwrap()
        })
        .collect();

    let counting = CountingStore::wrap(mem.clone());
    let store = counting.shared();
    for n in 0..100 {
        for id in &ids {
            queue::enqueue(&store, id, format!("{id}-m{n:03}").as_bytes()).unwrap();
        }
    }
    let c = counting.snapshot();
    // One put each, nothing read: no actor was woken (and no fence changed).
    assert_eq!(
        (
            c.round_trips(),
            c.op(OpKind::Write).calls,
            c.op(OpKind::BatchRead).calls + c.op(OpKind::Get).calls + c.op(OpKind::List).calls
        ),
        (10_000, 10_000, 0)
    );
    for (id, f) in ids.iter().zip(&fences) {
        let s: SharedStore = mem.clone();
        assert_eq!(&s.get(id, &[b"\x01fence".to_vec()]).unwrap(), f);
    }

    for id in &ids {
        let counting = CountingStore::wrap(mem.clone());
        let a = Actor::start(counting.shared(), id, &config()).unwrap();
        assert_eq!(a.startup().kv_round_trips, 1, "{id}");
        assert_eq!(a.queued(), 100);
        let r = a.drain_queue(&mut handler).unwrap();
        assert_eq!((r.handled, r.failed), (100, None));
        let want: Vec<String> = (0..100).map(|n| format!("{id}-m{n:03}")).collect();
        assert_eq!(log(&a), want);
        a.sleep().unwrap();
        // Nothing is left to deliver again.
        let a = Actor::start(mem.clone(), id, &config()).unwrap();
        assert_eq!(a.queued(), 0);
        assert_eq!(a.drain_queue(&mut handler).unwrap().handled, 0);
        assert_eq!(log(&a).len(), 100);
        a.sleep().unwrap();
    }
}

#[test]
fn an_awake_actor_polls_its_queue_in_one_round_trip_and_a_failing_handler_keeps_the_order() {
    let mem = Arc::new(MemoryStore::new());
    let store: SharedStore = mem.clone();
    let a = Actor::start(store.clone(), "p", &config()).unwrap();
    for b in ["one", "two", "three"] {
        Actor::enqueue(&store, "p", b.as_bytes()).unwrap();
    }
    let before = a.kv_round_trips();
    assert_eq!(a.poll_queue().unwrap(), 3);
    assert_eq!(a.kv_round_trips() - before, 1);
    let mut fail_two = |db: &Database, m: &Message| -> Result<(), HookError> {
        if m.body == b"two" {
            db.execute("INSERT INTO log(body) VALUES ('half')", [])?;
            return Err("refused".into());
        }
        handler(db, m)
    };
    let r = a.drain_queue(&mut fail_two).unwrap();
    assert_eq!((r.handled, r.failed.as_deref()), (1, Some("refused")));
    assert_eq!(a.queued(), 2);
    let r = a.drain_queue(&mut handler).unwrap();
    assert_eq!(r.handled, 2);
    assert_eq!(log(&a), ["one", "two", "three"]);
    let doc = a.metrics();
    assert_eq!(doc.get("queue_depth").unwrap().value, MetricValue::Int(0));
    assert_eq!(doc.get("queue_handled").unwrap().value, MetricValue::Int(3));
    assert_eq!(
        doc.get("queue_handler_failures").unwrap().value,
        MetricValue::Int(1)
    );
    assert!(doc.get("queue_oldest_age_ms").is_some());
    a.sleep().unwrap();
    // The KV holds no message any more.
    let page = store
        .list("p", &kvsqlite::kv::ListRequest::prefix(queue::prefix()))
        .unwrap();
    assert_eq!(page.entries, vec![]);
}

#[test]
fn a_wake_with_alarms_and_a_queue_present_is_exactly_one_round_trip() {
    let mem = Arc::new(MemoryStore::new());
    let store: SharedStore = mem.clone();
    let mut c = config();
    c.alarms = true;
    let a = Actor::start(store.clone(), "both", &c).unwrap();
    a.schedule_at(1_700_000_000_000, "x", b"").unwrap();
    a.sleep().unwrap();
    queue::enqueue(&store, "both", b"hello").unwrap();

    let counting = CountingStore::wrap(mem.clone());
    let a = Actor::start(counting.shared(), "both", &c).unwrap();
    let k = counting.snapshot();
    assert_eq!((k.round_trips(), k.op(OpKind::BatchRead).calls), (1, 1));
    assert_eq!(a.queued(), 1);
    assert_eq!(a.next_alarm(), Some(1_700_000_000_000));
    let doc = a.metrics();
    for g in [
        "startup_internal_init_alarms_ms",
        "startup_internal_init_queue_ms",
    ] {
        assert!(doc.get(g).is_some(), "{g}");
    }
}

#[test]
fn a_crash_at_every_kv_call_of_a_drain_delivers_each_message_once_in_effect_and_in_order() {
    let want: Vec<String> = (0..12).map(|i| format!("m{i:02}")).collect();
    for write in [CrashWrite::Apply, CrashWrite::Discard] {
        let mut k = 1;
        loop {
            let mem = Arc::new(MemoryStore::new());
            let store: SharedStore = mem.clone();
            Actor::start(store.clone(), "d", &config())
                .unwrap()
                .sleep()
                .unwrap();
            for m in &want {
                queue::enqueue(&store, "d", m.as_bytes()).unwrap();
            }
            let faults = FaultStore::wrap(mem.clone(), FaultPlan::none().crash_at(k, write));
            let mut c = config();
            c.strict = false;
            if let Ok(a) = Actor::start(faults.shared(), "d", &c) {
                let _ = a.drain_queue(&mut handler);
                let _ = a.sleep();
            }
            let crashed = faults.is_crashed();
            drop(faults);
            // The restart drains what is left.
            let a = Actor::start(store.clone(), "d", &config()).unwrap();
            a.drain_queue(&mut handler).unwrap();
            assert_eq!(log(&a), want, "k={k} {write:?}");
            a.sleep().unwrap();
            let left = store
                .list("d", &kvsqlite::kv::ListRequest::prefix(queue::prefix()))
                .unwrap();
            assert_eq!(left.entries, vec![], "k={k} {write:?}");
            if !crashed {
                assert!(k > 12, "the drain must have crashed somewhere");
                break;
            }
            k += 1;
        }
    }
}

#[test]
fn a_database_past_the_preload_budget_with_alarms_and_a_queue_still_wakes_in_one_round_trip() {
    let mem = Arc::new(MemoryStore::new());
    let store: SharedStore = mem.clone();
    let mut c = config();
    c.alarms = true;
    c.preload_budget = 32 << 10;
    let a = Actor::start(store.clone(), "big", &c).unwrap();
    a.db()
        .execute_batch(
            "CREATE TABLE blobs(b BLOB); INSERT INTO blobs WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100) SELECT randomblob(3000) FROM s;",
        )
        .unwrap();
    // The alarm and done tables' pages lie past the budget's listing.
    a.schedule_at(1_700_000_000_000, "late", b"").unwrap();
    queue::enqueue(&store, "big", b"m").unwrap();
    a.poll_queue().unwrap();
    a.drain_queue(&mut handler).unwrap();
    let pages: i64 = a
        .db()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    assert!(pages * 4096 > 4 * (32 << 10), "{pages} pages");
    a.sleep().unwrap();
    queue::enqueue(&store, "big", b"n").unwrap();

    let counting = CountingStore::wrap(mem.clone());
    let a = Actor::start(counting.shared(), "big", &c).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1);
    assert_eq!(a.next_alarm(), Some(1_700_000_000_000));
    assert_eq!(a.queued(), 1);
}

//! Connections in the library (issue 21, part 3) and the alarm and message hooks: connection
//! records restored at wake from the preload (the wake stays one round trip, strict mode, with
//! alarms, a queue and connections present); `kvsqlite_send` pushes handed out only once their
//! commit committed and is durable, never for a rolled-back transaction, savepoint or
//! statement; `on_alarm` and `on_message` run in the transaction that deletes the alarm or
//! acknowledges the message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use kvsqlite::actor::connections::Push;
use kvsqlite::actor::guard::Mode;
use kvsqlite::actor::{Actor, ActorConfig, Migration};
use kvsqlite::kv::counting::{CountingStore, OpKind};
use kvsqlite::kv::memory::MemoryStore;
use kvsqlite::kv::{
    KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};

const T: u64 = 1_700_000_000_000;

fn config() -> ActorConfig {
    let mut c = ActorConfig::default().with_migrations(vec![Migration::new(
        "0001_log.sql",
        "CREATE TABLE log(id INTEGER PRIMARY KEY, what TEXT NOT NULL UNIQUE);",
    )
    .unwrap()]);
    c.alarms = true;
    c.queue = true;
    c.connections = true;
    c.strict = true;
    c
}

fn push(target: &str, body: &str) -> Push {
    Push {
        target: target.into(),
        body: body.into(),
    }
}

fn log(a: &Actor) -> Vec<String> {
    let mut st = a.db().prepare("SELECT what FROM log ORDER BY id").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_wake_with_alarms_a_queue_and_connections_is_one_round_trip_and_restores_the_records() {
    let mem = Arc::new(MemoryStore::new());
    let a = Actor::start(mem.clone(), "w", &config()).unwrap();
    a.schedule_at(T, "digest", b"").unwrap();
    a.open_connection("c1", r#"{"name":"ann"}"#, &["room".into()], T)
        .unwrap();
    a.open_connection("c2", "{}", &[], T + 1).unwrap();
    assert!(a.set_connection_state("c2", r#"{"seen":3}"#).unwrap());
    assert!(!a.set_connection_state("nope", "{}").unwrap());
    assert!(a.set_connection_state("c2", "not json").is_err());
    a.sleep().unwrap();
    Actor::enqueue(&(mem.clone() as SharedStore), "w", b"m1").unwrap();

    let counting = CountingStore::wrap(mem.clone());
    let a = Actor::start(counting.shared(), "w", &config()).unwrap();
    let c = counting.snapshot();
    assert_eq!(
        (c.round_trips(), c.op(OpKind::BatchRead).calls),
        (1, 1),
        "{c:?}"
    );
    assert_eq!(a.startup().kv_round_trips, 1);
    let restored = a.restored_connections();
    assert_eq!(
        restored
            .iter()
            .map(|r| (
                r.id.as_str(),
                r.params.as_str(),
                r.topics.clone(),
                r.state.as_str(),
                r.opened_ms
            ))
            .collect::<Vec<_>>(),
        vec![
            ("c1", r#"{"name":"ann"}"#, vec!["room".to_string()], "{}", T),
            ("c2", "{}", vec![], r#"{"seen":3}"#, T + 1),
        ]
    );
    assert_eq!(a.connections().unwrap(), restored.to_vec());
    assert_eq!(a.queued(), 1);
    assert_eq!(a.next_alarm(), Some(T));
    let restore = a
        .startup()
        .phases
        .iter()
        .find(|p| p.name == "restore_connections")
        .expect("the phase ran");
    assert_eq!(restore.kv_round_trips, 0);
    assert!(a
        .metrics()
        .get("startup_internal_restore_connections_ms")
        .is_some());
    assert_eq!(a.close_connections(&["c1".into(), "zz".into()]).unwrap(), 1);
    a.sleep().unwrap();

    // Without connections configured: no phase, no gauge, no functions.
    let mut plain = config();
    plain.connections = false;
    let a = Actor::start(mem.clone(), "w", &plain).unwrap();
    assert!(a
        .metrics()
        .get("startup_internal_restore_connections_ms")
        .is_none());
    assert!(a.restored_connections().is_empty());
    assert!(a
        .db()
        .query_row("SELECT kvsqlite_send('*', '{}')", [], |_| Ok(()))
        .is_err());
    assert!(a.send("*", "{}").is_err());
}

#[test]
fn a_wake_past_the_preload_budget_with_connections_stays_one_round_trip() {
    let mem = Arc::new(MemoryStore::new());
    let mut c = config();
    c.preload_budget = 16 << 10;
    let a = Actor::start(mem.clone(), "big", &c).unwrap();
    a.db()
        .execute_batch(
            "CREATE TABLE pad(x BLOB); INSERT INTO pad WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200) SELECT randomblob(2000) FROM s;",
        )
        .unwrap();
    a.schedule_at(T, "x", b"").unwrap();
    for i in 0..50 {
        a.open_connection(&format!("c{i:02}"), "{}", &[], T)
            .unwrap();
    }
    a.sleep().unwrap();
    // The first wake after the records grew learns their pages; the next ones are 1 RT.
    let a = Actor::start(mem.clone(), "big", &c).unwrap();
    a.sleep().unwrap();
    let counting = CountingStore::wrap(mem.clone());
    let a = Actor::start(counting.shared(), "big", &c).unwrap();
    assert_eq!(a.startup().kv_round_trips, 1);
    assert_eq!(a.restored_connections().len(), 50);
}

#[test]
fn pushes_are_handed_out_only_for_what_committed_in_order() {
    let mem = Arc::new(MemoryStore::new());
    let a = Actor::start(mem.clone(), "p", &config()).unwrap();
    let db = a.db();
    // Autocommit: one push, committed.
    db.query_row("SELECT kvsqlite_send('*', '{\"n\":1}')", [], |_| Ok(()))
        .unwrap();
    assert_eq!(a.drain_pushes().unwrap(), vec![push("*", r#"{"n":1}"#)]);
    assert_eq!(a.drain_pushes().unwrap(), vec![]);

    // A transaction: nothing while open; its pushes in order after COMMIT.
    db.execute_batch("BEGIN; INSERT INTO log(what) VALUES ('a'); SELECT kvsqlite_send('room', '{\"n\":2}'); SELECT kvsqlite_send('c1', '[3]');")
        .unwrap();
    assert_eq!(a.take_pushes().unwrap(), vec![]);
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(
        a.drain_pushes().unwrap(),
        vec![push("room", r#"{"n":2}"#), push("c1", "[3]")]
    );

    // Rolled back: the transaction, a savepoint, a failed statement.
    db.execute_batch("BEGIN; SELECT kvsqlite_send('*', '\"lost\"'); ROLLBACK;")
        .unwrap();
    db.execute_batch(
        "BEGIN; SAVEPOINT s; SELECT kvsqlite_send('*', '\"undone\"'); ROLLBACK TO s; RELEASE s; SELECT kvsqlite_send('*', '\"kept\"'); COMMIT;",
    )
    .unwrap();
    // The second row violates UNIQUE after the push of the first: the statement is undone.
    let failed = db.execute(
        "INSERT INTO log(what) SELECT 'a' || (kvsqlite_send('*', '\"half\"') * 0) FROM (SELECT 1 UNION ALL SELECT 2)",
        [],
    );
    assert!(failed.is_err());
    assert_eq!(a.drain_pushes().unwrap(), vec![push("*", "\"kept\"")]);

    // The library's send joins the caller's transaction too.
    db.execute_batch("BEGIN").unwrap();
    a.send("room", r#"{"lib":true}"#).unwrap();
    db.execute_batch("ROLLBACK").unwrap();
    db.execute_batch("BEGIN").unwrap();
    a.send("room", r#"{"lib":1}"#).unwrap();
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(
        a.drain_pushes().unwrap(),
        vec![push("room", r#"{"lib":1}"#)]
    );

    // Refusals: not JSON, empty target, too big, the read-only query box.
    for sql in [
        "SELECT kvsqlite_send('*', 'not json')",
        "SELECT kvsqlite_send('', '{}')",
        "SELECT kvsqlite_send('*', json_array(zeroblob(70000)))",
        "SELECT kvsqlite_send('*', x'00')",
    ] {
        assert!(db.query_row(sql, [], |_| Ok(())).is_err(), "{sql}");
    }
    {
        let _ro = a.sql_guard().scope(Mode::ReadOnly);
        let e = db
            .query_row("SELECT kvsqlite_send('*', '{}')", [], |_| Ok(()))
            .unwrap_err();
        assert!(e.to_string().contains("refused"), "{e}");
    }
    // `kvsqlite_conn_id()` names the connection being handled.
    let id: Option<String> = a.with_connection("c9", || {
        db.query_row("SELECT kvsqlite_conn_id()", [], |r| r.get(0))
            .unwrap()
    });
    assert_eq!(id.as_deref(), Some("c9"));
    let none: Option<String> = db
        .query_row("SELECT kvsqlite_conn_id()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(a.drain_pushes().unwrap(), vec![]);
    assert_eq!(log(&a), vec!["a".to_string()]);
}

/// A store whose writes wait while held, and fail when released with `fail`.
struct HeldStore {
    inner: SharedStore,
    held: Mutex<(bool, bool)>,
    cv: Condvar,
    waiting: AtomicU64,
}

impl HeldStore {
    fn hold(&self) {
        self.held.lock().unwrap().0 = true;
    }
    fn release(&self, fail: bool) {
        *self.held.lock().unwrap() = (false, fail);
        self.cv.notify_all();
    }
    fn wait_until_a_write_waits(&self) {
        for _ in 0..3000 {
            if self.waiting.load(Ordering::SeqCst) > 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("no write arrived");
    }
}

impl KvStore for HeldStore {
    fn backend(&self) -> &'static str {
        "held"
    }
    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }
    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        self.inner.get(actor, keys)
    }
    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.inner.list(actor, req)
    }
    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        let mut g = self.held.lock().unwrap();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while g.0 {
            g = self.cv.wait(g).unwrap();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if std::mem::take(&mut g.1) {
            return Err(KvError::Unavailable {
                backend: "held",
                message: "the test failed this put".into(),
            });
        }
        drop(g);
        self.inner.write(actor, batch)
    }
    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.inner.delete_range(actor, start, end)
    }
    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.inner.batch_read(actor, ops)
    }
}

#[test]
fn a_push_is_handed_out_only_after_its_commit_is_durable_and_never_when_its_put_fails() {
    let held = Arc::new(HeldStore {
        inner: Arc::new(MemoryStore::new()),
        held: Mutex::new((false, false)),
        cv: Condvar::new(),
        waiting: AtomicU64::new(0),
    });
    let mut c = config();
    c.open.pipelined = true;
    let a = Actor::start(held.clone(), "d", &c).unwrap();
    a.wait_durable().unwrap();

    // The COMMIT returns with its put held in flight: the push is committed, not durable.
    held.hold();
    a.db()
        .execute_batch("BEGIN; INSERT INTO log(what) VALUES ('x'); SELECT kvsqlite_send('*', '{\"x\":1}'); COMMIT;")
        .unwrap();
    held.wait_until_a_write_waits();
    let durability = a.db().durability();
    let pushes = a.take_pushes().unwrap();
    let ticket = durability.ticket();
    assert_eq!(pushes, vec![push("*", r#"{"x":1}"#)]);
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let d = durability.clone();
        std::thread::spawn(move || tx.send(d.wait_for(ticket).is_ok()).unwrap())
    };
    // While the put is held the gate cannot open (a push handed out now would be early).
    assert!(rx.try_recv().is_err());
    held.release(false);
    assert!(rx.recv().unwrap());
    waiter.join().unwrap();

    // A put that fails: the commit is lost, and so is its push (the gate fails: the host
    // discards what it took; `drain_pushes` hands out nothing).
    held.hold();
    a.db()
        .execute_batch("BEGIN; INSERT INTO log(what) VALUES ('y'); SELECT kvsqlite_send('*', '{\"y\":1}'); COMMIT;")
        .unwrap();
    held.wait_until_a_write_waits();
    let pushes = a.take_pushes().unwrap();
    assert_eq!(pushes, vec![push("*", r#"{"y":1}"#)]);
    let ticket = durability.ticket();
    let waiter = {
        let d = durability.clone();
        std::thread::spawn(move || d.wait_for(ticket).is_ok())
    };
    held.release(true);
    assert!(!waiter.join().unwrap(), "the gate must fail");
    assert!(a.drain_pushes().is_err());
}

#[test]
fn on_alarm_and_on_message_run_in_the_transaction_that_deletes_or_acknowledges() {
    let mem = Arc::new(MemoryStore::new());
    let attempts = Arc::new(AtomicU64::new(0));
    let mut c = config();
    let n = attempts.clone();
    c.hooks.on_alarm = Some(Arc::new(move |a: &Actor, alarm| {
        a.db().execute(
            "INSERT INTO log(what) VALUES (?1)",
            [format!("alarm {}", alarm.name)],
        )?;
        a.send("*", r#"{"alarm":true}"#)?;
        // The first attempt fails after writing: its row and its push are rolled back.
        if n.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err("first attempt fails".into());
        }
        Ok(())
    }));
    c.hooks.on_message = Some(Arc::new(|a: &Actor, m| {
        let body = String::from_utf8_lossy(&m.body).into_owned();
        a.db()
            .execute("INSERT INTO log(what) VALUES (?1)", [format!("msg {body}")])?;
        if body == "bad" {
            return Err("bad message".into());
        }
        Ok(())
    }));
    let a = Actor::start(mem.clone(), "h", &c).unwrap();
    a.schedule_at(T, "digest", b"").unwrap();
    let r = a.run_alarms(T).unwrap();
    assert_eq!((r.fired.len(), r.failed.len()), (0, 1));
    assert_eq!(log(&a), Vec::<String>::new());
    assert_eq!(a.alarms().unwrap()[0].attempts, 1);
    assert_eq!(a.drain_pushes().unwrap(), vec![]);
    let r = a.run_alarms(T + 10_000).unwrap();
    assert_eq!((r.fired.len(), r.failed.len()), (1, 0));
    assert_eq!(log(&a), vec!["alarm digest".to_string()]);
    assert!(a.alarms().unwrap().is_empty());
    assert_eq!(
        a.drain_pushes().unwrap(),
        vec![push("*", r#"{"alarm":true}"#)]
    );
    a.sleep().unwrap();

    let store: SharedStore = mem.clone();
    for body in [&b"one"[..], b"bad", b"two"] {
        Actor::enqueue(&store, "h", body).unwrap();
    }
    let a = Actor::start(mem.clone(), "h", &c).unwrap();
    let r = a.run_queue().unwrap();
    assert_eq!(r.handled, 1);
    assert_eq!(r.failed.as_deref(), Some("bad message"));
    // The failed message's row is rolled back with it; it stays first in line.
    assert_eq!(
        log(&a),
        vec!["alarm digest".to_string(), "msg one".to_string()]
    );
    assert_eq!(a.queued(), 2);

    // Without the hooks, the hook runners are refused.
    let plain = config();
    a.sleep().unwrap();
    let a = Actor::start(mem.clone(), "h", &plain).unwrap();
    assert!(a.run_alarms(T).is_err());
    assert!(a.run_queue().is_err());
}

//! The host's alarms: `POST/GET /actors/{id}/alarms`, `DELETE /actors/{id}/alarms/{alarm}`,
//! and the tick that fires what is due.
//!
//! Why it exists: an actor that sleeps cannot wake itself; the host lists the store-wide due
//! index ([`crate::actor::alarms`]) every [`TICK`], wakes each actor with a due entry (through
//! the registry, like a request, so one request at a time still holds), runs the due alarms'
//! stored SQL — each in the transaction that deletes it — and puts the actor back to sleep if
//! the tick woke it. An alarm whose SQL fails is rolled back and retried with a backoff
//! (counted in the actor's `alarm_retries`).
//!
//! **Idle back-off.** Listing the 16 shards costs 16 KV calls per tick even with no alarm
//! anywhere. After [`IDLE_TICKS`] ticks in a row that found nothing, the host lists only every
//! [`IDLE_LIST_EVERY`] ticks — except when an alarm this host scheduled (a route, a retry, an
//! alarm a handler scheduled) is due, which is listed at the next tick as before. So an alarm
//! scheduled through this host, or in the index when the host started, fires within one tick
//! of its time, always; one scheduled elsewhere meanwhile (another host, a library process on
//! the same store) within [`IDLE_LIST_EVERY`] ticks when this host is idle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{delete, get};
use axum::Router;
use serde_json::{json, Value};

use super::registry::{is_store_failure, store_unavailable, Registry, Work};
use super::routes::{admin_json_async, admin_on_actor, admin_post_json, statement_error, AppState};
use super::sql::{self, StatementRequest};
use super::HostError;
use crate::actor::alarms::{self, Alarm};
use crate::actor::guard::Mode;
use crate::actor::{Actor, ActorError, HookError};
use crate::vfs::Database;

/// How often the host lists the due index by default (`--alarm-tick-ms`): an alarm fires at
/// most this long after it is due (plus the time its actor takes to wake and run it).
pub const TICK: Duration = Duration::from_secs(1);

/// Empty ticks in a row after which the host backs off (see the module comment).
pub const IDLE_TICKS: u32 = 5;

/// When backed off, the host lists every this many ticks (or when a known alarm is due).
pub const IDLE_LIST_EVERY: u32 = 30;

/// Due times this host knows of, most kept (past it the host lists every tick).
const KNOWN_CAP: usize = 4096;

/// The alarm times this host scheduled or learned of, so that an idle host that backed off
/// still lists when one of them is due.
#[derive(Default)]
pub struct Known {
    times: parking_lot::Mutex<(BTreeSet<u64>, bool)>,
}

impl Known {
    /// Notes an alarm due at `at_ms`.
    pub fn note(&self, at_ms: u64) {
        let mut t = self.times.lock();
        if t.0.len() >= KNOWN_CAP {
            t.1 = true;
        } else {
            t.0.insert(at_ms);
        }
    }

    /// Notes that the host cannot know every due time (too many, or a listing cut short): the
    /// back-off is off for good (every tick lists).
    pub fn saturate(&self) {
        self.times.lock().1 = true;
    }

    /// True when a noted alarm is due at `now_ms` (or too many were noted to tell).
    fn due(&self, now_ms: u64) -> bool {
        let t = self.times.lock();
        t.1 || t.0.first().is_some_and(|&f| f <= now_ms)
    }

    /// Forgets what a listing at `now_ms` covered.
    fn listed(&self, now_ms: u64) {
        let mut t = self.times.lock();
        let rest = t.0.split_off(&now_ms.saturating_add(1));
        t.0 = rest;
    }
}

/// Whether a tick lists the due index: the back-off's state.
#[derive(Debug, Default)]
pub struct Backoff {
    empty: u32,
    skipped: u32,
}

impl Backoff {
    /// True when this tick lists (`known_due`: an alarm this host knows of is due).
    pub fn should_list(&mut self, known_due: bool) -> bool {
        if known_due || self.empty < IDLE_TICKS || self.skipped + 1 >= IDLE_LIST_EVERY {
            self.skipped = 0;
            true
        } else {
            self.skipped += 1;
            false
        }
    }

    /// Records what a listing found.
    pub fn found(&mut self, anything: bool) {
        self.empty = if anything {
            0
        } else {
            self.empty.saturating_add(1)
        };
    }
}

/// Most due entries read from one shard per tick (the rest wait for the next tick).
pub const LIST_LIMIT: usize = 1024;

/// The name of the alarms the host schedules (their payload is the statement as JSON).
pub const SQL_ALARM: &str = "sql";

/// The alarm routes.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/actors/{id}/alarms", get(list_route).post(schedule_route))
        .route("/actors/{id}/alarms/{alarm}", delete(cancel_route))
}

fn alarm_json(a: &Alarm) -> Value {
    let stored: Value = serde_json::from_slice(&a.payload).unwrap_or(Value::Null);
    json!({
        "id": a.id,
        "at": a.at_ms,
        "name": a.name,
        "sql": stored.get("sql").cloned().unwrap_or(Value::Null),
        "params": stored.get("params").cloned().unwrap_or(Value::Null),
        "attempts": a.attempts,
    })
}

/// An actor operation's error as the host answers it.
pub(crate) fn actor_error(e: ActorError, timeout: Duration) -> HostError {
    match e {
        ActorError::Sqlite(e) => statement_error(&e, timeout),
        ActorError::Moved => HostError::Unavailable(
            "actor moved: another instance wrote since this one woke; retry".into(),
        ),
        e if is_store_failure(&e) => store_unavailable(format!("the store failed: {e}")),
        e => HostError::Internal(e.to_string()),
    }
}

/// `POST /actors/{id}/alarms` `{"at": ms | "after_ms": ms, "sql", "params"}` (admin token):
/// the statement is checked (it must prepare, and must not control the transaction) and
/// stored; the answer is `{"id", "at"}`.
async fn schedule_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    admin_post_json(s, id, headers, body, |s, id, body| async move {
        let at = match (body.get("at"), body.get("after_ms")) {
            (Some(at), None) => at
                .as_u64()
                .filter(|&v| v <= i64::MAX as u64)
                .ok_or_else(|| bad("\"at\" must be milliseconds since the Unix epoch"))?,
            (None, Some(after)) => {
                let after = after
                    .as_u64()
                    .ok_or_else(|| bad("\"after_ms\" must be a non-negative integer"))?;
                alarms::now_ms().saturating_add(after)
            }
            _ => return Err(bad("give exactly one of \"at\" and \"after_ms\"")),
        };
        let Some(obj) = body.as_object() else {
            return Err(bad("the body must be a JSON object"));
        };
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "at" | "after_ms" | "sql" | "params"))
        {
            return Err(HostError::BadRequest(format!(
                "the body: unknown field {k:?} (expected at or after_ms, sql, params)"
            )));
        }
        let mut stored = json!({ "sql": body.get("sql").cloned().unwrap_or(Value::Null) });
        if let Some(p) = body.get("params") {
            stored["params"] = p.clone();
        }
        let st = sql::statement_from_json(&stored, "the body").map_err(HostError::BadRequest)?;
        if stored.get("params").is_none() {
            stored["params"] = json!([]);
        }
        let timeout = s.statement_timeout;
        let work: Work = Box::new(move |actor: &Actor| {
            check_statement(actor, &st)?;
            let aid = actor
                .schedule_at(at, SQL_ALARM, stored.to_string().as_bytes())
                .map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "id": aid, "at": at }))
        });
        let r = s.registry.run(&id, timeout, work).await;
        if r.is_ok() {
            s.registry.known_alarms().note(at);
        }
        r
    })
    .await
}

fn bad(m: &str) -> HostError {
    HostError::BadRequest(m.into())
}

/// The statement prepares under the remote guard and does not control the transaction.
fn check_statement(actor: &Actor, st: &StatementRequest) -> Result<(), HostError> {
    let db = actor.db();
    if actor.sql_guard().transaction_control(db, &st.sql).is_some() {
        return Err(bad(
            "an alarm's statement runs in the alarm's transaction; it cannot control it",
        ));
    }
    let _remote = actor.sql_guard().scope(Mode::Remote);
    db.prepare(&st.sql)
        .map(|_| ())
        .map_err(|e| HostError::Sql(sql::error_text(&actor.sql_guard().explain(e))))
}

/// `GET /actors/{id}/alarms` (admin token): `{"alarms": [{"id", "at", "name", "sql",
/// "params", "attempts"}]}`, earliest first.
async fn list_route(
    State(s): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    admin_on_actor(&s, id, &headers, |timeout, _| {
        Box::new(move |actor: &Actor| {
            let list = actor.alarms().map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "alarms": list.iter().map(alarm_json).collect::<Vec<_>>() }))
        })
    })
    .await
}

/// `DELETE /actors/{id}/alarms/{alarm}` (admin token): `{"cancelled": true|false}`.
async fn cancel_route(
    State(s): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    admin_json_async(&s, &headers, async {
        let Path((id, alarm)) =
            path.map_err(|e| HostError::BadRequest(format!("invalid path: {e}")))?;
        super::check_actor_id(&id)?;
        let alarm: i64 = alarm
            .parse()
            .map_err(|_| bad("the alarm id must be an integer"))?;
        let timeout = s.statement_timeout;
        let work: Work = Box::new(move |actor: &Actor| {
            let cancelled = actor.cancel(alarm).map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "cancelled": cancelled }))
        });
        s.registry.run(&id, timeout, work).await
    })
    .await
}

/// Runs a host alarm: its stored statement under the remote guard; an alarm of another name
/// goes to the actor's `on_alarm` hook (when the host's actor config sets one).
fn run_sql_alarm(actor: &Actor, db: &Database, a: &Alarm) -> Result<(), HookError> {
    if a.name != SQL_ALARM {
        if actor.has_alarm_hook() {
            return actor.call_on_alarm(a);
        }
        return Err(format!("the host has no handler for alarms named {:?}", a.name).into());
    }
    let v: Value = serde_json::from_slice(&a.payload)?;
    let st = sql::statement_from_json(&v, "the alarm")?;
    let _remote = actor.sql_guard().scope(Mode::Remote);
    let mut budget = sql::ResultBudget::new(1 << 20);
    sql::run_statement(db, &st, &mut budget).map_err(|e| actor.sql_guard().explain(e))?;
    Ok(())
}

/// One tick at `now_ms`: list the due index, fire each listed actor's due alarms, and put the
/// actors the tick woke back to sleep. Returns the actors handled.
pub async fn tick_once(registry: &Arc<Registry>, now_ms: u64, timeout: Duration) -> Vec<String> {
    let rt = &registry.metrics().families.realtime;
    rt.alarm_index_lists.fetch_add(
        alarms::DUE_SHARDS as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    registry.known_alarms().listed(now_ms);
    let store = registry.store().clone();
    let listed =
        tokio::task::spawn_blocking(move || alarms::list_due(&store, now_ms, LIST_LIMIT)).await;
    let due = match listed {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::warn!("alarm tick: listing the due index failed: {e}");
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!("alarm tick: {e}");
            return Vec::new();
        }
    };
    let mut by_actor: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, at, actor) in due {
        by_actor.entry(actor).or_default().push(at);
    }
    let mut handled = Vec::new();
    for (actor_id, ats) in by_actor {
        // In a cluster, another member fires the alarms of the actors it owns.
        if super::check_actor_id(&actor_id).is_err() || !registry.owns(&actor_id) {
            continue;
        }
        let was_awake = registry.is_awake(&actor_id);
        let work: Work = Box::new(move |actor: &Actor| {
            let r = actor
                .fire_and_clear(now_ms, &ats, &mut |db, a| run_sql_alarm(actor, db, a))
                .map_err(|e| actor_error(e, timeout))?;
            Ok(json!({ "fired": r.fired.len(), "failed": r.failed.len(), "next": r.next_ms }))
        });
        match registry.run(&actor_id, timeout, work).await {
            Ok(v) => {
                use std::sync::atomic::Ordering::Relaxed;
                let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                rt.alarms_fired.fetch_add(n("fired"), Relaxed);
                rt.alarm_retries.fetch_add(n("failed"), Relaxed);
                if let Some(next) = v.get("next").and_then(Value::as_u64) {
                    registry.known_alarms().note(next);
                }
            }
            Err(e) => tracing::warn!(actor = %actor_id, "alarm tick failed: {}", e.message()),
        }
        if !was_awake {
            registry.sleep_now(&actor_id).await;
        }
        handled.push(actor_id);
    }
    handled
}

/// At start: the due times already in the index (alarms scheduled before a restart), noted so
/// that the back-off still lists at their time. One list per shard; a shard with more than
/// [`LIST_LIMIT`] entries turns the back-off off.
async fn learn_index(registry: &Arc<Registry>) {
    let store = registry.store().clone();
    let listed =
        tokio::task::spawn_blocking(move || alarms::list_due(&store, u64::MAX - 1, LIST_LIMIT))
            .await;
    registry
        .metrics()
        .families
        .realtime
        .alarm_index_lists
        .fetch_add(
            alarms::DUE_SHARDS as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    let known = registry.known_alarms();
    match listed {
        Ok(Ok(entries)) => {
            let mut per_shard = BTreeMap::<u32, usize>::new();
            for (shard, at, _) in entries {
                known.note(at);
                *per_shard.entry(shard).or_default() += 1;
            }
            if per_shard.values().any(|&n| n >= LIST_LIMIT) {
                known.saturate();
            }
        }
        _ => known.saturate(),
    }
}

/// The host's alarm loop: a tick every `tick` (backed off when idle, see the module comment),
/// forever (the host aborts it at shutdown). At start it learns the due times already in the
/// index, and the first tick lists at once: alarms that fell due while no host ran fire at
/// start, later ones at their tick.
pub async fn run(registry: Arc<Registry>, timeout: Duration, tick: Duration) {
    learn_index(&registry).await;
    let mut backoff = Backoff::default();
    let mut first = true;
    loop {
        if !first {
            tokio::time::sleep(tick).await;
        }
        first = false;
        registry
            .metrics()
            .families
            .realtime
            .alarm_ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = alarms::now_ms();
        if !backoff.should_list(registry.known_alarms().due(now)) {
            continue;
        }
        let handled = tick_once(&registry, now, timeout).await;
        backoff.found(!handled.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_host_lists_every_idle_list_every_ticks_and_a_known_alarm_at_once() {
        let mut b = Backoff::default();
        // The first IDLE_TICKS empty listings: every tick.
        for _ in 0..IDLE_TICKS {
            assert!(b.should_list(false));
            b.found(false);
        }
        let mut lists = 0;
        for _ in 0..(IDLE_LIST_EVERY * 2) {
            if b.should_list(false) {
                lists += 1;
                b.found(false);
            }
        }
        assert_eq!(lists, 2);
        // A known alarm due: listed now; something found: every tick again.
        assert!(b.should_list(true));
        b.found(true);
        assert!(b.should_list(false));
        let k = Known::default();
        k.note(100);
        k.note(200);
        assert!(!k.due(99));
        assert!(k.due(100));
        k.listed(150);
        assert!(!k.due(199));
        assert!(k.due(200));
        k.saturate();
        k.listed(300);
        assert!(k.due(0));
    }
}

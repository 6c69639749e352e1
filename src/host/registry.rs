//! The actors a host holds: one slot per awake actor, woken on demand, put to sleep when idle
//! or when too many are awake, and all put to sleep at shutdown.
//!
//! Why it exists: the routes only say "run this on actor X"; everything about the actor's
//! lifecycle lives here so that its rules hold whatever the routes do:
//!
//! - **One wake for concurrent requests, one request at a time.** Each slot has an async mutex
//!   (FIFO): the first request to lock a sleeping slot wakes the actor, the others find it
//!   awake. The SQLite work runs on tokio's blocking pool while the lock is held, so different
//!   actors run in parallel and no async thread ever waits on SQLite or the store.
//! - **Bounded memory.** A wake first reserves a place among `max_awake`; when none is free the
//!   least recently used idle actor is put to sleep. A slot that sleeps is *retired* (removed
//!   from the map; a request that still held it looks again), so the map holds only awake (or
//!   waking) actors. The last metrics document of each sleeping actor is kept in a bounded
//!   cache for the inspector.
//! - **Statement timeout.** The blocking task hands the connection's interrupt handle to the
//!   async side just before running statements; when the timeout passes first,
//!   `sqlite3_interrupt` stops the statement.
//! - **History compaction in the background.** An actor idle past `--idle-sleep-ms` has its
//!   history compacted (fenced) just before it sleeps; an awake actor whose compaction is due
//!   (see [`crate::vfs::history::watch`], checked without its lock or a KV call) is compacted
//!   by the same sweep, which takes the actor's lock in its turn like a request and holds it
//!   for the compaction only. Never on a commit's or a wake's path.
//! - **Store failures.** An actor whose store call failed (or that moved) is put to sleep at
//!   once; the next request wakes it again, which succeeds once the store is back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::InterruptHandle;
use tokio::sync::{oneshot, OwnedMutexGuard};

use super::prom::HostMetrics;
use super::HostError;
use crate::actor::connections::Push;
use crate::actor::{Actor, ActorConfig, ActorError};
use crate::kv::SharedStore;
use crate::metrics::MetricsDoc;
use crate::vfs::{CompactionWatch, VfsError};

/// How long a wake waits for a place among `max_awake` when every awake actor is busy.
const RESERVE_WAIT: Duration = Duration::from_secs(30);

/// What a slot holds.
enum SlotState {
    /// Never woken through this slot yet.
    Asleep,
    /// Awake.
    Awake(Box<Awake>),
    /// Slept (or failed to wake) and removed from the map: look the id up again.
    Retired,
}

struct Awake {
    actor: Actor,
    /// The actor's KV round trips already added to the host counter.
    round_trips: RoundTrips,
}

/// An awake actor's KV round trips as the host counts them: its counting store and how much of
/// it the host counter already holds. Readable without the actor's lock, so a request adds
/// them after its output gate (the pipelined put that made its commit durable included).
#[derive(Clone)]
struct RoundTrips {
    counting: Arc<crate::kv::counting::CountingStore>,
    seen: Arc<AtomicU64>,
}

impl RoundTrips {
    /// Adds the round trips not yet counted to `total`; each one exactly once, whichever
    /// request (or the sleep) gets there first.
    fn settle(&self, total: &AtomicU64) {
        let rt = self.counting.snapshot().round_trips();
        let before = self.seen.fetch_max(rt, Ordering::Relaxed);
        total.fetch_add(rt.saturating_sub(before), Ordering::Relaxed);
    }
}

/// One actor's place in the host.
struct Slot {
    id: String,
    state: Arc<tokio::sync::Mutex<SlotState>>,
    /// Milliseconds since the registry started, at the last request's end.
    last_used: AtomicU64,
    awake: AtomicBool,
    /// The actor's inspector token once woken here: read by token checks without the lock.
    token: Mutex<Option<String>>,
    /// The actor's interrupt handle while awake: the shutdown deadline stops what still runs.
    interrupt: Mutex<Option<InterruptHandle>>,
    /// Says whether the awake actor's history compaction is due, without its lock.
    compaction: Mutex<Option<CompactionWatch>>,
    /// A sweep's compaction of the awake actor is queued or running (one at a time).
    compacting: AtomicBool,
}

/// The last metrics document of sleeping actors (and their inspector tokens), bounded.
#[derive(Default)]
struct DocCache {
    docs: HashMap<String, (String, MetricsDoc, u64)>,
    order: VecDeque<(String, u64)>,
    seq: u64,
}

impl DocCache {
    fn insert(&mut self, id: String, token: String, doc: MetricsDoc, cap: usize) {
        self.seq += 1;
        self.order.push_back((id.clone(), self.seq));
        self.docs.insert(id, (token, doc, self.seq));
        while self.docs.len() > cap {
            let Some((old, seq)) = self.order.pop_front() else {
                break;
            };
            if self.docs.get(&old).is_some_and(|e| e.2 == seq) {
                self.docs.remove(&old);
            }
        }
        if self.order.len() > 2 * cap.max(1) {
            let docs = &self.docs;
            self.order
                .retain(|(id, seq)| docs.get(id).is_some_and(|e| e.2 == *seq));
        }
    }
}

/// What a request runs on an awake actor.
pub type Work = Box<dyn FnOnce(&Actor) -> Result<serde_json::Value, HostError> + Send>;

/// Where the actors live.
pub struct Registry {
    store: SharedStore,
    config: ActorConfig,
    max_awake: u64,
    doc_cap: usize,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    docs: Mutex<DocCache>,
    metrics: Arc<HostMetrics>,
    started: Instant,
    /// Longest wait for an actor's lock (behind other requests) before a 503.
    lock_wait: Duration,
    /// The WebSockets kept for the actors, awake or asleep.
    hub: Arc<super::sockets::Hub>,
    /// Alarm times this host scheduled or learned of (the alarm tick's back-off).
    known_alarms: super::alarm_tick::Known,
    /// Which actors this host owns (a cluster's placement); unset: every actor.
    owner_filter: std::sync::OnceLock<OwnerFilter>,
}

/// Says whether this host owns an actor (see [`Registry::set_owner_filter`]).
pub type OwnerFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

impl Registry {
    /// A registry on `store`; at most `max_awake` actors are awake at once (at least 1).
    pub fn new(
        store: SharedStore,
        config: ActorConfig,
        max_awake: usize,
        metrics: Arc<HostMetrics>,
    ) -> Self {
        let max_awake = max_awake.max(1);
        Registry {
            store,
            config,
            max_awake: max_awake as u64,
            doc_cap: (max_awake * 16).max(1024),
            slots: Mutex::new(HashMap::new()),
            docs: Mutex::new(DocCache::default()),
            started: Instant::now(),
            lock_wait: RESERVE_WAIT,
            hub: Arc::new(super::sockets::Hub::new(
                super::sockets::SocketLimits::default(),
                metrics.clone(),
            )),
            metrics,
            known_alarms: Default::default(),
            owner_filter: std::sync::OnceLock::new(),
        }
    }

    /// Sets which actors this host owns (once; a cluster member's placement). The alarm tick
    /// fires only those ([`Registry::owns`]).
    pub fn set_owner_filter(&self, f: OwnerFilter) {
        let _ = self.owner_filter.set(f);
    }

    /// True when this host owns actor `id`: always outside a cluster.
    pub fn owns(&self, id: &str) -> bool {
        self.owner_filter.get().is_none_or(|f| f(id))
    }

    /// The same registry with waits for an actor's lock bounded by `wait` (the host uses its
    /// statement timeout): a request still waiting then is answered 503 with a retry hint.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The same registry with its sockets bounded by `limits`.
    pub fn with_sockets(mut self, limits: super::sockets::SocketLimits) -> Self {
        self.hub = Arc::new(super::sockets::Hub::new(limits, self.metrics.clone()));
        self
    }

    /// The host metrics.
    pub fn metrics(&self) -> &Arc<HostMetrics> {
        &self.metrics
    }

    /// Alarm times this host scheduled or learned of.
    pub fn known_alarms(&self) -> &super::alarm_tick::Known {
        &self.known_alarms
    }

    /// The host's WebSockets.
    pub fn hub(&self) -> &Arc<super::sockets::Hub> {
        &self.hub
    }

    /// How actors start here (their retention, for a fork's new actor).
    pub fn actor_config(&self) -> &ActorConfig {
        &self.config
    }

    /// The store the actors live in.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn slot(&self, id: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock();
        slots
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    id: id.to_string(),
                    state: Arc::new(tokio::sync::Mutex::new(SlotState::Asleep)),
                    last_used: AtomicU64::new(self.now_ms()),
                    awake: AtomicBool::new(false),
                    token: Mutex::new(None),
                    interrupt: Mutex::new(None),
                    compaction: Mutex::new(None),
                    compacting: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Locks the live slot of `id` (creating it), retrying past retired ones; 503 once the
    /// lock wait has passed.
    async fn lock(&self, id: &str) -> Result<(Arc<Slot>, OwnedMutexGuard<SlotState>), HostError> {
        let deadline = tokio::time::Instant::now() + self.lock_wait;
        loop {
            let slot = self.slot(id);
            let Ok(guard) =
                tokio::time::timeout_at(deadline, slot.state.clone().lock_owned()).await
            else {
                return Err(busy(self.lock_wait));
            };
            if !matches!(*guard, SlotState::Retired) {
                return Ok((slot, guard));
            }
        }
    }

    /// Runs `work` on actor `id`, waking it (creating it when new) first. Statements stop with
    /// [`HostError::Timeout`] once `timeout` has passed since they started.
    pub async fn run(
        self: &Arc<Self>,
        id: &str,
        timeout: Duration,
        work: Work,
    ) -> Result<serde_json::Value, HostError> {
        let (slot, guard) = self.lock(id).await?;
        let (tx, rx) = oneshot::channel::<InterruptHandle>();
        let me = self.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let (result, gate, pushes) = me.run_locked(&slot, guard, tx, work);
            // The output gate, outside the actor's lock (the next request's transaction runs
            // while this one's put is in flight): no answer leaves before every commit it saw
            // (its own and earlier ones) is durable.
            if let Some((durability, ticket, round_trips)) = gate {
                let waited = durability.wait_for(ticket);
                // Counted once the gate is passed: the put it waited for is in the figure.
                round_trips.settle(&me.metrics.kv_round_trips);
                if let Err(e) = waited {
                    // This instance must not serve again (moved, or a put failed): put it to
                    // sleep now, so the next request wakes the actor afresh from the store.
                    me.sleep_if_unusable(&slot);
                    me.hub.discard(pushes);
                    return Err(gate_error(e));
                }
            }
            // The pushes of the commits the gate saw durable.
            me.hub.deliver(&slot.id, pushes);
            result
        });
        // The watchdog is a task of its own: if the client goes away (and this future is
        // dropped), the statement is still interrupted at the timeout.
        let watchdog = tokio::spawn(async move {
            let joined = tokio::select! {
                r = &mut task => Some(r),
                handle = rx => {
                    if let Ok(handle) = handle {
                        tokio::select! {
                            r = &mut task => Some(r),
                            _ = tokio::time::sleep(timeout) => { handle.interrupt(); None }
                        }
                    } else {
                        None
                    }
                }
            };
            match joined {
                Some(r) => r,
                None => task.await,
            }
        });
        match watchdog.await {
            Ok(joined) => joined
                .unwrap_or_else(|e| Err(HostError::Internal(format!("request task failed: {e}")))),
            Err(e) => Err(HostError::Internal(format!("request task failed: {e}"))),
        }
    }

    fn run_locked(
        &self,
        slot: &Arc<Slot>,
        mut guard: OwnedMutexGuard<SlotState>,
        tx: oneshot::Sender<InterruptHandle>,
        work: Work,
    ) -> (
        Result<serde_json::Value, HostError>,
        Option<Gate>,
        Vec<Push>,
    ) {
        if let SlotState::Awake(awake) = &*guard {
            if let Some(e) = awake.actor.db().unusable() {
                // A pipelined put failed (or another instance wrote) after the last request:
                // this instance must not serve again.
                self.sleep_locked(slot, &mut guard);
                return (Err(gate_error(e)), None, Vec::new());
            }
        }
        let was_awake = matches!(&*guard, SlotState::Awake(_));
        if let Err(e) = self.ensure_awake(slot, &mut guard) {
            self.retire(slot, &mut guard);
            return (Err(e), None, Vec::new());
        }
        let SlotState::Awake(awake) = &mut *guard else {
            return (
                Err(HostError::Internal("the actor is not awake".into())),
                None,
                Vec::new(),
            );
        };
        let _ = tx.send(awake.actor.db().get_interrupt_handle());
        if !was_awake {
            self.drop_stale_connections(&awake.actor);
        }
        if awake.actor.queued() > 0 {
            // Messages queued while it slept run before the request that woke it.
            let r = super::queue_route::drain(&awake.actor);
            self.metrics.families.realtime.count_drain(&r);
        }
        let started = Instant::now();
        let result = work(&awake.actor);
        let pushes = awake.actor.take_pushes().unwrap_or_else(|e| {
            tracing::warn!(actor = %slot.id, "taking the pushes failed: {e}");
            Vec::new()
        });
        let durability = awake.actor.db().durability();
        let gate = Some((
            durability.clone(),
            durability.ticket(),
            awake.round_trips.clone(),
        ));
        self.metrics.families.after_request(
            &slot.id,
            &awake.actor,
            started.elapsed(),
            matches!(result, Err(HostError::Unavailable(_))) && awake.actor.db().moved(),
        );
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        if matches!(result, Err(HostError::Unavailable(_))) {
            // The store failed under the actor (or another instance wrote): wake it afresh next
            // time rather than trust its cache.
            self.sleep_locked(slot, &mut guard);
        }
        (result, gate, pushes)
    }

    /// After a wake: deletes the connection records the actor restored whose socket this
    /// host no longer holds (closed while the actor slept, or before a restart).
    fn drop_stale_connections(&self, actor: &Actor) {
        let restored: Vec<String> = actor
            .restored_connections()
            .iter()
            .map(|c| c.id.clone())
            .collect();
        let stale = self.hub.stale(actor.id(), &restored);
        if !stale.is_empty() {
            if let Err(e) = actor.close_connections(&stale) {
                tracing::warn!(actor = %actor.id(), "dropping stale connection records failed: {e}");
            }
        }
    }

    fn ensure_awake(&self, slot: &Arc<Slot>, state: &mut SlotState) -> Result<(), HostError> {
        if matches!(state, SlotState::Awake(_)) {
            return Ok(());
        }
        self.reserve(slot)?;
        let t = Instant::now();
        match Actor::start(self.store.clone(), &slot.id, &self.config) {
            Ok(actor) => {
                let m = &self.metrics;
                m.wakes.fetch_add(1, Ordering::Relaxed);
                if actor.startup().is_new {
                    m.creations.fetch_add(1, Ordering::Relaxed);
                }
                m.wake_seconds.observe(t.elapsed().as_secs_f64());
                m.wake_round_trips
                    .observe(actor.startup().kv_round_trips as f64);
                m.families.on_wake(&slot.id, &actor);
                let rt = actor.kv_round_trips();
                m.kv_round_trips.fetch_add(rt, Ordering::Relaxed);
                slot.awake.store(true, Ordering::Relaxed);
                *slot.token.lock() = Some(actor.inspector_token().to_string());
                *slot.interrupt.lock() = Some(actor.db().get_interrupt_handle());
                *slot.compaction.lock() = Some(actor.db().compaction_watch());
                let round_trips = RoundTrips {
                    counting: actor.kv_counting(),
                    seen: Arc::new(AtomicU64::new(rt)),
                };
                *state = SlotState::Awake(Box::new(Awake { actor, round_trips }));
                Ok(())
            }
            Err(e) => {
                if e.is_moved() {
                    self.metrics.families.on_wake_moved();
                }
                self.metrics.actors_awake.fetch_sub(1, Ordering::Relaxed);
                self.metrics.wake_failures.fetch_add(1, Ordering::Relaxed);
                Err(wake_error(e))
            }
        }
    }

    /// Takes a place among `max_awake`, putting the least recently used idle actor to sleep
    /// when none is free.
    fn reserve(&self, me: &Arc<Slot>) -> Result<(), HostError> {
        let deadline = Instant::now() + RESERVE_WAIT;
        let awake = &self.metrics.actors_awake;
        loop {
            let cur = awake.load(Ordering::Acquire);
            if cur < self.max_awake {
                if awake
                    .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    // Every rise of the count passes here, so the peak misses none.
                    self.metrics
                        .actors_awake_peak
                        .fetch_max(cur + 1, Ordering::AcqRel);
                    return Ok(());
                }
                continue;
            }
            if !self.evict_one(me) {
                if Instant::now() > deadline {
                    return Err(HostError::Unavailable(
                        "the host is busy: every awake actor is handling a request".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Puts the least recently used awake actor that is not busy to sleep; false if none.
    fn evict_one(&self, me: &Arc<Slot>) -> bool {
        let mut candidates: Vec<(u64, Arc<Slot>)> = self
            .slots
            .lock()
            .values()
            .filter(|s| !Arc::ptr_eq(s, me) && s.awake.load(Ordering::Relaxed))
            .map(|s| (s.last_used.load(Ordering::Relaxed), s.clone()))
            .collect();
        candidates.sort_by_key(|(t, _)| *t);
        for (_, slot) in candidates {
            if let Ok(mut guard) = slot.state.clone().try_lock_owned() {
                if matches!(*guard, SlotState::Awake(_)) {
                    self.sleep_locked(&slot, &mut guard);
                    return true;
                }
            }
        }
        false
    }

    /// Compacts the history of the actor of a locked slot: what is past its retention window
    /// or byte bound is deleted by fenced writes (a stale instance is refused and writes
    /// nothing). The idle sweep calls it just before the actor sleeps, so no commit and no wake
    /// ever waits on it; an eviction (which a wake waits on) or a shutdown does not.
    fn compact_locked(&self, slot: &Arc<Slot>, state: &mut SlotState) {
        let SlotState::Awake(awake) = state else {
            return;
        };
        match awake.actor.compact_history() {
            Ok(r) => {
                if r.records_deleted > 0 {
                    tracing::debug!(
                        actor = %slot.id,
                        deleted = r.records_deleted,
                        kept = r.records_kept,
                        "history compacted"
                    );
                }
            }
            Err(e) => tracing::warn!(actor = %slot.id, "history compaction failed: {e}"),
        }
    }

    /// Puts the actor of a locked slot to sleep (keeping its last document) and retires the
    /// slot.
    fn sleep_locked(&self, slot: &Arc<Slot>, state: &mut SlotState) {
        if let SlotState::Awake(awake) = std::mem::replace(state, SlotState::Retired) {
            let Awake { actor, round_trips } = *awake;
            let doc = actor.metrics();
            let token = actor.inspector_token().to_string();
            self.docs
                .lock()
                .insert(slot.id.clone(), token, doc, self.doc_cap);
            round_trips.settle(&self.metrics.kv_round_trips);
            self.metrics.families.before_sleep(&slot.id, &actor);
            if let Err(e) = actor.sleep() {
                tracing::warn!(actor = %slot.id, "actor sleep failed: {e}");
            }
            slot.awake.store(false, Ordering::Relaxed);
            *slot.interrupt.lock() = None;
            *slot.compaction.lock() = None;
            self.metrics.actors_awake.fetch_sub(1, Ordering::Relaxed);
            self.metrics.sleeps.fetch_add(1, Ordering::Relaxed);
        }
        self.retire(slot, state);
    }

    fn retire(&self, slot: &Arc<Slot>, state: &mut SlotState) {
        *state = SlotState::Retired;
        let mut slots = self.slots.lock();
        if slots.get(&slot.id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&slot.id);
        }
    }

    /// The inspector's view of an actor that is awake here or whose last document is kept:
    /// `(token, document)`, without waking anything. `None` when the host has neither; 503
    /// when the actor stays busy past the lock wait.
    pub async fn known_doc(&self, id: &str) -> Result<Option<(String, MetricsDoc)>, HostError> {
        let slot = self.slots.lock().get(id).cloned();
        if let Some(slot) = slot {
            let guard = tokio::time::timeout(self.lock_wait, slot.state.lock())
                .await
                .map_err(|_| busy(self.lock_wait))?;
            if let SlotState::Awake(a) = &*guard {
                return Ok(Some((
                    a.actor.inspector_token().to_string(),
                    a.actor.metrics(),
                )));
            }
        }
        Ok(self
            .docs
            .lock()
            .docs
            .get(id)
            .map(|(t, d, _)| (t.clone(), d.clone())))
    }

    /// Runs `f` on actor `id` if it is awake here, without waking it and without counting as
    /// use (its idle timer is not reset, its costs are not charged): `None` when it is not
    /// awake. `f` must only read what the actor holds in memory (no SQL: it runs on an async
    /// thread). Waits behind requests on the actor at most the lock wait (503 after).
    pub async fn peek<T>(
        &self,
        id: &str,
        f: impl FnOnce(&Actor) -> T,
    ) -> Result<Option<T>, HostError> {
        let Some(slot) = self.slots.lock().get(id).cloned() else {
            return Ok(None);
        };
        let guard = tokio::time::timeout(self.lock_wait, slot.state.lock())
            .await
            .map_err(|_| busy(self.lock_wait))?;
        Ok(match &*guard {
            SlotState::Awake(a) => Some(f(&a.actor)),
            _ => None,
        })
    }

    /// The inspector token of an actor that is awake (or waking) here or whose last document is
    /// kept, read without waiting on the actor's lock. `None` when the host knows neither.
    pub fn known_token(&self, id: &str) -> Option<String> {
        let slot = self.slots.lock().get(id).cloned();
        if let Some(t) = slot.and_then(|s| s.token.lock().clone()) {
            return Some(t);
        }
        self.docs.lock().docs.get(id).map(|(t, _, _)| t.clone())
    }

    /// Interrupts every statement running on an awake actor (the shutdown deadline).
    pub fn interrupt_all(&self) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().values().cloned().collect();
        for slot in slots {
            if let Some(h) = slot.interrupt.lock().as_ref() {
                h.interrupt();
            }
        }
    }

    /// Puts actors idle for longer than `idle` to sleep (those busy are left for later).
    pub async fn sleep_idle(self: &Arc<Self>, idle: Duration) {
        // Until the host has run for `idle`, no actor can have been idle that long (one used in
        // the host's first millisecond has `last_used` 0, which a saturated cutoff would match).
        let (now, idle_ms) = (self.now_ms(), idle.as_millis() as u64);
        let Some(cutoff) = now.checked_sub(idle_ms) else {
            self.compact_due(None);
            return;
        };
        let idle_slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .values()
            .filter(|s| {
                s.awake.load(Ordering::Relaxed) && s.last_used.load(Ordering::Relaxed) <= cutoff
            })
            .cloned()
            .collect();
        for slot in idle_slots {
            if let Ok(mut guard) = slot.state.clone().try_lock_owned() {
                if slot.last_used.load(Ordering::Relaxed) <= cutoff {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        me.compact_locked(&slot, &mut guard);
                        me.sleep_locked(&slot, &mut guard)
                    })
                    .await;
                }
            }
        }
        self.compact_due(Some(cutoff));
    }

    /// Compacts the awake actors whose compaction is due and that were used since `cutoff` (so
    /// are not about to sleep; `None`: every awake actor, as none can be idle yet), each in a
    /// task of its own that takes the actor's lock in its turn like a request (giving up after
    /// the lock wait; the next sweep tries again) and holds it for the compaction only. The
    /// compaction is fenced: a stale instance's writes nothing.
    fn compact_due(self: &Arc<Self>, cutoff: Option<u64>) {
        let due: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .values()
            .filter(|s| {
                s.awake.load(Ordering::Relaxed)
                    && cutoff.is_none_or(|c| s.last_used.load(Ordering::Relaxed) > c)
                    && s.compaction.lock().as_ref().is_some_and(|w| w.due())
            })
            .cloned()
            .collect();
        for slot in due {
            if slot.compacting.swap(true, Ordering::AcqRel) {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let lock = slot.state.clone().lock_owned();
                if let Ok(mut guard) = tokio::time::timeout(me.lock_wait, lock).await {
                    let (me, slot2) = (me.clone(), slot.clone());
                    let _ = tokio::task::spawn_blocking(move || {
                        let due = matches!(&*guard, SlotState::Awake(a) if a.actor.compaction_due());
                        if due {
                            me.compact_locked(&slot2, &mut guard);
                            if let SlotState::Awake(a) = &*guard {
                                a.round_trips.settle(&me.metrics.kv_round_trips);
                            }
                            if matches!(&*guard, SlotState::Awake(a) if a.actor.db().unusable().is_some())
                            {
                                me.sleep_locked(&slot2, &mut guard);
                            }
                        }
                    })
                    .await;
                }
                slot.compacting.store(false, Ordering::Release);
            });
        }
    }

    /// Puts the actor of `slot` to sleep if its database can no longer be used (moved, or a
    /// pipelined put failed); blocking, for a request's task after its lock was released.
    fn sleep_if_unusable(&self, slot: &Arc<Slot>) {
        let mut guard = slot.state.clone().blocking_lock_owned();
        if let SlotState::Awake(awake) = &*guard {
            if awake.actor.db().unusable().is_some() {
                self.sleep_locked(slot, &mut guard);
            }
        }
    }

    /// Puts actor `id` to sleep now if it is awake, after the requests in flight on it (the
    /// alarm tick uses it for the actors it woke).
    pub async fn sleep_now(self: &Arc<Self>, id: &str) {
        let slot = self.slots.lock().get(id).cloned();
        if let Some(slot) = slot {
            let mut guard = slot.state.clone().lock_owned().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.sleep_locked(&slot, &mut guard)).await;
        }
    }

    /// Puts every actor to sleep, waiting for requests in flight on them.
    pub async fn sleep_all(self: &Arc<Self>) {
        let all: Vec<Arc<Slot>> = self.slots.lock().values().cloned().collect();
        for slot in all {
            let mut guard = slot.state.clone().lock_owned().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.sleep_locked(&slot, &mut guard)).await;
        }
    }

    /// The ids of the actors awake here and of those asleep whose last document is kept,
    /// each sorted (for the inspector's overview).
    pub fn actor_ids(&self) -> (Vec<String>, Vec<String>) {
        let mut awake: Vec<String> = self
            .slots
            .lock()
            .values()
            .filter(|s| s.awake.load(Ordering::Relaxed))
            .map(|s| s.id.clone())
            .collect();
        awake.sort();
        let mut asleep: Vec<String> = self
            .docs
            .lock()
            .docs
            .keys()
            .filter(|id| awake.binary_search(id).is_err())
            .cloned()
            .collect();
        asleep.sort();
        (awake, asleep)
    }

    /// True when actor `id` is awake here.
    pub fn is_awake(&self, id: &str) -> bool {
        self.slots
            .lock()
            .get(id)
            .is_some_and(|s| s.awake.load(Ordering::Relaxed))
    }

    /// Actors awake now.
    pub fn awake_count(&self) -> u64 {
        self.metrics.actors_awake.load(Ordering::Relaxed)
    }
}

/// The 503 of a request that waited for an actor's lock past `wait`.
fn busy(wait: Duration) -> HostError {
    HostError::Unavailable(format!(
        "the actor stayed busy for {} ms (requests ahead of this one); retry",
        wait.as_millis()
    ))
}

/// The 503 of a store failure: the client learns only that the store is unavailable, the
/// log gets the details (store URLs and paths are not the client's business).
pub fn store_unavailable(detail: impl std::fmt::Display) -> HostError {
    // At error level: the default log filter shows it (the client sees none of it).
    tracing::error!("store unavailable: {detail}");
    HostError::Unavailable(STORE_UNAVAILABLE.into())
}

/// The answer to a request whose actor can no longer serve (it moved, or a pipelined put
/// failed): 503 either way; a store failure's details go to the log only.
fn gate_error(e: VfsError) -> HostError {
    match e {
        VfsError::Moved => HostError::Unavailable(format!(
            "{e}; the actor wakes afresh at the next request: retry"
        )),
        e => store_unavailable(e),
    }
}

/// The body message of every store failure (503).
pub const STORE_UNAVAILABLE: &str = "store unavailable";

/// True when an actor operation failed because of its store: a KV call that failed (whatever
/// the backend said), a VFS read or write whose KV call failed or whose pipelined put did, or
/// SQLite's I/O error over them. Such an error's text may carry the store's URL, file path or
/// own message: the host answers it only with [`store_unavailable`].
pub fn is_store_failure(e: &ActorError) -> bool {
    fn vfs(v: &VfsError) -> bool {
        matches!(v, VfsError::Kv(..) | VfsError::Poisoned(_))
    }
    match e {
        ActorError::Kv(_) => true,
        ActorError::Vfs(v) | ActorError::Open(crate::vfs::OpenError::Vfs(v)) => vfs(v),
        ActorError::Sqlite(s) | ActorError::Open(crate::vfs::OpenError::Sqlite(s)) => {
            super::sql::is_io_error(s)
        }
        _ => false,
    }
}

fn wake_error(e: ActorError) -> HostError {
    match e {
        ActorError::InvalidActor(e) => HostError::BadRequest(e.to_string()),
        e @ (ActorError::Moved | ActorError::AlreadyRunning { .. }) => {
            HostError::Unavailable(format!("{e}; retry"))
        }
        e @ (ActorError::Kv(_)
        | ActorError::Open(_)
        | ActorError::Vfs(_)
        | ActorError::Sqlite(_)) => store_unavailable(format!("cannot wake the actor: {e}")),
        e => HostError::Internal(format!("cannot wake the actor: {e}")),
    }
}

/// What a request's answer waits for: the actor's commits up to the ticket (the output gate).
/// Its round trips are added to the host counter once the gate is passed.
type Gate = (crate::vfs::Durability, u64, RoundTrips);

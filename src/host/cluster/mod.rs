//! Many `kvsqlite serve` hosts on one store: membership through the store, placement by
//! rendezvous hashing, forwarding to the owner, and takeover when a host dies.
//!
//! Why it exists: one host is a single point of failure and a ceiling, and two hosts on one
//! store without agreement would fight over every actor (each wake moves the fence). The store
//! is the shared truth, so the hosts agree through it:
//!
//! - [`membership`]: each host keeps a record with a lease in `_kvsqlite/cluster/NAME`,
//!   rewritten every heartbeat (a sixth of the TTL) on the condition that it still holds what
//!   this host wrote; the same heartbeat lists every record. A record unchanged for its TTL (as
//!   each observer sees it, on its own clock) is dead, and the first host to notice removes it.
//! - [`placement`]: the owner of an actor is a pure function of the live members' addresses
//!   (rendezvous hashing): no read of any kind on a wake, which stays one round trip.
//! - [`forward`]: a request for an actor another member owns is proxied to it over keep-alive
//!   connections (`kvsqlite-forwarded-by` on the answer); a forwarded request is never forwarded
//!   again.
//! - [`gate`]: the lease. A host writes only while its lease (last heartbeat *sent* + TTL)
//!   holds; a host that finds its lease lapsed (stopped past its TTL) or its record taken drops
//!   every actor without writing and joins again under a new id.
//! - [`route`]: `GET /cluster` (admin), and the overview page's section.
//!
//! Safety does not rest on timing: fencing still refuses the second writer of any overlap
//! (its client gets 503 with `Retry-After`). Timing keeps overlaps away: a host routes only
//! with a member list read less than a third of a TTL ago, so a host that (re)joins holds the
//! requests for its actors until a third of a TTL after its record landed (every other member
//! has stopped serving them by then); a leaving host stops serving first, then marks its
//! record, puts its actors to sleep and keeps answering (forwarding, or telling forwarders it
//! is leaving so they re-route) for two heartbeats before it deletes its record and stops.

pub mod forward;
pub mod gate;
pub mod membership;
pub mod placement;
pub mod route;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::registry::Registry;
use crate::kv::{KvError, SharedStore, Value};
use gate::Lease;
use membership::{Record, Table};

/// The default member TTL (`--member-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// The shortest member TTL accepted.
pub const MIN_TTL: Duration = Duration::from_millis(300);

/// How a host joins a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The cluster's name: hosts with the same name on the same store form one cluster.
    pub name: String,
    /// The address other hosts reach this one at (`HOST:PORT`).
    pub advertise: String,
    /// The lease: a host whose record stays unchanged this long is dead.
    pub ttl: Duration,
}

/// The cluster's figures, shown by `/metrics` and the overview page (held by the host's
/// metric families, so every page reads them without knowing the cluster).
#[derive(Default)]
pub struct Status {
    enabled: AtomicBool,
    /// Live members as this host last saw them (itself included).
    pub members: AtomicU64,
    /// Requests this host forwarded to another member.
    pub forwarded: AtomicU64,
    /// Actors this host put to sleep because another member owns them now.
    pub moves: AtomicU64,
    /// Times this host found itself expelled and joined again.
    pub expulsions: AtomicU64,
    /// The cluster's name and this host's address, once joined.
    pub identity: OnceLock<(String, String)>,
    /// The members as last seen: (address, id, leaving, this host).
    pub view: Mutex<Vec<(String, String, bool, bool)>>,
}

impl Status {
    /// True when this host is in a cluster.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The cluster families in Prometheus text (nothing outside cluster mode).
    pub fn render(&self, out: &mut String) {
        if !self.enabled() {
            return;
        }
        let mut one = |name: &str, ty: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {ty}");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        one(
            "kvsqlite_cluster_members",
            "gauge",
            "Live cluster members as this host last saw them, itself included.",
            &self.members,
        );
        one(
            "kvsqlite_requests_forwarded_total",
            "counter",
            "Requests this host forwarded to the member that owns their actor.",
            &self.forwarded,
        );
        one(
            "kvsqlite_actor_moves_total",
            "counter",
            "Actors this host put to sleep because another member owns them now.",
            &self.moves,
        );
        one(
            "kvsqlite_cluster_expulsions_total",
            "counter",
            "Times this host found its lease lapsed or its record taken, dropped its actors and joined again.",
            &self.expulsions,
        );
    }
}

/// Where a request for an actor goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// This host serves it, from this instant on (a host that just took actors waits until
    /// every other member has stopped serving them; `None`: now).
    Local(Option<Instant>),
    /// The member at this address owns it.
    Forward(String),
    /// Nobody can serve it here now: 503 with this reason; `leaving` tells a forwarding host
    /// to re-route (this host is leaving or holds no lease).
    Refuse(String, bool),
}

/// What placement uses, rebuilt at every heartbeat.
#[derive(Debug, Default)]
struct Placement {
    /// Live members that take actors, this host included once joined and not leaving.
    members: Vec<String>,
    /// This host serves at all: joined, not leaving.
    joined: bool,
    /// Routing needs the member list read at most a third of a TTL ago.
    fresh_until: Option<Instant>,
    /// This host serves the actors it owns from this instant: a third of a TTL after the
    /// write that (re)joined it landed, when every other member's list names it.
    serve_from: Option<Instant>,
}

struct State {
    /// This incarnation's member id.
    id: String,
    /// The record's value as last written (`None`: not joined).
    written: Option<Value>,
    seq: u64,
    /// When the write that joined this incarnation was acknowledged.
    joined_at: Option<Instant>,
    leaving: bool,
    stopped: bool,
    table: Table,
    /// Member records (by id) whose host answered a forward with "leaving", and when: a
    /// record that host writes after it (re)joins has a new id and is not excluded.
    hinted: HashMap<String, Instant>,
}

/// A host's membership in a cluster.
pub struct Cluster {
    config: ClusterConfig,
    ns: String,
    store: SharedStore,
    lease: Arc<Lease>,
    state: Mutex<State>,
    placement: Mutex<Arc<Placement>>,
    status: Arc<Status>,
    beat_lock: tokio::sync::Mutex<()>,
    sweeping: AtomicBool,
    pub(crate) pool: forward::Pool,
    registry: OnceLock<Weak<Registry>>,
}

fn new_id() -> Result<String, String> {
    crate::actor::startup::random_token()
        .map(|t| t[..16].to_string())
        .map_err(|e| format!("cannot make a member id: {e}"))
}

impl Cluster {
    /// Joins: writes this host's first record (one conditional put and one listing). The
    /// host's figures go to `status`. An error when the store refuses or the name is invalid.
    pub async fn join(
        config: ClusterConfig,
        store: SharedStore,
        status: Arc<Status>,
        forward: forward::ForwardLimits,
    ) -> Result<Arc<Cluster>, String> {
        membership::check_name(&config.name)?;
        if config.ttl < MIN_TTL {
            return Err(format!(
                "the member TTL must be at least {} ms",
                MIN_TTL.as_millis()
            ));
        }
        let _ = status
            .identity
            .set((config.name.clone(), config.advertise.clone()));
        status.enabled.store(true, Ordering::Relaxed);
        let c = Arc::new(Cluster {
            ns: membership::namespace(&config.name),
            config,
            store,
            lease: Arc::new(Lease::default()),
            state: Mutex::new(State {
                id: new_id()?,
                written: None,
                seq: 0,
                joined_at: None,
                leaving: false,
                stopped: false,
                table: Table::default(),
                hinted: HashMap::new(),
            }),
            placement: Mutex::new(Arc::new(Placement::default())),
            status,
            beat_lock: tokio::sync::Mutex::new(()),
            sweeping: AtomicBool::new(false),
            pool: forward::Pool::new(forward),
            registry: OnceLock::new(),
        });
        c.beat_once().await.map_err(|e| {
            format!(
                "cannot join cluster {:?} through the store: {e}",
                c.config.name
            )
        })?;
        Ok(c)
    }

    /// The lease every actor write of this host needs (see [`gate::GatedStore`]).
    pub fn lease(&self) -> Arc<Lease> {
        self.lease.clone()
    }

    /// This host's advertised address.
    pub fn advertise(&self) -> &str {
        &self.config.advertise
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The interval between heartbeats: a sixth of the TTL.
    pub fn beat_every(&self) -> Duration {
        self.config.ttl / 6
    }

    /// The figures.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Where a request for `actor` goes; `forwarded` when another member sent it (it is then
    /// served here or refused, never forwarded again).
    pub fn route(&self, actor: &str, forwarded: bool) -> Route {
        let now = Instant::now();
        let p = self.placement.lock().clone();
        let fresh = p.fresh_until.is_some_and(|t| now < t);
        let serving = p.joined && fresh && self.lease.valid_at(now);
        let refuse = || {
            Route::Refuse(
                "this host is not serving actors now (leaving, or its cluster lease lapsed); retry"
                    .into(),
                true,
            )
        };
        let owner = placement::owner(&p.members, actor);
        let mine = owner == Some(self.config.advertise.as_str());
        let local = || Route::Local(p.serve_from.filter(|t| mine && now < *t));
        if forwarded {
            return if serving { local() } else { refuse() };
        }
        if !fresh {
            return Route::Refuse(
                "this host's cluster member list is out of date (the store is not answering); retry"
                    .into(),
                false,
            );
        }
        match owner {
            Some(_) if mine => {
                if serving {
                    local()
                } else {
                    refuse()
                }
            }
            Some(o) => Route::Forward(o.to_string()),
            None => Route::Refuse(
                "no live cluster member serves actors now; retry".into(),
                false,
            ),
        }
    }

    /// True when this host owns `actor` in the member list every host uses (the alarm tick
    /// fires only these; the sweep keeps only these awake).
    pub fn owns(&self, actor: &str) -> bool {
        let p = self.placement.lock().clone();
        p.joined && placement::owner(&p.members, actor) == Some(self.config.advertise.as_str())
    }

    /// A forward to `addr` was answered "leaving": place nothing on the records that address
    /// holds now (a TTL at most; a record it writes when it joins again counts as usual).
    pub fn hint_leaving(&self, addr: &str) {
        let mut st = self.state.lock();
        let now = Instant::now();
        let ids: Vec<String> = st
            .table
            .all()
            .into_iter()
            .filter(|s| s.record.addr == addr)
            .map(|s| s.id.clone())
            .collect();
        for id in ids {
            st.hinted.insert(id, now);
        }
        let p = self.rebuild(&mut st, now);
        *self.placement.lock() = Arc::new(p);
    }

    fn rebuild(&self, st: &mut State, now: Instant) -> Placement {
        let ttl = self.config.ttl;
        st.hinted
            .retain(|_, t| now.saturating_duration_since(*t) < ttl);
        let me = &self.config.advertise;
        let mut members = st.table.placement(now, Some(&st.id), &st.hinted);
        members.retain(|a| a != me);
        let joined = st.written.is_some() && !st.leaving && !st.stopped;
        if joined {
            members.push(me.clone());
            members.sort();
        }
        self.status
            .members
            .store(st.table.live_count(now) as u64, Ordering::Relaxed);
        *self.status.view.lock() = st
            .table
            .all()
            .into_iter()
            .filter(|s| s.is_live(now))
            .map(|s| {
                (
                    s.record.addr.clone(),
                    s.id.clone(),
                    s.record.leaving,
                    s.id == st.id,
                )
            })
            .collect();
        let old = self.placement.lock().clone();
        Placement {
            members,
            joined,
            fresh_until: old.fresh_until,
            serve_from: st.joined_at.map(|t| t + ttl / 3),
        }
    }

    /// One heartbeat: expel this host first if its lease lapsed since the last one, then write
    /// the record and read the members.
    async fn beat_once(&self) -> Result<(), KvError> {
        let _beat = self.beat_lock.lock().await;
        let (id, value, previous) = {
            let mut st = self.state.lock();
            if st.stopped {
                return Ok(());
            }
            st.seq += 1;
            let record = Record {
                addr: self.config.advertise.clone(),
                seq: st.seq,
                leaving: st.leaving,
                ttl_ms: self.config.ttl.as_millis() as u64,
            };
            (st.id.clone(), record.encode(), st.written.clone())
        };
        let sent = Instant::now();
        let store = self.store.clone();
        let ns = self.ns.clone();
        let v = value.clone();
        let r = tokio::task::spawn_blocking(move || {
            membership::heartbeat(&store, &ns, &id, v, previous.as_deref())
        })
        .await
        .map_err(|e| KvError::Unavailable {
            backend: "cluster",
            message: format!("heartbeat task failed: {e}"),
        })?;
        let listing = r?;
        let now = Instant::now();
        self.lease.extend(sent + self.config.ttl);
        let dead = {
            let mut st = self.state.lock();
            st.written = Some(value);
            st.joined_at.get_or_insert(now);
            if st.joined_at == Some(now) {
                tracing::info!(id = %st.id, addr = %self.config.advertise, "joined the cluster");
            }
            st.table.observe(&listing, now);
            let me = st.id.clone();
            let dead: Vec<_> = st
                .table
                .dead(now)
                .into_iter()
                .filter(|s| s.id != me)
                .collect();
            let mut p = self.rebuild(&mut st, now);
            p.fresh_until = Some(sent + self.config.ttl / 3);
            *self.placement.lock() = Arc::new(p);
            dead
        };
        for s in dead {
            // Its lease ended: take its record away (on the condition that it is unchanged),
            // so a host that comes back finds itself expelled.
            let (store, ns) = (self.store.clone(), self.ns.clone());
            let r = tokio::task::spawn_blocking(move || {
                membership::remove(&store, &ns, &s.id, &s.raw).map(|()| s)
            })
            .await;
            if let Ok(Ok(s)) = r {
                tracing::warn!(member = %s.id, addr = %s.record.addr, "cluster member expired: its actors move");
            }
        }
        Ok(())
    }

    /// Drops every actor without writing (the lease is revoked first, so the gate refuses
    /// their sleep writes) and takes a new member id: the next heartbeat joins again.
    async fn expel(&self, registry: &Arc<Registry>, why: &str) {
        tracing::warn!("cluster: {why}: dropping every actor without writing, then joining again");
        self.lease.revoke();
        let old = {
            let mut st = self.state.lock();
            let old = st.written.take().map(|v| (st.id.clone(), v));
            st.joined_at = None;
            if let Ok(id) = new_id() {
                st.id = id;
            }
            let p = self.rebuild(&mut st, Instant::now());
            *self.placement.lock() = Arc::new(p);
            old
        };
        self.status.expulsions.fetch_add(1, Ordering::Relaxed);
        registry.sleep_all().await;
        if let Some((id, v)) = old {
            let (store, ns) = (self.store.clone(), self.ns.clone());
            let _ =
                tokio::task::spawn_blocking(move || membership::remove(&store, &ns, &id, &v)).await;
        }
    }

    /// One turn of the heartbeat loop.
    async fn tick(self: &Arc<Self>, registry: &Arc<Registry>) {
        let joined = self.state.lock().written.is_some();
        if joined && !self.lease.valid() {
            self.expel(
                registry,
                "the lease lapsed (this host was stopped or the store did not answer for a TTL)",
            )
            .await;
        }
        match self.beat_once().await {
            Ok(()) => self.spawn_sweep(registry),
            Err(KvError::Conflict { .. }) => {
                self.expel(registry, "another host took this host's membership record")
                    .await
            }
            Err(e) => tracing::warn!("cluster heartbeat failed: {e}"),
        }
    }

    /// Starts the heartbeat loop (aborted by the host at shutdown).
    pub fn start(self: &Arc<Self>, registry: &Arc<Registry>) -> tokio::task::JoinHandle<()> {
        let _ = self.registry.set(Arc::downgrade(registry));
        let me = self.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(me.beat_every()).await;
                if me.state.lock().stopped {
                    return;
                }
                me.tick(&registry).await;
            }
        })
    }

    /// Puts to sleep (in a task of its own) every awake actor another member owns now, and
    /// closes the WebSockets of every actor another member owns.
    fn spawn_sweep(self: &Arc<Self>, registry: &Arc<Registry>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let (awake, _) = registry.actor_ids();
            for id in awake {
                if !me.owns(&id) {
                    registry.sleep_now(&id).await;
                    me.status.moves.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(actor = %id, "actor moved to another member: put to sleep");
                }
            }
            // Its WebSockets too, awake or asleep: their clients reconnect, and this host
            // answers them 421 naming the owner.
            let hub = registry.hub();
            for id in hub.actors_with_sockets() {
                if !me.owns(&id) {
                    hub.close_actor(&id, crate::host::sockets::MOVED_CLOSE_CODE);
                }
            }
            me.sweeping.store(false, Ordering::Release);
        });
    }

    /// Leaves cleanly: marks the record leaving (others stop placing actors here at their next
    /// heartbeat), puts every actor to sleep, keeps answering for two heartbeats (direct
    /// requests are forwarded, forwarded ones told to re-route), then deletes the record.
    pub async fn leave(&self, registry: &Arc<Registry>) {
        {
            let mut st = self.state.lock();
            st.leaving = true;
            let p = self.rebuild(&mut st, Instant::now());
            *self.placement.lock() = Arc::new(p);
        }
        if let Err(e) = self.beat_once().await {
            tracing::warn!("cluster: marking this host as leaving failed: {e}");
        }
        registry.sleep_all().await;
        tokio::time::sleep(self.beat_every() * 2 + Duration::from_millis(50)).await;
        let _beat = self.beat_lock.lock().await;
        let old = {
            let mut st = self.state.lock();
            st.stopped = true;
            st.written.take().map(|v| (st.id.clone(), v))
        };
        if let Some((id, v)) = old {
            let (store, ns) = (self.store.clone(), self.ns.clone());
            match tokio::task::spawn_blocking(move || membership::remove(&store, &ns, &id, &v))
                .await
            {
                Ok(Ok(())) => tracing::info!("left the cluster"),
                Ok(Err(e)) => tracing::warn!("cluster: deleting this host's record failed: {e}"),
                Err(e) => tracing::warn!("cluster: {e}"),
            }
        }
    }

    /// The members as this host sees them, for `GET /cluster`: `(address, id, leaving,
    /// this host)`.
    pub fn members(&self) -> Vec<(String, String, bool, bool)> {
        self.status.view.lock().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryStore;

    fn limits() -> forward::ForwardLimits {
        forward::ForwardLimits {
            max_body: 1 << 20,
            body_timeout: Duration::from_secs(1),
            answer_timeout: Duration::from_secs(1),
        }
    }

    async fn member(store: &SharedStore, addr: &str) -> Arc<Cluster> {
        let config = ClusterConfig {
            name: "t".into(),
            advertise: addr.into(),
            ttl: Duration::from_millis(600),
        };
        Cluster::join(config, store.clone(), Arc::default(), limits())
            .await
            .expect("join")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_agree_on_owners_and_a_silent_member_is_removed_and_expelled() {
        let store: SharedStore = Arc::new(MemoryStore::new());
        let a = member(&store, "a:1").await;
        let b = member(&store, "b:2").await;
        a.beat_once().await.expect("beat");
        let both = vec!["a:1".to_string(), "b:2".to_string()];
        for i in 0..50 {
            let actor = format!("actor-{i}");
            let owner = placement::owner(&both, &actor).expect("an owner");
            for (c, me) in [(&a, "a:1"), (&b, "b:2")] {
                match c.route(&actor, false) {
                    Route::Local(_) => assert_eq!(owner, me, "{actor}"),
                    Route::Forward(to) => assert_eq!((to.as_str(), owner == me), (owner, false)),
                    r => panic!("{actor}: {r:?}"),
                }
                assert_eq!(c.owns(&actor), owner == me);
                // A forwarded request is served where it lands, never forwarded again.
                assert!(matches!(c.route(&actor, true), Route::Local(_)));
            }
        }
        assert_eq!(a.status.members.load(Ordering::Relaxed), 2);
        // Without a lease a host serves nothing: forwarders are told to re-route.
        a.lease.revoke();
        let mine = (0..50)
            .map(|i| format!("actor-{i}"))
            .find(|x| a.owns(x))
            .expect("a owns some actor");
        assert!(matches!(a.route(&mine, false), Route::Refuse(_, true)));
        assert!(matches!(a.route(&mine, true), Route::Refuse(_, true)));
        // b stops beating: once its record stayed unchanged for its TTL, a removes it and owns
        // every actor; b's next heartbeat finds its record taken.
        tokio::time::sleep(Duration::from_millis(700)).await;
        a.beat_once().await.expect("beat");
        let ns = membership::namespace("t");
        let left = membership::list(&store, &ns).expect("list");
        assert_eq!(left.len(), 1, "b's record was removed");
        for i in 0..50 {
            assert!(a.owns(&format!("actor-{i}")));
        }
        assert!(matches!(b.beat_once().await, Err(KvError::Conflict { .. })));
    }
}

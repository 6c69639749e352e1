//! The host-wide families of what the store and the VFS do: KV calls by kind with their
//! latency, bytes, commits by path with pages and bytes per commit, page reads by source,
//! read-ahead, wake phases, moved conflicts and statements; plus the per-actor figures the
//! overview page and `GET /inspector/top` show.
//!
//! Why it exists: `/metrics` must say why a fleet is slow without a series per actor. The
//! figures are gathered at known points, never by hooks deep in the VFS: every KV call goes
//! through one timing wrapper over the host's store ([`Families::wrap_store`]); the registry
//! hands each actor's [`crate::vfs::Snapshot`], query-log totals and KV counters here after
//! its wake, after each request and before its sleep, and the deltas since the last hand-over
//! are added to host-wide counters (per-actor state lives only while the actor is awake).
//! Labels: `backend` (the store's kind) and `op` (the KV call kind), `path` and `phase`; never
//! an actor id.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::prom::{Histogram, SECONDS};
use super::top::Costs;
use crate::actor::Actor;
use crate::kv::counting::{CountingStore, KvCounters, OpKind};
use crate::kv::{
    KvError, KvLimits, KvStore, ListPage, ListRequest, ReadOp, ReadResult, SharedStore, Value,
    WriteBatch,
};
use crate::vfs::Snapshot;

/// Bounds of the pages-per-commit histogram.
const PAGES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// Bounds of the bytes-per-commit histogram.
const BYTES: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// Bounds of the KV call latency histograms (the store answers faster than a statement).
const KV_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The commit paths, as the `path` label says them.
pub const COMMIT_PATHS: [&str; 3] = ["atomic", "staged", "journal"];

/// One point of the overview's hour of history is taken this often.
pub const HOUR_EVERY: Duration = Duration::from_secs(30);

/// Points kept: one hour.
pub const HOUR_SAMPLES: usize = 120;

/// The store side: the counting wrapper the host's actors use, and its latency histograms.
struct KvSide {
    counting: Arc<CountingStore>,
    latency: Arc<[Histogram; 5]>,
    backend: &'static str,
}

/// What the host knows of one awake actor (the overview's table).
#[derive(Clone, Debug, PartialEq)]
pub struct ActorInfo {
    /// When it woke, in milliseconds since the Unix epoch.
    pub woke_unix_ms: u64,
    /// True when that wake created it.
    pub created: bool,
    /// Its database's size in bytes after its last request (`None` when unknown).
    pub size_bytes: Option<u64>,
    /// SQL statements it ran since it woke (its wake's included).
    pub statements: u64,
    /// KV round trips it made since it woke (its wake's included).
    pub kv_round_trips: u64,
}

/// Per awake actor: what was already added to the host counters.
struct Live {
    vfs: Snapshot,
    statements: u64,
    kv: KvCounters,
    info: ActorInfo,
}

/// One point of the hour of history: cumulative counters and the awake actors then.
#[derive(Clone, Copy, Debug)]
pub struct HourSample {
    /// When.
    pub at: Instant,
    /// Actors awake.
    pub awake: u64,
    /// KV calls (all kinds).
    pub kv_calls: u64,
    /// Bytes received from and sent to the store.
    pub kv_bytes: u64,
    /// SQL statements.
    pub statements: u64,
    /// Commits (all paths).
    pub commits: u64,
}

/// Every family of this module (docs/src/serving/http.md says what each means).
pub struct Families {
    kv: OnceLock<KvSide>,
    commits: [AtomicU64; 3],
    commit_pages: Histogram,
    commit_bytes: Histogram,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    preload_hits: AtomicU64,
    preload_misses: AtomicU64,
    readahead_prefetched: AtomicU64,
    readahead_used: AtomicU64,
    readahead_wasted: AtomicU64,
    /// Page images before and after compression: current pages, then the history's.
    compression: [AtomicU64; 4],
    phases: Mutex<BTreeMap<(&'static str, &'static str), Histogram>>,
    moved: AtomicU64,
    statements: AtomicU64,
    live: Mutex<HashMap<String, Live>>,
    hour: Mutex<VecDeque<HourSample>>,
    /// What each actor cost lately (`GET /inspector/top`).
    pub costs: Costs,
    /// Alarms, the queue and the WebSockets, host-wide.
    pub realtime: Realtime,
    /// The cluster's figures (`serve --cluster`; rendered only then).
    pub cluster: Arc<super::cluster::Status>,
}

impl Default for Families {
    fn default() -> Self {
        Families {
            kv: OnceLock::new(),
            commits: Default::default(),
            commit_pages: Histogram::new(PAGES),
            commit_bytes: Histogram::new(BYTES),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            preload_hits: AtomicU64::new(0),
            preload_misses: AtomicU64::new(0),
            readahead_prefetched: AtomicU64::new(0),
            readahead_used: AtomicU64::new(0),
            readahead_wasted: AtomicU64::new(0),
            compression: Default::default(),
            phases: Mutex::new(BTreeMap::new()),
            moved: AtomicU64::new(0),
            statements: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            hour: Mutex::new(VecDeque::new()),
            costs: Costs::default(),
            realtime: Realtime::default(),
            cluster: Arc::default(),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Families {
    /// Wraps the host's store so that every KV call of every actor (and of the host's own
    /// token look-ups) is counted and timed here. Call once; a second call returns `store`
    /// as it is (the first wrapper keeps counting).
    pub fn wrap_store(&self, store: SharedStore) -> SharedStore {
        let backend = store.backend();
        let counting = CountingStore::wrap(store.clone());
        let latency: Arc<[Histogram; 5]> =
            Arc::new(std::array::from_fn(|_| Histogram::new(KV_SECONDS)));
        let side = KvSide {
            counting: counting.clone(),
            latency: latency.clone(),
            backend,
        };
        if self.kv.set(side).is_err() {
            return store;
        }
        Arc::new(TimedStore {
            inner: counting,
            latency,
        })
    }

    /// A wake that succeeded: its phases, its preload misses, and everything it did so far.
    pub fn on_wake(&self, id: &str, actor: &Actor) {
        let report = actor.startup();
        {
            let mut phases = self.phases.lock();
            for p in &report.phases {
                phases
                    .entry((p.group.name(), p.name))
                    .or_insert_with(|| Histogram::new(SECONDS))
                    .observe(p.ms.max(0.0) / 1000.0);
            }
        }
        self.preload_misses
            .fetch_add(report.preload_misses, Ordering::Relaxed);
        self.live.lock().insert(
            id.to_string(),
            Live {
                vfs: Snapshot::default(),
                statements: 0,
                kv: KvCounters::default(),
                info: ActorInfo {
                    woke_unix_ms: unix_ms(),
                    created: report.is_new,
                    size_bytes: None,
                    statements: 0,
                    kv_round_trips: 0,
                },
            },
        );
        self.account(id, actor, None);
    }

    /// A wake that failed because another instance of the actor wrote meanwhile.
    pub fn on_wake_moved(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ran on `actor` for `busy`; `moved` when it found the actor moved.
    pub fn after_request(&self, id: &str, actor: &Actor, busy: Duration, moved: bool) {
        if moved {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        self.account(id, actor, Some(busy));
    }

    /// The actor is about to sleep: what it did since its last request, then it is forgotten.
    pub fn before_sleep(&self, id: &str, actor: &Actor) {
        self.account(id, actor, None);
        self.live.lock().remove(id);
    }

    /// Adds what `actor` did since the last hand-over to the host counters and its costs.
    fn account(&self, id: &str, actor: &Actor, busy: Option<Duration>) {
        let vfs = actor.db().snapshot();
        let statements = actor.query_log().totals().sql_statements;
        let kv = actor.kv_counters();
        let size = actor.db().known_size();
        let (d, ds, dkv, moved) = {
            let mut live = self.live.lock();
            let Some(e) = live.get_mut(id) else {
                return;
            };
            let d = vfs - e.vfs;
            let ds = statements.saturating_sub(e.statements);
            let dkv = kv.delta(&e.kv);
            e.vfs = vfs;
            e.statements = statements;
            e.kv = kv;
            e.info.statements = statements;
            e.info.kv_round_trips = kv.round_trips();
            if size.is_some() {
                e.info.size_bytes = size;
            }
            (d, ds, dkv, actor.db().moved())
        };
        self.add_vfs(&d, moved);
        self.statements.fetch_add(ds, Ordering::Relaxed);
        let t = dkv.total();
        self.costs.add(
            id,
            super::top::Cost {
                kv_round_trips: t.calls,
                kv_bytes: t.bytes_in + t.bytes_out,
                statements: ds,
                busy_seconds: busy.map_or(0.0, |b| b.as_secs_f64()),
            },
        );
    }

    /// `moved`: the actor found another instance had written; its last transaction's attempts
    /// (counted by the VFS) wrote nothing, so they are not commits.
    fn add_vfs(&self, d: &Snapshot, moved: bool) {
        let add = |c: &AtomicU64, n: u64| {
            if n > 0 {
                c.fetch_add(n, Ordering::Relaxed);
            }
        };
        let paths = if moved {
            [0; 3]
        } else {
            [d.atomic_commits, d.staged_commits, d.journal_fallbacks]
        };
        for (c, n) in self.commits.iter().zip(paths) {
            add(c, n);
        }
        let commits: u64 = paths.iter().sum();
        if commits > 0 {
            // The pages and bytes written between two hand-overs, split evenly over the
            // commits among them (a request makes at most one; a wake may run several
            // migrations): sums stay exact.
            for i in 0..commits {
                let share = |total: u64| total / commits + u64::from(i < total % commits);
                self.commit_pages.observe(share(d.pages_written) as f64);
                self.commit_bytes.observe(share(d.bytes_written) as f64);
            }
        }
        add(&self.cache_hits, d.cache_hits);
        add(&self.cache_misses, d.cache_misses);
        add(&self.preload_hits, d.preload_hits);
        add(&self.readahead_prefetched, d.readahead_prefetched);
        add(&self.readahead_used, d.readahead_used);
        add(&self.readahead_wasted, d.readahead_wasted);
        let sizes = if moved {
            [0; 4]
        } else {
            [
                d.page_image_bytes,
                d.page_stored_bytes,
                d.history_image_bytes,
                d.history_stored_bytes,
            ]
        };
        for (c, n) in self.compression.iter().zip(sizes) {
            add(c, n);
        }
    }

    /// The awake actors the host holds figures for, sorted by id.
    pub fn awake_actors(&self) -> Vec<(String, ActorInfo)> {
        let mut v: Vec<(String, ActorInfo)> = self
            .live
            .lock()
            .iter()
            .map(|(k, l)| (k.clone(), l.info.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// KV calls, bytes, statements and commits so far, with `awake` actors: a point of the
    /// hour of history (not kept; see [`Families::sample_hour`]).
    pub fn point(&self, awake: u64) -> HourSample {
        let kv = self
            .kv
            .get()
            .map(|s| s.counting.snapshot().total())
            .unwrap_or_default();
        HourSample {
            at: Instant::now(),
            awake,
            kv_calls: kv.calls,
            kv_bytes: kv.bytes_in + kv.bytes_out,
            statements: self.statements.load(Ordering::Relaxed),
            commits: self.commits.iter().map(|c| c.load(Ordering::Relaxed)).sum(),
        }
    }

    /// Keeps a point of the hour of history (the host calls it every [`HOUR_EVERY`]).
    pub fn sample_hour(&self, awake: u64) {
        let p = self.point(awake);
        let mut q = self.hour.lock();
        q.push_back(p);
        while q.len() > HOUR_SAMPLES + 1 {
            q.pop_front();
        }
    }

    /// The kept points, oldest first.
    pub fn hour(&self) -> Vec<HourSample> {
        self.hour.lock().iter().copied().collect()
    }

    /// The families' text exposition, appended to `out`.
    pub fn render(&self, out: &mut String) {
        self.cluster.render(out);
        let head = |out: &mut String, name: &str, ty: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {ty}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            head(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        if let Some(kv) = self.kv.get() {
            let snap = kv.counting.snapshot();
            let b = kv.backend;
            let per_op = |out: &mut String, name: &str, help: &str, f: &dyn Fn(OpKind) -> u64| {
                head(out, name, "counter", help);
                for k in OpKind::ALL {
                    let _ = writeln!(
                        out,
                        "{name}{{backend=\"{b}\",op=\"{}\"}} {}",
                        k.name(),
                        f(k)
                    );
                }
            };
            per_op(
                out,
                "kvsqlite_kv_calls_total",
                "KV calls (round trips) to the store by kind; failed calls included.",
                &|k| snap.op(k).calls,
            );
            per_op(
                out,
                "kvsqlite_kv_call_errors_total",
                "KV calls that returned an error, by kind.",
                &|k| snap.op(k).errors,
            );
            let t = snap.total();
            head(
                out,
                "kvsqlite_kv_read_bytes_total",
                "counter",
                "Bytes received from the store: values of gets, keys and values of listed entries.",
            );
            let _ = writeln!(
                out,
                "kvsqlite_kv_read_bytes_total{{backend=\"{b}\"}} {}",
                t.bytes_in
            );
            head(
                out,
                "kvsqlite_kv_written_bytes_total",
                "counter",
                "Bytes sent to the store: keys and values written, keys asked for, bounds, preconditions.",
            );
            let _ = writeln!(
                out,
                "kvsqlite_kv_written_bytes_total{{backend=\"{b}\"}} {}",
                t.bytes_out
            );
            let name = "kvsqlite_kv_call_duration_seconds";
            head(
                out,
                name,
                "histogram",
                "Wall time of one KV call by kind, in seconds.",
            );
            for (k, h) in OpKind::ALL.iter().zip(kv.latency.iter()) {
                h.render_series(out, name, &format!("backend=\"{b}\",op=\"{}\",", k.name()));
            }
        }
        let name = "kvsqlite_commits_total";
        head(
            out,
            name,
            "counter",
            "Transactions committed, by path: atomic (one put), staged (too big for one put), journal (rollback-journal fallback).",
        );
        for (p, c) in COMMIT_PATHS.iter().zip(&self.commits) {
            let _ = writeln!(out, "{name}{{path=\"{p}\"}} {}", c.load(Ordering::Relaxed));
        }
        head(
            out,
            "kvsqlite_commit_pages",
            "histogram",
            "Pages written per commit.",
        );
        self.commit_pages
            .render_series(out, "kvsqlite_commit_pages", "");
        head(
            out,
            "kvsqlite_commit_bytes",
            "histogram",
            "KV bytes (keys and values) written per commit.",
        );
        self.commit_bytes
            .render_series(out, "kvsqlite_commit_bytes", "");
        counter(
            out,
            "kvsqlite_page_cache_hits_total",
            "Page reads served by the VFS page cache.",
            &self.cache_hits,
        );
        counter(
            out,
            "kvsqlite_page_cache_misses_total",
            "Page reads that went to the store (neither cache nor preload had the page).",
            &self.cache_misses,
        );
        counter(
            out,
            "kvsqlite_preload_hits_total",
            "Page reads served by the wake's preload.",
            &self.preload_hits,
        );
        counter(
            out,
            "kvsqlite_preload_misses_total",
            "Page reads during wakes that the preload did not hold.",
            &self.preload_misses,
        );
        counter(
            out,
            "kvsqlite_readahead_prefetched_pages_total",
            "Pages fetched ahead of need by read-ahead.",
            &self.readahead_prefetched,
        );
        counter(
            out,
            "kvsqlite_readahead_used_pages_total",
            "Read-ahead pages later read.",
            &self.readahead_used,
        );
        counter(
            out,
            "kvsqlite_readahead_wasted_pages_total",
            "Read-ahead pages dropped without being read.",
            &self.readahead_wasted,
        );
        let name = "kvsqlite_compression_bytes_total";
        head(
            out,
            name,
            "counter",
            "Bytes of page images written, by what (page: the current database's pages; history: its redo records and base images) and side (before or after LZ4, which is used only where it is shorter).",
        );
        for (i, c) in self.compression.iter().enumerate() {
            let what = ["page", "history"][i / 2];
            let side = ["before", "after"][i % 2];
            let _ = writeln!(
                out,
                "{name}{{what=\"{what}\",side=\"{side}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let name = "kvsqlite_wake_phase_duration_seconds";
        head(
            out,
            name,
            "histogram",
            "Wall time of each wake phase in seconds (a phase that contains others includes them).",
        );
        for ((group, phase), h) in self.phases.lock().iter() {
            h.render_series(out, name, &format!("group=\"{group}\",phase=\"{phase}\","));
        }
        counter(
            out,
            "kvsqlite_moved_conflicts_total",
            "Wakes and requests that found another instance of the actor had written (the actor is woken afresh).",
            &self.moved,
        );
        counter(
            out,
            "kvsqlite_statements_total",
            "SQL statements the actors ran (requests, wakes and migrations; not the inspector's pages).",
            &self.statements,
        );
        self.realtime.render(out);
    }
}

/// The host-wide families of alarms, the queue and the WebSockets (never per actor).
#[derive(Default)]
pub struct Realtime {
    /// Ticks of the alarm loop.
    pub alarm_ticks: AtomicU64,
    /// Due-index lists the ticks made (one per shard per tick that listed).
    pub alarm_index_lists: AtomicU64,
    /// Alarms fired (handler committed with the deletion).
    pub alarms_fired: AtomicU64,
    /// Alarm handler failures (rolled back, retried later).
    pub alarm_retries: AtomicU64,
    /// Messages put on queues through the host.
    pub queue_enqueued: AtomicU64,
    /// Queued messages handled (committed with their acknowledgement).
    pub queue_handled: AtomicU64,
    /// Queue drains stopped by a failure (the message stays first in line).
    pub queue_failures: AtomicU64,
    /// WebSockets open now (a gauge).
    pub ws_open: AtomicU64,
    /// WebSockets opened.
    pub ws_opened: AtomicU64,
    /// Connects refused at the socket cap.
    pub ws_refused: AtomicU64,
    /// Sockets closed because their receiver fell behind.
    pub ws_closed_slow: AtomicU64,
    /// Messages received on sockets.
    pub ws_messages: AtomicU64,
    /// Pushes queued to a socket.
    pub ws_pushes_delivered: AtomicU64,
    /// Pushes not delivered: their socket was closing or too slow, or their commit did not
    /// become durable.
    pub ws_pushes_dropped: AtomicU64,
    /// Pushes that reached no open socket.
    pub ws_pushes_unrouted: AtomicU64,
    /// Bytes queued for sockets now (a gauge).
    pub ws_buffered_bytes: AtomicU64,
}

impl Realtime {
    /// Counts a queue drain's outcome.
    pub fn count_drain(&self, r: &crate::actor::queue::DrainReport) {
        self.queue_handled
            .fetch_add(r.handled as u64, Ordering::Relaxed);
        if r.failed.is_some() {
            self.queue_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The text exposition of these families, appended to `out`.
    pub fn render(&self, out: &mut String) {
        let one = |out: &mut String, name: &str, ty: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {ty}");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        let c = "counter";
        let g = "gauge";
        for (name, ty, help, v) in [
            ("kvsqlite_alarm_ticks_total", c, "Ticks of the host's alarm loop (idle ticks that skipped listing included).", &self.alarm_ticks),
            ("kvsqlite_alarm_index_lists_total", c, "KV lists of the due index made by the alarm ticks (one per shard per listing tick).", &self.alarm_index_lists),
            ("kvsqlite_alarms_fired_total", c, "Alarms fired: handler committed with the alarm's deletion.", &self.alarms_fired),
            ("kvsqlite_alarm_retries_total", c, "Alarm handler failures, each rolled back and retried later with a backoff.", &self.alarm_retries),
            ("kvsqlite_queue_enqueued_total", c, "Messages put on actors' queues through this host (one put each, no wake).", &self.queue_enqueued),
            ("kvsqlite_queue_handled_total", c, "Queued messages handled, each committed with its acknowledgement.", &self.queue_handled),
            ("kvsqlite_queue_handler_failures_total", c, "Queue drains stopped by a handler or store failure (the message stays first in line).", &self.queue_failures),
            ("kvsqlite_ws_connections", g, "WebSockets open now (including connects being accepted).", &self.ws_open),
            ("kvsqlite_ws_connections_opened_total", c, "WebSockets opened.", &self.ws_opened),
            ("kvsqlite_ws_connections_refused_total", c, "Connects refused at --max-sockets (answered 503 before the upgrade).", &self.ws_refused),
            ("kvsqlite_ws_slow_closed_total", c, "Sockets closed (code 1008) because their receiver fell behind by more than --socket-buffer-bytes.", &self.ws_closed_slow),
            ("kvsqlite_ws_messages_received_total", c, "Messages received on WebSockets (each runs the actor's handler).", &self.ws_messages),
            ("kvsqlite_ws_pushes_delivered_total", c, "Pushes queued to a socket after their commit was durable (one per socket reached).", &self.ws_pushes_delivered),
            ("kvsqlite_ws_pushes_dropped_total", c, "Pushes not delivered: the socket was closing or too slow, or the commit did not become durable.", &self.ws_pushes_dropped),
            ("kvsqlite_ws_pushes_unrouted_total", c, "Pushes whose target matched no open socket.", &self.ws_pushes_unrouted),
            ("kvsqlite_ws_buffered_bytes", g, "Bytes queued for WebSockets now (at most --max-sockets x --socket-buffer-bytes).", &self.ws_buffered_bytes),
        ] {
            one(out, name, ty, help, v);
        }
    }
}

/// The host's store: forwards every call to a [`CountingStore`] and times it per kind.
struct TimedStore {
    inner: Arc<CountingStore>,
    latency: Arc<[Histogram; 5]>,
}

impl TimedStore {
    fn timed<T>(&self, kind: OpKind, f: impl FnOnce() -> Result<T, KvError>) -> Result<T, KvError> {
        let t = Instant::now();
        let r = f();
        // Calls rejected before they were sent are not round trips (the counting store agrees).
        if !matches!(&r, Err(e) if e.is_rejected_before_send()) {
            let i = OpKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
            self.latency[i].observe(t.elapsed().as_secs_f64());
        }
        r
    }
}

impl KvStore for TimedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn limits(&self) -> &KvLimits {
        self.inner.limits()
    }

    fn get(&self, actor: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Value>>, KvError> {
        self.timed(OpKind::Get, || self.inner.get(actor, keys))
    }

    fn list(&self, actor: &str, req: &ListRequest) -> Result<ListPage, KvError> {
        self.timed(OpKind::List, || self.inner.list(actor, req))
    }

    fn write(&self, actor: &str, batch: &WriteBatch) -> Result<(), KvError> {
        self.timed(OpKind::Write, || self.inner.write(actor, batch))
    }

    fn delete_range(&self, actor: &str, start: &[u8], end: Option<&[u8]>) -> Result<(), KvError> {
        self.timed(OpKind::DeleteRange, || {
            self.inner.delete_range(actor, start, end)
        })
    }

    fn batch_read(&self, actor: &str, ops: &[ReadOp]) -> Result<Vec<ReadResult>, KvError> {
        self.timed(OpKind::BatchRead, || self.inner.batch_read(actor, ops))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::memory::MemoryStore;

    #[test]
    fn the_inspector_mark_is_the_query_logs_internal_mark() {
        assert_eq!(
            crate::host::inspector::data::MARK,
            crate::actor::query_log::INTERNAL_MARK
        );
    }

    #[test]
    fn commits_split_pages_and_bytes_evenly_and_exactly() {
        let f = Families::default();
        let d = Snapshot {
            atomic_commits: 2,
            journal_fallbacks: 1,
            pages_written: 10,
            bytes_written: 1001,
            ..Snapshot::default()
        };
        f.add_vfs(&d, false);
        let (pages, over) = f.commit_pages.buckets();
        let count: u64 = pages.iter().map(|(_, c)| c).sum::<u64>() + over;
        assert_eq!(count, 3);
        let mut out = String::new();
        f.render(&mut out);
        assert!(out.contains("kvsqlite_commit_pages_sum 10\n"), "{out}");
        assert!(out.contains("kvsqlite_commit_bytes_sum 1001\n"), "{out}");
        assert!(out.contains("kvsqlite_commits_total{path=\"atomic\"} 2\n"));
        assert!(out.contains("kvsqlite_commits_total{path=\"journal\"} 1\n"));
        // A moved actor's attempts are not commits.
        f.add_vfs(&d, true);
        let mut again = String::new();
        f.render(&mut again);
        assert!(again.contains("kvsqlite_commits_total{path=\"atomic\"} 2\n"));
    }

    #[test]
    fn every_sent_call_is_timed_once_and_rejected_ones_not_at_all() {
        let f = Families::default();
        let store = f.wrap_store(Arc::new(MemoryStore::new()));
        store
            .put("a", vec![(b"k".to_vec(), b"v".to_vec())])
            .unwrap();
        store.get("a", &[b"k".to_vec()]).unwrap();
        // An empty key is refused before anything is sent.
        assert!(store.get("a", &[Vec::new()]).is_err());
        let mut out = String::new();
        f.render(&mut out);
        for line in [
            "kvsqlite_kv_calls_total{backend=\"memory\",op=\"get\"} 1\n",
            "kvsqlite_kv_calls_total{backend=\"memory\",op=\"write\"} 1\n",
            "kvsqlite_kv_call_duration_seconds_count{backend=\"memory\",op=\"get\"} 1\n",
            "kvsqlite_kv_call_duration_seconds_count{backend=\"memory\",op=\"write\"} 1\n",
            "kvsqlite_kv_read_bytes_total{backend=\"memory\"} 1\n",
        ] {
            assert!(out.contains(line), "{line}{out}");
        }
    }
}

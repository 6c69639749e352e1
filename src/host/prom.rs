//! The host's own metrics, aggregated over every actor, and their Prometheus text exposition
//! (`GET /metrics`).
//!
//! Why it exists: a dashboard scrapes one host, not thousands of actors; per-actor labels
//! would make the series count grow with the actors. So the host keeps plain counters, fixed
//! bucket histograms and one gauge, updated by the registry and the routes, and renders them
//! in the text format version 0.0.4.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A histogram with fixed upper bounds (cumulative buckets are computed at render time).
///
/// One lock guards its counts, sum and total, so a render or [`Histogram::buckets`] concurrent
/// with [`Histogram::observe`] always sees a consistent histogram (every cumulative bucket at
/// most the next, `+Inf` equal to the count): reading per-bucket atomics one by one could see a
/// value in its bucket but not yet in the total.
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

/// What a [`Histogram`] has recorded.
struct HistogramState {
    /// Each bound's own (not cumulative) count.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these upper bounds (ascending).
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        let bucket = self.bounds.iter().position(|b| v <= *b);
        let mut st = self.state.lock();
        if let Some(i) = bucket {
            st.counts[i] += 1;
        }
        st.sum += v;
        st.count += 1;
    }

    /// Each bucket's upper bound and its own (not cumulative) count, then the count of values
    /// above the last bound (for the inspector's bar charts).
    pub fn buckets(&self) -> (Vec<(f64, u64)>, u64) {
        let st = self.state.lock();
        let per: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .zip(st.counts.iter().copied())
            .collect();
        let inside: u64 = st.counts.iter().sum();
        (per, st.count.saturating_sub(inside))
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series; `labels` (`k="v",` each,
    /// already escaped) go before `le`.
    pub(crate) fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let (counts, sum, count) = {
            let st = self.state.lock();
            (st.counts.clone(), st.sum, st.count)
        };
        let mut cumulative = 0u64;
        for (b, c) in self.bounds.iter().zip(&counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

pub(crate) const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const ROUND_TRIPS: &[f64] = &[0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0];

/// The error kinds counted in `kvsqlite_errors_total{kind=…}`.
pub const ERROR_KINDS: &[&str] = &[
    "bad_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "too_large",
    "sql",
    "timeout",
    "unavailable",
    "conflict",
    "internal",
];

/// Every host metric.
pub struct HostMetrics {
    /// Actor wakes (including creations).
    pub wakes: AtomicU64,
    /// Wakes that created the actor.
    pub creations: AtomicU64,
    /// Actor sleeps (idle, LRU, shutdown or after a store failure).
    pub sleeps: AtomicU64,
    /// Wakes that failed.
    pub wake_failures: AtomicU64,
    /// KV round trips of every actor: its wakes and its statements (not the write at sleep).
    pub kv_round_trips: AtomicU64,
    /// Actors awake now (including one being woken).
    pub actors_awake: AtomicU64,
    /// The most actors ever awake at once since the host started (never above `--max-awake`).
    pub actors_awake_peak: AtomicU64,
    /// KV round trips per wake.
    pub wake_round_trips: Histogram,
    /// Wake duration in seconds.
    pub wake_seconds: Histogram,
    /// Statement duration in seconds (each statement of a batch counts once).
    pub query_seconds: Histogram,
    errors: Vec<AtomicU64>,
    /// `(when, kv_round_trips)` samples for the inspector's rate chart, oldest first.
    kv_samples: Mutex<VecDeque<(Instant, u64)>>,
    /// The store, VFS, wake and statement families, and the per-actor views built from them.
    pub families: super::prom_families::Families,
}

/// KV round-trip samples kept (one every [`KV_SAMPLE_EVERY`]: ten minutes).
pub const KV_SAMPLES: usize = 120;

/// How often the host samples its KV round-trip counter.
pub const KV_SAMPLE_EVERY: Duration = Duration::from_secs(5);

impl Default for HostMetrics {
    fn default() -> Self {
        HostMetrics {
            wakes: AtomicU64::new(0),
            creations: AtomicU64::new(0),
            sleeps: AtomicU64::new(0),
            wake_failures: AtomicU64::new(0),
            kv_round_trips: AtomicU64::new(0),
            actors_awake: AtomicU64::new(0),
            actors_awake_peak: AtomicU64::new(0),
            wake_round_trips: Histogram::new(ROUND_TRIPS),
            wake_seconds: Histogram::new(SECONDS),
            query_seconds: Histogram::new(SECONDS),
            errors: ERROR_KINDS.iter().map(|_| AtomicU64::new(0)).collect(),
            kv_samples: Mutex::new(VecDeque::new()),
            families: Default::default(),
        }
    }
}

impl HostMetrics {
    /// Counts one error response of `kind` (one of [`ERROR_KINDS`]; others count as internal).
    pub fn error(&self, kind: &str) {
        let i = ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(ERROR_KINDS.len() - 1);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Samples the KV round-trip counter (the host calls this every [`KV_SAMPLE_EVERY`]).
    pub fn sample_kv(&self) {
        let mut q = self.kv_samples.lock();
        q.push_back((Instant::now(), self.kv_round_trips.load(Ordering::Relaxed)));
        while q.len() > KV_SAMPLES + 1 {
            q.pop_front();
        }
    }

    /// KV round trips per second between consecutive samples, oldest first: `(seconds before
    /// now at the interval's end, rate)`.
    pub fn kv_rates(&self) -> Vec<(u64, f64)> {
        let q = self.kv_samples.lock();
        q.iter()
            .zip(q.iter().skip(1))
            .map(|((t0, c0), (t1, c1))| {
                let secs = t1.duration_since(*t0).as_secs_f64().max(0.001);
                (t1.elapsed().as_secs(), c1.saturating_sub(*c0) as f64 / secs)
            })
            .collect()
    }

    /// Error responses counted so far, by kind (in [`ERROR_KINDS`] order).
    pub fn errors_by_kind(&self) -> Vec<(&'static str, u64)> {
        ERROR_KINDS
            .iter()
            .zip(&self.errors)
            .map(|(k, c)| (*k, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "kvsqlite_wakes_total",
            "Actor wakes, creations included.",
            &self.wakes,
        );
        counter(
            &mut out,
            "kvsqlite_creations_total",
            "Wakes that created a new actor.",
            &self.creations,
        );
        counter(
            &mut out,
            "kvsqlite_sleeps_total",
            "Actor sleeps (idle, least recently used, shutdown, store failure).",
            &self.sleeps,
        );
        counter(
            &mut out,
            "kvsqlite_wake_failures_total",
            "Wakes that failed.",
            &self.wake_failures,
        );
        counter(
            &mut out,
            "kvsqlite_kv_round_trips_total",
            "KV round trips of every actor: wakes and statements (not the write at sleep).",
            &self.kv_round_trips,
        );
        let _ = writeln!(out, "# HELP kvsqlite_errors_total Error responses by kind.");
        let _ = writeln!(out, "# TYPE kvsqlite_errors_total counter");
        for (k, v) in ERROR_KINDS.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "kvsqlite_errors_total{{kind=\"{k}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP kvsqlite_actors_awake Actors awake now (one being woken included)."
        );
        let _ = writeln!(out, "# TYPE kvsqlite_actors_awake gauge");
        let _ = writeln!(
            out,
            "kvsqlite_actors_awake {}",
            self.actors_awake.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP kvsqlite_actors_awake_peak The most actors awake at once since the host started."
        );
        let _ = writeln!(out, "# TYPE kvsqlite_actors_awake_peak gauge");
        let _ = writeln!(
            out,
            "kvsqlite_actors_awake_peak {}",
            self.actors_awake_peak.load(Ordering::Relaxed)
        );
        self.wake_round_trips.render(
            &mut out,
            "kvsqlite_wake_kv_round_trips",
            "KV round trips per wake.",
        );
        self.wake_seconds.render(
            &mut out,
            "kvsqlite_wake_duration_seconds",
            "Wall time of a wake in seconds.",
        );
        self.query_seconds.render(
            &mut out,
            "kvsqlite_query_duration_seconds",
            "Wall time of one SQL statement in seconds.",
        );
        self.families.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `_bucket` values of one rendered histogram, `+Inf` last, and its `_count`.
    fn parse(text: &str, name: &str) -> (Vec<u64>, u64) {
        let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap();
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .map(value)
            .collect();
        let count = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}_count")))
            .map(value)
            .unwrap();
        (buckets, count)
    }

    /// Consistent by construction (one lock); this checks the invariants Prometheus parsers
    /// demand while writers observe. (The race it replaced, a value in its bucket but not yet
    /// in the total, showed under `tests/serve_memory.rs`'s load and is too narrow to hit here
    /// reliably.)
    #[test]
    fn renders_during_observes_are_consistent() {
        let h = std::sync::Arc::new(Histogram::new(SECONDS));
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for i in 0..100_000u32 {
                        // Values across every bucket and above the last bound.
                        h.observe(f64::from((i * 7 + t) % 1_500) / 100.0);
                    }
                })
            })
            .collect();
        let mut renders = 0;
        // Render for as long as the writers run: a render between a value's bucket and the
        // total being counted is what must not show.
        while renders < 200 || !writers.iter().all(|w| w.is_finished()) {
            let mut out = String::new();
            h.render(&mut out, "x", "test");
            let (buckets, count) = parse(&out, "x");
            assert_eq!(buckets.len(), SECONDS.len() + 1);
            assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{out}");
            assert_eq!(buckets.last(), Some(&count), "{out}");
            let (per, above) = h.buckets();
            let inside: u64 = per.iter().map(|(_, c)| c).sum();
            assert!(inside + above >= count);
            renders += 1;
        }
        for w in writers {
            w.join().unwrap();
        }
        let mut out = String::new();
        h.render(&mut out, "x", "test");
        assert_eq!(parse(&out, "x").1, 200_000);
    }
}

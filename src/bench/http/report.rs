//! The report of `bench http`: the two phases' counts and latencies, as JSON (fields
//! documented in docs/src/benchmarks/commands.md, "bench http") and as a table.
//!
//! Why it exists apart: the workload (`super`) measures; this module only shapes what was
//! measured, so the output format can be read (and changed) in one place.

use serde_json::{json, Value};

use super::{HttpConfig, LoadStop};
pub use crate::bench::latency::Latency;

/// `{"mean", "p50", "p90", "p99", "max"}` of a [`Latency`], rounded to microseconds.
fn latency_json(l: &Latency) -> Value {
    json!({
        "mean": round3(l.mean),
        "p50": round3(l.p50),
        "p90": round3(l.p90),
        "p99": round3(l.p99),
        "max": round3(l.max),
    })
}

/// The wake phase: one request to each sleeping actor.
#[derive(Clone, Debug, PartialEq)]
pub struct WakePhase {
    /// Requests sent (one per actor).
    pub requests: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wakes the host counted during the phase.
    pub wakes: u64,
    /// KV round trips per wake, from the host's `kvsqlite_wake_kv_round_trips` histogram
    /// (the wake itself, not the query after it); `None` without a wake.
    pub kv_round_trips_per_wake: Option<f64>,
    /// KV round trips the host counted during the phase: the wakes and the queries after them.
    pub kv_round_trips: u64,
    /// Wall time of the phase, in seconds.
    pub wall_s: f64,
    /// Latency of each first request: wake plus query.
    pub latency_ms: Latency,
}

/// The load phase: requests to awake actors.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadPhase {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Reads sent (point `SELECT`s).
    pub reads: u64,
    /// Writes sent (one-row `UPDATE`s).
    pub writes: u64,
    /// Wall time from the first client's start to the last answer, in seconds.
    pub wall_s: f64,
    /// `requests / wall_s`.
    pub requests_per_sec: f64,
    /// Every successful request.
    pub latency_ms: Latency,
    /// Successful reads.
    pub read_latency_ms: Latency,
    /// Successful writes.
    pub write_latency_ms: Latency,
    /// Wakes the host counted during the phase (an actor that slept in the middle; 0 when
    /// every request found its actor awake).
    pub wakes: u64,
    /// KV round trips the host counted during the phase, per request.
    pub kv_round_trips_per_request: Option<f64>,
    /// KV round trips the host counted during the phase (wakes during it included).
    pub kv_round_trips: u64,
}

/// The whole benchmark.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpReport {
    /// Over the hosts of a cluster (`--url A,B,C`): where the requests went, and the kill.
    pub cluster: Option<super::ClusterPhase>,
    /// The configuration run.
    pub config: HttpConfig,
    /// The store's backend for an in-process host, `None` over `--url`.
    pub backend: Option<&'static str>,
    /// The URL loaded, `None` for an in-process host.
    pub url: Option<String>,
    /// The simulated round-trip time in milliseconds (0 without `--rtt`; `None` over `--url`).
    pub rtt_ms: Option<f64>,
    /// The common prefix of the bench's actor ids (`PREFIX-0` …).
    pub actor_prefix: String,
    /// The wake phase.
    pub wake: WakePhase,
    /// The load phase.
    pub load: LoadPhase,
    /// The first failed request: `phase: status: body` (status 0: no answer).
    pub first_error: Option<String>,
    /// Whether the bench's actors were deleted from the store afterwards.
    pub actors_deleted: bool,
}

impl HttpReport {
    /// Failed requests of both phases.
    pub fn errors(&self) -> u64 {
        self.wake.errors + self.load.errors
    }

    /// One JSON object; the field names are documented in docs/src/benchmarks/commands.md ("bench http").
    pub fn to_json(&self) -> Value {
        let c = &self.config;
        let (requests_target, duration_s) = match c.stop {
            LoadStop::Requests(n) => (json!(n), Value::Null),
            LoadStop::Duration(d) => (Value::Null, json!(round3(d.as_secs_f64()))),
        };
        let w = &self.wake;
        let l = &self.load;
        let mut v = json!({
            "backend": self.backend,
            "url": self.url,
            "rtt_ms": self.rtt_ms.map(round3),
            "actors": c.actors,
            "concurrency": c.concurrency,
            "write_percent": c.write_percent,
            "rows": c.rows,
            "requests_target": requests_target,
            "duration_s": duration_s,
            "idle_sleep_ms": self.url.is_none().then_some(c.idle_sleep.as_millis() as u64),
            "actor_prefix": self.actor_prefix,
            "wake": {
                "requests": w.requests,
                "ok": w.ok,
                "errors": w.errors,
                "wakes": w.wakes,
                "kv_round_trips_per_wake": w.kv_round_trips_per_wake.map(round3),
                "kv_round_trips": w.kv_round_trips,
                "wall_s": round6(w.wall_s),
                "latency_ms": latency_json(&w.latency_ms),
            },
            "load": {
                "requests": l.requests,
                "ok": l.ok,
                "errors": l.errors,
                "reads": l.reads,
                "writes": l.writes,
                "wall_s": round6(l.wall_s),
                "requests_per_sec": round3(l.requests_per_sec),
                "latency_ms": latency_json(&l.latency_ms),
                "read_latency_ms": latency_json(&l.read_latency_ms),
                "write_latency_ms": latency_json(&l.write_latency_ms),
                "wakes": l.wakes,
                "kv_round_trips_per_request": l.kv_round_trips_per_request.map(round3),
                "kv_round_trips": l.kv_round_trips,
            },
            "errors": self.errors(),
            "first_error": self.first_error,
            "actors_deleted": self.actors_deleted,
        });
        if let Some(c) = &self.cluster {
            v["cluster"] = c.to_json();
        }
        v
    }

    /// The readable form: a header line, one row per phase (and per kind of load request),
    /// then the counts.
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let stop = match c.stop {
            LoadStop::Requests(n) => format!("{n} requests"),
            LoadStop::Duration(d) => format!("{:.1} s", d.as_secs_f64()),
        };
        let host = match (&self.url, self.backend) {
            (Some(u), _) => format!("server {u}"),
            (None, b) => format!(
                "in-process host, store {}, rtt {} ms",
                b.unwrap_or("?"),
                self.rtt_ms.unwrap_or(0.0)
            ),
        };
        let mut s = format!(
            "{} actors of {} rows, {} clients, {}% writes, {stop}, {host}\n\
             phase\trequests\tok\terrors\twall_s\treq_per_sec\tmean_ms\tp50_ms\tp90_ms\tp99_ms\tmax_ms\n",
            c.actors, c.rows, c.concurrency, c.write_percent
        );
        // A row: its requests, then (for a phase) its successes and errors and its wall time.
        let row = |name: &str, requests: u64, phase: Option<(u64, u64, f64)>, l: &Latency| {
            let dash = || "-".to_string();
            let (ok, errors, wall, rate) = match phase {
                Some((ok, errors, w)) => (
                    ok.to_string(),
                    errors.to_string(),
                    format!("{w:.2}"),
                    if w > 0.0 {
                        format!("{:.0}", requests as f64 / w)
                    } else {
                        dash()
                    },
                ),
                None => (dash(), dash(), dash(), dash()),
            };
            format!(
                "{name}\t{requests}\t{ok}\t{errors}\t{wall}\t{rate}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\n",
                l.mean, l.p50, l.p90, l.p99, l.max
            )
        };
        let (w, l) = (&self.wake, &self.load);
        s.push_str(&row(
            "wake",
            w.requests,
            Some((w.ok, w.errors, w.wall_s)),
            &w.latency_ms,
        ));
        s.push_str(&row(
            "query",
            l.requests,
            Some((l.ok, l.errors, l.wall_s)),
            &l.latency_ms,
        ));
        s.push_str(&row("read", l.reads, None, &l.read_latency_ms));
        s.push_str(&row("write", l.writes, None, &l.write_latency_ms));
        let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
        s.push_str(&format!(
            "wakes {}, KV round trips per wake {}; wakes during the load {}, KV round trips per load request {}\n",
            w.wakes,
            opt(w.kv_round_trips_per_wake),
            l.wakes,
            opt(l.kv_round_trips_per_request)
        ));
        s.push_str(&if self.actors_deleted {
            format!("actors {}-* deleted\n", self.actor_prefix)
        } else {
            format!(
                "actors {}-* left in the server's store (no route deletes an actor)\n",
                self.actor_prefix
            )
        });
        if let Some(c) = &self.cluster {
            s.push_str(&c.to_table());
        }
        s
    }
}

fn round3(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

fn round6(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1e6).round() / 1e6
    } else {
        0.0
    }
}

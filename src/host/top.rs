//! What each actor cost lately, and `GET /inspector/top` (admin): the actors that cost the most
//! over the last interval, by KV round trips, KV bytes or time spent running their requests.
//!
//! Why it exists: the Prometheus families are never labelled by actor (the series count must
//! not grow with the actors), so "which actor is hurting the store" needs a view of its own.
//! Costs are kept in two windows of [`INTERVAL`]: the current one and the one before it; the
//! route reports both added together (so the last one to two minutes). A window tracks at most
//! [`MAX_TRACKED`] actors; costs of actors past that are counted as untracked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::inspector::escape::{field, parse_form};
use super::routes::{admin_json, AppState};
use super::HostError;

/// How long one window lasts.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Actors tracked per window at most.
pub const MAX_TRACKED: usize = 10_000;

/// Actors listed by default, and at most.
pub const DEFAULT_LIMIT: usize = 10;
/// See [`DEFAULT_LIMIT`].
pub const MAX_LIMIT: usize = 100;

/// What one actor cost.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// KV round trips (its wakes, requests and sleeps).
    pub kv_round_trips: u64,
    /// KV bytes received and sent.
    pub kv_bytes: u64,
    /// SQL statements run.
    pub statements: u64,
    /// Seconds its requests ran on it (statements and their commits).
    pub busy_seconds: f64,
}

impl Cost {
    fn add(&mut self, o: &Cost) {
        self.kv_round_trips += o.kv_round_trips;
        self.kv_bytes += o.kv_bytes;
        self.statements += o.statements;
        self.busy_seconds += o.busy_seconds;
    }
}

struct Windows {
    started: Instant,
    current: HashMap<String, Cost>,
    previous: HashMap<String, Cost>,
    previous_started: Option<Instant>,
    untracked: Cost,
}

impl Windows {
    fn rotate(&mut self, now: Instant) {
        let age = now.duration_since(self.started);
        if age < INTERVAL {
            return;
        }
        if age < 2 * INTERVAL {
            self.previous = std::mem::take(&mut self.current);
            self.previous_started = Some(self.started);
        } else {
            self.current.clear();
            self.previous.clear();
            self.previous_started = None;
        }
        self.untracked = Cost::default();
        self.started = now;
    }
}

/// Per-actor costs of the last interval.
pub struct Costs {
    w: Mutex<Windows>,
}

impl Default for Costs {
    fn default() -> Self {
        Costs {
            w: Mutex::new(Windows {
                started: Instant::now(),
                current: HashMap::new(),
                previous: HashMap::new(),
                previous_started: None,
                untracked: Cost::default(),
            }),
        }
    }
}

/// What a top list is ordered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// KV round trips.
    RoundTrips,
    /// KV bytes.
    Bytes,
    /// Time running requests.
    Busy,
}

impl By {
    /// From the `by` parameter: `round_trips` (default), `bytes` or `busy`.
    pub fn parse(s: Option<&str>) -> Result<By, HostError> {
        match s.unwrap_or("round_trips") {
            "round_trips" => Ok(By::RoundTrips),
            "bytes" => Ok(By::Bytes),
            "busy" => Ok(By::Busy),
            other => Err(HostError::BadRequest(format!(
                "unknown order {other:?}: use round_trips, bytes or busy"
            ))),
        }
    }
}

impl Costs {
    /// Adds `c` to actor `id`'s cost in the current window.
    pub fn add(&self, id: &str, c: Cost) {
        if c == Cost::default() {
            return;
        }
        let mut w = self.w.lock();
        w.rotate(Instant::now());
        let full = w.current.len() >= MAX_TRACKED;
        match w.current.get_mut(id) {
            Some(e) => e.add(&c),
            None if !full => {
                w.current.insert(id.to_string(), c);
            }
            None => w.untracked.add(&c),
        }
    }

    /// The `limit` costliest actors of the last interval by `by` (ties by id), and the
    /// interval's length so far.
    pub fn top(&self, by: By, limit: usize) -> (Vec<(String, Cost)>, Duration) {
        let mut w = self.w.lock();
        let now = Instant::now();
        w.rotate(now);
        let mut all: HashMap<String, Cost> = w.previous.clone();
        for (k, c) in &w.current {
            all.entry(k.clone()).or_default().add(c);
        }
        let span = now.duration_since(w.previous_started.unwrap_or(w.started));
        drop(w);
        let mut v: Vec<(String, Cost)> = all.into_iter().collect();
        let key = |c: &Cost| match by {
            By::RoundTrips => c.kv_round_trips as f64,
            By::Bytes => c.kv_bytes as f64,
            By::Busy => c.busy_seconds,
        };
        v.sort_by(|a, b| key(&b.1).total_cmp(&key(&a.1)).then_with(|| a.0.cmp(&b.0)));
        v.truncate(limit);
        (v, span)
    }
}

/// `GET /inspector/top?by=round_trips|bytes|busy&limit=N` (admin token in the headers): the
/// costliest actors of the last interval as JSON.
pub async fn route(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    admin_json(&s, &headers, || {
        let pairs = parse_form(q.as_deref().unwrap_or(""));
        let by = By::parse(field(&pairs, "by"))?;
        let limit = match field(&pairs, "limit") {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| HostError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}")))?,
        };
        let (top, span) = s.metrics.families.costs.top(by, limit);
        let actors: Vec<Value> = top
            .iter()
            .map(|(id, c)| {
                json!({
                    "id": id,
                    "kv_round_trips": c.kv_round_trips,
                    "kv_bytes": c.kv_bytes,
                    "statements": c.statements,
                    "busy_seconds": c.busy_seconds,
                })
            })
            .collect();
        Ok(json!({ "interval_seconds": span.as_secs_f64(), "actors": actors }))
    })
}

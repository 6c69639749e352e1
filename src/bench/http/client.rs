//! The two ends of `bench http`'s wire: the in-process host (the same `host::serve` that
//! `kvsqlite serve` runs), the HTTP client (one `ureq` agent per client thread, keep-alive),
//! and the host's counters read from `GET /metrics`.
//!
//! Why it exists apart: the workload (`super`) only decides what to send and when; how a
//! request travels and how the host's Prometheus text is read are kept here.

use super::{HttpConfig, REQUEST_TIMEOUT};
use crate::host::{self, HostConfig};
use crate::kv::SharedStore;

/// The host `kvsqlite serve` runs, started in this process on `127.0.0.1:0`.
pub(super) struct InProcessHost {
    runtime: tokio::runtime::Runtime,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// `http://127.0.0.1:PORT`.
    pub(super) base: String,
    /// Its admin token.
    pub(super) token: String,
}

impl InProcessHost {
    /// Starts the host on `127.0.0.1:0` with a fresh admin token.
    pub(super) fn start(store: SharedStore, config: &HttpConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("cannot listen on 127.0.0.1:0: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let token =
            host::generate_token().map_err(|e| format!("cannot make an admin token: {e}"))?;
        let host_config = HostConfig {
            idle_sleep: config.idle_sleep,
            max_awake: config.actors.max(1024),
            limits: host::conn::ConnLimits {
                max_connections: 4096,
                ..Default::default()
            },
            ..HostConfig::new(store, token.clone())
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(host::serve(listener, host_config, async move {
            let _ = rx.await;
        }));
        Ok(InProcessHost {
            runtime,
            shutdown: Some(tx),
            task: Some(task),
            base: format!("http://{addr}"),
            token,
        })
    }

    /// Stops accepting, lets requests in flight finish and puts every actor to sleep.
    pub(super) fn stop(&mut self) -> Result<(), String> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => match self.runtime.block_on(task) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("the in-process host failed: {e}")),
                Err(e) => Err(format!("the in-process host's task failed: {e}")),
            },
            None => Ok(()),
        }
    }
}

impl Drop for InProcessHost {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// An HTTP client on its own keep-alive connection.
pub(super) fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .build()
        .into()
}

/// What one request got: the status (0: no answer) and, for a failure, the body or the error.
pub(super) struct Answer {
    /// The HTTP status, 0 when there was no answer.
    pub(super) status: u16,
    /// The body, or what went wrong.
    pub(super) text: String,
    /// A cluster host forwarded it to the actor's owner (`kvsqlite-forwarded-by`).
    pub(super) forwarded: bool,
}

impl Answer {
    /// Whether the status is 2xx.
    pub(super) fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// POSTs a JSON `body` with the admin token.
pub(super) fn post(agent: &ureq::Agent, url: &str, token: &str, body: &str) -> Answer {
    let sent = agent
        .post(url)
        .header("Authorization", format!("Bearer {token}"))
        .content_type("application/json")
        .send(body);
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let forwarded = resp.headers().contains_key("kvsqlite-forwarded-by");
            let text = match resp.into_body().read_to_string() {
                Ok(t) => t,
                Err(e) => {
                    return Answer {
                        status: 0,
                        text: format!("reading the answer failed: {e}"),
                        forwarded,
                    }
                }
            };
            Answer {
                status,
                text,
                forwarded,
            }
        }
        Err(e) => Answer {
            status: 0,
            text: e.to_string(),
            forwarded: false,
        },
    }
}

/// The host counters the bench reads between phases (from `GET /metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostCounters {
    /// `kvsqlite_wakes_total`.
    pub wakes: f64,
    /// `kvsqlite_sleeps_total`.
    pub sleeps: f64,
    /// `kvsqlite_kv_round_trips_total`.
    pub kv_round_trips: f64,
    /// `kvsqlite_wake_kv_round_trips_sum`.
    pub wake_round_trips_sum: f64,
    /// `kvsqlite_wake_kv_round_trips_count`.
    pub wake_round_trips_count: f64,
}

impl HostCounters {
    /// Reads the counters from Prometheus text: an error naming the first one missing (or
    /// whose value is not a number).
    pub fn parse(text: &str) -> Result<Self, String> {
        let find = |name: &str| -> Result<f64, String> {
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    let (n, v) = l.split_once(' ')?;
                    (n == name).then(|| v.trim().parse::<f64>().ok())
                })
                .flatten()
                .ok_or_else(|| {
                    format!("the server's /metrics has no numeric {name}: is it kvsqlite serve?")
                })
        };
        Ok(HostCounters {
            wakes: find("kvsqlite_wakes_total")?,
            sleeps: find("kvsqlite_sleeps_total")?,
            kv_round_trips: find("kvsqlite_kv_round_trips_total")?,
            wake_round_trips_sum: find("kvsqlite_wake_kv_round_trips_sum")?,
            wake_round_trips_count: find("kvsqlite_wake_kv_round_trips_count")?,
        })
    }
}

/// The host's counters now.
pub(super) fn counters(agent: &ureq::Agent, base: &str) -> Result<HostCounters, String> {
    let url = format!("{base}/metrics");
    let resp = agent
        .get(&url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .into_body()
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))?;
    if status != 200 {
        return Err(format!("GET {url}: status {status}"));
    }
    HostCounters::parse(&text)
}

/// `after - before` as a count (0 when a counter went back, as after a restart).
pub(super) fn delta(after: f64, before: f64) -> u64 {
    (after - before).max(0.0).round() as u64
}

//! `bench http --url A,B,C`: the load spread over the hosts of a cluster, direct and
//! forwarded latencies apart, and (with `--kill-one`) the time from a kill -9 of one host until
//! every actor answers again.
//!
//! Why it exists apart: a cluster adds what a single host has not (which host a request went
//! to, whether it was forwarded, a host that dies); the workload itself stays in `super`.
//! Forwarded requests are told from direct ones by the answer's `kvsqlite-forwarded-by`
//! header; the host counters are summed over the hosts.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{agent, post, HostCounters};
use super::report::Latency;

/// How long `--kill-one` waits for every actor to answer again.
pub const RECOVERY_WAIT: Duration = Duration::from_secs(120);

/// What a cluster run adds to the report (`"cluster"` in the JSON).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPhase {
    /// The hosts loaded (`--url`), in order.
    pub hosts: Vec<String>,
    /// Load requests answered 2xx through a host that forwarded them to the actor's owner.
    pub forwarded: u64,
    /// Load requests answered 2xx by the host they were sent to.
    pub direct: u64,
    /// Latency of the direct ones.
    pub direct_latency_ms: Latency,
    /// Latency of the forwarded ones.
    pub forwarded_latency_ms: Latency,
    /// The kill -9 of the last host, with `--kill-one`.
    pub kill: Option<KillRecovery>,
}

/// What `--kill-one` measured.
#[derive(Clone, Debug, PartialEq)]
pub struct KillRecovery {
    /// The host killed (the last of `--url`).
    pub killed: String,
    /// Its process id (from its `GET /cluster?local=1`).
    pub pid: u64,
    /// Seconds from the kill until the last actor answered 2xx through a surviving host.
    pub recovery_s: f64,
    /// Actors that failed at least once after the kill (those the killed host held).
    pub actors_interrupted: u64,
    /// Answers other than 2xx meanwhile (503 with `Retry-After` while the lease runs out).
    pub failed_answers: u64,
}

impl ClusterPhase {
    /// The JSON object.
    pub fn to_json(&self) -> Value {
        let lat = |l: &Latency| json!({"mean": r3(l.mean), "p50": r3(l.p50), "p90": r3(l.p90), "p99": r3(l.p99), "max": r3(l.max)});
        json!({
            "hosts": self.hosts,
            "direct": self.direct,
            "forwarded": self.forwarded,
            "direct_latency_ms": lat(&self.direct_latency_ms),
            "forwarded_latency_ms": lat(&self.forwarded_latency_ms),
            "kill": self.kill.as_ref().map(|k| json!({
                "killed": k.killed,
                "pid": k.pid,
                "recovery_s": r3(k.recovery_s),
                "actors_interrupted": k.actors_interrupted,
                "failed_answers": k.failed_answers,
            })),
        })
    }

    /// The table's lines.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "cluster of {}: {} direct (mean {:.2} ms, p99 {:.2}), {} forwarded (mean {:.2} ms, p99 {:.2})\n",
            self.hosts.join(","),
            self.direct,
            self.direct_latency_ms.mean,
            self.direct_latency_ms.p99,
            self.forwarded,
            self.forwarded_latency_ms.mean,
            self.forwarded_latency_ms.p99
        );
        if let Some(k) = &self.kill {
            s.push_str(&format!(
                "kill -9 of {} (pid {}): every actor answered again after {:.2} s ({} actors interrupted, {} failed answers)\n",
                k.killed, k.pid, k.recovery_s, k.actors_interrupted, k.failed_answers
            ));
        }
        s
    }
}

fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The host counters summed over `bases`.
pub(super) fn counters(agent: &ureq::Agent, bases: &[String]) -> Result<HostCounters, String> {
    let mut sum = HostCounters::default();
    for b in bases {
        let c = super::client::counters(agent, b)?;
        sum.wakes += c.wakes;
        sum.sleeps += c.sleeps;
        sum.kv_round_trips += c.kv_round_trips;
        sum.wake_round_trips_sum += c.wake_round_trips_sum;
        sum.wake_round_trips_count += c.wake_round_trips_count;
    }
    Ok(sum)
}

/// Kills the last host of `bases` with SIGKILL (it must run on this machine: its pid comes
/// from its own `GET /cluster?local=1`), then sends a point read to every actor through the
/// surviving hosts, round after round, until each has answered 2xx once.
pub(super) fn kill_and_recover(
    bases: &[String],
    token: &str,
    prefix: &str,
    actors: u64,
    progress: &dyn Fn(&str, f64),
) -> Result<KillRecovery, String> {
    let (victim, live) = bases
        .split_last()
        .filter(|(_, live)| !live.is_empty())
        .ok_or("--kill-one needs at least two hosts in --url")?;
    let a = agent();
    let url = format!("{victim}/cluster?local=1");
    let resp = a
        .get(&url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let text = resp
        .into_body()
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("GET {url}: {e}: {text}"))?;
    let pid = v["pid"]
        .as_u64()
        .ok_or_else(|| format!("GET {url} named no pid (is it a cluster member?): {text}"))?;
    let killed_at = Instant::now();
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        return Err(format!(
            "kill -9 {pid} failed (the host must run on this machine)"
        ));
    }
    let body = json!({"sql": "SELECT count(*) FROM kv"}).to_string();
    let mut pending: Vec<u64> = (0..actors).collect();
    let (mut interrupted, mut failed, mut last_ok) = (Vec::new(), 0u64, killed_at);
    let mut round = 0usize;
    while !pending.is_empty() {
        if killed_at.elapsed() > RECOVERY_WAIT {
            return Err(format!(
                "{} actors still did not answer {} s after the kill",
                pending.len(),
                RECOVERY_WAIT.as_secs()
            ));
        }
        let mut still = Vec::new();
        for i in pending {
            let base = &live[(i as usize + round) % live.len()];
            let ans = post(
                &a,
                &format!("{base}/actors/{prefix}-{i}/query"),
                token,
                &body,
            );
            if ans.ok() {
                last_ok = Instant::now();
            } else {
                failed += 1;
                if !interrupted.contains(&i) {
                    interrupted.push(i);
                }
                still.push(i);
            }
        }
        pending = still;
        progress(
            "recovery",
            1.0 - pending.len() as f64 / actors.max(1) as f64,
        );
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
        round += 1;
    }
    Ok(KillRecovery {
        killed: victim.clone(),
        pid,
        recovery_s: (last_ok - killed_at).as_secs_f64(),
        actors_interrupted: interrupted.len() as u64,
        failed_answers: failed,
    })
}

//! Three `kvsqlite serve --cluster` hosts over PostgreSQL (a table of its own per test), as
//! child processes on loopback ports, under a load of 8 clients on 200 actors whose every
//! answer is checked against a model (see `cluster_kit`):
//!
//! - steady: each actor is woken once in the whole cluster and served by one host only, the
//!   other hosts forward to it, and nothing fails;
//! - a wake stays exactly one KV round trip in cluster mode (the actor's counting store);
//! - kill -9 of one host: once its lease ends, every actor answers at its first request, every
//!   acknowledged write is there, `integrity_check` is ok;
//! - SIGSTOP past the TTL, then SIGCONT: no request it took while stopped writes anything, it
//!   drops its actors, finds itself expelled and joins again;
//! - a rolling restart of the three hosts under load loses nothing and answers at least 99% of
//!   the requests (the rest: 503 with `Retry-After`);
//! - `--cluster` on a store that is not shared is refused;
//! - a WebSocket upgrade on a host that does not own the actor is 421 naming the owner.

#[path = "cluster_kit/mod.rs"]
mod kit;

use std::collections::BTreeSet;
use std::time::Duration;

use kit::{post, serve, Host, Load, PgTable, ACTORS};
use serde_json::json;

/// A WebSocket upgrade of `actor` on host `h`, as admin; reads time out after 30 s.
fn upgrade(
    h: &Host,
    actor: &str,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    use tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/actors/{actor}/connect", h.addr);
    let mut req = url.into_client_request().expect("a request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", kit::ADMIN).parse().expect("a header"),
    );
    let (ws, resp) = tungstenite::connect(req)?;
    if let tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("a read timeout");
    }
    Ok((ws, resp))
}

type Ws = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// The member that serves `actor` now (its answer's `kvsqlite-served-by`, asked through `h`).
fn owner_of(h: &Host, actor: &str) -> String {
    let a = post(
        &kit::serve::agent(),
        &h.base,
        &format!("/actors/{actor}/query"),
        &json!({"sql": "SELECT 1", "params": []}),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    a.served_by.expect("kvsqlite-served-by")
}

fn sum(hosts: &[&Host], name: &str) -> f64 {
    hosts.iter().map(|h| h.metrics()[name]).sum()
}

#[test]
fn three_hosts_place_each_actor_on_one_host_and_forward_the_rest() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "steady");
    let hosts = kit::three_hosts(&table.kv(), "steady", &[]);
    let refs: Vec<&Host> = hosts.iter().collect();
    let mut load = Load::setup("st-", &refs);
    load.start();
    load.run_for_answers(3000);
    load.stop();
    load.assert_no_failures();
    let c = &load.counts;
    assert_eq!(c.unavailable.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(c.forwarded.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // One host per actor: every answer of an actor names the same host, the one it is awake on.
    let awake = kit::awake_map(&hosts[0]);
    assert_eq!(awake.len(), ACTORS, "every actor is awake somewhere");
    let served = load.served_by.lock().unwrap();
    for (actor, on) in &awake {
        assert_eq!(on.len(), 1, "{actor} awake on {on:?}");
        let by: Vec<&String> = served[actor].iter().collect();
        assert_eq!(
            by,
            vec![&on[0]],
            "{actor}: served by {by:?}, awake on {on:?}"
        );
    }
    // Each actor woke once in the whole cluster (its creation), and no write was refused.
    assert_eq!(sum(&refs, "kvsqlite_wakes_total"), ACTORS as f64);
    assert_eq!(sum(&refs, "kvsqlite_creations_total"), ACTORS as f64);
    assert_eq!(sum(&refs, "kvsqlite_moved_conflicts_total"), 0.0);
    for h in &hosts {
        let m = h.metrics();
        assert_eq!(m["kvsqlite_cluster_members"], 3.0);
        assert!(m["kvsqlite_requests_forwarded_total"] > 0.0);
        assert_eq!(m["kvsqlite_actor_moves_total"], 0.0);
        assert_eq!(m["kvsqlite_cluster_expulsions_total"], 0.0);
    }
    // GET /cluster is the admin's; the overview page lists the members.
    let agent = serve::agent();
    let (st, _) = serve::get(&agent, &hosts[0].base, "/cluster", None);
    assert_eq!(st, 401);
    let (st, page) = serve::get(&agent, &hosts[0].base, "/", Some(kit::ADMIN));
    assert_eq!(st, 200);
    assert!(
        page.contains("id=\"cluster\"") && page.contains("(3 members)"),
        "{page}"
    );
    for h in &hosts {
        assert!(
            page.contains(&h.addr),
            "{} missing from the overview",
            h.addr
        );
    }
    // Three hosts hold the actors between them (rendezvous hashing spreads them).
    let per_host: BTreeSet<&String> = awake.values().map(|v| &v[0]).collect();
    assert_eq!(per_host.len(), 3);
    load.verify_all(&hosts[1].base);

    // A WebSocket is kept by the host that serves its actor: an upgrade on another member is
    // answered 421 naming the owner, and the owner upgrades it.
    let (actor, on) = awake.iter().next().expect("an awake actor");
    let other = hosts.iter().find(|h| h.addr != on[0]).expect("a non-owner");
    let owner = hosts.iter().find(|h| h.addr == on[0]).expect("the owner");
    match upgrade(other, actor) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 421);
            assert_eq!(
                resp.headers()
                    .get("kvsqlite-owner")
                    .and_then(|v| v.to_str().ok()),
                Some(on[0].as_str())
            );
        }
        Ok(_) => panic!("a non-owner upgraded a WebSocket for {actor}"),
        Err(e) => panic!("upgrade on a non-owner: {e}"),
    }
    let (mut ws, resp) = upgrade(owner, actor).expect("the owner upgrades");
    assert_eq!(resp.status().as_u16(), 101);
    let _ = ws.close(None);
}

#[test]
fn a_wake_stays_one_round_trip_in_cluster_mode() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "wake");
    let hosts = kit::three_hosts(&table.kv(), "wake", &["--idle-sleep-ms", "300"]);
    let refs: Vec<&Host> = hosts.iter().collect();
    let agent = serve::agent();
    let n = 30;
    for a in 0..n {
        let base = &hosts[a % 3].base;
        let path = format!("/actors/w{a}/batch");
        let body = json!({"statements": [
            {"sql": "CREATE TABLE t(x)"}, {"sql": "INSERT INTO t VALUES (?)", "params": [a]}]});
        let ans = post(&agent, base, &path, &body);
        assert_eq!(ans.status, 200, "{}", ans.body);
    }
    let mut asleep = false;
    for _ in 0..400 {
        if sum(&refs, "kvsqlite_actors_awake") == 0.0 {
            asleep = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(asleep, "the actors never went to sleep");
    let before: Vec<_> = hosts.iter().map(|h| h.metrics()).collect();
    let mut forwarded = 0;
    for a in 0..n {
        // Through the host after the one that created it: most of these are forwarded.
        let base = &hosts[(a + 1) % 3].base;
        let ans = post(
            &agent,
            base,
            &format!("/actors/w{a}/query"),
            &json!({"sql": "SELECT x FROM t"}),
        );
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_eq!(kit::values(&ans.body).unwrap(), vec![a as i64]);
        forwarded += ans.forwarded_by.is_some() as usize;
    }
    assert!(forwarded > 0);
    let after: Vec<_> = hosts.iter().map(|h| h.metrics()).collect();
    let d = |k: &str| -> f64 { (0..3).map(|i| after[i][k] - before[i][k]).sum() };
    assert_eq!(d("kvsqlite_wakes_total"), n as f64, "one wake per actor");
    assert_eq!(d("kvsqlite_creations_total"), 0.0);
    assert_eq!(d("kvsqlite_wake_kv_round_trips_count"), n as f64);
    assert_eq!(
        d("kvsqlite_wake_kv_round_trips_sum"),
        n as f64,
        "every wake took exactly one KV round trip"
    );
}

#[test]
fn alarms_fire_on_the_owner_only() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "alarm");
    let hosts = kit::three_hosts(&table.kv(), "alarm", &[]);
    let refs: Vec<&Host> = hosts.iter().collect();
    let agent = serve::agent();
    let n = 12;
    for a in 0..n {
        let base = &hosts[a % 3].base;
        let ans = post(
            &agent,
            base,
            &format!("/actors/al{a}/query"),
            &json!({"sql": "CREATE TABLE fired(x)"}),
        );
        assert_eq!(ans.status, 200, "{}", ans.body);
        let ans = post(
            &agent,
            &hosts[(a + 1) % 3].base,
            &format!("/actors/al{a}/alarms"),
            &json!({"after_ms": 100, "sql": "INSERT INTO fired VALUES (?)", "params": [a]}),
        );
        assert_eq!(ans.status, 200, "{}", ans.body);
    }
    let mut all = false;
    for _ in 0..100 {
        all = (0..n).all(|a| {
            let ans = post(
                &agent,
                &hosts[a % 3].base,
                &format!("/actors/al{a}/query"),
                &json!({"sql": "SELECT x FROM fired"}),
            );
            ans.status == 200 && kit::values(&ans.body).unwrap() == vec![a as i64]
        });
        if all {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(all, "every alarm fired once");
    // Only the owner fired them, on the instance it held: no other host woke an actor for its
    // tick, and no fence moved.
    assert_eq!(sum(&refs, "kvsqlite_wakes_total"), n as f64);
    assert_eq!(sum(&refs, "kvsqlite_moved_conflicts_total"), 0.0);
}

#[test]
fn a_killed_host_s_actors_answer_after_its_lease_and_no_acknowledged_write_is_lost() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "kill");
    let mut hosts = kit::three_hosts(&table.kv(), "kill", &[]);
    let refs: Vec<&Host> = hosts.iter().collect();
    let mut load = Load::setup("k-", &refs);
    load.start();
    load.run_for_answers(1500);
    let victim = hosts[2].base.clone();
    hosts[2].kill9();
    load.hosts.write().unwrap().retain(|b| *b != victim);
    kit::wait_members(&[&hosts[0], &hosts[1]], 2);
    load.run_for_answers(1500);
    load.stop();
    load.assert_no_failures();
    // TTL + one wake: every actor answers at its first request, with every acknowledged write.
    load.verify_all(&hosts[0].base);
    load.verify_all(&hosts[1].base);
    let moved: f64 = [&hosts[0], &hosts[1]]
        .iter()
        .map(|h| h.metrics()["kvsqlite_cluster_members"])
        .sum();
    assert_eq!(moved, 4.0, "each survivor sees two members");
}

#[test]
fn a_host_stopped_past_its_ttl_writes_nothing_when_it_resumes_and_joins_again() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "stop");
    let hosts = kit::three_hosts(&table.kv(), "stop", &[]);
    let refs: Vec<&Host> = hosts.iter().collect();
    let load = Load::setup("s-", &refs);
    let stopped = &hosts[2];
    let awake = kit::awake_map(&hosts[0]);
    let theirs: Vec<String> = awake
        .iter()
        .filter(|(_, on)| on[0] == stopped.addr)
        .map(|(a, _)| a.clone())
        .take(10)
        .collect();
    assert!(
        theirs.len() >= 5,
        "the stopped host holds actors: {theirs:?}"
    );
    let id_before = stopped.cluster()["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["self"] == json!(true))
        .unwrap()["id"]
        .clone();
    stopped.signal("-STOP");
    // Requests sent straight to the stopped host wait in its listen queue.
    let queued: Vec<_> = theirs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (base, path) = (stopped.base.clone(), format!("/actors/{a}/query"));
            std::thread::spawn(move || {
                let marker = 900_000 + i as i64;
                let body = json!({"sql": "INSERT INTO log(v) VALUES (?)", "params": [marker]});
                (marker, post(&serve::agent(), &base, &path, &body))
            })
        })
        .collect();
    kit::wait_members(&[&hosts[0], &hosts[1]], 2);
    // The others serve its actors now, and write.
    let agent = serve::agent();
    for (i, a) in theirs.iter().enumerate() {
        let ans = post(
            &agent,
            &hosts[i % 2].base,
            &format!("/actors/{a}/query"),
            &json!({"sql": "INSERT INTO log(v) VALUES (?)", "params": [i as i64]}),
        );
        assert_eq!(ans.status, 200, "{}", ans.body);
        assert_ne!(ans.served_by.as_deref(), Some(stopped.addr.as_str()));
    }
    stopped.signal("-CONT");
    let mut refused = BTreeSet::new();
    let mut landed_elsewhere = BTreeSet::new();
    for t in queued {
        let (marker, ans) = t.join().expect("client");
        match ans.status {
            503 => {
                assert!(ans.retry_after.is_some());
                refused.insert(marker);
            }
            // Taken after it joined again: forwarded to the actor's owner, never run here
            // while its lease had lapsed.
            200 => {
                assert_eq!(
                    ans.forwarded_by.as_deref(),
                    Some(stopped.addr.as_str()),
                    "{}",
                    ans.body
                );
                assert_ne!(ans.served_by.as_deref(), Some(stopped.addr.as_str()));
                landed_elsewhere.insert(marker);
            }
            s => panic!("unexpected {s}: {}", ans.body),
        }
    }
    kit::wait_members(&[&hosts[0], &hosts[1], stopped], 3);
    let id_after = stopped.cluster()["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["self"] == json!(true))
        .unwrap()["id"]
        .clone();
    assert_ne!(id_before, id_after, "it joined again under a new id");
    assert_eq!(stopped.metrics()["kvsqlite_cluster_expulsions_total"], 1.0);
    for (i, a) in theirs.iter().enumerate() {
        let ans = post(
            &agent,
            &hosts[0].base,
            &format!("/actors/{a}/query"),
            &json!({"sql": "SELECT v FROM log ORDER BY id"}),
        );
        assert_eq!(ans.status, 200, "{}", ans.body);
        let rows: BTreeSet<i64> = kit::values(&ans.body).unwrap().into_iter().collect();
        assert!(
            rows.contains(&(i as i64)),
            "{a}: the others' write is there: {rows:?}"
        );
        let marker = 900_000 + i as i64;
        assert_eq!(
            rows.contains(&marker),
            landed_elsewhere.contains(&marker),
            "{a}: the stopped host's request landed only if the owner ran it: {rows:?}"
        );
        assert!(!(refused.contains(&marker) && rows.contains(&marker)));
    }
    drop(load);
}

#[test]
fn a_rolling_restart_under_load_loses_nothing_and_answers_99_percent() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "roll");
    let mut hosts = kit::three_hosts(&table.kv(), "roll", &[]);
    let refs: Vec<&Host> = hosts.iter().collect();
    let mut load = Load::setup("r-", &refs);
    load.start();
    load.run_for_answers(500);
    for i in 0..3 {
        let status = hosts[i].terminate();
        assert!(status.success(), "host {i} exit: {status:?}");
        assert!(
            hosts[i].stderr_text().contains("left the cluster"),
            "{}",
            hosts[i].stderr_text()
        );
        load.run_for_answers(200);
        hosts[i].restart();
        kit::wait_members(&hosts.iter().collect::<Vec<_>>(), 3);
        load.run_for_answers(500);
    }
    load.stop();
    load.assert_no_failures();
    let ok = load.counts.ok.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let answered = load.answered() as f64;
    eprintln!("rolling restart: {:?}", load.counts);
    assert!(ok / answered >= 0.99, "{ok} of {answered} answered 200");
    load.verify_all(&hosts[0].base);
}

#[test]
fn cluster_mode_refuses_a_store_that_is_not_shared() {
    for kv in ["memory:", "redb:/tmp/kvsqlite-cluster-refused.redb"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
            .args([
                "--kv",
                kv,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--cluster",
                "c",
            ])
            .env("KVSQLITE_ADMIN_TOKEN", kit::ADMIN)
            .output()
            .expect("run kvsqlite");
        assert_eq!(out.status.code(), Some(2), "{kv}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--cluster needs a store every host shares"),
            "{kv}: {err}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args(["--kv", "memory:", "serve", "--advertise", "127.0.0.1:1"])
        .output()
        .expect("run kvsqlite");
    assert_eq!(out.status.code(), Some(2), "--advertise needs --cluster");
}

#[test]
fn bench_http_spreads_over_the_hosts_and_times_a_kill() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "bench");
    let hosts = kit::three_hosts(&table.kv(), "bench", &["--idle-sleep-ms", "300"]);
    let urls: Vec<String> = hosts.iter().map(|h| h.base.clone()).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvsqlite"))
        .args([
            "bench",
            "http",
            "--url",
            &urls.join(","),
            "--actors",
            "30",
            "--rows",
            "10",
        ])
        .args(["--requests", "600", "--kill-one", "--json"])
        .env("KVSQLITE_ADMIN_TOKEN", kit::ADMIN)
        .output()
        .expect("run kvsqlite bench http");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(v["errors"], json!(0), "{v}");
    assert_eq!(v["url"], json!(urls.join(",")));
    let c = &v["cluster"];
    assert_eq!(c["hosts"], json!(urls));
    let (direct, forwarded) = (
        c["direct"].as_u64().unwrap(),
        c["forwarded"].as_u64().unwrap(),
    );
    assert_eq!(direct + forwarded, v["load"]["ok"].as_u64().unwrap());
    assert!(direct > 0 && forwarded > 0, "{c}");
    assert_eq!(v["load"]["ok"], json!(600));
    let k = &c["kill"];
    assert_eq!(k["killed"], json!(urls[2]));
    assert!(k["actors_interrupted"].as_u64().unwrap() > 0, "{k}");
    assert!(k["failed_answers"].as_u64().unwrap() >= k["actors_interrupted"].as_u64().unwrap());
    assert!(k["recovery_s"].as_f64().is_some());
    assert_eq!(k["pid"], json!(hosts[2].pid()));
    // Both survivors come to see two members, and serve every actor.
    kit::wait_members(&[&hosts[0], &hosts[1]], 2);
    let agent = serve::agent();
    let prefix = v["actor_prefix"].as_str().unwrap();
    for i in 0..30 {
        let ans = post(
            &agent,
            &hosts[i % 2].base,
            &format!("/actors/{prefix}-{i}/query"),
            &json!({"sql": "SELECT count(*) FROM kv"}),
        );
        assert_eq!(ans.status, 200, "{}", ans.body);
    }
}

/// A host that loses actors to a member that joined closes their WebSockets (1012, "service
/// restart"), asleep or awake, and keeps the others; the new owner upgrades a reconnect.
#[test]
fn a_host_that_loses_an_actor_closes_its_websockets() {
    let Some(url) = kit::postgres_url() else {
        return;
    };
    let table = PgTable::new(&url, "sockmove");
    let kv = table.kv();
    let h1 = Host::start(&kv, "sockmove", "127.0.0.1:0", &[]);
    let h2 = Host::start(&kv, "sockmove", "127.0.0.1:0", &[]);
    kit::wait_members(&[&h1, &h2], 2);
    let mut socks = Vec::new();
    for i in 0..24 {
        let actor = format!("sm-{i}");
        let owner = owner_of(&h1, &actor);
        let host = if owner == h1.addr { &h1 } else { &h2 };
        let (ws, _) = upgrade(host, &actor).expect("the owner upgrades");
        socks.push((actor, owner, ws));
    }
    let h3 = Host::start(&kv, "sockmove", "127.0.0.1:0", &[]);
    kit::wait_members(&[&h1, &h2, &h3], 3);
    let mut moved = 0;
    for (actor, before, ws) in &mut socks {
        let now = owner_of(&h1, actor);
        if now == *before {
            continue;
        }
        moved += 1;
        assert_eq!(now, h3.addr, "{actor} moved to the new member");
        let code = loop {
            match ws.read().expect("the old owner closes the socket") {
                tungstenite::Message::Close(f) => break f.map(|f| u16::from(f.code)),
                _ => continue,
            }
        };
        assert_eq!(code, Some(1012), "{actor}'s socket on {before}");
        let (mut again, resp) = upgrade(&h3, actor).expect("the new owner upgrades");
        assert_eq!(resp.status().as_u16(), 101);
        let _ = again.close(None);
    }
    assert!(moved > 0, "no actor moved to the third member");
    // The sockets of actors that stayed are open: a ping is answered.
    for (actor, before, ws) in &mut socks {
        if owner_of(&h1, actor) != *before {
            continue;
        }
        ws.send(tungstenite::Message::Ping(vec![7].into()))
            .expect("send a ping");
        let pong = loop {
            match ws.read().expect("an answer") {
                tungstenite::Message::Pong(p) => break p,
                tungstenite::Message::Close(f) => panic!("{actor}'s socket closed: {f:?}"),
                _ => continue,
            }
        };
        assert_eq!(pong.as_ref(), [7]);
    }
}

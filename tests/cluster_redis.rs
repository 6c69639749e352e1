//! Three `kvsqlite serve --cluster` hosts over a Redis Cluster this test starts (3 masters, 3
//! replicas on free loopback ports, see `common/redis_cluster.rs`), under the checked load of
//! `cluster_kit`: one host per actor with the others forwarding, then kill -9 of one host,
//! after which every actor answers once its lease ended, with every acknowledged write, and
//! `integrity_check` ok. The membership records live in one namespace, so one hash slot: the
//! heartbeat's write and listing are each one call.

#[path = "cluster_kit/mod.rs"]
mod kit;
#[path = "common/redis_cluster.rs"]
mod redis_cluster;

use std::sync::atomic::Ordering;

use kit::{Host, Load, ACTORS};

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[test]
fn three_hosts_on_redis_cluster_serve_each_actor_once_and_survive_a_kill() {
    let Some(rc) = redis_cluster::shared() else {
        return;
    };
    let kv = rc.url("");
    let name = format!("rc{}-{}", std::process::id(), nanos());
    let mut hosts = kit::three_hosts(&kv, &name, &[]);
    let refs: Vec<&Host> = hosts.iter().collect();
    let prefix = format!("{name}-");
    let mut load = Load::setup(&prefix, &refs);
    load.start();
    load.run_for_answers(2000);
    load.stop();
    load.assert_no_failures();
    assert_eq!(load.counts.unavailable.load(Ordering::Relaxed), 0);
    let awake = kit::awake_map(&hosts[0]);
    assert_eq!(awake.len(), ACTORS);
    {
        let served = load.served_by.lock().unwrap();
        for (actor, on) in &awake {
            assert_eq!(on.len(), 1, "{actor} awake on {on:?}");
            let by: Vec<&String> = served[actor].iter().collect();
            assert_eq!(by, vec![&on[0]], "{actor}");
        }
    }
    let wakes: f64 = hosts
        .iter()
        .map(|h| h.metrics()["kvsqlite_wakes_total"])
        .sum();
    assert_eq!(wakes, ACTORS as f64, "each actor woke once in the cluster");

    load.start();
    load.run_for_answers(1000);
    let victim = hosts[1].base.clone();
    hosts[1].kill9();
    load.hosts.write().unwrap().retain(|b| *b != victim);
    kit::wait_members(&[&hosts[0], &hosts[2]], 2);
    load.run_for_answers(1000);
    load.stop();
    load.assert_no_failures();
    load.verify_all(&hosts[2].base);
}

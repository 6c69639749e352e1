//! Membership records in the store: each host's lease, written with a precondition, and the
//! table of the records a host has seen.
//!
//! Why it exists: hosts share nothing but the store, so the store holds who is in the cluster.
//! Each host keeps one record under `_kvsqlite/cluster/NAME` (a reserved namespace: actor ids
//! served over HTTP cannot hold `/`, and the library refuses `_kvsqlite/` namespaces), key
//! `m/<member id>`, rewritten every heartbeat with a higher sequence number and the condition
//! that it still holds what this host last wrote. A host whose record was taken away (another
//! host removed it as dead) learns it from that condition: its heartbeat fails with a conflict.
//!
//! Liveness is judged by each observer on its own clock, never by comparing clocks: a record
//! is live while its value changed less than its TTL ago *as this host saw it*. Since the
//! writer counts its own lease from the moment it *sent* the heartbeat, and an observer sees
//! the change only after it landed, the writer's lease always ends before any observer can
//! call it dead.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::kv::{Key, KvError, ListRequest, Precondition, SharedStore, Value, WriteBatch};

/// The prefix of every cluster's namespace.
pub const NAMESPACE_PREFIX: &str = "_kvsqlite/cluster/";

/// The key prefix of member records inside a cluster's namespace.
pub const MEMBER_PREFIX: &[u8] = b"m/";

/// Most members read by one listing (a cluster larger than this is not supported).
pub const MAX_MEMBERS: usize = 1024;

/// The store namespace of cluster `name`.
pub fn namespace(name: &str) -> String {
    format!("{NAMESPACE_PREFIX}{name}")
}

/// Checks a cluster name: 1 to 64 bytes of `A-Z a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!(
            "the cluster name must be 1 to 64 bytes (it is {})",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the cluster name may not hold {c:?} (allowed: A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// The key of member `id`'s record.
pub fn member_key(id: &str) -> Key {
    let mut k = MEMBER_PREFIX.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// What a member's record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The address other hosts forward to (`HOST:PORT`).
    pub addr: String,
    /// Heartbeats written so far: every write changes the value.
    pub seq: u64,
    /// The member is leaving: others stop placing actors on it.
    pub leaving: bool,
    /// The member's lease length in milliseconds: it is dead once its record stayed unchanged
    /// this long.
    pub ttl_ms: u64,
}

impl Record {
    /// The stored bytes (JSON).
    pub fn encode(&self) -> Value {
        json!({
            "v": 1,
            "addr": self.addr,
            "seq": self.seq,
            "leaving": self.leaving,
            "ttl_ms": self.ttl_ms,
        })
        .to_string()
        .into_bytes()
    }

    /// Parses stored bytes; `None` for anything malformed (such a record is ignored).
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        if v.get("v")?.as_u64()? != 1 {
            return None;
        }
        Some(Record {
            addr: v.get("addr")?.as_str()?.to_string(),
            seq: v.get("seq")?.as_u64()?,
            leaving: v.get("leaving")?.as_bool()?,
            ttl_ms: v.get("ttl_ms")?.as_u64()?.max(1),
        })
    }
}

/// Writes this member's record (on the condition that it still holds `previous`, or is absent
/// when `previous` is `None`), then lists every member record: two round trips. A conflict
/// ([`KvError::Conflict`]) means the record was taken away or changed by another host.
pub fn heartbeat(
    store: &SharedStore,
    ns: &str,
    id: &str,
    value: Value,
    previous: Option<&[u8]>,
) -> Result<Vec<(Key, Value)>, KvError> {
    let key = member_key(id);
    let pre = match previous {
        Some(p) => Precondition::equals(key.clone(), p.to_vec()),
        None => Precondition::absent(key.clone()),
    };
    store.write(
        ns,
        &WriteBatch {
            puts: vec![(key, value)],
            deletes: Vec::new(),
            preconditions: vec![pre],
        },
    )?;
    list(store, ns)
}

/// Every member record (one round trip).
pub fn list(store: &SharedStore, ns: &str) -> Result<Vec<(Key, Value)>, KvError> {
    let page = store.list(
        ns,
        &ListRequest::prefix(MEMBER_PREFIX.to_vec()).with_limit(MAX_MEMBERS),
    )?;
    Ok(page.entries)
}

/// Deletes member `id`'s record if it still holds `expected` (a dead member's, or this host's
/// own at a clean leave). A conflict means it changed meanwhile: the member is alive.
pub fn remove(store: &SharedStore, ns: &str, id: &str, expected: &[u8]) -> Result<(), KvError> {
    let key = member_key(id);
    store.write(
        ns,
        &WriteBatch {
            puts: Vec::new(),
            deletes: vec![key.clone()],
            preconditions: vec![Precondition::equals(key, expected.to_vec())],
        },
    )
}

/// A member record as this host saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The member id (the key without its prefix).
    pub id: String,
    /// The parsed record.
    pub record: Record,
    /// The stored bytes (the condition of a removal).
    pub raw: Value,
    /// When this host first saw this value.
    pub changed: Instant,
}

impl Seen {
    /// True while the record changed less than its TTL ago (as this host saw it).
    pub fn is_live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.changed) < Duration::from_millis(self.record.ttl_ms)
    }
}

/// The member records this host has seen, with when each last changed.
#[derive(Default, Debug)]
pub struct Table {
    seen: HashMap<String, Seen>,
}

impl Table {
    /// Takes a listing read at `now`: new or changed records are stamped `now`, records gone
    /// from the store are forgotten, malformed ones ignored.
    pub fn observe(&mut self, listing: &[(Key, Value)], now: Instant) {
        let mut next = HashMap::with_capacity(listing.len());
        for (k, v) in listing {
            let Some(id) = k
                .strip_prefix(MEMBER_PREFIX)
                .and_then(|id| std::str::from_utf8(id).ok())
            else {
                continue;
            };
            let Some(record) = Record::decode(v) else {
                continue;
            };
            let changed = match self.seen.get(id) {
                Some(s) if s.raw == *v => s.changed,
                _ => now,
            };
            next.insert(
                id.to_string(),
                Seen {
                    id: id.to_string(),
                    record,
                    raw: v.clone(),
                    changed,
                },
            );
        }
        self.seen = next;
    }

    /// Every record seen, sorted by address then id.
    pub fn all(&self) -> Vec<&Seen> {
        let mut v: Vec<&Seen> = self.seen.values().collect();
        v.sort_by(|a, b| (&a.record.addr, &a.id).cmp(&(&b.record.addr, &b.id)));
        v
    }

    /// The records that stayed unchanged past their TTL at `now`.
    pub fn dead(&self, now: Instant) -> Vec<Seen> {
        self.seen
            .values()
            .filter(|s| !s.is_live(now))
            .cloned()
            .collect()
    }

    /// The addresses actors are placed on at `now`: live members not leaving, one per address
    /// (a restarted host's old record and its new one share it), sorted; `except` (this
    /// host's own id) and the records in `excluded` left out.
    pub fn placement<V>(
        &self,
        now: Instant,
        except: Option<&str>,
        excluded: &HashMap<String, V>,
    ) -> Vec<String> {
        let mut addrs: Vec<String> = self
            .seen
            .values()
            .filter(|s| {
                s.is_live(now)
                    && !s.record.leaving
                    && Some(s.id.as_str()) != except
                    && !excluded.contains_key(&s.id)
            })
            .map(|s| s.record.addr.clone())
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Live members, leaving ones included.
    pub fn live_count(&self, now: Instant) -> usize {
        self.seen.values().filter(|s| s.is_live(now)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(addr: &str, seq: u64, leaving: bool) -> Value {
        Record {
            addr: addr.into(),
            seq,
            leaving,
            ttl_ms: 1000,
        }
        .encode()
    }

    #[test]
    fn records_round_trip_and_malformed_ones_are_ignored() {
        let r = Record {
            addr: "127.0.0.1:1".into(),
            seq: 7,
            leaving: true,
            ttl_ms: 5000,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        assert_eq!(Record::decode(b"not json"), None);
        assert_eq!(
            Record::decode(br#"{"v":2,"addr":"x","seq":1,"leaving":false,"ttl_ms":1}"#),
            None
        );
        assert!(check_name("prod-1.eu_west").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert_eq!(namespace("c"), "_kvsqlite/cluster/c");
        assert!(crate::actor::alarms::is_reserved_namespace(&namespace("c")));
    }

    #[test]
    fn a_record_unchanged_past_its_ttl_is_dead_and_leaving_ones_place_nothing() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let listing = vec![
            (member_key("a"), rec("h:1", 1, false)),
            (member_key("b"), rec("h:2", 1, false)),
            (member_key("c"), rec("h:3", 1, true)),
            (member_key("d"), b"junk".to_vec()),
        ];
        t.observe(&listing, t0);
        let none: HashMap<String, ()> = HashMap::new();
        assert_eq!(t.placement(t0, None, &none), vec!["h:1", "h:2"]);
        assert_eq!(t.placement(t0, Some("a"), &none), vec!["h:2"]);
        let b: HashMap<String, ()> = [("b".to_string(), ())].into();
        assert_eq!(t.placement(t0, None, &b), vec!["h:1"]);
        assert_eq!(t.live_count(t0), 3);
        // b heartbeats, a does not: 1.2 s later a is dead, b is not.
        let t1 = t0 + Duration::from_millis(600);
        let listing2 = vec![
            (member_key("a"), rec("h:1", 1, false)),
            (member_key("b"), rec("h:2", 2, false)),
        ];
        t.observe(&listing2, t1);
        let t2 = t0 + Duration::from_millis(1200);
        let dead: Vec<String> = t.dead(t2).into_iter().map(|s| s.id).collect();
        assert_eq!(dead, vec!["a".to_string()]);
        assert_eq!(t.placement(t2, None, &none), vec!["h:2"]);
        assert_eq!(t.all().len(), 2, "c's record left the store: forgotten");
    }
}

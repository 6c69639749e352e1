//! Who a request is, decided from its headers alone: the admin token, an actor's inspector
//! token, and the memory that keeps token checks cheap.
//!
//! Why it exists: a request without a valid token must cost the host nothing — its body is
//! never read, it never waits on an actor's lock, and it never makes the store answer twice.
//! So an actor's token is read from the actor's slot when it is awake here (no lock), from the
//! last document kept for it when asleep, else from the store **once** (kept in a bounded
//! cache: an actor's inspector token never changes); an id the store did not hold is
//! remembered as absent for a short while (bounded too).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use parking_lot::Mutex;

use super::{tokens_equal, HostError};

/// Actor tokens read from the store, kept at most.
const STORED_CAP: usize = 4096;
/// Ids the store did not hold, remembered at most.
const ABSENT_CAP: usize = 4096;
/// How long an id the store did not hold is remembered (another host may create it).
const ABSENT_TTL: Duration = Duration::from_secs(5);

/// The bearer token of a request, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A bounded map with first-in first-out eviction.
struct Bounded<V> {
    map: HashMap<String, V>,
    order: VecDeque<String>,
    cap: usize,
}

impl<V> Bounded<V> {
    fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn insert(&mut self, k: String, v: V) {
        if self.map.insert(k.clone(), v).is_none() {
            self.order.push_back(k);
        }
        while self.map.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn remove(&mut self, k: &str) {
        if self.map.remove(k).is_some() {
            self.order.retain(|x| x != k);
        }
    }
}

/// What the host remembers about actor tokens it had to read from the store.
pub struct TokenMemory {
    stored: Mutex<Bounded<String>>,
    absent: Mutex<Bounded<Instant>>,
}

impl Default for TokenMemory {
    fn default() -> Self {
        TokenMemory {
            stored: Mutex::new(Bounded::new(STORED_CAP)),
            absent: Mutex::new(Bounded::new(ABSENT_CAP)),
        }
    }
}

/// Where an actor's token was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The actor's token.
    Token(String),
    /// The store does not hold the actor.
    Absent,
}

impl TokenMemory {
    /// Actor `id`'s token: `known` (the slot or the last document, read without a lock) when
    /// the host has it, else what this memory holds, else `read_store` — called at most once per
    /// id while its answer is remembered.
    pub async fn lookup<F, Fut>(
        &self,
        id: &str,
        known: Option<String>,
        read_store: F,
    ) -> Result<Lookup, HostError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, HostError>>,
    {
        if let Some(t) = known {
            return Ok(Lookup::Token(t));
        }
        if let Some(t) = self.stored.lock().map.get(id) {
            return Ok(Lookup::Token(t.clone()));
        }
        {
            let mut absent = self.absent.lock();
            match absent.map.get(id) {
                Some(at) if at.elapsed() < ABSENT_TTL => return Ok(Lookup::Absent),
                Some(_) => absent.remove(id),
                None => {}
            }
        }
        match read_store().await? {
            Some(t) => {
                self.stored.lock().insert(id.to_string(), t.clone());
                Ok(Lookup::Token(t))
            }
            None => {
                self.absent.lock().insert(id.to_string(), Instant::now());
                Ok(Lookup::Absent)
            }
        }
    }

    /// Forgets that the store did not hold actor `id` (the host just created it, as a fork).
    pub fn forget_absent(&self, id: &str) {
        self.absent.lock().remove(id);
    }

    /// True when `token` is actor `id`'s token (see [`TokenMemory::lookup`]).
    pub async fn check<F, Fut>(
        &self,
        id: &str,
        token: &str,
        known: Option<String>,
        read_store: F,
    ) -> Result<bool, HostError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Option<String>, HostError>>,
    {
        Ok(match self.lookup(id, known, read_store).await? {
            Lookup::Token(t) => tokens_equal(token, &t),
            Lookup::Absent => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn the_store_is_read_once_per_id() {
        let mem = TokenMemory::default();
        let reads = AtomicUsize::new(0);
        let read = |v: Option<&'static str>| {
            reads.fetch_add(1, Ordering::SeqCst);
            async move { Ok(v.map(String::from)) }
        };
        run(async {
            // Wrong tokens, again and again: one store read.
            for _ in 0..5 {
                assert!(!mem
                    .check("a", "wrong", None, || read(Some("right")))
                    .await
                    .unwrap());
            }
            assert!(mem
                .check("a", "right", None, || read(Some("right")))
                .await
                .unwrap());
            assert_eq!(reads.load(Ordering::SeqCst), 1);
            // An id the store does not hold: one read while remembered.
            for _ in 0..5 {
                assert!(!mem.check("b", "x", None, || read(None)).await.unwrap());
            }
            assert_eq!(reads.load(Ordering::SeqCst), 2);
            // What the host knows (an awake actor) is used without any read.
            assert!(mem
                .check("c", "k", Some("k".into()), || read(None))
                .await
                .unwrap());
            assert_eq!(reads.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn memory_is_bounded() {
        let mut b = Bounded::new(3);
        for i in 0..10 {
            b.insert(format!("k{i}"), i);
        }
        assert_eq!(b.map.len(), 3);
        assert!(b.map.contains_key("k9") && !b.map.contains_key("k6"));
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}

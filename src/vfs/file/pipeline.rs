//! Pipelined commits: a commit's put is queued and the COMMIT returns; a writer thread sends the
//! queued puts, one in flight per database, every commit queued while a put flies going out
//! together in the next one, in order. [`DbState::wait_durable`] blocks until every commit
//! queued so far is acknowledged.
//!
//! Why it is apart from `commit_path.rs`: the commit path decides *what* a commit writes; this
//! module decides *when* it reaches the store, and keeps reads coherent meanwhile: every key a
//! queued or in-flight put writes is answered from the in-flight overlay (so pages of commits in
//! flight are read back whatever the cache evicted), and every other KV write, list or
//! history read first waits until nothing is in flight (so the synchronous paths — staged
//! commits, the journal, truncation, history — see the store as the commits left it).
//!
//! Crash guarantees: each commit is one atomic put of its own (pages, redo record, metadata,
//! actor records); a combined put carries whole commits in commit order, each with its own
//! redo record, and the metadata of the last, so the store always holds a prefix of the
//! commits. A put that fails or whose outcome is unknown *poisons* the database: the commits
//! queued behind it are dropped unsent, and every later operation and `wait_durable` fails with
//! [`VfsError::Poisoned`] (the actor must wake again: the store is the truth).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use super::{DbState, Inner, VfsError};
use crate::kv::{Key, KvLimits, Value, WriteBatch};

/// One commit's put, waiting to be sent.
struct Queued {
    seq: u64,
    batch: WriteBatch,
}

#[derive(Default)]
struct PipeState {
    /// Commits queued and not yet sent, in commit order.
    queued: Vec<Queued>,
    /// A writer thread is running (a put is in flight or about to be).
    in_flight: bool,
    /// The ticket of the last commit queued.
    queued_seq: u64,
    /// Every commit with a ticket up to this one is acknowledged by the store.
    acked_seq: u64,
    /// Why the database is poisoned (a put failed or its outcome is unknown).
    poison: Option<String>,
    /// Each key a queued or in-flight put writes: its newest value (`None`: deleted) and the
    /// ticket of the commit that wrote it.
    overlay: HashMap<Key, (Option<Value>, u64)>,
}

/// The pipeline of one database.
#[derive(Default)]
pub(super) struct Pipeline {
    st: Mutex<PipeState>,
    cv: Condvar,
    /// The database's own `Arc` (set by the registry), handed to the writer thread.
    me: Mutex<Option<Weak<DbState>>>,
}

impl DbState {
    /// Lets the state hand itself to its writer thread; without it (a state not shared
    /// through an `Arc`) commits are written synchronously even when pipelined.
    pub(crate) fn set_self(&self, me: Weak<DbState>) {
        *self.pipe.me.lock() = Some(me);
    }

    /// True when this commit may be queued instead of written now.
    pub(super) fn pipelining(&self) -> bool {
        self.opts.pipelined && self.held.lock().is_none() && self.pipe.me.lock().is_some()
    }

    /// Queues `batch` (one whole commit, already within the write limits) and starts the
    /// writer if no put is in flight. The caller updated its in-memory state as committed.
    pub(super) fn queue_commit(
        &self,
        _inner: &mut Inner,
        batch: WriteBatch,
    ) -> Result<(), VfsError> {
        let me = self.pipe.me.lock().as_ref().and_then(Weak::upgrade);
        let Some(me) = me else {
            return Err(VfsError::Misuse(
                "pipelined database without a shared state".into(),
            ));
        };
        let mut st = self.pipe.st.lock();
        if let Some(p) = &st.poison {
            return Err(VfsError::Poisoned(p.clone()));
        }
        st.queued_seq += 1;
        let seq = st.queued_seq;
        for (k, v) in &batch.puts {
            st.overlay.insert(k.clone(), (Some(v.clone()), seq));
        }
        for k in &batch.deletes {
            st.overlay.insert(k.clone(), (None, seq));
        }
        st.queued.push(Queued { seq, batch });
        if !st.in_flight {
            st.in_flight = true;
            drop(st);
            let spawned = std::thread::Builder::new()
                .name("kvsqlite-writer".into())
                .spawn(move || me.run_writer());
            if let Err(e) = spawned {
                let mut st = self.pipe.st.lock();
                let msg = format!("the writer thread could not start: {e}");
                st.poison = Some(msg.clone());
                st.queued.clear();
                st.in_flight = false;
                self.pipe.cv.notify_all();
                return Err(VfsError::Poisoned(msg));
            }
        }
        Ok(())
    }

    /// The writer: sends the queued commits, as many as fit one write at a time, until the
    /// queue is empty or a put fails.
    fn run_writer(self: Arc<Self>) {
        loop {
            let limits = self.write_limits();
            let group = {
                let mut st = self.pipe.st.lock();
                if st.queued.is_empty() || st.poison.is_some() {
                    st.queued.clear();
                    st.in_flight = false;
                    self.pipe.cv.notify_all();
                    return;
                }
                take_group(&mut st.queued, &limits)
            };
            let last = group.last().map(|q| q.seq).unwrap_or(0);
            let mut batch = merge(group);
            let r = self.kv_write_now(&mut batch);
            let mut st = self.pipe.st.lock();
            match r {
                Ok(()) => {
                    st.acked_seq = last;
                    st.overlay.retain(|_, (_, s)| *s > last);
                }
                Err(e) => {
                    let msg = if self.moved() {
                        "actor moved: another instance wrote this actor's database while commits were in flight; the queued commits were not written (wake the actor again)".to_string()
                    } else {
                        format!("a pipelined commit's put failed or its outcome is unknown ({e}); the commits queued behind it were not written (wake the actor again: the store is the truth)")
                    };
                    tracing::warn!(actor = %self.actor(), "kvsqlite VFS: {msg}");
                    st.poison = Some(msg);
                    st.queued.clear();
                    drop(st);
                    if let Some(hook) = self.commit_hook.lock().as_ref() {
                        hook(None);
                    }
                    st = self.pipe.st.lock();
                }
            }
            self.pipe.cv.notify_all();
        }
    }

    /// The ticket of the last commit queued: [`DbState::wait_durable_for`] of it covers every
    /// commit made so far. 0 when none was pipelined.
    pub fn durable_ticket(&self) -> u64 {
        self.pipe.st.lock().queued_seq
    }

    /// Blocks until every commit up to `ticket` is acknowledged by the store. Fails with
    /// [`VfsError::Poisoned`] (or [`VfsError::Moved`]) once a put failed.
    pub fn wait_durable_for(&self, ticket: u64) -> Result<(), VfsError> {
        let mut st = self.pipe.st.lock();
        loop {
            if let Some(p) = &st.poison {
                return Err(self.poison_error(p));
            }
            if st.acked_seq >= ticket {
                return Ok(());
            }
            self.pipe.cv.wait(&mut st);
        }
    }

    /// Blocks until every commit made so far is acknowledged (see
    /// [`DbState::wait_durable_for`]).
    pub fn wait_durable(&self) -> Result<(), VfsError> {
        let t = self.durable_ticket();
        self.wait_durable_for(t)
    }

    /// Blocks until no put is queued or in flight (before any synchronous store call).
    pub(super) fn settle(&self) -> Result<(), VfsError> {
        let mut st = self.pipe.st.lock();
        loop {
            if let Some(p) = &st.poison {
                return Err(self.poison_error(p));
            }
            if !st.in_flight && st.queued.is_empty() {
                return Ok(());
            }
            self.pipe.cv.wait(&mut st);
        }
    }

    /// `Err` once the database refuses every operation: another instance took the fence
    /// ([`VfsError::Moved`]) or a pipelined put failed ([`VfsError::Poisoned`]).
    pub fn check_usable(&self) -> Result<(), VfsError> {
        self.check_moved()
    }

    /// The poison's message, when a pipelined put failed.
    pub fn poisoned(&self) -> Option<String> {
        self.pipe.st.lock().poison.clone()
    }

    fn poison_error(&self, msg: &str) -> VfsError {
        if self.moved() {
            VfsError::Moved
        } else {
            VfsError::Poisoned(msg.to_string())
        }
    }

    /// Answers the keys a queued or in-flight put writes from the overlay: `None` for a key
    /// the store must be asked.
    pub(super) fn overlay_get(&self, keys: &[Key]) -> Vec<Option<Option<Value>>> {
        let st = self.pipe.st.lock();
        if st.overlay.is_empty() {
            return vec![None; keys.len()];
        }
        keys.iter()
            .map(|k| st.overlay.get(k).map(|(v, _)| v.clone()))
            .collect()
    }
}

/// The queued commits from the front that fit one write together (at least one), counted as
/// [`merge`] will write them: a key several commits write (the metadata, a page they share,
/// the fence record) is one entry, sized by its last value. Counted per commit instead, the
/// keys every commit repeats would fill the write's entry limit at a fraction of the commits
/// it holds (a 1-row commit writes about five keys, three of them the same in every commit).
fn take_group(queued: &mut Vec<Queued>, limits: &KvLimits) -> Vec<Queued> {
    let n = {
        // Each key of the merged write so far, with the bytes it counts (key and last value).
        let mut sizes: HashMap<&[u8], usize> = HashMap::new();
        let mut bytes = 0usize;
        let mut n = 0usize;
        for q in queued.iter() {
            let writes = q
                .batch
                .puts
                .iter()
                .map(|(k, v)| (k.as_slice(), k.len() + v.len()))
                .chain(q.batch.deletes.iter().map(|k| (k.as_slice(), k.len())));
            let (mut entries_after, mut bytes_after) = (sizes.len(), bytes);
            for (k, size) in writes.clone() {
                match sizes.get(k) {
                    Some(&old) => bytes_after = bytes_after - old + size,
                    None => {
                        entries_after += 1;
                        bytes_after += size;
                    }
                }
            }
            if n > 0
                && (entries_after > limits.max_write_entries
                    || bytes_after > limits.max_write_bytes)
            {
                break;
            }
            for (k, size) in writes {
                sizes.insert(k, size);
            }
            // A key this commit wrote twice was counted twice above: count it as written.
            bytes = sizes.values().sum();
            n += 1;
        }
        n
    };
    queued.drain(..n).collect()
}

/// Commits in order as one write: a key written by several keeps its last value (or its last
/// deletion), so no key appears twice.
fn merge(group: Vec<Queued>) -> WriteBatch {
    if group.len() == 1 {
        return group
            .into_iter()
            .next()
            .map(|q| q.batch)
            .unwrap_or_default();
    }
    let mut order: Vec<(Key, Option<Value>)> = Vec::new();
    let mut at: HashMap<Key, usize> = HashMap::new();
    let mut set = |k: Key, v: Option<Value>| match at.get(&k) {
        Some(&i) => order[i].1 = v,
        None => {
            at.insert(k.clone(), order.len());
            order.push((k, v));
        }
    };
    for q in group {
        let WriteBatch { puts, deletes, .. } = q.batch;
        for (k, v) in puts {
            set(k, Some(v));
        }
        for k in deletes {
            set(k, None);
        }
    }
    let mut out = WriteBatch::default();
    for (k, v) in order {
        match v {
            Some(v) => out.puts.push((k, v)),
            None => out.deletes.push(k),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(seq: u64, puts: &[(&[u8], &[u8])], deletes: &[&[u8]]) -> Queued {
        Queued {
            seq,
            batch: WriteBatch {
                puts: puts.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect(),
                deletes: deletes.iter().map(|k| k.to_vec()).collect(),
                ..WriteBatch::default()
            },
        }
    }

    #[test]
    fn merged_commits_keep_the_last_value_of_each_key_once() {
        let b = merge(vec![
            q(1, &[(b"m", b"1"), (b"p", b"a")], &[b"g"]),
            q(2, &[(b"m", b"2"), (b"h2", b"x")], &[]),
        ]);
        assert_eq!(
            b.puts,
            vec![
                (b"m".to_vec(), b"2".to_vec()),
                (b"p".to_vec(), b"a".to_vec()),
                (b"h2".to_vec(), b"x".to_vec())
            ]
        );
        assert_eq!(b.deletes, vec![b"g".to_vec()]);
    }

    #[test]
    fn a_group_stops_at_the_write_limits_but_takes_at_least_one() {
        let limits = KvLimits {
            max_write_entries: 3,
            ..KvLimits::default()
        };
        let mut queued = vec![
            q(1, &[(b"a", b"1"), (b"b", b"1")], &[]),
            q(2, &[(b"c", b"1")], &[]),
            q(3, &[(b"d", b"1")], &[]),
        ];
        assert_eq!(take_group(&mut queued, &limits).len(), 2);
        assert_eq!(take_group(&mut queued, &limits).len(), 1);
        let one: (&[u8], &[u8]) = (b"a", b"1");
        let mut big = vec![q(1, &[one; 5], &[])];
        assert_eq!(take_group(&mut big, &limits).len(), 1);
    }

    #[test]
    fn keys_the_commits_share_count_once_toward_the_limits() {
        let limits = KvLimits {
            max_write_entries: 4,
            max_write_bytes: 12,
            ..KvLimits::default()
        };
        // Each commit writes the metadata `m` and one key of its own: three fit four entries.
        let mut queued = vec![
            q(1, &[(b"m", b"1"), (b"a", b"1")], &[]),
            q(2, &[(b"m", b"2"), (b"b", b"1")], &[]),
            q(3, &[(b"m", b"3")], &[b"c"]),
            q(4, &[(b"m", b"4"), (b"d", b"1")], &[]),
        ];
        let group = take_group(&mut queued, &limits);
        assert_eq!(
            group.iter().map(|q| q.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let merged = merge(group);
        assert!(merged.puts.len() + merged.deletes.len() <= 4);
        // Bytes count each key's last value once: `m` grows to 9 bytes, 9 + 2 + 2 = 13 > 12.
        let limits = KvLimits {
            max_write_bytes: 12,
            ..KvLimits::default()
        };
        let mut queued = vec![
            q(1, &[(b"m", b"1"), (b"a", b"1")], &[]),
            q(2, &[(b"m", b"22222222"), (b"b", b"1")], &[]),
        ];
        assert_eq!(take_group(&mut queued, &limits).len(), 1);
    }
}

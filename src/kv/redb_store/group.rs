//! Group commit: a leader/follower queue that lets the writes of many actors share one redb
//! write transaction, and so one fsync.
//!
//! Why it exists: redb commits one write transaction at a time and each durable commit costs an
//! fsync (milliseconds). With one transaction per write, a host running many actors on one file
//! gets at most one commit per fsync, whatever its number of actors. Here the writes that arrive
//! while a transaction is committing wait in a queue, and the next transaction takes them all.
//!
//! The protocol (the classic one): a writer enqueues its ticket. If no leader is active it becomes
//! the leader; otherwise it sleeps until its ticket is either done (a leader committed it and left
//! its result) or promoted (it is the new leader). A leader takes the queue (up to a count and a
//! byte budget), commits it through the caller's function, hands every member its own result,
//! then promotes the first ticket still queued, or records that no leader is active. The leader's
//! own caller returns only after that, so every caller returns after its write is durable.
//!
//! Nothing here knows redb: the commit function decides each write's outcome. A panic in it, or
//! anywhere in the leader's work, never leaves a follower waiting: a guard hands every member of
//! the group an error and passes leadership on while the panic unwinds.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::kv::KvError;

/// The answer of a commit function: one result per member, in order, or one error for the whole
/// group (nothing of it acknowledged).
pub(super) type GroupOutcome = Result<Vec<Result<(), KvError>>, KvError>;

/// The queue of one database file.
pub(super) struct GroupCommit<T> {
    queue: Mutex<Queue<T>>,
    /// Taken by a leader before it takes its group off the queue, until it has committed it;
    /// [`GroupCommit::hold`] takes it to make writers queue up.
    gate: Mutex<()>,
    max_items: usize,
    max_weight: usize,
    backend: &'static str,
}

struct Queue<T> {
    waiting: VecDeque<Arc<Ticket<T>>>,
    /// True from the moment a writer becomes leader until a leader finds the queue empty.
    leading: bool,
    /// Groups leaders have taken off the queue so far.
    taken: u64,
}

struct Ticket<T> {
    item: T,
    weight: usize,
    phase: Mutex<Phase>,
    wake: Condvar,
}

enum Phase {
    Queued,
    Lead,
    Done(Result<(), KvError>),
}

impl<T> Ticket<T> {
    fn set(&self, phase: Phase) {
        *self.phase.lock() = phase;
        self.wake.notify_one();
    }
}

impl<T> GroupCommit<T> {
    /// A queue whose groups hold at most `max_items` writes and, past the first write, at most
    /// `max_weight` bytes. `backend` names the store in error messages.
    pub(super) fn new(max_items: usize, max_weight: usize, backend: &'static str) -> Self {
        GroupCommit {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                leading: false,
                taken: 0,
            }),
            gate: Mutex::new(()),
            max_items: max_items.max(1),
            max_weight,
            backend,
        }
    }

    /// Writes waiting for a leader to take them (not counting a group being committed).
    pub(super) fn queued(&self) -> usize {
        self.queue.lock().waiting.len()
    }

    /// Groups taken off the queue by leaders so far (committed, failed, or being committed).
    pub(super) fn taken(&self) -> u64 {
        self.queue.lock().taken
    }

    /// Holds back every commit until the guard is dropped: a leader waits before taking its
    /// group, so every writer arriving meanwhile queues, and all of them (up to the caps) form
    /// the next group. For tests that need a known group.
    pub(super) fn hold(&self) -> MutexGuard<'_, ()> {
        self.gate.lock()
    }

    /// Submits `item` (of `weight` bytes) and returns its own result once the group holding it
    /// was committed or failed. `commit` is called if this caller becomes a leader, with the
    /// group's items in arrival order (this caller's among them).
    pub(super) fn submit(
        &self,
        item: T,
        weight: usize,
        commit: impl FnOnce(&[&T]) -> GroupOutcome,
    ) -> Result<(), KvError> {
        let ticket = Arc::new(Ticket {
            item,
            weight,
            phase: Mutex::new(Phase::Queued),
            wake: Condvar::new(),
        });
        {
            let mut q = self.queue.lock();
            q.waiting.push_back(Arc::clone(&ticket));
            if !q.leading {
                // No leader: the queue is empty but for this ticket, which leads.
                q.leading = true;
                *ticket.phase.lock() = Phase::Lead;
            }
        }
        {
            let mut phase = ticket.phase.lock();
            loop {
                match std::mem::replace(&mut *phase, Phase::Queued) {
                    Phase::Queued => ticket.wake.wait(&mut phase),
                    Phase::Lead => break,
                    Phase::Done(result) => return result,
                }
            }
        }
        self.lead(commit);
        let mut phase = ticket.phase.lock();
        match std::mem::replace(&mut *phase, Phase::Queued) {
            Phase::Done(result) => result,
            // A leader always commits the front of the queue, which is its own ticket.
            _ => Err(KvError::Backend {
                backend: self.backend,
                message: "group commit: a leader's own write was not in its group".into(),
            }),
        }
    }

    /// Takes a group off the queue, commits it and hands out the results.
    fn lead(&self, commit: impl FnOnce(&[&T]) -> GroupOutcome) {
        let mut leadership = Leadership {
            owner: self,
            members: Vec::new(),
        };
        let _gate = self.gate.lock();
        {
            let mut q = self.queue.lock();
            q.taken += 1;
            let mut weight = 0usize;
            while let Some(front) = q.waiting.front() {
                let full = leadership.members.len() >= self.max_items
                    || (!leadership.members.is_empty()
                        && weight.saturating_add(front.weight) > self.max_weight);
                if full {
                    break;
                }
                weight = weight.saturating_add(front.weight);
                if let Some(t) = q.waiting.pop_front() {
                    leadership.members.push(t);
                }
            }
        }
        let outcome = {
            let items: Vec<&T> = leadership.members.iter().map(|t| &t.item).collect();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit(&items)))
                .unwrap_or_else(|payload| Err(self.panicked(&*payload)))
        };
        match outcome {
            Ok(results) if results.len() == leadership.members.len() => {
                for (t, r) in leadership.members.iter().zip(results) {
                    t.set(Phase::Done(r));
                }
            }
            Ok(results) => {
                let e = KvError::Backend {
                    backend: self.backend,
                    message: format!(
                        "group commit: {} results for {} writes; outcome unknown",
                        results.len(),
                        leadership.members.len()
                    ),
                };
                leadership.fail_all(&e);
            }
            Err(e) => leadership.fail_all(&e),
        }
        // Dropping `leadership` passes the lead on.
    }

    fn panicked(&self, payload: &(dyn std::any::Any + Send)) -> KvError {
        let what = panic_message(payload);
        KvError::Backend {
            backend: self.backend,
            message: format!("group commit failed: the committing thread panicked: {what}"),
        }
    }
}

/// The text a panic carried (empty when it is not a string).
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// A leader's group. Dropped at the end of the leader's work, or while a panic unwinds through
/// it: any member still without a result gets an error, and the lead passes to the first queued
/// ticket (or lapses), so no follower ever waits for a leader that is gone.
struct Leadership<'a, T> {
    owner: &'a GroupCommit<T>,
    members: Vec<Arc<Ticket<T>>>,
}

impl<T> Leadership<'_, T> {
    fn fail_all(&self, e: &KvError) {
        for t in &self.members {
            t.set(Phase::Done(Err(e.clone())));
        }
    }
}

impl<T> Drop for Leadership<'_, T> {
    fn drop(&mut self) {
        for t in &self.members {
            let mut phase = t.phase.lock();
            if !matches!(*phase, Phase::Done(_)) {
                *phase = Phase::Done(Err(KvError::Backend {
                    backend: self.owner.backend,
                    message: "group commit: the committing thread stopped before reporting; \
                              outcome unknown"
                        .into(),
                }));
                t.wake.notify_one();
            }
        }
        let mut q = self.owner.queue.lock();
        match q.waiting.front() {
            Some(next) => next.set(Phase::Lead),
            None => q.leading = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn conflict(k: u8) -> KvError {
        KvError::Conflict { key: vec![k] }
    }

    /// Spawns one writer per item, in order, each queued before the next starts.
    fn queue_in_order<T: Send + Sync + Copy + 'static>(
        g: &Arc<GroupCommit<T>>,
        items: &[T],
        commit: impl Fn(&[&T]) -> GroupOutcome + Clone + Send + 'static,
    ) -> Vec<std::thread::JoinHandle<Result<(), KvError>>> {
        let start = g.queued();
        items
            .iter()
            .enumerate()
            .map(|(n, &item)| {
                let (g2, commit) = (Arc::clone(g), commit.clone());
                let h = std::thread::spawn(move || g2.submit(item, 1, commit));
                while g.queued() != start + n + 1 {
                    std::thread::yield_now();
                }
                h
            })
            .collect()
    }

    /// Writers queued behind a held gate form one group, in arrival order, and each gets its
    /// own result.
    #[test]
    fn queued_writers_share_one_group_and_get_their_own_results() {
        let g = Arc::new(GroupCommit::<u8>::new(1000, usize::MAX, "test"));
        let groups = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let seen = Arc::clone(&groups);
        let commit = move |items: &[&u8]| -> GroupOutcome {
            seen.lock().push(items.iter().map(|i| **i).collect());
            Ok(items
                .iter()
                .map(|i| {
                    if **i % 2 == 0 {
                        Ok(())
                    } else {
                        Err(conflict(**i))
                    }
                })
                .collect())
        };
        let hold = g.hold();
        let handles = queue_in_order(&g, &[0, 1, 2, 3, 4, 5, 6, 7, 8], commit);
        drop(hold);
        for (i, h) in handles.into_iter().enumerate() {
            let want = if i % 2 == 0 {
                Ok(())
            } else {
                Err(conflict(i as u8))
            };
            assert_eq!(h.join().unwrap(), want, "write {i}");
        }
        assert_eq!(*groups.lock(), vec![(0..=8).collect::<Vec<u8>>()]);
        assert_eq!(g.taken(), 1);
    }

    /// A commit function that fails gives every member the same error.
    #[test]
    fn a_group_error_goes_to_every_member() {
        let g = Arc::new(GroupCommit::<u8>::new(1000, usize::MAX, "test"));
        let e = KvError::Unavailable {
            backend: "test",
            message: "disk gone".into(),
        };
        let e2 = e.clone();
        let hold = g.hold();
        let handles = queue_in_order(&g, &[0, 1, 2, 3], move |_: &[&u8]| Err(e2.clone()));
        drop(hold);
        for h in handles {
            assert_eq!(h.join().unwrap(), Err(e.clone()));
        }
        assert_eq!(g.taken(), 1);
    }

    /// A commit function that panics fails its whole group with an error, and the writers that
    /// queued meanwhile are committed by the next leader: nobody hangs.
    #[test]
    fn a_panicking_leader_fails_its_group_and_passes_the_lead() {
        let g = Arc::new(GroupCommit::<u8>::new(1000, usize::MAX, "test"));
        let calls = Arc::new(AtomicUsize::new(0));
        let g2 = Arc::clone(&g);
        let commit = move |items: &[&u8]| -> GroupOutcome {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                // Wait for the next group to queue behind this one, then die.
                while g2.queued() != 3 {
                    std::thread::yield_now();
                }
                panic!("boom in group of {}", items.len());
            }
            Ok(items.iter().map(|_| Ok(())).collect())
        };
        let hold = g.hold();
        let first = queue_in_order(&g, &[0, 1], commit.clone());
        drop(hold);
        while g.queued() != 0 {
            std::thread::yield_now();
        }
        let second = queue_in_order(&g, &[2, 3, 4], commit);
        for h in first {
            match h.join().unwrap() {
                Err(KvError::Backend { message, .. }) => {
                    assert!(
                        message.contains("panicked: boom in group of 2"),
                        "{message}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
        for h in second {
            assert_eq!(h.join().unwrap(), Ok(()));
        }
        assert_eq!(g.taken(), 2);
    }

    /// Groups never exceed the count or the byte budget (a single heavy write still goes alone).
    #[test]
    fn groups_respect_their_caps() {
        let g = Arc::new(GroupCommit::<usize>::new(3, 10, "test"));
        let sizes = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let hold = g.hold();
        let start = g.queued();
        let handles: Vec<_> = [1usize, 4, 4, 4, 1, 1, 1, 1, 50]
            .into_iter()
            .enumerate()
            .map(|(n, w)| {
                let (g2, sizes) = (Arc::clone(&g), Arc::clone(&sizes));
                let h = std::thread::spawn(move || {
                    g2.submit(w, w, move |items: &[&usize]| -> GroupOutcome {
                        sizes.lock().push(items.iter().map(|i| **i).collect());
                        Ok(items.iter().map(|_| Ok(())).collect())
                    })
                });
                while g.queued() != start + n + 1 {
                    std::thread::yield_now();
                }
                h
            })
            .collect();
        drop(hold);
        for h in handles {
            assert_eq!(h.join().unwrap(), Ok(()));
        }
        assert_eq!(
            *sizes.lock(),
            vec![vec![1, 4, 4], vec![4, 1, 1], vec![1, 1], vec![50]]
        );
    }
}

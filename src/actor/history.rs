//! An actor's history: its bookmarks, the commits kept, restoring it in place, compacting it,
//! and forking it into a new actor (see [`crate::vfs::history`]).
//!
//! Why it exists: the VFS keeps and reads the history of one database; what an *actor* adds is
//! fencing (a stale instance is refused), the retention from [`super::ActorConfig::retention`],
//! and a fork's new actor records (state, token, fence), written with its database in one put.

use super::{records, startup, Actor, ActorError};
use crate::kv::{Precondition, ReadOp, ReadResult};
use crate::preload::Preload;
use crate::vfs::history::{CommitInfo, CompactReport, HistoryOptions, RestoreOutcome, Target};
use crate::vfs::{open_database, FenceSpec, OpenError, OpenOptions, VfsError};

/// What a fork wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkReport {
    /// The source's commit seq the fork holds.
    pub seq_of_source: u64,
    /// Pages written.
    pub pages: u64,
    /// The new actor's first bookmark.
    pub bookmark: String,
    /// KV round trips of the fork (reading the source and writing the new actor).
    pub kv_round_trips: u64,
}

impl Actor {
    /// The bookmark of the actor's current commit: an opaque string that sorts by time. No
    /// round trip.
    pub fn bookmark(&self) -> Result<String, ActorError> {
        Ok(self.db().bookmark()?)
    }

    /// The bookmark of the last commit at or before `time_ms` (ms since the Unix epoch). One
    /// round trip.
    pub fn bookmark_for_time(&self, time_ms: u64) -> Result<String, ActorError> {
        Ok(self.db().bookmark_for_time(time_ms)?)
    }

    /// The commits kept (seq, time, pages, bytes, bookmark), oldest first. One round trip.
    pub fn history(&self) -> Result<Vec<CommitInfo>, ActorError> {
        Ok(self.db().history()?)
    }

    /// Restores the actor's database in place to `target` as one new commit (undo it by
    /// restoring to [`RestoreOutcome::undo`]). Fenced: a stale instance is refused
    /// ([`ActorError::Moved`]) and writes nothing; once it lands, the actor's other instances
    /// see "actor moved". Round trips: 1 list (with the fence check) + 1 get + the commit.
    pub fn restore(&self, target: &Target) -> Result<RestoreOutcome, ActorError> {
        Ok(self.db().restore(target)?)
    }

    /// Deletes history past the retention window and byte bound, with fenced writes (see
    /// [`crate::vfs::Database::compact_history`]). Never part of a commit or a wake: call it
    /// when the actor is idle, or [`Actor::compact_if_due`] between requests of a busy one.
    pub fn compact_history(&self) -> Result<CompactReport, ActorError> {
        Ok(self.db().compact_history()?)
    }

    /// True when [`Actor::compact_history`] would delete something past the retention window
    /// or the byte bound (or the actor does not know yet, as after a wake); the rule is
    /// [`crate::vfs::history::watch`]'s. No round trip.
    pub fn compaction_due(&self) -> bool {
        self.db().compaction_due()
    }

    /// [`Actor::compact_history`] when [`Actor::compaction_due`]; otherwise `None` with no
    /// round trip. What a host's sweep does for its busy actors, for a library user without a
    /// host: call it between requests (never inside a transaction) so that an actor that never
    /// goes idle still keeps its history within its retention. Fenced like every write.
    pub fn compact_if_due(&self) -> Result<Option<CompactReport>, ActorError> {
        Ok(self.db().compact_if_due()?)
    }

    /// Creates actor `to` on the same store holding this actor's database as of `at` (the
    /// source is not changed) and a copy of its current state, with a fresh inspector token;
    /// its history starts with the fork. Refused when `to` exists (its state or its database),
    /// and from a stale instance. A crash leaves either no `to` or the whole fork (its state,
    /// token, fence and database's commit record go out in one write); a retry after a crash
    /// takes over. Round trips: reading the image (1 list, 1 get, plus the current pages not
    /// cached), 1 read of `to`, then 1 put (staged when the image exceeds one put).
    pub fn fork(
        &self,
        at: &Target,
        to: &str,
        retention: &HistoryOptions,
    ) -> Result<ForkReport, ActorError> {
        crate::kv::check_actor_id(to).map_err(ActorError::InvalidActor)?;
        if to == self.id() {
            return Err(ActorError::InvalidConfig(
                "a fork needs a new actor id, not the source's".into(),
            ));
        }
        let before = self.counting.snapshot().round_trips();
        let db = self.db();
        let seq_of_source = match at {
            Target::Seq(s) => *s,
            _ => {
                let b = match at {
                    Target::Bookmark(b) => b.clone(),
                    Target::Time(t) => db.bookmark_for_time(*t)?,
                    Target::Seq(_) => unreachable!("matched above"),
                };
                crate::vfs::history::parse_bookmark(&b)
                    .map(|(_, s)| s)
                    .ok_or_else(|| VfsError::History(format!("{b:?} is not a bookmark")))?
            }
        };
        let image = db.image_at(&Target::Seq(seq_of_source))?;
        let (page_size, n) = (image.page_size, image.pages.len() as u64);
        // One read of the new actor: its state and fence records and what its database's open
        // needs (as a preload), so the open itself reads nothing more.
        let exists = || ActorError::ActorExists(to.to_string());
        let mut ops = crate::vfs::layout::preload_reads(0);
        ops.push(ReadOp::Get(vec![
            records::state_key(),
            records::fence_key(),
        ]));
        let store = self.counting.shared();
        let res = store.batch_read(to, &ops).map_err(ActorError::Kv)?;
        let Some(ReadResult::Get(vals)) = res.last() else {
            return Err(ActorError::Corrupt(
                "batch_read answered out of shape".into(),
            ));
        };
        if vals.first().is_some_and(|v| v.is_some()) {
            return Err(exists());
        }
        // A fence record without a state: a creation (or a fork) that crashed before its
        // commit write. The fork takes over from there.
        let fence_read = vals.get(1).cloned().flatten();
        let n_vfs = ops.len() - 1;
        let preload = Preload::from_reads(&ops[..n_vfs], &res[..n_vfs]);
        let opts = OpenOptions {
            page_size,
            hold_writes: true,
            history: retention.clone(),
            preload: Some(preload),
            trust_preload: true,
            fence: Some(FenceSpec {
                key: records::fence_key(),
                read: fence_read,
                instance: startup::random_bytes().map_err(ActorError::Random)?,
            }),
            ..OpenOptions::default()
        };
        let target = open_database(store, to, &opts).map_err(|e| match e {
            OpenError::Vfs(VfsError::Corrupt(_)) => exists(),
            e => ActorError::Open(e),
        })?;
        // Besides the fence record (absent), an existing actor's state refuses the fork.
        target.set_fence(vec![Precondition::absent(records::state_key())]);
        target.hold_image(page_size, image.size, image.pages)?;
        let entries = vec![
            (records::state_key(), self.state().to_vec()),
            (
                records::token_key(),
                startup::random_token()
                    .map_err(ActorError::Random)?
                    .into_bytes(),
            ),
        ];
        target.flush_held(entries).map_err(|e| match e {
            VfsError::Moved => exists(),
            e => ActorError::Vfs(e),
        })?;
        let bookmark = target.bookmark()?;
        drop(target);
        Ok(ForkReport {
            seq_of_source,
            pages: n,
            bookmark,
            kv_round_trips: self.counting.snapshot().round_trips() - before,
        })
    }
}

//! SQLite's lock levels, kept in process: `lock`, `unlock` and `reserved`.
//!
//! Why it is apart from `file.rs`: every connection to a database shares these locks through
//! its one [`DbState`]; they touch no KV data and read best on their own.

use super::{lock, DbState};

impl DbState {
    // ----- locks (in-process) -----

    /// Raises `handle`'s lock from `current` to `level`; `Ok(false)` means busy (the handle
    /// keeps what it has, possibly PENDING on the way to EXCLUSIVE). Returns the new level.
    pub fn lock(&self, handle: u64, current: i32, level: i32) -> (bool, i32) {
        let mut inner = self.inner.lock();
        let l = &mut inner.locks;
        if current >= level {
            return (true, current);
        }
        match level {
            lock::SHARED => {
                if l.exclusive.is_some() || l.pending.is_some_and(|h| h != handle) {
                    return (false, current);
                }
                l.shared += 1;
                // A new read transaction: a lone miss of an earlier one (another statement's
                // point lookup) says nothing about this one's next read, so it cannot start a
                // read-ahead run. Page 1 (chunk 0) is the exception: every open and transaction
                // reads it first, and the schema after it next. A run in progress is kept.
                if inner.main.ra_single != 1 {
                    inner.main.ra_single = u32::MAX;
                }
                (true, lock::SHARED)
            }
            lock::RESERVED => {
                if l.reserved.is_some_and(|h| h != handle) {
                    return (false, current);
                }
                l.reserved = Some(handle);
                inner.write_started = true;
                (true, lock::RESERVED)
            }
            _ => {
                if l.reserved.is_some_and(|h| h != handle) || l.pending.is_some_and(|h| h != handle)
                {
                    return (false, current);
                }
                inner.write_started = true;
                let l = &mut inner.locks;
                l.reserved = Some(handle);
                l.pending = Some(handle);
                if l.shared > 1 {
                    return (false, lock::PENDING);
                }
                l.exclusive = Some(handle);
                (true, lock::EXCLUSIVE)
            }
        }
    }

    /// Lowers `handle`'s lock from `current` to `level` (SHARED or NONE).
    pub fn unlock(&self, handle: u64, current: i32, level: i32) -> i32 {
        let mut inner = self.inner.lock();
        if level >= current {
            return current;
        }
        let l = &mut inner.locks;
        if level <= lock::SHARED {
            if l.reserved == Some(handle) {
                l.reserved = None;
            }
            if l.pending == Some(handle) {
                l.pending = None;
            }
            if l.exclusive == Some(handle) {
                l.exclusive = None;
            }
        }
        if level == lock::NONE && current >= lock::SHARED {
            l.shared = l.shared.saturating_sub(1);
        }
        level
    }

    /// True when any connection holds RESERVED or more.
    pub fn reserved(&self) -> bool {
        let inner = self.inner.lock();
        inner.locks.reserved.is_some() || inner.locks.exclusive.is_some()
    }
}

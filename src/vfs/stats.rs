//! Per-database I/O statistics: every KV call the VFS makes, and where each page read was served.
//!
//! Why it exists: kvsqlite is judged on KV round trips. All of the VFS's store calls go through
//! one place (`file.rs`) that counts them here, so tests can assert exact counts and the actor
//! layer can report them per query. Counters are relaxed atomics: cheap to bump and to snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of one database, shared by all its connections. Take a [`Snapshot`]
        /// with [`Stats::snapshot`]; subtract two snapshots to measure an operation.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment. `later - earlier` gives the counts in between.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Snapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            /// The counters now.
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl std::ops::Sub for Snapshot {
            type Output = Snapshot;
            fn sub(self, earlier: Snapshot) -> Snapshot {
                Snapshot { $($name: self.$name.wrapping_sub(earlier.$name),)* }
            }
        }

        impl Snapshot {
            /// `(name, value)` pairs, in declaration order, for reports.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

stats! {
    /// KV calls of any kind: each is one round trip.
    kv_round_trips,
    /// Read calls (`get`, `list`, `batch_read`).
    kv_reads,
    /// Write calls (`write`, `delete_range`).
    kv_writes,
    /// Keys asked for by reads (and entries returned by lists).
    keys_read,
    /// Keys put or deleted by writes (a `delete_range` counts one).
    keys_written,
    /// Pages (chunk or stage values) put.
    pages_written,
    /// Value bytes read.
    bytes_read,
    /// Key and value bytes written.
    bytes_written,
    /// Chunk reads served by the VFS page cache.
    cache_hits,
    /// Chunk reads served by the preload.
    preload_hits,
    /// Chunk reads that went to the store.
    cache_misses,
    /// Chunks fetched ahead of need by read-ahead.
    readahead_prefetched,
    /// Prefetched chunks later read.
    readahead_used,
    /// Prefetched chunks dropped (evicted or overwritten) without being read.
    readahead_wasted,
    /// Transactions committed through the batch-atomic path in one put.
    atomic_commits,
    /// Batch-atomic transactions too big for one put, committed by staging and a commit record.
    staged_commits,
    /// Times SQLite fell back to a rollback journal (a journal file was written).
    journal_fallbacks,
    /// Flushes of buffered non-atomic writes.
    flushes,
    /// Bytes of page images the history wrote, before compression.
    history_image_bytes,
    /// The same images as stored (LZ4 where that was smaller, else as they are).
    history_stored_bytes,
    /// Bytes of the current database's pages (chunk and stage values) sent to the store,
    /// before compression.
    page_image_bytes,
    /// The same pages as sent and stored (LZ4 where that was smaller, else as they are).
    page_stored_bytes,
}

impl Stats {
    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        let _ = self;
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

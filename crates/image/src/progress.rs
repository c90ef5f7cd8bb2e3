//! Counters a pull updates as it goes; the CLI draws them.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Progress {
    /// Compressed bytes read from the source.
    pub bytes: AtomicU64,
    /// Compressed bytes the manifest announces.
    pub bytes_total: AtomicU64,
    pub layers_done: AtomicU64,
    pub layers_total: AtomicU64,
    pub files: AtomicU64,
    /// Contents written to the store for the first time.
    pub new_objects: AtomicU64,
    /// Contents the store already had (or saw earlier in this pull).
    pub dedup_hits: AtomicU64,
}

impl Progress {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

//! Stat and Walk: read transactions only, answered from the info cache
//! when it can (see `info_cache`).

use super::Snapshotter;
use crate::{db, Filter, Info, SnapshotError};

impl Snapshotter {
    pub fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        self.infos.stat(key, || db::get(&self.store, key))
    }

    /// Stat's answer when it needs no disk access (the info is cached, or
    /// the cache holds every snapshot and not this one); `None` otherwise.
    /// Cheap enough for an async thread.
    pub fn stat_cached(&self, key: &str) -> Option<Result<Info, SnapshotError>> {
        self.infos.cached(key)
    }

    /// Every snapshot matching `filters` (containerd's filter strings; any
    /// string may match, all selectors within one must).
    pub fn walk<S: AsRef<str>>(&self, filters: &[S]) -> Result<Vec<Info>, SnapshotError> {
        let filter = Filter::parse(filters)?;
        self.infos.walk(&filter, || db::all(&self.store))
    }

    /// Walk's answer when it needs no disk access; `None` otherwise.
    pub fn walk_cached<S: AsRef<str>>(&self, filters: &[S]) -> Option<Result<Vec<Info>, SnapshotError>> {
        match Filter::parse(filters) {
            Ok(filter) => self.infos.walk_cached(&filter).map(Ok),
            Err(e) => Some(Err(e)),
        }
    }
}

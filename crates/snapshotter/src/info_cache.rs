//! Snapshot infos kept in memory, so that Stat and Walk answer from a map
//! under a read lock. containerd's List calls Stat once per snapshot.
//!
//! A cached info can never be stale, by three rules:
//! - Rows of the snapshots table are written only by `db::put` and
//!   `db::delete`, and only on a thread holding the snapshotter's lock
//!   through a [`WriteGuard`]; each write names its key to that guard
//!   (a thread-local), and a write without one panics.
//! - While a writer holds the lock the cache answers nothing and takes
//!   nothing: reads go to the DB. Releasing the guard reads the written
//!   keys back from the DB into the cache (or forgets them), and only then
//!   lets the cache answer again.
//! - A reader that missed fills the cache only if no writer took or
//!   released the lock since before its DB read began (the epoch).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use strata_store::Store;

use crate::db::{self, Record};
use crate::{Filter, Info, SnapshotError};

thread_local! {
    /// The keys this thread wrote while holding a [`WriteGuard`]; `None`
    /// when it holds none.
    static WRITTEN: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Tells this thread's [`WriteGuard`] that `key`'s row changes.
pub(crate) fn note_write(key: &str) {
    WRITTEN.with_borrow_mut(|written| {
        written
            .as_mut()
            .expect("snapshot rows are written only under the snapshotter's lock")
            .push(key.to_owned());
    });
}

#[derive(Default)]
pub(crate) struct InfoCache {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    infos: BTreeMap<String, Info>,
    /// `infos` holds every snapshot the DB has.
    complete: bool,
    /// Moves when a writer takes the lock and when it releases it.
    epoch: u64,
    /// A writer holds the lock: the DB may be ahead of `infos`.
    writing: bool,
}

/// What the cache knows of one key.
enum Lookup {
    Hit(Info),
    /// The cache is complete and has no such key.
    Absent,
    /// Read the DB; a fill is taken only at this epoch.
    Miss {
        epoch: Option<u64>,
    },
}

impl InfoCache {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, key: &str) -> Lookup {
        let state = self.read();
        if state.writing {
            return Lookup::Miss { epoch: None };
        }
        match state.infos.get(key) {
            Some(info) => Lookup::Hit(info.clone()),
            None if state.complete => Lookup::Absent,
            None => Lookup::Miss {
                epoch: Some(state.epoch),
            },
        }
    }

    /// The info of `key` if the cache can answer without the DB.
    pub(crate) fn cached(&self, key: &str) -> Option<Result<Info, SnapshotError>> {
        match self.lookup(key) {
            Lookup::Hit(info) => Some(Ok(info)),
            Lookup::Absent => Some(Err(not_found(key))),
            Lookup::Miss { .. } => None,
        }
    }

    /// The info of `key`: from the cache, or read with `load` and kept.
    pub(crate) fn stat(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<Option<Record>, SnapshotError>,
    ) -> Result<Info, SnapshotError> {
        let epoch = match self.lookup(key) {
            Lookup::Hit(info) => return Ok(info),
            Lookup::Absent => return Err(not_found(key)),
            Lookup::Miss { epoch } => epoch,
        };
        let record = load()?.ok_or_else(|| not_found(key))?;
        let info = record.info(key);
        self.fill(epoch, |state| {
            state.infos.insert(key.to_owned(), info.clone());
        });
        Ok(info)
    }

    /// Every info matching `filter`, if the cache holds them all.
    pub(crate) fn walk_cached(&self, filter: &Filter) -> Option<Vec<Info>> {
        let state = self.read();
        (state.complete && !state.writing)
            .then(|| state.infos.values().filter(|i| filter.matches(i)).cloned().collect())
    }

    /// Every info matching `filter`: from the cache, or read with
    /// `load_all`, which then fills the cache whole.
    pub(crate) fn walk(
        &self,
        filter: &Filter,
        load_all: impl FnOnce() -> Result<Vec<(String, Record)>, SnapshotError>,
    ) -> Result<Vec<Info>, SnapshotError> {
        if let Some(matching) = self.walk_cached(filter) {
            return Ok(matching);
        }
        let epoch = {
            let state = self.read();
            (!state.writing).then_some(state.epoch)
        };
        let infos: BTreeMap<String, Info> = load_all()?
            .into_iter()
            .map(|(key, record)| {
                let info = record.info(&key);
                (key, info)
            })
            .collect();
        let matching = infos.values().filter(|i| filter.matches(i)).cloned().collect();
        self.fill(epoch, |state| {
            state.infos = infos;
            state.complete = true;
        });
        Ok(matching)
    }

    /// Applies a reader's fill if no writer took or released the lock since
    /// `epoch` was read (before the reader's DB read began).
    fn fill(&self, epoch: Option<u64>, apply: impl FnOnce(&mut State)) {
        let Some(epoch) = epoch else { return };
        let mut state = self.write();
        if !state.writing && state.epoch == epoch {
            apply(&mut state);
        }
    }

    /// Takes the snapshotter's `lock`; see [`WriteGuard`].
    pub(crate) fn lock<'a>(&'a self, lock: &'a Mutex<()>, database: &'a Store) -> WriteGuard<'a> {
        let held = lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut state = self.write();
            state.epoch += 1;
            state.writing = true;
        }
        let outer = WRITTEN.replace(Some(Vec::new()));
        debug_assert!(outer.is_none(), "one snapshotter lock per thread at a time");
        WriteGuard {
            cache: self,
            database,
            _held: held,
        }
    }

    /// Puts the rows of `written` as the DB has them now (`None`: could not
    /// read them, so forget them) and lets the cache answer again.
    fn writer_done(&self, written: &[String], rows: Option<Vec<Option<Record>>>) {
        let mut state = self.write();
        match rows {
            Some(rows) => {
                for (key, row) in written.iter().zip(rows) {
                    match row {
                        Some(record) => state.infos.insert(key.clone(), record.info(key)),
                        None => state.infos.remove(key),
                    };
                }
            }
            None => {
                for key in written {
                    state.infos.remove(key);
                }
                state.complete = false;
            }
        }
        state.epoch += 1;
        state.writing = false;
    }
}

fn not_found(key: &str) -> SnapshotError {
    SnapshotError::NotFound { key: key.to_owned() }
}

/// The snapshotter's lock, held by every change of a snapshot row. While
/// it is held the cache answers nothing; releasing it brings the keys
/// written up to date first.
pub(crate) struct WriteGuard<'a> {
    cache: &'a InfoCache,
    database: &'a Store,
    /// Released after `drop` has updated the cache: no other writer can
    /// change the rows it reads back.
    _held: MutexGuard<'a, ()>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        let mut written = WRITTEN.take().unwrap_or_default();
        written.sort_unstable();
        written.dedup();
        let rows = if written.is_empty() {
            Some(Vec::new())
        } else {
            db::get_many(self.database, &written)
                .inspect_err(|e| tracing::warn!("reading back snapshot rows for the info cache: {e}"))
                .ok()
        };
        self.cache.writer_done(&written, rows);
    }
}

#[cfg(test)]
mod tests;

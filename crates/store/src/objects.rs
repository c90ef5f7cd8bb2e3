//! Staging objects: contents are written under `tmp/`, and enter
//! `objects/XX/REST` only at [`ObjectStager::publish`], after one filesystem
//! sync. A content already in the store is never written a second time.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, RenameFlags, CWD};
use strata_tree::{Digest, VerityHasher};

use crate::hashing::hash_file;

use redb::WriteTransaction;

use crate::db::{add_pending_in, forget_pending_in};
use crate::dirfd::DirFd;
use crate::{Store, StoreError};

static STAGE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What happened to one content handed to the stager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedObject {
    pub digest: Digest,
    pub size: u64,
    /// False when the store (or this stager) already had the content.
    pub new: bool,
}

/// Collects the objects of one import. Dropping it unpublished removes
/// everything it wrote.
pub struct ObjectStager {
    store: Store,
    dir: DirFd,
    dir_name: String,
    pending: Vec<(String, Digest)>,
    /// Files of writers not yet finished; removed if the import fails.
    in_flight: HashSet<String>,
    seen: HashSet<Digest>,
    next_file: u64,
    /// New contents adopted where they lie (see [`adopt`](Self::adopt)).
    deferred: Vec<(PathBuf, Digest)>,
    /// How many were ever deferred: publish must sync them even after the
    /// caller has taken the list.
    deferred_count: usize,
    /// The filesystem of `tmp/` and `objects/`: files on it are adopted in place.
    device: u64,
}

/// A large content being streamed into a staging file.
pub struct ObjectWriter {
    file: std::fs::File,
    name: String,
    hasher: VerityHasher,
}

impl ObjectWriter {
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.hasher.update(data);
        self.file
            .write_all(data)
            .map_err(|e| StoreError::io("write object", &self.name, e))
    }
}

impl ObjectStager {
    pub(crate) fn new(store: Store) -> Result<Self, StoreError> {
        let dir_name = format!(
            "stage-{}-{}",
            std::process::id(),
            STAGE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        store.inner.tmp.ensure_dir(&dir_name, 0o700)?;
        let dir = store.inner.tmp.open_dir(&dir_name)?;
        let device = rustix::fs::fstat(dir.fd())
            .map_err(|e| StoreError::io("stat", dir.path(), e))?
            .st_dev;
        Ok(ObjectStager {
            store,
            dir,
            dir_name,
            pending: Vec::new(),
            in_flight: HashSet::new(),
            seen: HashSet::new(),
            next_file: 0,
            deferred: Vec::new(),
            deferred_count: 0,
            device,
        })
    }

    fn known(&mut self, digest: &Digest) -> Result<bool, StoreError> {
        if self.seen.contains(digest) {
            return Ok(true);
        }
        let found = self.store.has_object(digest)?;
        if found {
            self.seen.insert(*digest);
        }
        Ok(found)
    }

    fn next_name(&mut self) -> String {
        self.next_file += 1;
        self.next_file.to_string()
    }

    /// Records `digest` as a new staged object unless it is known; `place`
    /// puts the bytes at the staging name it is given.
    fn stage_new(
        &mut self,
        digest: Digest,
        size: u64,
        place: impl FnOnce(&DirFd, &str) -> Result<(), StoreError>,
    ) -> Result<StagedObject, StoreError> {
        if self.known(&digest)? {
            return Ok(StagedObject {
                digest,
                size,
                new: false,
            });
        }
        let name = self.next_name();
        place(&self.dir, &name)?;
        self.seen.insert(digest);
        self.pending.push((name, digest));
        Ok(StagedObject {
            digest,
            size,
            new: true,
        })
    }

    /// Stages a content held in memory; writes nothing if it is known.
    pub fn add_bytes(&mut self, data: &[u8]) -> Result<StagedObject, StoreError> {
        self.stage_new(Digest::of(data), data.len() as u64, |dir, name| {
            let mut file = dir.create_file(name, 0o444)?;
            file.write_all(data)
                .map_err(|e| StoreError::io("write object", dir.path().join(name), e))
        })
    }

    /// Starts streaming a content too large to hold in memory.
    pub fn writer(&mut self) -> Result<ObjectWriter, StoreError> {
        let name = self.next_name();
        let file = self.dir.create_file(&name, 0o444)?;
        self.in_flight.insert(name.clone());
        Ok(ObjectWriter {
            file,
            name,
            hasher: VerityHasher::new(),
        })
    }

    /// Finishes a streamed content; drops the file if the content is known.
    pub fn finish(&mut self, writer: ObjectWriter) -> Result<StagedObject, StoreError> {
        let ObjectWriter { file, name, hasher } = writer;
        drop(file);
        self.in_flight.remove(&name);
        let size = hasher.len();
        let digest = hasher.finish();
        if self.known(&digest)? {
            self.dir.unlink(&name)?;
            return Ok(StagedObject {
                digest,
                size,
                new: false,
            });
        }
        self.seen.insert(digest);
        self.pending.push((name, digest));
        Ok(StagedObject {
            digest,
            size,
            new: true,
        })
    }

    /// Takes a file that already exists (e.g. in a snapshot's upper dir)
    /// and was hashed where it lies (see [`hash_files`](crate::hash_files)).
    /// On the store's filesystem a new content is left in place and only
    /// listed: the caller moves it into `objects/` with
    /// [`Store::adopt_in_place`] after its own commit point, so a failed or
    /// killed commit loses nothing. From another filesystem (a sized
    /// scratch) it is copied into the stage. A known content is left where
    /// it is.
    pub fn adopt(&mut self, source: &Path, digest: Digest, size: u64) -> Result<StagedObject, StoreError> {
        let device = std::fs::symlink_metadata(source)
            .map_err(|e| StoreError::io("stat", source, e))?
            .dev();
        if device == self.device && !self.known(&digest)? {
            self.seen.insert(digest);
            self.deferred.push((source.to_owned(), digest));
            self.deferred_count += 1;
            return Ok(StagedObject {
                digest,
                size,
                new: true,
            });
        }
        self.stage_new(digest, size, |dir, staged| {
            let to = dir.path().join(staged);
            std::fs::copy(source, &to).map_err(|e| StoreError::io("copy into store", source, e))?;
            rustix::fs::chmodat(
                dir.fd(),
                staged,
                rustix::fs::Mode::from_raw_mode(0o444),
                rustix::fs::AtFlags::empty(),
            )
            .map_err(|e| StoreError::io("chmod", dir.path().join(staged), e))
        })
    }

    /// Syncs every staged file, then renames each into `objects/`.
    /// Returns how many objects entered the store.
    pub fn publish(self) -> Result<usize, StoreError> {
        self.publish_only(|_| true)
    }

    /// Like [`publish`](Self::publish), but drops staged contents `keep`
    /// rejects (e.g. files a later layer deleted), so they never land.
    pub fn publish_only(mut self, keep: impl Fn(&Digest) -> bool) -> Result<usize, StoreError> {
        for (name, _) in self.pending.iter().filter(|(_, d)| !keep(d)) {
            self.dir.unlink(name)?;
        }
        self.pending.retain(|(_, d)| keep(d));
        let moved = self.store.inner.moves.take_unsynced();
        if self.pending.is_empty() && self.deferred_count == 0 && moved.is_empty() {
            return Ok(0);
        }
        // Also makes durable the contents adopted in place, and the moves
        // of earlier commits into `objects/`.
        self.dir.syncfs()?;
        self.store.inner.moves.synced(moved);
        if self.pending.is_empty() {
            return Ok(0);
        }
        let objects = &self.store.inner.objects;
        let mut fanout_ready = [false; 256];
        let mut added = 0;
        for (name, digest) in std::mem::take(&mut self.pending) {
            let fan = digest.0[0] as usize;
            if !fanout_ready[fan] {
                objects.ensure_dir(&format!("{:02x}", digest.0[0]), 0o755)?;
                fanout_ready[fan] = true;
            }
            if self.dir.rename_noreplace(&name, objects, &digest.object_path())? {
                added += 1;
            } else {
                self.dir.unlink(&name)?;
            }
        }
        objects.syncfs()?;
        Ok(added)
    }
}

impl ObjectStager {
    /// The new contents [`adopt`](Self::adopt) left in place, for the
    /// caller to journal and then move with [`Store::adopt_in_place`].
    pub fn take_deferred(&mut self) -> Vec<(PathBuf, Digest)> {
        std::mem::take(&mut self.deferred)
    }
}

impl Store {
    /// Moves files listed by [`ObjectStager::adopt`] into `objects/`, a
    /// rename, never a copy. Their data must be durable already (the
    /// stager's publish syncs it); the renames are made durable by the next
    /// publish, and their pending rows (see [`add_pending_in`]) dropped by
    /// the next [`journal_adoptions_in`](Self::journal_adoptions_in) after
    /// it. A content already present, or a file already gone, is left
    /// alone. Returns how many entered.
    pub fn adopt_in_place(&self, files: &[(PathBuf, Digest)]) -> Result<usize, StoreError> {
        let added = self.move_into_objects(files, false)?;
        self.inner.moves.moved(files);
        Ok(added)
    }

    /// Inside the caller's transaction: lists `files` as pending moves
    /// (any later open of the store finishes them if the caller cannot),
    /// and drops the rows of earlier moves a sync has made durable.
    pub fn journal_adoptions_in(&self, txn: &WriteTransaction, files: &[(PathBuf, Digest)]) -> Result<(), StoreError> {
        add_pending_in(txn, files)?;
        forget_pending_in(txn, &self.inner.moves.take_durable())
    }

    /// Renames each file into `objects/` and makes it read-only. With
    /// `verify`, each is hashed again first and skipped if it changed.
    fn move_into_objects(&self, files: &[(PathBuf, Digest)], verify: bool) -> Result<usize, StoreError> {
        let objects = &self.inner.objects;
        let mut added = 0;
        let mut fanout_ready = [false; 256];
        for (path, digest) in files {
            if verify {
                if self.has_object(digest)? {
                    continue;
                }
                match hash_file(path) {
                    Ok((found, _)) if found == *digest => {}
                    Ok(_) => {
                        tracing::warn!(path = %path.display(), "changed since its commit; not adopted");
                        continue;
                    }
                    Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            let fan = usize::from(digest.0[0]);
            if !fanout_ready[fan] {
                objects.ensure_dir(&format!("{:02x}", digest.0[0]), 0o755)?;
                fanout_ready[fan] = true;
            }
            let to = digest.object_path();
            // A content already present stays; the rename reports it.
            match rustix::fs::renameat_with(CWD, path, objects.fd(), &to, RenameFlags::NOREPLACE) {
                Ok(()) => added += 1,
                // Already there, or moved by another process finishing it.
                Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(StoreError::io("move into store", path, e)),
            }
            rustix::fs::chmodat(objects.fd(), &to, Mode::from_raw_mode(0o444), AtFlags::empty())
                .map_err(|e| StoreError::io("chmod", objects.path().join(&to), e))?;
        }
        Ok(added)
    }

    /// Finishes the moves a killed process left pending, each checked
    /// against its digest, and makes them durable before forgetting them.
    pub(crate) fn finish_pending(&self) -> Result<(), StoreError> {
        let pending = self.inner.db.pending()?;
        if !pending.is_empty() {
            let added = self.move_into_objects(&pending, true)?;
            self.inner.objects.syncfs()?;
            self.inner.db.forget_pending(&pending)?;
            tracing::info!(files = pending.len(), added, "finished pending adoptions");
        }
        Ok(())
    }
}

/// Moves into `objects/` that are done but not yet durable, then durable
/// but still listed as pending in the DB.
#[derive(Default)]
pub(crate) struct Moves {
    unsynced: Mutex<Vec<(PathBuf, Digest)>>,
    durable: Mutex<Vec<(PathBuf, Digest)>>,
}

impl Moves {
    fn moved(&self, files: &[(PathBuf, Digest)]) {
        lock(&self.unsynced).extend_from_slice(files);
    }

    /// Taken before a sync; handed back to [`synced`](Self::synced) after it.
    fn take_unsynced(&self) -> Vec<(PathBuf, Digest)> {
        std::mem::take(&mut *lock(&self.unsynced))
    }

    fn synced(&self, files: Vec<(PathBuf, Digest)>) {
        lock(&self.durable).extend(files);
    }

    fn take_durable(&self) -> Vec<(PathBuf, Digest)> {
        std::mem::take(&mut *lock(&self.durable))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for ObjectStager {
    fn drop(&mut self) {
        for name in self.pending.iter().map(|(name, _)| name).chain(&self.in_flight) {
            let _ = self.dir.unlink(name);
        }
        let _ = rustix::fs::unlinkat(
            self.store.inner.tmp.fd(),
            self.dir_name.as_str(),
            rustix::fs::AtFlags::REMOVEDIR,
        );
    }
}

//! Staging objects: contents are written under `tmp/`, and enter
//! `objects/XX/REST` only at [`ObjectStager::publish`], after one filesystem
//! sync. A content already in the store is never written a second time.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, RenameFlags, CWD};
use strata_tree::{Digest, VerityHasher};

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

    /// Takes a file that already exists (e.g. in a snapshot's upper dir),
    /// hashing it where it lies. On the store's filesystem a new content is
    /// left in place and only listed: the caller moves it into `objects/`
    /// with [`Store::adopt_in_place`] after its own commit point, so a
    /// failed or killed commit loses nothing. From another filesystem (a
    /// sized scratch) it is copied into the stage. A known content is left
    /// where it is.
    pub fn adopt(&mut self, from_dir: &Path, name: &str) -> Result<StagedObject, StoreError> {
        let source = from_dir.join(name);
        let (digest, size) = hash_file(&source)?;
        let device = std::fs::symlink_metadata(&source)
            .map_err(|e| StoreError::io("stat", &source, e))?
            .dev();
        if device == self.device && !self.known(&digest)? {
            self.seen.insert(digest);
            self.deferred.push((source, digest));
            self.deferred_count += 1;
            return Ok(StagedObject {
                digest,
                size,
                new: true,
            });
        }
        self.stage_new(digest, size, |dir, staged| {
            let to = dir.path().join(staged);
            std::fs::copy(&source, &to).map_err(|e| StoreError::io("copy into store", &source, e))?;
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
        if self.pending.is_empty() && self.deferred_count == 0 {
            return Ok(0);
        }
        // Also makes the contents adopted in place durable.
        self.dir.syncfs()?;
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
    /// rename, never a copy, and forgets them as pending (see
    /// [`add_pending_in`](crate::add_pending_in)). Their data must be
    /// durable already (the stager's publish syncs it). With `verify`, each
    /// is hashed again first and skipped if it changed. A content already
    /// present, or a file already gone, is left alone. Returns how many
    /// entered.
    pub fn adopt_in_place(&self, files: &[(PathBuf, Digest)], verify: bool) -> Result<usize, StoreError> {
        if files.is_empty() {
            return Ok(0);
        }
        let objects = &self.inner.objects;
        let mut added = 0;
        for (path, digest) in files {
            if self.has_object(digest)? {
                continue;
            }
            if verify {
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
            objects.ensure_dir(&format!("{:02x}", digest.0[0]), 0o755)?;
            let to = digest.object_path();
            match rustix::fs::renameat_with(CWD, path, objects.fd(), &to, RenameFlags::NOREPLACE) {
                Ok(()) => added += 1,
                // Already there, or moved by another process finishing it.
                Err(rustix::io::Errno::EXIST | rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(StoreError::io("move into store", path, e)),
            }
            rustix::fs::chmodat(objects.fd(), &to, Mode::from_raw_mode(0o444), AtFlags::empty())
                .map_err(|e| StoreError::io("chmod", objects.path().join(&to), e))?;
        }
        if added > 0 {
            objects.syncfs()?;
        }
        self.inner.db.forget_pending(files)?;
        Ok(added)
    }

    /// Finishes the moves a killed process left pending.
    pub(crate) fn finish_pending(&self) -> Result<(), StoreError> {
        let pending = self.inner.db.pending()?;
        if !pending.is_empty() {
            let added = self.adopt_in_place(&pending, true)?;
            tracing::info!(files = pending.len(), added, "finished pending adoptions");
        }
        Ok(())
    }
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

/// The fs-verity digest and size of a file's content.
pub(crate) fn hash_file(path: &std::path::Path) -> Result<(Digest, u64), StoreError> {
    thread_local! {
        // One read buffer per thread: zeroing a fresh 1 MiB per file was
        // most of a commit's CPU time (perf: memset above hashing).
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 1 << 20]);
    }
    let mut file = std::fs::File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    let mut hasher = VerityHasher::new();
    BUFFER.with_borrow_mut(|buf| loop {
        let n = std::io::Read::read(&mut file, buf).map_err(|e| StoreError::io("read", path, e))?;
        if n == 0 {
            let size = hasher.len();
            return Ok((hasher.finish(), size));
        }
        hasher.update(&buf[..n]);
    })
}

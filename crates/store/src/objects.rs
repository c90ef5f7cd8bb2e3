//! Staging objects: contents are written under `tmp/`, and enter
//! `objects/XX/REST` only at [`ObjectStager::publish`], after one filesystem
//! sync. A content already in the store is never written a second time.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use strata_sys::Opened;
use strata_tree::{Digest, VerityHasher};

use redb::WriteTransaction;

use crate::db::{add_pending_in, forget_pending_in};
use crate::dirfd::DirFd;
use crate::{Recheck, Store, StoreError};

static STAGE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What happened to one content handed to the stager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagedObject {
    pub digest: Digest,
    pub size: u64,
    /// False when the store (or this stager) already had the content; an
    /// adoption in place (see [`ObjectStager::adopt`]) asks only the stager.
    pub new: bool,
}

/// Collects the objects of one import. Dropping it unpublished removes
/// everything it wrote.
pub struct ObjectStager {
    store: Store,
    /// Made at the first staged file: most container commits stage none.
    dir: std::cell::OnceCell<DirFd>,
    dir_name: String,
    /// Staged new contents and their names in the stage dir.
    pending: HashMap<Digest, String>,
    /// Files of writers not yet finished; removed if the import fails.
    in_flight: HashSet<String>,
    seen: HashSet<Digest>,
    next_file: u64,
    /// New contents adopted where they lie (see [`adopt`](Self::adopt)).
    deferred: Vec<(PathBuf, Digest)>,
    /// How many were ever deferred: publish must sync them even after the
    /// caller has taken the list.
    deferred_count: usize,
    /// The filesystem of `tmp/` and `objects/`: files on it are adopted in
    /// place, unless `copy_always`.
    device: u64,
    copy_always: bool,
}

/// Bytes with their fs-verity digest, which only hashing them can make.
pub struct HashedBytes {
    data: Vec<u8>,
    digest: Digest,
}

impl HashedBytes {
    pub fn new(data: Vec<u8>) -> Self {
        HashedBytes {
            digest: Digest::of(&data),
            data,
        }
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }
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

/// A file for [`ObjectStager::adopt`]: `rel` below the directory `dir`
/// (whose path is `dir_path`), the inode `(dev, ino)` the caller hashed.
#[derive(Clone, Copy, Debug)]
pub struct AdoptSource<'a> {
    pub dir: BorrowedFd<'a>,
    pub dir_path: &'a Path,
    pub rel: &'a Path,
    pub dev: u64,
    pub ino: u64,
}

/// Longest path a file adopted in place may have: the moves name it by path
/// (PATH_MAX is 4096 with its NUL).
const PATH_NAMEABLE: usize = 4000;

/// Copies `source` into `dir/staged`, hashing what it copies: the same
/// inode the caller hashed, still a regular file, still with `digest`.
fn copy_checked(
    source: &AdoptSource<'_>,
    path: &Path,
    dir: &DirFd,
    staged: &str,
    digest: Digest,
) -> Result<(), StoreError> {
    let changed = |why: &str| StoreError::io("copy into store", path, std::io::Error::other(why.to_owned()));
    let mut file = match strata_sys::open_regular(source.dir, source.rel) {
        Ok(Opened::File(file, stat)) if (stat.st_dev, stat.st_ino) == (source.dev, source.ino) => file,
        Ok(_) => return Err(changed("replaced by another file while being committed")),
        Err(e) => return Err(StoreError::io("open", path, e)),
    };
    let mut out = dir.create_file(staged, 0o444)?;
    let mut hasher = VerityHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let written = (|| loop {
        let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| StoreError::io("read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| StoreError::io("write object", dir.path().join(staged), e))?;
    })();
    let matches = written.and_then(|()| {
        if hasher.finish() == digest {
            Ok(())
        } else {
            Err(changed("changed while being committed"))
        }
    });
    if matches.is_err() {
        let _ = dir.unlink(staged);
    }
    matches
}

impl ObjectStager {
    pub(crate) fn new(store: Store) -> Result<Self, StoreError> {
        let dir_name = crate::tmp_names::tmp_name(
            crate::tmp_names::TmpKind::Stage,
            STAGE_COUNTER.fetch_add(1, Ordering::Relaxed),
        );
        let tmp = &store.inner.tmp;
        let device = rustix::fs::fstat(tmp.fd())
            .map_err(|e| StoreError::io("stat", tmp.path(), e))?
            .st_dev;
        Ok(ObjectStager {
            store,
            dir: std::cell::OnceCell::new(),
            dir_name,
            pending: HashMap::new(),
            in_flight: HashSet::new(),
            seen: HashSet::new(),
            next_file: 0,
            deferred: Vec::new(),
            deferred_count: 0,
            device,
            copy_always: false,
        })
    }

    /// Copies every file [`adopt`](Self::adopt) takes, as from another
    /// filesystem: for files a writer may still reach (a snapshot mounted
    /// while it is committed), whose inodes must never become objects.
    pub fn copy_always(&mut self) {
        self.copy_always = true;
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

    /// The stage dir, made on first use.
    fn stage_dir(&self) -> Result<&DirFd, StoreError> {
        if let Some(dir) = self.dir.get() {
            return Ok(dir);
        }
        let tmp = &self.store.inner.tmp;
        tmp.ensure_dir(&self.dir_name, 0o700)?;
        let opened = tmp.open_dir(&self.dir_name)?;
        Ok(self.dir.get_or_init(|| opened))
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
        place(self.stage_dir()?, &name)?;
        self.seen.insert(digest);
        self.pending.insert(digest, name);
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

    /// Stages a content hashed beforehand (off any lock the caller holds
    /// around the stager); writes nothing if it is known.
    pub fn add_hashed(&mut self, content: &HashedBytes) -> Result<StagedObject, StoreError> {
        let data = &content.data;
        self.stage_new(content.digest, data.len() as u64, |dir, name| {
            let mut file = dir.create_file(name, 0o444)?;
            file.write_all(data)
                .map_err(|e| StoreError::io("write object", dir.path().join(name), e))
        })
    }

    /// Starts streaming a content too large to hold in memory.
    pub fn writer(&mut self) -> Result<ObjectWriter, StoreError> {
        let name = self.next_name();
        let file = self.stage_dir()?.create_file(&name, 0o444)?;
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
            self.stage_dir()?.unlink(&name)?;
            return Ok(StagedObject {
                digest,
                size,
                new: false,
            });
        }
        self.seen.insert(digest);
        self.pending.insert(digest, name);
        Ok(StagedObject {
            digest,
            size,
            new: true,
        })
    }

    /// Content `digest`, which this stager finished or the store holds,
    /// opened read-only: before [`publish`](Self::publish), the staged file
    /// (the very inode that becomes the object), so its bytes can be used
    /// while the sync and rename are still to come.
    pub fn open_staged(&self, digest: &Digest) -> Result<std::fs::File, StoreError> {
        self.contents().open(digest)
    }

    /// [`open_staged`](Self::open_staged) for several threads at once.
    pub fn contents(&self) -> StagedContents<'_> {
        StagedContents {
            stage: self.dir.get(),
            pending: &self.pending,
            objects: &self.store.inner.objects,
        }
    }

    /// Takes a regular file that already exists below a directory the
    /// caller does not trust (a snapshot's upper dir) and was hashed where
    /// it lies. On the store's filesystem it is left in place and only
    /// listed: the caller moves it into `objects/` with
    /// [`Store::adopt_in_place`] after its own commit point, so a failed or
    /// killed commit loses nothing (that move hashes it again). The store
    /// is not searched first: that move never replaces an object, so a
    /// content the store holds stays as it is and the file goes with its
    /// directory (a lookup here cost as much as the move, before the reply).
    /// From another filesystem (a sized scratch), too deep to be named by
    /// one path, or for a [`copy_always`](Self::copy_always) stager, it is
    /// copied into the stage and hashed as it is copied:
    /// bytes that no longer match `digest` are an error. A content this
    /// stager already has, or that a copy finds in the store, is left where
    /// it is (`new` false).
    pub fn adopt(&mut self, source: &AdoptSource<'_>, digest: Digest, size: u64) -> Result<StagedObject, StoreError> {
        if self.seen.contains(&digest) {
            return Ok(StagedObject {
                digest,
                size,
                new: false,
            });
        }
        let path = source.dir_path.join(source.rel);
        let nameable = path.as_os_str().len() < PATH_NAMEABLE && path.starts_with(self.store.root());
        if source.dev == self.device && nameable && !self.copy_always {
            self.seen.insert(digest);
            self.deferred.push((path, digest));
            self.deferred_count += 1;
            return Ok(StagedObject {
                digest,
                size,
                new: true,
            });
        }
        self.stage_new(digest, size, |dir, staged| {
            copy_checked(source, &path, dir, staged, digest)
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
        for (_, name) in self.pending.iter().filter(|(d, _)| !keep(d)) {
            self.stage_dir()?.unlink(name)?;
        }
        self.pending.retain(|d, _| keep(d));
        let moved = self.store.inner.moves.take_unsynced();
        if self.pending.is_empty() && self.deferred_count == 0 && moved.is_empty() {
            return Ok(0);
        }
        // Also makes durable the contents adopted in place, and the moves
        // of earlier commits into `objects/`.
        self.store.inner.tmp.syncfs()?;
        self.store.inner.moves.synced(moved);
        if self.pending.is_empty() {
            return Ok(0);
        }
        let objects = &self.store.inner.objects;
        let pending = std::mem::take(&mut self.pending);
        let stage = self.stage_dir()?;
        let mut fanout_ready = [false; 256];
        let mut added = 0;
        for (digest, name) in pending {
            let fan = digest.0[0] as usize;
            if !fanout_ready[fan] {
                objects.ensure_dir(&format!("{:02x}", digest.0[0]), 0o755)?;
                fanout_ready[fan] = true;
            }
            if stage.rename_noreplace(&name, objects, &digest.object_path())? {
                added += 1;
            } else {
                stage.unlink(&name)?;
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
    /// the next [`StoreTxn::journal_adoptions`](crate::StoreTxn::journal_adoptions) after
    /// it. A content already present, or a file already gone, is left
    /// alone. Returns how many entered.
    pub fn adopt_in_place(&self, files: &[(PathBuf, Digest)], recheck: Recheck) -> Result<usize, StoreError> {
        let added = self.move_into_objects(files, recheck)?;
        self.inner.moves.moved(files);
        Ok(added)
    }

    /// Inside the caller's transaction: lists `files` as pending moves
    /// (any later open of the store finishes them if the caller cannot),
    /// and drops the rows of earlier moves a sync has made durable.
    pub(crate) fn journal_adoptions_in(
        &self,
        txn: &WriteTransaction,
        files: &[(PathBuf, Digest)],
    ) -> Result<(), StoreError> {
        add_pending_in(txn, files)?;
        forget_pending_in(txn, &self.inner.moves.take_durable())
    }

    /// Finishes the moves a killed process, or a failed
    /// [`adopt_in_place`](Self::adopt_in_place), left pending: each checked
    /// against its digest and made durable before it is forgotten. The
    /// caller must keep new moves from being journaled meanwhile.
    pub fn finish_pending_adoptions(&self) -> Result<(), StoreError> {
        self.finish_pending()
    }

    /// See [`finish_pending_adoptions`](Self::finish_pending_adoptions).
    pub(crate) fn finish_pending(&self) -> Result<(), StoreError> {
        let pending = self.inner.db.pending()?;
        if !pending.is_empty() {
            let added = self.move_into_objects(&pending, Recheck::Rehash)?;
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

/// The contents a stager staged, and the store's objects, to open by
/// digest (see [`ObjectStager::open_staged`]).
pub struct StagedContents<'s> {
    stage: Option<&'s DirFd>,
    pending: &'s HashMap<Digest, String>,
    objects: &'s DirFd,
}

impl StagedContents<'_> {
    pub fn open(&self, digest: &Digest) -> Result<std::fs::File, StoreError> {
        match (self.pending.get(digest), self.stage) {
            (Some(name), Some(stage)) => stage.open_read(name),
            _ => self.objects.open_read(&digest.object_path()),
        }
    }
}

impl Drop for ObjectStager {
    fn drop(&mut self) {
        let Some(dir) = self.dir.get() else { return };
        for name in self.pending.values().chain(&self.in_flight) {
            let _ = dir.unlink(name);
        }
        let _ = rustix::fs::unlinkat(
            self.store.inner.tmp.fd(),
            self.dir_name.as_str(),
            rustix::fs::AtFlags::REMOVEDIR,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn source<'a>(dir: &'a std::fs::File, dir_path: &'a Path, rel: &'a Path) -> AdoptSource<'a> {
        let meta = std::fs::symlink_metadata(dir_path.join(rel)).unwrap();
        AdoptSource {
            dir: dir.as_fd(),
            dir_path,
            rel,
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    /// A file changed between its hash and its move into `objects/` stays
    /// out of the store; one left alone enters it.
    #[test]
    fn adopt_in_place_hashes_what_it_moved() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let upper = dir.path().join("store/upper");
        std::fs::create_dir(&upper).unwrap();
        let upper_fd = std::fs::File::open(&upper).unwrap();
        std::fs::write(upper.join("kept"), [1u8; 5000]).unwrap();
        std::fs::write(upper.join("changed"), [2u8; 5000]).unwrap();
        let (kept, _) = crate::hash_file(&upper.join("kept")).unwrap();
        let (changed, _) = crate::hash_file(&upper.join("changed")).unwrap();
        let mut stager = store.stager().unwrap();
        for (name, digest) in [("kept", kept), ("changed", changed)] {
            let staged = stager.adopt(&source(&upper_fd, &upper, Path::new(name)), digest, 5000);
            assert!(staged.unwrap().new);
        }
        let adopted = stager.take_deferred();
        stager.publish().unwrap();
        std::fs::write(upper.join("changed"), [3u8; 5000]).unwrap();
        assert_eq!(store.adopt_in_place(&adopted, Recheck::Rehash).unwrap(), 1);
        assert!(store.has_object(&kept).unwrap());
        assert!(!store.has_object(&changed).unwrap());
    }

    /// From another filesystem the file is copied, and hashed as copied: a
    /// change since its hash is an error and leaves nothing staged.
    #[test]
    fn adopt_by_copy_hashes_what_it_copies() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let upper = dir.path().join("tmpfs");
        std::fs::create_dir(&upper).unwrap();
        strata_sys::mount_fs("tmpfs", &[], strata_sys::MountFlags::default(), &upper).unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = strata_sys::unmount(self.0, true);
            }
        }
        let _unmount = Unmount(&upper);
        let upper_fd = std::fs::File::open(&upper).unwrap();
        std::fs::write(upper.join("f"), [4u8; 5000]).unwrap();
        let (digest, _) = crate::hash_file(&upper.join("f")).unwrap();
        std::fs::write(upper.join("f"), [5u8; 5000]).unwrap();
        let mut stager = store.stager().unwrap();
        let err = stager
            .adopt(&source(&upper_fd, &upper, Path::new("f")), digest, 5000)
            .unwrap_err();
        assert!(err.to_string().contains("changed while being committed"), "{err}");
        // A symlink swapped in is not followed.
        std::fs::remove_file(upper.join("f")).unwrap();
        std::fs::write(dir.path().join("host"), [4u8; 5000]).unwrap();
        std::os::unix::fs::symlink(dir.path().join("host"), upper.join("f")).unwrap();
        let err = stager
            .adopt(&source(&upper_fd, &upper, Path::new("f")), digest, 5000)
            .unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        stager.publish().unwrap();
        assert!(!store.has_object(&digest).unwrap());
    }
}

//! The content-addressed store on one directory:
//!
//! ```text
//! ROOT/version            layout version ("1"); a non-empty directory
//!                         without it is not a store and is refused
//! ROOT/lock               flock: imports share it, gc and repair take it alone
//! ROOT/objects/XX/REST    file contents, named by fs-verity digest, read-only
//! ROOT/images/ID.erofs    EROFS metadata images, named by their own digest
//! ROOT/tmp/               staging; whatever is here after a crash is garbage
//! ROOT/mnt/ID             where each image's EROFS is mounted, once
//! ROOT/db/strata.redb     the metadata DB
//! ```
//!
//! Every change is staged in `tmp/`, synced, renamed into place, and only
//! then recorded in the DB, so a crash at any point leaves at worst
//! unreferenced files that `gc` removes. This crate knows nothing of OCI,
//! tar, mounts or containerd.

#![forbid(unsafe_code)]

mod adopt;
mod aliases;
mod db;
mod dirfd;
mod error;
mod fsck;
mod gc;
mod hashing;
mod images;
mod lazy_rows;
mod lock;
mod objects;
mod prehash;
mod records;
mod recover;
mod sha_index;
mod small_contents;
mod tmp_names;
mod trash;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use adopt::Recheck;
pub use db::{ImageRecord, ObjectRef};
pub use error::StoreError;
pub use fsck::{FsckProblem, FsckReport};
pub use gc::GcReport;
pub use hashing::{hash_file, hash_files, hash_opened, sha256_of_contents};
pub use lazy_rows::MAX_LAZY_NEEDS;
pub use lock::{ExclusiveGuard, ImportSlot, NoServe, ServePresence, SharedGuard};
pub use objects::{AdoptSource, HashedBytes, ObjectStager, StagedContents, StagedObject};
pub use prehash::{Prehash, Prehashed};
pub use records::{Counter, RecordTable, StoreTxn};

use dirfd::DirFd;

pub const LAYOUT_VERSION: &str = "1";

/// An open store. Cheap to share between threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    root_dir: DirFd,
    objects: DirFd,
    images: DirFd,
    tmp: DirFd,
    db: db::Db,
    moves: objects::Moves,
    trash: trash::Trash,
}

/// What a store root holds, found without changing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// Nothing there yet (the first write creates a store).
    Missing,
    /// A directory with other things in it and no `version`.
    NotAStore,
    /// A store of layout `version`; `supported` when this strata reads it.
    Store {
        version: String,
        supported: bool,
        read_only: bool,
    },
}

impl std::fmt::Display for StoreState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreState::Missing => write!(f, "missing"),
            StoreState::NotAStore => write!(f, "not a store"),
            StoreState::Store {
                version,
                supported,
                read_only,
            } => {
                if !supported {
                    write!(
                        f,
                        "unsupported layout {version}; this strata reads layout {LAYOUT_VERSION}"
                    )?;
                } else {
                    write!(f, "layout {version}")?;
                }
                if *read_only {
                    write!(f, ", read-only")?;
                }
                Ok(())
            }
        }
    }
}

/// Looks at `root` without creating or changing anything.
pub fn probe(root: &Path) -> Result<StoreState, StoreError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoreState::Missing),
        Err(e) => return Err(StoreError::io("list", root, e)),
    };
    match std::fs::read(root.join("version")) {
        Ok(bytes) => {
            let version = String::from_utf8_lossy(&bytes).trim().to_owned();
            Ok(StoreState::Store {
                supported: version == LAYOUT_VERSION,
                version,
                read_only: !writable(root),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut names = Vec::new();
            for entry in entries {
                names.push(entry.map_err(|e| StoreError::io("list", root, e))?.file_name());
            }
            // A fresh filesystem's `lost+found` does not make it a foreign directory.
            if names.iter().all(|n| n == "lost+found") {
                Ok(StoreState::Missing)
            } else {
                Ok(StoreState::NotAStore)
            }
        }
        Err(e) => Err(StoreError::io("read", root.join("version"), e)),
    }
}

/// Whether this process may change files under `root` (false on a
/// read-only mount).
fn writable(root: &Path) -> bool {
    rustix::fs::access(root, rustix::fs::Access::WRITE_OK).is_ok()
}

impl Store {
    /// Opens the store at `root`, creating an empty one if needed. A
    /// directory that holds other things is refused.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        if probe(root)? == StoreState::NotAStore {
            return Err(StoreError::NotAStore { root: root.to_owned() });
        }
        std::fs::create_dir_all(root).map_err(|e| StoreError::io("create store root", root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| StoreError::io("resolve store root", root, e))?;
        let root_dir = DirFd::open(&root)?;
        check_version(&root_dir, &root)?;
        for sub in ["objects", "images", "tmp", "mnt", "db"] {
            root_dir.ensure_dir(sub, 0o700)?;
        }
        let objects = root_dir.open_dir("objects")?;
        let images = root_dir.open_dir("images")?;
        let tmp = root_dir.open_dir("tmp")?;
        recover::remove_dead_staging(&tmp)?;
        let db = db::Db::open(&root.join("db/strata.redb"))?;
        let store = Store {
            inner: Arc::new(Inner {
                root,
                root_dir,
                objects,
                images,
                tmp,
                db,
                moves: objects::Moves::default(),
                trash: trash::Trash::default(),
            }),
        };
        store.finish_pending()?;
        Ok(store)
    }

    /// Opens a store for a verb that only reads. A writable one opens as
    /// usual (a missing one is created empty); on a read-only filesystem
    /// the DB is read into memory, nothing is written and no start-up
    /// recovery runs.
    pub fn open_read_only(root: &Path) -> Result<Store, StoreError> {
        match probe(root)? {
            StoreState::NotAStore => return Err(StoreError::NotAStore { root: root.to_owned() }),
            StoreState::Missing | StoreState::Store { read_only: false, .. } => return Store::open(root),
            StoreState::Store { .. } => {}
        }
        let root = root
            .canonicalize()
            .map_err(|e| StoreError::io("resolve store root", root, e))?;
        let root_dir = DirFd::open(&root)?;
        check_version(&root_dir, &root)?;
        let store = Store {
            inner: Arc::new(Inner {
                objects: root_dir.open_dir("objects")?,
                images: root_dir.open_dir("images")?,
                tmp: root_dir.open_dir("tmp")?,
                db: db::Db::open_copy(&root.join("db/strata.redb"))?,
                root,
                root_dir,
                moves: objects::Moves::default(),
                trash: trash::Trash::default(),
            }),
        };
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The directory overlayfs uses as the data-only lower layer.
    pub fn objects_path(&self) -> PathBuf {
        self.inner.root.join("objects")
    }

    pub fn image_path(&self, id: &strata_tree::Digest) -> PathBuf {
        self.inner.root.join("images").join(images::file_name(id))
    }

    /// A path in `tmp/` for a short-lived file of this process (a kernel
    /// feature probe); named as staging is, so recovery removes it if the
    /// process dies first.
    pub fn private_tmp_path(&self, purpose: &str) -> PathBuf {
        self.inner
            .root
            .join("tmp")
            .join(tmp_names::tmp_name(tmp_names::TmpKind::Stage, purpose))
    }

    /// Where the EROFS image `id` is mounted, shared by all its users.
    pub fn image_mount_path(&self, id: &strata_tree::Digest) -> PathBuf {
        self.inner.root.join("mnt").join(id.to_hex())
    }

    /// Taken by every import for its whole duration; gc waits for it.
    pub fn lock_shared(&self) -> Result<SharedGuard, StoreError> {
        lock::shared(&self.inner.root_dir, &self.inner.root)
    }

    /// One of `max` import slots; refused when all are taken.
    pub fn import_slot(&self, max: usize) -> Result<ImportSlot, StoreError> {
        lock::import_slot(&self.inner.root_dir, &self.inner.root, max)
    }

    /// Taken by gc and repair, so they never race with an import.
    pub fn lock_exclusive(&self) -> Result<ExclusiveGuard, StoreError> {
        lock::exclusive(&self.inner.root_dir, &self.inner.root)
    }

    /// Held by `strata serve` while it runs (shared: several may).
    pub fn serve_presence(&self) -> Result<ServePresence, StoreError> {
        lock::serve_presence(&self.inner.root_dir, &self.inner.root)
    }

    /// Blocks until no `strata serve` runs on this store.
    pub fn wait_no_serve(&self) -> Result<NoServe, StoreError> {
        lock::wait_no_serve(&self.inner.root_dir, &self.inner.root)
    }

    pub fn has_object(&self, digest: &strata_tree::Digest) -> Result<bool, StoreError> {
        self.inner.objects.exists(&digest.object_path())
    }

    /// A stager for one import (one layer): objects are written under `tmp/`
    /// and enter the store only at [`ObjectStager::publish`].
    pub fn stager(&self) -> Result<ObjectStager, StoreError> {
        ObjectStager::new(self.clone())
    }

    /// Flushes everything written to the store's filesystem so far
    /// (syncfs): a later publish then waits only for what came after.
    pub fn sync_written(&self) -> Result<(), StoreError> {
        self.inner.tmp.syncfs()
    }

    /// Takes the directory `path` (on the store's filesystem) out of the
    /// way at once and deletes it in the background.
    pub fn discard(&self, path: &Path) -> Result<(), StoreError> {
        self.inner.trash.discard(&self.inner.tmp, path)
    }

    /// Writes an EROFS image durably and returns its id (its own digest).
    pub fn put_image(&self, bytes: &[u8]) -> Result<strata_tree::Digest, StoreError> {
        images::put(self, bytes)
    }

    pub fn read_image(&self, id: &strata_tree::Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.image_path(id);
        std::fs::read(&path).map_err(|e| StoreError::io("read image", &path, e))
    }

    /// Records an image under its name, atomically with its object refs.
    /// Replaces any earlier image of that name.
    pub fn commit_image(&self, record: &ImageRecord, objects: &[ObjectRef]) -> Result<(), StoreError> {
        self.inner.db.commit_image(record, objects, &[])
    }

    /// [`commit_image`](Self::commit_image), with SHA-256 index rows (see
    /// [`record_sha256`](Self::record_sha256)) in the same commit.
    pub fn commit_image_indexed(
        &self,
        record: &ImageRecord,
        objects: &[ObjectRef],
        index_rows: &[([u8; 32], ObjectRef)],
    ) -> Result<(), StoreError> {
        self.inner.db.commit_image(record, objects, index_rows)
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.inner.db.image(name)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.inner.db.images()
    }

    /// Forgets an image name. Its files stay until `gc`.
    pub fn remove_image(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.db.remove_image(name)
    }

    /// The objects an EROFS image references, as recorded at commit.
    pub fn image_objects(&self, id: &strata_tree::Digest) -> Result<Vec<ObjectRef>, StoreError> {
        self.inner.db.image_objects(id)
    }

    /// Records that `id` is referenced by something other than an image name
    /// (a snapshot, a mount). Roots keep images and their objects from gc.
    pub fn add_root(&self, owner: &str, id: &strata_tree::Digest, objects: &[ObjectRef]) -> Result<(), StoreError> {
        self.inner.db.add_root(owner, id, objects)
    }

    pub fn remove_root(&self, owner: &str) -> Result<bool, StoreError> {
        self.inner.db.remove_root(owner)
    }

    /// The names of every gc root.
    pub fn roots(&self) -> Result<Vec<String>, StoreError> {
        self.inner.db.roots()
    }

    /// The image a root keeps alive.
    pub fn root_image(&self, owner: &str) -> Result<Option<strata_tree::Digest>, StoreError> {
        self.inner.db.root_image(owner)
    }

    /// Every EROFS image an image name or a root keeps alive.
    pub fn live_images(&self) -> Result<Vec<strata_tree::Digest>, StoreError> {
        self.inner.db.live_images()
    }

    pub fn gc(&self) -> Result<GcReport, StoreError> {
        gc::run(self)
    }

    /// What [`Store::gc`] would free of objects and images, removing nothing.
    pub fn gc_preview(&self) -> Result<GcReport, StoreError> {
        gc::preview(self)
    }

    /// A counter that moves whenever a root or image name is dropped or
    /// replaced, in any process: while it stands still, and `tmp/` holds
    /// nothing of dead processes, a [`Store::gc`] would find nothing the
    /// last one did not (short of a failed import or commit, whose caller
    /// knows).
    pub fn released(&self) -> Result<u64, StoreError> {
        self.inner.db.released()
    }

    /// Whether `tmp/` holds anything but the trash live processes are
    /// deleting.
    pub fn tmp_has_garbage(&self) -> Result<bool, StoreError> {
        Ok(gc::read_dir(self.inner.tmp.path())?
            .iter()
            .any(|e| !recover::is_live_trash(&e.file_name().to_string_lossy())))
    }

    pub fn fsck(&self, repair: bool) -> Result<FsckReport, StoreError> {
        fsck::run(self, repair)
    }
}

fn check_version(root_dir: &DirFd, root: &Path) -> Result<(), StoreError> {
    match root_dir.read_small("version")? {
        Some(found) => {
            let found = String::from_utf8_lossy(&found).trim().to_owned();
            if found != LAYOUT_VERSION {
                return Err(StoreError::LayoutVersion {
                    root: root.to_owned(),
                    found,
                });
            }
            Ok(())
        }
        None => root_dir.write_atomic("version", format!("{LAYOUT_VERSION}\n").as_bytes(), 0o644),
    }
}

#[cfg(test)]
mod tests;

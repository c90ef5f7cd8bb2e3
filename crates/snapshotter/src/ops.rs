//! The snapshot operations.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use strata_mount::{mount_image, Kernel, Mounter, OverlayPlan};
use strata_store::{Prehash, Store};
use strata_tree::{Digest, Tree};

use strata_scratch::ScratchPolicy;

use crate::db::{self, Record};
use crate::info_cache::{InfoCache, WriteGuard};
use crate::scratch::{ScratchUse, Scratches};
use crate::types::Stamp;
use crate::{codec, Info, Kind, Mount, SnapshotError, Usage};

mod cleanup;
mod commit;
mod create;
mod fetched;
mod lazy;
mod reads;

/// containerd's snapshotter over one store. Operations are serialized.
pub struct Snapshotter {
    store: Store,
    dir: PathBuf,
    /// Held by every change of a snapshot row, through `guard`.
    lock: Mutex<()>,
    /// Infos for Stat and Walk, kept current by `guard`.
    infos: InfoCache,
    /// The last committed image's tree, for a commit over it.
    trees: crate::tree_cache::TreeCache,
    scratches: Scratches,
    /// Unpack snapshots' upper dirs being hashed as containerd writes them.
    prehashes: Mutex<HashMap<u64, Prehash>>,
    /// The store's `released` counter at the last full gc; `None` until the
    /// first.
    swept: Mutex<Option<u64>>,
    /// Set by a failed commit (which may leave orphans): the next Cleanup
    /// sweeps whatever `swept` says.
    sweep_asked: std::sync::atomic::AtomicBool,
    /// Set when a commit could not move its new files into the store past
    /// its commit point: the next change retries the journaled moves.
    adoptions_left: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// An unpack's commit finishing after its reply (commit.rs); every
    /// change waits for it under the lock.
    settling: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Fetches layers for containerd's remote-snapshot labels.
    fetcher: Option<std::sync::Arc<dyn crate::LayerFetcher>>,
    /// Images whose later layers containerd fetches itself.
    fallen_back: crate::remote::FallenBack,
    /// Mounts images, with the kernel rungs chosen for this store.
    mounter: std::sync::Arc<dyn Mounter + Send + Sync>,
    /// Held for the snapshotter's life: one snapshotter per store.
    _owner: std::fs::File,
}

impl Drop for Snapshotter {
    /// A commit finishing after its reply is done before the store closes.
    fn drop(&mut self) {
        self.settle();
    }
}

pub(crate) fn root_name(id: u64) -> String {
    format!("snapshot:{id}")
}

impl Snapshotter {
    /// Opens the snapshotter on `store`, reconciling its directories with
    /// the DB: directories of snapshots the DB does not know are removed.
    pub fn open(store: Store, scratch: ScratchPolicy) -> Result<Snapshotter, SnapshotError> {
        Self::open_with_mounter(store, scratch, std::sync::Arc::new(Kernel::default()))
    }

    /// [`open`](Self::open), mounting through `mounter` (the kernel with
    /// the rungs of its probed ladder, or a recorder in tests).
    pub fn open_with_mounter(
        store: Store,
        scratch: ScratchPolicy,
        mounter: std::sync::Arc<dyn Mounter + Send + Sync>,
    ) -> Result<Snapshotter, SnapshotError> {
        let owner = take_owner_lock(store.root())?;
        db::init(&store)?;
        let dir = store.root().join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::io("create", &dir, e))?;
        let sn = Snapshotter {
            scratches: Scratches::new(store.root(), scratch),
            store,
            dir,
            lock: Mutex::new(()),
            infos: InfoCache::default(),
            trees: Default::default(),
            prehashes: Mutex::new(HashMap::new()),
            swept: Mutex::new(None),
            sweep_asked: std::sync::atomic::AtomicBool::new(false),
            adoptions_left: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
            settling: Mutex::new(None),
            fetcher: None,
            fallen_back: crate::remote::FallenBack::new(std::time::Duration::from_secs(600)),
            mounter,
            _owner: owner,
        };
        let removed = sn.remove_unknown_dirs()?;
        if removed > 0 {
            tracing::info!(removed, "removed snapshot directories the DB does not know");
        }
        sn.finish_interrupted()?;
        sn.remount_parents();
        sn.reconcile_scratch(false)?;
        // Fills the info cache whole: every Stat, even of a missing key,
        // is then answered from memory.
        sn.walk::<&str>(&[])?;
        Ok(sn)
    }

    /// Clears what a kill left half done: the upper dirs of committed
    /// snapshots (the store's open has moved their new files already) and
    /// gc roots of removed snapshots (from before roots and rows shared a
    /// transaction).
    fn finish_interrupted(&self) -> Result<(), SnapshotError> {
        let records = db::all(&self.store)?;
        for (key, record) in records.iter().filter(|(_, r)| r.kind == Kind::Committed) {
            let dir = self.snap_dir(record.id);
            if has_upper_leftovers(&dir) {
                tracing::info!(key, "removing the upper dir of an interrupted commit");
                remove_upper_leftovers(&dir);
            }
        }
        let ids: std::collections::HashSet<String> = records.iter().map(|(_, r)| root_name(r.id)).collect();
        for root in self.store.roots()? {
            if root.starts_with("snapshot:") && !ids.contains(&root) {
                tracing::info!(root, "removing the gc root of a removed snapshot");
                self.store.remove_root(&root)?;
            }
        }
        Ok(())
    }

    /// Mounts the EROFS image under every active snapshot and view again,
    /// in case they went away with a reboot: their overlays name them.
    fn remount_parents(&self) {
        let records = match db::all(&self.store) {
            Ok(r) => r,
            Err(e) => return tracing::warn!("listing snapshots to remount: {e}"),
        };
        for (key, record) in records.iter().filter(|(_, r)| r.kind != Kind::Committed) {
            let remounted = self.parent_image(record).and_then(|image| match image {
                Some(image) => {
                    mount_image(
                        &*self.mounter,
                        &self.store.image_path(&image),
                        &self.store.image_mount_path(&image),
                    )?;
                    Ok(())
                }
                None => Ok(()),
            });
            if let Err(e) = remounted {
                tracing::warn!(key, "remounting the parent image: {e}");
            }
        }
    }

    /// Mounts the scratch filesystems in use, removes the others.
    fn reconcile_scratch(&self, templates: bool) -> Result<(), SnapshotError> {
        let records = db::all(&self.store)?;
        let in_use: Vec<&ScratchUse> = records.iter().filter_map(|(_, r)| r.scratch.as_ref()).collect();
        self.scratches.reconcile(&in_use, templates)
    }

    /// Upper and work dirs of a snapshot: in its scratch, or its own dir.
    fn upper_of(&self, record: &Record) -> (PathBuf, PathBuf) {
        match &record.scratch {
            Some(s) => self.scratches.upper_of(s, record.id),
            None => {
                let dir = self.snap_dir(record.id);
                (dir.join("fs"), dir.join("work"))
            }
        }
    }

    /// The snapshot whose scratch `key` asks to share: same namespace, key
    /// equal to `owner` or ending in `/owner`, exactly one.
    fn scratch_owner(&self, key: &str, owner: &str) -> Result<ScratchUse, SnapshotError> {
        let namespace = key.split('/').next().unwrap_or_default();
        let suffix = format!("/{owner}");
        let matches: Vec<(String, Record)> = db::all(&self.store)?
            .into_iter()
            .filter(|(k, _)| k.split('/').next() == Some(namespace) && (k == owner || k.ends_with(&suffix)))
            .collect();
        match matches.as_slice() {
            [] => Err(SnapshotError::OwnerNotFound {
                owner: owner.to_owned(),
            }),
            [(k, r)] => r
                .scratch
                .clone()
                .ok_or_else(|| SnapshotError::OwnerWithoutScratch { owner: k.clone() }),
            more => Err(SnapshotError::OwnerAmbiguous {
                owner: owner.to_owned(),
                keys: more.iter().map(|(k, _)| k.clone()).collect(),
            }),
        }
    }

    /// Drops `record`'s use of its scratch; the last user takes the
    /// filesystem with it. Call after the DB no longer lists `record`.
    fn release_scratch(&self, record: &Record) -> Result<(), SnapshotError> {
        let Some(scratch) = &record.scratch else {
            return Ok(());
        };
        let others = db::all(&self.store)?
            .iter()
            .filter(|(_, r)| r.scratch.as_ref().is_some_and(|s| s.fs == scratch.fs))
            .count();
        self.scratches.release(record.id, scratch, others == 0);
        Ok(())
    }

    /// Serves unpack Prepares that carry the CRI's remote-snapshot labels
    /// by fetching the layer with `fetcher`.
    pub fn with_fetcher(mut self, fetcher: std::sync::Arc<dyn crate::LayerFetcher>) -> Self {
        self.fetcher = Some(fetcher);
        self
    }

    /// The store, once the last commit has finished moving its files.
    pub fn store(&self) -> &Store {
        self.settle();
        &self.store
    }

    /// The lock every change holds, taken once the last commit's
    /// finishing work is done.
    fn guard(&self) -> WriteGuard<'_> {
        let guard = self.infos.lock(&self.lock, &self.store);
        self.settle();
        guard
    }

    /// Waits for a commit finishing after its reply.
    fn settle(&self) {
        let pending = self.settling.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(finishing) = pending {
            if finishing.join().is_err() {
                // Its moves stay journaled; the next change retries them.
                self.adoptions_left.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn snap_dir(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn record(&self, key: &str) -> Result<Record, SnapshotError> {
        db::get(&self.store, key)?.ok_or_else(|| SnapshotError::NotFound { key: key.to_owned() })
    }

    /// Creates an active snapshot over `parent` (empty for none). An
    /// unpack snapshot whose layer strata fetched itself is committed
    /// instead, and the answer is AlreadyExists with its name.
    pub fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        if strata_scratch::is_unpack_key(key) {
            if let Some(name) = self.try_remote(key, parent, &labels) {
                return Err(SnapshotError::AlreadyExists { key: name });
            }
        }
        self.create(Kind::Active, key, parent, labels)
    }

    /// Creates a read-only view of `parent` (empty for an empty view).
    pub fn view(&self, key: &str, parent: &str, labels: BTreeMap<String, String>) -> Result<Vec<Mount>, SnapshotError> {
        self.create(Kind::View, key, parent, labels)
    }

    /// Hashes an unpack snapshot's files while containerd writes them, so
    /// its Commit mostly looks digests up. Without it Commit hashes them all.
    fn start_prehash(&self, id: u64, upper: &Path) {
        match Prehash::watch(upper) {
            Ok(watch) => {
                self.prehashes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, watch);
            }
            Err(e) => tracing::debug!(id, "not hashing during the unpack: {e}"),
        }
    }

    /// The watch hashing the unpack into snapshot `id`, if there is one.
    fn take_prehash(&self, id: u64) -> Option<Prehash> {
        self.prehashes.lock().unwrap_or_else(|e| e.into_inner()).remove(&id)
    }

    /// The mounts of an active snapshot or a view.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let _g = self.guard();
        let record = self.record(key)?;
        if record.kind == Kind::Committed {
            return Err(SnapshotError::WrongKind {
                key: key.to_owned(),
                actual: record.kind,
                wanted: "an active snapshot or a view",
            });
        }
        self.mounts_of(&record)
    }

    fn parent_image(&self, record: &Record) -> Result<Option<Digest>, SnapshotError> {
        let Some(parent) = &record.parent else {
            return Ok(None);
        };
        let p = self.record(parent)?;
        image_id(parent, &p).map(Some)
    }

    fn mounts_of(&self, record: &Record) -> Result<Vec<Mount>, SnapshotError> {
        let lower = match self.parent_image(record)? {
            Some(image) => Some((self.mount_image_of(&image)?, self.store.lazy_lowers(&image)?)),
            None => None,
        };
        Ok(self.overlay_mounts(record, lower))
    }

    /// Mounts `image`'s EROFS file (if it is not mounted yet) and returns
    /// where.
    fn mount_image_of(&self, image: &Digest) -> Result<PathBuf, SnapshotError> {
        let meta = self.store.image_mount_path(image);
        // `strata mount`/`umount` in another process change these too.
        let _lock = strata_mount::lock_image_mounts(&self.store.root().join("mnt"))?;
        mount_image(&*self.mounter, &self.store.image_path(image), &meta)?;
        Ok(meta)
    }

    /// The mounts of `record`, whose parent's image (if any) is mounted at
    /// `meta`, with `more_data` lowers after the objects dir.
    fn overlay_mounts(&self, record: &Record, lower: Option<(PathBuf, Vec<PathBuf>)>) -> Vec<Mount> {
        let Some((meta, more_data)) = lower else {
            let rw = if record.kind == Kind::Active { "rw" } else { "ro" };
            return vec![Mount {
                kind: "bind".into(),
                source: self.upper_of(record).0.display().to_string(),
                options: vec![rw.into(), "rbind".into()],
            }];
        };
        let upper = (record.kind == Kind::Active).then(|| self.upper_of(record));
        let plan = OverlayPlan {
            meta,
            data: self.store.objects_path(),
            upper,
        };
        let mut options = plan.mount_options_with_data(self.mounter.ladder().lowers, &more_data);
        if record.kind != Kind::Active {
            options.insert(0, "ro".into());
        }
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
        }]
    }

    /// Updates labels. `fieldpaths` empty means all mutable fields (labels);
    /// `labels` replaces all labels; `labels.KEY` sets or removes one.
    pub fn update(&self, info: &Info, fieldpaths: &[String]) -> Result<Info, SnapshotError> {
        let _g = self.guard();
        let key = info.name.as_str();
        let mut record = self.record(key)?;
        if fieldpaths.is_empty() {
            record.labels = info.labels.clone();
        }
        for path in fieldpaths {
            if let Some(label) = path.strip_prefix("labels.") {
                match info.labels.get(label) {
                    Some(v) => record.labels.insert(label.to_owned(), v.clone()),
                    None => record.labels.remove(label),
                };
            } else if path == "labels" {
                record.labels = info.labels.clone();
            } else {
                return Err(SnapshotError::ImmutableField {
                    key: key.to_owned(),
                    field: path.clone(),
                });
            }
        }
        record.updated = Stamp::now();
        let txn = self.store.begin()?;
        db::put(&txn, key, &record)?;
        txn.commit()?;
        Ok(record.info(key))
    }

    /// Disk usage: the upper dir of an active snapshot (measured now), the
    /// diff of a committed one (measured at commit), nothing for a view.
    pub fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let record = self.record(key)?;
        match record.kind {
            Kind::Active => {
                let usage = match &record.scratch {
                    // The creator of a scratch answers for all of it.
                    Some(s) if s.fs == record.id => match self.scratches.used(s)? {
                        Some((size, inodes)) => Usage {
                            size: i64::try_from(size).unwrap_or(i64::MAX),
                            inodes: i64::try_from(inodes).unwrap_or(i64::MAX),
                        },
                        None => disk_usage(&self.scratches.root_of(s))?,
                    },
                    _ => disk_usage(&self.upper_of(&record).0)?,
                };
                if let Some(s) = &record.scratch {
                    let (size, inodes) = (usage.size, usage.inodes);
                    tracing::debug!(key, fs = s.fs, mechanism = %s.mechanism(), size, inodes, "usage of a sized scratch");
                }
                Ok(usage)
            }
            Kind::Committed => Ok(record.usage.unwrap_or_default()),
            Kind::View => Ok(Usage::default()),
        }
    }

    /// The merged tree of committed snapshot `key`: the one the last
    /// commit kept if it wrote this image, else read back from its EROFS
    /// image (or from the tree file older stores kept beside it), which
    /// must still hash to its name.
    fn load_tree(&self, key: &str, record: &Record) -> Result<Tree, SnapshotError> {
        let bad = |reason: String| SnapshotError::BadRecord {
            key: key.to_owned(),
            reason,
        };
        let old = self.snap_dir(record.id).join("tree");
        match std::fs::read(&old) {
            Ok(bytes) => return codec::decode(&bytes).map_err(|e| bad(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SnapshotError::io("read", &old, e)),
        }
        let id = image_id(key, record)?;
        if let Some(mut tree) = self.trees.take(&id) {
            lazy::mark_missing(&self.store, &id, &mut tree)?;
            // Every test build checks the kept tree against the image.
            #[cfg(debug_assertions)]
            {
                let mut read = strata_erofs::read_tree(&self.store.read_image(&id)?)?;
                lazy::mark_missing(&self.store, &id, &mut read)?;
                assert!(
                    tree == read,
                    "the kept tree of image {} is not what it reads back as",
                    id.to_hex()
                );
            }
            return Ok(tree);
        }
        let image = self.store.read_image(&id)?;
        if Digest::of(&image) != id {
            return Err(bad(format!(
                "its EROFS image {} no longer hashes to its name",
                id.to_hex()
            )));
        }
        let mut tree = strata_erofs::read_tree(&image)?;
        lazy::mark_missing(&self.store, &id, &mut tree)?;
        Ok(tree)
    }

    /// Commits the active snapshot `key` as the committed snapshot `name`:
    /// its upper dir becomes one flattened EROFS image of parent + diff.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<(), SnapshotError> {
        let committed = self.try_commit(name, key, labels);
        if committed.is_err() {
            self.sweep_next_cleanup();
        }
        committed
    }

    /// Removes a snapshot that has no children.
    pub fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        let _g = self.guard();
        let database = &self.store;
        let record = self.record(key)?;
        if db::has_children(database, key)? {
            return Err(SnapshotError::HasChildren { key: key.to_owned() });
        }
        strata_failpoint::hit("remove.before_db")?;
        let txn = database.begin()?;
        db::delete(&txn, key)?;
        txn.remove_root(&root_name(record.id))?;
        txn.commit()?;
        // Past the commit point nothing fails the call: what is left is
        // garbage that Cleanup or the next start removes.
        let _ = strata_failpoint::hit("remove.after_db");
        drop(self.take_prehash(record.id));
        if let Err(e) = self.release_scratch(&record) {
            tracing::warn!(key, "releasing the scratch: {e}; the next start reconciles it");
        }
        let dir = self.snap_dir(record.id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!("removing {}: {e}; cleanup retries", dir.display());
        }
        if record.image.is_some() {
            if let Err(e) = self.release_unused_images() {
                tracing::warn!(key, "unmounting unused images: {e}; cleanup retries");
            }
        }
        Ok(())
    }
}

/// Takes `ROOT/snapshotter.lock` so that two servers never share a store.
fn take_owner_lock(root: &Path) -> Result<std::fs::File, SnapshotError> {
    let path = root.join("snapshotter.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SnapshotError::io("open", &path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(SnapshotError::InUse { path }),
        Err(e) => Err(SnapshotError::io("lock", &path, e)),
    }
}

fn image_id(key: &str, record: &Record) -> Result<Digest, SnapshotError> {
    let hex = record.image.as_deref().ok_or_else(|| SnapshotError::BadRecord {
        key: key.to_owned(),
        reason: "committed snapshot without an image".into(),
    })?;
    hex.parse()
        .map_err(|e: strata_tree::DigestParseError| SnapshotError::BadRecord {
            key: key.to_owned(),
            reason: e.to_string(),
        })
}

/// Whether a committed snapshot's dir still holds its old upper dir.
pub(crate) fn has_upper_leftovers(dir: &Path) -> bool {
    dir.join("fs").exists() || dir.join("work").exists()
}

fn remove_upper_leftovers(dir: &Path) {
    for sub in ["fs", "work"] {
        let _ = std::fs::remove_dir_all(dir.join(sub));
    }
}

/// Allocated bytes and inodes under `path`, each inode once. Reads through
/// fds without following symlinks, with a list of directories (no
/// recursion), and stops descending below the deepest level an image
/// holds: such a snapshot cannot be committed anyway.
fn disk_usage(path: &Path) -> Result<Usage, SnapshotError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    use std::os::fd::AsFd;
    use std::os::unix::ffi::OsStrExt;
    let root = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SnapshotError::io("open", path, e))?;
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let mut add = |stat: &rustix::fs::Stat| {
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if is_dir || stat.st_nlink < 2 || seen.insert((stat.st_dev, stat.st_ino)) {
            usage.inodes += 1;
            let bytes = u64::try_from(stat.st_blocks).unwrap_or(0).saturating_mul(512);
            usage.size = usage.size.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
    };
    add(&rustix::fs::fstat(&root).map_err(|e| SnapshotError::io("stat", path, e))?);
    let mut pending: Vec<(PathBuf, usize)> = vec![(PathBuf::new(), 0)];
    while let Some((rel, depth)) = pending.pop() {
        let dir = if rel.as_os_str().is_empty() {
            rustix::fs::openat(
                &root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
        } else {
            strata_sys::open_beneath(root.as_fd(), &rel, OFlags::RDONLY | OFlags::DIRECTORY)
        };
        // Gone or replaced since it was listed: nothing to count there.
        let Ok(dir) = dir else { continue };
        let Ok(entries) = rustix::fs::Dir::read_from(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let Ok(stat) = rustix::fs::statat(&dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            add(&stat);
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory && depth < strata_erofs::MAX_DEPTH {
                pending.push((rel.join(std::ffi::OsStr::from_bytes(name)), depth + 1));
            }
        }
    }
    Ok(usage)
}

/// Wall time per step of an operation, for the debug log.
struct Phases {
    last: std::time::Instant,
    steps: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
            steps: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, took)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{step} {:.1} ms", took.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// Starts writing out the filesystem of `dir` on another thread: the
/// upper dir's data is complete when Commit is called, so the commit's own
/// sync, after the walk and the EROFS image, then waits for less. Its
/// errors are left to that sync.
fn start_flush(dir: &Path) -> std::thread::JoinHandle<()> {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC;
        if let Ok(fd) = rustix::fs::open(&dir, flags, rustix::fs::Mode::empty()) {
            let _ = rustix::fs::syncfs(&fd);
        }
    })
}

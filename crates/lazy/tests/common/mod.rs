//! A real lazily mounted image: an EROFS metadata image from strata_erofs,
//! an OBJECTS dir (objects by fs-verity digest), an ALIASES dir (hard
//! links by SHA-256), a real LAZY FUSE mount, and overlayfs over them with
//! three data-only lowers, OBJECTS, ALIASES and LAZY, in that order.
//! Everything is unmounted when the fixture drops, on failure too.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::num::NonZeroU64;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use strata_lazy::{FetchError, LazyConfig, LazyHandle, LazyMount, ObjectFetcher};
use strata_sys::{mount_fs, mounts_under, unmount, FsOption, MountFlags};
use strata_tree::{Content, Digest, FileData, Leaf, Node, Stat, Tree};

/// How overlayfs is told about the data-only lowers (crates/mount's two
/// rungs).
#[derive(Clone, Copy, Debug)]
pub enum Lowers {
    /// `lowerdir+=META,datadir+=ALIASES,datadir+=OBJECTS,datadir+=LAZY`
    Append,
    /// `lowerdir=META::ALIASES::OBJECTS::LAZY` (as `strata_mount` orders them)
    DoubleColon,
}

/// How the test fetcher misbehaves for one name.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// The source answers with an error.
    Fail,
    /// The source answers other bytes than the name's.
    WrongBytes,
    /// The source never answers (until the fixture drops).
    Stuck,
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// Fetches from an in-memory "registry", verifies the SHA-256, stores the
/// object by fs-verity digest in OBJECTS and links it by SHA-256 into
/// ALIASES, as strata's fetcher will.
pub struct TestFetcher {
    objects: PathBuf,
    aliases: PathBuf,
    registry: HashMap<Digest, Vec<u8>>,
    faults: Mutex<HashMap<Digest, Fault>>,
    before_fetch: Mutex<Option<Hook>>,
    released: (Mutex<bool>, Condvar),
    pub calls: AtomicU64,
}

impl TestFetcher {
    /// Fetches `files` from its "registry" into `objects` and `aliases`.
    pub fn new<'a>(objects: &Path, aliases: &Path, files: impl Iterator<Item = &'a TestFile>) -> Arc<Self> {
        Arc::new(TestFetcher {
            objects: objects.to_owned(),
            aliases: aliases.to_owned(),
            registry: files.map(|f| (f.sha256, f.bytes.clone())).collect(),
            faults: Mutex::new(HashMap::new()),
            before_fetch: Mutex::new(None),
            released: (Mutex::new(false), Condvar::new()),
            calls: AtomicU64::new(0),
        })
    }

    fn store(&self, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let object = self.objects.join(Digest::of(bytes).object_path());
        std::fs::create_dir_all(object.parent().unwrap())?;
        let staged = self.objects.join(format!("tmp-{}", std::process::id()));
        let mut file = File::create(&staged)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&staged, &object)?;
        // Drop the pages the write left, so the page-cache test sees what
        // the reads through the overlay bring in.
        rustix::fs::fadvise(
            &file,
            0,
            NonZeroU64::new(bytes.len() as u64),
            rustix::fs::Advice::DontNeed,
        )?;
        Ok(object)
    }

    pub fn set_fault(&self, name: Digest, fault: Fault) {
        self.faults.lock().unwrap().insert(name, fault);
    }

    fn release_stuck(&self) {
        *self.released.0.lock().unwrap() = true;
        self.released.1.notify_all();
    }
}

impl ObjectFetcher for TestFetcher {
    fn open_stored(&self, name: &Digest) -> Result<Option<File>, FetchError> {
        match File::open(self.aliases.join(name.object_path())) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FetchError::Io { name: *name, source }),
        }
    }

    fn fetch(&self, name: &Digest) -> Result<File, FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(hook) = self.before_fetch.lock().unwrap().as_ref() {
            hook();
        }
        let mut bytes = self
            .registry
            .get(name)
            .cloned()
            .ok_or(FetchError::Unknown { name: *name })?;
        let fault = self.faults.lock().unwrap().get(name).copied();
        match fault {
            Some(Fault::Fail) => {
                return Err(FetchError::Source {
                    name: *name,
                    source: "injected registry failure".into(),
                })
            }
            Some(Fault::WrongBytes) => bytes[0] ^= 0xff,
            Some(Fault::Stuck) => {
                let (released, wake) = (&self.released.0, &self.released.1);
                let guard = released.lock().unwrap();
                let _unused = wake
                    .wait_timeout_while(guard, Duration::from_secs(60), |r| !*r)
                    .unwrap();
                return Err(FetchError::Source {
                    name: *name,
                    source: "stuck fetch released".into(),
                });
            }
            None => {}
        }
        if sha256(&bytes) != *name {
            return Err(FetchError::Mismatch { name: *name });
        }
        let io = |source| FetchError::Io { name: *name, source };
        let object = self.store(&bytes).map_err(io)?;
        let alias = self.aliases.join(name.object_path());
        std::fs::create_dir_all(alias.parent().unwrap()).map_err(io)?;
        std::fs::hard_link(&object, &alias).map_err(io)?;
        File::open(&object).map_err(io)
    }
}

/// One file of the test image.
pub struct TestFile {
    pub bytes: Vec<u8>,
    pub sha256: Digest,
    pub verity: Digest,
}

impl TestFile {
    /// `len` bytes of a reproducible pseudo-random stream.
    pub fn new(seed: u64, len: usize) -> Self {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        Self {
            sha256: sha256(&bytes),
            verity: Digest::of(&bytes),
            bytes,
        }
    }
}

pub fn sha256(bytes: &[u8]) -> Digest {
    Digest(Sha256::digest(bytes).into())
}

/// Who serves LAZY.
pub enum Server {
    InProcess(LazyMount),
    /// Another process, killed when the fixture drops.
    Child(std::process::Child),
}

pub struct Fixture {
    // Fields drop in this order: the overlay first, LAZY last.
    overlay: Option<PathBuf>,
    meta: Option<PathBuf>,
    pub lazy: Option<LazyMount>,
    pub child: Option<std::process::Child>,
    pub fetcher: Arc<TestFetcher>,
    pub merged: PathBuf,
    pub objects: PathBuf,
    pub aliases: PathBuf,
    pub lazy_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// `present` files are in OBJECTS before the mount and named by their
    /// fs-verity digest; `lazy` files are served by LAZY under their
    /// SHA-256, to be fetched on open.
    pub fn new(present: &[(&str, &TestFile)], lazy: &[(&str, &TestFile)], config: &LazyConfig) -> Self {
        Self::with_lowers(present, lazy, config, Lowers::Append)
    }

    pub fn with_lowers(
        present: &[(&str, &TestFile)],
        lazy: &[(&str, &TestFile)],
        config: &LazyConfig,
        lowers: Lowers,
    ) -> Self {
        let sizes: Vec<_> = lazy.iter().map(|(_, f)| (f.sha256, f.bytes.len() as u64)).collect();
        let config = config.clone();
        Self::build(present, lazy, lowers, move |lazy_dir, fetcher| {
            let target = lazy_dir.to_owned();
            let mount = bounded(Duration::from_secs(20), move || {
                LazyMount::mount(&target, fetcher, &config)
            })
            .expect("mount LAZY");
            for (name, size) in sizes {
                mount.handle().insert(name, size);
            }
            Server::InProcess(mount)
        })
    }

    /// Lays out the dirs, the image and the objects of `present`, has
    /// `serve` mount LAZY on the lazy dir (given the fixture's own fetcher),
    /// then mounts EROFS and the overlay.
    pub fn build(
        present: &[(&str, &TestFile)],
        lazy: &[(&str, &TestFile)],
        lowers: Lowers,
        serve: impl FnOnce(&Path, Arc<TestFetcher>) -> Server,
    ) -> Self {
        let base = std::env::var_os("STRATA_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new().prefix("lazy-").tempdir_in(base).unwrap();
        let sub = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            path
        };
        let (objects, aliases, lazy_dir, meta_dir, merged) =
            (sub("objects"), sub("aliases"), sub("lazy"), sub("meta"), sub("merged"));

        let fetcher = TestFetcher::new(&objects, &aliases, lazy.iter().map(|(_, f)| *f));
        for (_, file) in present {
            fetcher.store(&file.bytes).unwrap();
        }

        let mut tree = Tree::new(Stat::default_dir());
        let entries = present
            .iter()
            .map(|(n, f)| (*n, f.verity, f.bytes.len()))
            .chain(lazy.iter().map(|(n, f)| (*n, f.sha256, f.bytes.len())));
        for (name, digest, size) in entries {
            let leaf = tree.push_leaf(Leaf {
                stat: Stat {
                    mode: 0o644,
                    ..Stat::default()
                },
                content: Content::File(FileData::Object {
                    digest,
                    size: size as u64,
                }),
            });
            tree.root.entries.insert(name.as_bytes().to_vec(), Node::Leaf(leaf));
        }
        let image = dir.path().join("meta.erofs");
        std::fs::write(&image, strata_erofs::write_image(&tree).unwrap()).unwrap();

        let mut fixture = Fixture {
            overlay: None,
            meta: None,
            lazy: None,
            child: None,
            fetcher,
            merged: merged.clone(),
            objects: objects.clone(),
            aliases: aliases.clone(),
            lazy_dir: lazy_dir.clone(),
            dir,
        };
        let ro = MountFlags {
            read_only: true,
            nodev: true,
        };
        match serve(&lazy_dir, fixture.fetcher.clone()) {
            Server::InProcess(mount) => fixture.lazy = Some(mount),
            Server::Child(child) => fixture.child = Some(child),
        }
        let s = |k: &str, v: &Path| FsOption::String(k.into(), v.display().to_string());
        mount_fs("erofs", &[s("source", &image)], ro, &meta_dir).expect("mount EROFS");
        fixture.meta = Some(meta_dir.clone());
        let shown = |p: &Path| p.display().to_string();
        let mut overlay = match lowers {
            Lowers::Append => vec![
                s("lowerdir+", &meta_dir),
                s("datadir+", &aliases),
                s("datadir+", &objects),
                s("datadir+", &lazy_dir),
            ],
            Lowers::DoubleColon => vec![FsOption::String(
                "lowerdir".into(),
                [&meta_dir, &aliases, &objects, &lazy_dir].map(|p| shown(p)).join("::"),
            )],
        };
        overlay.push(FsOption::String("metacopy".into(), "on".into()));
        overlay.push(FsOption::String("redirect_dir".into(), "on".into()));
        let target = merged.clone();
        bounded(Duration::from_secs(20), move || {
            mount_fs("overlay", &overlay, ro, &target)
        })
        .expect("mount overlay");
        fixture.overlay = Some(merged);
        fixture
    }

    pub fn handle(&self) -> LazyHandle {
        self.lazy.as_ref().unwrap().handle()
    }

    pub fn set_fault(&self, name: Digest, fault: Fault) {
        self.fetcher.set_fault(name, fault);
    }

    pub fn before_fetch(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.fetcher.before_fetch.lock().unwrap() = Some(Box::new(hook));
    }

    /// The object of `file` in OBJECTS and its alias, if stored.
    pub fn stored(&self, file: &TestFile) -> (Option<std::fs::Metadata>, Option<std::fs::Metadata>) {
        (
            std::fs::metadata(self.objects.join(file.verity.object_path())).ok(),
            std::fs::metadata(self.aliases.join(file.sha256.object_path())).ok(),
        )
    }

    /// Neither the object of `file` nor its alias exists.
    pub fn nothing_stored(&self, file: &TestFile) -> bool {
        matches!(self.stored(file), (None, None))
    }

    /// Unmounts everything, checking each step.
    pub fn unmount(mut self) {
        self.unmount_all(true);
    }

    fn unmount_all(&mut self, strict: bool) {
        self.fetcher.release_stuck();
        for path in [self.overlay.take(), self.meta.take()].into_iter().flatten() {
            let done = unmount(&path, false).or_else(|_| unmount(&path, true));
            if strict {
                done.unwrap();
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // The kernel keeps the mount of a dead server until unmounted.
            let done = unmount(&self.lazy_dir, false);
            if strict {
                done.unwrap();
            }
        }
        if let Some(lazy) = self.lazy.take() {
            let done = lazy.unmount();
            if strict {
                done.unwrap();
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.unmount_all(false);
        let left = mounts_under(self.dir.path());
        for path in &left {
            let _ = unmount(path, true);
        }
    }
}

/// Runs `work` on its own thread and waits at most `limit` for it.
pub fn bounded<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("no answer within {limit:?}"))
}

/// Reads `path` whole, on its own thread, bounded.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    bounded(Duration::from_secs(20), move || std::fs::read(path))
}

/// Pages of `path` in the page cache, by util-linux's fincore.
pub fn resident_pages(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--raw", "--output", "PAGES"])
        .arg(path)
        .output()
        .expect("run fincore");
    assert!(
        out.status.success(),
        "fincore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

/// Waits until `done` holds, at most `limit`.
pub fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// True when both are the same inode (a hard link).
pub fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.dev() == b.dev() && a.ino() == b.ino()
}

//! Input a container or an image can put in an upper dir must never crash
//! or hang Commit: directory chains deeper than a 2 MiB tokio worker stack
//! could recurse through, deeper than an EROFS image holds, FIFOs, names
//! swapped for symlinks while the commit reads them, xattrs composefs
//! reserves, very many and very large xattrs. Real store, real mounts (root).

mod common;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{mount, none, Mounted};
use rustix::fs::{mkdirat, openat, FileType, Mode, OFlags};
use strata_snapshotter::{ErrorKind, Mount, SnapshotError, Snapshotter};
use strata_store::Store;

fn open(store: &Path) -> Snapshotter {
    Snapshotter::open(Store::open(store).unwrap(), common::policy()).unwrap()
}

/// The upper dir behind what Prepare returned.
fn upper(mounts: &[Mount]) -> PathBuf {
    let m = &mounts[0];
    if m.kind == "bind" {
        return PathBuf::from(&m.source);
    }
    let dir = m.options.iter().find_map(|o| o.strip_prefix("upperdir=")).unwrap();
    PathBuf::from(dir)
}

fn dir_fd(path: &Path) -> OwnedFd {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap()
}

/// Makes `d/d/…/d` `depth` levels below `top` (through fds: the path is
/// longer than PATH_MAX) with a 600-byte file `f` at the bottom.
fn chain(top: &Path, depth: usize) {
    let mut at = dir_fd(top);
    for _ in 0..depth {
        mkdirat(&at, "d", Mode::from_raw_mode(0o755)).unwrap();
        at = openat(&at, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let f = openat(&at, "f", OFlags::CREATE | OFlags::WRONLY, Mode::from_raw_mode(0o644)).unwrap();
    rustix::io::write(&f, &[7u8; 600]).unwrap();
}

/// How deep `d/d/…` goes below `top`, and whether `f` is at the bottom.
fn chain_depth(top: &Path) -> (usize, bool) {
    let mut at = dir_fd(top);
    let mut depth = 0;
    while let Ok(next) = openat(&at, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
        at = next;
        depth += 1;
    }
    (
        depth,
        rustix::fs::statat(&at, "f", rustix::fs::AtFlags::empty()).is_ok(),
    )
}

/// Runs `work` on a thread with a tokio worker's 2 MiB stack.
fn on_worker_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(work)
        .unwrap()
        .join()
        .unwrap()
}

fn commit_on_worker_stack(sn: &std::sync::Arc<Snapshotter>, name: &str, key: &str) -> Result<(), SnapshotError> {
    let (sn, name, key) = (std::sync::Arc::clone(sn), name.to_owned(), key.to_owned());
    on_worker_stack(move || sn.commit(&name, &key, none()))
}

#[test]
fn chain_of_1500_commits_on_a_worker_stack_and_reads_back() {
    let dir = common::tempdir();
    let sn = std::sync::Arc::new(open(&dir.path().join("store")));
    let mounts = sn.prepare("a", "", none()).unwrap();
    chain(&upper(&mounts), 1500);
    // Read after the chain: the walk comes back to the root for it.
    std::fs::write(upper(&mounts).join("zz"), vec![9u8; 5000]).unwrap();
    commit_on_worker_stack(&sn, "c1", "a").unwrap();
    // A child reads the deep parent back from its image, merges, writes.
    let mounts = sn.prepare("b", "c1", none()).unwrap();
    std::fs::write(upper(&mounts).join("top"), b"top").unwrap();
    commit_on_worker_stack(&sn, "c2", "b").unwrap();
    let view = dir.path().join("view");
    let mounts = sn.view("v", "c2", none()).unwrap();
    let _m = Mounted(view.clone());
    mount(&mounts, &view);
    assert_eq!(chain_depth(&view), (1500, true));
    assert_eq!(std::fs::read(view.join("top")).unwrap(), b"top");
    assert_eq!(std::fs::read(view.join("zz")).unwrap(), vec![9u8; 5000]);
}

#[test]
fn chain_deeper_than_erofs_holds_is_failed_precondition() {
    let dir = common::tempdir();
    let sn = std::sync::Arc::new(open(&dir.path().join("store")));
    for (key, depth) in [("a", 3000), ("b", 2048)] {
        let mounts = sn.prepare(key, "", none()).unwrap();
        chain(&upper(&mounts), depth);
        let err = commit_on_worker_stack(&sn, &format!("c-{key}"), key).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("deeper than 2047 levels"), "{err}");
        // The active snapshot is whole and the snapshotter still answers;
        // its usage counts as deep as an image holds, following no symlink.
        assert_eq!(sn.stat(key).unwrap().kind, strata_snapshotter::Kind::Active);
        std::os::unix::fs::symlink("/", upper(&mounts).join("host")).unwrap();
        let usage = sn.usage(key).unwrap();
        assert!((2049..2100).contains(&usage.inodes), "{usage:?}");
    }
    // Exactly the limit commits.
    let mounts = sn.prepare("c", "", none()).unwrap();
    chain(&upper(&mounts), 2047);
    commit_on_worker_stack(&sn, "c-c", "c").unwrap();
    let view = dir.path().join("view");
    let mounts = sn.view("v", "c-c", none()).unwrap();
    let _m = Mounted(view.clone());
    mount(&mounts, &view);
    assert_eq!(chain_depth(&view), (2047, true));
}

/// Commit on another thread, failing the test if it takes over a minute
/// (a FIFO opened for reading would block it forever).
fn commit_in_time(sn: &std::sync::Arc<Snapshotter>, name: &str, key: &str) -> Result<(), SnapshotError> {
    let (sn, name, key) = (std::sync::Arc::clone(sn), name.to_owned(), key.to_owned());
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(sn.commit(&name, &key, none()));
    });
    result.recv_timeout(Duration::from_secs(60)).expect("commit hung")
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(rustix::fs::CWD, path, FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 1 << 17];
    match rustix::fs::lgetxattr(path, name, buf.as_mut_slice()) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

#[test]
fn fifos_and_user_overlay_xattrs_commit() {
    let dir = common::tempdir();
    let sn = std::sync::Arc::new(open(&dir.path().join("store")));
    let mounts = sn.prepare("a", "", none()).unwrap();
    let up = upper(&mounts);
    mkfifo(&up.join("fifo"));
    std::fs::create_dir(up.join("d")).unwrap();
    std::fs::write(up.join("d/f"), vec![1u8; 4000]).unwrap();
    for (path, name, value) in [
        ("d", "user.overlay.opaque", &b"y"[..]),
        ("d/f", "user.overlay.whiteout", b""),
        ("d/f", "user.overlay.whiteouts", b""),
        ("d/f", "user.overlay.origin", b"kept"),
        ("d", "user.other", b"kept too"),
    ] {
        rustix::fs::lsetxattr(up.join(path), name, value, rustix::fs::XattrFlags::empty()).unwrap();
    }
    commit_in_time(&sn, "c", "a").unwrap();
    let view = dir.path().join("view");
    let mounts = sn.view("v", "c", none()).unwrap();
    let _m = Mounted(view.clone());
    mount(&mounts, &view);
    let meta = std::fs::symlink_metadata(view.join("fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
    assert_eq!(std::fs::read(view.join("d/f")).unwrap(), vec![1u8; 4000]);
    assert_eq!(
        xattr(&view.join("d/f"), "user.overlay.origin").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(xattr(&view.join("d"), "user.other").as_deref(), Some(&b"kept too"[..]));
    assert_eq!(xattr(&view.join("d"), "user.overlay.opaque"), None);
    assert_eq!(xattr(&view.join("d/f"), "user.overlay.whiteout"), None);
}

/// A tmpfs (which takes thousands of xattrs and 64 KiB values, as ext4
/// without `ea_inode` does not) unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(path: PathBuf) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        strata_sys::mount_fs("tmpfs", &[], strata_sys::MountFlags::default(), &path).unwrap();
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = strata_sys::unmount(&self.0, true);
    }
}

#[test]
fn many_and_large_xattrs_commit_or_fail_cleanly() {
    let dir = common::tempdir();
    let fs = Tmpfs::new(dir.path().join("tmpfs"));
    let sn = std::sync::Arc::new(open(&fs.0.join("store")));
    // 5,000 xattrs on one file: more than an EROFS inode holds.
    let mounts = sn.prepare("many", "", none()).unwrap();
    let f = upper(&mounts).join("f");
    std::fs::write(&f, b"x").unwrap();
    for i in 0..5000 {
        rustix::fs::lsetxattr(&f, format!("user.x{i}"), b"v", rustix::fs::XattrFlags::empty()).unwrap();
    }
    let err = commit_in_time(&sn, "c-many", "many").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    assert!(err.to_string().contains("5000 xattrs"), "{err}");
    // A 64 KiB value, the kernel's maximum, is one byte over EROFS's.
    let mounts = sn.prepare("big", "", none()).unwrap();
    let f = upper(&mounts).join("f");
    std::fs::write(&f, b"x").unwrap();
    rustix::fs::lsetxattr(&f, "user.big", &vec![1u8; 65536], rustix::fs::XattrFlags::empty()).unwrap();
    let err = commit_in_time(&sn, "c-big", "big").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::FailedPrecondition, "{err}");
    // One byte less, and 200 smaller ones beside it, commit faithfully.
    let mounts = sn.prepare("fits", "", none()).unwrap();
    let f = upper(&mounts).join("f");
    std::fs::write(&f, b"x").unwrap();
    rustix::fs::lsetxattr(&f, "user.big", &vec![2u8; 65535], rustix::fs::XattrFlags::empty()).unwrap();
    for i in 0..200 {
        rustix::fs::lsetxattr(&f, format!("user.x{i}"), &[3u8; 100], rustix::fs::XattrFlags::empty()).unwrap();
    }
    commit_in_time(&sn, "c-fits", "fits").unwrap();
    // EROFS cannot be mounted from a tmpfs file: read the image instead.
    let images = fs.0.join("store/images");
    let trees: Vec<strata_tree::Tree> = files_below(&images)
        .iter()
        .filter_map(|p| strata_erofs::read_tree(&std::fs::read(p).unwrap()).ok())
        .collect();
    let leaf = trees
        .iter()
        .find_map(|t| match t.lookup(&[b"f".to_vec()]) {
            Some(strata_tree::Node::Leaf(id)) => Some(t.leaf(*id)),
            _ => None,
        })
        .unwrap();
    assert_eq!(leaf.stat.xattrs.get(&b"user.big"[..]), Some(&vec![2u8; 65535]));
    assert_eq!(leaf.stat.xattrs.get(&b"user.x199"[..]), Some(&vec![3u8; 100]));
}

#[test]
fn names_swapped_during_commits_never_lead_outside_or_block() {
    let dir = common::tempdir();
    let sn = std::sync::Arc::new(open(&dir.path().join("store")));
    // What a swapped-in symlink would point at, outside the upper dir.
    let secret_dir = dir.path().join("host");
    std::fs::create_dir(&secret_dir).unwrap();
    let secret_big = vec![0x5au8; 8192];
    let secret_small = b"host secret".to_vec();
    std::fs::write(secret_dir.join("big"), &secret_big).unwrap();
    std::fs::write(secret_dir.join("small"), &secret_small).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut outcomes = (0, 0);
    for round in 0..40 {
        let key = format!("a{round}");
        let mounts = sn.prepare(&key, "", none()).unwrap();
        let up = upper(&mounts);
        let racer = {
            let (up, host, stop) = (up.clone(), secret_dir.clone(), std::sync::Arc::clone(&stop));
            stop.store(false, std::sync::atomic::Ordering::Relaxed);
            std::thread::spawn(move || swap_names(&up, &host, &stop))
        };
        std::thread::sleep(Duration::from_millis(20));
        let result = commit_in_time(&sn, &format!("c{round}"), &key);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        racer.join().unwrap();
        match result {
            Ok(()) => outcomes.0 += 1,
            Err(e) => {
                assert_ne!(e.kind(), ErrorKind::Internal, "round {round}: {e}");
                outcomes.1 += 1;
                sn.remove(&key).unwrap();
                continue;
            }
        }
        let view = dir.path().join(format!("view{round}"));
        let mounts = sn.view(&format!("v{round}"), &format!("c{round}"), none()).unwrap();
        let _m = Mounted(view.clone());
        mount(&mounts, &view);
        // A body the racer changed between its hash and its move into the
        // store is left out of the store, and cannot be read.
        for file in files_below(&view) {
            let Ok(data) = std::fs::read(&file) else { continue };
            assert!(
                data != secret_big && data != secret_small,
                "{} holds host bytes",
                file.display()
            );
        }
    }
    let objects = sn.store().objects_path();
    let secret = strata_tree::Digest::of(&secret_big);
    assert!(
        !objects.join(secret.object_path()).exists(),
        "a host file entered the store"
    );
    eprintln!("commits: {} ok, {} refused", outcomes.0, outcomes.1);
}

/// Keeps swapping names in `up` until `stop`: a large file, a small file,
/// a directory and a FIFO each replaced by a symlink into `host`, then by a
/// FIFO, then by what it was.
fn swap_names(up: &Path, host: &Path, stop: &std::sync::atomic::AtomicBool) {
    let made = |name: &str, kind: u8| {
        let path = up.join(name);
        let _ = match kind {
            0 => std::fs::write(&path, vec![1u8; 8192]),
            1 => std::fs::write(&path, b"tiny"),
            2 => std::fs::create_dir(&path).and_then(|()| std::fs::write(path.join("in"), vec![2u8; 4096])),
            3 => rustix::fs::mknodat(rustix::fs::CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o644), 0)
                .map_err(Into::into),
            _ => std::os::unix::fs::symlink(host.join(if name.ends_with('s') { "small" } else { "big" }), &path),
        };
        path
    };
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (name, real) in [("big", 0), ("smalls", 1), ("dir", 2), ("fifo", 3)] {
            let target = up.join(name);
            let kind = [real, 4, 3][usize::try_from(i % 3).unwrap()];
            let tmp = made(&format!(".tmp-{name}-{i}"), kind);
            if kind == 2 || std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                let _ = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &tmp,
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::RenameFlags::EXCHANGE,
                );
                let _ = std::fs::remove_dir_all(&tmp).or_else(|_| std::fs::remove_file(&tmp));
            } else {
                let _ = std::fs::rename(&tmp, &target);
            }
        }
        i += 1;
    }
}

/// Every regular file below `top`, by path.
fn files_below(top: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![top.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let ft = entry.file_type().unwrap();
            if ft.is_dir() {
                pending.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Peak resident memory of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_million_entries_in_one_directory_commit() {
    const ENTRIES: usize = 1_000_000;
    let dir = common::tempdir();
    let sn = std::sync::Arc::new(open(&dir.path().join("store")));
    let mounts = sn.prepare("a", "", none()).unwrap();
    let up = upper(&mounts);
    std::fs::create_dir(up.join("huge")).unwrap();
    let at = dir_fd(&up.join("huge"));
    for i in 0..ENTRIES {
        let name = format!("entry-{i:07}");
        openat(
            &at,
            name.as_str(),
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
    }
    let before = peak_rss_kib();
    let started = std::time::Instant::now();
    commit_on_worker_stack(&sn, "c", "a").unwrap();
    let took = started.elapsed();
    let peak = peak_rss_kib();
    eprintln!("{ENTRIES} entries: commit {took:?}, peak RSS {before} -> {peak} KiB");
    // About 1 KiB per entry would be 1 GiB; the tree itself needs far less.
    assert!(peak < 1 << 20, "peak RSS {peak} KiB");
    // A child over it reads it back, merges and writes it again.
    sn.prepare("b", "c", none()).unwrap();
    commit_on_worker_stack(&sn, "c2", "b").unwrap();
}

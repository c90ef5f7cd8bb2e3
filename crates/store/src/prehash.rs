//! Hashing files while another process is still writing the tree they are in.
//!
//! containerd unpacks a layer into an `extract-` snapshot and only then calls
//! Commit, which needs every new file's digest. A [`Prehash`] watches that
//! upper dir with inotify during the unpack and hashes each file once its
//! writer closes it, on a thread of its own, so Commit mostly looks digests
//! up instead of reading files.
//!
//! A digest is kept per inode and is replaced or dropped by every later
//! event that can change the inode's content: a later close after writing
//! hashes it again, a bare modification (a truncate) drops it. The writer is
//! trusted not to write through a shared mapping after closing its fd.
//! Jobs find files by name when they run, so a name may point elsewhere by
//! then; the digest of the inode last hashed under a name is dropped when
//! that name is removed, renamed or replaced. Its inode may be freed then,
//! and its number taken by another file whose own events were spent on a
//! name pointing elsewhere. A directory renamed inside the tree moves names
//! the watch cannot follow: every digest is dropped.
//! Files the watch may have missed (the first entries of a directory made
//! before its watch was added) are simply absent: the caller hashes those
//! itself. If the kernel drops events (queue overflow) or a watch cannot be
//! added, every digest is dropped.
//!
//! Each hashed file's writeback is started at once, and every
//! [`FLUSH_EVERY_BYTES`] hashed a `syncfs` runs on a thread of its own (one
//! at a time): the unpack's data then reaches the disk while the writer is
//! still decompressing, and the sync Commit must make finds little left.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::fs::{Mode, OFlags};
use strata_tree::Digest;

use crate::hashing::hash_open_file;

/// Digests of files by `(device, inode)`, with the size that was hashed.
#[derive(Debug, Default)]
pub struct Prehashed {
    digests: HashMap<(u64, u64), (Digest, u64)>,
    /// `syncfs` calls made during the watch.
    pub early_flushes: usize,
}

impl Prehashed {
    /// The digest of the file `meta` describes, if it was hashed at this size.
    pub fn get(&self, meta: &std::fs::Metadata) -> Option<Digest> {
        self.lookup(meta.dev(), meta.ino(), meta.len())
    }

    /// The digest of inode `ino` on device `dev`, if it was hashed at `size`.
    pub fn lookup(&self, dev: u64, ino: u64, size: u64) -> Option<Digest> {
        match self.digests.get(&(dev, ino)) {
            Some((digest, hashed)) if *hashed == size => Some(*digest),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

enum Job {
    Hash(PathBuf),
    Forget(PathBuf),
    /// The name was removed, renamed or made anew.
    Unnamed(PathBuf),
    /// Events were lost: nothing hashed so far can be trusted.
    Lost,
}

/// A watch on one directory tree, hashing files as their writers close them.
pub struct Prehash {
    wake: Arc<OwnedFd>,
    finishing: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    hasher: Option<JoinHandle<Prehashed>>,
}

const WATCH: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::ONLYDIR);

/// Lowers the calling thread to the lowest priority: the work here only
/// saves Commit time if it uses cores the writer leaves idle; what is left
/// when Commit comes is hashed there on every core.
fn yield_to_the_writer() {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19);
}

/// Opens `rel` below `root` without following any symlink, so a tree that
/// changes under the watch can never lead it outside `root`.
fn open_beneath(root: &OwnedFd, rel: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    strata_sys::open_beneath(root.as_fd(), rel, flags)
}

/// The same inode as `fd`, through its `/proc/self/fd` link.
fn proc_path(fd: &OwnedFd) -> PathBuf {
    strata_sys::proc_path(fd.as_fd())
}

impl Prehash {
    /// Starts watching `root` and everything that appears below it.
    pub fn watch(root: &Path) -> std::io::Result<Prehash> {
        let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?;
        let root = Arc::new(rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let abort = Arc::new(AtomicBool::new(false));
        let finishing = Arc::new(AtomicBool::new(false));
        let (jobs, queued) = channel();
        let mut watches = Watches {
            inotify,
            root: Arc::clone(&root),
            dirs: HashMap::new(),
            jobs,
            lost: false,
        };
        watches.add_tree(PathBuf::from("."));
        if watches.lost {
            return Err(std::io::Error::other("cannot watch the directory tree"));
        }
        // The hasher first: if the reader cannot start, dropping its
        // `watches` hangs up on the hasher, which then ends.
        let hasher = {
            let (finishing, abort) = (Arc::clone(&finishing), Arc::clone(&abort));
            std::thread::Builder::new()
                .name("strata-prehash".into())
                .spawn(move || {
                    yield_to_the_writer();
                    hash_jobs(&root, &queued, &finishing, &abort)
                })?
        };
        // Not joined: see `stop`.
        let woken = Arc::clone(&wake);
        std::thread::Builder::new()
            .name("strata-prehash-watch".into())
            .spawn(move || {
                yield_to_the_writer();
                watches.run(&woken)
            })?;
        Ok(Prehash {
            wake,
            finishing,
            abort,
            hasher: Some(hasher),
        })
    }

    /// Stops watching and returns every digest still valid. Files still
    /// queued are left for the caller to hash (it can use every core). Only
    /// call it once the writer has closed its files.
    pub fn finish(mut self) -> Prehashed {
        self.finishing.store(true, Ordering::Relaxed);
        self.stop();
        self.hasher.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }

    /// [`Prehash::finish`], but hashes every file still queued first.
    #[cfg(test)]
    fn finish_queued(mut self) -> Prehashed {
        self.stop();
        self.hasher.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }

    /// Wakes the reader to read the last events and stop. It is not
    /// waited for: the hasher ends once the reader has sent its last job,
    /// and the reader closes the inotify fd after that, which waits for an
    /// RCU grace period (15 ms here) no one needs to wait for.
    fn stop(&mut self) {
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
    }
}

impl Drop for Prehash {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
        self.stop();
        if let Some(hasher) = self.hasher.take() {
            let _ = hasher.join();
        }
    }
}

/// How long events gather before they are read.
const BATCH: rustix::event::Timespec = rustix::event::Timespec {
    tv_sec: 0,
    tv_nsec: 20_000_000,
};

struct Watches {
    inotify: OwnedFd,
    root: Arc<OwnedFd>,
    /// Watched directories, relative to the root.
    dirs: HashMap<i32, PathBuf>,
    jobs: Sender<Job>,
    lost: bool,
}

impl Watches {
    /// Reads events until `wake` fires, then reads what is left and stops.
    /// Events are read in batches, [`BATCH`] apart: a writer's many writes
    /// to one file then merge into one queued event, and this thread wakes
    /// rarely instead of once per write (on two cores that was time taken
    /// from the writer).
    fn run(mut self, wake: &OwnedFd) {
        self.read_until_woken(wake);
        // The hasher's last job first, then the watches' teardown.
        let Watches { inotify, jobs, .. } = self;
        drop(jobs);
        drop(inotify);
    }

    fn read_until_woken(&mut self, wake: &OwnedFd) {
        let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 64 * 1024];
        loop {
            let mut fds = [
                PollFd::new(&self.inotify, PollFlags::IN),
                PollFd::new(wake, PollFlags::IN),
            ];
            if poll(&mut fds, None).is_err() {
                self.lose();
                return;
            }
            let mut stopping = !fds[1].revents().is_empty();
            if !stopping {
                let mut wake_only = [PollFd::new(wake, PollFlags::IN)];
                stopping = poll(&mut wake_only, Some(&BATCH)).is_ok_and(|n| n > 0);
            }
            self.read_events(&mut buf);
            if stopping || self.lost {
                return;
            }
        }
    }

    fn read_events(&mut self, buf: &mut [std::mem::MaybeUninit<u8>]) {
        let mut last_modified: Option<PathBuf> = None;
        let mut found = Vec::new();
        let mut reader = inotify::Reader::new(self.inotify.as_fd(), buf);
        loop {
            let event = match reader.next() {
                Ok(event) => event,
                Err(rustix::io::Errno::WOULDBLOCK) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => {
                    found.push(Found::Lost);
                    break;
                }
            };
            let flags = event.events();
            if flags.contains(ReadFlags::QUEUE_OVERFLOW) {
                found.push(Found::Lost);
                break;
            }
            if flags.contains(ReadFlags::IGNORED) {
                found.push(Found::Gone(event.wd()));
                continue;
            }
            let (Some(dir), Some(name)) = (self.dirs.get(&event.wd()), event.file_name()) else {
                continue;
            };
            let path = dir.join(OsStr::from_bytes(name.to_bytes()));
            if flags.contains(ReadFlags::ISDIR) {
                if flags.contains(ReadFlags::MOVED_FROM) {
                    found.push(Found::Lost);
                    break;
                }
                if flags.intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO) {
                    found.push(Found::Dir(path));
                }
            } else if flags.intersects(ReadFlags::CLOSE_WRITE | ReadFlags::MOVED_TO) {
                last_modified = None;
                found.push(Found::File(path));
            } else if flags.intersects(ReadFlags::DELETE | ReadFlags::MOVED_FROM | ReadFlags::CREATE) {
                last_modified = None;
                found.push(Found::Unnamed(path));
            } else if flags.contains(ReadFlags::MODIFY) && last_modified.as_ref() != Some(&path) {
                last_modified = Some(path.clone());
                found.push(Found::Modified(path));
            }
        }
        for item in found {
            match item {
                Found::Lost => self.lose(),
                Found::Gone(wd) => {
                    self.dirs.remove(&wd);
                }
                Found::Dir(path) => self.add_tree(path),
                Found::File(path) => self.send(Job::Hash(path)),
                Found::Modified(path) => self.send(Job::Forget(path)),
                Found::Unnamed(path) => self.send(Job::Unnamed(path)),
            }
        }
    }

    /// Watches `top` and every directory below it, and queues the files
    /// already there (their writers may have closed them before the watch).
    fn add_tree(&mut self, top: PathBuf) {
        let mut pending = vec![top];
        while let Some(dir) = pending.pop() {
            if self.lost {
                return;
            }
            // Gone or replaced before the watch: nothing to hash there.
            let Ok(fd) = open_beneath(&self.root, &dir, OFlags::RDONLY | OFlags::DIRECTORY) else {
                continue;
            };
            match inotify::add_watch(&self.inotify, proc_path(&fd), WATCH) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir.clone());
                }
                Err(_) => {
                    self.lose();
                    return;
                }
            }
            let Ok(entries) = rustix::fs::Dir::read_from(&fd) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                match entry.file_type() {
                    rustix::fs::FileType::Directory => pending.push(dir.join(name)),
                    rustix::fs::FileType::RegularFile => self.send(Job::Hash(dir.join(name))),
                    _ => {}
                }
            }
        }
    }

    fn lose(&mut self) {
        self.lost = true;
        self.send(Job::Lost);
    }

    fn send(&self, job: Job) {
        let _ = self.jobs.send(job);
    }
}

enum Found {
    Lost,
    Gone(i32),
    Dir(PathBuf),
    File(PathBuf),
    Modified(PathBuf),
    Unnamed(PathBuf),
}

/// Runs jobs in order until the watcher hangs up; a later job for an inode
/// always wins over an earlier one. Once `finishing`, a file still to hash
/// only loses its old digest.
fn hash_jobs(root: &OwnedFd, queued: &Receiver<Job>, finishing: &AtomicBool, abort: &AtomicBool) -> Prehashed {
    let mut out = Prehashed::default();
    // The inode each name was last hashed as.
    let mut named: HashMap<PathBuf, (u64, u64)> = HashMap::new();
    let mut lost = false;
    let mut flush = EarlyFlush::start(root);
    for job in queued {
        if abort.load(Ordering::Relaxed) {
            return Prehashed::default();
        }
        let rel = match &job {
            Job::Lost => {
                lost = true;
                out.digests.clear();
                continue;
            }
            _ if lost => continue,
            Job::Hash(rel) | Job::Forget(rel) | Job::Unnamed(rel) => rel,
        };
        if let Some(inode) = named.remove(rel) {
            out.digests.remove(&inode);
        }
        match job {
            Job::Hash(rel) if !finishing.load(Ordering::Relaxed) => {
                if let Some((inode, bytes)) = hash_one(root, &rel, &mut out) {
                    named.insert(rel, inode);
                    if let Some(flush) = &mut flush {
                        flush.add(bytes);
                    }
                }
            }
            Job::Hash(rel) | Job::Forget(rel) => {
                if let Ok(stat) = open_beneath(root, &rel, OFlags::PATH).and_then(|fd| Ok(rustix::fs::fstat(fd)?)) {
                    out.digests.remove(&(stat.st_dev, stat.st_ino));
                }
            }
            Job::Unnamed(_) | Job::Lost => {}
        }
    }
    out.early_flushes = flush.map_or(0, EarlyFlush::finish);
    out
}

/// Hashes one regular file below `root`. Anything else there (a symlink,
/// a device, a fifo, or nothing) is left alone: opening a device could
/// have side effects, so the file is looked at through an `O_PATH` handle
/// first. Returns the inode hashed and its bytes.
fn hash_one(root: &OwnedFd, rel: &Path, out: &mut Prehashed) -> Option<((u64, u64), u64)> {
    let Ok(strata_sys::Opened::File(mut file, stat)) = strata_sys::open_regular(root.as_fd(), rel) else {
        return None;
    };
    let hashed = hash_open_file(&mut file, rel).ok()?;
    let inode = (stat.st_dev, stat.st_ino);
    out.digests.insert(inode, hashed);
    let _ = strata_sys::start_writeback(file.as_fd());
    Some((inode, hashed.1))
}

/// Bytes hashed between two early `syncfs` calls.
const FLUSH_EVERY_BYTES: u64 = 32 << 20;

/// `syncfs` of the watched filesystem on a thread of its own, asked for
/// every [`FLUSH_EVERY_BYTES`] hashed. A request made while one runs is
/// dropped. Errors are left to the sync Commit makes.
struct EarlyFlush {
    requests: std::sync::mpsc::SyncSender<()>,
    since_last: u64,
    flusher: JoinHandle<usize>,
}

impl EarlyFlush {
    /// `None` if the root cannot be opened for `syncfs` (an `O_PATH` fd
    /// cannot) or no thread can start: Commit's sync does it all then.
    fn start(root: &OwnedFd) -> Option<EarlyFlush> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(root, ".", flags, Mode::empty()).ok()?;
        let (requests, received) = std::sync::mpsc::sync_channel::<()>(0);
        let flusher = std::thread::Builder::new()
            .name("strata-prehash-flush".into())
            .spawn(move || received.iter().filter(|()| rustix::fs::syncfs(&fd).is_ok()).count())
            .ok()?;
        Some(EarlyFlush {
            requests,
            since_last: 0,
            flusher,
        })
    }

    fn add(&mut self, bytes: u64) {
        self.since_last = self.since_last.saturating_add(bytes);
        if self.since_last >= FLUSH_EVERY_BYTES && self.requests.try_send(()).is_ok() {
            self.since_last = 0;
        }
    }

    /// The flushes made. Waits for one still running: the caller's sync
    /// would wait for it anyway.
    fn finish(self) -> usize {
        drop(self.requests);
        self.flusher.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;

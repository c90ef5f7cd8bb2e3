//! The FUSE filesystem: answers from the table, opens by single-flight
//! fetch, replies in passthrough mode.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyXattr, Request,
};
use strata_tree::Digest;

use crate::counters::{bump, Counters, Counts, COUNTERS_XATTR};
use crate::fetch::{FetchError, ObjectFetcher};
use crate::flights::{Flights, GaveUp, Landing};
use crate::journal::{Journal, Record, Replayed};
use crate::table::{dir_ino, file_name, parse_dir_name, parse_file_name, Node, Table, ROOT_INO};

/// Directories never change, so the kernel may keep them long.
const DIR_TTL: Duration = Duration::from_secs(3600);

/// What the kernel said about passthrough in its INIT request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Passthrough {
    NotYetKnown = 0,
    Offered = 1,
    Missing = 2,
}

/// State shared by the FUSE threads, the flights and the caller's handle.
pub(crate) struct Shared {
    pub table: Mutex<Table<BackingId>>,
    pub counters: Counters,
    passthrough: AtomicU8,
    entry_ttl: Duration,
    /// The session's /dev/fuse (a duplicate of fuser's fd), for backing
    /// ids registered here, whose numbers the journal records.
    device: OwnedFd,
    journal: Option<Journal>,
}

impl Shared {
    pub fn new(entry_ttl: Duration, device: OwnedFd, journal: Option<Journal>) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            counters: Counters::default(),
            passthrough: AtomicU8::new(Passthrough::NotYetKnown as u8),
            entry_ttl,
            device,
            journal,
        }
    }

    /// Takes over the inodes and backing ids a predecessor's journal
    /// lists, and the passthrough it negotiated.
    pub fn restore(&self, replayed: &Replayed) {
        let offered = replayed
            .session
            .is_some_and(|(_, _, flags)| InitFlags::from_bits_retain(flags).contains(InitFlags::FUSE_PASSTHROUGH));
        let state = if offered {
            Passthrough::Offered
        } else {
            Passthrough::Missing
        };
        self.passthrough.store(state as u8, Ordering::Release);
        let mut table = self.table();
        table.number_past(replayed.highest_ino);
        for (&ino, inode) in &replayed.inodes {
            table.restore(ino, inode.name, inode.size, inode.backing);
        }
    }

    /// Appends `record` to the journal, if there is one; false if it
    /// could not be written.
    fn record(&self, record: Record) -> bool {
        self.journal.as_ref().is_none_or(|journal| journal.append(record))
    }

    /// Registers `file` as the backing of `ino`, recorded before the reply.
    fn register_backing(&self, ino: u64, reply: &ReplyOpen, file: &File) -> Option<BackingId> {
        match BackingId::create_raw(&self.device, file) {
            Ok(id) => {
                let backing = strata_sys::adopt_fuse_backing(reply, id);
                if !self.record(Record::Backing { ino, id }) {
                    // A successor would not know it: closed (on drop), and
                    // the open gets EIO.
                    return None;
                }
                Some(backing)
            }
            Err(e) => {
                tracing::warn!("lazy: registering inode {ino}'s object as a passthrough backing file: {e}");
                None
            }
        }
    }

    pub fn table(&self) -> MutexGuard<'_, Table<BackingId>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn passthrough(&self) -> Passthrough {
        match self.passthrough.load(Ordering::Acquire) {
            1 => Passthrough::Offered,
            2 => Passthrough::Missing,
            _ => Passthrough::NotYetKnown,
        }
    }
}

/// An open waiting for its name's fetch.
pub(crate) struct OpenWaiter {
    reply: ReplyOpen,
    ino: u64,
}

type Outcome = Result<File, FetchError>;

pub(crate) struct LazyFs {
    shared: Arc<Shared>,
    fetcher: Arc<dyn ObjectFetcher>,
    flights: Flights<OpenWaiter, Outcome>,
}

impl LazyFs {
    pub fn new(shared: Arc<Shared>, fetcher: Arc<dyn ObjectFetcher>, fetch_timeout: Duration) -> Self {
        let landing = Arc::new(Answerer { shared: shared.clone() });
        Self {
            shared,
            fetcher,
            flights: Flights::new(fetch_timeout, landing),
        }
    }

    fn attr(&self, ino: u64, node: Node) -> FileAttr {
        let (kind, perm, size, nlink) = match node {
            Node::Root | Node::Dir(_) => (FileType::Directory, 0o555, 0, 2),
            Node::File { size, .. } => (FileType::RegularFile, 0o444, size, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// A LOOKUP of file `digest`, listed or known to the store's rows:
    /// its inode, recorded in the journal (under the table's lock, so the
    /// journal's order is the table's) before the kernel learns it. EIO
    /// where it cannot be recorded: a successor would not know it.
    fn look_up_file(&self, digest: Digest) -> Result<Option<(u64, Node)>, Errno> {
        let mut table = self.shared.table();
        let mut found = table.lookup(&digest);
        if found.is_none() {
            // A DB read: not under the table's lock.
            drop(table);
            let Some(size) = self.fetcher.unlisted_size(&digest) else {
                return Ok(None);
            };
            table = self.shared.table();
            table.insert(digest, size);
            found = table.lookup(&digest);
        }
        let Some(found) = found else {
            return Ok(None);
        };
        let (ino, size) = (found.ino, found.size);
        if found.first_reference
            && !self.shared.record(Record::Known {
                ino,
                size,
                name: digest,
            })
        {
            let _unreferenced = table.forget(ino, 1);
            return Err(Errno::EIO);
        }
        Ok(Some((ino, Node::File { name: digest, size })))
    }

    fn ttl(&self, node: Node) -> Duration {
        match node {
            Node::File { .. } => self.shared.entry_ttl,
            Node::Root | Node::Dir(_) => DIR_TTL,
        }
    }
}

/// Opens the stored object, or fetches it; checks its size. Runs on a
/// flight's fetch thread.
fn fetch_object(fetcher: &dyn ObjectFetcher, counters: &Counters, name: &Digest, size: u64) -> Outcome {
    let sized = |file: File| -> Outcome {
        let actual = file
            .metadata()
            .map_err(|source| FetchError::Io { name: *name, source })?
            .len();
        if actual != size {
            return Err(FetchError::WrongSize {
                name: *name,
                expected: size,
                actual,
            });
        }
        Ok(file)
    };
    if let Some(file) = fetcher.open_stored(name)? {
        return sized(file);
    }
    bump(&counters.fetches_started, 1);
    match fetcher.fetch(name).and_then(sized) {
        Ok(file) => {
            bump(&counters.bytes_fetched, size);
            Ok(file)
        }
        Err(e) => {
            bump(&counters.fetches_failed, 1);
            Err(e)
        }
    }
}

/// Answers the opens of a flight.
struct Answerer {
    shared: Arc<Shared>,
}

impl Landing<OpenWaiter, Outcome> for Answerer {
    fn landed(&self, name: &Digest, outcome: Outcome, waiters: Vec<OpenWaiter>) {
        let file = match outcome {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!("lazy: {e}; {} open(s) of {name} get EIO", waiters.len());
                bump(&self.shared.counters.opens_failed, waiters.len() as u64);
                waiters.into_iter().for_each(|w| w.reply.error(Errno::EIO));
                return;
            }
        };
        let mut table = self.shared.table();
        for waiter in waiters {
            let backing = table.keep_backing(waiter.ino, || {
                self.shared.register_backing(waiter.ino, &waiter.reply, &file)
            });
            match backing {
                Some(backing) => {
                    bump(&self.shared.counters.opens_passthrough, 1);
                    reply_passthrough(waiter.reply, waiter.ino, backing);
                }
                None => {
                    bump(&self.shared.counters.opens_failed, 1);
                    waiter.reply.error(Errno::EIO);
                }
            }
        }
    }

    fn gave_up(&self, name: &Digest, waiters: Vec<OpenWaiter>, why: GaveUp) {
        tracing::warn!("lazy: {} open(s) of {name} get EIO: {why:?}", waiters.len());
        let counter = match why {
            GaveUp::Timeout => &self.shared.counters.opens_timed_out,
            GaveUp::NoThread => &self.shared.counters.opens_failed,
        };
        bump(counter, waiters.len() as u64);
        waiters.into_iter().for_each(|w| w.reply.error(Errno::EIO));
    }
}

fn reply_passthrough(reply: ReplyOpen, ino: u64, backing: &BackingId) {
    reply.opened_passthrough(FileHandle(ino), FopenFlags::FOPEN_NOFLUSH, backing);
}

impl Filesystem for LazyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let offered = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
        let state = if offered {
            Passthrough::Offered
        } else {
            Passthrough::Missing
        };
        self.shared.passthrough.store(state as u8, Ordering::Release);
        let abi = config.kernel_abi();
        let _recorded = self.shared.record(Record::Session {
            major: abi.0,
            minor: abi.1,
            flags: config.capabilities().bits(),
        });
        if !offered {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "the kernel offers no FUSE passthrough",
            ));
        }
        config
            .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
            .map_err(|_| std::io::Error::other("the kernel refused FUSE_PASSTHROUGH"))?;
        // Backing files (objects) sit on a plain filesystem, and overlayfs
        // stacks on LAZY: depth 1.
        config
            .set_max_stack_depth(1)
            .map_err(|_| std::io::Error::other("stack depth 1 refused"))?;
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let table_node = self.shared.table().node(parent.0);
        match table_node {
            Some(Node::Root) => match parse_dir_name(name) {
                Some(dir) => reply.entry(&DIR_TTL, &self.attr(dir_ino(dir), Node::Dir(dir)), Generation(0)),
                None => reply.error(Errno::ENOENT),
            },
            Some(Node::Dir(dir)) => {
                bump(&self.shared.counters.lookups, 1);
                let found = match parse_file_name(dir, name) {
                    Some(digest) => self.look_up_file(digest),
                    None => Ok(None),
                };
                match found {
                    Ok(Some((ino, node))) => reply.entry(&self.ttl(node), &self.attr(ino, node), Generation(0)),
                    Ok(None) => {
                        bump(&self.shared.counters.lookups_unknown, 1);
                        reply.error(Errno::ENOENT);
                    }
                    Err(errno) => reply.error(errno),
                }
            }
            Some(Node::File { .. }) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Only the root's [`COUNTERS_XATTR`]; no file has xattrs.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if ino.0 != ROOT_INO || name != COUNTERS_XATTR {
            bump(&self.shared.counters.getxattrs, 1);
            return reply.error(Errno::NO_XATTR);
        }
        let text = self.shared.counters.snapshot().to_text();
        let len = u32::try_from(text.len()).expect("a few hundred bytes");
        if size == 0 {
            // A bound, not the length: the counters may grow before the
            // caller reads them with a buffer of this size.
            reply.size(u32::try_from(Counts::text_bound()).expect("a few hundred bytes"));
        } else if size < len {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(text.as_bytes());
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let backing = {
            let mut table = self.shared.table();
            let forgot = table.forget(ino.0, nlookup);
            // Under the table's lock: the journal's order is the table's.
            if forgot.backing.is_some() {
                self.shared.record(Record::BackingClosed { ino: ino.0 });
            }
            if forgot.evicted {
                self.shared.record(Record::Forgotten { ino: ino.0 });
            }
            forgot.backing
        };
        // The backing is closed (an ioctl) outside the table's lock.
        drop(backing);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let node = self.shared.table().node(ino.0);
        match node {
            Some(node) => reply.attr(&self.ttl(node), &self.attr(ino.0, node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (name, size) = match self.shared.table().node(ino.0) {
            Some(Node::File { name, size }) => (name, size),
            Some(_) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        bump(&self.shared.counters.opens, 1);
        if self.shared.passthrough() != Passthrough::Offered {
            return reply.error(Errno::EIO);
        }
        {
            let mut table = self.shared.table();
            if table.backing(ino.0).is_none() {
                if let Some(id) = table.take_restored_backing(ino.0) {
                    // A predecessor's backing, still registered: the kernel
                    // refuses a second one while its files are open.
                    let adopted = strata_sys::adopt_fuse_backing(&reply, id);
                    table.keep_backing(ino.0, || Some(adopted));
                }
            }
            if let Some(backing) = table.backing(ino.0) {
                bump(&self.shared.counters.opens_passthrough, 1);
                return reply_passthrough(reply, ino.0, backing);
            }
        }
        let (fetcher, shared) = (self.fetcher.clone(), self.shared.clone());
        self.flights.join(name, OpenWaiter { reply, ino: ino.0 }, move || {
            fetch_object(fetcher.as_ref(), &shared.counters, &name, size)
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Every open is a passthrough open, so the kernel reads the backing
        // file itself; a READ here is a bug, refused loudly.
        bump(&self.shared.counters.reads, 1);
        tracing::error!(
            "lazy: READ of inode {} ({size} bytes at {offset}) reached user space",
            ino.0
        );
        reply.error(Errno::EIO);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries: Vec<(u64, FileType, String)> = {
            let table = self.shared.table();
            let listed = match table.node(ino.0) {
                Some(Node::Root) => (0..=255u8)
                    .map(|d| (dir_ino(d), FileType::Directory, format!("{d:02x}")))
                    .collect(),
                Some(Node::Dir(dir)) => table
                    .dir_entries(dir)
                    .into_iter()
                    .map(|(ino, name)| (ino, FileType::RegularFile, file_name(&name)))
                    .collect(),
                Some(Node::File { .. }) => return reply.error(Errno::ENOTDIR),
                None => return reply.error(Errno::ENOENT),
            };
            // The root and the `XX` directories all have the root as parent.
            let mut all = vec![
                (ino.0, FileType::Directory, ".".to_owned()),
                (ROOT_INO, FileType::Directory, "..".to_owned()),
            ];
            all.extend::<Vec<_>>(listed);
            all
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (index, (entry_ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            let next = u64::try_from(index + 1).expect("index fits");
            if reply.add(INodeNo(entry_ino), next, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

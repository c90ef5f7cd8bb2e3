//! Mounting LAZY: strata opens /dev/fuse and mounts it itself (no
//! fusermount, no libfuse), so it holds the device fd ([`LazyDevice`]) and
//! can hand it over; fuser then serves the session from that fd, answering
//! the kernel's INIT (`Session::from_fd`) or, for a successor of a killed
//! server, taking the initialized session over
//! (`Session::from_fd_initialized`, the journal's inodes, and a resend of
//! the requests the dead server had read but not answered).

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, InitFlags, Session, SessionACL, Version};
use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
use strata_sys::{mount_fs, unmount, FsOption, MountError, MountFlags};
use strata_tree::Digest;

use crate::counters::Counts;
use crate::fetch::ObjectFetcher;
use crate::fs::{LazyFs, Passthrough, Shared};
use crate::journal::{Journal, JournalError};

/// The filesystem type LAZY shows in mountinfo (`fuse.strata-lazy`).
pub const SUBTYPE: &str = "strata-lazy";

/// How long an unmount waits for the session's threads to end before it
/// aborts the connection.
const SESSION_END_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct LazyConfig {
    /// How long an open waits for its fetch before it gets EIO.
    pub fetch_timeout: Duration,
    /// How long the kernel may cache a file name's entry and attributes.
    /// When it passes, the kernel asks again, and a name no longer listed
    /// is gone.
    pub entry_ttl: Duration,
    /// Threads reading FUSE requests. Fetches never run on them.
    pub threads: usize,
}

impl Default for LazyConfig {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(30),
            entry_ttl: Duration::from_secs(1),
            threads: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    #[error("opening /dev/fuse: {0}")]
    Device(#[source] std::io::Error),
    #[error("mounting LAZY: {0}")]
    Mount(#[from] MountError),
    #[error("this kernel offers no FUSE passthrough (Linux 6.9+, CONFIG_FUSE_PASSTHROUGH); lazy pulls need it")]
    NoPassthrough,
    #[error("FUSE handshake on {}: {source}", target.display())]
    Handshake {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the device number of {}: {source}", target.display())]
    Connection {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the FUSE session's threads: {0}")]
    Thread(#[source] std::io::Error),
    #[error("duplicating the /dev/fuse fd: {0}")]
    Duplicate(#[source] std::io::Error),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the FUSE session of {} ended with an error: {source}", target.display())]
    Session {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the FUSE session of {} did not end after its unmount", target.display())]
    SessionStuck { target: PathBuf },
}

impl LazyError {
    /// True when this kernel or machine cannot serve LAZY at all, so the
    /// caller should pull images whole instead.
    pub fn is_unsupported(&self) -> bool {
        match self {
            LazyError::NoPassthrough => true,
            LazyError::Device(e) => e.kind() == std::io::ErrorKind::NotFound,
            LazyError::Mount(MountError::NoFilesystem { .. }) => true,
            _ => false,
        }
    }
}

/// The caller's side of a mounted LAZY: the table of names it serves and
/// its counters. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct LazyHandle {
    shared: Arc<Shared>,
}

impl LazyHandle {
    /// Serves `name` (a missing object of `size` bytes). False if it was
    /// served already.
    pub fn insert(&self, name: Digest, size: u64) -> bool {
        self.shared.table().insert(name, size)
    }

    /// Stops serving `name` to new lookups; dentries the kernel holds keep
    /// opening it. False if it was not served.
    pub fn remove(&self, name: &Digest) -> bool {
        self.shared.table().remove(name)
    }

    pub fn is_listed(&self, name: &Digest) -> bool {
        self.shared.table().is_listed(name)
    }

    /// How many names are served.
    pub fn listed(&self) -> usize {
        self.shared.table().listed_count()
    }

    pub fn counts(&self) -> Counts {
        self.shared.counters.snapshot()
    }
}

/// A mounted LAZY filesystem. Unmounted by [`LazyMount::unmount`] or on
/// drop; overlays stacked on it should be unmounted first.
pub struct LazyMount {
    target: PathBuf,
    handle: LazyHandle,
    session: Option<BackgroundSession>,
    /// The connection's number under /sys/fs/fuse/connections.
    connection: u32,
}

impl LazyMount {
    /// Mounts an empty LAZY on `target` (an existing directory) and serves
    /// it in this process, asking `fetcher` for missing objects. Fails with
    /// [`LazyError::NoPassthrough`] where the kernel lacks passthrough.
    pub fn mount(target: &Path, fetcher: Arc<dyn ObjectFetcher>, config: &LazyConfig) -> Result<Self, LazyError> {
        Self::serve(LazyDevice::mount(target)?, None, fetcher, config).inspect_err(|_| {
            if let Err(e) = unmount(target, true) {
                tracing::warn!("lazy: unmounting {} after a failed start: {e}", target.display());
            }
        })
    }

    /// Serves `device`'s session. With a `journal` (see
    /// [`create_journal`](crate::create_journal)) every fact a successor
    /// needs is recorded; a journal that a predecessor already wrote makes
    /// this a take-over of its initialized session. It never unmounts: the
    /// device's owner does.
    pub fn serve(
        device: LazyDevice,
        journal: Option<OwnedFd>,
        fetcher: Arc<dyn ObjectFetcher>,
        config: &LazyConfig,
    ) -> Result<Self, LazyError> {
        let LazyDevice { fd, connection, target } = device;
        let (journal, replayed) = match journal {
            Some(fd) => {
                let (journal, replayed) = Journal::open(fd)?;
                (Some(journal), Some(replayed))
            }
            None => (None, None),
        };
        let taken_over = replayed.as_ref().and_then(|r| r.session);
        let duplicate = fd.try_clone().map_err(LazyError::Duplicate)?;
        let shared = Arc::new(Shared::new(config.entry_ttl, duplicate, journal));
        let fs = LazyFs::new(shared.clone(), fetcher, config.fetch_timeout);
        let mut session_config = fuser::Config::default();
        session_config.acl = SessionACL::All;
        session_config.n_threads = Some(config.threads.max(1));
        let session = match (taken_over, &replayed) {
            (Some((major, minor, flags)), Some(replayed)) => {
                shared.restore(replayed);
                // Before this server reads any request: the queue then
                // holds only what the predecessor read and left.
                ask_for_resend(fd.as_fd(), flags);
                let session =
                    Session::from_fd_initialized(fs, fd, SessionACL::All, session_config, Version(major, minor));
                let session = session.spawn().map_err(LazyError::Thread)?;
                tracing::info!(
                    "lazy: took the session of {} over ({} inodes restored)",
                    target.display(),
                    replayed.inodes.len()
                );
                session
            }
            _ => {
                if replayed.is_some() {
                    // A keeper's session with no INIT recorded: a server
                    // killed after reading the INIT left it unanswered, so
                    // have it sent again (nothing pending: no effect; a
                    // kernel without resend refuses, which is fine).
                    if let Err(e) = write_resend(fd.as_fd()) {
                        tracing::debug!("lazy: resend before the handshake: {e}");
                    }
                }
                let session =
                    Session::from_fd(fs, fd, SessionACL::All, session_config).map_err(|source| {
                        match shared.passthrough() {
                            Passthrough::Missing => LazyError::NoPassthrough,
                            _ => LazyError::Handshake {
                                target: target.clone(),
                                source,
                            },
                        }
                    })?;
                session.spawn().map_err(LazyError::Thread)?
            }
        };
        Ok(Self {
            target,
            handle: LazyHandle { shared },
            session: Some(session),
            connection,
        })
    }

    pub fn handle(&self) -> LazyHandle {
        self.handle.clone()
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Whether the kernel ended the session: LAZY was unmounted and no
    /// overlay holds its superblock any more.
    pub fn session_ended(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts and waits for the session's threads. Flights still under
    /// way end with their fetches.
    pub fn unmount(mut self) -> Result<(), LazyError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), LazyError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match unmount(&self.target, false) {
            Err(MountError::Busy { .. }) => unmount(&self.target, true)?,
            other => other?,
        }
        // The unmount ends the connection, unless an overlay still holds
        // LAZY's superblock: then abort the connection.
        if !wait_until(SESSION_END_WAIT, || session.guard.is_finished()) {
            abort_connection(self.connection);
            if !wait_until(SESSION_END_WAIT, || session.guard.is_finished()) {
                return Err(LazyError::SessionStuck {
                    target: self.target.clone(),
                });
            }
        }
        session.join().map_err(|source| LazyError::Session {
            target: self.target.clone(),
            source,
        })
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!("lazy: {e}");
        }
    }
}

/// A mounted LAZY's FUSE connection: the /dev/fuse fd that serves it, and
/// its number under /sys/fs/fuse/connections. Whoever holds the fd keeps
/// the connection alive, served or not.
#[derive(Debug)]
pub struct LazyDevice {
    fd: OwnedFd,
    connection: u32,
    target: PathBuf,
}

impl LazyDevice {
    /// Opens /dev/fuse and mounts it on `target` (an existing directory).
    /// No request is answered until a [`LazyMount::serve`] of it.
    pub fn mount(target: &Path) -> Result<Self, LazyError> {
        let fd: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(LazyError::Device)?
            .into();
        let flags = MountFlags {
            read_only: true,
            nodev: true,
        };
        mount_fs("fuse", &mount_options(fd.as_raw_fd()), flags, target)?;
        // Any request to LAZY waits for a server, so this stat must not ask
        // one: DONT_SYNC takes the root's attributes as the mount set them.
        let connection = statx(CWD, target, AtFlags::STATX_DONT_SYNC, StatxFlags::BASIC_STATS)
            .map(|st| st.stx_dev_minor)
            .map_err(|e| {
                if let Err(e) = unmount(target, true) {
                    tracing::warn!("lazy: unmounting {} after a failed start: {e}", target.display());
                }
                LazyError::Connection {
                    target: target.to_owned(),
                    source: e.into(),
                }
            })?;
        Ok(Self {
            fd,
            connection,
            target: target.to_owned(),
        })
    }

    /// A device another process mounted and passed on (its fd inherited).
    pub fn from_parts(fd: OwnedFd, connection: u32, target: PathBuf) -> Self {
        Self { fd, connection, target }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn connection(&self) -> u32 {
        self.connection
    }

    /// Ends the connection at once, served or not: every request waiting
    /// and every later one fails (ENOTCONN), so nothing waits on a server
    /// that will not come.
    pub fn abort(&self) {
        abort_connection(self.connection);
    }

    pub fn try_clone(&self) -> Result<Self, LazyError> {
        Ok(Self {
            fd: self.fd.try_clone().map_err(LazyError::Duplicate)?,
            connection: self.connection,
            target: self.target.clone(),
        })
    }
}

/// Aborts FUSE connection `connection` through fusectl (where it is
/// mounted, as systemd does).
fn abort_connection(connection: u32) {
    let abort = format!("/sys/fs/fuse/connections/{connection}/abort");
    if let Err(e) = std::fs::write(&abort, "1") {
        tracing::warn!("lazy: aborting the FUSE connection through {abort}: {e}");
    }
}

/// `FUSE_NOTIFY_RESEND`: the kernel puts the requests a dead server read
/// but never answered back in the queue (Linux 6.9+, `FUSE_HAS_RESEND`).
const FUSE_NOTIFY_RESEND: i32 = 7;

/// Asks the kernel to send again what the predecessor left unanswered,
/// where the kernel can (else those callers wait until LAZY unmounts).
fn ask_for_resend(device: BorrowedFd<'_>, kernel_flags: u64) {
    if !InitFlags::from_bits_retain(kernel_flags).contains(InitFlags::FUSE_HAS_RESEND) {
        tracing::warn!("lazy: this kernel cannot resend requests; opens the killed server left unanswered wait until LAZY unmounts");
        return;
    }
    match write_resend(device) {
        Ok(()) => tracing::debug!("lazy: asked the kernel to resend unanswered requests"),
        Err(e) => tracing::warn!("lazy: asking the kernel to resend unanswered requests: {e}"),
    }
}

/// The 16-byte `FUSE_NOTIFY_RESEND` notification (unique 0, no payload).
fn write_resend(device: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&16u32.to_le_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    rustix::io::write(device, &header)?;
    Ok(())
}

/// The kernel's FUSE mount options for a session on device fd `fd` that
/// root serves to everyone.
fn mount_options(fd: i32) -> Vec<FsOption> {
    let s = |k: &str, v: String| FsOption::String(k.to_owned(), v);
    vec![
        s("source", SUBTYPE.to_owned()),
        s("subtype", SUBTYPE.to_owned()),
        s("fd", fd.to_string()),
        s("rootmode", "40000".to_owned()),
        s("user_id", "0".to_owned()),
        s("group_id", "0".to_owned()),
        FsOption::Flag("allow_other".to_owned()),
        FsOption::Flag("default_permissions".to_owned()),
    ]
}

fn wait_until(limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_name_the_fd_and_serve_everyone() {
        let shown: Vec<String> = mount_options(7)
            .into_iter()
            .map(|o| match o {
                FsOption::Flag(k) => k,
                FsOption::String(k, v) => format!("{k}={v}"),
            })
            .collect();
        assert_eq!(
            shown,
            [
                "source=strata-lazy",
                "subtype=strata-lazy",
                "fd=7",
                "rootmode=40000",
                "user_id=0",
                "group_id=0",
                "allow_other",
                "default_permissions"
            ]
        );
    }
}

//! Mounting LAZY: strata opens /dev/fuse and mounts it itself (no
//! fusermount, no libfuse), so it holds the device fd and can later hand it
//! over; fuser then serves the session from that fd (`Session::from_fd`).

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Session, SessionACL};
use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
use strata_sys::{mount_fs, unmount, FsOption, MountError, MountFlags};
use strata_tree::Digest;

use crate::counters::Counts;
use crate::fetch::ObjectFetcher;
use crate::fs::{LazyFs, Passthrough, Shared};

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
    /// it, asking `fetcher` for missing objects. Fails with
    /// [`LazyError::NoPassthrough`] where the kernel lacks passthrough.
    pub fn mount(target: &Path, fetcher: Arc<dyn ObjectFetcher>, config: &LazyConfig) -> Result<Self, LazyError> {
        let device: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(LazyError::Device)?
            .into();
        let flags = MountFlags {
            read_only: true,
            nodev: true,
        };
        mount_fs("fuse", &mount_options(device.as_raw_fd()), flags, target)?;
        let unmount_on_error = |error: LazyError| {
            if let Err(e) = unmount(target, true) {
                tracing::warn!("lazy: unmounting {} after a failed start: {e}", target.display());
            }
            error
        };
        // Any request to LAZY waits for the handshake below, so this stat
        // must not ask the server: DONT_SYNC takes the root's attributes
        // as the mount set them.
        let connection = statx(CWD, target, AtFlags::STATX_DONT_SYNC, StatxFlags::BASIC_STATS)
            .map(|st| st.stx_dev_minor)
            .map_err(|e| {
                unmount_on_error(LazyError::Connection {
                    target: target.to_owned(),
                    source: e.into(),
                })
            })?;
        let shared = Arc::new(Shared::new(config.entry_ttl));
        let fs = LazyFs::new(shared.clone(), fetcher, config.fetch_timeout);
        let mut session_config = fuser::Config::default();
        session_config.acl = SessionACL::All;
        session_config.n_threads = Some(config.threads.max(1));
        let session = Session::from_fd(fs, device, SessionACL::All, session_config).map_err(|source| {
            unmount_on_error(match shared.passthrough() {
                Passthrough::Missing => LazyError::NoPassthrough,
                _ => LazyError::Handshake {
                    target: target.to_owned(),
                    source,
                },
            })
        })?;
        let session = session.spawn().map_err(|e| unmount_on_error(LazyError::Thread(e)))?;
        Ok(Self {
            target: target.to_owned(),
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
            let abort = format!("/sys/fs/fuse/connections/{}/abort", self.connection);
            if let Err(e) = std::fs::write(&abort, "1") {
                tracing::warn!("lazy: aborting the FUSE connection through {abort}: {e}");
            }
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

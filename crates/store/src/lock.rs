//! Store-wide advisory lock: imports hold it shared, gc and repair hold it
//! exclusively, so gc never deletes what an import is about to reference.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::dirfd::DirFd;
use crate::StoreError;

/// `None` on a read-only store without a lock file: nothing can write there.
pub struct SharedGuard(#[allow(dead_code)] Option<OwnedFd>);
pub struct ExclusiveGuard(#[allow(dead_code)] OwnedFd);

/// Held while an import runs: one of `max` slot locks.
pub struct ImportSlot(#[allow(dead_code)] OwnedFd);

fn open_named(dir: &DirFd, root: &Path, name: &str) -> Result<OwnedFd, StoreError> {
    rustix::fs::openat(
        dir.fd(),
        name,
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| StoreError::io("open lock", root.join(name), e))
}

fn open(dir: &DirFd, root: &Path) -> Result<OwnedFd, StoreError> {
    open_named(dir, root, "lock")
}

/// Takes a free one of `max` import slots (`lock.import-N`), across
/// processes; none free is [`StoreError::TooManyImports`].
pub(crate) fn import_slot(dir: &DirFd, root: &Path, max: usize) -> Result<ImportSlot, StoreError> {
    for n in 0..max {
        let name = format!("lock.import-{n}");
        let fd = open_named(dir, root, &name)?;
        match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(ImportSlot(fd)),
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(StoreError::io("lock", root.join(name), e)),
        }
    }
    Err(StoreError::TooManyImports { max })
}

pub(crate) fn shared(dir: &DirFd, root: &Path) -> Result<SharedGuard, StoreError> {
    let fd = match open(dir, root) {
        Ok(fd) => fd,
        // A read-only store: flock works on a read-only descriptor too.
        Err(StoreError::Io { source, .. }) if source.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) => {
            match rustix::fs::openat(
                dir.fd(),
                "lock",
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(rustix::io::Errno::NOENT) => return Ok(SharedGuard(None)),
                Err(e) => return Err(StoreError::io("open lock", root.join("lock"), e)),
            }
        }
        Err(e) => return Err(e),
    };
    rustix::fs::flock(&fd, FlockOperation::LockShared).map_err(|e| StoreError::io("lock", root.join("lock"), e))?;
    Ok(SharedGuard(Some(fd)))
}

pub(crate) fn exclusive(dir: &DirFd, root: &Path) -> Result<ExclusiveGuard, StoreError> {
    let fd = open(dir, root)?;
    rustix::fs::flock(&fd, FlockOperation::LockExclusive).map_err(|e| StoreError::io("lock", root.join("lock"), e))?;
    Ok(ExclusiveGuard(fd))
}

/// Held shared by each `strata serve` of the store while it runs
/// (`lock.serve`), so the process serving LAZY can tell when none runs.
pub struct ServePresence(#[allow(dead_code)] OwnedFd);

/// Held exclusively once no `strata serve` runs; a serve starting
/// meanwhile waits for it to drop.
pub struct NoServe(#[allow(dead_code)] OwnedFd);

const SERVE_LOCK: &str = "lock.serve";

pub(crate) fn serve_presence(dir: &DirFd, root: &Path) -> Result<ServePresence, StoreError> {
    let fd = open_named(dir, root, SERVE_LOCK)?;
    rustix::fs::flock(&fd, FlockOperation::LockShared).map_err(|e| StoreError::io("lock", root.join(SERVE_LOCK), e))?;
    Ok(ServePresence(fd))
}

pub(crate) fn wait_no_serve(dir: &DirFd, root: &Path) -> Result<NoServe, StoreError> {
    let fd = open_named(dir, root, SERVE_LOCK)?;
    rustix::fs::flock(&fd, FlockOperation::LockExclusive)
        .map_err(|e| StoreError::io("lock", root.join(SERVE_LOCK), e))?;
    Ok(NoServe(fd))
}

//! Store-wide advisory lock: imports hold it shared, gc and repair hold it
//! exclusively, so gc never deletes what an import is about to reference.

use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FlockOperation, Mode, OFlags};

use crate::dirfd::DirFd;
use crate::StoreError;

pub struct SharedGuard(#[allow(dead_code)] OwnedFd);
pub struct ExclusiveGuard(#[allow(dead_code)] OwnedFd);

fn open(dir: &DirFd, root: &Path) -> Result<OwnedFd, StoreError> {
    rustix::fs::openat(
        dir.fd(),
        "lock",
        OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| StoreError::io("open lock", root.join("lock"), e))
}

pub(crate) fn shared(dir: &DirFd, root: &Path) -> Result<SharedGuard, StoreError> {
    let fd = open(dir, root)?;
    rustix::fs::flock(&fd, FlockOperation::LockShared).map_err(|e| StoreError::io("lock", root.join("lock"), e))?;
    Ok(SharedGuard(fd))
}

pub(crate) fn exclusive(dir: &DirFd, root: &Path) -> Result<ExclusiveGuard, StoreError> {
    let fd = open(dir, root)?;
    rustix::fs::flock(&fd, FlockOperation::LockExclusive).map_err(|e| StoreError::io("lock", root.join("lock"), e))?;
    Ok(ExclusiveGuard(fd))
}

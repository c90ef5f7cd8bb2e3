//! Reading one upper-dir entry through file descriptors: its stat, its
//! xattrs, a directory's names, a small file's bytes, a symlink's target.
//! Every entry is first opened `O_PATH` without following it, and all reads
//! go through that handle, so whatever is renamed over a name meanwhile, the
//! reads describe one inode, and nothing is ever opened that could block
//! (a FIFO) or act (a device) when opened.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags, Stat as RawStat};
use rustix::io::Errno;

use crate::SnapshotError;

pub(super) type Xattrs = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// One xattr: its name and value.
type Xattr = (Vec<u8>, Vec<u8>);

/// An entry's `O_PATH` handle and its stat; `None` if the name is gone.
pub(super) fn open_entry(
    dir: BorrowedFd<'_>,
    name: &[u8],
    shown: &Path,
) -> Result<Option<(OwnedFd, RawStat)>, SnapshotError> {
    let handle = match strata_sys::open_beneath(dir, Path::new(std::ffi::OsStr::from_bytes(name)), OFlags::PATH) {
        Ok(handle) => handle,
        Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => return Ok(None),
        Err(e) => return Err(SnapshotError::io("open", shown, e)),
    };
    let stat = rustix::fs::fstat(&handle).map_err(|e| SnapshotError::io("stat", shown, e))?;
    Ok(Some((handle, stat)))
}

/// Opens the directory `handle` holds for reading its entries.
pub(super) fn open_dir(handle: &OwnedFd, shown: &Path) -> Result<OwnedFd, SnapshotError> {
    rustix::fs::openat(
        handle,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => SnapshotError::UpperChanged {
            path: shown.to_owned(),
            what: "was removed while the snapshot was committed",
        },
        e => SnapshotError::io("open dir", shown, e),
    })
}

/// A directory's entry names, sorted, without `.` and `..`.
pub(super) fn names(dir: &OwnedFd, shown: &Path) -> Result<Vec<Vec<u8>>, SnapshotError> {
    let err = |e: Errno| SnapshotError::io("read dir", shown, e);
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir).map_err(err)? {
        let name = entry.map_err(err)?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            out.push(name);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The bytes of a regular file of at most `limit` bytes; `None` if it has
/// grown past `limit` since its stat (or is no longer a regular file).
pub(super) fn small_file(handle: OwnedFd, limit: usize, shown: &Path) -> Result<Option<Vec<u8>>, SnapshotError> {
    let file = match strata_sys::reopen_regular(handle) {
        Ok(strata_sys::Opened::File(file, _)) => file,
        Ok(strata_sys::Opened::Other(..)) => return Ok(None),
        Err(e) => return Err(SnapshotError::io("open", shown, e)),
    };
    let mut data = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    file.take(cap)
        .read_to_end(&mut data)
        .map_err(|e| SnapshotError::io("read", shown, e))?;
    Ok((data.len() <= limit).then_some(data))
}

/// A symlink's target, read through its `O_PATH` handle.
pub(super) fn link_target(handle: &OwnedFd, shown: &Path) -> Result<Vec<u8>, SnapshotError> {
    let target =
        rustix::fs::readlinkat(handle, "", Vec::new()).map_err(|e| SnapshotError::io("read link", shown, e))?;
    Ok(target.into_bytes())
}

/// Every xattr of the inode `handle` holds, read through its
/// `/proc/self/fd` link (xattr calls do not take `O_PATH` fds).
pub(super) fn xattrs(handle: BorrowedFd<'_>, shown: &Path) -> Result<Vec<Xattr>, SnapshotError> {
    let err = |e: Errno| SnapshotError::io("read xattrs", shown, e);
    let proc = strata_sys::proc_path(handle.as_fd());
    // The list can change between the size query and the read: retry.
    let mut list;
    let mut attempt = 0;
    loop {
        let size = match rustix::fs::listxattr_query(&proc) {
            Ok(n) => n,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(err(e)),
        };
        list = vec![0u8; size];
        match rustix::fs::listxattr(&proc, list.as_mut_slice()) {
            Ok(n) => {
                list.truncate(n);
                break;
            }
            Err(Errno::RANGE) if attempt < 8 => attempt += 1,
            Err(e) => return Err(err(e)),
        }
    }
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if let Some(value) = xattr_value(&proc, name).map_err(err)? {
            out.push((name.to_vec(), value));
        }
    }
    Ok(out)
}

/// One xattr's value; `None` if it was removed meanwhile.
fn xattr_value(proc: &Path, name: &[u8]) -> Result<Option<Vec<u8>>, Errno> {
    let name = std::ffi::OsStr::from_bytes(name);
    let mut attempt = 0;
    loop {
        let len = match rustix::fs::getxattr_query(proc, name) {
            Ok(n) => n,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut value = vec![0u8; len];
        match rustix::fs::getxattr(proc, name, value.as_mut_slice()) {
            Ok(got) => {
                value.truncate(got);
                return Ok(Some(value));
            }
            Err(Errno::NODATA) => return Ok(None),
            Err(Errno::RANGE) if attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Whether opening a name failed because the tree changed under it: the
/// name is gone, or a symlink, or not a directory on the way.
pub(super) fn gone(e: &std::io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV)
    )
}

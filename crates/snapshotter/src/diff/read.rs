//! Reading one upper-dir entry through file descriptors: its stat, its
//! xattrs, a directory's names, a small file's bytes, a symlink's target.
//! Every entry is first opened `O_PATH` without following it, and all reads
//! go through that handle, so whatever is renamed over a name meanwhile, the
//! reads describe one inode, and nothing is ever opened that could block
//! (a FIFO) or act (a device) when opened.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat as RawStat};
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

/// An entry's stat, with its `O_PATH` handle unless it is a regular file
/// too large to inline and the kernel reads xattrs by name: such a file
/// needs no handle (its body is opened by inode later), which saves an
/// open and a close per file. `None` if the name is gone.
pub(super) fn stat_entry(
    dir: BorrowedFd<'_>,
    name: &[u8],
    shown: &Path,
) -> Result<Option<(Option<OwnedFd>, RawStat)>, SnapshotError> {
    if strata_sys::xattrs_at_available() {
        // One name from the directory's own listing: no `/`, no symlink followed.
        match rustix::fs::statat(dir, std::ffi::OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if is_body(&stat) => return Ok(Some((None, stat))),
            Ok(_) => {}
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(SnapshotError::io("stat", shown, e)),
        }
    }
    Ok(open_entry(dir, name, shown)?.map(|(handle, stat)| (Some(handle), stat)))
}

/// A regular file whose bytes become an object rather than inline data.
fn is_body(stat: &RawStat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
        && usize::try_from(stat.st_size).map_or(true, |size| size > strata_erofs::INLINE_MAX)
}

/// The `O_PATH` handle of `name`, which must still be the inode `stat`
/// describes.
pub(super) fn handle_of(
    dir: BorrowedFd<'_>,
    name: &[u8],
    stat: &RawStat,
    shown: &Path,
) -> Result<OwnedFd, SnapshotError> {
    let changed = |what| SnapshotError::UpperChanged {
        path: shown.to_owned(),
        what,
    };
    match open_entry(dir, name, shown)? {
        Some((handle, now)) if (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino) => Ok(handle),
        Some(_) => Err(changed("was replaced while the snapshot was committed")),
        None => Err(changed("was removed while the snapshot was committed")),
    }
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

/// Every xattr of the inode `handle` holds. With `named` (its directory
/// and name), read by name without following a symlink where the kernel
/// has `listxattrat` (6.13): no path walk through `/proc`. A name swapped
/// meanwhile can only lend another entry of the same upper dir's xattrs,
/// which the same writer made. Otherwise read through the handle's
/// `/proc/self/fd` link (xattr calls do not take `O_PATH` fds).
pub(super) fn xattrs(
    named: Option<(BorrowedFd<'_>, &[u8])>,
    handle: Option<BorrowedFd<'_>>,
    stat: &RawStat,
    shown: &Path,
) -> Result<Vec<Xattr>, SnapshotError> {
    let err = |e: Errno| match e {
        // Read by name: the name went meanwhile.
        Errno::NOENT => SnapshotError::UpperChanged {
            path: shown.to_owned(),
            what: "was removed or moved while the snapshot was committed",
        },
        e => SnapshotError::io("read xattrs", shown, e),
    };
    if let Some((dir, name)) = named {
        let name = CString::new(name).map_err(|_| err(Errno::INVAL))?;
        let list = read_sized(|buf| strata_sys::list_xattrs_at(dir, &name, buf).map_err(errno)).map_err(err)?;
        if let Some(list) = list {
            return values(&list, |attr| {
                let attr = CString::new(attr).map_err(|_| Errno::INVAL)?;
                read_sized(|buf| strata_sys::get_xattr_at(dir, &name, &attr, buf).map_err(errno))
            })
            .map_err(err);
        }
    }
    let opened;
    let handle = match (handle, named) {
        (Some(handle), _) => handle,
        (None, Some((dir, name))) => {
            opened = handle_of(dir, name, stat, shown)?;
            opened.as_fd()
        }
        (None, None) => return Err(err(Errno::BADF)),
    };
    let proc = strata_sys::proc_path(handle);
    let list = read_sized(|buf| {
        if buf.is_empty() {
            rustix::fs::listxattr_query(&proc).map(Some)
        } else {
            rustix::fs::listxattr(&proc, buf).map(Some)
        }
    })
    .map_err(err)?
    .unwrap_or_default();
    values(&list, |attr| {
        let attr = std::ffi::OsStr::from_bytes(attr);
        read_sized(|buf| {
            if buf.is_empty() {
                rustix::fs::getxattr_query(&proc, attr).map(Some)
            } else {
                rustix::fs::getxattr(&proc, attr, buf).map(Some)
            }
        })
    })
    .map_err(err)
}

/// The value of each name in a NUL-separated `list`; one removed meanwhile
/// is left out.
fn values(list: &[u8], mut value: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, Errno>) -> Result<Vec<Xattr>, Errno> {
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match value(name) {
            Ok(Some(v)) => out.push((name.to_vec(), v)),
            Ok(None) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// A variable-size answer: its size first (an empty buffer asks for it),
/// then the bytes, again if it grew meanwhile. `None` when the call is
/// not supported; a filesystem without xattrs gives an empty answer.
fn read_sized(mut call: impl FnMut(&mut [u8]) -> Result<Option<usize>, Errno>) -> Result<Option<Vec<u8>>, Errno> {
    let mut attempt = 0;
    loop {
        let size = match call(&mut []) {
            Ok(Some(size)) => size,
            Ok(None) => return Ok(None),
            Err(Errno::NOTSUP) => return Ok(Some(Vec::new())),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size];
        if size == 0 {
            return Ok(Some(buf));
        }
        match call(&mut buf) {
            Ok(Some(n)) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Ok(None) => return Ok(None),
            Err(Errno::RANGE) if attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_io_error(&e).unwrap_or(Errno::IO)
}

/// Whether opening a name failed because the tree changed under it: the
/// name is gone, or a symlink, or not a directory on the way.
pub(super) fn gone(e: &std::io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOENT | Errno::LOOP | Errno::NOTDIR | Errno::XDEV)
    )
}

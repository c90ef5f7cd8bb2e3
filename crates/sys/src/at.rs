//! Newer `*at` calls that act on a name in a directory without following
//! a symlink and without opening the entry: `fchmodat2` (Linux 6.6) and
//! `listxattrat`/`getxattrat` (Linux 6.13). Each answers `Ok(None)` when the
//! kernel lacks it (remembered after the first `ENOSYS`), so callers fall
//! back to opening the entry.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The same numbers on every architecture: they come after the syscall
/// tables were unified.
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

static NO_FCHMODAT2: AtomicBool = AtomicBool::new(false);
static NO_XATTRAT: AtomicBool = AtomicBool::new(false);

/// False once the kernel was found to lack `listxattrat`/`getxattrat`
/// (until then, they are assumed present).
pub fn xattrs_at_available() -> bool {
    !NO_XATTRAT.load(Ordering::Relaxed)
}

/// `struct xattr_args` of `getxattrat(2)`.
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// What a raw call returned: a count, or the errno, or `None` when the
/// kernel lacks the call (`unsupported` is set then).
fn answer(ret: libc::c_long, unsupported: &AtomicBool) -> io::Result<Option<usize>> {
    if ret >= 0 {
        return Ok(Some(usize::try_from(ret).unwrap_or(0)));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENOSYS) {
        unsupported.store(true, Ordering::Relaxed);
        return Ok(None);
    }
    Err(err)
}

/// Sets the mode of `name` in `dir` unless it is a symlink (then
/// `EOPNOTSUPP`). `Ok(false)`: the kernel lacks `fchmodat2`.
#[allow(unsafe_code)] // rustix lacks these calls
pub fn chmod_nofollow(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<bool> {
    if NO_FCHMODAT2.load(Ordering::Relaxed) {
        return Ok(false);
    }
    // SAFETY: `name` is a NUL-terminated string that outlives the call; the
    // other arguments are plain integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Ok(answer(ret, &NO_FCHMODAT2)?.is_some())
}

/// The xattr names of `name` in `dir` (not following a symlink) into
/// `buf`, or the size needed when `buf` is empty.
#[allow(unsafe_code)] // rustix lacks these calls
pub fn list_xattrs_at(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> io::Result<Option<usize>> {
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // SAFETY: `name` is NUL-terminated; `buf` is valid for `buf.len()`
    // bytes of writes for the duration of the call (a null pointer with
    // length 0 asks for the size).
    let ret = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            if buf.is_empty() {
                std::ptr::null_mut()
            } else {
                buf.as_mut_ptr()
            },
            buf.len(),
        )
    };
    answer(ret, &NO_XATTRAT)
}

/// The value of xattr `attr` of `name` in `dir` (not following a symlink)
/// into `buf`, or its size when `buf` is empty.
#[allow(unsafe_code)] // rustix lacks these calls
pub fn get_xattr_at(dir: BorrowedFd<'_>, name: &CStr, attr: &CStr, buf: &mut [u8]) -> io::Result<Option<usize>> {
    if NO_XATTRAT.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let mut args = XattrArgs {
        value: if buf.is_empty() { 0 } else { buf.as_mut_ptr() as u64 },
        size: u32::try_from(buf.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: `name` and `attr` are NUL-terminated; `args` points at a live
    // `xattr_args` of the size passed, whose `value` is valid for `size`
    // bytes of writes for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    answer(ret, &NO_XATTRAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn xattrs_and_modes_by_name_never_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        rustix::fs::setxattr(&file, "user.k", b"value", rustix::fs::XattrFlags::empty()).unwrap();
        std::os::unix::fs::symlink("f", dir.path().join("link")).unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        let (f, link) = (c"f", c"link");
        // This machine's kernel must have both calls; older ones may lack them.
        let release = rustix::system::uname().release().to_string_lossy().into_owned();
        let mut version = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
        let new_kernel = (major, minor) >= (6, 13);
        assert!(!new_kernel || list_xattrs_at(d.as_fd(), f, &mut []).unwrap().is_some());
        assert!(!new_kernel || chmod_nofollow(d.as_fd(), f, 0o644).unwrap());

        if let Some(size) = list_xattrs_at(d.as_fd(), f, &mut []).unwrap() {
            let mut names = vec![0; size];
            let n = list_xattrs_at(d.as_fd(), f, &mut names).unwrap().unwrap();
            assert_eq!(&names[..n], b"user.k\0");
            let mut value = vec![0; get_xattr_at(d.as_fd(), f, c"user.k", &mut []).unwrap().unwrap()];
            get_xattr_at(d.as_fd(), f, c"user.k", &mut value).unwrap();
            assert_eq!(value, b"value");
            // The symlink's own (empty) list, not its target's.
            assert_eq!(list_xattrs_at(d.as_fd(), link, &mut []).unwrap(), Some(0));
        }
        if chmod_nofollow(d.as_fd(), f, 0o444).unwrap() {
            let mode = std::fs::metadata(&file).unwrap().permissions();
            assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o444);
            let e = chmod_nofollow(d.as_fd(), link, 0o777).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        }
    }
}

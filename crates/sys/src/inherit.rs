//! Fds a process leaves open for a program it starts (LAZY's keeper for
//! its server), and that program's claim on them.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Leaves `fd` open across `exec`, for a child that names it on its
/// command line.
pub fn keep_across_exec(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    Ok(())
}

/// Claims fd `raw`, which the parent process left open for this one (a
/// LAZY server's /dev/fuse and journal, named on its command line), and
/// marks it close-on-exec. Fails if `raw` is a standard stream or not open.
pub fn take_inherited_fd(raw: RawFd) -> std::io::Result<OwnedFd> {
    if raw <= 2 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("fd {raw} is a standard stream, not an inherited fd"),
        ));
    }
    // SAFETY: F_GETFD only reads the fd table entry.
    #[allow(unsafe_code)]
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is open (checked above) and was left to this process by
    // its parent; the caller claims it once, so it has one owner.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

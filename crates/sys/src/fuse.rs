//! FUSE passthrough backing ids a LAZY server inherits from the server it
//! replaces (docs/lazy-pulls.md, "Hand-over").

use fuser::{BackingId, ReplyOpen};

/// Takes ownership of backing id `id`, which a killed predecessor
/// registered on this FUSE connection and never closed. The returned
/// `BackingId` closes it when dropped.
///
/// The caller must own `id`: registered on this connection, not closed,
/// and wrapped once only (the LAZY session journal says so). A wrong id
/// is not memory-unsafe: the kernel refuses an unknown one (EIO to that
/// open) and a close of it fails with an error.
pub fn adopt_fuse_backing(reply: &ReplyOpen, id: u32) -> BackingId {
    // SAFETY: `wrap_backing` is unsafe only because two owners of one id
    // would close it twice; the journal hands each id to one owner.
    #[allow(unsafe_code)]
    unsafe {
        reply.wrap_backing(id)
    }
}

/// Claims fd `raw`, which the parent process left open for this one (a
/// LAZY server's /dev/fuse and journal, named on its command line), and
/// marks it close-on-exec. Fails if `raw` is a standard stream or not open.
pub fn take_inherited_fd(raw: std::os::fd::RawFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
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
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

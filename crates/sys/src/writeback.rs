//! Starting writeback of one file without waiting for it.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Asks the kernel to start writing `fd`'s dirty pages to disk and returns
/// at once (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). It makes nothing
/// durable by itself; a later `fsync` or `syncfs` then waits for less.
#[allow(unsafe_code)] // rustix lacks sync_file_range
pub fn start_writeback(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: sync_file_range takes a plain fd, offsets and flags and touches
    // no memory of ours; the borrowed fd is open for the whole call.
    let rc = unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    #[test]
    fn starts_writeback_of_a_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        super::start_writeback(file.as_fd()).unwrap();
    }
}

//! fs-verity: asking whether a filesystem can enable it.

use std::os::fd::AsRawFd;

/// `FS_IOC_ENABLE_VERITY`, `_IOW('f', 133, struct fsverity_enable_arg)`.
const FS_IOC_ENABLE_VERITY: libc::c_ulong = 0x4080_6685;

/// `struct fsverity_enable_arg` (linux/fsverity.h), 128 bytes.
#[repr(C)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// Enables fs-verity (SHA-256, 4 KiB blocks, no salt) on `file`, which
/// must be open read-only with no writers. `EOPNOTSUPP` or `ENOTTY` mean the
/// kernel or the filesystem has no fs-verity.
#[allow(unsafe_code)] // rustix has no fs-verity ioctls
pub fn enable_verity(file: &std::fs::File) -> std::io::Result<()> {
    let arg = EnableArg {
        version: 1,
        hash_algorithm: 1,
        block_size: 4096,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: the fd is open for the call, and `arg` is a live, correctly
    // sized `fsverity_enable_arg` that the kernel only reads.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_ENABLE_VERITY, &arg as *const EnableArg) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_argument_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<super::EnableArg>(), 128);
    }
}

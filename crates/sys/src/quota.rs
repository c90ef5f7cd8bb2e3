//! Size limits a filesystem enforces itself, for scratch dirs that need no
//! loop device: project quotas (ext4 and XFS share the interface: a project
//! id and inherit flag through `FS_IOC_FSSETXATTR`, a limit through
//! `quotactl_fd(Q_SETQUOTA, PRJQUOTA)`) and btrfs subvolumes with a qgroup
//! limit. Errors stay `io::Error`s with their errno; the meanings callers
//! need have a name here ([`quotas_off`]).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `PRJQUOTA` of `<linux/quota.h>`; libc lacks it.
const PRJQUOTA: libc::c_int = 2;

/// `_IOC(dir, type, nr, size)` of `<asm-generic/ioctl.h>`.
const fn ioc(dir: u32, kind: u8, nr: u8, size: usize) -> libc::c_ulong {
    // Sizes here are compile-time struct sizes, far below the 14-bit field.
    #[allow(clippy::cast_possible_truncation)]
    let size = size as u32;
    ((dir << 30) | (size << 16) | ((kind as u32) << 8) | nr as u32) as libc::c_ulong
}
const WRITE: u32 = 1;
const READ: u32 = 2;

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}
const FS_IOC_FSGETXATTR: libc::c_ulong = ioc(READ, b'X', 31, std::mem::size_of::<FsXattr>());
const FS_IOC_FSSETXATTR: libc::c_ulong = ioc(WRITE, b'X', 32, std::mem::size_of::<FsXattr>());
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

/// True for the errors that mean "this filesystem enforces no such quota
/// now": quotas off (`ESRCH`, btrfs `ENOTCONN`), no quota support
/// (`ENOSYS`, `EOPNOTSUPP`, `ENOTTY`), no project feature (`EINVAL`).
pub fn quotas_off(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ESRCH | libc::ENOTCONN | libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL)
    )
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[allow(unsafe_code)] // FS_IOC_FSGETXATTR: rustix lacks it
fn get_fsxattr(fd: BorrowedFd<'_>) -> io::Result<FsXattr> {
    let mut attr = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR writes one `struct fsxattr`, which `attr`
    // is (repr(C), same layout), valid for the call.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, &mut attr as *mut FsXattr) })?;
    Ok(attr)
}

/// The project id of the file `fd` and whether new entries inherit it.
pub fn project_of(fd: BorrowedFd<'_>) -> io::Result<(u32, bool)> {
    let attr = get_fsxattr(fd)?;
    Ok((attr.projid, attr.xflags & FS_XFLAG_PROJINHERIT != 0))
}

/// Gives the directory `fd` project `id`, inherited by everything made
/// in it from now on.
#[allow(unsafe_code)] // FS_IOC_FSSETXATTR: rustix lacks it
pub fn set_project(fd: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    let mut attr = get_fsxattr(fd)?;
    attr.projid = id;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: FS_IOC_FSSETXATTR reads one `struct fsxattr` from `attr`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR, &attr as *const FsXattr) })
}

/// What a filesystem's quota says of one project.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProjectQuota {
    /// Hard limit in bytes; 0 for none.
    pub limit_bytes: u64,
    /// Inode hard limit; 0 for none.
    pub limit_inodes: u64,
    pub used_bytes: u64,
    pub used_inodes: u64,
}

impl ProjectQuota {
    /// Nothing charged to it and no limit set: nobody uses the id.
    pub fn is_unused(&self) -> bool {
        *self == ProjectQuota::default()
    }
}

#[allow(unsafe_code)] // quotactl_fd: rustix lacks it
fn quotactl_fd(fd: BorrowedFd<'_>, cmd: libc::c_int, id: u32, quota: &mut libc::dqblk) -> io::Result<()> {
    let fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // QCMD sets the top bit (Q_GETQUOTA is 0x800007): the kernel takes the
    // same 32 bits as an unsigned int.
    let cmd = u32::from_ne_bytes(libc::QCMD(cmd, PRJQUOTA).to_ne_bytes());
    // SAFETY: quotactl_fd(2) with Q_GETQUOTA/Q_SETQUOTA reads or writes one
    // `struct if_dqblk`, which `libc::dqblk` is; it is valid for the call.
    let ret = unsafe { libc::syscall(libc::SYS_quotactl_fd, fd, cmd, id, quota as *mut libc::dqblk) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Project `id`'s limits and usage on the filesystem of `fd`. An id the
/// filesystem has no record of (XFS answers `ENOENT`) is unused.
#[allow(unsafe_code)] // quotactl_fd: rustix lacks it
pub fn project_quota(fd: BorrowedFd<'_>, id: u32) -> io::Result<ProjectQuota> {
    // SAFETY: dqblk is plain integers; all zeros is a valid value.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    match quotactl_fd(fd, libc::Q_GETQUOTA, id, &mut q) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ProjectQuota::default()),
        Err(e) => return Err(e),
    }
    Ok(ProjectQuota {
        limit_bytes: q.dqb_bhardlimit.saturating_mul(1024),
        limit_inodes: q.dqb_ihardlimit,
        used_bytes: q.dqb_curspace,
        used_inodes: q.dqb_curinodes,
    })
}

/// Sets project `id`'s hard limit to `bytes` (rounded up to KiB; 0 clears
/// it) on the filesystem of `fd`. No soft limit, no inode limit: `statfs`
/// of a directory of the project then reports `bytes` as its size.
#[allow(unsafe_code)] // quotactl_fd: rustix lacks it
pub fn set_project_limit(fd: BorrowedFd<'_>, id: u32, bytes: u64) -> io::Result<()> {
    // SAFETY: dqblk is plain integers; all zeros is a valid value.
    let mut q: libc::dqblk = unsafe { std::mem::zeroed() };
    q.dqb_bhardlimit = bytes.div_ceil(1024);
    q.dqb_valid = libc::QIF_LIMITS;
    quotactl_fd(fd, libc::Q_SETQUOTA, id, &mut q)
}

/// btrfs ioctls: subvolumes and qgroup limits.
pub mod btrfs {
    use super::*;

    const MAGIC: u8 = 0x94;
    /// `BTRFS_FIRST_FREE_OBJECTID`: the root directory of a subvolume.
    pub const SUBVOLUME_ROOT_INO: u64 = 256;

    /// `struct btrfs_ioctl_vol_args`.
    #[repr(C)]
    struct VolArgs {
        fd: i64,
        name: [u8; 4088],
    }
    /// `struct btrfs_ioctl_ino_lookup_args`.
    #[repr(C)]
    struct InoLookupArgs {
        treeid: u64,
        objectid: u64,
        name: [u8; 4080],
    }
    /// `struct btrfs_ioctl_qgroup_limit_args` with its `btrfs_qgroup_limit`.
    #[repr(C)]
    #[derive(Default)]
    struct QgroupLimitArgs {
        qgroupid: u64,
        flags: u64,
        max_rfer: u64,
        max_excl: u64,
        rsv_rfer: u64,
        rsv_excl: u64,
    }
    /// `struct btrfs_ioctl_qgroup_create_args`.
    #[repr(C)]
    struct QgroupCreateArgs {
        create: u64,
        qgroupid: u64,
    }
    /// `struct btrfs_ioctl_fs_info_args`, up to `fsid`; the rest is padding
    /// the kernel fills.
    #[repr(C)]
    struct FsInfoArgs {
        max_id: u64,
        num_devices: u64,
        fsid: [u8; 16],
        rest: [u8; 1024 - 32],
    }
    const SUBVOL_CREATE: libc::c_ulong = ioc(WRITE, MAGIC, 14, std::mem::size_of::<VolArgs>());
    const SNAP_DESTROY: libc::c_ulong = ioc(WRITE, MAGIC, 15, std::mem::size_of::<VolArgs>());
    const INO_LOOKUP: libc::c_ulong = ioc(READ | WRITE, MAGIC, 18, std::mem::size_of::<InoLookupArgs>());
    const FS_INFO: libc::c_ulong = ioc(READ, MAGIC, 31, std::mem::size_of::<FsInfoArgs>());
    const QGROUP_CREATE: libc::c_ulong = ioc(WRITE, MAGIC, 42, std::mem::size_of::<QgroupCreateArgs>());
    // The kernel declares it _IOR, though it only reads the argument.
    const QGROUP_LIMIT: libc::c_ulong = ioc(READ, MAGIC, 43, std::mem::size_of::<QgroupLimitArgs>());
    const LIMIT_MAX_RFER: u64 = 1;

    fn vol_args(name: &CStr) -> io::Result<Box<VolArgs>> {
        let bytes = name.to_bytes();
        let mut args = Box::new(VolArgs { fd: 0, name: [0; 4088] });
        if bytes.len() >= args.name.len() || bytes.contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        args.name[..bytes.len()].copy_from_slice(bytes);
        Ok(args)
    }

    /// Creates subvolume `name` in the directory `parent`.
    #[allow(unsafe_code)] // btrfs ioctls: rustix lacks them
    pub fn create_subvolume(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        let mut args = vol_args(name)?;
        // SAFETY: the ioctl reads one `btrfs_ioctl_vol_args` (NUL-terminated
        // name) from `args`, which lives for the call.
        check(unsafe { libc::ioctl(parent.as_raw_fd(), SUBVOL_CREATE, &mut *args as *mut VolArgs) })
    }

    /// Deletes subvolume `name` in `parent`, with everything in it; the
    /// space comes back in the background.
    #[allow(unsafe_code)] // btrfs ioctls: rustix lacks them
    pub fn delete_subvolume(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
        let mut args = vol_args(name)?;
        // SAFETY: as in create_subvolume.
        check(unsafe { libc::ioctl(parent.as_raw_fd(), SNAP_DESTROY, &mut *args as *mut VolArgs) })
    }

    /// The id of the subvolume `fd` lies in (its level-0 qgroup's id).
    #[allow(unsafe_code)] // btrfs ioctls: rustix lacks them
    pub fn subvolume_id(fd: BorrowedFd<'_>) -> io::Result<u64> {
        let mut args = Box::new(InoLookupArgs {
            treeid: 0,
            objectid: SUBVOLUME_ROOT_INO,
            name: [0; 4080],
        });
        // SAFETY: the ioctl reads and writes one `btrfs_ioctl_ino_lookup_args`
        // in `args`, which lives for the call.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), INO_LOOKUP, &mut *args as *mut InoLookupArgs) })?;
        Ok(args.treeid)
    }

    /// The filesystem's UUID (its `/sys/fs/btrfs/<uuid>` name).
    #[allow(unsafe_code)] // btrfs ioctls: rustix lacks them
    pub fn fs_uuid(fd: BorrowedFd<'_>) -> io::Result<[u8; 16]> {
        let mut args = Box::new(FsInfoArgs {
            max_id: 0,
            num_devices: 0,
            fsid: [0; 16],
            rest: [0; 1024 - 32],
        });
        // SAFETY: the ioctl writes one 1024-byte `btrfs_ioctl_fs_info_args`
        // (and reads its flags, zero here) in `args`, which lives for the call.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_INFO, &mut *args as *mut FsInfoArgs) })?;
        Ok(args.fsid)
    }

    /// Limits the bytes qgroup `qgroup` references to `bytes` (0: no limit).
    /// `ENOTCONN` when the filesystem's quotas are off.
    #[allow(unsafe_code)] // btrfs ioctls: rustix lacks them
    pub fn limit_qgroup(fd: BorrowedFd<'_>, qgroup: u64, bytes: u64) -> io::Result<()> {
        let mut args = QgroupLimitArgs {
            qgroupid: qgroup,
            flags: LIMIT_MAX_RFER,
            max_rfer: if bytes == 0 { u64::MAX } else { bytes },
            ..QgroupLimitArgs::default()
        };
        // SAFETY: the ioctl reads one `btrfs_ioctl_qgroup_limit_args` from
        // `args`, which lives for the call.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), QGROUP_LIMIT, &mut args as *mut QgroupLimitArgs) })
    }

    /// Removes qgroup `qgroup`; `EBUSY` while its deleted subvolume still
    /// holds space (the kernel drops it itself once the cleaner is done).
    #[allow(unsafe_code)] // btrfs ioctls: rustix lacks them
    pub fn remove_qgroup(fd: BorrowedFd<'_>, qgroup: u64) -> io::Result<()> {
        let mut args = QgroupCreateArgs {
            create: 0,
            qgroupid: qgroup,
        };
        // SAFETY: the ioctl reads one `btrfs_ioctl_qgroup_create_args`.
        check(unsafe { libc::ioctl(fd.as_raw_fd(), QGROUP_CREATE, &mut args as *mut QgroupCreateArgs) })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The request numbers `<linux/btrfs.h>` gives.
        #[test]
        fn request_numbers_match_the_kernel_headers() {
            assert_eq!(SUBVOL_CREATE, 0x5000_940e);
            assert_eq!(SNAP_DESTROY, 0x5000_940f);
            assert_eq!(INO_LOOKUP, 0xd000_9412);
            assert_eq!(FS_INFO, 0x8400_941f);
            assert_eq!(QGROUP_CREATE, 0x4010_942a);
            assert_eq!(QGROUP_LIMIT, 0x8030_942b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        assert_eq!(
            libc::QCMD(libc::Q_SETQUOTA, PRJQUOTA).to_ne_bytes(),
            0x8000_0802u32.to_ne_bytes()
        );
        assert_eq!(FS_IOC_FSGETXATTR, 0x801c_581f);
        assert_eq!(FS_IOC_FSSETXATTR, 0x401c_5820);
        assert_eq!(std::mem::size_of::<libc::dqblk>(), 72);
    }

    /// A filesystem without project ids or quotas says so with an errno
    /// that [`quotas_off`] names, never a crash.
    #[test]
    fn quota_calls_on_a_plain_dir_answer_quotas_off() {
        let dir = tempfile::tempdir().unwrap();
        let d = std::fs::File::open(dir.path()).unwrap();
        match project_quota(d.as_fd(), 1) {
            Ok(q) => assert!(q.is_unused() || q.limit_bytes > 0),
            Err(e) => assert!(quotas_off(&e), "{e}"),
        }
        if let Ok((id, _)) = project_of(d.as_fd()) {
            assert_eq!(id, 0, "a fresh temp dir has no project");
        }
    }
}

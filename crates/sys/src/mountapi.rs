//! fsopen / fsconfig / fsmount / move_mount, as one call.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, FsMountFlags, FsOpenFlags,
    MountAttrFlags, MoveMountFlags, UnmountFlags,
};

/// One `fsconfig` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsOption {
    Flag(String),
    String(String, String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFlags {
    pub read_only: bool,
    pub nodev: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("this kernel has no {fstype} filesystem")]
    NoFilesystem { fstype: String },
    #[error("{fstype}: the kernel rejected option {option:?}: {errno}")]
    Option {
        fstype: String,
        option: String,
        errno: std::io::Error,
    },
    #[error("mounting {fstype} on {}: {step} failed: {errno}", target.display())]
    Mount {
        fstype: String,
        target: PathBuf,
        step: &'static str,
        errno: std::io::Error,
    },
    #[error("unmounting {}: {errno}", target.display())]
    Unmount { target: PathBuf, errno: std::io::Error },
    #[error("{} is still in use", target.display())]
    Busy { target: PathBuf },
}

impl MountError {
    /// True when an option is unknown to this kernel (so a fallback applies).
    pub fn is_unsupported_option(&self) -> bool {
        matches!(self, MountError::Option { errno, .. } if errno.raw_os_error() == Some(Errno::INVAL.raw_os_error()))
    }
}

/// Mounts a new `fstype` instance configured by `options` on `target`.
pub fn mount_fs(fstype: &str, options: &[FsOption], flags: MountFlags, target: &Path) -> Result<(), MountError> {
    let fs = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| match e {
        Errno::NODEV => MountError::NoFilesystem {
            fstype: fstype.to_owned(),
        },
        e => MountError::Mount {
            fstype: fstype.to_owned(),
            target: target.to_owned(),
            step: "fsopen",
            errno: e.into(),
        },
    })?;
    for option in options {
        let (shown, result) = match option {
            FsOption::Flag(key) => (key.clone(), fsconfig_set_flag(fs.as_fd(), key.as_str())),
            FsOption::String(key, value) => (
                format!("{key}={value}"),
                fsconfig_set_string(fs.as_fd(), key.as_str(), value.as_str()),
            ),
        };
        result.map_err(|e| MountError::Option {
            fstype: fstype.to_owned(),
            option: shown,
            errno: e.into(),
        })?;
    }
    let step = |step: &'static str| {
        move |e: Errno| MountError::Mount {
            fstype: fstype.to_owned(),
            target: target.to_owned(),
            step,
            errno: e.into(),
        }
    };
    fsconfig_create(fs.as_fd()).map_err(step("fsconfig_create"))?;
    let mut attrs = MountAttrFlags::empty();
    if flags.read_only {
        attrs |= MountAttrFlags::MOUNT_ATTR_RDONLY;
    }
    if flags.nodev {
        attrs |= MountAttrFlags::MOUNT_ATTR_NODEV;
    }
    let mnt = fsmount(fs.as_fd(), FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(step("fsmount"))?;
    move_mount(
        mnt.as_fd(),
        "",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(step("move_mount"))?;
    // The fsmount fd must be closed now, or a later umount sees EBUSY.
    drop(mnt);
    Ok(())
}

/// Unmounts `target`. With `lazy`, detaches even if busy.
pub fn unmount(target: &Path, lazy: bool) -> Result<(), MountError> {
    let flags = if lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    rustix::mount::unmount(target, flags).map_err(|e| match e {
        Errno::BUSY => MountError::Busy {
            target: target.to_owned(),
        },
        e => MountError::Unmount {
            target: target.to_owned(),
            errno: e.into(),
        },
    })
}

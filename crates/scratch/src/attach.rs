//! Mounting a scratch image file: through a loop device that mount(8)
//! creates with autoclear, so unmounting frees the device too and a crash
//! cannot leak one that is not mounted.

use std::path::Path;
use std::process::Command;

use crate::template::TemplateError;
use crate::FsKind;

/// Mounts the filesystem image `file` on `target` (nodev, nosuid).
pub fn mount_file(file: &Path, target: &Path, fs: FsKind) -> Result<(), TemplateError> {
    std::fs::create_dir_all(target).map_err(|source| TemplateError::Io {
        op: "create",
        path: target.to_owned(),
        source,
    })?;
    let fstype = match fs {
        FsKind::Ext4 => "ext4",
        FsKind::Xfs => "xfs",
    };
    let out = Command::new("mount")
        .args(["-t", fstype, "-o", "loop,nodev,nosuid"])
        .arg(file)
        .arg(target)
        .output()
        .map_err(|source| TemplateError::Io {
            op: "run mount for",
            path: file.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(TemplateError::Mount {
            path: file.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Unmounts a scratch filesystem; its loop device goes with it.
pub fn unmount_file(target: &Path) -> Result<(), TemplateError> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(|e| TemplateError::Io {
        op: "unmount",
        path: target.to_owned(),
        source: e.into(),
    })
}

/// Bytes and inodes in use on the filesystem mounted at `path`.
pub fn fs_used(path: &Path) -> Result<(u64, u64), TemplateError> {
    let st = rustix::fs::statvfs(path).map_err(|e| TemplateError::Io {
        op: "statvfs",
        path: path.to_owned(),
        source: e.into(),
    })?;
    let bytes = st.f_blocks.saturating_sub(st.f_bfree).saturating_mul(st.f_frsize);
    let inodes = st.f_files.saturating_sub(st.f_ffree);
    Ok((bytes, inodes))
}

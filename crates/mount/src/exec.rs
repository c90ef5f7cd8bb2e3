//! Doing the mounts. [`Mounter`] is the seam: the real one calls the kernel;
//! tests can record calls instead.

use std::path::Path;

use strata_sys::{mount_fs, unmount, FsOption, MountError, MountFlags};

use crate::{LowerMode, OverlayPlan};

pub trait Mounter {
    fn mount(&self, fstype: &str, options: &[FsOption], flags: MountFlags, target: &Path) -> Result<(), MountError>;
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    fn is_mountpoint(&self, path: &Path) -> bool;
}

/// The kernel.
pub struct Kernel;

impl Mounter for Kernel {
    fn mount(&self, fstype: &str, options: &[FsOption], flags: MountFlags, target: &Path) -> Result<(), MountError> {
        mount_fs(fstype, options, flags, target)
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        unmount(target, false)
    }

    fn is_mountpoint(&self, path: &Path) -> bool {
        strata_sys::is_mountpoint(path)
    }
}

/// Mounts the EROFS file `image` read-only on `target`, unless it already is.
pub fn mount_image(m: &dyn Mounter, image: &Path, target: &Path) -> Result<bool, MountError> {
    if m.is_mountpoint(target) {
        return Ok(false);
    }
    std::fs::create_dir_all(target).map_err(|e| MountError::Mount {
        fstype: "erofs".into(),
        target: target.to_owned(),
        step: "mkdir",
        errno: e,
    })?;
    let options = [FsOption::String("source".into(), image.display().to_string())];
    let flags = MountFlags {
        read_only: true,
        nodev: false,
    };
    m.mount("erofs", &options, flags, target)?;
    Ok(true)
}

/// Mounts `plan` on `target`, preferring `lowerdir+`/`datadir+` and falling
/// back to `::` on kernels that lack them. Returns the mode used.
pub fn mount_overlay(m: &dyn Mounter, plan: &OverlayPlan, target: &Path) -> Result<LowerMode, MountError> {
    let flags = MountFlags {
        read_only: plan.upper.is_none(),
        nodev: false,
    };
    match m.mount("overlay", &plan.fs_options(LowerMode::Append), flags, target) {
        Ok(()) => Ok(LowerMode::Append),
        Err(e) if e.is_unsupported_option() => {
            tracing::info!("overlay lacks lowerdir+/datadir+; using lowerdir=META::DATA");
            m.mount("overlay", &plan.fs_options(LowerMode::DoubleColon), flags, target)?;
            Ok(LowerMode::DoubleColon)
        }
        Err(e) => Err(e),
    }
}

/// Unmounts an overlay, then its image's EROFS mount if nothing else uses it.
pub fn unmount_overlay(m: &dyn Mounter, target: &Path, image_mount: Option<&Path>) -> Result<(), MountError> {
    m.unmount(target)?;
    if let Some(image_mount) = image_mount {
        match m.unmount(image_mount) {
            Ok(()) | Err(MountError::Busy { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Unmounts and removes the image mount points under `mnt_dir` (named by
/// image id) that `keep` does not want. One still in use stays. Returns how
/// many went.
pub fn release_image_mounts(m: &dyn Mounter, mnt_dir: &Path, keep: impl Fn(&str) -> bool) -> Result<usize, MountError> {
    let listing_failed = |e| MountError::Unmount {
        target: mnt_dir.to_owned(),
        errno: e,
    };
    let mut released = 0;
    for entry in std::fs::read_dir(mnt_dir).map_err(listing_failed)? {
        let entry = entry.map_err(listing_failed)?;
        if keep(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        if m.is_mountpoint(&path) {
            match m.unmount(&path) {
                Ok(()) => {}
                Err(MountError::Busy { .. }) => {
                    tracing::info!("keeping {}: still in use", path.display());
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let _ = std::fs::remove_dir(&path);
        released += 1;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records calls; rejects `lowerdir+` to exercise the fallback.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        old_kernel: bool,
    }

    impl Mounter for Recorder {
        fn mount(
            &self,
            fstype: &str,
            options: &[FsOption],
            flags: MountFlags,
            target: &Path,
        ) -> Result<(), MountError> {
            if self.old_kernel
                && options
                    .iter()
                    .any(|o| matches!(o, FsOption::String(k, _) if k == "lowerdir+"))
            {
                return Err(MountError::Option {
                    fstype: fstype.into(),
                    option: "lowerdir+".into(),
                    errno: std::io::Error::from_raw_os_error(22),
                });
            }
            self.calls.borrow_mut().push(format!(
                "mount {fstype} ro={} {} {options:?}",
                flags.read_only,
                target.display()
            ));
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), MountError> {
            self.calls.borrow_mut().push(format!("umount {}", target.display()));
            Ok(())
        }
        fn is_mountpoint(&self, _: &Path) -> bool {
            false
        }
    }

    #[test]
    fn falls_back_to_double_colon() {
        let plan = OverlayPlan {
            meta: "/m".into(),
            data: "/o".into(),
            upper: None,
        };
        let old = Recorder {
            old_kernel: true,
            ..Default::default()
        };
        assert_eq!(
            mount_overlay(&old, &plan, Path::new("/t")).unwrap(),
            LowerMode::DoubleColon
        );
        assert!(old.calls.borrow()[0].contains("\"lowerdir\", \"/m::/o\""));
        assert!(old.calls.borrow()[0].contains("ro=true"));
        let new = Recorder::default();
        assert_eq!(mount_overlay(&new, &plan, Path::new("/t")).unwrap(), LowerMode::Append);
    }
}

//! Finding what the running kernel offers, by trying it: a few mounts of
//! empty directories and one tiny EROFS image in a private temporary
//! directory, each taken down again, and fs-verity on one small file.

use std::path::Path;

use strata_sys::{enable_verity, mount_fs, unmount, FsOption, MountError, MountFlags};

use crate::ladder::Offered;

/// The errno of a mount without CAP_SYS_ADMIN.
const EPERM: i32 = 1;

/// Probes the mounts in a fresh directory under the system's temporary
/// directory, and fs-verity with the file `verity_file`, which must be on
/// the store's filesystem (whose answer it is) and is removed again;
/// without one, fs-verity counts as missing. `erofs_image` is any valid
/// EROFS image, used to try a mount from a file.
pub fn probe(verity_file: Option<&Path>, erofs_image: &[u8]) -> std::io::Result<Offered> {
    let dir = tempfile::Builder::new().prefix("strata-probe-").tempdir()?;
    let at = |name: &str| -> std::io::Result<std::path::PathBuf> {
        let path = dir.path().join(name);
        std::fs::create_dir(&path)?;
        Ok(path)
    };
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let erofs = filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("erofs"));

    let image = dir.path().join("probe.erofs");
    std::fs::write(&image, erofs_image)?;
    let erofs_file = erofs && tried("erofs", &[source(&image)], &at("erofs")?)?;

    let (lower, data) = (at("lower")?, at("data")?);
    let append = [
        FsOption::String("lowerdir+".into(), lower.display().to_string()),
        FsOption::String("datadir+".into(), data.display().to_string()),
    ];
    let double_colon = [FsOption::String(
        "lowerdir".into(),
        format!("{}::{}", lower.display(), data.display()),
    )];
    let lowers_append = tried("overlay", &append, &at("append")?)?;
    let lowers_double_colon = tried("overlay", &double_colon, &at("double-colon")?)?;

    Ok(Offered {
        erofs,
        erofs_file,
        loop_devices: Path::new("/dev/loop-control").exists(),
        lowers_append,
        lowers_double_colon,
        verity: verity_file.is_some_and(verity_works),
    })
}

fn source(path: &Path) -> FsOption {
    FsOption::String("source".into(), path.display().to_string())
}

/// Whether a read-only mount of `fstype` with `options` succeeds on `target`;
/// it is unmounted again. Without the right to mount, nothing can be
/// learnt: that is an error, not a missing feature.
fn tried(fstype: &str, options: &[FsOption], target: &Path) -> std::io::Result<bool> {
    let flags = MountFlags {
        read_only: true,
        nodev: true,
    };
    match mount_fs(fstype, options, flags, target) {
        Ok(()) => {
            if let Err(e) = unmount(target, false).or_else(|_| unmount(target, true)) {
                tracing::warn!("probe: unmounting {}: {e}", target.display());
            }
            Ok(true)
        }
        Err(MountError::Mount { errno, .. }) if errno.raw_os_error() == Some(EPERM) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "mounting needs root (CAP_SYS_ADMIN)",
        )),
        Err(e) => {
            tracing::debug!("probe: {fstype} {options:?}: {e}");
            Ok(false)
        }
    }
}

/// Whether fs-verity can be enabled on a new file at `path`.
fn verity_works(path: &Path) -> bool {
    let enabled = std::fs::write(path, b"strata")
        .and_then(|()| std::fs::File::open(path))
        .and_then(|file| enable_verity(&file));
    let _ = std::fs::remove_file(path);
    if let Err(e) = &enabled {
        tracing::debug!("probe: fs-verity: {e}");
    }
    enabled.is_ok()
}

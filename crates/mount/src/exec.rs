//! Doing the mounts. [`Mounter`] is the seam: the real one calls the kernel;
//! tests can record calls instead.

use std::path::Path;

use strata_sys::{mount_fs, unmount, FsOption, MountError, MountFlags};

use crate::ladder::{ErofsSource, Ladder};
use crate::OverlayPlan;

pub trait Mounter {
    /// The kernel rungs this mounter uses.
    fn ladder(&self) -> Ladder;
    fn mount(&self, fstype: &str, options: &[FsOption], flags: MountFlags, target: &Path) -> Result<(), MountError>;
    /// Mounts the filesystem image `file` read-only through an autoclear
    /// loop device, so unmounting frees the device too.
    fn mount_through_loop(&self, fstype: &str, file: &Path, target: &Path) -> Result<(), MountError>;
    fn unmount(&self, target: &Path) -> Result<(), MountError>;
    fn is_mountpoint(&self, path: &Path) -> bool;
    /// How many overlays use `lower` as a lower layer.
    fn overlay_users(&self, lower: &Path) -> usize;
    /// Whether a mount writes into `dir`: an overlay with it as upper dir,
    /// or a mount of `dir` itself.
    fn writes_into(&self, dir: &Path) -> bool;
}

/// The kernel, used through the rungs of its [`Ladder`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel {
    pub ladder: Ladder,
}

impl Mounter for Kernel {
    fn ladder(&self) -> Ladder {
        self.ladder
    }

    fn mount(&self, fstype: &str, options: &[FsOption], flags: MountFlags, target: &Path) -> Result<(), MountError> {
        mount_fs(fstype, options, flags, target)
    }

    fn mount_through_loop(&self, fstype: &str, file: &Path, target: &Path) -> Result<(), MountError> {
        mount_file_through_loop(fstype, "loop,ro", file, target)
    }

    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        unmount(target, false)
    }

    fn is_mountpoint(&self, path: &Path) -> bool {
        strata_sys::is_mountpoint(path)
    }

    fn overlay_users(&self, lower: &Path) -> usize {
        // Unreadable: count one user, so the image mount stays.
        std::fs::read_to_string("/proc/self/mountinfo").map_or(1, |text| count_overlay_users(&text, lower))
    }

    fn writes_into(&self, dir: &Path) -> bool {
        // mountinfo names real paths: a store reached through a symlink
        // must be compared as it resolves.
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        // Unreadable: in use, the careful answer.
        std::fs::read_to_string("/proc/self/mountinfo").map_or(true, |text| mount_writes_into(&text, &dir))
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
    match m.ladder().erofs {
        ErofsSource::File => {
            let options = [FsOption::String("source".into(), image.display().to_string())];
            let flags = MountFlags {
                read_only: true,
                nodev: false,
            };
            m.mount("erofs", &options, flags, target)?;
        }
        ErofsSource::Loop => m.mount_through_loop("erofs", image, target)?,
    }
    Ok(true)
}

/// Mounts `plan` on `target` with the data-only lower passed the way the
/// mounter's ladder says.
pub fn mount_overlay(m: &dyn Mounter, plan: &OverlayPlan, target: &Path) -> Result<(), MountError> {
    let flags = MountFlags {
        read_only: plan.upper.is_none(),
        nodev: false,
    };
    m.mount("overlay", &plan.fs_options(m.ladder().lowers), flags, target)
}

/// fsconfig takes a string option of at most this many bytes.
const FSCONFIG_STRING_MAX: usize = 255;

/// [`mount_overlay`] with a lazily pulled image's further data-only
/// lowers, ALIASES and LAZY (see [`OverlayPlan::fs_options_with_data`]). On the `::` rung, whose one
/// `lowerdir` string fsconfig caps at 255 bytes, data-only lowers are named
/// `/proc/self/fd/N` (directories held open until the mount is made) when
/// their paths would not fit; overlayfs resolves them then, and META keeps
/// its path (image users are counted by it).
pub fn mount_overlay_with_data(
    m: &dyn Mounter,
    plan: &OverlayPlan,
    more_data: &[std::path::PathBuf],
    target: &Path,
) -> Result<(), MountError> {
    let flags = MountFlags {
        read_only: plan.upper.is_none(),
        nodev: false,
    };
    let mode = m.ladder().lowers;
    let options = plan.fs_options_with_data(mode, more_data);
    let too_long = options
        .iter()
        .any(|o| matches!(o, FsOption::String(k, v) if k == "lowerdir" && v.len() > FSCONFIG_STRING_MAX));
    if !too_long {
        return m.mount("overlay", &options, flags, target);
    }
    let open = |dir: &Path| {
        std::fs::File::open(dir).map_err(|errno| MountError::Mount {
            fstype: "overlay".into(),
            target: target.to_owned(),
            step: "open a data-only lower",
            errno,
        })
    };
    let held: Vec<std::fs::File> = std::iter::once(plan.data.as_path())
        .chain(more_data.iter().map(|d| d.as_path()))
        .map(open)
        .collect::<Result<_, _>>()?;
    let by_fd: Vec<std::path::PathBuf> = held
        .iter()
        .map(|f| format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f)).into())
        .collect();
    let short = OverlayPlan {
        data: by_fd[0].clone(),
        ..plan.clone()
    };
    let result = m.mount("overlay", &short.fs_options_with_data(mode, &by_fd[1..]), flags, target);
    drop(held);
    result
}

/// Mounts the filesystem image `file` on `target` through mount(8) with
/// `options` (which include `loop`): it sets up the device with autoclear,
/// so a crash cannot leak a device that is not mounted.
pub fn mount_file_through_loop(fstype: &str, options: &str, file: &Path, target: &Path) -> Result<(), MountError> {
    let failed = |step, errno| MountError::Mount {
        fstype: fstype.to_owned(),
        target: target.to_owned(),
        step,
        errno,
    };
    std::fs::create_dir_all(target).map_err(|e| failed("mkdir", e))?;
    let out = std::process::Command::new("mount")
        .args(["-t", fstype, "-o", options])
        .arg(file)
        .arg(target)
        .output()
        .map_err(|e| failed("run mount(8)", e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(failed("mount(8) through a loop device", std::io::Error::other(stderr)));
    }
    Ok(())
}

/// Unmounts an overlay, then its image's EROFS mount if no other overlay
/// uses it. An overlay does not keep its lower mount busy, so the users
/// are counted from the mount table; hold [`lock_image_mounts`] around the
/// mounts and this, so that the count cannot change under it.
pub fn unmount_overlay(m: &dyn Mounter, target: &Path, image_mount: Option<&Path>) -> Result<(), MountError> {
    m.unmount(target)?;
    if let Some(image_mount) = image_mount {
        if m.is_mountpoint(image_mount) && m.overlay_users(image_mount) == 0 {
            match m.unmount(image_mount) {
                Ok(()) | Err(MountError::Busy { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Held while image mounts under one `mnt/` dir are made or taken down,
/// across processes (a `flock` on the directory).
pub struct ImageMountLock(#[allow(dead_code)] std::os::fd::OwnedFd);

/// Takes [`ImageMountLock`] for `mnt_dir`, creating the directory if needed.
pub fn lock_image_mounts(mnt_dir: &Path) -> Result<ImageMountLock, MountError> {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let failed = |step, e: std::io::Error| MountError::Mount {
        fstype: "erofs".into(),
        target: mnt_dir.to_owned(),
        step,
        errno: e,
    };
    std::fs::create_dir_all(mnt_dir).map_err(|e| failed("mkdir", e))?;
    let fd = rustix::fs::open(
        mnt_dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| failed("open", e.into()))?;
    rustix::fs::flock(&fd, FlockOperation::LockExclusive).map_err(|e| failed("lock", e.into()))?;
    Ok(ImageMountLock(fd))
}

/// One line of `/proc/self/mountinfo`, its fields still escaped.
struct MountLine<'a> {
    /// `major:minor` of the filesystem.
    device: &'a str,
    /// The directory of that filesystem the mount shows.
    root: &'a str,
    mount_point: &'a str,
    fstype: &'a str,
    super_options: &'a str,
}

fn mount_lines(mountinfo: &str) -> impl Iterator<Item = MountLine<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        let mut head = head.split(' ').skip(2);
        let (device, root, mount_point) = (head.next()?, head.next()?, head.next()?);
        let mut tail = tail.split(' ');
        let fstype = tail.next()?;
        let super_options = tail.nth(1)?;
        Some(MountLine {
            device,
            root,
            mount_point,
            fstype,
            super_options,
        })
    })
}

/// The values of an overlay's `keys` options, unescaped.
fn overlay_values<'a>(line: &'a MountLine<'_>, keys: &'a [&str]) -> impl Iterator<Item = String> + 'a {
    line.super_options
        .split(',')
        .filter(move |_| line.fstype == "overlay")
        .filter_map(move |option| {
            let (key, value) = option.split_once('=')?;
            keys.contains(&key).then(|| unescape(value))
        })
}

/// How many overlays in `mountinfo` name `lower` as a lower layer.
pub fn count_overlay_users(mountinfo: &str, lower: &Path) -> usize {
    let lower = lower.to_string_lossy();
    mount_lines(mountinfo)
        .filter(|line| {
            overlay_values(line, &["lowerdir", "lowerdir+"])
                .any(|value| value.split(':').any(|layer| layer == lower.as_ref()))
        })
        .count()
}

/// Whether a mount in `mountinfo` writes into `dir` (absolute, without
/// symlinks): an overlay whose upper dir it is, or a mount showing `dir`
/// itself (a bind mount), found as a mount of the filesystem `dir` is on
/// whose root is `dir`.
pub fn mount_writes_into(mountinfo: &str, dir: &Path) -> bool {
    let shown = dir.to_string_lossy();
    let lines: Vec<MountLine<'_>> = mount_lines(mountinfo).collect();
    if lines
        .iter()
        .any(|line| overlay_values(line, &["upperdir"]).any(|upper| upper == shown.as_ref()))
    {
        return true;
    }
    // The mount `dir` is seen through: the deepest mount point above it
    // (the last mounted there).
    let Some((holder, below)) = lines
        .iter()
        .rev()
        .filter_map(|line| Some((line, dir.strip_prefix(unescape(line.mount_point)).ok()?)))
        .min_by_key(|(_, below)| below.components().count())
    else {
        return false;
    };
    let root = Path::new(&unescape(holder.root)).join(below);
    lines.iter().any(|line| {
        line.device == holder.device && Path::new(&unescape(line.root)) == root && !std::ptr::eq(line, holder)
    })
}

/// Undoes mountinfo's `\ooo` escapes (and overlay's `\` before `:`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b'\\', None) if i + 1 < bytes.len() => {
                out.push(bytes[i + 1]);
                i += 2;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
            if m.overlay_users(&path) > 0 {
                tracing::info!("keeping {}: an overlay uses it", path.display());
                continue;
            }
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
    use crate::LowerMode;
    use std::cell::RefCell;

    /// Records calls, with the ladder it is given.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        ladder: Ladder,
    }

    impl Mounter for Recorder {
        fn ladder(&self) -> Ladder {
            self.ladder
        }
        fn mount(
            &self,
            fstype: &str,
            options: &[FsOption],
            flags: MountFlags,
            target: &Path,
        ) -> Result<(), MountError> {
            self.calls.borrow_mut().push(format!(
                "mount {fstype} ro={} {} {options:?}",
                flags.read_only,
                target.display()
            ));
            Ok(())
        }
        fn mount_through_loop(&self, fstype: &str, file: &Path, target: &Path) -> Result<(), MountError> {
            self.calls
                .borrow_mut()
                .push(format!("loop {fstype} {} {}", file.display(), target.display()));
            Ok(())
        }
        fn unmount(&self, target: &Path) -> Result<(), MountError> {
            self.calls.borrow_mut().push(format!("umount {}", target.display()));
            Ok(())
        }
        fn is_mountpoint(&self, _: &Path) -> bool {
            false
        }
        fn overlay_users(&self, _: &Path) -> usize {
            0
        }
        fn writes_into(&self, _: &Path) -> bool {
            false
        }
    }

    #[test]
    fn finds_mounts_writing_into_a_dir() {
        let text = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                    30 22 7:0 / /var/s rw - ext4 /dev/loop0 rw\n\
                    44 22 0:39 / /run/c1 rw - overlay overlay lowerdir+=/var/s/mnt/ab,upperdir=/var/s/snapshots/5/fs,workdir=/var/s/snapshots/5/work\n\
                    45 22 7:0 /snapshots/7/fs /run/c2 rw - ext4 /dev/loop0 rw\n\
                    46 22 7:0 /snapshots/8/fs/sub /run/c3 rw - ext4 /dev/loop0 rw\n\
                    47 22 7:1 /snapshots/9/fs /run/c4 rw - ext4 /dev/loop1 rw\n";
        let writes = |dir: &str| mount_writes_into(text, Path::new(dir));
        assert!(writes("/var/s/snapshots/5/fs"), "an overlay's upper dir");
        assert!(writes("/var/s/snapshots/7/fs"), "bound elsewhere");
        assert!(!writes("/var/s/snapshots/8/fs"), "only a dir below it is bound");
        assert!(
            !writes("/var/s/snapshots/9/fs"),
            "another filesystem's dir of that name"
        );
        assert!(!writes("/var/s/snapshots/6/fs"));
        // The filesystem's own mount is no bind of a dir in it.
        assert!(!writes("/var/s"));
    }

    #[test]
    fn counts_overlays_on_a_lower() {
        let text =
            "44 27 0:39 / /t/a rw - overlay overlay ro,lowerdir+=/s/mnt/ab,datadir+=/s/objects,redirect_dir=on\n\
                    47 27 0:42 / /t/b rw - overlay overlay ro,lowerdir=/s/mnt/ab::/s/objects,redirect_dir=on\n\
                    48 27 0:43 / /t/c rw - overlay overlay ro,lowerdir=/s/mnt/abc::/s/objects\n\
                    49 27 0:44 / /t/d rw - overlay overlay lowerdir=/x:/s/mnt/sp\\040ace\n\
                    50 27 0:45 / /s/mnt/ab ro - erofs none ro\n";
        assert_eq!(count_overlay_users(text, Path::new("/s/mnt/ab")), 2);
        assert_eq!(count_overlay_users(text, Path::new("/s/mnt/abc")), 1);
        assert_eq!(count_overlay_users(text, Path::new("/s/mnt/sp ace")), 1);
        assert_eq!(count_overlay_users(text, Path::new("/s/mnt/none")), 0);
    }

    #[test]
    fn four_lowers_too_long_for_one_string_are_named_by_fd() {
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("d".repeat(100));
        let dirs: Vec<std::path::PathBuf> = ["objects", "sha256", "lazy"].iter().map(|d| long.join(d)).collect();
        dirs.iter().for_each(|d| std::fs::create_dir_all(d).unwrap());
        let plan = OverlayPlan {
            meta: long.join("meta"),
            data: dirs[0].clone(),
            upper: None,
        };
        let mounter = |lowers| Recorder {
            ladder: Ladder {
                lowers,
                ..Ladder::default()
            },
            ..Default::default()
        };
        let colons = mounter(LowerMode::DoubleColon);
        mount_overlay_with_data(&colons, &plan, &dirs[1..], Path::new("/t")).unwrap();
        let call = colons.calls.borrow()[0].clone();
        assert_eq!(call.matches("/proc/self/fd/").count(), 3, "{call}");
        assert!(
            call.contains(&format!("lowerdir\", \"{}::/proc/self/fd/", plan.meta.display())),
            "{call}"
        );
        // Short enough, or lowerdir+/datadir+: paths as they are.
        let append = mounter(LowerMode::Append);
        mount_overlay_with_data(&append, &plan, &dirs[1..], Path::new("/t")).unwrap();
        let call = append.calls.borrow()[0].clone();
        assert!(!call.contains("/proc/self/fd/") && call.contains("/lazy"), "{call}");
        let short = OverlayPlan {
            meta: "/m".into(),
            data: "/o".into(),
            upper: None,
        };
        let colons = mounter(LowerMode::DoubleColon);
        mount_overlay_with_data(&colons, &short, &["/a".into(), "/l".into()], Path::new("/t")).unwrap();
        assert!(
            colons.calls.borrow()[0].contains("/m::/a::/o::/l"),
            "{:?}",
            colons.calls
        );
    }

    #[test]
    fn mounts_follow_the_ladder() {
        let plan = OverlayPlan {
            meta: "/m".into(),
            data: "/o".into(),
            upper: None,
        };
        let lower_rungs = Recorder {
            ladder: Ladder {
                erofs: ErofsSource::Loop,
                lowers: LowerMode::DoubleColon,
                ..Ladder::default()
            },
            ..Default::default()
        };
        let tmp = tempfile::tempdir().unwrap();
        let meta = tmp.path().join("meta");
        assert!(mount_image(&lower_rungs, Path::new("/i.erofs"), &meta).unwrap());
        mount_overlay(&lower_rungs, &plan, Path::new("/t")).unwrap();
        let calls = lower_rungs.calls.borrow();
        assert_eq!(calls[0], format!("loop erofs /i.erofs {}", meta.display()));
        assert!(calls[1].contains("\"lowerdir\", \"/m::/o\""), "{}", calls[1]);
        assert!(calls[1].contains("ro=true"));

        let top = Recorder::default();
        assert!(mount_image(&top, Path::new("/i.erofs"), &meta).unwrap());
        mount_overlay(&top, &plan, Path::new("/t")).unwrap();
        let calls = top.calls.borrow();
        assert!(calls[0].starts_with("mount erofs ro=true") && calls[0].contains("/i.erofs"));
        assert!(calls[1].contains("\"lowerdir+\", \"/m\"") && calls[1].contains("\"datadir+\", \"/o\""));
    }
}

//! Scratch dirs whose size the store's own filesystem enforces (the I/O
//! half of [`crate::mechanism`]): finding out what a filesystem can do,
//! and making and removing a btrfs subvolume with a qgroup limit or a
//! directory with a project quota. Each `create_*` leaves nothing behind
//! when it fails.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use strata_sys::quota::{self, btrfs, ProjectQuota};

use crate::mechanism::{self, FsFacts, Mechanism, Plan};

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: none of the {tried} project ids tried is free", path.display())]
    NoProjectId { path: PathBuf, tried: usize },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> QuotaError + 'a {
    move |source| QuotaError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn open_dir(path: &Path) -> Result<File, QuotaError> {
    File::open(path).map_err(io_err("open", path))
}

/// The parent directory and the name of `path`, as the btrfs ioctls take them.
fn split(path: &Path) -> Result<(File, CString), QuotaError> {
    let bad = || io_err("name", path)(io::Error::from(io::ErrorKind::InvalidInput));
    let parent = path.parent().ok_or_else(bad)?;
    let name = CString::new(path.file_name().ok_or_else(bad)?.as_bytes()).map_err(|_| bad())?;
    Ok((open_dir(parent)?, name))
}

/// What the filesystem holding `dir` (or its nearest existing ancestor)
/// can do.
pub fn probe(dir: &Path) -> Result<FsFacts, QuotaError> {
    let mut at = dir;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    let st = rustix::fs::statfs(at).map_err(|e| io_err("statfs", at)(e.into()))?;
    // f_type is signed on some targets; the magic numbers are positive.
    let magic = u64::try_from(st.f_type).unwrap_or_default();
    Ok(match magic {
        mechanism::BTRFS_MAGIC => FsFacts::Btrfs {
            quotas: btrfs_sysfs(at)?.join("qgroups").is_dir(),
        },
        mechanism::EXT4_MAGIC => FsFacts::Ext4 {
            prjquota: prjquota_on(at)?,
        },
        mechanism::XFS_MAGIC => FsFacts::Xfs {
            prjquota: prjquota_on(at)?,
        },
        magic => FsFacts::Other { magic },
    })
}

/// The mechanism for a scratch in `dir`, and why if it is the fallback.
pub fn detect(dir: &Path) -> Result<Plan, QuotaError> {
    Ok(mechanism::plan(&probe(dir)?))
}

fn prjquota_on(dir: &Path) -> Result<bool, QuotaError> {
    let st = rustix::fs::stat(dir).map_err(|e| io_err("stat", dir)(e.into()))?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(mountinfo).map_err(io_err("read", mountinfo))?;
    Ok(mechanism::super_options(&text, major, minor).is_some_and(|o| mechanism::prjquota_enforced(&o)))
}

/// `/sys/fs/btrfs/<uuid>` of the btrfs holding `dir`.
fn btrfs_sysfs(dir: &Path) -> Result<PathBuf, QuotaError> {
    let fd = open_dir(dir)?;
    let u = btrfs::fs_uuid(fd.as_fd()).map_err(io_err("read the btrfs uuid of", dir))?;
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    );
    Ok(Path::new("/sys/fs/btrfs").join(uuid))
}

/// Makes `dir` a new btrfs subvolume whose qgroup may reference at most
/// `bytes`, and returns its qgroup id. Fails (leaving nothing) when the
/// filesystem's quotas are off.
pub fn create_subvolume(dir: &Path, bytes: u64) -> Result<u64, QuotaError> {
    let (parent, name) = split(dir)?;
    btrfs::create_subvolume(parent.as_fd(), &name).map_err(io_err("create subvolume", dir))?;
    let limited = (|| {
        let fd = open_dir(dir)?;
        let qgroup = btrfs::subvolume_id(fd.as_fd()).map_err(io_err("look up the subvolume id of", dir))?;
        btrfs::limit_qgroup(fd.as_fd(), qgroup, bytes).map_err(io_err("set the qgroup limit of", dir))?;
        Ok(qgroup)
    })();
    if limited.is_err() {
        if let Err(e) = btrfs::delete_subvolume(parent.as_fd(), &name) {
            tracing::warn!("rolling back: deleting subvolume {}: {e}", dir.display());
        }
    }
    limited
}

/// Deletes the subvolume `dir` and everything in it, then its qgroup if
/// the kernel lets it go yet (else the kernel drops it once the cleaner
/// has freed the subvolume's space). A missing `dir` is fine.
pub fn remove_subvolume(dir: &Path, qgroup: u64) -> Result<(), QuotaError> {
    let (parent, name) = split(dir)?;
    match btrfs::delete_subvolume(parent.as_fd(), &name) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("delete subvolume", dir)(e)),
    }
    if let Err(e) = btrfs::remove_qgroup(parent.as_fd(), qgroup) {
        tracing::debug!(
            qgroup,
            "qgroup of deleted subvolume {} stays for now: {e}",
            dir.display()
        );
    }
    Ok(())
}

/// Bytes the qgroup of subvolume `dir` references now, from sysfs.
pub fn subvolume_used(dir: &Path, qgroup: u64) -> Result<u64, QuotaError> {
    let file = btrfs_sysfs(dir)?.join("qgroups").join(format!("0_{qgroup}/referenced"));
    let text = std::fs::read_to_string(&file).map_err(io_err("read", &file))?;
    text.trim()
        .parse()
        .map_err(|_| io_err("parse", &file)(io::ErrorKind::InvalidData.into()))
}

/// The project-quota calls, a seam so tests can record them where the
/// kernel has no quota support.
pub trait ProjectQuotas {
    fn set_project(&self, dir: BorrowedFd<'_>, id: u32) -> io::Result<()>;
    fn quota(&self, fd: BorrowedFd<'_>, id: u32) -> io::Result<ProjectQuota>;
    fn set_limit(&self, fd: BorrowedFd<'_>, id: u32, bytes: u64) -> io::Result<()>;
}

/// The real kernel.
pub struct Kernel;

impl ProjectQuotas for Kernel {
    fn set_project(&self, dir: BorrowedFd<'_>, id: u32) -> io::Result<()> {
        quota::set_project(dir, id)
    }
    fn quota(&self, fd: BorrowedFd<'_>, id: u32) -> io::Result<ProjectQuota> {
        quota::project_quota(fd, id)
    }
    fn set_limit(&self, fd: BorrowedFd<'_>, id: u32, bytes: u64) -> io::Result<()> {
        quota::set_project_limit(fd, id, bytes)
    }
}

/// Makes the new directory `dir` with the first project id among
/// `candidates` that nothing uses (no limit, nothing charged), inherited
/// by all made below it, limited to `bytes`. Returns the id.
pub fn create_project_dir(
    q: &impl ProjectQuotas,
    dir: &Path,
    candidates: impl Iterator<Item = u32>,
    bytes: u64,
) -> Result<u32, QuotaError> {
    std::fs::create_dir(dir).map_err(io_err("create", dir))?;
    let made = (|| {
        let fd = open_dir(dir)?;
        let mut tried = 0;
        for id in candidates {
            tried += 1;
            let usage = q
                .quota(fd.as_fd(), id)
                .map_err(io_err("read the project quota of", dir))?;
            if !usage.is_unused() {
                continue;
            }
            // Id first: the limit marks the id as taken for the next
            // scratch, so set it only once this dir carries the id.
            q.set_project(fd.as_fd(), id)
                .map_err(io_err("set the project id of", dir))?;
            q.set_limit(fd.as_fd(), id, bytes)
                .map_err(io_err("set the project quota of", dir))?;
            return Ok(id);
        }
        Err(QuotaError::NoProjectId {
            path: dir.to_owned(),
            tried,
        })
    })();
    if made.is_err() {
        // The limit is the last step: a failure never leaves one set.
        if let Err(e) = remove_project_dir(q, dir, None) {
            tracing::warn!("rolling back: {e}");
        }
    }
    made
}

/// Removes `dir` and all in it, then clears the limit of project `id`
/// (its usage is 0 by then, so the id is free again). With quotas off
/// there is no limit to clear.
pub fn remove_project_dir(q: &impl ProjectQuotas, dir: &Path, id: Option<u32>) -> Result<(), QuotaError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", dir)(e)),
    }
    if let Some(id) = id {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let fd = open_dir(parent)?;
        match q.set_limit(fd.as_fd(), id, 0) {
            Err(e) if !quota::quotas_off(&e) => return Err(io_err("clear the project quota of", dir)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Bytes and inodes charged to project `id`, which `dir` carries.
pub fn project_used(dir: &Path, id: u32) -> Result<(u64, u64), QuotaError> {
    let fd = open_dir(dir)?;
    let q = quota::project_quota(fd.as_fd(), id).map_err(io_err("read the project quota of", dir))?;
    Ok((q.used_bytes, q.used_inodes))
}

/// The mechanism limiting the scratch dir `dir` (a symlink is followed)
/// and the bytes it charges now; `None` for a dir with no quota of its own.
pub fn used_by_dir(dir: &Path) -> Result<Option<(Mechanism, u64)>, QuotaError> {
    let fd = open_dir(dir)?;
    if is_subvolume(&fd, dir)? {
        let qgroup = btrfs::subvolume_id(fd.as_fd()).map_err(io_err("look up the subvolume id of", dir))?;
        return Ok(Some((Mechanism::BtrfsQgroup, subvolume_used(dir, qgroup)?)));
    }
    match quota::project_of(fd.as_fd()) {
        Ok((id, _)) if id != 0 => {
            let q = quota::project_quota(fd.as_fd(), id).map_err(io_err("read the project quota of", dir))?;
            Ok(Some((Mechanism::ProjectQuota, q.used_bytes)))
        }
        _ => Ok(None),
    }
}

/// Whether `fd` (at `dir`) is the root of a btrfs subvolume.
fn is_subvolume(fd: &File, dir: &Path) -> Result<bool, QuotaError> {
    let st = rustix::fs::fstat(fd).map_err(|e| io_err("stat", dir)(e.into()))?;
    let fs = rustix::fs::fstatfs(fd).map_err(|e| io_err("statfs", dir)(e.into()))?;
    Ok(
        u64::try_from(fs.f_type).unwrap_or_default() == mechanism::BTRFS_MAGIC
            && st.st_ino == btrfs::SUBVOLUME_ROOT_INO,
    )
}

/// Removes a scratch dir no record names any more, whichever mechanism
/// made it: a subvolume is deleted, a project dir removed and its limit
/// cleared, anything else removed.
pub fn remove_unknown(dir: &Path) -> Result<(), QuotaError> {
    let fd = match File::open(dir) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("open", dir)(e)),
    };
    if is_subvolume(&fd, dir)? {
        let qgroup = btrfs::subvolume_id(fd.as_fd()).map_err(io_err("look up the subvolume id of", dir))?;
        drop(fd);
        return remove_subvolume(dir, qgroup);
    }
    let project = quota::project_of(fd.as_fd())
        .ok()
        .map(|(id, _)| id)
        .filter(|id| *id != 0);
    drop(fd);
    remove_project_dir(&Kernel, dir, project)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records calls; ids in `used` have usage; `fail_limit` fails the
    /// first Q_SETQUOTA.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        used: Vec<u32>,
        fail_limit: bool,
    }

    impl ProjectQuotas for Recorder {
        fn set_project(&self, _: BorrowedFd<'_>, id: u32) -> io::Result<()> {
            self.calls.borrow_mut().push(format!("set_project {id}"));
            Ok(())
        }
        fn quota(&self, _: BorrowedFd<'_>, id: u32) -> io::Result<ProjectQuota> {
            self.calls.borrow_mut().push(format!("quota {id}"));
            Ok(ProjectQuota {
                used_bytes: if self.used.contains(&id) { 4096 } else { 0 },
                ..ProjectQuota::default()
            })
        }
        fn set_limit(&self, _: BorrowedFd<'_>, id: u32, bytes: u64) -> io::Result<()> {
            let first = !self.calls.borrow().iter().any(|c| c.starts_with("set_limit"));
            self.calls.borrow_mut().push(format!("set_limit {id} {bytes}"));
            if self.fail_limit && first {
                return Err(io::Error::from_raw_os_error(3)); // ESRCH: quotas off
            }
            Ok(())
        }
    }

    #[test]
    fn project_dir_takes_the_first_free_id_then_sets_id_before_limit() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("7");
        let q = Recorder {
            used: vec![100],
            ..Recorder::default()
        };
        let id = create_project_dir(&q, &dir, [100, 101, 102].into_iter(), 1 << 30).unwrap();
        assert_eq!(id, 101);
        assert!(dir.is_dir());
        assert_eq!(
            *q.calls.borrow(),
            ["quota 100", "quota 101", "set_project 101", "set_limit 101 1073741824"]
        );
        q.calls.borrow_mut().clear();
        remove_project_dir(&q, &dir, Some(id)).unwrap();
        assert!(!dir.exists());
        assert_eq!(*q.calls.borrow(), ["set_limit 101 0"], "the limit goes after the files");
    }

    #[test]
    fn a_failed_project_dir_leaves_nothing() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("8");
        let q = Recorder {
            fail_limit: true,
            ..Recorder::default()
        };
        let err = create_project_dir(&q, &dir, [5].into_iter(), 1 << 20).unwrap_err();
        assert!(err.to_string().contains("set the project quota"), "{err}");
        assert!(!dir.exists());
        let all_used = Recorder {
            used: vec![1, 2],
            ..Recorder::default()
        };
        let err = create_project_dir(&all_used, &dir, [1, 2].into_iter(), 1 << 20).unwrap_err();
        assert!(matches!(err, QuotaError::NoProjectId { tried: 2, .. }), "{err}");
        assert!(!dir.exists());
        std::fs::create_dir(&dir).unwrap();
        assert!(
            create_project_dir(&Recorder::default(), &dir, [1].into_iter(), 1).is_err(),
            "never takes over an existing dir"
        );
        assert!(dir.is_dir(), "and leaves it alone");
    }

    /// The real ioctls on XFS, which keeps project ids without quotas
    /// (this CI kernel has no XFS or ext4 quota support): ids are set and
    /// inherited, and with quotas off a project dir is refused and undone.
    #[test]
    fn project_ids_on_xfs_without_quotas() {
        use std::process::Command;
        let base = tempfile::tempdir().unwrap();
        let image = base.path().join("xfs.img");
        File::create(&image).unwrap().set_len(512 << 20).unwrap();
        let mkfs = Command::new("mkfs.xfs").arg("-q").arg(&image).output().unwrap();
        assert!(mkfs.status.success(), "{mkfs:?}");
        let mnt = base.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(mount.status.success(), "mounting xfs needs root: {mount:?}");
        let result = std::panic::catch_unwind(|| {
            assert_eq!(probe(&mnt).unwrap(), FsFacts::Xfs { prjquota: false });
            let dir = mnt.join("d");
            std::fs::create_dir(&dir).unwrap();
            let fd = open_dir(&dir).unwrap();
            assert_eq!(quota::project_of(fd.as_fd()).unwrap(), (0, false));
            Kernel.set_project(fd.as_fd(), 0x5354_0001).unwrap();
            assert_eq!(quota::project_of(fd.as_fd()).unwrap(), (0x5354_0001, true));
            std::fs::create_dir(dir.join("sub")).unwrap();
            let sub = open_dir(&dir.join("sub")).unwrap();
            assert_eq!(
                quota::project_of(sub.as_fd()).unwrap(),
                (0x5354_0001, true),
                "inherited"
            );
            let err = Kernel.quota(fd.as_fd(), 0x5354_0001).unwrap_err();
            assert!(quota::quotas_off(&err), "{err}");
            let p = mnt.join("p");
            assert!(create_project_dir(&Kernel, &p, [0x5354_0002].into_iter(), 1 << 30).is_err());
            assert!(!p.exists(), "undone");
            remove_unknown(&dir).unwrap();
            assert!(!dir.exists());
        });
        let _ = Command::new("umount").arg(&mnt).status();
        result.unwrap();
    }

    #[test]
    fn probe_finds_the_nearest_existing_dir() {
        let base = tempfile::tempdir().unwrap();
        let facts = probe(&base.path().join("not/yet/made")).unwrap();
        assert_eq!(facts, probe(base.path()).unwrap());
    }
}

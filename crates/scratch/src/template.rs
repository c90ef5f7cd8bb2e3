//! Scratch filesystem images: an empty formatted template per (size,
//! filesystem) in a directory, made once under a lock, and clones of it per
//! container: a reflink where the filesystem has one, else a sparse copy of
//! the data extents only. Never a second format, never a copy of zeros.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rustix::fs::{FlockOperation, SeekFrom};
use rustix::io::Errno;

use crate::FsKind;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting {}: {stderr}", path.display())]
    Mount { path: PathBuf, stderr: String },
    #[error("formatting {}: {tool} failed: {stderr}", path.display())]
    Format {
        path: PathBuf,
        tool: &'static str,
        stderr: String,
    },
    #[error(transparent)]
    Quota(#[from] crate::QuotaError),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Io { op, path, source }
}

/// How a clone was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneMethod {
    Reflink,
    SparseCopy,
}

fn fs_name(fs: FsKind) -> &'static str {
    match fs {
        FsKind::Ext4 => "ext4",
        FsKind::Xfs => "xfs",
    }
}

/// The template for `bytes` and `fs` in `dir`, formatted if it does not exist
/// yet. Returns its path and whether this call formatted it.
pub fn ensure_template(dir: &Path, bytes: u64, fs: FsKind) -> Result<(PathBuf, bool), TemplateError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = dir.join(format!("template-{}-{bytes}.img", fs_name(fs)));
    if path.exists() {
        return Ok((path, false));
    }
    let lock_path = dir.join(".template.lock");
    let lock = File::create(&lock_path).map_err(io("open", &lock_path))?;
    rustix::fs::flock(&lock, FlockOperation::LockExclusive).map_err(|e| io("lock", &lock_path)(e.into()))?;
    if path.exists() {
        return Ok((path, false));
    }
    let tmp = dir.join(format!(".template-{}-{bytes}.tmp-{}", fs_name(fs), std::process::id()));
    let result = format_new(&tmp, bytes, fs).and_then(|()| std::fs::rename(&tmp, &path).map_err(io("rename", &path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok((path, true))
}

fn format_new(tmp: &Path, bytes: u64, fs: FsKind) -> Result<(), TemplateError> {
    let file = File::create(tmp).map_err(io("create", tmp))?;
    file.set_len(bytes).map_err(io("size", tmp))?;
    drop(file);
    let (tool, args): (&'static str, &[&str]) = match fs {
        // Lazy init and no discard: formatting writes only metadata.
        FsKind::Ext4 => (
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            ],
        ),
        FsKind::Xfs => ("mkfs.xfs", &["-q", "-f", "-K", "-m", "reflink=1"]),
    };
    let out = Command::new(tool)
        .args(args)
        .arg(tmp)
        .output()
        .map_err(io("run mkfs for", tmp))?;
    if !out.status.success() {
        return Err(TemplateError::Format {
            path: tmp.to_owned(),
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    File::open(tmp).and_then(|f| f.sync_all()).map_err(io("fsync", tmp))
}

/// Clones `src` to a new file `dst`: a reflink if possible, otherwise a copy
/// of the data extents only, so holes stay holes. On error `dst` is removed.
pub fn clone_file(src: &Path, dst: &Path) -> Result<CloneMethod, TemplateError> {
    let from = File::open(src).map_err(io("open", src))?;
    let to = File::options()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(io("create", dst))?;
    let result = clone_into(&from, &to, src, dst);
    if result.is_err() {
        drop(to);
        let _ = std::fs::remove_file(dst);
    }
    result
}

fn clone_into(from: &File, to: &File, src: &Path, dst: &Path) -> Result<CloneMethod, TemplateError> {
    let method = match rustix::fs::ioctl_ficlone(to, from) {
        Ok(()) => CloneMethod::Reflink,
        Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {
            sparse_copy(from, to, src)?;
            CloneMethod::SparseCopy
        }
        Err(e) => return Err(io("reflink", dst)(e.into())),
    };
    to.sync_all().map_err(io("fsync", dst))?;
    Ok(method)
}

fn sparse_copy(from: &File, to: &File, src: &Path) -> Result<(), TemplateError> {
    let len = from.metadata().map_err(io("stat", src))?.len();
    to.set_len(len).map_err(io("size", src))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0;
    while offset < len {
        let data = match rustix::fs::seek(from, SeekFrom::Data(offset)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(io("seek data", src)(e.into())),
        };
        let hole = rustix::fs::seek(from, SeekFrom::Hole(data)).map_err(|e| io("seek hole", src)(e.into()))?;
        let mut at = data;
        while at < hole {
            let want = usize::try_from((hole - at).min(buf.len() as u64)).expect("at most the buffer size");
            let n = from.read_at(&mut buf[..want], at).map_err(io("read", src))?;
            if n == 0 {
                break;
            }
            to.write_all_at(&buf[..n], at).map_err(io("write", src))?;
            at += n as u64;
        }
        offset = hole;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn template_is_formatted_once_and_cloned_sparsely() {
        let dir = tempfile::tempdir().unwrap();
        let (template, formatted) = ensure_template(dir.path(), 20 << 30, FsKind::Ext4).unwrap();
        assert!(formatted);
        let (again, formatted) = ensure_template(dir.path(), 20 << 30, FsKind::Ext4).unwrap();
        assert_eq!((again.as_path(), formatted), (template.as_path(), false));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "template and lock, no temp file"
        );

        let clone = dir.path().join("c1.img");
        let started = std::time::Instant::now();
        let method = clone_file(&template, &clone).unwrap();
        let took = started.elapsed();
        let (t, c) = (allocated(&template), allocated(&clone));
        eprintln!("20 GiB template: {t} bytes allocated; clone ({method:?}): {c} bytes in {took:?}");
        assert!(c <= t + (1 << 20), "the clone allocates no more than the template");
        assert!(t < 1 << 30, "the template is sparse");
        let fsck = Command::new("fsck.ext4")
            .arg("-n")
            .arg("-f")
            .arg(&clone)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{fsck:?}");
        assert!(clone_file(&template, &clone).is_err(), "never overwrites");
    }

    #[test]
    fn sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"middle", 32 << 20).unwrap();
        f.sync_all().unwrap();
        let dst = dir.path().join("dst");
        let to = File::options().write(true).create_new(true).open(&dst).unwrap();
        sparse_copy(&File::open(&src).unwrap(), &to, &src).unwrap();
        drop(to);
        let mut head = [0u8; 4];
        let mut mid = [0u8; 6];
        let d = File::open(&dst).unwrap();
        d.read_exact_at(&mut head, 0).unwrap();
        d.read_exact_at(&mut mid, 32 << 20).unwrap();
        assert_eq!((&head, &mid), (b"head", b"middle"));
        assert_eq!(d.metadata().unwrap().len(), 64 << 20);
        assert!(allocated(&dst) < 1 << 20, "holes stay holes: {}", allocated(&dst));
    }

    #[test]
    fn mkfs_failure_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // Far too small for ext4: mkfs fails.
        let err = ensure_template(dir.path(), 4096, FsKind::Ext4).unwrap_err();
        assert!(matches!(err, TemplateError::Format { .. }), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".template.lock")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// On xfs (reflink=1, mounted from a loop image) the clone is a reflink.
    #[test]
    fn clone_is_a_reflink_on_xfs() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("xfs.img");
        File::create(&image).unwrap().set_len(512 << 20).unwrap();
        let mkfs = Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", "reflink=1"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(mkfs.status.success(), "{mkfs:?}");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mount = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(mount.status.success(), "mounting xfs needs root: {mount:?}");
        let result = std::panic::catch_unwind(|| {
            let (template, _) = ensure_template(&mnt.join("templates"), 1 << 30, FsKind::Ext4).unwrap();
            let clone = mnt.join("c.img");
            assert_eq!(clone_file(&template, &clone).unwrap(), CloneMethod::Reflink);
            let fsck = Command::new("fsck.ext4")
                .arg("-n")
                .arg("-f")
                .arg(&clone)
                .output()
                .unwrap();
            assert!(fsck.status.success(), "{fsck:?}");
        });
        let _ = Command::new("umount").arg(&mnt).status();
        result.unwrap();
    }
}

//! Opening names below a directory fd without following any symlink, so a
//! tree that another process changes can never lead the caller outside it,
//! and opening regular files only after an `O_PATH` look at what they are
//! (opening a FIFO blocks, opening a device can have side effects).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{openat2, FileType, Mode, OFlags, ResolveFlags, Stat};

/// Longest relative path handed to one `openat2` (PATH_MAX is 4096 with
/// its NUL); longer ones are walked a piece at a time.
const PIECE: usize = 3072;

/// Opens `rel` below `dir` with `flags`, refusing `..` out of `dir`, any
/// symlink on the way and a symlink as the last component (`O_NOFOLLOW`:
/// with `O_PATH` that opens the symlink itself). Relative paths over
/// PATH_MAX are walked piece by piece under the same rules.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlags) -> std::io::Result<OwnedFd> {
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let open = |at: BorrowedFd<'_>, rel: &[u8], flags: OFlags| -> std::io::Result<OwnedFd> {
        let rel = std::ffi::OsStr::from_bytes(rel);
        Ok(openat2(
            at,
            rel,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            resolve,
        )?)
    };
    let bytes = rel.as_os_str().as_bytes();
    if bytes.len() <= PIECE {
        return open(dir, bytes, flags);
    }
    // Split at '/' into pieces of at most PIECE bytes; every piece but the
    // last names a directory, held by an O_PATH fd.
    let mut held: Option<OwnedFd> = None;
    let mut rest = bytes;
    while rest.len() > PIECE {
        let cut = rest[..=PIECE]
            .iter()
            .rposition(|&b| b == b'/')
            .filter(|&i| i > 0)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let at = held.as_ref().map_or(dir, AsFd::as_fd);
        let next = open(at, &rest[..cut], OFlags::PATH | OFlags::DIRECTORY)?;
        held = Some(next);
        rest = &rest[cut + 1..];
    }
    open(held.as_ref().map_or(dir, AsFd::as_fd), rest, flags)
}

/// The inode `fd` refers to, through its `/proc/self/fd` magic link: it
/// names that very inode (even a symlink opened with `O_PATH`), never
/// whatever path it had.
pub fn proc_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// What [`open_regular`] found.
pub enum Opened {
    /// A regular file, open for reading, with its stat.
    File(std::fs::File, Stat),
    /// Something else, left unopened: its `O_PATH` handle and stat.
    Other(OwnedFd, Stat),
}

/// Looks at `rel` below `dir` through an `O_PATH` handle (see
/// [`open_beneath`]) and opens it for reading only if it is a regular
/// file. The file opened is the inode the handle holds, whatever has been
/// renamed over its name since.
pub fn open_regular(dir: BorrowedFd<'_>, rel: &Path) -> std::io::Result<Opened> {
    let handle = open_beneath(dir, rel, OFlags::PATH)?;
    reopen_regular(handle)
}

/// [`open_regular`] for a handle already held.
pub fn reopen_regular(handle: OwnedFd) -> std::io::Result<Opened> {
    let stat = rustix::fs::fstat(&handle)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Ok(Opened::Other(handle, stat));
    }
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    // Without O_NOATIME, the first read of a file written since its last
    // read dirties its inode (relatime), a journal write per file hashed.
    // Only the owner or CAP_FOWNER may ask for it.
    let file = match reopen(handle.as_fd(), flags | OFlags::NOATIME) {
        Err(rustix::io::Errno::PERM) => reopen(handle.as_fd(), flags)?,
        opened => opened?,
    };
    Ok(Opened::File(std::fs::File::from(file), stat))
}

/// Opens the inode `handle` holds again, through its `/proc/self/fd`
/// link: by its one name below this process's fd directory, opened once
/// (a walk of the whole path resolves `self` afresh, a string allocation
/// and a pid lookup per file), or by the whole path where that directory
/// cannot be held (no `/proc` at first use, or a forked child).
fn reopen(handle: BorrowedFd<'_>, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    static FD_DIR: std::sync::OnceLock<Option<(rustix::process::Pid, OwnedFd)>> = std::sync::OnceLock::new();
    let pid = rustix::process::getpid();
    let dir = FD_DIR.get_or_init(|| {
        rustix::fs::open(
            "/proc/self/fd",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .map(|fd| (pid, fd))
    });
    match dir {
        // The directory of this process: a forked child must not open its
        // parent's fds.
        Some((owner, dir)) if *owner == pid => {
            rustix::fs::openat(dir, handle.as_raw_fd().to_string(), flags, Mode::empty())
        }
        _ => rustix::fs::open(proc_path(handle), flags, Mode::empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirfd(path: &Path) -> OwnedFd {
        rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap()
    }

    #[test]
    fn refuses_symlinks_and_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(tmp.path().join("outside"), b"x").unwrap();
        std::os::unix::fs::symlink("../outside", root.join("link")).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("d", root.join("dlink")).unwrap();
        std::fs::write(root.join("d/f"), b"y").unwrap();
        let fd = dirfd(&root);
        for bad in ["../outside", "abs/etc", "dlink/f"] {
            assert!(
                open_beneath(fd.as_fd(), Path::new(bad), OFlags::RDONLY).is_err(),
                "{bad}"
            );
        }
        assert!(open_beneath(fd.as_fd(), Path::new("link"), OFlags::RDONLY).is_err());
        // O_PATH on the symlink itself is fine, and is not a regular file.
        match open_regular(fd.as_fd(), Path::new("link")).unwrap() {
            Opened::Other(_, stat) => assert_eq!(FileType::from_raw_mode(stat.st_mode), FileType::Symlink),
            Opened::File(..) => panic!("followed a symlink"),
        }
        assert!(matches!(
            open_regular(fd.as_fd(), Path::new("d/f")).unwrap(),
            Opened::File(..)
        ));
    }

    #[test]
    fn fifo_is_not_opened() {
        let tmp = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("p"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let fd = dirfd(tmp.path());
        assert!(matches!(
            open_regular(fd.as_fd(), Path::new("p")).unwrap(),
            Opened::Other(..)
        ));
    }

    #[test]
    fn walks_paths_longer_than_path_max() {
        let tmp = tempfile::tempdir().unwrap();
        let fd = dirfd(tmp.path());
        let name = "n".repeat(200);
        let mut rel = PathBuf::new();
        let mut at = rustix::fs::open(tmp.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..40 {
            rustix::fs::mkdirat(&at, name.as_str(), Mode::from_raw_mode(0o755)).unwrap();
            at = rustix::fs::openat(&at, name.as_str(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
            rel.push(&name);
        }
        rustix::fs::openat(&at, "f", OFlags::CREATE | OFlags::WRONLY, Mode::from_raw_mode(0o644)).unwrap();
        rel.push("f");
        assert!(rel.as_os_str().len() > 8000);
        assert!(matches!(open_regular(fd.as_fd(), &rel).unwrap(), Opened::File(..)));
        // A symlink on the way, past the first piece, is refused too.
        std::os::unix::fs::symlink(".", tmp.path().join(&name).join("s")).unwrap();
        let mut bad = PathBuf::from(&name).join("s");
        for _ in 0..39 {
            bad.push(&name);
        }
        bad.push("f");
        assert!(bad.as_os_str().len() > PIECE);
        assert!(open_beneath(fd.as_fd(), &bad, OFlags::PATH).is_err());
    }
}

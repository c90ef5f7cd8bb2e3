//! A directory file descriptor: the store changes files with `*at` calls
//! relative to it, never by re-resolving joined path strings.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};
use rustix::io::Errno;

use crate::StoreError;

pub(crate) struct DirFd {
    fd: OwnedFd,
    path: PathBuf,
}

impl DirFd {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io("open directory", path, e))?;
        Ok(DirFd {
            fd,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn open_dir(&self, name: &str) -> Result<DirFd, StoreError> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io("open directory", self.path.join(name), e))?;
        Ok(DirFd {
            fd,
            path: self.path.join(name),
        })
    }

    /// Creates `name` as a directory unless it exists.
    pub fn ensure_dir(&self, name: &str, mode: u32) -> Result<(), StoreError> {
        match rustix::fs::mkdirat(&self.fd, name, Mode::from_raw_mode(mode)) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(StoreError::io("create directory", self.path.join(name), e)),
        }
    }

    pub fn exists(&self, name: &str) -> Result<bool, StoreError> {
        match rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(StoreError::io("stat", self.path.join(name), e)),
        }
    }

    pub fn create_file(&self, name: &str, mode: u32) -> Result<std::fs::File, StoreError> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| StoreError::io("create", self.path.join(name), e))?;
        Ok(std::fs::File::from(fd))
    }

    pub fn open_read(&self, name: &str) -> Result<std::fs::File, StoreError> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io("open", self.path.join(name), e))?;
        Ok(std::fs::File::from(fd))
    }

    pub fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut out)
                    .map_err(|e| StoreError::io("read", self.path.join(name), e))?;
                Ok(Some(out))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(StoreError::io("open", self.path.join(name), e)),
        }
    }

    /// Writes `name` via a temp file, fsync and rename, then syncs the directory.
    pub fn write_atomic(&self, name: &str, data: &[u8], mode: u32) -> Result<(), StoreError> {
        let tmp = format!(".{name}.tmp-{}", std::process::id());
        let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
        let mut file = self.create_file(&tmp, mode)?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io("write", self.path.join(&tmp), e))?;
        rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)
            .map_err(|e| StoreError::io("rename", self.path.join(name), e))?;
        self.sync()
    }

    /// Renames `from` (in `self`) to `to` (in `dest`) unless `to` exists.
    /// Returns false when it existed.
    pub fn rename_noreplace(&self, from: &str, dest: &DirFd, to: &str) -> Result<bool, StoreError> {
        match rustix::fs::renameat_with(&self.fd, from, &dest.fd, to, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(StoreError::io("rename", dest.path.join(to), e)),
        }
    }

    pub fn unlink(&self, name: &str) -> Result<(), StoreError> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(StoreError::io("remove", self.path.join(name), e)),
        }
    }

    pub fn sync(&self) -> Result<(), StoreError> {
        rustix::fs::fsync(&self.fd).map_err(|e| StoreError::io("fsync", &self.path, e))
    }

    /// Flushes the whole filesystem the directory lives on.
    pub fn syncfs(&self) -> Result<(), StoreError> {
        rustix::fs::syncfs(&self.fd).map_err(|e| StoreError::io("syncfs", &self.path, e))
    }
}

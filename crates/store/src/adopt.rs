//! Moving files a commit hashed in place (a snapshot's upper dir) into
//! `objects/`: renames, never copies, spread over a few threads. Each
//! file's directory is opened below the store root without following a
//! symlink, once for all the files it holds; only a regular file moves.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use strata_sys::Opened;
use strata_tree::Digest;

use crate::hashing::map_on_threads;
use crate::{Store, StoreError};

/// Whether [`Store::adopt_in_place`] hashes each file again once it lies
/// in `objects/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recheck {
    /// A writer may have changed the file after it was hashed (a
    /// container's upper dir): hash what was moved, drop what differs.
    Rehash,
    /// Its writer was done before it was hashed (containerd's applier
    /// returns before it asks for the Commit).
    Trust,
}

/// Moves at once: renames in a few directories contend on their locks.
const MAX_THREADS: usize = 4;
/// Files a thread takes at a time: neighbours share a directory.
const BATCH: usize = 64;

/// What one moving thread keeps between files: the directory of the
/// previous file, open for the next one (the files of a walk come
/// directory by directory), and the fan-out dirs it made sure of.
struct MoveState {
    last: Option<(PathBuf, OwnedFd)>,
    fanout_ready: [bool; 256],
}

impl Default for MoveState {
    fn default() -> Self {
        MoveState {
            last: None,
            fanout_ready: [false; 256],
        }
    }
}

impl Store {
    /// Renames each file into `objects/` and makes it read-only; with
    /// [`Recheck::Rehash`], hashes each one again right after its move (on
    /// the same few threads, while it is still cached) and takes out any
    /// whose bytes no longer match its digest, or that is not a regular file. A file is found below the store root
    /// without following symlinks; one outside it, gone, or already
    /// present is skipped. Returns how many entered.
    pub(crate) fn move_into_objects(&self, files: &[(PathBuf, Digest)], recheck: Recheck) -> Result<usize, StoreError> {
        let moved = map_on_threads(
            files,
            MAX_THREADS,
            BATCH,
            MoveState::default,
            |state, (path, digest)| self.move_one(state, path, digest, recheck),
        );
        let mut added = 0;
        for m in moved {
            added += usize::from(m?.is_some());
        }
        Ok(added)
    }

    /// Moves one file and makes it read-only; with [`Recheck::Rehash`],
    /// hashes it again right after the move and takes it out if its bytes
    /// no longer match. An object that is not a regular file goes. The
    /// digest if it moved and stayed.
    fn move_one(
        &self,
        state: &mut MoveState,
        path: &Path,
        digest: &Digest,
        recheck: Recheck,
    ) -> Result<Option<Digest>, StoreError> {
        let objects = &self.inner.objects;
        let Some(name) = path.file_name() else {
            tracing::warn!(path = %path.display(), "not adopted: no file name");
            return Ok(None);
        };
        let fan = usize::from(digest.0[0]);
        if !state.fanout_ready[fan] {
            objects.ensure_dir(&format!("{:02x}", digest.0[0]), 0o755)?;
            state.fanout_ready[fan] = true;
        }
        let Some(parent) = self.parent_beneath_root(state, path)? else {
            return Ok(None);
        };
        // Only a regular file moves (hashed again after the move unless
        // its writer is done).
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {}
            Err(Errno::NOENT) => return self.finish_moved(digest).map(|()| None),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "no longer a regular file; not adopted");
                return Ok(None);
            }
            Err(e) => return Err(StoreError::io("stat", path, e)),
        }
        // A content already present makes the rename fail with EEXIST: the
        // stager lists a file without looking in the store, so this is
        // where a duplicate is found, and left to go with its upper dir.
        match rustix::fs::renameat_with(parent, name, objects.fd(), digest.object_path(), RenameFlags::NOREPLACE) {
            Ok(()) => {}
            // Already there, or moved by another process finishing it.
            Err(Errno::EXIST | Errno::NOENT) => return Ok(None),
            // The upper dir changed under the move: its file stays out.
            Err(e @ (Errno::NOTDIR | Errno::ISDIR | Errno::NOTEMPTY | Errno::LOOP)) => {
                tracing::warn!(path = %path.display(), "not adopted: {e}");
                return Ok(None);
            }
            Err(e) => return Err(StoreError::io("move into store", path, e)),
        }
        let kept = match recheck {
            Recheck::Rehash => self.keep_unchanged(digest)?,
            Recheck::Trust => self.make_trusted_read_only(digest)?,
        };
        if kept {
            Ok(Some(*digest))
        } else {
            self.take_out(digest).map(|()| None)
        }
    }

    /// For a listed file no longer where it was: a move that renamed it
    /// may have been killed before its recheck, which makes an object
    /// read-only as it ends. An object of its name still writable is
    /// hashed again now, and taken out unless its bytes are its name's.
    fn finish_moved(&self, digest: &Digest) -> Result<(), StoreError> {
        let objects = &self.inner.objects;
        match rustix::fs::statat(objects.fd(), digest.object_path(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if stat.st_mode & 0o222 != 0 => {}
            _ => return Ok(()),
        }
        if self.keep_unchanged(digest)? {
            Ok(())
        } else {
            self.take_out(digest)
        }
    }

    /// Hashes a file just moved into `objects/` again, through one open
    /// that also makes it read-only. False: it is not a regular file, or
    /// no longer holds the bytes of its name.
    ///
    /// Once moved, the name is out of the writer's reach (only a process
    /// with open fds can still write), so it is looked at by name and then
    /// opened by name: no `O_PATH` handle reopened through `/proc`, which
    /// cost a procfs path walk per file.
    fn keep_unchanged(&self, digest: &Digest) -> Result<bool, StoreError> {
        let objects = &self.inner.objects;
        let name = digest.object_path();
        let path = || objects.path().join(&name);
        match rustix::fs::statat(objects.fd(), name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {}
            _ => return Ok(false),
        }
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        // No atime update: it would dirty the inode once more.
        let opened = match rustix::fs::openat(objects.fd(), name.as_str(), flags | OFlags::NOATIME, Mode::empty()) {
            Err(Errno::PERM) => rustix::fs::openat(objects.fd(), name.as_str(), flags, Mode::empty()),
            opened => opened,
        };
        let Ok(mut file) = opened.map(std::fs::File::from) else {
            return Ok(false);
        };
        match crate::hashing::hash_open_file(&mut file, &path()) {
            Ok((found, _)) if found == *digest => self.make_read_only(&file, digest).map(|()| true),
            _ => Ok(false),
        }
    }

    /// The object `digest`, opened without following a symlink; an error
    /// if it is not a regular file.
    fn open_object(&self, digest: &Digest) -> Result<std::fs::File, StoreError> {
        let objects = &self.inner.objects;
        let to = objects.path().join(digest.object_path());
        match strata_sys::open_regular(objects.fd(), Path::new(&digest.object_path())) {
            Ok(Opened::File(file, _)) => Ok(file),
            Ok(Opened::Other(..)) => Err(StoreError::io("open", &to, std::io::Error::other("not a regular file"))),
            Err(e) => Err(StoreError::io("open", &to, e)),
        }
    }

    /// Makes a trusted object read-only by name without following a
    /// symlink (`fchmodat2`), or else through an open that checks it is a
    /// regular file. False: it is not one.
    fn make_trusted_read_only(&self, digest: &Digest) -> Result<bool, StoreError> {
        let objects = &self.inner.objects;
        let name = std::ffi::CString::new(digest.object_path()).expect("object paths are hex");
        match strata_sys::chmod_nofollow(objects.fd(), &name, 0o444) {
            Ok(true) => Ok(true),
            Ok(false) => match self.open_object(digest) {
                Ok(file) => self.make_read_only(&file, digest).map(|()| true),
                Err(_) => Ok(false),
            },
            Err(e) if e.raw_os_error() == Some(Errno::OPNOTSUPP.raw_os_error()) => Ok(false),
            Err(e) => Err(StoreError::io("chmod", objects.path().join(digest.object_path()), e)),
        }
    }

    fn make_read_only(&self, file: &std::fs::File, digest: &Digest) -> Result<(), StoreError> {
        rustix::fs::fchmod(file, Mode::from_raw_mode(0o444))
            .map_err(|e| StoreError::io("chmod", self.inner.objects.path().join(digest.object_path()), e))
    }

    /// Removes a moved file that must not stay an object.
    fn take_out(&self, digest: &Digest) -> Result<(), StoreError> {
        let objects = &self.inner.objects;
        let to = digest.object_path();
        tracing::warn!(object = %digest.to_hex(), "changed since it was hashed; not adopted");
        match rustix::fs::unlinkat(objects.fd(), &to, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(Errno::ISDIR | Errno::PERM) => self.discard(&objects.path().join(&to)),
            Err(e) => Err(StoreError::io("remove", objects.path().join(&to), e)),
        }
    }

    /// The directory holding `path`, opened below the store root without
    /// following any symlink (the previous file's, if it is the same);
    /// `None`, with a warning, if `path` is not below the root or its
    /// directory is gone or replaced.
    fn parent_beneath_root<'c>(
        &self,
        cache: &'c mut MoveState,
        path: &Path,
    ) -> Result<Option<std::os::fd::BorrowedFd<'c>>, StoreError> {
        let skip = |why: &str| {
            tracing::warn!(path = %path.display(), "not adopted: {why}");
            Ok(None)
        };
        let Some(rel) = path.strip_prefix(&self.inner.root).ok() else {
            return skip("not below the store root");
        };
        let parent = rel
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let cached = cache.last.as_ref().is_some_and(|(p, _)| p == parent);
        if !cached {
            cache.last = None;
            match strata_sys::open_beneath(self.inner.root_dir.fd(), parent, OFlags::PATH | OFlags::DIRECTORY) {
                Ok(fd) => cache.last = Some((parent.to_owned(), fd)),
                Err(e) => {
                    return match Errno::from_io_error(&e) {
                        // Moved already, its upper dir discarded: a pending row
                        // that outlived its move (e.g. found by another process
                        // after gc).
                        Some(Errno::NOENT) => Ok(None),
                        Some(Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => skip("its directory was replaced"),
                        _ => Err(StoreError::io("open", path, e)),
                    };
                }
            }
        }
        Ok(cache.last.as_ref().map(|(_, fd)| fd.as_fd()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A rehashed move leaves a read-only regular object; a name that is
    /// no longer a regular file (here a FIFO, which must never be opened)
    /// stays out.
    #[test]
    fn rehashed_moves_are_read_only_and_only_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let upper = dir.path().join("store/upper");
        std::fs::create_dir(&upper).unwrap();
        std::fs::write(upper.join("file"), [7u8; 3000]).unwrap();
        std::fs::write(upper.join("fifo"), [8u8; 3000]).unwrap();
        let (file, _) = crate::hash_file(&upper.join("file")).unwrap();
        let (fifo, _) = crate::hash_file(&upper.join("fifo")).unwrap();
        std::fs::remove_file(upper.join("fifo")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            upper.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let files = [(upper.join("file"), file), (upper.join("fifo"), fifo)];
        assert_eq!(store.move_into_objects(&files, Recheck::Rehash).unwrap(), 1);
        let object = store.inner.objects.path().join(file.object_path());
        let meta = std::fs::metadata(&object).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        assert_eq!(std::fs::read(&object).unwrap(), [7u8; 3000]);
        assert!(!store.has_object(&fifo).unwrap());
        assert!(upper.join("fifo").exists(), "the FIFO stays where it was");
    }
}

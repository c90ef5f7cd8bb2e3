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

/// Below this many files, one thread moves them all.
const FILES_PER_THREAD: usize = 256;
const MAX_THREADS: usize = 4;

/// The directory of the previous file, kept open for the next one: the
/// files of a walk come directory by directory.
#[derive(Default)]
struct ParentCache {
    last: Option<(PathBuf, OwnedFd)>,
}

impl Store {
    /// Renames each file into `objects/` and makes it read-only; with
    /// [`Recheck::Rehash`], then hashes every one moved again (on every
    /// core) and takes out any whose bytes no longer match its digest, or
    /// that is not a regular file. A file is found below the store root
    /// without following symlinks; one outside it, gone, or already
    /// present is skipped. Returns how many entered.
    pub(crate) fn move_into_objects(&self, files: &[(PathBuf, Digest)], recheck: Recheck) -> Result<usize, StoreError> {
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(MAX_THREADS)
            .min(files.len().div_ceil(FILES_PER_THREAD))
            .max(1);
        let chunk = files.len().div_ceil(threads).max(1);
        let moved: Vec<Vec<Digest>> = std::thread::scope(|scope| {
            let workers: Vec<_> = files
                .chunks(chunk)
                .map(|part| scope.spawn(move || self.move_chunk(part, recheck)))
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect::<Result<_, _>>()
        })?;
        let moved = moved.concat();
        match recheck {
            Recheck::Trust => Ok(moved.len()),
            Recheck::Rehash => self.keep_unchanged(&moved),
        }
    }

    /// Moves one run of files; with [`Recheck::Trust`], also makes each
    /// read-only (an object that cannot be opened as a regular file goes).
    fn move_chunk(&self, files: &[(PathBuf, Digest)], recheck: Recheck) -> Result<Vec<Digest>, StoreError> {
        let objects = &self.inner.objects;
        let mut parents = ParentCache::default();
        let mut fanout_ready = [false; 256];
        let mut moved = Vec::new();
        for (path, digest) in files {
            if self.has_object(digest)? {
                continue;
            }
            let Some(name) = path.file_name() else {
                tracing::warn!(path = %path.display(), "not adopted: no file name");
                continue;
            };
            let Some(parent) = self.parent_beneath_root(&mut parents, path)? else {
                continue;
            };
            let fan = usize::from(digest.0[0]);
            if !fanout_ready[fan] {
                objects.ensure_dir(&format!("{:02x}", digest.0[0]), 0o755)?;
                fanout_ready[fan] = true;
            }
            // Only a regular file moves (hashed again after the move unless
            // its writer is done).
            match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {}
                Err(Errno::NOENT) => continue,
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "no longer a regular file; not adopted");
                    continue;
                }
                Err(e) => return Err(StoreError::io("stat", path, e)),
            }
            let to = digest.object_path();
            // A content already present stays; the rename reports it.
            match rustix::fs::renameat_with(parent, name, objects.fd(), &to, RenameFlags::NOREPLACE) {
                Ok(()) => {}
                // Already there, or moved by another process finishing it.
                Err(Errno::EXIST | Errno::NOENT) => continue,
                // The upper dir changed under the move: its file stays out.
                Err(e @ (Errno::NOTDIR | Errno::ISDIR | Errno::NOTEMPTY | Errno::LOOP)) => {
                    tracing::warn!(path = %path.display(), "not adopted: {e}");
                    continue;
                }
                Err(e) => return Err(StoreError::io("move into store", path, e)),
            }
            match recheck {
                Recheck::Rehash => moved.push(*digest),
                Recheck::Trust => {
                    if self.make_trusted_read_only(digest)? {
                        moved.push(*digest);
                    } else {
                        self.take_out(digest)?;
                    }
                }
            }
        }
        Ok(moved)
    }

    /// Hashes each moved file again; keeps (read-only) those still holding
    /// the bytes of their name, takes out the rest.
    fn keep_unchanged(&self, moved: &[Digest]) -> Result<usize, StoreError> {
        let hashed = crate::hashing::hash_opened(moved, |d: &Digest| {
            let to = self.inner.objects.path().join(d.object_path());
            self.open_object(d).map(|file| (file, to))
        });
        let mut added = 0;
        for (digest, hashed) in moved.iter().zip(hashed) {
            let unchanged = matches!(hashed, Ok((found, _)) if found == *digest);
            match self.open_object(digest) {
                Ok(file) if unchanged => {
                    self.make_read_only(&file, digest)?;
                    added += 1;
                }
                _ => self.take_out(digest)?,
            }
        }
        Ok(added)
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
        cache: &'c mut ParentCache,
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

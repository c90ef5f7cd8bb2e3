//! Turns an overlay upper directory into a layer [`Tree`].
//!
//! Overlay's own markings become tree markings: a character device 0:0 is a
//! whiteout, `trusted.overlay.opaque=y` an opaque directory, and a
//! metadata-only copy-up (`trusted.overlay.metacopy`) keeps the content of
//! the lower file it came from. A directory renamed from a lower layer
//! (`trusted.overlay.redirect`) becomes an opaque copy of the lower
//! directory with the upper entries applied. Other `trusted.overlay.*`
//! xattrs are dropped, and so are `user.overlay.{opaque,whiteout,whiteouts}`
//! (with a warning), which an EROFS image cannot carry.
//!
//! The walk is iterative and reads through file descriptors only (see
//! `read`): names are opened below their directory's fd without following
//! symlinks, so a tree the container changes during the walk can neither
//! lead it outside the upper dir nor block it. Directories nested deeper
//! than an EROFS image holds are refused before they are read.
//! Bodies of regular files above the inline limit are hashed where they
//! lie, on every core, and handed to the store's stager (which moves, never
//! copies, them into the store after the caller's commit). The walk also
//! measures the upper dir's usage, so it is read once.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, Stat as RawStat};
use strata_store::{AdoptSource, ObjectStager, Prehash};
use strata_tree::{Content, Digest, Dir, FileData, Leaf, LeafId, Node, Stat, Tree};

use crate::{SnapshotError, Usage};

mod lower;
mod read;

use read::Xattrs;

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE: &[u8] = b"trusted.overlay.opaque";
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";

/// A file whose body becomes an object: where it is below the upper dir,
/// and the inode the walk saw there.
struct Body {
    id: LeafId,
    rel: PathBuf,
    dev: u64,
    ino: u64,
    size: u64,
}

/// A directory being read: its fd, the names still to read, what it holds
/// so far, and how to finish it.
struct Frame {
    /// Closed while the walk is far below it (see [`OPEN_DIRS`]).
    fd: Option<OwnedFd>,
    /// Its device and inode, checked when it is opened again.
    inode: (u64, u64),
    names: std::vec::IntoIter<Vec<u8>>,
    dir: Dir,
    /// Its name in its parent.
    name: Vec<u8>,
    /// `walk.rel`'s length before this directory's name was added.
    rel_len: usize,
    opaque: bool,
    /// For a renamed lower dir: the lower copy to apply this one over, and
    /// the lower path of its parent's entries to go back to.
    redirected: Option<(Dir, Vec<Vec<u8>>)>,
}

struct Walk<'a> {
    lower: &'a Tree,
    upper: &'a Path,
    layer: Tree,
    inodes: HashMap<(u64, u64), LeafId>,
    /// Bodies hashed after the walk unless they were hashed while written.
    bodies: Vec<Body>,
    usage: Usage,
    counted: HashSet<(u64, u64)>,
    /// Path below the upper dir of the directory being read.
    rel: Vec<u8>,
    /// Lower path of the directory being read (differs from `rel` below a
    /// renamed directory).
    names: Vec<Vec<u8>>,
    /// Entries renamed directories may still copy from the lower tree; set
    /// at the first one (see [`copy_budget`]).
    copy_budget: Option<u64>,
}

/// Entries the copies of renamed lower directories may make in all: the
/// lower tree twice over, and some. Renames side by side copy each lower
/// entry once at most; only renames nested in renames copy entries again,
/// each level anew, which without a bound would let a few thousand nested
/// renames copy a large lower tree thousands of times in memory.
fn copy_budget(lower: &Tree) -> u64 {
    let (mut dirs, mut stack) = (0u64, vec![&lower.root]);
    while let Some(dir) = stack.pop() {
        dirs += 1;
        stack.extend(dir.entries.values().filter_map(|node| match node {
            Node::Dir(d) => Some(&**d),
            _ => None,
        }));
    }
    (dirs + lower.leaves.len() as u64).saturating_mul(2) + (1 << 16)
}

/// Reads `upper` into a layer tree, staging large file bodies in `stager`,
/// and measures its usage. `lower` is the merged tree the upper dir was
/// mounted over; `prehash`, if any, has been hashing files as they were
/// written (it keeps going during the walk).
pub(crate) fn layer_from_upper(
    upper: &Path,
    lower: &Tree,
    stager: &mut ObjectStager,
    prehash: Option<Prehash>,
) -> Result<(Tree, Usage), SnapshotError> {
    let root = rustix::fs::open(upper, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| SnapshotError::io("open", upper, e))?;
    let raw = rustix::fs::fstat(&root).map_err(|e| SnapshotError::io("stat", upper, e))?;
    let (stat, _) = read_stat(None, Some(root.as_fd()), &raw, upper)?;
    let mut walk = Walk {
        lower,
        upper,
        layer: Tree::new(stat.clone()),
        inodes: HashMap::new(),
        bodies: Vec::new(),
        usage: Usage::default(),
        counted: HashSet::new(),
        rel: Vec::new(),
        names: Vec::new(),
        copy_budget: None,
    };
    walk.count(&raw);
    let started = std::time::Instant::now();
    let mut root_dir = walk.walk(&root, stat)?;
    let walked = started.elapsed();
    root_dir.opaque = false;
    walk.layer.root = root_dir;
    let Walk {
        mut layer,
        bodies,
        usage,
        ..
    } = walk;
    let prehashed = prehash.map(Prehash::finish).unwrap_or_default();
    let known: Vec<Option<Digest>> = bodies.iter().map(|b| prehashed.lookup(b.dev, b.ino, b.size)).collect();
    let to_hash: Vec<&Body> = bodies
        .iter()
        .zip(&known)
        .filter(|(_, k)| k.is_none())
        .map(|(b, _)| b)
        .collect();
    let hashed = strata_store::hash_opened(&to_hash, |body: &&Body| open_body(&root, upper, body));
    tracing::debug!(
        walk_ms = walked.as_millis(),
        hash_ms = (started.elapsed() - walked).as_millis(),
        hashed = to_hash.len(),
        prehashed = bodies.len() - to_hash.len(),
        early_flushes = prehashed.early_flushes,
        "read upper dir"
    );
    let mut hashed = hashed.into_iter();
    for (body, known) in bodies.iter().zip(known) {
        let (digest, size) = match known {
            Some(digest) => (digest, body.size),
            None => match hashed.next() {
                Some(result) => result?,
                None => return Err(changed(upper, &body.rel, "was not hashed")),
            },
        };
        let source = AdoptSource {
            dir: root.as_fd(),
            dir_path: upper,
            rel: &body.rel,
            dev: body.dev,
            ino: body.ino,
        };
        let staged = stager.adopt(&source, digest, size)?;
        layer.leaf_mut(body.id).content = Content::File(FileData::Object {
            digest: staged.digest,
            size: staged.size,
        });
    }
    Ok((layer, usage))
}

/// Opens a body for hashing: still the inode the walk saw, still a regular
/// file.
fn open_body(root: &OwnedFd, upper: &Path, body: &Body) -> Result<(std::fs::File, PathBuf), SnapshotError> {
    let path = upper.join(&body.rel);
    match strata_sys::open_regular(root.as_fd(), &body.rel) {
        Ok(strata_sys::Opened::File(file, stat)) if (stat.st_dev, stat.st_ino) == (body.dev, body.ino) => {
            Ok((file, path))
        }
        Ok(_) => Err(changed(
            upper,
            &body.rel,
            "was replaced while the snapshot was committed",
        )),
        Err(e) if read::gone(&e) => Err(changed(
            upper,
            &body.rel,
            "was removed or moved while the snapshot was committed",
        )),
        Err(e) => Err(SnapshotError::io("open", path, e)),
    }
}

fn changed(upper: &Path, rel: &Path, what: &'static str) -> SnapshotError {
    SnapshotError::UpperChanged {
        path: upper.join(rel),
        what,
    }
}

impl Walk<'_> {
    /// Adds an inode to the usage, each inode once.
    fn count(&mut self, stat: &RawStat) {
        let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
        if stat.st_nlink > 1 && !is_dir && !self.counted.insert((stat.st_dev, stat.st_ino)) {
            return;
        }
        self.usage.inodes += 1;
        let bytes = u64::try_from(stat.st_blocks).unwrap_or(0).saturating_mul(512);
        self.usage.size = self.usage.size.saturating_add(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The upper path of `name` in the directory being read, for messages.
    fn shown(&self, name: &[u8]) -> PathBuf {
        let mut path = self.upper.join(std::ffi::OsStr::from_bytes(&self.rel));
        path.push(std::ffi::OsStr::from_bytes(name));
        path
    }

    /// Reads the whole tree below the directory `root`, with an explicit
    /// stack of open directories.
    fn walk(&mut self, root: &OwnedFd, stat: Stat) -> Result<Dir, SnapshotError> {
        let root_stat = rustix::fs::fstat(root).map_err(|e| SnapshotError::io("stat", self.upper, e))?;
        let fd = read::open_dir(root, self.upper)?;
        let names = read::names(&fd, self.upper)?;
        let mut stack = vec![Frame {
            fd: Some(fd),
            inode: (root_stat.st_dev, root_stat.st_ino),
            names: names.into_iter(),
            dir: Dir::new(stat),
            name: Vec::new(),
            rel_len: 0,
            opaque: false,
            redirected: None,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.names.next() else {
                let Some(done) = stack.pop() else { break };
                let (name, dir) = self.finish(done);
                match stack.last_mut() {
                    Some(parent) => {
                        parent.dir.entries.insert(name, Node::Dir(Box::new(dir)));
                    }
                    None => return Ok(dir),
                }
                continue;
            };
            if frame.fd.is_none() {
                frame.fd = Some(self.reopen(root, frame.inode)?);
            }
            let Some(dirfd) = frame.fd.as_ref() else { continue };
            let shown = self.shown(&name);
            let Some((handle, raw)) = read::stat_entry(dirfd.as_fd(), &name, &shown)? else {
                continue; // removed since the directory was listed
            };
            self.count(&raw);
            let depth = stack.len();
            let Some(dirfd) = stack.last().and_then(|f| f.fd.as_ref()) else {
                continue;
            };
            match self.entry(dirfd.as_fd(), name.clone(), handle, &raw, &shown, depth)? {
                Entry::Node(node) => {
                    if let Some(frame) = stack.last_mut() {
                        frame.dir.entries.insert(name, node);
                    }
                }
                Entry::Dir(frame) => {
                    stack.push(*frame);
                    // Only the innermost directories keep their fds open.
                    if let Some(far) = stack.len().checked_sub(OPEN_DIRS + 1) {
                        stack[far].fd = None;
                    }
                }
            }
        }
        Err(changed(self.upper, Path::new(""), "lost its root while being read"))
    }

    /// Opens the directory being read again, by its path below the root,
    /// checking that it is the same inode.
    fn reopen(&self, root: &OwnedFd, inode: (u64, u64)) -> Result<OwnedFd, SnapshotError> {
        let rel = Path::new(std::ffi::OsStr::from_bytes(&self.rel));
        let path = self.upper.join(rel);
        let fd = if rel.as_os_str().is_empty() {
            read::open_dir(root, self.upper)?
        } else {
            match strata_sys::open_beneath(root.as_fd(), rel, OFlags::RDONLY | OFlags::DIRECTORY) {
                Ok(fd) => fd,
                Err(e) if read::gone(&e) => {
                    return Err(changed(self.upper, rel, "was moved while the snapshot was committed"))
                }
                Err(e) => return Err(SnapshotError::io("open dir", &path, e)),
            }
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| SnapshotError::io("stat", &path, e))?;
        if (stat.st_dev, stat.st_ino) != inode {
            return Err(changed(
                self.upper,
                rel,
                "was replaced while the snapshot was committed",
            ));
        }
        Ok(fd)
    }

    /// One entry of the directory being read: a node, or a directory to
    /// read next. `depth` is how deep a directory here would nest.
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: Vec<u8>,
        handle: Option<OwnedFd>,
        raw: &RawStat,
        shown: &Path,
        depth: usize,
    ) -> Result<Entry, SnapshotError> {
        let ft = FileType::from_raw_mode(raw.st_mode);
        if ft == FileType::CharacterDevice && raw.st_rdev == 0 {
            return Ok(Entry::Node(Node::Whiteout));
        }
        if ft == FileType::Directory && depth > strata_erofs::MAX_DEPTH {
            return Err(SnapshotError::TooDeep {
                path: shown.to_owned(),
                max: strata_erofs::MAX_DEPTH,
            });
        }
        let (stat, overlay) = read_stat(Some((dir, &name)), handle.as_ref().map(AsFd::as_fd), raw, shown)?;
        // Every entry but a large regular file comes with its handle.
        let handle = |shown: &Path| match handle {
            Some(handle) => Ok(handle),
            None => read::handle_of(dir, &name, raw, shown),
        };
        if ft == FileType::Directory {
            return self
                .enter_dir(name.clone(), &handle(shown)?, raw, stat, &overlay, shown)
                .map(|f| Entry::Dir(Box::new(f)));
        }
        let key = (raw.st_dev, raw.st_ino);
        if let Some(id) = self.inodes.get(&key) {
            return Ok(Entry::Node(Node::Leaf(*id)));
        }
        let size = u64::try_from(raw.st_size).unwrap_or(0);
        let mut body = false;
        let content = match ft {
            FileType::RegularFile if overlay.contains_key(METACOPY) => {
                self.lower_content(shown, &name, overlay.get(REDIRECT))?
            }
            FileType::RegularFile if size == 0 => Content::File(FileData::Inline(Vec::new())),
            FileType::RegularFile if usize::try_from(size).is_ok_and(|l| l <= strata_erofs::INLINE_MAX) => {
                match read::small_file(handle(shown)?, strata_erofs::INLINE_MAX, shown)? {
                    Some(data) => Content::File(FileData::Inline(data)),
                    None => {
                        return Err(SnapshotError::UpperChanged {
                            path: shown.to_owned(),
                            what: "was replaced or grew while the snapshot was committed",
                        })
                    }
                }
            }
            FileType::RegularFile => {
                // Hashed after the walk; the digest is filled in then.
                body = true;
                Content::File(FileData::Object {
                    digest: Digest([0; 32]),
                    size,
                })
            }
            FileType::Symlink => Content::Symlink(read::link_target(&handle(shown)?, shown)?),
            FileType::CharacterDevice => Content::CharDevice(raw.st_rdev),
            FileType::BlockDevice => Content::BlockDevice(raw.st_rdev),
            FileType::Fifo => Content::Fifo,
            _ => Content::Socket,
        };
        let id = self.layer.push_leaf(Leaf { stat, content });
        if body {
            let mut rel = self.rel.clone();
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            self.bodies.push(Body {
                id,
                rel: PathBuf::from(std::ffi::OsString::from_vec(rel)),
                dev: raw.st_dev,
                ino: raw.st_ino,
                size,
            });
        }
        if raw.st_nlink > 1 {
            self.inodes.insert(key, id);
        }
        Ok(Entry::Node(Node::Leaf(id)))
    }

    /// Starts reading the directory `handle` holds. A directory renamed
    /// from the lower tree is read over a whole copy of the lower directory
    /// at its redirect; entries below it are found in the lower tree under
    /// that origin. The result is opaque, so the merge takes it as it is.
    fn enter_dir(
        &mut self,
        name: Vec<u8>,
        handle: &OwnedFd,
        raw: &RawStat,
        stat: Stat,
        overlay: &Xattrs,
        shown: &Path,
    ) -> Result<Frame, SnapshotError> {
        let fd = read::open_dir(handle, shown)?;
        let names = read::names(&fd, shown)?;
        self.names.push(name.clone());
        let redirected = match overlay.get(REDIRECT) {
            Some(redirect) => {
                let origin = resolve_redirect(&self.names, redirect);
                let Some(Node::Dir(lower)) = self.lower.lookup(&origin) else {
                    self.names.pop();
                    return Err(SnapshotError::Unsupported {
                        path: shown.display().to_string(),
                        reason: "renamed directory whose origin is not a directory of the parent snapshot".into(),
                    });
                };
                let budget = self.copy_budget.get_or_insert_with(|| copy_budget(self.lower));
                let Some(copy) = lower::copy_lower_dir(self.lower, lower, &mut self.layer, budget) else {
                    self.names.pop();
                    return Err(SnapshotError::Unsupported {
                        path: shown.display().to_string(),
                        reason: "renamed directories nested in renamed directories copy more entries than the parent snapshot holds twice over".into(),
                    });
                };
                Some((copy, std::mem::replace(&mut self.names, origin)))
            }
            None => None,
        };
        let rel_len = self.rel.len();
        if rel_len > 0 {
            self.rel.push(b'/');
        }
        self.rel.extend_from_slice(&name);
        Ok(Frame {
            fd: Some(fd),
            inode: (raw.st_dev, raw.st_ino),
            names: names.into_iter(),
            dir: Dir::new(stat),
            name,
            rel_len,
            opaque: overlay.get(OPAQUE).is_some_and(|v| v == b"y"),
            redirected,
        })
    }

    /// Ends reading a directory: its name in its parent and what it became.
    fn finish(&mut self, frame: Frame) -> (Vec<u8>, Dir) {
        let Frame {
            mut dir,
            name,
            rel_len,
            opaque,
            redirected,
            ..
        } = frame;
        self.rel.truncate(rel_len);
        let dir = match redirected {
            Some((mut merged, saved)) => {
                self.names = saved;
                lower::apply_upper(&mut merged, dir);
                merged.opaque = true;
                merged
            }
            None => {
                dir.opaque = opaque;
                dir
            }
        };
        self.names.pop();
        (name, dir)
    }

    /// The content of a metadata-only copy-up: the lower file at its
    /// redirect (absolute, or relative to its directory) or its own path.
    fn lower_content(
        &mut self,
        path: &Path,
        name: &[u8],
        redirect: Option<&Vec<u8>>,
    ) -> Result<Content, SnapshotError> {
        self.names.push(name.to_vec());
        let target = match redirect {
            Some(r) => resolve_redirect(&self.names, r),
            None => self.names.clone(),
        };
        self.names.pop();
        match self.lower.lookup(&target) {
            Some(Node::Leaf(id)) => match &self.lower.leaf(*id).content {
                c @ Content::File(_) => Ok(c.clone()),
                _ => Err(lower_missing(path)),
            },
            _ => Err(lower_missing(path)),
        }
    }
}

/// What one entry became.
enum Entry {
    Node(Node),
    Dir(Box<Frame>),
}

/// Directories whose fds the walk keeps open; deeper ones in a chain are
/// closed and opened again when the walk comes back to them.
const OPEN_DIRS: usize = 64;

/// Where an overlay redirect points in the lower tree: an absolute path,
/// or a name in the same directory as `names` (the entry's own lower path).
fn resolve_redirect(names: &[Vec<u8>], redirect: &[u8]) -> Vec<Vec<u8>> {
    if redirect.first() == Some(&b'/') {
        return redirect
            .split(|&b| b == b'/')
            .filter(|n| !n.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
    }
    let mut target = names[..names.len().saturating_sub(1)].to_vec();
    target.push(redirect.to_vec());
    target
}

fn lower_missing(path: &Path) -> SnapshotError {
    SnapshotError::Unsupported {
        path: path.display().to_string(),
        reason: "metadata-only copy-up whose lower file is not in the parent snapshot".into(),
    }
}

/// The stat of the inode `handle` holds, and its `trusted.overlay.*`
/// xattrs apart. xattrs an EROFS image cannot carry are dropped with a
/// warning.
fn read_stat(
    named: Option<(BorrowedFd<'_>, &[u8])>,
    handle: Option<BorrowedFd<'_>>,
    raw: &RawStat,
    shown: &Path,
) -> Result<(Stat, Xattrs), SnapshotError> {
    let mut stat = Stat {
        mode: raw.st_mode & 0o7777,
        uid: raw.st_uid,
        gid: raw.st_gid,
        mtime_sec: raw.st_mtime,
        mtime_nsec: u32::try_from(raw.st_mtime_nsec).unwrap_or(0),
        ..Stat::default()
    };
    let mut overlay = Xattrs::new();
    for (name, value) in read::xattrs(named, handle, raw, shown)? {
        if name.starts_with(OVERLAY_PREFIX) {
            overlay.insert(name, value);
        } else if strata_erofs::reserved_xattr(&name) {
            tracing::warn!(
                path = %shown.display(),
                xattr = %String::from_utf8_lossy(&name),
                "dropping an xattr an EROFS image cannot carry"
            );
        } else {
            stat.xattrs.insert(name, value);
        }
    }
    Ok((stat, overlay))
}

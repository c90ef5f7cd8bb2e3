//! Turns an overlay upper directory into a layer [`Tree`].
//!
//! Overlay's own markings become tree markings: a character device 0:0 is a
//! whiteout, `trusted.overlay.opaque=y` an opaque directory, and a
//! metadata-only copy-up (`trusted.overlay.metacopy`) keeps the content of
//! the lower file it came from. A directory renamed from a lower layer
//! (`trusted.overlay.redirect`) becomes an opaque copy of the lower
//! directory with the upper entries applied. Other `trusted.overlay.*`
//! xattrs are dropped.
//! Bodies of regular files above the inline limit are hashed where they
//! lie, on every core, and handed to the store's stager (which moves, never
//! copies, them into the store after the caller's commit). The walk also
//! measures the upper dir's usage, so it is read once.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use strata_store::{ObjectStager, Prehash};
use strata_tree::{Content, Digest, Dir, FileData, Leaf, LeafId, Node, Stat, Tree};

use crate::{SnapshotError, Usage};

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE: &[u8] = b"trusted.overlay.opaque";
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";

struct Walk<'a> {
    lower: &'a Tree,
    layer: Tree,
    inodes: HashMap<(u64, u64), LeafId>,
    /// Files whose bodies become objects, hashed after the walk unless
    /// they were hashed while written.
    bodies: Vec<(LeafId, PathBuf, std::fs::Metadata)>,
    usage: Usage,
    counted: HashSet<(u64, u64)>,
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
    let meta = std::fs::symlink_metadata(upper).map_err(|e| SnapshotError::io("stat", upper, e))?;
    let (stat, _) = read_stat(upper, &meta)?;
    let mut walk = Walk {
        lower,
        layer: Tree::new(stat.clone()),
        inodes: HashMap::new(),
        bodies: Vec::new(),
        usage: Usage::default(),
        counted: HashSet::new(),
    };
    walk.count(&meta);
    let mut names = Vec::new();
    let started = std::time::Instant::now();
    let root = walk.dir(upper, stat, &mut names)?;
    let walked = started.elapsed();
    walk.layer.root = root;
    walk.layer.root.opaque = false;
    let Walk {
        mut layer,
        bodies,
        usage,
        ..
    } = walk;
    let prehashed = prehash.map(Prehash::finish).unwrap_or_default();
    let bodies: Vec<_> = bodies
        .into_iter()
        .map(|(id, path, meta)| {
            let known = prehashed.get(&meta).map(|digest| (digest, meta.len()));
            (id, path, known)
        })
        .collect();
    let paths: Vec<PathBuf> = bodies
        .iter()
        .filter(|(_, _, known)| known.is_none())
        .map(|(_, path, _)| path.clone())
        .collect();
    let mut hashed = strata_store::hash_files(&paths).into_iter();
    tracing::debug!(
        walk_ms = walked.as_millis(),
        hash_ms = (started.elapsed() - walked).as_millis(),
        hashed = paths.len(),
        prehashed = bodies.len() - paths.len(),
        "read upper dir"
    );
    for (id, path, known) in bodies {
        let (digest, size) = match known {
            Some(known) => known,
            None => hashed.next().expect("one result per path")?,
        };
        let staged = stager.adopt(&path, digest, size)?;
        layer.leaf_mut(id).content = Content::File(FileData::Object {
            digest: staged.digest,
            size: staged.size,
        });
    }
    Ok((layer, usage))
}

impl Walk<'_> {
    /// Adds an inode to the usage, each inode once.
    fn count(&mut self, meta: &std::fs::Metadata) {
        if meta.nlink() > 1 && !meta.is_dir() && !self.counted.insert((meta.dev(), meta.ino())) {
            return;
        }
        self.usage.inodes += 1;
        self.usage.size += i64::try_from(meta.blocks() * 512).unwrap_or(i64::MAX);
    }

    fn dir(&mut self, path: &Path, stat: Stat, names: &mut Vec<Vec<u8>>) -> Result<Dir, SnapshotError> {
        let mut dir = Dir::new(stat);
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| SnapshotError::io("read dir", path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| SnapshotError::io("read dir", path, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().as_bytes().to_vec();
            let child = entry.path();
            names.push(name.clone());
            let node = self.entry(&child, names)?;
            names.pop();
            dir.entries.insert(name, node);
        }
        Ok(dir)
    }

    fn entry(&mut self, path: &Path, names: &mut Vec<Vec<u8>>) -> Result<Node, SnapshotError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| SnapshotError::io("stat", path, e))?;
        self.count(&meta);
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            return Ok(Node::Whiteout);
        }
        let (stat, overlay) = read_stat(path, &meta)?;
        if ft.is_dir() {
            if let Some(redirect) = overlay.get(REDIRECT) {
                return self.redirected_dir(path, stat, names, redirect);
            }
            let opaque = overlay.get(OPAQUE).is_some_and(|v| v == b"y");
            let mut dir = self.dir(path, stat, names)?;
            dir.opaque = opaque;
            return Ok(Node::Dir(Box::new(dir)));
        }
        let key = (meta.dev(), meta.ino());
        if let Some(id) = self.inodes.get(&key) {
            return Ok(Node::Leaf(*id));
        }
        let mut body = false;
        let content = if ft.is_file() {
            if overlay.contains_key(METACOPY) {
                self.lower_content(path, names, overlay.get(REDIRECT))?
            } else if usize::try_from(meta.len()).is_ok_and(|l| l <= strata_erofs::INLINE_MAX) {
                let data = std::fs::read(path).map_err(|e| SnapshotError::io("read", path, e))?;
                Content::File(FileData::Inline(data))
            } else {
                // Hashed after the walk; the digest is filled in then.
                body = true;
                Content::File(FileData::Object {
                    digest: Digest([0; 32]),
                    size: meta.len(),
                })
            }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| SnapshotError::io("read link", path, e))?;
            Content::Symlink(target.into_os_string().into_encoded_bytes())
        } else if ft.is_char_device() {
            Content::CharDevice(meta.rdev())
        } else if ft.is_block_device() {
            Content::BlockDevice(meta.rdev())
        } else if ft.is_fifo() {
            Content::Fifo
        } else {
            Content::Socket
        };
        let id = self.layer.push_leaf(Leaf { stat, content });
        if body {
            self.bodies.push((id, path.to_owned(), meta.clone()));
        }
        if meta.nlink() > 1 {
            self.inodes.insert(key, id);
        }
        Ok(Node::Leaf(id))
    }

    /// A directory renamed from the lower tree: the lower directory at its
    /// redirect, copied whole, with this upper dir's entries over it. The
    /// result is opaque, so the merge takes it as it is.
    fn redirected_dir(
        &mut self,
        path: &Path,
        stat: Stat,
        names: &[Vec<u8>],
        redirect: &[u8],
    ) -> Result<Node, SnapshotError> {
        let mut origin = resolve_redirect(names, redirect);
        let mut merged = match self.lower.lookup(&origin) {
            Some(Node::Dir(lower)) => self.copy_lower_dir(lower, &mut HashMap::new()),
            _ => {
                return Err(SnapshotError::Unsupported {
                    path: path.display().to_string(),
                    reason: "renamed directory whose origin is not a directory of the parent snapshot".into(),
                })
            }
        };
        // Entries below are found in the lower tree under the origin.
        let upper = self.dir(path, stat, &mut origin)?;
        apply_upper(&mut merged, upper);
        merged.opaque = true;
        Ok(Node::Dir(Box::new(merged)))
    }

    /// Copies a lower directory into the layer, keeping hard links within it.
    fn copy_lower_dir(&mut self, lower: &Dir, ids: &mut HashMap<LeafId, LeafId>) -> Dir {
        let mut dir = Dir::new(lower.stat.clone());
        for (name, node) in &lower.entries {
            let copied = match node {
                Node::Dir(d) => Node::Dir(Box::new(self.copy_lower_dir(d, ids))),
                Node::Leaf(id) => Node::Leaf(
                    *ids.entry(*id)
                        .or_insert_with(|| self.layer.push_leaf(self.lower.leaf(*id).clone())),
                ),
                Node::Whiteout => continue,
            };
            dir.entries.insert(name.clone(), copied);
        }
        dir
    }

    /// The content of a metadata-only copy-up: the lower file at its
    /// redirect (absolute, or relative to its directory) or its own path.
    fn lower_content(
        &self,
        path: &Path,
        names: &[Vec<u8>],
        redirect: Option<&Vec<u8>>,
    ) -> Result<Content, SnapshotError> {
        let target = match redirect {
            Some(r) => resolve_redirect(names, r),
            None => names.to_vec(),
        };
        match self.lower.lookup(&target) {
            Some(Node::Leaf(id)) => match &self.lower.leaf(*id).content {
                c @ Content::File(_) => Ok(c.clone()),
                _ => Err(lower_missing(path)),
            },
            _ => Err(lower_missing(path)),
        }
    }
}

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

/// Applies an upper directory over a copy of its lower one, as overlayfs
/// shows them merged: whiteouts delete, opaque dirs replace, dirs merge.
/// Whiteouts and opaque marks are used up; none are left in the result.
fn apply_upper(lower: &mut Dir, upper: Dir) {
    lower.stat = upper.stat;
    for (name, node) in upper.entries {
        match node {
            Node::Whiteout => {
                lower.entries.remove(&name);
            }
            Node::Dir(up) => {
                let mut base = match lower.entries.remove(&name) {
                    Some(Node::Dir(low)) if !up.opaque => *low,
                    _ => Dir::new(up.stat.clone()),
                };
                apply_upper(&mut base, *up);
                lower.entries.insert(name, Node::Dir(Box::new(base)));
            }
            leaf => {
                lower.entries.insert(name, leaf);
            }
        }
    }
}

fn lower_missing(path: &Path) -> SnapshotError {
    SnapshotError::Unsupported {
        path: path.display().to_string(),
        reason: "metadata-only copy-up whose lower file is not in the parent snapshot".into(),
    }
}

type XattrPair = (Vec<u8>, Vec<u8>);
type Xattrs = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// The stat of `path`, and its `trusted.overlay.*` xattrs apart.
fn read_stat(path: &Path, meta: &std::fs::Metadata) -> Result<(Stat, Xattrs), SnapshotError> {
    let mut stat = Stat {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_sec: meta.mtime(),
        mtime_nsec: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
        ..Stat::default()
    };
    let mut overlay = Xattrs::new();
    for (name, value) in xattrs(path)? {
        if name.starts_with(OVERLAY_PREFIX) {
            overlay.insert(name, value);
        } else {
            stat.xattrs.insert(name, value);
        }
    }
    Ok((stat, overlay))
}

fn xattrs(path: &Path) -> Result<Vec<XattrPair>, SnapshotError> {
    let err = |e: rustix::io::Errno| SnapshotError::io("read xattrs", path, e);
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    if size == 0 {
        return Ok(Vec::new());
    }
    let mut list = vec![0u8; size];
    let n = rustix::fs::llistxattr(path, list.as_mut_slice()).map_err(err)?;
    list.truncate(n);
    let mut out = Vec::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let len = match rustix::fs::lgetxattr_query(path, name) {
            Ok(n) => n,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(err(e)),
        };
        let mut value = vec![0u8; len];
        let got = rustix::fs::lgetxattr(path, name, value.as_mut_slice()).map_err(err)?;
        value.truncate(got);
        out.push((name.to_vec(), value));
    }
    Ok(out)
}

//! Turns an overlay upper directory into a layer [`Tree`].
//!
//! Overlay's own markings become tree markings: a character device 0:0 is a
//! whiteout, `trusted.overlay.opaque=y` an opaque directory, and a
//! metadata-only copy-up (`trusted.overlay.metacopy`) keeps the content of
//! the lower file it came from. Other `trusted.overlay.*` xattrs are dropped.
//! Bodies of regular files above the inline limit are moved (renamed, never
//! copied) into the store's stage.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use strata_store::ObjectStager;
use strata_tree::{Content, Dir, FileData, Leaf, LeafId, Node, Stat, Tree};

use crate::types::Usage;
use crate::SnapshotError;

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE: &[u8] = b"trusted.overlay.opaque";
const METACOPY: &[u8] = b"trusted.overlay.metacopy";
const REDIRECT: &[u8] = b"trusted.overlay.redirect";

struct Walk<'a> {
    lower: &'a Tree,
    stager: &'a mut ObjectStager,
    layer: Tree,
    inodes: HashMap<(u64, u64), LeafId>,
    usage: Usage,
}

/// Reads `upper` into a layer tree, staging large file bodies in `stager`.
/// `lower` is the merged tree the upper dir was mounted over.
pub(crate) fn layer_from_upper(
    upper: &Path,
    lower: &Tree,
    stager: &mut ObjectStager,
) -> Result<(Tree, Usage), SnapshotError> {
    let meta = std::fs::symlink_metadata(upper).map_err(|e| SnapshotError::io("stat", upper, e))?;
    let (stat, _) = read_stat(upper, &meta)?;
    let mut walk = Walk {
        lower,
        stager,
        layer: Tree::new(stat.clone()),
        inodes: HashMap::new(),
        usage: Usage::default(),
    };
    let mut names = Vec::new();
    let root = walk.dir(upper, stat, &mut names)?;
    walk.layer.root = root;
    walk.layer.root.opaque = false;
    Ok((walk.layer, walk.usage))
}

impl Walk<'_> {
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
            let node = self.entry(path, &child, names)?;
            names.pop();
            dir.entries.insert(name, node);
        }
        Ok(dir)
    }

    fn entry(&mut self, parent: &Path, path: &Path, names: &mut Vec<Vec<u8>>) -> Result<Node, SnapshotError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| SnapshotError::io("stat", path, e))?;
        let ft = meta.file_type();
        self.usage.inodes += 1;
        if ft.is_char_device() && meta.rdev() == 0 {
            return Ok(Node::Whiteout);
        }
        let (stat, overlay) = read_stat(path, &meta)?;
        if ft.is_dir() {
            if overlay.contains_key(REDIRECT) {
                return Err(SnapshotError::Unsupported {
                    path: path.display().to_string(),
                    reason: "a directory renamed from a lower layer (overlay redirect) cannot be committed yet".into(),
                });
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
        let content = if ft.is_file() {
            if overlay.contains_key(METACOPY) {
                self.lower_content(path, names, overlay.get(REDIRECT))?
            } else {
                self.usage.size = self
                    .usage
                    .size
                    .saturating_add(i64::try_from(meta.len()).unwrap_or(i64::MAX));
                Content::File(self.body(parent, path, meta.len())?)
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
        if meta.nlink() > 1 {
            self.inodes.insert(key, id);
        }
        Ok(Node::Leaf(id))
    }

    fn body(&mut self, parent: &Path, path: &Path, len: u64) -> Result<FileData, SnapshotError> {
        if usize::try_from(len).is_ok_and(|l| l <= strata_erofs::INLINE_MAX) {
            let data = std::fs::read(path).map_err(|e| SnapshotError::io("read", path, e))?;
            return Ok(FileData::Inline(data));
        }
        let staged = match path.file_name().and_then(|n| n.to_str()) {
            Some(name) => self.stager.adopt(parent, name)?,
            None => {
                // adopt() takes UTF-8 names; stream the rare other ones.
                let mut file = std::fs::File::open(path).map_err(|e| SnapshotError::io("open", path, e))?;
                let mut writer = self.stager.writer()?;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = std::io::Read::read(&mut file, &mut buf).map_err(|e| SnapshotError::io("read", path, e))?;
                    if n == 0 {
                        break;
                    }
                    writer.write(&buf[..n])?;
                }
                self.stager.finish(writer)?
            }
        };
        Ok(FileData::Object {
            digest: staged.digest,
            size: staged.size,
        })
    }

    /// The content of a metadata-only copy-up: the lower file at its
    /// redirect (absolute, or relative to its directory) or its own path.
    fn lower_content(
        &self,
        path: &Path,
        names: &[Vec<u8>],
        redirect: Option<&Vec<u8>>,
    ) -> Result<Content, SnapshotError> {
        let target: Vec<Vec<u8>> = match redirect {
            Some(r) if r.first() == Some(&b'/') => r
                .split(|&b| b == b'/')
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect(),
            Some(r) => {
                let mut t = names[..names.len() - 1].to_vec();
                t.push(r.clone());
                t
            }
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

//! EROFS metadata images in the composefs layout.
//!
//! [`write_image`] turns a merged [`strata_tree::Tree`] into deterministic
//! bytes: the same tree always gives the same image. Regular files above the
//! inline limit become overlay metacopy stubs whose `trusted.overlay.redirect`
//! names `/XX/REST` in the object store; the image holds no file data.
//! [`referenced_objects`] reads an image back for fsck and gc.
//!
//! The on-disk writer is the `composefs` crate's (pinned), used in its V2
//! format: extended inodes with nanosecond mtimes and no whiteout stub table,
//! because strata always mounts the object store as a data-only lower layer.
//! This crate must not do I/O.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use composefs::erofs::format::FormatVersion;
use composefs::erofs::reader::collect_objects;
use composefs::erofs::writer::{mkfs_erofs_versioned, ValidatedFileSystem};
use composefs::fsverity::{FsVerityHashValue, Sha256HashValue};
use composefs::generic_tree::{Inode, LeafContent, LeafId as CfsLeafId, Stat as CfsStat};
use composefs::tree::{Directory, FileSystem, RegularFile};
use strata_tree::{Content, Digest, Dir, FileData, LeafId, Node, Stat, Tree};

/// Files of at most this many bytes live inside the image (composefs's rule).
pub const INLINE_MAX: usize = composefs::INLINE_CONTENT_MAX_V0;

/// Symlink targets longer than this cannot be stored.
pub const SYMLINK_MAX: usize = composefs::SYMLINK_MAX;

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("tree still holds a whiteout at {path:?}; merge layers before writing an image")]
    UnmergedWhiteout { path: String },
    #[error("symlink {path:?} has a target of {len} bytes, over the limit of {SYMLINK_MAX}")]
    SymlinkTooLong { path: String, len: usize },
    #[error("tree rejected by the EROFS writer: {reason}")]
    Invalid { reason: String },
    #[error("not a valid composefs EROFS image: {reason}")]
    Corrupt { reason: String },
}

type CfsFs = FileSystem<Sha256HashValue>;

/// Writes the EROFS image for a merged tree.
pub fn write_image(tree: &Tree) -> Result<Vec<u8>, ErofsError> {
    let mut fs = CfsFs::new(convert_stat(&tree.root.stat));
    let mut leaf_map: Vec<Option<CfsLeafId>> = vec![None; tree.leaves.len()];
    let mut path = Vec::new();
    let root = convert_dir(tree, &tree.root, &mut fs, &mut leaf_map, &mut path)?;
    fs.root = root;
    let validated = ValidatedFileSystem::new(fs).map_err(|e| ErofsError::Invalid {
        reason: format!("{e:#}"),
    })?;
    Ok(mkfs_erofs_versioned(&validated, FormatVersion::V2).into_vec())
}

/// The object digests an image's files point at.
pub fn referenced_objects(image: &[u8]) -> Result<Vec<Digest>, ErofsError> {
    let set = collect_objects::<Sha256HashValue>(image).map_err(|e| ErofsError::Corrupt { reason: e.to_string() })?;
    let mut out: Vec<Digest> = set
        .iter()
        .map(|id| {
            id.to_hex()
                .parse()
                .expect("a SHA-256 value formats as 64 hex characters")
        })
        .collect();
    out.sort_unstable();
    Ok(out)
}

fn convert_dir(
    tree: &Tree,
    dir: &Dir,
    fs: &mut CfsFs,
    leaf_map: &mut [Option<CfsLeafId>],
    path: &mut Vec<u8>,
) -> Result<Directory<Sha256HashValue>, ErofsError> {
    let mut out = Directory::new(convert_stat(&dir.stat));
    for (name, node) in &dir.entries {
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(name);
        let inode = match node {
            Node::Dir(child) => Inode::Directory(Box::new(convert_dir(tree, child, fs, leaf_map, path)?)),
            Node::Leaf(id) => Inode::leaf(convert_leaf(tree, *id, fs, leaf_map, path)?),
            Node::Whiteout => {
                return Err(ErofsError::UnmergedWhiteout {
                    path: String::from_utf8_lossy(path).into_owned(),
                })
            }
        };
        out.insert(OsStr::from_bytes(name), inode);
        path.truncate(len);
    }
    Ok(out)
}

fn convert_leaf(
    tree: &Tree,
    id: LeafId,
    fs: &mut CfsFs,
    leaf_map: &mut [Option<CfsLeafId>],
    path: &[u8],
) -> Result<CfsLeafId, ErofsError> {
    if let Some(done) = leaf_map[id.0] {
        return Ok(done);
    }
    let leaf = tree.leaf(id);
    let content = match &leaf.content {
        Content::File(FileData::Inline(data)) => LeafContent::Regular(RegularFile::Inline(data.clone().into())),
        Content::File(FileData::Object { digest, size }) => {
            let id = Sha256HashValue::from_hex(digest.to_hex()).expect("64 hex characters");
            LeafContent::Regular(RegularFile::External(id, *size))
        }
        Content::Symlink(target) => {
            if target.len() > SYMLINK_MAX {
                return Err(ErofsError::SymlinkTooLong {
                    path: String::from_utf8_lossy(path).into_owned(),
                    len: target.len(),
                });
            }
            LeafContent::Symlink(OsStr::from_bytes(target).into())
        }
        Content::CharDevice(rdev) => LeafContent::CharacterDevice(*rdev),
        Content::BlockDevice(rdev) => LeafContent::BlockDevice(*rdev),
        Content::Fifo => LeafContent::Fifo,
        Content::Socket => LeafContent::Socket,
    };
    let new_id = fs.push_leaf(convert_stat(&leaf.stat), content);
    leaf_map[id.0] = Some(new_id);
    Ok(new_id)
}

fn convert_stat(stat: &Stat) -> CfsStat {
    let xattrs: BTreeMap<Box<OsStr>, Box<[u8]>> = stat
        .xattrs
        .iter()
        .map(|(k, v)| (OsStr::from_bytes(k).into(), v.clone().into_boxed_slice()))
        .collect();
    CfsStat {
        st_mode: stat.mode & 0o7777,
        st_uid: stat.uid,
        st_gid: stat.gid,
        st_mtim_sec: stat.mtime_sec,
        st_mtim_nsec: stat.mtime_nsec,
        xattrs,
    }
}

#[cfg(test)]
mod tests;

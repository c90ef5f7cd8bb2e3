//! Reading an image back into the merged tree it was written from.
//!
//! The parsing is composefs's own ([`erofs_to_filesystem`], in its
//! composefs-restricted mode); this module only inverts the mapping that
//! [`crate::write_image`] applies on the way in, and rejects anything that
//! writer never produces.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::ffi::OsStrExt;

use composefs::erofs::format::COMPOSEFS_VERSION;
use composefs::erofs::reader::{erofs_to_filesystem, DirectoryBlock, Image, InodeHeader, InodeOps, InodeType};
use composefs::fsverity::Sha256HashValue;
use composefs::generic_tree::{Inode, LeafContent, Stat as CfsStat};
use composefs::tree::{Directory, FileSystem, RegularFile};
use strata_tree::{Content, Dir, FileData, Leaf, LeafId, Node, Stat, Tree};
use zerocopy::FromBytes;

use crate::{check_name, with_stack_for, ErofsError, INLINE_MAX, MAX_DEPTH, SYMLINK_MAX};

/// The tree [`read_tree`] gives back for an image that
/// [`write_image`](crate::write_image) wrote from `tree`, made without
/// writing one: compacted, with no sub-second mtimes, mode bits only in
/// `0o7777`, no layer flags on directories, and each missing content named
/// as the object the image names it by (its SHA-256).
pub fn read_back(tree: &Tree) -> Result<Tree, ErofsError> {
    // The clone recurses as deep as the tree.
    with_stack_for(tree.root.depth(), || Ok(read_back_here(tree)))
}

fn read_back_here(tree: &Tree) -> Tree {
    fn stat(stat: &mut Stat) {
        stat.mtime_nsec = 0;
        stat.mode &= 0o7777;
    }
    let mut out = tree.clone();
    out.compact();
    let mut pending: Vec<&mut Dir> = vec![&mut out.root];
    while let Some(dir) = pending.pop() {
        stat(&mut dir.stat);
        (dir.opaque, dir.implicit, dir.fresh) = (false, false, false);
        for node in dir.entries.values_mut() {
            if let Node::Dir(child) = node {
                pending.push(child);
            }
        }
    }
    for leaf in &mut out.leaves {
        stat(&mut leaf.stat);
        if let Content::File(FileData::Missing { sha256, size }) = leaf.content {
            leaf.content = Content::File(FileData::Object { digest: sha256, size });
        }
    }
    out
}

/// Reads an image written by [`write_image`](crate::write_image) back into
/// the merged tree it was written from.
///
/// For every tree `t` that `write_image` accepts,
/// `read_tree(&write_image(&t)?)?` equals `t` after [`Tree::compact`] (the
/// result is already compacted), except for what the image format cannot
/// hold: mode bits outside `0o7777`, and `mtime_nsec`, which composefs's V2
/// format does not store (it always reads back as 0). Hard links come back
/// as one shared [`LeafId`]; directories are never opaque or implicit.
///
/// Images that `write_image` cannot have produced (another composefs format
/// version, files without fs-verity digests, sparse files, overlay whiteout
/// stubs, over-long inline files, directories linked twice or nested over
/// [`MAX_DEPTH`]) are [`ErofsError::Corrupt`], as is anything composefs's
/// reader rejects.
///
/// No I/O; an image nested deeper than 128 levels is parsed on a scoped
/// helper thread with a big stack (see `with_stack_for`), because
/// composefs's reader is recursive.
pub fn read_tree(image: &[u8]) -> Result<Tree, ErofsError> {
    let depth = check_image(image)?;
    with_stack_for(depth, || convert(image))
}

fn corrupt(reason: String) -> ErofsError {
    ErofsError::Corrupt { reason }
}

fn convert(image: &[u8]) -> Result<Tree, ErofsError> {
    let fs = erofs_to_filesystem::<Sha256HashValue>(image).map_err(|e| corrupt(format!("{e:#}")))?;
    let mut reader = Reader {
        fs: &fs,
        tree: Tree::new(convert_stat(&fs.root.stat)),
        leaf_map: vec![None; fs.leaves.len()],
        path: Vec::new(),
    };
    let root = reader.dir(&fs.root)?;
    let mut tree = reader.tree;
    tree.root = root;
    tree.compact();
    Ok(tree)
}

/// Checks, without recursion, what composefs's reader does not: the format
/// version strata writes, the image length, whiteout stubs (which it would
/// skip silently), and a directory graph that is a tree of bounded depth.
/// composefs's reader walks a directory once per entry naming it, so a
/// directory named twice at each of many levels would take exponential time,
/// and it recurses per level. Returns how deep directories nest.
fn check_image(image: &[u8]) -> Result<usize, ErofsError> {
    let err = |e: composefs::erofs::reader::ErofsReaderError| corrupt(e.to_string());
    let img = Image::open(image).and_then(Image::restrict_to_composefs).map_err(err)?;
    let version = img.header.composefs_version.get();
    if version != COMPOSEFS_VERSION.get() {
        return Err(corrupt(format!(
            "composefs format version {version}, but strata writes only version {}",
            COMPOSEFS_VERSION.get()
        )));
    }
    // The writer pads the image to whole blocks and records their count, so
    // any other length means bytes were cut off or added.
    let blocks = u64::from(img.sb.blocks.get());
    if blocks.checked_mul(img.block_size as u64) != Some(image.len() as u64) {
        return Err(corrupt(format!(
            "image is {} bytes, but its superblock counts {blocks} blocks of {}",
            image.len(),
            img.block_size
        )));
    }
    img.fsck_metadata().map_err(err)?;

    let root = u64::from(img.sb.root_nid.get());
    let mut dirs = HashSet::from([root]);
    let mut stack = vec![(root, 0usize)];
    let mut deepest = 0;
    // Every entry takes a 12-byte header of its own in a sound image.
    let mut budget = image.len() / 12;
    while let Some((nid, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        let inode = img.inode(nid).map_err(err)?;
        if !inode.mode().is_dir() {
            return Err(corrupt(format!("inode {nid} is listed as a directory but is not one")));
        }
        for (name, child) in entries(&img, &inode, &mut budget)? {
            if name == b"." || name == b".." {
                continue;
            }
            let child_inode = img.inode(child).map_err(err)?;
            if child_inode.mode().is_dir() {
                if depth >= MAX_DEPTH {
                    return Err(corrupt(format!("directories nest deeper than {MAX_DEPTH} levels")));
                }
                if !dirs.insert(child) {
                    return Err(corrupt(format!("directory inode {child} is linked more than once")));
                }
                stack.push((child, depth + 1));
            } else if nid == root
                && name.len() == 2
                && name.iter().all(u8::is_ascii_hexdigit)
                && child_inode.is_whiteout()
            {
                // composefs's reader drops these as V0/V1 whiteout stubs, and
                // write_image refuses to write one.
                return Err(corrupt(format!(
                    "root entry {:?} is an overlay whiteout stub, which strata never writes",
                    String::from_utf8_lossy(&name)
                )));
            }
        }
    }
    Ok(deepest)
}

/// A directory's entries, in block then inline order as composefs reads
/// them, charged against `budget`.
fn entries(img: &Image, dir: &InodeType, budget: &mut usize) -> Result<Vec<(Vec<u8>, u64)>, ErofsError> {
    let err = |e: composefs::erofs::reader::ErofsReaderError| corrupt(e.to_string());
    let mut out = Vec::new();
    let mut take = |block: &DirectoryBlock| -> Result<(), ErofsError> {
        for entry in block.entries().map_err(err)? {
            let entry = entry.map_err(err)?;
            *budget = budget
                .checked_sub(1)
                .ok_or_else(|| corrupt("directories list more entries than the image can hold".into()))?;
            out.push((entry.name.to_vec(), entry.nid()));
        }
        Ok(())
    };
    for block in img.inode_blocks(dir).map_err(err)? {
        take(img.directory_block(block).map_err(err)?)?;
    }
    if let Some(inline) = dir.inline() {
        let block =
            DirectoryBlock::ref_from_bytes(inline).map_err(|_| corrupt("unreadable inline directory".into()))?;
        take(block)?;
    }
    Ok(out)
}

struct Reader<'a> {
    fs: &'a FileSystem<Sha256HashValue>,
    tree: Tree,
    /// composefs leaf index to strata leaf: hard links share one entry.
    leaf_map: Vec<Option<LeafId>>,
    /// Path of the directory being read, for error messages.
    path: Vec<u8>,
}

impl Reader<'_> {
    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    fn dir(&mut self, dir: &Directory<Sha256HashValue>) -> Result<Dir, ErofsError> {
        let mut out = Dir::new(convert_stat(&dir.stat));
        for (name, inode) in dir.entries() {
            let name = name.as_bytes();
            let len = self.path.len();
            self.path.push(b'/');
            self.path.extend_from_slice(name);
            check_name(name).map_err(|why| corrupt(format!("entry {:?} {why}", self.shown())))?;
            let node = match inode {
                Inode::Directory(child) => Node::Dir(Box::new(self.dir(child)?)),
                Inode::Leaf(id, _) => Node::Leaf(self.leaf(id.0)?),
            };
            out.entries.insert(name.to_vec(), node);
            self.path.truncate(len);
        }
        Ok(out)
    }

    fn leaf(&mut self, index: usize) -> Result<LeafId, ErofsError> {
        let slot = self
            .leaf_map
            .get(index)
            .ok_or_else(|| corrupt(format!("{:?} names leaf {index}, which does not exist", self.shown())))?;
        if let Some(done) = *slot {
            return Ok(done);
        }
        let leaf = &self.fs.leaves[index];
        let content = match &leaf.content {
            LeafContent::Regular(RegularFile::Inline(data)) => {
                if data.len() > INLINE_MAX {
                    return Err(corrupt(format!(
                        "{:?} holds {} bytes inline, over the limit of {INLINE_MAX}",
                        self.shown(),
                        data.len()
                    )));
                }
                Content::File(FileData::Inline(data.to_vec()))
            }
            LeafContent::Regular(RegularFile::External(id, size)) => Content::File(FileData::Object {
                digest: crate::digest_of(id),
                size: *size,
            }),
            LeafContent::Regular(RegularFile::ExternalNoVerity(..)) => {
                return Err(corrupt(format!(
                    "{:?} is an external file without an fs-verity digest, which strata never writes",
                    self.shown()
                )))
            }
            LeafContent::Regular(RegularFile::Sparse(..)) => {
                return Err(corrupt(format!(
                    "{:?} is a sparse file, which strata never writes",
                    self.shown()
                )))
            }
            LeafContent::Symlink(target) => {
                let target = target.as_bytes();
                if target.len() > SYMLINK_MAX {
                    return Err(corrupt(format!(
                        "symlink {:?} has a target of {} bytes, over the limit of {SYMLINK_MAX}",
                        self.shown(),
                        target.len()
                    )));
                }
                Content::Symlink(target.to_vec())
            }
            LeafContent::CharacterDevice(rdev) => Content::CharDevice(*rdev),
            LeafContent::BlockDevice(rdev) => Content::BlockDevice(*rdev),
            LeafContent::Fifo => Content::Fifo,
            LeafContent::Socket => Content::Socket,
        };
        let id = self.tree.push_leaf(Leaf {
            stat: convert_stat(&leaf.stat),
            content,
        });
        self.leaf_map[index] = Some(id);
        Ok(id)
    }
}

/// The inverse of `crate::convert_stat`; composefs's reader has already
/// masked the mode to permission bits and unescaped `trusted.overlay.*`.
fn convert_stat(stat: &CfsStat) -> Stat {
    let xattrs: BTreeMap<Vec<u8>, Vec<u8>> = stat
        .xattrs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
        .collect();
    Stat {
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        mtime_sec: stat.st_mtim_sec,
        mtime_nsec: stat.st_mtim_nsec,
        xattrs,
    }
}

#[cfg(test)]
mod tests;

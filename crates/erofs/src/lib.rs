//! EROFS metadata images in the composefs layout.
//!
//! [`write_image`] turns a merged [`strata_tree::Tree`] into deterministic
//! bytes: the same tree always gives the same image. Regular files above the
//! inline limit become overlay metacopy stubs whose `trusted.overlay.redirect`
//! names `/XX/REST` in the object store; the image holds no file data.
//! [`referenced_objects`] reads an image back for fsck and gc, and
//! [`read_tree`] reads the whole tree back.
//!
//! The on-disk writer is the `composefs` crate's (pinned), used in its V2
//! format: extended inodes and no whiteout stub table, because strata always
//! mounts the object store as a data-only lower layer. composefs 0.9.4's V2
//! writer stores whole-second mtimes only: `mtime_nsec` is not kept.
//! [`write_image`] refuses trees that the format or composefs's reader cannot
//! carry faithfully, so that [`read_tree`] inverts it.
//! This crate must not do I/O.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use composefs::erofs::format::{self, FormatVersion, XATTR_OVERLAY_ESCAPED_PREFIX, XATTR_OVERLAY_PREFIX};
use composefs::erofs::reader::collect_objects;
use composefs::erofs::writer::{mkfs_erofs_versioned, ValidatedFileSystem};
use composefs::fsverity::Sha256HashValue;
use composefs::generic_tree::{Inode, LeafContent, LeafId as CfsLeafId, Stat as CfsStat};
use composefs::tree::{Directory, FileSystem, RegularFile};
use strata_tree::{Content, Digest, Dir, FileData, Leaf, LeafId, Node, Stat, Tree, MAX_NAME_LEN};

mod read;

pub use read::{read_back, read_tree};

/// Files of at most this many bytes live inside the image (composefs's rule).
pub const INLINE_MAX: usize = composefs::MAX_INLINE_CONTENT;

/// Symlink targets longer than this cannot be stored.
pub const SYMLINK_MAX: usize = composefs::SYMLINK_MAX;

/// Directories nest at most this deep below the root (composefs's reader
/// refuses deeper images).
pub const MAX_DEPTH: usize = 2047;

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
    /// Could not start the thread that [`write_image`] and [`read_tree`] run on.
    #[error("cannot start a thread for the EROFS writer or reader: {0}")]
    Thread(#[source] std::io::Error),
}

type CfsFs = FileSystem<Sha256HashValue>;

/// Writes the EROFS image for a merged tree.
///
/// Besides whiteouts and long symlinks, it refuses ([`ErofsError::Invalid`])
/// what the image could not give back unchanged: inline files over
/// [`INLINE_MAX`], device numbers over 32 bits, entry names that are empty,
/// `.`, `..`, hold `/` or NUL or exceed [`MAX_NAME_LEN`], directories nested
/// over [`MAX_DEPTH`], character devices 0/0 named by two hex digits in the
/// root (composefs reads those as whiteout stubs), and xattrs that EROFS
/// cannot encode or that composefs's reader drops as its own overlay markers
/// (`{trusted,user}.overlay.{whiteout,whiteouts,opaque}`).
///
/// No I/O; a tree nested deeper than 128 levels is written on a scoped helper
/// thread with a big stack (see `with_stack_for`), because the writer
/// recurses once per directory level.
pub fn write_image(tree: &Tree) -> Result<Vec<u8>, ErofsError> {
    // The clone recurses as deep as the tree: refuse a deep one first, and
    // clone on the stack the write uses.
    refuse_too_deep(&tree.root)?;
    with_stack_for(tree.root.depth(), || write_image_here(tree.clone()))
}

/// The error for a directory nested deeper than [`MAX_DEPTH`], found
/// without recursion.
fn refuse_too_deep(root: &Dir) -> Result<(), ErofsError> {
    let mut pending: Vec<(&Dir, usize, Vec<u8>)> = vec![(root, 0, Vec::new())];
    while let Some((dir, depth, path)) = pending.pop() {
        if depth > MAX_DEPTH {
            return Err(ErofsError::Invalid {
                reason: format!(
                    "directory {:?} is nested deeper than {MAX_DEPTH} levels",
                    String::from_utf8_lossy(&path)
                ),
            });
        }
        for (name, node) in &dir.entries {
            if let Node::Dir(child) = node {
                let mut below = path.clone();
                below.push(b'/');
                below.extend_from_slice(name);
                pending.push((child, depth + 1, below));
            }
        }
    }
    Ok(())
}

/// [`write_image`] for a tree the caller is done with: each directory and
/// leaf is freed as it is converted to composefs's tree, so the peak holds
/// one copy of the tree, not two (`bench/memory` measures it).
///
/// A tree of [`OWN_THREAD_LEAVES`] leaves or more is written on a thread of
/// its own, whatever its depth.
pub fn into_image(tree: Tree) -> Result<Vec<u8>, ErofsError> {
    refuse_too_deep(&tree.root)?;
    let depth = tree.root.depth();
    if tree.leaves.len() >= OWN_THREAD_LEAVES {
        return on_big_stack(move || write_image_here(tree));
    }
    with_stack_for(depth, move || write_image_here(tree))
}

/// Trees with at least this many leaves are written on a new thread by
/// [`into_image`]. The peak of a big write is composefs's tree plus its
/// writer's own tables and the image; what strata's tree freed while it was
/// converted only lowers it if composefs's allocations can reuse that
/// memory. With glibc's malloc they can on a new thread, which takes an
/// arena a finished thread left (the import threads', where the layer's
/// tree was built), and mostly cannot on the caller's, whose arena is
/// another: a pull of 1,000,000 empty files (`bench/memory`) peaked about
/// 50 MiB lower this way, as low as with `MALLOC_ARENA_MAX=1`. The thread
/// costs about 75 µs, nothing next to a write of this size.
const OWN_THREAD_LEAVES: usize = 1 << 16;

fn write_image_here(tree: Tree) -> Result<Vec<u8>, ErofsError> {
    // convert_dir converts the root's stat along with its entries.
    let mut fs = CfsFs::new(CfsStat::uninitialized());
    let mut leaves = Leaves {
        pending: tree.leaves.into_iter().map(Some).collect(),
        converted: Vec::new(),
    };
    leaves.converted.resize(leaves.pending.len(), None);
    let mut path = Vec::new();
    let root = convert_dir(tree.root, &mut fs, &mut leaves, &mut path, 0)?;
    drop(leaves);
    fs.root = root;
    let validated = ValidatedFileSystem::new(fs).map_err(|e| ErofsError::Invalid {
        reason: format!("{e:#}"),
    })?;
    Ok(mkfs_erofs_versioned(&validated, FormatVersion::V2).into_vec())
}

/// The tree's leaves during the conversion: each is taken out when its
/// first link is converted; later links reuse what it became.
struct Leaves {
    pending: Vec<Option<Leaf>>,
    /// composefs's id of each converted leaf, and whether it is a
    /// character device 0/0.
    converted: Vec<Option<(CfsLeafId, bool)>>,
}

/// The object digests an image's files point at.
pub fn referenced_objects(image: &[u8]) -> Result<Vec<Digest>, ErofsError> {
    let set = collect_objects::<Sha256HashValue>(image).map_err(|e| ErofsError::Corrupt { reason: e.to_string() })?;
    let mut out: Vec<Digest> = set.iter().map(digest_of).collect();
    out.sort_unstable();
    Ok(out)
}

fn convert_dir(
    dir: Dir,
    fs: &mut CfsFs,
    leaves: &mut Leaves,
    path: &mut Vec<u8>,
    depth: usize,
) -> Result<Directory<Sha256HashValue>, ErofsError> {
    let shown = |path: &[u8]| String::from_utf8_lossy(path).into_owned();
    let invalid = |reason: String| ErofsError::Invalid { reason };
    if depth > MAX_DEPTH {
        return Err(invalid(format!(
            "directory {:?} is nested deeper than {MAX_DEPTH} levels",
            shown(path)
        )));
    }
    let mut out = Directory::new(convert_stat(&dir.stat, path, false)?);
    let in_root = path.is_empty();
    for (name, node) in dir.entries {
        let len = path.len();
        path.push(b'/');
        path.extend_from_slice(&name);
        check_name(&name).map_err(|why| invalid(format!("entry {:?} {why}", shown(path))))?;
        let inode = match node {
            Node::Dir(child) => Inode::Directory(Box::new(convert_dir(*child, fs, leaves, path, depth + 1)?)),
            Node::Leaf(id) => {
                let (converted, whiteout_like) = convert_leaf(id, fs, leaves, path)?;
                if in_root && whiteout_like && name.len() == 2 && name.iter().all(u8::is_ascii_hexdigit) {
                    return Err(invalid(format!(
                        "character device 0/0 {:?} would be read back as an overlay whiteout stub",
                        shown(path)
                    )));
                }
                Inode::leaf(converted)
            }
            Node::Whiteout => {
                return Err(ErofsError::UnmergedWhiteout {
                    path: String::from_utf8_lossy(path).into_owned(),
                })
            }
        };
        out.insert(OsStr::from_bytes(&name), inode);
        path.truncate(len);
    }
    Ok(out)
}

/// composefs's value for a digest: the same 32 bytes (no hex round trip,
/// which was a few percent of a 100,000-file commit).
fn cfs_digest(digest: &Digest) -> Sha256HashValue {
    <Sha256HashValue as zerocopy::FromBytes>::read_from_bytes(&digest.0).expect("32 bytes make a SHA-256 value")
}

/// The digest composefs's value holds.
pub(crate) fn digest_of(id: &Sha256HashValue) -> Digest {
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(zerocopy::IntoBytes::as_bytes(id));
    Digest(bytes)
}

/// composefs's id for leaf `id`, and whether it is a character device 0/0.
fn convert_leaf(id: LeafId, fs: &mut CfsFs, leaves: &mut Leaves, path: &[u8]) -> Result<(CfsLeafId, bool), ErofsError> {
    let shown = || String::from_utf8_lossy(path).into_owned();
    let invalid = |reason: String| ErofsError::Invalid { reason };
    if let Some(Some(done)) = leaves.converted.get(id.0) {
        return Ok(*done);
    }
    let Some(leaf) = leaves.pending.get_mut(id.0).and_then(Option::take) else {
        return Err(invalid(format!(
            "{:?} names leaf {}, which does not exist",
            shown(),
            id.0
        )));
    };
    let whiteout_like = leaf.content == Content::CharDevice(0);
    let external = matches!(
        leaf.content,
        Content::File(FileData::Object { .. } | FileData::Missing { .. })
    );
    let content = match leaf.content {
        Content::File(FileData::Inline(data)) => {
            if data.len() > INLINE_MAX {
                return Err(invalid(format!(
                    "inline file {:?} has {} bytes, over the limit of {INLINE_MAX}",
                    shown(),
                    data.len()
                )));
            }
            LeafContent::Regular(RegularFile::Inline(data.into()))
        }
        // A missing content redirects to its SHA-256 name. composefs also
        // writes the name into `trusted.overlay.metacopy` as a digest, which
        // overlayfs checks only with `verity=require` (never used for a
        // lazily pulled image).
        Content::File(FileData::Object { digest, size } | FileData::Missing { sha256: digest, size }) => {
            let id = cfs_digest(&digest);
            LeafContent::Regular(RegularFile::External(id, size))
        }
        Content::Symlink(target) => {
            if target.len() > SYMLINK_MAX {
                return Err(ErofsError::SymlinkTooLong {
                    path: String::from_utf8_lossy(path).into_owned(),
                    len: target.len(),
                });
            }
            LeafContent::Symlink(OsStr::from_bytes(&target).into())
        }
        Content::CharDevice(rdev) | Content::BlockDevice(rdev) if u32::try_from(rdev).is_err() => {
            return Err(invalid(format!(
                "device {:?} has number {rdev:#x}, which does not fit EROFS's 32 bits",
                shown()
            )));
        }
        Content::CharDevice(rdev) => LeafContent::CharacterDevice(rdev),
        Content::BlockDevice(rdev) => LeafContent::BlockDevice(rdev),
        Content::Fifo => LeafContent::Fifo,
        Content::Socket => LeafContent::Socket,
    };
    let new_id = fs.push_leaf(convert_stat(&leaf.stat, path, external)?, content);
    leaves.converted[id.0] = Some((new_id, whiteout_like));
    Ok((new_id, whiteout_like))
}

/// Stack for the helper thread of [`write_image`] and [`read_tree`]. Both they
/// and composefs recurse once per directory level, composefs's reader with
/// frames of several KiB: [`MAX_DEPTH`] levels took about 16 MiB in a debug
/// build, and 512 levels already overflow a 2 MiB tokio worker stack. Only
/// the touched part is ever committed.
const STACK: usize = 64 << 20;

/// Trees at most this deep are written and read on the caller's stack
/// (well under 1 MiB even in a debug build); deeper ones get a thread with
/// a [`STACK`]-byte stack. Starting that thread costs about 75 µs, 25 times
/// the write of a small image.
pub(crate) const CALLER_STACK_DEPTH: usize = 128;

/// Runs `work` on the caller's stack, or on a big one if `depth` needs it.
pub(crate) fn with_stack_for<T: Send>(
    depth: usize,
    work: impl FnOnce() -> Result<T, ErofsError> + Send,
) -> Result<T, ErofsError> {
    if depth <= CALLER_STACK_DEPTH {
        work()
    } else {
        on_big_stack(work)
    }
}

/// Runs `work` to completion on a scoped thread with a [`STACK`]-byte stack;
/// a panic in it resumes in the caller.
fn on_big_stack<T: Send>(work: impl FnOnce() -> Result<T, ErofsError> + Send) -> Result<T, ErofsError> {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("strata-erofs".into())
            .stack_size(STACK)
            .spawn_scoped(scope, work)
            .map_err(ErofsError::Thread)?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Why a directory entry name cannot be stored, if it cannot.
pub(crate) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    match name {
        b"" => Err("has an empty name"),
        b"." | b".." => Err("is named '.' or '..'"),
        _ if name.contains(&b'/') => Err("has a '/' in its name"),
        _ if name.contains(&0) => Err("has a NUL byte in its name"),
        _ if name.len() > MAX_NAME_LEN => Err("has a name longer than 255 bytes"),
        _ => Ok(()),
    }
}

/// Stored xattr names that composefs's reader drops as markers of its own.
const READER_DROPS: [&[u8]; 8] = [
    format::XATTR_OVERLAY_METACOPY,
    format::XATTR_OVERLAY_REDIRECT,
    format::XATTR_OVERLAY_WHITEOUT,
    format::XATTR_OVERLAY_WHITEOUTS,
    format::XATTR_OVERLAY_OPAQUE,
    format::XATTR_USERXATTR_WHITEOUT,
    format::XATTR_USERXATTR_WHITEOUTS,
    format::XATTR_USERXATTR_OPAQUE,
];

/// Whether an image cannot carry the xattr `name` because composefs's
/// reader takes it for an overlay marker of its own and drops it, such as
/// `user.overlay.{opaque,whiteout,whiteouts}`. [`write_image`] refuses
/// trees holding one.
pub fn reserved_xattr(name: &[u8]) -> bool {
    READER_DROPS.contains(&&stored_xattr_name(name)[..])
}

/// Most xattrs on one inode: EROFS counts shared ones in a byte, and any of
/// them may end up shared.
const MAX_XATTRS: usize = 255;

/// Most bytes of one inode's xattr entries after the 12-byte header, counting
/// every entry as local: EROFS counts the header plus these 4-byte words in
/// 16 bits.
const MAX_XATTR_BYTES: usize = 4 * (u16::MAX as usize - 1);

/// The name composefs's writer stores for a user xattr: `trusted.overlay.*`
/// is escaped so overlayfs does not act on it.
fn stored_xattr_name(name: &[u8]) -> Vec<u8> {
    match name.strip_prefix(XATTR_OVERLAY_PREFIX) {
        Some(rest) => [XATTR_OVERLAY_ESCAPED_PREFIX, rest].concat(),
        None => name.to_vec(),
    }
}

/// The bytes composefs's writer stores for one xattr (by its stored name):
/// header, suffix after the prefix it picks, value, padding. `None` if EROFS
/// cannot encode it.
fn stored_xattr_len(name: &[u8], value: &[u8]) -> Option<usize> {
    // The writer tries prefixes from the last index down; "" always matches.
    let suffix = format::XATTR_PREFIXES
        .iter()
        .rev()
        .find_map(|prefix| name.strip_prefix(*prefix))
        .unwrap_or(name);
    if suffix.len() > usize::from(u8::MAX) || value.len() > usize::from(u16::MAX) {
        return None;
    }
    Some((4 + suffix.len() + value.len()).next_multiple_of(4))
}

/// Converts a stat for composefs, refusing xattrs the image cannot give back.
/// `external` files also carry composefs's metacopy and redirect xattrs.
fn convert_stat(stat: &Stat, path: &[u8], external: bool) -> Result<CfsStat, ErofsError> {
    let invalid = |what: String| ErofsError::Invalid {
        reason: format!(
            "{:?} {what}",
            String::from_utf8_lossy(if path.is_empty() { b"/" } else { path })
        ),
    };
    let internal = if external { 2 } else { 0 };
    if stat.xattrs.len() + internal > MAX_XATTRS {
        return Err(invalid(format!(
            "has {} xattrs, over the limit of {}",
            stat.xattrs.len(),
            MAX_XATTRS - internal
        )));
    }
    // metacopy (header, "overlay.metacopy", 36-byte value) and redirect
    // (header, "overlay.redirect", "/XX/" and 62 hex digits).
    let mut bytes = if external { 56 + 88 } else { 0 };
    for (name, value) in &stat.xattrs {
        let shown = || String::from_utf8_lossy(name).into_owned();
        let stored = stored_xattr_name(name);
        if reserved_xattr(name) {
            return Err(invalid(format!(
                "has xattr {:?}, which composefs reserves as an overlay marker",
                shown()
            )));
        }
        let Some(len) = stored_xattr_len(&stored, value) else {
            return Err(invalid(format!(
                "has xattr {:?} with a name or value too long for EROFS ({} value bytes)",
                shown(),
                value.len()
            )));
        };
        bytes += len;
    }
    if bytes > MAX_XATTR_BYTES {
        return Err(invalid(format!(
            "has {bytes} bytes of xattrs, over the limit of {MAX_XATTR_BYTES}"
        )));
    }
    let xattrs: BTreeMap<Box<OsStr>, Box<[u8]>> = stat
        .xattrs
        .iter()
        .map(|(k, v)| (OsStr::from_bytes(k).into(), v.clone().into_boxed_slice()))
        .collect();
    Ok(CfsStat {
        st_mode: stat.mode & 0o7777,
        st_uid: stat.uid,
        st_gid: stat.gid,
        st_mtim_sec: stat.mtime_sec,
        st_mtim_nsec: stat.mtime_nsec,
        xattrs,
    })
}

#[cfg(test)]
mod tests;

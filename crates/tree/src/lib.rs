//! Pure data for strata: content digests, file metadata and directory trees,
//! plus the overlay merge of layer trees (whiteouts, opaque directories, hard
//! links).
//!
//! Every walk over a tree uses an explicit stack, and dropping a directory
//! tears its subtree down with one: depth comes from the input.
//!
//! This crate does no I/O. Parsers (tar import, containerd diffs) build
//! [`Tree`]s; the EROFS writer turns a merged tree into bytes.

#![forbid(unsafe_code)]

mod digest;
mod merge;
mod node;
mod path;

#[cfg(test)]
mod deep_tests;

pub use digest::{Digest, DigestParseError, VerityHasher};
pub use merge::{merge_layer, MergeError};
pub use node::{Content, Dir, Entries, FileData, Leaf, LeafId, LowerCheck, Node, Stat, Tree, TreePath, TreeStats};
pub use path::{split_path, PathError, MAX_NAME_LEN};

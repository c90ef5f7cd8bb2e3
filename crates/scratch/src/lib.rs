//! Writable scratch layers for containers, with the semantics of containerd's
//! LCOW snapshotter labels done strictly: a size label gives the container a
//! writable layer of that size; a location label moves it, but only inside
//! the operator's allow-list; a reuse label shares another container's
//! scratch.
//!
//! [`labels`] is pure: labels in, a validated [`ScratchRequest`] out.
//! [`mechanism`] is pure too: facts about a filesystem in, the way to limit
//! a scratch on it out (a btrfs qgroup, a project quota, or a loop device).
//! [`limit`] gathers those facts and makes quota-limited dirs;
//! [`template`] formats an image once and clones it cheaply; [`attach`]
//! mounts a clone through an autoclear loop device. This crate knows no
//! snapshot records: the snapshotter decides where a scratch lives and
//! keeps what was made in its DB.

#![forbid(unsafe_code)]

pub mod attach;
pub mod labels;
pub mod limit;
pub mod mechanism;
pub mod template;

pub use attach::{fs_used, mount_file, unmount_file};
pub use labels::{is_unpack_key, parse_labels, FsKind, LabelError, ScratchPolicy, ScratchRequest};
pub use limit::{detect, QuotaError};
pub use mechanism::{Mechanism, Plan};
pub use template::{clone_file, ensure_template, CloneMethod, TemplateError};

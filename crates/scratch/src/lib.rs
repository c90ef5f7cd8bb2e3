//! Writable scratch layers for containers, with the semantics of containerd's
//! LCOW snapshotter labels done strictly: a size label gives the container its
//! own filesystem of that size, cloned from a template formatted once; a
//! location label moves it, but only inside the operator's allow-list; a
//! reuse label shares another container's scratch.
//!
//! [`labels`] is pure: labels in, a validated [`ScratchRequest`] out.
//! [`template`] does the file work: format once, clone cheaply; [`attach`]
//! mounts a clone through an autoclear loop device.

#![forbid(unsafe_code)]

pub mod attach;
pub mod labels;
pub mod template;

pub use attach::{fs_used, mount_file, unmount_file};
pub use labels::{is_unpack_key, parse_labels, FsKind, LabelError, ScratchPolicy, ScratchRequest};
pub use template::{clone_file, ensure_template, CloneMethod, TemplateError};

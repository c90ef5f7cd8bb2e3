//! The system-call seam. Everything strata asks of the kernel beyond plain
//! file I/O goes through here: the new mount API, unmounting, mount-table
//! lookups, starting writeback, project quotas and btrfs qgroups (quota.rs),
//! FUSE backing ids and fds handed over between LAZY servers (fuse.rs,
//! inherit.rs).
//! errno values are turned into typed errors once, here.
//!
//! This is the one crate allowed `unsafe` (for ioctls that safe crates lack);
//! every such block carries a `// SAFETY:` comment.

mod at;
mod beneath;
mod fuse;
mod inherit;
mod mountapi;
mod mountinfo;
pub mod quota;
mod verity;
mod writeback;

pub use at::{chmod_nofollow, get_xattr_at, list_xattrs_at, xattrs_at_available};
pub use beneath::{open_beneath, open_regular, proc_path, reopen_regular, Opened};
pub use fuse::adopt_fuse_backing;
pub use inherit::{keep_across_exec, take_inherited_fd};
pub use mountapi::{mount_fs, unmount, FsOption, MountError, MountFlags};
pub use mountinfo::{is_mountpoint, mounts_under};
pub use verity::enable_verity;
pub use writeback::start_writeback;

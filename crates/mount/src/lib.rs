//! Mounting images: a pure [`plan`] of what to mount, and [`exec`] to do it.
//!
//! An image is its EROFS file mounted read-only once (shared by every user
//! of the image), plus an overlay per user with the EROFS mount as the lower
//! layer, the object store as a data-only lower layer, and optionally an
//! upper and work dir. Kernel features are probed at run time.

#![forbid(unsafe_code)]

pub mod exec;
pub mod plan;

pub use exec::{
    count_overlay_users, lock_image_mounts, mount_image, mount_overlay, release_image_mounts, unmount_overlay,
    ImageMountLock, Mounter,
};
pub use plan::{LowerMode, OverlayPlan};
pub use strata_sys::MountError;

//! Mounting images: a pure [`plan`] of what to mount, and [`exec`] to do it.
//!
//! An image is its EROFS file mounted read-only once (shared by every user
//! of the image), plus an overlay per user with the EROFS mount as the lower
//! layer, the object store as a data-only lower layer, and optionally an
//! upper and work dir. How each kernel feature is used (EROFS from a file or a
//! loop device, how the data-only lower is passed) is the [`ladder`], chosen
//! from what [`probe`] finds and what the config forces.

#![forbid(unsafe_code)]

pub mod exec;
pub mod ladder;
pub mod plan;
pub mod probe;

pub use exec::{
    count_overlay_users, lock_image_mounts, mount_image, mount_overlay, mount_overlay_with_data, release_image_mounts,
    unmount_overlay, ImageMountLock, Kernel, Mounter,
};
pub use ladder::{choose, ErofsSource, KernelConfig, Ladder, LadderError, Offered, Verity};
pub use plan::{LowerMode, OverlayPlan};
pub use probe::probe;
pub use strata_sys::MountError;

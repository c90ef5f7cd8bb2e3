//! containerd snapshot semantics over the strata store.
//!
//! This crate owns snapshots: their keys, kinds, parents, labels and
//! timestamps (redb tables in the store's DB), their directories
//! (`ROOT/snapshots/<id>/{fs,work,tree}`, named by numeric id, never by key),
//! committing an upper directory into the store as one flattened EROFS
//! image, and the mounts containerd is handed. It has its own [`Info`],
//! [`Mount`] and [`SnapshotError`] types and must not depend on gRPC.
//! Stat and Walk answer from an in-memory copy of the infos that every
//! change brings up to date before it releases the lock (`info_cache.rs`).
//!
//! Every state change touches directories first and commits the DB last;
//! [`Snapshotter::open`] removes directories the DB does not know, so a
//! kill -9 at any point leaves nothing that a restart does not clean up.

#![forbid(unsafe_code)]

mod check;
mod codec;
mod db;
mod diff;
mod error;
mod filter;
mod info_cache;
mod ops;
pub mod remote;
mod scratch;
mod tree_cache;
mod types;

pub use check::{check, keys_by_root, SnapshotReport};
pub use error::{ErrorKind, SnapshotError};
pub use filter::Filter;
pub use ops::Snapshotter;
pub use remote::{FallbackReason, FetchError, FetchedLayer, LayerFetcher, LayerRequest, RemoteOutcome};
pub use scratch::{scratch_plans, scratch_usage, ScratchMechanism, ScratchUsage};
pub use strata_scratch::{FsKind, Plan as ScratchPlan, ScratchPolicy};
pub use types::{Info, Kind, Mount, Usage};

//! LAZY: the last data-only lower of a lazily pulled image
//! (`lowerdir=META::ALIASES::OBJECTS::LAZY`, docs/lazy-pulls.md).
//!
//! A read-only FUSE filesystem, two levels deep like `objects/` (`XX/REST`),
//! that lists the objects an image still misses, by the names its metadata
//! redirects to (SHA-256 digests from a TOC). overlayfs looks a redirect up
//! in OBJECTS and ALIASES first, so objects the store holds never reach
//! FUSE. An open of a missing name asks the caller's [`ObjectFetcher`] to
//! fetch, verify and store the object, once however many opens wait
//! (single flight, each open bounded by a timeout), and answers in
//! passthrough mode with the stored object as backing file: reads go
//! straight to the object's page cache, never through this process.
//!
//! strata opens /dev/fuse and mounts it itself ([`LazyMount::mount`]), so
//! it holds the device fd. This crate owns the FUSE protocol side only: it
//! does not know the store, the registry or TOCs, and has no `unsafe`
//! (the mount goes through `strata-sys`).

#![forbid(unsafe_code)]

mod counters;
mod fetch;
mod flights;
mod fs;
mod journal;
mod mount;
mod table;

pub use counters::{Counts, COUNTERS_XATTR};
pub use fetch::{FetchError, ObjectFetcher};
pub use journal::{create_journal, JournalError, MAX_JOURNAL_BYTES};
pub use mount::{LazyConfig, LazyDevice, LazyError, LazyHandle, LazyMount, SUBTYPE};

//! OCI images into the store: references, content sources (a registry or an
//! OCI layout directory), digest-verified fetch, and the streaming tar import.
//!
//! The flow is one way: source → verified blob stream → decompress → tar
//! entries → file bodies into the store's stager, metadata into a layer tree
//! → merge of layer trees → EROFS image → DB commit. No file is ever created
//! at a path named by an archive.

#![forbid(unsafe_code)]

mod channel;
pub mod convert;
mod decompress;
mod error;
mod layer;
pub mod lazy;
mod manifest;
mod partial;
mod progress;
mod pull;
mod reference;
pub mod source;
pub mod toc;

pub use error::ImportError;
pub use layer::{import_layer, LayerImport, Limits};
pub use manifest::{parse_config, parse_document, Descriptor, Document, ImageConfig, Manifest, MediaKind, Platform};
pub use partial::plan::PlanStats;
pub use partial::{import_layer_from, PartialError, PartialPolicy, PartialPulls};
pub use progress::{BlobReceived, LayerFetch, Progress, Received};
pub use pull::{pull, PullOptions, PullOutcome};
pub use reference::{normalize_name, ImageRef, RegistryRef};
pub use source::{BlobSource, ResolvedImage};

use std::io;

use crate::toc::TocError;
use crate::ImportError;

/// Why an image could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Reading the source (its documents, a layer's digests) or writing to
    /// a registry.
    #[error(transparent)]
    Image(#[from] ImportError),
    #[error("layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
    #[error("layer {layer}: {path:?}: {reason}")]
    Entry {
        layer: String,
        path: String,
        reason: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("layer {layer}: the converted blob does not read back as {format}: {source}")]
    ReadBack {
        layer: String,
        format: &'static str,
        #[source]
        source: Box<TocError>,
    },
    #[error("{0}")]
    Options(String),
    #[error("destination {destination}: {reason}")]
    Destination { destination: String, reason: String },
}

impl ConvertError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ConvertError {
        let what = what.into();
        move |source| ConvertError::Io { what, source }
    }
}

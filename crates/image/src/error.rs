#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{what} {digest}: content hashes to {actual}")]
    DigestMismatch {
        what: &'static str,
        digest: String,
        actual: String,
    },
    #[error("invalid digest {digest:?}: only sha256:<64 hex> is supported")]
    BadDigest { digest: String },
    #[error("blob {digest} is missing from {source_name}")]
    MissingBlob { digest: String, source_name: String },
    #[error("tag {tag:?} is not in {source_name}")]
    MissingTag { tag: String, source_name: String },
    #[error("no manifest for platform {platform} in the image index")]
    NoPlatform { platform: String },
    #[error("unsupported media type {media_type:?}")]
    UnsupportedMediaType { media_type: String },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("layer {layer}: {reason}")]
    Layer { layer: String, reason: String },
    #[error("layer {layer}: {path:?}: {reason}")]
    Entry {
        layer: String,
        path: String,
        reason: String,
    },
    /// A whole read of a layer found its tar and its verified TOC
    /// describing different trees (docs/partial-pulls.md, "Trust").
    #[error("layer {layer}: its tar contradicts its TOC at {path:?}: {detail}; the image is refused (a partial pull would give another tree)")]
    TocContradictsTar {
        layer: String,
        path: String,
        detail: String,
    },
    #[error("layer {layer} decompresses past the limit of {limit} bytes (raise --max-layer-bytes if it is genuine)")]
    TooLarge { layer: String, limit: u64 },
    #[error("layer {layer} has more than {limit} entries")]
    TooManyEntries { layer: String, limit: u64 },
    #[error("layer {layer}: the image has more than {limit} entries (limits.max_entries_per_image)")]
    TooManyImageEntries { layer: String, limit: u64 },
    #[error("blob {digest}: more bytes than the descriptor's size of {expected}")]
    BlobTooLong { digest: String, expected: u64 },
    #[error("blob {digest}: {actual} bytes, descriptor says {expected}")]
    BlobSizeMismatch { digest: String, actual: u64, expected: u64 },
    #[error("{what} {digest}: too large ({size} bytes, over the limit of {limit} for a document)")]
    DocumentTooLarge {
        what: &'static str,
        digest: String,
        size: u64,
        limit: u64,
    },
    #[error("registry refused the credentials for {url} (check registry.auth_file or --creds USER:PASSWORD)")]
    Unauthorized { url: String },
    #[error("registry configuration {path}: {reason}")]
    RegistryConfig { path: std::path::PathBuf, reason: String },
    #[error("registry: {0}")]
    Registry(String),
    /// The source cannot serve byte ranges of a blob (a registry that
    /// ignored `Range` and answered with the whole blob): fetch it whole.
    #[error("{source_name} cannot serve byte ranges: {reason}")]
    RangesUnsupported { source_name: String, reason: String },
    #[error("reading {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    #[error(transparent)]
    Merge(#[from] strata_tree::MergeError),
    #[error(transparent)]
    Erofs(#[from] strata_erofs::ErofsError),
}

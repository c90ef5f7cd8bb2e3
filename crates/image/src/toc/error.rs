use std::io;

use strata_tree::PathError;

use super::{ByteRange, Sha256Digest, TocFormat};

/// Why a TOC could not be read or was refused.
#[derive(Debug, thiserror::Error)]
pub enum TocError {
    #[error("reading {len} bytes at offset {offset} of the layer blob: {source}")]
    Read {
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("the layer blob gave {actual} bytes at offset {offset}, {expected} were asked for")]
    ShortRead { offset: u64, expected: u64, actual: u64 },
    #[error("layer annotation {key} is missing: the {format} TOC cannot be verified without it")]
    MissingAnnotation { format: TocFormat, key: &'static str },
    #[error("the TOC's tarSplitDigest {in_toc} and the tarsplit-checksum annotation {annotated} disagree")]
    TarSplitDigestConflict {
        in_toc: Sha256Digest,
        annotated: Sha256Digest,
    },
    #[error("the TOC's tarSplitDigest {0:?} is not sha256:<64 lowercase hex>")]
    BadTarSplitDigest(String),
    #[error("layer annotation {key}={value:?}: {reason}")]
    BadAnnotation {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("{format} footer: {reason}")]
    BadFooter { format: TocFormat, reason: &'static str },
    #[error("{what} at {range} does not fit in the layer blob of {blob_size} bytes")]
    OutsideBlob {
        what: &'static str,
        range: ByteRange,
        blob_size: u64,
    },
    #[error("{what} of {size} bytes is over the limit of {limit} (TocLimits::max_toc_bytes)")]
    TooLarge { what: &'static str, size: u64, limit: u64 },
    #[error("{what} has digest {actual}, {expected} was expected")]
    DigestMismatch {
        what: &'static str,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("decompressing {what}: {source}")]
    Decompress {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{what} decompresses to {actual} bytes, {announced} were announced")]
    LengthMismatch {
        what: &'static str,
        announced: u64,
        actual: u64,
    },
    #[error("the eStargz TOC stream does not hold stargz.index.json: {reason}")]
    BadTocMember { reason: String },
    #[error("TOC JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("unsupported TOC version {0} (only 1 is known)")]
    UnsupportedVersion(i64),
    #[error("TOC has more than {limit} entries (TocLimits::max_entries)")]
    TooManyEntries { limit: u64 },
    #[error(
        "reading every chunk the TOC lists would decompress {work} bytes (inner offsets included), over the limit of {limit} (TocLimits::max_inflate_bytes)"
    )]
    TooMuchInflating { work: u64, limit: u64 },
    #[error("TOC entry {index} ({name:?}): {problem}")]
    Entry {
        index: usize,
        name: String,
        problem: EntryProblem,
    },
}

/// What is wrong with one TOC entry.
#[derive(Debug, thiserror::Error)]
pub enum EntryProblem {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("name of {len} bytes is over the limit of {limit}")]
    PathTooLong { len: usize, limit: usize },
    #[error("unknown entry type {0:?}")]
    UnknownType(String),
    #[error("unknown chunk type {0:?}")]
    UnknownChunkType(String),
    #[error("the root can only be a directory")]
    RootNotDirectory,
    #[error("the path appears twice (first as entry {first}); zstd:chunked forbids it")]
    Duplicate { first: usize },
    #[error("{field} {value} is out of range")]
    OutOfRange { field: &'static str, value: i64 },
    #[error("regular file of {size} bytes has no digest")]
    MissingDigest { size: u64 },
    #[error("invalid digest {0:?} (only sha256:<64 lowercase hex>)")]
    BadDigest(String),
    #[error("empty file with digest {0}, not the digest of no bytes")]
    EmptyFileDigest(Sha256Digest),
    #[error("its only chunk has digest {chunk}, the file {file}")]
    ChunkDigestDiffers { chunk: Sha256Digest, file: Sha256Digest },
    #[error("regular file of {size} bytes has no data offset")]
    MissingOffset { size: u64 },
    #[error("empty regular file with a data range")]
    EmptyFileWithData,
    #[error("data offset {offset} is not inside the layer's file data (0..{data_end})")]
    OffsetOutsideData { offset: u64, data_end: u64 },
    #[error("data range {range} is empty or reversed")]
    EmptyRange { range: ByteRange },
    #[error("data at {range} is not inside the layer's file data (0..{data_end})")]
    RangeOutsideData { range: ByteRange, data_end: u64 },
    #[error("data at {range} overlaps the data of entry {other} ({other_path:?})")]
    Overlap {
        range: ByteRange,
        other: usize,
        other_path: String,
    },
    #[error("data offset {offset} comes before the previous file's ({previous}); eStargz data is in TOC order")]
    OffsetsOutOfOrder { offset: u64, previous: u64 },
    #[error("chunk entry without a regular file before it")]
    OrphanChunk,
    #[error("chunk names {name:?}, the file before it is {file:?}")]
    ChunkOfOtherFile { name: String, file: String },
    #[error("chunk starts at file offset {found}, the previous one ends at {expected}")]
    ChunkGap { expected: u64, found: u64 },
    #[error("chunks hold {covered} bytes of a {size} byte file")]
    ChunksDoNotAddUp { covered: u64, size: u64 },
    #[error("xattr {name:?}: {reason}")]
    BadXattr { name: String, reason: &'static str },
    #[error("invalid modification time {0:?} (RFC 3339 expected)")]
    BadTime(String),
    #[error("link target: {0}")]
    BadLinkTarget(PathError),
    #[error("{0} has no target")]
    EmptyLinkTarget(&'static str),
    #[error("symlink target has a NUL byte")]
    NulInSymlink,
    #[error("{field} is set on a {kind} entry")]
    UnexpectedField { field: &'static str, kind: &'static str },
}

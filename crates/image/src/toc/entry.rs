//! The validated TOC both formats are read into.

use std::collections::BTreeMap;
use std::fmt;

use super::Sha256Digest;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TocFormat {
    Estargz,
    ZstdChunked,
}

impl fmt::Display for TocFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TocFormat::Estargz => "eStargz",
            TocFormat::ZstdChunked => "zstd:chunked",
        })
    }
}

/// A verified and validated table of contents, entries in the TOC's order
/// (the layer's tar order; later entries take effect over earlier ones, as
/// in the tar).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toc {
    pub format: TocFormat,
    pub entries: Vec<TocEntry>,
    /// The TOC's own digest, as the layer annotation names it (eStargz: of
    /// the JSON; zstd:chunked: of the compressed TOC).
    pub digest: Sha256Digest,
    /// Where the files' compressed data ends and the TOC begins: every
    /// [`ByteRange`] lies below it.
    pub data_end: u64,
}

impl Toc {
    /// The regular files, with their paths.
    pub fn files(&self) -> impl Iterator<Item = (&TocEntry, &FileContent)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File(content) => Some((e, content)),
            _ => None,
        })
    }
}

/// One entry of the layer: what its tar entry would make, without its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocEntry {
    /// Normalised relative path: names joined by `/`, no `.`, `..`, empty
    /// name or leading `/`; the root is `""`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits, setuid, setgid and sticky (no file type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// eStargz only; names the first entry of an owner carries apply to the
    /// later ones with the same id, as the Go reader does.
    pub user_name: Option<String>,
    pub group_name: Option<String>,
    /// Seconds and nanoseconds since the epoch; 0 when the TOC has none.
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Extended attributes, name to (base64-decoded) value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(FileContent),
    /// The target as the archive gives it; never resolved.
    Symlink {
        target: String,
    },
    /// The target is a normalised path like [`TocEntry::path`]; it may name
    /// a file of a lower layer.
    Hardlink {
        target: String,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// A regular file's content: its size and digest, and where its bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    pub size: u64,
    /// SHA-256 of the whole file; for an empty file, of no bytes.
    pub digest: Sha256Digest,
    /// The file's bytes in order, each chunk one compressed stream (or a
    /// part of one); empty for an empty file. Their sizes add up to `size`.
    pub chunks: Vec<Chunk>,
}

/// A run of a file's bytes and the compressed bytes that hold it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where the run starts in the file.
    pub file_offset: u64,
    /// Uncompressed length of the run.
    pub size: u64,
    /// The blob's bytes to decompress: one gzip member (eStargz) or one
    /// or more zstd frames (zstd:chunked).
    pub compressed: ByteRange,
    /// Decompressed bytes to skip before the run starts (eStargz
    /// `innerOffset`, when small files share a gzip member; else 0).
    pub inner_offset: u64,
    /// SHA-256 of the run, where the TOC gives one.
    pub digest: Option<Sha256Digest>,
    /// zstd:chunked says the run is all zero bytes.
    pub zeros: bool,
}

/// Bytes `start..end` of the blob; never empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

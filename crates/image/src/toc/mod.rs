//! Tables of contents (TOCs) of eStargz and zstd:chunked layers, read and
//! verified before anything in them is used.
//!
//! Both formats are ordinary gzip/zstd tar layers whose files are compressed
//! one by one, with an index of every entry (its metadata, the SHA-256 of its
//! content and the compressed byte ranges that hold it) near the blob's end.
//! The layer's annotations in the manifest name the TOC's digest, so the
//! trust chain is manifest digest -> annotation -> TOC -> each file.
//!
//! This module is pure: it reads byte ranges through [`RangeReader`] and
//! returns a validated [`Toc`]. The TOC's digest is checked before its JSON
//! is parsed, every size is checked against [`TocLimits`] before it is
//! allocated, and no input makes it panic. The byte layouts are described in
//! [`estargz`] and [`zstd_chunked`]; they are those of containerd's
//! stargz-snapshotter (`estargz/`) and of containers/storage
//! (`pkg/chunked/`).

mod chunk;
pub mod crosscheck;
mod entry;
mod error;
pub mod estargz;
mod raw;
mod time;
mod validate;
pub mod zstd_chunked;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;

use sha2::{Digest as _, Sha256};

pub use chunk::{decompress_chunk, ChunkDecoder};
pub use entry::{ByteRange, Chunk, EntryKind, FileContent, Toc, TocEntry, TocFormat};
pub use error::{EntryProblem, TocError};

use crate::Limits;

/// Random access to a layer blob: a file, a buffer, or ranged HTTP requests.
pub trait RangeReader {
    /// Returns the `len` bytes at `offset`; fewer only at the blob's end.
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

impl RangeReader for [u8] {
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(self.len());
        let end = usize::try_from(offset.saturating_add(len))
            .unwrap_or(usize::MAX)
            .min(self.len());
        Ok(self[start..end].to_vec())
    }
}

impl RangeReader for Vec<u8> {
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        self.as_slice().read_range(offset, len)
    }
}

impl RangeReader for std::fs::File {
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let mut buf = Vec::new();
        // A short file gives a short answer, as a ranged HTTP read does.
        let mut at = offset;
        let mut chunk = vec![0; len.min(1 << 20)];
        while buf.len() < len {
            let want = (len - buf.len()).min(chunk.len());
            let n = self.read_at(&mut chunk[..want], at)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            at += n as u64;
        }
        Ok(buf)
    }
}

/// What a TOC may cost. Every size announced by a blob is checked against
/// these before memory is set aside for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocLimits {
    /// Bytes of TOC JSON, and of a compressed TOC or tar-split. The default,
    /// 150 MiB, is containers/storage's own bound for the same data.
    pub max_toc_bytes: u64,
    /// Entries in one TOC, chunk entries included.
    pub max_entries: u64,
    /// Path components of an entry.
    pub max_depth: usize,
    /// Bytes in an entry's name and in a link's target.
    pub max_path_bytes: usize,
    /// Bytes decompressed to read every chunk once: an eStargz chunk that
    /// shares its gzip member (`innerOffset`) is reached by decompressing
    /// the member from its start. A whole pull's own bound on a layer's
    /// uncompressed bytes, so a partial or lazy read never inflates more
    /// than a whole pull may.
    pub max_inflate_bytes: u64,
}

impl TocLimits {
    pub const DEFAULT_MAX_TOC_BYTES: u64 = 150 << 20;

    /// The bounds a layer import uses, with the default TOC size.
    pub fn from_layer_limits(limits: &Limits) -> Self {
        TocLimits {
            max_toc_bytes: Self::DEFAULT_MAX_TOC_BYTES,
            max_entries: limits.max_entries,
            max_depth: limits.max_depth,
            max_path_bytes: limits.max_path_bytes,
            max_inflate_bytes: limits.max_layer_bytes,
        }
    }
}

impl Default for TocLimits {
    fn default() -> Self {
        Self::from_layer_limits(&Limits::default())
    }
}

/// A SHA-256 digest, written `sha256:<64 lowercase hex>` as in OCI.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses `sha256:<64 lowercase hex>`; nothing else is accepted.
    pub fn parse(text: &str) -> Option<Self> {
        let hex_part = text.strip_prefix("sha256:")?;
        if hex_part.len() != 64
            || !hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut out = [0; 32];
        hex::decode_to_slice(hex_part, &mut out).ok()?;
        Some(Sha256Digest(out))
    }

    pub fn of(bytes: &[u8]) -> Self {
        Sha256Digest(Sha256::digest(bytes).into())
    }

    /// The digest of no bytes: what an empty regular file holds.
    pub fn empty() -> Self {
        Self::of(&[])
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parses and validates TOC JSON whose digest the caller has already
/// checked (`digest`), for a blob whose file data ends at `data_end`. Both
/// readers end here; it is public so the fuzzer can reach the parser
/// without forging digests.
pub fn parse_json(
    format: TocFormat,
    json: &[u8],
    digest: Sha256Digest,
    data_end: u64,
    limits: &TocLimits,
) -> Result<Toc, TocError> {
    let raw = raw::parse(json, limits.max_entries)?;
    validate::validate(
        &raw,
        validate::Frame {
            format,
            digest,
            data_end,
        },
        limits,
    )
}

/// Reads exactly `len` bytes at `offset`, for a purpose named in errors.
fn read_exact(reader: &(impl RangeReader + ?Sized), offset: u64, len: u64) -> Result<Vec<u8>, TocError> {
    let bytes = reader
        .read_range(offset, len)
        .map_err(|source| TocError::Read { offset, len, source })?;
    if bytes.len() as u64 != len {
        return Err(TocError::ShortRead {
            offset,
            expected: len,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

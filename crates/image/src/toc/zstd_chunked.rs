//! zstd:chunked (containers/storage `pkg/chunked`): a zstd tar in which each
//! regular file's data, or each chunk of it, is its own run of zstd frames.
//! After the data come zstd skippable frames (magic `50 2a 4d 18`, a u32 LE
//! length, then that many bytes) that zstd readers pass over:
//!
//! ```text
//! skippable frame: the TOC JSON, zstd-compressed
//! skippable frame: the tar-split (NDJSON, zstd-compressed)   newer writers only
//! skippable frame: the footer, u64 LE fields
//!   40 bytes (containers/storage <= 1.46): TOC offset, length, uncompressed
//!            length, type (1), magic "GnUlInUx"
//!   56 bytes (1.47 - 1.49): the same 40 bytes, then 16 zero bytes
//!   64 bytes (>= 1.50): TOC offset, length, uncompressed length, type,
//!            tar-split offset, length, uncompressed length, magic "GNUlInUx"
//! ```
//!
//! Offsets point past the skippable frame's 8-byte header. The layer's
//! annotations say the same as the footer and carry the checksums, SHA-256
//! of the *compressed* frames' contents:
//!
//! ```text
//! io.github.containers.zstd-chunked.manifest-position  offset:length:uncompressed:type
//! io.github.containers.zstd-chunked.manifest-checksum  sha256:...
//! io.github.containers.zstd-chunked.tarsplit-position  offset:length:uncompressed
//! io.github.containers.zstd-chunked.tarsplit-checksum  sha256:...  (1.47 on; later in the TOC)
//! ```
//!
//! containers/storage 1.43 and older (Debian 12's podman 4.3 and skopeo 1.9)
//! write the first two under `io.containers.zstd-chunked.*` and no tar-split.
//! Their zstd stream also lacks the tar's end-of-archive blocks, so such a
//! layer's diff_id (of the original tar) does not match its content.

use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::raw;
use super::validate::{validate, Frame};
use super::{read_exact, ByteRange, RangeReader, Sha256Digest, Toc, TocError, TocFormat, TocLimits};

const KEY_PREFIX: &str = "io.github.containers.zstd-chunked.";
const LEGACY_KEY_PREFIX: &str = "io.containers.zstd-chunked.";
pub const MANIFEST_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
pub const MANIFEST_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
pub const TAR_SPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";
pub const TAR_SPLIT_CHECKSUM: &str = "io.github.containers.zstd-chunked.tarsplit-checksum";
pub const LEGACY_MANIFEST_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
pub const LEGACY_MANIFEST_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";

/// The one manifest type there is ("CRFS", eStargz's JSON layout).
const MANIFEST_TYPE_CRFS: u64 = 1;
const SKIPPABLE_FRAME_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const SKIPPABLE_HEADER: u64 = 8;
const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";
const LEGACY_FOOTER_MAGIC: &[u8; 8] = b"GnUlInUx";
/// The largest footer frame, header included.
const MAX_FOOTER_FRAME: u64 = SKIPPABLE_HEADER + 64;

/// A skippable frame's contents: where they start, their length, and how
/// long they are once decompressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePosition {
    pub offset: u64,
    pub length: u64,
    pub uncompressed_length: u64,
}

impl FramePosition {
    fn range(&self, what: &'static str, blob_size: u64) -> Result<ByteRange, TocError> {
        let range = ByteRange {
            start: self.offset,
            end: self.offset.saturating_add(self.length),
        };
        if self.offset.checked_add(self.length).is_none_or(|end| end > blob_size) || self.length == 0 {
            return Err(TocError::OutsideBlob { what, range, blob_size });
        }
        Ok(range)
    }
}

/// What a layer's zstd:chunked annotations say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotations {
    /// SHA-256 of the compressed TOC; the root of trust.
    pub manifest_checksum: Sha256Digest,
    /// Absent: the footer says where the TOC is.
    pub manifest_position: Option<FramePosition>,
    pub tar_split_position: Option<FramePosition>,
    /// The tar-split checksum annotation of containers/storage 1.47 - 1.5x.
    pub tar_split_checksum: Option<Sha256Digest>,
    /// The keys are the old `io.containers.zstd-chunked.*` ones.
    pub legacy_keys: bool,
}

/// A verified TOC and, where the layer has one, its verified tar-split's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZstdChunkedToc {
    pub toc: Toc,
    pub tar_split: Option<TarSplit>,
}

/// Where a tar-split frame is and the digest of its compressed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TarSplit {
    pub position: FramePosition,
    pub digest: Sha256Digest,
}

/// What a footer frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    pub manifest: FramePosition,
    pub manifest_type: u64,
    pub tar_split: Option<FramePosition>,
}

/// Reads a layer's zstd:chunked annotations, current keys first, then the
/// legacy ones. `Ok(None)`: the layer has none.
pub fn annotations(all: &BTreeMap<String, String>) -> Result<Option<Annotations>, TocError> {
    for (prefix, legacy_keys) in [(KEY_PREFIX, false), (LEGACY_KEY_PREFIX, true)] {
        let key = |name: &str| format!("{prefix}{name}");
        let get = |name: &str| all.get(&key(name)).map(|v| (key(name), v.as_str()));
        let position = get("manifest-position");
        let Some((checksum_key, checksum)) = get("manifest-checksum") else {
            if position.is_some() {
                return Err(TocError::MissingAnnotation {
                    format: TocFormat::ZstdChunked,
                    key: if legacy_keys {
                        LEGACY_MANIFEST_CHECKSUM
                    } else {
                        MANIFEST_CHECKSUM
                    },
                });
            }
            continue;
        };
        let manifest_position = position
            .map(|(key, value)| {
                let [offset, length, uncompressed_length, manifest_type] = numbers(&key, value)?;
                if manifest_type != MANIFEST_TYPE_CRFS {
                    return Err(TocError::BadAnnotation {
                        key,
                        value: value.chars().take(100).collect(),
                        reason: "unknown manifest type (only 1 is known)",
                    });
                }
                Ok::<_, TocError>(FramePosition {
                    offset,
                    length,
                    uncompressed_length,
                })
            })
            .transpose()?;
        let tar_split_position = get("tarsplit-position")
            .map(|(key, value)| {
                let [offset, length, uncompressed_length] = numbers(&key, value)?;
                Ok::<_, TocError>(FramePosition {
                    offset,
                    length,
                    uncompressed_length,
                })
            })
            .transpose()?;
        return Ok(Some(Annotations {
            manifest_checksum: digest_annotation(&checksum_key, checksum)?,
            manifest_position,
            tar_split_position,
            tar_split_checksum: get("tarsplit-checksum")
                .map(|(key, value)| digest_annotation(&key, value))
                .transpose()?,
            legacy_keys,
        }));
    }
    Ok(None)
}

fn digest_annotation(key: &str, value: &str) -> Result<Sha256Digest, TocError> {
    Sha256Digest::parse(value).ok_or_else(|| TocError::BadAnnotation {
        key: key.to_owned(),
        value: value.chars().take(100).collect(),
        reason: "not sha256:<64 lowercase hex>",
    })
}

/// `N` colon-separated decimal numbers.
fn numbers<const N: usize>(key: &str, value: &str) -> Result<[u64; N], TocError> {
    let bad = |reason| TocError::BadAnnotation {
        key: key.to_owned(),
        value: value.chars().take(100).collect(),
        reason,
    };
    let mut out = [0; N];
    let mut parts = value.split(':');
    for slot in &mut out {
        let part = parts.next().ok_or(bad("too few fields"))?;
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a field is not a decimal number"));
        }
        *slot = part.parse().map_err(|_| bad("a number is too large"))?;
    }
    if parts.next().is_some() {
        return Err(bad("too many fields"));
    }
    Ok(out)
}

/// Parses the footer frame from the blob's last bytes (72, or fewer for a
/// blob that short), trying the 64-, 56- and 40-byte forms.
pub fn parse_footer(tail: &[u8]) -> Result<Footer, TocError> {
    for size in [64u32, 56, 40] {
        let Some(data) = skippable_frame_at_end(tail, size) else {
            continue;
        };
        let field = |i: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&data[i * 8..i * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        let tar_split = match size {
            64 if &data[56..] == FOOTER_MAGIC => (field(4) > 0).then(|| FramePosition {
                offset: field(4),
                length: field(5),
                uncompressed_length: field(6),
            }),
            56 if &data[32..40] == LEGACY_FOOTER_MAGIC && data[40..].iter().all(|&b| b == 0) => None,
            40 if &data[32..] == LEGACY_FOOTER_MAGIC => None,
            _ => continue,
        };
        return Ok(Footer {
            manifest: FramePosition {
                offset: field(0),
                length: field(1),
                uncompressed_length: field(2),
            },
            manifest_type: field(3),
            tar_split,
        });
    }
    Err(TocError::BadFooter {
        format: TocFormat::ZstdChunked,
        reason: "no zstd:chunked footer frame at the end of the blob",
    })
}

/// The contents of a skippable frame of `size` bytes that ends `tail`.
fn skippable_frame_at_end(tail: &[u8], size: u32) -> Option<&[u8]> {
    let len = usize::try_from(size).ok()?;
    let frame = &tail[tail.len().checked_sub(len + 8)?..];
    let (header, data) = frame.split_at(8);
    (header[..4] == SKIPPABLE_FRAME_MAGIC && header[4..] == size.to_le_bytes()).then_some(data)
}

/// Reads, verifies and validates the TOC of the zstd:chunked blob of
/// `blob_size` bytes that `annotations` describe (from [`annotations`]).
pub fn read_toc(
    blob: &(impl RangeReader + ?Sized),
    blob_size: u64,
    annotations: &Annotations,
    limits: &TocLimits,
) -> Result<ZstdChunkedToc, TocError> {
    let (manifest, footer_tar_split) = match annotations.manifest_position {
        Some(position) => (position, None),
        None => {
            let tail_len = MAX_FOOTER_FRAME.min(blob_size);
            let footer = parse_footer(&read_exact(blob, blob_size - tail_len, tail_len)?)?;
            if footer.manifest_type != MANIFEST_TYPE_CRFS {
                return Err(TocError::BadFooter {
                    format: TocFormat::ZstdChunked,
                    reason: "unknown manifest type (only 1 is known)",
                });
            }
            (footer.manifest, footer.tar_split)
        }
    };
    let json = read_frame(
        blob,
        blob_size,
        "zstd:chunked TOC",
        &manifest,
        &annotations.manifest_checksum,
        limits,
    )?;
    let raw = raw::parse(&json, limits.max_entries)?;
    drop(json);
    let frame = Frame {
        format: TocFormat::ZstdChunked,
        digest: annotations.manifest_checksum,
        data_end: manifest.offset.saturating_sub(SKIPPABLE_HEADER),
    };
    let toc = validate(&raw, frame, limits)?;
    let toc_digest = match raw.tar_split_digest.as_deref().filter(|d| !d.is_empty()) {
        Some(text) => Some(
            Sha256Digest::parse(text).ok_or_else(|| TocError::BadTarSplitDigest(text.chars().take(100).collect()))?,
        ),
        None => None,
    };
    let digest = match (toc_digest, annotations.tar_split_checksum) {
        (Some(in_toc), Some(annotated)) if in_toc != annotated => {
            return Err(TocError::TarSplitDigestConflict { in_toc, annotated })
        }
        (in_toc, annotated) => in_toc.or(annotated),
    };
    let position = annotations.tar_split_position.or(footer_tar_split);
    let tar_split = match (digest, position) {
        (Some(digest), Some(position)) => Some(TarSplit { position, digest }),
        (Some(_), None) => {
            return Err(TocError::MissingAnnotation {
                format: TocFormat::ZstdChunked,
                key: TAR_SPLIT_POSITION,
            })
        }
        // A tar-split without a digest cannot be trusted, so it is not used.
        (None, _) => None,
    };
    Ok(ZstdChunkedToc { toc, tar_split })
}

/// Reads, verifies and decompresses the tar-split frame.
pub fn read_tar_split(
    blob: &(impl RangeReader + ?Sized),
    blob_size: u64,
    tar_split: &TarSplit,
    limits: &TocLimits,
) -> Result<Vec<u8>, TocError> {
    read_frame(
        blob,
        blob_size,
        "zstd:chunked tar-split",
        &tar_split.position,
        &tar_split.digest,
        limits,
    )
}

/// A skippable frame's contents: bounded, checked against `checksum`, and
/// only then decompressed (to exactly the announced length).
fn read_frame(
    blob: &(impl RangeReader + ?Sized),
    blob_size: u64,
    what: &'static str,
    position: &FramePosition,
    checksum: &Sha256Digest,
    limits: &TocLimits,
) -> Result<Vec<u8>, TocError> {
    let sizes = [
        (position.length, "compressed zstd:chunked frame"),
        (position.uncompressed_length, "decompressed zstd:chunked frame"),
    ];
    if let Some(&(size, what)) = sizes.iter().find(|(size, _)| *size > limits.max_toc_bytes) {
        return Err(TocError::TooLarge {
            what,
            size,
            limit: limits.max_toc_bytes,
        });
    }
    let range = position.range(what, blob_size)?;
    let compressed = read_exact(blob, range.start, range.len())?;
    let actual = Sha256Digest(Sha256::digest(&compressed).into());
    if actual != *checksum {
        return Err(TocError::DigestMismatch {
            what,
            expected: *checksum,
            actual,
        });
    }
    let decompress = |source| TocError::Decompress { what, source };
    let decoder = zstd::stream::read::Decoder::with_buffer(&compressed[..]).map_err(decompress)?;
    let mut out = Vec::new();
    decoder
        .take(position.uncompressed_length.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(decompress)?;
    if out.len() as u64 != position.uncompressed_length {
        return Err(TocError::LengthMismatch {
            what,
            announced: position.uncompressed_length,
            actual: out.len() as u64,
        });
    }
    Ok(out)
}

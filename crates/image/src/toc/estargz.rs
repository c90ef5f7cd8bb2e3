//! eStargz (containerd's stargz-snapshotter): a gzip tar in which each
//! regular file's data, or each chunk of it, begins a new gzip member
//! (small files may share one, told apart by `innerOffset`). After the
//! last file comes one gzip member holding a tar of the single file
//! `stargz.index.json`, the TOC, and then the footer:
//!
//! ```text
//! eStargz footer, 51 bytes: an empty gzip member
//!   1f 8b 08 04 <mtime 4> <xfl 1> <os 1>     gzip header, FLG = FEXTRA
//!   1a 00                                    XLEN = 26
//!   'S' 'G' 16 00                            subfield SG, 22 bytes
//!   "%016x" of the TOC member's offset, "STARGZ"
//!   01 00 00 ff ff                           empty stored block
//!   <crc32 4> <isize 4>                      both 0
//! legacy stargz footer, 47 bytes: the same with XLEN = 22 and the extra
//!   field "%016xSTARGZ" without a subfield header
//! ```
//!
//! The layer annotation `containerd.io/snapshot/stargz/toc.digest` is the
//! SHA-256 of the TOC JSON; it is checked before the JSON is parsed.

use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::{read_exact, ByteRange, RangeReader, Sha256Digest, Toc, TocError, TocFormat, TocLimits};

pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// The tar entry holding the TOC; it and the landmark files below are part
/// of the layer's tar like any other entry.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
pub const FOOTER_SIZE: u64 = 51;
pub const LEGACY_FOOTER_SIZE: u64 = 47;

const TAR_BLOCK: usize = 512;

/// What the footer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footer {
    /// Where the gzip member holding the TOC starts.
    pub toc_offset: u64,
    /// 51, or 47 for a legacy stargz footer.
    pub size: u64,
}

/// The TOC digest a layer's annotations give.
pub fn toc_digest(annotations: &BTreeMap<String, String>) -> Result<Sha256Digest, TocError> {
    let value = annotations
        .get(TOC_DIGEST_ANNOTATION)
        .ok_or(TocError::MissingAnnotation {
            format: TocFormat::Estargz,
            key: TOC_DIGEST_ANNOTATION,
        })?;
    Sha256Digest::parse(value).ok_or_else(|| TocError::BadAnnotation {
        key: TOC_DIGEST_ANNOTATION.to_owned(),
        value: value.chars().take(100).collect(),
        reason: "not sha256:<64 lowercase hex>",
    })
}

/// Reads, verifies and validates the TOC of the eStargz blob of `blob_size`
/// bytes, whose JSON must hash to `expected` (from [`toc_digest`]).
pub fn read_toc(
    blob: &(impl RangeReader + ?Sized),
    blob_size: u64,
    expected: &Sha256Digest,
    limits: &TocLimits,
) -> Result<Toc, TocError> {
    let tail_len = FOOTER_SIZE.min(blob_size);
    let tail = read_exact(blob, blob_size - tail_len, tail_len)?;
    let footer = parse_footer(&tail)?;
    let json = read_toc_json(blob, blob_size, footer, expected, limits)?;
    super::parse_json(TocFormat::Estargz, &json, *expected, footer.toc_offset, limits)
}

/// The TOC of a blob read whole: `json` is the body of the tar entry
/// `stargz.index.json` as the stream held it, `tail` the blob's last bytes
/// (at least [`FOOTER_SIZE`] of them). The same checks as [`read_toc`]: the
/// JSON must hash to `expected` before it is parsed.
pub fn toc_from_stream(json: &[u8], tail: &[u8], expected: &Sha256Digest, limits: &TocLimits) -> Result<Toc, TocError> {
    let footer = parse_footer(tail)?;
    let actual = Sha256Digest::of(json);
    if actual != *expected {
        return Err(TocError::DigestMismatch {
            what: "eStargz TOC JSON",
            expected: *expected,
            actual,
        });
    }
    super::parse_json(TocFormat::Estargz, json, *expected, footer.toc_offset, limits)
}

/// Parses the footer from the blob's last bytes (51, or fewer for a blob
/// that short): the eStargz footer, else the legacy stargz one.
pub fn parse_footer(tail: &[u8]) -> Result<Footer, TocError> {
    let bad = |reason| TocError::BadFooter {
        format: TocFormat::Estargz,
        reason,
    };
    let mut last_error = bad("the blob is shorter than a footer");
    for (size, subfield) in [(FOOTER_SIZE, true), (LEGACY_FOOTER_SIZE, false)] {
        let Some(start) = usize::try_from(size).ok().and_then(|size| tail.len().checked_sub(size)) else {
            continue;
        };
        match footer_offset(&tail[start..], subfield) {
            Ok(toc_offset) => return Ok(Footer { toc_offset, size }),
            Err(reason) => last_error = bad(reason),
        }
    }
    Err(last_error)
}

/// The TOC offset an (empty) gzip member's extra field holds.
fn footer_offset(member: &[u8], subfield: bool) -> Result<u64, &'static str> {
    let mut decoder = flate2::bufread::GzDecoder::new(member);
    let mut body = Vec::new();
    (&mut decoder)
        .take(1)
        .read_to_end(&mut body)
        .map_err(|_| "not a gzip member")?;
    if !body.is_empty() {
        return Err("the footer's gzip member is not empty");
    }
    let extra = decoder.header().and_then(|h| h.extra()).ok_or("no gzip extra field")?;
    let field = if subfield {
        match extra {
            [b'S', b'G', 22, 0, field @ ..] if field.len() == 22 => field,
            _ => return Err("the gzip extra field is not one SG subfield of 22 bytes"),
        }
    } else {
        extra
    };
    let (hex_digits, magic) = field.split_at(field.len().min(16));
    if magic != b"STARGZ" {
        return Err("no STARGZ magic in the gzip extra field");
    }
    if !hex_digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("the TOC offset is not 16 hex digits");
    }
    let text = std::str::from_utf8(hex_digits).map_err(|_| "the TOC offset is not 16 hex digits")?;
    u64::from_str_radix(text, 16).map_err(|_| "the TOC offset is not 16 hex digits")
}

/// Reads the TOC member, checks the JSON's digest, returns the JSON.
fn read_toc_json(
    blob: &(impl RangeReader + ?Sized),
    blob_size: u64,
    footer: Footer,
    expected: &Sha256Digest,
    limits: &TocLimits,
) -> Result<Vec<u8>, TocError> {
    let member = ByteRange {
        start: footer.toc_offset,
        end: blob_size - footer.size,
    };
    if member.start >= member.end {
        return Err(TocError::OutsideBlob {
            what: "the TOC member",
            range: member,
            blob_size,
        });
    }
    if member.len() > limits.max_toc_bytes {
        return Err(TocError::TooLarge {
            what: "compressed TOC",
            size: member.len(),
            limit: limits.max_toc_bytes,
        });
    }
    let compressed = read_exact(blob, member.start, member.len())?;
    let mut tar = flate2::bufread::GzDecoder::new(&compressed[..]);
    let decompress = |source| TocError::Decompress {
        what: "the TOC member",
        source,
    };
    let mut header = [0u8; TAR_BLOCK];
    tar.read_exact(&mut header).map_err(decompress)?;
    let size = toc_entry_size(&header)?;
    if size > limits.max_toc_bytes {
        return Err(TocError::TooLarge {
            what: "TOC JSON",
            size,
            limit: limits.max_toc_bytes,
        });
    }
    let mut json = Vec::new();
    tar.take(size).read_to_end(&mut json).map_err(decompress)?;
    if json.len() as u64 != size {
        return Err(TocError::LengthMismatch {
            what: "stargz.index.json",
            announced: size,
            actual: json.len() as u64,
        });
    }
    let actual = Sha256Digest(Sha256::digest(&json).into());
    if actual != *expected {
        return Err(TocError::DigestMismatch {
            what: "eStargz TOC JSON",
            expected: *expected,
            actual,
        });
    }
    Ok(json)
}

/// The size of `stargz.index.json` from its tar header, which must be a
/// plain regular-file header with a valid checksum.
fn toc_entry_size(header: &[u8; TAR_BLOCK]) -> Result<u64, TocError> {
    let bad = |reason: &str| TocError::BadTocMember {
        reason: reason.to_owned(),
    };
    let field = |range: std::ops::Range<usize>| {
        let bytes = &header[range];
        &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
    };
    let stored_sum = octal(field(148..156)).ok_or_else(|| bad("unreadable header checksum"))?;
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum != stored_sum {
        return Err(bad("tar header checksum mismatch"));
    }
    let ustar = &header[257..263] == b"ustar\0" || &header[257..263] == b"ustar ";
    let prefix = if ustar && &header[257..263] == b"ustar\0" {
        field(345..500)
    } else {
        &[]
    };
    let name = field(0..100);
    if !prefix.is_empty() || name != TOC_TAR_NAME.as_bytes() {
        let shown = String::from_utf8_lossy(name);
        return Err(bad(&format!("its first tar entry is {shown:?}")));
    }
    if !matches!(header[156], b'0' | 0) {
        return Err(bad(&format!(
            "its tar entry has type {:?}, not a regular file",
            char::from(header[156])
        )));
    }
    octal(field(124..136)).ok_or_else(|| bad("unreadable size in its tar header"))
}

/// An octal tar number field, with optional spaces around it.
fn octal(field: &[u8]) -> Option<u64> {
    let digits = field.trim_ascii();
    if digits.is_empty() || digits.len() > 21 || !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| (n << 3) | u64::from(d - b'0')))
}

//! Byte ranges of a blob, as every source serves them: the checks a
//! request must pass before anything is read, and [`BlobRanges`], which
//! lets the TOC readers fetch through any [`BlobSource`].

use std::io;
use std::ops::Range;

use super::BlobSource;
use crate::toc::RangeReader;
use crate::{Descriptor, ImportError};

/// Checks that `ranges` are sorted, non-empty, non-overlapping and within
/// `desc.size`; returns how many bytes they hold together.
pub(crate) fn check_ranges(desc: &Descriptor, ranges: &[Range<u64>]) -> Result<u64, ImportError> {
    let bad = |reason: String| ImportError::Malformed {
        what: "byte ranges",
        reason: format!("blob {}: {reason}", desc.digest),
    };
    let mut total = 0u64;
    let mut previous_end = 0u64;
    for (i, range) in ranges.iter().enumerate() {
        if range.start >= range.end {
            return Err(bad(format!("range {i} ({}..{}) is empty", range.start, range.end)));
        }
        if range.end > desc.size {
            return Err(bad(format!(
                "range {i} ({}..{}) ends past the blob's {} bytes",
                range.start, range.end, desc.size
            )));
        }
        if i > 0 && range.start < previous_end {
            return Err(bad(format!(
                "range {i} ({}..{}) starts before the previous one ends ({previous_end})",
                range.start, range.end
            )));
        }
        previous_end = range.end;
        total += range.end - range.start;
    }
    Ok(total)
}

/// One blob of a source, read by range: what the TOC readers take (its
/// reads are counted as the layer's metadata).
/// Reads are clamped to the blob's size, so a read past its end is short,
/// as [`RangeReader`] asks. A source's error is kept inside the
/// `io::Error` (find it with `get_ref()` and `downcast_ref::<ImportError>()`),
/// so a caller can tell [`ImportError::RangesUnsupported`] apart.
pub struct BlobRanges<'a> {
    pub source: &'a dyn BlobSource,
    pub desc: &'a Descriptor,
}

impl RangeReader for BlobRanges<'_> {
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len).min(self.desc.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let range = offset..end;
        let parts = self
            .source
            .read_metadata_ranges(self.desc, std::slice::from_ref(&range))
            .map_err(io::Error::other)?;
        let count = parts.len();
        match <[Vec<u8>; 1]>::try_from(parts) {
            Ok([bytes]) if bytes.len() as u64 == end - offset => Ok(bytes),
            _ => Err(io::Error::other(format!(
                "blob {}: the source answered range {offset}..{end} wrongly ({count} parts)",
                self.desc.digest
            ))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn desc(size: u64) -> Descriptor {
        Descriptor {
            media_type: "application/octet-stream".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size,
            platform: None,
            annotations: Default::default(),
        }
    }

    #[test]
    fn ranges_are_checked() {
        let d = desc(100);
        assert_eq!(check_ranges(&d, &[]).unwrap(), 0);
        assert_eq!(check_ranges(&d, &[0..10, 10..20, 90..100]).unwrap(), 30);
        for (ranges, text) in [
            (vec![5..5], "is empty"),
            (vec![Range { start: 7, end: 3 }], "is empty"),
            (vec![90..101], "ends past the blob's 100 bytes"),
            (vec![10..20, 15..30], "starts before the previous one ends"),
            (vec![50..60, 0..10], "starts before the previous one ends"),
        ] {
            let e = check_ranges(&d, &ranges).unwrap_err();
            assert!(e.to_string().contains(text), "{ranges:?}: {e}");
        }
    }
}

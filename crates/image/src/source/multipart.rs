//! Answers to ranged HTTP requests, parsed without trusting them:
//! `Content-Range` values and `multipart/byteranges` bodies (RFC 9110
//! §14.4, §14.6). Pure: bytes in, the asked ranges' bytes out.
//!
//! A server may send the parts of a multipart answer in any order and may
//! coalesce ranges into one part, so the parts are matched to the asked
//! ranges by their `Content-Range`: every asked range must lie inside
//! exactly one part, parts must not overlap, and a part that holds no
//! asked range is refused. Each part's length comes from its
//! `Content-Range`, so the boundary is never searched for inside data.

use std::ops::Range;

/// Bytes of headers allowed in one part (a real part has about 100).
pub const MAX_PART_HEADERS: usize = 1024;
/// Bytes allowed before the first boundary.
pub const MAX_PREAMBLE: usize = 1024;
/// RFC 2046 §5.1.1: a boundary has 1 to 70 characters.
const MAX_BOUNDARY: usize = 70;

/// A part of an answer: the range it holds and its bytes.
pub(crate) type Part<'a> = (Range<u64>, &'a [u8]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MultipartError {
    #[error("Content-Type {0:?} is not multipart/byteranges with a boundary")]
    NoBoundary(String),
    #[error("invalid Content-Range {0:?}")]
    BadContentRange(String),
    #[error("Content-Range {value:?} is for a blob of {total} bytes, not {size}")]
    WrongTotal { value: String, total: u64, size: u64 },
    #[error("byte {at} of the body: {reason}")]
    Malformed { at: usize, reason: &'static str },
    #[error("a part's headers pass {MAX_PART_HEADERS} bytes")]
    HeadersTooLong,
    #[error("a part has no Content-Range, or several")]
    PartWithoutRange,
    #[error("more parts than the {asked} ranges asked")]
    TooManyParts { asked: usize },
    #[error("parts {0:?} and {1:?} overlap")]
    Overlap(Range<u64>, Range<u64>),
    #[error("part {0:?} holds none of the ranges asked")]
    UnaskedPart(Range<u64>),
    #[error("no part holds the asked range {0:?}")]
    Missing(Range<u64>),
}

/// The boundary of a `multipart/byteranges` Content-Type.
pub fn boundary(content_type: &str) -> Result<&str, MultipartError> {
    let none = || MultipartError::NoBoundary(content_type.chars().take(200).collect());
    let mut params = content_type.split(';');
    let media_type = params.next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("multipart/byteranges") {
        return Err(none());
    }
    let value = params
        .filter_map(|p| p.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim())
        .ok_or_else(none)?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').ok_or_else(none)?,
        None => value,
    };
    let printable = value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if value.is_empty() || value.len() > MAX_BOUNDARY || !printable {
        return Err(none());
    }
    Ok(value)
}

/// A `Content-Range: bytes FIRST-LAST/TOTAL` value as the byte range it
/// names, checked against the blob's `size` (TOTAL may be `*`).
pub fn content_range(value: &str, size: u64) -> Result<Range<u64>, MultipartError> {
    let bad = || MultipartError::BadContentRange(value.chars().take(200).collect());
    let rest = value.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, total) = rest.split_once('/').ok_or_else(bad)?;
    let (first, last) = span.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| -> Result<u64, MultipartError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse().map_err(|_| bad())
    };
    let (first, last) = (number(first)?, number(last)?);
    if total.trim() != "*" {
        let total = number(total)?;
        if total != size {
            return Err(MultipartError::WrongTotal {
                value: value.chars().take(200).collect(),
                total,
                size,
            });
        }
    }
    let end = last.checked_add(1).ok_or_else(bad)?;
    if first > last || end > size {
        return Err(bad());
    }
    Ok(first..end)
}

/// The bytes of each `asked` range (sorted, non-overlapping), cut out of a
/// `multipart/byteranges` `body` for a blob of `size` bytes.
pub fn split(body: &[u8], boundary: &str, asked: &[Range<u64>], size: u64) -> Result<Vec<Vec<u8>>, MultipartError> {
    let parts = parse_parts(body, boundary, asked.len(), size)?;
    match_parts(parts, asked)
}

/// Cuts out the bytes of `asked` from `parts` (each a range and its bytes).
pub(crate) fn match_parts(mut parts: Vec<Part<'_>>, asked: &[Range<u64>]) -> Result<Vec<Vec<u8>>, MultipartError> {
    parts.sort_by_key(|(range, _)| range.start);
    for pair in parts.windows(2) {
        if pair[1].0.start < pair[0].0.end {
            return Err(MultipartError::Overlap(pair[0].0.clone(), pair[1].0.clone()));
        }
    }
    let mut used = vec![false; parts.len()];
    let mut out = Vec::with_capacity(asked.len());
    for want in asked {
        // The last part starting at or before the asked range.
        let i = parts.partition_point(|(range, _)| range.start <= want.start);
        let Some(i) = i.checked_sub(1).filter(|&i| want.end <= parts[i].0.end) else {
            return Err(MultipartError::Missing(want.clone()));
        };
        let (range, bytes) = &parts[i];
        let (from, to) = (want.start - range.start, want.end - range.start);
        // The part's length was checked against its range when it was read.
        let (from, to) = (usize::try_from(from), usize::try_from(to));
        let (Ok(from), Ok(to)) = (from, to) else {
            return Err(MultipartError::Missing(want.clone()));
        };
        out.push(bytes[from..to].to_vec());
        used[i] = true;
    }
    if let Some(i) = used.iter().position(|u| !u) {
        return Err(MultipartError::UnaskedPart(parts[i].0.clone()));
    }
    Ok(out)
}

/// A cursor over the body.
struct Cursor<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn malformed(&self, reason: &'static str) -> MultipartError {
        MultipartError::Malformed { at: self.at, reason }
    }

    fn eat(&mut self, prefix: &[u8]) -> bool {
        let found = self.body[self.at..].starts_with(prefix);
        if found {
            self.at += prefix.len();
        }
        found
    }

    /// A line break: CRLF, or a bare LF as lenient parsers accept.
    fn newline(&mut self) -> bool {
        self.eat(b"\r\n") || self.eat(b"\n")
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(len).filter(|&end| end <= self.body.len())?;
        let bytes = &self.body[self.at..end];
        self.at = end;
        Some(bytes)
    }

    /// A header line, without its line break; `None` at the body's end.
    fn line(&mut self, budget: &mut usize) -> Result<&'a [u8], MultipartError> {
        let rest = &self.body[self.at..];
        let window = &rest[..rest.len().min(*budget + 1)];
        let Some(len) = window.iter().position(|&b| b == b'\n') else {
            return Err(if window.len() > *budget {
                MultipartError::HeadersTooLong
            } else {
                self.malformed("the body ends inside a part's headers")
            });
        };
        // The line and its LF must fit what is left of the budget.
        *budget = budget.checked_sub(len + 1).ok_or(MultipartError::HeadersTooLong)?;
        let line = &rest[..len];
        self.at += len + 1;
        Ok(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// The parts of `body`, in the order sent, each with its range.
fn parse_parts<'a>(body: &'a [u8], boundary: &str, asked: usize, size: u64) -> Result<Vec<Part<'a>>, MultipartError> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut cursor = Cursor { body, at: 0 };
    // Skip a short preamble: the first delimiter starts the body or a line.
    let head = &body[..body.len().min(MAX_PREAMBLE + delimiter.len())];
    cursor.at = head
        .windows(delimiter.len())
        .enumerate()
        .find(|&(i, w)| w == delimiter && (i == 0 || body[i - 1] == b'\n'))
        .map(|(i, _)| i)
        .ok_or_else(|| cursor.malformed("no boundary at the start of the body"))?;
    let mut parts = Vec::new();
    loop {
        if !cursor.eat(delimiter) {
            return Err(cursor.malformed("expected a boundary"));
        }
        if cursor.eat(b"--") {
            // The close delimiter; what follows is an epilogue.
            break;
        }
        while cursor.eat(b" ") || cursor.eat(b"\t") {}
        if !cursor.newline() {
            return Err(cursor.malformed("expected a line break after the boundary"));
        }
        if parts.len() == asked {
            return Err(MultipartError::TooManyParts { asked });
        }
        let range = part_headers(&mut cursor, size)?;
        let len = usize::try_from(range.end - range.start).map_err(|_| cursor.malformed("a part too large"))?;
        let bytes = cursor
            .take(len)
            .ok_or_else(|| cursor.malformed("the body ends inside a part"))?;
        parts.push((range, bytes));
        if !cursor.newline() {
            return Err(cursor.malformed("a part is longer than its Content-Range"));
        }
    }
    if parts.is_empty() {
        return Err(cursor.malformed("no parts"));
    }
    Ok(parts)
}

/// A part's headers up to the empty line; the range its one Content-Range names.
fn part_headers(cursor: &mut Cursor<'_>, size: u64) -> Result<Range<u64>, MultipartError> {
    let mut budget = MAX_PART_HEADERS;
    let mut range = None;
    loop {
        let line = cursor.line(&mut budget)?;
        if line.is_empty() {
            return range.ok_or(MultipartError::PartWithoutRange);
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(cursor.malformed("a header line without a colon"));
        };
        if !line[..colon].eq_ignore_ascii_case(b"content-range") {
            continue;
        }
        if range.is_some() {
            return Err(MultipartError::PartWithoutRange);
        }
        let value = std::str::from_utf8(&line[colon + 1..])
            .map_err(|_| MultipartError::BadContentRange(String::from_utf8_lossy(&line[colon + 1..]).into()))?;
        range = Some(content_range(value, size)?);
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
#[path = "multipart_tests.rs"]
mod tests;

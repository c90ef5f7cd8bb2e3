//! Byte ranges of a blob from a registry: up to
//! [`MAX_RANGES_PER_REQUEST`] ranges per request (`Range: bytes=a-b,c-d`),
//! up to [`PARALLEL_REQUESTS`] requests at once, through the same hosts,
//! auth and redirects as a whole-blob GET.
//!
//! What a host may answer, and what is done:
//! - 206 with one `Content-Range`: it must hold the asked ranges (exactly
//!   the one asked, or several coalesced into one span no larger than
//!   asked); otherwise a multi-range request is retried range by range.
//! - 206 `multipart/byteranges`: parsed by [`multipart`], which matches
//!   the parts to the asked ranges by their `Content-Range`.
//! - 200 (the whole blob): the host ignored `Range`. For several ranges,
//!   they are asked for again one per request; for one range it is
//!   [`ImportError::RangesUnsupported`], and the caller pulls the blob
//!   whole. The body is not read: dropping the answer closes the
//!   connection.
//! - 416 or 400 to several ranges: asked for again one per request. 416
//!   to one range: the blob is shorter than its descriptor says.
//!
//! Once a host refuses several ranges in one request, the source asks for
//! one range per request from then on. No body is read past the bytes
//! asked for, plus a small allowance for the multipart framing. The bytes
//! are not verified here: only the caller knows their digests.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use reqwest::header::{HeaderName, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Response, StatusCode};
use tokio::task::JoinSet;

use super::{http, Inner, Want};
use crate::progress::BlobRead;
use crate::source::multipart::{self, MultipartError, MAX_PART_HEADERS, MAX_PREAMBLE};
use crate::ImportError;

/// Ranges asked for in one request.
pub(super) const MAX_RANGES_PER_REQUEST: usize = 16;
/// Bytes of one `Range` header; servers refuse headers of a few KiB.
const MAX_RANGE_HEADER: usize = 1024;
/// Requests in flight for one call.
pub(super) const PARALLEL_REQUESTS: usize = 4;
/// Bytes a multipart answer may hold per part besides its data: the
/// boundary line and the part's headers.
const PART_OVERHEAD: u64 = MAX_PART_HEADERS as u64 + 128;
/// Bytes a multipart answer may hold besides its parts: the preamble, the
/// close delimiter and an epilogue.
const BODY_OVERHEAD: u64 = 2 * MAX_PREAMBLE as u64;

/// The blob whose ranges are read.
pub(super) struct Blob {
    pub digest: String,
    pub size: u64,
    /// What the bytes are for, as the source's [`Received`](crate::progress::Received) counts them.
    pub read: BlobRead,
}

/// How a host answered one request.
enum Answer {
    /// The bytes of each range asked, in order.
    Bytes(Vec<Vec<u8>>),
    /// The host would not serve these ranges in one request; why.
    Refused(String),
}

/// The bytes of each of `ranges` (checked: sorted, non-empty, disjoint,
/// within the blob), in order.
pub(super) async fn read(inner: Arc<Inner>, blob: Blob, ranges: Vec<Range<u64>>) -> Result<Vec<Vec<u8>>, ImportError> {
    let blob = Arc::new(blob);
    let ranges: Arc<[Range<u64>]> = ranges.into();
    let mut out: Vec<Option<Vec<u8>>> = vec![None; ranges.len()];
    // The first range not yet asked for, and ranges to ask for again one
    // by one (the last is asked first).
    let mut next = 0;
    let mut retry: Vec<usize> = Vec::new();
    // Dropped on an early return, which aborts the requests in flight.
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < PARALLEL_REQUESTS {
            let batch = if let Some(i) = retry.pop() {
                i..i + 1
            } else if next < ranges.len() {
                let n = match inner.single_ranges.load(Ordering::Relaxed) {
                    true => 1,
                    false => batch_len(&ranges[next..], MAX_RANGES_PER_REQUEST, MAX_RANGE_HEADER),
                };
                next += n;
                next - n..next
            } else {
                break;
            };
            let (inner, blob, ranges) = (inner.clone(), blob.clone(), ranges.clone());
            tasks.spawn(async move {
                let answer = fetch(&inner, &blob, &ranges[batch.clone()]).await;
                (batch, answer)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let (batch, answer) = joined.map_err(|e| ImportError::Registry(format!("a range request failed: {e}")))?;
        match answer? {
            Answer::Bytes(parts) => {
                for (i, bytes) in batch.zip(parts) {
                    out[i] = Some(bytes);
                }
            }
            Answer::Refused(why) => {
                if !inner.single_ranges.swap(true, Ordering::Relaxed) {
                    tracing::info!("{why}; asking {} for one range per request from now on", inner.repo());
                }
                retry.extend(batch.rev());
            }
        }
    }
    out.into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            bytes.ok_or_else(|| ImportError::Registry(format!("range {i} of {} was not fetched", blob.digest)))
        })
        .collect()
}

/// How many of `ranges`, from the first, go in one request: at most
/// `max_ranges`, in a header of at most `max_header` bytes, at least one.
fn batch_len(ranges: &[Range<u64>], max_ranges: usize, max_header: usize) -> usize {
    let mut header = "bytes=".len() - 1;
    let mut n = 0;
    for range in ranges.iter().take(max_ranges) {
        // The range and the comma before it.
        let len = range_spec(range).len() + 1;
        if n > 0 && header + len > max_header {
            break;
        }
        header += len;
        n += 1;
    }
    n.max(1)
}

/// `first-last` of a range, both inclusive as HTTP counts them.
fn range_spec(range: &Range<u64>) -> String {
    format!("{}-{}", range.start, range.end - 1)
}

/// The `Range` header asking for `ranges`.
fn range_header(ranges: &[Range<u64>]) -> String {
    let specs: Vec<String> = ranges.iter().map(range_spec).collect();
    format!("bytes={}", specs.join(","))
}

/// The most bytes of body an answer to `ranges` may have.
fn body_limit(ranges: &[Range<u64>]) -> u64 {
    let data: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    match ranges.len() {
        1 => data,
        n => data + n as u64 * PART_OVERHEAD + BODY_OVERHEAD,
    }
}

fn header_text(response: &Response, name: HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// One request for `ranges`.
async fn fetch(inner: &Inner, blob: &Blob, ranges: &[Range<u64>]) -> Result<Answer, ImportError> {
    let header = range_header(ranges);
    let multi = ranges.len() > 1;
    let refusals: &[StatusCode] = match multi {
        true => &[StatusCode::RANGE_NOT_SATISFIABLE, StatusCode::BAD_REQUEST],
        false => &[StatusCode::RANGE_NOT_SATISFIABLE],
    };
    let headers = [(RANGE, header.as_str()), (ACCEPT_ENCODING, "identity")];
    let (response, url) = inner.get_with(Want::Blob(&blob.digest), &headers, refusals).await?;
    let status = response.status();
    let shown = shorten(&header);
    let err = |what: String| ImportError::Registry(format!("{url}: {what}"));
    // An answer returned early is dropped unread, which closes its connection.
    match status {
        StatusCode::PARTIAL_CONTENT => {}
        StatusCode::OK if multi => {
            return Ok(Answer::Refused(format!(
                "{url} answered {} ranges with 200 and the whole blob",
                ranges.len()
            )))
        }
        StatusCode::OK => {
            return Err(ImportError::RangesUnsupported {
                source_name: inner.repo(),
                reason: format!("{url} ignored the Range header and answered 200 with the whole blob"),
            })
        }
        _ if multi => {
            return Ok(Answer::Refused(format!(
                "{url} answered {} ranges with {status}",
                ranges.len()
            )))
        }
        StatusCode::RANGE_NOT_SATISFIABLE => return Err(unsatisfiable(&response, blob, &url, &shown)),
        _ => return Err(err(format!("unexpected {status} to Range: {shown}"))),
    }
    if let Some(encoding) =
        header_text(&response, CONTENT_ENCODING).filter(|e| !e.trim().eq_ignore_ascii_case("identity"))
    {
        return Err(err(format!("the blob's bytes came with Content-Encoding {encoding:?}")));
    }
    let limit = body_limit(ranges);
    let bad = |e: MultipartError| err(format!("answer to Range: {shown}: {e}"));
    let content_type = header_text(&response, CONTENT_TYPE).unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("multipart/byteranges") {
        let boundary = multipart::boundary(&content_type).map_err(bad)?;
        let body = read_body(inner, blob, response, limit, &url).await?;
        return multipart::split(&body, boundary, ranges, blob.size)
            .map(Answer::Bytes)
            .map_err(bad);
    }
    let Some(value) = header_text(&response, CONTENT_RANGE) else {
        return Err(err(format!("206 without Content-Range to Range: {shown}")));
    };
    let got = multipart::content_range(&value, blob.size).map_err(bad)?;
    let span = ranges[0].start..ranges[ranges.len() - 1].end;
    let holds_all = got.start <= span.start && span.end <= got.end;
    if !holds_all || got.end - got.start > limit {
        if multi {
            return Ok(Answer::Refused(format!(
                "{url} answered {} ranges with the one range {value:?}",
                ranges.len()
            )));
        }
        return Err(err(format!("asked for {shown}, the answer is for {value:?}")));
    }
    let body = read_body(inner, blob, response, got.end - got.start, &url).await?;
    if body.len() as u64 != got.end - got.start {
        return Err(err(format!(
            "Content-Range {value:?}, but {} bytes of body",
            body.len()
        )));
    }
    multipart::match_parts(vec![(got, &body)], ranges)
        .map(Answer::Bytes)
        .map_err(bad)
}

/// The body of a ranged answer, refused past `limit` bytes; counted as
/// received (a multipart answer's framing too).
async fn read_body(
    inner: &Inner,
    blob: &Blob,
    response: Response,
    limit: u64,
    url: &str,
) -> Result<Vec<u8>, ImportError> {
    let body = http::read_bounded(response, limit).await.map_err(|e| {
        ImportError::Registry(match e {
            http::BodyError::TooLarge(n) => {
                format!("{url}: the answer has {n} bytes or more, over the {limit} asked for")
            }
            http::BodyError::Network(e) => format!("reading {url}: {e}"),
        })
    })?;
    inner.received.blob_bytes(&blob.digest, blob.read, body.len() as u64);
    Ok(body)
}

/// A 416 to one range within the descriptor's size: the registry's blob
/// is shorter (its `Content-Range: bytes */SIZE` says how long).
fn unsatisfiable(response: &Response, blob: &Blob, url: &str, shown: &str) -> ImportError {
    let actual = header_text(response, CONTENT_RANGE).and_then(|v| {
        v.trim()
            .strip_prefix("bytes */")
            .and_then(|n| n.trim().parse::<u64>().ok())
    });
    match actual {
        Some(actual) if actual != blob.size => ImportError::BlobSizeMismatch {
            digest: blob.digest.clone(),
            actual,
            expected: blob.size,
        },
        _ => ImportError::Registry(format!(
            "{url}: Range: {shown} of a blob of {} bytes: 416 Range Not Satisfiable",
            blob.size
        )),
    }
}

/// A header value for a message, cut to its first 100 characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_inclusive_ends() {
        assert_eq!(range_header(&[0..1]), "bytes=0-0");
        assert_eq!(range_header(&[0..10, 20..30, 99..100]), "bytes=0-9,20-29,99-99");
    }

    #[test]
    fn batches_are_bounded_in_count_and_header_size() {
        let batch = |ranges: &[Range<u64>]| batch_len(ranges, MAX_RANGES_PER_REQUEST, MAX_RANGE_HEADER);
        let small: Vec<Range<u64>> = (0..100).map(|i| i * 10..i * 10 + 5).collect();
        assert_eq!(batch(&small), MAX_RANGES_PER_REQUEST);
        assert_eq!(batch(&small[95..]), 5);
        // The largest offsets: the most ranges still fit the header.
        let big: Vec<Range<u64>> = (0..40)
            .map(|i| u64::MAX - 1000 + i * 10..u64::MAX - 995 + i * 10)
            .collect();
        assert_eq!(batch(&big), MAX_RANGES_PER_REQUEST);
        assert!(range_header(&big[..MAX_RANGES_PER_REQUEST]).len() <= MAX_RANGE_HEADER);
        // A smaller header bound: exactly as many as fit.
        for max_header in [50, 100, 300, 1000] {
            let n = batch_len(&big, 40, max_header);
            assert!(range_header(&big[..n]).len() <= max_header, "{max_header}");
            assert!(range_header(&big[..n + 1]).len() > max_header, "{max_header}");
        }
        // One range goes alone even if its header is longer.
        assert_eq!(batch_len(&big, 40, 10), 1);
    }

    #[test]
    fn bodies_are_bounded_by_what_is_asked() {
        assert_eq!(body_limit(&[5..15]), 10);
        assert_eq!(body_limit(&[0..10, 20..30]), 20 + 2 * PART_OVERHEAD + BODY_OVERHEAD);
    }

    #[test]
    fn long_headers_are_shortened_for_messages() {
        assert_eq!(shorten("bytes=0-9"), "bytes=0-9");
        let long = "x".repeat(300);
        assert_eq!(shorten(&long).len(), 103);
    }
}

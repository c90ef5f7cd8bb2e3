//! The fetch plan of a partial pull, pure: from a verified TOC and what the
//! store already holds, which contents to fetch and which byte ranges to
//! ask for, in which calls.
//!
//! - Contents are keyed by their SHA-256: a content named by several
//!   entries of the layer is fetched once.
//! - A content the store has is not fetched: one larger than the inline
//!   limit found by the SHA-256 index as an object of the same size; one
//!   small enough to live inline in the EROFS image (inline files are not
//!   objects) found in the store's small-content table, its bytes checked
//!   against the SHA-256 and size here before they are used.
//! - The compressed ranges of the missing contents are sorted, and merged
//!   where they overlap or the gap between them is at most [`MERGE_GAP`].
//! - Contents are grouped into batches; one batch is fetched by one worker
//!   in calls of at most [`CALL_BYTES`] (a lone range up to
//!   [`MAX_RANGE`]). A content larger than a call gets a batch of its own,
//!   fetched call after call and streamed into its object.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use strata_store::ObjectRef;

use crate::toc::{ByteRange, Chunk, Sha256Digest, Toc};

/// Gaps up to this are fetched rather than cutting a range in two. Small:
/// ranges travel 16 to a request anyway, and every merged byte is a byte
/// the store did not need (8 KiB fetched 2.52 MB for 1.43 MB lacking).
pub const MERGE_GAP: u64 = 512;
/// Bytes of ranges one `read_ranges` call asks for, normally.
pub const CALL_BYTES: u64 = 16 << 20;
/// The largest single range (one chunk's compressed bytes, or ranges
/// merged into one); a layer with a larger chunk is pulled whole.
pub const MAX_RANGE: u64 = 64 << 20;

/// The largest chunk held in memory once decompressed; a layer with a
/// larger one is pulled whole (streamed).
pub const MAX_CHUNK: u64 = 64 << 20;

/// One content to fetch: its digest, size and chunks (in file order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub digest: Sha256Digest,
    pub size: u64,
    /// An entry that names it, for messages.
    pub path: String,
    pub chunks: Vec<Chunk>,
}

/// Contents fetched together by one worker, call after call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub contents: Vec<Wanted>,
    /// Each call's ranges: sorted, disjoint, merged.
    pub calls: Vec<Vec<ByteRange>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Contents the store holds as objects, by SHA-256.
    pub have: HashMap<Sha256Digest, ObjectRef>,
    pub batches: Vec<Batch>,
    pub stats: PlanStats,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanStats {
    /// Regular-file entries of the TOC.
    pub files: u64,
    /// Distinct non-empty contents among them.
    pub contents: u64,
    /// Contents (and their bytes) the store has, as objects or inline.
    pub have: u64,
    pub have_bytes: u64,
    /// Of those, contents of at most the inline limit, from the store's
    /// small-content table.
    pub have_inline: u64,
    /// Contents (and their bytes) to fetch.
    pub fetch: u64,
    pub fetch_bytes: u64,
    /// Compressed bytes of the missing contents' own ranges.
    pub range_bytes: u64,
    /// Bytes asked for once ranges are merged (gaps included).
    pub request_bytes: u64,
    pub calls: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("entries {first:?} and {second:?} give content {digest} two sizes ({first_size} and {second_size})")]
    SizeConflict {
        digest: Sha256Digest,
        first: String,
        first_size: u64,
        second: String,
        second_size: u64,
    },
    #[error("{path:?} has a chunk of {size} compressed bytes, over the {limit} a ranged read may hold")]
    ChunkTooLarge { path: String, size: u64, limit: u64 },
    #[error("{path:?} has a chunk of {size} bytes, over the {limit} held in memory")]
    ChunkTooLong { path: String, size: u64, limit: u64 },
    #[error("its files hold {size} bytes, over the layer limit of {limit}")]
    LayerTooLarge { size: u64, limit: u64 },
}

/// Plans the fetch of `toc`'s files. `lookup` answers, for each SHA-256 it
/// is given, the object holding that content, if the store has one;
/// contents of at most `inline_max` bytes are never looked up (and always
/// fetched: see [`plan_with_inline`]). Files holding more than
/// `max_layer_bytes` in all are refused before anything is fetched.
pub fn plan(
    toc: &Toc,
    inline_max: u64,
    max_layer_bytes: u64,
    lookup: impl FnOnce(&[Sha256Digest]) -> Vec<Option<ObjectRef>>,
) -> Result<Plan, PlanError> {
    plan_with_inline(toc, inline_max, max_layer_bytes, lookup, |d| vec![None; d.len()]).map(|(plan, _)| plan)
}

/// Contents of at most the inline limit the store holds, by SHA-256, with
/// their bytes (checked against both).
pub type HaveInline = HashMap<Sha256Digest, Vec<u8>>;

/// [`plan`], where contents of at most `inline_max` bytes are asked of
/// `lookup_inline` (the store's small-content table): an answer whose bytes
/// do not have the content's size and SHA-256 is not used.
pub fn plan_with_inline(
    toc: &Toc,
    inline_max: u64,
    max_layer_bytes: u64,
    lookup: impl FnOnce(&[Sha256Digest]) -> Vec<Option<ObjectRef>>,
    lookup_inline: impl FnOnce(&[Sha256Digest]) -> Vec<Option<Vec<u8>>>,
) -> Result<(Plan, HaveInline), PlanError> {
    let total: u64 = toc.files().map(|(_, c)| c.size).fold(0, u64::saturating_add);
    if total > max_layer_bytes {
        return Err(PlanError::LayerTooLarge {
            size: total,
            limit: max_layer_bytes,
        });
    }
    let mut stats = PlanStats::default();
    let mut order: Vec<Wanted> = Vec::new();
    let mut index: HashMap<Sha256Digest, usize> = HashMap::new();
    for (entry, content) in toc.files() {
        stats.files += 1;
        if content.size == 0 {
            continue;
        }
        if let Some(&at) = index.get(&content.digest) {
            let first = &order[at];
            if first.size != content.size {
                return Err(PlanError::SizeConflict {
                    digest: content.digest,
                    first: first.path.clone(),
                    first_size: first.size,
                    second: entry.path.clone(),
                    second_size: content.size,
                });
            }
            continue;
        }
        index.insert(content.digest, order.len());
        order.push(Wanted {
            digest: content.digest,
            size: content.size,
            path: entry.path.clone(),
            chunks: content.chunks.clone(),
        });
    }
    stats.contents = order.len() as u64;

    let asked: Vec<Sha256Digest> = order.iter().filter(|w| w.size > inline_max).map(|w| w.digest).collect();
    let answers = lookup(&asked);
    let mut have = HashMap::new();
    for (digest, answer) in asked.into_iter().zip(answers) {
        if let Some(object) = answer.filter(|o| o.size == order[index[&digest]].size) {
            have.insert(digest, object);
        }
    }
    let asked: Vec<Sha256Digest> = order
        .iter()
        .filter(|w| w.size <= inline_max)
        .map(|w| w.digest)
        .collect();
    let answers = lookup_inline(&asked);
    let mut have_inline = HashMap::new();
    for (digest, answer) in asked.into_iter().zip(answers) {
        let size = order[index[&digest]].size;
        let right = |bytes: &Vec<u8>| bytes.len() as u64 == size && Sha256::digest(bytes).as_slice() == digest.0;
        if let Some(bytes) = answer.filter(right) {
            have_inline.insert(digest, bytes);
        }
    }
    stats.have_inline = have_inline.len() as u64;
    let mut missing: Vec<Wanted> = Vec::new();
    for wanted in order {
        if have.contains_key(&wanted.digest) || have_inline.contains_key(&wanted.digest) {
            stats.have += 1;
            stats.have_bytes += wanted.size;
        } else {
            stats.fetch += 1;
            stats.fetch_bytes += wanted.size;
            missing.push(wanted);
        }
    }
    for wanted in &missing {
        if let Some(chunk) = wanted.chunks.iter().find(|c| !c.zeros && c.size > MAX_CHUNK) {
            return Err(PlanError::ChunkTooLong {
                path: wanted.path.clone(),
                size: chunk.size,
                limit: MAX_CHUNK,
            });
        }
        for range in fetched_ranges(wanted) {
            if range.len() > MAX_RANGE {
                return Err(PlanError::ChunkTooLarge {
                    path: wanted.path.clone(),
                    size: range.len(),
                    limit: MAX_RANGE,
                });
            }
        }
    }
    missing.sort_by_key(|w| fetched_ranges(w).next().map_or(0, |r| r.start));
    stats.range_bytes = merge(missing.iter().flat_map(fetched_ranges), 0)
        .iter()
        .map(ByteRange::len)
        .sum();

    let batches = batches(missing);
    for batch in &batches {
        stats.calls += batch.calls.len() as u64;
        stats.request_bytes += batch.calls.iter().flatten().map(ByteRange::len).sum::<u64>();
    }
    Ok((Plan { have, batches, stats }, have_inline))
}

/// The compressed ranges a content needs (zero chunks need none).
fn fetched_ranges(wanted: &Wanted) -> impl Iterator<Item = ByteRange> + '_ {
    wanted.chunks.iter().filter(|c| !c.zeros).map(|c| c.compressed)
}

/// Sorts `ranges` and merges those that overlap or lie at most `gap`
/// apart, as long as a merged range stays within [`CALL_BYTES`].
pub fn merge(ranges: impl Iterator<Item = ByteRange>, gap: u64) -> Vec<ByteRange> {
    let mut all: Vec<ByteRange> = ranges.collect();
    all.sort_unstable();
    let mut out: Vec<ByteRange> = Vec::with_capacity(all.len());
    for range in all {
        if let Some(last) = out.last_mut() {
            let end = last.end.max(range.end);
            let touches = range.start <= last.end.saturating_add(gap);
            if range.start < last.end || (touches && end - last.start <= CALL_BYTES) {
                last.end = end;
                continue;
            }
        }
        out.push(range);
    }
    out
}

/// Sorts `ranges`, merges those that overlap or lie at most [`MERGE_GAP`]
/// apart, then spends up to `budget` bytes of gaps on the fewest ranges:
/// the smallest gaps are closed first, while a merged range stays within
/// [`CALL_BYTES`]. Each range left costs a request or a multipart part,
/// which a small gap's bytes cost less than.
pub fn merge_within(ranges: impl Iterator<Item = ByteRange>, budget: u64) -> Vec<ByteRange> {
    let tight = merge(ranges, MERGE_GAP);
    let mut gaps: Vec<(u64, usize)> = tight
        .windows(2)
        .enumerate()
        .map(|(i, pair)| (pair[1].start - pair[0].end, i))
        .collect();
    gaps.sort_unstable();
    let mut closed = vec![false; tight.len()];
    let mut left = budget;
    for (gap, i) in gaps {
        if gap > left {
            break;
        }
        left -= gap;
        closed[i] = true;
    }
    let mut out: Vec<ByteRange> = Vec::with_capacity(tight.len());
    for (i, range) in tight.into_iter().enumerate() {
        match out.last_mut() {
            Some(last) if i > 0 && closed[i - 1] && range.end - last.start <= CALL_BYTES => last.end = range.end,
            _ => out.push(range),
        }
    }
    out
}

/// Splits merged ranges into calls of about [`CALL_BYTES`].
pub(crate) fn calls(ranges: Vec<ByteRange>) -> Vec<Vec<ByteRange>> {
    let mut out: Vec<Vec<ByteRange>> = Vec::new();
    let mut bytes = 0;
    for range in ranges {
        match out.last_mut() {
            Some(call) if bytes + range.len() <= CALL_BYTES => {
                bytes += range.len();
                call.push(range);
            }
            _ => {
                bytes = range.len();
                out.push(vec![range]);
            }
        }
    }
    out
}

/// Groups contents (sorted by offset) into batches of about one call.
fn batches(missing: Vec<Wanted>) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut contents: Vec<Wanted> = Vec::new();
    let mut bytes = 0;
    let close = |contents: &mut Vec<Wanted>, out: &mut Vec<Batch>| {
        if contents.is_empty() {
            return;
        }
        let ranges = merge(contents.iter().flat_map(fetched_ranges), MERGE_GAP);
        out.push(Batch {
            contents: std::mem::take(contents),
            calls: calls(ranges),
        });
    };
    for wanted in missing {
        let own: u64 = fetched_ranges(&wanted).map(|r| r.len()).sum();
        if bytes + own > CALL_BYTES {
            close(&mut contents, &mut out);
            bytes = 0;
        }
        bytes += own;
        contents.push(wanted);
    }
    close(&mut contents, &mut out);
    out
}

#[cfg(test)]
mod tests;

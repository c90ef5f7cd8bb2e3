//! Raw TOC entries -> validated [`Toc`]: paths, kinds, owners, times,
//! xattrs, digests, chunk lists, and the byte ranges each format implies.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use strata_tree::split_path;

use super::raw::{RawEntry, RawToc};
use super::time::parse_rfc3339;
use super::{
    ByteRange, Chunk, EntryKind, EntryProblem, FileContent, Sha256Digest, Toc, TocEntry, TocError, TocFormat, TocLimits,
};

/// Where the TOC came from and what its byte ranges may reach.
pub(super) struct Frame {
    pub format: TocFormat,
    pub digest: Sha256Digest,
    /// Everything below this is file data; the TOC starts here or later.
    pub data_end: u64,
}

pub(super) fn validate(raw: &RawToc, frame: Frame, limits: &TocLimits) -> Result<Toc, TocError> {
    if raw.version != 1 {
        return Err(TocError::UnsupportedVersion(raw.version));
    }
    if raw.entries.len() as u64 > limits.max_entries {
        return Err(TocError::TooManyEntries {
            limit: limits.max_entries,
        });
    }
    let mut builder = Builder {
        format: frame.format,
        limits,
        entries: Vec::with_capacity(raw.entries.len()),
        raw_index: Vec::with_capacity(raw.entries.len()),
        spans: Vec::new(),
        open_file: None,
        first_seen: HashMap::new(),
        user_names: HashMap::new(),
        group_names: HashMap::new(),
    };
    let error = |index: usize, problem| TocError::Entry {
        index,
        name: raw.entries[index].name.chars().take(256).collect(),
        problem,
    };
    for (index, entry) in raw.entries.iter().enumerate() {
        builder.add(index, entry).map_err(|(i, problem)| error(i, problem))?;
    }
    builder.close_file().map_err(|(i, problem)| error(i, problem))?;
    let Builder {
        mut entries,
        raw_index,
        spans,
        ..
    } = builder;
    let placed = Placed {
        spans: &spans,
        entries: &entries,
        raw_index: &raw_index,
        data_end: frame.data_end,
    };
    let ranges = match frame.format {
        TocFormat::Estargz => placed.estargz_ranges(),
        TocFormat::ZstdChunked => placed.zstd_ranges(),
    }
    .map_err(|(span, problem)| error(raw_index[spans[span].entry], problem))?;
    let work = inflate_work(&spans);
    if work > limits.max_inflate_bytes {
        return Err(TocError::TooMuchInflating {
            work,
            limit: limits.max_inflate_bytes,
        });
    }
    for (span, range) in spans.iter().zip(ranges) {
        if let EntryKind::File(content) = &mut entries[span.entry].kind {
            content.chunks[span.chunk].compressed = range;
        }
    }
    Ok(Toc {
        format: frame.format,
        entries,
        digest: frame.digest,
        data_end: frame.data_end,
    })
}

/// Where one chunk's compressed bytes start, as the TOC gives it; the end
/// is found once every entry is read.
struct Span {
    entry: usize,
    chunk: usize,
    offset: u64,
    inner_offset: u64,
    size: u64,
    /// zstd:chunked: the file's `endOffset`, where its last chunk ends.
    file_end: u64,
}

/// A regular file whose chunk entries may still follow.
struct OpenFile {
    entry: usize,
    raw_index: usize,
    size: u64,
    covered: u64,
    end_offset: u64,
}

type Failure = (usize, EntryProblem);

struct Builder<'a> {
    format: TocFormat,
    limits: &'a TocLimits,
    entries: Vec<TocEntry>,
    /// The raw entry each output entry came from, for errors.
    raw_index: Vec<usize>,
    spans: Vec<Span>,
    open_file: Option<OpenFile>,
    first_seen: HashMap<String, usize>,
    user_names: HashMap<u32, String>,
    group_names: HashMap<u32, String>,
}

impl Builder<'_> {
    fn add(&mut self, index: usize, raw: &RawEntry) -> Result<(), Failure> {
        if raw.kind == "chunk" {
            return self.add_chunk(raw).map_err(|p| (index, p));
        }
        self.close_file()?;
        self.add_entry(index, raw).map_err(|p| (index, p))
    }

    fn add_entry(&mut self, index: usize, raw: &RawEntry) -> Result<(), EntryProblem> {
        let path = self.normalise(&raw.name)?;
        let kind = self.kind(raw, &path)?;
        if path.is_empty() && kind != EntryKind::Dir {
            return Err(EntryProblem::RootNotDirectory);
        }
        match self.first_seen.get(&path) {
            Some(&first) if self.format == TocFormat::ZstdChunked => return Err(EntryProblem::Duplicate { first }),
            Some(_) => {} // eStargz keeps tar's order: the later entry wins.
            None => {
                self.first_seen.insert(path.clone(), index);
            }
        }
        let uid = to_u32("uid", raw.uid)?;
        let gid = to_u32("gid", raw.gid)?;
        let (mtime_sec, mtime_nsec) = match raw.modtime.as_deref() {
            None | Some("") => (0, 0),
            Some(text) => parse_rfc3339(text).ok_or_else(|| EntryProblem::BadTime(text.chars().take(64).collect()))?,
        };
        let mode = u32::try_from(raw.mode)
            .map(|m| m & 0o7777)
            .map_err(|_| EntryProblem::OutOfRange {
                field: "mode",
                value: raw.mode,
            })?;
        let entry = TocEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            user_name: remembered(&mut self.user_names, uid, raw.user_name.as_deref()),
            group_name: remembered(&mut self.group_names, gid, raw.group_name.as_deref()),
            mtime_sec,
            mtime_nsec,
            xattrs: xattrs(raw)?,
        };
        let file = match &entry.kind {
            EntryKind::File(content) => Some((content.size, content.digest)),
            _ => None,
        };
        self.entries.push(entry);
        self.raw_index.push(index);
        if let Some((size, digest)) = file {
            self.open_regular(index, raw, size, digest)?;
        }
        Ok(())
    }

    fn normalise(&self, name: &str) -> Result<String, EntryProblem> {
        self.check_length(name)?;
        let names = split_path(name.as_bytes(), self.limits.max_depth)?;
        Ok(String::from_utf8_lossy(&names.join(&b'/')).into_owned())
    }

    fn check_length(&self, text: &str) -> Result<(), EntryProblem> {
        if text.len() > self.limits.max_path_bytes {
            return Err(EntryProblem::PathTooLong {
                len: text.len(),
                limit: self.limits.max_path_bytes,
            });
        }
        Ok(())
    }

    fn kind(&self, raw: &RawEntry, path: &str) -> Result<EntryKind, EntryProblem> {
        let kind = match raw.kind.as_str() {
            "reg" => {
                let size = to_u64("size", raw.size)?;
                return Ok(EntryKind::File(FileContent {
                    size,
                    digest: file_digest(raw, size)?,
                    chunks: Vec::new(),
                }));
            }
            "dir" => EntryKind::Dir,
            "symlink" => {
                self.check_length(&raw.link_name)?;
                if raw.link_name.is_empty() {
                    return Err(EntryProblem::EmptyLinkTarget("symlink"));
                }
                if raw.link_name.contains('\0') {
                    return Err(EntryProblem::NulInSymlink);
                }
                EntryKind::Symlink {
                    target: raw.link_name.clone(),
                }
            }
            "hardlink" => {
                self.check_length(&raw.link_name)?;
                let names =
                    split_path(raw.link_name.as_bytes(), self.limits.max_depth).map_err(EntryProblem::BadLinkTarget)?;
                if names.is_empty() || path.is_empty() {
                    return Err(EntryProblem::EmptyLinkTarget("hard link"));
                }
                EntryKind::Hardlink {
                    target: String::from_utf8_lossy(&names.join(&b'/')).into_owned(),
                }
            }
            "char" => EntryKind::CharDevice {
                major: to_u32("devMajor", raw.dev_major)?,
                minor: to_u32("devMinor", raw.dev_minor)?,
            },
            "block" => EntryKind::BlockDevice {
                major: to_u32("devMajor", raw.dev_major)?,
                minor: to_u32("devMinor", raw.dev_minor)?,
            },
            "fifo" => EntryKind::Fifo,
            other => return Err(EntryProblem::UnknownType(other.chars().take(64).collect())),
        };
        no_data_fields(raw, &raw.kind)?;
        Ok(kind)
    }

    /// Starts a regular file's chunk list with the chunk its own entry holds.
    fn open_regular(
        &mut self,
        index: usize,
        raw: &RawEntry,
        size: u64,
        digest: Sha256Digest,
    ) -> Result<(), EntryProblem> {
        if size == 0 {
            if raw.offset != 0 || raw.end_offset != 0 || raw.chunk_size != 0 || raw.chunk_digest.is_some() {
                return Err(EntryProblem::EmptyFileWithData);
            }
            return Ok(());
        }
        let chunk_size = to_u64("chunkSize", raw.chunk_size)?;
        if chunk_size > size {
            return Err(EntryProblem::ChunksDoNotAddUp {
                covered: chunk_size,
                size,
            });
        }
        self.open_file = Some(OpenFile {
            entry: self.entries.len() - 1,
            raw_index: index,
            size,
            covered: 0,
            end_offset: match self.format {
                TocFormat::ZstdChunked => to_u64("endOffset", raw.end_offset)?,
                TocFormat::Estargz => 0,
            },
        });
        let first = if chunk_size == 0 { size } else { chunk_size };
        let chunk_digest = self.push_chunk(raw, first)?;
        match chunk_digest {
            Some(chunk) if first == size && chunk != digest => {
                Err(EntryProblem::ChunkDigestDiffers { chunk, file: digest })
            }
            _ => Ok(()),
        }
    }

    fn add_chunk(&mut self, raw: &RawEntry) -> Result<(), EntryProblem> {
        let Some(open) = &self.open_file else {
            return Err(EntryProblem::OrphanChunk);
        };
        let file_path = &self.entries[open.entry].path;
        if !raw.name.is_empty() && self.normalise(&raw.name).ok().as_ref() != Some(file_path) {
            return Err(EntryProblem::ChunkOfOtherFile {
                name: raw.name.chars().take(256).collect(),
                file: file_path.clone(),
            });
        }
        let (size, covered) = (open.size, open.covered);
        let chunk_size = match to_u64("chunkSize", raw.chunk_size)? {
            0 => size.saturating_sub(covered), // "to the end of the file"
            n => n,
        };
        if chunk_size == 0 {
            return Err(EntryProblem::ChunksDoNotAddUp {
                covered: covered.saturating_add(1),
                size,
            });
        }
        self.push_chunk(raw, chunk_size).map(drop)
    }

    /// Adds a chunk of `size` bytes to the open file; returns its digest.
    fn push_chunk(&mut self, raw: &RawEntry, size: u64) -> Result<Option<Sha256Digest>, EntryProblem> {
        let format = self.format;
        let Some(open) = &mut self.open_file else {
            return Err(EntryProblem::OrphanChunk);
        };
        let file_offset = to_u64("chunkOffset", raw.chunk_offset)?;
        if file_offset != open.covered {
            return Err(EntryProblem::ChunkGap {
                expected: open.covered,
                found: file_offset,
            });
        }
        let covered = file_offset.checked_add(size).filter(|&c| c <= open.size);
        open.covered = covered.ok_or(EntryProblem::ChunksDoNotAddUp {
            covered: file_offset.saturating_add(size),
            size: open.size,
        })?;
        let offset = to_u64("offset", raw.offset)?;
        if offset == 0 {
            return Err(EntryProblem::MissingOffset { size: open.size });
        }
        let inner_offset = to_u64("innerOffset", raw.inner_offset)?;
        if format == TocFormat::ZstdChunked && inner_offset != 0 {
            return Err(EntryProblem::UnexpectedField {
                field: "innerOffset",
                kind: "zstd:chunked",
            });
        }
        let zeros = match raw.chunk_type.as_deref() {
            None | Some("") => false,
            Some("zeros") => true,
            Some(other) => return Err(EntryProblem::UnknownChunkType(other.chars().take(64).collect())),
        };
        let digest = raw.chunk_digest.as_deref().map(parse_digest).transpose()?;
        let entry = open.entry;
        let file_end = open.end_offset;
        let EntryKind::File(content) = &mut self.entries[entry].kind else {
            return Err(EntryProblem::OrphanChunk);
        };
        self.spans.push(Span {
            entry,
            chunk: content.chunks.len(),
            offset,
            inner_offset,
            size,
            file_end,
        });
        content.chunks.push(Chunk {
            file_offset,
            size,
            compressed: ByteRange {
                start: offset,
                end: offset,
            },
            inner_offset,
            digest,
            zeros,
        });
        Ok(digest)
    }

    /// Ends the open file: its chunks must cover it exactly.
    fn close_file(&mut self) -> Result<(), Failure> {
        match self.open_file.take() {
            Some(open) if open.covered != open.size => Err((
                open.raw_index,
                EntryProblem::ChunksDoNotAddUp {
                    covered: open.covered,
                    size: open.size,
                },
            )),
            _ => Ok(()),
        }
    }
}

/// The bytes decompressed to read each chunk once, each from the start of
/// its compressed range: the chunk, and before it its inner offset.
fn inflate_work(spans: &[Span]) -> u64 {
    spans
        .iter()
        .map(|span| span.inner_offset.saturating_add(span.size))
        .fold(0u64, u64::saturating_add)
}

/// Every chunk's start, to be given its end.
struct Placed<'a> {
    spans: &'a [Span],
    entries: &'a [TocEntry],
    raw_index: &'a [usize],
    data_end: u64,
}

impl Placed<'_> {
    /// eStargz gives only where each gzip member starts; a member ends where
    /// the next one starts (or at the TOC). Members come in TOC order, and
    /// files sharing one (`innerOffset`) follow one another inside it.
    fn estargz_ranges(&self) -> Result<Vec<ByteRange>, Failure> {
        let spans = self.spans;
        for (i, span) in spans.iter().enumerate() {
            if span.offset >= self.data_end {
                return Err((
                    i,
                    EntryProblem::OffsetOutsideData {
                        offset: span.offset,
                        data_end: self.data_end,
                    },
                ));
            }
            if let Some(previous) = i.checked_sub(1).map(|p| &spans[p]) {
                if span.offset < previous.offset {
                    return Err((
                        i,
                        EntryProblem::OffsetsOutOfOrder {
                            offset: span.offset,
                            previous: previous.offset,
                        },
                    ));
                }
            }
        }
        let mut ranges = vec![ByteRange { start: 0, end: 0 }; spans.len()];
        let mut member_end = self.data_end;
        for i in (0..spans.len()).rev() {
            if let Some(next) = spans.get(i + 1).filter(|next| next.offset != spans[i].offset) {
                member_end = next.offset;
            }
            ranges[i] = ByteRange {
                start: spans[i].offset,
                end: member_end,
            };
        }
        for i in 1..spans.len() {
            let (previous, span) = (&spans[i - 1], &spans[i]);
            let previous_end = previous.inner_offset.saturating_add(previous.size);
            if span.offset == previous.offset && span.inner_offset < previous_end {
                return Err((i, self.overlap(ranges[i], i - 1)));
            }
        }
        Ok(ranges)
    }

    /// zstd:chunked gives where each chunk's frames start; a chunk ends where
    /// the file's next chunk starts, the last at the file's `endOffset`. No
    /// two ranges may share a byte.
    fn zstd_ranges(&self) -> Result<Vec<ByteRange>, Failure> {
        let spans = self.spans;
        let mut ranges = Vec::with_capacity(spans.len());
        for (i, span) in spans.iter().enumerate() {
            let end = match spans.get(i + 1) {
                Some(next) if next.entry == span.entry => next.offset,
                _ => span.file_end,
            };
            let range = ByteRange {
                start: span.offset,
                end,
            };
            if end <= span.offset {
                return Err((i, EntryProblem::EmptyRange { range }));
            }
            if end > self.data_end {
                return Err((
                    i,
                    EntryProblem::RangeOutsideData {
                        range,
                        data_end: self.data_end,
                    },
                ));
            }
            ranges.push(range);
        }
        let mut by_start: Vec<usize> = (0..ranges.len()).collect();
        by_start.sort_unstable_by_key(|&i| (ranges[i].start, i));
        for pair in by_start.windows(2) {
            let (first, second) = (pair[0], pair[1]);
            if ranges[second].start < ranges[first].end {
                let (earlier, later) = (first.min(second), first.max(second));
                return Err((later, self.overlap(ranges[later], earlier)));
            }
        }
        Ok(ranges)
    }

    fn overlap(&self, range: ByteRange, other_span: usize) -> EntryProblem {
        let other = self.spans[other_span].entry;
        EntryProblem::Overlap {
            range,
            other: self.raw_index[other],
            other_path: self.entries[other].path.clone(),
        }
    }
}

fn to_u64(field: &'static str, value: i64) -> Result<u64, EntryProblem> {
    u64::try_from(value).map_err(|_| EntryProblem::OutOfRange { field, value })
}

fn to_u32(field: &'static str, value: i64) -> Result<u32, EntryProblem> {
    u32::try_from(value).map_err(|_| EntryProblem::OutOfRange { field, value })
}

fn parse_digest(text: &str) -> Result<Sha256Digest, EntryProblem> {
    Sha256Digest::parse(text).ok_or_else(|| EntryProblem::BadDigest(text.chars().take(80).collect()))
}

/// A regular file's digest; an empty file may leave it out (zstd:chunked).
fn file_digest(raw: &RawEntry, size: u64) -> Result<Sha256Digest, EntryProblem> {
    match raw.digest.as_deref().filter(|d| !d.is_empty()) {
        None if size == 0 => Ok(Sha256Digest::empty()),
        None => Err(EntryProblem::MissingDigest { size }),
        Some(text) => {
            let digest = parse_digest(text)?;
            if size == 0 && digest != Sha256Digest::empty() {
                return Err(EntryProblem::EmptyFileDigest(digest));
            }
            Ok(digest)
        }
    }
}

/// Entries other than regular files carry no data.
fn no_data_fields(raw: &RawEntry, kind: &str) -> Result<(), EntryProblem> {
    let kind = match kind {
        "dir" => "dir",
        "symlink" => "symlink",
        "hardlink" => "hardlink",
        "char" => "char",
        "block" => "block",
        _ => "fifo",
    };
    let set = [
        ("offset", raw.offset != 0),
        ("endOffset", raw.end_offset != 0),
        ("innerOffset", raw.inner_offset != 0),
        ("chunkOffset", raw.chunk_offset != 0),
        ("chunkSize", raw.chunk_size != 0),
        ("digest", raw.digest.as_deref().is_some_and(|d| !d.is_empty())),
        (
            "chunkDigest",
            raw.chunk_digest.as_deref().is_some_and(|d| !d.is_empty()),
        ),
    ];
    match set.iter().find(|(_, is_set)| *is_set) {
        Some(&(field, _)) => Err(EntryProblem::UnexpectedField { field, kind }),
        None => Ok(()),
    }
}

/// The name given for `id`, or the one an earlier entry gave.
fn remembered(names: &mut HashMap<u32, String>, id: u32, given: Option<&str>) -> Option<String> {
    match given.filter(|n| !n.is_empty()) {
        Some(name) => {
            names.insert(id, name.to_owned());
            Some(name.to_owned())
        }
        None => names.get(&id).cloned(),
    }
}

fn xattrs(raw: &RawEntry) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, EntryProblem> {
    let mut out = BTreeMap::new();
    for (name, value) in raw.xattrs.iter().flatten() {
        let bad = |reason| EntryProblem::BadXattr {
            name: name.chars().take(256).collect(),
            reason,
        };
        if name.is_empty() || name.contains('\0') {
            return Err(bad("empty name or a NUL byte in it"));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| bad("value is not base64"))?;
        out.insert(name.as_bytes().to_vec(), value);
    }
    Ok(out)
}

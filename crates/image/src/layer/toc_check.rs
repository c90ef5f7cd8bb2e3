//! A whole read of a layer that announces a TOC (eStargz, zstd:chunked):
//! the tar is compared with the TOC ([`crate::toc::crosscheck`]), and the
//! SHA-256 of each of its files is recorded for later partial pulls. Plain
//! layers take none of this.
//!
//! The import keeps each entry's facts; a file stored as an object is
//! hashed when the check concludes, read back from the page cache on every
//! core, so a pull can run that beside the sync of what it wrote (the
//! import itself keeps both cores busy). Other files are hashed as read.
//!
//! The TOC is taken from the blob as it streams, so nothing is read twice:
//! eStargz's JSON is the tar's own `stargz.index.json` entry, and
//! zstd:chunked's compressed TOC the skippable frame the annotation places,
//! kept by a [`Tap`] on the raw stream, which also keeps the blob's last
//! bytes (the footer). Both are checked against the annotated digest before
//! they are parsed, as in a partial pull. A TOC that cannot be read or does
//! not verify is no contradiction (a partial pull cannot use it either): the
//! tar is imported after a warning.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};
use strata_store::{ObjectRef, StagedContents};
use strata_tree::{split_path, Digest};

use super::archive::Archive;
use super::{is_estargz, Body, Header, LayerBuilder};
use crate::toc::crosscheck::{crosscheck, TarEntry, TarKind};
use crate::toc::{estargz, zstd_chunked, ByteRange, RangeReader, Sha256Digest, Toc, TocError, TocLimits};
use crate::{Descriptor, ImportError, Limits};

/// Bytes kept from the blob's end: more than either format's footer.
const TAIL: usize = 128;

/// A SHA-256 index row: a file's SHA-256 and the object holding it.
pub(crate) type IndexRow = ([u8; 32], ObjectRef);

/// What the layer's annotations say the TOC is.
enum Announced {
    Estargz(Sha256Digest),
    ZstdChunked(zstd_chunked::Annotations),
}

/// The comparison's state during one layer's import.
pub(crate) struct TocCheck {
    announced: Announced,
    limits: TocLimits,
    /// The tar's entries as the comparison sees them, in tar order.
    entries: Vec<TarEntry>,
    /// The TOC, where it was read and verified before the import.
    known: Option<Toc>,
    /// eStargz: the body of the root's `stargz.index.json`.
    json: Option<Vec<u8>>,
    /// The regular file being read, hashed as read where its content is
    /// not left to be read back.
    reading: Option<Hashing>,
    /// The regular files, in tar order.
    files: Vec<TarFile>,
    kept: Arc<Mutex<Kept>>,
    layer: String,
    blob_size: u64,
}

/// A regular file of the layer, for its SHA-256 and index row.
struct TarFile {
    /// Its entry in `entries`.
    at: usize,
    /// The object holding its content, if any.
    object: Option<ObjectRef>,
    /// Its SHA-256 and size where it was hashed as read: a content held
    /// inline, one the store already had (its object may be cold on disk),
    /// an entry the import skips. Others are read back from their objects.
    hashed: Option<(Sha256Digest, u64)>,
}

/// The SHA-256 of the regular file being read.
#[derive(Default)]
struct Hashing {
    sha: Sha256,
    size: u64,
    /// Whether any of its bytes were fed (an empty content's are).
    fed: bool,
}

impl TocCheck {
    /// The check for `desc`, if it announces a TOC. An announcement that
    /// cannot be parsed leaves the layer unchecked, after a warning.
    pub(crate) fn for_layer(desc: &Descriptor, limits: &Limits) -> Option<TocCheck> {
        let limits = TocLimits::from_layer_limits(limits);
        let announced = if is_estargz(desc) {
            estargz::toc_digest(&desc.annotations).map(Announced::Estargz)
        } else {
            match zstd_chunked::annotations(&desc.annotations) {
                Ok(None) => return None,
                Ok(Some(annotations)) => Ok(Announced::ZstdChunked(annotations)),
                Err(e) => Err(e),
            }
        };
        let announced = match announced {
            Ok(announced) => announced,
            Err(e) => {
                warn_unchecked(&desc.digest, &e);
                return None;
            }
        };
        let wanted = match &announced {
            Announced::ZstdChunked(a) => a
                .manifest_position
                .filter(|p| p.length <= limits.max_toc_bytes)
                .map(|p| ByteRange {
                    start: p.offset,
                    end: p.offset.saturating_add(p.length),
                }),
            Announced::Estargz(_) => None,
        };
        Some(TocCheck {
            announced,
            limits,
            entries: Vec::new(),
            known: None,
            json: None,
            reading: None,
            files: Vec::new(),
            kept: Arc::new(Mutex::new(Kept {
                wanted,
                ..Kept::default()
            })),
            layer: desc.digest.clone(),
            blob_size: desc.size,
        })
    }

    /// The check, comparing the tar with `toc` (already verified against
    /// the annotated digest) rather than with the TOC the stream carries.
    pub(crate) fn knowing(mut self, toc: Option<Toc>) -> TocCheck {
        if toc.is_some() {
            self.kept.lock().unwrap_or_else(|e| e.into_inner()).wanted = None;
        }
        self.known = toc;
        self
    }

    /// `raw`, keeping what the check needs of it as it is read.
    pub(crate) fn tap(&self, raw: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        Box::new(Tap {
            inner: raw,
            kept: self.kept.clone(),
        })
    }

    /// After the whole blob is read and verified: each object's SHA-256,
    /// read back through `contents` (the layer's stager); the TOC read from
    /// what was kept and compared with the tar. The index rows of the
    /// layer's files, unless the two contradict each other.
    pub(crate) fn conclude(mut self, contents: &StagedContents<'_>) -> Result<Vec<IndexRow>, ImportError> {
        let started = std::time::Instant::now();
        let mut digests: Vec<Digest> = self
            .files
            .iter()
            .filter(|file| file.hashed.is_none())
            .filter_map(|file| file.object.map(|o| o.digest))
            .collect();
        digests.sort_unstable();
        digests.dedup();
        let mut sums = std::collections::HashMap::with_capacity(digests.len());
        for (digest, sum) in digests.iter().zip(strata_store::sha256_of_contents(contents, &digests)) {
            let (sha256, size) = sum?;
            sums.insert(*digest, (Sha256Digest(sha256), size));
        }
        let mut rows = Vec::new();
        for file in &self.files {
            let (sha256, size) = match (file.hashed, file.object) {
                (Some(sum), _) => sum,
                (None, Some(object)) => sums[&object.digest],
                (None, None) => unreachable!("a file without an object is hashed as read"),
            };
            if let Some(object) = file.object {
                rows.push((sha256.0, object));
            }
            self.entries[file.at].kind = TarKind::File { size, sha256 };
        }
        let toc = match self.known.take() {
            Some(toc) => Ok(toc),
            None => {
                let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
                self.read_toc(&kept, self.blob_size)
            }
        };
        let toc = match toc {
            Ok(toc) => toc,
            Err(e) => {
                warn_unchecked(&self.layer, &e);
                return Ok(rows);
            }
        };
        crosscheck(&toc, &self.entries).map_err(|c| ImportError::TocContradictsTar {
            layer: self.layer.clone(),
            path: c.path,
            detail: c.detail,
        })?;
        tracing::debug!(
            layer = %self.layer,
            contents = digests.len(),
            seconds = started.elapsed().as_secs_f64(),
            "compared a layer read whole with its TOC"
        );
        Ok(rows)
    }

    fn read_toc(&self, kept: &Kept, blob_size: u64) -> Result<Toc, TocError> {
        match &self.announced {
            Announced::Estargz(digest) => {
                let json = self.json.as_deref().ok_or_else(|| TocError::BadTocMember {
                    reason: format!(
                        "no {} of at most {} bytes at the tar's root",
                        estargz::TOC_TAR_NAME,
                        self.limits.max_toc_bytes
                    ),
                })?;
                estargz::toc_from_stream(json, &kept.tail, digest, &self.limits)
            }
            Announced::ZstdChunked(annotations) => {
                zstd_chunked::read_toc(kept, blob_size, annotations, &self.limits).map(|t| t.toc)
            }
        }
    }
}

fn warn_unchecked(layer: &str, error: &TocError) {
    tracing::warn!(
        layer,
        %error,
        "the layer's TOC cannot be read from its blob; its tar is imported without comparing the two"
    );
}

impl LayerBuilder<'_> {
    /// [`LayerBuilder::add_entry`] for a layer with a [`TocCheck`]: the
    /// entry's facts, a regular file's SHA-256 and its index row are kept.
    pub(super) fn add_checked(&mut self, header: Header, archive: &mut Archive<'_>) -> Result<(), ImportError> {
        let path = split_path(&header.path, self.limits.max_depth).ok();
        if self.hide_estargz_metadata && path.as_deref().is_some_and(super::is_estargz_metadata) {
            let toc_json = path.as_deref() == Some(&[estargz::TOC_TAR_NAME.as_bytes().to_vec()][..]);
            if toc_json && matches!(header.typeflag, b'0' | b'7') && self.check_mut().known.is_none() {
                self.keep_toc_json(header.size, archive);
            }
            return self.add_entry(header, Body::Tar(archive));
        }
        let facts = self.facts(&header, path);
        // A contiguous file ('7') is a regular file, as add_entry takes it.
        let regular = matches!(header.typeflag, b'0' | b'7');
        self.check_mut().reading = regular.then(Hashing::default);
        let objects = self.objects.len();
        self.add_entry(header, Body::Tar(archive))?;
        if regular {
            // What add_entry left unread (a whiteout's body) counts too.
            let mut buf = [0u8; 8192];
            loop {
                let n = archive
                    .read(&mut buf)
                    .map_err(|e| self.entry_err(&facts.path, format!("reading file body: {e}")))?;
                if n == 0 {
                    break;
                }
                self.hash_body(&buf[..n]);
            }
            let object = self.objects.get(objects).copied();
            let check = self.check_mut();
            let hashing = check.reading.take().expect("set above");
            let hashed =
                (hashing.fed || object.is_none()).then(|| (Sha256Digest(hashing.sha.finalize().into()), hashing.size));
            check.files.push(TarFile {
                at: check.entries.len(),
                object,
                hashed,
            });
        }
        self.check_mut().entries.push(facts);
        Ok(())
    }

    /// Feeds bytes of the regular file being read to its SHA-256: the
    /// whole content, or none of it (then it is read back from its object).
    pub(super) fn hash_body(&mut self, bytes: &[u8]) {
        if let Some(hashing) = self.check.as_mut().and_then(|c| c.reading.as_mut()) {
            hashing.sha.update(bytes);
            hashing.size += bytes.len() as u64;
            hashing.fed = true;
        }
    }

    fn check_mut(&mut self) -> &mut TocCheck {
        self.check.as_mut().expect("only called for a checked layer")
    }

    /// Keeps the eStargz TOC's JSON from the tar, if it is not too large.
    fn keep_toc_json(&mut self, size: u64, archive: &mut Archive<'_>) {
        let limit = self.check_mut().limits.max_toc_bytes;
        if size > limit {
            return;
        }
        let mut json = Vec::new();
        if archive.by_ref().take(limit).read_to_end(&mut json).is_ok() {
            self.check_mut().json = Some(json);
        }
    }

    /// The entry as the comparison sees it (see [`tar_entry`]).
    fn facts(&self, header: &Header, path: Option<Vec<Vec<u8>>>) -> TarEntry {
        tar_entry(header, path, self.limits.max_depth)
    }
}

/// A tar entry as the comparison sees it, `path` its names where they
/// split; a regular file's content is filled in once its body is read.
/// Values the import refuses do not get as far as a comparison.
pub(crate) fn tar_entry(header: &Header, path: Option<Vec<Vec<u8>>>, max_depth: usize) -> TarEntry {
    let joined = |names: Vec<Vec<u8>>| names.join(&b'/');
    let number = |n: i64| u32::try_from(n).unwrap_or(u32::MAX);
    let (major, minor) = (number(header.dev_major), number(header.dev_minor));
    let kind = match header.typeflag {
        b'5' => TarKind::Dir,
        b'2' => TarKind::Symlink(header.link.clone()),
        b'1' => TarKind::Hardlink(
            split_path(&header.link, max_depth)
                .map(joined)
                .unwrap_or_else(|_| header.link.clone()),
        ),
        b'3' => TarKind::CharDevice { major, minor },
        b'4' => TarKind::BlockDevice { major, minor },
        b'6' => TarKind::Fifo,
        // Regular files: filled in once read.
        _ => TarKind::File {
            size: 0,
            sha256: Sha256Digest::empty(),
        },
    };
    let xattrs: BTreeMap<Vec<u8>, Vec<u8>> = header.xattrs.iter().cloned().collect();
    TarEntry {
        path: path.map_or_else(|| header.path.clone(), joined),
        kind,
        mode: number(header.mode & 0o7777),
        uid: number(header.uid),
        gid: number(header.gid),
        xattrs,
    }
}

/// What the check keeps of the raw blob as it streams: the zstd:chunked
/// TOC frame the annotation places, and the last bytes.
#[derive(Default)]
struct Kept {
    wanted: Option<ByteRange>,
    /// The start of `wanted`, as far as it has been read.
    frame: Vec<u8>,
    tail: Vec<u8>,
    /// Bytes read so far.
    read: u64,
}

impl Kept {
    fn add(&mut self, bytes: &[u8]) {
        let (start, end) = (self.read, self.read + bytes.len() as u64);
        if let Some(wanted) = self.wanted {
            let (from, to) = (wanted.start.max(start), wanted.end.min(end));
            if from < to {
                let at = |n: u64| usize::try_from(n - start).expect("within the buffer");
                self.frame.extend_from_slice(&bytes[at(from)..at(to)]);
            }
        }
        if bytes.len() >= TAIL {
            self.tail.clear();
            self.tail.extend_from_slice(&bytes[bytes.len() - TAIL..]);
        } else {
            self.tail.extend_from_slice(bytes);
            let excess = self.tail.len().saturating_sub(TAIL);
            self.tail.drain(..excess);
        }
        self.read = end;
    }
}

impl RangeReader for Kept {
    fn read_range(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = offset.saturating_add(len);
        if let Some(wanted) = self.wanted {
            let frame_end = wanted.start + self.frame.len() as u64;
            if offset >= wanted.start && end <= frame_end {
                return self.frame.read_range(offset - wanted.start, len);
            }
        }
        let tail_start = self.read - self.tail.len() as u64;
        if offset >= tail_start {
            return self.tail.read_range(offset - tail_start, len);
        }
        Err(io::Error::other(
            "not among the bytes kept from the stream (a TOC the annotations do not place)",
        ))
    }
}

/// The raw blob, passed through to the decompressor, its bytes shown to
/// [`Kept`] on the way.
struct Tap {
    inner: Box<dyn Read + Send>,
    kept: Arc<Mutex<Kept>>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).add(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame and the tail come back whatever the reads' sizes.
    #[test]
    fn kept_holds_the_frame_and_the_tail() {
        let blob: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        for step in [1, 7, 100, 127, 128, 129, 4096, 5000] {
            let wanted = ByteRange { start: 1000, end: 3000 };
            let kept = Arc::new(Mutex::new(Kept {
                wanted: Some(wanted),
                ..Kept::default()
            }));
            let mut tap = Tap {
                inner: Box::new(io::Cursor::new(blob.clone())),
                kept: kept.clone(),
            };
            let mut buf = vec![0; step];
            while tap.read(&mut buf).unwrap() > 0 {}
            let kept = kept.lock().unwrap();
            assert_eq!(kept.read_range(1000, 2000).unwrap(), &blob[1000..3000], "step {step}");
            assert_eq!(kept.read_range(1500, 10).unwrap(), &blob[1500..1510], "step {step}");
            assert_eq!(kept.read_range(4900, 100).unwrap(), &blob[4900..], "step {step}");
            assert_eq!(kept.read_range(4990, 100).unwrap(), &blob[4990..], "step {step}");
            assert!(kept.read_range(999, 10).is_err(), "step {step}");
            assert!(kept.read_range(3000, 10).is_err(), "step {step}");
        }
    }
}

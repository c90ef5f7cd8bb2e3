//! `partial_pulls = "verified"`: a zstd:chunked layer's diff_id, rebuilt
//! without its blob, and the TOC held to the tar that diff_id covers. The
//! tar-split (verified against its digest, which the TOC or the
//! annotations give) holds every byte of the uncompressed tar but the
//! files' data; the files' data are the contents the partial pull just
//! checked against the TOC (fetched, or already in the store). Their
//! concatenation in tar order must hash to the diff_id the config names.
//!
//! The tar-split's file records are matched with the TOC's regular files
//! in order, by normalised name and size; any disagreement means the
//! diff_id cannot be checked this way, and the layer is pulled whole.
//!
//! The rebuilt stream is read as a tar while it is hashed, and its entries
//! are compared with the TOC by the rule a whole read uses
//! (`toc/crosscheck.rs`): the layer's tree is built from the TOC, so the
//! TOC's modes, owners, links, whiteouts and order must be the tar's, or
//! the diff_id would vouch for a tree it does not describe.

use std::collections::HashMap;
use std::io::{self, Read};

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use strata_tree::{split_path, FileData};

use super::fetch::Got;
use super::PartialError;
use crate::layer::archive::{Archive, ArchiveError};
use crate::layer::tar_entry;
use crate::toc::crosscheck::{crosscheck, TarEntry, TarKind};
use crate::toc::{FileContent, Sha256Digest, Toc, TocEntry, TocLimits};

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    payload: Option<String>,
}

const SEGMENT: u8 = 2;
const FILE: u8 = 1;

/// Where the contents' bytes come from.
pub(crate) struct Contents<'a> {
    pub got: &'a HashMap<Sha256Digest, Got>,
    pub open_object: &'a dyn Fn(&strata_tree::Digest) -> Result<std::fs::File, strata_store::StoreError>,
}

/// Rebuilds the layer's uncompressed stream from `tar_split` (NDJSON) and
/// the contents, checks its SHA-256 against `diff_id`, and compares the
/// tar it is with `toc`.
pub(crate) fn check_diff_id(
    tar_split: &[u8],
    toc: &Toc,
    contents: &Contents<'_>,
    diff_id: &str,
    limits: &TocLimits,
) -> Result<(), PartialError> {
    let mut rebuilt = Rebuilt {
        lines: tar_split.split(is_newline as fn(&u8) -> bool).enumerate(),
        files: Box::new(toc.files().filter(|(_, c)| c.size > 0)),
        contents,
        current: Piece::Bytes(Vec::new(), 0),
        failure: None,
        hasher: Sha256::new(),
    };
    let read = read_entries(&mut rebuilt, toc.entries.len(), limits);
    // The rest of the stream, whatever the tar reader made of it: every
    // record is matched with the TOC and hashed. A failure of the rebuild
    // is the one to report, then a TOC file no record named.
    let _ = io::copy(&mut rebuilt, &mut io::sink());
    if let Some(failure) = rebuilt.failure.take() {
        return Err(failure);
    }
    if let Some((entry, _)) = rebuilt.files.next() {
        return Err(unverifiable(format!(
            "the tar-split lacks the TOC's file {:?}",
            entry.path
        )));
    }
    let entries = read?;
    let actual = format!("sha256:{}", hex::encode(rebuilt.hasher.finalize()));
    if actual != diff_id {
        return Err(PartialError::DiffIdMismatch {
            expected: diff_id.to_owned(),
            actual,
        });
    }
    crosscheck(toc, &entries).map_err(|c| PartialError::Contradicts {
        path: c.path,
        detail: c.detail,
    })
}

fn is_newline(b: &u8) -> bool {
    *b == b'\n'
}

fn unverifiable(reason: String) -> PartialError {
    PartialError::DiffId { reason }
}

/// The rebuilt stream's tar entries, as a whole read would take them.
/// More entries than the TOC has cannot agree with it: reading stops there.
fn read_entries(
    rebuilt: &mut Rebuilt<'_>,
    toc_entries: usize,
    limits: &TocLimits,
) -> Result<Vec<TarEntry>, PartialError> {
    let tar_err = |e: ArchiveError| {
        let reason = match e {
            ArchiveError::Io(e) => e.to_string(),
            ArchiveError::Header(reason) => reason,
            ArchiveError::Entry { path, reason } => format!("{:?}: {reason}", String::from_utf8_lossy(&path)),
        };
        unverifiable(format!("the rebuilt stream is no tar the import reads: {reason}"))
    };
    let mut entries = Vec::new();
    let mut archive = Archive::new(rebuilt, limits.max_path_bytes);
    while let Some(header) = archive.next().map_err(tar_err)? {
        if header.typeflag == b'g' {
            continue; // Global PAX headers: ignored, as the import does.
        }
        if entries.len() == toc_entries {
            return Err(PartialError::Contradicts {
                path: String::from_utf8_lossy(&header.path).into_owned(),
                detail: format!("the tar has more entries than the TOC's {toc_entries}"),
            });
        }
        let path = split_path(&header.path, limits.max_depth).ok();
        let mut entry = tar_entry(&header, path, limits.max_depth);
        if let TarKind::File { size, sha256 } = &mut entry.kind {
            let mut hasher = Sha256::new();
            *size = io::copy(&mut archive, &mut HashWriter(&mut hasher)).map_err(|e| tar_err(e.into()))?;
            *sha256 = Sha256Digest(hasher.finalize().into());
        }
        entries.push(entry);
    }
    Ok(entries)
}

struct HashWriter<'h>(&'h mut Sha256);

impl io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the stream gives next: a segment's bytes (and how far they were
/// read), or a content's.
enum Piece {
    Bytes(Vec<u8>, usize),
    Object {
        file: std::fs::File,
        left: u64,
        path: String,
    },
}

/// The tar-split's lines, numbered from 0.
type Lines<'a> = std::iter::Enumerate<std::slice::Split<'a, u8, fn(&u8) -> bool>>;

/// The uncompressed stream, rebuilt record by record as it is read, every
/// byte hashed. A failure is kept (the reader only says that it failed).
struct Rebuilt<'a> {
    lines: Lines<'a>,
    files: Box<dyn Iterator<Item = (&'a TocEntry, &'a FileContent)> + 'a>,
    contents: &'a Contents<'a>,
    current: Piece,
    failure: Option<PartialError>,
    hasher: Sha256,
}

impl Rebuilt<'_> {
    /// The next record's bytes, or `None` at the end of the tar-split.
    fn next_piece(&mut self) -> Result<Option<Piece>, PartialError> {
        for (number, line) in self.lines.by_ref() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let bad = |e: &dyn std::fmt::Display| unverifiable(format!("tar-split line {}: {e}", number + 1));
            let record: Record = serde_json::from_slice(line).map_err(|e| bad(&e))?;
            match record.kind {
                SEGMENT => {
                    let payload = record.payload.unwrap_or_default();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(payload)
                        .map_err(|e| bad(&e))?;
                    return Ok(Some(Piece::Bytes(bytes, 0)));
                }
                FILE if record.size == 0 => {}
                FILE => return self.file_piece(&record).map(Some),
                other => return Err(unverifiable(format!("tar-split record of type {other}"))),
            }
        }
        Ok(None)
    }

    /// The bytes of the TOC's next regular file, which the record must name.
    fn file_piece(&mut self, record: &Record) -> Result<Piece, PartialError> {
        let name = normalise(record.name.as_deref().unwrap_or_default());
        let Some((entry, content)) = self.files.next() else {
            return Err(unverifiable(format!(
                "tar-split names {name:?}, the TOC has no file left"
            )));
        };
        if entry.path != name || content.size != record.size {
            return Err(unverifiable(format!(
                "tar-split names {name:?} ({} bytes) where the TOC has {:?} ({} bytes)",
                record.size, entry.path, content.size
            )));
        }
        let got = self
            .contents
            .got
            .get(&content.digest)
            .ok_or_else(|| PartialError::Missing {
                path: entry.path.clone(),
                digest: content.digest,
            })?;
        match &got.data {
            FileData::Inline(bytes) => Ok(Piece::Bytes(bytes.clone(), 0)),
            FileData::Object { digest, .. } => Ok(Piece::Object {
                file: (self.contents.open_object)(digest)?,
                left: content.size,
                path: entry.path.clone(),
            }),
            FileData::Missing { .. } => Err(unverifiable(format!("{:?} was not fetched", entry.path))),
        }
    }

    fn read_piece(&mut self, buf: &mut [u8]) -> Result<usize, PartialError> {
        loop {
            let n = match &mut self.current {
                Piece::Bytes(bytes, at) => {
                    let n = buf.len().min(bytes.len() - *at);
                    buf[..n].copy_from_slice(&bytes[*at..*at + n]);
                    *at += n;
                    n
                }
                Piece::Object { file, left, path } => {
                    let want = usize::try_from((*left).min(buf.len() as u64)).expect("at most the buffer");
                    let n = file.read(&mut buf[..want]).map_err(|e| PartialError::Answer {
                        reason: format!("reading the object of {path:?}: {e}"),
                    })?;
                    if n == 0 && want > 0 {
                        return Err(unverifiable(format!("the object of {path:?} is short")));
                    }
                    *left -= n as u64;
                    n
                }
            };
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.next_piece()? {
                Some(piece) => self.current = piece,
                None => return Ok(0),
            }
        }
    }
}

impl Read for Rebuilt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the stream could not be rebuilt"));
        }
        match self.read_piece(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                self.failure = Some(e);
                Err(io::Error::other("the stream could not be rebuilt"))
            }
        }
    }
}

/// A tar name as the TOC gives it: no leading `./` or `/`, no empty names.
fn normalise(name: &str) -> String {
    name.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests;

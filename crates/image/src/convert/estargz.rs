//! The eStargz writer, laid out as the Go `estargz` package's writer lays
//! out a layer (its `AppendTarLossLess` and `WriteTOCAndFooter`), see
//! [`crate::toc::estargz`] for the reader:
//!
//! - the tar's own bytes, unchanged, in gzip members: each chunk of a
//!   regular file's data starts a new member; headers, padding and the
//!   entries without data go into the member open at the time;
//! - after the last entry's padding (the original end-of-archive blocks
//!   are dropped), one member holding a tar of `stargz.index.json`, the
//!   TOC, and two zero blocks;
//! - the 51-byte footer naming that member's offset.
//!
//! The uncompressed stream thus gains one tar entry, so the layer's
//! diff_id changes. An input entry named `stargz.index.json` (the layer
//! was eStargz already) is dropped with its data and padding.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::chunks::{ChunkStream, FileChunks};
use super::compress::{BlobWriter, GzipMembers};
use super::toc_json::{EntryMeta, EstargzEntry, TocJson};
use super::walk::{TarEntry, TarSink};
use super::{ConvertError, LayerWriter, Written};
use crate::toc::{estargz as format, Sha256Digest, TocLimits};

/// The uncompressed size, for containerd and for containers/storage.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "containerd.io/snapshot/stargz/uncompressed-size";
pub const STORE_UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

const BLOCK: usize = 512;

/// The gzip stream and what went into it.
struct Stream {
    out: BlobWriter,
    gz: GzipMembers,
    diff: Sha256,
    uncompressed: u64,
}

impl Stream {
    fn emit(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        self.diff.update(bytes);
        self.uncompressed += bytes.len() as u64;
        self.gz.write(&mut self.out, bytes).map_err(write_error)
    }

    fn close_member(&mut self) -> Result<(), ConvertError> {
        self.gz.close(&mut self.out).map_err(write_error)
    }
}

fn write_error(e: std::io::Error) -> ConvertError {
    ConvertError::io("writing the eStargz blob")(e)
}

/// An entry whose TOC entries are written once its data (if a regular
/// file) is in.
struct Pending {
    entry: EstargzEntry,
    chunks: Option<FileChunks>,
}

impl ChunkStream for Stream {
    fn start_chunk(&mut self) -> Result<u64, ConvertError> {
        self.close_member()?;
        Ok(self.out.position())
    }

    fn write(&mut self, piece: &[u8]) -> Result<(), ConvertError> {
        self.emit(piece)
    }

    /// The member stays open for the padding and the headers that follow.
    fn end_chunk(&mut self) -> Result<(), ConvertError> {
        Ok(())
    }
}

pub(super) struct EstargzWriter {
    layer: String,
    stream: Stream,
    toc: TocJson,
    chunk_size: u64,
    pending: Option<Pending>,
    /// Inside an entry that is dropped (an earlier TOC).
    skipping: bool,
    /// The next raw bytes start with a dropped entry's padding.
    drop_padding: bool,
    tail_seen: bool,
}

impl EstargzWriter {
    pub fn new(layer: &str, out: BlobWriter, level: u32, chunk_size: u64, limits: &TocLimits) -> Self {
        EstargzWriter {
            layer: layer.to_owned(),
            stream: Stream {
                out,
                gz: GzipMembers::new(level),
                diff: Sha256::new(),
                uncompressed: 0,
            },
            toc: TocJson::new(limits.max_toc_bytes),
            chunk_size: chunk_size.max(1),
            pending: None,
            skipping: false,
            drop_padding: false,
            tail_seen: false,
        }
    }

    fn entry_error(&self, path: &str, reason: impl ToString) -> ConvertError {
        ConvertError::Entry {
            layer: self.layer.clone(),
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The raw bytes' padding part, unless it belongs to a dropped entry.
    fn padding<'r>(&mut self, raw: &'r [u8], padding: usize) -> (&'r [u8], &'r [u8]) {
        let (pad, rest) = raw.split_at(padding.min(raw.len()));
        if std::mem::take(&mut self.drop_padding) {
            return (&[], rest);
        }
        (pad, rest)
    }

    fn push(&mut self, entry: &EstargzEntry) -> Result<(), ConvertError> {
        self.toc
            .push(entry)
            .map_err(|reason| self.entry_error(&entry.name, reason))
    }
}

/// Whether `path` names the TOC's own tar entry.
fn is_toc_entry(path: &[u8]) -> bool {
    let trimmed = path.strip_prefix(b"./").unwrap_or(path);
    let trimmed = trimmed.strip_prefix(b"/").unwrap_or(trimmed);
    trimmed == format::TOC_TAR_NAME.as_bytes()
}

impl TarSink for EstargzWriter {
    fn begin(&mut self, raw: &[u8], entry: &TarEntry) -> Result<(), ConvertError> {
        let (padding, headers) = self.padding(raw, entry.padding_before);
        self.stream.emit(padding)?;
        let header = &entry.header;
        if is_toc_entry(&header.path) {
            self.skipping = true;
            return Ok(());
        }
        self.stream.emit(headers)?;
        if header.typeflag == b'g' {
            return Ok(()); // A global PAX header stays in the tar; no TOC has it.
        }
        let path = String::from_utf8_lossy(&header.path).into_owned();
        let meta = EntryMeta::from_header(header).map_err(|reason| self.entry_error(&path, reason))?;
        let toc_entry = EstargzEntry::new(meta, header).map_err(|reason| self.entry_error(&path, reason))?;
        let chunks = (toc_entry.kind == "reg").then(|| FileChunks::new(toc_entry.size, self.chunk_size, false));
        self.pending = Some(Pending {
            entry: toc_entry,
            chunks,
        });
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        if self.skipping {
            return Ok(());
        }
        let Some(Pending {
            chunks: Some(chunks), ..
        }) = &mut self.pending
        else {
            return Err(ConvertError::Layer {
                layer: self.layer.clone(),
                reason: "data for a tar entry that is not a regular file".into(),
            });
        };
        chunks.feed(bytes, &mut self.stream)
    }

    fn end(&mut self, _: &TarEntry) -> Result<(), ConvertError> {
        if std::mem::take(&mut self.skipping) {
            self.drop_padding = true;
            return Ok(());
        }
        match self.pending.take() {
            None => Ok(()),
            Some(Pending { entry, chunks: None }) => self.push(&entry),
            Some(Pending {
                mut entry,
                chunks: Some(chunks),
            }) => {
                let Some(file) = chunks.finish() else {
                    return Err(self.entry_error(&entry.name, "its data ended early"));
                };
                entry.digest = Some(file.digest.to_string());
                let name = entry.name.clone();
                for (i, chunk) in file.chunks.iter().enumerate() {
                    let mut e = if i == 0 {
                        std::mem::take(&mut entry)
                    } else {
                        EstargzEntry::chunk(&name)
                    };
                    e.offset = chunk.offset;
                    e.chunk_offset = chunk.file_offset;
                    // As Go's writer: a chunk's size only when it is a full one.
                    e.chunk_size = if chunk.len == self.chunk_size { chunk.len } else { 0 };
                    e.chunk_digest = Some(chunk.digest.to_string());
                    self.push(&e)?;
                }
                if file.chunks.is_empty() {
                    self.push(&entry)?; // An empty file.
                }
                Ok(())
            }
        }
    }

    fn tail(&mut self, raw: &[u8], padding: usize) -> Result<(), ConvertError> {
        if std::mem::replace(&mut self.tail_seen, true) {
            return Ok(()); // After the end-of-archive blocks: dropped.
        }
        let (padding, _end_blocks) = self.padding(raw, padding);
        self.stream.emit(padding)
    }
}

impl LayerWriter for EstargzWriter {
    fn finish(self: Box<Self>) -> Result<Written, ConvertError> {
        let EstargzWriter { mut stream, toc, .. } = *self;
        stream.close_member()?;
        let toc_offset = stream.out.position();
        let json = toc.finish(None);
        let toc_digest = Sha256Digest::of(&json);
        stream.emit(&toc_tar_header(json.len() as u64))?;
        stream.emit(&json)?;
        stream.emit(&[0; 3 * BLOCK][..(BLOCK - json.len() % BLOCK) % BLOCK + 2 * BLOCK])?;
        stream.close_member()?;
        std::io::Write::write_all(&mut stream.out, &footer(toc_offset)).map_err(write_error)?;
        let size = stream.uncompressed.to_string();
        let annotations = BTreeMap::from([
            (format::TOC_DIGEST_ANNOTATION.to_owned(), toc_digest.to_string()),
            (UNCOMPRESSED_SIZE_ANNOTATION.to_owned(), size.clone()),
            (STORE_UNCOMPRESSED_SIZE_ANNOTATION.to_owned(), size),
        ]);
        Ok(Written {
            out: stream.out,
            annotations,
            diff_id: Sha256Digest(stream.diff.finalize().into()),
        })
    }
}

/// A USTAR header for `stargz.index.json` of `size` bytes: a regular
/// file, mode 0644, owned by 0:0, mtime 0.
fn toc_tar_header(size: u64) -> [u8; BLOCK] {
    let mut block = [0u8; BLOCK];
    let name = format::TOC_TAR_NAME.as_bytes();
    block[..name.len()].copy_from_slice(name);
    let mut octal = |at: usize, width: usize, value: u64| {
        let text = format!("{value:0w$o}", w = width - 1);
        block[at..at + width - 1].copy_from_slice(text.as_bytes());
    };
    octal(100, 8, 0o644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, size);
    octal(136, 12, 0);
    octal(329, 8, 0);
    octal(337, 8, 0);
    block[156] = b'0';
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    block
}

/// The 51-byte footer: an empty gzip member whose extra field is the
/// subfield `SG` holding `%016x` of the TOC member's offset and `STARGZ`.
fn footer(toc_offset: u64) -> [u8; 51] {
    let mut footer = [0u8; 51];
    footer[..10].copy_from_slice(&[0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff]);
    footer[10..16].copy_from_slice(&[26, 0, b'S', b'G', 22, 0]);
    footer[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    footer[38..43].copy_from_slice(&[1, 0, 0, 0xff, 0xff]);
    footer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_reads_back() {
        let parsed = format::parse_footer(&footer(0x1234_5678_9abc)).unwrap();
        assert_eq!(parsed.toc_offset, 0x1234_5678_9abc);
        assert_eq!(parsed.size, format::FOOTER_SIZE);
    }

    #[test]
    fn toc_header_is_a_valid_tar_header() {
        let mut tar = toc_tar_header(3).to_vec();
        tar.extend_from_slice(b"abc");
        tar.resize(3 * BLOCK + 2 * BLOCK, 0);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entries = archive.entries().unwrap();
        let entry = entries.next().unwrap().unwrap();
        assert_eq!(&*entry.path().unwrap(), std::path::Path::new("stargz.index.json"));
        assert_eq!(entry.header().size().unwrap(), 3);
        assert_eq!(entry.header().mode().unwrap(), 0o644);
        assert!(entries.next().is_none());
    }

    #[test]
    fn only_the_toc_entry_is_dropped() {
        assert!(is_toc_entry(b"stargz.index.json"));
        assert!(is_toc_entry(b"./stargz.index.json"));
        assert!(!is_toc_entry(b"etc/stargz.index.json"));
        assert!(!is_toc_entry(b".prefetch.landmark"));
    }
}

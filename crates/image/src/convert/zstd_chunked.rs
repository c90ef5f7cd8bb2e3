//! The zstd:chunked writer, laid out as containers/storage's
//! `pkg/chunked/compressor` lays out a layer (the format of
//! containers/storage 1.50 and later), see [`crate::toc::zstd_chunked`]
//! for the reader:
//!
//! - the tar's own bytes, every one of them (padding and end-of-archive
//!   blocks included, so the diff_id stays), in zstd frames: each chunk of
//!   a regular file's data is a frame of its own; headers, padding and
//!   entries without data share the frames between;
//! - a skippable frame with the TOC, zstd-compressed; its entries carry
//!   `tarSplitDigest`, the digest of the next frame's contents;
//! - a skippable frame with the tar-split, zstd-compressed;
//! - the 64-byte footer in a skippable frame.
//!
//! The layer's annotations give the TOC's checksum and position and the
//! tar-split's position.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;

use sha2::{Digest as _, Sha256};
use strata_tree::split_path;

use super::chunks::{ChunkStream, FileChunks};
use super::compress::{BlobWriter, ZstdFrames};
use super::tar_split::TarSplitWriter;
use super::toc_json::{EntryMeta, TocJson, ZstdEntry};
use super::walk::{TarEntry, TarSink};
use super::{ConvertError, LayerWriter, Written};
use crate::toc::{zstd_chunked as format, Sha256Digest, TocLimits};

const SKIPPABLE_FRAME_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const FOOTER_MAGIC: &[u8; 8] = b"GNUlInUx";
const MANIFEST_TYPE_CRFS: u64 = 1;

struct Stream {
    out: BlobWriter,
    frames: ZstdFrames,
    diff: Sha256,
    uncompressed: u64,
}

impl Stream {
    fn emit(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        self.diff.update(bytes);
        self.uncompressed += bytes.len() as u64;
        self.frames.write(&mut self.out, bytes).map_err(write_error)
    }

    /// Ends the open frame; where the next one starts.
    fn close_frame(&mut self) -> Result<u64, ConvertError> {
        self.frames.close(&mut self.out).map_err(write_error)?;
        Ok(self.out.position())
    }

    fn skippable_frame(&mut self, len: u64) -> Result<u64, ConvertError> {
        let len32 = u32::try_from(len).map_err(|_| ConvertError::Io {
            what: "writing the zstd:chunked blob".into(),
            source: std::io::Error::other(format!("a skippable frame of {len} bytes is over 4 GiB")),
        })?;
        self.out.write_all(&SKIPPABLE_FRAME_MAGIC).map_err(write_error)?;
        self.out.write_all(&len32.to_le_bytes()).map_err(write_error)?;
        Ok(self.out.position())
    }
}

fn write_error(e: std::io::Error) -> ConvertError {
    ConvertError::io("writing the zstd:chunked blob")(e)
}

struct Pending {
    entry: ZstdEntry,
    chunks: Option<FileChunks>,
}

impl ChunkStream for Stream {
    fn start_chunk(&mut self) -> Result<u64, ConvertError> {
        self.close_frame()
    }

    fn write(&mut self, piece: &[u8]) -> Result<(), ConvertError> {
        self.emit(piece)
    }

    /// Each chunk is frames of its own.
    fn end_chunk(&mut self) -> Result<(), ConvertError> {
        self.close_frame().map(drop)
    }
}

pub(super) struct ZstdChunkedWriter {
    layer: String,
    stream: Stream,
    toc: TocJson,
    tar_split: TarSplitWriter,
    chunk_size: u64,
    level: i32,
    limits: TocLimits,
    /// Normalised paths seen: a zstd:chunked TOC names each once.
    seen: HashSet<String>,
    pending: Option<Pending>,
}

impl ZstdChunkedWriter {
    pub fn new(
        layer: &str,
        out: BlobWriter,
        tar_split_file: std::fs::File,
        level: i32,
        chunk_size: u64,
        limits: &TocLimits,
    ) -> Result<Self, ConvertError> {
        let setup = ConvertError::io("starting the zstd:chunked writer");
        let frames = ZstdFrames::new(level).map_err(setup)?;
        let tar_split = TarSplitWriter::new(tar_split_file, level)
            .map_err(ConvertError::io("starting the zstd:chunked tar-split"))?;
        Ok(ZstdChunkedWriter {
            layer: layer.to_owned(),
            stream: Stream {
                out,
                frames,
                diff: Sha256::new(),
                uncompressed: 0,
            },
            toc: TocJson::new(limits.max_toc_bytes),
            tar_split,
            chunk_size: chunk_size.max(1),
            level,
            limits: limits.clone(),
            seen: HashSet::new(),
            pending: None,
        })
    }

    fn entry_error(&self, path: &str, reason: impl ToString) -> ConvertError {
        ConvertError::Entry {
            layer: self.layer.clone(),
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }

    fn push(&mut self, entry: &ZstdEntry) -> Result<(), ConvertError> {
        self.toc
            .push(entry)
            .map_err(|reason| self.entry_error(&entry.name, reason))
    }

    fn split_error(e: std::io::Error) -> ConvertError {
        ConvertError::io("writing the zstd:chunked tar-split")(e)
    }
}

impl TarSink for ZstdChunkedWriter {
    fn begin(&mut self, raw: &[u8], entry: &TarEntry) -> Result<(), ConvertError> {
        let header = &entry.header;
        let path = String::from_utf8_lossy(&header.path).into_owned();
        if header.typeflag == b'g' {
            return Err(self.entry_error(
                &path,
                "a global PAX header, which zstd:chunked's TOC and tar-split cannot hold",
            ));
        }
        let names = split_path(&header.path, self.limits.max_depth).map_err(|e| self.entry_error(&path, e))?;
        if !self
            .seen
            .insert(String::from_utf8_lossy(&names.join(&b'/')).into_owned())
        {
            return Err(self.entry_error(&path, "named twice in the layer, which a zstd:chunked TOC cannot hold"));
        }
        let meta = EntryMeta::from_header(header).map_err(|reason| self.entry_error(&path, reason))?;
        let toc_entry = ZstdEntry::new(meta, header).map_err(|reason| self.entry_error(&path, reason))?;
        self.stream.emit(raw)?;
        self.tar_split.segment(raw).map_err(Self::split_error)?;
        let chunks = (toc_entry.kind == "reg").then(|| FileChunks::new(toc_entry.size, self.chunk_size, true));
        self.pending = Some(Pending {
            entry: toc_entry,
            chunks,
        });
        Ok(())
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
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
        let Some(Pending { mut entry, chunks }) = self.pending.take() else {
            return Ok(());
        };
        let Some(chunks) = chunks else {
            self.tar_split.file(&entry.name, 0, None).map_err(Self::split_error)?;
            return self.push(&entry);
        };
        let Some(file) = chunks.finish() else {
            return Err(self.entry_error(&entry.name, "its data ended early"));
        };
        self.tar_split
            .file(&entry.name, entry.size, file.crc.filter(|_| entry.size > 0))
            .map_err(Self::split_error)?;
        let Some(first) = file.chunks.first() else {
            return self.push(&entry); // An empty file: no digest, no offsets.
        };
        entry.digest = Some(file.digest.to_string());
        entry.offset = first.offset;
        entry.end_offset = self.stream.out.position();
        if file.chunks.len() == 1 {
            return self.push(&entry);
        }
        let name = entry.name.clone();
        for (i, chunk) in file.chunks.iter().enumerate() {
            let mut e = if i == 0 {
                std::mem::take(&mut entry)
            } else {
                ZstdEntry::chunk(&name)
            };
            e.offset = chunk.offset;
            e.chunk_offset = chunk.file_offset;
            e.chunk_size = chunk.len;
            e.chunk_digest = Some(chunk.digest.to_string());
            self.push(&e)?;
        }
        Ok(())
    }

    fn tail(&mut self, raw: &[u8], _padding: usize) -> Result<(), ConvertError> {
        if raw.is_empty() {
            return Ok(());
        }
        self.stream.emit(raw)?;
        self.tar_split.segment(raw).map_err(Self::split_error)
    }
}

impl LayerWriter for ZstdChunkedWriter {
    fn finish(self: Box<Self>) -> Result<Written, ConvertError> {
        let ZstdChunkedWriter {
            layer,
            mut stream,
            toc,
            tar_split,
            level,
            limits,
            ..
        } = *self;
        stream.close_frame()?;
        let mut split = tar_split.finish().map_err(Self::split_error)?;
        let too_large = |what: &str, size: u64| ConvertError::Layer {
            layer: layer.clone(),
            reason: format!(
                "its {what} of {size} bytes passes {} bytes, the most zstd:chunked readers take",
                limits.max_toc_bytes
            ),
        };
        for (what, size) in [
            ("tar-split", split.uncompressed_len),
            ("compressed tar-split", split.compressed_len),
        ] {
            if size > limits.max_toc_bytes {
                return Err(too_large(what, size));
            }
        }
        let json = toc.finish(Some(&split.digest));
        let manifest = zstd::bulk::compress(&json, level).map_err(ConvertError::io("compressing the TOC"))?;
        let manifest_offset = stream.skippable_frame(manifest.len() as u64)?;
        stream.out.write_all(&manifest).map_err(write_error)?;
        let split_offset = stream.skippable_frame(split.compressed_len)?;
        split.copy_to(&mut stream.out).map_err(write_error)?;
        let fields = [
            manifest_offset,
            manifest.len() as u64,
            json.len() as u64,
            MANIFEST_TYPE_CRFS,
            split_offset,
            split.compressed_len,
            split.uncompressed_len,
        ];
        stream.skippable_frame(64)?;
        for field in fields {
            stream.out.write_all(&field.to_le_bytes()).map_err(write_error)?;
        }
        stream.out.write_all(FOOTER_MAGIC).map_err(write_error)?;
        let annotations = BTreeMap::from([
            (
                format::MANIFEST_CHECKSUM.to_owned(),
                Sha256Digest::of(&manifest).to_string(),
            ),
            (
                format::MANIFEST_POSITION.to_owned(),
                format!(
                    "{manifest_offset}:{}:{}:{MANIFEST_TYPE_CRFS}",
                    manifest.len(),
                    json.len()
                ),
            ),
            (
                format::TAR_SPLIT_POSITION.to_owned(),
                format!("{split_offset}:{}:{}", split.compressed_len, split.uncompressed_len),
            ),
        ]);
        Ok(Written {
            out: stream.out,
            annotations,
            diff_id: Sha256Digest(stream.diff.finalize().into()),
        })
    }
}

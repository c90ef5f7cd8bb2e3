//! Plain gzip and zstd layers: the tar recompressed as one stream, with
//! no index. They keep the diff_id, and give the TOC formats a baseline
//! to be measured against.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::compress::{BlobWriter, GzipMembers, ZstdFrames};
use super::walk::{TarEntry, TarSink};
use super::{ConvertError, LayerWriter, Written};
use crate::toc::Sha256Digest;

enum Encoder {
    Gzip(GzipMembers),
    Zstd(ZstdFrames),
}

pub(super) struct PlainWriter {
    out: BlobWriter,
    encoder: Encoder,
    diff: Sha256,
}

impl PlainWriter {
    pub fn gzip(out: BlobWriter, level: u32) -> Self {
        Self::new(out, Encoder::Gzip(GzipMembers::new(level)))
    }

    pub fn zstd(out: BlobWriter, level: i32) -> Result<Self, ConvertError> {
        let frames = ZstdFrames::new(level).map_err(ConvertError::io("starting the zstd writer"))?;
        Ok(Self::new(out, Encoder::Zstd(frames)))
    }

    fn new(out: BlobWriter, encoder: Encoder) -> Self {
        PlainWriter {
            out,
            encoder,
            diff: Sha256::new(),
        }
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        self.diff.update(bytes);
        match &mut self.encoder {
            Encoder::Gzip(gz) => gz.write(&mut self.out, bytes),
            Encoder::Zstd(frames) => frames.write(&mut self.out, bytes),
        }
        .map_err(ConvertError::io("writing the layer blob"))
    }
}

impl TarSink for PlainWriter {
    fn begin(&mut self, raw: &[u8], _: &TarEntry) -> Result<(), ConvertError> {
        self.emit(raw)
    }

    fn data(&mut self, bytes: &[u8]) -> Result<(), ConvertError> {
        self.emit(bytes)
    }

    fn end(&mut self, _: &TarEntry) -> Result<(), ConvertError> {
        Ok(())
    }

    fn tail(&mut self, raw: &[u8], _: usize) -> Result<(), ConvertError> {
        self.emit(raw)
    }
}

impl LayerWriter for PlainWriter {
    fn finish(self: Box<Self>) -> Result<Written, ConvertError> {
        let PlainWriter {
            mut out,
            mut encoder,
            diff,
        } = *self;
        // Even an empty stream is one member or frame.
        match &mut encoder {
            Encoder::Gzip(gz) => gz.write(&mut out, &[]).and_then(|()| gz.close(&mut out)),
            Encoder::Zstd(frames) => frames.write(&mut out, &[]).and_then(|()| frames.close(&mut out)),
        }
        .map_err(ConvertError::io("writing the layer blob"))?;
        Ok(Written {
            out,
            annotations: BTreeMap::new(),
            diff_id: Sha256Digest(diff.finalize().into()),
        })
    }
}

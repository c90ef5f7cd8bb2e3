//! A chunk's bytes from its compressed range, checked against its digest.

use std::io::Read;

use super::{Chunk, Sha256Digest, TocError, TocFormat};

/// Decompresses `compressed` (the blob's bytes at `chunk.compressed`) into
/// the chunk's `chunk.size` bytes, skipping `chunk.inner_offset` first. The
/// chunk's digest, where the TOC gives one, is checked; the file's digest
/// is the caller's to check once it has every chunk. Memory grows only with
/// the bytes that actually come out, never past `chunk.size`.
pub fn decompress_chunk(format: TocFormat, compressed: &[u8], chunk: &Chunk) -> Result<Vec<u8>, TocError> {
    let what = "a file's chunk";
    let decompress = |source| TocError::Decompress { what, source };
    let mut stream: Box<dyn Read + '_> = match format {
        // One gzip member: what follows it belongs to other files.
        TocFormat::Estargz => Box::new(flate2::bufread::GzDecoder::new(compressed)),
        TocFormat::ZstdChunked => Box::new(zstd::stream::read::Decoder::with_buffer(compressed).map_err(decompress)?),
    };
    let skipped =
        std::io::copy(&mut (&mut stream).take(chunk.inner_offset), &mut std::io::sink()).map_err(decompress)?;
    let mut data = Vec::new();
    stream.take(chunk.size).read_to_end(&mut data).map_err(decompress)?;
    if skipped != chunk.inner_offset || data.len() as u64 != chunk.size {
        return Err(TocError::LengthMismatch {
            what,
            announced: chunk.inner_offset.saturating_add(chunk.size),
            actual: skipped + data.len() as u64,
        });
    }
    if let Some(expected) = chunk.digest {
        let actual = Sha256Digest::of(&data);
        if actual != expected {
            return Err(TocError::DigestMismatch {
                what: "a file's chunk",
                expected,
                actual,
            });
        }
    }
    Ok(data)
}

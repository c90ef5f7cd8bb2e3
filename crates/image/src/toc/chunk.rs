//! A chunk's bytes from its compressed range, checked against its digest.

use std::io::Read;

use super::{Chunk, Sha256Digest, TocError, TocFormat};

/// Decompresses chunks one after another, keeping a zstd context between
/// them (creating one per chunk was about a twentieth of a zstd:chunked
/// partial pull's CPU time). Each chunk still starts from a fresh session.
pub struct ChunkDecoder {
    format: TocFormat,
    zstd: Option<zstd::zstd_safe::DCtx<'static>>,
}

impl ChunkDecoder {
    pub fn new(format: TocFormat) -> ChunkDecoder {
        ChunkDecoder { format, zstd: None }
    }

    /// Decompresses `compressed` (the blob's bytes at `chunk.compressed`)
    /// into the chunk's `chunk.size` bytes, skipping `chunk.inner_offset`
    /// first. The chunk's digest, where the TOC gives one, is checked; the
    /// file's digest is the caller's to check once it has every chunk.
    /// Memory grows only with the bytes that actually come out, never past
    /// `chunk.size`.
    pub fn decompress(&mut self, compressed: &[u8], chunk: &Chunk) -> Result<Vec<u8>, TocError> {
        let stream: Box<dyn Read + '_> = match self.format {
            // One gzip member: what follows it belongs to other files.
            TocFormat::Estargz => Box::new(flate2::bufread::GzDecoder::new(compressed)),
            TocFormat::ZstdChunked => {
                let context = self.zstd.get_or_insert_with(zstd::zstd_safe::DCtx::create);
                // The context's session is reset first.
                Box::new(zstd::stream::read::Decoder::with_context(compressed, context))
            }
        };
        read_chunk(stream, chunk)
    }
}

/// [`ChunkDecoder::decompress`] with a decoder of its own.
pub fn decompress_chunk(format: TocFormat, compressed: &[u8], chunk: &Chunk) -> Result<Vec<u8>, TocError> {
    ChunkDecoder::new(format).decompress(compressed, chunk)
}

fn read_chunk(mut stream: Box<dyn Read + '_>, chunk: &Chunk) -> Result<Vec<u8>, TocError> {
    let what = "a file's chunk";
    let decompress = |source| TocError::Decompress { what, source };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toc::ByteRange;

    fn chunk_of(compressed: &[u8], size: u64, digest: Option<Sha256Digest>) -> Chunk {
        Chunk {
            file_offset: 0,
            size,
            compressed: ByteRange {
                start: 0,
                end: compressed.len() as u64,
            },
            inner_offset: 0,
            digest,
            zeros: false,
        }
    }

    /// One decoder across chunks: a chunk cut short or lying about its
    /// digest fails alone, and the next chunk decodes from a fresh session.
    #[test]
    fn a_reused_decoder_starts_each_chunk_afresh() {
        let a = vec![b'a'; 100_000];
        let b: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let (za, zb) = (
            zstd::encode_all(&a[..], 3).unwrap(),
            zstd::encode_all(&b[..], 3).unwrap(),
        );
        let mut decoder = ChunkDecoder::new(TocFormat::ZstdChunked);
        let chunk_a = chunk_of(&za, a.len() as u64, Some(Sha256Digest::of(&a)));
        let chunk_b = chunk_of(&zb, b.len() as u64, Some(Sha256Digest::of(&b)));
        assert_eq!(decoder.decompress(&za, &chunk_a).unwrap(), a);
        // Cut short: the frame is left half decoded in the context.
        let cut = &zb[..zb.len() / 2];
        assert!(decoder.decompress(cut, &chunk_of(cut, b.len() as u64, None)).is_err());
        assert_eq!(decoder.decompress(&zb, &chunk_b).unwrap(), b);
        // Another chunk's digest: refused, then the next one is fine.
        let lying = chunk_of(&za, a.len() as u64, Some(Sha256Digest::of(&b)));
        assert!(matches!(
            decoder.decompress(&za, &lying),
            Err(TocError::DigestMismatch { .. })
        ));
        assert_eq!(decoder.decompress(&zb, &chunk_b).unwrap(), b);
        assert_eq!(decompress_chunk(TocFormat::ZstdChunked, &za, &chunk_a).unwrap(), a);
    }
}

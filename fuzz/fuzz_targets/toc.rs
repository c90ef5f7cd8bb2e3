//! Tables of contents from untrusted layers: footers, zstd:chunked
//! annotations and TOC JSON (past its digest check) parse and validate
//! cleanly or fail cleanly; a chunk decompresses within its bounds.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use strata_image::toc::{self, estargz, zstd_chunked, Chunk, Sha256Digest, TocFormat, TocLimits};

fuzz_target!(|data: &[u8]| {
    let limits = TocLimits {
        max_toc_bytes: 1 << 20,
        max_entries: 10_000,
        max_depth: 64,
        max_path_bytes: 4096,
        max_inflate_bytes: 1 << 30,
    };
    let digest = Sha256Digest::of(data);
    for format in [TocFormat::Estargz, TocFormat::ZstdChunked] {
        if let Ok(parsed) = toc::parse_json(format, data, digest, u64::MAX / 2, &limits) {
            // Every chunk a valid TOC names decompresses from any bytes
            // without growing past its announced size.
            for (_, content) in parsed.files().take(4) {
                for chunk in content.chunks.iter().take(4) {
                    let bounded = Chunk {
                        size: chunk.size.min(1 << 16),
                        ..chunk.clone()
                    };
                    let _ = toc::decompress_chunk(format, data, &bounded);
                }
            }
        }
    }
    let _ = estargz::parse_footer(data);
    let _ = zstd_chunked::parse_footer(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let mut annotations = BTreeMap::new();
        for line in text.lines().take(8) {
            if let Some((key, value)) = line.split_once('=') {
                annotations.insert(key.to_owned(), value.to_owned());
            }
        }
        let _ = zstd_chunked::annotations(&annotations);
        let _ = estargz::toc_digest(&annotations);
    }
});

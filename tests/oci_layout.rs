//! Reading OCI layouts in tests without strata's own code: index, manifest
//! and config by tag, a layer's uncompressed stream, and a converted
//! layer's table of contents with each file read back through its chunks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use strata_image::toc::{self, Sha256Digest, Toc, TocFormat, TocLimits};

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The manifest and config of `tag` in `layout`.
pub fn image(layout: &Path, tag: &str) -> (Value, Value) {
    let index = read_json(&layout.join("index.json"));
    let found = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("{tag} is not in {}", layout.display()));
    let manifest = read_json(&blob_path(layout, found["digest"].as_str().unwrap()));
    let config = read_json(&blob_path(layout, manifest["config"]["digest"].as_str().unwrap()));
    (manifest, config)
}

pub fn layers(manifest: &Value) -> &Vec<Value> {
    manifest["layers"].as_array().unwrap()
}

pub fn annotations(layer: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(layer["annotations"].clone()).unwrap_or_default()
}

/// A layer's uncompressed stream.
pub fn layer_stream(layout: &Path, layer: &Value) -> Box<dyn Read> {
    let file = io::BufReader::new(File::open(blob_path(layout, layer["digest"].as_str().unwrap())).unwrap());
    let media_type = layer["mediaType"].as_str().unwrap();
    if media_type.ends_with("+gzip") {
        Box::new(flate2::bufread::MultiGzDecoder::new(file))
    } else if media_type.ends_with("+zstd") {
        Box::new(zstd::stream::read::Decoder::with_buffer(file).unwrap())
    } else {
        Box::new(file)
    }
}

/// A tar path as the TOC reader gives it: no leading `/` or `./`, no `..`.
pub fn normalise(raw: &[u8]) -> String {
    String::from_utf8(strata_tree::split_path(raw, 4096).unwrap().join(&b'/')).unwrap()
}

/// A converted layer's TOC, checked against its annotated digest; for
/// zstd:chunked also whether it has a tar-split (read and checked too).
pub fn read_toc(format: TocFormat, layout: &Path, layer: &Value) -> (Toc, bool) {
    let annotations = annotations(layer);
    let blob = File::open(blob_path(layout, layer["digest"].as_str().unwrap())).unwrap();
    let size = layer["size"].as_u64().unwrap();
    let limits = TocLimits::default();
    match format {
        TocFormat::Estargz => {
            let digest = toc::estargz::toc_digest(&annotations).unwrap();
            (toc::estargz::read_toc(&blob, size, &digest, &limits).unwrap(), false)
        }
        TocFormat::ZstdChunked => {
            let found = toc::zstd_chunked::annotations(&annotations)
                .unwrap()
                .expect("zstd:chunked annotations");
            let read = toc::zstd_chunked::read_toc(&blob, size, &found, &limits).unwrap();
            if let Some(tar_split) = &read.tar_split {
                toc::zstd_chunked::read_tar_split(&blob, size, tar_split, &limits).unwrap();
            }
            let has_tar_split = read.tar_split.is_some();
            (read.toc, has_tar_split)
        }
    }
}

/// Whether a zstd:chunked layer uses the older `io.containers.*` keys.
pub fn legacy_zstd_keys(layer: &Value) -> bool {
    toc::zstd_chunked::annotations(&annotations(layer))
        .unwrap()
        .expect("zstd:chunked annotations")
        .legacy_keys
}

/// A file's SHA-256, from its chunks' compressed ranges in the blob.
pub fn digest_through_toc(blob: &File, format: TocFormat, content: &toc::FileContent) -> Sha256Digest {
    use toc::RangeReader as _;
    let mut hasher = Sha256::new();
    for chunk in &content.chunks {
        let compressed = blob.read_range(chunk.compressed.start, chunk.compressed.len()).unwrap();
        hasher.update(toc::decompress_chunk(format, &compressed, chunk).unwrap());
    }
    Sha256Digest(hasher.finalize().into())
}

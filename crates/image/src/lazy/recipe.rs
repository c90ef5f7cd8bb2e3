//! How to fetch one content of a lazily pulled image later: the row a lazy
//! pull keeps in the store per missing SHA-256 (`lazy_contents`), as JSON.

use serde::{Deserialize, Serialize};

use crate::toc::{ByteRange, Chunk, Sha256Digest, TocFormat};
use crate::Descriptor;

/// A recipe row is refused past this many bytes (a file of many chunks
/// still takes far less).
pub const MAX_RECIPE_BYTES: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    /// The reference the image was pulled from (`HOST/REPO:TAG`,
    /// `oci:DIR:TAG`); blobs are read from its repository by digest.
    pub source: String,
    pub layer_digest: String,
    pub layer_size: u64,
    pub layer_media_type: String,
    /// `estargz` or `zstd:chunked`.
    pub format: String,
    /// The content's size.
    pub size: u64,
    pub chunks: Vec<RecipeChunk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeChunk {
    pub file_offset: u64,
    pub size: u64,
    pub start: u64,
    pub end: u64,
    pub inner_offset: u64,
    /// The chunk's SHA-256 (hex), where the TOC gives one.
    pub digest: Option<String>,
    pub zeros: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("lazy recipe: {0}")]
pub struct RecipeError(pub String);

impl Recipe {
    pub fn new(source: &str, desc: &Descriptor, format: TocFormat, size: u64, chunks: &[Chunk]) -> Self {
        Recipe {
            source: source.to_owned(),
            layer_digest: desc.digest.clone(),
            layer_size: desc.size,
            layer_media_type: desc.media_type.clone(),
            format: match format {
                TocFormat::Estargz => "estargz",
                TocFormat::ZstdChunked => "zstd:chunked",
            }
            .to_owned(),
            size,
            chunks: chunks
                .iter()
                .map(|c| RecipeChunk {
                    file_offset: c.file_offset,
                    size: c.size,
                    start: c.compressed.start,
                    end: c.compressed.end,
                    inner_offset: c.inner_offset,
                    digest: c.digest.map(|d| hex::encode(d.0)),
                    zeros: c.zeros,
                })
                .collect(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a recipe serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecipeError> {
        if bytes.len() > MAX_RECIPE_BYTES {
            return Err(RecipeError(format!("{} bytes, over {MAX_RECIPE_BYTES}", bytes.len())));
        }
        serde_json::from_slice(bytes).map_err(|e| RecipeError(e.to_string()))
    }

    pub fn format(&self) -> Result<TocFormat, RecipeError> {
        match self.format.as_str() {
            "estargz" => Ok(TocFormat::Estargz),
            "zstd:chunked" => Ok(TocFormat::ZstdChunked),
            other => Err(RecipeError(format!("unknown format {other:?}"))),
        }
    }

    /// The layer's descriptor, as `read_ranges` needs it.
    pub fn layer(&self) -> Descriptor {
        Descriptor {
            media_type: self.layer_media_type.clone(),
            digest: self.layer_digest.clone(),
            size: self.layer_size,
            platform: None,
            annotations: Default::default(),
        }
    }

    /// The chunks, checked: non-empty ranges within the layer, sizes
    /// that add up to the content's.
    pub fn chunks(&self) -> Result<Vec<Chunk>, RecipeError> {
        let mut out = Vec::with_capacity(self.chunks.len());
        let mut total = 0u64;
        for c in &self.chunks {
            if !c.zeros && (c.start >= c.end || c.end > self.layer_size) {
                return Err(RecipeError(format!("range {}..{} outside the layer", c.start, c.end)));
            }
            let digest = match &c.digest {
                Some(text) => {
                    let mut bytes = [0u8; 32];
                    hex::decode_to_slice(text, &mut bytes).map_err(|e| RecipeError(e.to_string()))?;
                    Some(Sha256Digest(bytes))
                }
                None => None,
            };
            total = total.saturating_add(c.size);
            out.push(Chunk {
                file_offset: c.file_offset,
                size: c.size,
                compressed: ByteRange {
                    start: c.start,
                    end: c.end.max(c.start + 1),
                },
                inner_offset: c.inner_offset,
                digest,
                zeros: c.zeros,
            });
        }
        if total != self.size {
            return Err(RecipeError(format!(
                "chunks hold {total} bytes, the content {}",
                self.size
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size: 1000,
            platform: None,
            annotations: Default::default(),
        }
    }

    fn chunk(start: u64, end: u64, size: u64, file_offset: u64) -> Chunk {
        Chunk {
            file_offset,
            size,
            compressed: ByteRange { start, end },
            inner_offset: 0,
            digest: Some(Sha256Digest([7; 32])),
            zeros: false,
        }
    }

    #[test]
    fn a_recipe_round_trips_and_checks_its_chunks() {
        let chunks = [chunk(10, 20, 100, 0), chunk(20, 40, 50, 100)];
        for format in [TocFormat::Estargz, TocFormat::ZstdChunked] {
            let recipe = Recipe::new("127.0.0.1:5000/x/y:t", &desc(), format, 150, &chunks);
            let back = Recipe::decode(&recipe.encode()).unwrap();
            assert_eq!(back, recipe);
            assert_eq!(back.format().unwrap(), format);
            assert_eq!(back.chunks().unwrap(), chunks);
            assert_eq!(back.layer().digest, desc().digest);
        }
        let short = Recipe::new("s", &desc(), TocFormat::Estargz, 151, &chunks);
        assert!(short.chunks().is_err(), "sizes must add up");
        let outside = Recipe::new("s", &desc(), TocFormat::Estargz, 100, &[chunk(990, 1001, 100, 0)]);
        assert!(outside.chunks().is_err(), "a range past the layer");
        assert!(Recipe::decode(&vec![b' '; MAX_RECIPE_BYTES + 1]).is_err());
        assert!(Recipe::decode(b"{").is_err());
    }
}

//! The batch plan of prefetch, pure: from missing contents in prefetch
//! order and their recipes, which contents are fetched together and which
//! byte ranges each batch asks for.
//!
//! - A batch holds contents of one layer (one source, one blob), taken in
//!   prefetch order: the first content not yet planned opens its layer's
//!   batch, and the next contents of that layer join it until it holds
//!   [`BatchLimits::bytes`] of compressed ranges or
//!   [`BatchLimits::contents`] contents. Contents of other layers do not
//!   close it, so interleaved layers still give full batches.
//! - A content larger than the limit gets a batch of its own (fetched call
//!   after call and streamed into its object).
//! - A batch's ranges are merged across gaps of at most [`MERGE_GAP`] and
//!   split into calls of about [`CALL_BYTES`](crate::partial::plan::CALL_BYTES), as a partial pull's are.

use std::collections::HashMap;

use strata_tree::Digest;

use crate::lazy::recipe::{Recipe, RecipeError};
use crate::partial::plan::{calls as split_calls, merge, MERGE_GAP};
use crate::toc::{ByteRange, Chunk, TocFormat};
use crate::Descriptor;

/// How large a batch may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Compressed bytes of the contents' own ranges (gaps not counted).
    pub bytes: u64,
    /// Contents.
    pub contents: usize,
}

/// Compressed bytes per batch without a bandwidth: small enough that an
/// open waiting for a batch that holds its file waits well under a second
/// (a local registry, a debug build), large enough that a batch's one
/// `syncfs` and one transaction are spread over hundreds of contents.
pub const BATCH_BYTES: u64 = 4 << 20;
/// Contents per batch.
pub const BATCH_CONTENTS: usize = 512;
/// The smallest batch a bandwidth gives (in compressed bytes).
const MIN_BATCH_BYTES: u64 = 64 << 10;

impl BatchLimits {
    /// The limits for a bandwidth (compressed bytes per second; 0:
    /// unlimited). A batch is taken from the bucket whole before it is
    /// fetched, so with a bandwidth a batch holds about one second's bytes.
    pub fn for_bandwidth(bandwidth: u64) -> Self {
        let bytes = match bandwidth {
            0 => BATCH_BYTES,
            rate => rate.clamp(MIN_BATCH_BYTES, BATCH_BYTES),
        };
        BatchLimits {
            bytes,
            contents: BATCH_CONTENTS,
        }
    }
}

/// One content of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Its SHA-256 (its name in LAZY and ALIASES).
    pub name: Digest,
    pub size: u64,
    /// Its chunks, in file order.
    pub chunks: Vec<Chunk>,
}

impl Wanted {
    /// Compressed bytes of its own ranges (zero chunks need none).
    pub fn compressed(&self) -> u64 {
        self.chunks
            .iter()
            .filter(|c| !c.zeros)
            .map(|c| c.compressed.len())
            .sum()
    }
}

/// Contents of one layer fetched together and published together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The reference the recipes name (`HOST/REPO:TAG`, `oci:DIR:TAG`).
    pub source: String,
    pub layer: Descriptor,
    pub format: TocFormat,
    pub contents: Vec<Wanted>,
    /// Each call's ranges: sorted, disjoint, merged.
    pub calls: Vec<Vec<ByteRange>>,
}

impl Batch {
    /// Bytes the calls ask for (gaps included): what a bandwidth charges.
    pub fn request_bytes(&self) -> u64 {
        self.calls.iter().flatten().map(ByteRange::len).sum()
    }
}

/// A content whose recipe cannot be planned (not fetched).
#[derive(Debug)]
pub struct Unplanned {
    pub name: Digest,
    pub error: RecipeError,
}

/// Plans the fetch of `wanted`, missing contents in prefetch order with
/// their recipes. Batches come in the order of their first content.
pub fn plan_batches(wanted: Vec<(Digest, Recipe)>, limits: BatchLimits) -> (Vec<Batch>, Vec<Unplanned>) {
    let mut batches: Vec<Batch> = Vec::new();
    let mut own_bytes: Vec<u64> = Vec::new();
    let mut open: HashMap<(String, String), usize> = HashMap::new();
    let mut unplanned = Vec::new();
    for (name, recipe) in wanted {
        let (format, chunks) = match recipe.format().and_then(|f| Ok((f, recipe.chunks()?))) {
            Ok(parsed) => parsed,
            Err(error) => {
                unplanned.push(Unplanned { name, error });
                continue;
            }
        };
        let content = Wanted {
            name,
            size: recipe.size,
            chunks,
        };
        let own = content.compressed();
        let key = (recipe.source.clone(), recipe.layer_digest.clone());
        if let Some(&i) = open.get(&key) {
            let batch = &mut batches[i];
            if batch.format == format
                && own_bytes[i] + own <= limits.bytes
                && batch.contents.len() < limits.contents.max(1)
            {
                own_bytes[i] += own;
                batch.contents.push(content);
                continue;
            }
        }
        open.insert(key, batches.len());
        own_bytes.push(own);
        batches.push(Batch {
            layer: recipe.layer(),
            source: recipe.source,
            format,
            contents: vec![content],
            calls: Vec::new(),
        });
    }
    for batch in &mut batches {
        batch.calls = calls(&batch.contents);
    }
    (batches, unplanned)
}

/// The calls that fetch `contents`: their ranges merged and split into
/// calls of about [`CALL_BYTES`](crate::partial::plan::CALL_BYTES) (a lone
/// range may be larger).
pub fn calls<'a>(contents: impl IntoIterator<Item = &'a Wanted>) -> Vec<Vec<ByteRange>> {
    let ranges = merge(
        contents
            .into_iter()
            .flat_map(|c| c.chunks.iter().filter(|c| !c.zeros).map(|c| c.compressed)),
        MERGE_GAP,
    );
    split_calls(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partial::plan::CALL_BYTES;
    use crate::toc::Sha256Digest;

    const LAYER_SIZE: u64 = 100 << 20;

    fn layer(digest: &str) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: format!("sha256:{}", digest.repeat(64 / digest.len())),
            size: LAYER_SIZE,
            platform: None,
            annotations: Default::default(),
        }
    }

    fn chunk(start: u64, end: u64, size: u64) -> Chunk {
        Chunk {
            file_offset: 0,
            size,
            compressed: ByteRange { start, end },
            inner_offset: 0,
            digest: Some(Sha256Digest([1; 32])),
            zeros: false,
        }
    }

    /// Content `n` of layer `l`, compressed at `start..end`.
    fn wanted(n: u8, l: &str, start: u64, end: u64) -> (Digest, Recipe) {
        let recipe = Recipe::new(
            "reg/repo:tag",
            &layer(l),
            TocFormat::Estargz,
            10,
            &[chunk(start, end, 10)],
        );
        (Digest([n; 32]), recipe)
    }

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    /// (names of each batch, its calls)
    fn shape(batches: &[Batch]) -> Vec<(Vec<u8>, Vec<Vec<ByteRange>>)> {
        batches
            .iter()
            .map(|b| (b.contents.iter().map(|c| c.name.0[0]).collect(), b.calls.clone()))
            .collect()
    }

    #[test]
    fn contents_are_batched_per_layer_in_prefetch_order_and_their_ranges_merged() {
        let limits = BatchLimits {
            bytes: 1000,
            contents: 3,
        };
        type Case = (&'static str, Vec<(Digest, Recipe)>, Vec<(Vec<u8>, Vec<Vec<ByteRange>>)>);
        let cases: Vec<Case> = vec![
            (
                "adjacent contents of one layer: one batch, one merged range",
                vec![
                    wanted(1, "a", 0, 100),
                    wanted(2, "a", 100, 250),
                    wanted(3, "a", 300, 400),
                ],
                vec![(vec![1, 2, 3], vec![vec![r(0, 400)]])],
            ),
            (
                "a gap over 512 bytes is not fetched",
                vec![wanted(1, "a", 0, 100), wanted(2, "a", 700, 800)],
                vec![(vec![1, 2], vec![vec![r(0, 100), r(700, 800)]])],
            ),
            (
                "interleaved layers: one batch each, in the order of their first content",
                vec![
                    wanted(1, "a", 0, 100),
                    wanted(2, "b", 0, 100),
                    wanted(3, "a", 100, 200),
                    wanted(4, "b", 100, 200),
                ],
                vec![(vec![1, 3], vec![vec![r(0, 200)]]), (vec![2, 4], vec![vec![r(0, 200)]])],
            ),
            (
                "the byte limit closes a batch; the content that did not fit opens the next",
                vec![
                    wanted(1, "a", 0, 600),
                    wanted(2, "a", 600, 1200),
                    wanted(3, "a", 1200, 1300),
                ],
                vec![(vec![1], vec![vec![r(0, 600)]]), (vec![2, 3], vec![vec![r(600, 1300)]])],
            ),
            (
                "the content limit closes a batch",
                (1..=4)
                    .map(|n| wanted(n, "a", u64::from(n) * 10, u64::from(n) * 10 + 10))
                    .collect(),
                vec![(vec![1, 2, 3], vec![vec![r(10, 40)]]), (vec![4], vec![vec![r(40, 50)]])],
            ),
            (
                "a content over the limit gets a batch of its own",
                vec![wanted(1, "a", 0, 5000), wanted(2, "a", 5000, 5100)],
                vec![(vec![1], vec![vec![r(0, 5000)]]), (vec![2], vec![vec![r(5000, 5100)]])],
            ),
            (
                "small files sharing one gzip member ask for it once",
                vec![wanted(1, "a", 0, 300), wanted(2, "a", 0, 300)],
                vec![(vec![1, 2], vec![vec![r(0, 300)]])],
            ),
        ];
        for (what, input, expected) in cases {
            let (batches, unplanned) = plan_batches(input, limits);
            assert!(unplanned.is_empty(), "{what}");
            assert_eq!(shape(&batches), expected, "{what}");
        }
    }

    #[test]
    fn sources_formats_and_bad_recipes_are_kept_apart() {
        let limits = BatchLimits::for_bandwidth(0);
        let (name, mut other_source) = wanted(2, "a", 100, 200);
        other_source.source = "other/repo:tag".into();
        let (_, mut zstd) = wanted(3, "a", 200, 300);
        zstd.format = "zstd:chunked".into();
        let (_, mut bad) = wanted(4, "a", 300, 400);
        bad.size = 11;
        let (batches, unplanned) = plan_batches(
            vec![
                wanted(1, "a", 0, 100),
                (name, other_source),
                (Digest([3; 32]), zstd),
                (Digest([4; 32]), bad),
            ],
            limits,
        );
        let names: Vec<Vec<u8>> = shape(&batches).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec![vec![1], vec![2], vec![3]]);
        assert_eq!(batches[0].request_bytes(), 100);
        assert_eq!(batches[2].format, TocFormat::ZstdChunked);
        assert_eq!(unplanned.len(), 1);
        assert_eq!(unplanned[0].name, Digest([4; 32]), "sizes that do not add up");
    }

    #[test]
    fn calls_stay_within_call_bytes_and_a_bandwidth_sizes_batches() {
        let big = CALL_BYTES / 2 + 1;
        let contents: Vec<Wanted> = (0..3u8)
            .map(|n| (n, u64::from(n)))
            .map(|(n, i)| Wanted {
                name: Digest([n; 32]),
                size: 1,
                // 1 KiB apart: never merged.
                chunks: vec![chunk(i * (big + 1024), i * (big + 1024) + big, 1)],
            })
            .collect();
        let grouped: Vec<usize> = calls(&contents).iter().map(Vec::len).collect();
        assert_eq!(grouped, vec![1, 1, 1]);
        assert_eq!(BatchLimits::for_bandwidth(0).bytes, BATCH_BYTES);
        assert_eq!(BatchLimits::for_bandwidth(131_072).bytes, 131_072);
        assert_eq!(BatchLimits::for_bandwidth(1).bytes, MIN_BATCH_BYTES);
        assert_eq!(BatchLimits::for_bandwidth(u64::MAX).bytes, BATCH_BYTES);
    }
}

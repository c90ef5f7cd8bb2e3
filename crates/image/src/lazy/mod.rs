//! Lazy pulls (docs/lazy-pulls.md): an image written from its layers' TOCs
//! alone, before its files arrive.
//!
//! Each layer's TOC is read and checked against its annotated digest as in
//! a partial pull ([`crate::partial`]); the plan looks every content up in
//! the store's SHA-256 index. Contents the store holds keep their
//! fs-verity names; small ones (inline in the metadata) are fetched now,
//! through the partial pull's own fetch; every other missing content
//! becomes [`FileData::Missing`], named by its SHA-256, and gets a recipe
//! row (how to fetch it later: [`recipe`]). The layer tree is built by the
//! partial pull's builder, so it is the tree a full pull gives. The image
//! is recorded incomplete (the store's `lazy_images` row) and mounted with
//! ALIASES and LAZY behind OBJECTS; [`fetch`] brings a missing content in
//! when LAZY asks.

pub mod complete;
pub mod fetch;
pub mod prefetch;
pub mod recipe;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use strata_store::{ImageRecord, ObjectRef, Store};
use strata_tree::{merge_layer, Content, Digest, FileData, Stat, Tree};

use crate::layer::EntryBudget;
use crate::partial::fetch::{Got, Shell};
use crate::partial::plan::{self, Batch, Plan, Wanted, CALL_BYTES};
use crate::partial::{read_toc, tree, PartialError};
use crate::source::{resolve, BlobSource};
use crate::toc::estargz::PREFETCH_LANDMARK;
use crate::toc::{ByteRange, EntryKind, Sha256Digest, Toc, TocFormat};
use crate::{Descriptor, ImportError, LayerImport, Limits, Platform, Progress};

pub use complete::{complete, still_missing, Completed};
pub use fetch::{FetchPolicy, LazyFetchError, LazyFetcher, SourceOpener};
pub use prefetch::{PrefetchConfig, Prefetcher};
pub use recipe::Recipe;

/// Small contents' ranges are merged across the smallest gaps first,
/// while the gaps of all the layer's batches add at most 1/[`GAP_SHARE`]
/// of its compressed size: each range left costs a request or a multipart part, which cost
/// more than a gap's bytes (python's zstd:chunked here: 46 ranges and
/// 3.4 MB for the large layer, fetched in 40 ms, against 91 ranges, 0.9
/// MB and 92 ms with only gaps under 16 KiB merged).
const GAP_SHARE: u64 = 16;

#[derive(Clone, Debug)]
pub struct LazyPullOptions {
    /// The name the image is recorded under.
    pub name: String,
    /// The reference later fetches read blobs from (`HOST/REPO:TAG` or
    /// `oci:DIR:TAG`), kept in every recipe.
    pub source_ref: String,
    pub limits: Limits,
    pub platform: Platform,
}

#[derive(Clone, Debug)]
pub struct LazyPullOutcome {
    pub record: ImageRecord,
    pub image_bytes: u64,
    /// Objects the image names by fs-verity digest (the store had them).
    pub objects: u64,
    /// Contents left to fetch on demand, and their bytes.
    pub missing: u64,
    pub missing_bytes: u64,
    /// Small contents fetched now (they live in the metadata).
    pub inline_fetched: u64,
    /// The compressed size of the layers the manifest announces.
    pub layer_bytes: u64,
    pub up_to_date: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LazyPullError {
    /// A layer has no TOC: the image cannot be pulled lazily (pull it whole).
    #[error("layer {layer} has no table of contents (eStargz or zstd:chunked), so the image cannot be pulled lazily")]
    NoToc { layer: String },
    #[error("layer {layer}: {source}")]
    Layer {
        layer: String,
        #[source]
        source: Box<PartialError>,
    },
    /// A TOC names a content by a digest that is the fs-verity name of a
    /// stored object: the metadata would show that object for it.
    #[error(
        "layer {layer}: its TOC names content {digest} by the name of an object the store holds under another digest"
    )]
    NameConflict { layer: String, digest: String },
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl From<strata_store::StoreError> for LazyPullError {
    fn from(e: strata_store::StoreError) -> Self {
        LazyPullError::Import(e.into())
    }
}

/// One layer read from its TOC.
struct LazyLayer {
    import: LayerImport,
    /// Missing contents (over the inline limit), with how to fetch them.
    recipes: HashMap<Sha256Digest, Recipe>,
    /// The missing contents in prefetch order: (prioritized, the rest).
    order: (Vec<Sha256Digest>, Vec<Sha256Digest>),
    inline_fetched: u64,
}

pub fn pull_lazy(
    store: &Store,
    source: &dyn BlobSource,
    options: &LazyPullOptions,
    progress: &Arc<Progress>,
) -> Result<LazyPullOutcome, LazyPullError> {
    let _lock = store.lock_shared()?;
    let resolved = resolve(source, &options.platform)?;
    if let Some((existing, id)) = crate::pull::up_to_date(store, &options.name, &resolved)? {
        let needs = store.lazy_needs(&id)?.unwrap_or_default();
        return Ok(LazyPullOutcome {
            image_bytes: std::fs::metadata(store.image_path(&id)).map_or(0, |m| m.len()),
            objects: store.image_objects(&id)?.len() as u64,
            missing: needs.len() as u64,
            missing_bytes: 0,
            inline_fetched: 0,
            layer_bytes: resolved.manifest.layers.iter().map(|l| l.size).sum(),
            record: existing,
            up_to_date: true,
        });
    }
    let layers = &resolved.manifest.layers;
    Progress::add(&progress.layers_total, layers.len() as u64);
    let budget = EntryBudget::new(options.limits.max_entries_per_image);
    let mut tree = Tree::new(Stat::default_dir());
    let mut recipes: HashMap<Sha256Digest, Recipe> = HashMap::new();
    let mut stagers = Vec::new();
    let mut inline_fetched = 0;
    let (mut first, mut then) = (Vec::new(), Vec::new());
    for desc in layers {
        let layer = lazy_layer(store, source, desc, options, progress, &budget)?;
        merge_layer(&mut tree, layer.import.tree).map_err(ImportError::from)?;
        stagers.push(layer.import.stager);
        recipes.extend(layer.recipes);
        first.extend(layer.order.0);
        then.extend(layer.order.1);
        inline_fetched += layer.inline_fetched;
        Progress::add(&progress.layers_done, 1);
    }
    tree.compact();
    let objects = ObjectRef::all_in(&tree);
    let needs = missing_in(&tree);
    let missing_bytes = needs.values().sum();
    let stats = tree.stats();
    let image = strata_erofs::into_image(tree).map_err(ImportError::from)?;
    let referenced: HashSet<Digest> = objects.iter().map(|o| o.digest).collect();
    for stager in stagers {
        stager.publish_only(|d| referenced.contains(d))?;
    }
    let erofs = store.put_image(&image)?;
    // The rows first: rows of an image that never got named are dropped
    // by gc; an image named without its rows would mount without LAZY.
    // In prefetch order: what the merged tree still names, once.
    let mut seen = HashSet::new();
    let names: Vec<Digest> = first
        .into_iter()
        .chain(then)
        .map(|d| Digest(d.0))
        .filter(|d| needs.contains_key(d) && seen.insert(*d))
        .collect();
    debug_assert_eq!(names.len(), needs.len(), "every missing content is in a layer's order");
    if !names.is_empty() {
        let txn = store.begin()?;
        let encoded: Vec<Vec<u8>> = names
            .iter()
            .map(|name| {
                recipes
                    .get(&Sha256Digest(name.0))
                    .expect("every missing content has a recipe")
                    .encode()
            })
            .collect();
        txn.add_lazy_contents(names.iter().zip(encoded.iter().map(Vec::as_slice)))?;
        txn.put_lazy_image(&erofs, &names)?;
        txn.commit()?;
    }
    let record = crate::pull::image_record(&options.name, &resolved, &erofs, &stats);
    store.commit_image(&record, &objects)?;
    Ok(LazyPullOutcome {
        record,
        image_bytes: image.len() as u64,
        objects: objects.len() as u64,
        missing: names.len() as u64,
        missing_bytes,
        inline_fetched,
        layer_bytes: layers.iter().map(|l| l.size).sum(),
        up_to_date: false,
    })
}

/// One layer imported from its TOC alone, for a caller that merges and
/// records it itself (the containerd fast path commits it as a snapshot).
pub struct LazyLayerImport {
    /// The layer's tree: missing contents as [`FileData::Missing`].
    pub import: LayerImport,
    /// Each missing content's encoded [`Recipe`], in prefetch order
    /// (prioritized files first, then TOC order).
    pub recipes: Vec<(Digest, Vec<u8>)>,
    /// Small missing contents fetched now (they live in the metadata).
    pub inline_fetched: u64,
}

/// Imports layer `desc` from its TOC alone, as [`pull_lazy`] does each
/// layer; `source_ref` is where later fetches read the blob from.
pub fn import_layer_lazily(
    store: &Store,
    source: &dyn BlobSource,
    desc: &Descriptor,
    source_ref: &str,
    limits: &Limits,
    progress: &Arc<Progress>,
) -> Result<LazyLayerImport, LazyPullError> {
    let budget = EntryBudget::new(limits.max_entries_per_image);
    let options = LazyPullOptions {
        name: String::new(),
        source_ref: source_ref.to_owned(),
        limits: limits.clone(),
        platform: Platform::host(),
    };
    let mut layer = lazy_layer(store, source, desc, &options, progress, &budget)?;
    let mut recipes = Vec::with_capacity(layer.recipes.len());
    for digest in layer.order.0.into_iter().chain(layer.order.1) {
        if let Some(recipe) = layer.recipes.remove(&digest) {
            recipes.push((Digest(digest.0), recipe.encode()));
        }
    }
    debug_assert!(
        layer.recipes.is_empty(),
        "every missing content is in the layer's order"
    );
    Ok(LazyLayerImport {
        import: layer.import,
        recipes,
        inline_fetched: layer.inline_fetched,
    })
}

/// The missing contents the merged tree still names, with their sizes.
fn missing_in(tree: &Tree) -> HashMap<Digest, u64> {
    tree.leaves
        .iter()
        .filter_map(|leaf| match &leaf.content {
            Content::File(FileData::Missing { sha256, size }) => Some((*sha256, *size)),
            _ => None,
        })
        .collect()
}

fn lazy_layer(
    store: &Store,
    source: &dyn BlobSource,
    desc: &Descriptor,
    options: &LazyPullOptions,
    progress: &Arc<Progress>,
    budget: &EntryBudget,
) -> Result<LazyLayer, LazyPullError> {
    let failed = |e: PartialError| LazyPullError::Layer {
        layer: desc.digest.clone(),
        source: Box::new(e),
    };
    let limits = &options.limits;
    let started = std::time::Instant::now();
    let Some((toc, _)) = read_toc(source, desc, limits).map_err(|e| failed(e.into()))? else {
        return Err(LazyPullError::NoToc {
            layer: desc.digest.clone(),
        });
    };
    let toc_read = started.elapsed();
    let inline_max = strata_erofs::INLINE_MAX as u64;
    let mut lookup_error = None;
    let planned = plan::plan(&toc, inline_max, limits.max_layer_bytes, |digests| {
        let keys: Vec<[u8; 32]> = digests.iter().map(|d| d.0).collect();
        store.objects_by_sha256(&keys).unwrap_or_else(|e| {
            lookup_error = Some(e);
            vec![None; keys.len()]
        })
    })
    .map_err(|e| failed(e.into()))?;
    if let Some(e) = lookup_error {
        return Err(e.into());
    }
    let (small, large): (Vec<Wanted>, Vec<Wanted>) = planned
        .batches
        .iter()
        .flat_map(|b| b.contents.iter().cloned())
        .partition(|w| w.size <= inline_max);

    for wanted in &large {
        let name = Digest(wanted.digest.0);
        if store.has_object(&name)? {
            return Err(LazyPullError::NameConflict {
                layer: desc.digest.clone(),
                digest: name.to_hex(),
            });
        }
    }
    let stager = Mutex::new(store.stager()?);
    let shell = Shell {
        source,
        desc,
        format: toc.format,
        progress,
    };
    let small_plan = Plan {
        have: HashMap::new(),
        batches: small_batches(small, desc.size),
        stats: Default::default(),
    };
    let planned_at = started.elapsed();
    let mut contents = shell.fetch(&small_plan, &stager, 2).map_err(failed)?.contents;
    let small_at = started.elapsed();
    let inline_fetched = contents.len() as u64;
    for (digest, object) in &planned.have {
        contents.insert(*digest, tree::had(*object));
    }
    let order = prefetch_order(&toc, &large);
    let mut recipes = HashMap::new();
    for wanted in large {
        contents.insert(
            wanted.digest,
            Got {
                data: FileData::Missing {
                    sha256: Digest(wanted.digest.0),
                    size: wanted.size,
                },
                staged: None,
            },
        );
        let recipe = Recipe::new(&options.source_ref, desc, toc.format, wanted.size, &wanted.chunks);
        recipes.insert(wanted.digest, recipe);
    }
    let stager = stager.into_inner().expect("fetch workers are done");
    let import = tree::build(&toc, &desc.digest, &contents, stager, limits, progress, budget).map_err(failed)?;
    tracing::debug!(
        layer = desc.digest,
        entries = toc.entries.len(),
        small = inline_fetched,
        toc_ms = toc_read.as_millis(),
        plan_ms = (planned_at - toc_read).as_millis(),
        small_ms = (small_at - planned_at).as_millis(),
        tree_ms = (started.elapsed() - small_at).as_millis(),
        "lazy layer import"
    );
    Ok(LazyLayer {
        import,
        recipes,
        order,
        inline_fetched,
    })
}

/// The contents of `large` in the layer's prefetch order: eStargz's
/// prioritized files (the entries before `.prefetch.landmark`) first,
/// then the rest in TOC order. zstd:chunked has no landmark: TOC order.
fn prefetch_order(toc: &Toc, large: &[Wanted]) -> (Vec<Sha256Digest>, Vec<Sha256Digest>) {
    let wanted: HashSet<Sha256Digest> = large.iter().map(|w| w.digest).collect();
    let landmark = toc
        .entries
        .iter()
        .position(|e| toc.format == TocFormat::Estargz && e.path == PREFETCH_LANDMARK)
        .unwrap_or(0);
    let (mut first, mut then) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for (i, entry) in toc.entries.iter().enumerate() {
        let EntryKind::File(content) = &entry.kind else {
            continue;
        };
        if wanted.contains(&content.digest) && seen.insert(content.digest) {
            if i < landmark {
                first.push(content.digest);
            } else {
                then.push(content.digest);
            }
        }
    }
    (first, then)
}

/// The small contents in batches of calls of at most [`CALL_BYTES`].
/// `small` comes in blob order (the plan's), as a batch's calls are read
/// forwards.
fn small_batches(small: Vec<Wanted>, layer_size: u64) -> Vec<Batch> {
    let mut groups: Vec<Vec<Wanted>> = Vec::new();
    let mut contents = Vec::new();
    let mut bytes = 0u64;
    for wanted in small {
        let own: u64 = ranges_of(&wanted).map(|r| r.len()).sum();
        if bytes + own > CALL_BYTES && !contents.is_empty() {
            groups.push(std::mem::take(&mut contents));
            bytes = 0;
        }
        bytes += own;
        contents.push(wanted);
    }
    if !contents.is_empty() {
        groups.push(contents);
    }
    // The layer's gap budget, shared by its batches.
    let budget = layer_size / GAP_SHARE / (groups.len().max(1) as u64);
    groups.into_iter().map(|group| batch(group, budget)).collect()
}

fn ranges_of(wanted: &Wanted) -> impl Iterator<Item = ByteRange> + '_ {
    wanted.chunks.iter().filter(|c| !c.zeros).map(|c| c.compressed)
}

/// One batch of small contents; its ranges, merged across the smallest
/// gaps while the gaps add at most `budget` bytes, in calls of at most
/// [`CALL_BYTES`], each held in memory while it is read.
fn batch(contents: Vec<Wanted>, budget: u64) -> Batch {
    let ranges = plan::merge_within(contents.iter().flat_map(ranges_of), budget);
    Batch {
        contents,
        calls: plan::calls(ranges),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toc::{FileContent, TocEntry};

    fn entry(path: &str, content: Option<Sha256Digest>) -> TocEntry {
        TocEntry {
            path: path.to_owned(),
            kind: match content {
                Some(digest) => EntryKind::File(FileContent {
                    size: 1000,
                    digest,
                    chunks: Vec::new(),
                }),
                None => EntryKind::Dir,
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            user_name: None,
            group_name: None,
            mtime_sec: 0,
            mtime_nsec: 0,
            xattrs: Default::default(),
        }
    }

    fn wanted(digest: Sha256Digest) -> Wanted {
        Wanted {
            digest,
            size: 1000,
            path: String::new(),
            chunks: Vec::new(),
        }
    }

    /// `count` small contents of `size` compressed bytes, `gap` apart.
    fn spaced(count: u64, size: u64, gap: u64) -> Vec<Wanted> {
        (0..count)
            .map(|n| {
                let start = n * (size + gap);
                let mut w = wanted(Sha256Digest([0; 32]));
                w.chunks = vec![crate::toc::Chunk {
                    file_offset: 0,
                    size,
                    compressed: ByteRange {
                        start,
                        end: start + size,
                    },
                    inner_offset: 0,
                    digest: None,
                    zeros: false,
                }];
                w
            })
            .collect()
    }

    /// The layer the tests' contents are in.
    const LAYER: u64 = 1 << 30;

    /// (calls, ranges, bytes read) of `small`'s batches; every call fits
    /// in [`CALL_BYTES`].
    fn reads(small: Vec<Wanted>) -> (usize, usize, u64) {
        let batches = small_batches(small, LAYER);
        let calls: Vec<&Vec<ByteRange>> = batches.iter().flat_map(|b| &b.calls).collect();
        for call in &calls {
            let bytes: u64 = call.iter().map(|r| r.len()).sum();
            assert!(bytes <= CALL_BYTES, "a call of {bytes} bytes");
        }
        let ranges = calls.iter().map(|c| c.len()).sum();
        let bytes = calls.iter().flat_map(|c| c.iter()).map(|r| r.len()).sum();
        (calls.len(), ranges, bytes)
    }

    #[test]
    fn small_contents_merge_across_small_gaps_within_bounds() {
        // 4 KiB apart: merged, gaps and all, in several calls.
        let count = 3 * CALL_BYTES / (8 << 10);
        let (calls, ranges, bytes) = reads(spaced(count, 4 << 10, 4 << 10));
        assert!(calls > 1, "gaps count against a call's bytes");
        assert!(ranges < count as usize / 100, "{ranges} ranges");
        assert!(bytes <= count * (4 << 10) + LAYER / GAP_SHARE);
        // 100 B each, 1 MiB apart: closing every gap would read far over
        // 1/16 of the layer, so only as many are closed as that allows
        // (64), less one in 16 where a merged range reaches a call's bytes.
        let count = 5000;
        let (_, ranges, bytes) = reads(spaced(count, 100, 1 << 20));
        let budget = LAYER / GAP_SHARE / (1 << 20);
        assert!(bytes <= count * 100 + LAYER / GAP_SHARE, "{bytes} bytes");
        let closed = count - ranges as u64;
        assert!(
            closed <= budget && closed >= budget - budget / 15,
            "{closed} gaps closed"
        );
    }

    #[test]
    fn a_layers_batches_share_one_gap_budget() {
        // 64 KiB each, 1 MiB apart: 32 MiB of contents, two batches, and
        // far more gaps than 1/16 of the layer pays for in either one.
        let count = 512;
        let (calls, ranges, bytes) = reads(spaced(count, 64 << 10, 1 << 20));
        assert!(calls >= 2, "{calls} calls");
        assert!(bytes <= count * (64 << 10) + LAYER / GAP_SHARE, "{bytes} bytes");
        assert!((ranges as u64) < count, "no gap closed");
    }

    #[test]
    fn prefetch_order_puts_files_before_the_landmark_first() {
        let d = |n: u8| Sha256Digest([n; 32]);
        let entries = vec![
            entry("usr", None),
            entry("usr/b", Some(d(2))),
            entry("usr/a", Some(d(1))),
            entry("usr/held", Some(d(9))),
            entry(PREFETCH_LANDMARK, Some(d(7))),
            entry("usr/c", Some(d(3))),
            entry("usr/b-again", Some(d(2))),
        ];
        let large: Vec<Wanted> = [1, 2, 3].map(|n| wanted(d(n))).into();
        let mut toc = Toc {
            format: TocFormat::Estargz,
            entries,
            digest: d(0),
            data_end: 0,
        };
        // Only the wanted contents, once each; d(9) is stored, d(7) is
        // the landmark's own byte.
        assert_eq!(prefetch_order(&toc, &large), (vec![d(2), d(1)], vec![d(3)]));
        toc.format = TocFormat::ZstdChunked;
        assert_eq!(
            prefetch_order(&toc, &large),
            (vec![], vec![d(2), d(1), d(3)]),
            "zstd:chunked has no landmark: TOC order"
        );
    }
}

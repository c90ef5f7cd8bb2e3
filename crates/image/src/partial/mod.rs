//! Partial pulls: a layer that carries a table of contents (eStargz,
//! zstd:chunked) is imported by fetching only the files the store lacks.
//!
//! The trust chain is manifest digest -> layer annotation -> TOC digest ->
//! each file's SHA-256 (see `docs/partial-pulls.md`). The TOC is read and
//! checked against its annotated digest ([`crate::toc`]); [`plan`] (pure)
//! decides which contents to fetch and which ranges to ask for; [`fetch`]
//! fetches, decompresses and checks each content before it is staged;
//! [`tree`] builds the layer's tree from the TOC through the tar import's
//! own builder. A layer whose TOC cannot be read or whose bytes do not
//! verify is pulled whole instead (its blob digest and diff_id checked as
//! in any pull), after a warning; nothing the failed attempt staged stays.
//! Every whole read of a layer with a TOC, here or in `off` mode, is
//! compared with its TOC by the import itself (`layer/toc_check.rs`): a
//! tar that contradicts a verified TOC is refused.

pub(crate) mod fetch;
pub mod plan;
mod policy;
pub(crate) mod tree;
mod verify;

pub use policy::{PartialPolicy, PartialPulls};

use std::sync::{Arc, Mutex};

use strata_store::Store;

use crate::layer::{import_layer_in, EntryBudget, UncheckedImport};
use crate::source::BlobRanges;
use crate::toc::zstd_chunked::TarSplit;
use crate::toc::{self, ByteRange, Sha256Digest, Toc, TocError, TocLimits};
use crate::{BlobSource, Descriptor, ImportError, LayerImport, Limits, Progress};

/// Why a partial pull of a layer did not complete. All but errors of the
/// store and the entry limits make the layer be pulled whole instead: a
/// tree the TOC's entries cannot make (a name through a symlink, a hard
/// link to nothing) may be the TOC's lie, and the tar has the last word.
#[derive(Debug, thiserror::Error)]
pub enum PartialError {
    #[error("the layer's TOC: {0}")]
    Toc(Box<TocError>),
    #[error("planning the fetch: {0}")]
    Plan(#[from] plan::PlanError),
    #[error("{0}")]
    Source(Box<ImportError>),
    #[error("the source's answer: {reason}")]
    Answer { reason: String },
    #[error("{path:?}: chunk at {offset}: {source}")]
    Chunk {
        path: String,
        offset: u64,
        #[source]
        source: Box<TocError>,
    },
    #[error("{path:?}: {actual} bytes, the TOC says {expected}")]
    FileSize { path: String, expected: u64, actual: u64 },
    #[error("{path:?}: its bytes hash to {actual}, the TOC says {expected}")]
    FileDigest {
        path: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("{path:?}: content {digest} was neither fetched nor found")]
    Missing { path: String, digest: Sha256Digest },
    #[error("range {range} lies in no planned call")]
    Unplanned { range: ByteRange },
    #[error("the diff_id cannot be checked: {reason}")]
    DiffId { reason: String },
    #[error("the tar-split and the files rebuild a stream of {actual}, the config's diff_id is {expected}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("the tar the diff_id covers contradicts the TOC at {path:?}: {detail}")]
    Contradicts { path: String, detail: String },
    #[error("the store: {0}")]
    Store(Box<strata_store::StoreError>),
    #[error("{0}")]
    Tree(Box<ImportError>),
}

impl From<TocError> for PartialError {
    fn from(e: TocError) -> Self {
        PartialError::Toc(Box::new(e))
    }
}

impl From<ImportError> for PartialError {
    fn from(e: ImportError) -> Self {
        PartialError::Source(Box::new(e))
    }
}

impl From<strata_store::StoreError> for PartialError {
    fn from(e: strata_store::StoreError) -> Self {
        PartialError::Store(Box::new(e))
    }
}

impl PartialError {
    /// Whether pulling the layer whole may still succeed (and is safe).
    fn falls_back(&self) -> bool {
        match self {
            PartialError::Store(_) => false,
            PartialError::Source(e) | PartialError::Tree(e) => !matches!(
                **e,
                ImportError::Store(_) | ImportError::TooManyEntries { .. } | ImportError::TooManyImageEntries { .. }
            ),
            _ => true,
        }
    }
}

/// Fetch workers per layer; the registry side also spreads a call's
/// ranges over requests.
const WORKERS: usize = 2;

/// Imports one layer: partially where `policy` and the layer allow, else
/// whole. The layer's SHA-256 index rows are recorded on success.
pub fn import_layer_from(
    store: &Store,
    source: &dyn BlobSource,
    desc: &Descriptor,
    diff_id: Option<&str>,
    limits: &Limits,
    progress: &Arc<Progress>,
    policy: PartialPolicy,
) -> Result<LayerImport, ImportError> {
    let budget = EntryBudget::new(limits.max_entries_per_image);
    let fresh = indexes_nothing(store)?;
    import_layer_with(store, source, desc, diff_id, limits, progress, &budget, policy, fresh)?.settle(store)
}

/// [`import_layer_from`], drawing entries from an image-wide budget; a
/// layer read whole is left for the caller to compare with its TOC.
/// `fresh`: the store indexed no content when the pull began (see
/// [`indexes_nothing`]; taken once per pull, so that layers which start
/// after another finished are treated alike).
#[allow(clippy::too_many_arguments)]
pub(crate) fn import_layer_with(
    store: &Store,
    source: &dyn BlobSource,
    desc: &Descriptor,
    diff_id: Option<&str>,
    limits: &Limits,
    progress: &Arc<Progress>,
    budget: &EntryBudget,
    policy: PartialPolicy,
    fresh: bool,
) -> Result<UncheckedImport, ImportError> {
    let mut known_toc = None;
    if policy.mode != PartialPulls::Off {
        match partial(store, source, desc, diff_id, limits, progress, budget, policy, fresh) {
            Ok(Attempt::Imported(import)) => {
                return Ok(UncheckedImport {
                    import: *import,
                    check: None,
                })
            }
            Ok(Attempt::Whole(toc)) => known_toc = toc,
            Err(e) if e.falls_back() => {
                tracing::warn!(
                    layer = %desc.digest,
                    error = %e,
                    "partial pull failed; pulling the layer whole (nothing it fetched is kept)"
                );
            }
            Err(e) => {
                return Err(match e {
                    PartialError::Tree(e) | PartialError::Source(e) => *e,
                    other => ImportError::Layer {
                        layer: desc.digest.clone(),
                        reason: other.to_string(),
                    },
                })
            }
        }
    }
    let raw = source.open_blob(desc)?;
    import_layer_in(store, desc, diff_id, raw, limits, progress, budget, known_toc)
}

/// What a partial attempt came to.
enum Attempt {
    Imported(Box<LayerImport>),
    /// The layer is to be pulled whole: with its TOC where it was read and
    /// verified (the whole read compares the tar with it).
    Whole(Option<Toc>),
}

/// Reads a layer's TOC (and where its tar-split is), if its annotations
/// announce one.
pub(crate) fn read_toc(
    source: &dyn BlobSource,
    desc: &Descriptor,
    limits: &Limits,
) -> Result<Option<(Toc, Option<TarSplit>)>, TocError> {
    let reader = BlobRanges { source, desc };
    let toc_limits = TocLimits::from_layer_limits(limits);
    if desc.annotations.contains_key(toc::estargz::TOC_DIGEST_ANNOTATION) {
        let expected = toc::estargz::toc_digest(&desc.annotations)?;
        return toc::estargz::read_toc(&reader, desc.size, &expected, &toc_limits).map(|t| Some((t, None)));
    }
    match toc::zstd_chunked::annotations(&desc.annotations)? {
        Some(annotations) => toc::zstd_chunked::read_toc(&reader, desc.size, &annotations, &toc_limits)
            .map(|t| Some((t.toc, t.tar_split))),
        None => Ok(None),
    }
}

/// The partial import; [`Attempt::Whole`] when the layer has no TOC,
/// `policy` asks for a diff_id check this layer does not allow, or a
/// partial pull would not save enough.
#[allow(clippy::too_many_arguments)]
fn partial(
    store: &Store,
    source: &dyn BlobSource,
    desc: &Descriptor,
    diff_id: Option<&str>,
    limits: &Limits,
    progress: &Arc<Progress>,
    budget: &EntryBudget,
    policy: PartialPolicy,
    fresh: bool,
) -> Result<Attempt, PartialError> {
    let started = std::time::Instant::now();
    let verified = policy.mode == PartialPulls::Verified;
    // eStargz has no tar-split: nothing to check a diff_id with.
    if verified && (diff_id.is_none() || crate::layer::is_estargz(desc)) {
        return Ok(Attempt::Whole(None));
    }
    if policy.min_saving_percent > 0 && fresh && announces_toc(desc) {
        tracing::info!(layer = %desc.digest, "the store indexed no contents: reading the layer whole");
        return Ok(Attempt::Whole(None));
    }
    let Some((toc, tar_split)) = read_toc(source, desc, limits)? else {
        return Ok(Attempt::Whole(None));
    };
    let tar_split = match (verified, tar_split, diff_id) {
        (false, _, _) => None,
        (true, Some(tar_split), Some(diff_id)) => Some((tar_split, diff_id)),
        (true, _, _) => {
            tracing::info!(layer = %desc.digest, format = %toc.format, "no tar-split to check the diff_id with: pulling the layer whole");
            return Ok(Attempt::Whole(Some(toc)));
        }
    };
    let toc_bytes = desc.size.saturating_sub(toc.data_end);
    let toc_read = started.elapsed();
    let mut lookup_error = None;
    let mut inline_error = None;
    let (plan, have_inline) = plan::plan_with_inline(
        &toc,
        strata_erofs::INLINE_MAX as u64,
        limits.max_layer_bytes,
        |digests| {
            lookup_objects(store, digests).unwrap_or_else(|e| {
                lookup_error = Some(e);
                vec![None; digests.len()]
            })
        },
        |digests| {
            let keys: Vec<[u8; 32]> = digests.iter().map(|d| d.0).collect();
            store.small_contents(&keys).unwrap_or_else(|e| {
                inline_error = Some(e);
                vec![None; keys.len()]
            })
        },
    )?;
    if let Some(e) = lookup_error.or(inline_error) {
        return Err(e.into());
    }
    let planned = started.elapsed();
    // What a partial pull would fetch of the layer's file data (the TOC is
    // read by now either way).
    if !policy.worth(plan.stats.request_bytes, toc.data_end) {
        tracing::info!(
            layer = %desc.digest,
            format = %toc.format,
            request_bytes = plan.stats.request_bytes,
            data_bytes = toc.data_end,
            min_saving_percent = policy.min_saving_percent,
            "the store lacks nearly all of the layer: reading it whole"
        );
        return Ok(Attempt::Whole(Some(toc)));
    }
    let stager = Mutex::new(store.stager()?);
    let shell = fetch::Shell {
        source,
        desc,
        format: toc.format,
        progress,
    };
    let mut fetched = shell.fetch(&plan, &stager, WORKERS)?;
    let done_fetching = started.elapsed();
    let rows = fetch::index_rows(&fetched);
    for (digest, object) in &plan.have {
        fetched.contents.insert(*digest, tree::had(*object));
    }
    for (digest, bytes) in have_inline {
        fetched.contents.insert(
            digest,
            fetch::Got {
                data: strata_tree::FileData::Inline(bytes),
                staged: None,
            },
        );
    }
    let stager = stager.into_inner().expect("workers are done");
    if let Some((tar_split, diff_id)) = tar_split {
        let reader = BlobRanges { source, desc };
        let ndjson =
            toc::zstd_chunked::read_tar_split(&reader, desc.size, &tar_split, &TocLimits::from_layer_limits(limits))?;
        let contents = verify::Contents {
            got: &fetched.contents,
            open_object: &|d| stager.open_staged(d),
        };
        verify::check_diff_id(&ndjson, &toc, &contents, diff_id, &TocLimits::from_layer_limits(limits))?;
    }
    let import = tree::build(&toc, &desc.digest, &fetched.contents, stager, limits, progress, budget)?;
    let built = started.elapsed();
    store.record_contents(&rows, &small_contents(&import.tree))?;
    let stats = &plan.stats;
    tracing::info!(
        layer = %desc.digest,
        format = %toc.format,
        files = stats.files,
        contents = stats.contents,
        have = stats.have,
        have_bytes = stats.have_bytes,
        have_inline = stats.have_inline,
        fetched = stats.fetch,
        fetched_bytes = stats.fetch_bytes,
        range_bytes = stats.range_bytes,
        request_bytes = stats.request_bytes,
        calls = stats.calls,
        toc_bytes,
        blob_bytes = desc.size,
        seconds = started.elapsed().as_secs_f64(),
        toc_s = toc_read.as_secs_f64(),
        plan_s = (planned - toc_read).as_secs_f64(),
        fetch_s = (done_fetching - planned).as_secs_f64(),
        build_s = (built - done_fetching).as_secs_f64(),
        "partial pull of a layer"
    );
    Ok(Attempt::Imported(Box::new(import)))
}

/// Whether `desc`'s annotations name a TOC (or try to: a malformed
/// announcement is the TOC reader's to report).
fn announces_toc(desc: &Descriptor) -> bool {
    desc.annotations.contains_key(toc::estargz::TOC_DIGEST_ANNOTATION)
        || !matches!(toc::zstd_chunked::annotations(&desc.annotations), Ok(None))
}

/// Whether the store has no content a TOC could find (a new node's): a
/// partial pull would then fetch every file, so its TOC need not be read
/// ahead of the whole blob.
pub(crate) fn indexes_nothing(store: &Store) -> Result<bool, strata_store::StoreError> {
    Ok(store.sha256_index_len()? == 0 && store.small_contents_len()? == 0)
}

/// Lookups one thread makes; more are split between two (each an index
/// read and a stat of the object: a large layer's plan waits on them).
const LOOKUPS_PER_THREAD: usize = 1024;

/// The store's objects for `digests` (see [`Store::objects_by_sha256`]).
fn lookup_objects(
    store: &Store,
    digests: &[Sha256Digest],
) -> Result<Vec<Option<strata_store::ObjectRef>>, strata_store::StoreError> {
    let keys: Vec<[u8; 32]> = digests.iter().map(|d| d.0).collect();
    if keys.len() <= LOOKUPS_PER_THREAD {
        return store.objects_by_sha256(&keys);
    }
    let (first, second) = keys.split_at(keys.len() / 2);
    let (first, second) = std::thread::scope(|scope| {
        let second = scope.spawn(|| store.objects_by_sha256(second));
        (store.objects_by_sha256(first), second.join())
    });
    let mut out = first?;
    out.extend(second.expect("a lookup does not panic")?);
    Ok(out)
}

/// The contents of a layer's files of at most the inline limit (those the
/// EROFS image holds inline), for the store's small-content table.
pub(crate) fn small_contents(tree: &strata_tree::Tree) -> Vec<&[u8]> {
    let mut out = Vec::new();
    tree.for_each_leaf(|id| {
        if let strata_tree::Content::File(strata_tree::FileData::Inline(bytes)) = &tree.leaf(id).content {
            if !bytes.is_empty() && bytes.len() <= strata_erofs::INLINE_MAX {
                out.push(bytes.as_slice());
            }
        }
    });
    out
}

//! containerd's remote-snapshot fast path, the network half: for an unpack
//! Prepare that carries the CRI's image labels, resolve the image (its
//! manifest by digest, its config), check that the labels name one of its
//! layers by blob digest and chain ID, and import that layer with strata's
//! own verified pipeline. The first request of an image queues its later
//! layers too, so that containerd's one-by-one Prepares find them ready.
//!
//! The snapshotter calls this through [`strata_snapshotter::LayerFetcher`]
//! and commits what it returns; every failure here makes that Prepare fall
//! back to containerd's own fetch and unpack.

#![forbid(unsafe_code)]

mod chain;
mod jobs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_image::lazy::{import_layer_lazily, LazyPullError};
use strata_image::source::resolve;
use strata_image::{
    import_layer_from, BlobSource, ImageRef, ImportError, Limits, PartialPolicy, Platform, Progress, RegistryRef,
};
use strata_snapshotter::{FetchError, FetchedLayer, LayerFetcher, LayerRequest};
use strata_store::Store;

use chain::Located;
pub use chain::{chain_ids, LocateError};
use jobs::{Jobs, Outcome};

/// Opens a registry source for a reference (credentials, mirrors and TLS
/// come from the caller's registry configuration).
pub type SourceFactory = dyn Fn(&RegistryRef) -> Result<Box<dyn BlobSource>, ImportError> + Send + Sync;

#[derive(Clone, Debug)]
pub struct FetcherOptions {
    pub limits: Limits,
    /// Layers imported at once, across all images.
    pub workers: usize,
    pub platform: Platform,
    /// How long a prefetched layer waits for its Prepare before it is
    /// dropped.
    pub keep_unclaimed: Duration,
    /// Which layers are pulled partially (only the files the store lacks).
    pub partial: PartialPolicy,
}

/// Whether LAZY serves the store now: asked before each lazy import, so
/// a node whose LAZY is gone fetches layers whole instead.
pub type LazyCheck = dyn Fn() -> bool + Send + Sync;

/// An image being pulled: where its blobs come from, and its layers.
struct Image {
    source: Arc<dyn BlobSource>,
    /// `HOST/REPO@MANIFEST`, where a lazily imported layer's missing
    /// files are fetched from later.
    source_ref: String,
    layers: Vec<Located>,
    resolved_at: Instant,
}

pub struct Fetcher {
    store: Store,
    sources: Box<SourceFactory>,
    options: FetcherOptions,
    jobs: Arc<Jobs>,
    images: Mutex<HashMap<String, Arc<Image>>>,
    /// Every import's counters added up, for the life of the fetcher.
    totals: Arc<Progress>,
    /// Set: layers with a TOC are imported from the TOC alone, their
    /// missing files left to LAZY (docs/lazy-pulls.md), while it answers.
    lazy: Option<Arc<LazyGate>>,
}

/// The LAZY check, and what it answered last (for one log line per change).
struct LazyGate {
    served: Box<LazyCheck>,
    was_served: std::sync::atomic::AtomicBool,
}

impl LazyGate {
    /// Asked by the import itself, just before it starts.
    fn open(&self) -> bool {
        let now = (self.served)();
        if self.was_served.swap(now, std::sync::atomic::Ordering::Relaxed) != now {
            if now {
                tracing::info!("LAZY serves the store again: layers with a TOC are imported lazily");
            } else {
                tracing::warn!("no LAZY serves the store: layers are fetched now, not lazily");
            }
        }
        now
    }
}

#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("image reference {0:?} does not name a registry image")]
    NotRegistry(String),
    #[error("the registry's manifest {actual} is not {expected}, which the labels name")]
    OtherManifest { expected: String, actual: String },
    #[error("no import was queued for chain {0}")]
    NotQueued(String),
}

impl Fetcher {
    /// Starts the fetcher and its `options.workers` import threads.
    pub fn new(store: Store, sources: Box<SourceFactory>, options: FetcherOptions) -> std::io::Result<Fetcher> {
        let jobs = Jobs::start(options.workers, options.keep_unclaimed)?;
        Ok(Fetcher {
            store,
            sources,
            options,
            jobs,
            images: Mutex::new(HashMap::new()),
            totals: Arc::default(),
            lazy: None,
        })
    }

    /// Imports layers with a TOC lazily while `served` says LAZY serves
    /// the store.
    pub fn with_lazy(mut self, served: Box<LazyCheck>) -> Fetcher {
        self.lazy = Some(Arc::new(LazyGate {
            served,
            was_served: std::sync::atomic::AtomicBool::new(true),
        }));
        self
    }

    /// What every layer import so far added up to: compressed bytes read,
    /// layers imported (`layers_done`), files, new objects and dedup hits.
    /// Prefetched layers count once imported, claimed or not.
    pub fn totals(&self) -> Arc<Progress> {
        Arc::clone(&self.totals)
    }

    /// The image a request names, resolved once per manifest.
    fn image(&self, request: &LayerRequest) -> Result<Arc<Image>, FetchError> {
        {
            let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
            images.retain(|_, image| image.resolved_at.elapsed() < self.options.keep_unclaimed);
            if let Some(image) = images.get(&image_key(request)) {
                return Ok(Arc::clone(image));
            }
        }
        let mut reference = match request.image_ref.parse::<ImageRef>() {
            Ok(ImageRef::Registry(r)) => r,
            _ => return Err(Refusal::NotRegistry(request.image_ref.clone()).into()),
        };
        reference.digest = Some(request.manifest_digest.clone());
        let source: Arc<dyn BlobSource> = Arc::from((self.sources)(&reference)?);
        let resolved = resolve(source.as_ref(), &self.options.platform)?;
        if resolved.manifest_digest != request.manifest_digest {
            return Err(Refusal::OtherManifest {
                expected: request.manifest_digest.clone(),
                actual: resolved.manifest_digest,
            }
            .into());
        }
        let image = Arc::new(Image {
            source,
            source_ref: format!(
                "{}/{}@{}",
                reference.registry, reference.repository, request.manifest_digest
            ),
            layers: chain::layers(&resolved)?,
            resolved_at: Instant::now(),
        });
        self.images
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(image_key(request), Arc::clone(&image));
        Ok(image)
    }

    /// Queues the import of layer `at` of `image` (named `group`).
    fn submit(&self, group: &str, image: &Arc<Image>, at: usize, first: bool) {
        let layer = image.layers[at].clone();
        let source = Arc::clone(&image.source);
        let store = self.store.clone();
        let limits = self.options.limits.clone();
        let chain_id = layer.chain_id.clone();
        let totals = Arc::clone(&self.totals);
        let partial = self.options.partial;
        let lazy = self.lazy.clone().map(|gate| (gate, image.source_ref.clone()));
        self.jobs.submit(group, &chain_id, first, move || {
            let how = How {
                partial,
                lazy: lazy.filter(|(gate, _)| gate.open()).map(|(_, source_ref)| source_ref),
            };
            import(&store, source.as_ref(), layer, &limits, &how, &totals)
        });
    }
}

/// Images are cached by reference and manifest: the same manifest named
/// through another registry is fetched from there.
fn image_key(request: &LayerRequest) -> String {
    format!("{}@{}", request.image_ref, request.manifest_digest)
}

/// How a layer is imported.
struct How {
    partial: PartialPolicy,
    /// Lazily, with missing files fetched from this reference later.
    lazy: Option<String>,
}

/// Fetches, verifies and imports one layer, holding the store's shared lock
/// from the first staged object until the snapshotter commits them; its
/// counters go to `totals`. A lazy import that cannot be made (no TOC, a
/// TOC that does not check out) is made whole or partial instead.
fn import(
    store: &Store,
    source: &dyn BlobSource,
    layer: Located,
    limits: &Limits,
    how: &How,
    totals: &Arc<Progress>,
) -> Outcome {
    let lock = store.lock_shared().map_err(|e| e.to_string())?;
    if let Some(source_ref) = &how.lazy {
        match import_layer_lazily(store, source, &layer.desc, source_ref, limits, totals) {
            Ok(lazy) => {
                totals.layers_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    layer = layer.desc.digest,
                    missing = lazy.recipes.len(),
                    small_fetched = lazy.inline_fetched,
                    "layer imported from its TOC; missing files are fetched on open"
                );
                return Ok(FetchedLayer {
                    tree: lazy.import.tree,
                    stager: lazy.import.stager,
                    parent_chain: layer.parent_chain,
                    lock,
                    lazy: lazy.recipes,
                });
            }
            Err(LazyPullError::NoToc { .. }) => {}
            Err(e) => tracing::warn!(layer = layer.desc.digest, "not lazily: {e}; fetching the layer now"),
        }
    }
    let import = import_layer_from(
        store,
        source,
        &layer.desc,
        Some(&layer.diff_id),
        limits,
        totals,
        how.partial,
    )
    .map_err(|e| format!("importing {}: {e}", layer.desc.digest))?;
    totals.layers_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(FetchedLayer {
        tree: import.tree,
        stager: import.stager,
        parent_chain: layer.parent_chain,
        lock,
        lazy: Vec::new(),
    })
}

impl LayerFetcher for Fetcher {
    fn fetch(&self, request: &LayerRequest) -> Result<FetchedLayer, FetchError> {
        let image = self.image(request)?;
        let at = chain::locate(&image.layers, request)?;
        let group = image_key(request);
        self.submit(&group, &image, at, true);
        // Enough ahead to keep the workers busy while containerd commits
        // this one, not so many that unclaimed trees pile up in memory.
        let ahead = self.options.workers.max(1);
        for later in at + 1..image.layers.len().min(at + 1 + ahead) {
            self.submit(&group, &image, later, false);
        }
        match self.jobs.claim(&request.chain_id) {
            Some(outcome) => outcome.map_err(FetchError::from),
            None => Err(Refusal::NotQueued(request.chain_id.clone()).into()),
        }
    }

    fn abandon(&self, request: &LayerRequest) {
        self.jobs.abandon(&image_key(request));
    }
}

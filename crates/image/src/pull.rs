//! A whole pull: resolve, import layers in parallel, merge, write the EROFS
//! image, publish objects, commit to the DB. Nothing reaches the store's
//! named areas until every digest has been checked, and nothing is named in
//! the DB until every file it needs is durable.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use strata_store::{ImageRecord, ObjectRef, ObjectStager, Store};
use strata_tree::{merge_layer, Digest, Stat, Tree};

use crate::layer::{EntryBudget, UncheckedImport};
use crate::partial::{import_layer_with, PartialPolicy};
use crate::source::{resolve, BlobSource};
use crate::{ImportError, Limits, Platform, Progress};

#[derive(Clone, Debug)]
pub struct PullOptions {
    /// The name the image is recorded under.
    pub name: String,
    pub limits: Limits,
    /// Layers imported at once.
    pub parallel_layers: usize,
    pub platform: Platform,
    /// Which layers may be pulled partially (only what the store lacks).
    pub partial: PartialPolicy,
}

#[derive(Clone, Debug)]
pub struct PullOutcome {
    pub record: ImageRecord,
    pub image_bytes: u64,
    pub objects: u64,
    /// The store already had this manifest under this name; nothing was fetched.
    pub up_to_date: bool,
}

fn fail(point: &'static str) -> Result<(), strata_store::StoreError> {
    strata_failpoint::hit(point).map_err(strata_store::StoreError::from)
}

pub fn pull(
    store: &Store,
    source: &dyn BlobSource,
    options: &PullOptions,
    progress: &Arc<Progress>,
) -> Result<PullOutcome, ImportError> {
    let _lock = store.lock_shared()?;
    let resolved = resolve(source, &options.platform)?;
    if let Some((existing, id)) = up_to_date(store, &options.name, &resolved)? {
        let objects = store.image_objects(&id)?.len() as u64;
        let image_bytes = std::fs::metadata(store.image_path(&id)).map_or(0, |m| m.len());
        return Ok(PullOutcome {
            record: existing,
            image_bytes,
            objects,
            up_to_date: true,
        });
    }
    let layers = &resolved.manifest.layers;
    Progress::add(&progress.layers_total, layers.len() as u64);
    Progress::add(&progress.bytes_total, layers.iter().map(|l| l.size).sum());

    let imports = import_all(store, source, &resolved, options, progress)?;
    // What the layers wrote is flushed to disk while the image is built and
    // their TOC checks run: the publish then waits for little.
    let Built {
        image,
        objects,
        stats,
        stagers,
        index_rows,
    } = beside_sync(store, || build(imports))?;
    let referenced: HashSet<Digest> = objects.iter().map(|o| o.digest).collect();
    fail("pull.after_stage")?;
    for stager in stagers {
        stager.publish_only(|d| referenced.contains(d))?;
    }
    fail("pull.after_publish")?;
    let erofs = store.put_image(&image)?;
    fail("pull.before_db")?;

    let record = image_record(&options.name, &resolved, &erofs, &stats);
    store.commit_image_indexed(&record, &objects, &index_rows)?;
    Ok(PullOutcome {
        record,
        image_bytes: image.len() as u64,
        objects: objects.len() as u64,
        up_to_date: false,
    })
}

/// A pull's image, built from its layers' imports.
struct Built {
    image: Vec<u8>,
    objects: Vec<ObjectRef>,
    stats: strata_tree::TreeStats,
    stagers: Vec<ObjectStager>,
    /// The SHA-256 index rows of the layers read whole with a TOC.
    index_rows: Vec<([u8; 32], ObjectRef)>,
}

/// Merges the layers, writes the EROFS image, and compares each layer read
/// whole with the TOC it announces (reading its contents back, on every
/// core), which yields its index rows. Nothing is published if a layer
/// contradicts its TOC.
fn build(imports: Vec<UncheckedImport>) -> Result<Built, ImportError> {
    let mut tree = Tree::new(Stat::default_dir());
    let mut stagers = Vec::with_capacity(imports.len());
    let mut checks = Vec::with_capacity(imports.len());
    for UncheckedImport { import, check } in imports {
        merge_layer(&mut tree, import.tree)?;
        stagers.push(import.stager);
        checks.push(check);
    }
    tree.compact();
    let objects = ObjectRef::all_in(&tree);
    let stats = tree.stats();
    let image = strata_erofs::into_image(tree)?;
    let mut index_rows = Vec::new();
    for (stager, check) in stagers.iter().zip(checks) {
        if let Some(check) = check {
            index_rows.extend(check.conclude(&stager.contents())?);
        }
    }
    Ok(Built {
        image,
        objects,
        stats,
        stagers,
        index_rows,
    })
}

/// Runs `work` while a thread flushes what was written to the store's
/// filesystem so far.
fn beside_sync<T>(store: &Store, work: impl FnOnce() -> Result<T, ImportError>) -> Result<T, ImportError> {
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let sync = std::thread::Builder::new()
            .name("strata-sync".into())
            .spawn_scoped(scope, || {
                let synced = store.sync_written();
                (synced, started.elapsed())
            });
        let done = work();
        let worked = started.elapsed();
        let (synced, sync_s) = match sync {
            Ok(thread) => thread.join().unwrap_or((Ok(()), Default::default())),
            Err(_) => (Ok(()), Default::default()), // the publish syncs anyway
        };
        tracing::debug!(
            work_s = worked.as_secs_f64(),
            sync_s = sync_s.as_secs_f64(),
            "built the image beside the sync"
        );
        let done = done?;
        synced?;
        Ok(done)
    })
}

/// The image stored as `name`, and its EROFS id, if it is `resolved`'s
/// manifest and intact (not marked broken, its EROFS file present).
pub(crate) fn up_to_date(
    store: &Store,
    name: &str,
    resolved: &crate::ResolvedImage,
) -> Result<Option<(ImageRecord, Digest)>, strata_store::StoreError> {
    let Some(existing) = store.image(name)? else {
        return Ok(None);
    };
    let id = existing.erofs_id()?;
    let intact = existing.broken.is_none() && store.image_path(&id).exists();
    Ok((existing.manifest_digest == resolved.manifest_digest && intact).then_some((existing, id)))
}

/// The record naming `name` as the image `resolved`, whose merged tree
/// (with `stats`) is the EROFS image `erofs`.
pub(crate) fn image_record(
    name: &str,
    resolved: &crate::ResolvedImage,
    erofs: &Digest,
    stats: &strata_tree::TreeStats,
) -> ImageRecord {
    ImageRecord {
        name: name.to_owned(),
        manifest_digest: resolved.manifest_digest.clone(),
        config_digest: resolved.config_digest.clone(),
        erofs: erofs.to_hex(),
        layers: resolved.manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        created_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        logical_bytes: stats.logical_bytes,
        files: stats.files,
        inodes: stats.dirs + stats.leaves,
        broken: None,
    }
}

/// Imports every layer, `parallel_layers` at a time, in manifest order.
/// Stops starting new layers after the first failure.
fn import_all(
    store: &Store,
    source: &dyn BlobSource,
    resolved: &crate::ResolvedImage,
    options: &PullOptions,
    progress: &Arc<Progress>,
) -> Result<Vec<UncheckedImport>, ImportError> {
    let layers = &resolved.manifest.layers;
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<UncheckedImport, ImportError>>>> =
        Mutex::new((0..layers.len()).map(|_| None).collect());
    let workers = options.parallel_layers.clamp(1, layers.len().max(1));
    let budget = EntryBudget::new(options.limits.max_entries_per_image);
    let fresh = crate::partial::indexes_nothing(store)?;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(desc) = layers.get(i) else { break };
                let diff_id = resolved.config.diff_ids.get(i).map(String::as_str);
                let result = import_layer_with(
                    store,
                    source,
                    desc,
                    diff_id,
                    &options.limits,
                    progress,
                    &budget,
                    options.partial,
                    fresh,
                );
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                } else {
                    Progress::add(&progress.layers_done, 1);
                }
                results.lock().expect("no worker panics holding the lock")[i] = Some(result);
            });
        }
    });
    // Every layer has a result unless an earlier failure stopped the
    // workers; that failure is returned first.
    let results = results.into_inner().expect("workers are done");
    let mut out = Vec::with_capacity(layers.len());
    let mut first_error = None;
    for result in results.into_iter().flatten() {
        match result {
            Ok(import) => out.push(import),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

//! Prefetch: fetching the rest of every incomplete lazily pulled image in
//! the background, and completing each image once it misses nothing.
//!
//! One thread polls the store: every named image with a lazy row is
//! incomplete (so is every live snapshot image with a row), and its row
//! lists its SHA-256 names in prefetch order
//! (eStargz's prioritized files, those before `.prefetch.landmark`,
//! first; then TOC order, layer by layer). Names the store lacks are
//! planned into batches of one layer each ([`super::fetch::plan`]) and
//! fetched by `concurrency` workers, a batch at a time
//! ([`LazyFetcher::fetch_batch`]: few ranged requests, one sync, one
//! transaction), with each batch's compressed bytes taken from a token
//! bucket first when a bandwidth is set. Opens do not queue behind
//! prefetch: LAZY fetches them on their own threads, and an open of a
//! name a batch is fetching waits for that one batch. A name stored, by
//! prefetch or by an open, is handed to `fetched` (LAZY stops listing
//! it). An image whose names are all stored is completed
//! ([`super::complete`]), prefetch on or off. Images pulled later are
//! found at the next poll.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_store::{Store, StoreError};
use strata_tree::Digest;

use super::complete::complete;
use super::fetch::{plan_batches, Batch, BatchLimits, LazyFetchError, LazyFetcher};
use super::recipe::Recipe;

/// Told of each name the store holds now.
pub type FetchedFn = dyn Fn(&Digest) + Send + Sync;

#[derive(Clone, Debug)]
pub struct PrefetchConfig {
    /// Fetch what images miss (else only complete those opens filled).
    pub enabled: bool,
    /// Batches fetched at once (at least 1), each by its own worker.
    pub concurrency: usize,
    /// Compressed bytes per second; 0: unlimited.
    pub bandwidth: u64,
    /// How often the store is looked at for new work.
    pub poll: Duration,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        PrefetchConfig {
            enabled: true,
            concurrency: 2,
            bandwidth: 0,
            poll: Duration::from_secs(2),
        }
    }
}

/// What one pass over the store did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub fetched: u64,
    pub failed: u64,
    /// Compressed bytes the batches asked for.
    pub compressed_bytes: u64,
    pub completed: u64,
}

/// The background prefetch; stopped (its threads joined) on drop. A
/// fetch under way is waited for: the caller's `fetch` must be bounded.
pub struct Prefetcher {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

impl Prefetcher {
    pub fn start(
        store: Store,
        config: PrefetchConfig,
        fetcher: Arc<LazyFetcher>,
        fetched: Arc<FetchedFn>,
    ) -> std::io::Result<Prefetcher> {
        let stop = Arc::new(Stop::default());
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lazy-prefetch".into())
                .spawn(move || {
                    let mut wait = config.poll;
                    let mut settled = HashSet::new();
                    while !stop.is_set() {
                        match pass(&store, &config, &fetcher, fetched.as_ref(), &stop, &mut settled) {
                            Ok(done) => {
                                if done != Pass::default() {
                                    tracing::info!(?done, "lazy prefetch pass");
                                }
                                // A registry that fails everything is asked
                                // less and less often.
                                wait = if done.failed > 0 && done.fetched == 0 {
                                    (wait * 2).min(Duration::from_secs(60))
                                } else {
                                    config.poll
                                };
                            }
                            Err(e) => tracing::warn!("lazy prefetch: {e}"),
                        }
                        stop.sleep(wait);
                    }
                })?
        };
        Ok(Prefetcher {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.set();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One pass: fetch what named incomplete images miss, then complete those
/// that miss nothing. `settled`: snapshots' images found to miss nothing
/// by earlier passes, still live (their names are not looked up again).
pub fn pass(
    store: &Store,
    config: &PrefetchConfig,
    fetcher: &LazyFetcher,
    fetched: &FetchedFn,
    stop: &Stop,
    settled: &mut HashSet<Digest>,
) -> Result<Pass, StoreError> {
    let mut done = Pass::default();
    let mut images = Vec::new();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    for record in store.images()? {
        let Ok(id) = record.erofs_id() else { continue };
        if images.contains(&id) {
            continue;
        }
        let Some(needs) = store.lazy_needs(&id)? else {
            continue;
        };
        images.push(id);
        order.extend(needs.into_iter().filter(|name| seen.insert(*name)));
    }
    // Snapshots' images (the containerd fast path's lazy layers) are gc
    // roots, not names: fetched too, but not rewritten, since the
    // snapshotter's records name them.
    let mut snapshots = Vec::new();
    let live = store.live_lazy_images()?;
    // An image id removed and made again (content digests) starts over.
    let live_ids: HashSet<Digest> = live.iter().map(|(id, _)| *id).collect();
    settled.retain(|id| live_ids.contains(id));
    for (id, needs) in live {
        if !images.contains(&id) && !settled.contains(&id) {
            order.extend(needs.iter().filter(|name| seen.insert(**name)));
            snapshots.push((id, needs));
        }
    }
    if order.is_empty() && images.is_empty() {
        return Ok(done);
    }
    let missing: HashSet<Digest> = super::complete::still_missing(store, &order)?.into_iter().collect();
    for (id, needs) in snapshots {
        if needs.iter().all(|name| !missing.contains(name)) {
            settled.insert(id);
        }
    }
    for name in order.iter().filter(|n| !missing.contains(n)) {
        fetched(name);
    }
    if config.enabled && !missing.is_empty() {
        let names: Vec<Digest> = order.into_iter().filter(|n| missing.contains(n)).collect();
        let got = fetch_names(store, fetcher, &names, config, fetched, stop)?;
        for e in &got.failures {
            tracing::warn!("lazy prefetch: {e}");
        }
        done.fetched += got.pass.fetched;
        done.failed += got.pass.failed;
        done.compressed_bytes += got.pass.compressed_bytes;
    }
    for id in images {
        if stop.is_set() {
            break;
        }
        match complete(store, &id) {
            Ok(Some(completed)) => {
                done.completed += 1;
                tracing::info!(
                    "completed lazily pulled image {} as {} ({} objects): {}",
                    completed.old,
                    completed.new,
                    completed.objects,
                    completed.names.join(", ")
                );
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("completing lazily pulled image {id}: {e}"),
        }
    }
    Ok(done)
}

/// What [`fetch_names`] did.
#[derive(Debug, Default)]
pub struct FetchedNames {
    /// `fetched`: names the store holds now; `failed`: names it does not
    /// (an open's fetch under way is counted in neither).
    pub pass: Pass,
    /// Bytes of the contents fetched (uncompressed).
    pub content_bytes: u64,
    pub failures: Vec<LazyFetchError>,
}

/// Fetches `names` (missing contents, in prefetch order) in batches on
/// `config.concurrency` workers; with a bandwidth, each batch's bytes are
/// taken from the bucket before it starts (and batches hold about a
/// second's bytes). `fetched` is told of every name stored. Stops after
/// the batches under way once `stop` is set.
pub fn fetch_names(
    store: &Store,
    fetcher: &LazyFetcher,
    names: &[Digest],
    config: &PrefetchConfig,
    fetched: &FetchedFn,
    stop: &Stop,
) -> Result<FetchedNames, StoreError> {
    let mut out = FetchedNames::default();
    let mut wanted = Vec::with_capacity(names.len());
    for name in names {
        let Some(row) = store.lazy_recipe(name)? else {
            out.failures.push(LazyFetchError::Unknown { sha256: *name });
            continue;
        };
        match Recipe::decode(&row) {
            Ok(recipe) => wanted.push((*name, recipe)),
            Err(source) => out.failures.push(LazyFetchError::Recipe { sha256: *name, source }),
        }
    }
    let (batches, unplanned) = plan_batches(wanted, BatchLimits::for_bandwidth(config.bandwidth));
    out.failures
        .extend(unplanned.into_iter().map(|u| LazyFetchError::Recipe {
            sha256: u.name,
            source: u.error,
        }));
    out.pass.failed = out.failures.len() as u64;
    run(batches.into(), config, fetcher, fetched, stop, &mut out);
    Ok(out)
}

/// Runs `batches` in order on `config.concurrency` workers.
fn run(
    batches: VecDeque<Batch>,
    config: &PrefetchConfig,
    fetcher: &LazyFetcher,
    fetched: &FetchedFn,
    stop: &Stop,
    out: &mut FetchedNames,
) {
    let batches = Mutex::new(batches);
    let totals = Mutex::new(std::mem::take(out));
    let bucket = Bucket::new(config.bandwidth);
    std::thread::scope(|scope| {
        for _ in 0..config.concurrency.max(1) {
            scope.spawn(|| loop {
                if stop.is_set() {
                    break;
                }
                let Some(batch) = lock(&batches).pop_front() else { break };
                let asked = batch.request_bytes();
                if !bucket.take(asked, stop) {
                    break;
                }
                let started = Instant::now();
                let outcome = fetcher.fetch_batch(&batch);
                tracing::debug!(
                    layer = %batch.layer.digest,
                    contents = batch.contents.len(),
                    asked,
                    fetched = outcome.fetched,
                    stored = outcome.stored.len(),
                    left = outcome.left.len(),
                    failed = outcome.failed.len(),
                    "lazy prefetch batch in {:?}",
                    started.elapsed()
                );
                for name in &outcome.stored {
                    fetched(name);
                }
                let mut totals = lock(&totals);
                totals.pass.fetched += outcome.stored.len() as u64;
                totals.pass.failed += outcome.failed.len() as u64;
                totals.pass.compressed_bytes += asked;
                totals.content_bytes += outcome.fetched_bytes;
                totals.failures.extend(outcome.failed);
            });
        }
    });
    *out = totals.into_inner().unwrap_or_else(PoisonError::into_inner);
}

/// A token bucket of no depth: each take of `n` bytes starts `n / rate`
/// seconds after the one before it (or now, if that is later), so the
/// bytes started by time `t` are at most `rate * t` plus one batch.
struct Bucket {
    rate: u64,
    next: Mutex<Option<Instant>>,
}

impl Bucket {
    fn new(rate: u64) -> Self {
        Bucket {
            rate,
            next: Mutex::new(None),
        }
    }

    /// Waits for `bytes`' turn; false if stopped meanwhile.
    fn take(&self, bytes: u64, stop: &Stop) -> bool {
        if self.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let start = {
            let mut next = lock(&self.next);
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate as f64));
            start
        };
        let wait = start.saturating_duration_since(now);
        wait.is_zero() || !stop.sleep(wait)
    }
}

/// A stop flag that wakes sleepers.
#[derive(Default)]
pub struct Stop {
    set: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    pub fn set(&self) {
        *lock(&self.set) = true;
        self.wake.notify_all();
    }

    pub fn is_set(&self) -> bool {
        *lock(&self.set)
    }

    /// Sleeps `limit` or until set; true if set.
    pub fn sleep(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut set = lock(&self.set);
        while !*set {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            set = self
                .wake
                .wait_timeout(set, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *set
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_spaces_takes_by_their_bytes() {
        let stop = Stop::default();
        let bucket = Bucket::new(1_000_000);
        let started = Instant::now();
        // The first starts at once; the next 100 ms later, the third 200 ms.
        for _ in 0..3 {
            assert!(bucket.take(100_000, &stop));
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(195), "{took:?}");
        assert!(took < Duration::from_millis(600), "{took:?}");
        assert!(Bucket::new(0).take(u64::MAX, &stop), "0 is unlimited");
        stop.set();
        assert!(!bucket.take(10_000_000, &stop), "a stop ends the wait");
    }
}

//! Prefetch: fetching the rest of every incomplete lazily pulled image in
//! the background, and completing each image once it misses nothing.
//!
//! One thread polls the store: every named image with a lazy row is
//! incomplete, and its row lists its SHA-256 names in prefetch order
//! (eStargz's prioritized files, those before `.prefetch.landmark`,
//! first; then TOC order, layer by layer). Names the store lacks are
//! fetched by `concurrency` workers, each through the caller's `fetch`
//! (LAZY's flight, so an open of the same name joins it), with the
//! compressed bytes of each content taken from a token bucket first when
//! a bandwidth is set. A name stored, by prefetch or by an open, is handed
//! to `fetched` (LAZY stops listing it). An image whose names are all
//! stored is completed ([`super::complete`]), prefetch on or off.
//! Images pulled later are found at the next poll.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_store::{Store, StoreError};
use strata_tree::Digest;

use super::complete::complete;
use super::recipe::Recipe;

/// Fetches one missing content (`name`, `size` bytes) into the store.
pub type FetchFn = dyn Fn(&Digest, u64) -> Result<(), String> + Send + Sync;
/// Told of each name the store holds now.
pub type FetchedFn = dyn Fn(&Digest) + Send + Sync;

#[derive(Clone, Debug)]
pub struct PrefetchConfig {
    /// Fetch what images miss (else only complete those opens filled).
    pub enabled: bool,
    /// Contents fetched at once (at least 1).
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
    /// Compressed bytes the fetched contents' recipes name.
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
        fetch: Arc<FetchFn>,
        fetched: Arc<FetchedFn>,
    ) -> std::io::Result<Prefetcher> {
        let stop = Arc::new(Stop::default());
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("lazy-prefetch".into())
                .spawn(move || {
                    let mut wait = config.poll;
                    while !stop.is_set() {
                        match pass(&store, &config, fetch.as_ref(), fetched.as_ref(), &stop) {
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

/// One content to fetch.
struct Job {
    name: Digest,
    size: u64,
    compressed: u64,
}

/// One pass: fetch what named incomplete images miss, then complete those
/// that miss nothing.
pub fn pass(
    store: &Store,
    config: &PrefetchConfig,
    fetch: &FetchFn,
    fetched: &FetchedFn,
    stop: &Stop,
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
    if images.is_empty() {
        return Ok(done);
    }
    let missing: HashSet<Digest> = super::complete::still_missing(store, &order)?.into_iter().collect();
    for name in order.iter().filter(|n| !missing.contains(n)) {
        fetched(name);
    }
    if config.enabled && !missing.is_empty() {
        let mut jobs = VecDeque::new();
        for name in order.into_iter().filter(|n| missing.contains(n)) {
            let Some(row) = store.lazy_recipe(&name)? else { continue };
            let Ok(recipe) = Recipe::decode(&row) else { continue };
            let compressed = recipe.chunks.iter().filter(|c| !c.zeros).map(|c| c.end - c.start).sum();
            jobs.push_back(Job {
                name,
                size: recipe.size,
                compressed,
            });
        }
        run(jobs, config, fetch, fetched, stop, &mut done);
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

/// Runs `jobs` in order on `config.concurrency` workers.
fn run(
    jobs: VecDeque<Job>,
    config: &PrefetchConfig,
    fetch: &FetchFn,
    fetched: &FetchedFn,
    stop: &Stop,
    done: &mut Pass,
) {
    let jobs = Mutex::new(jobs);
    let totals = Mutex::new(Pass::default());
    let bucket = Bucket::new(config.bandwidth);
    std::thread::scope(|scope| {
        for _ in 0..config.concurrency.max(1) {
            scope.spawn(|| loop {
                if stop.is_set() {
                    break;
                }
                let Some(job) = lock(&jobs).pop_front() else { break };
                if !bucket.take(job.compressed, stop) {
                    break;
                }
                let outcome = fetch(&job.name, job.size);
                let mut totals = lock(&totals);
                match outcome {
                    Ok(()) => {
                        fetched(&job.name);
                        totals.fetched += 1;
                        totals.compressed_bytes += job.compressed;
                    }
                    Err(e) => {
                        tracing::warn!("lazy prefetch of sha256:{}: {e}", job.name);
                        totals.failed += 1;
                    }
                }
            });
        }
    });
    let totals = totals.into_inner().unwrap_or_else(PoisonError::into_inner);
    done.fetched += totals.fetched;
    done.failed += totals.failed;
    done.compressed_bytes += totals.compressed_bytes;
}

/// A token bucket of no depth: each take of `n` bytes starts `n / rate`
/// seconds after the one before it (or now, if that is later), so the
/// bytes started by time `t` are at most `rate * t` plus one content.
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

//! Fetching one missing content of a lazily pulled image, by its SHA-256:
//! its recipe's ranges read through [`BlobSource::read_ranges`], each chunk
//! decompressed (and checked, where the TOC gives a chunk digest), the
//! whole checked against the SHA-256 *before* it is published as an
//! ordinary object, then its SHA-256 index row and its alias. Source
//! errors are retried with backoff, within a bounded time; wrong bytes are
//! not retried, and nothing of them is stored.
//!
//! Prefetch fetches in batches ([`plan`], `batch.rs`): many contents of
//! one layer in few ranged requests, published with one sync and one
//! transaction. A name is fetched by one fetch or batch at a time (claims,
//! `batch.rs`): an open of a name a batch is fetching waits for that batch.

mod batch;
pub mod plan;

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use strata_store::{ObjectRef, ObjectStager, SharedGuard, Store, StoreError};
use strata_tree::Digest;

use super::recipe::{Recipe, RecipeError};
use crate::partial::plan::{merge, CALL_BYTES, MAX_CHUNK, MERGE_GAP};
use crate::toc::{ByteRange, Chunk, ChunkDecoder, Sha256Digest, TocError, TocFormat};
use crate::{BlobSource, Descriptor, ImportError};

pub use batch::BatchOutcome;
pub use plan::{plan_batches, Batch, BatchLimits, Unplanned, Wanted};

/// Opens the source a recipe names (`HOST/REPO:TAG`, `oci:DIR:TAG`).
pub type SourceOpener = dyn Fn(&str) -> Result<Arc<dyn BlobSource>, ImportError> + Send + Sync;

/// Retries of a fetch whose source failed.
#[derive(Clone, Copy, Debug)]
pub struct FetchPolicy {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// The wait after the first failure; doubled after each.
    pub first_backoff: Duration,
    /// No attempt starts once this much time has passed.
    pub give_up_after: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            give_up_after: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LazyFetchError {
    #[error("no lazily pulled image needs sha256:{sha256}")]
    Unknown { sha256: Digest },
    #[error("sha256:{sha256}: {source}")]
    Recipe {
        sha256: Digest,
        #[source]
        source: RecipeError,
    },
    /// The bytes do not verify: not retried, nothing stored.
    #[error("sha256:{sha256}: the source's bytes do not verify: {reason}")]
    Mismatch { sha256: Digest, reason: String },
    #[error("sha256:{sha256}: after {attempts} attempt(s): {source}")]
    Source {
        sha256: Digest,
        attempts: u32,
        #[source]
        source: Box<ImportError>,
    },
    #[error("sha256:{sha256}: the store: {source}")]
    Store {
        sha256: Digest,
        #[source]
        source: Box<StoreError>,
    },
    /// The batch that held it failed as a whole (its source, the store).
    #[error("sha256:{sha256}: its batch failed: {reason}")]
    Batch { sha256: Digest, reason: String },
}

/// Brings missing contents into the store for LAZY (behind its
/// `ObjectFetcher` seam, which the CLI implements with this).
pub struct LazyFetcher {
    store: Store,
    open_source: Box<SourceOpener>,
    sources: Mutex<HashMap<String, Arc<dyn BlobSource>>>,
    policy: FetchPolicy,
    /// Names a fetch or a batch is fetching now.
    claims: batch::Claims,
}

impl LazyFetcher {
    pub fn new(store: Store, open_source: Box<SourceOpener>, policy: FetchPolicy) -> Self {
        LazyFetcher {
            store,
            open_source,
            sources: Mutex::new(HashMap::new()),
            policy,
            claims: batch::Claims::default(),
        }
    }

    /// The size of content `sha256` if a lazily pulled image needs it and
    /// the store lacks it (for LAZY's lookups of names it does not list).
    pub fn missing_size(&self, sha256: &Digest) -> Result<Option<u64>, LazyFetchError> {
        let store_err = |e| self.store_error(sha256, e);
        if self.store.open_alias(sha256).map_err(store_err)?.is_some() {
            return Ok(None);
        }
        Ok(self.recipe(sha256)?.map(|r| r.size))
    }

    /// The content if the store holds it: its alias, or the object the
    /// SHA-256 index names (whose alias is then linked).
    pub fn open_stored(&self, sha256: &Digest) -> Result<Option<File>, LazyFetchError> {
        let store_err = |e| self.store_error(sha256, e);
        if let Some(file) = self.store.open_alias(sha256).map_err(store_err)? {
            return Ok(Some(file));
        }
        let _lock = self.store.lock_shared().map_err(store_err)?;
        let Some(object) = self
            .store
            .objects_by_sha256(&[sha256.0])
            .map_err(store_err)?
            .pop()
            .flatten()
        else {
            return Ok(None);
        };
        self.store.add_alias(sha256, &object.digest).map_err(store_err)?;
        self.store.open_alias(sha256).map_err(store_err)
    }

    /// Fetches, verifies and stores content `sha256`; returns it opened.
    /// If a batch (prefetch) is fetching it, waits for that batch and
    /// takes what it stored; fetches it here only if the batch did not.
    pub fn fetch(&self, sha256: &Digest) -> Result<File, LazyFetchError> {
        let claim = match self.claim(sha256)? {
            Claimed::Stored(file) => return Ok(file),
            Claimed::Ours(claim) => claim,
        };
        let verified = self.fetch_claimed(sha256)?;
        verified
            .publish(&self.store, sha256)
            .map_err(|e| self.store_error(sha256, e))?;
        drop(claim);
        self.store
            .open_alias(sha256)
            .map_err(|e| self.store_error(sha256, e))?
            .ok_or_else(|| {
                self.store_error(
                    sha256,
                    StoreError::BadRecord {
                        key: sha256.to_hex(),
                        reason: "its alias vanished right after it was linked".into(),
                    },
                )
            })
    }

    /// [`fetch`](Self::fetch) for an open that waits on it (LAZY): answers
    /// as soon as the content is verified, with the staged file, which is
    /// the object's inode to be, so the reader shares the object's page
    /// cache. Publishing (the syncs, the rename, the index row, the alias)
    /// goes on in the background with the name claimed: another fetch of
    /// it waits, then finds it stored. If publishing fails the reader
    /// still has the verified bytes; the name is fetched again later.
    pub fn fetch_for_open(&self, sha256: &Digest) -> Result<File, LazyFetchError> {
        let claim = match self.claim(sha256)? {
            Claimed::Stored(file) => return Ok(file),
            Claimed::Ours(claim) => claim,
        };
        let verified = self.fetch_claimed(sha256)?;
        let file = verified
            .stager
            .open_staged(&verified.object.digest)
            .map_err(|e| self.store_error(sha256, e))?;
        let (store, name) = (self.store.clone(), *sha256);
        let publish = move || {
            if let Err(e) = verified.publish(&store, &name) {
                tracing::warn!(sha256 = %name, "lazy: storing a fetched content: {e}; it is fetched again when next needed");
            }
            drop(claim);
        };
        if let Err(e) = std::thread::Builder::new().name("lazy-publish".into()).spawn(publish) {
            // The reader keeps its verified bytes; the content is not kept.
            tracing::warn!(%sha256, "lazy: no thread to store a fetched content: {e}; it is fetched again when next needed");
        }
        Ok(file)
    }

    /// Claims `sha256` for a fetch here, or waits for the fetch or batch
    /// that has it and takes what it stored.
    fn claim(&self, sha256: &Digest) -> Result<Claimed, LazyFetchError> {
        loop {
            match self.claims.claim(sha256) {
                Ok(claim) => return Ok(Claimed::Ours(claim)),
                Err(busy) => {
                    busy.wait();
                    if let Some(file) = self.open_stored(sha256)? {
                        return Ok(Claimed::Stored(file));
                    }
                }
            }
        }
    }

    /// Fetches and verifies `sha256`, the name claimed by the caller.
    fn fetch_claimed(&self, sha256: &Digest) -> Result<Verified, LazyFetchError> {
        let recipe = self
            .recipe(sha256)?
            .ok_or(LazyFetchError::Unknown { sha256: *sha256 })?;
        let recipe_err = |source| LazyFetchError::Recipe {
            sha256: *sha256,
            source,
        };
        let format = recipe.format().map_err(recipe_err)?;
        let chunks = recipe.chunks().map_err(recipe_err)?;
        self.retrying(&recipe.source, sha256, || {
            self.fetch_once(sha256, &recipe, format, &chunks)
        })
        .map_err(|gave_up| match gave_up {
            GaveUp::Failed(e) => e,
            GaveUp::Source { attempts, error } => LazyFetchError::Source {
                sha256: *sha256,
                attempts,
                source: Box::new(error),
            },
        })
    }

    /// Runs `attempt` until it succeeds or fails for good; a source error
    /// is retried with backoff, on a new source (new connections), while
    /// the policy allows.
    fn retrying<T>(
        &self,
        reference: &str,
        what: &Digest,
        mut attempt: impl FnMut() -> Result<T, Attempt>,
    ) -> Result<T, GaveUp> {
        let started = Instant::now();
        let mut backoff = self.policy.first_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            match attempt() {
                Ok(done) => return Ok(done),
                Err(Attempt::Failed(e)) => return Err(GaveUp::Failed(e)),
                Err(Attempt::Source(error)) => {
                    let out_of_time = started.elapsed() + backoff >= self.policy.give_up_after;
                    if attempts >= self.policy.attempts.max(1) || out_of_time {
                        return Err(GaveUp::Source { attempts, error });
                    }
                    tracing::info!(sha256 = %what, attempts, %error, "lazy fetch failed; retrying in {backoff:?}");
                    std::thread::sleep(backoff);
                    backoff = backoff.saturating_mul(2);
                    // A new connection next time: the old one may be dead.
                    self.sources.lock().expect("no panics holding it").remove(reference);
                }
            }
        }
    }

    fn recipe(&self, sha256: &Digest) -> Result<Option<Recipe>, LazyFetchError> {
        let row = self
            .store
            .lazy_recipe(sha256)
            .map_err(|e| self.store_error(sha256, e))?;
        row.map(|bytes| Recipe::decode(&bytes))
            .transpose()
            .map_err(|source| LazyFetchError::Recipe {
                sha256: *sha256,
                source,
            })
    }

    fn store_error(&self, sha256: &Digest, e: StoreError) -> LazyFetchError {
        LazyFetchError::Store {
            sha256: *sha256,
            source: Box::new(e),
        }
    }

    fn source(&self, reference: &str) -> Result<Arc<dyn BlobSource>, ImportError> {
        let mut sources = self.sources.lock().expect("no panics holding it");
        if let Some(source) = sources.get(reference) {
            return Ok(source.clone());
        }
        let source = (self.open_source)(reference)?;
        sources.insert(reference.to_owned(), source.clone());
        Ok(source)
    }

    fn fetch_once(
        &self,
        sha256: &Digest,
        recipe: &Recipe,
        format: TocFormat,
        chunks: &[Chunk],
    ) -> Result<Verified, Attempt> {
        let store_err = |e| Attempt::Failed(self.store_error(sha256, e));
        let mismatch = |reason: String| {
            Attempt::Failed(LazyFetchError::Mismatch {
                sha256: *sha256,
                reason,
            })
        };
        let started = Instant::now();
        let source = self.source(&recipe.source).map_err(Attempt::Source)?;
        let desc = recipe.layer();
        let lock = self.store.lock_shared().map_err(store_err)?;
        let mut stager = self.store.stager().map_err(store_err)?;
        let mut writer = stager.writer().map_err(store_err)?;
        let mut sha = Sha256::new();
        let mut written = 0u64;
        let mut decoder = ChunkDecoder::new(format);
        for call in calls(chunks) {
            let ranges: Vec<ByteRange> = merge(call.iter().map(|c| c.compressed), MERGE_GAP);
            let answers = read_call(source.as_ref(), &desc, &ranges).map_err(Attempt::Source)?;
            for chunk in call {
                let bytes = chunk_bytes(&mut decoder, chunk, &ranges, &answers).map_err(|e| mismatch(e.to_string()))?;
                written += bytes.len() as u64;
                if written > recipe.size {
                    return Err(mismatch(format!("more than {} bytes", recipe.size)));
                }
                sha.update(&bytes);
                writer.write(&bytes).map_err(store_err)?;
            }
        }
        let actual = Sha256Digest(sha.finalize().into());
        if written != recipe.size || actual.0 != sha256.0 {
            // The writer's file goes with the stager.
            return Err(mismatch(format!("{written} bytes hashing to {actual}")));
        }
        let staged = stager.finish(writer).map_err(store_err)?;
        Ok(Verified {
            stager,
            _lock: lock,
            object: ObjectRef {
                digest: staged.digest,
                size: staged.size,
            },
            started,
        })
    }
}

/// Why a caller of [`LazyFetcher::claim`] need not fetch, or may.
enum Claimed {
    /// Another fetch stored it meanwhile.
    Stored(File),
    Ours(batch::ClaimGuard),
}

/// A content fetched and verified against its SHA-256, staged but not
/// yet an object.
struct Verified {
    stager: ObjectStager,
    /// Held until the object, its row and its alias are in: gc waits.
    _lock: SharedGuard,
    object: ObjectRef,
    started: Instant,
}

impl Verified {
    /// Makes it an object: synced and renamed, its SHA-256 index row, its
    /// alias.
    fn publish(self, store: &Store, sha256: &Digest) -> Result<(), StoreError> {
        let verified = self.started.elapsed();
        self.stager.publish()?;
        let published = self.started.elapsed();
        store.record_sha256(&[(sha256.0, self.object)])?;
        let recorded = self.started.elapsed();
        store.add_alias(sha256, &self.object.digest)?;
        tracing::debug!(
            %sha256,
            bytes = self.object.size,
            ?verified,
            ?published,
            ?recorded,
            aliased = ?self.started.elapsed(),
            "lazy fetch stored"
        );
        Ok(())
    }
}

enum Attempt {
    /// The source failed: worth another try.
    Source(ImportError),
    /// Wrong bytes, a store error: final.
    Failed(LazyFetchError),
}

/// How [`LazyFetcher::retrying`] ended without a result.
enum GaveUp {
    Failed(LazyFetchError),
    /// The source failed every attempt; the last error.
    Source {
        attempts: u32,
        error: ImportError,
    },
}

/// One `read_ranges` call for `ranges`, each answer checked to be as long
/// as asked.
fn read_call(source: &dyn BlobSource, desc: &Descriptor, ranges: &[ByteRange]) -> Result<Vec<Vec<u8>>, ImportError> {
    let asked: Vec<std::ops::Range<u64>> = ranges.iter().map(|r| r.start..r.end).collect();
    let answers = source.read_ranges(desc, &asked)?;
    if answers.len() != ranges.len() || answers.iter().zip(ranges).any(|(a, r)| a.len() as u64 != r.len()) {
        return Err(ImportError::Malformed {
            what: "ranged read",
            reason: "the source answered other lengths than asked".into(),
        });
    }
    Ok(answers)
}

/// The chunks in groups whose compressed bytes stay within a call.
fn calls(chunks: &[Chunk]) -> Vec<Vec<&Chunk>> {
    let mut out: Vec<Vec<&Chunk>> = Vec::new();
    let mut bytes = 0u64;
    for chunk in chunks {
        let own = if chunk.zeros { 0 } else { chunk.compressed.len() };
        match out.last_mut() {
            Some(call) if bytes + own <= CALL_BYTES => {
                bytes += own;
                call.push(chunk);
            }
            _ => {
                bytes = own;
                out.push(vec![chunk]);
            }
        }
    }
    out
}

/// One chunk's bytes from the call's answers, decompressed and checked.
fn chunk_bytes(
    decoder: &mut ChunkDecoder,
    chunk: &Chunk,
    ranges: &[ByteRange],
    answers: &[Vec<u8>],
) -> Result<Vec<u8>, TocError> {
    if chunk.size > MAX_CHUNK {
        return Err(TocError::LengthMismatch {
            what: "a file's chunk",
            announced: chunk.size,
            actual: MAX_CHUNK,
        });
    }
    if chunk.zeros {
        return Ok(vec![0; usize::try_from(chunk.size).unwrap_or(0)]);
    }
    let r = chunk.compressed;
    let at = ranges.partition_point(|x| x.start <= r.start);
    let Some(i) = at.checked_sub(1).filter(|&i| r.end <= ranges[i].end) else {
        return Err(TocError::LengthMismatch {
            what: "a file's chunk range",
            announced: r.len(),
            actual: 0,
        });
    };
    let from = usize::try_from(r.start - ranges[i].start).expect("within a fetched range");
    let to = usize::try_from(r.end - ranges[i].start).expect("within a fetched range");
    decoder.decompress(&answers[i][from..to], chunk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn chunk(start: u64, end: u64, size: u64, digest: Option<Sha256Digest>) -> Chunk {
        Chunk {
            file_offset: 0,
            size,
            compressed: ByteRange { start, end },
            inner_offset: 0,
            digest,
            zeros: false,
        }
    }

    #[test]
    fn chunks_are_grouped_into_calls_and_found_in_merged_ranges() {
        let big = CALL_BYTES / 2 + 1;
        let chunks = [
            chunk(0, big, 1, None),
            chunk(big, 2 * big, 1, None),
            chunk(2 * big, 2 * big + 10, 1, None),
        ];
        let grouped = calls(&chunks);
        assert_eq!(grouped.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2]);

        let (a, b) = (gz(b"first chunk"), gz(b"second"));
        let blob: Vec<u8> = [a.clone(), vec![0; 100], b.clone()].concat();
        let second = a.len() as u64 + 100;
        let chunks = [
            chunk(0, a.len() as u64, 11, Some(Sha256Digest::of(b"first chunk"))),
            chunk(second, second + b.len() as u64, 6, None),
        ];
        let ranges = merge(chunks.iter().map(|c| c.compressed), MERGE_GAP);
        assert_eq!(ranges.len(), 1, "a gap of 100 bytes is merged");
        let answers = vec![blob.clone()];
        assert_eq!(
            chunk_bytes(
                &mut ChunkDecoder::new(TocFormat::Estargz),
                &chunks[0],
                &ranges,
                &answers
            )
            .unwrap(),
            b"first chunk"
        );
        assert_eq!(
            chunk_bytes(
                &mut ChunkDecoder::new(TocFormat::Estargz),
                &chunks[1],
                &ranges,
                &answers
            )
            .unwrap(),
            b"second"
        );
        // A chunk whose digest does not match is refused.
        let lying = chunk(0, a.len() as u64, 11, Some(Sha256Digest::of(b"other")));
        assert!(chunk_bytes(&mut ChunkDecoder::new(TocFormat::Estargz), &lying, &ranges, &answers).is_err());
        // Flipped bytes do not decompress.
        let flipped = vec![blob.iter().map(|b| !b).collect::<Vec<u8>>()];
        assert!(chunk_bytes(
            &mut ChunkDecoder::new(TocFormat::Estargz),
            &chunks[1],
            &ranges,
            &flipped
        )
        .is_err());
    }
}

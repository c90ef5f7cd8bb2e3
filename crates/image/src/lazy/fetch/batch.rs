//! Fetching a batch of contents of one layer ([`super::plan`]) together:
//! their ranges read in few `read_ranges` calls, each content decompressed
//! and checked (chunk digests, size, SHA-256) on its own, and every
//! content that verifies published with one sync (the stager's), one
//! transaction (the SHA-256 index rows) and then its alias, all under the
//! store's shared lock. A content whose bytes are wrong is left out, and
//! the others are stored.
//!
//! Crash order, as every publish: staged files in `tmp/`, `syncfs`,
//! renames into `objects/`, then the index rows, then the aliases. A crash
//! leaves staged files (start-up recovery), objects without rows (gc), or
//! rows without aliases (the next open links them).
//!
//! **Claims** keep one fetch per name in this process: a batch claims the
//! names it fetches and leaves out names claimed already (an open's fetch
//! under way), and [`LazyFetcher::fetch`] of a name a batch holds waits
//! for the batch, then takes what it stored.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};
use strata_store::{ObjectRef, StoreError};
use strata_tree::Digest;

use super::plan::{self, Batch, Wanted};
use super::{chunk_bytes, read_call, Attempt, GaveUp, LazyFetchError, LazyFetcher};
use crate::toc::{ByteRange, ChunkDecoder, Sha256Digest, TocFormat};

/// What one batch did.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Names the store holds now: fetched here, or found stored.
    pub stored: Vec<Digest>,
    /// Contents this batch fetched and published, and their bytes.
    pub fetched: u64,
    pub fetched_bytes: u64,
    /// Names another fetch had claimed (an open's): left to it.
    pub left: Vec<Digest>,
    /// Names not stored, and why.
    pub failed: Vec<LazyFetchError>,
}

impl LazyFetcher {
    /// Fetches, verifies and stores `batch`'s contents (see the module).
    /// Never waits for another fetch.
    pub fn fetch_batch(&self, batch: &Batch) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let mut claims = Vec::with_capacity(batch.contents.len());
        let mut mine = Vec::with_capacity(batch.contents.len());
        for content in &batch.contents {
            match self.claims.try_claim(&content.name) {
                Some(claim) => {
                    claims.push(claim);
                    mine.push(content);
                }
                None => out.left.push(content.name),
            }
        }
        let claimed: Vec<Digest> = mine.iter().map(|c| c.name).collect();
        let mine = match self.drop_stored(mine, &mut out) {
            Ok(mine) => mine,
            Err(e) => {
                fail_all(&mut out, claimed.iter(), &format!("the store: {e}"));
                return out;
            }
        };
        match mine.as_slice() {
            [] => {}
            // One content, maybe larger than a call: streamed call by call.
            [one] => match self.fetch_claimed(&one.name) {
                Ok(_) => {
                    out.stored.push(one.name);
                    out.fetched += 1;
                    out.fetched_bytes += one.size;
                }
                Err(e) => out.failed.push(e),
            },
            several => self.fetch_together(batch, several, &mut out),
        }
        // The claims go last: a waiting open finds the content stored.
        drop(claims);
        out
    }

    /// Leaves out contents the store holds now (an open or a pull stored
    /// them since the plan), linking their aliases.
    fn drop_stored<'a>(&self, mine: Vec<&'a Wanted>, out: &mut BatchOutcome) -> Result<Vec<&'a Wanted>, StoreError> {
        let keys: Vec<[u8; 32]> = mine.iter().map(|c| c.name.0).collect();
        let _lock = self.store.lock_shared()?;
        let found = self.store.objects_by_sha256(&keys)?;
        let mut left = Vec::with_capacity(mine.len());
        for (content, object) in mine.into_iter().zip(found) {
            match object {
                Some(object) => {
                    // A missing alias is harmless: the next open links it.
                    if let Err(e) = self.store.add_alias(&content.name, &object.digest) {
                        tracing::warn!("lazy prefetch: the alias of sha256:{}: {e}", content.name);
                    }
                    out.stored.push(content.name);
                }
                None => left.push(content),
            }
        }
        Ok(left)
    }

    /// Several contents: every call read first (within the batch's bytes),
    /// then each content checked and staged, then one publish.
    fn fetch_together(&self, batch: &Batch, contents: &[&Wanted], out: &mut BatchOutcome) {
        let names = || contents.iter().map(|c| &c.name);
        let calls = plan::calls(contents.iter().copied());
        let first = &contents[0].name;
        let started = std::time::Instant::now();
        let read = self.retrying(&batch.source, first, || {
            let source = self.source(&batch.source).map_err(Attempt::Source)?;
            let mut ranges = Vec::new();
            let mut answers = Vec::new();
            for call in &calls {
                answers.extend(read_call(source.as_ref(), &batch.layer, call).map_err(Attempt::Source)?);
                ranges.extend_from_slice(call);
            }
            Ok((ranges, answers))
        });
        let (ranges, answers) = match read {
            Ok(read) => read,
            Err(GaveUp::Source { attempts, error }) => {
                let reason = format!("{} after {attempts} attempt(s): {error}", batch.layer.digest);
                fail_all(out, names(), &reason);
                return;
            }
            Err(GaveUp::Failed(e)) => {
                fail_all(out, names(), &e.to_string());
                return;
            }
        };
        let read_in = started.elapsed();
        let stored = self.store_verified(batch.format, contents, &ranges, &answers, out);
        tracing::debug!(
            ranges = ranges.len(),
            calls = calls.len(),
            "lazy batch of {} contents: read in {read_in:?}, checked and stored in {:?}",
            contents.len(),
            started.elapsed() - read_in
        );
        if let Err(e) = stored {
            let done: std::collections::HashSet<&Digest> = out.stored.iter().collect();
            let failed: Vec<&Digest> = names()
                .filter(|n| !done.contains(n) && !out.failed.iter().any(|f| failed_name(f) == Some(n)))
                .collect();
            fail_all(out, failed.into_iter(), &format!("the store: {e}"));
        }
    }

    /// Stages every content of `contents` whose bytes verify, publishes
    /// them, records their index rows in one transaction and links their
    /// aliases, under the store's shared lock.
    fn store_verified(
        &self,
        format: TocFormat,
        contents: &[&Wanted],
        ranges: &[ByteRange],
        answers: &[Vec<u8>],
        out: &mut BatchOutcome,
    ) -> Result<(), StoreError> {
        // Held until the objects, their rows and their aliases are in.
        let _lock = self.store.lock_shared()?;
        let mut stager = self.store.stager()?;
        let mut rows = Vec::with_capacity(contents.len());
        let mut decoder = ChunkDecoder::new(format);
        for content in contents {
            let mut writer = stager.writer()?;
            match write_content(&mut decoder, content, ranges, answers, &mut |bytes| writer.write(bytes)) {
                Ok(()) => {
                    let staged = stager.finish(writer)?;
                    let object = ObjectRef {
                        digest: staged.digest,
                        size: staged.size,
                    };
                    rows.push((content.name.0, object));
                }
                // Its file stays unfinished: the stager removes it.
                Err(Wrong::Bytes(reason)) => {
                    let e = LazyFetchError::Mismatch {
                        sha256: content.name,
                        reason,
                    };
                    tracing::warn!("lazy prefetch: {e}");
                    out.failed.push(e);
                }
                Err(Wrong::Store(e)) => return Err(e),
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let staged = std::time::Instant::now();
        stager.publish()?;
        let published = std::time::Instant::now();
        self.store.record_sha256(&rows)?;
        for (sha, object) in &rows {
            let name = Digest(*sha);
            // A missing alias is harmless: the next open links it.
            if let Err(e) = self.store.add_alias(&name, &object.digest) {
                tracing::warn!("lazy prefetch: the alias of sha256:{name}: {e}");
            }
            out.stored.push(name);
            out.fetched += 1;
            out.fetched_bytes += object.size;
        }
        tracing::debug!(
            "lazy batch of {} contents: published in {:?}, rows and aliases in {:?}",
            rows.len(),
            published - staged,
            published.elapsed()
        );
        Ok(())
    }
}

/// Why a content of a batch was not staged.
enum Wrong {
    /// Its bytes do not verify: that content only.
    Bytes(String),
    /// The store failed: the whole batch.
    Store(StoreError),
}

/// One content's chunks from the batch's answers, decompressed and checked
/// into `write`; its size and SHA-256 checked at the end.
fn write_content(
    decoder: &mut ChunkDecoder,
    content: &Wanted,
    ranges: &[ByteRange],
    answers: &[Vec<u8>],
    write: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<(), Wrong> {
    let mut sha = Sha256::new();
    let mut written = 0u64;
    for chunk in &content.chunks {
        let bytes = chunk_bytes(decoder, chunk, ranges, answers).map_err(|e| Wrong::Bytes(e.to_string()))?;
        written += bytes.len() as u64;
        if written > content.size {
            return Err(Wrong::Bytes(format!("more than {} bytes", content.size)));
        }
        sha.update(&bytes);
        write(&bytes).map_err(Wrong::Store)?;
    }
    let actual = Sha256Digest(sha.finalize().into());
    if written != content.size || actual.0 != content.name.0 {
        return Err(Wrong::Bytes(format!("{written} bytes hashing to {actual}")));
    }
    Ok(())
}

fn fail_all<'a>(out: &mut BatchOutcome, names: impl Iterator<Item = &'a Digest>, reason: &str) {
    for name in names {
        out.failed.push(LazyFetchError::Batch {
            sha256: *name,
            reason: reason.to_owned(),
        });
    }
}

/// The name a failure is about.
fn failed_name(e: &LazyFetchError) -> Option<&Digest> {
    match e {
        LazyFetchError::Unknown { sha256 }
        | LazyFetchError::Recipe { sha256, .. }
        | LazyFetchError::Mismatch { sha256, .. }
        | LazyFetchError::Source { sha256, .. }
        | LazyFetchError::Store { sha256, .. }
        | LazyFetchError::Batch { sha256, .. } => Some(sha256),
    }
}

/// The names a fetch or a batch of this fetcher is fetching.
#[derive(Default)]
pub(super) struct Claims {
    held: Arc<Mutex<HashMap<Digest, Arc<Claim>>>>,
}

/// One name's claim; its waiters wake when it is released.
pub(super) struct Claim {
    released: Mutex<bool>,
    wake: Condvar,
}

/// Releases its claim on drop (on another thread, if it is moved there).
pub(super) struct ClaimGuard {
    held: Arc<Mutex<HashMap<Digest, Arc<Claim>>>>,
    name: Digest,
    claim: Arc<Claim>,
}

impl Claims {
    /// Claims `name`, or gives the claim that holds it.
    pub(super) fn claim(&self, name: &Digest) -> Result<ClaimGuard, Arc<Claim>> {
        let mut held = lock(&self.held);
        if let Some(claim) = held.get(name) {
            return Err(claim.clone());
        }
        let claim = Arc::new(Claim {
            released: Mutex::new(false),
            wake: Condvar::new(),
        });
        held.insert(*name, claim.clone());
        Ok(ClaimGuard {
            held: self.held.clone(),
            name: *name,
            claim,
        })
    }

    /// Claims `name` unless it is held.
    fn try_claim(&self, name: &Digest) -> Option<ClaimGuard> {
        self.claim(name).ok()
    }
}

impl Claim {
    /// Until the claim is released. Its holder's fetch is bounded (the
    /// fetch policy), so this is too.
    pub(super) fn wait(&self) {
        let mut released = lock(&self.released);
        while !*released {
            released = self.wake.wait(released).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.name);
        *lock(&self.claim.released) = true;
        self.claim.wake.notify_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;

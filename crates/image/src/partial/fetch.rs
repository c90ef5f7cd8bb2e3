//! The I/O shell of a partial pull: fetches a [`Plan`]'s batches through
//! [`BlobSource::read_ranges`] on a few threads, decompresses each chunk,
//! checks each content's SHA-256 (and each chunk's, where the TOC has one)
//! and only then stages it as an object. Nothing unverified reaches the
//! stager's finished list; a failure drops the stager, which removes all it
//! wrote.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};
use strata_erofs::INLINE_MAX;
use strata_store::{HashedBytes, ObjectRef, ObjectStager, StagedObject};
use strata_tree::FileData;

use super::plan::{Batch, Plan, Wanted};
use super::PartialError;
use crate::toc::{ByteRange, Chunk, ChunkDecoder, Sha256Digest, TocFormat};
use crate::{BlobSource, Descriptor, Progress};

/// Contents held in memory before they are staged; larger ones stream.
const IN_MEMORY_MAX: u64 = 1 << 20;

/// One fetched and verified content.
#[derive(Clone, Debug)]
pub(crate) struct Got {
    pub data: FileData,
    /// How it was staged, for an object.
    pub staged: Option<StagedObject>,
}

pub(crate) struct Fetched {
    pub contents: HashMap<Sha256Digest, Got>,
    /// Bytes the source returned.
    pub bytes: u64,
}

pub(crate) struct Shell<'a> {
    pub source: &'a dyn BlobSource,
    pub desc: &'a Descriptor,
    pub format: TocFormat,
    pub progress: &'a Progress,
}

impl Shell<'_> {
    /// Fetches every batch of `plan`, `workers` at a time, into `stager`.
    pub(crate) fn fetch(
        &self,
        plan: &Plan,
        stager: &Mutex<ObjectStager>,
        workers: usize,
    ) -> Result<Fetched, PartialError> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Mutex<Vec<Result<Fetched, PartialError>>> = Mutex::new(Vec::new());
        let workers = workers.clamp(1, plan.batches.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    let mut mine = Fetched {
                        contents: HashMap::new(),
                        bytes: 0,
                    };
                    let outcome = loop {
                        if failed.load(Ordering::Relaxed) {
                            break Ok(());
                        }
                        let Some(batch) = plan.batches.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            break Ok(());
                        };
                        if let Err(e) = self.batch(batch, stager, &mut mine) {
                            failed.store(true, Ordering::Relaxed);
                            break Err(e);
                        }
                    };
                    let mut results = results.lock().expect("no worker panics holding the lock");
                    results.push(outcome.map(|()| mine));
                });
            }
        });
        let mut all = Fetched {
            contents: HashMap::new(),
            bytes: 0,
        };
        for result in results.into_inner().expect("workers are done") {
            let part = result?;
            all.bytes += part.bytes;
            all.contents.extend(part.contents);
        }
        Ok(all)
    }

    fn batch(&self, batch: &Batch, stager: &Mutex<ObjectStager>, out: &mut Fetched) -> Result<(), PartialError> {
        let mut calls = Calls {
            shell: self,
            batch,
            next: 0,
            current: Vec::new(),
            bytes: 0,
            decoder: ChunkDecoder::new(self.format),
        };
        for wanted in &batch.contents {
            let got = self.content(wanted, &mut calls, stager)?;
            out.contents.insert(wanted.digest, got);
        }
        out.bytes += calls.bytes;
        Ok(())
    }

    /// One content: its chunks decompressed in order, its SHA-256 checked,
    /// then staged (or kept inline).
    fn content(
        &self,
        wanted: &Wanted,
        calls: &mut Calls<'_, '_>,
        stager: &Mutex<ObjectStager>,
    ) -> Result<Got, PartialError> {
        let mut sha = Sha256::new();
        let mismatch = |actual: u64| PartialError::FileSize {
            path: wanted.path.clone(),
            expected: wanted.size,
            actual,
        };
        if wanted.size <= IN_MEMORY_MAX {
            let mut data = Vec::with_capacity(usize::try_from(wanted.size).unwrap_or(0));
            for chunk in &wanted.chunks {
                let bytes = self.chunk(wanted, chunk, calls)?;
                data.extend_from_slice(&bytes);
                if data.len() as u64 > wanted.size {
                    return Err(mismatch(data.len() as u64));
                }
            }
            if data.len() as u64 != wanted.size {
                return Err(mismatch(data.len() as u64));
            }
            sha.update(&data);
            check_sha(wanted, sha)?;
            if data.len() <= INLINE_MAX {
                return Ok(Got {
                    data: FileData::Inline(data),
                    staged: None,
                });
            }
            let hashed = HashedBytes::new(data);
            let staged = stager
                .lock()
                .expect("no panics holding the stager")
                .add_hashed(&hashed)?;
            return Ok(Got {
                data: FileData::Object {
                    digest: staged.digest,
                    size: staged.size,
                },
                staged: Some(staged),
            });
        }
        let mut writer = stager.lock().expect("no panics holding the stager").writer()?;
        let mut written = 0u64;
        for chunk in &wanted.chunks {
            if chunk.zeros {
                // Written in pieces: a run of zeros may be large.
                let zeros = vec![0u8; 1 << 20];
                let mut left = chunk.size;
                while left > 0 {
                    let n = usize::try_from(left.min(zeros.len() as u64)).expect("at most 1 MiB");
                    sha.update(&zeros[..n]);
                    writer.write(&zeros[..n])?;
                    left -= n as u64;
                }
                written += chunk.size;
                if written > wanted.size {
                    return Err(mismatch(written));
                }
                continue;
            }
            let bytes = self.chunk(wanted, chunk, calls)?;
            written += bytes.len() as u64;
            if written > wanted.size {
                return Err(mismatch(written));
            }
            sha.update(&bytes);
            writer.write(&bytes)?;
        }
        if written != wanted.size {
            return Err(mismatch(written));
        }
        // An unfinished writer's file is removed with the stager.
        check_sha(wanted, sha)?;
        let staged = stager.lock().expect("no panics holding the stager").finish(writer)?;
        Ok(Got {
            data: FileData::Object {
                digest: staged.digest,
                size: staged.size,
            },
            staged: Some(staged),
        })
    }

    fn chunk(&self, wanted: &Wanted, chunk: &Chunk, calls: &mut Calls<'_, '_>) -> Result<Vec<u8>, PartialError> {
        if chunk.zeros {
            return Ok(vec![0; usize::try_from(chunk.size).unwrap_or(0)]);
        }
        let (compressed, decoder) = calls.slice(chunk.compressed)?;
        decoder
            .decompress(compressed, chunk)
            .map_err(|source| PartialError::Chunk {
                path: wanted.path.clone(),
                offset: chunk.file_offset,
                source: Box::new(source),
            })
    }
}

fn check_sha(wanted: &Wanted, sha: Sha256) -> Result<(), PartialError> {
    let actual = Sha256Digest(sha.finalize().into());
    if actual != wanted.digest {
        return Err(PartialError::FileDigest {
            path: wanted.path.clone(),
            expected: wanted.digest,
            actual,
        });
    }
    Ok(())
}

/// A batch's calls, fetched one at a time as its chunks need them.
struct Calls<'s, 'b> {
    shell: &'s Shell<'s>,
    batch: &'b Batch,
    next: usize,
    current: Vec<(ByteRange, Vec<u8>)>,
    bytes: u64,
    /// One decoder for the batch's chunks.
    decoder: ChunkDecoder,
}

impl Calls<'_, '_> {
    /// The blob's bytes at `range`, from the current call or a later one,
    /// and the batch's decoder.
    fn slice(&mut self, range: ByteRange) -> Result<(&[u8], &mut ChunkDecoder), PartialError> {
        let found = loop {
            // Sorted and disjoint: the candidate is the last starting at or before.
            let at = self.current.partition_point(|(r, _)| r.start <= range.start);
            if let Some(i) = at.checked_sub(1).filter(|&i| range.end <= self.current[i].0.end) {
                break i;
            }
            let Some(ranges) = self.batch.calls.get(self.next) else {
                return Err(PartialError::Unplanned { range });
            };
            self.next += 1;
            self.current.clear();
            let asked: Vec<std::ops::Range<u64>> = ranges.iter().map(|r| r.start..r.end).collect();
            let answers = self.shell.source.read_ranges(self.shell.desc, &asked)?;
            if answers.len() != ranges.len() {
                return Err(PartialError::Answer {
                    reason: format!("{} ranges asked, {} answered", ranges.len(), answers.len()),
                });
            }
            for (r, bytes) in ranges.iter().zip(answers) {
                if bytes.len() as u64 != r.len() {
                    return Err(PartialError::Answer {
                        reason: format!("range {r} answered with {} bytes", bytes.len()),
                    });
                }
                self.bytes += r.len();
                Progress::add(&self.shell.progress.bytes, r.len());
                self.current.push((*r, bytes));
            }
        };
        let (r, bytes) = &self.current[found];
        let from = usize::try_from(range.start - r.start).expect("within a fetched range");
        let to = usize::try_from(range.end - r.start).expect("within a fetched range");
        Ok((&bytes[from..to], &mut self.decoder))
    }
}

/// The SHA-256 index rows a fetch proved: content digest -> object.
pub(crate) fn index_rows(fetched: &Fetched) -> Vec<([u8; 32], ObjectRef)> {
    fetched
        .contents
        .iter()
        .filter_map(|(sha, got)| {
            got.staged.map(|s| {
                (
                    sha.0,
                    ObjectRef {
                        digest: s.digest,
                        size: s.size,
                    },
                )
            })
        })
        .collect()
}

//! The SHA-256 of each regular file of a layer with a TOC (for the check
//! against the TOC and the SHA-256 index), computed on a thread of its own:
//! the builder's thread, which parses the tar, computes each object's
//! fs-verity digest and writes it, is a whole pull's slowest stage.
//!
//! Files are handed over in batches of whole or partial bodies with the
//! offsets where files end, so a run of small files costs one message.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::toc::Sha256Digest;

/// Bytes gathered before they are handed over.
const BATCH: usize = 256 * 1024;
/// Batches queued: with the one being hashed and the one being filled,
/// the memory held is at most (`BATCHES` + 2) x 2 x `BATCH` (5 MiB) per
/// layer.
const BATCHES: usize = 8;

struct Batch {
    bytes: Vec<u8>,
    /// Offsets in `bytes` where a file ends, in order.
    ends: Vec<usize>,
}

/// One file's SHA-256 and size.
pub(super) type FileSum = (Sha256Digest, u64);

pub(super) struct FileHasher {
    sink: Sink,
    pending: Batch,
}

/// Where full batches go.
enum Sink {
    Thread {
        tx: SyncSender<Batch>,
        thread: JoinHandle<Vec<FileSum>>,
    },
    /// No thread could be started: hashed on the caller's thread.
    Inline(Summer),
}

impl FileHasher {
    pub(super) fn spawn() -> FileHasher {
        let (tx, rx) = sync_channel(BATCHES);
        let started = std::thread::Builder::new()
            .name("strata-filehash".into())
            .spawn(move || hash_batches(rx));
        let sink = match started {
            Ok(thread) => Sink::Thread { tx, thread },
            Err(e) => {
                tracing::warn!("no thread for the per-file SHA-256 ({e}); hashing on the import's own thread");
                Sink::Inline(Summer::default())
            }
        };
        FileHasher {
            sink,
            pending: empty_batch(),
        }
    }

    /// More bytes of the file being read.
    pub(super) fn update(&mut self, bytes: &[u8]) {
        // In pieces, so that no batch grows past twice `BATCH`.
        for piece in bytes.chunks(BATCH) {
            self.pending.bytes.extend_from_slice(piece);
            if self.pending.bytes.len() >= BATCH {
                self.hand_over();
            }
        }
    }

    /// The file being read is complete.
    pub(super) fn end_file(&mut self) {
        self.pending.ends.push(self.pending.bytes.len());
    }

    /// Every file's sum, in the order the files ended.
    pub(super) fn finish(mut self) -> Vec<FileSum> {
        self.hand_over();
        match self.sink {
            Sink::Thread { tx, thread } => {
                drop(tx);
                thread.join().expect("hashing does not panic")
            }
            Sink::Inline(summer) => summer.sums,
        }
    }

    fn hand_over(&mut self) {
        if self.pending.bytes.is_empty() && self.pending.ends.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.pending, empty_batch());
        match &mut self.sink {
            // The thread ends only when this sender is dropped.
            Sink::Thread { tx, .. } => tx.send(batch).expect("the hashing thread runs until finish"),
            Sink::Inline(summer) => summer.add(&batch),
        }
    }
}

fn empty_batch() -> Batch {
    Batch {
        bytes: Vec::with_capacity(BATCH),
        ends: Vec::new(),
    }
}

fn hash_batches(rx: Receiver<Batch>) -> Vec<FileSum> {
    let mut summer = Summer::default();
    for batch in rx {
        summer.add(&batch);
    }
    summer.sums
}

/// The sums so far, and the file being summed.
#[derive(Default)]
struct Summer {
    sums: Vec<FileSum>,
    sha: Sha256,
    size: u64,
}

impl Summer {
    fn add(&mut self, batch: &Batch) {
        let mut from = 0;
        for &end in &batch.ends {
            self.sha.update(&batch.bytes[from..end]);
            self.size += (end - from) as u64;
            self.sums
                .push((Sha256Digest(std::mem::take(&mut self.sha).finalize().into()), self.size));
            (from, self.size) = (end, 0);
        }
        self.sha.update(&batch.bytes[from..]);
        self.size += (batch.bytes.len() - from) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_follow_the_files_across_batches() {
        let files: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"a".to_vec(),
            vec![7; BATCH * 2 + 5],
            Vec::new(),
            vec![1; 100],
            vec![2; BATCH - 1],
            vec![3; 3],
        ];
        let expected: Vec<FileSum> = files
            .iter()
            .map(|f| (Sha256Digest(Sha256::digest(f).into()), f.len() as u64))
            .collect();
        let inline = || FileHasher {
            sink: Sink::Inline(Summer::default()),
            pending: empty_batch(),
        };
        for hasher in [FileHasher::spawn(), inline()] {
            assert_eq!(feed(hasher, &files), expected);
        }
        assert!(FileHasher::spawn().finish().is_empty());
        assert!(inline().finish().is_empty());
    }

    /// Hands `files` to `hasher` as an import would; their sums.
    fn feed(mut hasher: FileHasher, files: &[Vec<u8>]) -> Vec<FileSum> {
        for (i, file) in files.iter().enumerate() {
            if i == 2 {
                // One slice of several batches, as a large body in memory.
                hasher.update(file);
            } else {
                // In uneven pieces, as a tar body is read.
                for piece in file.chunks(4096 + 17) {
                    hasher.update(piece);
                }
            }
            hasher.end_file();
        }
        hasher.finish()
    }
}

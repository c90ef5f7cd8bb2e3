//! Hashing file contents: one file, or many on every core.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use strata_tree::{Digest, VerityHasher};

use crate::StoreError;

type Hashed<E = StoreError> = Result<(Digest, u64), E>;

/// The fs-verity digest and size of a file's content.
pub fn hash_file(path: &std::path::Path) -> Result<(Digest, u64), StoreError> {
    let mut file = std::fs::File::open(path).map_err(|e| StoreError::io("open", path, e))?;
    hash_open_file(&mut file, path)
}

/// The fs-verity digest and size of what is left to read of `file`;
/// `path` only names it in errors.
pub(crate) fn hash_open_file(file: &mut std::fs::File, path: &std::path::Path) -> Result<(Digest, u64), StoreError> {
    thread_local! {
        // One read buffer per thread: zeroing a fresh 1 MiB per file was
        // most of a commit's CPU time (perf: memset above hashing).
        static BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 1 << 20]);
    }
    let mut hasher = VerityHasher::new();
    BUFFER.with_borrow_mut(move |buf| loop {
        let n = std::io::Read::read(file, buf).map_err(|e| StoreError::io("read", path, e))?;
        if n == 0 {
            let size = hasher.len();
            return Ok((hasher.finish(), size));
        }
        hasher.update(&buf[..n]);
    })
}

/// Files queued for writeback at most; past that, a hashed file is closed
/// and left to the caller's sync (the queue holds them open).
const WRITEBACK_QUEUE: usize = 256;

/// Smaller files are left to the caller's sync: starting writeback one by
/// one cost a syscall and a hand-off each, more than the sync saves.
const WRITEBACK_MIN_BYTES: u64 = 64 * 1024;

/// Hashes every file in `paths` with [`hash_file`], on up to one thread per
/// core; see [`hash_opened`]. Results are in the order of `paths`.
pub fn hash_files(paths: &[PathBuf]) -> Vec<Hashed> {
    hash_opened(paths, |path: &PathBuf| {
        let file = std::fs::File::open(path).map_err(|e| StoreError::io("open", path, e))?;
        Ok::<_, StoreError>((file, path.clone()))
    })
}

/// Hashes the file `open` gives for each item (with the path that names it
/// in errors), on up to one thread per
/// core. Each file hashed is handed to one more thread that starts its
/// writeback, so the sync that makes them durable waits for less (ext4
/// allocates blocks as writeback starts: that work stays off the hashers).
/// Results are in the order of `items`.
pub fn hash_opened<T: Sync, E: From<StoreError> + Send>(
    items: &[T],
    open: impl Fn(&T) -> Result<(std::fs::File, PathBuf), E> + Sync,
) -> Vec<Hashed<E>> {
    if items.is_empty() {
        return Vec::new();
    }
    let (written, to_write) = std::sync::mpsc::sync_channel::<std::fs::File>(WRITEBACK_QUEUE);
    let _ = std::thread::Builder::new()
        .name("strata-writeback".into())
        .spawn(move || {
            for file in to_write {
                let _ = strata_sys::start_writeback(std::os::fd::AsFd::as_fd(&file));
            }
        });
    let hash = |item: &T| -> Hashed<E> {
        let (mut file, path) = open(item)?;
        let hashed = hash_open_file(&mut file, &path)?;
        if hashed.1 >= WRITEBACK_MIN_BYTES {
            let _ = written.try_send(file);
        }
        Ok(hashed)
    };
    map_on_threads(items, usize::MAX, 1, || (), |(), item| hash(item))
}

/// The SHA-256 and size of each content in `digests` (the plain digest a
/// TOC names a file by, not the fs-verity one), read back through
/// `contents` on up to one thread per core; in the order of `digests`.
pub fn sha256_of_contents(
    contents: &crate::StagedContents<'_>,
    digests: &[Digest],
) -> Vec<Result<([u8; 32], u64), StoreError>> {
    use sha2::Digest as _;
    let sum = |buf: &mut Vec<u8>, digest: &Digest| -> Result<([u8; 32], u64), StoreError> {
        let mut file = contents.open(digest)?;
        let mut sha = sha2::Sha256::new();
        let mut size = 0u64;
        loop {
            let n = std::io::Read::read(&mut file, buf)
                .map_err(|e| StoreError::io("read", std::path::Path::new(&digest.object_path()), e))?;
            if n == 0 {
                return Ok((sha.finalize().into(), size));
            }
            sha.update(&buf[..n]);
            size += n as u64;
        }
    };
    map_on_threads(digests, usize::MAX, 16, || vec![0u8; 256 * 1024], sum)
}

/// The cores this process may use, read once: the standard library reads
/// the cgroup's CPU quota on every call, a dozen syscalls per commit.
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs `work` on every item, on up to one thread per core (and at most
/// `max_threads`), results in the order of `items`. Threads take `batch`
/// neighbouring items at a time, each with its own `state()`. A thread
/// that cannot start leaves its share to the others, or to this one.
pub(crate) fn map_on_threads<T: Sync, S, R: Send>(
    items: &[T],
    max_threads: usize,
    batch: usize,
    state: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let batch = batch.max(1);
    let threads = cores().min(max_threads).min(items.len().div_ceil(batch));
    if threads <= 1 {
        let mut state = state();
        return items.iter().map(|item| work(&mut state, item)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(std::iter::repeat_with(|| None).take(items.len()).collect());
    let run = || {
        let mut state = state();
        loop {
            let start = next.fetch_add(batch, Ordering::Relaxed);
            let Some(chunk) = items.get(start..(start + batch).min(items.len())) else {
                break;
            };
            let done: Vec<R> = chunk.iter().map(|item| work(&mut state, item)).collect();
            let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
            for (slot, r) in results[start..].iter_mut().zip(done) {
                *slot = Some(r);
            }
        }
    };
    let started = std::thread::scope(|scope| {
        (0..threads)
            .filter(|_| {
                std::thread::Builder::new()
                    .name("strata-worker".into())
                    .spawn_scoped(scope, run)
                    .is_ok()
            })
            .count()
    });
    if started == 0 {
        run();
    }
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .zip(items)
        .map(|(r, item)| r.unwrap_or_else(|| work(&mut state(), item)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_hashes_match_one_by_one_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths: Vec<PathBuf> = (0u8..37)
            .map(|i| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, vec![i; usize::from(i) * 1000 + 1]).unwrap();
                path
            })
            .collect();
        paths.push(dir.path().join("missing"));
        let hashed = hash_files(&paths);
        for (path, got) in paths.iter().zip(&hashed) {
            match (hash_file(path), got) {
                (Ok(one), Ok(many)) => assert_eq!(one, *many, "{}", path.display()),
                (Err(_), Err(_)) => {}
                (one, many) => panic!("{}: {one:?} vs {many:?}", path.display()),
            }
        }
        assert!(hashed.last().unwrap().is_err());
    }
}

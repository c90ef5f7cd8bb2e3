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
        let _ = written.try_send(file);
        Ok(hashed)
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(hash).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Hashed<E>>>> =
        Mutex::new(std::iter::repeat_with(|| None).take(items.len()).collect());
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(item) = items.get(i) else { break };
        let hashed = hash(item);
        results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(hashed);
    };
    std::thread::scope(|scope| {
        // A thread that cannot start leaves its share to the others (or
        // to this one): `scope.spawn` would panic instead.
        let started = (0..threads)
            .filter(|_| {
                std::thread::Builder::new()
                    .name("strata-hash".into())
                    .spawn_scoped(scope, work)
                    .is_ok()
            })
            .count();
        if started == 0 {
            work();
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(StoreError::io("hash", "", std::io::Error::other("a hasher thread stopped")).into())
            })
        })
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

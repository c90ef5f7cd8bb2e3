//! Directories nobody needs any more (the rest of a committed snapshot's
//! upper dir) are renamed into `tmp/` at once and deleted by one background
//! thread, so the caller does not wait for the deletion. Their names carry
//! this process's pid, so after a crash start-up recovery removes them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::dirfd::DirFd;
use crate::StoreError;

static TRASH_COUNTER: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
pub(crate) struct Trash {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<PathBuf>,
    busy: bool,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut state = self.lock();
        loop {
            if let Some(path) = state.queue.pop_front() {
                state.busy = true;
                drop(state);
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    tracing::warn!(path = %path.display(), "removing discarded dir: {e}");
                }
                state = self.lock();
                state.busy = false;
                self.changed.notify_all();
            } else if state.closed {
                return;
            } else {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
    }
}

impl Trash {
    /// Moves `path` out of the way into `tmp` and queues it for deletion.
    /// A path that does not exist is fine; one on another filesystem is
    /// deleted here and now.
    pub(crate) fn discard(&self, tmp: &DirFd, path: &Path) -> Result<(), StoreError> {
        let name = crate::tmp_names::tmp_name(
            crate::tmp_names::TmpKind::Trash,
            TRASH_COUNTER.fetch_add(1, Ordering::Relaxed),
        );
        match rustix::fs::renameat(rustix::fs::CWD, path, tmp.fd(), name.as_str()) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(rustix::io::Errno::XDEV) => {
                return std::fs::remove_dir_all(path).map_err(|e| StoreError::io("remove", path, e));
            }
            Err(e) => return Err(StoreError::io("move to trash", path, e)),
        }
        self.shared.lock().queue.push_back(tmp.path().join(name));
        self.shared.changed.notify_all();
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        if worker.is_none() {
            let shared = Arc::clone(&self.shared);
            let spawned = std::thread::Builder::new()
                .name("strata-trash".into())
                .spawn(move || shared.run())
                .map_err(|e| StoreError::io("start trash thread", tmp.path(), e))?;
            *worker = Some(spawned);
        }
        Ok(())
    }

    /// Waits until everything discarded so far is deleted.
    #[cfg(test)]
    fn wait_idle(&self) {
        let mut state = self.shared.lock();
        while !state.queue.is_empty() || state.busy {
            if self.worker.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                return;
            }
            state = self.shared.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Trash {
    /// Finishes the queue before the store goes away.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(worker) = self.worker.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discarded_dirs_leave_at_once_and_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let tmp_path = dir.path().join("tmp");
        std::fs::create_dir(&tmp_path).unwrap();
        let tmp = DirFd::open(&tmp_path).unwrap();
        let trash = Trash::default();
        for i in 0..5 {
            let victim = dir.path().join(format!("v{i}/a/b"));
            std::fs::create_dir_all(&victim).unwrap();
            std::fs::write(victim.join("f"), b"x").unwrap();
            trash.discard(&tmp, &dir.path().join(format!("v{i}"))).unwrap();
            assert!(!dir.path().join(format!("v{i}")).exists());
        }
        trash.discard(&tmp, &dir.path().join("missing")).unwrap();
        trash.wait_idle();
        assert_eq!(std::fs::read_dir(&tmp_path).unwrap().count(), 0);
        std::fs::create_dir_all(dir.path().join("late/x")).unwrap();
        trash.discard(&tmp, &dir.path().join("late")).unwrap();
        drop(trash);
        assert_eq!(
            std::fs::read_dir(&tmp_path).unwrap().count(),
            0,
            "drop finishes the queue"
        );
    }
}

//! Cleanup: what containerd asks for after its garbage collection, and
//! what Remove and start-up share with it.

use strata_tree::Digest;

use super::Snapshotter;
use crate::{db, SnapshotError};

impl Snapshotter {
    /// Unmounts the EROFS images no snapshot references.
    pub(super) fn release_unused_images(&self) -> Result<(), SnapshotError> {
        let live: std::collections::HashSet<String> = self.store.live_images()?.iter().map(Digest::to_hex).collect();
        let mnt = self.store.root().join("mnt");
        let _lock = strata_mount::lock_image_mounts(&mnt)?;
        strata_mount::release_image_mounts(&*self.mounter, &mnt, |id| live.contains(id))?;
        Ok(())
    }

    pub(super) fn remove_unknown_dirs(&self) -> Result<usize, SnapshotError> {
        let known: std::collections::HashSet<String> =
            db::all(&self.store)?.iter().map(|(_, r)| r.id.to_string()).collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| SnapshotError::io("read dir", &self.dir, e))? {
            let entry = entry.map_err(|e| SnapshotError::io("read dir", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let path = entry.path();
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!("removing {}: {e}", path.display());
                continue;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes what no snapshot needs: unknown snapshot dirs, EROFS mounts
    /// of images nothing references, then unreferenced objects and images.
    /// containerd calls this after every garbage collection, that is after
    /// nearly every container removal: the object sweep is skipped when
    /// nothing was released since the last one, and runs outside the
    /// snapshotter's lock (under the store's exclusive lock, which commits
    /// take shared), so containers starting meanwhile do not wait for it.
    pub fn cleanup(&self) -> Result<(), SnapshotError> {
        {
            let _g = self.guard();
            // A commit's moves still journaled take their files from its
            // scratch, which no row names any more: moved first, or kept.
            self.retry_adoptions();
            self.remove_unknown_dirs()?;
            if !self.adoptions_left.load(std::sync::atomic::Ordering::SeqCst) {
                self.reconcile_scratch(true)?;
            }
            self.release_unused_images()?;
        }
        // Held across gc, so Cleanups take turns; a failed commit only
        // raises a flag, never waits here.
        let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
        let released = self.store.released()?;
        let asked = self.sweep_asked.swap(false, std::sync::atomic::Ordering::SeqCst);
        if !asked && *swept == Some(released) && !self.store.tmp_has_garbage()? {
            return Ok(());
        }
        let report = self.store.gc()?;
        *swept = Some(released);
        tracing::info!(
            objects = report.objects_removed,
            images = report.images_removed,
            "cleanup"
        );
        Ok(())
    }

    /// A failed commit may have left an image or objects nothing names.
    pub(super) fn sweep_next_cleanup(&self) {
        self.sweep_asked.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

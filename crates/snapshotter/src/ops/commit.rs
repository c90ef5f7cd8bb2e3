//! Commit in three steps. [`build`](Snapshotter::build_commit) does all the
//! work that can fail (the upper dir's tree, objects published, the EROFS
//! image stored) and leaves only garbage for gc if it does;
//! [`apply`](Snapshotter::apply_commit) is the commit point, one DB
//! transaction; [`finish`](Snapshotter::finish_commit) cannot fail: what it
//! cannot do is journaled, logged and retried.
//!
//! The finish of a commit without a sized scratch (its files' moves into
//! `objects/` and the upper dir's removal) runs after the reply, on a
//! thread of its own: containerd's own bookkeeping between layers, or a
//! build's between steps, hides it. Every later change waits for it
//! (`Snapshotter::guard`), and the store's shared lock stays held until it
//! is done, so gc and repair never see it half done. A sized scratch is
//! released only once its files have moved, so its commit finishes first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use strata_store::{ObjectRef, Recheck, SharedGuard, Store};
use strata_tree::{Digest, Stat, Tree};

use super::{root_name, start_flush, Phases, Snapshotter};
use crate::db::{self, Record};
use crate::types::Stamp;
use crate::{diff, Kind, SnapshotError};

/// A commit built and published, waiting for its DB transaction.
pub(super) struct CommitPlan {
    name: String,
    key: String,
    /// The active snapshot's row, as it was.
    active: Record,
    /// Its row once committed.
    committed: Record,
    image: Digest,
    objects: Vec<ObjectRef>,
    /// The contents `image` names by SHA-256 (a lazily fetched parent's
    /// that are still missing): its lazy row.
    lazy: Vec<Digest>,
    /// Files that stay in the upper dir until the DB commit, then move
    /// into `objects/`.
    adopted: Vec<(PathBuf, Digest)>,
}

impl Snapshotter {
    pub(super) fn try_commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotError> {
        let _g = self.guard();
        self.retry_adoptions();
        let import = self.store.lock_shared()?;
        let mut phases = Phases::start();
        let plan = self.build_commit(name, key, labels, &mut phases)?;
        self.apply_commit(&plan)?;
        phases.mark("db");
        // Past the commit point only an abort means anything here.
        let _ = strata_failpoint::hit("commit.after_db");
        if plan.active.scratch.is_none() {
            self.finish_after_reply(plan, phases, import);
        } else {
            self.finish_commit(plan, &mut phases);
        }
        Ok(())
    }

    fn build_commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
        phases: &mut Phases,
    ) -> Result<CommitPlan, SnapshotError> {
        let database = &self.store;
        let active = self.record(key)?;
        if active.kind != Kind::Active {
            return Err(SnapshotError::WrongKind {
                key: key.to_owned(),
                actual: active.kind,
                wanted: "an active snapshot",
            });
        }
        if db::get(database, name)?.is_some() {
            return Err(SnapshotError::AlreadyExists { key: name.to_owned() });
        }
        let (fs, _) = self.upper_of(&active);
        // An empty upper dir (a Commit with no changes) has nothing to
        // flush, and a syncfs would still wait for the journal.
        let flushing = (!is_empty_dir(&fs)).then(|| start_flush(&fs));
        let (mut merged, parent_image) = match &active.parent {
            Some(p) => {
                let record = self.record(p)?;
                (self.load_tree(p, &record)?, Some(super::image_id(p, &record)?))
            }
            None => (Tree::new(Stat::default_dir()), None),
        };
        phases.mark("load parent");
        let prehash = self.take_prehash(active.id);
        let mut stager = self.store.stager()?;
        // A writer may still reach a mounted upper dir's files (through an
        // open fd, or the overlay's cached names): moved into `objects/`,
        // such an inode would let it change a shared object.
        if self.mounter.writes_into(&fs) {
            tracing::info!(
                key,
                "committed while mounted: its new files are copied into the store, not moved"
            );
            stager.copy_always();
        }
        let (layer, usage) = diff::layer_from_upper(&fs, &merged, &mut stager, prehash)?;
        phases.mark("hash");
        strata_tree::merge_layer(&mut merged, layer)?;
        merged.compact();
        let lazy = super::lazy::settle_missing(&self.store, &mut merged, parent_image.as_ref(), std::iter::empty())?;
        let objects = ObjectRef::all_in(&merged);
        let read_back = crate::tree_cache::TreeCache::prepare(&merged);
        let image = strata_erofs::into_image(merged)?;
        phases.mark("erofs");
        // New files stay in the upper dir until the DB commit; publish
        // makes them durable where they are.
        let adopted = stager.take_deferred();
        if let Some(flushing) = flushing {
            let _ = flushing.join();
        }
        stager.publish()?;
        phases.mark("sync");
        let image = self.store.put_image(&image)?;
        // Keyed by content: harmless should the commit fail from here.
        self.trees.keep(image, read_back);
        phases.mark("put image");
        strata_failpoint::hit("commit.after_publish")?;
        let now = Stamp::now();
        let committed = Record {
            id: active.id,
            kind: Kind::Committed,
            parent: active.parent.clone(),
            labels,
            created: now,
            updated: now,
            image: Some(image.to_hex()),
            usage: Some(usage),
            scratch: None,
        };
        Ok(CommitPlan {
            name: name.to_owned(),
            key: key.to_owned(),
            active,
            committed,
            image,
            objects,
            lazy,
            adopted,
        })
    }

    /// The commit point: the row renamed and committed, the image's gc
    /// root and the pending moves written, in one transaction.
    fn apply_commit(&self, plan: &CommitPlan) -> Result<(), SnapshotError> {
        strata_failpoint::hit("commit.before_db")?;
        let txn = self.store.begin()?;
        db::delete(&txn, &plan.key)?;
        db::put(&txn, &plan.name, &plan.committed)?;
        txn.add_root(&root_name(plan.active.id), &plan.image, &plan.objects)?;
        if !plan.lazy.is_empty() {
            txn.put_lazy_image(&plan.image, &plan.lazy)?;
        }
        txn.journal_adoptions(&plan.adopted)?;
        txn.commit()?;
        Ok(())
    }

    /// Past the commit point: the upper dir's new files move into the
    /// store, the scratch is released, the rest is discarded. A failure is
    /// logged and left to a retry (moves) or to the next start (the rest).
    fn finish_commit(&self, plan: CommitPlan, phases: &mut Phases) {
        let key = plan.key.as_str();
        let dir = self.snap_dir(plan.active.id);
        if !move_new_files(&self.store, key, &plan.adopted, &self.adoptions_left) {
            return;
        }
        phases.mark("adopt");
        // Only now: a project-quota scratch is on the store's filesystem,
        // so its new files were left in place for the move above.
        if let Err(e) = self.release_scratch(&plan.active) {
            tracing::warn!(key, "releasing the scratch: {e}; the next start reconciles it");
        }
        discard_upper(&self.store, key, &dir);
        phases.mark("discard");
        plan.log_committed(phases);
    }

    /// [`finish_commit`](Self::finish_commit) for a snapshot without a
    /// scratch, on a thread of its own, holding the store's shared lock;
    /// [`settle`](Snapshotter::settle) waits for it. If no thread starts,
    /// its moves stay journaled for the next change.
    fn finish_after_reply(&self, plan: CommitPlan, mut phases: Phases, import: SharedGuard) {
        let store = self.store.clone();
        let dir = self.snap_dir(plan.active.id);
        let left = std::sync::Arc::clone(&self.adoptions_left);
        let finish = move || {
            let _import = import;
            if move_new_files(&store, &plan.key, &plan.adopted, &left) {
                phases.mark("adopt after reply");
                discard_upper(&store, &plan.key, &dir);
                phases.mark("discard");
            }
            plan.log_committed(&phases);
        };
        match std::thread::Builder::new()
            .name("strata-commit-finish".into())
            .spawn(finish)
        {
            Ok(finishing) => *self.settling.lock().unwrap_or_else(|e| e.into_inner()) = Some(finishing),
            Err(e) => {
                tracing::warn!("no thread to finish the commit ({e}); its moves stay journaled for the next change");
                self.adoptions_left.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Moves a failed [`finish_commit`](Self::finish_commit) left
    /// journaled: finished before the next change, under its guard.
    pub(super) fn retry_adoptions(&self) {
        if !self.adoptions_left.swap(false, Ordering::SeqCst) {
            return;
        }
        let retried = self
            .store
            .finish_pending_adoptions()
            .map_err(SnapshotError::from)
            .and_then(|()| {
                // What those commits left behind: their upper dirs and scratch.
                self.finish_interrupted()?;
                self.reconcile_scratch(false)
            });
        match retried {
            Ok(()) => tracing::info!("moved the files a commit left journaled into the store"),
            Err(e) => {
                tracing::warn!("moving journaled files into the store failed again: {e}");
                self.adoptions_left.store(true, Ordering::SeqCst);
            }
        }
    }
}

impl CommitPlan {
    fn log_committed(&self, phases: &Phases) {
        let (name, key) = (&self.name, &self.key);
        tracing::debug!(name, key, image = %self.image.to_hex(), phases = %phases, "committed snapshot");
    }
}

/// Moves a commit's new files into the store; false, with a warning and
/// `left` set, if they stay journaled (the next change retries them).
fn move_new_files(store: &Store, key: &str, adopted: &[(PathBuf, strata_tree::Digest)], left: &AtomicBool) -> bool {
    // An unpack's upper dir was written by containerd's applier, which
    // returned before this Commit; a container's may still be written.
    let recheck = if strata_scratch::is_unpack_key(key) {
        Recheck::Trust
    } else {
        Recheck::Rehash
    };
    let moved = strata_failpoint::hit("commit.before_adopt")
        .map_err(SnapshotError::from)
        .and_then(|()| Ok(store.adopt_in_place(adopted, recheck)?));
    match moved {
        Ok(_) => true,
        Err(e) => {
            // The files stay where the journal says they are, and so does
            // the scratch that holds them, until a retry moves them.
            tracing::warn!(
                key,
                "moving new files into the store failed ({e}); they stay journaled and the next change retries"
            );
            left.store(true, Ordering::SeqCst);
            false
        }
    }
}

/// Discards what is left of a committed snapshot's upper and work dirs.
fn discard_upper(store: &Store, key: &str, dir: &Path) {
    for sub in ["fs", "work"] {
        if let Err(e) = store.discard(&dir.join(sub)) {
            tracing::warn!(key, "leaving the old upper dir for the next start: {e}");
        }
    }
}

/// Whether `dir` has no entries (a dir that cannot be read counts as not
/// empty).
fn is_empty_dir(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_none())
}

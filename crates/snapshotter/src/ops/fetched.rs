//! The remote-snapshot fast path: an unpack Prepare whose layer strata
//! fetches itself becomes a committed snapshot, and containerd is told it
//! already exists. Anything that goes wrong falls back to an ordinary
//! active snapshot that containerd fills, with the reason logged.

use std::collections::{BTreeMap, HashSet};

use strata_store::ObjectRef;
use strata_tree::{Digest, Stat, Tree};

use super::{root_name, Phases, Snapshotter};
use crate::db::{self, Record};
use crate::remote::{FallbackReason, FetchedLayer, LayerRequest, RemoteOutcome, SNAPSHOT_REF};
use crate::types::Stamp;
use crate::{Kind, SnapshotError, Usage};

impl Snapshotter {
    /// Serves `key`'s remote-snapshot labels if it can: the name of the
    /// committed snapshot that now holds the layer, or `None` to fall back.
    pub(super) fn try_remote(&self, key: &str, parent: &str, labels: &BTreeMap<String, String>) -> Option<String> {
        let fetcher = self.fetcher.as_ref()?;
        let fell_back = |reason| fetcher.observe(RemoteOutcome::FellBack(reason));
        let request = match LayerRequest::from_labels(labels)? {
            Ok(request) => request,
            Err(e) => {
                fell_back(FallbackReason::Labels);
                tracing::warn!(key, "containerd fetches this layer: {e}");
                return None;
            }
        };
        // A key in use gets its AlreadyExists from the ordinary path.
        if matches!(db::get(&self.store, key), Ok(Some(_)) | Err(_)) {
            return None;
        }
        match self.committed_chain(&request.chain_id, parent) {
            Ok(Some(name)) => {
                fetcher.observe(RemoteOutcome::Present);
                return Some(name);
            }
            Ok(None) => {}
            Err(e) => {
                fell_back(FallbackReason::State);
                tracing::warn!(key, "containerd fetches this layer: {e}");
                return None;
            }
        }
        if self.fallen_back.covers(&request) {
            fell_back(FallbackReason::EarlierLayer);
            tracing::info!(
                key,
                layer = request.layer_digest,
                "containerd fetches this layer: an earlier layer of the image fell back"
            );
            return None;
        }
        let committed = fetcher
            .fetch(&request)
            .map_err(|e| (FallbackReason::Fetch, e.to_string()))
            .and_then(|fetched| {
                self.commit_fetched(key, parent, labels, &request, fetched)
                    .map_err(|e| {
                        self.sweep_next_cleanup();
                        (FallbackReason::Commit, format!("committing the fetched layer: {e}"))
                    })
            });
        match committed {
            Ok(name) => {
                fetcher.observe(RemoteOutcome::Fetched);
                tracing::info!(key, name, layer = request.layer_digest, "layer fetched by strata");
                Some(name)
            }
            Err((class, reason)) => {
                // Another Prepare of the same chain may have won the race.
                if let Ok(Some(name)) = self.committed_chain(&request.chain_id, parent) {
                    fetcher.observe(RemoteOutcome::Present);
                    return Some(name);
                }
                fell_back(class);
                self.fallen_back.record(&request);
                fetcher.abandon(&request);
                tracing::warn!(
                    key,
                    layer = request.layer_digest,
                    image = request.image_ref,
                    "containerd fetches this layer and the ones after it: {reason}"
                );
                None
            }
        }
    }

    /// The committed snapshot that is `chain_id` over `parent`, if any.
    fn committed_chain(&self, chain_id: &str, parent: &str) -> Result<Option<String>, SnapshotError> {
        let parent = (!parent.is_empty()).then_some(parent);
        Ok(db::all(&self.store)?
            .into_iter()
            .find(|(_, r)| {
                r.kind == Kind::Committed
                    && r.parent.as_deref() == parent
                    && r.labels.get(SNAPSHOT_REF).map(String::as_str) == Some(chain_id)
            })
            .map(|(k, _)| k))
    }

    /// Commits a fetched layer over `parent` as a snapshot named by its
    /// chain ID (or, when another namespace has that name, by the chain ID
    /// under `key`'s prefix) with `labels`.
    fn commit_fetched(
        &self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
        request: &LayerRequest,
        fetched: FetchedLayer,
    ) -> Result<String, SnapshotError> {
        let _g = self.guard();
        let mut phases = Phases::start();
        if let Some(name) = self.committed_chain(&request.chain_id, parent)? {
            return Ok(name);
        }
        let database = &self.store;
        let parent_record = self.checked_parent(key, parent, fetched.parent_chain.as_deref())?;
        let name = self.free_name(key, &request.chain_id)?;
        let FetchedLayer {
            tree: layer,
            stager,
            parent_chain: _,
            lock: _lock,
            lazy: recipes,
        } = fetched;
        let (mut merged, parent_image) = match &parent_record {
            Some(record) => (self.load_tree(parent, record)?, Some(super::image_id(parent, record)?)),
            None => (Tree::new(Stat::default_dir()), None),
        };
        phases.mark("load parent");
        let stats = layer.stats();
        strata_tree::merge_layer(&mut merged, layer)?;
        merged.compact();
        phases.mark("merge");
        let lazy = super::lazy::settle_missing(
            &self.store,
            &mut merged,
            parent_image.as_ref(),
            recipes.iter().map(|(name, _)| *name),
        )?;
        let objects = ObjectRef::all_in(&merged);
        let read_back = crate::tree_cache::TreeCache::prepare(&merged);
        let image = strata_erofs::into_image(merged)?;
        phases.mark("erofs");
        let referenced: HashSet<Digest> = objects.iter().map(|o| o.digest).collect();
        stager.publish_only(|d| referenced.contains(d))?;
        phases.mark("publish");
        let image_id = self.store.put_image(&image)?;
        // Keyed by content: harmless should the commit fail from here.
        self.trees.keep(image_id, read_back);
        phases.mark("put image");
        strata_failpoint::hit("fetched.after_publish")?;
        let txn = database.begin()?;
        let id = db::next_id(&txn)?;
        let dir = self.snap_dir(id);
        std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::io("create", &dir, e))?;
        let now = Stamp::now();
        let record = Record {
            id,
            kind: Kind::Committed,
            parent: parent_record.is_some().then(|| parent.to_owned()),
            labels: labels.clone(),
            created: now,
            updated: now,
            image: Some(image_id.to_hex()),
            usage: Some(Usage {
                size: i64::try_from(stats.logical_bytes).unwrap_or(i64::MAX),
                inodes: i64::try_from(stats.dirs + stats.leaves).unwrap_or(i64::MAX),
            }),
            scratch: None,
        };
        db::put(&txn, &name, &record)?;
        txn.add_root(&root_name(id), &image_id, &objects)?;
        if !lazy.is_empty() {
            let needed: HashSet<&Digest> = lazy.iter().collect();
            txn.add_lazy_contents(
                recipes
                    .iter()
                    .filter(|(name, _)| needed.contains(name))
                    .map(|(name, recipe)| (name, recipe.as_slice())),
            )?;
            txn.put_lazy_image(&image_id, &lazy)?;
        }
        phases.mark("rows");
        strata_failpoint::hit("fetched.before_db")?;
        txn.commit()?;
        phases.mark("db commit");
        tracing::debug!(name, missing = lazy.len(), phases = %phases, "committed a fetched layer");
        Ok(name)
    }

    /// The parent's record, after checking it is the layer below in the
    /// image's chain: a committed snapshot whose chain ID (when it has
    /// one) is `expected`, or no parent for the first layer.
    fn checked_parent(&self, key: &str, parent: &str, expected: Option<&str>) -> Result<Option<Record>, SnapshotError> {
        let mismatch = |reason: String| SnapshotError::ChainMismatch {
            key: key.to_owned(),
            reason,
        };
        match (parent.is_empty(), expected) {
            (true, None) => Ok(None),
            (true, Some(chain)) => Err(mismatch(format!(
                "the layer sits on {chain}, but the snapshot has no parent"
            ))),
            (false, None) => Err(mismatch(format!(
                "the layer is the image's first, but the snapshot has parent {parent:?}"
            ))),
            (false, Some(chain)) => {
                let record = db::get(&self.store, parent)?.ok_or_else(|| SnapshotError::ParentNotFound {
                    parent: parent.to_owned(),
                })?;
                if record.kind != Kind::Committed {
                    return Err(SnapshotError::ParentNotCommitted {
                        parent: parent.to_owned(),
                        actual: record.kind,
                    });
                }
                match record.labels.get(SNAPSHOT_REF) {
                    Some(actual) if actual != chain => Err(mismatch(format!(
                        "the layer sits on {chain}, but parent {parent:?} is {actual}"
                    ))),
                    _ => Ok(Some(record)),
                }
            }
        }
    }

    /// The chain ID, or the chain ID under `key`'s namespace prefix when a
    /// snapshot of that name exists already (another namespace's).
    fn free_name(&self, key: &str, chain_id: &str) -> Result<String, SnapshotError> {
        let database = &self.store;
        if db::get(database, chain_id)?.is_none() {
            return Ok(chain_id.to_owned());
        }
        let prefix = key.rfind('/').map_or("", |at| &key[..=at]);
        let name = format!("{prefix}{chain_id}");
        if db::get(database, &name)?.is_some() {
            return Err(SnapshotError::AlreadyExists { key: name });
        }
        Ok(name)
    }
}

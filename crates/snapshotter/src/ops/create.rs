//! Prepare and View in two steps. [`plan`](Snapshotter::plan_create)
//! checks the request against the DB and mounts the parent's image (which
//! other snapshots share, so it is no leftover); [`apply`](Snapshotter::apply_create)
//! makes the upper dir or scratch and commits the row, undoing its own
//! work on any failure. The mounts are worked out from what the plan holds,
//! so nothing after the DB commit can fail.

use std::collections::BTreeMap;
use std::path::PathBuf;

use strata_scratch::ScratchRequest;

use super::Snapshotter;
use crate::db::{self, Record};
use crate::scratch::{ScratchUse, Undo};
use crate::types::Stamp;
use crate::{Kind, Mount, SnapshotError};

/// A checked Prepare or View, ready to apply.
pub(super) struct CreatePlan {
    kind: Kind,
    key: String,
    parent: Option<String>,
    labels: BTreeMap<String, String>,
    request: ScratchRequest,
    /// The scratch of the snapshot a `reuse-scratch` request names.
    shared: Option<ScratchUse>,
    /// The parent's EROFS image, mounted, and the data-only lowers its
    /// missing contents need (none once it misses nothing).
    lower: Option<(PathBuf, Vec<PathBuf>)>,
}

impl Snapshotter {
    pub(super) fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let _g = self.guard();
        self.retry_adoptions();
        let plan = self.plan_create(kind, key, parent, labels)?;
        let lower = plan.lower.clone();
        let record = self.apply_create(plan)?;
        if kind == Kind::Active && strata_scratch::is_unpack_key(key) {
            self.start_prehash(record.id, &self.upper_of(&record).0);
        }
        Ok(self.overlay_mounts(&record, lower))
    }

    fn plan_create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<CreatePlan, SnapshotError> {
        let database = &self.store;
        if db::get(database, key)?.is_some() {
            return Err(SnapshotError::AlreadyExists { key: key.to_owned() });
        }
        let parent = if parent.is_empty() {
            None
        } else {
            let p = db::get(database, parent)?.ok_or_else(|| SnapshotError::ParentNotFound {
                parent: parent.to_owned(),
            })?;
            if p.kind != Kind::Committed {
                return Err(SnapshotError::ParentNotCommitted {
                    parent: parent.to_owned(),
                    actual: p.kind,
                });
            }
            Some((parent.to_owned(), p))
        };
        let request = match kind {
            Kind::Active => strata_scratch::parse_labels(key, &labels, &self.scratches.policy)?,
            Kind::View | Kind::Committed => ScratchRequest::Plain,
        };
        let shared = match &request {
            ScratchRequest::Shared { owner } => Some(self.scratch_owner(key, owner)?),
            _ => None,
        };
        let lower = match &parent {
            Some((name, record)) => {
                let image = super::image_id(name, record)?;
                Some((self.mount_image_of(&image)?, self.store.lazy_lowers(&image)?))
            }
            None => None,
        };
        Ok(CreatePlan {
            kind,
            key: key.to_owned(),
            parent: parent.map(|(name, _)| name),
            labels,
            request,
            shared,
            lower,
        })
    }

    /// Makes the snapshot's dirs or scratch and commits its row; on any
    /// failure undoes what it made.
    fn apply_create(&self, plan: CreatePlan) -> Result<Record, SnapshotError> {
        let database = &self.store;
        let txn = database.begin()?;
        let id = db::next_id(&txn)?;
        let dir = self.snap_dir(id);
        let mut undo = Undo::default();
        let made = (|| -> Result<Record, SnapshotError> {
            undo.dir(dir.clone());
            let scratch = match plan.request {
                ScratchRequest::Plain => {
                    let (fs, work) = (dir.join("fs"), dir.join("work"));
                    for p in [&fs, &work] {
                        std::fs::create_dir_all(p).map_err(|e| SnapshotError::io("create", p, e))?;
                    }
                    std::fs::set_permissions(&fs, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                        .map_err(|e| SnapshotError::io("chmod", &fs, e))?;
                    strata_failpoint::hit("prepare.after_mkdir")?;
                    None
                }
                ScratchRequest::Sized { bytes, location } => {
                    std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::io("create", &dir, e))?;
                    strata_failpoint::hit("prepare.after_mkdir")?;
                    Some(self.scratches.create(id, bytes, location.as_deref(), &mut undo)?)
                }
                ScratchRequest::Shared { .. } => {
                    std::fs::create_dir_all(&dir).map_err(|e| SnapshotError::io("create", &dir, e))?;
                    let scratch = plan.shared.expect("owner found by the plan");
                    self.scratches.join(id, &scratch, &mut undo)?;
                    Some(scratch)
                }
            };
            let now = Stamp::now();
            let record = Record {
                id,
                kind: plan.kind,
                parent: plan.parent,
                labels: plan.labels,
                created: now,
                updated: now,
                image: None,
                usage: None,
                scratch,
            };
            db::put(&txn, &plan.key, &record)?;
            strata_failpoint::hit("prepare.before_db")?;
            Ok(record)
        })();
        let committed = made.and_then(|record| {
            txn.commit()?;
            Ok(record)
        });
        match committed {
            Ok(record) => {
                tracing::debug!(key = plan.key, id, kind = %plan.kind, "created snapshot");
                Ok(record)
            }
            Err(e) => {
                undo.run();
                Err(e)
            }
        }
    }
}

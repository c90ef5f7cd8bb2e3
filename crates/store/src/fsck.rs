//! Store verification: re-hashes every object, checks every image against
//! the DB, and lists orphans. `repair` removes corrupt objects and orphans.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use strata_tree::Digest;

use crate::gc::{for_each_object, list_images, live_set};
use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsckProblem {
    /// The object's bytes no longer hash to its name.
    CorruptObject { digest: Digest, actual: Digest },
    /// A live image references an object that is not in the store.
    MissingObject { digest: Digest, image: Digest },
    /// A live image's file is gone.
    MissingImage { image: Digest },
    /// A live image's bytes do not hash to its name, or do not parse.
    CorruptImage { image: Digest, reason: String },
    /// The objects an image references differ from what the DB recorded.
    ImageRefsMismatch { image: Digest },
    /// A file under `objects/` or `images/` with a name that is no digest.
    StrayFile { path: String },
    /// An alias (`sha256/XX/REST`) that is not the object the SHA-256
    /// index names for its SHA-256.
    BadAlias { sha256: Digest, reason: String },
    /// A lazily pulled image names a content by SHA-256 that is neither
    /// stored (alias) nor fetchable (no lazy row says how).
    LazyUnfetchable { sha256: Digest, image: Digest },
    /// A row of the small-content table whose bytes do not hash to its
    /// key (partial pulls ignore it; `repair` deletes it).
    BadSmallContent { sha256: Digest },
}

impl FsckProblem {
    /// The EROFS image the problem makes unusable, if any.
    pub fn image(&self) -> Option<Digest> {
        match self {
            FsckProblem::MissingObject { image, .. }
            | FsckProblem::MissingImage { image }
            | FsckProblem::CorruptImage { image, .. }
            | FsckProblem::ImageRefsMismatch { image }
            | FsckProblem::LazyUnfetchable { image, .. } => Some(*image),
            FsckProblem::CorruptObject { .. }
            | FsckProblem::StrayFile { .. }
            | FsckProblem::BadAlias { .. }
            | FsckProblem::BadSmallContent { .. } => None,
        }
    }
}

impl std::fmt::Display for FsckProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsckProblem::CorruptObject { digest, actual } => {
                write!(f, "object {digest} is corrupt: its content hashes to {actual}")
            }
            FsckProblem::MissingObject { digest, image } => {
                write!(f, "object {digest} is missing (used by image {image})")
            }
            FsckProblem::MissingImage { image } => write!(f, "image {image} is missing"),
            FsckProblem::CorruptImage { image, reason } => write!(f, "image {image} is corrupt: {reason}"),
            FsckProblem::ImageRefsMismatch { image } => {
                write!(f, "image {image} references other objects than the DB recorded")
            }
            FsckProblem::StrayFile { path } => write!(f, "stray file {path}"),
            FsckProblem::BadAlias { sha256, reason } => {
                write!(f, "alias sha256/{} is wrong: {reason}", sha256.object_path())
            }
            FsckProblem::LazyUnfetchable { sha256, image } => {
                write!(
                    f,
                    "content sha256:{sha256} of lazily pulled image {image} is neither stored nor fetchable"
                )
            }
            FsckProblem::BadSmallContent { sha256 } => {
                write!(
                    f,
                    "small-content row sha256:{sha256} holds bytes that hash to something else"
                )
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FsckReport {
    pub objects_checked: u64,
    pub images_checked: u64,
    pub problems: Vec<FsckProblem>,
    /// Objects and images nothing references: harmless, freed by gc.
    pub orphan_objects: u64,
    pub orphan_images: u64,
    /// What `repair` removed.
    pub repaired: u64,
    /// Named images `repair` marked broken (content they need is gone).
    pub marked_broken: Vec<String>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(crate) fn run(store: &Store, repair: bool) -> Result<FsckReport, StoreError> {
    // A check holds gc off (shared), so nothing it finds referenced can
    // vanish under it; a repair excludes imports too.
    let (_exclusive, _shared) = if repair {
        (Some(store.lock_exclusive()?), None)
    } else {
        (None, Some(store.lock_shared()?))
    };
    let live = live_set(store)?;
    let mut report = FsckReport::default();
    // Files a commit has made durable and is moving into `objects/` right
    // now (read before the listing, so none falls between the two).
    let pending: Vec<Digest> = store
        .inner
        .db
        .pending()?
        .into_iter()
        .filter(|(path, _)| path.exists())
        .map(|(_, digest)| digest)
        .collect();

    let mut objects = Vec::new();
    for_each_object(store, |fan, name, digest| {
        match digest {
            Some(d) => objects.push(d),
            None => {
                let path = std::path::Path::new("objects").join(fan).join(name);
                report.problems.push(FsckProblem::StrayFile {
                    path: path.display().to_string(),
                });
                if repair {
                    crate::gc::remove_entry(store, fan, name)?;
                    report.repaired += 1;
                }
            }
        }
        Ok(())
    })?;
    report.objects_checked = objects.len() as u64;
    let mut present: HashSet<Digest> = objects.iter().copied().chain(pending).collect();

    for (digest, actual) in rehash_all(store, &objects)? {
        report.problems.push(FsckProblem::CorruptObject { digest, actual });
        if repair {
            store.inner.objects.unlink(&digest.object_path())?;
            present.remove(&digest);
            report.repaired += 1;
        }
    }
    for digest in &objects {
        if !live.objects.contains(digest) {
            report.orphan_objects += 1;
            if repair {
                store.inner.objects.unlink(&digest.object_path())?;
                report.repaired += 1;
            }
        }
    }

    let files = list_images(store)?;
    let on_disk: HashSet<Digest> = files.iter().filter_map(|(_, id)| *id).collect();
    for (name, id) in &files {
        match id {
            None => {
                report.problems.push(FsckProblem::StrayFile {
                    path: format!("images/{name}"),
                });
                if repair {
                    let path = store.inner.images.path().join(name);
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.map_err(|e| StoreError::io("remove", &path, e))?;
                    report.repaired += 1;
                }
            }
            Some(id) if !live.images.contains(id) => {
                report.orphan_images += 1;
                if repair {
                    store.inner.images.unlink(name)?;
                    report.repaired += 1;
                }
            }
            Some(_) => {}
        }
    }

    let mut live_images: Vec<Digest> = live.images.iter().copied().collect();
    live_images.sort_unstable();
    for image in live_images {
        report.images_checked += 1;
        if !on_disk.contains(&image) {
            report.problems.push(FsckProblem::MissingImage { image });
            continue;
        }
        check_image(store, image, &present, &mut report.problems)?;
    }
    check_aliases(store, repair, &mut report)?;
    for sha256 in crate::small_contents::check(store, repair)? {
        report.problems.push(FsckProblem::BadSmallContent { sha256 });
        report.repaired += u64::from(repair);
    }
    if repair {
        mark_broken(store, &mut report)?;
    }
    Ok(report)
}

/// Each alias must be a hard link to (the same inode as) the object the
/// SHA-256 index names for its SHA-256; that object's own content is
/// re-hashed above, and the index row is a fact strata computed when it
/// stored the object. Its SHA-256 is not re-hashed here.
fn check_aliases(store: &Store, repair: bool, report: &mut FsckReport) -> Result<(), StoreError> {
    let mut bad = Vec::new();
    crate::aliases::for_each_alias(store, |fan, name, path, sha| {
        let Some(sha) = sha else {
            report.problems.push(FsckProblem::StrayFile {
                path: format!("{}/{fan}/{name}", crate::aliases::ALIASES_DIR),
            });
            bad.push(path.to_owned());
            return Ok(());
        };
        let reason = match store.objects_by_sha256(&[sha.0])?.pop().flatten() {
            None => Some("the SHA-256 index names no stored object for it".to_owned()),
            Some(object) if !crate::aliases::links_object(store, path, &object.digest) => {
                Some(format!("it is not a hard link to object {}", object.digest))
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            report.problems.push(FsckProblem::BadAlias { sha256: sha, reason });
            bad.push(path.to_owned());
        }
        Ok(())
    })?;
    if repair {
        for path in bad {
            crate::aliases::remove(&path)?;
            report.repaired += 1;
        }
    }
    Ok(())
}

/// Marks every named image that a problem touches as broken, so that
/// `mount` refuses it with a clear error and `pull` imports it again.
fn mark_broken(store: &Store, report: &mut FsckReport) -> Result<(), StoreError> {
    for mut record in store.images()? {
        let id = record.erofs_id()?;
        let Some(problem) = report.problems.iter().find(|p| p.image() == Some(id)) else {
            continue;
        };
        if record.broken.is_none() {
            record.broken = Some(problem.to_string());
            store.inner.db.update_image(&record)?;
            report.marked_broken.push(record.name);
        }
    }
    Ok(())
}

fn check_image(
    store: &Store,
    image: Digest,
    present: &HashSet<Digest>,
    problems: &mut Vec<FsckProblem>,
) -> Result<(), StoreError> {
    let bytes = store.read_image(&image)?;
    let actual = Digest::of(&bytes);
    if actual != image {
        problems.push(FsckProblem::CorruptImage {
            image,
            reason: format!("its bytes hash to {actual}"),
        });
        return Ok(());
    }
    let referenced = match strata_erofs::referenced_objects(&bytes) {
        Ok(r) => r,
        Err(e) => {
            problems.push(FsckProblem::CorruptImage {
                image,
                reason: e.to_string(),
            });
            return Ok(());
        }
    };
    // A lazily pulled image also redirects to SHA-256 names: each must be
    // stored (its alias) or fetchable (its lazy row).
    let needs: HashSet<Digest> = store.lazy_needs(&image)?.unwrap_or_default().into_iter().collect();
    let mut referenced = referenced;
    referenced.retain(|d| !needs.contains(d));
    let mut needs: Vec<Digest> = needs.into_iter().collect();
    needs.sort_unstable();
    for sha256 in needs {
        if store.open_alias(&sha256)?.is_none() && store.lazy_recipe(&sha256)?.is_none() {
            problems.push(FsckProblem::LazyUnfetchable { sha256, image });
        }
    }
    let mut recorded: Vec<Digest> = store.image_objects(&image)?.into_iter().map(|o| o.digest).collect();
    recorded.sort_unstable();
    recorded.dedup();
    if recorded != referenced {
        problems.push(FsckProblem::ImageRefsMismatch { image });
    }
    for digest in referenced {
        if !present.contains(&digest) {
            problems.push(FsckProblem::MissingObject { digest, image });
        }
    }
    Ok(())
}

/// Re-hashes objects on two threads; returns (name, actual) for mismatches.
fn rehash_all(store: &Store, objects: &[Digest]) -> Result<Vec<(Digest, Digest)>, StoreError> {
    let next = AtomicUsize::new(0);
    let bad = Mutex::new(Vec::new());
    let error = Mutex::new(None);
    let workers = crate::hashing::cores().min(8);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(digest) = objects.get(i) else { break };
                match hash_object(store, digest) {
                    Ok(actual) if actual != *digest => bad.lock().unwrap().push((*digest, actual)),
                    Ok(_) => {}
                    Err(e) => {
                        error.lock().unwrap().get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().unwrap() {
        return Err(e);
    }
    let mut bad = bad.into_inner().unwrap();
    bad.sort_unstable();
    Ok(bad)
}

fn hash_object(store: &Store, digest: &Digest) -> Result<Digest, StoreError> {
    let path = store.objects_path().join(digest.object_path());
    crate::hashing::hash_file(&path).map(|(actual, _)| actual)
}

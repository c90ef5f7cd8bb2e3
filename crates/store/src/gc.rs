//! Garbage collection: removes images and objects that no image name and no
//! root references, and whatever crashed imports left in `tmp/`.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;

use strata_tree::Digest;

use crate::{Store, StoreError};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub objects_removed: u64,
    pub images_removed: u64,
    pub tmp_removed: u64,
    /// Allocated bytes given back to the filesystem.
    pub bytes_freed: u64,
}

/// The object and image sets that must be kept.
pub(crate) struct LiveSet {
    pub images: HashSet<Digest>,
    pub objects: HashSet<Digest>,
    /// SHA-256 names live lazily pulled images redirect to (their aliases
    /// and lazy rows are kept; the objects they name are in `objects`).
    pub lazy_needs: HashSet<Digest>,
}

pub(crate) fn live_set(store: &Store) -> Result<LiveSet, StoreError> {
    let images: HashSet<Digest> = store.inner.db.live_images()?.into_iter().collect();
    let mut objects = HashSet::new();
    for id in &images {
        objects.extend(store.inner.db.image_objects(id)?.into_iter().map(|o| o.digest));
    }
    let lazy_needs = crate::lazy_rows::live_needs(store, &images)?;
    let keys: Vec<[u8; 32]> = lazy_needs.iter().map(|d| d.0).collect();
    objects.extend(store.objects_by_sha256(&keys)?.into_iter().flatten().map(|o| o.digest));
    Ok(LiveSet {
        images,
        objects,
        lazy_needs,
    })
}

/// What a gc would remove of objects and images now, without removing
/// anything (`tmp/` is not counted: live imports stage there).
pub(crate) fn preview(store: &Store) -> Result<GcReport, StoreError> {
    let _lock = store.lock_shared()?;
    let live = live_set(store)?;
    let mut report = GcReport::default();
    for (name, id) in list_images(store)? {
        if id.is_none_or(|id| !live.images.contains(&id)) {
            report.bytes_freed += allocated(&store.inner.images, &name);
            report.images_removed += 1;
        }
    }
    for_each_object(store, |fan, name, digest| {
        if digest.is_none_or(|d| !live.objects.contains(&d)) {
            report.bytes_freed += allocated_tree(&store.inner.objects.path().join(fan).join(name));
            report.objects_removed += 1;
        }
        Ok(())
    })?;
    Ok(report)
}

pub(crate) fn run(store: &Store) -> Result<GcReport, StoreError> {
    let _lock = store.lock_exclusive()?;
    let live = live_set(store)?;
    let mut report = GcReport::default();

    let dead: Vec<Digest> = store
        .inner
        .db
        .recorded_images()?
        .into_iter()
        .filter(|id| !live.images.contains(id))
        .collect();

    for (name, id) in list_images(store)? {
        if id.is_none_or(|id| !live.images.contains(&id)) {
            report.bytes_freed += remove_counted(&store.inner.images, &name)?;
            report.images_removed += 1;
        }
    }
    strata_failpoint::hit("gc.after_images")?;
    store.inner.db.forget_images(&dead)?;
    strata_failpoint::hit("gc.before_objects")?;

    for_each_object(store, |fan, name, digest| {
        if digest.is_none_or(|d| !live.objects.contains(&d)) {
            report.bytes_freed += allocated_tree(&store.inner.objects.path().join(fan).join(name));
            remove_entry(store, fan, name)?;
            report.objects_removed += 1;
        }
        Ok(())
    })?;
    // The SHA-256 index must not name what is gone (lookups check, too).
    crate::sha_index::forget_dead(store, &live.objects)?;
    crate::small_contents::forget_dead(store, &live.images)?;
    // Aliases go with their objects, and when no live image needs them.
    crate::aliases::for_each_alias(store, |_, _, path, sha| {
        let needed = sha.is_some_and(|sha| live.lazy_needs.contains(&sha));
        if !needed || !crate::aliases::is_linked(path) {
            crate::aliases::remove(path)?;
        }
        Ok(())
    })?;
    crate::lazy_rows::forget_dead(store, &live.images, &live.lazy_needs)?;

    let tmp = store.inner.tmp.path().to_owned();
    for entry in read_dir(&tmp)? {
        // A live process's trash thread is deleting it already.
        if crate::recover::is_live_trash(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata().map_err(|e| StoreError::io("stat", &path, e))?;
        report.bytes_freed += allocated_tree(&path);
        let result = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.map_err(|e| StoreError::io("remove", &path, e))?;
        report.tmp_removed += 1;
    }
    if report != GcReport::default() {
        store.inner.objects.syncfs()?;
    }
    Ok(report)
}

fn allocated_tree(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                total += allocated_tree(&entry.path());
            }
        }
    }
    total
}

/// Removes `objects/FAN/NAME` (or `objects/NAME` when `fan` is empty),
/// whatever it is: stray directories go with their contents.
pub(crate) fn remove_entry(store: &Store, fan: &str, name: &str) -> Result<(), StoreError> {
    let path = store.inner.objects.path().join(fan).join(name);
    let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
    let result = if is_dir {
        std::fs::remove_dir_all(&path)
    } else {
        std::fs::remove_file(&path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io("remove", &path, e)),
        _ => Ok(()),
    }
}

fn allocated(dir: &crate::dirfd::DirFd, name: &str) -> u64 {
    rustix::fs::statat(dir.fd(), name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .map(|st| u64::try_from(st.st_blocks).unwrap_or(0) * 512)
        .unwrap_or(0)
}

fn remove_counted(dir: &crate::dirfd::DirFd, name: &str) -> Result<u64, StoreError> {
    let bytes = allocated(dir, name);
    dir.unlink(name)?;
    Ok(bytes)
}

pub(crate) fn read_dir(path: &std::path::Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    let entries = std::fs::read_dir(path).map_err(|e| StoreError::io("list", path, e))?;
    let mut out = Vec::new();
    for entry in entries {
        out.push(entry.map_err(|e| StoreError::io("list", path, e))?);
    }
    out.sort_by_key(|e| e.file_name());
    Ok(out)
}

/// Image files as (file name, id if the name parses).
pub(crate) fn list_images(store: &Store) -> Result<Vec<(String, Option<Digest>)>, StoreError> {
    let mut out = Vec::new();
    for entry in read_dir(store.inner.images.path())? {
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = name.strip_suffix(".erofs").and_then(|hex| hex.parse().ok());
        out.push((name, id));
    }
    Ok(out)
}

/// Calls `visit(fan dir, file name, digest if the name is valid)` for every
/// file under `objects/`. An entry of `objects/` itself that is no fan-out
/// directory is visited as (`""`, its name, `None`).
pub(crate) fn for_each_object(
    store: &Store,
    mut visit: impl FnMut(&str, &str, Option<Digest>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    for fan in read_dir(store.inner.objects.path())? {
        let fan_name = fan.file_name().to_string_lossy().into_owned();
        if !fan.file_type().is_ok_and(|t| t.is_dir()) {
            visit("", &fan_name, None)?;
            continue;
        }
        for entry in read_dir(&fan.path())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digest = Digest::from_object_path(&fan_name, &name).ok();
            visit(&fan_name, &name, digest)?;
        }
    }
    Ok(())
}

//! `strata fsck` for snapshots: every DB row against the disk (its dir, its
//! image, its scratch file and mount), and every dir, scratch file, scratch
//! mount and loop device on the disk against the DB. Read-only: it runs
//! beside `strata serve`; a start of the snapshotter repairs what it finds.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use strata_scratch::ScratchPolicy;
use strata_store::Store;

use crate::db::{self, Record};
use crate::scratch::Scratches;
use crate::{Kind, SnapshotError};

/// What the check found.
#[derive(Debug, Default)]
pub struct SnapshotReport {
    pub snapshots_checked: usize,
    /// Rows whose data is damaged or gone.
    pub problems: Vec<String>,
    /// Leftovers no row uses (dirs, scratch files and mounts, loop devices).
    pub orphans: Vec<String>,
}

/// The containerd key of every snapshot, by the name of its gc root in the
/// store (what `Store::roots` lists), so reports can name snapshots as
/// users know them. Read-only.
pub fn keys_by_root(store: &Store) -> Result<std::collections::HashMap<String, String>, SnapshotError> {
    Ok(db::all(store)?
        .into_iter()
        .map(|(key, record)| (crate::ops::root_name(record.id), key))
        .collect())
}

impl SnapshotReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty() && self.orphans.is_empty()
    }
}

/// Checks the snapshots of `store` without changing anything.
pub fn check(store: &Store, policy: &ScratchPolicy) -> Result<SnapshotReport, SnapshotError> {
    db::init(store)?;
    let records = db::all(store)?;
    let scratches = Scratches::new(store.root(), policy.clone());
    let dir = store.root().join("snapshots");
    let mut report = SnapshotReport {
        snapshots_checked: records.len(),
        ..SnapshotReport::default()
    };
    let keys: HashSet<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    for (key, r) in &records {
        check_record(store, &scratches, &dir, key, r, &keys, &mut report.problems);
    }

    let ids: HashSet<String> = records.iter().map(|(_, r)| r.id.to_string()).collect();
    for name in dirs_without_rows(store, &dir, &ids)? {
        report
            .orphans
            .push(format!("snapshot dir snapshots/{name} has no DB row"));
    }
    for (key, r) in records.iter().filter(|(_, r)| r.kind == Kind::Committed) {
        if crate::ops::has_upper_leftovers(&dir.join(r.id.to_string())) {
            report.orphans.push(format!(
                "snapshot {key:?}: the upper dir of its commit is still there (a start removes it)"
            ));
        }
    }
    let roots: HashSet<String> = records.iter().map(|(_, r)| crate::ops::root_name(r.id)).collect();
    for root in store.roots()? {
        if root.starts_with("snapshot:") && !roots.contains(&root) {
            report.orphans.push(format!("gc root {root} has no snapshot"));
        }
    }
    let used_fs: HashSet<String> = records
        .iter()
        .filter_map(|(_, r)| r.scratch.as_ref().map(|s| s.fs.to_string()))
        .collect();
    let mnt = store.root().join("scratch/mnt");
    for name in names_in(&mnt)? {
        if !used_fs.contains(&name) {
            report
                .orphans
                .push(format!("scratch mount point scratch/mnt/{name} has no user"));
        }
    }
    let files: BTreeSet<PathBuf> = records
        .iter()
        .filter_map(|(_, r)| r.scratch.as_ref()?.file().map(Path::to_owned))
        .collect();
    let dirs: BTreeSet<PathBuf> = records
        .iter()
        .filter_map(|(_, r)| r.scratch.as_ref()?.limited_dir().map(Path::to_owned))
        .collect();
    for dir in scratches.limited_dirs()? {
        if !dirs.contains(&dir) {
            report
                .orphans
                .push(format!("scratch dir {} has no user", dir.display()));
        }
    }
    for file in scratches.files()? {
        if !files.contains(&file) {
            report
                .orphans
                .push(format!("scratch file {} has no user", file.display()));
        }
    }
    for (device, backing) in loop_devices() {
        if !files.contains(&backing) && scratches.is_ours(&backing) {
            report
                .orphans
                .push(format!("loop device {device} holds unused {}", backing.display()));
        }
    }
    Ok(report)
}

fn check_record(
    store: &Store,
    scratches: &Scratches,
    dir: &Path,
    key: &str,
    r: &Record,
    keys: &HashSet<&str>,
    problems: &mut Vec<String>,
) {
    let own = dir.join(r.id.to_string());
    if !own.is_dir() {
        problems.push(format!("snapshot {key:?}: its dir {} is missing", own.display()));
    }
    if let Some(parent) = &r.parent {
        if !keys.contains(parent.as_str()) {
            problems.push(format!("snapshot {key:?}: parent {parent:?} is not in the DB"));
        }
    }
    match r.kind {
        Kind::Committed => {
            let image = r.image.as_deref().and_then(|h| h.parse().ok());
            match image {
                Some(id) if store.image_path(&id).is_file() => {}
                _ => problems.push(format!("snapshot {key:?}: its EROFS image is missing")),
            }
        }
        Kind::Active | Kind::View => {
            let upper = match &r.scratch {
                Some(s) => {
                    if let Some(file) = s.file().filter(|f| !f.is_file()) {
                        problems.push(format!("snapshot {key:?}: scratch file {} is missing", file.display()));
                    }
                    if let Some(dir) = s.limited_dir().filter(|d| !d.is_dir()) {
                        problems.push(format!("snapshot {key:?}: scratch dir {} is missing", dir.display()));
                    }
                    if s.file().is_some() && !strata_sys::is_mountpoint(&scratches.mount_point(s.fs)) {
                        problems.push(format!("snapshot {key:?}: its scratch is not mounted"));
                    }
                    scratches.upper_of(s, r.id).0
                }
                None => own.join("fs"),
            };
            if !upper.is_dir() {
                problems.push(format!("snapshot {key:?}: upper dir {} is missing", upper.display()));
            }
        }
    }
}

/// How long a dir without a row gets to show a row or go before it is
/// reported: long next to the one transaction between them.
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// The snapshot dirs in `dir` that no row of `ids`, read before, names,
/// and none after a second look. A serve running beside the check makes a
/// Prepare's dir just before its row, and discards a Remove's dir just
/// after its row is gone: either is an orphan only for a moment.
fn dirs_without_rows(store: &Store, dir: &Path, ids: &HashSet<String>) -> Result<Vec<String>, SnapshotError> {
    let mut unknown: Vec<String> = names_in(dir)?.into_iter().filter(|n| !ids.contains(n)).collect();
    if unknown.is_empty() {
        return Ok(unknown);
    }
    std::thread::sleep(IN_FLIGHT_GRACE);
    let now: HashSet<String> = db::all(store)?.iter().map(|(_, r)| r.id.to_string()).collect();
    unknown.retain(|name| !now.contains(name) && dir.join(name).exists());
    Ok(unknown)
}

fn names_in(dir: &Path) -> Result<Vec<String>, SnapshotError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SnapshotError::io("read dir", dir, e)),
    }
}

/// Attached loop devices and their backing files, from sysfs.
fn loop_devices() -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            Some((format!("/dev/{name}"), PathBuf::from(backing.trim())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Stamp;

    fn active(id: u64) -> Record {
        Record {
            id,
            kind: Kind::Active,
            parent: None,
            labels: Default::default(),
            created: Stamp::now(),
            updated: Stamp::now(),
            image: None,
            usage: None,
            scratch: None,
        }
    }

    #[test]
    fn a_dir_whose_row_comes_or_that_goes_while_the_check_runs_is_no_orphan() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        db::init(&store).unwrap();
        let dir = store.root().join("snapshots");
        for name in ["7", "8", "9"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        let ids = HashSet::new();
        let unknown = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(IN_FLIGHT_GRACE / 4);
                // A Prepare's row lands; a Remove's dir is discarded.
                let (infos, lock) = (crate::info_cache::InfoCache::default(), std::sync::Mutex::new(()));
                let _guard = infos.lock(&lock, &store);
                let txn = store.begin().unwrap();
                db::put(&txn, "k", &active(7)).unwrap();
                txn.commit().unwrap();
                std::fs::remove_dir(dir.join("8")).unwrap();
            });
            dirs_without_rows(&store, &dir, &ids).unwrap()
        });
        assert_eq!(unknown, vec!["9".to_owned()]);
    }
}

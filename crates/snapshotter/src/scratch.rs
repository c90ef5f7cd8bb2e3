//! Sized and shared scratch filesystems for active snapshots.
//!
//! A sized scratch is an image file cloned from a template, mounted at
//! `ROOT/scratch/mnt/<fs>`, where `<fs>` is the id of the snapshot that
//! created it. Each snapshot using it (its creator and any sharers) keeps
//! its upper and work dirs in `<fs mount>/<snapshot id>/`. The filesystem
//! lives while any snapshot record names it. Files and templates sit in
//! `ROOT/scratch/` or, with a location label, in `<location>/strata-<store>/`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use strata_scratch::{FsKind, ScratchPolicy};

use crate::SnapshotError;

/// The scratch filesystem a snapshot uses, as recorded in its DB row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ScratchUse {
    /// Id of the snapshot that created the filesystem; names its mount.
    pub fs: u64,
    pub file: PathBuf,
    pub template: PathBuf,
    pub xfs: bool,
}

impl ScratchUse {
    fn kind(&self) -> FsKind {
        if self.xfs {
            FsKind::Xfs
        } else {
            FsKind::Ext4
        }
    }
}

/// What a failed Prepare must take back, undone in reverse order.
#[derive(Default)]
pub(crate) struct Undo(Vec<Step>);

enum Step {
    RemoveDir(PathBuf),
    RemoveFile(PathBuf),
    Unmount(PathBuf),
}

impl Undo {
    pub fn dir(&mut self, path: PathBuf) {
        self.0.push(Step::RemoveDir(path));
    }

    pub fn run(self) {
        for step in self.0.into_iter().rev() {
            let (what, path, result) = match &step {
                Step::RemoveDir(p) => ("remove", p, std::fs::remove_dir_all(p).map_err(|e| e.to_string())),
                Step::RemoveFile(p) => ("remove", p, std::fs::remove_file(p).map_err(|e| e.to_string())),
                Step::Unmount(p) => ("unmount", p, strata_scratch::unmount_file(p).map_err(|e| e.to_string())),
            };
            if let Err(e) = result {
                tracing::warn!("rolling back: {what} {}: {e}", path.display());
            }
        }
    }
}

fn fail(point: &'static str) -> Result<(), SnapshotError> {
    strata_failpoint::hit(point).map_err(SnapshotError::from)
}

fn mkdirs(paths: &[&Path]) -> Result<(), SnapshotError> {
    for p in paths {
        std::fs::create_dir_all(p).map_err(|e| SnapshotError::io("create", p, e))?;
    }
    Ok(())
}

/// How a sized scratch gets its size limit. Only loop-mounted image
/// files exist today.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScratchMechanism {
    Loop,
}

impl ScratchMechanism {
    /// A short name, e.g. for a metric label.
    pub fn name(self) -> &'static str {
        match self {
            ScratchMechanism::Loop => "loop",
        }
    }
}

/// The sized scratch filesystems of one mechanism mounted now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchUsage {
    pub mechanism: ScratchMechanism,
    pub filesystems: u64,
    /// Bytes in use inside them, as `df` counts them (the filesystems' own
    /// metadata included).
    pub used_bytes: u64,
}

/// What the sized scratch filesystems of the store at `store_root` hold
/// now: one statvfs per mounted filesystem, no walk, no lock. Snapshots
/// without a size label keep their upper dirs on the store's filesystem
/// and are not counted.
pub fn scratch_usage(store_root: &Path) -> Result<Vec<ScratchUsage>, SnapshotError> {
    let mounts = scratch_dir(store_root).join(MOUNTS);
    let mut usage = ScratchUsage {
        mechanism: ScratchMechanism::Loop,
        filesystems: 0,
        used_bytes: 0,
    };
    for fs in list_ids(&mounts)? {
        let mount = mounts.join(fs.to_string());
        if !strata_sys::is_mountpoint(&mount) {
            continue;
        }
        // Released between the listing and here: not in use any more.
        let Ok((bytes, _inodes)) = strata_scratch::fs_used(&mount) else {
            continue;
        };
        usage.filesystems += 1;
        usage.used_bytes += bytes;
    }
    Ok(vec![usage])
}

/// `ROOT/scratch`
fn scratch_dir(store_root: &Path) -> PathBuf {
    store_root.join("scratch")
}

/// Under [`scratch_dir`]: where each sized scratch is mounted, by id.
const MOUNTS: &str = "mnt";

pub(crate) struct Scratches {
    /// `ROOT/scratch`
    dir: PathBuf,
    /// Names this store's directory inside a shared location.
    store_tag: String,
    pub policy: ScratchPolicy,
}

impl Scratches {
    pub fn new(root: &Path, policy: ScratchPolicy) -> Self {
        let store_tag = strata_tree::Digest::of(root.as_os_str().as_encoded_bytes()).to_hex()[..12].to_owned();
        Scratches {
            dir: scratch_dir(root),
            store_tag,
            policy,
        }
    }

    pub fn mount_point(&self, fs: u64) -> PathBuf {
        self.dir.join(MOUNTS).join(fs.to_string())
    }

    /// Upper and work dirs of snapshot `id` inside the scratch `s`.
    pub fn upper_of(&self, s: &ScratchUse, id: u64) -> (PathBuf, PathBuf) {
        let base = self.mount_point(s.fs).join(id.to_string());
        (base.join("fs"), base.join("work"))
    }

    /// Where templates and files go: the default place or a location.
    fn place(&self, location: Option<&Path>) -> PathBuf {
        match location {
            Some(l) => l.join(format!("strata-{}", self.store_tag)),
            None => self.dir.clone(),
        }
    }

    /// Every place this store may have put templates and files.
    fn places(&self) -> Vec<PathBuf> {
        let mut out = vec![self.dir.clone()];
        out.extend(self.policy.allowed_locations.iter().map(|l| self.place(Some(l))));
        out
    }

    /// Every scratch file in this store's places.
    pub fn files(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        for place in self.places() {
            out.extend(list_files(&place.join("files"))?);
        }
        Ok(out)
    }

    /// True for a path inside one of this store's scratch file dirs.
    pub fn is_ours(&self, path: &Path) -> bool {
        self.places().iter().any(|p| path.starts_with(p.join("files")))
    }

    /// A new filesystem of `bytes` for snapshot `id`: template (formatted
    /// at most once), clone, mount, upper and work dirs.
    pub fn create(
        &self,
        id: u64,
        bytes: u64,
        location: Option<&Path>,
        undo: &mut Undo,
    ) -> Result<ScratchUse, SnapshotError> {
        let place = self.place(location);
        let (template, formatted) = strata_scratch::ensure_template(&place.join("templates"), bytes, self.policy.fs)?;
        if formatted {
            tracing::info!(template = %template.display(), bytes, "formatted scratch template");
        }
        fail("prepare.after_template")?;
        let files = place.join("files");
        mkdirs(&[&files])?;
        let file = files.join(format!("{id}.img"));
        let method = strata_scratch::clone_file(&template, &file)?;
        undo.0.push(Step::RemoveFile(file.clone()));
        tracing::debug!(file = %file.display(), ?method, "cloned scratch");
        fail("prepare.after_clone")?;
        let scratch = ScratchUse {
            fs: id,
            file,
            template,
            xfs: self.policy.fs == FsKind::Xfs,
        };
        let mount = self.mount_point(id);
        undo.dir(mount.clone());
        strata_scratch::mount_file(&scratch.file, &mount, scratch.kind())?;
        undo.0.push(Step::Unmount(mount));
        fail("prepare.after_mount")?;
        self.join(id, &scratch, undo)?;
        Ok(scratch)
    }

    /// Upper and work dirs for snapshot `id` in an existing scratch.
    pub fn join(&self, id: u64, scratch: &ScratchUse, undo: &mut Undo) -> Result<(), SnapshotError> {
        let (upper, work) = self.upper_of(scratch, id);
        undo.dir(upper.parent().expect("per-snapshot dir").to_owned());
        mkdirs(&[&upper, &work])?;
        std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| SnapshotError::io("chmod", &upper, e))
    }

    /// Drops snapshot `id`'s dirs from its scratch; with `last`, the
    /// filesystem goes too: unmount (which frees the loop device), file.
    pub fn release(&self, id: u64, scratch: &ScratchUse, last: bool) {
        let (upper, _) = self.upper_of(scratch, id);
        let own = upper.parent().expect("per-snapshot dir");
        if let Err(e) = std::fs::remove_dir_all(own) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}; cleanup retries", own.display());
            }
        }
        if last {
            self.drop_fs(scratch.fs, Some(&scratch.file));
        }
    }

    fn drop_fs(&self, fs: u64, file: Option<&Path>) {
        let mount = self.mount_point(fs);
        if strata_sys::is_mountpoint(&mount) {
            if let Err(e) = strata_scratch::unmount_file(&mount) {
                return tracing::warn!("keeping scratch {fs}: {e}; cleanup retries");
            }
        }
        let _ = std::fs::remove_dir(&mount);
        if let Some(file) = file {
            if let Err(e) = std::fs::remove_file(file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {e}", file.display());
                }
            }
        }
        tracing::debug!(fs, "released scratch filesystem");
    }

    /// Makes the disk match the DB: mounts every scratch in use that is not
    /// mounted, and removes mounts and files no snapshot uses. With
    /// `templates`, unused templates go too.
    pub fn reconcile(&self, in_use: &[&ScratchUse], templates: bool) -> Result<(), SnapshotError> {
        let by_fs: HashMap<u64, &ScratchUse> = in_use.iter().map(|s| (s.fs, *s)).collect();
        for s in by_fs.values() {
            let mount = self.mount_point(s.fs);
            if !strata_sys::is_mountpoint(&mount) {
                tracing::info!(fs = s.fs, "mounting scratch again");
                if let Err(e) = strata_scratch::mount_file(&s.file, &mount, s.kind()) {
                    tracing::warn!(fs = s.fs, "{e}");
                }
            }
        }
        for fs in list_ids(&self.dir.join(MOUNTS))? {
            if !by_fs.contains_key(&fs) {
                self.drop_fs(fs, None);
            }
        }
        let files: BTreeSet<&Path> = by_fs.values().map(|s| s.file.as_path()).collect();
        let used_templates: BTreeSet<&Path> = by_fs.values().map(|s| s.template.as_path()).collect();
        for file in self.files()? {
            if !files.contains(file.as_path()) {
                tracing::info!(file = %file.display(), "removing unused scratch file");
                let _ = std::fs::remove_file(&file);
            }
        }
        for place in self.places() {
            for template in list_files(&place.join("templates"))? {
                let name = template
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let stale_temp = name.starts_with(".template-");
                let unused = templates && name.starts_with("template-") && !used_templates.contains(template.as_path());
                if stale_temp || unused {
                    tracing::info!(template = %template.display(), "removing unused scratch template");
                    let _ = std::fs::remove_file(&template);
                }
            }
        }
        Ok(())
    }
}

/// The numeric entries of `dir` (missing dir: none).
fn list_ids(dir: &Path) -> Result<Vec<u64>, SnapshotError> {
    Ok(list_files(dir)?
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.parse().ok())
        .collect())
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.path()).map_err(|e| SnapshotError::io("read dir", dir, e)))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(SnapshotError::io("read dir", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mounted_scratch_filesystems_count() {
        let root = tempfile::tempdir().unwrap();
        let loop_usage = |filesystems, used_bytes| ScratchUsage {
            mechanism: ScratchMechanism::Loop,
            filesystems,
            used_bytes,
        };
        assert_eq!(
            scratch_usage(root.path()).unwrap(),
            vec![loop_usage(0, 0)],
            "no scratch dir yet"
        );
        // A mount point whose filesystem went away (say, a reboot) is a
        // plain directory of the store's filesystem: none of its bytes count.
        let left = scratch_dir(root.path()).join(MOUNTS).join("7");
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("f"), vec![1u8; 1 << 20]).unwrap();
        assert_eq!(scratch_usage(root.path()).unwrap(), vec![loop_usage(0, 0)]);
    }
}

//! Sized and shared scratch for active snapshots.
//!
//! A sized scratch gets its limit from the filesystem it lives on, chosen
//! per place when it is made ([`strata_scratch::mechanism`]): a btrfs
//! subvolume with a qgroup limit, or a directory with a project quota
//! (ext4, XFS), at `<place>/dirs/<fs>`; else an image file cloned from a
//! template and loop-mounted. `<fs>` is the id of the snapshot that
//! created it, and `ROOT/scratch/mnt/<fs>` is its entry: the loop mount
//! itself, or a symlink to the quota-limited dir. Each snapshot using it
//! (its creator and any sharers) keeps its upper and work dirs in
//! `<scratch>/<snapshot id>/`. The scratch lives while any snapshot record
//! names it. `<place>` is `ROOT/scratch/` or, with a location label,
//! `<location>/strata-<store>/`; files and templates sit there too.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use strata_scratch::limit::{self, Kernel};
use strata_scratch::{Mechanism, Plan, ScratchPolicy};

use crate::SnapshotError;

mod record;

pub(crate) use record::{Backing, ScratchUse};

/// What a failed Prepare must take back, undone in reverse order.
#[derive(Default)]
pub(crate) struct Undo(Vec<Step>);

enum Step {
    RemoveDir(PathBuf),
    RemoveFile(PathBuf),
    Unmount(PathBuf),
    /// A quota-limited dir, with its limit.
    DropLimited(Backing),
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
                Step::DropLimited(b) => match b {
                    Backing::Subvolume { dir, qgroup } => (
                        "delete subvolume",
                        dir,
                        limit::remove_subvolume(dir, *qgroup).map_err(|e| e.to_string()),
                    ),
                    Backing::Project { dir, id } => (
                        "remove",
                        dir,
                        limit::remove_project_dir(&Kernel, dir, Some(*id)).map_err(|e| e.to_string()),
                    ),
                    Backing::Loop { .. } => continue,
                },
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

/// How a sized scratch gets its size limit.
pub type ScratchMechanism = Mechanism;

/// The sized scratches of one mechanism in use now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchUsage {
    pub mechanism: ScratchMechanism,
    pub filesystems: u64,
    /// Bytes in use inside them: as `df` counts them for a loop scratch
    /// (the filesystem's own metadata included), as the quota charges
    /// them for a qgroup (bytes referenced) or a project.
    pub used_bytes: u64,
}

const MECHANISMS: [Mechanism; 3] = [Mechanism::Loop, Mechanism::BtrfsQgroup, Mechanism::ProjectQuota];

/// What the sized scratches of the store at `store_root` hold now, per
/// mechanism: one statvfs or quota read per scratch, no walk, no lock.
/// Snapshots without a size label keep their upper dirs on the store's
/// filesystem and are not counted.
pub fn scratch_usage(store_root: &Path) -> Result<Vec<ScratchUsage>, SnapshotError> {
    let entries = scratch_dir(store_root).join(MOUNTS);
    let mut usage: Vec<ScratchUsage> = MECHANISMS
        .iter()
        .map(|&mechanism| ScratchUsage {
            mechanism,
            filesystems: 0,
            used_bytes: 0,
        })
        .collect();
    for fs in list_ids(&entries)? {
        let entry = entries.join(fs.to_string());
        // Released between the listing and here: not in use any more.
        let measured = if strata_sys::is_mountpoint(&entry) {
            strata_scratch::fs_used(&entry)
                .ok()
                .map(|(bytes, _)| (Mechanism::Loop, bytes))
        } else if entry.is_symlink() {
            limit::used_by_dir(&entry).ok().flatten()
        } else {
            None
        };
        if let Some((mechanism, bytes)) = measured {
            let u = usage
                .iter_mut()
                .find(|u| u.mechanism == mechanism)
                .expect("every mechanism");
            u.filesystems += 1;
            u.used_bytes += bytes;
        }
    }
    Ok(usage)
}

/// The mechanism a new sized scratch would get in each place the store at
/// `store_root` may put one (its own scratch dir, then each allowed
/// location), found without changing anything; for `strata version`.
pub fn scratch_plans(store_root: &Path, policy: &ScratchPolicy) -> Vec<(PathBuf, Result<Plan, SnapshotError>)> {
    Scratches::new(store_root, policy.clone()).plans()
}

/// `ROOT/scratch`
fn scratch_dir(store_root: &Path) -> PathBuf {
    store_root.join("scratch")
}

/// Under [`scratch_dir`]: each sized scratch's entry, by id.
const MOUNTS: &str = "mnt";
/// Under a place: the quota-limited dirs, by id.
const DIRS: &str = "dirs";

pub(crate) struct Scratches {
    /// `ROOT/scratch`
    dir: PathBuf,
    /// Names this store's directory inside a shared location.
    store_tag: String,
    /// Spreads this store's project ids (from its tag).
    project_seed: u32,
    pub policy: ScratchPolicy,
    /// The last plan logged per place, to log a change once.
    plans: Mutex<HashMap<PathBuf, Plan>>,
}

impl Scratches {
    pub fn new(root: &Path, policy: ScratchPolicy) -> Self {
        let tag = strata_tree::Digest::of(root.as_os_str().as_encoded_bytes()).to_hex();
        let project_seed = u32::from_str_radix(&tag[12..20], 16).expect("hex digest");
        Scratches {
            dir: scratch_dir(root),
            store_tag: tag[..12].to_owned(),
            project_seed,
            policy,
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// `ROOT/scratch/mnt/<fs>`: a loop scratch's mount point, or a symlink
    /// to a quota-limited scratch's dir.
    pub fn mount_point(&self, fs: u64) -> PathBuf {
        self.dir.join(MOUNTS).join(fs.to_string())
    }

    /// The directory holding the snapshots' dirs of scratch `s`.
    pub fn root_of(&self, s: &ScratchUse) -> PathBuf {
        match s.limited_dir() {
            Some(dir) => dir.to_owned(),
            None => self.mount_point(s.fs),
        }
    }

    /// Upper and work dirs of snapshot `id` inside the scratch `s`.
    pub fn upper_of(&self, s: &ScratchUse, id: u64) -> (PathBuf, PathBuf) {
        let base = self.root_of(s).join(id.to_string());
        (base.join("fs"), base.join("work"))
    }

    /// Where templates, files and dirs go: the default place or a location.
    fn place(&self, location: Option<&Path>) -> PathBuf {
        match location {
            Some(l) => l.join(format!("strata-{}", self.store_tag)),
            None => self.dir.clone(),
        }
    }

    /// Every place this store may have put templates, files and dirs.
    fn places(&self) -> Vec<PathBuf> {
        let mut out = vec![self.dir.clone()];
        out.extend(self.policy.allowed_locations.iter().map(|l| self.place(Some(l))));
        out
    }

    /// The mechanism for each place, for `strata version`.
    pub fn plans(&self) -> Vec<(PathBuf, Result<Plan, SnapshotError>)> {
        self.places()
            .into_iter()
            .map(|p| {
                let plan = strata_scratch::detect(&p).map_err(|e| SnapshotError::Scratch(e.into()));
                (p, plan)
            })
            .collect()
    }

    /// Every scratch file in this store's places.
    pub fn files(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        for place in self.places() {
            out.extend(list_files(&place.join("files"))?);
        }
        Ok(out)
    }

    /// Every quota-limited scratch dir in this store's places.
    pub fn limited_dirs(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let mut out = Vec::new();
        for place in self.places() {
            out.extend(list_files(&place.join(DIRS))?);
        }
        Ok(out)
    }

    /// True for a path inside one of this store's scratch file dirs.
    pub fn is_ours(&self, path: &Path) -> bool {
        self.places().iter().any(|p| path.starts_with(p.join("files")))
    }

    /// The mechanism for a new scratch in `place`; a change from the last
    /// one seen there is logged at info, with the reason for a fallback.
    fn plan(&self, place: &Path) -> Result<Plan, SnapshotError> {
        let plan = strata_scratch::detect(place).map_err(|e| SnapshotError::Scratch(e.into()))?;
        let mut seen = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(place) != Some(&plan) {
            tracing::info!(place = %place.display(), "sized scratch here: {plan}");
            seen.insert(place.to_owned(), plan.clone());
        }
        Ok(plan)
    }

    /// A new scratch of `bytes` for snapshot `id`, with its upper and
    /// work dirs: quota-limited where the place's filesystem allows it,
    /// else a loop-mounted clone of a template.
    pub fn create(
        &self,
        id: u64,
        bytes: u64,
        location: Option<&Path>,
        undo: &mut Undo,
    ) -> Result<ScratchUse, SnapshotError> {
        let place = self.place(location);
        let plan = self.plan(&place)?;
        let scratch = match plan.mechanism {
            Mechanism::Loop => self.create_loop(id, bytes, &place, undo)?,
            Mechanism::BtrfsQgroup | Mechanism::ProjectQuota => {
                self.create_limited(id, bytes, &place, plan.mechanism, undo)?
            }
        };
        tracing::info!(fs = id, bytes, mechanism = %scratch.mechanism(), "created sized scratch");
        self.join(id, &scratch, undo)?;
        Ok(scratch)
    }

    /// A btrfs subvolume or project dir at `<place>/dirs/<id>`, its entry a
    /// symlink to it.
    fn create_limited(
        &self,
        id: u64,
        bytes: u64,
        place: &Path,
        mechanism: Mechanism,
        undo: &mut Undo,
    ) -> Result<ScratchUse, SnapshotError> {
        let dirs = place.join(DIRS);
        let entries = self.dir.join(MOUNTS);
        mkdirs(&[&dirs, &entries])?;
        let dir = dirs.join(id.to_string());
        let backing = if mechanism == Mechanism::BtrfsQgroup {
            let qgroup = limit::create_subvolume(&dir, bytes).map_err(|e| SnapshotError::Scratch(e.into()))?;
            Backing::Subvolume { dir, qgroup }
        } else {
            let candidates = strata_scratch::mechanism::project_candidates(self.project_seed, id);
            let project = limit::create_project_dir(&Kernel, &dir, candidates, bytes)
                .map_err(|e| SnapshotError::Scratch(e.into()))?;
            Backing::Project { dir, id: project }
        };
        undo.0.push(Step::DropLimited(backing.clone()));
        fail("prepare.after_limit")?;
        let scratch = ScratchUse { fs: id, backing };
        let entry = self.mount_point(id);
        let target = scratch.limited_dir().expect("limited");
        std::os::unix::fs::symlink(target, &entry).map_err(|e| SnapshotError::io("link", &entry, e))?;
        undo.0.push(Step::RemoveFile(entry));
        Ok(scratch)
    }

    /// A new filesystem of `bytes`: template (formatted at most once),
    /// clone, mount.
    fn create_loop(&self, id: u64, bytes: u64, place: &Path, undo: &mut Undo) -> Result<ScratchUse, SnapshotError> {
        let fs_kind = self.policy.fs;
        let (template, formatted) = strata_scratch::ensure_template(&place.join("templates"), bytes, fs_kind)?;
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
        let mount = self.mount_point(id);
        undo.dir(mount.clone());
        strata_scratch::mount_file(&file, &mount, fs_kind)?;
        undo.0.push(Step::Unmount(mount));
        fail("prepare.after_mount")?;
        Ok(ScratchUse {
            fs: id,
            backing: Backing::Loop {
                file,
                template,
                kind: fs_kind,
            },
        })
    }

    /// Upper and work dirs for snapshot `id` in an existing scratch.
    pub fn join(&self, id: u64, scratch: &ScratchUse, undo: &mut Undo) -> Result<(), SnapshotError> {
        let (upper, work) = self.upper_of(scratch, id);
        undo.dir(upper.parent().expect("per-snapshot dir").to_owned());
        mkdirs(&[&upper, &work])?;
        std::fs::set_permissions(&upper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| SnapshotError::io("chmod", &upper, e))
    }

    /// Bytes and inodes the whole scratch `s` holds, where its mechanism
    /// answers without a walk (loop: statvfs; project: the quota).
    pub fn used(&self, s: &ScratchUse) -> Result<Option<(u64, u64)>, SnapshotError> {
        Ok(match &s.backing {
            Backing::Loop { .. } => Some(strata_scratch::fs_used(&self.mount_point(s.fs))?),
            Backing::Project { dir, id } => {
                Some(limit::project_used(dir, *id).map_err(|e| SnapshotError::Scratch(e.into()))?)
            }
            // qgroups count bytes, not inodes.
            Backing::Subvolume { .. } => None,
        })
    }

    /// Drops snapshot `id`'s dirs from its scratch; with `last`, the
    /// scratch goes too: a loop scratch's mount (which frees the loop
    /// device) and file, a subvolume, or a project dir and its limit.
    pub fn release(&self, id: u64, scratch: &ScratchUse, last: bool) {
        if !(last && scratch.limited_dir().is_some()) {
            let (upper, _) = self.upper_of(scratch, id);
            let own = upper.parent().expect("per-snapshot dir");
            if let Err(e) = std::fs::remove_dir_all(own) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {e}; cleanup retries", own.display());
                }
            }
        }
        if last {
            match &scratch.backing {
                Backing::Loop { file, .. } => self.drop_fs(scratch.fs, Some(file)),
                _ => self.drop_limited(scratch),
            }
        }
    }

    fn drop_limited(&self, s: &ScratchUse) {
        let dropped = match &s.backing {
            Backing::Subvolume { dir, qgroup } => limit::remove_subvolume(dir, *qgroup),
            Backing::Project { dir, id } => limit::remove_project_dir(&Kernel, dir, Some(*id)),
            Backing::Loop { .. } => return,
        };
        if let Err(e) = dropped {
            return tracing::warn!("keeping scratch {}: {e}; cleanup retries", s.fs);
        }
        let _ = std::fs::remove_file(self.mount_point(s.fs));
        tracing::debug!(fs = s.fs, mechanism = %s.mechanism(), "released scratch");
    }

    fn drop_fs(&self, fs: u64, file: Option<&Path>) {
        let mount = self.mount_point(fs);
        if strata_sys::is_mountpoint(&mount) {
            if let Err(e) = strata_scratch::unmount_file(&mount) {
                return tracing::warn!("keeping scratch {fs}: {e}; cleanup retries");
            }
        }
        if mount.is_symlink() {
            let _ = std::fs::remove_file(&mount);
        } else {
            let _ = std::fs::remove_dir(&mount);
        }
        if let Some(file) = file {
            if let Err(e) = std::fs::remove_file(file) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("removing {}: {e}", file.display());
                }
            }
        }
        tracing::debug!(fs, "released scratch filesystem");
    }

    /// Makes the disk match the DB: mounts every loop scratch in use that
    /// is not mounted, links every quota-limited one, and removes entries,
    /// dirs and files no snapshot uses. With `templates`, unused templates
    /// go too.
    pub fn reconcile(&self, in_use: &[&ScratchUse], templates: bool) -> Result<(), SnapshotError> {
        let by_fs: HashMap<u64, &ScratchUse> = in_use.iter().map(|s| (s.fs, *s)).collect();
        for s in by_fs.values() {
            let entry = self.mount_point(s.fs);
            match &s.backing {
                Backing::Loop { file, kind, .. } if !strata_sys::is_mountpoint(&entry) => {
                    tracing::info!(fs = s.fs, "mounting scratch again");
                    if let Err(e) = strata_scratch::mount_file(file, &entry, *kind) {
                        tracing::warn!(fs = s.fs, "{e}");
                    }
                }
                Backing::Loop { .. } => {}
                Backing::Subvolume { dir, .. } | Backing::Project { dir, .. } => {
                    if !entry.is_symlink() {
                        let _ = std::fs::create_dir_all(self.dir.join(MOUNTS));
                        if let Err(e) = std::os::unix::fs::symlink(dir, &entry) {
                            tracing::warn!(fs = s.fs, "linking {}: {e}", entry.display());
                        }
                    }
                }
            }
        }
        for fs in list_ids(&self.dir.join(MOUNTS))? {
            if !by_fs.contains_key(&fs) {
                self.drop_fs(fs, None);
            }
        }
        let dirs: BTreeSet<&Path> = by_fs.values().filter_map(|s| s.limited_dir()).collect();
        for dir in self.limited_dirs()? {
            if !dirs.contains(dir.as_path()) {
                tracing::info!(dir = %dir.display(), "removing unused scratch dir");
                if let Err(e) = limit::remove_unknown(&dir) {
                    tracing::warn!("{e}");
                }
            }
        }
        let files: BTreeSet<&Path> = by_fs.values().filter_map(|s| s.file()).collect();
        let used_templates: BTreeSet<&Path> = by_fs.values().filter_map(|s| s.template()).collect();
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
    fn only_mounted_or_linked_scratches_count() {
        let root = tempfile::tempdir().unwrap();
        let none: Vec<ScratchUsage> = MECHANISMS
            .iter()
            .map(|&mechanism| ScratchUsage {
                mechanism,
                filesystems: 0,
                used_bytes: 0,
            })
            .collect();
        assert_eq!(scratch_usage(root.path()).unwrap(), none, "no scratch dir yet");
        // A mount point whose filesystem went away (say, a reboot) is a
        // plain directory of the store's filesystem: none of its bytes count.
        let left = scratch_dir(root.path()).join(MOUNTS).join("7");
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("f"), vec![1u8; 1 << 20]).unwrap();
        // Nor does a link to a dir with no quota.
        let plain = root.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        std::os::unix::fs::symlink(&plain, scratch_dir(root.path()).join(MOUNTS).join("8")).unwrap();
        assert_eq!(scratch_usage(root.path()).unwrap(), none);
    }
}

//! Shared by the snapshotter's integration tests: mounting what Mounts
//! returns, as containerd's mount.All would, and unmounting on drop.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use strata_snapshotter::Mount;
use strata_sys::{mount_fs, unmount, FsOption, MountFlags};

/// Mounts what Mounts returned, the way containerd's mount.All would.
pub fn mount(mounts: &[Mount], target: &Path) {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    std::fs::create_dir_all(target).unwrap();
    if m.kind == "bind" {
        let ro = m.options.iter().any(|o| o == "ro");
        let status = std::process::Command::new("mount")
            .args(["--bind", &m.source])
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success());
        if ro {
            let status = std::process::Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(target)
                .status()
                .unwrap();
            assert!(status.success());
        }
        return;
    }
    assert_eq!(m.kind, "overlay", "{m:?}");
    let mut options = Vec::new();
    let mut flags = MountFlags::default();
    for o in &m.options {
        match o.split_once('=') {
            Some((k, v)) => options.push(FsOption::String(k.into(), v.into())),
            None if o == "ro" => flags.read_only = true,
            None => options.push(FsOption::Flag(o.clone())),
        }
    }
    mount_fs("overlay", &options, flags, target).unwrap_or_else(|e| panic!("{m:?}: {e}"));
}

pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = unmount(&self.0, false);
    }
}

pub fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

/// Sized scratches up to 64 GiB, ext4, no location allowed.
pub fn policy() -> strata_snapshotter::ScratchPolicy {
    strata_snapshotter::ScratchPolicy {
        max_bytes: 64 << 30,
        allowed_locations: Vec::new(),
        fs: strata_snapshotter::FsKind::Ext4,
        default_bytes: None,
        namespace_default_bytes: Default::default(),
    }
}

/// A temp dir that unmounts whatever the store left mounted under it (the
/// images it shares between mounts) before it is removed.
pub struct TestDir(tempfile::TempDir);

pub fn tempdir() -> TestDir {
    TestDir(tempfile::tempdir().unwrap())
}

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        for m in strata_sys::mounts_under(self.0.path()) {
            let _ = unmount(&m, true);
        }
    }
}

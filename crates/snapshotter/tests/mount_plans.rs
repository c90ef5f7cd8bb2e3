//! What the snapshotter asks of the mount seam and hands to containerd,
//! checked through a recording [`Mounter`] instead of the kernel: each rung
//! of the kernel ladder gives its own image mount and overlay options.
//! Commit and Prepare need no mounts, so this runs without root.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::none;
use strata_mount::{ErofsSource, Ladder, LowerMode, Mounter};
use strata_snapshotter::Snapshotter;
use strata_store::Store;
use strata_sys::{FsOption, MountError, MountFlags};

/// Records every call; nothing is mounted.
struct Recorder {
    ladder: Ladder,
    calls: Mutex<Vec<String>>,
    mounted: Mutex<Vec<PathBuf>>,
}

impl Mounter for Recorder {
    fn ladder(&self) -> Ladder {
        self.ladder
    }
    fn mount(&self, fstype: &str, options: &[FsOption], flags: MountFlags, target: &Path) -> Result<(), MountError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{fstype} ro={} {options:?}", flags.read_only));
        self.mounted.lock().unwrap().push(target.to_owned());
        Ok(())
    }
    fn mount_through_loop(&self, fstype: &str, file: &Path, target: &Path) -> Result<(), MountError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{fstype} through a loop device: {}", file.display()));
        self.mounted.lock().unwrap().push(target.to_owned());
        Ok(())
    }
    fn unmount(&self, target: &Path) -> Result<(), MountError> {
        self.mounted.lock().unwrap().retain(|m| m != target);
        Ok(())
    }
    fn is_mountpoint(&self, path: &Path) -> bool {
        self.mounted.lock().unwrap().iter().any(|m| m == path)
    }
    fn overlay_users(&self, _: &Path) -> usize {
        0
    }
    fn writes_into(&self, _: &Path) -> bool {
        false
    }
}

/// A committed one-file layer, then an active snapshot over it: its Mounts
/// on the given rungs, and what the recorder saw.
fn mounts_on(ladder: Ladder) -> (Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder {
        ladder,
        calls: Mutex::default(),
        mounted: Mutex::default(),
    });
    let store = Store::open(&dir.path().join("store")).unwrap();
    let sn = Snapshotter::open_with_mounter(store, common::policy(), recorder.clone()).unwrap();
    let base = sn.prepare("a", "", none()).unwrap();
    assert_eq!(base[0].kind, "bind", "a snapshot without a parent is a plain directory");
    std::fs::write(Path::new(&base[0].source).join("file"), vec![7u8; 8192]).unwrap();
    sn.commit("layer", "a", none()).unwrap();
    let mounts = sn.prepare("b", "layer", none()).unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].kind, "overlay");
    let calls = recorder.calls.lock().unwrap().clone();
    (calls, mounts[0].options.clone())
}

#[test]
fn each_rung_mounts_the_image_and_names_the_lowers_its_way() {
    let (calls, options) = mounts_on(Ladder::default());
    assert_eq!(calls.len(), 1, "one image mount: {calls:?}");
    assert!(
        calls[0].starts_with("erofs ro=true") && calls[0].contains(".erofs"),
        "{calls:?}"
    );
    let lower = options.iter().find(|o| o.starts_with("lowerdir+=")).expect("lowerdir+");
    assert!(lower.contains("/mnt/"), "{options:?}");
    assert!(
        options
            .iter()
            .any(|o| o.starts_with("datadir+=") && o.ends_with("/objects")),
        "{options:?}"
    );
    assert!(options.iter().any(|o| o.starts_with("upperdir=")), "{options:?}");

    let (calls, options) = mounts_on(Ladder {
        erofs: ErofsSource::Loop,
        lowers: LowerMode::DoubleColon,
        ..Ladder::default()
    });
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].starts_with("erofs through a loop device: "), "{calls:?}");
    let lower = options.iter().find(|o| o.starts_with("lowerdir=")).expect("lowerdir");
    assert!(lower.contains("::") && lower.ends_with("/objects"), "{options:?}");
    assert!(!options.iter().any(|o| o.starts_with("datadir+")), "{options:?}");
}

//! A store on a small, really full filesystem: the pull that does not fit
//! fails with a clear error, nothing it staged is left, earlier images still
//! mount and fsck is clean.

use std::process::Command;

use strata_tests::*;

struct LoopMount(std::path::PathBuf);

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

#[test]
fn full_disk_during_pull_is_a_clean_error() {
    let store = TestStore::new();
    let image = store.dir.path().join("small.ext4");
    let mnt = store.dir.path().join("small");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("truncate").arg("-s").arg("300M").arg(&image));
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
    run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mnt));
    let _guard = LoopMount(mnt.clone());
    let root = mnt.join("store");
    let strata = |args: &[&str]| {
        Command::new(strata_bin())
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };

    let minbase = layout_ref("minbase");
    let devel = layout_ref("devel");
    assert!(strata(&["pull", &minbase]).status.success());
    let objects_before = std::fs::read_dir(root.join("objects")).unwrap().count();

    let out = strata(&["pull", &devel]);
    assert_eq!(out.status.code(), Some(1), "devel does not fit in 300 MiB: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("filesystem holding the store is full"), "{stderr}");

    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "staging removed at once"
    );
    let fsck = strata(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
    assert!(String::from_utf8_lossy(&fsck.stdout).contains(" 0 problems"));
    assert!(String::from_utf8_lossy(&strata(&["images"]).stdout).contains(":minbase"));
    assert_eq!(std::fs::read_dir(root.join("objects")).unwrap().count(), objects_before);

    let target = store.dir.path().join("m");
    std::fs::create_dir_all(&target).unwrap();
    assert!(strata(&["mount", &minbase, target.to_str().unwrap()]).status.success());
    assert_tree_matches(&expected_tree("minbase", store.dir.path()), &target, store.dir.path());
    assert!(strata(&["umount", target.to_str().unwrap()]).status.success());
    assert!(strata(&["gc"]).status.success());
}

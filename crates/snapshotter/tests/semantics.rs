//! containerd's snapshot semantics with no gRPC, against a real store in a
//! temp dir with real mounts (root): renames and metadata-only copy-ups in
//! commits, a 128-layer chain, Update, Usage, Walk filters, error kinds and
//! restarts.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{mount, none, Mounted};
use strata_snapshotter::{ErrorKind, Info, Kind, Snapshotter};
use strata_store::Store;

fn open(dir: &Path) -> Snapshotter {
    Snapshotter::open(Store::open(&dir.join("store")).unwrap(), common::policy()).unwrap()
}

/// Prepares `key` over `parent`, lets `edit` change the mounted tree, commits.
fn layer(sn: &Snapshotter, mnt: &Path, key: &str, parent: &str, name: &str, edit: impl FnOnce(&Path)) {
    let mounts = sn.prepare(key, parent, none()).unwrap();
    {
        let _m = Mounted(mnt.to_owned());
        mount(&mounts, mnt);
        edit(mnt);
    }
    sn.commit(name, key, none()).unwrap();
}

fn kind_of<T: std::fmt::Debug>(r: Result<T, strata_snapshotter::SnapshotError>) -> ErrorKind {
    r.unwrap_err().kind()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn renames_and_metadata_copy_ups_commit_faithfully() {
    let dir = common::tempdir();
    let sn = open(dir.path());
    let mnt = dir.path().join("mnt");
    layer(&sn, &mnt, "a", "", "c1", |m| {
        std::fs::create_dir_all(m.join("d/sub")).unwrap();
        std::fs::write(m.join("d/big"), vec![1u8; 200_000]).unwrap();
        std::fs::write(m.join("d/small"), b"small").unwrap();
        std::fs::write(m.join("d/sub/deep"), vec![2u8; 5000]).unwrap();
        std::fs::write(m.join("file"), vec![3u8; 9000]).unwrap();
    });
    layer(&sn, &mnt, "b", "c1", "c2", |m| {
        // A lower dir renamed (overlay redirect), a file in it chmodded
        // (metadata-only copy-up), one deleted and one added.
        std::fs::rename(m.join("d"), m.join("e")).unwrap();
        std::fs::set_permissions(m.join("e/big"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::remove_file(m.join("e/small")).unwrap();
        std::fs::write(m.join("e/new"), b"new").unwrap();
        // A lower file renamed and another chmodded in place.
        std::fs::rename(m.join("file"), m.join("moved")).unwrap();
        std::fs::create_dir(m.join("d")).unwrap();
    });
    let mounts = sn.view("v", "c2", none()).unwrap();
    let _m = Mounted(mnt.clone());
    mount(&mounts, &mnt);
    assert_eq!(std::fs::read(mnt.join("e/big")).unwrap(), vec![1u8; 200_000]);
    let mode = std::fs::metadata(mnt.join("e/big")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read(mnt.join("e/sub/deep")).unwrap(), vec![2u8; 5000]);
    assert_eq!(std::fs::read(mnt.join("e/new")).unwrap(), b"new");
    assert!(!mnt.join("e/small").exists());
    assert_eq!(std::fs::read(mnt.join("moved")).unwrap(), vec![3u8; 9000]);
    assert!(!mnt.join("file").exists());
    let recreated: Vec<_> = std::fs::read_dir(mnt.join("d")).unwrap().collect();
    assert!(recreated.is_empty(), "the new d is empty, not the old one");
}

#[test]
fn chain_of_128_layers_mounts_as_one_lower() {
    let dir = common::tempdir();
    let sn = open(dir.path());
    let mnt = dir.path().join("mnt");
    let mut parent = String::new();
    for i in 0..128 {
        let name = format!("c{i}");
        layer(&sn, &mnt, &format!("a{i}"), &parent, &name, |m| {
            std::fs::write(m.join(format!("layer{i}")), format!("{i}").repeat(100)).unwrap();
            std::fs::write(m.join("last"), format!("{i}")).unwrap();
        });
        parent = name;
    }
    let mounts = sn.view("top", &parent, none()).unwrap();
    // One metadata lower and the objects as the data-only lower, however
    // the ladder passes them.
    let lowers: Vec<_> = mounts[0]
        .options
        .iter()
        .filter(|o| o.starts_with("lowerdir") || o.starts_with("datadir+="))
        .collect();
    let one_meta_lower = match lowers[..] {
        [only] => only.strip_prefix("lowerdir=").is_some_and(|value| {
            let layers: Vec<_> = value.split("::").collect();
            layers.len() == 2 && layers.iter().all(|layer| !layer.contains(':'))
        }),
        [meta, data] => meta.starts_with("lowerdir+=") && data.starts_with("datadir+="),
        _ => false,
    };
    assert!(one_meta_lower, "one metadata lower and the objects: {mounts:?}");
    let _m = Mounted(mnt.clone());
    mount(&mounts, &mnt);
    for i in 0..128 {
        assert_eq!(
            std::fs::read_to_string(mnt.join(format!("layer{i}"))).unwrap(),
            format!("{i}").repeat(100)
        );
    }
    assert_eq!(std::fs::read_to_string(mnt.join("last")).unwrap(), "127");
    assert_eq!(sn.walk(&["kind==committed"]).unwrap().len(), 128);
}

#[test]
fn update_usage_walk_and_error_kinds() {
    let dir = common::tempdir();
    let sn = open(dir.path());
    let mnt = dir.path().join("mnt");

    // Usage of an active snapshot is measured now: 3 files and the root.
    let mounts = sn.prepare("a", "", labels(&[("team", "x")])).unwrap();
    {
        let _m = Mounted(mnt.clone());
        mount(&mounts, &mnt);
        for n in 0..3 {
            std::fs::write(mnt.join(format!("f{n}")), vec![0u8; 64 * 1024]).unwrap();
        }
    }
    let usage = sn.usage("a").unwrap();
    assert_eq!(usage.inodes, 4, "{usage:?}");
    assert!(usage.size >= 3 * 64 * 1024, "{usage:?}");
    sn.commit("c", "a", labels(&[("team", "x"), ("tier", "base")])).unwrap();
    assert_eq!(sn.usage("c").unwrap(), usage, "a commit keeps the measured usage");

    // Update: labels by field path; the parent and kind are immutable.
    let before = sn.stat("c").unwrap();
    assert_eq!(sn.stat("c").unwrap(), before, "timestamps round-trip exactly");
    let mut change = before.clone();
    change.labels = labels(&[("team", "y"), ("new", "1")]);
    let after = sn.update(&change, &["labels.team".into()]).unwrap();
    assert_eq!(after.labels, labels(&[("team", "y"), ("tier", "base")]));
    assert_eq!(after.created, before.created);
    assert!(after.updated > before.updated);
    let after = sn.update(&change, &[]).unwrap();
    assert_eq!(after.labels, change.labels, "no field paths: all labels");
    let reparent = Info {
        parent: "elsewhere".into(),
        ..after.clone()
    };
    assert_eq!(
        kind_of(sn.update(&reparent, &["parent".into()])),
        ErrorKind::InvalidArgument
    );
    assert_eq!(sn.stat("c").unwrap(), after, "a refused update changes nothing");

    // Walk filters: AND within a string, OR across strings.
    sn.view("v", "c", labels(&[("team", "y")])).unwrap();
    sn.prepare("b", "c", none()).unwrap();
    let names = |filters: &[&str]| -> Vec<String> {
        let mut n: Vec<_> = sn.walk(filters).unwrap().into_iter().map(|i| i.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(&[]), ["b", "c", "v"]);
    assert_eq!(names(&["kind==committed"]), ["c"]);
    assert_eq!(names(&["parent==c"]), ["b", "v"]);
    assert_eq!(names(&["parent==c,labels.team==y"]), ["v"]);
    assert_eq!(names(&["labels.team"]), ["c", "v"]);
    assert_eq!(names(&["kind==view", "kind==active"]), ["b", "v"]);
    assert_eq!(names(&["name!=c,kind!=view"]), ["b"]);
    assert_eq!(kind_of(sn.walk(&["==committed"])), ErrorKind::InvalidArgument);

    // Error kinds containerd maps back.
    assert_eq!(kind_of(sn.prepare("b", "c", none())), ErrorKind::AlreadyExists);
    assert_eq!(kind_of(sn.prepare("x", "missing", none())), ErrorKind::NotFound);
    assert_eq!(kind_of(sn.prepare("x", "b", none())), ErrorKind::InvalidArgument);
    assert_eq!(kind_of(sn.commit("c2", "v", none())), ErrorKind::FailedPrecondition);
    assert_eq!(kind_of(sn.commit("c", "b", none())), ErrorKind::AlreadyExists);
    assert_eq!(kind_of(sn.mounts("c")), ErrorKind::FailedPrecondition);
    assert_eq!(kind_of(sn.remove("c")), ErrorKind::FailedPrecondition);
    assert_eq!(kind_of(sn.remove("missing")), ErrorKind::NotFound);
    assert_eq!(kind_of(sn.stat("missing")), ErrorKind::NotFound);
    assert_eq!(kind_of(sn.usage("missing")), ErrorKind::NotFound);
    assert!(sn.stat("x").is_err(), "failed prepares leave no snapshot");
    assert_eq!(sn.view("empty", "", none()).unwrap()[0].kind, "bind");
}

#[test]
fn state_survives_restart_and_one_snapshotter_owns_a_store() {
    let dir = common::tempdir();
    let mnt = dir.path().join("mnt");
    let sn = open(dir.path());
    layer(&sn, &mnt, "a", "", "c", |m| {
        std::fs::write(m.join("base"), vec![5u8; 4096]).unwrap()
    });
    let mounts = sn.prepare("work", "c", labels(&[("k", "v")])).unwrap();
    {
        let _m = Mounted(mnt.clone());
        mount(&mounts, &mnt);
        std::fs::write(mnt.join("scratch"), b"kept").unwrap();
    }
    let before = sn.walk::<&str>(&[]).unwrap();
    let second = Snapshotter::open(Store::open(&dir.path().join("store")).unwrap(), common::policy());
    assert!(second.is_err(), "a second snapshotter on the same store is refused");
    drop(sn);

    // The parent's EROFS mount is gone (as after a reboot); open restores it.
    let erofs_mounts = || strata_sys::mounts_under(&dir.path().join("store/mnt"));
    for m in erofs_mounts() {
        strata_sys::unmount(&m, false).unwrap();
    }
    assert!(erofs_mounts().is_empty());
    let sn = open(dir.path());
    assert_eq!(erofs_mounts().len(), 1, "the parent image is mounted again on open");
    assert_eq!(
        sn.walk::<&str>(&[]).unwrap(),
        before,
        "snapshots, labels and times as before"
    );
    assert_eq!(sn.stat("work").unwrap().kind, Kind::Active);
    let mounts = sn.mounts("work").unwrap();
    let _m = Mounted(mnt.clone());
    mount(&mounts, &mnt);
    assert_eq!(std::fs::read(mnt.join("scratch")).unwrap(), b"kept");
    assert_eq!(std::fs::read(mnt.join("base")).unwrap(), vec![5u8; 4096]);
}

/// Writes a layer the way containerd's applier does: each file written,
/// closed, then chowned, chmodded and given its mtime; one file written
/// twice (same size, new bytes), one still growing when its first close
/// was seen, a hard link and a file replaced by a symlink.
fn unpack_like_containerd(m: &Path) {
    let stamp = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    for (i, name) in (0u8..).zip(["a", "d/b", "d/e/f/c", "d/e/f/g/h"]) {
        let path = m.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![i + 1; 3000 + usize::from(i) * 40_000]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
    }
    // An unpack takes seconds: these pauses give the background hashing
    // the time it would have had (without them Commit hashes most files),
    // so the rewrites below land after the first digests were taken.
    let pause = || std::thread::sleep(std::time::Duration::from_millis(300));
    pause();
    std::fs::write(m.join("a"), vec![0xee; 3000]).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/b"))
        .unwrap()
        .write_all(&[9; 700])
        .unwrap();
    std::fs::hard_link(m.join("d/e/f/c"), m.join("link")).unwrap();
    std::fs::write(m.join("gone"), vec![5u8; 8000]).unwrap();
    std::fs::remove_file(m.join("gone")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", m.join("gone")).unwrap();
    pause();
}

#[test]
fn unpack_snapshots_hashed_while_written_name_objects_by_their_bytes() {
    let dir = common::tempdir();
    let sn = open(dir.path());
    let mnt = dir.path().join("mnt");
    layer(
        &sn,
        &mnt,
        &format!("default/1/extract-1-AAAA sha256:{}", "1".repeat(64)),
        "",
        "parent",
        unpack_like_containerd,
    );
    let key = format!("default/2/extract-2-AAAA sha256:{}", "2".repeat(64));
    layer(&sn, &mnt, &key, "parent", "child", |m| {
        std::fs::write(m.join("d/b"), vec![0x42; 50_000]).unwrap();
        std::fs::write(m.join("d/e/new"), vec![0x43; 60_000]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
    });
    // Every object holds the bytes its name (the digest taken while the
    // file was written) says: a stale digest would show here.
    let report = sn.store().fsck(false).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.objects_checked >= 6, "{report:?}");
    let mounts = sn.view("v", "child", none()).unwrap();
    let _m = Mounted(mnt.clone());
    mount(&mounts, &mnt);
    assert_eq!(std::fs::read(mnt.join("d/b")).unwrap(), vec![0x42; 50_000]);
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), vec![0xee; 3000]);
}

#[test]
fn cleanup_sweeps_objects_only_after_something_was_released() {
    let dir = common::tempdir();
    let sn = open(dir.path());
    let mnt = dir.path().join("mnt");
    let objects = dir.path().join("store/objects");
    let orphan = |byte: u8| {
        let data = vec![byte; 4096];
        let path = objects.join(strata_tree::Digest::of(&data).object_path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        path
    };
    layer(&sn, &mnt, "a", "", "c1", |m| {
        std::fs::write(m.join("f"), vec![1u8; 9000]).unwrap()
    });
    let first = orphan(7);
    sn.cleanup().unwrap();
    assert!(!first.exists(), "the first cleanup sweeps");
    // A container's snapshot comes and goes: nothing is released.
    sn.prepare("container", "c1", none()).unwrap();
    sn.remove("container").unwrap();
    let second = orphan(8);
    sn.cleanup().unwrap();
    assert!(second.exists(), "nothing was released: no sweep");
    // A failed commit may leave orphans: the next cleanup sweeps.
    assert!(sn.commit("c1", "a-missing", none()).is_err());
    sn.cleanup().unwrap();
    assert!(!second.exists(), "a failed commit makes the next cleanup sweep");
    let third = orphan(9);
    sn.cleanup().unwrap();
    assert!(third.exists());
    // Removing a committed snapshot releases its root.
    sn.remove("c1").unwrap();
    sn.cleanup().unwrap();
    assert!(!third.exists(), "a released root makes cleanup sweep");
    assert!(sn.store().tmp_has_garbage().is_ok());
}

/// fsck names the snapshots that use a damaged image by their containerd
/// keys: every gc root of a committed snapshot maps back to its key.
#[test]
fn keys_by_root_names_each_committed_snapshot() {
    let dir = common::tempdir();
    let sn = open(dir.path());
    let mnt = dir.path().join("mnt");
    layer(&sn, &mnt, "default/1/a", "", "default/2/layer", |m| {
        std::fs::write(m.join("f"), vec![7u8; 9000]).unwrap();
    });
    let store = Store::open(&dir.path().join("store")).unwrap();
    let keys = strata_snapshotter::keys_by_root(&store).unwrap();
    let roots = store.roots().unwrap();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(keys.get(&roots[0]).map(String::as_str), Some("default/2/layer"));
}

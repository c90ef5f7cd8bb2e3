//! Every fail point, aborting the process there as kill -9 would, during a
//! real pull, gc, Prepare, Commit or Remove. After each: a restart, fsck
//! clean, everything committed before still intact and mountable, and the
//! interrupted operation retried to success. Prints the fail-point table.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use strata_tests::serve::{labels, mount_all, unmount_under, Client, Serve};
use strata_tests::*;

fn strata_with(store: &TestStore, failpoint: &str, args: &[&str]) -> std::process::ExitStatus {
    Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .arg("--config")
        .arg(store.dir.path().join("config.toml"))
        .args(args)
        .env("STRATA_FAILPOINTS", format!("{failpoint}=abort"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
}

fn assert_killed(point: &str, status: std::process::ExitStatus) {
    assert_eq!(
        status.signal(),
        Some(9),
        "{point}: the process should die by SIGKILL: {status}"
    );
}

/// `minbase` still mounts and reads as the oracle says.
fn minbase_intact(store: &TestStore, expected: &Path) {
    let mnt = store.mount(&layout_ref("minbase"));
    assert_tree_matches(expected, &mnt, store.dir.path());
    store.umount(&mnt);
}

#[test]
fn pull_and_gc_fail_points_recover() {
    let expected_dir = tempfile::tempdir().unwrap();
    let expected = expected_tree("minbase", expected_dir.path());
    let mut table = Vec::new();
    for point in ["pull.after_stage", "pull.after_publish", "pull.before_db"] {
        let store = TestStore::new();
        store.ok(&["pull", &layout_ref("minbase")]);
        assert_killed(point, strata_with(&store, point, &["pull", &layout_ref("python")]));
        store.fsck_clean();
        minbase_intact(&store, &expected);
        store.ok(&["pull", &layout_ref("python")]);
        store.fsck_clean();
        let images = store.ok(&["images"]);
        assert!(images.contains("python"), "{point}: {images}");
        table.push(format!("{point:<24} recovered=yes retried=yes"));
    }
    for point in ["gc.after_images", "gc.before_objects"] {
        let store = TestStore::new();
        store.ok(&["pull", &layout_ref("minbase")]);
        store.ok(&["pull", &layout_ref("python")]);
        store.ok(&["rmi", &layout_ref("python")]);
        let before = store.objects().len();
        assert_killed(point, strata_with(&store, point, &["gc"]));
        store.fsck_clean();
        minbase_intact(&store, &expected);
        store.ok(&["gc"]);
        assert!(
            store.objects().len() < before,
            "{point}: the retried gc frees python's objects"
        );
        store.fsck_clean();
        table.push(format!("{point:<24} recovered=yes retried=yes"));
    }
    eprintln!("fail point table (pull, gc):\n{}", table.join("\n"));
}

struct Node {
    store: TestStore,
}

impl Node {
    fn serve(&self, failpoint: Option<&str>) -> Serve {
        let spec = failpoint.map(|p| format!("{p}=abort"));
        let env: Vec<(&str, &str)> = spec.iter().map(|s| ("STRATA_FAILPOINTS", s.as_str())).collect();
        Serve::start(&self.store.root(), &self.store.dir.path().join("s.sock"), None, &env)
    }

    fn fsck_clean(&self) {
        self.store.fsck_clean();
    }
}

/// Writes `files` into a prepared snapshot's mount.
fn write_into(c: &mut Client, key: &str, parent: &str, dir: &Path, files: &[(&str, &[u8])]) {
    let mounts = c.prepare(key, parent, labels(&[])).unwrap();
    mount_all(&mounts, dir);
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    unmount_under(dir);
}

/// A view of `name` shows `files`.
fn view_shows(c: &mut Client, name: &str, dir: &Path, files: &[(&str, &[u8])]) {
    let key = format!("check-{name}-{}", std::process::id());
    let mounts = c.prepare(&key, name, labels(&[])).unwrap();
    mount_all(&mounts, dir);
    for (file, data) in files {
        assert_eq!(std::fs::read(dir.join(file)).unwrap(), *data, "{name}/{file}");
    }
    unmount_under(dir);
    c.remove(&key).unwrap();
}

#[test]
fn snapshot_fail_points_recover() {
    let base: &[(&str, &[u8])] = &[("base", &[7u8; 70_000]), ("small", b"s")];
    let layer: &[(&str, &[u8])] = &[("new", &[9u8; 50_000])];
    let points = [
        "prepare.after_mkdir",
        "prepare.before_db",
        "commit.after_publish",
        "commit.before_db",
        "commit.after_db",
        "remove.before_db",
        "remove.after_db",
    ];
    let mut table = Vec::new();
    for point in points {
        let node = Node {
            store: TestStore::new(),
        };
        let dir = node.store.dir.path().join("mnt");
        {
            let serve = node.serve(None);
            let mut c = serve.client();
            write_into(&mut c, "ns/1/a", "", &dir, base);
            c.commit("ns/2/base", "ns/1/a").unwrap();
            drop(c);
            serve.stop();
        }
        // The operation under test, aborted at `point`.
        let serve = node.serve(Some(point));
        let mut c = serve.client();
        let outcome = if point.starts_with("remove") {
            c.prepare("ns/3/doomed", "ns/2/base", labels(&[])).unwrap();
            c.remove("ns/3/doomed")
        } else if point.starts_with("prepare") {
            c.prepare("ns/3/b", "ns/2/base", labels(&[])).map(drop)
        } else {
            write_into(&mut c, "ns/3/b", "ns/2/base", &dir, layer);
            c.commit("ns/4/top", "ns/3/b")
        };
        assert!(outcome.is_err(), "{point}: the server died mid-call");
        drop(c);
        drop(serve);

        // Restart: the store is consistent and the base is intact.
        let serve = node.serve(None);
        let mut c = serve.client();
        node.fsck_clean();
        view_shows(&mut c, "ns/2/base", &dir, base);
        // Retry to success.
        if point.starts_with("remove") {
            match c.remove("ns/3/doomed") {
                Ok(()) => {}
                Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "{point}: {e:?}"),
            }
        } else {
            let names: Vec<String> = c.list().into_iter().map(|i| i.name).collect();
            if !names.iter().any(|n| n == "ns/4/top") {
                // The interrupted commit left the active snapshot whole:
                // commit it again as it is, without rewriting its files.
                if !names.iter().any(|n| n == "ns/3/b") {
                    write_into(&mut c, "ns/3/b", "ns/2/base", &dir, layer);
                }
                c.commit("ns/4/top", "ns/3/b").unwrap();
            }
            view_shows(&mut c, "ns/4/top", &dir, layer);
            view_shows(&mut c, "ns/4/top", &dir, base);
        }
        c.cleanup().unwrap();
        node.fsck_clean();
        drop(c);
        serve.stop();
        table.push(format!("{point:<24} recovered=yes retried=yes"));
    }
    eprintln!("fail point table (snapshots):\n{}", table.join("\n"));
}

#[test]
fn scratch_fail_points_recover() {
    const SIZE: &str = "containerd.io/snapshot/strata.rootfs.size-gb";
    let mut table = Vec::new();
    for point in [
        "prepare.after_mkdir",
        "prepare.after_template",
        "prepare.after_clone",
        "prepare.after_mount",
        "prepare.before_db",
    ] {
        let node = Node {
            store: TestStore::new(),
        };
        let serve = node.serve(Some(point));
        let mut c = serve.client();
        assert!(c.prepare("ns/1/c", "", labels(&[(SIZE, "1")])).is_err(), "{point}");
        drop(c);
        drop(serve);
        let serve = node.serve(None);
        node.fsck_clean();
        let mut c = serve.client();
        let mounts = c.prepare("ns/1/c", "", labels(&[(SIZE, "1")])).unwrap();
        let dir = node.store.dir.path().join("mnt");
        mount_all(&mounts, &dir);
        std::fs::write(dir.join("f"), b"after the crash").unwrap();
        unmount_under(&dir);
        c.remove("ns/1/c").unwrap();
        node.fsck_clean();
        drop(c);
        serve.stop();
        table.push(format!("{point:<24} (sized) recovered=yes retried=yes"));
    }
    eprintln!("fail point table (scratch):\n{}", table.join("\n"));
}

/// Past its commit point a Commit cannot fail: when the upper dir's new
/// files cannot move into the store, the commit still succeeds, the files
/// stay journaled where they are, and the next change moves them.
#[test]
fn a_commit_whose_files_cannot_move_succeeds_and_the_next_change_moves_them() {
    commit_whose_files_cannot_move("ns/1/a");
}

/// The same for an unpack, whose moves run after Commit's reply.
#[test]
fn an_unpack_whose_files_cannot_move_after_the_reply_is_moved_by_the_next_change() {
    commit_whose_files_cannot_move(&format!("ns/1/extract-1-aaaa sha256:{}", "e".repeat(64)));
}

fn commit_whose_files_cannot_move(key: &str) {
    let node = Node {
        store: TestStore::new(),
    };
    let dir = node.store.dir.path().join("mnt");
    let files: &[(&str, &[u8])] = &[("big", &[5u8; 80_000]), ("other", &[6u8; 9_000])];
    let serve = Serve::start(
        &node.store.root(),
        &node.store.dir.path().join("s.sock"),
        None,
        &[("STRATA_FAILPOINTS", "commit.before_adopt=error")],
    );
    let mut c = serve.client();
    write_into(&mut c, key, "", &dir, files);
    c.commit("ns/2/base", key).unwrap();
    let missing = node.store.objects().len();
    // The next change (this view's Prepare) moves them first.
    view_shows(&mut c, "ns/2/base", &dir, files);
    assert!(
        node.store.objects().len() >= missing + 2,
        "the retried move adds both objects: {missing} before, {} after",
        node.store.objects().len()
    );
    c.cleanup().unwrap();
    drop(c);
    serve.stop();
    node.fsck_clean();
}

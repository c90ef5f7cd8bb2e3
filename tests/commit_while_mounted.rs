//! A snapshot committed while it is still mounted: a writer that kept a
//! file open, or went on through the mount, could reach its upper dir's
//! inodes after the Commit. Such a snapshot's files are copied into the
//! store, not moved, so whatever the writer does next never changes an
//! object that other images share.

use std::io::Write;
use std::path::Path;

use strata_tests::serve::{labels, mount_all, unmount_under, Client};
use strata_tests::*;

fn reads(c: &mut Client, name: &str, dir: &Path, file: &str) -> Vec<u8> {
    let key = format!("check-{name}");
    let mounts = c.prepare(&key, name, labels(&[])).unwrap();
    mount_all(&mounts, dir);
    let data = std::fs::read(dir.join(file)).unwrap();
    unmount_under(dir);
    c.remove(&key).unwrap();
    data
}

#[test]
fn a_writer_after_the_commit_never_changes_an_object() {
    // Without a parent the mount is a bind of the upper dir; over one, an
    // overlay.
    for over_a_parent in [false, true] {
        let store = TestStore::new();
        let serve = strata_tests::serve::Serve::start(&store.root(), &store.dir.path().join("s.sock"), None, &[]);
        let mut c = serve.client();
        let dir = store.dir.path().join("mnt");
        let parent = if over_a_parent {
            let mounts = c.prepare("ns/1/base", "", labels(&[])).unwrap();
            mount_all(&mounts, &dir);
            std::fs::write(dir.join("base"), [1u8; 9000]).unwrap();
            unmount_under(&dir);
            c.commit("ns/2/base", "ns/1/base").unwrap();
            "ns/2/base"
        } else {
            ""
        };
        let mounts = c.prepare("ns/1/w", parent, labels(&[])).unwrap();
        mount_all(&mounts, &dir);
        let data = vec![3u8; 50_000];
        std::fs::write(dir.join("f"), &data).unwrap();
        let mut writer = std::fs::OpenOptions::new().write(true).open(dir.join("f")).unwrap();
        c.commit("ns/2/layer", "ns/1/w").unwrap();
        // The next change waits for whatever the commit did after its reply.
        let probe = c.prepare("ns/1/probe", "ns/2/layer", labels(&[])).unwrap();
        assert!(!probe.is_empty());
        c.remove("ns/1/probe").unwrap();
        writer.write_all(&[4u8; 100]).unwrap();
        writer.sync_all().unwrap();
        drop(writer);
        std::fs::write(dir.join("g"), [5u8; 7000]).unwrap_or_default();
        unmount_under(&dir);

        let what = if over_a_parent { "overlay" } else { "bind mount" };
        let read = reads(&mut c, "ns/2/layer", &dir, "f");
        let changed = read.iter().zip(&data).filter(|(a, b)| a != b).count();
        assert!(
            read.len() == data.len() && changed == 0,
            "{what}: the committed file has {} bytes, {changed} of them changed after the commit",
            read.len()
        );
        drop(c);
        serve.stop();
        store.fsck_clean();
    }
}

//! Snapshot semantics against a real store with real mounts (root): a
//! chain of commits through overlay, a view, removal rules and error kinds.

mod common;

use common::{mount, none, Mounted};
use strata_snapshotter::{Kind, Snapshotter};
use strata_store::Store;

#[test]
fn chain_view_and_rules() {
    let dir = common::tempdir();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let sn = Snapshotter::open(store, common::policy()).unwrap();
    let mnt = dir.path().join("mnt");

    // Layer 1: a bind of an empty upper.
    let mounts = sn.prepare("ns/1/a", "", none()).unwrap();
    assert_eq!(mounts[0].kind, "bind");
    {
        let _m = Mounted(mnt.clone());
        mount(&mounts, &mnt);
        std::fs::create_dir_all(mnt.join("etc")).unwrap();
        std::fs::write(mnt.join("etc/big"), vec![7u8; 100_000]).unwrap();
        std::fs::write(mnt.join("etc/gone"), b"to be deleted").unwrap();
        std::fs::write(mnt.join("small"), b"tiny").unwrap();
    }
    sn.commit("ns/2/c1", "ns/1/a", none()).unwrap();
    assert_eq!(sn.stat("ns/2/c1").unwrap().kind, Kind::Committed);
    assert!(sn.stat("ns/1/a").is_err(), "the active key is gone after commit");

    // Layer 2: an overlay over c1; change, delete, add.
    let mounts = sn.prepare("ns/3/b", "ns/2/c1", none()).unwrap();
    assert_eq!(mounts[0].kind, "overlay");
    {
        let _m = Mounted(mnt.clone());
        mount(&mounts, &mnt);
        assert_eq!(std::fs::read(mnt.join("etc/big")).unwrap(), vec![7u8; 100_000]);
        std::fs::remove_file(mnt.join("etc/gone")).unwrap();
        std::fs::write(mnt.join("new"), b"added in layer 2").unwrap();
    }
    sn.commit("ns/4/c2", "ns/3/b", none()).unwrap();

    // A view of c2 shows the merged result.
    let mounts = sn.view("ns/5/v", "ns/4/c2", none()).unwrap();
    {
        let _m = Mounted(mnt.clone());
        mount(&mounts, &mnt);
        assert_eq!(std::fs::read(mnt.join("etc/big")).unwrap(), vec![7u8; 100_000]);
        assert_eq!(std::fs::read(mnt.join("small")).unwrap(), b"tiny");
        assert_eq!(std::fs::read(mnt.join("new")).unwrap(), b"added in layer 2");
        assert!(
            !mnt.join("etc/gone").exists(),
            "the deletion is a whiteout in the merge"
        );
        assert!(std::fs::write(mnt.join("x"), b"x").is_err(), "a view is read-only");
    }

    // Rules: a parent with children stays; duplicates and unknown keys fail.
    let busy = sn.remove("ns/2/c1").unwrap_err();
    assert_eq!(format!("{:?}", busy.kind()), "FailedPrecondition", "{busy}");
    let dup = sn.prepare("ns/5/v", "ns/4/c2", none()).unwrap_err();
    assert_eq!(format!("{:?}", dup.kind()), "AlreadyExists", "{dup}");
    let missing = sn.stat("ns/9/none").unwrap_err();
    assert_eq!(format!("{:?}", missing.kind()), "NotFound", "{missing}");
    assert_eq!(sn.walk::<&str>(&[]).unwrap().len(), 3);

    sn.remove("ns/5/v").unwrap();
    sn.remove("ns/4/c2").unwrap();
    sn.remove("ns/2/c1").unwrap();
    sn.cleanup().unwrap();
    let report = sn.store().fsck(false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.objects_checked, 0, "cleanup freed every object");
}

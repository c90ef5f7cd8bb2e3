//! Hostile layers: every one gets a clear error and a non-zero exit (or, for
//! the legitimate oddities, imports faithfully), nothing is written outside
//! the store, and the store stays consistent with earlier images mountable.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use strata_tests::*;

/// Case name and a fragment its error message must contain.
const REFUSED: &[(&str, &str)] = &[
    ("dotdot", "climbs out of the root"),
    ("dotdot-nested", "climbs out of the root"),
    ("absolute", "is absolute"),
    ("symlink-escape", "not a directory"),
    ("hardlink-missing", "exists in no earlier entry or layer"),
    ("hardlink-later", "exists in no earlier entry or layer"),
    ("truncated-gzip", "decompressing"),
    ("size-overflow", "overflow.bin"),
    ("digest-mismatch", "hashes to"),
    ("missing-blob", "is missing from"),
    ("bomb", "past the limit"),
    ("whiteout-root", "whiteout names no entry"),
    ("hardlink-dir", "hard link to a directory"),
    (
        "sparse-bomb",
        "a file of 268435456 bytes takes the layer past the limit of 104857600",
    ),
    (
        "longname-huge",
        "GNU long name of 1073741824 bytes is over the path limit",
    ),
    (
        "pax-huge",
        "PAX extended header of 1073741824 bytes is over the limit of 1048576",
    ),
    ("xattr-nul", "contains a NUL byte"),
    ("bad-capability", "security.capability of 2 bytes"),
    ("symlink-nul", "GNU long link target contains a NUL byte"),
    ("empty-diff-ids", "1 layers in the manifest but 0 diff_ids"),
    ("size-lie", "more bytes than the descriptor's size"),
];

const ACCEPTED: &[&str] = &[
    "overlay-xattr",
    "device",
    "deep",
    "longname",
    "sparse",
    "char-whiteout",
    "v7-dir",
    "aufs",
    "no-platform",
    "user-overlay",
];

fn case_ref(case: &str) -> String {
    format!("oci:{}:latest", hostile_dir().join(case).display())
}

/// Places a path-following importer would have written to.
fn escape_candidates(store: &TestStore) -> Vec<PathBuf> {
    let mut out = vec![
        PathBuf::from("/etc/strata-escape"),
        PathBuf::from("/tmp/strata-escape"),
        PathBuf::from("/escape"),
        std::env::current_dir().unwrap().join("../escape"),
    ];
    let mut dir = store.root();
    for _ in 0..4 {
        out.push(dir.join("escape"));
        dir = dir.parent().unwrap().to_owned();
    }
    out
}

#[test]
fn hostile_layers_are_refused_and_nothing_escapes() {
    let cases = std::fs::read_to_string(hostile_dir().join("cases.txt")).unwrap();
    let listed: Vec<&str> = cases.split_whitespace().collect();
    for (case, _) in REFUSED {
        assert!(listed.contains(case), "fixture lacks case {case}");
    }

    let store = TestStore::new();
    let minbase = layout_ref("minbase");
    store.ok(&["pull", &minbase]);
    let objects_before = store.objects();
    let images_before = store.images();

    for (case, expected) in REFUSED {
        let stderr = store.fails(&["pull", "--max-layer-bytes", "104857600", &case_ref(case)]);
        assert!(stderr.contains(expected), "{case}: expected {expected:?} in:\n{stderr}");
        assert!(stderr.lines().count() <= 3, "{case}: error should be short:\n{stderr}");
        store.fsck_clean();
        for path in escape_candidates(&store) {
            assert!(!path.exists(), "{case} created {}", path.display());
        }
        // Failed pulls publish nothing and leave no staging files behind.
        assert_eq!(store.objects(), objects_before, "{case} changed the objects");
        assert_eq!(store.images(), images_before, "{case} changed the images");
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0,
            "{case} left temp files"
        );
    }

    let mounted = store.mount(&minbase);
    assert_tree_matches(&expected_tree("minbase", store.dir.path()), &mounted, store.dir.path());
    store.umount(&mounted);
}

#[test]
fn odd_but_legitimate_layers_import_faithfully() {
    let store = TestStore::new();
    for case in ACCEPTED {
        store.ok(&["pull", &case_ref(case)]);
    }
    store.fsck_clean();

    let m = store.mount(&case_ref("device"));
    let null = std::fs::symlink_metadata(m.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), (1 << 8) | 3);
    let sda = std::fs::symlink_metadata(m.join("dev/sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), 8 << 8);

    // A smuggled trusted.overlay.redirect must not make the file read another.
    let m = store.mount(&case_ref("overlay-xattr"));
    assert_eq!(std::fs::read(m.join("victim.txt")).unwrap(), b"looks harmless\n");

    let m = store.mount(&case_ref("deep"));
    let deep: PathBuf = (0..200).map(|i| format!("d{i:03}")).collect();
    assert_eq!(
        std::fs::read(m.join(deep).join("bottom.txt")).unwrap(),
        b"200 levels down\n"
    );

    let m = store.mount(&case_ref("longname"));
    assert_eq!(std::fs::read(m.join("n".repeat(255))).unwrap(), b"255-byte name\n");

    // Sparse files read back whole, holes as zeros (PAX 1.0 and old GNU).
    let mut sparse = vec![0u8; 6000];
    for i in 0..60usize {
        sparse[(i / 10) * 1024 + i % 10] = b"abcdefghijklmnopqrstuvwxyz"[i % 26];
    }
    let m = store.mount(&case_ref("sparse"));
    assert_eq!(std::fs::read(m.join("pax10")).unwrap(), sparse);
    assert_eq!(std::fs::read(m.join("gnu")).unwrap(), sparse);
    assert!(!m.join("GNUSparseFile.0").exists());

    // A 0/0 char device is a whiteout, as on containerd's overlayfs.
    let m = store.mount(&case_ref("char-whiteout"));
    assert!(std::fs::symlink_metadata(m.join("a/victim")).is_err());
    assert_eq!(std::fs::read(m.join("a/keep")).unwrap(), b"kept\n");

    let m = store.mount(&case_ref("v7-dir"));
    assert_eq!(std::fs::read(m.join("olddir/file")).unwrap(), b"v7!\n");

    let m = store.mount(&case_ref("aufs"));
    let names: Vec<_> = std::fs::read_dir(&m).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("ok.txt")]);

    let m = store.mount(&case_ref("no-platform"));
    assert_eq!(std::fs::read(m.join("ok.txt")).unwrap(), b"no platform\n");

    let m = store.mount(&case_ref("user-overlay"));
    assert_eq!(std::fs::read(m.join("dir/file")).unwrap(), b"user overlay\n");
}

use super::*;
use strata_tree::Digest;

fn record(name: &str, erofs: &Digest) -> ImageRecord {
    ImageRecord::for_test(name, erofs)
}

/// Stages contents, writes a (fake) image referencing them and commits it.
fn add_image(store: &Store, name: &str, contents: &[&[u8]]) -> Digest {
    let mut stager = store.stager().unwrap();
    let mut refs = Vec::new();
    for c in contents {
        let staged = stager.add_bytes(c).unwrap();
        refs.push(ObjectRef {
            digest: staged.digest,
            size: staged.size,
        });
    }
    stager.publish().unwrap();
    let mut tree = strata_tree::Tree::new(strata_tree::Stat::default_dir());
    for (i, r) in refs.iter().enumerate() {
        let id = tree.push_leaf(strata_tree::Leaf {
            stat: Default::default(),
            content: strata_tree::Content::File(strata_tree::FileData::Object {
                digest: r.digest,
                size: r.size,
            }),
        });
        tree.root
            .entries
            .insert(format!("f{i}").into_bytes(), strata_tree::Node::Leaf(id));
    }
    let image = store.put_image(&strata_erofs::write_image(&tree).unwrap()).unwrap();
    refs.sort();
    refs.dedup();
    store.commit_image(&record(name, &image), &refs).unwrap();
    image
}

#[test]
fn dedup_gc_and_fsck() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    add_image(&store, "a", &[b"shared content", b"only in a"]);
    add_image(&store, "b", &[b"shared content", b"only in b", b"only in b"]);
    let count = || {
        let mut n = 0;
        crate::gc::for_each_object(&store, |_, _, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    };
    assert_eq!(count(), 3, "shared and repeated contents are stored once");
    assert!(store.fsck(false).unwrap().is_clean());

    assert!(store.remove_image("a").unwrap());
    let report = store.gc().unwrap();
    assert_eq!((report.objects_removed, report.images_removed), (1, 1));
    assert_eq!(count(), 2);
    assert!(store.has_object(&Digest::of(b"shared content")).unwrap());
    let report = store.fsck(false).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.orphan_objects, 0);
}

#[test]
fn fsck_finds_corrupt_and_missing_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    add_image(&store, "a", &[b"first", b"second"]);
    let first = store.objects_path().join(Digest::of(b"first").object_path());
    std::fs::set_permissions(&first, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&first, b"tampered").unwrap();
    std::fs::remove_file(store.objects_path().join(Digest::of(b"second").object_path())).unwrap();
    let report = store.fsck(false).unwrap();
    assert!(
        matches!(report.problems[0], FsckProblem::CorruptObject { .. }),
        "{:?}",
        report.problems
    );
    assert!(report
        .problems
        .iter()
        .any(|p| matches!(p, FsckProblem::MissingObject { digest, .. } if *digest == Digest::of(b"second"))));
    let repaired = store.fsck(true).unwrap();
    assert_eq!(repaired.repaired, 1);
    assert!(!first.exists());
}

#[test]
fn unpublished_stage_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    {
        let mut stager = store.stager().unwrap();
        stager.add_bytes(b"never published").unwrap();
        let mut writer = stager.writer().unwrap();
        writer.write(b"abandoned half way").unwrap();
    }
    assert!(!store.has_object(&Digest::of(b"never published")).unwrap());
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn version_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("version"), "99\n").unwrap();
    let err = Store::open(dir.path()).err().unwrap();
    assert!(err.to_string().contains("layout version"), "{err}");
}

/// One commit's worth of adoption, as the snapshotter does it: hash where
/// the file lies, adopt, publish, journal in a transaction, move.
fn adopt_commit(store: &Store, upper: &std::path::Path, name: &str, data: &[u8]) -> (std::path::PathBuf, Digest) {
    let (path, digest, moved) = adopt_file(store, upper, name, data);
    assert_eq!(moved, 1);
    (path, digest)
}

/// [`adopt_commit`], returning how many objects the move added.
fn adopt_file(store: &Store, upper: &std::path::Path, name: &str, data: &[u8]) -> (std::path::PathBuf, Digest, usize) {
    let (path, digest, adopted) = journal_file(store, upper, name, data);
    let moved = store.adopt_in_place(&adopted, crate::Recheck::Rehash).unwrap();
    (path, digest, moved)
}

/// Writes, hashes and stages a file, then journals its move as a commit
/// does, without making it.
fn journal_file(
    store: &Store,
    upper: &std::path::Path,
    name: &str,
    data: &[u8],
) -> (std::path::PathBuf, Digest, Vec<(std::path::PathBuf, Digest)>) {
    let path = upper.join(name);
    std::fs::write(&path, data).unwrap();
    let (digest, size) = crate::hash_file(&path).unwrap();
    let mut stager = store.stager().unwrap();
    let dir = std::fs::File::open(upper).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let source = crate::AdoptSource {
        dir: std::os::fd::AsFd::as_fd(&dir),
        dir_path: upper,
        rel: std::path::Path::new(name),
        dev: std::os::unix::fs::MetadataExt::dev(&meta),
        ino: std::os::unix::fs::MetadataExt::ino(&meta),
    };
    assert!(stager.adopt(&source, digest, size).unwrap().new);
    let adopted = stager.take_deferred();
    stager.publish().unwrap();
    let txn = store.begin().unwrap();
    txn.journal_adoptions(&adopted).unwrap();
    txn.commit().unwrap();
    (path, digest, adopted)
}

/// A kill between a move's rename and its recheck leaves an object not yet
/// made read-only, and its listed file gone: the restart hashes it again,
/// keeping it if its bytes are its name's and taking it out if not.
#[test]
fn a_move_killed_before_its_recheck_is_checked_at_the_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let upper = dir.path().join("store/upper");
    std::fs::create_dir(&upper).unwrap();
    let objects = dir.path().join("store/objects");
    let mut moved = Vec::new();
    for (name, data) in [("kept", [3u8; 5000]), ("changed", [4u8; 5000])] {
        let (path, digest, _) = journal_file(&store, &upper, name, &data);
        // The rename, and then the kill.
        let object = objects.join(digest.object_path());
        std::fs::create_dir_all(object.parent().unwrap()).unwrap();
        std::fs::rename(&path, &object).unwrap();
        moved.push(object);
    }
    std::fs::write(&moved[1], [5u8; 5000]).unwrap();
    drop(store);
    let store = Store::open(&dir.path().join("store")).unwrap();
    assert!(store.inner.db.pending().unwrap().is_empty());
    let mode = std::fs::metadata(&moved[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o444, "rechecked and made read-only");
    assert!(!moved[1].exists(), "bytes not its name's: taken out");
    assert!(store.fsck(false).unwrap().is_clean());
}

/// The stager does not search the store before it lists a file to move:
/// the move finds the object already there and leaves both alone.
#[test]
fn an_adopted_file_never_replaces_the_object_it_duplicates() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let upper = dir.path().join("store/upper");
    std::fs::create_dir(&upper).unwrap();
    let (_, digest) = adopt_commit(&store, &upper, "a", &[7u8; 5000]);
    let object = dir.path().join("store/objects").join(digest.object_path());
    let inode = std::fs::metadata(&object).unwrap().ino();

    let (copy, again, moved) = adopt_file(&store, &upper, "b", &[7u8; 5000]);
    assert_eq!((again, moved), (digest, 0));
    assert!(copy.exists(), "the duplicate stays where it was written");
    assert_eq!(
        std::fs::metadata(&object).unwrap().ino(),
        inode,
        "the object was not replaced"
    );
    drop(store);
    let store = Store::open(&dir.path().join("store")).unwrap();
    assert!(store.inner.db.pending().unwrap().is_empty());
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn adopted_moves_stay_pending_until_a_later_sync() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let upper = dir.path().join("store/upper");
    std::fs::create_dir(&upper).unwrap();
    let pending = || store.inner.db.pending().unwrap();

    let (first, d1) = adopt_commit(&store, &upper, "a", &[1u8; 5000]);
    assert!(!first.exists() && store.has_object(&d1).unwrap());
    // Moved, but no sync has followed the rename yet: still pending.
    assert_eq!(pending(), vec![(first.clone(), d1)]);

    let (second, d2) = adopt_commit(&store, &upper, "b", &[2u8; 5000]);
    // The second commit's sync made the first move durable; its transaction
    // dropped that row and added its own.
    assert_eq!(pending(), vec![(second.clone(), d2)]);

    // A restart finishes whatever is still listed: the move was done, so
    // it only forgets the row.
    drop(store);
    let store = Store::open(&dir.path().join("store")).unwrap();
    assert!(store.inner.db.pending().unwrap().is_empty());
    assert!(store.has_object(&d1).unwrap() && store.has_object(&d2).unwrap());
    assert!(store.fsck(false).unwrap().problems.is_empty());
}

/// The SHA-256 index answers only for objects that exist; gc drops the
/// rows of what it removes.
#[test]
fn sha256_index_follows_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let sha = |bytes: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(bytes).into() };
    let row = |bytes: &[u8]| {
        (
            sha(bytes),
            ObjectRef {
                digest: Digest::of(bytes),
                size: bytes.len() as u64,
            },
        )
    };
    let (kept, dropped, never) = (&b"kept content"[..], &b"dropped content"[..], &b"never stored"[..]);
    store.record_sha256(&[row(kept), row(dropped), row(never)]).unwrap();
    // Not stored yet: no answer, whatever the rows say.
    assert_eq!(store.objects_by_sha256(&[sha(kept)]).unwrap(), vec![None]);

    add_image(&store, "a", &[kept]);
    add_image(&store, "b", &[dropped]);
    let answers = store.objects_by_sha256(&[sha(kept), sha(dropped), sha(never)]).unwrap();
    assert_eq!(answers, vec![Some(row(kept).1), Some(row(dropped).1), None]);

    assert!(store.remove_image("b").unwrap());
    store.gc().unwrap();
    let answers = store.objects_by_sha256(&[sha(kept), sha(dropped), sha(never)]).unwrap();
    assert_eq!(answers, vec![Some(row(kept).1), None, None]);
    assert_eq!(
        store.sha256_index_len().unwrap(),
        1,
        "gc dropped the rows of absent objects"
    );
    assert!(store.fsck(false).unwrap().is_clean());
}

/// The SHA-256 of contents read back through a stager: its own staged
/// files, the store's objects, and an error for a content neither holds.
#[test]
fn sha256_of_contents_reads_staged_and_stored_contents() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let sha = |bytes: &[u8]| -> [u8; 32] { <sha2::Sha256 as sha2::Digest>::digest(bytes).into() };
    add_image(&store, "a", &[b"stored content"]);
    let mut stager = store.stager().unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let staged: Vec<Vec<u8>> = (0..40u8)
        .map(|i| vec![i; usize::from(i) * 100 + 1])
        .chain([big])
        .collect();
    for bytes in &staged {
        assert!(stager.add_bytes(bytes).unwrap().new);
    }
    let mut contents: Vec<&[u8]> = staged.iter().map(Vec::as_slice).collect();
    contents.push(b"stored content");
    let mut digests: Vec<Digest> = contents.iter().map(|c| Digest::of(c)).collect();
    digests.push(Digest::of(b"in neither"));
    let sums = crate::sha256_of_contents(&stager.contents(), &digests);
    for (bytes, sum) in contents.iter().zip(&sums) {
        assert_eq!(*sum.as_ref().unwrap(), (sha(bytes), bytes.len() as u64));
    }
    assert!(sums.last().unwrap().is_err());
}

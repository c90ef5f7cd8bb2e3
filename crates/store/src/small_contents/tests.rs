use super::*;
use crate::{ImageRecord, ObjectRef};
use strata_tree::{Leaf, Node, Stat, Tree};

fn sha(bytes: &[u8]) -> [u8; 32] {
    sha256(bytes)
}

/// Commits an image whose files hold `inline` contents, inline.
fn inline_image(store: &Store, name: &str, inline: &[&[u8]]) {
    let mut tree = Tree::new(Stat::default_dir());
    for (i, bytes) in inline.iter().enumerate() {
        let id = tree.push_leaf(Leaf {
            stat: Default::default(),
            content: Content::File(FileData::Inline(bytes.to_vec())),
        });
        tree.root.entries.insert(format!("f{i}").into_bytes(), Node::Leaf(id));
    }
    let image = store.put_image(&strata_erofs::write_image(&tree).unwrap()).unwrap();
    let record = ImageRecord::for_test(name, &image);
    store.commit_image(&record, &[] as &[ObjectRef]).unwrap();
}

#[test]
fn rows_answer_only_for_bytes_that_hash_to_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let too_large = vec![7u8; strata_erofs::INLINE_MAX + 1];
    let added = store
        .record_contents(&[], &[b"hello", b"", &too_large, b"hello"])
        .unwrap();
    assert_eq!(added, 1, "empty, oversize and repeated contents are not rows");
    let answers = store
        .small_contents(&[sha(b"hello"), sha(b""), sha(&too_large)])
        .unwrap();
    assert_eq!(answers, vec![Some(b"hello".to_vec()), None, None]);

    // A hostile row: another content's bytes under a key.
    store.put_small_content_unchecked(&sha(b"wanted"), b"injected").unwrap();
    assert_eq!(store.small_contents(&[sha(b"wanted")]).unwrap(), vec![None]);
    let report = store.fsck(false).unwrap();
    assert_eq!(
        report.problems,
        vec![crate::FsckProblem::BadSmallContent {
            sha256: Digest(sha(b"wanted"))
        }]
    );
    let report = store.fsck(true).unwrap();
    assert_eq!(report.repaired, 1);
    assert!(store.fsck(false).unwrap().is_clean());
    assert_eq!(store.small_contents_len().unwrap(), 1);

    // An import that reads the content rewrites a damaged row.
    store.put_small_content_unchecked(&sha(b"wanted"), b"injected").unwrap();
    store.record_contents(&[], &[b"wanted", b"hello"]).unwrap();
    assert_eq!(
        store.small_contents(&[sha(b"wanted")]).unwrap(),
        vec![Some(b"wanted".to_vec())]
    );
    assert!(store.fsck(false).unwrap().is_clean());
}

#[test]
fn gc_keeps_the_rows_live_images_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    inline_image(&store, "a", &[b"kept", b"shared"]);
    inline_image(&store, "b", &[b"shared", b"dropped"]);
    store
        .record_contents(&[], &[b"kept", b"shared", b"dropped", b"never in an image"])
        .unwrap();
    assert_eq!(store.small_contents_len().unwrap(), 4);
    assert!(store.remove_image("b").unwrap());
    store.gc().unwrap();
    let answers = store
        .small_contents(&[sha(b"kept"), sha(b"shared"), sha(b"dropped"), sha(b"never in an image")])
        .unwrap();
    assert_eq!(
        answers,
        vec![Some(b"kept".to_vec()), Some(b"shared".to_vec()), None, None]
    );
    assert_eq!(store.small_contents_len().unwrap(), 2);
}

#[test]
fn the_table_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let contents: Vec<Vec<u8>> = (0..MAX_ROWS + 10).map(|i| i.to_le_bytes().to_vec()).collect();
    let refs: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    let added = store.record_contents(&[], &refs).unwrap();
    assert_eq!(added, MAX_ROWS);
    assert_eq!(store.small_contents_len().unwrap(), MAX_ROWS);
    assert_eq!(store.record_contents(&[], &[b"one more"]).unwrap(), 0);
    // Index rows still go in with a full table.
    let object = ObjectRef {
        digest: Digest::of(b"x"),
        size: 1,
    };
    store.record_contents(&[([1; 32], object)], &[b"late"]).unwrap();
    assert_eq!(store.sha256_index_len().unwrap(), 1);
    assert_eq!(store.small_contents(&[sha(b"late")]).unwrap(), vec![None]);
}

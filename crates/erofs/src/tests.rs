use super::*;
use strata_tree::Leaf;

pub(crate) fn sample() -> Tree {
    let mut tree = Tree::new(Stat::default_dir());
    let big = Digest::of(&[7u8; 10_000]);
    let file = tree.push_leaf(Leaf {
        stat: Stat {
            mode: 0o4755,
            uid: 1,
            gid: 2,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            xattrs: [(b"security.capability".to_vec(), vec![1, 2, 3])].into(),
        },
        content: Content::File(FileData::Object {
            digest: big,
            size: 10_000,
        }),
    });
    let small = tree.push_leaf(Leaf {
        stat: Stat::default(),
        content: Content::File(FileData::Inline(b"hi".to_vec())),
    });
    let link = tree.push_leaf(Leaf {
        stat: Stat::default(),
        content: Content::Symlink(b"../x".to_vec()),
    });
    let mut bin = Dir::new(Stat::default_dir());
    bin.entries.insert(b"tool".to_vec(), Node::Leaf(file));
    bin.entries.insert(b"tool-hardlink".to_vec(), Node::Leaf(file));
    bin.entries.insert(b"small".to_vec(), Node::Leaf(small));
    bin.entries.insert(b"sym".to_vec(), Node::Leaf(link));
    tree.root.entries.insert(b"bin".to_vec(), Node::Dir(Box::new(bin)));
    tree
}

#[test]
fn deterministic_and_references_objects() {
    let a = write_image(&sample()).unwrap();
    let b = write_image(&sample()).unwrap();
    assert_eq!(a, b);
    assert_eq!(referenced_objects(&a).unwrap(), vec![Digest::of(&[7u8; 10_000])]);
    assert!(a.len() < 16 * 1024, "metadata only, got {} bytes", a.len());
}

#[test]
fn rejects_whiteouts_and_long_symlinks() {
    let mut tree = sample();
    tree.root.entries.insert(b"gone".to_vec(), Node::Whiteout);
    assert!(matches!(write_image(&tree), Err(ErofsError::UnmergedWhiteout { .. })));
    let mut tree = sample();
    let id = tree.push_leaf(Leaf {
        stat: Stat::default(),
        content: Content::Symlink(vec![b'a'; SYMLINK_MAX + 1]),
    });
    tree.root.entries.insert(b"long".to_vec(), Node::Leaf(id));
    assert!(matches!(write_image(&tree), Err(ErofsError::SymlinkTooLong { .. })));
}

/// A tree that [`into_image`] writes on a thread of its own gives the
/// bytes and the errors it gives on the caller's stack.
#[test]
fn a_big_tree_written_on_its_own_thread_is_the_same_image() {
    let mut tree = sample();
    let mut many = Dir::new(Stat::default_dir());
    for i in 0..OWN_THREAD_LEAVES {
        let id = tree.push_leaf(Leaf {
            stat: Stat::default(),
            content: Content::File(FileData::Inline(Vec::new())),
        });
        many.entries.insert(format!("f{i}").into_bytes(), Node::Leaf(id));
    }
    tree.root.entries.insert(b"many".to_vec(), Node::Dir(Box::new(many)));
    let here = with_stack_for(0, || write_image_here(tree.clone())).unwrap();
    assert_eq!(into_image(tree.clone()).unwrap(), here);
    assert_eq!(write_image(&tree).unwrap(), here);
    tree.root.entries.insert(b"gone".to_vec(), Node::Whiteout);
    assert!(matches!(into_image(tree), Err(ErofsError::UnmergedWhiteout { .. })));
}

#[test]
fn corrupt_image_is_an_error() {
    let mut image = write_image(&sample()).unwrap();
    image.truncate(100);
    assert!(referenced_objects(&image).is_err());
}

/// A chain `d/d/…` `depth` levels deep, built without recursion.
fn chain(depth: usize) -> Tree {
    let mut tree = Tree::new(Stat::default_dir());
    let mut dir = Dir::new(Stat::default_dir());
    for _ in 1..depth {
        let mut up = Dir::new(Stat::default_dir());
        up.entries.insert(b"d".to_vec(), Node::Dir(Box::new(dir)));
        dir = up;
    }
    if depth > 0 {
        tree.root.entries.insert(b"d".to_vec(), Node::Dir(Box::new(dir)));
    }
    tree
}

/// On a tokio worker's 2 MiB stack, in whatever build this runs: the
/// deepest tree writes and reads back, one level more and a chain far deeper
/// are refused with an error, never a stack overflow.
#[test]
fn depth_limit_holds_on_a_worker_stack() {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let deepest = chain(MAX_DEPTH);
            let image = write_image(&deepest).unwrap();
            // (Tree's derived `==` recurses, so compare depths.)
            assert_eq!(read_tree(&image).unwrap().root.depth(), MAX_DEPTH);
            for depth in [MAX_DEPTH + 1, 100_000] {
                let err = write_image(&chain(depth)).unwrap_err();
                assert!(
                    matches!(&err, ErofsError::Invalid { reason } if reason.contains("deeper than 2047")),
                    "{err}"
                );
            }
            assert!(reserved_xattr(b"user.overlay.opaque"));
            assert!(!reserved_xattr(b"user.overlay.origin"));
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_missing_content_redirects_to_its_sha256_name() {
    let sha256 = Digest::of(b"stands in for a SHA-256 from a TOC");
    let mut tree = Tree::new(Stat::default_dir());
    let id = tree.push_leaf(Leaf {
        stat: Stat::default(),
        content: Content::File(FileData::Missing { sha256, size: 70_000 }),
    });
    tree.root.entries.insert(b"lazy".to_vec(), Node::Leaf(id));
    let image = write_image(&tree).unwrap();
    // The redirect names the SHA-256 like an object; the reader cannot
    // tell the two apart (the store's lazy rows can).
    assert_eq!(referenced_objects(&image).unwrap(), vec![sha256]);
    let back = read_tree(&image).unwrap();
    assert_eq!(
        back.leaves[0].content,
        Content::File(FileData::Object {
            digest: sha256,
            size: 70_000
        })
    );
}

//! Walks over trees whose depth the input chooses run in constant stack.

use crate::{merge_layer, Content, Dir, FileData, Leaf, Node, Stat, Tree};

const DEPTH: usize = 200_000;

/// A chain `d/d/.../d` `DEPTH` deep whose last directory holds a file.
fn chain(tree: &mut Tree, body: &[u8], implicit: bool) -> Dir {
    let id = tree.push_leaf(Leaf {
        stat: Stat::default(),
        content: Content::File(FileData::Inline(body.to_vec())),
    });
    let mut dir = Dir::new(Stat::default_dir());
    dir.entries.insert(b"f".to_vec(), Node::Leaf(id));
    for _ in 0..DEPTH {
        let mut parent = Dir::new(Stat::default_dir());
        parent.implicit = implicit;
        parent.entries.insert(b"d".to_vec(), Node::Dir(Box::new(dir)));
        dir = parent;
    }
    dir
}

#[test]
fn deep_chain_merges_counts_compacts_and_drops_on_a_small_stack() {
    let run = || {
        let mut lower = Tree::new(Stat::default_dir());
        lower.root = chain(&mut lower, b"old", false);
        let mut layer = Tree::new(Stat::default_dir());
        layer.root = chain(&mut layer, b"new", true);
        merge_layer(&mut lower, layer).expect("merge");
        lower.compact();
        let stats = lower.stats();
        assert_eq!(stats.dirs, DEPTH as u64 + 1);
        assert_eq!((stats.leaves, stats.files), (1, 1));
        assert_eq!(lower.leaves.len(), 1);
        assert_eq!(lower.object_digests(), vec![]);
        assert_eq!(
            lower.leaves[0].content,
            Content::File(FileData::Inline(b"new".to_vec()))
        );
        // A bare directory chain outside any tree drops as well.
        let mut spare = Tree::default();
        drop(chain(&mut spare, b"x", false));
        drop(lower);
    };
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(run)
        .expect("spawn")
        .join()
        .expect("no stack overflow");
}

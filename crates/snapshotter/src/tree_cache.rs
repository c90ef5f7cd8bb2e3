//! The merged tree of the image a commit just wrote, kept for the next
//! commit: a pull commits each layer over the one before, and reading that
//! parent back from its EROFS image (read, hash, parse) cost 10-14 ms per
//! layer of the family's images. One tree is kept, as [`read_tree`] would
//! give it back ([`read_back`]), and handed out once, by image id.
//!
//! [`read_tree`]: strata_erofs::read_tree
//! [`read_back`]: strata_erofs::read_back

use std::sync::Mutex;

use strata_tree::{Digest, Tree};

/// Trees with more leaves are not kept: the clone would cost more than
/// it saves where the next commit is not a child.
const MAX_LEAVES: usize = 1 << 16;
/// Nor deeper ones: a tree's clone and comparison recurse once per level.
const MAX_DEPTH: usize = 64;

#[derive(Default)]
pub(crate) struct TreeCache {
    kept: Mutex<Option<(Digest, Tree)>>,
}

/// A tree about to be written as an image, ready to keep once the image
/// has its id.
pub(crate) struct Pending(Option<Tree>);

impl TreeCache {
    /// Takes what `merged` will read back as, before it is written.
    pub(crate) fn prepare(merged: &Tree) -> Pending {
        let keep = merged.leaves.len() <= MAX_LEAVES && merged.root.depth() <= MAX_DEPTH;
        Pending(keep.then(|| strata_erofs::read_back(merged).ok()).flatten())
    }

    /// Keeps `pending` as the tree of image `id`, in place of any other.
    pub(crate) fn keep(&self, id: Digest, pending: Pending) {
        if let Some(tree) = pending.0 {
            *self.lock() = Some((id, tree));
        }
    }

    /// The tree of image `id`, if it is the one kept; it is kept no more.
    pub(crate) fn take(&self, id: &Digest) -> Option<Tree> {
        let mut kept = self.lock();
        match kept.as_ref() {
            Some((kept_id, _)) if kept_id == id => kept.take().map(|(_, tree)| tree),
            _ => None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Digest, Tree)>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_tree::{Dir, Node, Stat};

    #[test]
    fn a_kept_tree_is_handed_out_once_by_its_image_id() {
        let cache = TreeCache::default();
        let tree = Tree::new(Stat::default_dir());
        let (a, b) = (Digest([1; 32]), Digest([2; 32]));
        cache.keep(a, TreeCache::prepare(&tree));
        assert!(cache.take(&b).is_none());
        assert_eq!(cache.take(&a), Some(strata_erofs::read_back(&tree).unwrap()));
        assert!(cache.take(&a).is_none());
        // A newer tree replaces the kept one.
        cache.keep(a, TreeCache::prepare(&tree));
        cache.keep(b, TreeCache::prepare(&tree));
        assert!(cache.take(&a).is_none());
        assert!(cache.take(&b).is_some());
        // A deep tree is not kept.
        let mut deep = Tree::new(Stat::default_dir());
        for _ in 0..=MAX_DEPTH {
            let below = std::mem::replace(&mut deep.root, Dir::new(Stat::default_dir()));
            deep.root.entries.insert(b"d".to_vec(), Node::Dir(Box::new(below)));
        }
        cache.keep(a, TreeCache::prepare(&deep));
        assert!(cache.take(&a).is_none());
    }
}

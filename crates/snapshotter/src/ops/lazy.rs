//! Snapshots of lazily fetched layers (docs/lazy-pulls.md). A committed
//! snapshot's flattened image may name contents by SHA-256 that the store
//! does not hold yet. Its lazy row lists them, so gc keeps what they need,
//! LAZY serves them and prefetch fetches them, and mounts over it add
//! ALIASES and LAZY after the objects dir (`Store::lazy_lowers`, which
//! `strata mount` uses too). A snapshot over such a parent inherits the
//! names it still shows.

use std::collections::{HashMap, HashSet};

use strata_store::Store;
use strata_tree::{Content, Digest, FileData, Tree};

use crate::SnapshotError;

/// Marks the files of `tree` (read back from image `image`) that the
/// image names by SHA-256 as missing: the reader cannot tell those names
/// from objects, the image's lazy row can.
pub(super) fn mark_missing(store: &Store, image: &Digest, tree: &mut Tree) -> Result<(), SnapshotError> {
    let Some(names) = store.lazy_needs(image)? else {
        return Ok(());
    };
    let names: HashSet<Digest> = names.into_iter().collect();
    for leaf in &mut tree.leaves {
        if let Content::File(FileData::Object { digest, size }) = leaf.content {
            if names.contains(&digest) {
                leaf.content = Content::File(FileData::Missing { sha256: digest, size });
            }
        }
    }
    Ok(())
}

/// Settles the missing contents of a merged `tree` before it is written:
/// each one the store holds by now becomes its object; the rest are
/// returned once each, in prefetch order: the parent's (`parent`'s row)
/// first, then `later` (the new layer's), then any other.
pub(super) fn settle_missing(
    store: &Store,
    tree: &mut Tree,
    parent: Option<&Digest>,
    later: impl Iterator<Item = Digest>,
) -> Result<Vec<Digest>, SnapshotError> {
    let missing: Vec<(Digest, u64)> = tree
        .leaves
        .iter()
        .filter_map(|leaf| match leaf.content {
            Content::File(FileData::Missing { sha256, size }) => Some((sha256, size)),
            _ => None,
        })
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<[u8; 32]> = missing.iter().map(|(d, _)| d.0).collect();
    let mut stored = HashMap::new();
    for ((sha, size), object) in missing.iter().zip(store.objects_by_sha256(&keys)?) {
        if let Some(object) = object.filter(|o| o.size == *size) {
            stored.insert((*sha, *size), object.digest);
        }
    }
    let mut still = HashSet::new();
    for leaf in &mut tree.leaves {
        if let Content::File(FileData::Missing { sha256, size }) = leaf.content {
            match stored.get(&(sha256, size)) {
                Some(&digest) => leaf.content = Content::File(FileData::Object { digest, size }),
                None => {
                    still.insert(sha256);
                }
            }
        }
    }
    let earlier = match parent {
        Some(image) => store.lazy_needs(image)?.unwrap_or_default(),
        None => Vec::new(),
    };
    // A SHA-256 name that is also a stored object's fs-verity name would
    // be served from OBJECTS: only a hostile TOC can name one. The
    // parent's names were checked when it was committed.
    let inherited: HashSet<&Digest> = earlier.iter().collect();
    for name in still.iter().filter(|name| !inherited.contains(name)) {
        if store.has_object(name)? {
            return Err(SnapshotError::BadRecord {
                key: name.to_hex(),
                reason: "a TOC names a missing content by the name of a stored object".into(),
            });
        }
    }
    if still.len() > strata_store::MAX_LAZY_NEEDS {
        return Err(SnapshotError::BadRecord {
            key: "lazy".into(),
            reason: format!(
                "the snapshot would miss {} contents, over the limit of {}",
                still.len(),
                strata_store::MAX_LAZY_NEEDS
            ),
        });
    }
    let mut rest: Vec<Digest> = still.iter().copied().collect();
    rest.sort_unstable();
    let mut seen = HashSet::with_capacity(still.len());
    Ok(earlier
        .into_iter()
        .chain(later)
        .chain(rest)
        .filter(|d| still.contains(d) && seen.insert(*d))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_tree::{Leaf, Stat};

    fn file(data: FileData) -> Leaf {
        Leaf {
            stat: Stat::default_dir(),
            content: Content::File(data),
        }
    }

    #[test]
    fn missing_names_keep_the_parents_order_then_the_layers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = |n: u8| Digest([n; 32]);
        let parent = d(0xee);
        let txn = store.begin().unwrap();
        txn.put_lazy_image(&parent, &[d(3), d(1), d(9)]).unwrap();
        txn.commit().unwrap();
        let mut tree = Tree::new(Stat::default_dir());
        for n in [1, 2, 3, 4] {
            tree.push_leaf(file(FileData::Missing { sha256: d(n), size: 10 }));
        }
        tree.push_leaf(file(FileData::Object { digest: d(7), size: 10 }));
        let names = settle_missing(&store, &mut tree, Some(&parent), [d(4), d(2), d(3)].into_iter()).unwrap();
        // d(9): the parent's, no longer shown; d(3): once.
        assert_eq!(names, vec![d(3), d(1), d(4), d(2)]);

        let mut back = Tree::new(Stat::default_dir());
        back.push_leaf(file(FileData::Object { digest: d(3), size: 5 }));
        back.push_leaf(file(FileData::Object { digest: d(7), size: 5 }));
        mark_missing(&store, &parent, &mut back).unwrap();
        assert_eq!(
            back.leaves[0].content,
            Content::File(FileData::Missing { sha256: d(3), size: 5 })
        );
        assert_eq!(
            back.leaves[1].content,
            Content::File(FileData::Object { digest: d(7), size: 5 })
        );
        assert!(store.lazy_lowers(&d(0xaa)).unwrap().is_empty());
        assert_eq!(store.lazy_lowers(&parent).unwrap().len(), 2);
    }

    #[test]
    fn a_missing_name_that_is_a_stored_objects_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut stager = store.stager().unwrap();
        let object = stager.add_bytes(&[7u8; 4096]).unwrap().digest;
        stager.publish().unwrap();
        let mut tree = Tree::new(Stat::default_dir());
        tree.push_leaf(file(FileData::Missing {
            sha256: object,
            size: 4096,
        }));
        let refused = settle_missing(&store, &mut tree, None, std::iter::empty());
        assert!(matches!(refused, Err(SnapshotError::BadRecord { .. })), "{refused:?}");
    }
}

//! Completing a lazily pulled image: once the store holds every content
//! its metadata names by SHA-256, the metadata is rewritten with fs-verity
//! names (the SHA-256 index gives each one) and every name recorded with
//! the old image is pointed at the new one, with its full object list, in
//! one transaction. The new image needs neither ALIASES nor LAZY, so new
//! mounts of it have two lowers; mounts made before keep the old image
//! file (and its aliases, kept by its row until gc finds it dead).

use std::collections::HashMap;

use strata_store::{ObjectRef, Store, StoreError};
use strata_tree::{Content, Digest, FileData};

use crate::ImportError;

/// A completed image.
#[derive(Clone, Debug)]
pub struct Completed {
    /// The image as it was pulled (SHA-256 names).
    pub old: Digest,
    /// Its rewrite (fs-verity names only).
    pub new: Digest,
    /// The names now recorded with `new`.
    pub names: Vec<String>,
    /// Objects the new image references.
    pub objects: usize,
}

/// The names of `needs` the store does not hold yet.
pub fn still_missing(store: &Store, needs: &[Digest]) -> Result<Vec<Digest>, StoreError> {
    let keys: Vec<[u8; 32]> = needs.iter().map(|d| d.0).collect();
    let found = store.objects_by_sha256(&keys)?;
    Ok(needs
        .iter()
        .zip(found)
        .filter(|(_, object)| object.is_none())
        .map(|(name, _)| *name)
        .collect())
}

/// Rewrites lazily pulled image `image` with fs-verity names and points
/// its names at the rewrite. None if it is no lazily pulled image, or if
/// the store still lacks some of its contents.
pub fn complete(store: &Store, image: &Digest) -> Result<Option<Completed>, ImportError> {
    // gc waits until the new image is named.
    let _lock = store.lock_shared()?;
    let Some(needs) = store.lazy_needs(image)? else {
        return Ok(None);
    };
    let keys: Vec<[u8; 32]> = needs.iter().map(|d| d.0).collect();
    let mut by_sha = HashMap::with_capacity(needs.len());
    for (name, object) in needs.iter().zip(store.objects_by_sha256(&keys)?) {
        let Some(object) = object else {
            return Ok(None);
        };
        by_sha.insert(*name, object);
    }
    let mut tree = strata_erofs::read_tree(&store.read_image(image)?)?;
    rename(&mut tree, &by_sha)?;
    let objects = ObjectRef::all_in(&tree);
    let bytes = strata_erofs::into_image(tree)?;
    let new = store.put_image(&bytes)?;
    let names = store.complete_lazy_image(image, &new, &objects)?;
    Ok(Some(Completed {
        old: *image,
        new,
        names,
        objects: objects.len(),
    }))
}

/// Gives every file the tree names by a SHA-256 of `by_sha` its object's
/// fs-verity name. The reader gives SHA-256 names back as objects: only
/// the row says which names are SHA-256 names.
fn rename(tree: &mut strata_tree::Tree, by_sha: &HashMap<Digest, ObjectRef>) -> Result<(), ImportError> {
    for leaf in &mut tree.leaves {
        let Content::File(data) = &mut leaf.content else {
            continue;
        };
        let (name, size) = match data {
            FileData::Object { digest, size } | FileData::Missing { sha256: digest, size } => (*digest, *size),
            _ => continue,
        };
        let Some(object) = by_sha.get(&name) else {
            continue;
        };
        if object.size != size {
            return Err(StoreError::BadRecord {
                key: name.to_hex(),
                reason: format!(
                    "the image names a file of {size} bytes, the object the SHA-256 index gives has {}",
                    object.size
                ),
            }
            .into());
        }
        *data = FileData::Object {
            digest: object.digest,
            size,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_tree::{Leaf, Stat, Tree};

    fn file(digest: Digest, size: u64) -> Leaf {
        Leaf {
            stat: Stat::default_dir(),
            content: Content::File(FileData::Object { digest, size }),
        }
    }

    #[test]
    fn sha256_names_become_fs_verity_names_and_others_stay() {
        let (sha, verity, other) = (Digest::of(b"sha"), Digest::of(b"verity"), Digest::of(b"other"));
        let mut tree = Tree::new(Stat::default_dir());
        tree.push_leaf(file(sha, 7));
        tree.push_leaf(file(other, 7));
        let by_sha = HashMap::from([(
            sha,
            ObjectRef {
                digest: verity,
                size: 7,
            },
        )]);
        rename(&mut tree, &by_sha).unwrap();
        assert_eq!(tree.leaves, vec![file(verity, 7), file(other, 7)]);

        let wrong = HashMap::from([(
            other,
            ObjectRef {
                digest: verity,
                size: 8,
            },
        )]);
        assert!(rename(&mut tree, &wrong).is_err(), "a size that disagrees is refused");
    }
}

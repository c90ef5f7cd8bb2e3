//! The rows of lazily pulled images (docs/lazy-pulls.md):
//!
//! - `lazy_images`: EROFS image id (hex) -> the SHA-256s of the contents
//!   its metadata names by SHA-256 (32 bytes each), the files the store
//!   lacked when it was pulled, in the order prefetch fetches them. An image with a row is *incomplete*: it is
//!   mounted with ALIASES and LAZY behind OBJECTS.
//! - `lazy_contents`: SHA-256 (hex) -> how to fetch that content (bytes
//!   the image crate encodes: source, layer, ranges, compression).
//!
//! Both are gc roots: while a live image has a row, gc keeps every content
//! it names (the object the SHA-256 index names, and its alias) and the
//! recipe to fetch the ones still missing. gc drops the rows of images
//! that are no longer live, and recipes no live image needs.

use std::collections::HashSet;

use strata_tree::Digest;

use crate::{ObjectRef, RecordTable, Store, StoreError, StoreTxn};

const LAZY_IMAGES: RecordTable = RecordTable::new("lazy_images");
const LAZY_CONTENTS: RecordTable = RecordTable::new("lazy_contents");

/// A lazy image row holds at most this many names: a longer list is
/// refused when written (a snapshot's image merges layers from TOCs no
/// image-wide limit has seen) and, as a corrupt row, when read.
pub const MAX_LAZY_NEEDS: usize = 1 << 22;

fn encode_needs(needs: &[Digest]) -> Vec<u8> {
    needs.iter().flat_map(|d| d.0).collect()
}

fn decode_needs(bytes: &[u8]) -> Result<Vec<Digest>, StoreError> {
    if !bytes.len().is_multiple_of(32) || bytes.len() / 32 > MAX_LAZY_NEEDS {
        return Err(StoreError::BadRecord {
            key: "lazy_images".into(),
            reason: format!("{} bytes is not a list of SHA-256s", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| Digest(c.try_into().expect("32 bytes")))
        .collect())
}

impl StoreTxn<'_> {
    /// Marks image `image` incomplete: its metadata names `needs` by SHA-256.
    pub fn put_lazy_image(&self, image: &Digest, needs: &[Digest]) -> Result<(), StoreError> {
        if needs.len() > MAX_LAZY_NEEDS {
            return Err(StoreError::BadRecord {
                key: image.to_hex(),
                reason: format!(
                    "the image misses {} contents, over the limit of {MAX_LAZY_NEEDS}",
                    needs.len()
                ),
            });
        }
        self.put_record(LAZY_IMAGES, &image.to_hex(), &encode_needs(needs))
    }

    /// How to fetch the content with SHA-256 `sha` (opaque to the store).
    pub fn put_lazy_content(&self, sha: &Digest, recipe: &[u8]) -> Result<(), StoreError> {
        self.put_record(LAZY_CONTENTS, &sha.to_hex(), recipe)
    }

    /// [`put_lazy_content`](Self::put_lazy_content) for each of
    /// `contents`, keeping a recipe recorded already: one image's pull
    /// never redirects another image's fetches to its own registry (either
    /// recipe's bytes are checked against the same SHA-256).
    pub fn add_lazy_contents<'r>(
        &self,
        contents: impl IntoIterator<Item = (&'r Digest, &'r [u8])>,
    ) -> Result<(), StoreError> {
        let rows: Vec<(String, &[u8])> = contents.into_iter().map(|(sha, r)| (sha.to_hex(), r)).collect();
        self.put_records_if_absent(LAZY_CONTENTS, rows.iter().map(|(k, r)| (k.as_str(), *r)))
            .map(drop)
    }
}

impl Store {
    /// The SHA-256 names image `image` redirects to, if it was pulled lazily.
    pub fn lazy_needs(&self, image: &Digest) -> Result<Option<Vec<Digest>>, StoreError> {
        self.record(LAZY_IMAGES, &image.to_hex())?
            .map(|row| decode_needs(&row))
            .transpose()
    }

    /// The data-only lowers a mount over image `image` needs after the
    /// objects dir: ALIASES and LAZY while it names missing contents,
    /// none once it misses nothing.
    pub fn lazy_lowers(&self, image: &Digest) -> Result<Vec<std::path::PathBuf>, StoreError> {
        if self.lazy_needs(image)?.is_none_or(|names| names.is_empty()) {
            return Ok(Vec::new());
        }
        Ok(vec![self.aliases_path()?, self.lazy_path()])
    }

    /// The recipe recorded for content `sha`.
    pub fn lazy_recipe(&self, sha: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        self.record(LAZY_CONTENTS, &sha.to_hex())
    }

    /// Completes lazily pulled image `old`: in one transaction, every name
    /// recorded with it is pointed at image `new` (its metadata rewritten
    /// with fs-verity names), which references `objects`, all of them
    /// stored. Returns the names repointed (none if another pull replaced
    /// them meanwhile).
    ///
    /// `old`'s row stays: mounts made before still use `old`, whose
    /// SHA-256 names need their aliases, and gc keeps those only while a
    /// live image's row names them. gc drops the row with `old`, once
    /// nothing holds it.
    pub fn complete_lazy_image(
        &self,
        old: &Digest,
        new: &Digest,
        objects: &[ObjectRef],
    ) -> Result<Vec<String>, StoreError> {
        let txn = self.inner.db.raw().begin_write()?;
        let names = crate::db::repoint_images_in(&txn, old, new, objects)?;
        txn.commit()?;
        Ok(names)
    }

    /// Every live image (named, or a gc root such as a snapshot's) with a
    /// lazy row, and the names it needs.
    pub fn live_lazy_images(&self) -> Result<Vec<(Digest, Vec<Digest>)>, StoreError> {
        let live: std::collections::HashSet<Digest> = self.inner.db.live_images()?.into_iter().collect();
        let mut rows = self.lazy_images()?;
        rows.retain(|(image, _)| live.contains(image));
        Ok(rows)
    }

    /// Every lazily pulled image and the names it needs.
    pub fn lazy_images(&self) -> Result<Vec<(Digest, Vec<Digest>)>, StoreError> {
        let mut out = Vec::new();
        for (key, row) in self.records(LAZY_IMAGES)? {
            let Ok(image) = key.parse() else { continue };
            out.push((image, decode_needs(&row)?));
        }
        Ok(out)
    }
}

/// The SHA-256 names the live images among `live_images` need.
pub(crate) fn live_needs(store: &Store, live_images: &HashSet<Digest>) -> Result<HashSet<Digest>, StoreError> {
    let mut needs = HashSet::new();
    for (image, names) in store.lazy_images()? {
        if live_images.contains(&image) {
            needs.extend(names);
        }
    }
    Ok(needs)
}

/// Drops, in one transaction, the rows of images not in `live_images` and
/// the recipes of contents not in `needs`. Returns how many rows went.
pub(crate) fn forget_dead(
    store: &Store,
    live_images: &HashSet<Digest>,
    needs: &HashSet<Digest>,
) -> Result<u64, StoreError> {
    let dead_images: Vec<String> = store
        .records(LAZY_IMAGES)?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.parse::<Digest>().map_or(true, |d| !live_images.contains(&d)))
        .collect();
    let dead_contents: Vec<String> = store
        .records(LAZY_CONTENTS)?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.parse::<Digest>().map_or(true, |d| !needs.contains(&d)))
        .collect();
    if dead_images.is_empty() && dead_contents.is_empty() {
        return Ok(0);
    }
    let txn = store.begin()?;
    let mut removed = 0;
    for key in &dead_images {
        removed += u64::from(txn.delete_record(LAZY_IMAGES, key)?);
    }
    for key in &dead_contents {
        removed += u64::from(txn.delete_record(LAZY_CONTENTS, key)?);
    }
    txn.commit()?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_gc_drops_only_dead_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (live, dead) = (Digest::of(b"live"), Digest::of(b"dead"));
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        let txn = store.begin().unwrap();
        txn.put_lazy_image(&live, &[a, b]).unwrap();
        txn.put_lazy_image(&dead, &[c]).unwrap();
        for sha in [a, b, c] {
            txn.put_lazy_content(&sha, sha.to_hex().as_bytes()).unwrap();
        }
        txn.commit().unwrap();
        assert_eq!(store.lazy_needs(&live).unwrap(), Some(vec![a, b]));
        assert_eq!(store.lazy_needs(&Digest::of(b"none")).unwrap(), None);

        let live_images: HashSet<Digest> = [live].into();
        let needs = live_needs(&store, &live_images).unwrap();
        assert_eq!(needs, [a, b].into());
        assert_eq!(forget_dead(&store, &live_images, &needs).unwrap(), 2);
        assert_eq!(store.lazy_needs(&dead).unwrap(), None);
        assert_eq!(store.lazy_recipe(&c).unwrap(), None);
        assert_eq!(store.lazy_recipe(&a).unwrap(), Some(a.to_hex().into_bytes()));
        assert_eq!(store.lazy_images().unwrap().len(), 1);
    }

    #[test]
    fn completing_repoints_the_names_of_the_old_image_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (old, new, other) = (Digest::of(b"old"), Digest::of(b"new"), Digest::of(b"other"));
        let record = crate::ImageRecord::for_test;
        let object = ObjectRef {
            digest: Digest::of(b"object"),
            size: 9,
        };
        store.commit_image(&record("a", &old), &[]).unwrap();
        store.commit_image(&record("b", &old), &[]).unwrap();
        store.commit_image(&record("c", &other), &[]).unwrap();
        let txn = store.begin().unwrap();
        txn.put_lazy_image(&old, &[Digest::of(b"sha")]).unwrap();
        txn.commit().unwrap();
        let released = store.released().unwrap();

        let mut names = store.complete_lazy_image(&old, &new, &[object]).unwrap();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        for name in ["a", "b"] {
            assert_eq!(store.image(name).unwrap().unwrap().erofs_id().unwrap(), new);
        }
        assert_eq!(store.image("c").unwrap().unwrap().erofs_id().unwrap(), other);
        assert_eq!(store.image_objects(&new).unwrap(), vec![object]);
        assert_ne!(store.released().unwrap(), released, "the old image may be garbage now");
        assert!(
            store.lazy_needs(&old).unwrap().is_some(),
            "gc drops the old row, not completing"
        );
        assert!(store.lazy_needs(&new).unwrap().is_none(), "the new image is complete");
        // Nothing names `old` any more: a second completion repoints nothing.
        assert!(store.complete_lazy_image(&old, &new, &[object]).unwrap().is_empty());
    }

    #[test]
    fn a_recipe_recorded_first_is_kept_and_an_overlong_row_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let sha = Digest::of(b"content");
        let txn = store.begin().unwrap();
        txn.add_lazy_contents([(&sha, b"first".as_slice())]).unwrap();
        txn.add_lazy_contents([(&sha, b"second".as_slice())]).unwrap();
        let too_many = vec![sha; MAX_LAZY_NEEDS + 1];
        assert!(txn.put_lazy_image(&Digest::of(b"image"), &too_many).is_err());
        txn.commit().unwrap();
        assert_eq!(store.lazy_recipe(&sha).unwrap(), Some(b"first".to_vec()));
        assert_eq!(store.lazy_needs(&Digest::of(b"image")).unwrap(), None);
    }

    #[test]
    fn a_row_that_is_no_list_of_digests_is_corrupt() {
        assert!(decode_needs(&[0; 33]).is_err());
        assert_eq!(decode_needs(&[]).unwrap(), Vec::<Digest>::new());
    }
}

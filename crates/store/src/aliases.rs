//! Aliases: `sha256/XX/REST`, hard links to objects named by their plain
//! SHA-256 (the ALIASES data-only lower of a lazily pulled image,
//! docs/lazy-pulls.md). A lazily pulled image's metadata names the files
//! it did not have by SHA-256; once such a file arrives as an ordinary
//! object, its alias lets overlayfs find it without FUSE.
//!
//! An alias is a directory entry, no data: it shares the object's inode.
//! Every alias name is made and read here. Losing an alias (a crash right
//! after its object was published) is harmless: the next open of the name
//! reaches LAZY, whose fetcher finds the object by the SHA-256 index and
//! links the alias again.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use strata_tree::Digest;

use crate::{Store, StoreError};

/// The aliases directory below the store root.
pub(crate) const ALIASES_DIR: &str = "sha256";

/// `XX/REST` below `sha256/`: the alias of the content with SHA-256 `sha`.
pub(crate) fn alias_name(sha: &Digest) -> String {
    sha.object_path()
}

/// The SHA-256 an alias entry `XX/REST` names, if it is one.
pub(crate) fn parse_alias_name(fan: &str, name: &str) -> Option<Digest> {
    Digest::from_object_path(fan, name).ok()
}

impl Store {
    /// `STORE/sha256`, created if missing (the ALIASES lower).
    pub fn aliases_path(&self) -> Result<PathBuf, StoreError> {
        self.inner.root_dir.ensure_dir(ALIASES_DIR, 0o700)?;
        Ok(self.inner.root.join(ALIASES_DIR))
    }

    /// Where LAZY, the FUSE filesystem of missing objects, is mounted.
    pub fn lazy_path(&self) -> PathBuf {
        self.inner.root.join("lazy")
    }

    fn alias_path(&self, sha: &Digest) -> PathBuf {
        self.inner.root.join(ALIASES_DIR).join(alias_name(sha))
    }

    /// Links the alias `sha` to the published object `object`. Idempotent;
    /// an alias that names another inode (its object was removed and
    /// fetched again) is replaced.
    pub fn add_alias(&self, sha: &Digest, object: &Digest) -> Result<(), StoreError> {
        let target = self.objects_path().join(object.object_path());
        let alias = self.alias_path(sha);
        let fan = alias.parent().expect("an alias has a fan-out dir");
        std::fs::create_dir_all(fan).map_err(|e| StoreError::io("create alias dir", fan, e))?;
        match std::fs::hard_link(&target, &alias) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if same_inode(&target, &alias) {
                    return Ok(());
                }
                // A stale alias: link beside it, then rename over it.
                let fresh = fan.join(format!(
                    ".new-{}-{}",
                    std::process::id(),
                    alias_name(sha).replace('/', "")
                ));
                let _ = std::fs::remove_file(&fresh);
                std::fs::hard_link(&target, &fresh).map_err(|e| StoreError::io("link alias", &fresh, e))?;
                std::fs::rename(&fresh, &alias).map_err(|e| StoreError::io("rename alias", &alias, e))
            }
            Err(e) => Err(StoreError::io("link alias", &alias, e)),
        }
    }

    /// The content with SHA-256 `sha`, through its alias, opened read-only.
    pub fn open_alias(&self, sha: &Digest) -> Result<Option<File>, StoreError> {
        let path = self.alias_path(sha);
        match File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("open alias", &path, e)),
        }
    }
}

fn same_inode(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Calls `visit(fan, name, path, SHA-256 if the name is an alias name)` for
/// every entry below `sha256/` (none if the directory does not exist).
pub(crate) fn for_each_alias(
    store: &Store,
    mut visit: impl FnMut(&str, &str, &Path, Option<Digest>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let root = store.inner.root.join(ALIASES_DIR);
    if !root.exists() {
        return Ok(());
    }
    for fan in crate::gc::read_dir(&root)? {
        let fan_name = fan.file_name().to_string_lossy().into_owned();
        if !fan.file_type().is_ok_and(|t| t.is_dir()) {
            visit("", &fan_name, &fan.path(), None)?;
            continue;
        }
        for entry in crate::gc::read_dir(&fan.path())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let sha = parse_alias_name(&fan_name, &name);
            visit(&fan_name, &name, &entry.path(), sha)?;
        }
    }
    Ok(())
}

/// Whether the alias at `path` still shares an inode with an object (a
/// hard link count of 1 means its object is gone).
pub(crate) fn is_linked(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.nlink() >= 2)
}

/// Whether the alias at `path` is the very inode of object `object`.
pub(crate) fn links_object(store: &Store, path: &Path, object: &Digest) -> bool {
    same_inode(path, &store.objects_path().join(object.object_path()))
}

/// Removes an alias entry (a stray directory with its contents).
pub(crate) fn remove(path: &Path) -> Result<(), StoreError> {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let result = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io("remove alias", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ImageRecord, ObjectRef};
    use sha2::Digest as _;
    use strata_tree::{Content, FileData, Leaf, Node, Stat, Tree};

    fn sha256(bytes: &[u8]) -> Digest {
        Digest(sha2::Sha256::digest(bytes).into())
    }

    fn publish(store: &Store, content: &[u8]) -> ObjectRef {
        let mut stager = store.stager().unwrap();
        let staged = stager.add_bytes(content).unwrap();
        stager.publish().unwrap();
        ObjectRef {
            digest: staged.digest,
            size: staged.size,
        }
    }

    /// An image with one present object and one content named by SHA-256
    /// (a lazy pull's), committed with its lazy rows.
    fn lazy_image(store: &Store, present: &ObjectRef, missing: &Digest, size: u64) -> Digest {
        let mut tree = Tree::new(Stat::default_dir());
        for (name, data) in [
            (
                "present",
                FileData::Object {
                    digest: present.digest,
                    size: present.size,
                },
            ),
            ("missing", FileData::Missing { sha256: *missing, size }),
        ] {
            let id = tree.push_leaf(Leaf {
                stat: Stat::default(),
                content: Content::File(data),
            });
            tree.root.entries.insert(name.as_bytes().to_vec(), Node::Leaf(id));
        }
        let image = store.put_image(&strata_erofs::write_image(&tree).unwrap()).unwrap();
        let txn = store.begin().unwrap();
        txn.put_lazy_content(missing, b"{}").unwrap();
        txn.put_lazy_image(&image, &[*missing]).unwrap();
        txn.commit().unwrap();
        let record = ImageRecord {
            name: "lazy".into(),
            manifest_digest: "sha256:m".into(),
            config_digest: "sha256:c".into(),
            erofs: image.to_hex(),
            layers: vec![],
            created_unix: 0,
            logical_bytes: 0,
            files: 2,
            inodes: 3,
            broken: None,
        };
        store.commit_image(&record, std::slice::from_ref(present)).unwrap();
        image
    }

    #[test]
    fn gc_and_fsck_keep_what_a_lazy_image_needs_and_drop_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let present = publish(&store, &[1u8; 5000]);
        let fetched_bytes = vec![2u8; 6000];
        let missing = sha256(&fetched_bytes);
        lazy_image(&store, &present, &missing, 6000);
        let report = store.fsck(false).unwrap();
        assert!(report.is_clean(), "before the fetch: {:?}", report.problems);

        // The fetch: an ordinary object, its index row, its alias.
        let fetched = publish(&store, &fetched_bytes);
        store.record_sha256(&[(missing.0, fetched)]).unwrap();
        store.add_alias(&missing, &fetched.digest).unwrap();
        store.add_alias(&missing, &fetched.digest).unwrap();
        assert!(store.open_alias(&missing).unwrap().is_some());
        // An alias no image needs, of an object no image references.
        let stray = publish(&store, &[3u8; 7000]);
        let stray_sha = sha256(&[3u8; 7000]);
        store.record_sha256(&[(stray_sha.0, stray)]).unwrap();
        store.add_alias(&stray_sha, &stray.digest).unwrap();

        let report = store.fsck(false).unwrap();
        assert!(report.is_clean(), "after the fetch: {:?}", report.problems);
        assert_eq!(report.orphan_objects, 1, "only the stray object");
        let gc = store.gc().unwrap();
        assert_eq!(gc.objects_removed, 1);
        assert!(store.has_object(&fetched.digest).unwrap());
        assert!(store.open_alias(&missing).unwrap().is_some());
        assert!(store.open_alias(&stray_sha).unwrap().is_none(), "the stray alias goes");
        assert!(store.fsck(false).unwrap().is_clean());

        // An alias that is a copy, not the object: fsck says so.
        let alias = store.alias_path(&missing);
        std::fs::remove_file(&alias).unwrap();
        std::fs::write(&alias, &fetched_bytes).unwrap();
        let report = store.fsck(false).unwrap();
        assert!(
            matches!(report.problems.as_slice(), [crate::FsckProblem::BadAlias { sha256, .. }] if *sha256 == missing),
            "{:?}",
            report.problems
        );
        store.add_alias(&missing, &fetched.digest).unwrap();
        assert!(store.fsck(false).unwrap().is_clean(), "add_alias replaced the copy");

        // The image gone: its object, alias and rows go with it.
        assert!(store.remove_image("lazy").unwrap());
        store.gc().unwrap();
        assert!(!store.has_object(&fetched.digest).unwrap());
        assert!(store.open_alias(&missing).unwrap().is_none());
        assert_eq!(store.lazy_recipe(&missing).unwrap(), None);
        assert!(store.lazy_images().unwrap().is_empty());
    }

    #[test]
    fn a_lazy_content_neither_stored_nor_fetchable_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let present = publish(&store, &[1u8; 5000]);
        let missing = sha256(b"never fetched");
        let image = lazy_image(&store, &present, &missing, 13);
        let txn = store.begin().unwrap();
        txn.delete_record(crate::RecordTable::new("lazy_contents"), &missing.to_hex())
            .unwrap();
        txn.commit().unwrap();
        let report = store.fsck(false).unwrap();
        assert_eq!(
            report.problems,
            vec![crate::FsckProblem::LazyUnfetchable { sha256: missing, image }]
        );
    }

    #[test]
    fn alias_names_round_trip() {
        let sha = Digest::of(b"x");
        let name = alias_name(&sha);
        let (fan, rest) = name.split_once('/').unwrap();
        assert_eq!(fan.len(), 2);
        assert_eq!(parse_alias_name(fan, rest), Some(sha));
        assert_eq!(parse_alias_name("zz", rest), None);
        assert_eq!(parse_alias_name(fan, ".new-1-abc"), None);
    }
}

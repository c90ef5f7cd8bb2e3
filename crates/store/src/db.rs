//! The metadata DB (redb): image names, the objects each EROFS image
//! references, and other gc roots (snapshots, mounts).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use strata_tree::Digest;

use crate::StoreError;

/// name -> JSON [`ImageRecord`]
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images");
/// EROFS image id -> packed [`ObjectRef`]s (32-byte digest + u64 LE size each)
const IMAGE_OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("image_objects");
/// root owner (e.g. "snapshot/12", "mount//mnt/x") -> EROFS image id
const ROOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("roots");
/// Files committed into an image but not yet moved into `objects/`:
/// absolute path -> digest. See [`crate::Store::adopt_in_place`].
const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending_adoptions");
/// Counters; `released` grows with every change that can leave objects or
/// images unreferenced, so a sweep can be skipped when it has not moved.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RELEASED: &str = "released";

/// Notes, inside the caller's transaction, that something may have become
/// garbage.
fn note_release_in(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    let now = meta.get(RELEASED)?.map_or(0, |v| v.value());
    meta.insert(RELEASED, now.wrapping_add(1))?;
    Ok(())
}

/// A named image in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Id (digest) of the EROFS metadata image.
    pub erofs: String,
    pub layers: Vec<String>,
    pub created_unix: u64,
    /// Bytes of regular-file content in the image (each inode once).
    pub logical_bytes: u64,
    pub files: u64,
    pub inodes: u64,
    /// Set by `fsck --repair` when content the image needs is gone; a pull
    /// of the image imports it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
}

#[cfg(test)]
impl ImageRecord {
    /// A record of `name` naming EROFS image `erofs`, the rest made up.
    pub(crate) fn for_test(name: &str, erofs: &Digest) -> ImageRecord {
        ImageRecord {
            name: name.into(),
            manifest_digest: "sha256:m".into(),
            config_digest: "sha256:c".into(),
            erofs: erofs.to_hex(),
            layers: vec![],
            created_unix: 0,
            logical_bytes: 0,
            files: 0,
            inodes: 0,
            broken: None,
        }
    }
}

impl ImageRecord {
    pub fn erofs_id(&self) -> Result<Digest, StoreError> {
        self.erofs
            .parse()
            .map_err(|e: strata_tree::DigestParseError| StoreError::BadRecord {
                key: self.name.clone(),
                reason: e.to_string(),
            })
    }
}

/// One object an image references.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub digest: Digest,
    pub size: u64,
}

impl ObjectRef {
    /// The objects a tree's files point at, sorted and deduplicated.
    pub fn all_in(tree: &strata_tree::Tree) -> Vec<ObjectRef> {
        let mut out = Vec::new();
        tree.for_each_leaf(|id| {
            if let strata_tree::Content::File(strata_tree::FileData::Object { digest, size }) = &tree.leaf(id).content {
                out.push(ObjectRef {
                    digest: *digest,
                    size: *size,
                });
            }
        });
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn pack(objects: &[ObjectRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(objects.len() * 40);
    for object in objects {
        out.extend_from_slice(&object.digest.0);
        out.extend_from_slice(&object.size.to_le_bytes());
    }
    out
}

fn unpack(key: &str, bytes: &[u8]) -> Result<Vec<ObjectRef>, StoreError> {
    if !bytes.len().is_multiple_of(40) {
        return Err(StoreError::BadRecord {
            key: key.to_owned(),
            reason: format!("object list of {} bytes is not a multiple of 40", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(40)
        .map(|chunk| {
            let (digest, size) = chunk.split_at(32);
            ObjectRef {
                digest: Digest(digest.try_into().expect("32 bytes")),
                size: u64::from_le_bytes(size.try_into().expect("8 bytes")),
            }
        })
        .collect())
}

pub(crate) struct Db {
    db: Database,
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Multi-writer: `strata serve` and the CLI verbs share one store.
        let db = redb::Builder::new()
            .set_concurrency_mode(redb::ConcurrencyMode::MultiWriter)
            .create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(IMAGES)?;
        txn.open_table(IMAGE_OBJECTS)?;
        txn.open_table(ROOTS)?;
        txn.open_table(PENDING)?;
        txn.open_table(META)?;
        txn.open_table(crate::sha_index::SHA256_INDEX)?;
        txn.commit()?;
        Ok(Db { db })
    }

    /// A private in-memory copy of the DB at `path`, for a store on a
    /// read-only filesystem: reads see the file as it was; writes stay in
    /// memory and are lost.
    pub fn open_copy(path: &Path) -> Result<Self, StoreError> {
        use redb::StorageBackend;
        let bytes = std::fs::read(path).map_err(|e| StoreError::io("read", path, e))?;
        let backend = redb::backends::InMemoryBackend::new();
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        backend
            .set_len(len)
            .and_then(|()| backend.write(0, &bytes))
            .map_err(|e| StoreError::io("copy", path, std::io::Error::other(e.to_string())))?;
        let db = redb::Builder::new().create_with_backend(backend)?;
        Ok(Db { db })
    }

    pub fn raw(&self) -> &Database {
        &self.db
    }

    /// Removes, in one transaction, every row of `table` for which
    /// `dead(key, value)` holds; returns how many went.
    pub(crate) fn remove_where(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        dead: impl Fn(&[u8], &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let txn = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut rows = txn.open_table(table)?;
            let mut doomed = Vec::new();
            for row in rows.iter()? {
                let (key, value) = row?;
                if dead(key.value(), value.value()) {
                    doomed.push(key.value().to_vec());
                }
            }
            for key in doomed {
                rows.remove(key.as_slice())?;
                removed += 1;
            }
        }
        txn.commit()?;
        Ok(removed)
    }

    pub fn commit_image(
        &self,
        record: &ImageRecord,
        objects: &[ObjectRef],
        index_rows: &[([u8; 32], ObjectRef)],
    ) -> Result<(), StoreError> {
        let id = record.erofs_id()?;
        let json = serde_json::to_vec(record).expect("records serialize");
        let txn = self.db.begin_write()?;
        if !index_rows.is_empty() {
            crate::sha_index::put_in(&txn, index_rows)?;
        }
        {
            txn.open_table(IMAGE_OBJECTS)?
                .insert(id.0.as_slice(), pack(objects).as_slice())?;
            if txn
                .open_table(IMAGES)?
                .insert(record.name.as_str(), json.as_slice())?
                .is_some()
            {
                note_release_in(&txn)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The `released` counter: equal values mean nothing was released in
    /// between.
    pub fn released(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(RELEASED)?.map_or(0, |v| v.value()))
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        let Some(value) = table.get(name)? else {
            return Ok(None);
        };
        decode(name, value.value()).map(Some)
    }

    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            out.push(decode(key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Rewrites one image's record (its object list stays).
    pub fn update_image(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(record).expect("records serialize");
        let txn = self.db.begin_write()?;
        txn.open_table(IMAGES)?.insert(record.name.as_str(), json.as_slice())?;
        note_release_in(&txn)?;
        txn.commit()?;
        Ok(())
    }

    pub fn remove_image(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = txn.open_table(IMAGES)?.remove(name)?.is_some();
        if removed {
            note_release_in(&txn)?;
        }
        txn.commit()?;
        Ok(removed)
    }

    pub fn image_objects(&self, id: &Digest) -> Result<Vec<ObjectRef>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGE_OBJECTS)?;
        match table.get(id.0.as_slice())? {
            Some(value) => unpack(&id.to_hex(), value.value()),
            None => Ok(Vec::new()),
        }
    }

    pub fn add_root(&self, owner: &str, id: &Digest, objects: &[ObjectRef]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        add_root_in(&txn, owner, id, objects)?;
        txn.commit()?;
        Ok(())
    }

    pub fn remove_root(&self, owner: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = remove_root_in(&txn, owner)?;
        txn.commit()?;
        Ok(removed)
    }

    pub fn pending(&self) -> Result<Vec<(PathBuf, Digest)>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(PENDING)?.iter()? {
            let (path, digest) = row?;
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(path.value()));
            if let Ok(bytes) = <[u8; 32]>::try_from(digest.value()) {
                out.push((path, Digest(bytes)));
            }
        }
        Ok(out)
    }

    pub fn forget_pending(&self, files: &[(PathBuf, Digest)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        forget_pending_in(&txn, files)?;
        txn.commit()?;
        Ok(())
    }

    /// The names of every gc root.
    pub fn roots(&self) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(ROOTS)?.iter()? {
            out.push(row?.0.value().to_owned());
        }
        Ok(out)
    }

    pub fn root_image(&self, owner: &str) -> Result<Option<Digest>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROOTS)?;
        let Some(value) = table.get(owner)? else {
            return Ok(None);
        };
        let bytes: [u8; 32] = value.value().try_into().map_err(|_| StoreError::BadRecord {
            key: owner.to_owned(),
            reason: "root does not hold a 32-byte image id".into(),
        })?;
        Ok(Some(Digest(bytes)))
    }

    /// Every EROFS image id that an image name or a root keeps alive.
    pub fn live_images(&self) -> Result<Vec<Digest>, StoreError> {
        let mut out = Vec::new();
        for record in self.images()? {
            out.push(record.erofs_id()?);
        }
        let txn = self.db.begin_read()?;
        for row in txn.open_table(ROOTS)?.iter()? {
            let (key, value) = row?;
            let bytes: [u8; 32] = value.value().try_into().map_err(|_| StoreError::BadRecord {
                key: key.value().to_owned(),
                reason: "root does not hold a 32-byte image id".into(),
            })?;
            out.push(Digest(bytes));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Every image id that has an object list.
    pub fn recorded_images(&self) -> Result<Vec<Digest>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut out = Vec::new();
        for row in txn.open_table(IMAGE_OBJECTS)?.iter()? {
            let (key, _) = row?;
            if let Ok(bytes) = <[u8; 32]>::try_from(key.value()) {
                out.push(Digest(bytes));
            }
        }
        Ok(out)
    }

    pub fn forget_images(&self, ids: &[Digest]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut refs = txn.open_table(IMAGE_OBJECTS)?;
            for id in ids {
                refs.remove(id.0.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<ImageRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::BadRecord {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Makes `owner` a gc root of image `id` inside the caller's transaction,
/// so it lands or not together with the caller's own rows.
pub(crate) fn add_root_in(
    txn: &WriteTransaction,
    owner: &str,
    id: &Digest,
    objects: &[ObjectRef],
) -> Result<(), StoreError> {
    let mut refs = txn.open_table(IMAGE_OBJECTS)?;
    if refs.get(id.0.as_slice())?.is_none() {
        refs.insert(id.0.as_slice(), pack(objects).as_slice())?;
    }
    if txn.open_table(ROOTS)?.insert(owner, id.0.as_slice())?.is_some() {
        note_release_in(txn)?;
    }
    Ok(())
}

/// Points every image name recorded with EROFS image `old` at `new`,
/// which references `objects`, inside the caller's transaction (a lazily
/// pulled image completed). Returns the names it repointed.
pub(crate) fn repoint_images_in(
    txn: &WriteTransaction,
    old: &Digest,
    new: &Digest,
    objects: &[ObjectRef],
) -> Result<Vec<String>, StoreError> {
    let mut images = txn.open_table(IMAGES)?;
    let mut moved = Vec::new();
    for row in images.iter()? {
        let (key, value) = row?;
        let mut record = decode(key.value(), value.value())?;
        if record.erofs_id().ok() == Some(*old) {
            record.erofs = new.to_hex();
            moved.push(record);
        }
    }
    for record in &moved {
        let json = serde_json::to_vec(record).expect("records serialize");
        images.insert(record.name.as_str(), json.as_slice())?;
    }
    if !moved.is_empty() {
        txn.open_table(IMAGE_OBJECTS)?
            .insert(new.0.as_slice(), pack(objects).as_slice())?;
        note_release_in(txn)?;
    }
    Ok(moved.into_iter().map(|r| r.name).collect())
}

/// Drops the gc root `owner` inside the caller's transaction.
pub(crate) fn remove_root_in(txn: &WriteTransaction, owner: &str) -> Result<bool, StoreError> {
    let removed = txn.open_table(ROOTS)?.remove(owner)?.is_some();
    if removed {
        note_release_in(txn)?;
    }
    Ok(removed)
}

/// Records, inside the caller's transaction, files that are to be moved
/// into `objects/` once it commits; any later open of the store finishes
/// the move if the caller cannot.
pub(crate) fn add_pending_in(txn: &WriteTransaction, files: &[(PathBuf, Digest)]) -> Result<(), StoreError> {
    let mut table = txn.open_table(PENDING)?;
    for (path, digest) in files {
        table.insert(path.as_os_str().as_bytes(), digest.0.as_slice())?;
    }
    Ok(())
}

/// Drops pending rows inside the caller's transaction.
pub(crate) fn forget_pending_in(txn: &WriteTransaction, files: &[(PathBuf, Digest)]) -> Result<(), StoreError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(PENDING)?;
    for (path, _) in files {
        table.remove(path.as_os_str().as_bytes())?;
    }
    Ok(())
}

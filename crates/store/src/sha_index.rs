//! The SHA-256 index: a file's plain SHA-256 (what eStargz and zstd:chunked
//! tables of contents name) -> the object that holds it (its fs-verity
//! digest and size). Partial pulls ask it which files the store already has.
//!
//! A row is a fact about two hashes of one content, written only where
//! strata hashed the bytes both ways itself; it stays true whether or not
//! the object exists. So rows may be written before their objects are
//! published, and a lookup answers only for objects that exist now. gc
//! drops the rows of the objects it removes, in its own transaction.

use redb::{ReadableDatabase, ReadableTableMetadata, TableDefinition};
use strata_tree::Digest;

use crate::{ObjectRef, Store, StoreError};

/// sha256 (32 bytes) -> fs-verity digest (32 bytes) + size (u64 LE)
pub(crate) const SHA256_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sha256_index");

fn decode(bytes: &[u8]) -> Option<ObjectRef> {
    let (digest, size) = (bytes.get(..32)?, bytes.get(32..40)?);
    if bytes.len() != 40 {
        return None;
    }
    Some(ObjectRef {
        digest: Digest(digest.try_into().ok()?),
        size: u64::from_le_bytes(size.try_into().ok()?),
    })
}

impl Store {
    /// For each SHA-256, the object of the store that holds that content, if
    /// the index knows one and the object exists. Holding the store's shared
    /// lock keeps an answer true until the lock is released.
    pub fn objects_by_sha256(&self, sha256s: &[[u8; 32]]) -> Result<Vec<Option<ObjectRef>>, StoreError> {
        let txn = self.inner.db.raw().begin_read()?;
        let table = match txn.open_table(SHA256_INDEX) {
            Ok(table) => table,
            // A store opened read-only before the table existed.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; sha256s.len()]),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(sha256s.len());
        for sha in sha256s {
            let found = match table.get(sha.as_slice())? {
                Some(value) => decode(value.value()),
                None => None,
            };
            out.push(match found {
                Some(object) if self.has_object(&object.digest)? => Some(object),
                _ => None,
            });
        }
        Ok(out)
    }

    /// Records that the content with SHA-256 `sha` is the object `object`.
    /// The caller has hashed the same bytes both ways.
    pub fn record_sha256(&self, rows: &[([u8; 32], ObjectRef)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let txn = self.inner.db.raw().begin_write()?;
        put_in(&txn, rows)?;
        txn.commit()?;
        Ok(())
    }

    /// How many rows the index has (for tests and `df`-like reports).
    pub fn sha256_index_len(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.raw().begin_read()?;
        match txn.open_table(SHA256_INDEX) {
            Ok(table) => Ok(table.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// Inserts index rows inside the caller's transaction.
pub(crate) fn put_in(txn: &redb::WriteTransaction, rows: &[([u8; 32], ObjectRef)]) -> Result<(), StoreError> {
    let mut table = txn.open_table(SHA256_INDEX)?;
    for (sha, object) in rows {
        let mut value = [0u8; 40];
        value[..32].copy_from_slice(&object.digest.0);
        value[32..].copy_from_slice(&object.size.to_le_bytes());
        table.insert(sha.as_slice(), value.as_slice())?;
    }
    Ok(())
}

/// Drops, in one transaction, every row whose object is not in `live`
/// (gc has just removed those objects, or never had them).
pub(crate) fn forget_dead(store: &Store, live: &std::collections::HashSet<Digest>) -> Result<u64, StoreError> {
    store.inner.db.remove_where(SHA256_INDEX, |_, value| {
        decode(value).is_none_or(|o| !live.contains(&o.digest))
    })
}

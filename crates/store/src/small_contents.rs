//! Small contents by SHA-256: the bytes of files of at most
//! [`strata_erofs::INLINE_MAX`] bytes, which live inline in EROFS images
//! rather than as objects, so the SHA-256 index cannot name them. A
//! partial pull that finds a file here takes its bytes from the row
//! instead of fetching them.
//!
//! - *A row*: SHA-256 (32 bytes) -> the content (1 to `INLINE_MAX` bytes).
//!   It is a fact about bytes, true whatever images exist, written only by
//!   an import that read (and, for a partial pull, checked) those bytes.
//!   No file goes with it: writing rows is one DB commit, and a crash
//!   before it loses rows, never leaves a wrong one.
//! - *Trust*: a lookup hashes each row's bytes and answers only where they
//!   hash to the key, so a hostile or damaged row is never used; fsck
//!   reports such rows (`repair` deletes them), and the next import that
//!   reads the content rewrites its row.
//! - *Bounded*: at most [`MAX_ROWS`] rows (about 36 MB at worst); once
//!   full, new contents are not recorded until gc makes room. gc keeps only
//!   the rows whose content a live image holds inline.

use std::collections::HashSet;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use sha2::{Digest as _, Sha256};
use strata_tree::{Content, Digest, FileData};

use crate::{ObjectRef, Store, StoreError};

/// sha256 (32 bytes) -> content (1 to INLINE_MAX bytes)
pub(crate) const SMALL_CONTENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("small_contents");

/// Rows the table may hold.
pub const MAX_ROWS: u64 = 65_536;

/// Whether `bytes` may be a row's content.
fn fits(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.len() <= strata_erofs::INLINE_MAX
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Store {
    /// For each SHA-256, the small content the store keeps under it, if a
    /// row holds one whose bytes hash to it (others are ignored). Read in
    /// one transaction.
    pub fn small_contents(&self, sha256s: &[[u8; 32]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let txn = self.inner.db.raw().begin_read()?;
        let table = match txn.open_table(SMALL_CONTENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![None; sha256s.len()]),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::with_capacity(sha256s.len());
        for sha in sha256s {
            let found = table.get(sha.as_slice())?.map(|v| v.value().to_vec());
            out.push(found.filter(|bytes| fits(bytes) && sha256(bytes) == *sha));
        }
        Ok(out)
    }

    /// An import's facts in one commit: its SHA-256 index rows (see
    /// [`Store::record_sha256`]) and its small contents, each hashed here
    /// (so a row is always true); contents that are empty or over
    /// `INLINE_MAX` are skipped, and so is every new one once the table
    /// holds [`MAX_ROWS`]. Nothing is written (no commit is paid) when
    /// there are no index rows and every small content has its row
    /// already. Returns how many small-content rows are new.
    pub fn record_contents(&self, index_rows: &[([u8; 32], ObjectRef)], small: &[&[u8]]) -> Result<u64, StoreError> {
        let new = self.lacking_rows(small)?;
        if index_rows.is_empty() && new.is_empty() {
            return Ok(0);
        }
        let txn = self.inner.db.raw().begin_write()?;
        crate::sha_index::put_in(&txn, index_rows)?;
        let added = put_in(&txn, &new)?;
        txn.commit()?;
        Ok(added)
    }

    /// The contents of `small` that may be rows and are not yet, each once.
    fn lacking_rows<'c>(&self, small: &[&'c [u8]]) -> Result<Vec<&'c [u8]>, StoreError> {
        let mut candidates: Vec<&[u8]> = small.iter().copied().filter(|c| fits(c)).collect();
        candidates.sort_unstable();
        candidates.dedup();
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let txn = self.inner.db.raw().begin_read()?;
        let table = match txn.open_table(SMALL_CONTENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(candidates),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for bytes in candidates {
            if table.get(sha256(bytes).as_slice())?.is_none_or(|v| v.value() != bytes) {
                out.push(bytes);
            }
        }
        Ok(out)
    }

    /// How many rows the table has.
    pub fn small_contents_len(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.raw().begin_read()?;
        match txn.open_table(SMALL_CONTENTS) {
            Ok(table) => Ok(table.len()?),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a row as given, unchecked: for tests of what a damaged or
    /// hostile row does.
    #[doc(hidden)]
    pub fn put_small_content_unchecked(&self, sha256: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self.inner.db.raw().begin_write()?;
        txn.open_table(SMALL_CONTENTS)?.insert(sha256.as_slice(), bytes)?;
        txn.commit()?;
        Ok(())
    }
}

/// Inserts `contents`' rows inside the caller's transaction (a row whose
/// bytes are not its key's is rewritten); how many are new.
pub(crate) fn put_in(txn: &WriteTransaction, contents: &[&[u8]]) -> Result<u64, StoreError> {
    let mut table = txn.open_table(SMALL_CONTENTS)?;
    let mut rows = table.len()?;
    let mut added = 0;
    for bytes in contents.iter().filter(|c| fits(c)) {
        let key = sha256(bytes);
        let existing = table.get(key.as_slice())?.map(|v| v.value() == *bytes);
        match existing {
            Some(true) => continue,
            // A damaged row: the bytes just read replace it.
            Some(false) => {
                table.insert(key.as_slice(), *bytes)?;
                continue;
            }
            None => {}
        }
        if rows >= MAX_ROWS {
            tracing::debug!(limit = MAX_ROWS, "the small-content table is full; gc makes room");
            break;
        }
        table.insert(key.as_slice(), *bytes)?;
        rows += 1;
        added += 1;
    }
    Ok(added)
}

/// Drops every row whose content no image in `live` holds inline (gc has
/// the store to itself). An image that cannot be read keeps every row.
pub(crate) fn forget_dead(store: &Store, live: &HashSet<Digest>) -> Result<u64, StoreError> {
    if store.small_contents_len()? == 0 {
        return Ok(0);
    }
    let mut held: HashSet<[u8; 32]> = HashSet::new();
    for id in live {
        let read = store
            .read_image(id)
            .ok()
            .and_then(|bytes| strata_erofs::read_tree(&bytes).ok());
        let Some(tree) = read else {
            tracing::warn!(image = %id, "cannot read a live image; the small-content table is not swept");
            return Ok(0);
        };
        tree.for_each_leaf(|id| {
            if let Content::File(FileData::Inline(bytes)) = &tree.leaf(id).content {
                if fits(bytes) {
                    held.insert(sha256(bytes));
                }
            }
        });
    }
    store.inner.db.remove_where(SMALL_CONTENTS, |key, _| {
        !<[u8; 32]>::try_from(key).is_ok_and(|k| held.contains(&k))
    })
}

/// Rows whose bytes do not hash to their key, or are no small content;
/// `repair` deletes them. Returns their keys (the first 32 bytes of a key
/// of another length).
pub(crate) fn check(store: &Store, repair: bool) -> Result<Vec<Digest>, StoreError> {
    let bad: Vec<Vec<u8>> = {
        let txn = store.inner.db.raw().begin_read()?;
        let table = match txn.open_table(SMALL_CONTENTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut bad = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            let (key, value) = (key.value(), value.value());
            if !(fits(value) && sha256(value).as_slice() == key) {
                bad.push(key.to_vec());
            }
        }
        bad
    };
    if repair && !bad.is_empty() {
        let txn = store.inner.db.raw().begin_write()?;
        {
            let mut table = txn.open_table(SMALL_CONTENTS)?;
            for key in &bad {
                table.remove(key.as_slice())?;
            }
        }
        txn.commit()?;
    }
    Ok(bad
        .iter()
        .map(|k| {
            let mut d = [0u8; 32];
            let n = k.len().min(32);
            d[..n].copy_from_slice(&k[..n]);
            Digest(d)
        })
        .collect())
}

#[cfg(test)]
mod tests;

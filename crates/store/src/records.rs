//! Rows that higher layers keep in the store's DB, and the typed
//! transaction through which they change together with the store's own
//! rows (gc roots, journaled moves). The snapshotter keeps its snapshots
//! here, so a Commit's row, its image's gc root and its pending moves land
//! in one commit, and it never opens a redb table itself.

use std::path::PathBuf;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use strata_tree::Digest;

use crate::{db, ObjectRef, Store, StoreError};

/// A table of rows: string keys, byte values the owner encodes.
#[derive(Clone, Copy)]
pub struct RecordTable(TableDefinition<'static, &'static str, &'static [u8]>);

impl RecordTable {
    pub const fn new(name: &'static str) -> Self {
        RecordTable(TableDefinition::new(name))
    }
}

/// A named counter, kept in `table` under `key`.
#[derive(Clone, Copy)]
pub struct Counter {
    table: TableDefinition<'static, &'static str, u64>,
    key: &'static str,
}

impl Counter {
    pub const fn new(table: &'static str, key: &'static str) -> Self {
        Counter {
            table: TableDefinition::new(table),
            key,
        }
    }
}

impl Store {
    /// Creates `tables` and `counters`' tables if they are missing.
    pub fn ensure_tables(&self, tables: &[RecordTable], counters: &[Counter]) -> Result<(), StoreError> {
        let txn = self.begin()?;
        for table in tables {
            txn.txn.open_table(table.0)?;
        }
        for counter in counters {
            txn.txn.open_table(counter.table)?;
        }
        txn.commit()
    }

    /// The row `key` of `table`.
    pub fn record(&self, table: RecordTable, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.records_of(table, &[key])?.pop().flatten())
    }

    /// The rows `keys` of `table`, read in one transaction.
    pub fn records_of<K: AsRef<str>>(
        &self,
        table: RecordTable,
        keys: &[K],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let txn = self.inner.db.raw().begin_read()?;
        let rows = match txn.open_table(table.0) {
            Ok(rows) => rows,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(keys.iter().map(|_| None).collect()),
            Err(e) => return Err(e.into()),
        };
        keys.iter()
            .map(|key| Ok(rows.get(key.as_ref())?.map(|v| v.value().to_vec())))
            .collect()
    }

    /// Every row of `table`, in key order.
    pub fn records(&self, table: RecordTable) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.inner.db.raw().begin_read()?;
        let rows = match txn.open_table(table.0) {
            Ok(rows) => rows,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for row in rows.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Starts a write transaction; nothing it does is seen until
    /// [`StoreTxn::commit`], and dropping it undoes all of it.
    pub fn begin(&self) -> Result<StoreTxn<'_>, StoreError> {
        Ok(StoreTxn {
            txn: self.inner.db.raw().begin_write()?,
            store: self,
        })
    }
}

/// One write transaction over the store's DB.
pub struct StoreTxn<'s> {
    txn: WriteTransaction,
    store: &'s Store,
}

impl StoreTxn<'_> {
    pub fn put_record(&self, table: RecordTable, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.txn.open_table(table.0)?.insert(key, value)?;
        Ok(())
    }

    /// Writes each row unless the table has one for its key already, with
    /// the table opened once (opening it per row cost a layer of 5,000
    /// rows milliseconds); how many it wrote.
    pub fn put_records_if_absent<'r>(
        &self,
        table: RecordTable,
        rows: impl IntoIterator<Item = (&'r str, &'r [u8])>,
    ) -> Result<usize, StoreError> {
        let mut table = self.txn.open_table(table.0)?;
        let mut written = 0;
        for (key, value) in rows {
            if table.get(key)?.is_none() {
                table.insert(key, value)?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Whether there was a row to delete.
    pub fn delete_record(&self, table: RecordTable, key: &str) -> Result<bool, StoreError> {
        Ok(self.txn.open_table(table.0)?.remove(key)?.is_some())
    }

    /// The counter's next value (1 first), counted up.
    pub fn next(&self, counter: Counter) -> Result<u64, StoreError> {
        let mut table = self.txn.open_table(counter.table)?;
        let value = table.get(counter.key)?.map_or(1, |v| v.value());
        table.insert(counter.key, value + 1)?;
        Ok(value)
    }

    /// Makes `owner` a gc root of image `image`, which references `objects`.
    pub fn add_root(&self, owner: &str, image: &Digest, objects: &[ObjectRef]) -> Result<(), StoreError> {
        db::add_root_in(&self.txn, owner, image, objects)
    }

    /// Drops the gc root `owner`; whether it existed.
    pub fn remove_root(&self, owner: &str) -> Result<bool, StoreError> {
        db::remove_root_in(&self.txn, owner)
    }

    /// Journals `files` as moves into `objects/` to finish after the
    /// commit (see [`Store::adopt_in_place`]).
    pub fn journal_adoptions(&self, files: &[(PathBuf, Digest)]) -> Result<(), StoreError> {
        self.store.journal_adoptions_in(&self.txn, files)
    }

    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit()?;
        Ok(())
    }
}

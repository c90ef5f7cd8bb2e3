//! The snapshotter's tables in the store's redb database.
//!
//! ```text
//! snapshots       key (as containerd sent it) -> JSON Record
//! snapshot_meta   "next_id" -> next numeric id for snapshot directories
//! ```

use std::collections::BTreeMap;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::info_cache;
use crate::scratch::ScratchUse;
use crate::types::{Kind, Stamp, Usage};
use crate::{Info, SnapshotError};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const META: TableDefinition<&str, u64> = TableDefinition::new("snapshot_meta");
const NEXT_ID: &str = "next_id";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Names the directory `snapshots/<id>`.
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created: Stamp,
    pub updated: Stamp,
    /// Hex id of the committed snapshot's EROFS image.
    pub image: Option<String>,
    /// Usage measured at commit.
    pub usage: Option<Usage>,
    /// The sized or shared scratch of an active snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<ScratchUse>,
}

impl Record {
    /// What containerd is told of the snapshot `key`.
    pub(crate) fn info(&self, key: &str) -> Info {
        Info {
            name: key.to_owned(),
            parent: self.parent.clone().unwrap_or_default(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: self.created.into(),
            updated: self.updated.into(),
        }
    }
}

pub(crate) fn init(db: &Database) -> Result<(), SnapshotError> {
    let txn = db.begin_write()?;
    txn.open_table(SNAPSHOTS)?;
    txn.open_table(META)?;
    txn.commit()?;
    Ok(())
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|e| SnapshotError::BadRecord {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn get(db: &Database, key: &str) -> Result<Option<Record>, SnapshotError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOTS)?;
    let Some(value) = table.get(key)? else {
        return Ok(None);
    };
    decode(key, value.value()).map(Some)
}

/// The rows of `keys`, in order, from one read transaction.
pub(crate) fn get_many(db: &Database, keys: &[String]) -> Result<Vec<Option<Record>>, SnapshotError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOTS)?;
    keys.iter()
        .map(|key| match table.get(key.as_str())? {
            Some(value) => decode(key, value.value()).map(Some),
            None => Ok(None),
        })
        .collect()
}

pub(crate) fn all(db: &Database) -> Result<Vec<(String, Record)>, SnapshotError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(SNAPSHOTS) {
        Ok(table) => table,
        // A store the snapshotter never opened has no snapshots.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        out.push((k.value().to_owned(), decode(k.value(), v.value())?));
    }
    Ok(out)
}

/// Takes the next directory id inside `txn`.
pub(crate) fn next_id(txn: &WriteTransaction) -> Result<u64, SnapshotError> {
    let mut meta = txn.open_table(META)?;
    let id = meta.get(NEXT_ID)?.map_or(1, |v| v.value());
    meta.insert(NEXT_ID, id + 1)?;
    Ok(id)
}

/// Writes `key`'s row; only under the snapshotter's lock (see `info_cache`).
pub(crate) fn put(txn: &WriteTransaction, key: &str, record: &Record) -> Result<(), SnapshotError> {
    info_cache::note_write(key);
    let json = serde_json::to_vec(record).expect("records serialize");
    txn.open_table(SNAPSHOTS)?.insert(key, json.as_slice())?;
    Ok(())
}

/// Removes `key`'s row; only under the snapshotter's lock.
pub(crate) fn delete(txn: &WriteTransaction, key: &str) -> Result<(), SnapshotError> {
    info_cache::note_write(key);
    txn.open_table(SNAPSHOTS)?.remove(key)?;
    Ok(())
}

pub(crate) fn has_children(db: &Database, key: &str) -> Result<bool, SnapshotError> {
    Ok(all(db)?.iter().any(|(_, r)| r.parent.as_deref() == Some(key)))
}

//! The snapshotter's rows in the store's DB, read and written through the
//! store's typed transaction so that they change together with gc roots.
//!
//! ```text
//! snapshots       key (as containerd sent it) -> JSON Record
//! snapshot_meta   "next_id" -> next numeric id for snapshot directories
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strata_store::{Counter, RecordTable, Store, StoreTxn};

use crate::info_cache;
use crate::scratch::ScratchUse;
use crate::types::{Kind, Stamp, Usage};
use crate::{Info, SnapshotError};

const SNAPSHOTS: RecordTable = RecordTable::new("snapshots");
const NEXT_ID: Counter = Counter::new("snapshot_meta", "next_id");

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

pub(crate) fn init(store: &Store) -> Result<(), SnapshotError> {
    Ok(store.ensure_tables(&[SNAPSHOTS], &[NEXT_ID])?)
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, SnapshotError> {
    serde_json::from_slice(bytes).map_err(|e| SnapshotError::BadRecord {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn get(store: &Store, key: &str) -> Result<Option<Record>, SnapshotError> {
    store
        .record(SNAPSHOTS, key)?
        .map(|bytes| decode(key, &bytes))
        .transpose()
}

pub(crate) fn get_many(store: &Store, keys: &[String]) -> Result<Vec<Option<Record>>, SnapshotError> {
    keys.iter()
        .zip(store.records_of(SNAPSHOTS, keys)?)
        .map(|(key, row)| row.map(|bytes| decode(key, &bytes)).transpose())
        .collect()
}

pub(crate) fn all(store: &Store) -> Result<Vec<(String, Record)>, SnapshotError> {
    store
        .records(SNAPSHOTS)?
        .into_iter()
        .map(|(key, bytes)| {
            let record = decode(&key, &bytes)?;
            Ok((key, record))
        })
        .collect()
}

pub(crate) fn next_id(txn: &StoreTxn<'_>) -> Result<u64, SnapshotError> {
    Ok(txn.next(NEXT_ID)?)
}

pub(crate) fn put(txn: &StoreTxn<'_>, key: &str, record: &Record) -> Result<(), SnapshotError> {
    info_cache::note_write(key);
    let json = serde_json::to_vec(record).expect("records serialize");
    Ok(txn.put_record(SNAPSHOTS, key, &json)?)
}

pub(crate) fn delete(txn: &StoreTxn<'_>, key: &str) -> Result<(), SnapshotError> {
    info_cache::note_write(key);
    txn.delete_record(SNAPSHOTS, key)?;
    Ok(())
}

pub(crate) fn has_children(store: &Store, key: &str) -> Result<bool, SnapshotError> {
    Ok(all(store)?.iter().any(|(_, r)| r.parent.as_deref() == Some(key)))
}

//! Counters a pull updates as it goes; the CLI draws them. [`Received`]
//! counts what a source received, where the bytes arrive.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Progress {
    /// Compressed bytes read from the source: layers read whole, and the
    /// file data of layers pulled partially (not their TOCs). Drawn as the
    /// pull's progress; [`Received`] counts what crossed the wire.
    pub bytes: AtomicU64,
    /// Compressed bytes the manifest announces.
    pub bytes_total: AtomicU64,
    pub layers_done: AtomicU64,
    pub layers_total: AtomicU64,
    pub files: AtomicU64,
    /// Contents written to the store for the first time.
    pub new_objects: AtomicU64,
    /// Contents the store already had (or saw earlier in this pull).
    pub dedup_hits: AtomicU64,
}

impl Progress {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Body bytes a source received, counted where they arrive: a registry's
/// answers as read off the connection (a multipart answer's boundaries and
/// part headers included, HTTP headers not), a layout's files as read.
/// Give one to a source with `with_received`.
#[derive(Debug, Default)]
pub struct Received {
    /// Manifests, indexes and configs.
    pub documents: AtomicU64,
    /// Layer blobs, whole or by range (TOCs included).
    pub blobs: AtomicU64,
    /// Per blob digest, if kept ([`Received::per_blob`]).
    per_blob: Option<Mutex<HashMap<String, BlobReceived>>>,
}

/// What one blob's reads brought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobReceived {
    /// Requests for the whole blob.
    pub whole_reads: u64,
    pub whole_bytes: u64,
    /// By range, the layer's own metadata: footer, TOC, tar-split.
    pub metadata_bytes: u64,
    /// By range, file data.
    pub data_bytes: u64,
}

/// What a read of a blob is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobRead {
    Whole,
    Metadata,
    Data,
}

/// How a layer came into the store, from what its blob's reads brought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerFetch {
    /// Read whole (partial pulls off, no TOC, or a fallback).
    Whole,
    /// Read by range: its TOC and the files the store lacked.
    Partial,
    /// Only its TOC was read (the store had every file), or nothing.
    Present,
}

impl BlobReceived {
    pub fn total(&self) -> u64 {
        self.whole_bytes + self.metadata_bytes + self.data_bytes
    }

    pub fn fetch(&self) -> LayerFetch {
        if self.whole_reads > 0 {
            LayerFetch::Whole
        } else if self.data_bytes > 0 {
            LayerFetch::Partial
        } else {
            LayerFetch::Present
        }
    }
}

impl Received {
    /// Also keeps a [`BlobReceived`] per blob (for one pull, not a
    /// long-lived process).
    pub fn per_blob() -> Self {
        Received {
            per_blob: Some(Mutex::default()),
            ..Received::default()
        }
    }

    /// Every body byte received.
    pub fn total(&self) -> u64 {
        Progress::get(&self.documents) + Progress::get(&self.blobs)
    }

    /// What reads of `digest` brought (nothing if blobs are not kept apart).
    pub fn blob(&self, digest: &str) -> BlobReceived {
        self.per_blob
            .as_ref()
            .and_then(|map| map.lock().unwrap_or_else(|e| e.into_inner()).get(digest).copied())
            .unwrap_or_default()
    }

    pub(crate) fn document(&self, n: u64) {
        Progress::add(&self.documents, n);
    }

    /// A request for the whole blob was answered.
    pub(crate) fn whole_read(&self, digest: &str) {
        self.update(digest, |b| b.whole_reads += 1);
    }

    pub(crate) fn blob_bytes(&self, digest: &str, read: BlobRead, n: u64) {
        Progress::add(&self.blobs, n);
        self.update(digest, |b| match read {
            BlobRead::Whole => b.whole_bytes += n,
            BlobRead::Metadata => b.metadata_bytes += n,
            BlobRead::Data => b.data_bytes += n,
        });
    }

    fn update(&self, digest: &str, f: impl FnOnce(&mut BlobReceived)) {
        if let Some(map) = &self.per_blob {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            f(map.entry(digest.to_owned()).or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_told_apart_by_what_their_reads_brought() {
        let received = Received::per_blob();
        received.blob_bytes("a", BlobRead::Metadata, 10);
        received.blob_bytes("a", BlobRead::Data, 5);
        received.blob_bytes("b", BlobRead::Metadata, 7);
        received.blob_bytes("c", BlobRead::Metadata, 3);
        received.blob_bytes("c", BlobRead::Data, 2);
        received.whole_read("c");
        received.blob_bytes("c", BlobRead::Whole, 100);
        received.document(4);
        assert_eq!(received.blob("a").fetch(), LayerFetch::Partial);
        assert_eq!(received.blob("b").fetch(), LayerFetch::Present);
        assert_eq!(received.blob("c").fetch(), LayerFetch::Whole);
        assert_eq!(received.blob("never read").fetch(), LayerFetch::Present);
        assert_eq!(received.blob("c").total(), 105);
        assert_eq!(received.total(), 10 + 5 + 7 + 3 + 2 + 100 + 4);

        // Totals only: nothing per blob, the sums all the same.
        let totals = Received::default();
        totals.blob_bytes("a", BlobRead::Data, 5);
        totals.document(1);
        assert_eq!(totals.blob("a"), BlobReceived::default());
        assert_eq!(totals.total(), 6);
    }
}

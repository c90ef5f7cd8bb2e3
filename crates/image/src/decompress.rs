//! The first stage of a layer import: reads the raw blob, checks its size
//! against the descriptor (failing as soon as a source sends more) and its digest,
//! decompresses it on its own thread, stops a decompression bomb at the
//! configured limit, and checks the uncompressed digest (diff_id) on one
//! more thread, which passes the bytes on to the tar side.

use std::io::{self, Read};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::channel::{chunk_channel, Chunk, ChunkReader};
use crate::{ImportError, Progress};

const CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn from_media_type(media_type: &str) -> Result<Self, ImportError> {
        let known_layer = media_type.starts_with("application/vnd.oci.image.layer.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.");
        if !known_layer {
            return Err(ImportError::UnsupportedMediaType {
                media_type: media_type.to_owned(),
            });
        }
        if media_type.ends_with("+gzip") || media_type.ends_with(".tar.gzip") {
            Ok(Compression::Gzip)
        } else if media_type.ends_with("+zstd") {
            Ok(Compression::Zstd)
        } else if media_type.ends_with(".tar") {
            Ok(Compression::None)
        } else {
            Err(ImportError::UnsupportedMediaType {
                media_type: media_type.to_owned(),
            })
        }
    }
}

/// What one blob stream must hash to.
pub(crate) struct Expected {
    pub layer: String,
    pub blob_digest: String,
    /// The descriptor's size: the blob must be exactly this long.
    pub blob_size: u64,
    pub diff_id: Option<String>,
    pub limit: u64,
}

/// Hashes and counts a blob; a read past `expected` bytes fails at once.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    progress: Option<Arc<Progress>>,
    count: u64,
    expected: u64,
    /// Set when the source sent more than `expected`.
    overrun: bool,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R, expected: u64, progress: Option<Arc<Progress>>) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            progress,
            count: 0,
            expected,
            overrun: false,
        }
    }

    pub(crate) fn overran(&self) -> bool {
        self.overrun
    }

    /// Reads to the end and checks the size, then the digest.
    pub(crate) fn finish(mut self, digest: &str, what: &'static str) -> Result<(), ImportError> {
        let drained = io::copy(&mut self, &mut io::sink());
        if self.overrun {
            return Err(ImportError::BlobTooLong {
                digest: digest.to_owned(),
                expected: self.expected,
            });
        }
        drained.map_err(|e| ImportError::Io {
            what: format!("blob {digest}"),
            source: e,
        })?;
        if self.count != self.expected {
            return Err(ImportError::BlobSizeMismatch {
                digest: digest.to_owned(),
                actual: self.count,
                expected: self.expected,
            });
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        crate::manifest::expect_digest(what, digest, actual)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.overrun {
            return Err(io::Error::other("blob longer than its descriptor says"));
        }
        // One byte more than expected is enough to know.
        let room = self.expected.saturating_sub(self.count).saturating_add(1);
        let want = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > self.expected {
            self.overrun = true;
            return Err(io::Error::other("blob longer than its descriptor says"));
        }
        self.hasher.update(&buf[..n]);
        if let Some(progress) = &self.progress {
            Progress::add(&progress.bytes, n as u64);
        }
        Ok(n)
    }
}

/// Starts the decompressor thread. The tar side reads the returned reader to
/// its end, then joins the handle, which says whether every digest held.
pub(crate) fn spawn(
    raw: Box<dyn Read + Send>,
    compression: Compression,
    expected: Expected,
    progress: Arc<Progress>,
) -> (ChunkReader, JoinHandle<Result<(), ImportError>>) {
    let (tx, reader) = chunk_channel(8);
    let handle = std::thread::Builder::new()
        .name("strata-decompress".into())
        .spawn(move || {
            let result = run(raw, compression, &expected, progress, &tx);
            if let Err(e) = &result {
                let _ = tx.send(Err(io::Error::other(e.to_string())));
            }
            result
        })
        .expect("spawning a thread");
    (reader, handle)
}

fn run(
    raw: Box<dyn Read + Send>,
    compression: Compression,
    expected: &Expected,
    progress: Arc<Progress>,
    tx: &std::sync::mpsc::SyncSender<crate::channel::Chunk>,
) -> Result<(), ImportError> {
    let layer_err = |reason: String| ImportError::Layer {
        layer: expected.layer.clone(),
        reason,
    };
    let mut hashing = HashingReader::new(raw, expected.blob_size, Some(progress));
    let mut diff = DiffStage::start(tx);
    let mut total: u64 = 0;
    let mut decode_err = None;
    {
        let mut decoder: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut hashing),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut hashing)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&mut hashing).map_err(|e| layer_err(format!("zstd: {e}")))?)
            }
        };
        loop {
            let mut chunk = vec![0u8; CHUNK];
            let n = match read_full(&mut decoder, &mut chunk) {
                Ok(n) => n,
                Err(e) => {
                    decode_err = Some(e);
                    break;
                }
            };
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > expected.limit {
                return Err(ImportError::TooLarge {
                    layer: expected.layer.clone(),
                    limit: expected.limit,
                });
            }
            chunk.truncate(n);
            if !diff.push(chunk) {
                // The tar side stopped on an error of its own; that error is
                // the one to report (unless the diff_id's thread failed).
                return diff.finish().map(|_| ()).map_err(layer_err);
            }
        }
    }
    if hashing.overrun {
        return Err(ImportError::BlobTooLong {
            digest: expected.blob_digest.clone(),
            expected: expected.blob_size,
        });
    }
    if let Some(e) = decode_err {
        return Err(layer_err(format!("decompressing: {e}")));
    }
    hashing.finish(&expected.blob_digest, "layer blob")?;
    let Some(actual) = diff.finish().map_err(layer_err)? else {
        return Ok(()); // the tar side stopped: its error is the one to report
    };
    if let Some(diff_id) = &expected.diff_id {
        if &actual != diff_id {
            return Err(ImportError::DigestMismatch {
                what: "uncompressed layer (diff_id)",
                digest: diff_id.clone(),
                actual,
            });
        }
    }
    Ok(())
}

/// The uncompressed stream's SHA-256 (for the diff_id), on a thread of its
/// own that passes each chunk on to the tar side: on the decompressing
/// thread, a pull's slowest stage, it took a third of that thread's time.
enum DiffStage<'t> {
    Thread {
        to_hash: SyncSender<Vec<u8>>,
        /// The digest, or `None` if the tar side stopped reading.
        thread: JoinHandle<Option<String>>,
    },
    /// No thread could be started: hashed here.
    Inline { sha: Sha256, tx: &'t SyncSender<Chunk> },
}

/// Chunks queued for the diff_id's thread.
const DIFF_QUEUE: usize = 4;

impl<'t> DiffStage<'t> {
    fn start(tx: &'t SyncSender<Chunk>) -> Self {
        let (to_hash, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(DIFF_QUEUE);
        let forward = tx.clone();
        let started = std::thread::Builder::new()
            .name("strata-diffhash".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                for chunk in chunks {
                    sha.update(&chunk);
                    forward.send(Ok(chunk)).ok()?;
                }
                Some(format!("sha256:{}", hex::encode(sha.finalize())))
            });
        match started {
            Ok(thread) => DiffStage::Thread { to_hash, thread },
            Err(e) => {
                tracing::warn!("no thread for the layer's diff_id ({e}); hashing on the decompressing thread");
                DiffStage::Inline { sha: Sha256::new(), tx }
            }
        }
    }

    /// Passes `chunk` on; false once the tar side has stopped reading.
    fn push(&mut self, chunk: Vec<u8>) -> bool {
        match self {
            DiffStage::Thread { to_hash, .. } => to_hash.send(chunk).is_ok(),
            DiffStage::Inline { sha, tx } => {
                sha.update(&chunk);
                tx.send(Ok(chunk)).is_ok()
            }
        }
    }

    /// The digest of every chunk pushed, once all of them were passed on;
    /// `None` if the tar side stopped reading.
    fn finish(self) -> Result<Option<String>, String> {
        match self {
            DiffStage::Thread { to_hash, thread } => {
                drop(to_hash);
                thread.join().map_err(|_| "the diff_id's thread panicked".to_owned())
            }
            DiffStage::Inline { sha, .. } => Ok(Some(format!("sha256:{}", hex::encode(sha.finalize())))),
        }
    }
}

/// Reads until `buf` is full or the stream ends; returns how much it read.
pub(crate) fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        let table = [
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Compression::Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Compression::Zstd)),
            ("application/vnd.oci.image.layer.v1.tar", Some(Compression::None)),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Compression::Gzip),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Compression::Gzip),
            ),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", None),
            ("application/json", None),
        ];
        for (mt, want) in table {
            assert_eq!(Compression::from_media_type(mt).ok(), want, "{mt}");
        }
    }

    fn sha256(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// Decompresses `blob` (gzip) against `diff_id`: what the tar side read
    /// (and whether its reads ended well), and what the decompressing
    /// thread said.
    fn decompress(blob: Vec<u8>, diff_id: String, read_all: bool) -> (Vec<u8>, bool, Result<(), ImportError>) {
        let expected = Expected {
            layer: "test".into(),
            blob_digest: sha256(&blob),
            blob_size: blob.len() as u64,
            diff_id: Some(diff_id),
            limit: u64::MAX,
        };
        let raw: Box<dyn Read + Send> = Box::new(io::Cursor::new(blob));
        let (mut reader, handle) = spawn(raw, Compression::Gzip, expected, Arc::default());
        let mut read = Vec::new();
        let mut ended_well = true;
        if read_all {
            ended_well = reader.read_to_end(&mut read).is_ok();
        } else {
            let mut first = vec![0u8; 10];
            reader.read_exact(&mut first).unwrap();
            read = first;
            drop(reader);
        }
        (read, ended_well, handle.join().unwrap())
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn the_diff_id_is_checked_over_every_chunk_passed_on() {
        // Several chunks, so the diff_id's thread passes many on.
        let data: Vec<u8> = (0..CHUNK * 5 + 123)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let (read, ended_well, result) = decompress(gzip(&data), sha256(&data), true);
        assert!(read == data && ended_well, "the tar side reads every byte, in order");
        result.unwrap();

        let (read, ended_well, result) = decompress(gzip(&data), sha256(b"other bytes"), true);
        assert!(read == data, "every byte is passed on before the verdict");
        assert!(!ended_well, "the tar side sees the mismatch as a read error");
        match result {
            Err(ImportError::DigestMismatch { what, actual, .. }) => {
                assert_eq!(what, "uncompressed layer (diff_id)");
                assert_eq!(actual, sha256(&data));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_tar_side_that_stops_reading_ends_the_stream_without_a_verdict() {
        let data = vec![5u8; CHUNK * 20];
        let (read, _, result) = decompress(gzip(&data), sha256(b"not checked"), false);
        assert_eq!(read.len(), 10);
        // The tar side's own error is the one reported.
        result.unwrap();
    }
}

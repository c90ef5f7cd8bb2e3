//! The first stage of a layer import: reads the raw blob, checks its size
//! against the descriptor (failing as soon as a source sends more) and its digest,
//! decompresses it on its own thread, checks the uncompressed digest
//! (diff_id) and stops a decompression bomb at the configured limit.

use std::io::{self, Read};
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use crate::channel::{chunk_channel, ChunkReader};
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
    let mut diff_hasher = Sha256::new();
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
            diff_hasher.update(&chunk);
            if tx.send(Ok(chunk)).is_err() {
                // The tar side stopped on an error of its own; that error is
                // the one to report.
                return Ok(());
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
    if let Some(diff_id) = &expected.diff_id {
        let actual = format!("sha256:{}", hex::encode(diff_hasher.finalize()));
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
}

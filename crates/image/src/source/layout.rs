//! An OCI image layout directory: `oci-layout`, `index.json`, `blobs/sha256/*`.

use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ranges::check_ranges;
use super::{BlobSource, Fetched};
use crate::manifest::{parse_document, Document};
use crate::progress::{BlobRead, Received};
use crate::reference::check_digest;
use crate::{Descriptor, ImportError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub struct LayoutSource {
    dir: PathBuf,
    tag: Option<String>,
    /// Bytes read from the layout's files.
    received: Arc<Received>,
}

impl LayoutSource {
    pub fn new(dir: &Path, tag: Option<&str>) -> Self {
        LayoutSource {
            dir: dir.to_owned(),
            tag: tag.map(str::to_owned),
            received: Arc::default(),
        }
    }

    /// Counts the bytes this source reads into `received`.
    pub fn with_received(mut self, received: Arc<Received>) -> Self {
        self.received = received;
        self
    }

    /// A blob as a stream, counted as a document or as a whole blob.
    fn stream(&self, desc: &Descriptor, read: Option<BlobRead>) -> Result<Box<dyn Read + Send>, ImportError> {
        let file = self.open(&desc.digest)?;
        if read.is_some() {
            self.received.whole_read(&desc.digest);
        }
        Ok(Box::new(Counted {
            inner: std::io::BufReader::with_capacity(256 * 1024, file),
            received: self.received.clone(),
            digest: desc.digest.clone(),
            read,
        }))
    }

    fn ranges_as(&self, desc: &Descriptor, ranges: &[Range<u64>], read: BlobRead) -> Result<Vec<Vec<u8>>, ImportError> {
        check_ranges(desc, ranges)?;
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let file = self.open(&desc.digest)?;
        let io_err = |e| ImportError::Io {
            what: format!("blob {} of {}", desc.digest, self.describe()),
            source: e,
        };
        let actual = file.metadata().map_err(io_err)?.len();
        if actual != desc.size {
            return Err(ImportError::BlobSizeMismatch {
                digest: desc.digest.clone(),
                actual,
                expected: desc.size,
            });
        }
        ranges
            .iter()
            .map(|range| {
                let len = usize::try_from(range.end - range.start)
                    .map_err(|_| io_err(std::io::Error::from(std::io::ErrorKind::OutOfMemory)))?;
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, range.start).map_err(io_err)?;
                self.received.blob_bytes(&desc.digest, read, len as u64);
                Ok(buf)
            })
            .collect()
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, ImportError> {
        let hex = check_digest(digest)?;
        Ok(self.dir.join("blobs/sha256").join(hex))
    }

    fn open(&self, digest: &str) -> Result<std::fs::File, ImportError> {
        let path = self.blob_path(digest)?;
        std::fs::File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImportError::MissingBlob {
                digest: digest.to_owned(),
                source_name: self.describe(),
            },
            _ => ImportError::Io {
                what: path.display().to_string(),
                source: e,
            },
        })
    }
}

impl BlobSource for LayoutSource {
    fn describe(&self) -> String {
        match &self.tag {
            Some(tag) => format!("oci:{}:{tag}", self.dir.display()),
            None => format!("oci:{}", self.dir.display()),
        }
    }

    fn root_document(&self) -> Result<Fetched, ImportError> {
        let index_path = self.dir.join("index.json");
        let io_err = |e| ImportError::Io {
            what: index_path.display().to_string(),
            source: e,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(&index_path)
            .map_err(io_err)?
            .take(super::MAX_DOCUMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        self.received.document(bytes.len() as u64);
        if bytes.len() as u64 > super::MAX_DOCUMENT {
            return Err(ImportError::DocumentTooLarge {
                what: "index",
                digest: index_path.display().to_string(),
                size: bytes.len() as u64,
                limit: super::MAX_DOCUMENT,
            });
        }
        let Document::Index(entries) = parse_document(&bytes, Some(crate::manifest::OCI_INDEX))? else {
            return Err(ImportError::Malformed {
                what: "index.json",
                reason: "not an image index".into(),
            });
        };
        let entry = match &self.tag {
            Some(tag) => entries
                .iter()
                .find(|e| e.annotations.get(REF_NAME) == Some(tag))
                .ok_or_else(|| ImportError::MissingTag {
                    tag: tag.clone(),
                    source_name: self.dir.display().to_string(),
                })?,
            None if entries.len() == 1 => &entries[0],
            None => {
                return Err(ImportError::MissingTag {
                    tag: String::new(),
                    source_name: format!(
                        "{} (it holds {} images: name one with :TAG)",
                        self.dir.display(),
                        entries.len()
                    ),
                })
            }
        };
        self.document(entry)
    }

    fn document(&self, desc: &Descriptor) -> Result<Fetched, ImportError> {
        Ok(Fetched {
            bytes: super::read_document(self.stream(desc, None)?, desc, "manifest")?,
            media_type: Some(desc.media_type.clone()),
            expected_digest: Some(desc.digest.clone()),
        })
    }

    fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>, ImportError> {
        super::read_document(self.stream(desc, None)?, desc, "blob")
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, ImportError> {
        self.stream(desc, Some(BlobRead::Whole))
    }

    fn read_ranges(&self, desc: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError> {
        self.ranges_as(desc, ranges, BlobRead::Data)
    }

    fn read_metadata_ranges(&self, desc: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError> {
        self.ranges_as(desc, ranges, BlobRead::Metadata)
    }
}

/// A blob's reader that counts what it reads: as a document (`read` is
/// `None`) or as the blob's bytes.
struct Counted<R> {
    inner: R,
    received: Arc<Received>,
    digest: String,
    read: Option<BlobRead>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.read {
            Some(read) => self.received.blob_bytes(&self.digest, read, n as u64),
            None => self.received.document(n as u64),
        }
        Ok(n)
    }
}

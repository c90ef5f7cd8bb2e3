//! An OCI image layout directory: `oci-layout`, `index.json`, `blobs/sha256/*`.

use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::ranges::check_ranges;
use super::{BlobSource, Fetched};
use crate::manifest::{parse_document, Document};
use crate::reference::check_digest;
use crate::{Descriptor, ImportError};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub struct LayoutSource {
    dir: PathBuf,
    tag: Option<String>,
}

impl LayoutSource {
    pub fn new(dir: &Path, tag: Option<&str>) -> Self {
        LayoutSource {
            dir: dir.to_owned(),
            tag: tag.map(str::to_owned),
        }
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
            bytes: super::read_document(self.open_blob(desc)?, desc, "manifest")?,
            media_type: Some(desc.media_type.clone()),
            expected_digest: Some(desc.digest.clone()),
        })
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, ImportError> {
        Ok(Box::new(std::io::BufReader::with_capacity(
            256 * 1024,
            self.open(&desc.digest)?,
        )))
    }

    fn read_ranges(&self, desc: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError> {
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
                Ok(buf)
            })
            .collect()
    }
}

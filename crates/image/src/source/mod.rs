//! Where images come from. A [`BlobSource`] hands out manifests and blobs;
//! [`resolve`] turns a source into a verified manifest and config, the same
//! way for every source.

use std::io::Read;

use crate::manifest::{parse_config, parse_document, select_platform, sha256_digest, verify, Document};
use crate::{Descriptor, ImageConfig, ImportError, Manifest, Platform};

mod layout;
mod registry;

pub use layout::LayoutSource;
pub use registry::{RegistryAuth, RegistrySource};

/// A document fetched from a source, with what it is expected to hash to
/// when the source knows (a digest reference, a descriptor).
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
    pub expected_digest: Option<String>,
}

pub trait BlobSource: Send + Sync {
    /// For messages: "oci:/path:tag", "host/repo:tag".
    fn describe(&self) -> String;
    /// The manifest or index the reference names.
    fn root_document(&self) -> Result<Fetched, ImportError>;
    /// A manifest named by digest (from an index).
    fn document(&self, desc: &Descriptor) -> Result<Fetched, ImportError>;
    /// A whole small blob (a config), read up to 16 MiB; the caller verifies it.
    fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>, ImportError> {
        const MAX_DOCUMENT: u64 = 16 << 20;
        let mut out = Vec::new();
        self.open_blob(desc)?
            .take(MAX_DOCUMENT)
            .read_to_end(&mut out)
            .map_err(|e| ImportError::Io {
                what: desc.digest.clone(),
                source: e,
            })?;
        Ok(out)
    }
    /// A blob as a stream; the caller verifies it.
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, ImportError>;
}

/// A manifest and config, every digest checked.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    pub manifest_digest: String,
    pub manifest: Manifest,
    pub config_digest: String,
    pub config: ImageConfig,
}

fn checked(what: &'static str, fetched: &Fetched) -> Result<String, ImportError> {
    match &fetched.expected_digest {
        Some(digest) => {
            verify(what, &fetched.bytes, digest)?;
            Ok(digest.clone())
        }
        None => Ok(sha256_digest(&fetched.bytes)),
    }
}

pub fn resolve(source: &dyn BlobSource, platform: &Platform) -> Result<ResolvedImage, ImportError> {
    let root = source.root_document()?;
    let mut digest = checked("manifest", &root)?;
    let manifest = match parse_document(&root.bytes, root.media_type.as_deref())? {
        Document::Manifest(m) => m,
        Document::Index(entries) => {
            let entry = select_platform(&entries, platform)?;
            let fetched = source.document(entry)?;
            digest = checked("manifest", &fetched)?;
            match parse_document(&fetched.bytes, Some(&entry.media_type))? {
                Document::Manifest(m) => m,
                Document::Index(_) => {
                    return Err(ImportError::Malformed {
                        what: "index",
                        reason: "an index entry for the platform is itself an index".into(),
                    })
                }
            }
        }
    };
    let config_bytes = source.blob_bytes(&manifest.config)?;
    verify("config", &config_bytes, &manifest.config.digest)?;
    let config = parse_config(&config_bytes)?;
    if !config.diff_ids.is_empty() && config.diff_ids.len() != manifest.layers.len() {
        return Err(ImportError::Malformed {
            what: "image",
            reason: format!(
                "{} layers in the manifest but {} diff_ids in the config",
                manifest.layers.len(),
                config.diff_ids.len()
            ),
        });
    }
    Ok(ResolvedImage {
        manifest_digest: digest,
        config_digest: manifest.config.digest.clone(),
        manifest,
        config,
    })
}

//! Where images come from. A [`BlobSource`] hands out manifests and blobs;
//! [`resolve`] turns a source into a verified manifest and config, the same
//! way for every source.

use std::io::Read;
use std::ops::Range;

use crate::decompress::HashingReader;
use crate::manifest::{parse_config, parse_document, platform_candidates, sha256_digest, verify, Document};
use crate::{Descriptor, ImageConfig, ImportError, Manifest, Platform};

/// The most bytes of a manifest, index or config.
pub const MAX_DOCUMENT: u64 = 16 << 20;

mod layout;
pub mod multipart;
mod ranges;
mod registry;

pub use layout::LayoutSource;
pub use ranges::BlobRanges;
pub use registry::{RegistryConfig, RegistrySource, RegistryTarget};

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
    /// A whole small blob (a config, a manifest), of at most
    /// [`MAX_DOCUMENT`] bytes, its size and digest checked.
    fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>, ImportError> {
        read_document(self.open_blob(desc)?, desc, "blob")
    }
    /// A blob as a stream; the caller verifies it.
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, ImportError>;
    /// The bytes of each range of blob `desc`, in the order asked, each
    /// exactly `range.end - range.start` long. Ranges must be sorted,
    /// non-empty, non-overlapping and within `desc.size` (else
    /// [`ImportError::Malformed`]). The caller bounds how much one call
    /// asks for (tens of MiB); a source never returns more than asked.
    ///
    /// The bytes are *not* verified: a registry may answer with the wrong
    /// ones, and only the caller knows the digests (of TOC entries, of
    /// chunks) to check them against.
    ///
    /// [`ImportError::RangesUnsupported`] means the source cannot serve
    /// ranges (a registry ignored `Range` and sent the whole blob): the
    /// caller falls back to a whole-blob pull.
    fn read_ranges(&self, desc: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError>;
    /// [`read_ranges`](Self::read_ranges) of a layer's own metadata
    /// (footer, TOC, tar-split), which sources count apart from file data
    /// (see [`Received`](crate::Received)).
    fn read_metadata_ranges(&self, desc: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError> {
        self.read_ranges(desc, ranges)
    }
}

/// Reads a whole document of exactly `desc.size` bytes hashing to
/// `desc.digest`; refuses one over [`MAX_DOCUMENT`] before reading it.
pub(crate) fn read_document(raw: impl Read, desc: &Descriptor, what: &'static str) -> Result<Vec<u8>, ImportError> {
    if desc.size > MAX_DOCUMENT {
        return Err(ImportError::DocumentTooLarge {
            what,
            digest: desc.digest.clone(),
            size: desc.size,
            limit: MAX_DOCUMENT,
        });
    }
    // The reader stops one byte past the descriptor's size.
    let mut reader = HashingReader::new(raw, desc.size, None);
    let mut out = Vec::new();
    if let Err(e) = reader.by_ref().read_to_end(&mut out) {
        if reader.overran() {
            return Err(ImportError::BlobTooLong {
                digest: desc.digest.clone(),
                expected: desc.size,
            });
        }
        return Err(ImportError::Io {
            what: format!("{what} {}", desc.digest),
            source: e,
        });
    }
    reader.finish(&desc.digest, what)?;
    Ok(out)
}

/// Refuses a document fetched whole (by a transport that does not stream)
/// over [`MAX_DOCUMENT`], or of another size than its descriptor says.
fn check_size(what: &'static str, fetched: &Fetched, desc: Option<&Descriptor>) -> Result<(), ImportError> {
    let size = u64::try_from(fetched.bytes.len()).unwrap_or(u64::MAX);
    let digest = || {
        desc.map(|d| d.digest.clone())
            .or_else(|| fetched.expected_digest.clone())
            .unwrap_or_else(|| sha256_digest(&fetched.bytes))
    };
    if size > MAX_DOCUMENT {
        return Err(ImportError::DocumentTooLarge {
            what,
            digest: digest(),
            size,
            limit: MAX_DOCUMENT,
        });
    }
    match desc {
        Some(desc) if desc.size != size => Err(ImportError::BlobSizeMismatch {
            digest: desc.digest.clone(),
            actual: size,
            expected: desc.size,
        }),
        _ => Ok(()),
    }
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
    check_size("manifest", &root, None)?;
    let digest = checked("manifest", &root)?;
    let entries = match parse_document(&root.bytes, root.media_type.as_deref())? {
        Document::Manifest(manifest) => {
            let resolved = with_config(source, digest, manifest, None)?;
            return resolved.ok_or_else(|| ImportError::NoPlatform {
                platform: platform.to_string(),
            });
        }
        Document::Index(entries) => entries,
    };
    // containerd's rule: entries naming the platform first, then entries
    // without one, each kept only if its config names the platform.
    for entry in platform_candidates(&entries, platform) {
        let fetched = source.document(entry)?;
        check_size("manifest", &fetched, Some(entry))?;
        let digest = checked("manifest", &fetched)?;
        let manifest = match parse_document(&fetched.bytes, Some(&entry.media_type))? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(ImportError::Malformed {
                    what: "index",
                    reason: "an index entry for the platform is itself an index".into(),
                })
            }
        };
        let want = entry.platform.is_none().then_some(platform);
        if let Some(resolved) = with_config(source, digest, manifest, want).transpose() {
            return resolved;
        }
    }
    Err(ImportError::NoPlatform {
        platform: platform.to_string(),
    })
}

/// Fetches and checks the config; `None` if `want` is given and the config
/// names another platform.
fn with_config(
    source: &dyn BlobSource,
    digest: String,
    manifest: Manifest,
    want: Option<&Platform>,
) -> Result<Option<ResolvedImage>, ImportError> {
    let config_bytes = source.blob_bytes(&manifest.config)?;
    verify("config", &config_bytes, &manifest.config.digest)?;
    let config = parse_config(&config_bytes)?;
    if want.is_some_and(|p| !config.platform.matches(p)) {
        return Ok(None);
    }
    if config.diff_ids.len() != manifest.layers.len() {
        return Err(ImportError::Malformed {
            what: "image",
            reason: format!(
                "{} layers in the manifest but {} diff_ids in the config",
                manifest.layers.len(),
                config.diff_ids.len()
            ),
        });
    }
    Ok(Some(ResolvedImage {
        manifest_digest: digest,
        config_digest: manifest.config.digest.clone(),
        manifest,
        config,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{OCI_INDEX, OCI_MANIFEST};

    /// An OCI layout in a temp dir, written by hand.
    struct Layout {
        dir: tempfile::TempDir,
    }

    impl Layout {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
            Layout { dir }
        }

        fn blob(&self, bytes: &[u8], media_type: &str) -> serde_json::Value {
            let digest = sha256_digest(bytes);
            let hex = digest.strip_prefix("sha256:").unwrap();
            std::fs::write(self.dir.path().join("blobs/sha256").join(hex), bytes).unwrap();
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
        }

        /// A one-layer image; its manifest's descriptor.
        fn image(&self, diff_ids: &[&str], arch: &str) -> serde_json::Value {
            let layer = self.blob(b"layer", "application/vnd.oci.image.layer.v1.tar");
            let config = serde_json::json!({"architecture": arch, "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": diff_ids}});
            let config = self.blob(
                config.to_string().as_bytes(),
                "application/vnd.oci.image.config.v1+json",
            );
            let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config, "layers": [layer]});
            self.blob(manifest.to_string().as_bytes(), OCI_MANIFEST)
        }

        fn resolve(&self, index_entries: Vec<serde_json::Value>) -> Result<ResolvedImage, ImportError> {
            let inner = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index_entries});
            let inner = self.blob(inner.to_string().as_bytes(), OCI_INDEX);
            let top = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [inner]});
            std::fs::write(self.dir.path().join("index.json"), top.to_string()).unwrap();
            resolve(&LayoutSource::new(self.dir.path(), None), &Platform::host())
        }
    }

    fn host_arch() -> String {
        Platform::host().architecture
    }

    #[test]
    fn diff_ids_must_match_the_layers() {
        let layout = Layout::new();
        let image = layout.image(&[], &host_arch());
        let e = layout.resolve(vec![image]).unwrap_err();
        assert!(e.to_string().contains("1 layers in the manifest but 0 diff_ids"), "{e}");
    }

    #[test]
    fn index_entries_without_a_platform_are_checked_against_their_config() {
        let layout = Layout::new();
        let did = sha256_digest(b"layer");
        let host = layout.image(&[&did], &host_arch());
        let resolved = layout.resolve(vec![host.clone()]).unwrap();
        assert_eq!(resolved.manifest_digest, host["digest"].as_str().unwrap());

        // Only an entry for another platform: refused, as containerd does.
        let other = layout.image(&[&did], "s390x-not-this");
        let e = layout.resolve(vec![other.clone()]).unwrap_err();
        assert!(matches!(e, ImportError::NoPlatform { .. }), "{e}");
        // A platform-less entry after it that matches is taken.
        let resolved = layout.resolve(vec![other, host.clone()]).unwrap();
        assert_eq!(resolved.manifest_digest, host["digest"].as_str().unwrap());
    }

    #[test]
    fn document_sizes_are_checked() {
        let layout = Layout::new();
        let did = sha256_digest(b"layer");
        let mut image = layout.image(&[&did], &host_arch());
        let real = image["size"].as_u64().unwrap();

        image["size"] = (real + 1).into();
        let e = layout.resolve(vec![image.clone()]).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{real} bytes, descriptor says {}", real + 1)),
            "{e}"
        );

        image["size"] = (real - 1).into();
        let e = layout.resolve(vec![image.clone()]).unwrap_err();
        assert!(e.to_string().contains("more bytes than the descriptor's size"), "{e}");

        image["size"] = (MAX_DOCUMENT + 1).into();
        let e = layout.resolve(vec![image]).unwrap_err();
        assert!(
            e.to_string().contains("too large") && e.to_string().contains("16777216"),
            "{e}"
        );
    }
}

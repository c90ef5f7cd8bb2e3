//! Where a converted image goes: an OCI layout directory or a registry.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::NamedTempFile;

use super::ConvertError;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::reference::check_digest;
use crate::source::{RegistryTarget, MAX_DOCUMENT};
use crate::Platform;

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A place blobs and a manifest are written to. Blobs may be written from
/// several threads at once; the manifest comes last.
pub trait Destination: Sync {
    /// For messages: "oci:/path:tag", "host/repo:tag".
    fn describe(&self) -> String;
    /// A file to write a new blob into.
    fn temp_file(&self) -> Result<NamedTempFile, ConvertError>;
    fn has_blob(&self, digest: &str) -> Result<bool, ConvertError>;
    /// Stores `file` (its `size` bytes, hashing to `digest`), unless the
    /// destination has the blob.
    fn put_blob(&self, file: NamedTempFile, digest: &str, size: u64) -> Result<(), ConvertError>;
    /// Stores a small blob held in memory, unless the destination has it.
    fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ConvertError>;
    /// Stores the image manifest and names it.
    fn put_manifest(&self, manifest: &[u8], digest: &str, platform: &Platform) -> Result<(), ConvertError>;
}

/// An OCI image layout: `oci-layout`, `index.json`, `blobs/sha256/`. The
/// image is named `tag` in `index.json`, replacing an image of that name;
/// other images stay.
pub struct LayoutDestination {
    dir: PathBuf,
    tag: String,
}

impl LayoutDestination {
    /// Creates the layout's directories where missing.
    pub fn create(dir: &Path, tag: &str) -> Result<Self, ConvertError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(ConvertError::io(blobs.display().to_string()))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            write_atomically(dir, &marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(LayoutDestination {
            dir: dir.to_owned(),
            tag: tag.to_owned(),
        })
    }

    fn blob_path(&self, digest: &str) -> Result<PathBuf, ConvertError> {
        Ok(self.dir.join("blobs/sha256").join(check_digest(digest)?))
    }

    /// `index.json` as it is, or a new empty index.
    fn index(&self) -> Result<Value, ConvertError> {
        let path = self.dir.join("index.json");
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(file) => file
                .take(MAX_DOCUMENT + 1)
                .read_to_end(&mut bytes)
                .map_err(ConvertError::io(path.display().to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}))
            }
            Err(e) => return Err(ConvertError::io(path.display().to_string())(e)),
        };
        let bad = |reason: String| ConvertError::Destination {
            destination: self.describe(),
            reason,
        };
        if bytes.len() as u64 > MAX_DOCUMENT {
            return Err(bad(format!("index.json is over {MAX_DOCUMENT} bytes")));
        }
        let index: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("index.json: {e}")))?;
        if !index["manifests"].is_array() {
            return Err(bad("index.json has no manifests list".into()));
        }
        Ok(index)
    }
}

/// Writes `bytes` to `path` through a temporary file in `dir`.
fn write_atomically(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ConvertError> {
    let what = || path.display().to_string();
    let mut temp = NamedTempFile::with_prefix_in(".tmp-", dir).map_err(ConvertError::io(what()))?;
    temp.write_all(bytes).map_err(ConvertError::io(what()))?;
    persist(temp, path)
}

/// Names a finished temporary file, readable by all as a layout's files are.
fn persist(temp: NamedTempFile, path: &Path) -> Result<(), ConvertError> {
    let what = || path.display().to_string();
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(ConvertError::io(what()))?;
    temp.persist(path).map_err(|e| ConvertError::io(what())(e.error))?;
    Ok(())
}

impl Destination for LayoutDestination {
    fn describe(&self) -> String {
        format!("oci:{}:{}", self.dir.display(), self.tag)
    }

    fn temp_file(&self) -> Result<NamedTempFile, ConvertError> {
        let dir = self.dir.join("blobs/sha256");
        NamedTempFile::with_prefix_in(".tmp-", &dir).map_err(ConvertError::io(dir.display().to_string()))
    }

    fn has_blob(&self, digest: &str) -> Result<bool, ConvertError> {
        Ok(self.blob_path(digest)?.exists())
    }

    fn put_blob(&self, file: NamedTempFile, digest: &str, _size: u64) -> Result<(), ConvertError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        persist(file, &path)
    }

    fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ConvertError> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        write_atomically(&self.dir.join("blobs/sha256"), &path, bytes)
    }

    fn put_manifest(&self, manifest: &[u8], digest: &str, platform: &Platform) -> Result<(), ConvertError> {
        self.put_bytes(digest, manifest)?;
        let mut index = self.index()?;
        let mut platform_json = json!({"architecture": platform.architecture, "os": platform.os});
        if let Some(variant) = &platform.variant {
            platform_json["variant"] = json!(variant);
        }
        let entry = json!({
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "annotations": {REF_NAME: self.tag},
            "platform": platform_json,
        });
        let manifests = index["manifests"].as_array_mut().expect("checked by index()");
        manifests.retain(|m| m["annotations"][REF_NAME].as_str() != Some(self.tag.as_str()));
        manifests.push(entry);
        let bytes = serde_json::to_vec(&index).map_err(|e| ConvertError::Destination {
            destination: self.describe(),
            reason: e.to_string(),
        })?;
        write_atomically(&self.dir, &self.dir.join("index.json"), &bytes)
    }
}

/// A registry repository, pushed to with the registry configuration pulls use.
pub struct RegistryDestination {
    target: RegistryTarget,
}

impl RegistryDestination {
    pub fn new(target: RegistryTarget) -> Self {
        RegistryDestination { target }
    }
}

impl Destination for RegistryDestination {
    fn describe(&self) -> String {
        self.target.describe()
    }

    fn temp_file(&self) -> Result<NamedTempFile, ConvertError> {
        NamedTempFile::with_prefix("strata-convert-").map_err(ConvertError::io("a temporary file"))
    }

    fn has_blob(&self, digest: &str) -> Result<bool, ConvertError> {
        Ok(self.target.has_blob(digest)?)
    }

    fn put_blob(&self, file: NamedTempFile, digest: &str, size: u64) -> Result<(), ConvertError> {
        if !self.target.has_blob(digest)? {
            self.target.upload_blob(digest, size, file.as_file())?;
        }
        Ok(())
    }

    fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ConvertError> {
        if !self.target.has_blob(digest)? {
            self.target.upload_bytes(digest, bytes)?;
        }
        Ok(())
    }

    fn put_manifest(&self, manifest: &[u8], _digest: &str, _platform: &Platform) -> Result<(), ConvertError> {
        Ok(self.target.put_manifest(OCI_MANIFEST, manifest.to_vec())?)
    }
}

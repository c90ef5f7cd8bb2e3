//! Pure parsing of OCI and Docker manifests, indexes and configs, and the
//! choice of the host's platform from an index.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::reference::check_digest;
use crate::ImportError;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media types a registry is asked for, most preferred first.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.to_owned(),
            os: "linux".to_owned(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Index,
    Manifest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageConfig {
    pub diff_ids: Vec<String>,
    pub platform: Platform,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A manifest or an index, whichever the bytes hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Document {
    Index(Vec<Descriptor>),
    Manifest(Manifest),
}

fn malformed(what: &'static str, reason: impl ToString) -> ImportError {
    ImportError::Malformed {
        what,
        reason: reason.to_string(),
    }
}

/// Parses manifest or index bytes. `media_type` is what the transport said
/// (HTTP Content-Type or descriptor), if anything.
pub fn parse_document(bytes: &[u8], media_type: Option<&str>) -> Result<Document, ImportError> {
    let raw: RawDocument = serde_json::from_slice(bytes).map_err(|e| malformed("manifest", e))?;
    if raw.schema_version != Some(2) {
        return Err(malformed("manifest", "only schemaVersion 2 manifests are supported"));
    }
    let declared = raw.media_type.as_deref().or(media_type).unwrap_or_default();
    let kind = match declared {
        OCI_INDEX | DOCKER_LIST => MediaKind::Index,
        OCI_MANIFEST | DOCKER_MANIFEST => MediaKind::Manifest,
        "" if raw.manifests.is_some() => MediaKind::Index,
        "" if raw.layers.is_some() => MediaKind::Manifest,
        other => {
            return Err(ImportError::UnsupportedMediaType {
                media_type: other.to_owned(),
            })
        }
    };
    match kind {
        MediaKind::Index => {
            let entries = raw.manifests.ok_or_else(|| malformed("index", "no manifests"))?;
            for entry in &entries {
                check_digest(&entry.digest)?;
            }
            Ok(Document::Index(entries))
        }
        MediaKind::Manifest => {
            let config = raw.config.ok_or_else(|| malformed("manifest", "no config"))?;
            let layers = raw.layers.ok_or_else(|| malformed("manifest", "no layers"))?;
            check_digest(&config.digest)?;
            for layer in &layers {
                check_digest(&layer.digest)?;
            }
            Ok(Document::Manifest(Manifest { config, layers }))
        }
    }
}

impl Platform {
    /// Same OS and architecture, and the same variant when both name one.
    pub fn matches(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none() || self.variant.is_none() || self.variant == wanted.variant)
    }
}

/// The index entries that may be for `platform`, in containerd's order:
/// the first entry that names it, then every entry that names no platform
/// (the caller checks those against their config).
pub fn platform_candidates<'a>(entries: &'a [Descriptor], platform: &Platform) -> Vec<&'a Descriptor> {
    let named = entries
        .iter()
        .find(|e| e.platform.as_ref().is_some_and(|p| p.matches(platform)));
    named
        .into_iter()
        .chain(entries.iter().filter(|e| e.platform.is_none()))
        .collect()
}

pub fn parse_config(bytes: &[u8]) -> Result<ImageConfig, ImportError> {
    #[derive(Deserialize)]
    struct RootFs {
        #[serde(default)]
        diff_ids: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        architecture: String,
        #[serde(default)]
        os: String,
        #[serde(default)]
        variant: Option<String>,
        rootfs: RootFs,
    }
    let raw: Raw = serde_json::from_slice(bytes).map_err(|e| malformed("image config", e))?;
    for id in &raw.rootfs.diff_ids {
        check_digest(id)?;
    }
    Ok(ImageConfig {
        diff_ids: raw.rootfs.diff_ids,
        platform: Platform {
            architecture: raw.architecture,
            os: raw.os,
            variant: raw.variant,
        },
    })
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Fails unless `bytes` hash to `digest`.
pub fn verify(what: &'static str, bytes: &[u8], digest: &str) -> Result<(), ImportError> {
    check_digest(digest)?;
    expect_digest(what, digest, sha256_digest(bytes))
}

/// Fails unless `actual` (`sha256:<hex>`) is `digest`.
pub(crate) fn expect_digest(what: &'static str, digest: &str, actual: String) -> Result<(), ImportError> {
    if actual == digest {
        return Ok(());
    }
    Err(ImportError::DigestMismatch {
        what,
        digest: digest.to_owned(),
        actual,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    #[test]
    fn index_and_platform() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            d('a'),
            d('b')
        );
        let Document::Index(entries) = parse_document(json.as_bytes(), None).unwrap() else {
            panic!()
        };
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(platform_candidates(&entries, &amd)[0].digest, d('b'));
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd
        };
        assert!(platform_candidates(&entries, &s390).is_empty());
    }

    #[test]
    fn docker_manifest_without_media_type_field() {
        let json = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":3}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{}","size":4}}]}}"#,
            d('c'),
            d('e')
        );
        let doc = parse_document(json.as_bytes(), Some(DOCKER_MANIFEST)).unwrap();
        let Document::Manifest(m) = doc else { panic!() };
        assert_eq!(m.layers.len(), 1);
    }

    #[test]
    fn rejects_bad_documents() {
        assert!(parse_document(b"{\"schemaVersion\":1}", None).is_err());
        assert!(parse_document(b"not json", None).is_err());
        let bad_digest = r#"{"schemaVersion":2,"config":{"digest":"sha256:../../x","size":3},"layers":[]}"#;
        assert!(matches!(
            parse_document(bad_digest.as_bytes(), Some(OCI_MANIFEST)),
            Err(ImportError::BadDigest { .. })
        ));
        assert!(verify("blob", b"abc", &d('a')).is_err());
        verify("blob", b"abc", &sha256_digest(b"abc")).unwrap();
    }
}

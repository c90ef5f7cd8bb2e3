//! The converted image's config and manifest (pure): the source's own
//! documents with the layers replaced and, only where they changed, the
//! diff_ids, so every other field (history, annotations, labels) stays.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::manifest::{sha256_digest, OCI_MANIFEST};
use crate::Descriptor;

pub(super) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Layer annotations that describe a layer's old compression; a converted
/// layer drops them and gets its own.
const FORMAT_ANNOTATION_PREFIXES: [&str; 4] = [
    "containerd.io/snapshot/stargz/",
    "io.containers.estargz.",
    "io.github.containers.zstd-chunked.",
    "io.containers.zstd-chunked.",
];

/// One converted layer, as the new manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NewLayer {
    pub media_type: &'static str,
    pub digest: String,
    pub size: u64,
    /// The format's own annotations.
    pub annotations: BTreeMap<String, String>,
    pub diff_id: String,
}

#[derive(Debug)]
pub(super) struct NewImage {
    pub config: Vec<u8>,
    pub config_digest: String,
    pub config_changed: bool,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

/// The new config and manifest from the source's `manifest` and `config`
/// bytes (already verified), its layer descriptors and their replacements.
pub(super) fn rewrite(
    manifest: &[u8],
    config: &[u8],
    config_desc: &Descriptor,
    old_layers: &[Descriptor],
    old_diff_ids: &[String],
    layers: &[NewLayer],
) -> Result<NewImage, String> {
    if old_layers.len() != layers.len() || old_diff_ids.len() != layers.len() {
        return Err("the converted layers do not match the source's".into());
    }
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config_changed = diff_ids.iter().zip(old_diff_ids).any(|(new, old)| *new != old);
    let config = if config_changed {
        let mut value: Value = serde_json::from_slice(config).map_err(|e| format!("the source's config: {e}"))?;
        let rootfs = value
            .get_mut("rootfs")
            .and_then(Value::as_object_mut)
            .ok_or("the source's config has no rootfs")?;
        rootfs.insert("diff_ids".into(), json!(diff_ids));
        serde_json::to_vec(&value).map_err(|e| e.to_string())?
    } else {
        config.to_vec()
    };
    let config_digest = sha256_digest(&config);

    let mut value: Value = serde_json::from_slice(manifest).map_err(|e| format!("the source's manifest: {e}"))?;
    let object = value
        .as_object_mut()
        .ok_or("the source's manifest is not a JSON object")?;
    object.insert("schemaVersion".into(), json!(2));
    object.insert("mediaType".into(), json!(OCI_MANIFEST));
    let config_type = match config_desc.media_type.as_str() {
        "" | DOCKER_CONFIG => OCI_CONFIG,
        other => other,
    };
    object.insert(
        "config".into(),
        descriptor(
            config_type,
            &config_digest,
            config.len() as u64,
            &config_desc.annotations,
        ),
    );
    let new_layers: Vec<Value> = old_layers
        .iter()
        .zip(layers)
        .map(|(old, new)| {
            let mut annotations: BTreeMap<String, String> = old
                .annotations
                .iter()
                .filter(|(key, _)| !FORMAT_ANNOTATION_PREFIXES.iter().any(|p| key.starts_with(p)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            annotations.extend(new.annotations.clone());
            descriptor(new.media_type, &new.digest, new.size, &annotations)
        })
        .collect();
    object.insert("layers".into(), Value::Array(new_layers));
    let manifest = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    Ok(NewImage {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        config,
        config_digest,
        config_changed,
    })
}

fn descriptor(media_type: &str, digest: &str, size: u64, annotations: &BTreeMap<String, String>) -> Value {
    let mut object = Map::new();
    object.insert("mediaType".into(), json!(media_type));
    object.insert("digest".into(), json!(digest));
    object.insert("size".into(), json!(size));
    if !annotations.is_empty() {
        object.insert("annotations".into(), json!(annotations));
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{parse_config, parse_document, Document, DOCKER_MANIFEST};

    fn desc(media_type: &str, digest: char, annotations: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", digest.to_string().repeat(64)),
            size: 7,
            platform: None,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn new_layer(diff_id: &str) -> NewLayer {
        NewLayer {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd",
            digest: format!("sha256:{}", "c".repeat(64)),
            size: 9,
            annotations: BTreeMap::from([("io.github.containers.zstd-chunked.manifest-checksum".into(), "x".into())]),
            diff_id: diff_id.into(),
        }
    }

    #[test]
    fn a_docker_manifest_becomes_oci_and_keeps_its_config_bytes() {
        let old_layer = desc(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            'a',
            &[
                ("containerd.io/snapshot/stargz/toc.digest", "stale"),
                ("org.example.kept", "yes"),
            ],
        );
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{D1}"]}},"z":1,"a":2}}"#
        );
        let config = config.as_bytes();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"sha256:{}","size":3}},"layers":[]}}"#,
            "b".repeat(64)
        );
        let config_desc = desc(DOCKER_CONFIG, 'b', &[]);
        let image = rewrite(
            manifest.as_bytes(),
            config,
            &config_desc,
            &[old_layer],
            &[D1.into()],
            &[new_layer(D1)],
        )
        .unwrap();
        assert!(!image.config_changed);
        assert_eq!(image.config, config);
        let Document::Manifest(parsed) = parse_document(&image.manifest, None).unwrap() else {
            panic!("a manifest")
        };
        assert_eq!(parsed.config.media_type, OCI_CONFIG);
        assert_eq!(parsed.config.digest, sha256_digest(config));
        let layer = &parsed.layers[0];
        assert_eq!(layer.size, 9);
        assert_eq!(layer.annotations.len(), 2);
        assert_eq!(layer.annotations["org.example.kept"], "yes");
        assert!(!layer
            .annotations
            .contains_key("containerd.io/snapshot/stargz/toc.digest"));
        let value: Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(value["mediaType"], OCI_MANIFEST);
        assert_eq!(image.manifest_digest, sha256_digest(&image.manifest));
    }

    #[test]
    fn changed_diff_ids_make_a_new_config_with_everything_else_kept() {
        let config = format!(
            r#"{{"os":"linux","history":[{{"created_by":"x"}}],"rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}"#
        );
        let config = config.as_bytes();
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","annotations":{"k":"v"},"config":{},"layers":[]}"#;
        let image = rewrite(
            manifest,
            config,
            &desc(OCI_CONFIG, 'b', &[]),
            &[desc("application/vnd.oci.image.layer.v1.tar", 'a', &[])],
            &[D1.into()],
            &[new_layer(D2)],
        )
        .unwrap();
        assert!(image.config_changed);
        assert_eq!(parse_config(&image.config).unwrap().diff_ids, [D2]);
        let value: Value = serde_json::from_slice(&image.config).unwrap();
        assert_eq!(value["history"][0]["created_by"], "x");
        let manifest: Value = serde_json::from_slice(&image.manifest).unwrap();
        assert_eq!(manifest["annotations"]["k"], "v");
        assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
    }
}

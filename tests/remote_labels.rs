//! The labels containerd's CRI plugin puts on an unpack Prepare of the
//! test image family's layers (the remote-snapshot protocol), computed from
//! the family's OCI layout on their own.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::serve::labels;
use crate::{family_layout, registry};

/// What containerd knows of an image from its manifest and config.
pub struct ImageInfo {
    pub manifest: String,
    pub layers: Vec<String>,
    pub chains: Vec<String>,
}

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn image_info(tag: &str) -> ImageInfo {
    let layout = family_layout();
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("{tag} in the family layout"));
    let manifest_digest = entry["digest"].as_str().unwrap().to_owned();
    let manifest = blob(&layout, &manifest_digest);
    let config = blob(&layout, manifest["config"]["digest"].as_str().unwrap());
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    // Chain IDs computed here on their own, as the OCI spec defines them.
    let mut chains: Vec<String> = Vec::new();
    for diff_id in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let diff_id = diff_id.as_str().unwrap();
        let next = match chains.last() {
            None => diff_id.to_owned(),
            Some(parent) => format!(
                "sha256:{}",
                Sha256::digest(format!("{parent} {diff_id}"))
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
        };
        chains.push(next);
    }
    ImageInfo {
        manifest: manifest_digest,
        layers,
        chains,
    }
}

fn image_ref(tag: &str) -> String {
    format!("{}/strata/{tag}:latest", registry())
}

/// The labels the CRI plugin puts on layer `i`'s unpack Prepare.
pub fn cri_labels(tag: &str, info: &ImageInfo, i: usize) -> Vec<(String, String)> {
    vec![
        ("containerd.io/snapshot.ref".into(), info.chains[i].clone()),
        ("containerd.io/snapshot/cri.image-ref".into(), image_ref(tag)),
        (
            "containerd.io/snapshot/cri.manifest-digest".into(),
            info.manifest.clone(),
        ),
        ("containerd.io/snapshot/cri.layer-digest".into(), info.layers[i].clone()),
        (
            "containerd.io/snapshot/cri.image-layers".into(),
            info.layers[i..].join(","),
        ),
    ]
}

pub fn as_labels(pairs: &[(String, String)]) -> crate::serve::Labels {
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    labels(&refs)
}

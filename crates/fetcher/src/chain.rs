//! Which layer of a resolved image a request names, checked against the
//! image's own chain of diff IDs (pure).

use sha2::{Digest as _, Sha256};
use strata_image::{Descriptor, ResolvedImage};
use strata_snapshotter::LayerRequest;

/// The chain IDs of an image's layers: the first is its diff ID, each next
/// one is `sha256(parent_chain + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.clone(),
            Some(parent) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{parent} {diff_id}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// One layer of the image: where it is, what it must hash to, and the
/// chain it extends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub index: usize,
    pub chain_id: String,
    pub parent_chain: Option<String>,
    pub desc: Descriptor,
    pub diff_id: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocateError {
    #[error("manifest lists {layers} layers but its config has {diff_ids} diff IDs")]
    Counts { layers: usize, diff_ids: usize },
    #[error("layer {layer} with chain ID {chain_id} is not in manifest {manifest}")]
    NotInImage {
        layer: String,
        chain_id: String,
        manifest: String,
    },
}

/// Every layer of `image` with its chain.
pub fn layers(image: &ResolvedImage) -> Result<Vec<Located>, LocateError> {
    let descs = &image.manifest.layers;
    let diff_ids = &image.config.diff_ids;
    if descs.len() != diff_ids.len() {
        return Err(LocateError::Counts {
            layers: descs.len(),
            diff_ids: diff_ids.len(),
        });
    }
    let chains = chain_ids(diff_ids);
    Ok(descs
        .iter()
        .zip(diff_ids)
        .enumerate()
        .map(|(index, (desc, diff_id))| Located {
            index,
            chain_id: chains[index].clone(),
            parent_chain: index.checked_sub(1).map(|p| chains[p].clone()),
            desc: desc.clone(),
            diff_id: diff_id.clone(),
        })
        .collect())
}

/// The layer `request` asks for: its blob digest and its chain ID must
/// both match, so the labels cannot pair one layer with another's chain.
pub fn locate(all: &[Located], request: &LayerRequest) -> Result<usize, LocateError> {
    all.iter()
        .position(|l| l.desc.digest == request.layer_digest && l.chain_id == request.chain_id)
        .ok_or_else(|| LocateError::NotInImage {
            layer: request.layer_digest.clone(),
            chain_id: request.chain_id.clone(),
            manifest: request.manifest_digest.clone(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_image::{ImageConfig, Manifest, Platform};

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn desc(c: char) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest(c),
            size: 1,
            platform: None,
            annotations: Default::default(),
        }
    }

    fn image(layers: &[char], diff_ids: &[char]) -> ResolvedImage {
        ResolvedImage {
            manifest_digest: digest('m'),
            manifest: Manifest {
                config: desc('c'),
                layers: layers.iter().map(|c| desc(*c)).collect(),
            },
            config_digest: digest('c'),
            config: ImageConfig {
                diff_ids: diff_ids.iter().map(|c| digest(*c)).collect(),
                platform: Platform::host(),
            },
        }
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        // The image spec's rule, computed here on its own; tests/cri.rs
        // checks the result against the chain IDs containerd sends.
        let d = |h: &str| format!("sha256:{h}");
        let ids = chain_ids(&[
            d("a8b0da3c6d6e1b2e0e8f3a3b3c7a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a"),
            d("1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff001"),
        ]);
        assert_eq!(
            ids[0],
            d("a8b0da3c6d6e1b2e0e8f3a3b3c7a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a")
        );
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!(
                "{} {}",
                ids[0],
                d("1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff001")
            )))
        );
        assert_eq!(ids[1], expected);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn a_request_must_match_blob_and_chain() {
        let img = image(&['1', '2'], &['a', 'b']);
        let all = layers(&img).unwrap();
        let request = |layer: char, chain: &str| LayerRequest {
            chain_id: chain.to_owned(),
            image_ref: "x".into(),
            manifest_digest: digest('m'),
            layer_digest: digest(layer),
            later_layers: vec![],
        };
        assert_eq!(locate(&all, &request('2', &all[1].chain_id)), Ok(1));
        assert_eq!(all[1].parent_chain.as_deref(), Some(all[0].chain_id.as_str()));
        assert!(locate(&all, &request('2', &all[0].chain_id)).is_err());
        assert!(locate(&all, &request('1', &all[1].chain_id)).is_err());
        assert_eq!(
            layers(&image(&['1'], &['a', 'b'])).unwrap_err(),
            LocateError::Counts { layers: 1, diff_ids: 2 }
        );
    }
}

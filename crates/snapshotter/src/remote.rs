//! containerd's remote-snapshot protocol, as the CRI plugin speaks it: an
//! unpack Prepare labelled with the chain ID it will become and with the
//! image, manifest and layer it comes from. A [`LayerFetcher`] may fetch
//! that layer itself; the snapshotter then commits it under the chain ID
//! and answers AlreadyExists, so containerd neither downloads nor applies it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strata_store::{ObjectStager, SharedGuard};
use strata_tree::{Digest, Tree};

/// The chain ID the unpack snapshot is committed as.
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
pub const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
pub const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
pub const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// This layer and the ones after it, comma-separated (cut short to fit a
/// label's size limit).
pub const CRI_IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";

/// What a labelled unpack Prepare asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerRequest {
    /// The chain ID of the snapshot to commit (`sha256:..`).
    pub chain_id: String,
    pub image_ref: String,
    pub manifest_digest: String,
    pub layer_digest: String,
    /// The layers after this one, as far as the label lists them.
    pub later_layers: Vec<String>,
}

/// Why a Prepare's labels are not a request strata can serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("label {label} is missing")]
    Missing { label: &'static str },
    #[error("label {label}={value:?} is not a sha256 digest")]
    NotDigest { label: &'static str, value: String },
}

fn is_sha256_digest(value: &str) -> bool {
    value
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

impl LayerRequest {
    /// The request in `labels`: `None` when they carry no chain ID or no
    /// CRI image reference (a plain unpack, not a remote-snapshot request).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Result<LayerRequest, RequestError>> {
        let chain_id = labels.get(SNAPSHOT_REF)?;
        let image_ref = labels.get(CRI_IMAGE_REF)?;
        Some(Self::parse(chain_id, image_ref, labels))
    }

    fn parse(chain_id: &str, image_ref: &str, labels: &BTreeMap<String, String>) -> Result<LayerRequest, RequestError> {
        let digest = |label: &'static str| -> Result<String, RequestError> {
            let value = labels.get(label).ok_or(RequestError::Missing { label })?;
            if !is_sha256_digest(value) {
                return Err(RequestError::NotDigest {
                    label,
                    value: value.clone(),
                });
            }
            Ok(value.clone())
        };
        if !is_sha256_digest(chain_id) {
            return Err(RequestError::NotDigest {
                label: SNAPSHOT_REF,
                value: chain_id.to_owned(),
            });
        }
        let layer_digest = digest(CRI_LAYER_DIGEST)?;
        let later_layers = labels
            .get(CRI_IMAGE_LAYERS)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|d| is_sha256_digest(d) && *d != layer_digest)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(LayerRequest {
            chain_id: chain_id.to_owned(),
            image_ref: image_ref.to_owned(),
            manifest_digest: digest(CRI_MANIFEST_DIGEST)?,
            layer_digest,
            later_layers,
        })
    }
}

/// The layers containerd fetches itself: once one layer of an image falls
/// back, containerd downloads every later one, so strata does not fetch
/// them too. Remembered per manifest for `keep`, and forgotten when a new
/// pull of the image asks for a layer outside the set.
pub(crate) struct FallenBack {
    keep: Duration,
    images: Mutex<HashMap<String, (HashSet<String>, Instant)>>,
}

impl FallenBack {
    pub(crate) fn new(keep: Duration) -> Self {
        FallenBack {
            keep,
            images: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `request`'s layer fell back.
    pub(crate) fn record(&self, request: &LayerRequest) {
        let later = request.later_layers.iter().cloned().collect();
        self.lock()
            .insert(request.manifest_digest.clone(), (later, Instant::now()));
    }

    /// Whether containerd fetches `request`'s layer itself already.
    pub(crate) fn covers(&self, request: &LayerRequest) -> bool {
        let mut images = self.lock();
        images.retain(|_, (_, at)| at.elapsed() < self.keep);
        match images.get(&request.manifest_digest) {
            Some((later, _)) if later.contains(&request.layer_digest) => true,
            Some(_) => {
                images.remove(&request.manifest_digest);
                false
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (HashSet<String>, Instant)>> {
        self.images.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A layer fetched, verified and imported, its objects staged.
pub struct FetchedLayer {
    pub tree: Tree,
    pub stager: ObjectStager,
    /// The chain ID of the layer below, from the image's config; `None`
    /// for the first layer. The Prepare's parent must be that snapshot.
    pub parent_chain: Option<String>,
    /// Held from the import to the commit, so gc leaves the staged
    /// objects alone.
    pub lock: SharedGuard,
    /// A layer imported from its TOC alone: the contents `tree` names as
    /// missing, each with its recipe (opaque here), in prefetch order.
    /// Empty for a layer fetched whole or partially.
    pub lazy: Vec<(Digest, Vec<u8>)>,
}

/// Why a fetch did not produce a layer; the Prepare falls back to an
/// ordinary snapshot that containerd fills.
pub type FetchError = Box<dyn std::error::Error + Send + Sync>;

/// Fetches the layers of remote-snapshot requests. Implemented outside the
/// snapshotter (it needs the network); called without the snapshotter's
/// lock held, possibly from many threads.
pub trait LayerFetcher: Send + Sync {
    fn fetch(&self, request: &LayerRequest) -> Result<FetchedLayer, FetchError>;
    /// `request`'s layer fell back: containerd fetches the image's later
    /// layers itself, so any work queued for them can go.
    fn abandon(&self, _request: &LayerRequest) {}
    /// How a remote-snapshot Prepare ended, told once per Prepare; for
    /// metrics (the binary wraps its fetcher to count these).
    fn observe(&self, _outcome: RemoteOutcome) {}
}

/// How a remote-snapshot Prepare ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteOutcome {
    /// strata fetched the layer and committed it: a fast-path hit.
    Fetched,
    /// A snapshot of that chain was committed already, by an earlier
    /// Prepare or by one racing this one.
    Present,
    /// containerd fetches and unpacks the layer itself.
    FellBack(FallbackReason),
}

/// Why a remote-snapshot Prepare fell back, by class (the log has the
/// details).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FallbackReason {
    /// The labels are malformed.
    Labels,
    /// Reading the snapshotter's own records failed.
    State,
    /// An earlier layer of the image fell back, so containerd fetches the
    /// later ones too.
    EarlierLayer,
    /// The fetcher failed: resolving the image, checking the labels
    /// against it, or importing the layer.
    Fetch,
    /// Committing the fetched layer failed (including a parent that is
    /// not the layer below).
    Commit,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 5] = [
        FallbackReason::Labels,
        FallbackReason::State,
        FallbackReason::EarlierLayer,
        FallbackReason::Fetch,
        FallbackReason::Commit,
    ];

    /// A short name, e.g. for a metric label.
    pub fn name(self) -> &'static str {
        match self {
            FallbackReason::Labels => "labels",
            FallbackReason::State => "state",
            FallbackReason::EarlierLayer => "earlier_layer",
            FallbackReason::Fetch => "fetch",
            FallbackReason::Commit => "commit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    #[test]
    fn a_cri_unpack_is_a_request() {
        let l = labels(&[
            (SNAPSHOT_REF, digest('a')),
            (CRI_IMAGE_REF, "127.0.0.1:5000/x:latest".into()),
            (CRI_MANIFEST_DIGEST, digest('b')),
            (CRI_LAYER_DIGEST, digest('c')),
            (
                CRI_IMAGE_LAYERS,
                format!("{},{}, bogus,{}", digest('c'), digest('d'), digest('e')),
            ),
        ]);
        let r = LayerRequest::from_labels(&l).unwrap().unwrap();
        assert_eq!(r.chain_id, digest('a'));
        assert_eq!(r.manifest_digest, digest('b'));
        assert_eq!(r.layer_digest, digest('c'));
        assert_eq!(r.later_layers, vec![digest('d'), digest('e')]);
    }

    #[test]
    fn after_a_fallback_the_later_layers_are_left_to_containerd() {
        let request = |layer: char, later: &[char]| LayerRequest {
            chain_id: digest('z'),
            image_ref: "x".into(),
            manifest_digest: digest('m'),
            layer_digest: digest(layer),
            later_layers: later.iter().map(|c| digest(*c)).collect(),
        };
        let fallen = FallenBack::new(Duration::from_secs(60));
        assert!(!fallen.covers(&request('1', &['2', '3'])));
        fallen.record(&request('1', &['2', '3']));
        assert!(fallen.covers(&request('2', &['3'])));
        assert!(fallen.covers(&request('3', &[])));
        // A new pull of the image starts over.
        assert!(!fallen.covers(&request('1', &['2', '3'])));
        assert!(!fallen.covers(&request('2', &['3'])));
    }

    #[test]
    fn without_cri_labels_there_is_no_request() {
        assert!(LayerRequest::from_labels(&labels(&[(SNAPSHOT_REF, digest('a'))])).is_none());
        assert!(LayerRequest::from_labels(&labels(&[(CRI_IMAGE_REF, "x".into())])).is_none());
    }

    #[test]
    fn bad_labels_are_named() {
        let mut l = labels(&[
            (SNAPSHOT_REF, digest('a')),
            (CRI_IMAGE_REF, "x".into()),
            (CRI_MANIFEST_DIGEST, digest('b')),
        ]);
        assert_eq!(
            LayerRequest::from_labels(&l).unwrap(),
            Err(RequestError::Missing {
                label: CRI_LAYER_DIGEST
            })
        );
        l.insert(CRI_LAYER_DIGEST.into(), "sha256:../../etc".into());
        assert!(matches!(
            LayerRequest::from_labels(&l).unwrap(),
            Err(RequestError::NotDigest { .. })
        ));
        l.insert(CRI_LAYER_DIGEST.into(), digest('c'));
        l.insert(SNAPSHOT_REF.into(), "sha256:ABC".into());
        assert!(matches!(
            LayerRequest::from_labels(&l).unwrap(),
            Err(RequestError::NotDigest {
                label: SNAPSHOT_REF,
                ..
            })
        ));
    }
}

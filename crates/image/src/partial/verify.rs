//! `partial_pulls = "verified"`: a zstd:chunked layer's diff_id, rebuilt
//! without its blob. The tar-split (verified against its digest, which the
//! TOC or the annotations give) holds every byte of the uncompressed tar
//! but the files' data; the files' data are the contents the partial pull
//! just checked against the TOC (fetched, or already in the store). Their
//! concatenation in tar order must hash to the diff_id the config names.
//!
//! The tar-split's file records are matched with the TOC's regular files
//! in order, by normalised name and size; any disagreement means the
//! diff_id cannot be checked this way, and the layer is pulled whole.

use std::collections::HashMap;
use std::io::Read;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use strata_tree::FileData;

use super::fetch::Got;
use super::PartialError;
use crate::toc::{Sha256Digest, Toc};

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    payload: Option<String>,
}

const SEGMENT: u8 = 2;
const FILE: u8 = 1;

/// Rebuilds the layer's uncompressed stream from `tar_split` (NDJSON) and
/// the contents, and checks its SHA-256 against `diff_id`.
pub(crate) fn check_diff_id(
    tar_split: &[u8],
    toc: &Toc,
    contents: &HashMap<Sha256Digest, Got>,
    open_object: &dyn Fn(&strata_tree::Digest) -> Result<std::fs::File, strata_store::StoreError>,
    diff_id: &str,
) -> Result<(), PartialError> {
    let unverifiable = |reason: String| PartialError::DiffId { reason };
    let mut files = toc.files().filter(|(_, c)| c.size > 0);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (number, line) in tar_split.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: Record =
            serde_json::from_slice(line).map_err(|e| unverifiable(format!("tar-split line {}: {e}", number + 1)))?;
        match record.kind {
            SEGMENT => {
                let payload = record.payload.unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .map_err(|e| unverifiable(format!("tar-split line {}: {e}", number + 1)))?;
                hasher.update(&bytes);
            }
            FILE if record.size == 0 => {}
            FILE => {
                let name = normalise(record.name.as_deref().unwrap_or_default());
                let Some((entry, content)) = files.next() else {
                    return Err(unverifiable(format!(
                        "tar-split names {name:?}, the TOC has no file left"
                    )));
                };
                if entry.path != name || content.size != record.size {
                    return Err(unverifiable(format!(
                        "tar-split names {name:?} ({} bytes) where the TOC has {:?} ({} bytes)",
                        record.size, entry.path, content.size
                    )));
                }
                let got = contents.get(&content.digest).ok_or_else(|| PartialError::Missing {
                    path: entry.path.clone(),
                    digest: content.digest,
                })?;
                match &got.data {
                    FileData::Inline(bytes) => hasher.update(bytes),
                    FileData::Object { digest, .. } => {
                        let mut file = open_object(digest)?;
                        let mut left = content.size;
                        while left > 0 {
                            let want = usize::try_from(left.min(buf.len() as u64)).expect("at most 1 MiB");
                            let n = file.read(&mut buf[..want]).map_err(|e| PartialError::Answer {
                                reason: format!("reading the object of {:?}: {e}", entry.path),
                            })?;
                            if n == 0 {
                                return Err(unverifiable(format!("the object of {:?} is short", entry.path)));
                            }
                            hasher.update(&buf[..n]);
                            left -= n as u64;
                        }
                    }
                    FileData::Missing { .. } => {
                        return Err(unverifiable(format!("{:?} was not fetched", entry.path)));
                    }
                }
            }
            other => return Err(unverifiable(format!("tar-split record of type {other}"))),
        }
    }
    if let Some((entry, _)) = files.next() {
        return Err(unverifiable(format!(
            "the tar-split lacks the TOC's file {:?}",
            entry.path
        )));
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != diff_id {
        return Err(PartialError::DiffIdMismatch {
            expected: diff_id.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// A tar name as the TOC gives it: no leading `./` or `/`, no empty names.
fn normalise(name: &str) -> String {
    name.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests;

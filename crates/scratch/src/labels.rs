//! Scratch labels, validated. Unlike LCOW, a label that does not parse is an
//! error, never a silent default.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

const P: &str = "containerd.io/snapshot/";
pub const SIZE_GB: [&str; 2] = ["io.microsoft.container.storage.rootfs.size-gb", "strata.rootfs.size-gb"];
pub const MAX_SIZE: &str = "max-size";
pub const LOCATION: [&str; 2] = [
    "io.microsoft.container.storage.rootfs.location",
    "strata.rootfs.location",
];
pub const REUSE: [&str; 2] = ["io.microsoft.container.storage.reuse-scratch", "strata.reuse-scratch"];
pub const OWNER: [&str; 2] = ["io.microsoft.owner.key", "strata.owner.key"];

/// The filesystem a sized scratch is formatted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsKind {
    Ext4,
    Xfs,
}

/// What the operator allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchPolicy {
    pub max_bytes: u64,
    /// Directories (canonical) under which a location label may point.
    pub allowed_locations: Vec<PathBuf>,
    pub fs: FsKind,
    /// The size of a container snapshot that has no size label, if any.
    pub default_bytes: Option<u64>,
    /// Per containerd namespace (a key's first segment), over `default_bytes`.
    pub namespace_default_bytes: BTreeMap<String, u64>,
}

impl ScratchPolicy {
    /// The configured size for a container snapshot `key` without a size label.
    fn default_for(&self, key: &str) -> Option<u64> {
        let namespace = key.split('/').next().unwrap_or_default();
        self.namespace_default_bytes
            .get(namespace)
            .copied()
            .or(self.default_bytes)
            .filter(|bytes| *bytes > 0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScratchRequest {
    /// Upper and work dirs as plain directories.
    Plain,
    /// A filesystem of `bytes`, under `location` (or the default place).
    Sized { bytes: u64, location: Option<PathBuf> },
    /// Share the scratch of the snapshot whose key is or ends in `/owner`.
    Shared { owner: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("label {label}={value:?}: the size must be a positive whole number")]
    BadSize { label: String, value: String },
    #[error("label {label}={value:?}: {bytes} bytes is over the configured maximum of {max} bytes")]
    TooLarge {
        label: String,
        value: String,
        bytes: u64,
        max: u64,
    },
    #[error("size labels disagree: {first} and {second}")]
    ConflictingSizes { first: String, second: String },
    #[error("label {label}={value:?}: {reason}")]
    BadLocation {
        label: String,
        value: String,
        reason: String,
    },
    #[error("label {label}={value:?}: expected true or false")]
    BadBool { label: String, value: String },
    #[error("reuse-scratch is set but no owner key label names whose scratch to share")]
    MissingOwner,
    #[error("labels {first} and {second} disagree")]
    Conflicting { first: String, second: String },
}

/// The value of whichever of `names` is set; both set must agree.
fn one_of<'a>(labels: &'a BTreeMap<String, String>, names: &[&str]) -> Result<Option<(String, &'a str)>, LabelError> {
    let mut found: Option<(String, &str)> = None;
    for name in names {
        let full = format!("{P}{name}");
        if let Some(value) = labels.get(&full) {
            if let Some((first, earlier)) = &found {
                if earlier != value {
                    return Err(LabelError::Conflicting {
                        first: first.clone(),
                        second: full,
                    });
                }
            }
            found = Some((full, value.as_str()));
        }
    }
    Ok(found)
}

fn positive(label: &str, value: &str) -> Result<u64, LabelError> {
    let bad = || LabelError::BadSize {
        label: label.to_owned(),
        value: value.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match value.parse::<u64>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    }
}

fn size(labels: &BTreeMap<String, String>, policy: &ScratchPolicy) -> Result<Option<u64>, LabelError> {
    let mut sizes = Vec::new();
    if let Some((label, value)) = one_of(labels, &SIZE_GB)? {
        let gb = positive(&label, value)?;
        let bytes = gb.checked_mul(1 << 30).ok_or_else(|| LabelError::TooLarge {
            label: label.clone(),
            value: value.to_owned(),
            bytes: u64::MAX,
            max: policy.max_bytes,
        })?;
        sizes.push((label, value.to_owned(), bytes));
    }
    if let Some((label, value)) = one_of(labels, &[MAX_SIZE])? {
        let bytes = positive(&label, value)?;
        sizes.push((label, value.to_owned(), bytes));
    }
    if let [(a, _, x), (b, _, y)] = sizes.as_slice() {
        if x != y {
            return Err(LabelError::ConflictingSizes {
                first: a.clone(),
                second: b.clone(),
            });
        }
    }
    match sizes.into_iter().next() {
        Some((label, value, bytes)) if bytes > policy.max_bytes => Err(LabelError::TooLarge {
            label,
            value,
            bytes,
            max: policy.max_bytes,
        }),
        Some((_, _, bytes)) => Ok(Some(bytes)),
        None => Ok(None),
    }
}

/// Resolves a location label: absolute, no `..`, an existing directory whose
/// real path (symlinks resolved) lies inside an allowed directory.
fn location(labels: &BTreeMap<String, String>, policy: &ScratchPolicy) -> Result<Option<PathBuf>, LabelError> {
    let Some((label, value)) = one_of(labels, &LOCATION)? else {
        return Ok(None);
    };
    let bad = |reason: &str| LabelError::BadLocation {
        label: label.clone(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let path = Path::new(value);
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(bad("must not contain '..'"));
    }
    let real = path
        .canonicalize()
        .map_err(|e| bad(&format!("cannot be resolved: {e}")))?;
    if !real.is_dir() {
        return Err(bad("is not a directory"));
    }
    if !policy.allowed_locations.iter().any(|allowed| real.starts_with(allowed)) {
        return Err(bad("is outside the scratch locations the operator allows"));
    }
    Ok(Some(real))
}

fn flag(labels: &BTreeMap<String, String>, names: &[&str]) -> Result<bool, LabelError> {
    match one_of(labels, names)? {
        None => Ok(false),
        Some((_, "true")) => Ok(true),
        Some((_, "false")) => Ok(false),
        Some((label, value)) => Err(LabelError::BadBool {
            label,
            value: value.to_owned(),
        }),
    }
}

/// Whether `key` names a snapshot containerd unpacks a layer into: its
/// last segment is containerd's `extract-<nanos>-<random> <chain ID>`
/// (`snapshots.UnpackKeyFormat`), exactly. A container named
/// `extract-something` is not one: unpack snapshots get no scratch and
/// their files are trusted as containerd's applier wrote them.
pub fn is_unpack_key(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    let Some((unique, chain)) = name.strip_prefix("extract-").and_then(|rest| rest.split_once(' ')) else {
        return false;
    };
    let Some((nanos, random)) = unique.split_once('-') else {
        return false;
    };
    let hex = chain.strip_prefix("sha256:").unwrap_or_default();
    !nanos.is_empty()
        && nanos.bytes().all(|b| b.is_ascii_digit())
        && (1..=16).contains(&random.len())
        && random
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
        && hex.len() == 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Turns a snapshot's key and labels into a scratch request.
pub fn parse_labels(
    key: &str,
    labels: &BTreeMap<String, String>,
    policy: &ScratchPolicy,
) -> Result<ScratchRequest, LabelError> {
    // Unpack snapshots never get a sized or shared scratch.
    if is_unpack_key(key) {
        return Ok(ScratchRequest::Plain);
    }
    if flag(labels, &REUSE)? {
        let (_, owner) = one_of(labels, &OWNER)?.ok_or(LabelError::MissingOwner)?;
        if owner.is_empty() {
            return Err(LabelError::MissingOwner);
        }
        return Ok(ScratchRequest::Shared {
            owner: owner.to_owned(),
        });
    }
    let location = location(labels, policy)?;
    Ok(match size(labels, policy)?.or_else(|| policy.default_for(key)) {
        Some(bytes) => ScratchRequest::Sized { bytes, location },
        None => ScratchRequest::Plain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (format!("{P}{k}"), v.to_string())).collect()
    }

    fn unpack_key(prefix: &str) -> String {
        format!("{prefix}/extract-123456789-AbC_ sha256:{}", "0a".repeat(32))
    }

    #[test]
    fn only_containerds_unpack_keys_are_unpacks() {
        assert!(is_unpack_key(&unpack_key("k8s.io/12")));
        assert!(is_unpack_key(unpack_key("").trim_start_matches('/')));
        for key in [
            "default/3/extract-x",
            "default/3/extract-1 sha256:ab",
            "default/3/my-extract-1-AbC_ sha256:00",
            &format!("default/3/extract--AbC_ sha256:{}", "0a".repeat(32)),
            &format!("default/3/extract-1-a/b sha256:{}", "0a".repeat(32)),
            &format!("extract-ns/3/extract-1-AbC_ sha256:{}x", "0a".repeat(32)),
            &format!("default/3/extract-1-AbC_ sha256:{}", "0A".repeat(32)),
        ] {
            assert!(!is_unpack_key(key), "{key}");
        }
    }

    fn policy(allowed: &Path) -> ScratchPolicy {
        ScratchPolicy {
            max_bytes: 100 << 30,
            allowed_locations: vec![allowed.canonicalize().unwrap()],
            fs: FsKind::Ext4,
            default_bytes: None,
            namespace_default_bytes: BTreeMap::new(),
        }
    }

    #[test]
    fn configured_defaults_size_unlabelled_container_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = policy(dir.path());
        p.default_bytes = Some(8 << 30);
        p.namespace_default_bytes.insert("k8s.io".into(), 2 << 30);
        p.namespace_default_bytes.insert("off".into(), 0);
        let sized = |bytes| ScratchRequest::Sized { bytes, location: None };
        let parse = |key: &str, pairs: &[(&str, &str)]| parse_labels(key, &labels(pairs), &p).unwrap();
        assert_eq!(parse("default/1/c", &[]), sized(8 << 30));
        assert_eq!(parse("k8s.io/7/c", &[]), sized(2 << 30));
        assert_eq!(parse("off/7/c", &[]), ScratchRequest::Plain);
        // A label wins; unpack snapshots never get a scratch.
        assert_eq!(parse("k8s.io/7/c", &[(SIZE_GB[1], "3")]), sized(3 << 30));
        assert_eq!(parse(&unpack_key("k8s.io/7"), &[]), ScratchRequest::Plain);
        // A shared scratch takes its owner's size.
        assert_eq!(
            parse("k8s.io/8/c", &[(REUSE[1], "true"), (OWNER[1], "c")]),
            ScratchRequest::Shared { owner: "c".into() }
        );
    }

    #[test]
    fn sizes() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        let ok = |pairs: &[(&str, &str)]| parse_labels("default/1/c", &labels(pairs), &p);
        assert_eq!(ok(&[]).unwrap(), ScratchRequest::Plain);
        assert_eq!(
            ok(&[(SIZE_GB[0], "20")]).unwrap(),
            ScratchRequest::Sized {
                bytes: 20 << 30,
                location: None
            }
        );
        assert_eq!(
            ok(&[(SIZE_GB[1], "1"), (MAX_SIZE, "1073741824")]).unwrap(),
            ScratchRequest::Sized {
                bytes: 1 << 30,
                location: None
            }
        );
        for bad in ["0", "-1", "1.5", "ten", "", " 1", "99999999999999999999"] {
            let err = ok(&[(SIZE_GB[0], bad)]).unwrap_err();
            assert!(matches!(err, LabelError::BadSize { .. }), "{bad:?}: {err}");
        }
        assert!(matches!(ok(&[(SIZE_GB[0], "101")]), Err(LabelError::TooLarge { .. })));
        assert!(matches!(
            ok(&[(SIZE_GB[0], "18446744073")]),
            Err(LabelError::TooLarge { .. })
        ));
        assert!(matches!(
            ok(&[(SIZE_GB[0], "1"), (SIZE_GB[1], "2")]),
            Err(LabelError::Conflicting { .. })
        ));
        assert!(matches!(
            ok(&[(SIZE_GB[0], "1"), (MAX_SIZE, "5")]),
            Err(LabelError::ConflictingSizes { .. })
        ));
        // Unpack snapshots ignore every scratch label, even bad ones.
        assert_eq!(
            parse_labels(&unpack_key("default/2"), &labels(&[(SIZE_GB[0], "bad")]), &p).unwrap(),
            ScratchRequest::Plain
        );
    }

    #[test]
    fn locations_stay_inside_the_allow_list() {
        let allowed = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let p = policy(allowed.path());
        let inside = allowed.path().join("vol");
        std::fs::create_dir(&inside).unwrap();
        let link = allowed.path().join("link-out");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        let at = |loc: &str| parse_labels("k", &labels(&[(SIZE_GB[0], "1"), (LOCATION[1], loc)]), &p);
        assert_eq!(
            at(inside.to_str().unwrap()).unwrap(),
            ScratchRequest::Sized {
                bytes: 1 << 30,
                location: Some(inside.canonicalize().unwrap())
            }
        );
        let refused = [
            outside.path().to_str().unwrap().to_owned(),
            link.to_str().unwrap().to_owned(),
            format!("{}/vol/../..", allowed.path().display()),
            "relative/dir".to_owned(),
            format!("{}/missing", allowed.path().display()),
        ];
        for loc in refused {
            assert!(matches!(at(&loc), Err(LabelError::BadLocation { .. })), "{loc}");
        }
    }

    #[test]
    fn sharing() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy(dir.path());
        let get = |pairs: &[(&str, &str)]| parse_labels("default/3/c2", &labels(pairs), &p);
        assert_eq!(
            get(&[(REUSE[0], "true"), (OWNER[0], "c1")]).unwrap(),
            ScratchRequest::Shared { owner: "c1".into() }
        );
        assert_eq!(
            get(&[(REUSE[1], "false"), (OWNER[1], "c1")]).unwrap(),
            ScratchRequest::Plain
        );
        assert!(matches!(get(&[(REUSE[0], "true")]), Err(LabelError::MissingOwner)));
        assert!(matches!(get(&[(REUSE[0], "yes")]), Err(LabelError::BadBool { .. })));
    }
}

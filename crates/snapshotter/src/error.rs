//! The one error type of the snapshotter. Its [`ErrorKind`] is what
//! transports map to containerd's error classes.

/// containerd's error classes that a snapshotter can return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {key:?} not found")]
    NotFound { key: String },
    #[error("parent snapshot {parent:?} not found")]
    ParentNotFound { parent: String },
    #[error("snapshot {key:?} already exists")]
    AlreadyExists { key: String },
    #[error("snapshot {key:?} has children; remove them first")]
    HasChildren { key: String },
    #[error("snapshot {key:?} is {actual}, but this needs {wanted}")]
    WrongKind {
        key: String,
        actual: crate::Kind,
        wanted: &'static str,
    },
    #[error("parent {parent:?} is {actual}; only a committed snapshot can be a parent")]
    ParentNotCommitted { parent: String, actual: crate::Kind },
    #[error("cannot update field {field:?} of snapshot {key:?}")]
    ImmutableField { key: String, field: String },
    #[error("bad filter {filter:?}: {reason}")]
    BadFilter { filter: String, reason: String },
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
    #[error("{path}: directories nest deeper than {max} levels, the most an EROFS image holds")]
    TooDeep { path: std::path::PathBuf, max: usize },
    #[error("{path} {what}; commit again once nothing writes to the snapshot")]
    UpperChanged {
        path: std::path::PathBuf,
        what: &'static str,
    },
    #[error(transparent)]
    Label(#[from] strata_scratch::LabelError),
    #[error("no snapshot {owner:?} in this namespace owns a scratch to share")]
    OwnerNotFound { owner: String },
    #[error("owner key {owner:?} matches several snapshots: {keys:?}")]
    OwnerAmbiguous { owner: String, keys: Vec<String> },
    #[error("snapshot {owner:?} has no sized scratch to share")]
    OwnerWithoutScratch { owner: String },
    #[error("scratch: {0}")]
    Scratch(#[from] strata_scratch::TemplateError),
    #[error(transparent)]
    FailPoint(#[from] strata_failpoint::Triggered),
    #[error("{path}: another strata snapshotter uses this store")]
    InUse { path: std::path::PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot record {key:?} is unreadable: {reason}")]
    BadRecord { key: String, reason: String },
    #[error("snapshot {key:?}: {reason}")]
    ChainMismatch { key: String, reason: String },
    #[error(transparent)]
    Store(#[from] strata_store::StoreError),
    #[error(transparent)]
    Erofs(#[from] strata_erofs::ErofsError),
    #[error(transparent)]
    Merge(#[from] strata_tree::MergeError),
    #[error(transparent)]
    Mount(#[from] strata_mount::MountError),
}

impl SnapshotError {
    pub fn kind(&self) -> ErrorKind {
        use SnapshotError::*;
        match self {
            NotFound { .. } | ParentNotFound { .. } | OwnerNotFound { .. } => ErrorKind::NotFound,
            AlreadyExists { .. } => ErrorKind::AlreadyExists,
            HasChildren { .. }
            | WrongKind { .. }
            | Unsupported { .. }
            | TooDeep { .. }
            | UpperChanged { .. }
            | ChainMismatch { .. }
            | Erofs(strata_erofs::ErofsError::Invalid { .. } | strata_erofs::ErofsError::SymlinkTooLong { .. }) => {
                ErrorKind::FailedPrecondition
            }
            ParentNotCommitted { .. }
            | ImmutableField { .. }
            | BadFilter { .. }
            | Label(_)
            | OwnerAmbiguous { .. }
            | OwnerWithoutScratch { .. } => ErrorKind::InvalidArgument,
            InUse { .. }
            | Scratch(_)
            | FailPoint(_)
            | Io { .. }
            | BadRecord { .. }
            | Store(_)
            | Erofs(_)
            | Merge(_)
            | Mount(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl AsRef<std::path::Path>, source: impl Into<std::io::Error>) -> Self {
        SnapshotError::Io {
            op,
            path: path.as_ref().to_owned(),
            source: source.into(),
        }
    }
}

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{max} imports are already running on this store (limits.max_concurrent_imports); retry when one ends")]
    TooManyImports { max: usize },
    #[error(transparent)]
    FailPoint(#[from] strata_failpoint::Triggered),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("metadata DB: {0}")]
    Db(#[from] redb::Error),
    #[error("metadata DB holds an unreadable record for {key:?}: {reason}")]
    BadRecord { key: String, reason: String },
    #[error(
        "store at {root} has layout version {found:?}; this strata reads version {}",
        crate::LAYOUT_VERSION
    )]
    LayoutVersion { root: PathBuf, found: String },
    #[error("{root} is not empty and holds no strata store; give --root an empty or new directory (or the root of an existing store)")]
    NotAStore { root: PathBuf },
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: impl Into<std::io::Error>) -> Self {
        StoreError::Io {
            op,
            path: path.as_ref().to_owned(),
            source: source.into(),
        }
    }

    /// True when the error is the disk running out of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

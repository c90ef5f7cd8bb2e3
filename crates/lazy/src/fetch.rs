//! The seam to the caller's store and network: what LAZY asks when a
//! missing name is opened.

use std::fs::File;

use strata_tree::Digest;

/// Brings objects into the store for LAZY. Implemented by the caller
/// (strata's fetcher); called on LAZY's own threads, never on the FUSE
/// loop, at most once at a time per name.
pub trait ObjectFetcher: Send + Sync + 'static {
    /// The object named `name` if the store holds it already (fetched by
    /// an earlier open, by prefetch, or by a pull), opened read-only.
    fn open_stored(&self, name: &Digest) -> Result<Option<File>, FetchError>;

    /// Fetches the content named `name`, checks it against `name` (its
    /// SHA-256), stores it as an ordinary object (and its alias), and
    /// returns the stored object opened read-only. Content that does not
    /// verify must not be stored. LAZY bounds how long an open waits, not
    /// how long this runs: a fetch should give up by itself in the end.
    fn fetch(&self, name: &Digest) -> Result<File, FetchError>;

    /// Asked on a LOOKUP of a name LAZY does not list: the size of `name`
    /// if it is missing and fetchable after all (a lazy pull that ended
    /// after the table was filled), which LAZY then lists. Called on the
    /// FUSE thread, so it must be quick (a DB read). Default: none.
    fn unlisted_size(&self, _name: &Digest) -> Option<u64> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The bytes fetched do not hash to the name.
    #[error("the content fetched for {name} does not match it")]
    Mismatch { name: Digest },
    /// Nothing the fetcher knows has this name.
    #[error("no source holds {name}")]
    Unknown { name: Digest },
    /// The object returned is not as large as the table says.
    #[error("the object returned for {name} has {actual} bytes, not {expected}")]
    WrongSize { name: Digest, expected: u64, actual: u64 },
    #[error("fetching {name}: {source}")]
    Io {
        name: Digest,
        #[source]
        source: std::io::Error,
    },
    /// Any other failure of the fetcher (registry, TOC, store).
    #[error("fetching {name}: {source}")]
    Source {
        name: Digest,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

//! What the LAZY filesystem has done, counted as it happens, for tests and
//! metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// LOOKUP requests of file names (below a `XX` directory).
    pub lookups: u64,
    /// Of those, names the table does not list (answered ENOENT).
    pub lookups_unknown: u64,
    /// OPEN requests of files.
    pub opens: u64,
    /// Opens answered in passthrough mode.
    pub opens_passthrough: u64,
    /// Opens answered EIO because the fetch failed.
    pub opens_failed: u64,
    /// Opens answered EIO because their fetch outlived the timeout.
    pub opens_timed_out: u64,
    /// Calls of [`crate::ObjectFetcher::fetch`].
    pub fetches_started: u64,
    /// Fetches that returned an error or a file of the wrong size.
    pub fetches_failed: u64,
    /// Bytes of the objects fetches returned.
    pub bytes_fetched: u64,
    /// READ requests. Passthrough sends none; any here means a read went
    /// through user space (and was refused).
    pub reads: u64,
    /// GETXATTR requests other than of [`COUNTERS_XATTR`] (answered
    /// ENODATA).
    pub getxattrs: u64,
}

/// The name of LAZY's root xattr whose value is [`Counts::to_text`]: how
/// tests and operators read a running server's counters
/// (`getfattr -n user.strata.counters STORE/lazy`).
pub const COUNTERS_XATTR: &str = "user.strata.counters";

impl Counts {
    /// `name value` lines, one per counter.
    pub fn to_text(&self) -> String {
        let fields = [
            ("lookups", self.lookups),
            ("lookups_unknown", self.lookups_unknown),
            ("opens", self.opens),
            ("opens_passthrough", self.opens_passthrough),
            ("opens_failed", self.opens_failed),
            ("opens_timed_out", self.opens_timed_out),
            ("fetches_started", self.fetches_started),
            ("fetches_failed", self.fetches_failed),
            ("bytes_fetched", self.bytes_fetched),
            ("reads", self.reads),
            ("getxattrs", self.getxattrs),
        ];
        fields.iter().map(|(name, value)| format!("{name} {value}\n")).collect()
    }

    /// An upper bound of [`Counts::to_text`]'s length, whatever the
    /// values: the answer to a size query, which a later read of larger
    /// numbers must still fit.
    pub fn text_bound() -> usize {
        // Each line at its longest: the name, a space, 20 digits, a newline.
        let digits = u64::MAX.to_string().len();
        Counts::default()
            .to_text()
            .lines()
            .map(|line| line.len() - 1 + digits + 1)
            .sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub lookups: AtomicU64,
    pub lookups_unknown: AtomicU64,
    pub opens: AtomicU64,
    pub opens_passthrough: AtomicU64,
    pub opens_failed: AtomicU64,
    pub opens_timed_out: AtomicU64,
    pub fetches_started: AtomicU64,
    pub fetches_failed: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub reads: AtomicU64,
    pub getxattrs: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> Counts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            lookups: get(&self.lookups),
            lookups_unknown: get(&self.lookups_unknown),
            opens: get(&self.opens),
            opens_passthrough: get(&self.opens_passthrough),
            opens_failed: get(&self.opens_failed),
            opens_timed_out: get(&self.opens_timed_out),
            fetches_started: get(&self.fetches_started),
            fetches_failed: get(&self.fetches_failed),
            bytes_fetched: get(&self.bytes_fetched),
            reads: get(&self.reads),
            getxattrs: get(&self.getxattrs),
        }
    }
}

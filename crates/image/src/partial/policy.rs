//! When a layer with a table of contents is pulled partially.

use std::fmt;
use std::str::FromStr;

/// Where strata may pull a layer partially.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PartialPulls {
    /// Every layer is pulled whole.
    Off,
    /// Layers with a TOC are pulled partially; their files are checked
    /// against the TOC, which the manifest covers; the diff_id is not.
    #[default]
    Toc,
    /// Only where the layer's diff_id can be checked too: zstd:chunked
    /// layers with a tar-split, whose uncompressed stream is rebuilt from
    /// it and the files. Other layers are pulled whole.
    Verified,
}

impl FromStr for PartialPulls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(PartialPulls::Off),
            "toc" => Ok(PartialPulls::Toc),
            "verified" => Ok(PartialPulls::Verified),
            other => Err(format!("{other:?} is not one of \"off\", \"toc\", \"verified\"")),
        }
    }
}

impl fmt::Display for PartialPulls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartialPulls::Off => "off",
            PartialPulls::Toc => "toc",
            PartialPulls::Verified => "verified",
        })
    }
}

/// The mode, and when a partial pull is worth its cost: one that would
/// fetch nearly all of a layer's file data (an empty store) is slower
/// than one stream (a decompressor per file, ranged requests) and, in
/// `toc` mode, cannot check the diff_id, so the layer is pulled whole
/// instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialPolicy {
    pub mode: PartialPulls,
    /// A layer is pulled partially only where that leaves at least this
    /// per cent of its file data unfetched (0: whenever it has a TOC).
    pub min_saving_percent: u8,
}

impl PartialPolicy {
    /// The default saving: a partial pull asking for over 90 % of the
    /// file data saves less than a whole pull's own advantages are worth.
    pub const DEFAULT_MIN_SAVING_PERCENT: u8 = 10;

    /// Whether fetching `fetch_bytes` of a layer's `data_bytes` of file
    /// data saves enough.
    pub fn worth(&self, fetch_bytes: u64, data_bytes: u64) -> bool {
        let saving = data_bytes.saturating_sub(fetch_bytes) as u128 * 100;
        saving >= u128::from(self.min_saving_percent) * u128::from(data_bytes)
    }
}

impl Default for PartialPolicy {
    fn default() -> Self {
        PartialPolicy {
            mode: PartialPulls::default(),
            min_saving_percent: Self::DEFAULT_MIN_SAVING_PERCENT,
        }
    }
}

impl From<PartialPulls> for PartialPolicy {
    fn from(mode: PartialPulls) -> Self {
        PartialPolicy {
            mode,
            ..PartialPolicy::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_is_partial_only_where_it_saves_enough() {
        let policy = PartialPolicy::default();
        assert!(policy.worth(0, 1000));
        assert!(policy.worth(900, 1000));
        assert!(!policy.worth(901, 1000));
        assert!(!policy.worth(1000, 1000));
        // Ranges may ask for more than the blob (merged gaps, the TOC).
        assert!(!policy.worth(2000, 1000));
        let always = PartialPolicy {
            min_saving_percent: 0,
            ..policy
        };
        assert!(always.worth(1000, 1000));
        assert!(always.worth(u64::MAX, u64::MAX));
        assert!(PartialPolicy {
            min_saving_percent: 100,
            ..policy
        }
        .worth(0, 1000));
        assert!(!PartialPolicy {
            min_saving_percent: 100,
            ..policy
        }
        .worth(1, 1000));
    }
}

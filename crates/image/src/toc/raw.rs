//! The TOC JSON as both formats write it, before validation.
//!
//! One entry type serves both: eStargz's `TOCEntry` (stargz-snapshotter
//! `estargz/types.go`) and zstd:chunked's `FileMetadata` (containers/storage
//! `pkg/chunked/internal/minimal`) share their field names; each format
//! leaves the other's fields out. Unknown fields are ignored, as Go does;
//! a field given twice is an error.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::TocError;

#[derive(Debug, Default)]
pub(super) struct RawToc {
    pub version: i64,
    pub entries: Vec<RawEntry>,
    /// zstd:chunked only: the digest of the compressed tar-split frame.
    pub tar_split_digest: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct RawEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub size: i64,
    pub modtime: Option<String>,
    pub link_name: String,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub user_name: Option<String>,
    pub group_name: Option<String>,
    pub dev_major: i64,
    pub dev_minor: i64,
    /// Values are base64 in both formats (Go's `[]byte` in eStargz).
    pub xattrs: Option<BTreeMap<String, String>>,
    pub digest: Option<String>,
    pub offset: i64,
    /// eStargz only.
    pub inner_offset: i64,
    /// zstd:chunked only.
    pub end_offset: i64,
    pub chunk_offset: i64,
    pub chunk_size: i64,
    pub chunk_digest: Option<String>,
    /// zstd:chunked only: "" (data) or "zeros".
    pub chunk_type: Option<String>,
}

/// Parses TOC JSON, refusing more than `max_entries` entries as they are
/// read, so a small JSON of many tiny entries cannot grow large in memory.
pub(super) fn parse(json: &[u8], max_entries: u64) -> Result<RawToc, TocError> {
    let over_limit = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(json);
    let seed = TocSeed {
        max_entries,
        over_limit: &over_limit,
    };
    let parsed = seed.deserialize(&mut de).and_then(|toc| de.end().map(|()| toc));
    match parsed {
        Ok(toc) => Ok(toc),
        Err(_) if over_limit.get() => Err(TocError::TooManyEntries { limit: max_entries }),
        Err(e) => Err(TocError::Json(e)),
    }
}

struct TocSeed<'a> {
    max_entries: u64,
    over_limit: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for TocSeed<'_> {
    type Value = RawToc;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<RawToc, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TocSeed<'_> {
    type Value = RawToc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOC object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawToc, A::Error> {
        let mut toc = RawToc::default();
        let (mut version, mut entries, mut tar_split) = (false, false, false);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let seen = match &*key {
                "version" => {
                    toc.version = map.next_value()?;
                    &mut version
                }
                "entries" => {
                    toc.entries = map.next_value_seed(EntriesSeed {
                        max_entries: self.max_entries,
                        over_limit: self.over_limit,
                    })?;
                    &mut entries
                }
                "tarSplitDigest" => {
                    toc.tar_split_digest = map.next_value()?;
                    &mut tar_split
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if std::mem::replace(seen, true) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
        }
        if !version {
            return Err(de::Error::missing_field("version"));
        }
        Ok(toc)
    }
}

struct EntriesSeed<'a> {
    max_entries: u64,
    over_limit: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for EntriesSeed<'_> {
    type Value = Vec<RawEntry>;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Vec<RawEntry>, D::Error> {
        deserializer.deserialize_any(self) // a list, or null
    }
}

impl<'de> Visitor<'de> for EntriesSeed<'_> {
    type Value = Vec<RawEntry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of TOC entries")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Vec<RawEntry>, E> {
        Ok(Vec::new()) // Go writes a nil slice as null.
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RawEntry>, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element::<RawEntry>()? {
            if entries.len() as u64 >= self.max_entries {
                self.over_limit.set(true);
                return Err(de::Error::custom("too many entries"));
            }
            entries.push(entry);
        }
        Ok(entries)
    }
}

//! TOC entries as the Go writers lay them out (pure): eStargz's `TOCEntry`
//! (stargz-snapshotter `estargz/types.go`) and zstd:chunked's
//! `FileMetadata` (containers/storage `pkg/chunked/internal/minimal`),
//! filled in from a tar header, and the TOC JSON they are appended to.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Serialize;

use crate::layer::archive::Header;
use crate::toc::Sha256Digest;

/// The TOC type of a tar entry type; `None` for types no TOC has.
pub(super) fn entry_type(typeflag: u8) -> Option<&'static str> {
    Some(match typeflag {
        b'0' | b'7' => "reg",
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char",
        b'4' => "block",
        b'5' => "dir",
        b'6' => "fifo",
        _ => return None,
    })
}

/// The metadata both formats take from a header, checked for what JSON
/// and the TOC readers can hold.
pub(super) struct EntryMeta {
    pub kind: &'static str,
    pub name: String,
    pub link_name: String,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub dev_major: i64,
    pub dev_minor: i64,
    /// Name to base64 of the value.
    pub xattrs: BTreeMap<String, String>,
}

impl EntryMeta {
    pub fn from_header(header: &Header) -> Result<Self, String> {
        let kind = entry_type(header.typeflag)
            .ok_or_else(|| format!("tar entry type {:?} has no TOC form", char::from(header.typeflag)))?;
        let text = |bytes: &[u8], what: &str| {
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("its {what} is not UTF-8, which a TOC cannot hold"))
        };
        let mut xattrs = BTreeMap::new();
        for (name, value) in &header.xattrs {
            let b64 = base64::engine::general_purpose::STANDARD.encode(value);
            xattrs.insert(text(name, "xattr name")?, b64);
        }
        Ok(EntryMeta {
            kind,
            name: text(&header.path, "name")?,
            link_name: text(&header.link, "link target")?,
            mode: header.mode,
            uid: header.uid,
            gid: header.gid,
            dev_major: header.dev_major,
            dev_minor: header.dev_minor,
            xattrs,
        })
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u(n: &u64) -> bool {
    *n == 0
}

/// One eStargz TOC entry, fields in Go's order, empty ones left out.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct EstargzEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub size: u64,
    #[serde(rename = "modtime", skip_serializing_if = "String::is_empty")]
    pub mod_time: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub chunk_offset: u64,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub chunk_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_digest: Option<String>,
}

impl EstargzEntry {
    /// The entry for `header`: devices keep their numbers, regular files
    /// their size; the data fields are the writer's to fill in.
    pub fn new(meta: EntryMeta, header: &Header) -> Result<Self, String> {
        let device = matches!(meta.kind, "char" | "block");
        Ok(EstargzEntry {
            name: meta.name,
            kind: meta.kind,
            size: if meta.kind == "reg" { header.size } else { 0 },
            mod_time: estargz_time(header.mtime)?,
            link_name: meta.link_name,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            dev_major: if device { meta.dev_major } else { 0 },
            dev_minor: if device { meta.dev_minor } else { 0 },
            xattrs: meta.xattrs,
            ..EstargzEntry::default()
        })
    }

    /// A later chunk of the file `name`.
    pub fn chunk(name: &str) -> Self {
        EstargzEntry {
            name: name.to_owned(),
            kind: "chunk",
            ..EstargzEntry::default()
        }
    }
}

/// One zstd:chunked TOC entry, fields in Go's order, empty ones left out.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ZstdEntry {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub size: u64,
    #[serde(skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(rename = "modtime", skip_serializing_if = "Option::is_none")]
    pub mod_time: Option<String>,
    #[serde(rename = "accesstime", skip_serializing_if = "Option::is_none")]
    pub access_time: Option<String>,
    #[serde(rename = "changetime", skip_serializing_if = "Option::is_none")]
    pub change_time: Option<String>,
    #[serde(skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub end_offset: u64,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub chunk_size: u64,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub chunk_offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_digest: Option<String>,
}

impl ZstdEntry {
    /// The entry containers/storage's `NewFileMetadata` makes of `header`.
    pub fn new(meta: EntryMeta, header: &Header) -> Result<Self, String> {
        let time = |t: Option<(i64, u32)>| t.map(rfc3339_nano).transpose();
        Ok(ZstdEntry {
            kind: meta.kind,
            name: meta.name,
            link_name: meta.link_name,
            mode: meta.mode,
            size: header.size,
            uid: meta.uid,
            gid: meta.gid,
            mod_time: time(Some(header.mtime))?,
            access_time: time(header.atime)?,
            change_time: time(header.ctime)?,
            dev_major: meta.dev_major,
            dev_minor: meta.dev_minor,
            xattrs: meta.xattrs,
            ..ZstdEntry::default()
        })
    }

    /// A later chunk of the file `name`.
    pub fn chunk(name: &str) -> Self {
        ZstdEntry {
            kind: "chunk",
            name: name.to_owned(),
            ..ZstdEntry::default()
        }
    }
}

/// eStargz's modtime: empty for the epoch, else UTC rounded to the second.
fn estargz_time((secs, nanos): (i64, u32)) -> Result<String, String> {
    let secs = if nanos >= 500_000_000 {
        secs.saturating_add(1)
    } else {
        secs
    };
    if secs == 0 {
        return Ok(String::new());
    }
    rfc3339_nano((secs, 0))
}

/// Go's `time.Time` JSON in UTC: `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the
/// fraction without trailing zeros. Years past 9999 or before 0 have no
/// such form (Go refuses them too).
pub(super) fn rfc3339_nano((secs, nanos): (i64, u32)) -> Result<String, String> {
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return Err(format!("its time {secs}.{nanos:09} has no RFC 3339 form"));
    }
    let mut text = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        text.push('.');
        text.push_str(fraction.trim_end_matches('0'));
    }
    text.push('Z');
    Ok(text)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = u32::try_from(day_of_year - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The TOC JSON, entries appended as they are complete, so that only the
/// JSON is held, never a list of entries; refused past `limit` bytes, the
/// most a TOC reader takes.
pub(super) struct TocJson {
    buf: Vec<u8>,
    entries: u64,
    limit: u64,
}

impl TocJson {
    pub fn new(limit: u64) -> Self {
        TocJson {
            buf: b"{\"version\":1,\"entries\":[".to_vec(),
            entries: 0,
            limit,
        }
    }

    pub fn push(&mut self, entry: &impl Serialize) -> Result<(), String> {
        if self.entries > 0 {
            self.buf.push(b',');
        }
        serde_json::to_writer(&mut self.buf, entry).map_err(|e| e.to_string())?;
        self.entries += 1;
        if self.buf.len() as u64 > self.limit {
            return Err(format!(
                "its TOC passes {} bytes, the most TOC readers take",
                self.limit
            ));
        }
        Ok(())
    }

    /// The whole JSON; zstd:chunked adds the tar-split's digest.
    pub fn finish(mut self, tar_split_digest: Option<&Sha256Digest>) -> Vec<u8> {
        self.buf.push(b']');
        if let Some(digest) = tar_split_digest {
            self.buf
                .extend_from_slice(format!(",\"tarSplitDigest\":\"{digest}\"").as_bytes());
        }
        self.buf.push(b'}');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        let table: &[((i64, u32), &str)] = &[
            ((0, 0), "1970-01-01T00:00:00Z"),
            ((1_704_067_200, 0), "2024-01-01T00:00:00Z"),
            ((1_709_210_096, 500_000_000), "2024-02-29T12:34:56.5Z"),
            ((1_704_067_200, 1), "2024-01-01T00:00:00.000000001Z"),
            ((-1, 0), "1969-12-31T23:59:59Z"),
            ((253_402_300_799, 0), "9999-12-31T23:59:59Z"),
        ];
        for &(time, text) in table {
            assert_eq!(rfc3339_nano(time).unwrap(), text);
        }
        assert!(rfc3339_nano((253_402_300_800, 0)).is_err());
        assert_eq!(estargz_time((0, 0)).unwrap(), "");
        assert_eq!(estargz_time((0, 499_999_999)).unwrap(), "");
        assert_eq!(estargz_time((9, 500_000_000)).unwrap(), "1970-01-01T00:00:10Z");
    }

    #[test]
    fn toc_json_is_json_and_bounded() {
        let mut toc = TocJson::new(1 << 20);
        toc.push(&EstargzEntry::chunk("a")).unwrap();
        toc.push(&ZstdEntry::chunk("b")).unwrap();
        let digest = Sha256Digest::of(b"x");
        let value: serde_json::Value = serde_json::from_slice(&toc.finish(Some(&digest))).unwrap();
        assert_eq!(value["entries"][0], serde_json::json!({"name": "a", "type": "chunk"}));
        assert_eq!(value["entries"][1], serde_json::json!({"type": "chunk", "name": "b"}));
        assert_eq!(value["tarSplitDigest"], digest.to_string());
        let mut small = TocJson::new(60);
        small.push(&EstargzEntry::chunk("a")).unwrap();
        assert!(small.push(&EstargzEntry::chunk("b")).is_err());
    }
}

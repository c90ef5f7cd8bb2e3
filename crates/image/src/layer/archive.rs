//! A streaming tar reader that holds no more than its limits allow. It
//! follows Go's archive/tar, which containerd uses:
//!
//! - a PAX extended header (`x`, `g`) over 1 MiB, or a GNU long name or
//!   link (`L`, `K`) over the path limit, is refused from its header's size
//!   field, before its body is read;
//! - PAX records override the header; a GNU long name or link names the
//!   next entry; the last of several such headers wins;
//! - links, devices, directories and FIFOs have no body, whatever their
//!   size field says;
//! - an old V7 regular entry (typeflag NUL) whose name ends in `/` is a
//!   directory;
//! - GNU sparse files (old GNU with extension headers, PAX 0.0, 0.1 and
//!   1.0) read back at their full size, holes as zeros; the map is checked
//!   (in order, no overlap, within the size, covering exactly the stored data).

use std::io::{self, Read};

/// Most bytes of one PAX extended header, as Go's `maxSpecialFileSize`.
pub(super) const MAX_PAX_BYTES: u64 = 1 << 20;
/// Most data fragments of one sparse file (16 bytes each in memory).
pub(super) const MAX_SPARSE_ENTRIES: usize = 1 << 16;
const BLOCK: usize = 512;

/// One archive member, as the next header (and its PAX records) describe it.
#[derive(Debug)]
pub(crate) struct Header {
    /// After normalisation: `0` for every regular file (V7 NUL, old GNU `S`).
    pub typeflag: u8,
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub mode: i64,
    pub uid: i64,
    pub gid: i64,
    pub mtime: (i64, u32),
    /// Access and change times, where a PAX record or a GNU header gives them.
    pub atime: Option<(i64, u32)>,
    pub ctime: Option<(i64, u32)>,
    pub dev_major: i64,
    pub dev_minor: i64,
    /// What reading the body yields, sparse holes included.
    pub size: u64,
    /// `SCHILY.xattr.*` records in archive order, names without the prefix.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug)]
pub(crate) enum ArchiveError {
    Io(io::Error),
    /// The archive's framing is broken; no entry to name.
    Header(String),
    /// The entry at this path is malformed.
    Entry {
        path: Vec<u8>,
        reason: String,
    },
}

impl From<io::Error> for ArchiveError {
    fn from(e: io::Error) -> Self {
        ArchiveError::Io(e)
    }
}

fn header_err(reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Header(reason.into())
}

enum Body {
    Plain { left: u64 },
    Sparse(Sparse),
}

struct Sparse {
    /// Stored bytes left in the archive.
    physical: u64,
    /// Data fragments (offset, length): sorted, disjoint, non-empty.
    fragments: Vec<(u64, u64)>,
    next: usize,
    pos: u64,
    size: u64,
}

pub(crate) struct Archive<'r> {
    inner: &'r mut dyn Read,
    max_name: usize,
    body: Body,
    pad: u64,
    done: bool,
}

impl<'r> Archive<'r> {
    /// `max_name`: the most bytes a GNU long name or link may have.
    pub(crate) fn new(inner: &'r mut dyn Read, max_name: usize) -> Self {
        Archive {
            inner,
            max_name,
            body: Body::Plain { left: 0 },
            pad: 0,
            done: false,
        }
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        if copied != n {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn skip_rest(&mut self) -> io::Result<()> {
        let left = match &self.body {
            Body::Plain { left } => *left,
            Body::Sparse(s) => s.physical,
        };
        let total = left
            .checked_add(self.pad)
            .ok_or_else(|| io::Error::other("entry size overflows"))?;
        self.body = Body::Plain { left: 0 };
        self.pad = 0;
        self.skip(total)
    }

    /// A whole block, or `None` at a clean end of input.
    fn read_block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(block))
    }

    /// The body of a metadata entry, its size already checked.
    fn read_special(&mut self, size: u64) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::new();
        let read = (&mut self.inner).take(size).read_to_end(&mut out)?;
        if u64::try_from(read).ok() != Some(size) {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        self.skip(padding(size))?;
        Ok(out)
    }

    /// The next entry, metadata entries applied; `None` at the end.
    pub(crate) fn next(&mut self) -> Result<Option<Header>, ArchiveError> {
        if self.done {
            return Ok(None);
        }
        let mut pax = Pax::default();
        let mut long_name = None;
        let mut long_link = None;
        loop {
            self.skip_rest()?;
            let Some(block) = self.read_block()? else {
                self.done = true;
                return Ok(None);
            };
            if block == [0u8; BLOCK] {
                // Two zero blocks end the archive; Go refuses data after one.
                self.done = true;
                return match self.read_block()? {
                    Some(next) if next != [0u8; BLOCK] => Err(header_err("a zero block followed by data")),
                    _ => Ok(None),
                };
            }
            let raw = RawHeader::parse(&block)?;
            match raw.typeflag {
                b'x' | b'g' => {
                    if raw.size > MAX_PAX_BYTES {
                        return Err(header_err(format!(
                            "PAX extended header of {} bytes is over the limit of {MAX_PAX_BYTES}",
                            raw.size
                        )));
                    }
                    let bytes = self.read_special(raw.size)?;
                    pax = Pax::parse(&bytes)?;
                    if raw.typeflag == b'g' {
                        if let Some(reason) = pax.invalid {
                            return Err(header_err(reason));
                        }
                        return Ok(Some(raw.into_header(b'g')));
                    }
                }
                b'L' | b'K' => {
                    let what = if raw.typeflag == b'L' { "name" } else { "link target" };
                    let limit = u64::try_from(self.max_name).unwrap_or(u64::MAX).saturating_add(1);
                    if raw.size > limit {
                        return Err(header_err(format!(
                            "GNU long {what} of {} bytes is over the path limit of {}",
                            raw.size, self.max_name
                        )));
                    }
                    let mut bytes = self.read_special(raw.size)?;
                    while bytes.last() == Some(&0) {
                        bytes.pop();
                    }
                    if bytes.contains(&0) {
                        return Err(header_err(format!("GNU long {what} contains a NUL byte")));
                    }
                    if raw.typeflag == b'L' {
                        long_name = Some(bytes);
                    } else {
                        long_link = Some(bytes);
                    }
                }
                _ => return self.entry(raw, &block, pax, long_name, long_link).map(Some),
            }
        }
    }

    fn entry(
        &mut self,
        raw: RawHeader,
        block: &[u8; BLOCK],
        pax: Pax,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> Result<Header, ArchiveError> {
        let gnu = raw.gnu;
        let mut header = raw.into_header(0);
        let mut stored = header.size;
        pax.apply(&mut header, &mut stored)?;
        // As Go: an empty long name or link leaves the header's.
        if let Some(name) = long_name.filter(|n| !n.is_empty()) {
            header.path = name;
        }
        if let Some(link) = long_link.filter(|l| !l.is_empty()) {
            header.link = link;
        }
        if header.typeflag == 0 {
            header.typeflag = if header.path.ends_with(b"/") { b'5' } else { b'0' };
        }
        let header_only = matches!(header.typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6');
        if header_only {
            stored = 0;
        }
        self.pad = padding(stored);
        self.body = Body::Plain { left: stored };
        let err = |path: &[u8], reason: String| ArchiveError::Entry {
            path: path.to_vec(),
            reason,
        };
        if let Some(reason) = &pax.invalid {
            return Err(err(&header.path, reason.clone()));
        }
        let map = if header.typeflag == b'S' {
            if !gnu {
                return Err(err(&header.path, "old GNU sparse entry in a non-GNU header".into()));
            }
            header.typeflag = b'0';
            header.size = parse_numeric(&block[483..495])
                .and_then(|n| u64::try_from(n).ok())
                .ok_or_else(|| err(&header.path, "invalid sparse real size".into()))?;
            Some(self.old_gnu_map(block).map_err(|reason| err(&header.path, reason))?)
        } else {
            match pax.sparse_version() {
                None => None,
                Some(version) => {
                    if let Some(name) = pax.get(b"GNU.sparse.name").filter(|n| !n.is_empty()) {
                        header.path = name.to_vec();
                    }
                    let size = pax
                        .get(b"GNU.sparse.size")
                        .filter(|s| !s.is_empty())
                        .or_else(|| pax.get(b"GNU.sparse.realsize").filter(|s| !s.is_empty()));
                    if let Some(size) = size {
                        header.size =
                            parse_decimal(size).ok_or_else(|| err(&header.path, "invalid sparse size".into()))?;
                    }
                    let map = if version == SparseVersion::V1_0 {
                        self.map_1x0()
                    } else {
                        pax.map_0x1()
                    };
                    Some(map.map_err(|reason| err(&header.path, reason))?)
                }
            }
        };
        if let Some(map) = map {
            if header_only {
                return Err(err(&header.path, "a sparse map on an entry without a body".into()));
            }
            let physical = match &self.body {
                Body::Plain { left } => *left,
                Body::Sparse(_) => 0,
            };
            let sparse = Sparse::new(map, header.size, physical).map_err(|reason| err(&header.path, reason))?;
            self.body = Body::Sparse(sparse);
        } else if !header_only {
            header.size = stored;
        }
        Ok(header)
    }

    /// The map of an old GNU sparse header, with its extension blocks.
    fn old_gnu_map(&mut self, block: &[u8; BLOCK]) -> Result<Vec<(u64, u64)>, String> {
        let mut map = Vec::new();
        let mut area = block[386..483].to_vec();
        let mut count = 4;
        loop {
            for entry in area[..count * 24].chunks_exact(24) {
                if entry[0] == 0 {
                    break;
                }
                if map.len() >= MAX_SPARSE_ENTRIES {
                    return Err(format!("sparse map over {MAX_SPARSE_ENTRIES} entries"));
                }
                let offset = parse_numeric(&entry[..12]).and_then(|n| u64::try_from(n).ok());
                let length = parse_numeric(&entry[12..]).and_then(|n| u64::try_from(n).ok());
                match (offset, length) {
                    (Some(o), Some(l)) => map.push((o, l)),
                    _ => return Err("invalid sparse map entry".into()),
                }
            }
            if area[count * 24] == 0 {
                return Ok(map);
            }
            let next = self
                .read_block()
                .map_err(|e| format!("reading a sparse extension header: {e}"))?
                .ok_or("sparse extension header missing")?;
            area = next.to_vec();
            count = 21;
        }
    }

    /// The PAX 1.0 map: newline-ended decimals at the start of the data,
    /// padded to a block.
    fn map_1x0(&mut self) -> Result<Vec<(u64, u64)>, String> {
        let Body::Plain { left } = self.body else {
            return Err("sparse map read twice".into());
        };
        let mut physical = left;
        let mut numbers: Vec<u64> = Vec::new();
        let mut wanted: Option<usize> = None;
        let mut token = Vec::new();
        while wanted.is_none_or(|w| numbers.len() < w) {
            if physical < BLOCK as u64 {
                return Err("sparse map runs past the entry's data".into());
            }
            physical -= BLOCK as u64;
            let block = self
                .read_block()
                .map_err(|e| format!("reading the sparse map: {e}"))?
                .ok_or("sparse map cut short")?;
            for &b in &block {
                if wanted.is_some_and(|w| numbers.len() >= w) {
                    break;
                }
                if b != b'\n' {
                    if token.len() >= 20 {
                        return Err("sparse map number too long".into());
                    }
                    token.push(b);
                    continue;
                }
                let n = parse_decimal(&token).ok_or("invalid sparse map number")?;
                token.clear();
                match wanted {
                    None => {
                        let entries = usize::try_from(n).ok().filter(|&e| e <= MAX_SPARSE_ENTRIES);
                        let entries = entries.ok_or_else(|| format!("sparse map over {MAX_SPARSE_ENTRIES} entries"))?;
                        wanted = Some(2 * entries);
                    }
                    Some(_) => numbers.push(n),
                }
            }
        }
        self.body = Body::Plain { left: physical };
        Ok(numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }
}

impl Read for Archive<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.body {
            Body::Plain { left } => {
                let want = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                if want == 0 {
                    return Ok(0);
                }
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                *left -= n as u64;
                Ok(n)
            }
            Body::Sparse(s) => s.read(&mut *self.inner, buf),
        }
    }
}

impl Sparse {
    fn new(map: Vec<(u64, u64)>, size: u64, physical: u64) -> Result<Self, String> {
        let mut end = 0u64;
        let mut stored = 0u64;
        let mut fragments = Vec::with_capacity(map.len());
        for (offset, length) in map {
            let frag_end = offset.checked_add(length).ok_or("sparse map entry overflows")?;
            if frag_end > size {
                return Err(format!("sparse map entry ends at {frag_end}, past the size of {size}"));
            }
            if offset < end {
                return Err("sparse map entries overlap or are out of order".into());
            }
            end = frag_end;
            stored += length;
            if length > 0 {
                fragments.push((offset, length));
            }
        }
        if stored != physical {
            return Err(format!(
                "sparse map covers {stored} bytes but the entry stores {physical}"
            ));
        }
        Ok(Sparse {
            physical,
            fragments,
            next: 0,
            pos: 0,
            size,
        })
    }

    fn read(&mut self, inner: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
        let room = |end: u64, pos: u64| usize::try_from(end - pos).unwrap_or(usize::MAX).min(buf.len());
        match self.fragments.get(self.next).copied() {
            Some((offset, length)) if self.pos >= offset => {
                let want = room(offset + length, self.pos);
                let n = inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                self.pos += n as u64;
                self.physical -= n as u64;
                if self.pos == offset + length {
                    self.next += 1;
                }
                Ok(n)
            }
            next => {
                let hole_end = next.map_or(self.size, |(offset, _)| offset);
                let n = room(hole_end, self.pos);
                buf[..n].fill(0);
                self.pos += n as u64;
                Ok(n)
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SparseVersion {
    V0,
    V1_0,
}

/// The records of one PAX extended header, in order.
#[derive(Default)]
struct Pax {
    records: Vec<(Vec<u8>, Vec<u8>)>,
    /// A record Go refuses (a NUL byte where none may be), reported with
    /// the path of the entry it belongs to.
    invalid: Option<String>,
}

impl Pax {
    fn parse(mut bytes: &[u8]) -> Result<Pax, ArchiveError> {
        let bad = |why: &str| header_err(format!("malformed PAX record: {why}"));
        let mut records = Vec::new();
        let mut invalid = None;
        // PAX 0.0 sparse maps: repeated offset/numbytes pairs.
        let mut map00: Vec<&[u8]> = Vec::new();
        while !bytes.is_empty() {
            let space = bytes.iter().position(|&b| b == b' ').ok_or_else(|| bad("no length"))?;
            let len = parse_decimal(&bytes[..space]).and_then(|n| usize::try_from(n).ok());
            let len = len
                .filter(|&n| n > space + 1 && n <= bytes.len())
                .ok_or_else(|| bad("bad length"))?;
            let (record, rest) = bytes.split_at(len);
            bytes = rest;
            let body = record[space + 1..]
                .strip_suffix(b"\n")
                .ok_or_else(|| bad("no newline"))?;
            let eq = body.iter().position(|&b| b == b'=').ok_or_else(|| bad("no '='"))?;
            let (key, value) = (&body[..eq], &body[eq + 1..]);
            if key.is_empty() {
                return Err(bad("empty key"));
            }
            let shown = String::from_utf8_lossy(key);
            match key {
                b"path" | b"linkpath" | b"uname" | b"gname" if value.contains(&0) => {
                    invalid.get_or_insert(format!("PAX record {shown} contains a NUL byte"));
                }
                _ if key.contains(&0) => {
                    invalid.get_or_insert(format!("PAX record key {shown:?} contains a NUL byte"));
                }
                b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                    let expect_offset = map00.len().is_multiple_of(2);
                    if expect_offset != (key == b"GNU.sparse.offset") || value.contains(&b',') {
                        return Err(bad("GNU sparse 0.0 map out of order"));
                    }
                    if map00.len() >= 2 * MAX_SPARSE_ENTRIES {
                        return Err(header_err(format!("sparse map over {MAX_SPARSE_ENTRIES} entries")));
                    }
                    map00.push(value);
                }
                _ => records.push((key.to_vec(), value.to_vec())),
            }
        }
        if !map00.is_empty() {
            records.push((b"GNU.sparse.map".to_vec(), map00.join(&b','))); // last wins
        }
        Ok(Pax { records, invalid })
    }

    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.records.iter().rev().find(|(k, _)| k == key).map(|(_, v)| &v[..])
    }

    /// Go's mergePAX: an empty value keeps the header's.
    fn apply(&self, header: &mut Header, stored: &mut u64) -> Result<(), ArchiveError> {
        for (key, value) in &self.records {
            if value.is_empty() {
                continue;
            }
            let bad = || {
                header_err(format!(
                    "invalid PAX {} {:?}",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(value)
                ))
            };
            let int = || parse_decimal_signed(value).ok_or_else(bad);
            match &key[..] {
                b"path" => header.path = value.clone(),
                b"linkpath" => header.link = value.clone(),
                b"uid" => header.uid = int()?,
                b"gid" => header.gid = int()?,
                b"mtime" => {
                    header.mtime = std::str::from_utf8(value)
                        .ok()
                        .and_then(parse_pax_time)
                        .ok_or_else(bad)?;
                }
                b"atime" | b"ctime" => {
                    let time = std::str::from_utf8(value)
                        .ok()
                        .and_then(parse_pax_time)
                        .ok_or_else(bad)?;
                    *if key == b"atime" {
                        &mut header.atime
                    } else {
                        &mut header.ctime
                    } = Some(time);
                }
                b"size" => *stored = parse_decimal(value).ok_or_else(bad)?,
                _ => {
                    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                        header.xattrs.push((name.to_vec(), value.clone()));
                    }
                }
            }
        }
        header.size = *stored;
        Ok(())
    }

    fn sparse_version(&self) -> Option<SparseVersion> {
        let major = self.get(b"GNU.sparse.major").unwrap_or_default();
        let minor = self.get(b"GNU.sparse.minor").unwrap_or_default();
        match (major, minor) {
            (b"0", b"0" | b"1") => Some(SparseVersion::V0),
            (b"1", b"0") => Some(SparseVersion::V1_0),
            (b"", b"") if self.get(b"GNU.sparse.map").is_some_and(|m| !m.is_empty()) => Some(SparseVersion::V0),
            _ => None,
        }
    }

    /// The PAX 0.0/0.1 map: `GNU.sparse.numblocks` pairs in `GNU.sparse.map`.
    fn map_0x1(&self) -> Result<Vec<(u64, u64)>, String> {
        let entries = parse_decimal(self.get(b"GNU.sparse.numblocks").unwrap_or_default())
            .and_then(|n| usize::try_from(n).ok())
            .ok_or("invalid GNU.sparse.numblocks")?;
        if entries > MAX_SPARSE_ENTRIES {
            return Err(format!("sparse map over {MAX_SPARSE_ENTRIES} entries"));
        }
        let map = self.get(b"GNU.sparse.map").unwrap_or_default();
        let numbers: Vec<u64> = if map.is_empty() {
            Vec::new()
        } else {
            map.split(|&b| b == b',')
                .map(parse_decimal)
                .collect::<Option<_>>()
                .ok_or("invalid GNU.sparse.map")?
        };
        if numbers.len() != 2 * entries {
            return Err(format!(
                "GNU.sparse.map has {} numbers for {entries} entries",
                numbers.len()
            ));
        }
        Ok(numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }
}

/// The fields of one header block.
struct RawHeader {
    typeflag: u8,
    gnu: bool,
    path: Vec<u8>,
    link: Vec<u8>,
    mode: i64,
    uid: i64,
    gid: i64,
    mtime: i64,
    /// GNU headers only, where set.
    atime: Option<i64>,
    ctime: Option<i64>,
    dev_major: i64,
    dev_minor: i64,
    size: u64,
}

impl RawHeader {
    fn parse(block: &[u8; BLOCK]) -> Result<Self, ArchiveError> {
        let field = |range: std::ops::Range<usize>, what: &str| {
            parse_numeric(&block[range]).ok_or_else(|| header_err(format!("invalid {what} in tar header")))
        };
        let recorded = field(148..156, "checksum")?;
        // The checksum field counts as eight spaces; old tars summed signed bytes.
        let recorded_bytes: i64 = block[148..156].iter().map(|&b| i64::from(b)).sum();
        let unsigned = byte_sum(block) - recorded_bytes + 8 * 32;
        let signed = || {
            let high = block[..148].iter().chain(&block[156..]).filter(|&&b| b >= 0x80).count();
            unsigned - 256 * i64::try_from(high).unwrap_or(0)
        };
        if recorded != unsigned && recorded != signed() {
            return Err(header_err("tar header checksum mismatch"));
        }
        let magic = &block[257..263];
        let ustar = magic == b"ustar\0";
        let gnu = magic == b"ustar " && &block[263..265] == b" \0";
        let mut path = c_string(&block[..100]).to_vec();
        if ustar {
            let star = &block[508..512] == b"tar\0";
            let prefix = c_string(if star { &block[345..476] } else { &block[345..500] });
            if !prefix.is_empty() {
                path = [prefix, b"/", &path].concat();
            }
        }
        let typeflag = block[156];
        let (dev_major, dev_minor) = if ustar || gnu {
            (field(329..337, "device major")?, field(337..345, "device minor")?)
        } else {
            (0, 0)
        };
        let size = u64::try_from(field(124..136, "size")?).map_err(|_| header_err("negative size in tar header"))?;
        // As Go: set only when non-empty, and both dropped if either is unreadable.
        let gnu_time = |at: usize| (block[at] != 0).then(|| parse_numeric(&block[at..at + 12]));
        let (atime, ctime) = match (gnu_time(345), gnu_time(357)) {
            (Some(None), _) | (_, Some(None)) => (None, None),
            (a, c) if gnu => (a.flatten(), c.flatten()),
            _ => (None, None),
        };
        Ok(RawHeader {
            typeflag,
            gnu,
            path,
            link: c_string(&block[157..257]).to_vec(),
            mode: field(100..108, "mode")?,
            uid: field(108..116, "uid")?,
            gid: field(116..124, "gid")?,
            mtime: field(136..148, "mtime")?,
            atime,
            ctime,
            dev_major,
            dev_minor,
            size,
        })
    }

    fn into_header(self, typeflag_override: u8) -> Header {
        Header {
            typeflag: if typeflag_override == 0 {
                self.typeflag
            } else {
                typeflag_override
            },
            path: self.path,
            link: self.link,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: (self.mtime, 0),
            atime: self.atime.map(|t| (t, 0)),
            ctime: self.ctime.map(|t| (t, 0)),
            dev_major: self.dev_major,
            dev_minor: self.dev_minor,
            size: self.size,
            xattrs: Vec::new(),
        }
    }
}

/// The sum of a block's bytes, eight at a time (this runs per header).
fn byte_sum(block: &[u8; BLOCK]) -> i64 {
    const LANES: u64 = 0x00ff_00ff_00ff_00ff;
    let mut lanes = 0u64; // four 16-bit sums, each at most 64 * 510
    for word in block.chunks_exact(8) {
        let w = u64::from_le_bytes(word.try_into().unwrap_or([0; 8]));
        lanes += (w & LANES) + ((w >> 8) & LANES);
    }
    let total = (lanes & 0xffff) + ((lanes >> 16) & 0xffff) + ((lanes >> 32) & 0xffff) + (lanes >> 48);
    i64::try_from(total).unwrap_or(i64::MAX)
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Up to the first NUL.
fn c_string(field: &[u8]) -> &[u8] {
    field.iter().position(|&b| b == 0).map_or(field, |end| &field[..end])
}

/// Go's parseNumeric: base-256 (two's complement, high bit set) or octal
/// padded with spaces and NULs.
pub(super) fn parse_numeric(field: &[u8]) -> Option<i64> {
    if let Some(&first) = field.first().filter(|&&b| b & 0x80 != 0) {
        let inv = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in field.iter().enumerate() {
            let c = if i == 0 { (c ^ inv) & 0x7f } else { c ^ inv };
            if x >> 56 != 0 {
                return None;
            }
            x = (x << 8) | u64::from(c);
        }
        let x = i64::try_from(x).ok()?;
        return Some(if inv == 0xff { !x } else { x });
    }
    let start = field.iter().position(|&b| b != b' ' && b != 0).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(start, |e| e + 1);
    let digits = c_string(&field[start..end.max(start)]);
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    let text = std::str::from_utf8(digits).ok()?;
    i64::try_from(u64::from_str_radix(text, 8).ok()?).ok()
}

fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn parse_decimal_signed(text: &[u8]) -> Option<i64> {
    match text.strip_prefix(b"-") {
        Some(rest) => i64::try_from(parse_decimal(rest)?)
            .ok()
            .and_then(i64::checked_neg)
            .or_else(|| (rest == b"9223372036854775808").then_some(i64::MIN)),
        None => i64::try_from(parse_decimal(text)?).ok(),
    }
}

/// PAX times: `[-]SECONDS[.FRACTION]`, fractions past nanoseconds cut off.
pub(super) fn parse_pax_time(text: &str) -> Option<(i64, u32)> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let negative = secs.starts_with('-');
    let secs = parse_decimal_signed(secs.as_bytes())?;
    if frac.is_empty() {
        return Some((secs, 0));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: u32 = digits.parse().ok()?;
    if negative && nanos > 0 {
        Some((secs.checked_sub(1)?, 1_000_000_000 - nanos))
    } else {
        Some((secs, nanos))
    }
}

//! Hand-built eStargz and zstd:chunked blobs, laid out as the Go writers
//! lay them out, with TOC JSON a test may alter before it is sealed.

use std::collections::BTreeMap;
use std::io::Write as _;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::toc::Sha256Digest;

pub enum Body {
    File(Vec<u8>),
    Dir,
    Symlink(&'static str),
    Hardlink(&'static str),
    Fifo,
    Char(u32, u32),
}

pub struct Item {
    pub name: String,
    pub body: Body,
    pub uid: u64,
    pub xattrs: Vec<(&'static str, &'static [u8])>,
}

pub fn file(name: &str, data: &[u8]) -> Item {
    item(name, Body::File(data.to_vec()))
}

pub fn item(name: &str, body: Body) -> Item {
    Item {
        name: name.to_owned(),
        body,
        uid: 0,
        xattrs: Vec::new(),
    }
}

/// A few of every kind: directories, files (empty, small, large), links,
/// a fifo, a device, xattrs and two owners.
pub fn sample() -> Vec<Item> {
    let mut big = Vec::new();
    for i in 0u32..40_000 {
        big.extend_from_slice(&i.to_le_bytes());
    }
    let mut with_xattr = file("etc/secret", b"s3cret\n");
    with_xattr.xattrs = vec![("security.capability", b"\x01\x00\x00\x02"), ("user.note", b"")];
    let mut owned = file("home/user/notes.txt", b"notes\n");
    owned.uid = 1000;
    let mut owned_again = item("home/user", Body::Dir);
    owned_again.uid = 1000;
    vec![
        item("./", Body::Dir),
        item("etc/", Body::Dir),
        file("etc/hostname", b"strata\n"),
        file("etc/empty", b""),
        with_xattr,
        item("home/", Body::Dir),
        owned_again,
        owned,
        file("usr/lib/big.bin", &big),
        item("usr/lib/big.link", Body::Hardlink("usr/lib/big.bin")),
        item("usr/lib/libx.so", Body::Symlink("../../x/libx.so.1")),
        item("run/fifo", Body::Fifo),
        item("dev/null", Body::Char(1, 3)),
    ]
}

/// A tar entry's bytes: header (with PAX records for xattrs), the data,
/// and the padding after it.
struct TarPieces {
    header: Vec<u8>,
    data: Vec<u8>,
    padding: Vec<u8>,
}

fn tar_pieces(item: &Item) -> TarPieces {
    let mut header = tar::Header::new_ustar();
    header.set_mode(match item.body {
        Body::Dir => 0o755,
        _ => 0o644,
    });
    header.set_uid(item.uid);
    header.set_gid(item.uid);
    header.set_mtime(1_704_067_200);
    let mut data = Vec::new();
    match &item.body {
        Body::File(bytes) => {
            header.set_entry_type(tar::EntryType::Regular);
            data = bytes.clone();
        }
        Body::Dir => header.set_entry_type(tar::EntryType::Directory),
        Body::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_link_name(target).unwrap();
        }
        Body::Hardlink(target) => {
            header.set_entry_type(tar::EntryType::Link);
            header.set_link_name(target).unwrap();
        }
        Body::Fifo => header.set_entry_type(tar::EntryType::Fifo),
        Body::Char(major, minor) => {
            header.set_entry_type(tar::EntryType::Char);
            header.set_device_major(*major).unwrap();
            header.set_device_minor(*minor).unwrap();
        }
    }
    header.set_size(data.len() as u64);
    header.set_path(&item.name).unwrap();
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    if !item.xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = item
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
    }
    builder.append(&header, &data[..]).unwrap();
    let mut bytes = builder.into_inner().unwrap();
    bytes.truncate(bytes.len() - 1024); // the end-of-archive blocks
    let padded = data.len().div_ceil(512) * 512;
    let header_len = bytes.len() - padded;
    TarPieces {
        header: bytes[..header_len].to_vec(),
        padding: bytes[header_len + data.len()..].to_vec(),
        data,
    }
}

/// The metadata both formats' TOC entries share.
fn common_json(item: &Item, zstd: bool) -> Map<String, Value> {
    let (kind, link) = match &item.body {
        Body::File(_) => ("reg", None),
        Body::Dir => ("dir", None),
        Body::Symlink(t) => ("symlink", Some(*t)),
        Body::Hardlink(t) => ("hardlink", Some(*t)),
        Body::Fifo => ("fifo", None),
        Body::Char(..) => ("char", None),
    };
    let mut e = Map::new();
    e.insert("name".into(), json!(item.name));
    e.insert("type".into(), json!(kind));
    e.insert(
        "mode".into(),
        json!(if matches!(item.body, Body::Dir) { 0o755 } else { 0o644 }),
    );
    if item.uid != 0 {
        e.insert("uid".into(), json!(item.uid));
        e.insert("gid".into(), json!(item.uid));
    }
    e.insert("modtime".into(), json!("2024-01-01T00:00:00Z"));
    if let Some(link) = link {
        e.insert("linkName".into(), json!(link));
    }
    if let Body::Char(major, minor) = item.body {
        e.insert("devMajor".into(), json!(major));
        e.insert("devMinor".into(), json!(minor));
    }
    if !item.xattrs.is_empty() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let map: Map<String, Value> = item
            .xattrs
            .iter()
            .map(|(k, v)| ((*k).into(), json!(b64.encode(v))))
            .collect();
        e.insert("xattrs".into(), Value::Object(map));
    }
    if let Body::File(data) = &item.body {
        e.insert("size".into(), json!(data.len()));
        if !data.is_empty() || !zstd {
            e.insert("digest".into(), json!(Sha256Digest::of(data).to_string()));
        }
    }
    e
}

#[derive(Clone, Copy, Default)]
pub struct EstargzOptions {
    /// Split file data into chunks of this many bytes (0: one chunk).
    pub chunk_size: usize,
    /// Let small files share a gzip member (`innerOffset`).
    pub share_members: bool,
    pub legacy_footer: bool,
}

pub struct Estargz {
    pub blob: Vec<u8>,
    pub digest: Sha256Digest,
    pub toc_offset: u64,
}

struct GzMembers {
    out: Vec<u8>,
    current: Option<flate2::write::GzEncoder<Vec<u8>>>,
    /// Uncompressed bytes in the current member.
    written: u64,
}

impl GzMembers {
    fn write(&mut self, bytes: &[u8]) {
        let encoder = self
            .current
            .get_or_insert_with(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
        encoder.write_all(bytes).unwrap();
        self.written += bytes.len() as u64;
    }

    /// Ends the current member; the next write starts one at the returned offset.
    fn close(&mut self) -> u64 {
        if let Some(encoder) = self.current.take() {
            self.out.extend(encoder.finish().unwrap());
        }
        self.written = 0;
        self.out.len() as u64
    }
}

pub fn estargz(items: &[Item], options: EstargzOptions) -> Estargz {
    estargz_with(items, options, |_| {})
}

/// An eStargz blob whose TOC JSON `alter` may change before it is written
/// and digested.
pub fn estargz_with(items: &[Item], options: EstargzOptions, alter: impl FnOnce(&mut Value)) -> Estargz {
    let mut gz = GzMembers {
        out: Vec::new(),
        current: None,
        written: 0,
    };
    let mut entries = Vec::new();
    let mut named_uids = Vec::new();
    let mut shared_member: Option<u64> = None;
    for item in items {
        let pieces = tar_pieces(item);
        let mut entry = common_json(item, false);
        if item.uid == 0 && !named_uids.contains(&0) {
            entry.insert("userName".into(), json!("root"));
            named_uids.push(0);
        }
        gz.write(&pieces.header);
        let data = &pieces.data;
        if data.is_empty() {
            entries.push(Value::Object(entry));
            gz.write(&pieces.padding);
            continue;
        }
        let chunk_size = if options.chunk_size == 0 {
            data.len()
        } else {
            options.chunk_size
        };
        let small = data.len() <= chunk_size && data.len() < 4096;
        for (i, chunk) in data.chunks(chunk_size).enumerate() {
            let mut e = if i == 0 {
                std::mem::take(&mut entry)
            } else {
                let mut e = Map::new();
                e.insert("name".into(), json!(item.name));
                e.insert("type".into(), json!("chunk"));
                e
            };
            match shared_member {
                Some(offset) if options.share_members && small => {
                    e.insert("offset".into(), json!(offset));
                    e.insert("innerOffset".into(), json!(gz.written));
                }
                _ => {
                    let offset = gz.close();
                    e.insert("offset".into(), json!(offset));
                    shared_member = Some(offset);
                }
            }
            e.insert("chunkOffset".into(), json!(i * chunk_size));
            // Go's writer records a chunk's size only when it is a full one.
            if options.chunk_size != 0 && chunk.len() == options.chunk_size {
                e.insert("chunkSize".into(), json!(chunk.len()));
            }
            e.insert("chunkDigest".into(), json!(Sha256Digest::of(chunk).to_string()));
            gz.write(chunk);
            entries.push(Value::Object(e));
        }
        if !small {
            shared_member = None;
        }
        gz.write(&pieces.padding);
    }
    let toc_offset = gz.close();
    let mut toc = json!({ "version": 1, "entries": entries });
    alter(&mut toc);
    let json = serde_json::to_vec_pretty(&toc).unwrap();
    let mut blob = gz.out;
    append_estargz_toc(&mut blob, &json, options.legacy_footer);
    Estargz {
        blob,
        digest: Sha256Digest::of(&json),
        toc_offset,
    }
}

/// Appends the TOC member holding `json` and the footer pointing at it.
pub fn append_estargz_toc(blob: &mut Vec<u8>, json: &[u8], legacy_footer: bool) {
    let toc_offset = blob.len() as u64;
    let mut header = tar::Header::new_ustar();
    header.set_path("stargz.index.json").unwrap();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, json).unwrap();
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&tar.into_inner().unwrap()).unwrap();
    blob.extend(encoder.finish().unwrap());
    blob.extend(estargz_footer(toc_offset, legacy_footer));
}

/// The footer as Go's gzip writer makes it: an empty member, FEXTRA.
pub fn estargz_footer(toc_offset: u64, legacy: bool) -> Vec<u8> {
    let mut footer = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff];
    let field = format!("{toc_offset:016x}STARGZ");
    if legacy {
        footer.extend([22, 0]);
    } else {
        footer.extend([26, 0, b'S', b'G', 22, 0]);
    }
    footer.extend(field.as_bytes());
    footer.extend([1, 0, 0, 0xff, 0xff]);
    footer.extend([0; 8]);
    footer
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ZstdFooter {
    /// containers/storage <= 1.46: 40 bytes.
    Legacy,
    /// 1.47 - 1.49: the 40 bytes and 16 zero bytes.
    Padded,
    /// >= 1.50: 64 bytes with the tar-split's place.
    Current,
}

#[derive(Clone, Copy)]
pub struct ZstdOptions {
    /// Split file data into chunks of this many bytes (0: one chunk).
    pub chunk_size: usize,
    /// `io.containers.zstd-chunked.*` annotation keys (Debian 12's writers).
    pub legacy_keys: bool,
    pub tar_split: bool,
    pub footer: ZstdFooter,
    /// Leave the position annotations out: the footer must be read.
    pub positions_annotated: bool,
}

impl Default for ZstdOptions {
    fn default() -> Self {
        ZstdOptions {
            chunk_size: 0,
            legacy_keys: false,
            tar_split: true,
            footer: ZstdFooter::Current,
            positions_annotated: true,
        }
    }
}

pub struct ZstdChunked {
    pub blob: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
    pub tar_split: Vec<u8>,
    pub manifest_offset: u64,
}

pub const TAR_SPLIT: &[u8] = b"{\"type\":2,\"payload\":\"\",\"position\":0}\n";

pub fn zstd_chunked(items: &[Item], options: ZstdOptions) -> ZstdChunked {
    zstd_chunked_with(items, options, |_| {})
}

fn skippable(out: &mut Vec<u8>, data: &[u8]) {
    out.extend([0x50, 0x2a, 0x4d, 0x18]);
    out.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
    out.extend(data);
}

pub fn zstd_chunked_with(items: &[Item], options: ZstdOptions, alter: impl FnOnce(&mut Value)) -> ZstdChunked {
    let mut out = Vec::new();
    let mut metadata = Vec::new();
    let mut entries = Vec::new();
    for item in items {
        let pieces = tar_pieces(item);
        metadata.extend(&pieces.header);
        let mut entry = common_json(item, true);
        let data = &pieces.data;
        if !data.is_empty() {
            out.extend(zstd::encode_all(&metadata[..], 3).unwrap());
            metadata.clear();
            let chunk_size = if options.chunk_size == 0 {
                data.len()
            } else {
                options.chunk_size
            };
            let mut chunks = Vec::new();
            for (i, chunk) in data.chunks(chunk_size).enumerate() {
                let offset = out.len();
                out.extend(zstd::encode_all(chunk, 3).unwrap());
                chunks.push((i * chunk_size, offset, chunk));
            }
            entry.insert("offset".into(), json!(chunks[0].1));
            entry.insert("endOffset".into(), json!(out.len()));
            if chunks.len() > 1 {
                let mut rest = Vec::new();
                for (i, &(chunk_offset, offset, chunk)) in chunks.iter().enumerate() {
                    let mut e = if i == 0 {
                        std::mem::take(&mut entry)
                    } else {
                        let mut e = Map::new();
                        e.insert("type".into(), json!("chunk"));
                        e.insert("name".into(), json!(item.name));
                        e.insert("chunkOffset".into(), json!(chunk_offset));
                        e
                    };
                    e.insert("chunkSize".into(), json!(chunk.len()));
                    e.insert("offset".into(), json!(offset));
                    e.insert("chunkDigest".into(), json!(Sha256Digest::of(chunk).to_string()));
                    if chunk.iter().all(|&b| b == 0) {
                        e.insert("chunkType".into(), json!("zeros"));
                    }
                    rest.push(Value::Object(e));
                }
                entries.extend(rest);
                metadata.extend(&pieces.padding);
                continue;
            }
        }
        entries.push(Value::Object(entry));
        metadata.extend(&pieces.padding);
    }
    metadata.extend([0; 1024]);
    out.extend(zstd::encode_all(&metadata[..], 3).unwrap());

    let tar_split = zstd::encode_all(TAR_SPLIT, 3).unwrap();
    let mut toc = json!({ "version": 1, "entries": entries });
    if options.tar_split {
        toc["tarSplitDigest"] = json!(Sha256Digest::of(&tar_split).to_string());
    }
    alter(&mut toc);
    let json = serde_json::to_vec(&toc).unwrap();
    let manifest = zstd::encode_all(&json[..], 3).unwrap();
    let manifest_offset = out.len() as u64 + 8;
    skippable(&mut out, &manifest);
    let split_offset = out.len() as u64 + 8;
    if options.tar_split {
        skippable(&mut out, &tar_split);
    }
    let mut footer = Vec::new();
    for n in [manifest_offset, manifest.len() as u64, json.len() as u64, 1] {
        footer.extend(n.to_le_bytes());
    }
    match options.footer {
        ZstdFooter::Legacy => footer.extend(b"GnUlInUx"),
        ZstdFooter::Padded => {
            footer.extend(b"GnUlInUx");
            footer.extend([0; 16]);
        }
        ZstdFooter::Current => {
            let split = if options.tar_split {
                [split_offset, tar_split.len() as u64, TAR_SPLIT.len() as u64]
            } else {
                [0; 3]
            };
            for n in split {
                footer.extend(n.to_le_bytes());
            }
            footer.extend(b"GNUlInUx");
        }
    }
    skippable(&mut out, &footer);

    let prefix = if options.legacy_keys {
        "io.containers.zstd-chunked."
    } else {
        "io.github.containers.zstd-chunked."
    };
    let mut annotations = BTreeMap::new();
    annotations.insert(
        format!("{prefix}manifest-checksum"),
        Sha256Digest::of(&manifest).to_string(),
    );
    if options.positions_annotated {
        annotations.insert(
            format!("{prefix}manifest-position"),
            format!("{manifest_offset}:{}:{}:1", manifest.len(), json.len()),
        );
        if options.tar_split {
            annotations.insert(
                format!("{prefix}tarsplit-position"),
                format!("{split_offset}:{}:{}", tar_split.len(), TAR_SPLIT.len()),
            );
        }
    }
    ZstdChunked {
        blob: out,
        annotations,
        tar_split,
        manifest_offset,
    }
}

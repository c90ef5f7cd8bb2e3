use super::*;
use crate::manifest::sha256_digest;
use strata_tree::Node;

/// A tar entry with a raw name, bypassing the tar crate's own path checks.
fn entry(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, link: &[u8], body: &[u8]) {
    let mut header = tar::Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(body.len() as u64);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0u8; 1024]);
    tar
}

/// Imports `blob` announced under `digest` into a fresh store.
fn import_as(
    blob: Vec<u8>,
    digest: String,
    limits: &Limits,
) -> (Result<LayerImport, ImportError>, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let desc = Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        digest,
        size: blob.len() as u64,
        platform: None,
        annotations: Default::default(),
    };
    let progress = Arc::new(Progress::default());
    let result = import_layer(
        &store,
        &desc,
        None,
        Box::new(std::io::Cursor::new(blob)),
        limits,
        &progress,
    );
    (result, store, dir)
}

fn import(tar: Vec<u8>, limits: &Limits) -> Result<(LayerImport, tempfile::TempDir), ImportError> {
    let digest = sha256_digest(&tar);
    let (result, _store, dir) = import_as(tar, digest, limits);
    result.map(|r| (r, dir))
}

fn err(tar: Vec<u8>) -> String {
    match import(tar, &Limits::default()) {
        Ok(_) => panic!("import should fail"),
        Err(e) => e.to_string(),
    }
}

use tar::EntryType as T;

/// A valid revision 2 `vfs_cap_data` (cap_net_bind_service, effective).
const CAP_V2: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn builds_tree_with_objects_links_and_whiteouts() {
    let mut tar = Vec::new();
    entry(&mut tar, b"./", T::Directory, b"", b"");
    entry(&mut tar, b"etc/", T::Directory, b"", b"");
    entry(&mut tar, b"etc/big", T::Regular, b"", &[9u8; 5000]);
    entry(&mut tar, b"etc/small", T::Regular, b"", b"tiny");
    entry(&mut tar, b"etc/hard", T::Link, b"etc/big", b"");
    entry(&mut tar, b"etc/.wh.gone", T::Regular, b"", b"");
    entry(&mut tar, b"opt/.wh..wh..opq", T::Regular, b"", b"");
    entry(&mut tar, b"lib/lower-link", T::Link, b"usr/lib/x", b"");
    let (import, _dir) = import(finish(tar), &Limits::default()).unwrap();
    let tree = &import.tree;
    let p = |s: &str| s.split('/').map(|n| n.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(tree.lookup(&p("etc/big")), tree.lookup(&p("etc/hard")));
    assert_eq!(tree.lookup(&p("etc/gone")), Some(&Node::Whiteout));
    let Some(Node::Dir(opt)) = tree.lookup(&p("opt")) else {
        panic!()
    };
    assert!(opt.opaque && opt.implicit);
    let lower: Vec<_> = tree
        .lower_links
        .iter()
        .filter_map(|check| match check {
            strata_tree::LowerCheck::Link { path, target, .. } => Some((path.clone(), target.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(lower, vec![(p("lib/lower-link"), p("usr/lib/x"))]);
    assert_eq!(import.objects.len(), 1, "only the big file is an object");
    assert!(!tree.root.implicit);
}

#[test]
fn hostile_paths_are_refused() {
    let cases: &[(&[u8], T, &[u8], &str)] = &[
        (b"../escape", T::Regular, b"", "'..'"),
        (b"a/../../escape", T::Regular, b"", "'..'"),
        (b"/etc/passwd", T::Regular, b"", "absolute"),
        (b".wh..", T::Regular, b"", "whiteout names no entry"),
        (b"x", T::Link, b"../../etc/shadow", "'..'"),
        (b"x", T::Link, b"/etc/shadow", "absolute"),
    ];
    for (name, kind, link, want) in cases {
        let mut tar = Vec::new();
        entry(&mut tar, name, *kind, link, b"");
        let msg = err(finish(tar));
        assert!(msg.contains(want), "{name:?}: {msg}");
    }
}

#[test]
fn symlink_then_file_through_it_is_refused() {
    let mut tar = Vec::new();
    entry(&mut tar, b"link", T::Symlink, b"/tmp", b"");
    entry(&mut tar, b"link/escape", T::Regular, b"", b"owned");
    let msg = err(finish(tar));
    assert!(msg.contains("not a directory"), "{msg}");
}

#[test]
fn hard_link_to_directory_is_refused() {
    let mut tar = Vec::new();
    entry(&mut tar, b"d/", T::Directory, b"", b"");
    entry(&mut tar, b"l", T::Link, b"d", b"");
    assert!(err(finish(tar)).contains("hard link to a directory"));
}

#[test]
fn truncated_and_oversized_streams_fail() {
    let mut tar = Vec::new();
    entry(&mut tar, b"f", T::Regular, b"", &[1u8; 4096]);
    let cut = tar[..512 + 1000].to_vec();
    let msg = err(cut);
    assert!(
        msg.contains("f") && (msg.contains("body") || msg.contains("tar")),
        "{msg}"
    );

    let mut tar = Vec::new();
    entry(&mut tar, b"f", T::Regular, b"", &[1u8; 100_000]);
    let limits = Limits {
        max_layer_bytes: 50_000,
        ..Limits::default()
    };
    let Err(e) = import(finish(tar), &limits) else { panic!() };
    assert!(matches!(e, ImportError::TooLarge { .. }), "{e}");
}

#[test]
fn digest_mismatch_publishes_nothing() {
    let mut tar = Vec::new();
    entry(&mut tar, b"f", T::Regular, b"", &[3u8; 5000]);
    let (result, store, _dir) = import_as(finish(tar), sha256_digest(b"something else"), &Limits::default());
    assert!(matches!(result, Err(ImportError::DigestMismatch { .. })));
    assert!(!store.has_object(&strata_tree::Digest::of(&[3u8; 5000])).unwrap());
}

#[test]
fn overlay_xattrs_are_dropped_and_pax_read() {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(T::Regular);
    header.set_size(3);
    header.set_mode(0o4755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    let pax: Vec<(&str, &[u8])> = vec![
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc/passwd"),
        ("SCHILY.xattr.security.capability", &CAP_V2),
        ("mtime", b"1700000000.25"),
        ("uid", b"4000000"),
    ];
    builder.append_pax_extensions(pax).unwrap();
    builder.append_data(&mut header, "bin/tool", &b"abc"[..]).unwrap();
    let tar = builder.into_inner().unwrap();
    let (import, _dir) = import(tar, &Limits::default()).unwrap();
    let leaf = &import.tree.leaves[0];
    assert_eq!(
        leaf.stat.xattrs.keys().collect::<Vec<_>>(),
        vec![&b"security.capability".to_vec()]
    );
    assert_eq!(
        (leaf.stat.mtime_sec, leaf.stat.mtime_nsec),
        (1_700_000_000, 250_000_000)
    );
    assert_eq!((leaf.stat.uid, leaf.stat.mode), (4_000_000, 0o4755));
}

#[test]
fn pax_time_table() {
    use archive::parse_pax_time;
    assert_eq!(parse_pax_time("12"), Some((12, 0)));
    assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
    assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(parse_pax_time("-0.5"), Some((-1, 500_000_000)));
    assert_eq!(parse_pax_time("1.1234567899"), Some((1, 123_456_789)));
    assert_eq!(parse_pax_time("1.x"), None);
    assert_eq!(parse_pax_time("-9223372036854775808"), Some((i64::MIN, 0)));
    assert_eq!(parse_pax_time("-9223372036854775808.5"), None, "overflows");
    assert_eq!(parse_pax_time("9223372036854775808"), None);
    assert_eq!(parse_pax_time("+1"), None);
}

#[test]
fn digest_mismatch_wins_over_the_tar_error_it_causes() {
    let mut tar = Vec::new();
    entry(&mut tar, b"f", T::Regular, b"", &[3u8; 2000]);
    let tar = finish(tar);
    let digest = sha256_digest(&tar);
    let mut corrupt = tar;
    corrupt[148] ^= 0x55; // the header checksum: the tar parser fails first
    let (result, _store, _dir) = import_as(corrupt, digest, &Limits::default());
    assert!(
        matches!(result, Err(ImportError::DigestMismatch { .. })),
        "{:?}",
        result.err()
    );
}

#[test]
fn path_longer_than_the_limit_is_refused() {
    let mut tar = Vec::new();
    entry(&mut tar, b"dir/a-rather-long-file-name", T::Regular, b"", b"x");
    let limits = Limits {
        max_path_bytes: 16,
        ..Limits::default()
    };
    let Err(e) = import(finish(tar), &limits) else { panic!() };
    assert!(e.to_string().contains("over the limit of 16"), "{e}");
}

/// Raw tar blocks, for what the tar crate cannot write.
mod raw {
    pub fn octal(field: &mut [u8], v: u64) {
        let s = format!("{:0w$o}\0", v, w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    }

    pub fn header(name: &[u8], typeflag: u8, size: u64, gnu: bool) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..name.len()].copy_from_slice(name);
        octal(&mut b[100..108], 0o644);
        octal(&mut b[108..116], 0);
        octal(&mut b[116..124], 0);
        octal(&mut b[124..136], size);
        octal(&mut b[136..148], 1_700_000_000);
        b[156] = typeflag;
        if gnu {
            b[257..265].copy_from_slice(b"ustar  \0");
        } else {
            b[257..265].copy_from_slice(b"ustar\x0000");
        }
        b
    }

    pub fn seal(b: &mut [u8; 512]) {
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// A sealed header and its body, padded.
    pub fn push(out: &mut Vec<u8>, mut h: [u8; 512], body: &[u8]) {
        seal(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let base = k.len() + v.len() + 3;
            let mut n = base + base.to_string().len();
            n = base + n.to_string().len();
            out.extend_from_slice(format!("{n} {k}=").as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }

    /// An `x` header with `records`, then `h` and `body`.
    pub fn push_pax(out: &mut Vec<u8>, records: &[(&str, &[u8])], h: [u8; 512], body: &[u8]) {
        let pax = pax(records);
        push(out, header(b"PaxHeader", b'x', pax.len() as u64, false), &pax);
        push(out, h, body);
    }
}

fn leaf_at<'t>(tree: &'t Tree, path: &str) -> &'t Leaf {
    let p: Vec<Vec<u8>> = path.split('/').map(|n| n.as_bytes().to_vec()).collect();
    match tree.lookup(&p) {
        Some(Node::Leaf(id)) => &tree.leaves[id.0],
        other => panic!("{path}: {other:?}"),
    }
}

/// 6 fragments of 10 bytes at 1 KiB steps in a 6000-byte file.
fn sparse_fixture() -> (Vec<(u64, u64)>, Vec<u8>, Vec<u8>) {
    let map: Vec<(u64, u64)> = (0..6).map(|i| (i * 1024, 10)).collect();
    let data: Vec<u8> = (0..60u8).map(|i| b'a' + i % 26).collect();
    let mut logical = vec![0u8; 6000];
    for (i, (offset, _)) in map.iter().enumerate() {
        let offset = usize::try_from(*offset).unwrap();
        logical[offset..offset + 10].copy_from_slice(&data[i * 10..i * 10 + 10]);
    }
    (map, data, logical)
}

fn assert_object(import: &LayerImport, path: &str, want: &[u8]) {
    let leaf = leaf_at(&import.tree, path);
    let digest = strata_tree::Digest::of(want);
    let size = want.len() as u64;
    assert_eq!(leaf.content, Content::File(FileData::Object { digest, size }), "{path}");
    assert!(import.objects.iter().any(|o| o.digest == digest));
}

fn old_gnu_sparse(name: &[u8], map: &[(u64, u64)], realsize: u64, data: &[u8]) -> Vec<u8> {
    let mut h = raw::header(name, b'S', data.len() as u64, true);
    raw::octal(&mut h[483..495], realsize);
    let (first, rest) = map.split_at(map.len().min(4));
    for (i, (o, l)) in first.iter().enumerate() {
        raw::octal(&mut h[386 + i * 24..398 + i * 24], *o);
        raw::octal(&mut h[398 + i * 24..410 + i * 24], *l);
    }
    h[482] = u8::from(!rest.is_empty());
    raw::seal(&mut h);
    let mut out = h.to_vec();
    if !rest.is_empty() {
        let mut ext = [0u8; 512];
        for (i, (o, l)) in rest.iter().enumerate() {
            raw::octal(&mut ext[i * 24..i * 24 + 12], *o);
            raw::octal(&mut ext[i * 24 + 12..i * 24 + 24], *l);
        }
        out.extend_from_slice(&ext);
    }
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[test]
fn old_gnu_sparse_reads_holes_as_zeros() {
    let (map, data, logical) = sparse_fixture();
    let tar = finish(old_gnu_sparse(b"sparse", &map, 6000, &data));
    let (import, _dir) = import(tar, &Limits::default()).unwrap();
    assert_object(&import, "sparse", &logical);
}

#[test]
fn sparse_holes_count_against_the_layer_limit() {
    // 1 stored byte standing for 256 MiB, under a 4 MiB limit.
    let tar = finish(old_gnu_sparse(b"big", &[(0, 1)], 256 << 20, b"x"));
    let limits = Limits {
        max_layer_bytes: 4 << 20,
        ..Limits::default()
    };
    let Err(e) = import(tar, &limits) else { panic!() };
    let msg = e.to_string();
    assert!(
        msg.contains("\"big\"") && msg.contains("past the limit of 4194304"),
        "{msg}"
    );
}

#[test]
fn pax_sparse_formats_read_like_go() {
    let (map, data, logical) = sparse_fixture();
    let numbers: Vec<String> = map.iter().flat_map(|(o, l)| [o.to_string(), l.to_string()]).collect();
    let joined = numbers.join(",");

    // 0.1: the map in one record.
    let mut v01 = Vec::new();
    let records: Vec<(&str, &[u8])> = vec![
        ("GNU.sparse.size", b"6000"),
        ("GNU.sparse.numblocks", b"6"),
        ("GNU.sparse.map", joined.as_bytes()),
        ("GNU.sparse.name", b"f01"),
    ];
    raw::push_pax(
        &mut v01,
        &records,
        raw::header(b"GNUSparseFile.0/f01", b'0', 60, false),
        &data,
    );

    // 0.0: repeated offset/numbytes records.
    let mut records: Vec<(&str, &[u8])> = vec![("GNU.sparse.size", b"6000"), ("GNU.sparse.numblocks", b"6")];
    for pair in numbers.chunks(2) {
        records.push(("GNU.sparse.offset", pair[0].as_bytes()));
        records.push(("GNU.sparse.numbytes", pair[1].as_bytes()));
    }
    let mut v00 = Vec::new();
    raw::push_pax(&mut v00, &records, raw::header(b"f00", b'0', 60, false), &data);

    // 1.0: the map at the start of the data, padded to a block.
    let mut body = format!("6\n{}\n", numbers.join("\n")).into_bytes();
    body.resize(512, 0);
    body.extend_from_slice(&data);
    let records: Vec<(&str, &[u8])> = vec![
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"f10"),
        ("GNU.sparse.realsize", b"6000"),
    ];
    let mut v10 = Vec::new();
    let h = raw::header(b"GNUSparseFile.0/f10", b'0', body.len() as u64, false);
    raw::push_pax(&mut v10, &records, h, &body);

    let tar = finish([v01, v00, v10].concat());
    let (import, _dir) = import(tar, &Limits::default()).unwrap();
    for name in ["f01", "f00", "f10"] {
        assert_object(&import, name, &logical);
    }
    assert_eq!(import.tree.root.entries.len(), 3, "no GNUSparseFile.0 directory");
}

#[test]
fn bad_sparse_maps_are_refused() {
    type Case<'a> = (&'a [(u64, u64)], u64, &'a [u8], &'a str);
    let cases: &[Case] = &[
        (&[(0, 10), (5, 10)], 100, &[0; 20], "overlap"),
        (&[(90, 20)], 100, &[0; 20], "past the size"),
        (&[(0, 10)], 100, &[0; 20], "covers 10 bytes but the entry stores 20"),
        (&[(0, 30)], 100, &[0; 20], "covers 30 bytes"),
    ];
    for (map, size, data, want) in cases {
        let msg = err(finish(old_gnu_sparse(b"s", map, *size, data)));
        assert!(msg.contains(want) && msg.contains("\"s\""), "{want}: {msg}");
    }
}

#[test]
fn oversize_header_records_are_refused_before_reading() {
    // Only the header: reading the body would fail with an EOF instead.
    for (kind, want) in [
        (b'L', "GNU long name of 1073741824 bytes is over the path limit of 4096"),
        (b'K', "GNU long link target of 1073741824 bytes is over the path limit"),
        (
            b'x',
            "PAX extended header of 1073741824 bytes is over the limit of 1048576",
        ),
        (b'g', "PAX extended header of 1073741824 bytes"),
    ] {
        let mut tar = Vec::new();
        raw::push(&mut tar, raw::header(b"././@LongLink", kind, 1 << 30, true), b"");
        let msg = err(tar);
        assert!(msg.contains(want), "{}: {msg}", char::from(kind));
    }
    // Within the limits, a long name applies to the next entry.
    let name = vec!["n".repeat(250); 15].join("/");
    let mut tar = Vec::new();
    let mut body = name.clone().into_bytes();
    body.push(0);
    raw::push(
        &mut tar,
        raw::header(b"././@LongLink", b'L', body.len() as u64, true),
        &body,
    );
    raw::push(&mut tar, raw::header(b"short", b'0', 2, true), b"hi");
    let (import, _dir) = import(finish(tar), &Limits::default()).unwrap();
    assert_eq!(
        leaf_at(&import.tree, &name).content,
        Content::File(FileData::Inline(b"hi".to_vec()))
    );
}

#[test]
fn header_only_types_have_no_body_and_v7_dirs_end_in_slash() {
    let mut tar = Vec::new();
    // A symlink whose size field claims a body: Go reads none.
    let mut h = raw::header(b"link", b'2', 5, false);
    h[157..163].copy_from_slice(b"target");
    raw::push(&mut tar, h, b"");
    raw::push(&mut tar, raw::header(b"old-dir/", 0, 0, false), b"");
    raw::push(&mut tar, raw::header(b"old-file", 0, 3, false), b"abc");
    let (import, _dir) = import(finish(tar), &Limits::default()).unwrap();
    let tree = &import.tree;
    assert_eq!(leaf_at(tree, "link").content, Content::Symlink(b"target".to_vec()));
    assert!(matches!(tree.lookup(&[b"old-dir".to_vec()]), Some(Node::Dir(d)) if !d.implicit));
    assert_eq!(
        leaf_at(tree, "old-file").content,
        Content::File(FileData::Inline(b"abc".to_vec()))
    );
}

#[test]
fn aufs_metadata_is_skipped() {
    let mut tar = Vec::new();
    entry(&mut tar, b".wh..wh.plnk/", T::Directory, b"", b"");
    entry(&mut tar, b".wh..wh.plnk/123.456", T::Regular, b"", b"x");
    entry(&mut tar, b".wh..wh.aufs", T::Regular, b"", b"");
    entry(&mut tar, b".wh..wh.orph/", T::Directory, b"", b"");
    entry(&mut tar, b".wh..wh..opq", T::Regular, b"", b"");
    entry(&mut tar, b"kept", T::Regular, b"", b"y");
    let (import, _dir) = import(finish(tar), &Limits::default()).unwrap();
    let names: Vec<&Vec<u8>> = import.tree.root.entries.keys().collect();
    assert_eq!(names, vec![&b"kept".to_vec()]);
    assert!(import.tree.root.opaque, "the root's opaque marker still counts");
}

#[test]
fn zero_zero_char_device_is_a_whiteout() {
    let mut tar = Vec::new();
    entry(&mut tar, b"a/gone", T::Char, b"", b"");
    entry(&mut tar, b"a/blk", T::Block, b"", b"");
    let (import, _dir) = import(finish(tar), &Limits::default()).unwrap();
    let tree = &import.tree;
    assert_eq!(tree.lookup(&[b"a".to_vec(), b"gone".to_vec()]), Some(&Node::Whiteout));
    assert_eq!(leaf_at(tree, "a/blk").content, Content::BlockDevice(0));
}

fn pax_entry(records: &[(&str, &[u8])], kind: u8, name: &[u8]) -> Vec<u8> {
    let mut tar = Vec::new();
    raw::push_pax(&mut tar, records, raw::header(name, kind, 0, false), b"");
    finish(tar)
}

#[test]
fn what_erofs_cannot_hold_is_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            pax_entry(&[("SCHILY.xattr.user.a\0b", b"v")], b'0', b"f"),
            "\"f\": PAX record key \"SCHILY.xattr.user.a\\0b\" contains a NUL byte",
        ),
        (
            pax_entry(&[("SCHILY.xattr.security.capability", b"\x01\x02")], b'0', b"f"),
            "\"f\": security.capability of 2 bytes",
        ),
        (
            pax_entry(&[("SCHILY.xattr.security.capability", &CAP_V2[..12])], b'0', b"f"),
            "security.capability of 12 bytes",
        ),
        (
            pax_entry(&[("linkpath", b"a\0bcdefghijkl")], b'2', b"l"),
            "linkpath contains a NUL byte",
        ),
        (pax_entry(&[("path", b"a\0b")], b'0', b"f"), "path contains a NUL byte"),
    ];
    for (tar, want) in cases {
        let msg = err(tar);
        assert!(msg.contains(want), "{want}: {msg}");
    }
    let mut tar = Vec::new();
    raw::push(
        &mut tar,
        raw::header(b"././@LongLink", b'K', 13, true),
        b"a\0bcdefghijkl",
    );
    raw::push(&mut tar, raw::header(b"l", b'2', 0, true), b"");
    let msg = err(finish(tar));
    assert!(msg.contains("GNU long link target contains a NUL byte"), "{msg}");
}

#[test]
fn composefs_overlay_markers_are_dropped_other_user_overlay_kept() {
    let tar = pax_entry(
        &[
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.overlay.whiteout", b"y"),
            ("SCHILY.xattr.user.overlay.origin", b"o"),
        ],
        b'5',
        b"d/",
    );
    let (import, _dir) = import(tar, &Limits::default()).unwrap();
    let Some(Node::Dir(d)) = import.tree.lookup(&[b"d".to_vec()]) else {
        panic!()
    };
    let names: Vec<&[u8]> = d.stat.xattrs.keys().map(|k| &k[..]).collect();
    assert_eq!(names, vec![&b"user.overlay.origin"[..]]);
}

#[test]
fn entries_are_bounded_across_the_layers_of_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let budget = EntryBudget::new(3);
    let progress = Arc::new(Progress::default());
    let mut results = Vec::new();
    for layer in ["a", "b"] {
        let mut tar = Vec::new();
        entry(&mut tar, format!("{layer}1").as_bytes(), T::Regular, b"", b"");
        entry(&mut tar, format!("{layer}2").as_bytes(), T::Regular, b"", b"");
        let tar = finish(tar);
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: sha256_digest(&tar),
            size: tar.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        let raw = Box::new(std::io::Cursor::new(tar));
        results.push(import_layer_in(
            &store,
            &desc,
            None,
            raw,
            &Limits::default(),
            &progress,
            &budget,
            None,
        ));
    }
    assert!(results[0].is_ok());
    let Err(e) = &results[1] else { panic!() };
    assert!(matches!(e, ImportError::TooManyImageEntries { limit: 3, .. }), "{e}");
}

#[test]
fn blob_size_must_match_the_descriptor() {
    let mut tar = Vec::new();
    entry(&mut tar, b"f", T::Regular, b"", &[7u8; 3000]);
    let tar = finish(tar);
    let len = tar.len() as u64;
    for (size, want) in [
        (len - 1, format!("more bytes than the descriptor's size of {}", len - 1)),
        (len + 1, format!("{len} bytes, descriptor says {}", len + 1)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let desc = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: sha256_digest(&tar),
            size,
            platform: None,
            annotations: Default::default(),
        };
        let raw = Box::new(std::io::Cursor::new(tar.clone()));
        let progress = Arc::new(Progress::default());
        let Err(e) = import_layer(&store, &desc, None, raw, &Limits::default(), &progress) else {
            panic!("size {size} accepted")
        };
        assert!(e.to_string().contains(&want), "{e}");
    }
}

use super::*;
use crate::manifest::sha256_digest;

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
    assert_eq!(tree.lower_links, vec![(p("lib/lower-link"), p("usr/lib/x"))]);
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
        ("SCHILY.xattr.security.capability", b"\x01\x02"),
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
    assert_eq!(parse_pax_time("12"), Some((12, 0)));
    assert_eq!(parse_pax_time("12.5"), Some((12, 500_000_000)));
    assert_eq!(parse_pax_time("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(parse_pax_time("1.x"), None);
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

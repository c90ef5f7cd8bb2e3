use std::collections::BTreeMap;

use super::*;
use crate::toc::FileContent;

fn toc_entry(path: &str, kind: EntryKind) -> TocEntry {
    TocEntry {
        path: path.to_owned(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        user_name: None,
        group_name: None,
        mtime_sec: 0,
        mtime_nsec: 0,
        xattrs: BTreeMap::new(),
    }
}

fn toc_file(path: &str, bytes: &[u8]) -> TocEntry {
    toc_entry(
        path,
        EntryKind::File(FileContent {
            size: bytes.len() as u64,
            digest: Sha256Digest::of(bytes),
            chunks: Vec::new(),
        }),
    )
}

fn tar_entry(path: &str, kind: TarKind) -> TarEntry {
    TarEntry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        xattrs: BTreeMap::new(),
    }
}

fn tar_file(path: &str, bytes: &[u8]) -> TarEntry {
    tar_entry(
        path,
        TarKind::File {
            size: bytes.len() as u64,
            sha256: Sha256Digest::of(bytes),
        },
    )
}

fn toc(format: TocFormat, entries: Vec<TocEntry>) -> Toc {
    Toc {
        format,
        entries,
        digest: Sha256Digest::empty(),
        data_end: 0,
    }
}

/// A layer both describe alike: a directory, files, links, a device.
fn agreeing() -> (Vec<TocEntry>, Vec<TarEntry>) {
    let toc = vec![
        toc_entry("", EntryKind::Dir),
        toc_entry("etc", EntryKind::Dir),
        toc_file("etc/passwd", b"root:x:0:0"),
        toc_entry(
            "etc/link",
            EntryKind::Symlink {
                target: "passwd".into(),
            },
        ),
        toc_entry(
            "etc/hard",
            EntryKind::Hardlink {
                target: "etc/passwd".into(),
            },
        ),
        toc_entry("null", EntryKind::CharDevice { major: 1, minor: 3 }),
        toc_file(".wh.gone", b""),
    ];
    let tar = vec![
        tar_entry("", TarKind::Dir),
        tar_entry("etc", TarKind::Dir),
        tar_file("etc/passwd", b"root:x:0:0"),
        tar_entry("etc/link", TarKind::Symlink(b"passwd".to_vec())),
        tar_entry("etc/hard", TarKind::Hardlink(b"etc/passwd".to_vec())),
        tar_entry("null", TarKind::CharDevice { major: 1, minor: 3 }),
        tar_file(".wh.gone", b""),
    ];
    (toc, tar)
}

type Edit = fn(&mut Vec<TocEntry>, &mut Vec<TarEntry>);

#[test]
fn contradictions_name_the_path_and_what_differs() {
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "other bytes",
            |_, tar| tar[2] = tar_file("etc/passwd", b"root:x:0:1"),
            "etc/passwd",
            "hash to",
        ),
        (
            "other size",
            |_, tar| tar[2] = tar_file("etc/passwd", b"root"),
            "etc/passwd",
            "the TOC says 10 bytes, the tar has 4",
        ),
        (
            "a tar file the TOC lacks",
            |_, tar| tar.push(tar_file("extra", b"x")),
            "extra",
            "the tar has a regular file the TOC does not list",
        ),
        (
            "a TOC file the tar lacks",
            |toc, _| toc.push(toc_file("missing", b"x")),
            "missing",
            "the TOC lists a regular file the tar does not have",
        ),
        (
            "symlink in the TOC, file in the tar",
            |_, tar| tar[3] = tar_file("etc/link", b"passwd"),
            "etc/link",
            "the TOC has a symlink, the tar a regular file",
        ),
        (
            "symlink target",
            |_, tar| tar[3] = tar_entry("etc/link", TarKind::Symlink(b"/etc/shadow".to_vec())),
            "etc/link",
            "symlink target",
        ),
        (
            "hard link target",
            |toc, _| toc[4] = toc_entry("etc/hard", EntryKind::Hardlink { target: "etc".into() }),
            "etc/hard",
            "hard link target",
        ),
        (
            "device numbers",
            |_, tar| tar[5] = tar_entry("null", TarKind::CharDevice { major: 1, minor: 5 }),
            "null",
            "device: the TOC says 1:3, the tar 1:5",
        ),
        (
            "mode",
            |toc, _| toc[2].mode = 0o4755,
            "etc/passwd",
            "mode: the TOC says 4755, the tar 644",
        ),
        (
            "owner",
            |_, tar| tar[1].uid = 1000,
            "etc",
            "owner: the TOC says 0:0, the tar 1000:0",
        ),
        (
            "xattr",
            |toc, _| {
                toc[2].xattrs.insert(b"security.capability".to_vec(), vec![1, 2, 3]);
            },
            "etc/passwd",
            "xattr security.capability: the TOC has 3 bytes, the tar none",
        ),
        (
            "a path twice in the tar, once in the TOC",
            |_, tar| tar.push(tar_file("etc/passwd", b"root:x:0:0")),
            "etc/passwd",
            "more entries for it than the TOC's 1",
        ),
        (
            "an eStargz name in a zstd:chunked layer",
            |_, tar| tar.push(tar_file(".prefetch.landmark", b"\0")),
            ".prefetch.landmark",
            "does not list",
        ),
    ];
    for (what, edit, path, detail) in cases {
        let (mut toc_entries, mut tar) = agreeing();
        edit(&mut toc_entries, &mut tar);
        let got = crosscheck(&toc(TocFormat::ZstdChunked, toc_entries), &tar).expect_err(what);
        assert_eq!(got.path, path, "{what}: {got:?}");
        assert!(got.detail.contains(detail), "{what}: {got:?}");
    }
}

#[test]
fn agreeing_descriptions_pass_whatever_their_mtimes_and_owner_names() {
    let (mut toc_entries, tar) = agreeing();
    crosscheck(&toc(TocFormat::ZstdChunked, toc_entries.clone()), &tar).unwrap();
    toc_entries[2].mtime_sec = 12;
    toc_entries[2].user_name = Some("root".into());
    crosscheck(&toc(TocFormat::Estargz, toc_entries), &tar).unwrap();
}

/// A whiteout removes only what came before it: `x` then `.wh.x` is no
/// `x`, `.wh.x` then `x` is an `x`. A TOC listing the same entries in
/// another order describes another tree.
#[test]
fn the_order_of_entries_is_compared() {
    let toc_entries = vec![toc_file("x", b"one"), toc_file(".wh.x", b"")];
    let tar = vec![tar_file("x", b"one"), tar_file(".wh.x", b"")];
    crosscheck(&toc(TocFormat::ZstdChunked, toc_entries.clone()), &tar).unwrap();
    let reordered = vec![tar[1].clone(), tar[0].clone()];
    let got = crosscheck(&toc(TocFormat::ZstdChunked, toc_entries), &reordered).unwrap_err();
    assert_eq!(got.path, "x");
    assert_eq!(got.detail, "the tar has it after \".wh.x\", the TOC before");

    let (toc_entries, mut tar) = agreeing();
    tar.swap(5, 6);
    crosscheck(&toc(TocFormat::ZstdChunked, toc_entries), &tar).unwrap_err();
}

#[test]
fn repeated_paths_pair_in_order() {
    let toc_entries = vec![toc_file("a", b"one"), toc_entry("a", EntryKind::Dir)];
    let tar = vec![tar_file("a", b"one"), tar_entry("a", TarKind::Dir)];
    crosscheck(&toc(TocFormat::Estargz, toc_entries.clone()), &tar).unwrap();
    let swapped = vec![tar[1].clone(), tar[0].clone()];
    let got = crosscheck(&toc(TocFormat::Estargz, toc_entries), &swapped).unwrap_err();
    assert_eq!(got.detail, "the TOC has a regular file, the tar a directory");
}

#[test]
fn estargz_own_entries_are_left_out_on_both_sides() {
    let (mut toc_entries, mut tar) = agreeing();
    toc_entries.push(toc_file(".prefetch.landmark", b"\xf0"));
    tar.push(tar_file(".no.prefetch.landmark", b"\xf1"));
    tar.push(tar_file("stargz.index.json", b"{}"));
    crosscheck(&toc(TocFormat::Estargz, toc_entries.clone()), &tar).unwrap();
    // Only at the root.
    tar.push(tar_file("etc/stargz.index.json", b"{}"));
    let got = crosscheck(&toc(TocFormat::Estargz, toc_entries), &tar).unwrap_err();
    assert_eq!(got.path, "etc/stargz.index.json");
}

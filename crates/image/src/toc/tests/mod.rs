mod blobs;
mod estargz;
mod validate;
mod zstd_chunked;

use std::collections::BTreeMap;
use std::io::Read as _;

use super::{decompress_chunk, EntryKind, FileContent, Sha256Digest, Toc, TocFormat};
use blobs::{Body, Item};

/// A blob offset as an index.
fn idx(offset: u64) -> usize {
    usize::try_from(offset).unwrap()
}

/// A file's bytes, read chunk by chunk from its compressed ranges.
fn file_bytes(blob: &[u8], format: TocFormat, content: &FileContent) -> Vec<u8> {
    let mut data = Vec::new();
    for chunk in &content.chunks {
        let range = &blob[idx(chunk.compressed.start)..idx(chunk.compressed.end)];
        data.extend(decompress_chunk(format, range, chunk).unwrap());
    }
    assert_eq!(Sha256Digest::of(&data), content.digest);
    data
}

/// Checks the TOC against the items it was built from: every path, kind,
/// owner and xattr, and every file's bytes read through its ranges.
fn assert_matches(toc: &Toc, blob: &[u8], items: &[Item]) {
    let by_path: BTreeMap<&str, _> = toc.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    assert_eq!(by_path.len(), items.len());
    for item in items {
        let path = item.name.trim_start_matches("./").trim_end_matches('/');
        let entry = by_path.get(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(entry.uid, u32::try_from(item.uid).unwrap(), "{path}");
        assert_eq!(entry.mtime_sec, 1_704_067_200, "{path}");
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = item
            .xattrs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect();
        assert_eq!(entry.xattrs.clone().into_iter().collect::<Vec<_>>(), xattrs, "{path}");
        match (&item.body, &entry.kind) {
            (Body::File(data), EntryKind::File(content)) => {
                assert_eq!(content.size, data.len() as u64);
                assert_eq!(file_bytes(blob, toc.format, content), *data, "{path}");
                assert_eq!(entry.mode, 0o644);
            }
            (Body::Dir, EntryKind::Dir) => assert_eq!(entry.mode, 0o755),
            (Body::Symlink(t), EntryKind::Symlink { target }) => assert_eq!(t, target),
            (Body::Hardlink(t), EntryKind::Hardlink { target }) => assert_eq!(t, target),
            (Body::Fifo, EntryKind::Fifo) => {}
            (Body::Char(ma, mi), EntryKind::CharDevice { major, minor }) => assert_eq!((ma, mi), (major, minor)),
            (_, kind) => panic!("{path}: {kind:?}"),
        }
    }
}

/// The whole blob read as the plain layer any client sees: a tar with the
/// items (and, for eStargz, the TOC's own entry).
fn tar_names(mut stream: impl std::io::Read) -> Vec<String> {
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let mut archive = tar::Archive::new(&all[..]);
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn blobs_are_valid_layers() {
    let items = blobs::sample();
    let esgz = blobs::estargz(&items, Default::default());
    let names = tar_names(flate2::read::MultiGzDecoder::new(&esgz.blob[..]));
    assert_eq!(names.len(), items.len() + 1);
    assert_eq!(names.last().map(String::as_str), Some("stargz.index.json"));
    let zc = blobs::zstd_chunked(&items, Default::default());
    let mut decoder = zstd::stream::read::Decoder::new(&zc.blob[..]).unwrap();
    let mut tar = Vec::new();
    decoder.read_to_end(&mut tar).unwrap();
    assert_eq!(tar_names(&tar[..]).len(), items.len());
}

use std::collections::BTreeMap;

use serde_json::json;

use super::blobs::{self, file, zstd_chunked, zstd_chunked_with, ZstdFooter, ZstdOptions, TAR_SPLIT};
use super::{assert_matches, idx};
use crate::toc::zstd_chunked::{annotations, parse_footer, read_tar_split, read_toc, Annotations, ZstdChunkedToc};
use crate::toc::{EntryProblem, Sha256Digest, TocError, TocFormat, TocLimits};

fn read(blob: &[u8], all: &BTreeMap<String, String>) -> Result<ZstdChunkedToc, TocError> {
    let found = annotations(all)?.expect("zstd:chunked annotations");
    read_toc(blob, blob.len() as u64, &found, &TocLimits::default())
}

#[test]
fn reads_the_current_format_with_its_tar_split() {
    let items = blobs::sample();
    let built = zstd_chunked(&items, ZstdOptions::default());
    let found = annotations(&built.annotations).unwrap().unwrap();
    assert!(!found.legacy_keys && found.manifest_position.is_some() && found.tar_split_position.is_some());
    let read_back = read(&built.blob, &built.annotations).unwrap();
    assert_eq!(read_back.toc.format, TocFormat::ZstdChunked);
    assert_eq!(read_back.toc.data_end, built.manifest_offset - 8);
    assert_matches(&read_back.toc, &built.blob, &items);
    let tar_split = read_back.tar_split.expect("a tar-split");
    assert_eq!(tar_split.digest, Sha256Digest::of(&built.tar_split));
    let limits = TocLimits::default();
    let bytes = read_tar_split(&built.blob[..], built.blob.len() as u64, &tar_split, &limits).unwrap();
    assert_eq!(bytes, TAR_SPLIT);
}

/// Debian 12's podman 4.3 and skopeo 1.9: old keys, 40-byte footer, no tar-split.
#[test]
fn reads_the_legacy_format() {
    let items = blobs::sample();
    let options = ZstdOptions {
        legacy_keys: true,
        tar_split: false,
        footer: ZstdFooter::Legacy,
        ..Default::default()
    };
    let built = zstd_chunked(&items, options);
    assert!(built
        .annotations
        .keys()
        .all(|k| k.starts_with("io.containers.zstd-chunked.")));
    let read_back = read(&built.blob, &built.annotations).unwrap();
    assert!(annotations(&built.annotations).unwrap().unwrap().legacy_keys);
    assert!(read_back.tar_split.is_none());
    assert_matches(&read_back.toc, &built.blob, &items);
}

#[test]
fn finds_the_toc_through_each_footer() {
    let items = blobs::sample();
    for footer in [ZstdFooter::Legacy, ZstdFooter::Padded, ZstdFooter::Current] {
        let tar_split = footer == ZstdFooter::Current;
        let options = ZstdOptions {
            footer,
            tar_split,
            positions_annotated: false,
            ..Default::default()
        };
        let built = zstd_chunked(&items, options);
        let tail = &built.blob[built.blob.len() - 72..];
        let parsed = parse_footer(tail).unwrap();
        assert_eq!(parsed.manifest.offset, built.manifest_offset);
        assert_eq!(parsed.tar_split.is_some(), tar_split);
        let read_back = read(&built.blob, &built.annotations).unwrap();
        assert_eq!(read_back.tar_split.is_some(), tar_split);
        assert_matches(&read_back.toc, &built.blob, &items);
    }
}

#[test]
fn reads_chunks_and_zero_chunks() {
    let mut data = vec![9u8; 5000];
    data.extend([0; 5000]);
    data.extend([3; 1234]);
    let items = vec![file("sparse", &data), file("small", b"x")];
    let options = ZstdOptions {
        chunk_size: 5000,
        ..Default::default()
    };
    let built = zstd_chunked(&items, options);
    let read_back = read(&built.blob, &built.annotations).unwrap();
    assert_matches(&read_back.toc, &built.blob, &items);
    let (_, content) = read_back.toc.files().next().unwrap();
    let zeros: Vec<bool> = content.chunks.iter().map(|c| c.zeros).collect();
    assert_eq!(zeros, [false, true, false]);
}

#[test]
fn refuses_a_toc_whose_checksum_does_not_match() {
    let built = zstd_chunked(&blobs::sample(), ZstdOptions::default());
    let mut all = built.annotations.clone();
    all.insert(
        "io.github.containers.zstd-chunked.manifest-checksum".into(),
        Sha256Digest::of(b"other").to_string(),
    );
    let err = read(&built.blob, &all).unwrap_err();
    assert!(matches!(err, TocError::DigestMismatch { .. }), "{err}");
    // A byte changed in the compressed TOC: caught before decompression.
    let mut blob = built.blob.clone();
    blob[idx(built.manifest_offset) + 10] ^= 1;
    let err = read(&blob, &built.annotations).unwrap_err();
    assert!(matches!(err, TocError::DigestMismatch { .. }), "{err}");
}

#[test]
fn refuses_a_tar_split_that_does_not_match() {
    let built = zstd_chunked(&blobs::sample(), ZstdOptions::default());
    let read_back = read(&built.blob, &built.annotations).unwrap();
    let mut tar_split = read_back.tar_split.unwrap();
    tar_split.digest = Sha256Digest::of(b"other");
    let limits = TocLimits::default();
    let err = read_tar_split(&built.blob[..], built.blob.len() as u64, &tar_split, &limits).unwrap_err();
    assert!(matches!(err, TocError::DigestMismatch { .. }), "{err}");

    let mut all = built.annotations.clone();
    all.insert(
        "io.github.containers.zstd-chunked.tarsplit-checksum".into(),
        Sha256Digest::of(b"other").to_string(),
    );
    let err = read(&built.blob, &all).unwrap_err();
    assert!(matches!(err, TocError::TarSplitDigestConflict { .. }), "{err}");

    // The TOC names a tar-split but nothing says where it is.
    let options = ZstdOptions {
        footer: ZstdFooter::Legacy,
        ..Default::default()
    };
    let built = zstd_chunked(&blobs::sample(), options);
    let mut all = built.annotations.clone();
    all.remove("io.github.containers.zstd-chunked.tarsplit-position");
    let err = read(&built.blob, &all).unwrap_err();
    assert!(matches!(err, TocError::MissingAnnotation { .. }), "{err}");
}

#[test]
fn refuses_bad_annotations() {
    let position = "io.github.containers.zstd-chunked.manifest-position";
    let checksum = "io.github.containers.zstd-chunked.manifest-checksum";
    let digest = Sha256Digest::of(b"x").to_string();
    let cases: &[(&str, &str)] = &[
        ("1:2:3", "too few"),
        ("1:2:3:1:5", "too many"),
        ("1:2:x:1", "decimal"),
        ("1:2:-3:1", "decimal"),
        ("1:2:99999999999999999999:1", "too large"),
        ("1:2:3:2", "manifest type"),
        (" 1:2:3:1", "decimal"),
    ];
    for (value, want) in cases {
        let all = BTreeMap::from([
            (position.to_owned(), value.to_string()),
            (checksum.to_owned(), digest.clone()),
        ]);
        let err = annotations(&all).unwrap_err().to_string();
        assert!(err.contains(want), "{value}: {err}");
    }
    let only_position = BTreeMap::from([(position.to_owned(), "8:1:1:1".to_owned())]);
    assert!(matches!(
        annotations(&only_position),
        Err(TocError::MissingAnnotation { .. })
    ));
    assert_eq!(annotations(&BTreeMap::new()).unwrap(), None);
}

#[test]
fn refuses_positions_outside_the_blob_and_sizes_over_the_limit() {
    let built = zstd_chunked(&blobs::sample(), ZstdOptions::default());
    let found = annotations(&built.annotations).unwrap().unwrap();
    let at = |offset: u64, length: u64, uncompressed: u64| Annotations {
        manifest_position: Some(crate::toc::zstd_chunked::FramePosition {
            offset,
            length,
            uncompressed_length: uncompressed,
        }),
        ..found.clone()
    };
    let size = built.blob.len() as u64;
    let limits = TocLimits::default();
    for (annotated, name) in [
        (at(size - 10, 100, 100), "past the end"),
        (at(u64::MAX - 5, 100, 100), "overflowing"),
        (at(8, 0, 0), "empty"),
    ] {
        let err = read_toc(&built.blob[..], size, &annotated, &limits).unwrap_err();
        assert!(matches!(err, TocError::OutsideBlob { .. }), "{name}: {err}");
    }
    let small = TocLimits {
        max_toc_bytes: 100,
        ..Default::default()
    };
    let err = read_toc(&built.blob[..], size, &found, &small).unwrap_err();
    assert!(matches!(err, TocError::TooLarge { .. }), "{err}");
    // The announced length is checked, both ways.
    let manifest = found.manifest_position.unwrap();
    for uncompressed in [manifest.uncompressed_length - 1, manifest.uncompressed_length + 1] {
        let annotated = at(manifest.offset, manifest.length, uncompressed);
        let err = read_toc(&built.blob[..], size, &annotated, &limits).unwrap_err();
        assert!(matches!(err, TocError::LengthMismatch { .. }), "{err}");
    }
}

#[test]
fn refuses_overlapping_and_outlying_ranges() {
    let items = vec![file("a", &[1; 3000]), file("b", &[2; 3000])];
    type Alter = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Alter)> = vec![
        (
            "b inside a",
            Box::new(|toc| {
                let start = toc["entries"][0]["offset"].as_u64().unwrap();
                toc["entries"][1]["offset"] = json!(start + 1);
            }),
        ),
        (
            "a reaching into b",
            Box::new(|toc| {
                let end = toc["entries"][1]["offset"].as_u64().unwrap();
                toc["entries"][0]["endOffset"] = json!(end + 1);
            }),
        ),
        (
            "b pointing at a's bytes",
            Box::new(|toc| {
                let a = (
                    toc["entries"][0]["offset"].clone(),
                    toc["entries"][0]["endOffset"].clone(),
                );
                toc["entries"][1]["offset"] = a.0;
                toc["entries"][1]["endOffset"] = a.1;
            }),
        ),
    ];
    for (name, alter) in cases {
        let built = zstd_chunked_with(&items, ZstdOptions::default(), alter);
        let err = read(&built.blob, &built.annotations).unwrap_err();
        assert!(
            matches!(
                err,
                TocError::Entry {
                    index: 1,
                    problem: EntryProblem::Overlap { other: 0, .. },
                    ..
                }
            ),
            "{name}: {err}"
        );
    }
    let built = zstd_chunked_with(&items, ZstdOptions::default(), |toc| {
        toc["entries"][1]["endOffset"] = json!(u64::MAX >> 1);
    });
    let err = read(&built.blob, &built.annotations).unwrap_err();
    assert!(
        matches!(
            err,
            TocError::Entry {
                problem: EntryProblem::RangeOutsideData { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_duplicate_paths() {
    let items = vec![file("etc/a", b"1"), file("./etc/a", b"2")];
    let built = zstd_chunked(&items, ZstdOptions::default());
    let err = read(&built.blob, &built.annotations).unwrap_err();
    assert!(
        matches!(
            err,
            TocError::Entry {
                index: 1,
                problem: EntryProblem::Duplicate { first: 0 },
                ..
            }
        ),
        "{err}"
    );
}

/// No cut and no flipped byte makes the reader panic.
#[test]
fn never_panics_on_damaged_blobs() {
    let items = blobs::sample();
    for positions_annotated in [true, false] {
        let options = ZstdOptions {
            chunk_size: 30_000,
            positions_annotated,
            ..Default::default()
        };
        let built = zstd_chunked(&items, options);
        let len = built.blob.len();
        for cut in (0..len).step_by(89).chain(len - 100..len) {
            let _ = read(&built.blob[..cut], &built.annotations);
        }
        for at in (idx(built.manifest_offset) - 8..len).step_by(5) {
            let mut blob = built.blob.clone();
            blob[at] ^= 0x10;
            let _ = read(&blob, &built.annotations);
        }
    }
}

use std::collections::BTreeMap;

use serde_json::json;

use super::blobs::{self, append_estargz_toc, estargz, estargz_footer, estargz_with, file, EstargzOptions};
use super::{assert_matches, file_bytes, idx};
use crate::toc::estargz::{parse_footer, read_toc, toc_digest, Footer, TOC_DIGEST_ANNOTATION};
use crate::toc::{EntryKind, EntryProblem, Sha256Digest, TocError, TocFormat, TocLimits};

fn read(blob: &[u8], digest: &Sha256Digest) -> Result<crate::toc::Toc, TocError> {
    read_toc(blob, blob.len() as u64, digest, &TocLimits::default())
}

#[test]
fn reads_every_kind() {
    let items = blobs::sample();
    let built = estargz(&items, EstargzOptions::default());
    let toc = read(&built.blob, &built.digest).unwrap();
    assert_eq!(toc.format, TocFormat::Estargz);
    assert_eq!(toc.data_end, built.toc_offset);
    assert_eq!(toc.digest, built.digest);
    assert_matches(&toc, &built.blob, &items);
    // Owner names are given once per id and apply to later entries.
    let hostname = toc.entries.iter().find(|e| e.path == "etc/hostname").unwrap();
    assert_eq!(hostname.user_name.as_deref(), Some("root"));
    let root = &toc.entries[0];
    assert_eq!((root.path.as_str(), &root.kind), ("", &EntryKind::Dir));
}

#[test]
fn reads_chunked_files() {
    let items = blobs::sample();
    let built = estargz(
        &items,
        EstargzOptions {
            chunk_size: 10_000,
            ..Default::default()
        },
    );
    let toc = read(&built.blob, &built.digest).unwrap();
    assert_matches(&toc, &built.blob, &items);
    let (_, big) = toc.files().find(|(e, _)| e.path == "usr/lib/big.bin").unwrap();
    assert_eq!(big.chunks.len(), 16);
    for pair in big.chunks.windows(2) {
        assert_eq!(pair[0].file_offset + pair[0].size, pair[1].file_offset);
        assert_eq!(pair[0].compressed.end, pair[1].compressed.start);
        assert!(pair[0].digest.is_some());
    }
}

#[test]
fn reads_files_sharing_a_member() {
    let items = vec![
        file("a", b"first small file"),
        file("b", b"second"),
        file("c", b"third"),
        file("big", &[7; 100_000]),
        file("d", b"after the big one"),
    ];
    let options = EstargzOptions {
        share_members: true,
        ..Default::default()
    };
    let built = estargz(&items, options);
    let toc = read(&built.blob, &built.digest).unwrap();
    assert_matches(&toc, &built.blob, &items);
    let chunks: Vec<_> = toc.files().map(|(_, c)| c.chunks[0].clone()).collect();
    assert_eq!(chunks[0].compressed, chunks[1].compressed);
    assert_eq!(chunks[1].compressed, chunks[2].compressed);
    assert!(chunks[1].inner_offset > 0 && chunks[2].inner_offset > chunks[1].inner_offset);
    assert_ne!(chunks[3].compressed, chunks[2].compressed);
    assert_eq!(chunks[2].compressed.end, chunks[3].compressed.start);
}

#[test]
fn reads_the_legacy_footer() {
    let items = blobs::sample();
    let options = EstargzOptions {
        legacy_footer: true,
        ..Default::default()
    };
    let built = estargz(&items, options);
    let tail = &built.blob[built.blob.len() - 51..];
    assert_eq!(
        parse_footer(tail).unwrap(),
        Footer {
            toc_offset: built.toc_offset,
            size: 47
        }
    );
    assert_matches(&read(&built.blob, &built.digest).unwrap(), &built.blob, &items);
}

#[test]
fn digest_from_annotations() {
    let digest = Sha256Digest::of(b"x");
    let mut annotations = BTreeMap::new();
    assert!(matches!(
        toc_digest(&annotations),
        Err(TocError::MissingAnnotation { .. })
    ));
    annotations.insert(TOC_DIGEST_ANNOTATION.to_owned(), digest.to_string().to_uppercase());
    assert!(matches!(toc_digest(&annotations), Err(TocError::BadAnnotation { .. })));
    annotations.insert(TOC_DIGEST_ANNOTATION.to_owned(), digest.to_string());
    assert_eq!(toc_digest(&annotations).unwrap(), digest);
}

/// A TOC whose digest does not match is refused before it is parsed: its
/// JSON here is not even JSON.
#[test]
fn refuses_a_toc_whose_digest_does_not_match() {
    let mut blob = blobs::estargz(&blobs::sample(), Default::default()).blob;
    let good = estargz(&blobs::sample(), Default::default());
    let err = read(&good.blob, &Sha256Digest::of(b"another TOC")).unwrap_err();
    assert!(matches!(err, TocError::DigestMismatch { .. }), "{err}");

    blob.truncate(idx(good.toc_offset));
    append_estargz_toc(&mut blob, b"{ not json", false);
    let err = read(&blob, &good.digest).unwrap_err();
    assert!(matches!(err, TocError::DigestMismatch { .. }), "{err}");
    // With the right digest the same bytes reach the JSON parser.
    let err = read(&blob, &Sha256Digest::of(b"{ not json")).unwrap_err();
    assert!(matches!(err, TocError::Json(_)), "{err}");
}

#[test]
fn refuses_a_toc_over_the_limit() {
    let items = blobs::sample();
    let built = estargz(&items, Default::default());
    let small = TocLimits {
        max_toc_bytes: 1000,
        ..Default::default()
    };
    let err = read_toc(&built.blob[..], built.blob.len() as u64, &built.digest, &small).unwrap_err();
    assert!(matches!(err, TocError::TooLarge { what: "TOC JSON", .. }), "{err}");

    // A TOC that compresses well is refused from the size its tar header
    // announces, before it is decompressed.
    let mut padded = estargz(&items, Default::default());
    let mut json = serde_json::to_vec(&json!({"version": 1, "entries": []})).unwrap();
    json.resize(50 << 20, b' ');
    padded.blob.truncate(idx(padded.toc_offset));
    append_estargz_toc(&mut padded.blob, &json, false);
    let limits = TocLimits {
        max_toc_bytes: 1 << 20,
        ..Default::default()
    };
    let digest = Sha256Digest::of(&json);
    let err = read_toc(&padded.blob[..], padded.blob.len() as u64, &digest, &limits).unwrap_err();
    assert!(
        matches!(err, TocError::TooLarge { what: "TOC JSON", size, .. } if size == 50 << 20),
        "{err}"
    );

    let limits = TocLimits {
        max_entries: 3,
        ..Default::default()
    };
    let err = read_toc(&built.blob[..], built.blob.len() as u64, &built.digest, &limits).unwrap_err();
    assert!(matches!(err, TocError::TooManyEntries { limit: 3 }), "{err}");
}

#[test]
fn refuses_ranges_past_the_toc() {
    let built = estargz_with(&blobs::sample(), Default::default(), |toc| {
        let entries = toc["entries"].as_array_mut().unwrap();
        let last = entries.iter_mut().rev().find(|e| e.get("offset").is_some()).unwrap();
        last["offset"] = json!(1u64 << 40);
    });
    let err = read(&built.blob, &built.digest).unwrap_err();
    assert!(
        matches!(
            err,
            TocError::Entry {
                problem: EntryProblem::OffsetOutsideData { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_two_files_in_one_range() {
    let items = vec![file("a", b"aaaa"), file("b", b"bbbb")];
    let built = estargz_with(&items, Default::default(), |toc| {
        let first = toc["entries"][0]["offset"].clone();
        toc["entries"][1]["offset"] = first;
    });
    let err = read(&built.blob, &built.digest).unwrap_err();
    assert!(
        matches!(
            &err,
            TocError::Entry {
                index: 1,
                problem: EntryProblem::Overlap { other: 0, .. },
                ..
            }
        ),
        "{err}"
    );
    let built = estargz_with(&items, Default::default(), |toc| {
        let (a, b) = (toc["entries"][0]["offset"].clone(), toc["entries"][1]["offset"].clone());
        toc["entries"][0]["offset"] = b;
        toc["entries"][1]["offset"] = a;
    });
    let err = read(&built.blob, &built.digest).unwrap_err();
    assert!(
        matches!(
            err,
            TocError::Entry {
                problem: EntryProblem::OffsetsOutOfOrder { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn refuses_bad_footers() {
    let built = estargz(&blobs::sample(), Default::default());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty blob", Vec::new()),
        ("shorter than a footer", built.blob[built.blob.len() - 30..].to_vec()),
        ("garbage", vec![0x55; 4096]),
        ("truncated footer", built.blob[..built.blob.len() - 1].to_vec()),
        ("footer offset past the blob", {
            let mut b = built.blob[..built.blob.len() - 51].to_vec();
            b.extend(estargz_footer(1 << 40, false));
            b
        }),
        ("footer offset at the footer", {
            let mut b = built.blob[..built.blob.len() - 51].to_vec();
            let at = b.len() as u64;
            b.extend(estargz_footer(at, false));
            b
        }),
        ("footer offset at file data", {
            let mut b = built.blob[..built.blob.len() - 51].to_vec();
            b.extend(estargz_footer(0, false));
            b
        }),
        ("footer offset inside a member", {
            let mut b = built.blob[..built.blob.len() - 51].to_vec();
            b.extend(estargz_footer(built.toc_offset + 3, false));
            b
        }),
    ];
    for (name, blob) in cases {
        let result = read(&blob, &built.digest);
        let err = result.expect_err(name);
        assert!(
            matches!(
                err,
                TocError::BadFooter { .. }
                    | TocError::OutsideBlob { .. }
                    | TocError::Decompress { .. }
                    | TocError::BadTocMember { .. }
                    | TocError::DigestMismatch { .. }
            ),
            "{name}: {err}"
        );
    }
}

/// No cut and no flipped byte makes the reader panic; when it accepts a
/// blob, every range it gives lies inside the blob.
#[test]
fn never_panics_on_damaged_blobs() {
    let items = blobs::sample();
    let built = estargz(
        &items,
        EstargzOptions {
            chunk_size: 30_000,
            ..Default::default()
        },
    );
    let len = built.blob.len();
    let check = |blob: &[u8]| {
        if let Ok(toc) = read(blob, &built.digest) {
            for (_, content) in toc.files() {
                assert!(content.chunks.iter().all(|c| c.compressed.end <= blob.len() as u64));
            }
        }
    };
    for cut in (0..len).step_by(97).chain(len - 200..len) {
        check(&built.blob[..cut]);
    }
    for at in (idx(built.toc_offset)..len).step_by(7) {
        let mut blob = built.blob.clone();
        blob[at] ^= 0x41;
        check(&blob);
    }
}

#[test]
fn files_read_back_through_their_ranges() {
    let items = vec![file("one", &[1; 70_000]), file("two", b"2")];
    let built = estargz(
        &items,
        EstargzOptions {
            chunk_size: 32_768,
            ..Default::default()
        },
    );
    let toc = read(&built.blob, &built.digest).unwrap();
    let (_, one) = toc.files().next().unwrap();
    assert_eq!(one.chunks.len(), 3);
    assert_eq!(file_bytes(&built.blob, toc.format, one), vec![1; 70_000]);
}

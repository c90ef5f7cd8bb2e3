//! Ranged reads of a blob (`BlobSource::read_ranges`) from the test
//! registry, through `fixtures/range-proxy.py`, which counts what is sent
//! and plays registries that refuse several ranges, ignore `Range` or send
//! the wrong bytes. One 32 MiB blob of pseudo-random bytes is pushed once.

// Lists of one range are what these tests ask for, not mistakes.
#![allow(clippy::single_range_in_vec_init)]

mod range_proxy;

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use range_proxy::{Mode, RangeProxy};
use sha2::{Digest as _, Sha256};
use strata_image::source::{BlobRanges, LayoutSource, RegistryConfig, RegistrySource, RegistryTarget};
use strata_image::toc::RangeReader;
use strata_image::{BlobSource, Descriptor, ImageRef, ImportError, RegistryRef};

const BLOB_SIZE: usize = 32 << 20;
const REPOSITORY: &str = "strata/range-reads";

struct Blob {
    bytes: Vec<u8>,
    desc: Descriptor,
}

/// The blob, pushed to the test registry on first use.
fn blob() -> &'static Blob {
    static BLOB: OnceLock<Blob> = OnceLock::new();
    BLOB.get_or_init(|| {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..BLOB_SIZE / 8)
            .flat_map(|_| {
                // xorshift64: incompressible, reproducible.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()
            })
            .collect();
        let digest = format!("sha256:{}", hex(&Sha256::digest(&bytes)));
        let target = RegistryTarget::new(
            reference(&strata_tests::registry()),
            Arc::new(RegistryConfig::default()),
        )
        .unwrap();
        target.upload_bytes(&digest, &bytes).unwrap();
        let desc = Descriptor {
            media_type: "application/octet-stream".into(),
            digest,
            size: bytes.len() as u64,
            platform: None,
            annotations: Default::default(),
        };
        Blob { bytes, desc }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn reference(host: &str) -> RegistryRef {
    match format!("{host}/{REPOSITORY}:latest").parse::<ImageRef>() {
        Ok(ImageRef::Registry(r)) => r,
        other => panic!("{other:?}"),
    }
}

/// A source reading the blob's repository through `proxy`.
fn source(proxy: &RangeProxy) -> RegistrySource {
    RegistrySource::new(reference(proxy.addr()), Arc::new(RegistryConfig::default())).unwrap()
}

/// `n` ranges of `len` bytes spread over the blob.
fn spread(n: u64, len: u64) -> Vec<Range<u64>> {
    let step = BLOB_SIZE as u64 / n;
    (0..n).map(|i| i * step + 7..i * step + 7 + len).collect()
}

fn expected(ranges: &[Range<u64>]) -> Vec<Vec<u8>> {
    let bytes = &blob().bytes;
    ranges
        .iter()
        .map(|r| bytes[r.start as usize..r.end as usize].to_vec())
        .collect()
}

fn asked(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

#[test]
fn several_ranges_come_in_one_request() {
    let blob = blob();
    let proxy = RangeProxy::start(Mode::Pass);
    let ranges = spread(10, 1000);
    let got = source(&proxy).read_ranges(&blob.desc, &ranges).unwrap();
    assert_eq!(got, expected(&ranges));
    let gets = proxy.blob_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!((gets[0].status, gets[0].range_count()), (206, 10));
    // The data and the multipart framing, nothing more.
    let sent = proxy.bytes_sent();
    assert!(sent >= asked(&ranges) && sent < asked(&ranges) + 10 * 200, "{sent}");
}

#[test]
fn many_ranges_are_split_into_parallel_requests() {
    let blob = blob();
    let proxy = RangeProxy::start(Mode::Pass);
    let ranges = spread(40, 4096);
    let got = source(&proxy).read_ranges(&blob.desc, &ranges).unwrap();
    assert_eq!(got, expected(&ranges));
    let mut counts: Vec<usize> = proxy.blob_gets().iter().map(|r| r.range_count()).collect();
    counts.sort();
    assert_eq!(counts, [8, 16, 16]);
    assert!(proxy.blob_gets().iter().all(|r| r.status == 206 && r.complete));
}

#[test]
fn one_range_and_the_blobs_last_byte() {
    let blob = blob();
    let proxy = RangeProxy::start(Mode::Pass);
    let size = blob.desc.size;
    let ranges = [size - 1..size];
    let got = source(&proxy).read_ranges(&blob.desc, &ranges).unwrap();
    assert_eq!(got, expected(&ranges));
    let gets = proxy.blob_gets();
    assert_eq!(gets.len(), 1);
    assert_eq!(
        gets[0].range.as_deref(),
        Some(format!("bytes={}-{}", size - 1, size - 1).as_str())
    );
    assert_eq!(proxy.bytes_sent(), 1);
    // No range: no request.
    assert!(source(&proxy).read_ranges(&blob.desc, &[]).unwrap().is_empty());
    assert_eq!(proxy.blob_gets().len(), 1);
}

/// A host that refuses several ranges in one request (`mode`): the ranges
/// are asked for again one per request, and the source remembers it.
fn falls_back_to_single_ranges(mode: Mode, refusal_status: u16) {
    let blob = blob();
    let proxy = RangeProxy::start(mode);
    let source = source(&proxy);
    let ranges = spread(5, 3000);
    assert_eq!(source.read_ranges(&blob.desc, &ranges).unwrap(), expected(&ranges));
    let gets = proxy.blob_gets();
    let (multi, single): (Vec<_>, Vec<_>) = gets.iter().partition(|r| r.range_count() > 1);
    assert_eq!(multi.len(), 1, "{gets:?}");
    assert_eq!(multi[0].status, refusal_status);
    assert_eq!(single.len(), 5, "{gets:?}");
    assert!(single.iter().all(|r| r.status == 206 && r.sent == 3000), "{gets:?}");

    proxy.clear();
    let ranges = spread(3, 100);
    assert_eq!(source.read_ranges(&blob.desc, &ranges).unwrap(), expected(&ranges));
    let gets = proxy.blob_gets();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert!(gets.iter().all(|r| r.range_count() == 1 && r.status == 206), "{gets:?}");
}

#[test]
fn a_host_serving_only_the_first_range_gets_one_range_per_request() {
    falls_back_to_single_ranges(Mode::NoMultiRange, 206);
}

#[test]
fn a_host_answering_several_ranges_with_the_whole_blob_gets_one_range_per_request() {
    falls_back_to_single_ranges(Mode::MultiRangeWhole, 200);
    // The whole blob sent to the multi-range request was not read.
    let blob = blob();
    let proxy = RangeProxy::start(Mode::MultiRangeWhole);
    source(&proxy).read_ranges(&blob.desc, &spread(2, 10)).unwrap();
    let whole = proxy.blob_gets().into_iter().find(|r| r.status == 200).unwrap();
    assert!(!whole.complete && whole.sent < blob.desc.size, "{whole:?}");
}

#[test]
fn a_host_ignoring_range_means_ranges_are_unsupported() {
    let blob = blob();
    for ranges in [vec![100..200], spread(6, 100)] {
        let proxy = RangeProxy::start(Mode::IgnoreRange);
        let e = source(&proxy).read_ranges(&blob.desc, &ranges).unwrap_err();
        assert!(matches!(e, ImportError::RangesUnsupported { .. }), "{e}");
        assert!(e.to_string().contains("answered 200 with the whole blob"), "{e}");
        // The client hung up on each whole blob instead of reading it.
        let gets = proxy.blob_gets();
        assert!(!gets.is_empty());
        for get in &gets {
            assert_eq!(get.status, 200, "{gets:?}");
            assert!(!get.complete && get.sent < blob.desc.size / 2, "{gets:?}");
        }
    }
}

/// The source does not check the bytes: the caller does, against the
/// digests it knows (a TOC entry's, a chunk's). A registry sending the
/// wrong bytes in a well-formed answer is caught there, not here.
#[test]
fn wrong_bytes_reach_the_caller_for_it_to_verify() {
    let blob = blob();
    let proxy = RangeProxy::start(Mode::WrongBytes);
    let source = source(&proxy);
    for ranges in [vec![10..20], spread(4, 50)] {
        let got = source.read_ranges(&blob.desc, &ranges).unwrap();
        let flipped: Vec<Vec<u8>> = expected(&ranges)
            .into_iter()
            .map(|b| b.iter().map(|x| x ^ 0xff).collect())
            .collect();
        assert_eq!(got, flipped);
    }
}

#[test]
fn ranges_outside_the_blob_are_refused_before_asking() {
    let blob = blob();
    let proxy = RangeProxy::start(Mode::Pass);
    let source = source(&proxy);
    let size = blob.desc.size;
    for ranges in [
        vec![size - 10..size + 1],
        vec![5..5],
        vec![10..20, 15..30],
        vec![50..60, 0..10],
    ] {
        let e = source.read_ranges(&blob.desc, &ranges).unwrap_err();
        assert!(matches!(e, ImportError::Malformed { .. }), "{ranges:?}: {e}");
    }
    assert!(proxy.blob_gets().is_empty());
}

#[test]
fn a_blob_shorter_than_its_descriptor_is_named() {
    let blob = blob();
    let proxy = RangeProxy::start(Mode::Pass);
    let mut desc = blob.desc.clone();
    desc.size += 100;
    let e = source(&proxy)
        .read_ranges(&desc, &[desc.size - 50..desc.size])
        .unwrap_err();
    assert!(
        matches!(e, ImportError::BlobSizeMismatch { actual, .. } if actual == blob.desc.size),
        "{e}"
    );
    // Within the real size, a Content-Range naming another total is refused.
    let e = source(&proxy).read_ranges(&desc, &[0..10]).unwrap_err();
    assert!(e.to_string().contains("for a blob of"), "{e}");
}

#[test]
fn range_survives_a_redirect() {
    let blob = blob();
    let proxy = RangeProxy::start_to(&strata_tests::registry(), Mode::Pass, true);
    let ranges = spread(3, 500);
    assert_eq!(
        source(&proxy).read_ranges(&blob.desc, &ranges).unwrap(),
        expected(&ranges)
    );
    let gets = proxy.blob_gets();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert!(gets[0].path.starts_with("/redirected/"), "{gets:?}");
    assert_eq!((gets[0].status, gets[0].range_count()), (206, 3));
}

#[test]
fn the_toc_reader_adapter_reads_by_range() {
    let blob = blob();
    let proxy = RangeProxy::start(Mode::Pass);
    let source = source(&proxy);
    let reader = BlobRanges {
        source: &source,
        desc: &blob.desc,
    };
    let size = blob.desc.size;
    assert_eq!(reader.read_range(1000, 24).unwrap(), expected(&[1000..1024])[0]);
    // Short at the blob's end, empty past it, as RangeReader asks.
    assert_eq!(
        reader.read_range(size - 4, 100).unwrap(),
        expected(&[size - 4..size])[0]
    );
    assert!(reader.read_range(size, 10).unwrap().is_empty());
    // A source's error is kept inside the io::Error.
    let ignoring = RangeProxy::start(Mode::IgnoreRange);
    let source = self::source(&ignoring);
    let reader = BlobRanges {
        source: &source,
        desc: &blob.desc,
    };
    let e = reader.read_range(0, 10).unwrap_err();
    let inner = e.get_ref().and_then(|e| e.downcast_ref::<ImportError>());
    assert!(matches!(inner, Some(ImportError::RangesUnsupported { .. })), "{e}");
}

#[test]
fn layouts_serve_ranges_from_the_blob_file() {
    let blob = blob();
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&blob.desc.digest["sha256:".len()..]), &blob.bytes).unwrap();
    let layout = LayoutSource::new(dir.path(), None);
    let ranges = spread(20, 333);
    assert_eq!(layout.read_ranges(&blob.desc, &ranges).unwrap(), expected(&ranges));
    let e = layout.read_ranges(&blob.desc, &[0..blob.desc.size + 1]).unwrap_err();
    assert!(matches!(e, ImportError::Malformed { .. }), "{e}");
    let mut longer = blob.desc.clone();
    longer.size += 1;
    let e = layout.read_ranges(&longer, &[0..10]).unwrap_err();
    assert!(matches!(e, ImportError::BlobSizeMismatch { .. }), "{e}");
}

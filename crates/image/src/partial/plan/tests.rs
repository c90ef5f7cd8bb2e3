use super::*;
use crate::toc::{EntryKind, FileContent, TocEntry, TocFormat};
use strata_tree::Digest;

fn sha(n: u8) -> Sha256Digest {
    Sha256Digest([n; 32])
}

fn range(start: u64, end: u64) -> ByteRange {
    ByteRange { start, end }
}

fn chunk(file_offset: u64, size: u64, compressed: ByteRange) -> Chunk {
    Chunk {
        file_offset,
        size,
        compressed,
        inner_offset: 0,
        digest: None,
        zeros: false,
    }
}

fn file(path: &str, digest: Sha256Digest, size: u64, chunks: Vec<Chunk>) -> TocEntry {
    TocEntry {
        path: path.into(),
        kind: EntryKind::File(FileContent { size, digest, chunks }),
        mode: 0o644,
        uid: 0,
        gid: 0,
        user_name: None,
        group_name: None,
        mtime_sec: 0,
        mtime_nsec: 0,
        xattrs: Default::default(),
    }
}

fn toc(entries: Vec<TocEntry>) -> Toc {
    Toc {
        format: TocFormat::ZstdChunked,
        entries,
        digest: sha(0),
        data_end: 1 << 40,
    }
}

fn object(n: u8, size: u64) -> ObjectRef {
    ObjectRef {
        digest: Digest([n; 32]),
        size,
    }
}

#[test]
fn only_missing_contents_are_fetched_once_each() {
    let toc = toc(vec![
        file("a", sha(1), 1000, vec![chunk(0, 1000, range(100, 200))]),
        file("b", sha(2), 2000, vec![chunk(0, 2000, range(200, 400))]),
        // Same content as b: fetched once.
        file("c", sha(2), 2000, vec![chunk(0, 2000, range(400, 600))]),
        // Inline-sized: never looked up, always fetched.
        file("d", sha(3), 10, vec![chunk(0, 10, range(600, 620))]),
        file("empty", Sha256Digest::empty(), 0, vec![]),
    ]);
    let mut asked = Vec::new();
    let plan = plan(&toc, 512, u64::MAX, |digests| {
        asked = digests.to_vec();
        digests
            .iter()
            .map(|d| (*d == sha(1)).then(|| object(1, 1000)))
            .collect()
    })
    .unwrap();
    assert_eq!(asked, vec![sha(1), sha(2)]);
    assert_eq!(plan.have.keys().collect::<Vec<_>>(), vec![&sha(1)]);
    assert_eq!(plan.stats.files, 5);
    assert_eq!(plan.stats.contents, 3);
    assert_eq!((plan.stats.have, plan.stats.fetch), (1, 2));
    let fetched: Vec<&str> = plan
        .batches
        .iter()
        .flat_map(|b| &b.contents)
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(fetched, vec!["b", "d"]);
    // b's range and d's, 200 bytes apart: merged into one.
    assert_eq!(plan.batches[0].calls, vec![vec![range(200, 620)]]);
    assert_eq!(plan.stats.range_bytes, 220);
    assert_eq!(plan.stats.request_bytes, 420);
}

#[test]
fn an_index_answer_of_another_size_is_not_trusted() {
    let toc = toc(vec![file("a", sha(1), 1000, vec![chunk(0, 1000, range(100, 200))])]);
    let plan = plan(&toc, 512, u64::MAX, |d| vec![Some(object(1, 999)); d.len()]).unwrap();
    assert!(plan.have.is_empty());
    assert_eq!(plan.stats.fetch, 1);
}

#[test]
fn one_content_with_two_sizes_is_refused() {
    let toc = toc(vec![
        file("a", sha(1), 1000, vec![chunk(0, 1000, range(100, 200))]),
        file("b", sha(1), 999, vec![chunk(0, 999, range(200, 300))]),
    ]);
    let e = plan(&toc, 512, u64::MAX, |d| vec![None; d.len()]).unwrap_err();
    assert!(matches!(e, PlanError::SizeConflict { .. }), "{e}");
}

#[test]
fn a_gap_budget_closes_the_smallest_gaps_first() {
    // Gaps of 5000, 100 000, 2000 and 50 000 bytes between five ranges.
    let ranges = [
        range(0, 10),
        range(5010, 5020),
        range(105_020, 105_030),
        range(107_030, 107_040),
        range(157_040, 157_050),
    ];
    let within = |budget| merge_within(ranges.into_iter(), budget);
    assert_eq!(within(0), ranges.to_vec());
    // 7000 closes the two smallest; 6999 only the smallest.
    assert_eq!(
        within(7000),
        vec![range(0, 5020), range(105_020, 107_040), range(157_040, 157_050)]
    );
    assert_eq!(
        within(6999),
        vec![
            range(0, 10),
            range(5010, 5020),
            range(105_020, 107_040),
            range(157_040, 157_050)
        ]
    );
    assert_eq!(within(u64::MAX), vec![range(0, 157_050)]);
    // Small gaps merge whatever the budget, and overlaps always.
    assert_eq!(
        merge_within(
            [range(0, 10), range(5, 20), range(20 + MERGE_GAP, 30 + MERGE_GAP)].into_iter(),
            0
        ),
        vec![range(0, 30 + MERGE_GAP)]
    );
    // No merged range grows past a call's bytes.
    let far = [range(0, 10), range(CALL_BYTES, CALL_BYTES + 10)];
    assert_eq!(merge_within(far.into_iter(), u64::MAX), far.to_vec());
}

#[test]
fn ranges_merge_only_across_small_gaps() {
    let merged = merge(
        [
            range(0, 10),
            range(5, 20),
            range(20, 30),
            range(30 + MERGE_GAP + 1, 40 + MERGE_GAP),
        ]
        .into_iter(),
        MERGE_GAP,
    );
    assert_eq!(merged, vec![range(0, 30), range(30 + MERGE_GAP + 1, 40 + MERGE_GAP)]);
    // Shared gzip members (eStargz innerOffset) are one range.
    assert_eq!(merge([range(0, 10), range(0, 10)].into_iter(), 0), vec![range(0, 10)]);
}

#[test]
fn calls_stay_bounded_and_large_files_stream_in_several() {
    let mb = 1 << 20;
    let big: Vec<Chunk> = (0..40)
        .map(|i| chunk(i * mb, mb, range(i * mb, (i + 1) * mb)))
        .collect();
    let toc = toc(vec![
        file("big", sha(1), 40 * mb, big),
        file(
            "small",
            sha(2),
            1000,
            vec![chunk(0, 1000, range(50 * mb, 50 * mb + 100))],
        ),
    ]);
    let plan = plan(&toc, 512, u64::MAX, |d| vec![None; d.len()]).unwrap();
    for batch in &plan.batches {
        for call in &batch.calls {
            assert!(call.iter().map(ByteRange::len).sum::<u64>() <= CALL_BYTES);
        }
    }
    assert_eq!(plan.batches.len(), 2);
    assert_eq!(plan.batches[0].calls.len(), 3);
    assert_eq!(plan.stats.range_bytes, 40 * mb + 100);
}

#[test]
fn a_chunk_too_large_for_a_ranged_read_is_refused() {
    let toc = toc(vec![file(
        "huge",
        sha(1),
        1000,
        vec![chunk(0, 1000, range(0, MAX_RANGE + 1))],
    )]);
    let e = plan(&toc, 512, u64::MAX, |d| vec![None; d.len()]).unwrap_err();
    assert!(matches!(e, PlanError::ChunkTooLarge { .. }), "{e}");
}

#[test]
fn bombs_are_refused_before_anything_is_fetched() {
    let size = MAX_CHUNK + 1;
    let toc1 = toc(vec![file("bomb", sha(1), size, vec![chunk(0, size, range(0, 100))])]);
    let e = plan(&toc1, 512, u64::MAX, |d| vec![None; d.len()]).unwrap_err();
    assert!(matches!(e, PlanError::ChunkTooLong { .. }), "{e}");
    let toc2 = toc(vec![file("a", sha(1), 1000, vec![chunk(0, 1000, range(0, 100))])]);
    let e = plan(&toc2, 512, 999, |d| vec![None; d.len()]).unwrap_err();
    assert!(matches!(e, PlanError::LayerTooLarge { .. }), "{e}");
}

/// Small contents are asked of the small-content lookup, and an answer is
/// used only if its bytes have the TOC's size and SHA-256.
#[test]
fn small_contents_come_from_the_store_only_if_their_bytes_check() {
    let real = |bytes: &[u8]| Sha256Digest::of(bytes);
    let toc = toc(vec![
        file("held", real(b"held"), 4, vec![chunk(0, 4, range(100, 110))]),
        file("wrong-bytes", real(b"right"), 5, vec![chunk(0, 5, range(200, 210))]),
        file("wrong-size", real(b"size"), 4, vec![chunk(0, 4, range(300, 310))]),
        file("absent", real(b"absent"), 6, vec![chunk(0, 6, range(400, 410))]),
        file("large", sha(9), 1000, vec![chunk(0, 1000, range(500, 600))]),
    ]);
    let mut asked_small = Vec::new();
    let mut asked_large = Vec::new();
    let (plan, inline) = plan_with_inline(
        &toc,
        512,
        u64::MAX,
        |digests| {
            asked_large = digests.to_vec();
            vec![None; digests.len()]
        },
        |digests| {
            asked_small = digests.to_vec();
            digests
                .iter()
                .map(|d| match d {
                    d if *d == real(b"held") => Some(b"held".to_vec()),
                    // A hostile answer: other bytes of the same size.
                    d if *d == real(b"right") => Some(b"wrong".to_vec()),
                    d if *d == real(b"size") => Some(b"size!".to_vec()),
                    _ => None,
                })
                .collect()
        },
    )
    .unwrap();
    assert_eq!(asked_large, vec![sha(9)]);
    assert_eq!(asked_small.len(), 4);
    assert_eq!(inline.len(), 1);
    assert_eq!(inline[&real(b"held")], b"held".to_vec());
    assert_eq!((plan.stats.have, plan.stats.have_inline, plan.stats.fetch), (1, 1, 4));
    let fetched: Vec<&str> = plan
        .batches
        .iter()
        .flat_map(|b| &b.contents)
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(fetched, vec!["wrong-bytes", "wrong-size", "absent", "large"]);
}

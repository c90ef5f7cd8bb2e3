use super::*;
use crate::toc::{Chunk, EntryKind, FileContent, TocEntry, TocFormat};
use strata_tree::FileData;

fn entry(path: &str, kind: EntryKind) -> TocEntry {
    TocEntry {
        path: path.into(),
        kind,
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

fn file(path: &str, data: &[u8]) -> TocEntry {
    entry(
        path,
        EntryKind::File(FileContent {
            size: data.len() as u64,
            digest: Sha256Digest::of(data),
            chunks: vec![Chunk {
                file_offset: 0,
                size: data.len() as u64,
                compressed: crate::toc::ByteRange { start: 1, end: 2 },
                inner_offset: 0,
                digest: None,
                zeros: false,
            }],
        }),
    )
}

fn segment(bytes: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(r#"{{"type":2,"payload":"{payload}","position":0}}"#)
}

fn record(name: &str, size: usize) -> String {
    format!(r#"{{"type":1,"name":"{name}","size":{size},"payload":null,"position":1}}"#)
}

struct Case {
    toc: Toc,
    contents: HashMap<Sha256Digest, Got>,
}

fn case(files: &[(&str, &[u8])]) -> Case {
    let mut entries = vec![entry("dir", EntryKind::Dir)];
    let mut contents = HashMap::new();
    for (path, data) in files {
        entries.push(file(path, data));
        contents.insert(
            Sha256Digest::of(data),
            Got {
                data: FileData::Inline(data.to_vec()),
                staged: None,
            },
        );
    }
    Case {
        toc: Toc {
            format: TocFormat::ZstdChunked,
            entries,
            digest: Sha256Digest::empty(),
            data_end: 10,
        },
        contents,
    }
}

fn check(case: &Case, lines: &[String], diff_id: &str) -> Result<(), PartialError> {
    let ndjson = lines.join("\n");
    check_diff_id(
        ndjson.as_bytes(),
        &case.toc,
        &case.contents,
        &|_| panic!("no objects here"),
        diff_id,
    )
}

#[test]
fn the_stream_is_rebuilt_from_segments_and_files() {
    let case = case(&[("dir/a", b"alpha"), ("dir/b", b"bravo!")]);
    let lines = vec![
        segment(b"HDR-DIR"),
        record("./dir/", 0),
        segment(b"HDR-A"),
        record("./dir/a", 5),
        segment(b"PAD-HDR-B"),
        record("dir/b", 6),
        segment(b"END"),
    ];
    let stream = b"HDR-DIRHDR-AalphaPAD-HDR-Bbravo!END";
    let diff_id = Sha256Digest::of(stream).to_string();
    check(&case, &lines, &diff_id).unwrap();

    let e = check(&case, &lines, &Sha256Digest::of(b"other").to_string()).unwrap_err();
    assert!(matches!(e, PartialError::DiffIdMismatch { .. }), "{e}");
}

#[test]
fn a_tar_split_that_disagrees_with_the_toc_cannot_check_the_diff_id() {
    let case = case(&[("dir/a", b"alpha"), ("dir/b", b"bravo!")]);
    let diff_id = Sha256Digest::empty().to_string();
    for (lines, text) in [
        // Names swapped.
        (vec![record("dir/b", 6), record("dir/a", 5)], "where the TOC has"),
        // A file the TOC lacks.
        (
            vec![record("dir/a", 5), record("dir/b", 6), record("dir/c", 1)],
            "the TOC has no file left",
        ),
        // A file of the TOC missing.
        (vec![record("dir/a", 5)], "lacks the TOC's file"),
        (vec!["{not json".to_owned()], "tar-split line 1"),
    ] {
        let e = check(&case, &lines, &diff_id).unwrap_err();
        assert!(matches!(e, PartialError::DiffId { .. }), "{e}");
        assert!(e.to_string().contains(text), "{e}");
    }
}

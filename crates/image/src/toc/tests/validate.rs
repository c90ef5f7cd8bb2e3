//! Hostile and odd TOC entries, fed to the parser and validator directly.

use serde_json::{json, Value};
use strata_tree::PathError;

use crate::toc::raw;
use crate::toc::validate::{validate, Frame};
use crate::toc::{EntryKind, EntryProblem, Sha256Digest, Toc, TocError, TocFormat, TocLimits};

const DATA_END: u64 = 1 << 20;

fn check(format: TocFormat, entries: Value) -> Result<Toc, TocError> {
    check_json(
        format,
        &json!({ "version": 1, "entries": entries }).to_string(),
        &TocLimits::default(),
    )
}

fn check_json(format: TocFormat, json: &str, limits: &TocLimits) -> Result<Toc, TocError> {
    let parsed = raw::parse(json.as_bytes(), limits.max_entries)?;
    let frame = Frame {
        format,
        digest: Sha256Digest::of(json.as_bytes()),
        data_end: DATA_END,
    };
    validate(&parsed, frame, limits)
}

fn digest(text: &str) -> String {
    Sha256Digest::of(text.as_bytes()).to_string()
}

/// A regular file of `data` at `offset`, in either format's fields.
fn reg(format: TocFormat, name: &str, data: &str, offset: u64) -> Value {
    let mut e = json!({ "name": name, "type": "reg", "size": data.len(), "digest": digest(data), "offset": offset });
    if format == TocFormat::ZstdChunked {
        e["endOffset"] = json!(offset + 100);
    }
    e
}

fn problem(result: Result<Toc, TocError>) -> EntryProblem {
    match result {
        Err(TocError::Entry { problem, .. }) => problem,
        other => panic!("expected an entry error, got {other:?}"),
    }
}

#[test]
fn hostile_entries_are_refused() {
    use TocFormat::{Estargz as E, ZstdChunked as Z};
    let long = "x/".repeat(3000);
    type Case = (&'static str, TocFormat, Value, fn(&EntryProblem) -> bool);
    let cases: Vec<Case> = vec![
        ("dot-dot", E, json!([{"name": "../etc/passwd", "type": "dir"}]), |p| {
            matches!(p, EntryProblem::Path(PathError::DotDot { .. }))
        }),
        (
            "dot-dot inside",
            Z,
            json!([{"name": "a/../../b", "type": "dir"}]),
            |p| matches!(p, EntryProblem::Path(PathError::DotDot { .. })),
        ),
        ("absolute", E, json!([{"name": "/etc/passwd", "type": "dir"}]), |p| {
            matches!(p, EntryProblem::Path(PathError::Absolute { .. }))
        }),
        ("NUL in a name", Z, json!([{"name": "a\u{0}b", "type": "dir"}]), |p| {
            matches!(p, EntryProblem::Path(PathError::Nul { .. }))
        }),
        ("name over the limit", E, json!([{"name": long, "type": "dir"}]), |p| {
            matches!(p, EntryProblem::PathTooLong { .. })
        }),
        (
            "regular file without a digest",
            E,
            json!([{"name": "f", "type": "reg", "size": 5, "offset": 10}]),
            |p| matches!(p, EntryProblem::MissingDigest { size: 5 }),
        ),
        (
            "bad digest",
            Z,
            json!([{"name": "f", "type": "reg", "size": 1, "digest": "sha256:XYZ", "offset": 10, "endOffset": 20}]),
            |p| matches!(p, EntryProblem::BadDigest(_)),
        ),
        (
            "md5 digest",
            E,
            json!([{"name": "f", "type": "reg", "size": 1, "digest": "md5:0123456789abcdef0123456789abcdef", "offset": 10}]),
            |p| matches!(p, EntryProblem::BadDigest(_)),
        ),
        (
            "negative size",
            E,
            json!([{"name": "f", "type": "reg", "size": -1, "digest": digest("")}]),
            |p| matches!(p, EntryProblem::OutOfRange { field: "size", .. }),
        ),
        (
            "file without an offset",
            Z,
            json!([{"name": "f", "type": "reg", "size": 1, "digest": digest("x")}]),
            |p| matches!(p, EntryProblem::MissingOffset { .. }),
        ),
        ("offset past the data", E, json!([reg(E, "f", "x", DATA_END)]), |p| {
            matches!(p, EntryProblem::OffsetOutsideData { .. })
        }),
        (
            "range past the data",
            Z,
            json!([reg(Z, "f", "x", DATA_END - 50)]),
            |p| matches!(p, EntryProblem::RangeOutsideData { .. }),
        ),
        (
            "reversed range",
            Z,
            json!([{"name": "f", "type": "reg", "size": 1, "digest": digest("x"), "offset": 50, "endOffset": 40}]),
            |p| matches!(p, EntryProblem::EmptyRange { .. }),
        ),
        (
            "empty file with a range",
            Z,
            json!([{"name": "f", "type": "reg", "offset": 50, "endOffset": 60}]),
            |p| matches!(p, EntryProblem::EmptyFileWithData),
        ),
        (
            "empty file with another digest",
            E,
            json!([{"name": "f", "type": "reg", "digest": digest("x")}]),
            |p| matches!(p, EntryProblem::EmptyFileDigest(_)),
        ),
        (
            "chunks short of the size",
            E,
            json!([
                {"name": "f", "type": "reg", "size": 10, "digest": digest("0123456789"), "offset": 10, "chunkSize": 4},
                {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 4, "chunkSize": 4},
            ]),
            |p| matches!(p, EntryProblem::ChunksDoNotAddUp { covered: 8, size: 10 }),
        ),
        (
            "chunks past the size",
            Z,
            json!([
                {"name": "f", "type": "reg", "size": 10, "digest": digest("0123456789"), "offset": 10, "endOffset": 90, "chunkSize": 6},
                {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 6, "chunkSize": 6},
            ]),
            |p| matches!(p, EntryProblem::ChunksDoNotAddUp { covered: 12, size: 10 }),
        ),
        (
            "chunk size over the file",
            E,
            json!([
                {"name": "f", "type": "reg", "size": 10, "digest": digest("0123456789"), "offset": 10, "chunkSize": 11},
            ]),
            |p| matches!(p, EntryProblem::ChunksDoNotAddUp { .. }),
        ),
        (
            "chunk gap",
            E,
            json!([
                {"name": "f", "type": "reg", "size": 10, "digest": digest("0123456789"), "offset": 10, "chunkSize": 4},
                {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 5},
            ]),
            |p| matches!(p, EntryProblem::ChunkGap { expected: 4, found: 5 }),
        ),
        (
            "overflowing chunk",
            Z,
            json!([
                {"name": "f", "type": "reg", "size": i64::MAX, "digest": digest("x"), "offset": 10, "endOffset": 90, "chunkSize": 4},
                {"name": "f", "type": "chunk", "offset": 20, "chunkOffset": 4, "chunkSize": i64::MAX},
            ]),
            |p| matches!(p, EntryProblem::ChunksDoNotAddUp { .. }),
        ),
        (
            "orphan chunk",
            E,
            json!([{"name": "d", "type": "dir"}, {"name": "d", "type": "chunk", "offset": 5}]),
            |p| matches!(p, EntryProblem::OrphanChunk),
        ),
        (
            "chunk of another file",
            Z,
            json!([
                {"name": "f", "type": "reg", "size": 10, "digest": digest("0123456789"), "offset": 10, "endOffset": 90, "chunkSize": 4},
                {"name": "g", "type": "chunk", "offset": 20, "chunkOffset": 4, "chunkSize": 6},
            ]),
            |p| matches!(p, EntryProblem::ChunkOfOtherFile { .. }),
        ),
        (
            "one chunk, two digests",
            E,
            json!([
                {"name": "f", "type": "reg", "size": 1, "digest": digest("x"), "chunkDigest": digest("y"), "offset": 10},
            ]),
            |p| matches!(p, EntryProblem::ChunkDigestDiffers { .. }),
        ),
        ("unknown type", E, json!([{"name": "f", "type": "socket"}]), |p| {
            matches!(p, EntryProblem::UnknownType(_))
        }),
        (
            "unknown chunk type",
            Z,
            json!([
                {"name": "f", "type": "reg", "size": 1, "digest": digest("x"), "offset": 10, "endOffset": 20, "chunkType": "holes"},
            ]),
            |p| matches!(p, EntryProblem::UnknownChunkType(_)),
        ),
        (
            "root as a file",
            E,
            json!([{"name": "./", "type": "reg", "digest": digest("")}]),
            |p| matches!(p, EntryProblem::RootNotDirectory),
        ),
        (
            "duplicate path",
            Z,
            json!([{"name": "d", "type": "dir"}, {"name": "./d/", "type": "dir"}]),
            |p| matches!(p, EntryProblem::Duplicate { first: 0 }),
        ),
        (
            "xattr not base64",
            E,
            json!([{"name": "d", "type": "dir", "xattrs": {"user.a": "%%%"}}]),
            |p| matches!(p, EntryProblem::BadXattr { .. }),
        ),
        (
            "xattr with an empty name",
            Z,
            json!([{"name": "d", "type": "dir", "xattrs": {"": ""}}]),
            |p| matches!(p, EntryProblem::BadXattr { .. }),
        ),
        (
            "bad time",
            E,
            json!([{"name": "d", "type": "dir", "modtime": "yesterday"}]),
            |p| matches!(p, EntryProblem::BadTime(_)),
        ),
        (
            "hard link climbing out",
            E,
            json!([{"name": "l", "type": "hardlink", "linkName": "../../etc/shadow"}]),
            |p| matches!(p, EntryProblem::BadLinkTarget(PathError::DotDot { .. })),
        ),
        (
            "hard link to the root",
            Z,
            json!([{"name": "l", "type": "hardlink", "linkName": "./"}]),
            |p| matches!(p, EntryProblem::EmptyLinkTarget(_)),
        ),
        ("empty symlink", E, json!([{"name": "l", "type": "symlink"}]), |p| {
            matches!(p, EntryProblem::EmptyLinkTarget(_))
        }),
        (
            "NUL in a symlink",
            Z,
            json!([{"name": "l", "type": "symlink", "linkName": "a\u{0}"}]),
            |p| matches!(p, EntryProblem::NulInSymlink),
        ),
        (
            "uid over 32 bits",
            E,
            json!([{"name": "d", "type": "dir", "uid": 1u64 << 32}]),
            |p| matches!(p, EntryProblem::OutOfRange { field: "uid", .. }),
        ),
        (
            "negative mode",
            Z,
            json!([{"name": "d", "type": "dir", "mode": -1}]),
            |p| matches!(p, EntryProblem::OutOfRange { field: "mode", .. }),
        ),
        (
            "device number over 32 bits",
            E,
            json!([{"name": "c", "type": "char", "devMajor": 1u64 << 33}]),
            |p| matches!(p, EntryProblem::OutOfRange { field: "devMajor", .. }),
        ),
        (
            "directory with data",
            Z,
            json!([{"name": "d", "type": "dir", "offset": 10}]),
            |p| matches!(p, EntryProblem::UnexpectedField { field: "offset", .. }),
        ),
        (
            "symlink with a digest",
            E,
            json!([{"name": "l", "type": "symlink", "linkName": "x", "digest": digest("x")}]),
            |p| matches!(p, EntryProblem::UnexpectedField { field: "digest", .. }),
        ),
        (
            "innerOffset in zstd:chunked",
            Z,
            json!([
                {"name": "f", "type": "reg", "size": 1, "digest": digest("x"), "offset": 10, "endOffset": 20, "innerOffset": 3},
            ]),
            |p| {
                matches!(
                    p,
                    EntryProblem::UnexpectedField {
                        field: "innerOffset",
                        ..
                    }
                )
            },
        ),
        (
            "files sharing a member, overlapping",
            E,
            json!([
                {"name": "a", "type": "reg", "size": 10, "digest": digest("0123456789"), "offset": 10},
                {"name": "b", "type": "reg", "size": 1, "digest": digest("x"), "offset": 10, "innerOffset": 9},
            ]),
            |p| matches!(p, EntryProblem::Overlap { other: 0, .. }),
        ),
    ];
    for (name, format, entries, expected) in cases {
        let result = check(format, entries);
        let found = problem(result);
        assert!(expected(&found), "{name}: {found:?}");
        assert!(!found.to_string().is_empty());
    }
}

#[test]
fn toc_level_errors() {
    let limits = TocLimits::default();
    let e = TocFormat::Estargz;
    type Case<'a> = (&'a str, &'a str, fn(&TocError) -> bool);
    let cases: &[Case] = &[
        ("not json", "{", |e| matches!(e, TocError::Json(_))),
        ("trailing bytes", r#"{"version":1,"entries":[]} x"#, |e| {
            matches!(e, TocError::Json(_))
        }),
        ("duplicate key", r#"{"version":1,"version":1,"entries":[]}"#, |e| {
            matches!(e, TocError::Json(_))
        }),
        (
            "duplicate entry field",
            r#"{"version":1,"entries":[{"name":"a","name":"b","type":"dir"}]}"#,
            |e| matches!(e, TocError::Json(_)),
        ),
        ("no version", r#"{"entries":[]}"#, |e| matches!(e, TocError::Json(_))),
        ("version 2", r#"{"version":2,"entries":[]}"#, |e| {
            matches!(e, TocError::UnsupportedVersion(2))
        }),
        ("an array", "[]", |e| matches!(e, TocError::Json(_))),
        (
            "float size",
            r#"{"version":1,"entries":[{"name":"f","type":"reg","size":1.5}]}"#,
            |e| matches!(e, TocError::Json(_)),
        ),
        (
            "huge number",
            r#"{"version":1,"entries":[{"name":"f","type":"reg","size":1e400}]}"#,
            |e| matches!(e, TocError::Json(_)),
        ),
        (
            "deep nesting",
            &format!(
                r#"{{"version":1,"entries":{}{}}}"#,
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            |e| matches!(e, TocError::Json(_)),
        ),
    ];
    for (name, json, expected) in cases {
        let err = check_json(e, json, &limits).unwrap_err();
        assert!(expected(&err), "{name}: {err}");
    }
    // Entries are counted as they are read.
    let few = TocLimits {
        max_entries: 2,
        ..Default::default()
    };
    let three = json!({"version": 1, "entries": [{"name": "a", "type": "dir"}, {"name": "b", "type": "dir"}, {"name": "c", "type": "dir"}]});
    let err = check_json(e, &three.to_string(), &few).unwrap_err();
    assert!(matches!(err, TocError::TooManyEntries { limit: 2 }), "{err}");
    // Unknown fields are skipped without recursion, however deep.
    let deep = format!(r#"{{"version":1,"x":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    assert!(check_json(e, &deep, &limits).unwrap().entries.is_empty());
    // Go writes a nil list as null; unknown fields are ignored.
    let toc = check_json(e, r#"{"version":1,"entries":null,"future":{"a":[1]}}"#, &limits).unwrap();
    assert!(toc.entries.is_empty());
}

#[test]
fn accepted_details() {
    use TocFormat::{Estargz as E, ZstdChunked as Z};
    // Names are normalised; eStargz keeps a repeated path (tar order wins),
    // the mode keeps only permission bits, owner names carry over by id.
    let toc = check(
        E,
        json!([
            {"name": "./usr//bin/", "type": "dir", "mode": 0o40755, "uid": 5, "userName": "five"},
            {"name": "usr/bin", "type": "dir", "uid": 5, "modtime": "2024-01-01T00:00:00.25+01:00"},
            {"name": "usr/bin/sh", "type": "reg", "size": 1, "digest": digest("x"), "offset": 4096, "mode": 0o4755},
            {"name": "usr/bin/sh2", "type": "hardlink", "linkName": "./usr/bin/sh"},
            {"name": "usr/bin/rsh", "type": "symlink", "linkName": "/usr/bin/../bin/sh"},
            {"name": "usr/bin/empty", "type": "reg", "digest": digest("")},
        ]),
    )
    .unwrap();
    let paths: Vec<&str> = toc.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "usr/bin",
            "usr/bin",
            "usr/bin/sh",
            "usr/bin/sh2",
            "usr/bin/rsh",
            "usr/bin/empty"
        ]
    );
    assert_eq!(toc.entries[0].mode, 0o755);
    assert_eq!(toc.entries[1].user_name.as_deref(), Some("five"));
    assert_eq!(
        (toc.entries[1].mtime_sec, toc.entries[1].mtime_nsec),
        (1_704_063_600, 250_000_000)
    );
    assert_eq!(toc.entries[2].mode, 0o4755);
    let link = EntryKind::Hardlink {
        target: "usr/bin/sh".into(),
    };
    assert_eq!(toc.entries[3].kind, link);
    let EntryKind::File(sh) = &toc.entries[2].kind else {
        panic!("not a file")
    };
    assert_eq!(
        (sh.chunks[0].compressed.start, sh.chunks[0].compressed.end),
        (4096, DATA_END)
    );

    // zstd:chunked leaves an empty file's digest out; Go's zero time means none.
    let toc = check(
        Z,
        json!([
            {"name": "e", "type": "reg", "modtime": "0001-01-01T00:00:00Z"},
            reg(Z, "f", "x", 10),
        ]),
    )
    .unwrap();
    let EntryKind::File(empty) = &toc.entries[0].kind else {
        panic!("not a file")
    };
    assert_eq!(empty.digest, Sha256Digest::empty());
    assert!(empty.chunks.is_empty());
    assert_eq!(toc.entries[0].mtime_sec, 0);
}

/// eStargz files sharing a gzip member are each reached by decompressing
/// the member from its start: a TOC whose inner offsets would make reading
/// its chunks inflate more than a whole pull may is refused.
#[test]
fn inflating_every_chunk_is_bounded() {
    let data = "x".repeat(100);
    let shared = |inner: u64, name: &str| json!({"name": name, "type": "reg", "size": 100, "digest": digest(&data), "offset": 10, "innerOffset": inner});
    let entries = json!({"version": 1, "entries": [shared(0, "a"), shared(100, "b"), shared(200, "c")]});
    // 100 + (100 + 100) + (200 + 100) bytes.
    let limits = |max_inflate_bytes| TocLimits {
        max_inflate_bytes,
        ..Default::default()
    };
    check_json(TocFormat::Estargz, &entries.to_string(), &limits(600)).unwrap();
    let err = check_json(TocFormat::Estargz, &entries.to_string(), &limits(599)).unwrap_err();
    assert!(
        matches!(err, TocError::TooMuchInflating { work: 600, limit: 599 }),
        "{err}"
    );
    // A far inner offset costs as much as the bytes before it.
    let far = json!({"version": 1, "entries": [shared(0, "a"), shared(1 << 40, "b")]});
    let err = check_json(TocFormat::Estargz, &far.to_string(), &TocLimits::default()).unwrap_err();
    assert!(matches!(err, TocError::TooMuchInflating { .. }), "{err}");
}

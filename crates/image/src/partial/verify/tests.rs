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

/// A tar of `dir/` and `files` (mode 0644, owner 0:0), as the TOC
/// [`case`] makes describes it.
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(0);
    builder.append_data(&mut header, "dir/", &[][..]).unwrap();
    for (path, data) in files {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn segment(bytes: &[u8]) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
    format!(r#"{{"type":2,"payload":"{payload}","position":0}}"#)
}

fn record(name: &str, size: usize) -> String {
    format!(r#"{{"type":1,"name":"{name}","size":{size},"payload":null,"position":1}}"#)
}

/// `tar` as tar-split records it: every byte but the files' bodies in
/// segments, one file record per entry.
fn split(tar: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut at = 0;
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let body = usize::try_from(entry.raw_file_position()).unwrap();
        let size = usize::try_from(entry.size()).unwrap();
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        lines.push(segment(&tar[at..body]));
        lines.push(record(&name, size));
        at = body + size;
    }
    lines.push(segment(&tar[at..]));
    lines
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
    let contents = Contents {
        got: &case.contents,
        open_object: &|_| panic!("no objects here"),
    };
    check_diff_id(ndjson.as_bytes(), &case.toc, &contents, diff_id, &TocLimits::default())
}

const FILES: [(&str, &[u8]); 2] = [("dir/a", b"alpha"), ("dir/b", b"bravo!")];

#[test]
fn the_stream_is_rebuilt_from_segments_and_files() {
    let case = case(&FILES);
    let tar = tar_of(&FILES);
    let lines = split(&tar);
    let diff_id = Sha256Digest::of(&tar).to_string();
    check(&case, &lines, &diff_id).unwrap();

    let e = check(&case, &lines, &Sha256Digest::of(b"other").to_string()).unwrap_err();
    assert!(matches!(e, PartialError::DiffIdMismatch { .. }), "{e}");
}

#[test]
fn a_tar_split_that_disagrees_with_the_toc_cannot_check_the_diff_id() {
    let case = case(&FILES);
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

/// The tree is built from the TOC, so the diff_id vouches for it only if
/// the TOC says what the tar's headers say: a TOC that lies about a mode,
/// an owner or an entry's kind, or that lists entries the tar lacks or in
/// another order, is refused even though the stream hashes to the diff_id.
#[test]
fn a_toc_that_lies_about_what_the_diff_id_covers_is_refused() {
    let tar = tar_of(&FILES);
    let lines = split(&tar);
    let diff_id = Sha256Digest::of(&tar).to_string();
    type Lie = fn(&mut Vec<TocEntry>);
    let lies: [(Lie, &str); 5] = [
        (|e| e[1].mode = 0o4755, "mode: the TOC says 4755, the tar 644"),
        (|e| e[2].uid = 1000, "owner: the TOC says 1000:0"),
        (
            |e| e[0].kind = EntryKind::Fifo,
            "the TOC has a fifo, the tar a directory",
        ),
        (
            |e| e.push(entry("dir/.wh.x", EntryKind::Dir)),
            "the TOC lists a directory the tar does not have",
        ),
        (|e| e.swap(0, 1), "the TOC before"),
    ];
    for (lie, text) in lies {
        let mut case = case(&FILES);
        lie(&mut case.toc.entries);
        let e = check(&case, &lines, &diff_id).unwrap_err();
        assert!(matches!(e, PartialError::Contradicts { .. }), "{text}: {e}");
        assert!(e.to_string().contains(text), "{text}: {e}");
    }
}

/// A file body the tar-split keeps in a segment, not a file record, is
/// still read as the tar has it: here `dir/b`, which the TOC calls a fifo.
#[test]
fn bodies_inside_segments_are_read_as_the_tar_has_them() {
    let tar = tar_of(&FILES);
    let diff_id = Sha256Digest::of(&tar).to_string();
    let mut archive = tar::Archive::new(&tar[..]);
    let first = archive.entries().unwrap().nth(1).unwrap().unwrap();
    assert_eq!(&*first.path_bytes(), b"dir/a");
    let body = usize::try_from(first.raw_file_position()).unwrap();
    let lines = vec![segment(&tar[..body]), record("dir/a", 5), segment(&tar[body + 5..])];
    let mut lying = case(&FILES[..1]);
    lying.toc.entries.push(entry("dir/b", EntryKind::Fifo));
    let e = check(&lying, &lines, &diff_id).unwrap_err();
    assert!(matches!(e, PartialError::Contradicts { .. }), "{e}");
    assert!(
        e.to_string().contains("the TOC has a fifo, the tar a regular file"),
        "{e}"
    );
}

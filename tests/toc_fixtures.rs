//! The TOC reader against real eStargz and zstd:chunked images made by tools
//! no one here wrote (`tests/fixtures/toc-images.sh`): the Go estargz package
//! and Debian's skopeo. Each layer's TOC must describe the layer the image
//! was converted from, entry by entry: every regular file's digest is the
//! SHA-256 of its bytes in the original layer's tar, and its compressed
//! ranges in the converted blob give back those bytes.
//!
//! The fixtures are built (and cached) by the script when
//! `STRATA_TOC_FIXTURES` does not name them; the script finds the image
//! family through `STRATA_FAMILY` or builds it. Nothing is skipped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sha2::{Digest as _, Sha256};
use strata_image::toc::{self, EntryKind, Sha256Digest, TocEntry, TocFormat};
use strata_tests::oci_layout::{
    blob_path, digest_through_toc, image, layer_stream, layers, legacy_zstd_keys, normalise, read_toc,
};

const TAG: &str = "devel";

fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("STRATA_TOC_FIXTURES") {
            return dir.into();
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/toc-images.sh");
        let out = Command::new("bash").arg(&script).output().expect("bash runs");
        assert!(
            out.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// What the original tar says about one path.
#[derive(Debug)]
struct TarEntry {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The length and SHA-256 of what a reader gives.
fn hash(mut reader: impl Read) -> (u64, Sha256Digest) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    let mut len = 0;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            return (len, Sha256Digest(hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

/// Every path of a layer's tar (a later entry replacing an earlier one),
/// regular files with the SHA-256 of their bytes.
fn tar_entries(stream: impl Read) -> BTreeMap<String, TarEntry> {
    let mut archive = tar::Archive::new(stream);
    let mut out = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = normalise(&entry.path_bytes());
        let mut xattrs = BTreeMap::new();
        if let Some(pax) = entry.pax_extensions().unwrap() {
            for record in pax {
                let record = record.unwrap();
                if let Some(name) = record.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.insert(name.to_vec(), record.value_bytes().to_vec());
                }
            }
        }
        let header = entry.header().clone();
        let link = || String::from_utf8(entry.link_name_bytes().unwrap().into_owned()).unwrap();
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (size, digest) = hash(&mut entry);
                EntryKind::File(toc::FileContent {
                    size,
                    digest,
                    chunks: Vec::new(),
                })
            }
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink { target: link() },
            tar::EntryType::Link => EntryKind::Hardlink {
                target: normalise(link().as_bytes()),
            },
            tar::EntryType::Char => EntryKind::CharDevice {
                major: header.device_major().unwrap().unwrap(),
                minor: header.device_minor().unwrap().unwrap(),
            },
            tar::EntryType::Block => EntryKind::BlockDevice {
                major: header.device_major().unwrap().unwrap(),
                minor: header.device_minor().unwrap().unwrap(),
            },
            tar::EntryType::Fifo => EntryKind::Fifo,
            other => panic!("{path}: unexpected tar entry type {other:?}"),
        };
        let tar_entry = TarEntry {
            kind,
            mode: header.mode().unwrap() & 0o7777,
            uid: u32::try_from(header.uid().unwrap()).unwrap(),
            gid: u32::try_from(header.gid().unwrap()).unwrap(),
            mtime: i64::try_from(header.mtime().unwrap()).unwrap(),
            xattrs,
        };
        out.insert(path, tar_entry);
    }
    out
}

fn assert_entry_matches(path: &str, toc_entry: &TocEntry, tar_entry: &TarEntry) {
    match (&toc_entry.kind, &tar_entry.kind) {
        (EntryKind::File(toc_file), EntryKind::File(tar_file)) => {
            assert_eq!(toc_file.size, tar_file.size, "{path}: size");
            assert_eq!(toc_file.digest, tar_file.digest, "{path}: digest");
            let covered: u64 = toc_file.chunks.iter().map(|c| c.size).sum();
            assert_eq!(covered, toc_file.size, "{path}: chunks");
        }
        (toc_kind, tar_kind) => assert_eq!(toc_kind, tar_kind, "{path}: kind"),
    }
    let toc_side = (
        toc_entry.mode,
        toc_entry.uid,
        toc_entry.gid,
        toc_entry.mtime_sec,
        &toc_entry.xattrs,
    );
    let tar_side = (
        tar_entry.mode,
        tar_entry.uid,
        tar_entry.gid,
        tar_entry.mtime,
        &tar_entry.xattrs,
    );
    assert_eq!(toc_side, tar_side, "{path}: mode, owner, mtime, xattrs");
}

/// How much of what a layer can hold the check saw.
#[derive(Debug, Default)]
struct Checked {
    files: usize,
    chunks: usize,
    hard_links: usize,
    symlinks: usize,
    fifos: usize,
    with_xattrs: usize,
    setuid: usize,
}

impl Checked {
    fn count(&mut self, entry: &TocEntry) {
        match &entry.kind {
            EntryKind::File(content) => {
                self.files += 1;
                self.chunks += content.chunks.len();
            }
            EntryKind::Hardlink { .. } => self.hard_links += 1,
            EntryKind::Symlink { .. } => self.symlinks += 1,
            EntryKind::Fifo => self.fifos += 1,
            _ => {}
        }
        self.with_xattrs += usize::from(!entry.xattrs.is_empty());
        self.setuid += usize::from(entry.mode & 0o4000 != 0);
    }

    /// The family's synthetic layer has each of these.
    fn assert_covers_every_kind(&self) {
        let Checked {
            hard_links,
            symlinks,
            fifos,
            with_xattrs,
            setuid,
            ..
        } = *self;
        assert!(
            hard_links > 0 && symlinks > 0 && fifos > 0 && with_xattrs >= 2 && setuid > 0,
            "{self:?}"
        );
    }
}

/// Checks every layer of the converted image against the family's layer
/// it was made from.
fn check_image(format: TocFormat, converted: &Path) -> Checked {
    let family = fixtures().join("family");
    let (original, _) = image(&family, TAG);
    let (manifest, _) = image(converted, TAG);
    assert_eq!(layers(&original).len(), layers(&manifest).len());
    let mut checked = Checked::default();
    for (original_layer, layer) in layers(&original).iter().zip(layers(&manifest)) {
        let (toc, has_tar_split) = read_toc(format, converted, layer);
        if format == TocFormat::ZstdChunked {
            assert!(
                legacy_zstd_keys(layer),
                "Debian's skopeo writes the io.containers.* keys"
            );
            assert!(!has_tar_split, "Debian's skopeo writes no tar-split");
        }
        let expected = tar_entries(layer_stream(&family, original_layer));
        let mut seen: BTreeMap<&str, &TocEntry> = BTreeMap::new();
        for entry in &toc.entries {
            seen.insert(&entry.path, entry);
        }
        if format == TocFormat::Estargz {
            // The converter's own entries; exactly one landmark per layer.
            let landmarks = [toc::estargz::PREFETCH_LANDMARK, toc::estargz::NO_PREFETCH_LANDMARK];
            let found: Vec<_> = landmarks.iter().filter(|l| seen.remove(**l).is_some()).collect();
            assert_eq!(found.len(), 1, "{}: landmarks {found:?}", layer["digest"]);
        }
        let toc_paths: Vec<&str> = seen.keys().copied().collect();
        let tar_paths: Vec<&str> = expected.keys().map(String::as_str).collect();
        assert_eq!(toc_paths, tar_paths, "{}: paths", layer["digest"]);
        let blob = File::open(blob_path(converted, layer["digest"].as_str().unwrap())).unwrap();
        for (path, tar_entry) in &expected {
            let toc_entry = seen[path.as_str()];
            assert_entry_matches(path, toc_entry, tar_entry);
            if let EntryKind::File(content) = &toc_entry.kind {
                assert_eq!(
                    digest_through_toc(&blob, format, content),
                    content.digest,
                    "{path}: bytes from its ranges"
                );
            }
            checked.count(toc_entry);
        }
    }
    checked.assert_covers_every_kind();
    checked
}

#[test]
fn estargz_tocs_match_the_layers_they_were_made_from() {
    let checked = check_image(TocFormat::Estargz, &fixtures().join("estargz"));
    eprintln!("eStargz: {checked:?}");
    assert!(checked.chunks > checked.files, "64 KiB chunks split the large files");
}

#[test]
fn zstd_chunked_tocs_match_the_layers_they_were_made_from() {
    let checked = check_image(TocFormat::ZstdChunked, &fixtures().join("zstd-chunked"));
    eprintln!("zstd:chunked: {checked:?}");
    assert!(
        checked.chunks > checked.files,
        "the rolling checksum splits the large files"
    );
}

/// Reads two streams side by side: (bytes both have in common, whether the
/// second is the first followed by nothing but zero bytes).
fn compare_streams(mut short: impl Read, mut long: impl Read) -> (u64, Sha256Digest, bool) {
    let (mut a, mut b) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    let mut common = 0u64;
    let mut hasher = Sha256::new();
    loop {
        let n = short.read(&mut a).unwrap();
        if n == 0 {
            break;
        }
        b.truncate(n);
        b.resize(n, 0);
        long.read_exact(&mut b).unwrap();
        assert_eq!(a[..n], b[..], "the streams differ near byte {common}");
        hasher.update(&a[..n]);
        common += n as u64;
    }
    let mut rest = Vec::new();
    long.read_to_end(&mut rest).unwrap();
    (
        common,
        Sha256Digest(hasher.finalize().into()),
        rest.iter().all(|&z| z == 0) && !rest.is_empty(),
    )
}

/// Debian 12's zstd:chunked writer (containers/storage 1.43) leaves out the
/// tar's trailing zero blocks, while skopeo keeps the source's diff_ids: a
/// reader that checks diff_ids must refuse these layers. The eStargz
/// converter's diff_ids are those of its new tars.
#[test]
fn toc_fixture_diff_ids() {
    let family = fixtures().join("family");
    let (original, _) = image(&family, TAG);
    let converted = fixtures().join("zstd-chunked");
    let (manifest, config) = image(&converted, TAG);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    for ((original_layer, layer), diff_id) in layers(&original).iter().zip(layers(&manifest)).zip(diff_ids) {
        let (_, digest, only_zeros_missing) =
            compare_streams(layer_stream(&converted, layer), layer_stream(&family, original_layer));
        assert!(
            only_zeros_missing,
            "{}: not the original tar cut before its end blocks",
            layer["digest"]
        );
        assert_ne!(digest.to_string(), diff_id.as_str().unwrap(), "{}", layer["digest"]);
    }
    let converted = fixtures().join("estargz");
    let (manifest, config) = image(&converted, TAG);
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    for (layer, diff_id) in layers(&manifest).iter().zip(diff_ids) {
        let (_, digest) = hash(layer_stream(&converted, layer));
        assert_eq!(digest.to_string(), diff_id.as_str().unwrap(), "{}", layer["digest"]);
    }
}

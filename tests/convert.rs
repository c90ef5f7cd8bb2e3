//! `strata convert` of the family's `devel` (four layers: hard links,
//! whiteouts, xattrs, a fifo) and `python` images to eStargz and
//! zstd:chunked, into an OCI layout and pushed to the local registry, then
//! checked by readers no one here wrote and by strata's own:
//!
//! - every layer's TOC reads back through `strata_image::toc` and matches
//!   the original layer's tar entry by entry; every file's bytes come back
//!   from its chunks; the diff_ids are the converted streams' (and, for
//!   zstd:chunked, the original ones);
//! - Debian's `skopeo copy` copies the images, from the layout and from
//!   the registry;
//! - containerd pulls them with its overlayfs snapshotter and runs them;
//! - the Go `estargz` package verifies the eStargz layers chunk by chunk
//!   (`tests/fixtures/estargz-verify`), and Go's tar-split rebuilds each
//!   zstd:chunked layer's tar from its tar-split and its files' TOC ranges
//!   (`tests/fixtures/zstdchunked-verify`);
//! - `strata pull` of the converted images gives the original tree and the
//!   very same EROFS image (eStargz's `stargz.index.json` and landmark
//!   files are the format's and hidden, in whole and partial pulls alike).
//!
//! Pushes authenticate as pulls do (Basic, and Bearer tokens with a
//! `pull,push` scope), against registries started on their own ports.
//!
//! The conversions run once per test binary; the throughput of each is
//! printed beside plain gzip's and zstd's.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use strata_image::toc::{self, EntryKind, Sha256Digest, TocFormat};
use strata_tests::oci_layout::{
    annotations, blob_path, digest_through_toc, image, layer_stream, layers, legacy_zstd_keys, normalise, read_json,
    read_toc,
};
use strata_tests::registries::{htpasswd_auth, Registry, TokenServer, PASSWORD, USER};
use strata_tests::*;

const TAGS: [&str; 2] = ["devel", "python"];
const FORMATS: [&str; 2] = ["estargz", "zstd:chunked"];
/// Tests that use the converted images; the last one to finish removes them.
const FIXTURE_USERS: usize = 7;

/// The tag-safe name of a format.
fn tag_of(format: &str) -> &'static str {
    match format {
        "estargz" => "estargz",
        "zstd:chunked" => "zstd-chunked",
        "gzip" => "gzip",
        "zstd" => "zstd",
        other => panic!("format {other}"),
    }
}

fn toc_format(format: &str) -> TocFormat {
    match format {
        "estargz" => TocFormat::Estargz,
        _ => TocFormat::ZstdChunked,
    }
}

struct Fixture {
    dir: PathBuf,
    /// One OCI layout holding every conversion, tagged `<tag>-<format>`.
    layout: PathBuf,
    /// `strata convert --json` output per (tag, format) into the layout.
    summaries: BTreeMap<(String, String), Value>,
}

impl Fixture {
    fn layout_tag(tag: &str, format: &str) -> String {
        format!("{tag}-{}", tag_of(format))
    }

    fn pushed(tag: &str, format: &str) -> String {
        format!("{}/convert/{tag}:{}", registry(), tag_of(format))
    }
}

/// Runs `strata --config /dev/null ARGS...` (no store is involved).
fn strata(args: &[&str]) -> Output {
    Command::new(strata_bin())
        .args(["--config", "/dev/null"])
        .args(args)
        .output()
        .expect("running strata")
}

/// `strata convert --json`; its summary.
fn convert(format: &str, source: &str, destination: &str) -> Value {
    let out = stdout_of(
        &format!("strata convert {format} {source} {destination}"),
        strata(&["convert", "--json", "--format", format, source, destination]),
    );
    serde_json::from_str(out.trim()).unwrap()
}

/// Where the converted images are kept while the tests run.
fn fixture_dir() -> PathBuf {
    let base = std::env::var_os("STRATA_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
    base.join("convert")
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        require_root();
        let dir = fixture_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("layout");
        let mut summaries = BTreeMap::new();
        for tag in TAGS {
            for format in FORMATS {
                let into_layout = format!("oci:{}:{}", layout.display(), Fixture::layout_tag(tag, format));
                let summary = convert(format, &layout_ref(tag), &into_layout);
                let pushed = convert(format, &registry_ref(tag), &Fixture::pushed(tag, format));
                // The same image, whichever way it came and went.
                assert_eq!(pushed["manifest_digest"], summary["manifest_digest"], "{tag} {format}");
                assert_eq!(summary["config_changed"], format == "estargz", "{tag} {format}");
                summaries.insert((tag.to_owned(), format.to_owned()), summary);
            }
        }
        Fixture { dir, layout, summaries }
    })
}

/// Counts the fixture's users down; the last removes the converted images.
struct FixtureUser;

impl Drop for FixtureUser {
    fn drop(&mut self) {
        static LEFT: AtomicUsize = AtomicUsize::new(FIXTURE_USERS);
        if LEFT.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = std::fs::remove_dir_all(fixture_dir());
        }
    }
}

struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

fn hashing<R: Read>(inner: R) -> Hashing<R> {
    Hashing {
        inner,
        hasher: Sha256::new(),
        len: 0,
    }
}

impl<R: Read> Hashing<R> {
    /// Reads to the end; the stream's length and digest.
    fn finish(mut self) -> (u64, Sha256Digest) {
        io::copy(&mut self, &mut io::sink()).unwrap();
        (self.len, Sha256Digest(self.hasher.finalize().into()))
    }
}

/// What a tar entry says, as a TOC entry would say it.
#[derive(Debug, PartialEq)]
struct Described {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every path of a tar (later entries replacing earlier ones), files with
/// their size and digest, and the digest of the whole stream.
fn tar_entries(stream: impl Read) -> (BTreeMap<String, Described>, Sha256Digest) {
    let mut archive = tar::Archive::new(hashing(stream));
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
        let device = || {
            (
                header.device_major().unwrap().unwrap(),
                header.device_minor().unwrap().unwrap(),
            )
        };
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (size, digest) = hashing(&mut entry).finish();
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
                major: device().0,
                minor: device().1,
            },
            tar::EntryType::Block => EntryKind::BlockDevice {
                major: device().0,
                minor: device().1,
            },
            tar::EntryType::Fifo => EntryKind::Fifo,
            other => panic!("{path}: unexpected tar entry type {other:?}"),
        };
        let described = Described {
            kind,
            mode: header.mode().unwrap() & 0o7777,
            uid: u32::try_from(header.uid().unwrap()).unwrap(),
            gid: u32::try_from(header.gid().unwrap()).unwrap(),
            mtime: i64::try_from(header.mtime().unwrap()).unwrap(),
            xattrs,
        };
        out.insert(path, described);
    }
    let (_, digest) = archive.into_inner().finish();
    (out, digest)
}

/// The TOC entry as a tar entry would describe it.
fn described(entry: &toc::TocEntry) -> Described {
    let kind = match &entry.kind {
        EntryKind::File(content) => EntryKind::File(toc::FileContent {
            size: content.size,
            digest: content.digest,
            chunks: Vec::new(),
        }),
        other => other.clone(),
    };
    Described {
        kind,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        mtime: entry.mtime_sec,
        xattrs: entry.xattrs.clone(),
    }
}

#[test]
fn converted_layers_read_back_through_the_toc_file_by_file() {
    let _user = FixtureUser;
    let fixture = fixture();
    let family = family_layout();
    for tag in TAGS {
        let (original, original_config) = image(&family, tag);
        for format in FORMATS {
            let toc_format = toc_format(format);
            let (manifest, config) = image(&fixture.layout, &Fixture::layout_tag(tag, format));
            assert_eq!(layers(&manifest).len(), layers(&original).len());
            let (mut files, mut chunks) = (0, 0);
            for (i, (original_layer, layer)) in layers(&original).iter().zip(layers(&manifest)).enumerate() {
                let what = format!("{tag} {format} layer {i}");
                let want_type = if format == "estargz" { "+gzip" } else { "+zstd" };
                assert!(layer["mediaType"].as_str().unwrap().ends_with(want_type), "{what}");
                let (toc, has_tar_split) = read_toc(toc_format, &fixture.layout, layer);
                if toc_format == TocFormat::ZstdChunked {
                    assert!(!legacy_zstd_keys(layer), "the current io.github.containers.* keys");
                    assert!(has_tar_split, "a tar-split");
                }
                let (expected, original_diff_id) = tar_entries(layer_stream(&family, original_layer));
                assert_eq!(
                    original_diff_id.to_string(),
                    original_config["rootfs"]["diff_ids"][i],
                    "{what}"
                );
                let mut seen = BTreeMap::new();
                for entry in &toc.entries {
                    seen.insert(entry.path.clone(), entry);
                }
                let toc_paths: Vec<&String> = seen.keys().collect();
                let tar_paths: Vec<&String> = expected.keys().collect();
                assert_eq!(toc_paths, tar_paths, "{what}: paths");
                let blob = File::open(blob_path(&fixture.layout, layer["digest"].as_str().unwrap())).unwrap();
                for (path, tar_entry) in &expected {
                    let entry = seen[path];
                    assert_eq!(&described(entry), tar_entry, "{what}: {path}");
                    if let EntryKind::File(content) = &entry.kind {
                        assert_eq!(
                            digest_through_toc(&blob, toc_format, content),
                            content.digest,
                            "{what}: {path}: its bytes through the TOC"
                        );
                        files += 1;
                        chunks += content.chunks.len();
                    }
                }

                // The converted stream: its digest is the diff_id.
                let (converted, diff_id) = tar_entries(layer_stream(&fixture.layout, layer));
                assert_eq!(diff_id.to_string(), config["rootfs"]["diff_ids"][i], "{what}");
                if format == "zstd:chunked" {
                    assert_eq!(diff_id, original_diff_id, "{what}: zstd:chunked keeps the tar");
                } else {
                    let index = &converted[toc::estargz::TOC_TAR_NAME];
                    let EntryKind::File(content) = &index.kind else {
                        panic!("{what}: stargz.index.json is not a file")
                    };
                    let annotated = &annotations(layer)[toc::estargz::TOC_DIGEST_ANNOTATION];
                    assert_eq!(&content.digest.to_string(), annotated, "{what}: the TOC entry");
                    assert_eq!(converted.len(), expected.len() + 1, "{what}: one entry more");
                }
            }
            eprintln!("{tag} {format}: {files} files, {chunks} chunks checked");
            assert!(files > 1000, "{tag} {format}");
        }
    }
}

/// `skopeo copy`, failing the test if it fails.
fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo").args(args).output().expect("skopeo is installed");
    stdout_of(&format!("skopeo {args:?}"), out);
}

#[test]
fn skopeo_copies_converted_images() {
    let _user = FixtureUser;
    let fixture = fixture();
    let from_layout = fixture.dir.join("skopeo-from-layout");
    let from_registry = fixture.dir.join("skopeo-from-registry");
    for tag in TAGS {
        for format in FORMATS {
            let layout_tag = Fixture::layout_tag(tag, format);
            let source = format!("oci:{}:{layout_tag}", fixture.layout.display());
            let copy = format!("oci:{}:{layout_tag}", from_layout.display());
            skopeo(&["copy", "--quiet", &source, &copy]);
            let pushed = format!("docker://{}", Fixture::pushed(tag, format));
            let copy2 = format!("oci:{}:{layout_tag}", from_registry.display());
            skopeo(&["copy", "--quiet", "--src-tls-verify=false", &pushed, &copy2]);
            let (ours, _) = image(&fixture.layout, &layout_tag);
            for dir in [&from_layout, &from_registry] {
                let (copied, _) = image(dir, &layout_tag);
                assert_eq!(copied["layers"], ours["layers"], "{tag} {format} in {}", dir.display());
                assert_eq!(copied["config"]["digest"], ours["config"]["digest"]);
                for layer in layers(&copied) {
                    let blob = blob_path(dir, layer["digest"].as_str().unwrap());
                    assert_eq!(std::fs::metadata(blob).unwrap().len(), layer["size"].as_u64().unwrap());
                }
            }
        }
    }
}

#[test]
fn containerd_pulls_and_runs_converted_images_with_overlayfs() {
    let _user = FixtureUser;
    fixture();
    let base = std::env::var_os("STRATA_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::Builder::new().prefix("cd-").tempdir_in(base).unwrap();
    // No strata behind the proxy socket: only overlayfs is used.
    let socket = dir.path().join("none.sock");
    let script = |args: &[&str]| run_fixture("containerd.sh", dir.path(), &socket, args);
    let started = script(&["start"]);
    assert!(started.status.success(), "{started:?}");
    struct Stop<'a>(&'a dyn Fn(&[&str]) -> Output);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = (self.0)(&["stop"]);
        }
    }
    let _stop = Stop(&script);
    let ctr = |args: &[&str]| {
        let mut all = vec!["ctr"];
        all.extend_from_slice(args);
        stdout_of(&format!("ctr {args:?}"), script(&all))
    };
    for tag in TAGS {
        for format in FORMATS {
            let reference = Fixture::pushed(tag, format);
            ctr(&[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "overlayfs",
                &reference,
            ]);
            let id = format!("conv-{tag}-{}-{}", tag_of(format), std::process::id());
            let command: &[&str] = if tag == "python" {
                &["python3", "-c", "print(6*7)"]
            } else {
                &["/bin/true"]
            };
            let mut args = vec!["run", "--rm", "--snapshotter", "overlayfs", &reference, &id];
            args.extend_from_slice(command);
            let out = ctr(&args);
            if tag == "python" {
                assert_eq!(out.trim(), "42", "{tag} {format}");
            }
            eprintln!("containerd ran {reference}");
        }
    }
}

/// Builds the Go program `tests/fixtures/NAME/main.go` against Debian's Go
/// packages (GOPATH mode, as `tests/fixtures/toc-images.sh` builds its own).
fn go_program(name: &str, dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fixtures/{name}/main.go"));
    let package = dir.join("gopath/src/strata.test").join(name);
    std::fs::create_dir_all(&package).unwrap();
    std::fs::copy(&source, package.join("main.go")).unwrap();
    let cache = std::env::var_os("STRATA_FIXTURES")
        .map_or_else(|| PathBuf::from("/var/cache/strata-test"), PathBuf::from)
        .join("gocache");
    let binary = dir.join(name);
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&package)
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:/usr/share/gocode", dir.join("gopath").display()))
        .env("GOCACHE", cache)
        .output()
        .expect("go (golang-go) is installed");
    stdout_of(&format!("go build {name}"), out);
    binary
}

/// Runs the Go checker `name` on every converted image of `format`; each
/// layer must report `verified`.
fn go_check(name: &str, format: &str) {
    let fixture = fixture();
    let checker = go_program(name, &fixture.dir.join("go"));
    for tag in TAGS {
        let layout_tag = Fixture::layout_tag(tag, format);
        let out = Command::new(&checker)
            .arg(&fixture.layout)
            .arg(&layout_tag)
            .output()
            .unwrap();
        let text = stdout_of(&format!("{name} {layout_tag}"), out);
        eprint!("{text}");
        let (manifest, _) = image(&fixture.layout, &layout_tag);
        let verified = text.lines().filter(|l| l.contains(" verified")).count();
        assert_eq!(verified, layers(&manifest).len(), "{layout_tag}");
    }
}

#[test]
fn estargz_layers_pass_the_go_estargz_verifier() {
    let _user = FixtureUser;
    go_check("estargz-verify", "estargz");
}

#[test]
fn zstd_chunked_layers_rebuild_through_go_tar_split() {
    let _user = FixtureUser;
    go_check("zstdchunked-verify", "zstd:chunked");
}

fn treecheck(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/treecheck.py"))
        .args(args)
        .output()
        .expect("python3")
}

/// Compares a mounted tree with the oracle, but for `extra`, a path only
/// the converted image has.
fn assert_tree_matches_but(expected: &Path, mounted: &Path, scratch: &Path, extra: Option<&str>) {
    let scan = scratch.join(format!("scan-{}.json", mounted.file_name().unwrap().to_string_lossy()));
    let out = treecheck(&[
        "scan",
        "--root",
        mounted.to_str().unwrap(),
        "--out",
        scan.to_str().unwrap(),
    ]);
    stdout_of("treecheck scan", out);
    if let Some(extra) = extra {
        let mut tree = read_json(&scan);
        let removed = tree.as_object_mut().unwrap().remove(extra);
        assert_eq!(
            removed.as_ref().map(|r| &r["type"]),
            Some(&Value::from("file")),
            "{extra}"
        );
        std::fs::write(&scan, tree.to_string()).unwrap();
    }
    let out = treecheck(&["compare", expected.to_str().unwrap(), scan.to_str().unwrap()]);
    let text = stdout_of("treecheck compare (tree differs from the oracle)", out);
    assert!(text.contains("identical"), "{text}");
}

#[test]
fn strata_pull_of_converted_images_gives_the_original_tree() {
    let _user = FixtureUser;
    fixture();
    let store = TestStore::new();
    let scratch = store.dir.path();
    for tag in TAGS {
        store.ok(&["pull", &registry_ref(tag)]);
    }
    let originals = store.images();
    for tag in TAGS {
        let expected = expected_tree(tag, scratch);
        for format in FORMATS {
            let reference = Fixture::pushed(tag, format);
            eprintln!("{}", store.ok(&["pull", &reference]).trim());
            let mounted = store.mount(&reference);
            assert_tree_matches_but(&expected, &mounted, scratch, None);
            store.umount(&mounted);
        }
    }
    // The same trees, so the same EROFS images.
    let images = store.images();
    for (name, bytes) in &originals {
        assert_eq!(images.get(name), Some(bytes), "{name}");
    }
    assert_eq!(images.len(), originals.len(), "no new image for a converted one");
    store.fsck_clean();
}

#[test]
fn throughput_is_reported_beside_gzip_and_zstd() {
    let _user = FixtureUser;
    let fixture = fixture();
    let mut rows = Vec::new();
    for tag in TAGS {
        let mut tar_bytes = None;
        for format in ["gzip", "zstd", "estargz", "zstd:chunked"] {
            let summary = match fixture.summaries.get(&(tag.to_owned(), format.to_owned())) {
                Some(summary) => summary.clone(),
                None => {
                    let into = format!("oci:{}:{tag}-{}", fixture.dir.join("plain").display(), tag_of(format));
                    convert(format, &layout_ref(tag), &into)
                }
            };
            let bytes = summary["tar_bytes"].as_u64().unwrap();
            assert_eq!(*tar_bytes.get_or_insert(bytes), bytes, "{tag}: the same tars");
            assert!(summary["tar_mb_per_s"].as_f64().unwrap() > 0.0);
            rows.push(format!(
                "{tag:<7} {format:<13} {:>8.1} {:>8.2} {:>9.1} {:>12}",
                bytes as f64 / 1e6,
                summary["seconds"].as_f64().unwrap(),
                summary["tar_mb_per_s"].as_f64().unwrap(),
                summary["output_bytes"].as_u64().unwrap(),
            ));
        }
    }
    eprintln!("image   format         tar MB  seconds  MB/s tar  output bytes");
    eprintln!("{}", rows.join("\n"));
}

#[test]
fn bad_arguments_fail_before_anything_is_written() {
    require_root();
    let out = strata(&[
        "convert",
        "--format",
        "lz4",
        "oci:/nonexistent:x",
        "oci:/nonexistent-out:y",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let into = format!("oci:{}:x", dir.path().join("out").display());
    let out = strata(&["convert", "--format", "estargz", &layout_ref("no-such-tag"), &into]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-tag"), "{out:?}");
    assert!(!dir.path().join("out/index.json").exists());
    let out = strata(&[
        "convert",
        "--format",
        "estargz",
        "--level",
        "12",
        &layout_ref("devel"),
        &into,
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("level 12"), "{out:?}");
}

/// Pushes take the registry credentials pulls take: `--creds`, through
/// Basic auth and through a token server (scope `pull,push`).
#[test]
fn pushes_use_the_registry_credentials() {
    let store = TestStore::new();
    let dir = store.dir.path();
    let creds = format!("{USER}:{PASSWORD}");
    let source = layout_ref("minbase");

    let basic = Registry::start(dir, "basic", 5061, &dir.join("basic-data"), "", &htpasswd_auth(dir));
    let target = format!("{}/convert/minbase:zstd-chunked", basic.addr);
    let refused = strata(&["convert", "--format", "zstd:chunked", &source, &target]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    let out = strata(&[
        "convert",
        "--creds",
        &creds,
        "--format",
        "zstd:chunked",
        &source,
        &target,
    ]);
    stdout_of("convert to the Basic-auth registry", out);
    assert!(basic.count("PUT /v2/convert/minbase/manifests/zstd-chunked") >= 1);
    // A second push finds every blob there and uploads none.
    let uploads = basic.count("POST /v2/convert/minbase/blobs/uploads/");
    let out = strata(&[
        "convert",
        "--creds",
        &creds,
        "--format",
        "zstd:chunked",
        &source,
        &target,
    ]);
    stdout_of("convert again", out);
    assert_eq!(basic.count("POST /v2/convert/minbase/blobs/uploads/"), uploads);
    store.ok(&["pull", "--creds", &creds, &target]);
    let mounted = store.mount(&target);
    assert_tree_matches(&expected_tree("minbase", dir), &mounted, dir);

    let tokens = TokenServer::start(dir, 5063);
    let bearer = Registry::start(dir, "bearer", 5062, &dir.join("bearer-data"), "", &tokens.registry_auth);
    let target = format!("{}/convert/minbase:estargz", bearer.addr);
    let out = strata(&["convert", "--creds", &creds, "--format", "estargz", &source, &target]);
    stdout_of("convert to the token-auth registry", out);
    let log = tokens.log_text();
    // The scope's actions in either order: the registry's challenge names them.
    let push_scope = |l: &&str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix("scope=repository:convert/minbase:"))
            .is_some_and(|actions| actions.split(',').any(|a| a == "push") && actions.split(',').any(|a| a == "pull"))
    };
    assert!(log.lines().any(|l| push_scope(&l)), "{log}");
    store.ok(&["pull", "--creds", &creds, &target]);
}

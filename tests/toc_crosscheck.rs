//! A whole read of an eStargz or zstd:chunked layer compares its tar with
//! its TOC (issue 15 item 3; docs/partial-pulls.md, "Trust").
//!
//! Hostile images: the family's `minbase`, converted by `strata convert`,
//! its TOC then rewritten (and re-annotated, so it still verifies) to
//! disagree with the tar: a file's digest, a tar file the TOC leaves out, a
//! TOC file the tar lacks, a symlink where the tar has a file. A whole pull
//! (`--partial off`) refuses each with an error naming the layer, the path
//! and what differs, and stores nothing; a partial pull, which cannot see
//! the tar, behaves as documented: it fails where it falls back to the
//! whole layer, else gives the TOC's tree.
//!
//! A valid image passes, and its whole pull fills the SHA-256 index, so a
//! partial pull of a sibling image then fetches only what the store lacks
//! (bytes counted by `fixtures/range-proxy.py`).

mod range_proxy;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use range_proxy::{Mode, RangeProxy};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use strata_tests::oci_layout::{annotations, blob_path, image, layers};
use strata_tests::*;

const FORMATS: [&str; 2] = ["estargz", "zstd:chunked"];
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
const CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
const ESTARGZ_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
const ESTARGZ_FOOTER: usize = 51;

fn tag_of(format: &str) -> &'static str {
    match format {
        "estargz" => "estargz",
        _ => "zstd-chunked",
    }
}

fn work_dir() -> PathBuf {
    let base = std::env::var_os("STRATA_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
    base.join("toc-crosscheck")
}

fn convert(format: &str, source: &str, destination: &str) {
    let out = Command::new(strata_bin())
        .args([
            "--config",
            "/dev/null",
            "convert",
            "--json",
            "--format",
            format,
            source,
            destination,
        ])
        .output()
        .unwrap();
    stdout_of(&format!("strata convert {format} {source} {destination}"), out);
}

/// `minbase` converted to both formats, tagged `minbase-<format>`.
fn converted_minbase() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        require_root();
        let layout = work_dir().join("minbase");
        let _ = std::fs::remove_dir_all(&layout);
        for format in FORMATS {
            let into = format!("oci:{}:minbase-{}", layout.display(), tag_of(format));
            convert(format, &layout_ref("minbase"), &into);
        }
        layout
    })
}

fn sha256_text(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_text(bytes);
    std::fs::write(blob_path(layout, &digest), bytes).unwrap();
    digest
}

/// The TOC JSON of a converted layer blob.
fn toc_json(format: &str, blob: &[u8], layer: &Value) -> Value {
    let mut json = Vec::new();
    if format == "estargz" {
        let footer = strata_image::toc::estargz::parse_footer(&blob[blob.len() - ESTARGZ_FOOTER..]).unwrap();
        let member = &blob[usize::try_from(footer.toc_offset).unwrap()..blob.len() - ESTARGZ_FOOTER];
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(member));
        let mut entry = tar.entries().unwrap().next().unwrap().unwrap();
        entry.read_to_end(&mut json).unwrap();
    } else {
        let position: Vec<usize> = annotations(layer)[POSITION]
            .split(':')
            .map(|n| n.parse().unwrap())
            .collect();
        zstd::stream::read::Decoder::new(&blob[position[0]..position[0] + position[1]])
            .unwrap()
            .read_to_end(&mut json)
            .unwrap();
    }
    serde_json::from_slice(&json).unwrap()
}

/// The blob with `toc` as its TOC, and the layer's annotations updated.
/// zstd:chunked: the new TOC is one more skippable frame at the end, so the
/// tar stream (and the diff_id) stay. eStargz: the TOC's gzip member is
/// replaced; the footer, which names where it starts, stays.
fn with_toc(format: &str, mut blob: Vec<u8>, toc: &Value, layer: &mut Value) -> Vec<u8> {
    let json = serde_json::to_vec(toc).unwrap();
    let map = layer["annotations"].as_object_mut().unwrap();
    if format == "estargz" {
        let footer_at = blob.len() - ESTARGZ_FOOTER;
        let footer = blob[footer_at..].to_vec();
        let toc_offset = strata_image::toc::estargz::parse_footer(&footer).unwrap().toc_offset;
        let mut tar = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(json.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, "stargz.index.json", &json[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        blob.truncate(usize::try_from(toc_offset).unwrap());
        blob.extend_from_slice(&gz.finish().unwrap());
        blob.extend_from_slice(&footer);
        map.insert(ESTARGZ_DIGEST.into(), sha256_text(&json).into());
    } else {
        let compressed = zstd::encode_all(&json[..], 3).unwrap();
        let offset = blob.len() + 8;
        blob.extend_from_slice(&SKIPPABLE_MAGIC);
        blob.extend_from_slice(&u32::try_from(compressed.len()).unwrap().to_le_bytes());
        blob.extend_from_slice(&compressed);
        map.insert(
            POSITION.into(),
            format!("{offset}:{}:{}:1", compressed.len(), json.len()).into(),
        );
        map.insert(CHECKSUM.into(), sha256_text(&compressed).into());
    }
    blob
}

/// The SHA-256 of a gzip layer's uncompressed stream.
fn gzip_diff_id(blob: &[u8]) -> String {
    let mut hasher = Sha256::new();
    let mut reader = flate2::read::MultiGzDecoder::new(blob);
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            return format!("sha256:{}", hex(&hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

/// A layout under `dir` holding `minbase` in `format`, tagged `hostile`,
/// its one layer's TOC entries passed through `edit`.
fn hostile_layout(dir: &Path, format: &str, edit: &dyn Fn(&mut Vec<Value>)) -> PathBuf {
    let source = converted_minbase();
    let layout = dir.join(format!("hostile-{}", tag_of(format)));
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let (mut manifest, mut config) = image(source, &format!("minbase-{}", tag_of(format)));
    assert_eq!(layers(&manifest).len(), 1, "minbase has one layer");
    let layer = &mut manifest["layers"][0];
    let blob = std::fs::read(blob_path(source, layer["digest"].as_str().unwrap())).unwrap();
    let mut toc = toc_json(format, &blob, layer);
    edit(toc["entries"].as_array_mut().unwrap());
    let blob = with_toc(format, blob, &toc, layer);
    if format == "estargz" {
        config["rootfs"]["diff_ids"][0] = gzip_diff_id(&blob).into();
    }
    layer["size"] = blob.len().into();
    layer["digest"] = write_blob(&layout, &blob).into();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = write_blob(&layout, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": write_blob(&layout, &manifest_bytes),
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "hostile"},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    layout
}

fn name(entry: &Value) -> String {
    let name = entry["name"].as_str().unwrap();
    name.trim_start_matches("./").trim_end_matches('/').to_owned()
}

/// The first regular file of more than 4 KiB held in one piece.
fn plain_file(entries: &[Value]) -> usize {
    entries
        .iter()
        .position(|e| {
            e["type"] == "reg"
                && e["size"].as_u64().unwrap_or(0) > 4096
                && !entries.iter().any(|c| c["type"] == "chunk" && c["name"] == e["name"])
        })
        .expect("a plain file")
}

/// The first empty regular file (no bytes, no range).
fn empty_file(entries: &[Value]) -> usize {
    entries
        .iter()
        .position(|e| e["type"] == "reg" && e["size"].as_u64().unwrap_or(0) == 0 && !name(e).starts_with(".wh."))
        .expect("an empty file")
}

/// What a partial pull (`toc`) of a hostile image does.
#[derive(Clone, Copy, Debug)]
enum Partial {
    /// The file's bytes fail the TOC; the layer is pulled whole, which the
    /// tar contradicts: the pull fails.
    Refused,
    /// It cannot see the tar: the image is the TOC's, and `path` is
    /// absent, a regular file, or a symlink in it.
    Absent,
    File,
    Symlink,
}

struct Case {
    what: &'static str,
    /// Edits the TOC's entries; returns the path the tar disagrees at.
    edit: fn(&mut Vec<Value>) -> String,
    detail: &'static str,
    partial: Partial,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "a file whose bytes in the tar are not the TOC's",
            edit: |entries| {
                let i = plain_file(entries);
                entries[i]["digest"] = sha256_text(b"other bytes").into();
                entries[i].as_object_mut().unwrap().remove("chunkDigest");
                name(&entries[i])
            },
            detail: "the tar's bytes hash to",
            partial: Partial::Refused,
        },
        Case {
            what: "a file in the tar the TOC leaves out",
            edit: |entries| {
                let i = empty_file(entries);
                name(&entries.remove(i))
            },
            detail: "the tar has a regular file the TOC does not list",
            partial: Partial::Absent,
        },
        Case {
            what: "a TOC file the tar lacks",
            edit: |entries| {
                let ghost = "etc/ghost-of-the-toc";
                let at = entries.iter().position(|e| name(e) == "etc").unwrap() + 1;
                let mut entry = entries[empty_file(entries)].clone();
                entry["name"] = ghost.into();
                entries.insert(at, entry);
                ghost.to_owned()
            },
            detail: "the TOC lists a regular file the tar does not have",
            partial: Partial::File,
        },
        Case {
            what: "a symlink in the TOC where the tar has a file",
            edit: |entries| {
                let i = empty_file(entries);
                let entry = entries[i].as_object_mut().unwrap();
                entry.retain(|k, _| {
                    [
                        "name",
                        "mode",
                        "uid",
                        "gid",
                        "modtime",
                        "userName",
                        "groupName",
                        "xattrs",
                    ]
                    .contains(&k.as_str())
                });
                entry.insert("type".into(), "symlink".into());
                entry.insert("linkName".into(), "/etc/shadow".into());
                name(&entries[i])
            },
            detail: "the TOC has a symlink, the tar a regular file",
            partial: Partial::Symlink,
        },
    ]
}

fn sha256_rows(store: &TestStore) -> u64 {
    strata_store::Store::open_read_only(&store.root())
        .unwrap()
        .sha256_index_len()
        .unwrap()
}

/// Each hostile image: a whole pull fails with the contradiction named and
/// stores nothing; a partial pull does what docs/partial-pulls.md says.
#[test]
fn whole_pulls_refuse_a_toc_that_contradicts_the_tar() {
    for format in FORMATS {
        for case in cases() {
            let what = format!("{format}: {}", case.what);
            let scratch = tempfile::tempdir_in(converted_minbase().parent().unwrap()).unwrap();
            let path = std::cell::RefCell::new(String::new());
            let layout = hostile_layout(scratch.path(), format, &|entries| {
                *path.borrow_mut() = (case.edit)(entries);
            });
            let path = path.into_inner();
            let reference = format!("oci:{}:hostile", layout.display());
            let (manifest, _) = image(&layout, "hostile");
            let layer = layers(&manifest)[0]["digest"].as_str().unwrap().to_owned();

            let store = TestStore::new();
            let err = store.fails(&["pull", "--partial", "off", &reference]);
            eprintln!("{what}: {}", err.lines().last().unwrap_or(""));
            for needle in [layer.as_str(), "contradicts its TOC", &format!("{path:?}"), case.detail] {
                assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
            }
            assert!(store.objects().is_empty(), "{what}: {:?}", store.objects().len());
            assert!(store.images().is_empty(), "{what}");
            assert_eq!(sha256_rows(&store), 0, "{what}");
            assert!(store.ok(&["images"]).lines().all(|l| !l.contains("hostile")), "{what}");
            store.fsck_clean();

            // The default policy on a store that indexes something else (one
            // small content no image holds): a partial pull would fetch every
            // file, so the layer is read whole and compared with the TOC the
            // attempt already read and checked. The contradiction is refused
            // the same way.
            let store = TestStore::new();
            strata_store::Store::open(&store.root())
                .unwrap()
                .record_contents(&[], &[b"a content of no image".as_slice()])
                .unwrap();
            let err = store.fails(&["--log-level", "info", "pull", &reference]);
            let whole = "the store lacks nearly all of the layer: reading it whole";
            for needle in [
                whole,
                layer.as_str(),
                "contradicts its TOC",
                &format!("{path:?}"),
                case.detail,
            ] {
                assert!(err.contains(needle), "{what}, known TOC: {needle:?} not in {err}");
            }
            assert!(
                store.objects().is_empty() && store.images().is_empty(),
                "{what}, known TOC"
            );
            assert_eq!(sha256_rows(&store), 0, "{what}, known TOC");
            store.fsck_clean();

            // Partial even into this empty store.
            let store = TestStore::new();
            store.set_config("[pull]\npartial_min_saving_percent = 0\n");
            let out = store.run(&["pull", "--partial", "toc", &reference]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            match case.partial {
                Partial::Refused => {
                    assert!(!out.status.success(), "{what}: {stderr}");
                    assert!(stderr.contains("pulling the layer whole"), "{what}: {stderr}");
                    assert!(stderr.contains("contradicts its TOC"), "{what}: {stderr}");
                    assert!(store.objects().is_empty() && store.images().is_empty(), "{what}");
                }
                expected => {
                    assert!(out.status.success(), "{what}: {stderr}");
                    assert!(!stderr.contains("pulling the layer whole"), "{what}: {stderr}");
                    let mounted = store.mount(&reference);
                    let found = std::fs::symlink_metadata(mounted.join(&path));
                    match expected {
                        Partial::Absent => assert!(found.is_err(), "{what}: {found:?}"),
                        Partial::File => assert!(found.unwrap().is_file(), "{what}"),
                        _ => assert!(found.unwrap().is_symlink(), "{what}"),
                    }
                    store.umount(&mounted);
                }
            }
            store.fsck_clean();
        }
    }
    let _ = std::fs::remove_dir_all(converted_minbase());
}

/// Every object of the store is found by the SHA-256 of its bytes.
fn assert_every_object_indexed(store: &TestStore, objects: &std::collections::BTreeMap<String, u64>, what: &str) {
    let keys: Vec<[u8; 32]> = objects
        .keys()
        .map(|name| {
            let path = store.root().join("objects").join(&name[..2]).join(&name[2..]);
            Sha256::digest(std::fs::read(path).unwrap()).into()
        })
        .collect();
    let found = strata_store::Store::open_read_only(&store.root())
        .unwrap()
        .objects_by_sha256(&keys)
        .unwrap();
    assert!(objects.len() > 1000, "{what}: {} objects", objects.len());
    for (name, found) in objects.keys().zip(found) {
        let found = found.unwrap_or_else(|| panic!("{what}: object {name} is not in the SHA-256 index"));
        assert_eq!(&hex(&found.digest.0), name, "{what}");
    }
}

/// `python` pulled whole passes the check and fills the SHA-256 index: a
/// partial pull of `variant-python` then fetches only what the store
/// lacks, far fewer bytes than into an empty store.
#[test]
fn whole_pulls_of_valid_images_fill_the_sha256_index() {
    require_root();
    for format in FORMATS {
        let pushed = |host: &str, tag: &str| format!("{host}/crosscheck/{tag}:{}", tag_of(format));
        for tag in ["python", "variant-python"] {
            convert(format, &layout_ref(tag), &pushed(&registry(), tag));
        }
        let proxy = RangeProxy::start(Mode::Pass);
        let python = pushed(proxy.addr(), "python");
        let variant = pushed(proxy.addr(), "variant-python");

        let store = TestStore::new();
        let out = store.run(&["pull", "--partial", "off", &python]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{format}: {stderr}");
        assert!(!stderr.contains("TOC cannot be read"), "{format}: {stderr}");
        assert!(
            proxy.blob_gets().iter().all(|r| r.range.is_none()),
            "{format}: one read per blob"
        );
        let rows = sha256_rows(&store);
        let objects = store.objects();
        eprintln!(
            "{format}: whole pull of python: {rows} SHA-256 rows, {} objects",
            objects.len()
        );
        assert_every_object_indexed(&store, &objects, format);

        proxy.clear();
        store.ok(&["pull", "--partial", "toc", &variant]);
        let after_whole = proxy.bytes_sent();
        let fresh = TestStore::new();
        proxy.clear();
        fresh.ok(&["pull", "--partial", "toc", &variant]);
        let into_empty = proxy.bytes_sent();
        eprintln!(
            "{format}: variant-python after a whole pull of python: {after_whole} bytes; into an empty store: {into_empty}"
        );
        assert!(after_whole * 5 < into_empty, "{format}: {after_whole} vs {into_empty}");
        let scratch = store.dir.path();
        let mounted = store.mount(&variant);
        assert_tree_matches(&expected_tree("variant-python", scratch), &mounted, scratch);
        store.umount(&mounted);
        store.fsck_clean();
    }
}

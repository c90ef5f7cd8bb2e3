//! Pulls the real image family from the local registry and from the OCI
//! layout, mounts every image, and checks it against the independent oracle;
//! then dedup, determinism, image size and gc.

use strata_tests::*;

/// Every image, from both sources, mounts as exactly the oracle's tree; the
/// whole family is stored once; pulling again into a fresh store gives the
/// same EROFS bytes.
#[test]
fn family_is_faithful_deduplicated_and_deterministic() {
    let store = TestStore::new();
    let scratch = store.dir.path();
    let mut distinct = std::collections::BTreeMap::new();
    let mut paths = 0;
    for tag in FAMILY_TAGS {
        let expected = expected_tree(tag, scratch);
        distinct.extend(distinct_contents(&expected));
        paths += path_count(&expected);
        for reference in [registry_ref(tag), layout_ref(tag)] {
            let out = store.ok(&["pull", &reference]);
            eprintln!("{}", out.trim());
            let mounted = store.mount(&reference);
            assert_tree_matches(&expected, &mounted, scratch);
            store.umount(&mounted);
        }
    }

    // Dedup: one object per distinct content above the inline limit.
    let objects = store.objects();
    let object_names = set(objects.keys().cloned());
    assert_eq!(objects.len(), distinct.len(), "objects vs distinct file contents");
    let distinct_bytes: u64 = distinct.values().sum();
    let object_bytes: u64 = objects.values().sum();
    let images = store.images();
    let image_bytes: u64 = images.values().map(|b| b.len() as u64).sum();
    assert!(
        (object_bytes as f64) <= 1.02 * distinct_bytes as f64,
        "objects {object_bytes} vs distinct {distinct_bytes}"
    );
    assert_eq!(
        images.len(),
        FAMILY_TAGS.len(),
        "registry and layout pulls share images"
    );
    for name in images.keys() {
        let path = store.root().join("images").join(name);
        let check = std::process::Command::new("fsck.erofs")
            .arg("--extract")
            .arg(&path)
            .output()
            .expect("fsck.erofs (erofs-utils) is installed");
        assert!(check.status.success(), "fsck.erofs rejects {name}: {check:?}");
    }
    eprintln!(
        "family: {} distinct contents, {distinct_bytes} bytes; store objects {object_bytes} bytes + EROFS {image_bytes} bytes; {:.1} EROFS bytes per path over {paths} paths",
        distinct.len(),
        image_bytes as f64 / paths as f64
    );
    assert!(
        image_bytes as f64 / paths as f64 <= 300.0,
        "EROFS images average more than 300 bytes per file"
    );
    let df = store.ok(&["df", "--json"]);
    let df: serde_json::Value = serde_json::from_str(&df).unwrap();
    assert_eq!(df["object_bytes"].as_u64(), Some(object_bytes));
    assert!(df["dedup_ratio"].as_f64().unwrap() > 1.5, "{df}");
    store.fsck_clean();

    // Determinism: a fresh store pulling in another order gets the same images.
    let other = TestStore::new();
    for tag in FAMILY_TAGS.iter().rev() {
        other.ok(&["pull", &registry_ref(tag)]);
    }
    assert_eq!(other.images(), images, "EROFS images differ between stores");
    assert_eq!(set(other.objects().into_keys()), object_names);
}

/// gc after rmi frees exactly the objects only the removed image used.
#[test]
fn gc_frees_exactly_the_unshared_objects() {
    let store = TestStore::new();
    let scratch = store.dir.path();
    store.ok(&["pull", &layout_ref("minbase")]);
    store.ok(&["pull", &layout_ref("variant")]);
    let minbase = set(distinct_contents(&expected_tree("minbase", scratch)).into_keys());
    let variant = set(distinct_contents(&expected_tree("variant", scratch)).into_keys());
    let only_variant = variant.difference(&minbase).count();
    assert!(only_variant > 0 && only_variant < variant.len());

    let before = store.objects().len();
    store.ok(&["rmi", &layout_ref("variant")]);
    assert_eq!(store.objects().len(), before, "rmi alone deletes nothing");
    let report = store.ok(&["gc"]);
    assert!(
        report.contains(&format!("removed {only_variant} objects, 1 images")),
        "{report}"
    );
    assert_eq!(store.objects().len(), before - only_variant);
    store.fsck_clean();
    let mounted = store.mount(&layout_ref("minbase"));
    assert_tree_matches(&expected_tree("minbase", scratch), &mounted, scratch);
    store.umount(&mounted);

    // A mounted image survives rmi + gc until it is unmounted.
    let mounted = store.mount(&layout_ref("minbase"));
    store.ok(&["rmi", &layout_ref("minbase")]);
    let report = store.ok(&["gc"]);
    assert!(report.contains("removed 0 objects"), "{report}");
    assert!(mounted.join("usr/bin/bash").exists() || mounted.join("bin/bash").exists());
    store.umount(&mounted);
    store.ok(&["gc"]);
    assert_eq!(store.objects().len(), 0);
    assert!(store.images().is_empty());
}

/// A writable mount gets an upper layer; the image itself is unchanged.
#[test]
fn writable_mount_keeps_the_image_intact() {
    let store = TestStore::new();
    let reference = layout_ref("minbase");
    store.ok(&["pull", &reference]);
    let target = store.dir.path().join("rw");
    std::fs::create_dir_all(&target).unwrap();
    store.ok(&["mount", "--writable", &reference, target.to_str().unwrap()]);
    std::fs::write(target.join("etc/hostname"), "changed\n").unwrap();
    std::fs::write(target.join("new-file"), "new\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(target.join("etc/hostname")).unwrap(),
        "changed\n"
    );
    store.ok(&["umount", target.to_str().unwrap()]);
    store.fsck_clean();
    let mounted = store.mount(&reference);
    assert!(!mounted.join("new-file").exists());
    assert_tree_matches(&expected_tree("minbase", store.dir.path()), &mounted, store.dir.path());
}

/// fsck notices an object whose bytes changed and an object that is gone.
#[test]
fn fsck_detects_tampered_and_missing_objects() {
    let store = TestStore::new();
    store.ok(&["pull", &layout_ref("minbase")]);
    store.fsck_clean();
    let objects: Vec<String> = store.objects().into_keys().collect();
    let path = |name: &str| store.root().join("objects").join(&name[..2]).join(&name[2..]);
    let tampered = path(&objects[0]);
    std::fs::set_permissions(&tampered, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut bytes = std::fs::read(&tampered).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&tampered, bytes).unwrap();
    std::fs::remove_file(path(&objects[1])).unwrap();

    let out = store.run(&["fsck"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("object {} is corrupt", objects[0])),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("object {} is missing", objects[1])),
        "{stdout}"
    );
}

/// Builds a layout whose tag `multi` is an image index: arm64 -> variant,
/// amd64 -> minbase. Blobs are symlinks into the family layout.
fn multi_arch_layout(dir: &std::path::Path) -> std::path::PathBuf {
    let family = family_layout();
    let family_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(family.join("index.json")).unwrap()).unwrap();
    let entry = |tag: &str| {
        family_index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone()
    };
    let layout = dir.join("multi-arch");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    for file in std::fs::read_dir(family.join("blobs/sha256")).unwrap() {
        let file = file.unwrap();
        std::os::unix::fs::symlink(file.path(), blobs.join(file.file_name())).unwrap();
    }
    let platform_entry = |tag: &str, arch: &str| {
        let e = entry(tag);
        serde_json::json!({
            "mediaType": e["mediaType"], "digest": e["digest"], "size": e["size"],
            "platform": {"architecture": arch, "os": "linux"}
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [platform_entry("variant", "arm64"), platform_entry("minbase", "amd64")]
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let digest = sha256_hex(&index_bytes);
    std::fs::write(blobs.join(&digest), &index_bytes).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"), "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"}
        }]
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    layout
}

fn sha256_hex(data: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(data)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

fn skopeo_copy(extra: &[&str], from: &str, to: &str) {
    let out = std::process::Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(extra)
        .args([from, to])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy {from} {to}: {out:?}");
}

/// An index (multi-platform) resolves to the host's manifest, from a layout
/// and from the registry; a Docker v2 schema 2 image imports the same tree.
#[test]
fn index_and_docker_media_types() {
    let store = TestStore::new();
    let scratch = store.dir.path();
    let expected = expected_tree("minbase", scratch);
    let layout = multi_arch_layout(scratch);
    let minbase_manifest = std::fs::read_to_string(family_layout().join("../images.txt"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("minbase ").map(str::to_owned))
        .unwrap();

    let from_layout = format!("oci:{}:multi", layout.display());
    let out = store.ok(&["pull", &from_layout]);
    assert!(out.contains(&minbase_manifest), "picked the amd64 entry: {out}");

    let registry = registry();
    let index_ref = format!("{registry}/strata/multi-arch:latest");
    skopeo_copy(
        &["--all", "--preserve-digests"],
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{index_ref}"),
    );
    let out = store.ok(&["pull", &index_ref]);
    assert!(out.contains(&minbase_manifest), "picked the amd64 entry: {out}");

    let docker_ref = format!("{registry}/strata/minbase-docker:latest");
    skopeo_copy(
        &["--format", "v2s2"],
        &layout_ref("minbase"),
        &format!("docker://{docker_ref}"),
    );
    store.ok(&["pull", &docker_ref]);
    let inspect = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{docker_ref}"),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("application/vnd.docker.distribution.manifest.v2+json"));

    for reference in [&from_layout, &index_ref, &docker_ref] {
        let mounted = store.mount(reference);
        assert_tree_matches(&expected, &mounted, scratch);
        store.umount(&mounted);
    }
    assert_eq!(store.images().len(), 1, "all three are the same tree");
}

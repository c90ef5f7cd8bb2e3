//! containerd's remote-snapshot protocol against `strata serve` alone, called
//! the way containerd's metadata layer calls it on a CRI pull: an unpack
//! Prepare labelled with the chain ID and the image, manifest and layer it
//! comes from. strata fetches the layer from the real registry itself,
//! commits it under the chain ID and answers AlreadyExists; containerd then
//! finds it with a Walk filtered on label and parent. Labels it cannot
//! serve fall back to an ordinary active snapshot, with the reason logged.

use strata_tests::remote_labels::{as_labels, cri_labels, image_info};
use strata_tests::serve::{mount_all, unmount_under, Serve};
use strata_tests::*;

const TAGS: [&str; 5] = ["minbase", "python", "devel", "variant", "variant-python"];

/// The backend name of the committed snapshot containerd would find after
/// an AlreadyExists: its own Walk filter, then its own checks.
fn find_committed(client: &mut strata_tests::serve::Client, chain: &str, parent: &str) -> Option<String> {
    let filter = format!(r#"labels."containerd.io/snapshot.ref"=={chain},parent=="{parent}""#);
    let found = client.list_filtered(&[filter.as_str()]);
    let matching: Vec<_> = found
        .into_iter()
        .filter(|i| {
            i.kind == 3
                && i.parent == parent
                && i.labels.get("containerd.io/snapshot.ref").map(String::as_str) == Some(chain)
        })
        .collect();
    assert!(matching.len() <= 1, "{matching:?}");
    matching.into_iter().next().map(|i| i.name)
}

#[test]
fn cri_labels_make_strata_fetch_and_commit_every_layer() {
    require_root();
    let store = TestStore::new();
    let serve = Serve::start(&store.root(), &store.dir.path().join("s.sock"), None, &[]);
    let mut client = serve.client();
    let mut seq = 0;
    for tag in TAGS {
        let info = image_info(tag);
        let mut parent = String::new();
        for i in 0..info.layers.len() {
            let chain = &info.chains[i];
            if let Some(name) = find_committed(&mut client, chain, &parent) {
                // containerd's metadata would not even ask: the chain exists.
                parent = name;
                continue;
            }
            seq += 1;
            let key = format!("k8s.io/{seq}/extract-{seq}-AAAA {chain}");
            let status = client
                .prepare(&key, &parent, as_labels(&cri_labels(tag, &info, i)))
                .expect_err("a fetched layer answers AlreadyExists");
            assert_eq!(status.code(), tonic::Code::AlreadyExists, "{tag} layer {i}: {status:?}");
            let name = find_committed(&mut client, chain, &parent)
                .unwrap_or_else(|| panic!("{tag} layer {i}: no committed snapshot {chain} over {parent:?}"));
            // The unpack key itself was never created.
            assert!(client.stat(&key).is_err());
            parent = name;
        }
        let view = format!("k8s.io/view-{tag}");
        let mounts = client.view(&view, &parent).unwrap();
        let target = store.dir.path().join(format!("mnt-{tag}"));
        mount_all(&mounts, &target);
        let expected = expected_tree(tag, store.dir.path());
        assert_tree_matches(&expected, &target, store.dir.path());
        unmount_under(&target);
        client.remove(&view).unwrap();
    }
    let log = serve.log_text();
    assert!(!log.contains("containerd fetches"), "no fallback on the family:\n{log}");
    let fetched = log.matches("layer fetched by strata").count();
    // minbase 1, python +1, devel +2 over python, variant 1, variant-python +1.
    assert_eq!(fetched, 6, "{log}");
    drop(client);
    serve.stop();
    store.fsck_clean();
}

#[test]
fn labels_strata_cannot_serve_fall_back_to_an_ordinary_snapshot() {
    require_root();
    let store = TestStore::new();
    let serve = Serve::start(&store.root(), &store.dir.path().join("s.sock"), None, &[]);
    let mut client = serve.client();
    let info = image_info("python");
    let set = |pairs: &mut Vec<(String, String)>, key: &str, value: String| {
        pairs.iter_mut().find(|(k, _)| k == key).unwrap().1 = value;
    };
    type Case = (&'static str, Vec<(String, String)>, &'static str);
    let cases: Vec<Case> = vec![
        (
            "another layer's chain",
            {
                let mut l = cri_labels("python", &info, 0);
                set(&mut l, "containerd.io/snapshot.ref", info.chains[1].clone());
                l
            },
            "is not in manifest",
        ),
        (
            "a registry that does not answer",
            {
                let mut l = cri_labels("python", &info, 0);
                set(
                    &mut l,
                    "containerd.io/snapshot/cri.image-ref",
                    "127.0.0.1:9/strata/python:latest".into(),
                );
                l
            },
            "127.0.0.1:9",
        ),
        (
            "a layout, not a registry",
            {
                let mut l = cri_labels("python", &info, 0);
                set(
                    &mut l,
                    "containerd.io/snapshot/cri.image-ref",
                    "oci:/nonexistent:python".into(),
                );
                l
            },
            "does not name a registry image",
        ),
        (
            "a digest that is not one",
            {
                let mut l = cri_labels("python", &info, 0);
                set(
                    &mut l,
                    "containerd.io/snapshot/cri.layer-digest",
                    "sha256:../../etc/passwd".into(),
                );
                l
            },
            "is not a sha256 digest",
        ),
        (
            "an unknown manifest",
            {
                let mut l = cri_labels("python", &info, 0);
                set(
                    &mut l,
                    "containerd.io/snapshot/cri.manifest-digest",
                    format!("sha256:{}", "0".repeat(64)),
                );
                l
            },
            "containerd fetches",
        ),
    ];
    // A layer on the wrong parent: the second layer with no parent.
    let key = format!("k8s.io/9/extract-9-AAAA {}", info.chains[1]);
    client
        .prepare(&key, "", as_labels(&cri_labels("python", &info, 1)))
        .expect("falls back");
    assert!(serve.log_text().contains("but the snapshot has no parent"));
    client.remove(&key).unwrap();
    for (n, (what, pairs, reason)) in cases.into_iter().enumerate() {
        let key = format!("k8s.io/{n}/extract-{n}-AAAA {}", info.chains[0]);
        let mounts = client
            .prepare(&key, "", as_labels(&pairs))
            .unwrap_or_else(|e| panic!("{what}: falls back to an active snapshot, got {e:?}"));
        assert_eq!(mounts.len(), 1, "{what}");
        let log = serve.log_text();
        let warned = log
            .lines()
            .any(|l| l.contains(&key) && l.contains("WARN") && l.contains("containerd fetches") && l.contains(reason));
        assert!(warned, "{what}: a warning with the reason {reason:?}:\n{log}");
        client.remove(&key).unwrap();
    }
    // Once the first layer falls back, containerd downloads the later ones
    // itself, so strata does not fetch them too.
    let mut unreachable = cri_labels("python", &info, 0);
    set(
        &mut unreachable,
        "containerd.io/snapshot/cri.image-ref",
        "127.0.0.1:9/strata/python:latest".into(),
    );
    let first = format!("k8s.io/10/extract-10-AAAA {}", info.chains[0]);
    client.prepare(&first, "", as_labels(&unreachable)).expect("falls back");
    client.commit(&info.chains[0], &first).unwrap();
    let key = format!("k8s.io/11/extract-11-AAAA {}", info.chains[1]);
    client
        .prepare(&key, &info.chains[0], as_labels(&cri_labels("python", &info, 1)))
        .expect("falls back");
    assert!(serve
        .log_text()
        .contains("containerd fetches this layer: an earlier layer of the image fell back"));
    client.remove(&key).unwrap();
    client.remove(&info.chains[0]).unwrap();
    client.cleanup().unwrap();
    drop(client);
    serve.stop();
    assert!(store.objects().is_empty(), "nothing of the refused layers stays");
    store.fsck_clean();
}

/// A process that dies while committing a fetched layer (after its objects
/// are published, before the DB commit, or just after it) leaves a store
/// that the next start serves from: the Prepare is answered, fsck is clean,
/// and nothing is left once containerd removes the snapshot.
#[test]
fn death_while_committing_a_fetched_layer_leaves_a_clean_store() {
    require_root();
    let info = image_info("minbase");
    let chain = info.chains[0].clone();
    for point in ["fetched.after_publish", "fetched.before_db"] {
        let store = TestStore::new();
        let socket = store.dir.path().join("s.sock");
        let key = format!("k8s.io/1/extract-1-AAAA {chain}");
        let spec = format!("{point}=abort");
        let serve = Serve::start(&store.root(), &socket, None, &[("STRATA_FAILPOINTS", spec.as_str())]);
        let mut client = serve.client();
        let died = client.prepare(&key, "", as_labels(&cri_labels("minbase", &info, 0)));
        assert!(died.is_err(), "{point}: the Prepare dies with the process");
        drop(client);
        let _ = serve.kill9();
        let _ = std::fs::remove_file(&socket);
        let serve = Serve::start(&store.root(), &socket, None, &[]);
        let mut client = serve.client();
        assert!(find_committed(&mut client, &chain, "").is_none(), "{point}");
        let status = client
            .prepare(&key, "", as_labels(&cri_labels("minbase", &info, 0)))
            .expect_err("fetched again after the restart");
        assert_eq!(status.code(), tonic::Code::AlreadyExists, "{point}: {status:?}");
        let name = find_committed(&mut client, &chain, "").unwrap();
        store.fsck_clean();
        client.remove(&name).unwrap();
        client.cleanup().unwrap();
        drop(client);
        serve.stop();
        assert!(store.objects().is_empty(), "{point}: objects left");
        store.fsck_clean();
    }
}

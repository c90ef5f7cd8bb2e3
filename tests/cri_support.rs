//! A private containerd with its CRI plugin on and strata its snapshotter
//! (`fixtures/containerd-cri.sh`), for the tests that speak the Kubernetes
//! CRI: the guard that stops it with everything its pods left, `ctr` in the
//! CRI's namespace, and what containerd's content store keeps.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use strata_bench_cri::{ContainerSpec, Cri, PodSpec};

use crate::serve::unmount_under;
use crate::{registry, TestStore};

/// A private containerd with CRI; stopped on drop with every pod, shim and
/// mount it left, even when the test fails.
pub struct CriContainerd {
    pub dir: PathBuf,
    pub strata_socket: PathBuf,
}

impl CriContainerd {
    pub fn start(dir: &Path, strata_socket: &Path) -> CriContainerd {
        std::fs::create_dir_all(dir).unwrap();
        let cd = CriContainerd {
            dir: dir.to_owned(),
            strata_socket: strata_socket.to_owned(),
        };
        let out = cd.script(&["start"]);
        assert!(
            out.status.success(),
            "containerd-cri.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cd
    }

    pub fn script(&self, args: &[&str]) -> Output {
        crate::run_fixture("containerd-cri.sh", &self.dir, &self.strata_socket, args)
    }

    /// The CRI's `registry.config_path` for a containerd in `dir`: the
    /// script writes only the local registry's `hosts.toml` there, so a
    /// test may add `<host>/hosts.toml` files of its own, before or after
    /// the start (containerd reads them at each pull).
    pub fn hosts_dir(dir: &Path) -> PathBuf {
        dir.join("certs.d")
    }

    /// ctr in the k8s.io namespace (the CRI's).
    pub fn try_ctr(&self, args: &[&str]) -> Output {
        let mut all = vec!["ctr", "-n", "k8s.io"];
        all.extend_from_slice(args);
        self.script(&all)
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        crate::stdout_of(&format!("ctr {args:?}"), self.try_ctr(args))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    pub fn cri(&self) -> Cri {
        Cri::connect(&self.socket()).unwrap()
    }

    /// containerd's own log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Where a running container's rootfs is mounted.
    pub fn rootfs(&self, container_id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task/k8s.io")
            .join(container_id)
            .join("rootfs")
    }

    /// Keys of the snapshots containerd's k8s.io namespace has in strata.
    pub fn strata_snapshots(&self) -> Vec<String> {
        let out = self.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    }

    /// Runs containerd's GC now, synchronously (`ctr leases delete --sync`).
    pub fn collect(&self) {
        let lease = self.ctr(&["leases", "create"]);
        self.ctr(&["leases", "delete", "--sync", lease.trim()]);
    }

    /// After strata restarts, containerd's proxy reconnects only after its
    /// gRPC backoff, and fails calls until then. `snapshots ls` would not
    /// tell (containerd answers it from its own DB): Prepare reaches strata.
    pub fn wait_ready(&self) {
        for attempt in 0..150 {
            let key = format!("ready-probe-{attempt}");
            let sn = ["snapshots", "--snapshotter", "strata"];
            if self.try_ctr(&[&sn[..], &["prepare", &key]].concat()).status.success() {
                self.ctr(&[&sn[..], &["rm", &key]].concat());
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("containerd cannot reach strata after its restart");
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
        unmount_under(&self.dir);
    }
}

/// containerd's dir for a test: short, since its sockets' paths must fit.
pub fn short_dir(store: &TestStore) -> PathBuf {
    store.dir.path().join("c")
}

/// The sandbox image containerd-cri.sh configures.
pub fn pause_ref() -> String {
    format!("{}/strata/pause:latest", registry())
}

pub const MANIFEST_OR_INDEX: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Every blob in containerd's k8s.io content store, with the media type the
/// images' indexes and manifests give it (walked from `ctr images ls`), or
/// "unreferenced".
pub fn content_media_types(cd: &CriContainerd) -> BTreeMap<String, String> {
    let present: Vec<String> = cd
        .ctr(&["content", "ls", "-q"])
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let mut queue: Vec<(String, String)> = cd
        .ctr(&["images", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.get(2)?.to_string(), f.get(1)?.to_string()))
        })
        .collect();
    let mut types = BTreeMap::new();
    while let Some((digest, media_type)) = queue.pop() {
        if types.insert(digest.clone(), media_type.clone()).is_some()
            || !MANIFEST_OR_INDEX.contains(&media_type.as_str())
            || !present.contains(&digest)
        {
            continue;
        }
        let body: serde_json::Value = serde_json::from_str(&cd.ctr(&["content", "get", &digest])).unwrap();
        let children = body["manifests"]
            .as_array()
            .into_iter()
            .chain(body["layers"].as_array())
            .flatten()
            .chain(body.get("config"));
        for d in children {
            if let (Some(digest), Some(mt)) = (d["digest"].as_str(), d["mediaType"].as_str()) {
                queue.push((digest.to_owned(), mt.to_owned()));
            }
        }
    }
    present
        .into_iter()
        .map(|d| {
            let mt = types.get(&d).cloned().unwrap_or_else(|| "unreferenced".to_owned());
            (d, mt)
        })
        .collect()
}

pub fn is_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.diff.tar")
}

/// The layer blobs (`digest media-type`) in containerd's content store.
pub fn layer_blobs(content: &BTreeMap<String, String>) -> Vec<String> {
    content
        .iter()
        .filter(|(_, mt)| is_layer(mt))
        .map(|(d, mt)| format!("{d} {mt}"))
        .collect()
}

/// Polls `done` every 100 ms for up to `secs`; true once it holds.
pub fn eventually(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if done() {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `<certs.d>/<host>/hosts.toml` making `host` a plain-http registry, for
/// containerd (and for strata, when its `config_path` names `certs_d`).
pub fn plain_http_host(certs_d: &Path, host: &str) {
    let dir = certs_d.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    let toml =
        format!("server = \"http://{host}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
    std::fs::write(dir.join("hosts.toml"), toml).unwrap();
}

/// The chain ID of an image's top layer, the name containerd gives its
/// committed snapshot, from the image's config (the CRI's image ID) in
/// containerd's content store.
pub fn chain_id(cd: &CriContainerd, config_digest: &str) -> String {
    use sha2::{Digest as _, Sha256};
    let config: serde_json::Value = serde_json::from_str(&cd.ctr(&["content", "get", config_digest])).unwrap();
    let mut chain = String::new();
    for diff in config["rootfs"]["diff_ids"].as_array().expect("diff_ids") {
        let diff = diff.as_str().unwrap();
        chain = if chain.is_empty() {
            diff.to_owned()
        } else {
            let sum = Sha256::digest(format!("{chain} {diff}"));
            format!("sha256:{}", sum.iter().map(|b| format!("{b:02x}")).collect::<String>())
        };
    }
    chain
}

/// Mounts a View of the snapshot `chain`, made through containerd (`ctr
/// snapshots view --mounts`), and compares it with the oracle `expected`;
/// the View goes again, pass or fail.
pub fn assert_view_matches(cd: &CriContainerd, name: &str, chain: &str, expected: &Path, scratch: &Path) {
    with_view(cd, &format!("oracle-view-{name}"), chain, |target| {
        crate::assert_tree_matches(expected, target, scratch)
    });
}

/// Mounts a View `key` of the snapshot `chain`, made through containerd
/// (`ctr snapshots view --mounts`), and runs `f` on it; the View goes
/// again, pass or fail.
pub fn with_view(cd: &CriContainerd, key: &str, chain: &str, f: impl FnOnce(&Path)) {
    let out = leased_view(cd, key, chain);
    let mounts: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let text = |m: &serde_json::Value, k: &str| {
        m[k].as_str()
            .or(m[k.to_lowercase()].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mounts: Vec<strata_grpc::api::types::Mount> = mounts
        .iter()
        .map(|m| strata_grpc::api::types::Mount {
            r#type: text(m, "Type"),
            source: text(m, "Source"),
            options: serde_json::from_value(m.get("Options").or(m.get("options")).cloned().unwrap_or_default())
                .unwrap_or_default(),
            ..Default::default()
        })
        .collect();
    // Under containerd's dir, so that its guard unmounts it on a panic.
    let target = cd.dir.join(format!("view-{key}"));
    crate::serve::mount_all(&mounts, &target);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&target)));
    unmount_under(&target);
    cd.ctr(&["snapshots", "--snapshotter", "strata", "rm", key]);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// `ctr snapshots view --mounts KEY PARENT`, labelled a GC root at once:
/// ctr holds no lease, so containerd's GC (which runs on its own after
/// pulls and removals) would take an unreferenced View. One taken before
/// the label is made again.
fn leased_view(cd: &CriContainerd, key: &str, parent: &str) -> String {
    let sn = ["snapshots", "--snapshotter", "strata"];
    for _ in 0..3 {
        let out = cd.ctr(&[&sn[..], &["view", "--mounts", key, parent]].concat());
        let label = [&sn[..], &["label", key, "containerd.io/gc.root=oracle-view"]].concat();
        if cd.try_ctr(&label).status.success() {
            return out;
        }
    }
    panic!("containerd's GC took the View {key} three times before it was labelled");
}

/// Runs `python3 -c 'print(6*7)'` from `image` in a new pod (named after
/// `name`, logs below `logs`), which then goes; panics unless it prints
/// 42, with `context()` (e.g. strata's log) in the message.
pub fn prints_42(cri: &mut Cri, image: &str, name: &str, logs: &Path, context: impl FnOnce() -> String) {
    let pod = cri.run_pod_sandbox(&PodSpec::unique(name, logs)).unwrap();
    let spec = ContainerSpec::new("probe", image).command(&["python3", "-c", "print(6*7)"]);
    let e = cri.run(&pod, &spec, Duration::from_secs(180)).unwrap().exited;
    if (e.exit_code, e.output.stdout.as_str()) != (0, "42\n") {
        panic!(
            "{name}: exited {} printing {:?}: {}\n{}",
            e.exit_code,
            e.output.stdout,
            e.output.stderr,
            context()
        );
    }
    cri.remove_pod(&pod.id).unwrap();
}

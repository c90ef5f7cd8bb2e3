//! The Kubernetes CRI against registries configured like production ones,
//! with strata fetching the layers itself (the remote-snapshot fast path):
//! a token-auth registry and a basic-auth one (containerd gets the
//! credentials in PullImage's AuthConfig, strata from its `auth_file`), a
//! strata without the credentials (containerd fetches the layers, strata
//! says why), and a mirror before an upstream, each behind a counting proxy.
//! Then sized scratch through the CRI: a per-namespace default, a container
//! annotation, and none for sandboxes and unpacks.
//!
//! Each test starts its own registries (ports 5020-5026), strata and
//! containerd (tests/fixtures/containerd-cri.sh); the sandbox image and
//! the scratch tests' images come from the local registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_bench_cri::{ContainerSpec, Cri, Exited, Pod, PodSpec};
use strata_tests::cri::{content_media_types, layer_blobs, pause_ref, short_dir, CriContainerd};
use strata_tests::registries::{family_data, htpasswd_auth, python_server, Registry, TokenServer, PASSWORD, USER};
use strata_tests::serve::{unmount_under, Serve};
use strata_tests::*;

/// Unmounts whatever is left under a dir (strata's scratch filesystems
/// after a kill) when dropped; declared after the store, before strata.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

/// The layer digests of a family image's manifest, as the registry has
/// them (pushed with their digests preserved).
fn family_layers(tag: &str) -> Vec<String> {
    let layout = family_layout();
    let read = |digest: &str| -> serde_json::Value {
        let path = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .map(read)
        .unwrap_or_else(|| panic!("{tag} in the family layout"));
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

/// `<certs.d>/<host>/hosts.toml`: `mirrors` (TOML), then the host itself
/// over plain http.
fn plain_http_host(certs_d: &Path, host: &str, mirrors: &str) {
    let dir = certs_d.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), format!("server = \"http://{host}\"\n{mirrors}")).unwrap();
}

/// strata's config: containerd's hosts dir, and an auth file holding
/// `auths` when given; then `extra` TOML.
fn strata_config(store: &TestStore, certs_d: &Path, auths: Option<serde_json::Value>, extra: &str) {
    let mut toml = format!("[registry]\nconfig_path = \"{}\"\n", certs_d.display());
    if let Some(auths) = auths {
        let file = store.dir.path().join("auth.json");
        std::fs::write(&file, serde_json::json!({ "auths": auths }).to_string()).unwrap();
        toml.push_str(&format!("auth_file = \"{}\"\n", file.display()));
    }
    toml.push_str(extra);
    store.set_config(&toml);
}

fn start_serve(store: &TestStore) -> Serve {
    let config = store.dir.path().join("config.toml");
    Serve::start(&store.root(), &store.dir.path().join("s.sock"), Some(&config), &[])
}

/// PullImage with `auth`; on failure, panics with strata's log.
fn pull(cri: &mut Cri, serve: &Serve, image: &str, auth: Option<(&str, &str)>) -> String {
    cri.pull_image(image, auth)
        .unwrap_or_else(|err| panic!("PullImage {image}: {err}\nstrata's log:\n{}", serve.log_text()))
}

/// Creates and starts `spec` in `pod`, waits for its end; the container
/// stays (its snapshot with it) until the pod goes.
fn run(cri: &mut Cri, pod: &Pod, spec: &ContainerSpec) -> Exited {
    cri.run(pod, spec, Duration::from_secs(180)).unwrap().exited
}

/// `python3 -c 'print(6*7)'` in a new pod prints 42.
fn prints_42(cri: &mut Cri, store: &TestStore, image: &str) {
    strata_tests::cri::prints_42(cri, image, "auth", &store.dir.path().join("logs"), String::new);
}

/// The `WARN` lines of strata's log that say containerd fetches a layer.
fn fallback_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") && l.contains("containerd fetches"))
        .collect()
}

/// 200 responses to a blob GET of `digest` in a docker-registry access log,
/// by user agent: (strata's, containerd's).
fn blob_gets(registry: &Registry, digest: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(&registry.log).unwrap_or_default();
    let served: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("GET /v2/strata/python/blobs/{digest} ")) && l.contains("\" 200 "))
        .collect();
    let by = |agent: &str| served.iter().filter(|l| l.contains(&format!("\"{agent}/"))).count();
    (by("strata"), by("containerd"))
}

/// What one CRI pull of `image` left: strata's log and containerd's
/// content store (digest to media type).
struct Pulled {
    strata_log: String,
    content: BTreeMap<String, String>,
}

/// A fresh strata (`auths` in its auth file) and containerd (the
/// credentials in AuthConfig) pull `image` from `registry` through the CRI
/// and run python3 in it.
fn pull_with_auth(registry: &Registry, image: &str, auths: serde_json::Value) -> Pulled {
    let store = TestStore::new();
    let _unmount = UnmountOnDrop(store.dir.path().to_owned());
    let certs_d = CriContainerd::hosts_dir(&short_dir(&store));
    plain_http_host(&certs_d, &registry.addr, "");
    strata_config(&store, &certs_d, Some(auths), "");
    let serve = start_serve(&store);
    let cd = CriContainerd::start(&short_dir(&store), &serve.socket);
    let mut cri = cd.cri();
    pull(&mut cri, &serve, image, Some((USER, PASSWORD)));
    prints_42(&mut cri, &store, image);
    let content = content_media_types(&cd);
    drop(cri);
    drop(cd);
    let strata_log = serve.log_text();
    assert!(serve.stop().success());
    Pulled { strata_log, content }
}

/// The fast path served every layer of python: no layer blob in
/// containerd's content store, no fallback in strata's log, each layer
/// served to strata and none to containerd.
fn assert_strata_fetched_every_layer(pulled: &Pulled, registry: &Registry) {
    let blobs = layer_blobs(&pulled.content);
    assert!(blobs.is_empty(), "containerd's content store holds layers: {blobs:?}");
    let warnings = fallback_warnings(&pulled.strata_log);
    assert!(warnings.is_empty(), "strata fell back: {warnings:#?}");
    for layer in family_layers("python") {
        let (strata, containerd) = blob_gets(registry, &layer);
        eprintln!("{layer}: served to strata {strata}x, to containerd {containerd}x");
        assert!(
            strata >= 1 && containerd == 0,
            "{layer}: strata {strata}, containerd {containerd}"
        );
    }
}

#[test]
fn cri_pull_from_a_token_registry_strata_with_and_without_credentials() {
    let first = TestStore::new();
    let dir = first.dir.path();
    let tokens = TokenServer::start(dir, 5021);
    let data = family_data(dir, 5020, &["python"]);
    let registry = Registry::start(dir, "bearer", 5020, &data, "", &tokens.registry_auth);
    let image = format!("{}/strata/python:latest", registry.addr);
    let issued_to = |agent: &str| {
        tokens
            .log_text()
            .lines()
            .filter(|l| l.starts_with("GET user=strata ") && l.contains(&format!("agent={agent}/")))
            .count()
    };

    // strata has the credentials: it fetches every layer itself.
    let pulled = pull_with_auth(
        &registry,
        &image,
        serde_json::json!({ "127.0.0.1:5020": { "username": USER, "password": PASSWORD } }),
    );
    assert_strata_fetched_every_layer(&pulled, &registry);
    let (to_strata, to_containerd) = (issued_to("strata"), issued_to("containerd"));
    eprintln!(
        "tokens issued: strata {to_strata}, containerd {to_containerd}; token server log:\n{}",
        tokens.log_text()
    );
    assert!(to_strata >= 1, "no token for strata: {}", tokens.log_text());

    // strata's auth file has no entry for the registry: the pull still
    // succeeds, containerd fetches the layers, strata's log says why.
    let strata_tokens = to_strata;
    let pulled = pull_with_auth(
        &registry,
        &image,
        serde_json::json!({ "elsewhere.example": { "username": USER, "password": PASSWORD } }),
    );
    let warnings = fallback_warnings(&pulled.strata_log);
    eprintln!("strata's fallback warnings: {warnings:#?}");
    assert!(
        warnings.iter().any(|l| l.contains("refused the credentials")),
        "no WARN with an Unauthorized reason in strata's log:\n{}",
        pulled.strata_log
    );
    let blobs = layer_blobs(&pulled.content);
    for layer in family_layers("python") {
        assert!(
            blobs.iter().any(|b| b.starts_with(&layer)),
            "{layer} is not in containerd's content store: {blobs:?}"
        );
        let (_, containerd) = blob_gets(&registry, &layer);
        assert!(containerd >= 1, "containerd did not fetch {layer}");
    }
    assert_eq!(
        issued_to("strata"),
        strata_tokens,
        "no token for strata without credentials"
    );
    let log = tokens.log_text();
    assert!(
        log.lines()
            .any(|l| l.starts_with("GET refused user=- ") && l.contains("agent=strata/")),
        "strata asked for no anonymous token:\n{log}"
    );
}

#[test]
fn cri_pull_from_a_basic_auth_registry_strata_with_credentials() {
    let first = TestStore::new();
    let dir = first.dir.path();
    let data = family_data(dir, 5022, &["python"]);
    let registry = Registry::start(dir, "basic", 5022, &data, "", &htpasswd_auth(dir));
    let image = format!("{}/strata/python:latest", registry.addr);
    let pulled = pull_with_auth(
        &registry,
        &image,
        serde_json::json!({ "127.0.0.1:5022": { "username": USER, "password": PASSWORD } }),
    );
    assert_strata_fetched_every_layer(&pulled, &registry);
    let refused = registry.count("\" 401 ");
    eprintln!("basic-auth registry: {refused} requests answered 401 (the challenges)");
}

/// Requests in a counting proxy's log, by client and by what they asked:
/// `(agent, method and kind) -> count`, kind one of manifest, layer blob,
/// other blob, other.
fn proxy_counts(log: &Path, layers: &[String]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let agent = line
            .rsplit_once("agent=")
            .map_or("-", |(_, a)| a.split('/').next().unwrap_or("-"));
        let kind = if line.contains("/manifests/") {
            "manifest"
        } else if layers.iter().any(|l| line.contains(&format!("/blobs/{l}"))) {
            "layer blob"
        } else if line.contains("/blobs/") {
            "other blob"
        } else {
            "other"
        };
        let method = line.split(' ').next().unwrap_or_default();
        *counts
            .entry((agent.to_owned(), format!("{method} {kind}")))
            .or_default() += 1;
    }
    counts
}

#[test]
fn cri_pull_through_a_mirror_takes_every_layer_from_the_mirror() {
    let store = TestStore::new();
    let _unmount = UnmountOnDrop(store.dir.path().to_owned());
    let dir = store.dir.path();
    // Two registries over one storage, each behind a counting proxy.
    let data = family_data(dir, 5023, &["python"]);
    let _upstream = Registry::start(dir, "upstream", 5023, &data, "", "");
    let _mirror = Registry::start(dir, "mirror", 5025, &data, "", "");
    let (_up_proxy, upstream_log) = python_server(
        dir,
        "upstream-proxy",
        5024,
        &["proxy", "5024", "--backend", "127.0.0.1:5023"],
    );
    let (_mirror_proxy, mirror_log) = python_server(
        dir,
        "mirror-proxy",
        5026,
        &["proxy", "5026", "--backend", "127.0.0.1:5025"],
    );
    // One hosts.toml for both: containerd fetches manifests, strata layers.
    let certs_d = CriContainerd::hosts_dir(&short_dir(&store));
    plain_http_host(
        &certs_d,
        "127.0.0.1:5024",
        "\n[host.\"http://127.0.0.1:5026\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
    );
    strata_config(&store, &certs_d, None, "");
    let serve = start_serve(&store);
    let cd = CriContainerd::start(&short_dir(&store), &serve.socket);
    let mut cri = cd.cri();
    let image = "127.0.0.1:5024/strata/python:latest";
    pull(&mut cri, &serve, image, None);
    prints_42(&mut cri, &store, image);

    let layers = family_layers("python");
    let mut table = vec!["host             client      request          count".to_owned()];
    for (host, log) in [("mirror 5026", &mirror_log), ("upstream 5024", &upstream_log)] {
        let counts = proxy_counts(log, &layers);
        for ((agent, kind), n) in &counts {
            table.push(format!("{host:<16} {agent:<11} {kind:<16} {n:>5}"));
        }
        let total: usize = counts.values().sum();
        table.push(format!("{host:<16} {:<11} {:<16} {total:>5}", "all", "total"));
    }
    eprintln!("requests per host (counting proxies):\n{}", table.join("\n"));
    let mirror_text = std::fs::read_to_string(&mirror_log).unwrap();
    for layer in &layers {
        assert!(
            mirror_text
                .lines()
                .any(|l| l.starts_with(&format!("GET /v2/strata/python/blobs/{layer}")) && l.contains("agent=strata/")),
            "the mirror did not serve {layer} to strata:\n{mirror_text}"
        );
    }
    let upstream_text = std::fs::read_to_string(&upstream_log).unwrap();
    assert!(
        !upstream_text.contains("/blobs/"),
        "the upstream served blobs:\n{upstream_text}"
    );
    let blobs = layer_blobs(&content_media_types(&cd));
    assert!(blobs.is_empty(), "containerd's content store holds layers: {blobs:?}");
    let strata_log = serve.log_text();
    let warnings = fallback_warnings(&strata_log);
    assert!(warnings.is_empty(), "strata fell back: {warnings:#?}");
    drop(cri);
    drop(cd);
    assert!(serve.stop().success());
}

/// The size label a CRI client can put on a container as an annotation.
const SIZE_ANNOTATION: &str = "containerd.io/snapshot/strata.rootfs.size-gb";

/// Prints the root filesystem's line of `df -k`, then writes 1.5 GiB.
const DF_THEN_FILL: &str = "df -k / | tail -n 1; exec dd if=/dev/zero of=/big bs=1M count=1536";

/// The root filesystem's size in KiB from `df -k /` output.
fn df_kib(stdout: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 6 && f[5] == "/").then(|| f[1].parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no `df -k /` line in {stdout:?}"))
}

/// About `gib` GiB as ext4 reports it: a little less than the file.
fn about_gib(kib: u64, gib: u64) -> bool {
    let full = gib << 20;
    kib <= full && kib >= full * 8 / 10
}

/// What strata gave the snapshot of container or sandbox `id` (its key
/// ends in `/<id>`): its labels and the size of its scratch filesystem
/// file (`None`: plain directories).
fn snapshot_scratch(serve: &Serve, id: &str) -> (BTreeMap<String, String>, Option<u64>) {
    let mut client = serve.client();
    let listed = client.list();
    let info = listed
        .iter()
        .find(|i| i.name.ends_with(&format!("/{id}")))
        .unwrap_or_else(|| panic!("no snapshot of {id} in strata: {listed:?}"));
    let mounts = client.mounts(&info.name).unwrap();
    let scratch_mounts = serve.root.join("scratch/mnt");
    let size = mounts
        .iter()
        .flat_map(|m| &m.options)
        .filter_map(|o| o.strip_prefix("upperdir="))
        .find_map(|upper| {
            let fs = Path::new(upper).strip_prefix(&scratch_mounts).ok()?.iter().next()?;
            let file = serve
                .root
                .join("scratch/files")
                .join(format!("{}.img", fs.to_string_lossy()));
            Some(std::fs::metadata(&file).unwrap().len())
        });
    (info.labels.clone().into_iter().collect(), size)
}

/// A strata with `config` and a containerd, minbase pulled through the CRI.
/// Fields drop in order: containerd before strata, strata's mounts before
/// the store's directory.
struct ScratchRig {
    cri: Cri,
    cd: CriContainerd,
    serve: Serve,
    _unmount: UnmountOnDrop,
    store: TestStore,
    image: String,
}

impl ScratchRig {
    fn start(config: &str) -> ScratchRig {
        let store = TestStore::new();
        let _unmount = UnmountOnDrop(store.dir.path().to_owned());
        store.set_config(config);
        let serve = start_serve(&store);
        let cd = CriContainerd::start(&short_dir(&store), &serve.socket);
        let mut cri = cd.cri();
        let image = registry_ref("minbase");
        pull(&mut cri, &serve, &image, None);
        ScratchRig {
            cri,
            cd,
            serve,
            _unmount,
            store,
            image,
        }
    }

    fn pod(&mut self, name: &str) -> Pod {
        let logs = self.store.dir.path().join("logs");
        self.cri.run_pod_sandbox(&PodSpec::unique(name, &logs)).unwrap()
    }

    /// Runs `script` with sh in `pod`, with `annotations` on the container.
    fn run(&mut self, pod: &Pod, name: &str, script: &str, annotations: &[(&str, &str)]) -> Exited {
        let mut spec = ContainerSpec::new(name, &self.image).command(&["sh", "-c", script]);
        for (k, v) in annotations {
            spec.annotations.insert((*k).to_owned(), (*v).to_owned());
        }
        run(&mut self.cri, pod, &spec)
    }

    fn stop(self) {
        let ScratchRig {
            cri,
            cd,
            serve,
            _unmount,
            store,
            ..
        } = self;
        drop(cri);
        drop(cd);
        assert!(serve.stop().success());
        drop(_unmount);
        drop(store);
    }
}

#[test]
fn cri_containers_get_the_namespace_default_scratch_size() {
    let mut rig = ScratchRig::start("[scratch]\nnamespace_default_size_gb = { \"k8s.io\" = 1 }\n");
    let pod = rig.pod("scratch-default");
    let e = rig.run(&pod, "fill", DF_THEN_FILL, &[]);
    let kib = df_kib(&e.output.stdout);
    let (_, file) = snapshot_scratch(&rig.serve, &e.id);
    let (_, sandbox) = snapshot_scratch(&rig.serve, &pod.id);
    eprintln!(
        "k8s.io default 1 GiB: df in the container {kib} KiB, scratch file {file:?} bytes, \
         sandbox's scratch {sandbox:?}; dd exit {}: {}",
        e.exit_code,
        e.output.stderr.trim()
    );
    assert!(about_gib(kib, 1), "df -k / in the container: {kib} KiB");
    assert_eq!(file, Some(1 << 30));
    assert_ne!(e.exit_code, 0, "1.5 GiB fitted in a 1 GiB scratch");
    assert!(
        e.output.stderr.contains("No space left on device"),
        "{}",
        e.output.stderr
    );
    rig.cri.remove_pod(&pod.id).unwrap();
    rig.stop();
}

#[test]
fn cri_container_annotation_sizes_its_scratch() {
    let mut rig = ScratchRig::start("");
    let pod = rig.pod("scratch-annotation");
    let sized = rig.run(&pod, "sized", "df -k / | tail -n 1", &[(SIZE_ANNOTATION, "2")]);
    let plain = rig.run(&pod, "plain", "df -k / | tail -n 1", &[]);
    let (labels, file) = snapshot_scratch(&rig.serve, &sized.id);
    let (_, plain_file) = snapshot_scratch(&rig.serve, &plain.id);
    let (_, sandbox) = snapshot_scratch(&rig.serve, &pod.id);
    let (kib, plain_kib) = (df_kib(&sized.output.stdout), df_kib(&plain.output.stdout));
    eprintln!(
        "annotation 2 GiB: df {kib} KiB, scratch file {file:?} bytes, labels {labels:?}; \
         no annotation: df {plain_kib} KiB, scratch {plain_file:?}; sandbox's scratch {sandbox:?}"
    );
    assert_eq!(
        labels.get(SIZE_ANNOTATION).map(String::as_str),
        Some("2"),
        "containerd passed no annotation as a snapshot label"
    );
    assert_eq!(file, Some(2 << 30));
    assert!(about_gib(kib, 2), "df -k / in the container: {kib} KiB");
    assert_eq!(plain_file, None, "a container without the annotation got a scratch");
    assert_eq!(sandbox, None, "the sandbox got a scratch");
    rig.cri.remove_pod(&pod.id).unwrap();
    rig.stop();
}

/// A default size goes to every container snapshot, never to an unpack.
/// (The pod's sandbox gets it too: containerd 1.6 prepares the sandbox's
/// snapshot exactly like a container's, with the same key shape and no
/// label of its own, so strata cannot tell them apart; docs/containerd.md
/// says so.)
#[test]
fn cri_unpacks_get_no_default_scratch() {
    // containerd unpacks the layers itself, through strata's snapshots.
    let mut rig = ScratchRig::start("[serve]\nfetch_layers = false\n\n[scratch]\ndefault_size_gb = 1\n");
    // The sandbox image too, so that its unpack is counted here.
    let pause = pause_ref();
    pull(&mut rig.cri, &rig.serve, &pause, None);
    let layers = layer_blobs(&content_media_types(&rig.cd));
    let minbase = &family_layers("minbase")[0];
    assert!(
        layers.iter().any(|l| l.starts_with(minbase.as_str())),
        "containerd did not unpack minbase itself: {layers:?}"
    );
    let formatted = |rig: &ScratchRig| rig.serve.log_text().matches("formatted scratch template").count();
    let scratch_files =
        |rig: &ScratchRig| std::fs::read_dir(rig.store.root().join("scratch/files")).map_or(0, |d| d.count());
    let after_pull = (formatted(&rig), scratch_files(&rig));

    let pod = rig.pod("scratch-sandbox");
    let (_, sandbox) = snapshot_scratch(&rig.serve, &pod.id);
    let e = rig.run(&pod, "probe", "df -k / | tail -n 1", &[]);
    let (_, container) = snapshot_scratch(&rig.serve, &e.id);
    eprintln!(
        "default 1 GiB: after the pull {} template(s) formatted, {} scratch file(s); \
         sandbox's scratch {sandbox:?}; container's {container:?}, df {} KiB",
        after_pull.0,
        after_pull.1,
        df_kib(&e.output.stdout)
    );
    assert_eq!(container, Some(1 << 30), "the default applies to containers");
    assert_eq!(after_pull, (0, 0), "an unpack got a scratch");
    rig.cri.remove_pod(&pod.id).unwrap();
    rig.stop();
}

//! Lazy pulls through the Kubernetes CRI (issue 16): a real containerd with
//! its CRI plugin, strata its snapshotter with `[lazy] cri = true`, and the
//! family's `python` converted to eStargz and zstd:chunked, pulled through
//! `fixtures/range-proxy.py`, which counts the bytes the registry sends.
//! strata's remote-snapshot fetcher imports each layer from its TOC alone
//! and commits the snapshot at once; the container's missing files come
//! through LAZY when it opens them.
//!
//! - With prefetch off: PullImage, a pod and `python3 -c 'print(6*7)'`
//!   print 42 with only a part of the image fetched; containerd's content
//!   store holds no layer; then every file of the image, read through a
//!   View, matches the oracle, and the fetched files are ordinary objects
//!   (fsck clean).
//! - With prefetch on: the node fetches the rest by itself; then reading
//!   every file and a second container add no lookup at LAZY and no byte
//!   from the registry.
//! - Faults: `strata serve` killed with SIGKILL while a container runs,
//!   then LAZY's server (`strata lazy-server`) too: the container still
//!   opens missing files (python starts only after both kills: the
//!   keeper's successor server took the session over) and prints 42; a
//!   serve started again runs new containers.
//!   The registry gone before a container starts: its missing files get
//!   EIO within the fetch timeout, the container fails instead of
//!   hanging, and strata keeps serving.

mod lazy_support;

use std::time::{Duration, Instant};

use lazy_support::range_proxy::{Mode, RangeProxy};
use lazy_support::*;
use strata_bench_cri::{ContainerSpec, Cri, PodSpec};
use strata_tests::cri::{
    assert_view_matches, chain_id, content_media_types, layer_blobs, plain_http_host, prints_42, short_dir, with_view,
    CriContainerd,
};
use strata_tests::*;

/// A Kubernetes node pulling through `proxy`: strata serve with LAZY and
/// `[lazy] cri = true` (plus `lazy` lines) under a containerd with CRI.
/// Fields drop in order: containerd (its pods and mounts), then serve,
/// the LAZY daemon and the mounts left (the cleanup), then the store.
struct Node {
    cd: CriContainerd,
    cleanup: Cleanup,
    store: TestStore,
}

impl Node {
    fn start(proxy: &RangeProxy, lazy: &str) -> Node {
        let store = TestStore::new();
        let dir = short_dir(&store);
        let certs_d = CriContainerd::hosts_dir(&dir);
        plain_http_host(&certs_d, proxy.addr());
        set_lazy_config(
            &store,
            &format!("cri = true\n{lazy}"),
            &format!("[registry]\nconfig_path = \"{}\"\n", certs_d.display()),
        );
        let cleanup = start_serve(&store);
        let socket = &cleanup.serve.as_ref().expect("serve runs").socket;
        let cd = CriContainerd::start(&dir, socket);
        Node { cd, cleanup, store }
    }

    fn log(&self) -> String {
        self.cleanup.serve.as_ref().map(|s| s.log_text()).unwrap_or_default()
    }

    fn pull(&self, cri: &mut Cri, reference: &str) -> String {
        cri.pull_image(reference, None)
            .unwrap_or_else(|e| panic!("PullImage {reference}: {e}\nstrata's log:\n{}", self.log()))
    }

    /// `python3 -c 'print(6*7)'` from `image_id` prints 42.
    fn prints_42(&self, cri: &mut Cri, image_id: &str, name: &str) {
        let logs = self.store.dir.path().join("logs");
        prints_42(cri, image_id, name, &logs, || format!("strata's log:\n{}", self.log()));
    }

    /// Every layer Prepare was served by strata, lazily: no layer blob in
    /// containerd's content store, no fallback, each of `layers` fetched.
    fn assert_fast_path_took(&self, layers: &[String]) {
        let blobs = layer_blobs(&content_media_types(&self.cd));
        assert!(blobs.is_empty(), "containerd's content store holds layers: {blobs:?}");
        let log = self.log();
        let fallbacks: Vec<&str> = log.lines().filter(|l| l.contains("containerd fetches")).collect();
        assert!(fallbacks.is_empty(), "fast-path fallbacks: {fallbacks:#?}");
        assert!(!log.contains("not lazily"), "a layer was not imported lazily:\n{log}");
        for layer in layers {
            let fetched = log
                .lines()
                .any(|l| l.contains("layer fetched by strata") && l.contains(layer.as_str()));
            assert!(fetched, "layer {layer} was not fetched by strata:\n{log}");
        }
    }
}

/// The image's layer digests in the registry, and their compressed size.
fn layer_sizes(reference: &str) -> (Vec<String>, u64) {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&stdout_of("skopeo inspect --raw", out)).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let digests = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    (digests, layers.iter().map(|l| l["size"].as_u64().unwrap()).sum())
}

#[test]
fn a_cri_container_starts_before_its_files_arrive() {
    fixture();
    for format in FORMATS {
        let proxy = RangeProxy::start(Mode::Pass);
        // Bytes are counted per open: no prefetch.
        let node = Node::start(&proxy, "prefetch = false");
        let version = node.store.ok(&["version"]);
        assert!(version.contains("CRI pulls: lazy where"), "{version}");
        let reference = pushed(proxy.addr(), format);
        let (layers, compressed) = layer_sizes(&pushed(&registry(), format));
        let mut cri = node.cd.cri();

        let started = Instant::now();
        let image_id = node.pull(&mut cri, &reference);
        let pulled = started.elapsed().as_secs_f64();
        let at_pull = blob_bytes(&proxy);
        node.prints_42(&mut cri, &image_id, "lazy-probe");
        let to_42 = started.elapsed().as_secs_f64();
        let at_42 = blob_bytes(&proxy);
        node.assert_fast_path_took(&layers);
        let counts = lazy_counts(&node.store);
        eprintln!(
            "{format}: PullImage {pulled:.2} s, {at_pull} B ({:.1} %); 42 printed at {to_42:.2} s, {at_42} B \
             ({:.1} % of {compressed} B); LAZY: {counts:?}",
            percent(at_pull, compressed),
            percent(at_42, compressed)
        );
        assert!(
            counts["fetches_started"] > 0,
            "python's files came through LAZY: {counts:?}"
        );
        assert_eq!(counts["reads"], 0, "reads pass through: {counts:?}");
        assert!(
            at_42 * 4 <= compressed,
            "{format}: {at_42} B fetched before the first output, over 25 % of {compressed} B"
        );

        // Every file, fetched on open, is the oracle's.
        let expected = expected_tree("python", node.store.dir.path());
        let chain = chain_id(&node.cd, &image_id);
        // On 8 threads first: one open at a time waits for one request each.
        with_view(&node.cd, "warm", &chain, read_all_in_parallel);
        assert_view_matches(&node.cd, "python", &chain, &expected, node.store.dir.path());
        let after = blob_bytes(&proxy);
        assert!(after > at_42, "reading every file fetched the rest");
        let fsck = node.store.run(&["fsck"]);
        assert!(fsck.status.success(), "fsck: {}", String::from_utf8_lossy(&fsck.stdout));
        drop(cri);
        drop(node);
    }
}

#[test]
fn prefetch_completes_a_cri_image_and_lookups_stop() {
    fixture();
    let format = FORMATS[0];
    let proxy = RangeProxy::start(Mode::Pass);
    let node = Node::start(&proxy, "prefetch = true");
    let reference = pushed(proxy.addr(), format);
    let (layers, compressed) = layer_sizes(&pushed(&registry(), format));
    let mut cri = node.cd.cri();
    let image_id = node.pull(&mut cri, &reference);
    node.assert_fast_path_took(&layers);
    node.prints_42(&mut cri, &image_id, "prefetched");
    // Done when the registry has sent most of the image and then nothing
    // for 3 s; what follows proves nothing was left.
    let quiet = Duration::from_secs(3);
    let mut last = (blob_bytes(&proxy), Instant::now());
    let done = wait_until(Duration::from_secs(300), || {
        let now = blob_bytes(&proxy);
        if now != last.0 {
            last = (now, Instant::now());
        }
        now * 10 >= compressed * 9 && last.1.elapsed() >= quiet
    });
    assert!(done, "prefetch fetched {} of {compressed} B\n{}", last.0, node.log());
    let fetched = blob_bytes(&proxy);
    eprintln!(
        "{format}: prefetch fetched {fetched} B of {compressed} B ({:.1} %)",
        percent(fetched, compressed)
    );
    let before = lazy_counts(&node.store);
    let expected = expected_tree("python", node.store.dir.path());
    let chain = chain_id(&node.cd, &image_id);
    assert_view_matches(&node.cd, "python", &chain, &expected, node.store.dir.path());
    node.prints_42(&mut cri, &image_id, "after-prefetch");
    let after = lazy_counts(&node.store);
    for counter in ["lookups", "opens", "fetches_started"] {
        assert_eq!(
            after[counter], before[counter],
            "{counter} after prefetch: {before:?} -> {after:?}"
        );
    }
    assert_eq!(blob_bytes(&proxy), fetched, "nothing fetched after prefetch");
    let fsck = node.store.run(&["fsck"]);
    assert!(fsck.status.success(), "fsck: {}", String::from_utf8_lossy(&fsck.stdout));
}

#[test]
fn containers_keep_opening_missing_files_when_serve_and_the_lazy_server_are_killed() {
    fixture();
    let proxy = RangeProxy::start(Mode::Pass);
    let mut node = Node::start(&proxy, "prefetch = false");
    let reference = pushed(proxy.addr(), FORMATS[0]);
    let mut cri = node.cd.cri();
    let image_id = node.pull(&mut cri, &reference);
    let pod = cri
        .run_pod_sandbox(&PodSpec::unique("killed", &node.store.dir.path().join("logs")))
        .unwrap();
    // python3 and its modules are first opened after serve is gone.
    let spec = ContainerSpec::new("late", &image_id).command(&["sh", "-c", "sleep 6; python3 -c 'print(6*7)'"]);
    let id = cri.create_container(&pod, &spec).unwrap();
    cri.start_container(&id).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let before = lazy_counts(&node.store);
    let serve = node.cleanup.serve.take().expect("serve runs");
    let (socket, log) = (serve.socket.clone(), serve.log_text());
    assert!(!serve.kill9().success(), "SIGKILL ended serve");
    // It goes once no serve runs and no overlay holds LAZY: not while
    // the container runs.
    assert!(
        !lazy_daemons(node.store.dir.path()).is_empty(),
        "a LAZY daemon outlived serve"
    );
    // And LAZY's server: its keeper starts a successor, which takes the
    // session over before python3 opens its first missing file.
    let servers = lazy_servers(node.store.dir.path());
    assert_eq!(servers.len(), 1, "{servers:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &servers[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        wait_until(Duration::from_secs(5), || lazy_servers(node.store.dir.path())
            .iter()
            .any(|p| *p != servers[0])),
        "no successor LAZY server"
    );
    let exited = cri.wait_exited(&pod, &id, Duration::from_secs(120)).unwrap();
    assert_eq!(
        (exited.exit_code, exited.output.stdout.as_str()),
        (0, "42\n"),
        "{}\nstrata's log:\n{log}",
        exited.output.stderr
    );
    cri.remove_pod(&pod.id).unwrap();

    // A new serve (and its own LAZY) runs new containers.
    let serve = strata_tests::serve::Serve::start(
        &node.store.root(),
        &socket,
        Some(&node.store.dir.path().join("config.toml")),
        &[],
    );
    node.cleanup.serve = Some(serve);
    let lazy = node.store.root().join("lazy");
    assert!(
        wait_until(Duration::from_secs(20), || lazy_mounted(&lazy)),
        "{}",
        node.log()
    );
    let after_restart = eventually_pulls(&node, &mut cri, &reference);
    assert_eq!(after_restart, image_id);
    node.prints_42(&mut cri, &image_id, "after-restart");
    eprintln!(
        "LAZY before the kill: {before:?}; after the restart: {:?}",
        lazy_counts(&node.store)
    );
}

/// PullImage again once containerd has reconnected to a restarted serve.
fn eventually_pulls(node: &Node, cri: &mut Cri, reference: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match cri.pull_image(reference, None) {
            Ok(id) => return id,
            Err(e) if Instant::now() < deadline => {
                eprintln!("PullImage after the restart: {e}; again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("PullImage after the restart: {e}\n{}", node.log()),
        }
    }
}

#[test]
fn a_registry_gone_fails_the_container_not_the_node() {
    fixture();
    let proxy = RangeProxy::start(Mode::Pass);
    let node = Node::start(&proxy, "prefetch = false");
    let reference = pushed(proxy.addr(), FORMATS[1]);
    let mut cri = node.cd.cri();
    let image_id = node.pull(&mut cri, &reference);
    drop(proxy);
    let pod = cri
        .run_pod_sandbox(&PodSpec::unique("gone", &node.store.dir.path().join("logs")))
        .unwrap();
    let spec = ContainerSpec::new("probe", &image_id).command(&["python3", "-c", "print(6*7)"]);
    let started = Instant::now();
    // runc cannot execute python3 (EIO), or python cannot read its
    // modules: StartContainer fails, or the container exits non-zero.
    let outcome = cri.run(&pod, &spec, Duration::from_secs(120));
    let took = started.elapsed();
    match &outcome {
        Ok(run) => assert_ne!(run.exited.exit_code, 0, "{:?}", run.exited.output),
        Err(e) => eprintln!("the container failed to start: {e}"),
    }
    let counts = lazy_counts(&node.store);
    eprintln!("registry gone: the container failed after {took:.1?}; LAZY: {counts:?}");
    assert!(counts["opens_failed"] + counts["opens_timed_out"] > 0, "{counts:?}");
    assert!(took < Duration::from_secs(90), "{took:?}: no hang");
    // The node still answers: the image is listed and strata serves.
    assert!(cri.image_status(&reference).unwrap().is_some());
    let _ = cri.remove_pod(&pod.id);
    let fsck = node.store.run(&["fsck"]);
    assert!(fsck.status.success(), "fsck: {}", String::from_utf8_lossy(&fsck.stdout));
    assert!(node
        .cleanup
        .serve
        .as_ref()
        .is_some_and(|s| !s.log_text().contains("panicked")));
}

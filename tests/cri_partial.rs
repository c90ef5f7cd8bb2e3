//! Partial pulls through the Kubernetes CRI (issue 15, item 4): a real
//! containerd with its CRI plugin on, strata its snapshotter, and the
//! family's `python` and `variant-python` converted to eStargz and
//! zstd:chunked, pulled through `fixtures/range-proxy.py`, which counts
//! the bytes the registry sends. strata's remote-snapshot fetcher imports
//! each layer with the same `import_layer_from` as `strata pull`, so a
//! CRI pull of `variant-python` after `python` fetches only the files the
//! node lacks. Each image runs, mounts as the oracle's tree through its
//! snapshot's mounts, and fsck stays clean.
//!
//! Then a registry that breaks ranged reads (wrong bytes, or `Range`
//! ignored): the CRI pull still succeeds through strata's whole-layer
//! fallback, still on the fast path, and stores exactly what a whole pull
//! stores.

mod range_proxy;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use range_proxy::{Mode, RangeProxy};
use serde_json::Value;
use strata_bench_cri::Cri;
use strata_image::toc::{ByteRange, TocFormat};
use strata_tests::cri::{
    assert_view_matches, chain_id, content_media_types, layer_blobs, plain_http_host, prints_42, short_dir,
    CriContainerd,
};
use strata_tests::oci_layout::{image, layers, read_toc};
use strata_tests::serve::Serve;
use strata_tests::*;

const FORMATS: [&str; 2] = ["estargz", "zstd:chunked"];
const TAGS: [&str; 2] = ["python", "variant-python"];
/// Where the converted images are pushed in the test registry.
const REPOSITORY: &str = "cri-partial";

fn tag_of(format: &str) -> &'static str {
    match format {
        "estargz" => "estargz",
        _ => "zstd-chunked",
    }
}

fn toc_format(format: &str) -> TocFormat {
    match format {
        "estargz" => TocFormat::Estargz,
        _ => TocFormat::ZstdChunked,
    }
}

/// `HOST/cri-partial/TAG:FORMAT` (HOST: the registry or a proxy).
fn pushed(host: &str, tag: &str, format: &str) -> String {
    format!("{host}/{REPOSITORY}/{tag}:{}", tag_of(format))
}

fn layout_tag(tag: &str, format: &str) -> String {
    format!("{tag}-{}", tag_of(format))
}

/// One OCI layout holding every conversion (tagged `<tag>-<format>`), the
/// same images copied to the registry, checked by manifest digest.
fn layout() -> &'static Path {
    static LAYOUT: OnceLock<PathBuf> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        require_root();
        let base = std::env::var_os("STRATA_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = base.join("cri-partial");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = dir.join("layout");
        for tag in TAGS {
            for format in FORMATS {
                let into = format!("oci:{}:{}", layout.display(), layout_tag(tag, format));
                let converted = convert(format, &layout_ref(tag), &into);
                let pushed = pushed(&registry(), tag, format);
                push(&into, &pushed);
                assert_eq!(
                    converted["manifest_digest"].as_str(),
                    Some(manifest_digest(&pushed).as_str()),
                    "{tag} {format}"
                );
            }
        }
        layout
    })
}

/// Tests that use the layout; the last one to finish removes it.
struct LayoutUser;

impl Drop for LayoutUser {
    fn drop(&mut self) {
        static LEFT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(2);
        if LEFT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            if let Some(dir) = layout().parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Copies an image byte for byte (`skopeo copy --preserve-digests`, as
/// fixtures/registry.sh pushes the family) to the plain-http registry.
fn push(layout_image: &str, reference: &str) {
    let out = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
            layout_image,
        ])
        .arg(format!("docker://{reference}"))
        .output()
        .expect("skopeo runs");
    stdout_of(&format!("skopeo copy {layout_image} {reference}"), out);
}

/// The digest the registry gives `HOST/NAME:TAG`'s manifest.
fn manifest_digest(reference: &str) -> String {
    let (host, rest) = reference.split_once('/').unwrap();
    let (name, tag) = rest.rsplit_once(':').unwrap();
    let out = Command::new("curl")
        .args(["-fsSI", "-H", "Accept: application/vnd.oci.image.manifest.v1+json"])
        .arg(format!("http://{host}/v2/{name}/manifests/{tag}"))
        .output()
        .unwrap();
    let headers = stdout_of(&format!("HEAD of {reference}"), out);
    headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest:")
                .map(|d| d.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no digest for {reference}: {headers}"))
}

fn convert(format: &str, source: &str, destination: &str) -> Value {
    let out = Command::new(strata_bin())
        .args(["--config", "/dev/null", "convert", "--json", "--format", format])
        .args([source, destination])
        .output()
        .unwrap();
    let text = stdout_of(&format!("strata convert {format} {source} {destination}"), out);
    serde_json::from_str(text.trim()).unwrap()
}

/// A Kubernetes node: strata serve (`partial_pulls` as given, partial
/// into an empty store too, metrics on a free port) under a containerd with CRI, both pulling through counting
/// proxies, one per mode, that containerd's hosts.toml declares plain
/// http. Fields drop in order: containerd (with its pods and mounts),
/// strata, the proxies, the store.
struct Node {
    cd: CriContainerd,
    serve: Serve,
    proxies: Vec<RangeProxy>,
    store: TestStore,
}

impl Node {
    fn start(modes: &[Mode], partial_pulls: &str) -> Node {
        let store = TestStore::new();
        let proxies: Vec<RangeProxy> = modes.iter().map(|m| RangeProxy::start(*m)).collect();
        let dir = short_dir(&store);
        let certs_d = CriContainerd::hosts_dir(&dir);
        for proxy in &proxies {
            plain_http_host(&certs_d, proxy.addr());
        }
        store.set_config(&format!(
            "[registry]\nconfig_path = \"{}\"\n\n[metrics]\naddress = \"127.0.0.1:0\"\n\n\
             [pull]\npartial_pulls = \"{partial_pulls}\"\npartial_min_saving_percent = 0\n",
            certs_d.display()
        ));
        let config = store.dir.path().join("config.toml");
        let serve = Serve::start(&store.root(), &store.dir.path().join("s.sock"), Some(&config), &[]);
        let cd = CriContainerd::start(&dir, &serve.socket);
        Node {
            cd,
            serve,
            proxies,
            store,
        }
    }

    /// PullImage of `tag` in `format` through `proxy`: the image ID and
    /// the seconds it took. On failure, panics with strata's log.
    fn pull(&self, cri: &mut Cri, proxy: &RangeProxy, tag: &str, format: &str) -> (String, f64) {
        let image = pushed(proxy.addr(), tag, format);
        let t = Instant::now();
        let id = cri
            .pull_image(&image, None)
            .unwrap_or_else(|e| panic!("PullImage {image}: {e}\nstrata's log:\n{}", self.serve.log_text()));
        (id, t.elapsed().as_secs_f64())
    }

    /// Stops containerd, then strata, which must exit cleanly.
    fn stop(self) {
        let Node { cd, serve, .. } = self;
        drop(cd);
        assert!(serve.stop().success());
    }

    /// strata's metrics, `name{labels}` to value.
    fn metrics(&self) -> BTreeMap<String, f64> {
        let log = self.serve.log_text();
        let address = log
            .lines()
            .find_map(|l| l.split("serving metrics on ").nth(1))
            .unwrap_or_else(|| panic!("no metrics address in strata's log:\n{log}"))
            .trim()
            .to_owned();
        let out = Command::new("curl").args(["-fsS", &address]).output().unwrap();
        stdout_of(&format!("curl {address}"), out)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// `python3 -c 'print(6*7)'` from `image` prints 42.
    fn prints_42(&self, cri: &mut Cri, image_id: &str, tag: &str) {
        prints_42(cri, image_id, tag, &self.store.dir.path().join("logs"), String::new);
    }

    /// The image's snapshot, mounted through containerd, is the oracle's
    /// tree of the unconverted `tag`.
    fn assert_matches_oracle(&self, image_id: &str, tag: &str) {
        // The oracle's JSON is made once, beside the layout.
        let expected = expected_tree(tag, layout().parent().unwrap());
        let chain = chain_id(&self.cd, image_id);
        assert_view_matches(&self.cd, tag, &chain, &expected, self.store.dir.path());
    }

    /// The fast path served every layer Prepare: no layer blob in
    /// containerd's content store, no Prepare left to containerd, `layers`
    /// layers fetched by strata (its log and its metrics agree).
    fn assert_fast_path_took(&self, layers: usize) -> BTreeMap<String, f64> {
        let blobs = layer_blobs(&content_media_types(&self.cd));
        assert!(blobs.is_empty(), "containerd's content store holds layers: {blobs:?}");
        let log = self.serve.log_text();
        let fallbacks: Vec<&str> = log.lines().filter(|l| l.contains("containerd fetches")).collect();
        assert!(fallbacks.is_empty(), "fast-path fallbacks: {fallbacks:#?}");
        assert_eq!(log.matches("layer fetched by strata").count(), layers, "{log}");
        let metrics = self.metrics();
        assert_eq!(
            metrics.get(r#"strata_remote_snapshot_hits_total{how="fetched"}"#),
            Some(&(layers as f64)),
            "{metrics:?}"
        );
        let fell_back: f64 = metrics
            .iter()
            .filter(|(k, _)| k.starts_with("strata_remote_snapshot_fallbacks_total"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(fell_back, 0.0, "{metrics:?}");
        metrics
    }
}

/// The layer digests of `tag` in `format`, and their compressed size.
fn layer_digests(tag: &str, format: &str) -> (Vec<String>, u64) {
    let (manifest, _) = image(layout(), &layout_tag(tag, format));
    let layers = layers(&manifest);
    let digests = layers
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    (digests, layers.iter().map(|l| l["size"].as_u64().unwrap()).sum())
}

/// Blob GETs of `digests` the proxy answered: (bytes sent, requests,
/// requests with Range).
fn layer_gets(proxy: &RangeProxy, digests: &[String]) -> (u64, usize, usize) {
    let gets: Vec<_> = proxy
        .blob_gets()
        .into_iter()
        .filter(|r| digests.iter().any(|d| r.path.contains(d.as_str())))
        .collect();
    let ranged = gets.iter().filter(|r| r.range.is_some()).count();
    (gets.iter().map(|r| r.sent).sum(), gets.len(), ranged)
}

/// What `want`'s pull must fetch at most once `have` is stored, from the
/// TOCs alone (as tests/partial_pull.rs computes it): per layer, the TOC
/// and what follows it, and the compressed ranges of the contents the
/// store lacks (files of at most the inline limit live in the EROFS image,
/// so `have` stores only larger ones).
struct Bound {
    toc_bytes: u64,
    lacking_bytes: u64,
    lacking_contents: u64,
}

fn lacking_bound(format: &str, have: &str, want: &str) -> Bound {
    let toc_format = toc_format(format);
    let inline_max = strata_erofs::INLINE_MAX as u64;
    let (manifest, _) = image(layout(), &layout_tag(have, format));
    let mut stored = HashSet::new();
    for layer in layers(&manifest) {
        let (toc, _) = read_toc(toc_format, layout(), layer);
        stored.extend(toc.files().filter(|(_, c)| c.size > inline_max).map(|(_, c)| c.digest));
    }
    let (manifest, _) = image(layout(), &layout_tag(want, format));
    let mut bound = Bound {
        toc_bytes: 0,
        lacking_bytes: 0,
        lacking_contents: 0,
    };
    for layer in layers(&manifest) {
        let (toc, _) = read_toc(toc_format, layout(), layer);
        bound.toc_bytes += layer["size"].as_u64().unwrap() - toc.data_end;
        let mut seen = HashSet::new();
        let mut ranges: Vec<ByteRange> = Vec::new();
        for (_, content) in toc.files() {
            if content.size == 0 || stored.contains(&content.digest) || !seen.insert(content.digest) {
                continue;
            }
            bound.lacking_contents += 1;
            ranges.extend(content.chunks.iter().filter(|c| !c.zeros).map(|c| c.compressed));
        }
        ranges.sort_unstable();
        let mut end = 0;
        for r in ranges {
            let start = r.start.max(end);
            bound.lacking_bytes += r.end.saturating_sub(start);
            end = end.max(r.end);
        }
    }
    bound
}

/// The layers strata's log says it pulled partially, and those it pulled
/// whole after a partial attempt failed.
fn partial_and_whole(log: &str, digests: &[String]) -> (usize, usize) {
    let count = |what: &str| {
        digests
            .iter()
            .filter(|d| log.lines().any(|l| l.contains(what) && l.contains(d.as_str())))
            .count()
    };
    (count("partial pull of a layer"), count("pulling the layer whole"))
}

/// python into an empty node, then variant-python, through the CRI: the
/// fast path takes every layer, the second pull fetches only what the
/// node lacks, both run, both mount as the oracle's trees, fsck is clean.
#[test]
fn cri_pull_of_a_variant_fetches_only_what_the_node_lacks() {
    let _user = LayoutUser;
    let started = Instant::now();
    let mark = |what: &str| eprintln!("{:>7.1}s {what}", started.elapsed().as_secs_f64());
    layout();
    mark("converted images ready");
    for format in FORMATS {
        let node = Node::start(&[Mode::Pass], "toc");
        let proxy = &node.proxies[0];
        let mut cri = node.cd.cri();
        let (python_layers, python_size) = layer_digests("python", format);
        let (variant_layers, variant_size) = layer_digests("variant-python", format);

        let (python_id, python_s) = node.pull(&mut cri, proxy, "python", format);
        let (python_bytes, python_gets, _) = layer_gets(proxy, &python_layers);
        proxy.clear();
        let (variant_id, variant_s) = node.pull(&mut cri, proxy, "variant-python", format);
        let (variant_bytes, variant_gets, ranged) = layer_gets(proxy, &variant_layers);
        let bound = lacking_bound(format, "python", "variant-python");
        let allowed = bound.toc_bytes + bound.lacking_bytes * 6 / 5;
        eprintln!(
            "{format}: CRI pull of python {python_s:.2}s, {python_bytes} layer bytes in {python_gets} GETs \
             (blobs {python_size}); variant-python {variant_s:.2}s, {variant_bytes} bytes in {variant_gets} \
             GETs ({ranged} ranged; blobs {variant_size}); TOCs {} bytes, {} lacking contents in {} \
             compressed bytes: bound {allowed}",
            bound.toc_bytes, bound.lacking_contents, bound.lacking_bytes
        );

        // (a) strata's fetcher took every layer, partially, and containerd
        // downloaded none (a download of its own would also double the
        // proxy's count for python).
        let distinct: HashSet<&String> = python_layers.iter().chain(&variant_layers).collect();
        let metrics = node.assert_fast_path_took(distinct.len());
        let all: Vec<String> = distinct.into_iter().cloned().collect();
        assert_eq!(
            partial_and_whole(&node.serve.log_text(), &all),
            (all.len(), 0),
            "{format}: every layer pulled partially"
        );
        assert!(
            python_bytes <= python_size,
            "{format}: python fetched {python_bytes} bytes"
        );
        // strata's own count of what its fetcher read is the proxy's (the
        // proxy's also counts multipart framing, if any).
        let read = metrics.get("strata_fetch_bytes_total").copied().unwrap_or_default();
        let sent = (python_bytes + variant_bytes) as f64;
        assert!(
            read <= sent && read >= sent * 0.99,
            "{format}: strata read {read} bytes, the proxy sent {sent}"
        );

        // (b) issue 15's goal: at most 1.2 times the lacking files'
        // compressed ranges, plus the TOCs; every layer request ranged.
        assert!(
            variant_bytes <= allowed,
            "{format}: fetched {variant_bytes} > {allowed}"
        );
        assert!(variant_bytes * 10 < variant_size, "{format}: fetched {variant_bytes}");
        assert_eq!(variant_gets, ranged, "{format}: a layer GET without Range");

        mark(&format!("{format}: pulled, counted, fast path checked"));

        // (c) and (d): each runs, and is the oracle's tree.
        for (tag, id) in [("python", &python_id), ("variant-python", &variant_id)] {
            node.prints_42(&mut cri, id, tag);
            mark(&format!("{format}: {tag} ran"));
            node.assert_matches_oracle(id, tag);
            mark(&format!("{format}: {tag} matches the oracle"));
        }
        // (e)
        node.store.fsck_clean();
        mark(&format!("{format}: fsck clean"));
        drop(cri);
        node.stop();
    }
}

/// A registry that breaks ranged reads: strata pulls each layer whole
/// (blob digest and diff_id checked), still on the fast path; the image
/// runs and is the oracle's tree, the store holds exactly what a CRI pull
/// with partial pulls off stores, fsck is clean. One node pulls python as
/// eStargz through a proxy that flips the bytes of ranged answers, and as
/// zstd:chunked through one that ignores `Range`.
#[test]
fn cri_pull_falls_back_to_whole_layers_when_ranges_break() {
    let _user = LayoutUser;
    let started = Instant::now();
    let mark = |what: &str| eprintln!("{:>7.1}s {what}", started.elapsed().as_secs_f64());
    layout();
    mark("converted images ready");
    let cases = [(Mode::WrongBytes, "estargz"), (Mode::IgnoreRange, "zstd:chunked")];
    let node = Node::start(&cases.map(|(mode, _)| mode), "toc");
    let mut cri = node.cd.cri();
    let mut ids = Vec::new();
    let mut all_layers = 0;
    for ((mode, format), proxy) in cases.iter().zip(&node.proxies) {
        let (layers, size) = layer_digests("python", format);
        all_layers += layers.len();
        let (id, secs) = node.pull(&mut cri, proxy, "python", format);
        ids.push(id);
        let (bytes, gets, ranged) = layer_gets(proxy, &layers);
        eprintln!(
            "{mode:?} {format}: CRI pull of python {secs:.2}s, {bytes} layer bytes in {gets} GETs \
             ({ranged} ranged; blobs {size})"
        );
        let log = node.serve.log_text();
        assert_eq!(
            partial_and_whole(&log, &layers),
            (0, layers.len()),
            "{mode:?} {format}: every layer pulled whole:\n{log}"
        );
        let whole_gets = proxy
            .blob_gets()
            .into_iter()
            .filter(|r| r.range.is_none() && r.complete && layers.iter().any(|d| r.path.contains(d.as_str())))
            .count();
        assert_eq!(whole_gets, layers.len(), "{mode:?} {format}: one whole GET per layer");
    }
    node.assert_fast_path_took(all_layers);
    mark("pulled, each layer whole, on the fast path");

    // Nothing the failed attempts fetched was kept: the objects are those
    // of CRI pulls with partial pulls off (not a `strata pull`'s: each
    // layer's snapshot keeps the files a later layer replaces).
    let whole = Node::start(&[Mode::Pass], "off");
    for (_, format) in cases {
        whole.pull(&mut whole.cd.cri(), &whole.proxies[0], "python", format);
    }
    let (got, want) = (node.store.objects(), whole.store.objects());
    whole.stop();
    let extra: Vec<_> = got.iter().filter(|(k, _)| !want.contains_key(*k)).collect();
    let missing: Vec<_> = want.iter().filter(|(k, _)| !got.contains_key(*k)).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "objects not a whole pull's ({} of {}): extra {extra:?}, missing {missing:?}",
        got.len(),
        want.len()
    );
    mark("the objects are a whole CRI pull's");

    for (id, (mode, format)) in ids.iter().zip(cases) {
        node.prints_42(&mut cri, id, "python");
        node.assert_matches_oracle(id, "python");
        mark(&format!("{mode:?} {format}: ran, matches the oracle"));
    }
    node.store.fsck_clean();
    drop(cri);
    node.stop();
}

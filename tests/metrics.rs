//! `strata serve`'s Prometheus metrics (`[metrics] address`), scraped by
//! Debian's own `prometheus` every second and read back through its query
//! API: the series must count exactly the calls this test made, the store
//! and scratch numbers must follow the snapshots, and the fetcher's totals
//! must count the layer strata fetched from the registry.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata_tests::remote_labels::{as_labels, cri_labels, image_info};
use strata_tests::serve::{labels, Serve};
use strata_tests::*;
use tonic::Code;

const SIZE: &str = "containerd.io/snapshot/io.microsoft.container.storage.rootfs.size-gb";

/// How long a series may take to show a change: a scrape a second, and
/// the store's numbers are measured at most every 5 s.
const SETTLE: Duration = Duration::from_secs(40);

/// A port on 127.0.0.1 nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `prometheus` server of its own, scraping one target every second;
/// killed when dropped.
struct Prometheus {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: strata\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus (Debian package prometheus; scripts/setup installs it)");
        let prometheus = Prometheus { child, address, log };
        prometheus.wait_until("up{job=\"strata\"}", "the target to be up", |v| v == Some(1.0));
        prometheus
    }

    /// The value of the one series `query` selects now; `None` when it
    /// selects none.
    fn query(&self, query: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-fsS", "-G", "--data-urlencode"])
            .arg(format!("query={query}"))
            .arg(format!("http://{}/api/v1/query", self.address))
            .output()
            .unwrap();
        if !out.status.success() {
            return None; // not answering yet
        }
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(body["status"], "success", "{query}: {body}");
        let results = body["data"]["result"].as_array().unwrap();
        assert!(results.len() <= 1, "{query} selects several series: {body}");
        let value = results.first()?["value"][1].as_str().unwrap();
        Some(value.parse().unwrap())
    }

    /// Polls `query` until `ok` accepts its value; fails the test with
    /// the last value after [`SETTLE`].
    fn wait_until(&self, query: &str, what: &str, ok: impl Fn(Option<f64>) -> bool) -> Option<f64> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let value = self.query(query);
            if ok(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{query}: waited {SETTLE:?} for {what}, last value {value:?}; prometheus log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_for(&self, query: &str, expected: f64) {
        self.wait_until(query, &format!("{expected}"), |v| v == Some(expected));
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call fails").code()
}

#[test]
fn prometheus_scrapes_calls_store_scratch_and_fetches() {
    require_root();
    let store = TestStore::new();
    let metrics_address = format!("127.0.0.1:{}", free_port());
    store.set_config(&format!("[metrics]\naddress = \"{metrics_address}\"\n"));
    let config = store.dir.path().join("config.toml");
    let serve = Serve::start(&store.root(), &store.dir.path().join("s.sock"), Some(&config), &[]);
    let prometheus = Prometheus::start(&store.dir.path().join("prometheus"), &metrics_address);

    // promtool, from the same package, finds nothing to object to.
    let scraped = Command::new("curl")
        .args(["-fsS", &format!("http://{metrics_address}/metrics")])
        .output()
        .unwrap();
    assert!(scraped.status.success(), "{scraped:?}");
    let checked = promtool_check_metrics(&scraped.stdout);
    assert!(checked.status.success(), "promtool check metrics: {checked:?}");

    // Ordinary calls, with a 64 KiB file committed into the store.
    let mut client = serve.client();
    let mounts = client.prepare("default/1/plain", "", labels(&[])).unwrap();
    assert_eq!(mounts[0].r#type, "bind", "{mounts:?}");
    std::fs::write(Path::new(&mounts[0].source).join("data"), vec![7u8; 65536]).unwrap();
    client.commit("default/2/layer", "default/1/plain").unwrap();
    client.prepare("default/3/sized", "", labels(&[(SIZE, "1")])).unwrap();
    assert_eq!(
        code(client.prepare("default/3/sized", "", labels(&[]))),
        Code::AlreadyExists
    );
    client.stat("default/2/layer").unwrap();
    assert_eq!(code(client.stat("default/9/missing")), Code::NotFound);
    assert_eq!(client.list().len(), 2);

    prometheus.wait_for(r#"strata_rpc_duration_seconds_count{op="prepare"}"#, 3.0);
    prometheus.wait_for(r#"strata_rpc_duration_seconds_count{op="commit"}"#, 1.0);
    prometheus.wait_for(r#"strata_rpc_duration_seconds_count{op="stat"}"#, 2.0);
    prometheus.wait_for(r#"strata_rpc_duration_seconds_count{op="list"}"#, 1.0);
    prometheus.wait_for(r#"strata_rpc_errors_total{op="prepare",code="AlreadyExists"}"#, 1.0);
    prometheus.wait_for(r#"strata_rpc_errors_total{op="stat",code="NotFound"}"#, 1.0);
    assert_eq!(prometheus.query(r#"strata_rpc_errors_total{op="commit"}"#), None);
    // Every call took less than the histogram's top bucket.
    prometheus.wait_for(r#"strata_rpc_duration_seconds_bucket{op="prepare",le="32.768"}"#, 3.0);
    prometheus.wait_for("strata_store_images", 1.0);
    // The kernel ladder's rungs in use: one series per feature.
    prometheus.wait_for(r#"strata_kernel_rung{feature="erofs",rung="file"}"#, 1.0);
    prometheus.wait_for(r#"strata_kernel_rung{feature="lowers",rung="append"}"#, 1.0);
    prometheus.wait_for(r#"strata_kernel_rung{feature="verity",rung="off"}"#, 1.0);
    assert_eq!(prometheus.query("count(strata_kernel_rung)"), Some(3.0));
    prometheus.wait_for("strata_store_objects", 1.0);
    prometheus.wait_for("strata_store_logical_bytes", 65536.0);
    prometheus.wait_until("strata_store_stored_bytes", "the object and its EROFS image", |v| {
        v.is_some_and(|v| v > 65536.0)
    });
    prometheus.wait_for(r#"strata_scratch_filesystems{mechanism="loop"}"#, 1.0);
    prometheus.wait_until(r#"strata_scratch_used_bytes{mechanism="loop"}"#, "bytes in use", |v| {
        v.is_some_and(|v| v > 0.0)
    });
    client.remove("default/3/sized").unwrap();
    prometheus.wait_for(r#"strata_scratch_filesystems{mechanism="loop"}"#, 0.0);
    prometheus.wait_for(r#"strata_rpc_duration_seconds_count{op="remove"}"#, 1.0);

    // The remote-snapshot fast path: a layer strata fetches, the same
    // chain asked for again, and labels it cannot serve.
    prometheus.wait_for(r#"strata_remote_snapshot_hits_total{how="fetched"}"#, 0.0);
    let info = image_info("minbase");
    let pairs = cri_labels("minbase", &info, 0);
    let key = |n: u32| format!("k8s.io/{n}/extract-{n}-AAAA {}", info.chains[0]);
    assert_eq!(
        code(client.prepare(&key(4), "", as_labels(&pairs))),
        Code::AlreadyExists
    );
    assert_eq!(
        code(client.prepare(&key(5), "", as_labels(&pairs))),
        Code::AlreadyExists
    );
    let mut bad = pairs.clone();
    bad.retain(|(k, _)| k != "containerd.io/snapshot/cri.layer-digest");
    client
        .prepare(&key(6), "", as_labels(&bad))
        .expect("falls back to an ordinary snapshot");
    prometheus.wait_for(r#"strata_remote_snapshot_hits_total{how="fetched"}"#, 1.0);
    prometheus.wait_for(r#"strata_remote_snapshot_hits_total{how="already_committed"}"#, 1.0);
    prometheus.wait_for(r#"strata_remote_snapshot_fallbacks_total{reason="labels"}"#, 1.0);
    prometheus.wait_for(r#"strata_remote_snapshot_fallbacks_total{reason="fetch"}"#, 0.0);
    prometheus.wait_for(r#"strata_rpc_errors_total{op="prepare",code="AlreadyExists"}"#, 3.0);
    prometheus.wait_for("strata_fetch_layers_total", 1.0);
    let blob = family_layout()
        .join("blobs/sha256")
        .join(info.layers[0].trim_start_matches("sha256:"));
    let compressed = std::fs::metadata(blob).unwrap().len();
    prometheus.wait_for("strata_fetch_bytes_total", compressed as f64);
    let new_objects = prometheus.query("strata_fetch_new_objects_total").expect("a series");
    assert!(new_objects > 0.0, "minbase brings files the store lacks");
    prometheus.wait_until("strata_store_objects", "the layer's objects too", |v| {
        v.is_some_and(|v| v > 1.0)
    });
    prometheus.wait_for("strata_store_images", 2.0);
    drop(client);
    assert!(serve.stop().success());
}

#[test]
fn a_taken_metrics_port_stops_serve_at_start() {
    require_root();
    let store = TestStore::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    store.set_config(&format!("[metrics]\naddress = \"{address}\"\n"));
    let socket = store.dir.path().join("s.sock");
    let stderr = store.fails(&["serve", "--address", socket.to_str().unwrap()]);
    assert!(
        stderr.contains(&format!("metrics.address {address}: cannot listen")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(!socket.exists(), "no gRPC socket without the metrics");
}

#[test]
fn a_bad_metrics_address_is_a_config_error() {
    let store = TestStore::new();
    store.set_config("[metrics]\naddress = \"localhost:9479\"\n");
    let out = store.run(&["serve", "--address", "/nonexistent/s.sock"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("line 2: metrics.address: \"localhost:9479\" is not IP:PORT"),
        "{stderr}"
    );
}

/// `promtool check metrics` on `text`: the format and naming lint.
fn promtool_check_metrics(text: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    child.stdin.take().unwrap().write_all(text).unwrap();
    child.wait_with_output().unwrap()
}

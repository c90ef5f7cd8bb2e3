//! What the lazy-pull tests share (`tests/lazy_pull.rs`,
//! `tests/lazy_prefetch.rs`, `tests/lazy_faults.rs`): the family's
//! `python` converted to eStargz and zstd:chunked and pushed as
//! `lazy/python:TAG`, a store whose config sets `[lazy]`, `strata serve`
//! with a guard that detaches every mount, kills serve and stops the
//! `strata lazy-daemon`s of the test's stores (on failure too), and
//! readers of mounts and images.
//! Include it with `mod lazy_support;` (it includes `range_proxy`).

#![allow(dead_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_tests::serve::Serve;
use strata_tests::*;

#[path = "range_proxy.rs"]
pub mod range_proxy;

use range_proxy::RangeProxy;

pub const FORMATS: [&str; 2] = ["estargz", "zstd:chunked"];
/// How long an open of a missing file waits in these tests (seconds).
pub const FETCH_TIMEOUT: u64 = 4;

pub fn tag_of(format: &str) -> &'static str {
    match format {
        "estargz" => "estargz",
        _ => "zstd-chunked",
    }
}

/// `HOST/lazy/python:FORMAT`, as pushed (HOST: the registry or a proxy).
pub fn pushed(host: &str, format: &str) -> String {
    format!("{host}/lazy/python:{}", tag_of(format))
}

/// Converts the family's `python` into each format and pushes it, once.
pub fn fixture() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        require_root();
        for format in FORMATS {
            let out = Command::new(strata_bin())
                .args(["--config", "/dev/null", "convert", "--json", "--format", format])
                .arg(registry_ref("python"))
                .arg(pushed(&registry(), format))
                .output()
                .unwrap();
            stdout_of(&format!("strata convert {format}"), out);
        }
    });
}

/// Writes the store's config: `[lazy]` with the tests' fetch timeout and
/// `lazy` (more `[lazy]` lines), then `rest` (other sections).
pub fn set_lazy_config(store: &TestStore, lazy: &str, rest: &str) {
    store.set_config(&format!("[lazy]\nfetch_timeout = {FETCH_TIMEOUT}\n{lazy}\n{rest}"));
}

/// Unmounts (detached) whatever is mounted below the test's dir, then
/// kills serve: on success and on failure alike.
pub struct Cleanup {
    pub dir: PathBuf,
    pub serve: Option<Serve>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for mount in strata_sys::mounts_under(&self.dir) {
            let _ = strata_sys::unmount(&mount, true);
        }
        if let Some(serve) = self.serve.take() {
            drop(serve);
        }
        for pid in lazy_daemons(&self.dir) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// pids of the `strata lazy-daemon`s (LAZY's keepers) of a store below `dir`.
pub fn lazy_daemons(dir: &Path) -> Vec<u32> {
    strata_processes(dir, b"lazy-daemon")
}

/// pids of the `strata lazy-server`s serving LAZY for a store below `dir`.
pub fn lazy_servers(dir: &Path) -> Vec<u32> {
    strata_processes(dir, b"lazy-server")
}

/// pids of the `strata VERB` processes whose arguments name a path below `dir`.
fn strata_processes(dir: &Path, verb: &[u8]) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let under = |a: &&[u8]| Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(dir);
        if args.contains(&verb) && args.iter().any(under) {
            pids.push(pid);
        }
    }
    pids
}

/// `strata serve` on `store` with its config; fails unless it serves LAZY.
pub fn start_serve(store: &TestStore) -> Cleanup {
    let socket = store.dir.path().join("strata.sock");
    let serve = Serve::start(&store.root(), &socket, Some(&store.dir.path().join("config.toml")), &[]);
    let lazy = store.root().join("lazy");
    let served = wait_until(Duration::from_secs(10), || lazy_mounted(&lazy));
    assert!(
        served,
        "serve mounted no LAZY at {}: {}",
        lazy.display(),
        serve.log_text()
    );
    Cleanup {
        dir: store.dir.path().to_owned(),
        serve: Some(serve),
    }
}

/// Whether a `fuse.strata-lazy` is mounted at `dir`.
pub fn lazy_mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(&format!(" {} ", dir.display())) && l.contains("fuse.strata-lazy"))
}

/// The counters of the LAZY served at `STORE/lazy`, from its root's
/// `user.strata.counters` xattr (`name value` lines).
pub fn lazy_counts(store: &TestStore) -> std::collections::BTreeMap<String, u64> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::getxattr(store.root().join("lazy"), "user.strata.counters", &mut buf)
        .expect("LAZY answers its counters xattr");
    std::str::from_utf8(&buf[..n])
        .unwrap()
        .lines()
        .map(|line| {
            let (name, value) = line.split_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// Polls `done` every 100 ms for at most `limit`.
pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn pull_lazy(store: &TestStore, reference: &str) -> Value {
    let out = store.ok(&["pull", "--lazy", "--json", reference]);
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["lazy"], true, "{report}");
    report
}

/// Bytes the proxy sent for blob GETs (layers: TOCs and file ranges).
pub fn blob_bytes(proxy: &RangeProxy) -> u64 {
    proxy.blob_gets().iter().map(|r| r.sent).sum()
}

pub fn percent(part: u64, whole: u64) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

/// The mountinfo line of the mount at `target`.
pub fn mount_line(target: &Path) -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(&format!(" {} ", target.display())))
        .unwrap_or_else(|| panic!("{} is not mounted", target.display()))
        .to_owned()
}

/// `strata images --json`, the entry named `name`.
pub fn image_entry(store: &TestStore, name: &str) -> Value {
    let list: Value = serde_json::from_str(&store.ok(&["images", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("no image {name}: {list}"))
        .clone()
}

/// Reads every regular file under `dir` on 8 threads, so that their
/// fetches overlap (without prefetch each first open costs a request);
/// errors are left to the comparison that follows.
pub fn read_all_in_parallel(dir: &Path) {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => pending.push(entry.path()),
                Ok(t) if t.is_file() => files.push(entry.path()),
                _ => {}
            }
        }
    }
    let files = std::sync::Mutex::new(files);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let Some(file) = files.lock().unwrap().pop() else { break };
                let _ = std::fs::read(&file);
            });
        }
    });
}

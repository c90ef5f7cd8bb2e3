//! Shared helpers for the end-to-end tests: where the fixtures are, a fresh
//! store per test, running `strata`, and the independent tree oracle.
//!
//! The fixtures (image family, hostile layouts, local registry) are prepared
//! by `scripts/test`. A test whose fixtures are missing fails; it never skips.

#[path = "serve.rs"]
pub mod serve;

#[path = "cri_support.rs"]
pub mod cri;

#[path = "oci_layout.rs"]
pub mod oci_layout;

#[path = "registries.rs"]
pub mod registries;

#[path = "remote_labels.rs"]
pub mod remote_labels;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const FAMILY_TAGS: &[&str] = &["minbase", "python", "devel", "variant", "variant-python"];

fn env_path(name: &str) -> PathBuf {
    let value = std::env::var_os(name).unwrap_or_else(|| {
        panic!("{name} is not set: run the tests through scripts/test, which prepares the fixtures")
    });
    let path = PathBuf::from(value);
    assert!(path.exists(), "{name}={} does not exist", path.display());
    path
}

/// The family's OCI layout directory.
pub fn family_layout() -> PathBuf {
    env_path("STRATA_FAMILY").join("oci")
}

/// `oci:LAYOUT:TAG` for an image of the family.
pub fn layout_ref(tag: &str) -> String {
    format!("oci:{}:{tag}", family_layout().display())
}

/// `HOST:PORT/strata/TAG:latest` for an image of the family in the registry.
pub fn registry_ref(tag: &str) -> String {
    format!("{}/strata/{tag}:latest", registry())
}

/// The directory of hostile OCI layouts, one per case.
pub fn hostile_dir() -> PathBuf {
    env_path("STRATA_HOSTILE")
}

/// `HOST:PORT` of the local registry holding the family as `strata/<tag>`.
pub fn registry() -> String {
    let addr = std::env::var("STRATA_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let ok = Command::new("curl")
        .args(["-fsS", "-o", "/dev/null", &format!("http://{addr}/v2/")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "no registry answers at {addr}: scripts/test starts one");
    addr
}

pub fn strata_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("STRATA_BIN") {
        return bin.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/strata
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("strata");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p strata`",
        bin.display()
    );
    bin
}

pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .unwrap_or_default();
    assert!(
        uid.split_whitespace().nth(1) == Some("0"),
        "these tests mount EROFS and overlay: run them as root"
    );
}

/// A fresh store in a temp dir; unmounts whatever it mounted when dropped.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    mounts: std::cell::RefCell<Vec<PathBuf>>,
}

impl Default for TestStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TestStore {
    pub fn new() -> Self {
        require_root();
        let base = std::env::var_os("STRATA_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
        std::fs::create_dir_all(&base).unwrap();
        let store = TestStore {
            dir: tempfile::Builder::new()
                .prefix("strata-test-")
                .tempdir_in(base)
                .unwrap(),
            mounts: Default::default(),
        };
        // Empty: the defaults apply, whatever /etc/strata holds.
        store.set_config("");
        store
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The config file every `strata` run of this store reads (empty
    /// until written: the defaults apply).
    pub fn set_config(&self, toml: &str) {
        std::fs::write(self.dir.path().join("config.toml"), toml).unwrap();
    }

    /// Runs `strata --root ROOT ARGS...`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(strata_bin())
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .args(args)
            .output()
            .expect("running strata")
    }

    /// Runs strata and fails the test unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "strata {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs strata and fails the test unless it fails with exit code 1; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "strata {args:?} should fail:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Mounts `image` on a fresh directory and returns it.
    pub fn mount(&self, image: &str) -> PathBuf {
        let target = self.dir.path().join(format!("mnt-{}", self.mounts.borrow().len()));
        std::fs::create_dir_all(&target).unwrap();
        self.ok(&["mount", image, target.to_str().unwrap()]);
        self.mounts.borrow_mut().push(target.clone());
        target
    }

    pub fn umount(&self, target: &Path) {
        self.ok(&["umount", target.to_str().unwrap()]);
        self.mounts.borrow_mut().retain(|m| m != target);
    }

    /// `strata fsck` exits 0 and both its store and snapshot lines report
    /// no problems, and no snapshot leftovers.
    pub fn fsck_clean(&self) {
        let out = self.ok(&["fsck"]);
        assert_eq!(out.matches(" 0 problems,").count(), 2, "store and snapshots: {out}");
        assert!(out.contains(" 0 orphans"), "{out}");
    }

    /// Object files in the store, with their sizes.
    pub fn objects(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let objects = self.root().join("objects");
        for fan in std::fs::read_dir(&objects).unwrap() {
            let fan = fan.unwrap();
            for f in std::fs::read_dir(fan.path()).unwrap() {
                let f = f.unwrap();
                let name = format!(
                    "{}{}",
                    fan.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                out.insert(name, f.metadata().unwrap().len());
            }
        }
        out
    }

    /// EROFS image files, name -> bytes.
    pub fn images(&self) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(self.root().join("images"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        for target in self.mounts.borrow().iter() {
            let _ = Command::new(strata_bin())
                .arg("--root")
                .arg(self.root())
                .arg("umount")
                .arg(target)
                .output();
        }
        // Any EROFS mount left under the store must go before the temp dir.
        let mnt = self.root().join("mnt");
        if let Ok(entries) = std::fs::read_dir(mnt) {
            for e in entries.flatten() {
                let _ = Command::new("umount").arg(e.path()).output();
            }
        }
    }
}

fn treecheck() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/treecheck.py")
}

fn python(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(treecheck())
        .args(args)
        .output()
        .expect("python3")
}

/// The oracle's flattening of `tag` from the family layout, as JSON.
pub fn expected_tree(tag: &str, out_dir: &Path) -> PathBuf {
    let out = out_dir.join(format!("expect-{tag}.json"));
    if !out.exists() {
        let layout = family_layout();
        let r = python(&[
            "expect",
            "--layout",
            layout.to_str().unwrap(),
            "--tag",
            tag,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(
            r.status.success(),
            "treecheck expect: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    out
}

/// Compares a mounted tree with the oracle; panics with the differences.
pub fn assert_tree_matches(expected: &Path, mounted: &Path, scratch: &Path) {
    let got = scratch.join(format!("scan-{}.json", mounted.file_name().unwrap().to_string_lossy()));
    let r = python(&[
        "scan",
        "--root",
        mounted.to_str().unwrap(),
        "--out",
        got.to_str().unwrap(),
    ]);
    assert!(
        r.status.success(),
        "treecheck scan: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = python(&["compare", expected.to_str().unwrap(), got.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "tree differs from the oracle:\n{text}");
    assert!(text.contains("identical"), "{text}");
}

/// The distinct contents (sha256 to size) of an oracle's files that become
/// objects: those above the inline limit.
pub fn distinct_contents(expected: &Path) -> BTreeMap<String, u64> {
    let min_size = strata_erofs::INLINE_MAX as u64;
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(expected).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for entry in json.as_object().expect("path map").values() {
        if entry["type"] == "file" {
            let size = entry["size"].as_u64().unwrap();
            if size > min_size {
                out.insert(entry["sha256"].as_str().unwrap().to_owned(), size);
            }
        }
    }
    out
}

/// Number of paths in an oracle JSON.
pub fn path_count(expected: &Path) -> usize {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(expected).unwrap()).unwrap();
    json.as_object().unwrap().len()
}

pub fn set<T: Ord + Clone>(items: impl IntoIterator<Item = T>) -> BTreeSet<T> {
    items.into_iter().collect()
}

/// A number from the environment, or `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The seed of a randomized test: STRATA_KILL_SEED, or one from the clock
/// (print it, so a failing run can be repeated).
pub fn kill_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    env_number(
        "STRATA_KILL_SEED",
        now.as_nanos() as u64 ^ u64::from(std::process::id()),
    )
}

/// Runs a fixture script (`containerd.sh`, `containerd-cri.sh`) for the
/// containerd in `dir`, whose strata listens on `strata_socket`.
pub fn run_fixture(script: &str, dir: &Path, strata_socket: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(script))
        .args(args)
        .env("STRATA_CONTAINERD_DIR", dir)
        .env("STRATA_SOCKET", strata_socket)
        .output()
        .unwrap()
}

/// The stdout of a command that must have succeeded; else a panic showing
/// what it printed.
pub fn stdout_of(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

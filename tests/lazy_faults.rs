//! Faults of lazy pulls (issue 16): a serve crash, and a full disk.
//!
//! **Restarts.** LAZY runs in `strata lazy-daemon`, a process of its own,
//! so a `kill -9` of `strata serve` takes no FUSE session with it. A
//! long-running process in a lazily pulled image (python3 in a chroot of a
//! `strata mount`, reading commands from a pipe) holds a half-read missing
//! file and opens more missing files: while serve runs, after serve is
//! killed, and after a new serve starts. Every read gives the oracle's
//! bytes. The daemons then go away by themselves once their overlays are
//! unmounted and no serve runs: no process and no mount is left behind.
//!
//! **A killed LAZY server.** LAZY's keeper (`strata lazy-daemon`) holds
//! the FUSE connection and the session journal; `strata lazy-server`
//! serves it. A `kill -9` of the server while python3 holds a half-read
//! missing file: the keeper starts a successor that takes the session
//! over, the held file reads on, a file the dead server fetched opens
//! again, and missing files open. A SIGTERM of the server is replaced the
//! same way.
//!
//! **Disk full.** With the store on a small filesystem filled up, an open
//! of a missing file gets EIO at once (no retries: the registry is not at
//! fault), the log says why, nothing is staged or aliased, fsck is clean;
//! once space is freed the same file opens with the right bytes.

mod lazy_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use lazy_support::*;
use serde_json::Value;
use strata_tests::serve::Serve;
use strata_tests::*;

/// No prefetch: the tests open files they know to be missing. Opens wait
/// up to 20 s for a fetch (several MB on a loaded machine).
const CONFIG: &str = "[lazy]\nprefetch = false\nfetch_timeout = 20\n";

fn image() -> String {
    pushed(&registry(), "estargz")
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    assert!(wait_until(limit, done), "waited {limit:?} for {what}");
}

/// `strata serve` on `root` with the test's config, serving LAZY.
fn serve_on(store: &TestStore, root: &Path) -> Serve {
    let socket = store.dir.path().join("strata.sock");
    let serve = Serve::start(root, &socket, Some(&store.dir.path().join("config.toml")), &[]);
    wait_for("LAZY at STORE/lazy", Duration::from_secs(20), || {
        lazy_mounted(&root.join("lazy"))
    });
    serve
}

fn alias(root: &Path, sha256: &str) -> PathBuf {
    root.join("sha256").join(&sha256[..2]).join(&sha256[2..])
}

/// python3 running in the image, doing what its stdin says.
struct Container {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

const SCRIPT: &str = r#"
import hashlib, sys
held = None
for line in sys.stdin:
    cmd, _, arg = line.strip().partition(" ")
    try:
        if cmd == "read":
            with open(arg, "rb") as f:
                print(hashlib.sha256(f.read()).hexdigest(), flush=True)
        elif cmd == "hold":
            held = open(arg, "rb")
            size = held.seek(0, 2)
            held.seek(0)
            held_hash = hashlib.sha256(held.read(size // 2))
            print("held", flush=True)
        elif cmd == "rest":
            held_hash.update(held.read())
            print(held_hash.hexdigest(), flush=True)
    except OSError as e:
        print(f"error {e.errno} {e.strerror}", flush=True)
"#;

impl Container {
    fn start(mounted: &Path) -> Container {
        let mut child = Command::new("chroot")
            .arg(mounted)
            .args(["/usr/bin/python3", "-u", "-c", SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Container { child, stdin, stdout }
    }

    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert!(!answer.is_empty(), "python3 in the image ended on {line:?}");
        answer.trim().to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Missing files of the image (no alias yet), 64 KiB to 8 MiB, distinct
/// contents, by path: (path, sha256).
fn missing_files(expected: &Path, root: &Path, count: usize) -> Vec<(String, String)> {
    let tree: BTreeMap<String, Value> = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (path, entry) in tree {
        let size = entry["size"].as_u64().unwrap_or(0);
        if entry["type"] != "file" || !(65536..=8 << 20).contains(&size) || path.contains("python3") {
            continue;
        }
        let sha = entry["sha256"].as_str().unwrap().to_owned();
        if alias(root, &sha).exists() || !seen.insert(sha.clone()) {
            continue;
        }
        out.push((path, sha));
        if out.len() == count {
            break;
        }
    }
    assert_eq!(
        out.len(),
        count,
        "the image has {count} missing files of 64 KiB to 8 MiB"
    );
    out
}

/// serve running on a fresh store with the lazily pulled eStargz `python`
/// mounted and python3 running in it; a missing file read (files[1]) and
/// another held half read (files[0]); files[2] and files[3] still missing.
struct HeldFile {
    store: TestStore,
    root: PathBuf,
    cleanup: Cleanup,
    serve: Serve,
    mounted: PathBuf,
    container: Container,
    files: Vec<(String, String)>,
}

fn hold_a_missing_file() -> HeldFile {
    fixture();
    let store = TestStore::new();
    store.set_config(CONFIG);
    let root = store.root();
    let cleanup = Cleanup {
        dir: store.dir.path().to_owned(),
        serve: None,
    };
    let serve = serve_on(&store, &root);
    let keepers = lazy_daemons(&root);
    assert_eq!(keepers.len(), 1, "one keeper: {keepers:?}\n{}", serve.log_text());
    store.ok(&["pull", "--lazy", &image()]);
    let mounted = store.mount(&image());
    let expected = expected_tree("python", store.dir.path());
    let mut container = Container::start(&mounted);
    let files = missing_files(&expected, &root, 4);
    assert_eq!(container.ask(&format!("read {}", files[1].0)), files[1].1);
    assert_eq!(container.ask(&format!("hold {}", files[0].0)), "held");
    HeldFile {
        store,
        root,
        cleanup,
        serve,
        mounted,
        container,
        files,
    }
}

#[test]
fn a_lazy_container_opens_missing_files_while_serve_is_killed_and_restarted() {
    let HeldFile {
        store,
        root,
        cleanup: _cleanup,
        serve,
        mounted,
        mut container,
        files,
    } = hold_a_missing_file();
    let first = lazy_daemons(&root);
    let version = store.ok(&["version"]);
    assert!(version.contains("lazy pulls: on (LAZY served at"), "{version}");
    let (held, read_down, read_after) = (&files[0], &files[2], &files[3]);

    let status = serve.kill9();
    assert!(!status.success(), "serve was killed");
    assert!(alive(first[0]), "the lazy-daemon outlives a killed serve");
    // No serve: LAZY leaves STORE/lazy, and still serves the overlay.
    wait_for("LAZY detached from STORE/lazy", Duration::from_secs(10), || {
        !lazy_mounted(&root.join("lazy"))
    });
    assert_eq!(container.ask("rest"), held.1, "the held file reads on");
    assert!(!alias(&root, &read_down.1).exists());
    assert_eq!(
        container.ask(&format!("read {}", read_down.0)),
        read_down.1,
        "a missing file opens while no serve runs"
    );
    // Stored behind the read (an open is answered before the publish).
    wait_for("the fetched file stored as an object", Duration::from_secs(10), || {
        alias(&root, &read_down.1).exists()
    });

    // A new serve mounts a new LAZY; the old daemon keeps the overlay's.
    let serve = serve_on(&store, &root);
    let now = lazy_daemons(&root);
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(container.ask(&format!("read {}", read_after.0)), read_after.1);
    let fresh = store.mount(&image());
    let out = Command::new("chroot")
        .arg(&fresh)
        .args(["sha256sum", &read_after.0])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&read_after.1),
        "a new mount reads through the new LAZY: {out:?}"
    );

    // The old daemon ends with its last overlay; the new one with serve.
    drop(container);
    store.ok(&["umount", mounted.to_str().unwrap()]);
    wait_for("the first lazy-daemon to exit", Duration::from_secs(10), || {
        !alive(first[0])
    });
    let second: Vec<u32> = now.into_iter().filter(|p| *p != first[0]).collect();
    assert!(serve.stop().success());
    assert!(alive(second[0]), "its mount still uses the second daemon");
    store.ok(&["umount", fresh.to_str().unwrap()]);
    wait_for("the second lazy-daemon to exit", Duration::from_secs(10), || {
        !alive(second[0])
    });
    assert!(!lazy_mounted(&root.join("lazy")));
    assert!(strata_sys::mounts_under(store.dir.path()).is_empty());
    store.fsck_clean();
}

#[test]
fn a_lazy_container_opens_missing_files_after_its_lazy_server_is_killed() {
    let HeldFile {
        store,
        root,
        cleanup: _cleanup,
        serve,
        mounted,
        mut container,
        files,
    } = hold_a_missing_file();
    let keeper = lazy_daemons(&root);
    let first = lazy_servers(&root);
    assert_eq!(first.len(), 1, "one server: {first:?}");
    let (held, read_before, read_after, read_upgraded) = (&files[0], &files[1], &files[2], &files[3]);

    // kill -9 of the server: the keeper starts a successor, which takes
    // the session over.
    let killed = Command::new("kill")
        .args(["-9", &first[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_for("a successor LAZY server", Duration::from_secs(20), || {
        lazy_servers(&root).iter().any(|p| *p != first[0])
    });
    assert!(alive(keeper[0]), "the keeper outlives its server");
    assert_eq!(container.ask("rest"), held.1, "the held file reads on");
    assert_eq!(
        container.ask(&format!("read {}", read_before.0)),
        read_before.1,
        "a file the dead server fetched opens again"
    );
    assert!(!alias(&root, &read_after.1).exists());
    assert_eq!(
        container.ask(&format!("read {}", read_after.0)),
        read_after.1,
        "a missing file opens through the successor"
    );
    // Stored behind the read (an open is answered before the publish).
    wait_for("the fetched file stored as an object", Duration::from_secs(10), || {
        alias(&root, &read_after.1).exists()
    });

    // SIGTERM of the server (how a new binary takes over): replaced too.
    let second = lazy_servers(&root);
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(Command::new("kill")
        .arg(second[0].to_string())
        .status()
        .unwrap()
        .success());
    wait_for("a third LAZY server", Duration::from_secs(20), || {
        lazy_servers(&root).iter().any(|p| *p != second[0])
    });
    assert_eq!(container.ask(&format!("read {}", read_upgraded.0)), read_upgraded.1);
    let log = serve.log_text();
    assert_eq!(log.matches("a successor takes its session over").count(), 2, "{log}");

    // Nothing left: the overlay's unmount ends the session; the keeper and
    // its server exit once no serve runs either.
    drop(container);
    store.ok(&["umount", mounted.to_str().unwrap()]);
    assert!(serve.stop().success());
    wait_for("the keeper and its server to exit", Duration::from_secs(10), || {
        lazy_daemons(&root).is_empty() && lazy_servers(&root).is_empty()
    });
    assert!(!lazy_mounted(&root.join("lazy")));
    assert!(strata_sys::mounts_under(store.dir.path()).is_empty());
    store.fsck_clean();
}

/// A loop-mounted ext4 of `size`, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(dir: &Path, size: &str) -> SmallFs {
        let image = dir.join("small.ext4");
        let point = dir.join("small");
        std::fs::create_dir_all(&point).unwrap();
        let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
        run(Command::new("truncate").args(["-s", size]).arg(&image));
        // No blocks reserved for root: strata runs as root.
        run(Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&image));
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&point));
        SmallFs(point)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_full_disk_fails_the_open_with_eio_and_keeps_the_store_consistent() {
    fixture();
    let store = TestStore::new();
    store.set_config(CONFIG);
    let small = SmallFs::new(store.dir.path(), "96M");
    let root = small.0.join("store");
    let config = store.dir.path().join("config.toml");
    let strata = |args: &[&str]| {
        Command::new(strata_bin())
            .arg("--root")
            .arg(&root)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let _cleanup = Cleanup {
        dir: store.dir.path().to_owned(),
        serve: None,
    };
    let serve = serve_on(&store, &root);
    let out = strata(&["pull", "--lazy", &image()]);
    assert!(out.status.success(), "{out:?}");
    let mounted = store.dir.path().join("mnt");
    std::fs::create_dir_all(&mounted).unwrap();
    let out = strata(&["mount", &image(), mounted.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    // The biggest missing file, over 1 MiB.
    let expected = expected_tree("python", store.dir.path());
    let tree: BTreeMap<String, Value> = serde_json::from_str(&std::fs::read_to_string(expected).unwrap()).unwrap();
    let (path, sha) = tree
        .iter()
        .filter(|(_, e)| e["type"] == "file")
        .max_by_key(|(_, e)| e["size"].as_u64().unwrap_or(0))
        .map(|(p, e)| {
            (
                p.trim_start_matches('/').to_owned(),
                e["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .unwrap();
    assert!(!alias(&root, &sha).exists());

    // Fill the filesystem: dd stops at ENOSPC.
    let filler = small.0.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "status=none"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    let started = Instant::now();
    let err = std::fs::read(mounted.join(&path)).expect_err("no room for the file");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(5), "EIO: {err}");
    assert!(
        took < Duration::from_secs(10),
        "EIO at once, not after retries: {took:?}"
    );
    assert!(
        serve.log_text().contains("No space left on device"),
        "the log says why: {}",
        serve.log_text()
    );
    assert!(!alias(&root, &sha).exists(), "nothing aliased");
    assert_eq!(
        std::fs::read_dir(root.join("tmp")).unwrap().count(),
        0,
        "nothing left staged"
    );
    let fsck = strata(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");

    // Room again: the same file opens, with the right bytes.
    std::fs::remove_file(&filler).unwrap();
    let bytes = std::fs::read(mounted.join(&path)).unwrap();
    assert_eq!(sha256_hex(&bytes), sha);
    wait_for("the file stored as an object", Duration::from_secs(10), || {
        alias(&root, &sha).exists()
    });
    let out = strata(&["umount", mounted.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let fsck = strata(&["fsck"]);
    assert!(fsck.status.success(), "{fsck:?}");
    drop(serve);
}

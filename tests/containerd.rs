//! A real containerd (Debian's, with runc) with strata as its proxy
//! snapshotter, pulling the family from the local registry: containers run,
//! their rootfs is the image byte for byte, the family is stored once, and
//! image removal plus containerd's GC lets strata's Cleanup free it all.
//! Also kill -9 of strata between pulls and in the middle of one.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use strata_tests::serve::{unmount_under, Serve};
use strata_tests::*;

struct Containerd {
    dir: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, strata_socket: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let cd = Containerd {
            dir: dir.to_owned(),
            socket: strata_socket.to_owned(),
        };
        let out = cd.script(&["start"]);
        assert!(out.status.success(), "{out:?}");
        cd
    }

    fn script(&self, args: &[&str]) -> Output {
        run_fixture("containerd.sh", &self.dir, &self.socket, args)
    }

    fn try_ctr(&self, args: &[&str]) -> Output {
        let mut all = vec!["ctr"];
        all.extend_from_slice(args);
        self.script(&all)
    }

    fn ctr(&self, args: &[&str]) -> String {
        stdout_of(&format!("ctr {args:?}"), self.try_ctr(args))
    }

    fn timed(&self, args: &[&str]) -> f64 {
        let started = Instant::now();
        self.ctr(args);
        started.elapsed().as_secs_f64()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
        unmount_under(&self.dir);
    }
}

fn image(tag: &str) -> String {
    format!("{}/strata/{tag}:latest", registry())
}

fn pull(cd: &Containerd, snapshotter: &str, tag: &str) -> f64 {
    cd.timed(&[
        "images",
        "pull",
        "--plain-http",
        "--snapshotter",
        snapshotter,
        &image(tag),
    ])
}

fn run(cd: &Containerd, snapshotter: &str, tag: &str, id: &str, cmd: &[&str]) -> (f64, String) {
    let reference = image(tag);
    // runc's state is per host: ids must not meet another run's.
    let id = format!("{id}-{}", std::process::id());
    let mut args = vec!["run", "--rm", "--snapshotter", snapshotter, &reference, &id];
    args.extend_from_slice(cmd);
    let started = Instant::now();
    let out = cd.ctr(&args);
    (started.elapsed().as_secs_f64(), out)
}

/// Kills a running container's task and removes both.
fn remove_container(cd: &Containerd, id: &str) {
    cd.ctr(&["task", "kill", "-s", "KILL", id]);
    for _ in 0..50 {
        if cd.try_ctr(&["task", "rm", id]).status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cd.ctr(&["containers", "rm", id]);
}

/// After strata restarts, containerd's proxy connection needs a call to
/// reconnect; wait until snapshot calls go through again.
fn wait_ready(cd: &Containerd) {
    for _ in 0..100 {
        if cd
            .try_ctr(&["snapshots", "--snapshotter", "strata", "ls"])
            .status
            .success()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("containerd cannot reach strata after its restart");
}

fn short_dir(store: &TestStore) -> PathBuf {
    store.dir.path().join("c")
}

#[test]
fn containerd_pulls_and_runs_the_family_with_strata() {
    let store = TestStore::new();
    let scratch = store.dir.path();
    let socket = scratch.join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let cd = Containerd::start(&short_dir(&store), &socket);

    let mut table = vec!["image            strata_pull_s overlayfs_pull_s strata_run_s overlayfs_run_s".to_owned()];
    for tag in FAMILY_TAGS {
        let strata_pull = pull(&cd, "strata", tag);
        let (strata_run, _) = run(&cd, "strata", tag, &format!("t-{tag}"), &["/bin/true"]);
        let overlay_pull = pull(&cd, "overlayfs", tag);
        let (overlay_run, _) = run(&cd, "overlayfs", tag, &format!("o-{tag}"), &["/bin/true"]);
        table.push(format!(
            "{tag:<16} {strata_pull:>13.2} {overlay_pull:>16.2} {strata_run:>12.2} {overlay_run:>15.2}"
        ));
    }
    eprintln!("{}", table.join("\n"));
    for tag in ["python", "devel", "variant-python"] {
        let (_, out) = run(
            &cd,
            "strata",
            tag,
            &format!("py-{tag}"),
            &["python3", "-c", "print(6*7)"],
        );
        assert_eq!(out.trim(), "42", "{tag}");
    }

    // A running container: what it writes shows in its rootfs, and the
    // rest of the rootfs is the image byte for byte.
    let devel = image("devel");
    let long = format!("long-{}", std::process::id());
    cd.ctr(&["run", "-d", "--snapshotter", "strata", &devel, &long, "sleep", "300"]);
    cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "w",
        &long,
        "sh",
        "-c",
        "echo written > /written-inside",
    ]);
    let rootfs = cd
        .dir
        .join("state/io.containerd.runtime.v2.task/default")
        .join(&long)
        .join("rootfs");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("written-inside")).unwrap(),
        "written\n"
    );
    std::fs::remove_file(rootfs.join("written-inside")).unwrap();
    assert_tree_matches(&expected_tree("devel", scratch), &rootfs, scratch);
    remove_container(&cd, &long);

    // The family's shared files are stored once.
    let mut distinct = std::collections::BTreeMap::new();
    for tag in FAMILY_TAGS {
        distinct.extend(distinct_contents(&expected_tree(tag, scratch)));
    }
    // Objects are named by content, so each is stored once. containerd
    // keeps every layer's committed snapshot, so files a later layer
    // deletes (devel's docs) stay referenced: a few more than the
    // distinct contents of the final images.
    let objects = store.objects().len();
    eprintln!(
        "objects {objects}, distinct contents of the five images {}",
        distinct.len()
    );
    assert!(
        objects >= distinct.len() && objects * 100 <= distinct.len() * 102,
        "{objects}"
    );
    eprintln!("strata df beside containerd:\n{}", store.ok(&["df"]));
    let df: serde_json::Value = serde_json::from_str(&store.ok(&["df", "--json"])).unwrap();
    assert_eq!(
        df["objects"].as_u64(),
        Some(objects as u64),
        "df counts the snapshots' objects"
    );
    let (logical, stored) = (
        df["logical_bytes"].as_u64().unwrap(),
        df["stored_bytes"].as_u64().unwrap(),
    );
    assert!(
        stored * 2 < logical,
        "shared files stored once: {stored} stored for {logical} logical"
    );
    store.fsck_clean();

    // Image removal, containerd's GC, strata's Cleanup: nothing is left.
    for tag in FAMILY_TAGS {
        cd.ctr(&["images", "rm", "--sync", &image(tag)]);
    }
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = store.objects().len();
        if left == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(left, 0, "objects left after containerd's GC and strata's Cleanup");
    store.fsck_clean();
    drop(cd);
    assert!(serve.stop().success());
}

#[test]
fn kill_9_of_strata_between_and_during_pulls() {
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let cd = Containerd::start(&short_dir(&store), &socket);
    pull(&cd, "strata", "minbase");
    drop(serve); // SIGKILL
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    wait_ready(&cd);
    pull(&cd, "strata", "python");
    run(&cd, "strata", "minbase", "a", &["/bin/true"]);
    run(&cd, "strata", "python", "b", &["/bin/true"]);

    // Now in the middle of a pull's unpack.
    let mut child = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/containerd.sh"))
        .args([
            "ctr",
            "images",
            "pull",
            "--plain-http",
            "--snapshotter",
            "strata",
            &image("devel"),
        ])
        .env("STRATA_CONTAINERD_DIR", &cd.dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(serve);
    let _ = child.wait();
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    store.fsck_clean();
    wait_ready(&cd);
    pull(&cd, "strata", "devel");
    for (tag, id) in [("minbase", "c"), ("python", "d"), ("devel", "e")] {
        run(&cd, "strata", tag, id, &["/bin/true"]);
    }
    store.fsck_clean();
    drop(cd);
    assert!(serve.stop().success());
}

/// Scratch labels passed by `ctr run --snapshotter-label`, as a user would.
struct Scratch<'a> {
    cd: &'a Containerd,
    root: PathBuf,
    image: String,
}

impl Scratch<'_> {
    fn id(name: &str) -> String {
        format!("{name}-{}", std::process::id())
    }

    fn start(&self, name: &str, labels: &[&str]) -> Output {
        let id = Self::id(name);
        let mut args = vec!["run", "-d", "--snapshotter", "strata"];
        for label in labels {
            args.extend(["--snapshotter-label", label]);
        }
        args.extend([self.image.as_str(), &id, "sleep", "600"]);
        self.cd.try_ctr(&args)
    }

    fn exec(&self, name: &str, script: &str) -> String {
        static EXECS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let exec_id = format!("x{}", EXECS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.cd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            &Self::id(name),
            "sh",
            "-c",
            script,
        ])
    }

    fn stop(&self, name: &str) {
        let id = Self::id(name);
        self.cd.ctr(&["task", "kill", "-s", "KILL", &id]);
        for _ in 0..50 {
            if self.cd.try_ctr(&["task", "rm", &id]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.cd.ctr(&["containers", "rm", &id]);
        self.collect();
    }

    /// containerd removes snapshots in its GC: run one now, the way
    /// `ctr leases delete --sync` does. Its Cleanup call follows.
    fn collect(&self) {
        let lease = self.cd.ctr(&["leases", "create"]);
        self.cd.ctr(&["leases", "delete", "--sync", lease.trim()]);
    }

    /// Filesystem size in KiB as the container sees its rootfs.
    fn df_kib(&self, name: &str) -> u64 {
        let out = self.exec(name, "df -k / | tail -1");
        out.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Scratch mounts, loop devices and files strata still holds.
    fn leftovers(&self) -> Vec<String> {
        let root = self.root.display().to_string();
        let mut out: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("{root}/scratch")))
            .map(|l| format!("mount: {l}"))
            .collect();
        let loops = std::process::Command::new("losetup").arg("-a").output().unwrap();
        out.extend(
            String::from_utf8_lossy(&loops.stdout)
                .lines()
                .filter(|l| l.contains(&root))
                .map(|l| format!("loop: {l}")),
        );
        for dir in ["scratch/files", "scratch/templates"] {
            if let Ok(entries) = std::fs::read_dir(self.root.join(dir)) {
                let files = entries.flatten().map(|e| e.path().display().to_string());
                out.extend(files.filter(|f| !f.ends_with(".lock")));
            }
        }
        out
    }
}

/// The size column of `ctr snapshots usage KEY` ("1.0 GiB", "976.3 MiB").
fn usage_bytes(out: &str) -> u64 {
    let line = out.lines().nth(1).unwrap_or_default();
    let fields: Vec<&str> = line.split_whitespace().collect();
    let value: f64 = fields[1].parse().unwrap();
    let unit = match fields[2] {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit {other} in {out}"),
    };
    (value * unit) as u64
}

#[test]
fn scratch_labels_through_ctr() {
    const SIZE: &str = "containerd.io/snapshot/strata.rootfs.size-gb";
    const REUSE: &str = "containerd.io/snapshot/io.microsoft.container.storage.reuse-scratch=true";
    const LOCATION: &str = "containerd.io/snapshot/io.microsoft.container.storage.rootfs.location";
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let cd = Containerd::start(&short_dir(&store), &socket);
    pull(&cd, "strata", "minbase");
    let s = Scratch {
        cd: &cd,
        root: store.root(),
        image: image("minbase"),
    };

    // Refused labels: ctr reports the error and nothing is created.
    let owner_label = format!("containerd.io/snapshot/io.microsoft.owner.key={}", Scratch::id("pod"));
    let outside = format!("{LOCATION}={}", store.dir.path().display());
    for (name, labels, want) in [
        ("zero", vec![format!("{SIZE}=0")], "invalid argument"),
        ("huge", vec![format!("{SIZE}=100000")], "invalid argument"),
        ("place", vec![format!("{SIZE}=1"), outside], "invalid argument"),
        ("orphan", vec![REUSE.to_owned(), owner_label.clone()], "not found"),
    ] {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let out = s.start(name, &labels);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{name} was accepted");
        assert!(err.contains(want), "{name}: {err}");
        let _ = cd.try_ctr(&["containers", "rm", &Scratch::id(name)]);
        assert_eq!(s.leftovers(), Vec::<String>::new(), "{name} left something");
    }

    // 1 GiB: the container sees a 1 GiB rootfs and 1.2 GiB does not fit.
    let one = format!("{SIZE}=1");
    let out = s.start("pod", &[&one]);
    assert!(out.status.success(), "{out:?}");
    let kib = s.df_kib("pod");
    assert!((900_000..=1 << 20).contains(&kib), "rootfs size {kib} KiB");
    let fill = s.exec(
        "pod",
        "dd if=/dev/zero of=/fill bs=1M count=1230 conv=fsync 2>&1; echo rc=$?",
    );
    eprintln!("dd of 1.2 GiB in a 1 GiB scratch:\n{fill}");
    assert!(
        fill.contains("No space left on device") && fill.contains("rc=1"),
        "{fill}"
    );
    let usage = cd.ctr(&["snapshots", "--snapshotter", "strata", "usage", &Scratch::id("pod")]);
    eprintln!("{usage}");
    let used = usage_bytes(&usage);
    assert!((900 << 20..=1 << 30).contains(&used), "usage about 1 GiB: {usage}");
    s.exec("pod", "rm /fill");

    // Two sidecars share the pod's scratch: own uppers, one budget.
    for side in ["side-a", "side-b"] {
        let out = s.start(side, &[REUSE, &owner_label]);
        assert!(out.status.success(), "{side}: {out:?}");
        assert_eq!(s.df_kib(side), kib, "{side} shares the pod's filesystem");
        s.exec(side, &format!("echo {side} > /own"));
    }
    assert_eq!(s.exec("side-a", "cat /own").trim(), "side-a");
    assert_eq!(s.exec("side-b", "cat /own").trim(), "side-b");
    assert!(s.exec("pod", "ls /own 2>&1 || true").contains("No such file"));
    s.exec("pod", "dd if=/dev/zero of=/half bs=1M count=600 conv=fsync 2>/dev/null");
    let second = s.exec(
        "side-a",
        "dd if=/dev/zero of=/half bs=1M count=600 conv=fsync 2>&1; echo rc=$?",
    );
    assert!(second.contains("No space left on device"), "one budget: {second}");
    s.exec("side-a", "rm -f /half");

    // The pod goes first; the sidecars keep working, then go too.
    s.stop("pod");
    let keys: Vec<String> = serve.client().list().into_iter().map(|i| i.name).collect();
    assert!(
        !keys.iter().any(|k| k.ends_with(&format!("/{}", Scratch::id("pod")))),
        "containerd's GC removed the pod's snapshot from strata: {keys:?}"
    );
    assert_eq!(s.exec("side-a", "echo still > /after; cat /after").trim(), "still");
    s.stop("side-a");
    assert_eq!(s.exec("side-b", "cat /own").trim(), "side-b");
    s.stop("side-b");
    assert_eq!(
        s.leftovers(),
        Vec::<String>::new(),
        "no mount, loop device, file or template"
    );
    store.fsck_clean();
    drop(cd);
    assert!(serve.stop().success());
}

/// The hostile layouts containerd can fetch (skopeo refuses to push the
/// ones whose blobs are missing or do not match their digests).
const HOSTILE_THROUGH_CONTAINERD: &[&str] = &[
    "dotdot",
    "dotdot-nested",
    "absolute",
    "symlink-escape",
    "hardlink-missing",
    "hardlink-later",
    "bomb",
    "whiteout-root",
    "hardlink-dir",
    "overlay-xattr",
    "device",
    "deep",
    "longname",
];

#[test]
fn hostile_images_through_containerd_stay_inside_the_store() {
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let cd = Containerd::start(&short_dir(&store), &socket);
    pull(&cd, "strata", "minbase");
    let outside = [
        PathBuf::from("/etc/strata-escape"),
        PathBuf::from("/tmp/strata-escape"),
        PathBuf::from("/escape"),
        store.root().join("escape"),
        store.root().join("../escape"),
    ];
    eprintln!("hostile images through containerd + strata:");
    for case in HOSTILE_THROUGH_CONTAINERD {
        let reference = format!("{}/hostile/{case}:latest", registry());
        let layout = format!("oci:{}:latest", hostile_dir().join(case).display());
        let pushed = std::process::Command::new("skopeo")
            .args(["copy", "-q", "--preserve-digests", "--dest-tls-verify=false", &layout])
            .arg(format!("docker://{reference}"))
            .status()
            .unwrap();
        assert!(pushed.success(), "pushing {case}");
        let out = cd.try_ctr(&["images", "pull", "--plain-http", "--snapshotter", "strata", &reference]);
        let outcome = if out.status.success() { "pulled" } else { "refused" };
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!("{case:<18} {outcome:<8} {}", err.lines().last().unwrap_or_default());
        for path in &outside {
            assert!(!path.exists(), "{case} created {}", path.display());
        }
        store.fsck_clean();
    }

    // Whatever containerd unpacked, strata's committed snapshots read as the
    // layer says: no smuggled overlay xattr redirects a file elsewhere.
    let mut c = serve.client();
    let mut victims = 0;
    for_each_committed_view(&mut c, &store.dir.path().join("view"), |name, view| {
        if let Ok(body) = std::fs::read(view.join("victim.txt")) {
            assert_eq!(body, b"looks harmless\n", "{name}");
            victims += 1;
        }
    });
    eprintln!("overlay-xattr snapshots read back as their layer: {victims}");
    assert!(
        victims > 0,
        "containerd unpacked overlay-xattr, so a snapshot holds victim.txt"
    );
    store.fsck_clean();

    // The store still serves the good image.
    let (_, out) = run(
        &cd,
        "strata",
        "minbase",
        "after-hostile",
        &["cat", "/etc/debian_version"],
    );
    assert!(!out.trim().is_empty());
    drop(c);
    drop(cd);
    assert!(serve.stop().success());
}

/// Writes an OCI layout at `dir` (tag `latest`) holding one gzip layer: a
/// chain `d/d/…` `depth` levels deep with a file and a FIFO at the bottom.
fn deep_chain_layout(dir: &Path, depth: usize) {
    let script = r#"
import gzip, hashlib, io, json, os, sys, tarfile
out, depth = sys.argv[1], int(sys.argv[2])
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
    def add(name, kind, data=b""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.size = kind, 0o755, 1704067200, len(data)
        tar.addfile(ti, io.BytesIO(data) if data else None)
    path = ""
    for _ in range(depth):
        path += "d/"
        add(path, tarfile.DIRTYPE)
    add(path + "f", tarfile.REGTYPE, b"bottom" * 200)
    add(path + "p", tarfile.FIFOTYPE)
    add("top", tarfile.REGTYPE, b"top\n")
diff = raw.getvalue()
layer = gzip.compress(diff, mtime=0)
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)
def put(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(blobs, d), "wb").write(data)
    return "sha256:" + d
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(diff).hexdigest()]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": put(layer), "size": len(layer)}]}).encode()
index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": put(manifest), "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
json.dump(index, open(os.path.join(out, "index.json"), "w"))
json.dump({"imageLayoutVersion": "1.0.0"}, open(os.path.join(out, "oci-layout"), "w"))
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .arg(depth.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// How deep `d/d/…` goes below `top`, and whether `f` is at the bottom.
fn chain_depth(top: &Path) -> (usize, bool) {
    use rustix::fs::{openat, Mode, OFlags};
    let mut at = rustix::fs::open(top, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    let mut depth = 0;
    while let Ok(next) = openat(&at, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()) {
        at = next;
        depth += 1;
    }
    (
        depth,
        rustix::fs::statat(&at, "f", rustix::fs::AtFlags::empty()).is_ok(),
    )
}

/// The image of issue 17: one gzip layer with a 1,900-level directory chain,
/// which once killed `strata serve` at the layer's Commit (stack overflow).
/// Then a container makes a 1,500-level chain in its rootfs and its
/// snapshot is committed with `ctr snapshots commit`. serve survives both
/// and answers the next call.
#[test]
fn deep_chains_through_containerd_keep_serve_alive() {
    let started = Instant::now();
    let mark = |what: &str| eprintln!("{:>7.1}s {what}", started.elapsed().as_secs_f64());
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let cd = Containerd::start(&short_dir(&store), &socket);
    let layout = store.dir.path().join("deep-layout");
    deep_chain_layout(&layout, 1900);
    let reference = format!("{}/strata-deep/chain1900:latest", registry());
    let pushed = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{reference}"))
        .status()
        .unwrap();
    assert!(pushed.success(), "pushing the deep image");
    mark("pushed");
    cd.ctr(&["images", "pull", "--plain-http", "--snapshotter", "strata", &reference]);
    mark("pulled");
    let listed = cd.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
    assert!(listed.contains("Committed"), "{listed}");
    // The committed layer holds the whole chain.
    let mut c = serve.client();
    let mut found = false;
    for_each_committed_view(&mut c, &store.dir.path().join("deep-view"), |_, view| {
        found |= view.join("top").exists() && chain_depth(view) == (1900, true);
    });
    assert!(found, "no committed snapshot holds the 1,900-level chain");
    mark("checked");

    // A container's own 1,500-level chain, committed while it runs.
    pull(&cd, "strata", "minbase");
    let id = format!("deep-{}", std::process::id());
    cd.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "strata",
        &image("minbase"),
        &id,
        "sh",
        "-c",
        "i=0; while [ $i -lt 1500 ]; do mkdir d && cd d || exit 1; i=$((i+1)); done; mkfifo p; touch /made; sleep 600",
    ]);
    let mut made = false;
    for _ in 0..600 {
        let out = cd.try_ctr(&["tasks", "exec", "--exec-id", "probe", &id, "test", "-e", "/made"]);
        if out.status.success() {
            made = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(made, "the container did not finish its chain");
    mark("chain made");
    cd.ctr(&["snapshots", "--snapshotter", "strata", "commit", "deep-committed", &id]);
    let listed = cd.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
    assert!(listed.contains("deep-committed"), "{listed}");
    mark("committed");
    let _ = cd.try_ctr(&["tasks", "kill", "-s", "KILL", &id]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = cd.try_ctr(&["tasks", "delete", &id]);
    let _ = cd.try_ctr(&["containers", "delete", &id]);
    cd.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
    drop(c);
    mark("cleaned");
    drop(cd);
    mark("containerd stopped");
    assert!(serve.stop().success(), "strata serve did not survive");
}

/// Mounts a View of every committed snapshot on `view` in turn, runs
/// `check` with its name and the mount, then takes the View away.
fn for_each_committed_view(c: &mut strata_tests::serve::Client, view: &Path, mut check: impl FnMut(&str, &Path)) {
    for info in c.list() {
        if info.kind != strata_grpc::api::snapshots::Kind::Committed as i32 {
            continue;
        }
        let key = format!("{}-view", info.name);
        let mounts = c.view(&key, &info.name).unwrap();
        strata_tests::serve::mount_all(&mounts, view);
        check(&info.name, view);
        unmount_under(view);
        c.remove(&key).unwrap();
    }
}

/// The EROFS mounts under `root/mnt` and the device each is mounted from.
fn image_mount_sources(root: &Path) -> Vec<String> {
    let mnt = root.join("mnt");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let target = Path::new(fields.get(4)?);
            let (_, rest) = line.split_once(" - ")?;
            let mut tail = rest.split(' ');
            (target.parent() == Some(mnt.as_path()) && tail.next()? == "erofs")
                .then(|| tail.next().map(str::to_owned))?
        })
        .collect()
}

/// Loop devices whose backing file lies under `root`.
fn loop_devices_under(root: &Path) -> usize {
    let out = std::process::Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "BACK-FILE"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|file| Path::new(file.trim()).starts_with(root))
        .count()
}

/// The lower rungs of the kernel ladder, forced by config as on a kernel
/// without EROFS-from-file and `lowerdir+`: images mount through loop
/// devices and overlays name their data-only lower with `::`. containerd
/// pulls and runs an image, its rootfs is the image, and GC frees the
/// devices with the mounts.
#[test]
fn the_loop_device_rung_pulls_and_runs_through_containerd() {
    let store = TestStore::new();
    let scratch = store.dir.path();
    let socket = scratch.join("s.sock");
    let config = scratch.join("loop.toml");
    std::fs::write(&config, "[kernel]\nerofs = \"loop\"\nlowers = \"double-colon\"\n").unwrap();
    let serve = Serve::start(&store.root(), &socket, Some(&config), &[]);
    assert!(
        serve
            .log_text()
            .contains("ladder=erofs=loop lowers=double-colon verity=off"),
        "{}",
        serve.log_text()
    );
    let cd = Containerd::start(&short_dir(&store), &socket);
    pull(&cd, "strata", "python");
    let (_, out) = run(&cd, "strata", "python", "loop-py", &["python3", "-c", "print(6*7)"]);
    assert_eq!(out.trim(), "42");

    let long = format!("loop-long-{}", std::process::id());
    cd.ctr(&[
        "run",
        "-d",
        "--snapshotter",
        "strata",
        &image("python"),
        &long,
        "sleep",
        "300",
    ]);
    let sources = image_mount_sources(&store.root());
    assert!(!sources.is_empty(), "the running container's image is mounted");
    assert!(
        sources.iter().all(|s| s.starts_with("/dev/loop")),
        "every image mount is on a loop device: {sources:?}"
    );
    let rootfs = cd
        .dir
        .join("state/io.containerd.runtime.v2.task/default")
        .join(&long)
        .join("rootfs");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let overlay = mountinfo
        .lines()
        .find(|l| l.contains(&format!(" {} ", rootfs.display())))
        .expect("the container's rootfs is mounted");
    assert!(overlay.contains("::") && !overlay.contains("datadir+"), "{overlay}");
    assert_tree_matches(&expected_tree("python", scratch), &rootfs, scratch);
    remove_container(&cd, &long);
    store.fsck_clean();

    cd.ctr(&["images", "rm", "--sync", &image("python")]);
    let mut left = (usize::MAX, usize::MAX);
    for _ in 0..100 {
        left = (store.objects().len(), loop_devices_under(&store.root()));
        if left == (0, 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(left, (0, 0), "objects and loop devices left after GC and Cleanup");
    drop(cd);
    assert!(serve.stop().success());
}

/// `strata version` prints the rungs in use, forced or chosen; a rung the
/// kernel lacks, forced by config, stops serve with the missing feature
/// named; a rung that is no rung is a config error.
#[test]
fn version_prints_the_ladder_and_a_forced_rung_the_kernel_lacks_is_refused() {
    let store = TestStore::new();
    store.ok(&["gc"]); // creates the store, where fs-verity is tried
    let auto = store.ok(&["version"]);
    assert!(
        auto.contains("kernel ladder: erofs=file lowers=append verity=off"),
        "{auto}"
    );
    assert!(auto.contains("no-fs-verity"), "this kernel has no fs-verity: {auto}");
    for (config, ladder) in [
        ("erofs = \"loop\"", "erofs=loop lowers=append"),
        ("lowers = \"double-colon\"", "erofs=file lowers=double-colon"),
        (
            "erofs = \"loop\"\nlowers = \"double-colon\"",
            "erofs=loop lowers=double-colon",
        ),
    ] {
        store.set_config(&format!("[kernel]\n{config}\n"));
        let out = store.ok(&["version"]);
        assert!(out.contains(&format!("kernel ladder: {ladder} verity=off")), "{out}");
    }
    store.set_config("[kernel]\nverity = \"require\"\n");
    let stderr = store.fails(&["serve", "--address", "/nonexistent/s.sock"]);
    assert!(
        stderr.contains("[kernel] verity = \"require\" is set, but this kernel lacks fs-verity"),
        "{stderr}"
    );
    store.set_config("[kernel]\nerofs = \"fuse\"\n");
    let out = store.run(&["images"]);
    assert_eq!(out.status.code(), Some(2), "a config error is a usage error: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("erofs = \"fuse\": expected one of \"auto\", \"file\", \"loop\""),
        "{stderr}"
    );
}

//! Regression tests for the defects a new user saw (issue 17, item 8): one
//! test per defect, through the `strata` binary.

use std::path::Path;
use std::process::{Command, Output};

use strata_tests::*;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Runs strata with exactly these arguments (no harness flags).
fn strata(args: &[&str]) -> Output {
    Command::new(strata_bin()).args(args).output().unwrap()
}

fn erofs_mounts_at(path: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let wanted = path.to_str().unwrap();
    text.lines()
        .filter(|l| l.split(' ').nth(4) == Some(wanted) && l.contains(" - erofs "))
        .count()
}

fn image_mount(store: &TestStore) -> std::path::PathBuf {
    let mnt = store.root().join("mnt");
    let mut dirs: Vec<_> = std::fs::read_dir(mnt).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.retain(|d| d.is_dir());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs.pop().unwrap()
}

#[test]
fn two_mounts_of_one_image_unmount_in_any_order() {
    let store = TestStore::new();
    let image = layout_ref("minbase");
    store.ok(&["pull", &image]);
    let a = store.mount(&image);
    let b = store.mount(&image);
    let meta = image_mount(&store);
    assert_eq!(erofs_mounts_at(&meta), 1);
    store.umount(&a);
    // The shared EROFS mount stays while b uses it.
    assert_eq!(erofs_mounts_at(&meta), 1, "the image mount went with the first umount");
    assert!(b.join("etc/os-release").exists());
    store.umount(&b);
    assert_eq!(erofs_mounts_at(&meta), 0, "the last umount leaves the image mounted");
    store.ok(&["rmi", &image]);
    let gc = store.ok(&["gc"]);
    assert!(store.images().is_empty(), "one gc frees the image: {gc}");
}

#[test]
fn concurrent_mounts_do_not_stack_the_image_mount() {
    let store = TestStore::new();
    let image = layout_ref("minbase");
    store.ok(&["pull", &image]);
    let targets: Vec<_> = (0..6)
        .map(|i| {
            let t = store.dir.path().join(format!("race-{i}"));
            std::fs::create_dir_all(&t).unwrap();
            t
        })
        .collect();
    let spawned: Vec<_> = targets
        .iter()
        .map(|t| {
            Command::new(strata_bin())
                .arg("--root")
                .arg(store.root())
                .args(["mount", &image])
                .arg(t)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in spawned {
        assert!(child.wait().unwrap().success());
    }
    let meta = image_mount(&store);
    assert_eq!(erofs_mounts_at(&meta), 1, "the EROFS mount was stacked");
    for t in &targets {
        store.ok(&["umount", t.to_str().unwrap()]);
    }
    assert_eq!(erofs_mounts_at(&meta), 0);
}

#[test]
fn fsck_repair_fixes_the_stray_files_fsck_reports() {
    let store = TestStore::new();
    store.ok(&["pull", &layout_ref("minbase")]);
    let root = store.root();
    let fan = std::fs::read_dir(root.join("objects"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(fan.join("not-a-digest"), b"x").unwrap();
    std::fs::create_dir(fan.join("stray-dir")).unwrap();
    std::fs::write(root.join("objects/stray-top"), b"x").unwrap();
    std::fs::write(root.join("images/junk"), b"x").unwrap();
    let out = store.run(&["fsck"]);
    assert_eq!(code(&out), Some(1));
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(report.matches("stray file").count(), 4, "{report}");
    assert!(report.contains("stray file objects/stray-top\n"), "{report}");
    let repaired = store.ok(&["fsck", "--repair"]);
    assert!(repaired.contains(", 4 repaired"), "{repaired}");
    store.fsck_clean();
}

#[test]
fn a_reference_without_a_tag_names_the_same_image_in_pull_mount_and_rmi() {
    let store = TestStore::new();
    let bare = format!("{}/strata/minbase", registry());
    store.ok(&["pull", &bare]);
    let images = store.ok(&["images"]);
    assert!(images.contains(&format!("{bare}:latest")), "{images}");
    // The tagged form is the same image: up to date.
    assert!(store.ok(&["pull", &format!("{bare}:latest")]).contains("is up to date"));
    let mnt = store.mount(&bare);
    assert!(mnt.join("etc/os-release").exists());
    store.umount(&mnt);
    assert!(store.ok(&["rmi", &bare]).contains(&format!("removed {bare}:latest")));
    // Docker Hub names need `library/`: the request shows the path asked for.
    let out = store.run(&["pull", "docker.io/debian:12"]);
    assert_ne!(code(&out), Some(0));
    let err = stderr(&out);
    assert!(err.contains("docker.io/library/debian:12"), "{err}");
}

#[test]
fn network_errors_name_their_cause_once() {
    let store = TestStore::new();
    let err = store.fails(&["pull", "127.0.0.1:1/x/y:1"]);
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.matches("os error 111").count(), 1, "{err}");
    let err = store.fails(&["pull", &format!("{}/strata/minbase:no-such-tag", registry())]);
    assert!(
        err.contains(&format!("tag no-such-tag not found in {}/strata/minbase", registry())),
        "{err}"
    );
    let err = store.fails(&["pull", "no-such-host.invalid/x/y:1"]);
    assert!(err.contains("dns error") || err.contains("lookup"), "{err}");
    let err = store.fails(&["pull", "oci:/nonexistent-layout:x"]);
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
}

#[test]
fn version_reports_the_store_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none");
    let out = strata(&["--root", missing.to_str().unwrap(), "version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(missing)"), "{text}");
    assert!(!missing.exists(), "version created the store");

    let newer = dir.path().join("newer");
    std::fs::create_dir(&newer).unwrap();
    std::fs::write(newer.join("version"), "2\n").unwrap();
    let out = strata(&["--root", newer.to_str().unwrap(), "version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(unsupported layout 2"), "{text}");

    let store = TestStore::new();
    store.ok(&["images"]);
    assert!(store.ok(&["version"]).contains("(layout 1)"));
    let ro = ReadOnlyView::new(&store);
    let out = strata(&["--root", ro.path(), "version"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(layout 1, read-only)"), "{text}");
}

#[test]
fn config_mistakes_are_reported_all_and_a_named_config_must_exist() {
    let store = TestStore::new();
    let missing = store.dir.path().join("missing.toml");
    let out = strata(&["--config", missing.to_str().unwrap(), "images"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("missing.toml"), "{}", stderr(&out));

    let out = store.run(&["--log-level", "loud", "images"]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("invalid log level \"loud\""), "{}", stderr(&out));

    store.set_config("log_level = \"chatty\"\nbogus = 1\n[serve]\nsocket = 7\n");
    let out = store.run(&["images"]);
    assert_eq!(code(&out), Some(2));
    let err = stderr(&out);
    let at = |s: &str| err.find(s).unwrap_or_else(|| panic!("{s:?} missing: {err}"));
    assert!(at("line 1: log_level") < at("line 2: bogus") && at("line 2: bogus") < at("line 4: serve.socket"));
}

#[test]
fn root_on_a_directory_that_is_no_store_is_refused() {
    let store = TestStore::new();
    let foreign = store.dir.path().join("home");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let out = strata(&["--root", foreign.to_str().unwrap(), "pull", &layout_ref("minbase")]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("is not empty and holds no strata store"),
        "{}",
        stderr(&out)
    );
    let names: Vec<_> = std::fs::read_dir(&foreign)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["notes.txt"], "a store was created inside it");
}

/// The test store's root bind-mounted read-only elsewhere.
struct ReadOnlyView(tempfile::TempDir);

impl ReadOnlyView {
    fn new(store: &TestStore) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = |args: &[&str]| assert!(Command::new("mount").args(args).status().unwrap().success());
        let (from, to) = (store.root(), dir.path().to_owned());
        ok(&["--bind", from.to_str().unwrap(), to.to_str().unwrap()]);
        ok(&["-o", "remount,ro,bind", to.to_str().unwrap()]);
        ReadOnlyView(dir)
    }

    fn path(&self) -> &str {
        self.0.path().to_str().unwrap()
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn reading_verbs_work_on_a_read_only_store() {
    let store = TestStore::new();
    let image = layout_ref("minbase");
    store.ok(&["pull", &image]);
    let ro = ReadOnlyView::new(&store);
    for verb in [&["images"][..], &["df"], &["fsck"], &["df", "--json"]] {
        let mut args = vec!["--root", ro.path()];
        args.extend_from_slice(verb);
        let out = strata(&args);
        assert!(out.status.success(), "{verb:?}: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        if verb == ["images"] {
            assert!(text.contains(&image), "{text}");
        }
    }
}

#[test]
fn a_malformed_reference_is_a_usage_error() {
    let store = TestStore::new();
    let out = store.run(&["pull", "Not/A Reference"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("invalid image reference"));
}

#[test]
fn mounting_without_root_says_root_is_needed() {
    let store = TestStore::new();
    let image = layout_ref("minbase");
    store.ok(&["pull", &image]);
    let target = store.dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let chown = |p: &Path| {
        let status = Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(p)
            .status()
            .unwrap();
        assert!(status.success());
    };
    chown(&store.root());
    chown(&target);
    let status = Command::new("chmod")
        .args(["755"])
        .arg(store.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["mount", &image])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("mounting needs root (CAP_SYS_ADMIN)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn serve_names_its_socket_at_the_default_log_level() {
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let mut child = Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .args(["serve", "--address"])
        .arg(&socket)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read in a thread: a serve that prints nothing must fail, not hang.
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(err), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains(socket.to_str().unwrap()), "{line:?}");
}

#[test]
fn readme_commands_need_no_sudo() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let commands: Vec<&str> = readme
        .lines()
        .filter(|l| l.trim_start().starts_with("sudo ") || l.contains("`sudo "))
        .collect();
    assert!(commands.is_empty(), "{commands:?}");
    for script in ["scripts/setup", "scripts/test"] {
        assert!(
            readme.contains(&format!("\n{script}\n")),
            "{script} is not a README command"
        );
        assert!(repo.join(script).is_file());
    }
}

#[test]
fn fsck_names_the_images_a_damaged_erofs_image_belongs_to() {
    let store = TestStore::new();
    let image = layout_ref("minbase");
    store.ok(&["pull", &image]);
    store.ok(&["pull", "--name", "second-name", &image]);
    let (name, _) = store.images().into_iter().next().unwrap();
    let path = store.root().join("images").join(name);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let out = store.run(&["fsck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("is corrupt"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&image) && line.contains("second-name"), "{line}");
}

#[test]
fn df_counts_an_image_once_and_shows_what_gc_would_free() {
    let store = TestStore::new();
    store.ok(&["pull", &layout_ref("minbase")]);
    let df = |store: &TestStore| -> serde_json::Value { serde_json::from_str(&store.ok(&["df", "--json"])).unwrap() };
    let one = df(&store);
    assert_eq!(one["reclaimable_bytes"].as_u64(), Some(0));
    for n in 0..3 {
        store.ok(&["pull", "--name", &format!("alias-{n}"), &layout_ref("minbase")]);
    }
    let four = df(&store);
    assert_eq!(four["logical_bytes"], one["logical_bytes"]);
    assert_eq!(four["dedup_ratio"], one["dedup_ratio"]);
    for name in [
        layout_ref("minbase"),
        "alias-0".into(),
        "alias-1".into(),
        "alias-2".into(),
    ] {
        store.ok(&["rmi", &name]);
    }
    let gone = df(&store);
    let reclaimable = gone["reclaimable_bytes"].as_u64().unwrap();
    assert!(reclaimable > 0, "{gone}");
    assert!(gone["reclaimable_images"].as_u64() == Some(1), "{gone}");
    assert!(store.ok(&["df"]).contains("reclaimable by `strata gc`"));
}

/// `strata umount` of the last CLI mount of an image leaves the image's
/// EROFS mount alone while a snapshot of `strata serve` uses that image:
/// containerd mounts the snapshot's overlay after Mounts returns.
#[test]
fn umount_leaves_an_image_mount_that_serve_handed_out() {
    use strata_tests::serve::{labels, mount_all, Serve};
    require_root();
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let mut c = serve.client();
    // A committed snapshot with one file, and an active child over it.
    let first = c.prepare("ns/1/a", "", labels(&[])).unwrap();
    let upper = store.dir.path().join("upper");
    mount_all(&first, &upper);
    std::fs::write(upper.join("f"), vec![5u8; 9000]).unwrap();
    strata_sys::unmount(&upper, false).unwrap();
    c.commit("ns/2/base", "ns/1/a").unwrap();
    let handed_out = c.prepare("ns/3/child", "ns/2/base", labels(&[])).unwrap();
    assert_eq!(handed_out[0].r#type, "overlay", "{handed_out:?}");

    // The same EROFS image under a name the CLI mounts.
    let db = strata_store::Store::open(&store.root()).unwrap();
    let snapshot_root = db
        .roots()
        .unwrap()
        .into_iter()
        .find(|r| r.starts_with("snapshot:"))
        .unwrap();
    let id = db.root_image(&snapshot_root).unwrap().unwrap();
    let record = strata_store::ImageRecord {
        name: "from-a-snapshot".into(),
        manifest_digest: format!("sha256:{}", "0".repeat(64)),
        config_digest: format!("sha256:{}", "0".repeat(64)),
        erofs: id.to_hex(),
        layers: Vec::new(),
        created_unix: 0,
        logical_bytes: 9000,
        files: 1,
        inodes: 2,
        broken: None,
    };
    db.commit_image(&record, &db.image_objects(&id).unwrap()).unwrap();
    let image_mount = db.image_mount_path(&id);
    assert!(
        strata_sys::is_mountpoint(&image_mount),
        "serve mounted the parent image"
    );

    let target = store.mount("from-a-snapshot");
    store.umount(&target);
    assert!(
        strata_sys::is_mountpoint(&image_mount),
        "umount took away the image mount serve handed to containerd"
    );
    // containerd can still mount what it was given, and sees the file.
    let rootfs = store.dir.path().join("rootfs");
    mount_all(&handed_out, &rootfs);
    assert_eq!(std::fs::read(rootfs.join("f")).unwrap(), vec![5u8; 9000]);
    strata_sys::unmount(&rootfs, false).unwrap();
    drop(c);
    assert!(serve.stop().success());
}

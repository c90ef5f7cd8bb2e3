//! Writable scratch through the gRPC API, as containerd calls it: size
//! limits, refused labels, pod sharing and rollback at every Prepare step.
//! Real `strata serve`, real ext4 scratch files on loop devices, real mounts;
//! the quota mechanisms (btrfs qgroups, project quotas) in scratch_quota.rs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use strata_tests::serve::{labels, mount_all, unmount_under, Serve};
use strata_tests::*;
use tonic::Code;

const SIZE: &str = "containerd.io/snapshot/io.microsoft.container.storage.rootfs.size-gb";
const OWN_SIZE: &str = "containerd.io/snapshot/strata.rootfs.size-gb";
const LOCATION: &str = "containerd.io/snapshot/io.microsoft.container.storage.rootfs.location";
const REUSE: &str = "containerd.io/snapshot/io.microsoft.container.storage.reuse-scratch";
const OWNER: &str = "containerd.io/snapshot/io.microsoft.owner.key";

/// A temp dir with a store root, a socket, an allowed location and a config.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        require_root();
        let base = PathBuf::from(std::env::var("STRATA_TEST_TMP").unwrap_or_else(|_| "/var/tmp/strata-tests".into()));
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        std::fs::create_dir_all(dir.path().join("allowed")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        let config = format!(
            "[scratch]\nmax_size_gb = 64\nlocations = [\"{}\"]\n",
            dir.path().join("allowed").display()
        );
        std::fs::write(dir.path().join("config.toml"), config).unwrap();
        Env { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn serve(&self, env: &[(&str, &str)]) -> Serve {
        Serve::start(
            &self.path("root"),
            &self.path("s.sock"),
            Some(&self.path("config.toml")),
            env,
        )
    }

    /// Everything a snapshot could leave behind: files, dirs, mounts and
    /// loop devices under the temp dir.
    fn traces(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["root/snapshots", "root/scratch/mnt", "root/scratch/files", "allowed"] {
            walk_files(&self.path(sub), &mut out);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let base = self.dir.path().to_string_lossy().into_owned();
        out.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&base))
                // serve's own LAZY, mounted again by every serve.
                .filter(|l| !l.contains(" - fuse.strata-lazy "))
                .map(|l| format!("mount: {l}")),
        );
        let loops = Command::new("losetup").arg("-a").output().unwrap();
        let loops = String::from_utf8_lossy(&loops.stdout).into_owned();
        out.extend(
            loops
                .lines()
                .filter(|l| l.contains(&base))
                .map(|l| format!("loop: {l}")),
        );
        out.retain(|t| !t.contains("/templates/template-"));
        out.sort();
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}

fn walk_files(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        out.push(e.path().display().to_string());
        if e.file_type().is_ok_and(|t| t.is_dir()) && !strata_sys::is_mountpoint(&e.path()) {
            walk_files(&e.path(), out);
        }
    }
}

fn code(r: Result<impl std::fmt::Debug, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

fn write_until_full(dir: &Path, name: &str, limit: u64) -> (u64, std::io::Error) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join(name)).unwrap();
    let chunk = vec![0xabu8; 4 << 20];
    let mut written = 0u64;
    while written < limit {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => return (written, e),
        }
    }
    panic!("wrote {written} bytes into {name} without running out of space");
}

#[test]
fn size_label_limits_the_scratch_and_formats_once() {
    let env = Env::new();
    let serve = env.serve(&[]);
    let mut c = serve.client();
    let plain = c.prepare("ns/1/plain", "", labels(&[])).unwrap();
    let one_gib = c.prepare("ns/2/c1", "", labels(&[(SIZE, "1")])).unwrap();
    let mnt = env.path("mnt");
    mount_all(&one_gib, &mnt);
    let (written, err) = write_until_full(&mnt, "fill", 1_288_490_189);
    assert_eq!(err.raw_os_error(), Some(28), "ENOSPC, got {err}");
    assert!(written < 1 << 30, "at most 1 GiB fits: {written}");
    let (size, inodes) = c.usage("ns/2/c1").unwrap();
    eprintln!("1 GiB scratch full after {written} bytes; usage {size} bytes, {inodes} inodes");
    assert!(size > 900 << 20 && size <= 1 << 30, "usage is about 1 GiB: {size}");
    unmount_under(&mnt);

    // The store and other snapshots are unharmed.
    let plain_mnt = env.path("plain");
    mount_all(&plain, &plain_mnt);
    std::fs::write(plain_mnt.join("ok"), b"still writable").unwrap();
    unmount_under(&plain_mnt);

    // 20 GiB twice: one format, and each Prepare is quick.
    let mut times = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        c.prepare(&format!("ns/{}/big{i}", 10 + i), "", labels(&[(OWN_SIZE, "20")]))
            .unwrap();
        times.push(started.elapsed());
    }
    eprintln!("20 GiB Prepare times: {times:?}");
    let log = serve.log_text();
    assert_eq!(
        log.matches("formatted scratch template").count(),
        2,
        "1 GiB once, 20 GiB once: {log}"
    );
    let files = env.path("root/scratch/files");
    for f in std::fs::read_dir(&files).unwrap().flatten() {
        let allocated = std::os::unix::fs::MetadataExt::blocks(&f.metadata().unwrap()) * 512;
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(
            allocated < 64 << 20 || name == "2.img",
            "{name}: {allocated} bytes allocated"
        );
    }
    drop(c);
    let status = serve.stop();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}

#[test]
fn bad_labels_are_refused_and_leave_nothing() {
    let env = Env::new();
    let serve = env.serve(&[]);
    let mut c = serve.client();
    c.prepare("ns/1/owner", "", labels(&[(SIZE, "1")])).unwrap();
    c.prepare("other/2/twin", "", labels(&[(SIZE, "1")])).unwrap();
    let link = env.path("allowed/escape");
    std::os::unix::fs::symlink(env.path("outside"), &link).unwrap();
    let before = env.traces();
    let outside = env.path("outside").display().to_string();
    let dotdot = format!("{}/../outside", env.path("allowed").display());
    let link = link.display().to_string();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Code);
    let cases: Vec<Case> = vec![
        ("zero", vec![(SIZE, "0")], Code::InvalidArgument),
        ("negative", vec![(SIZE, "-1")], Code::InvalidArgument),
        ("fraction", vec![(SIZE, "1.5")], Code::InvalidArgument),
        ("word", vec![(SIZE, "big")], Code::InvalidArgument),
        ("over max", vec![(SIZE, "65")], Code::InvalidArgument),
        (
            "outside",
            vec![(SIZE, "1"), (LOCATION, &outside)],
            Code::InvalidArgument,
        ),
        ("dotdot", vec![(SIZE, "1"), (LOCATION, &dotdot)], Code::InvalidArgument),
        (
            "symlink out",
            vec![(SIZE, "1"), (LOCATION, &link)],
            Code::InvalidArgument,
        ),
        ("no owner key", vec![(REUSE, "true")], Code::InvalidArgument),
        (
            "missing owner",
            vec![(REUSE, "true"), (OWNER, "nobody")],
            Code::NotFound,
        ),
        (
            "owner elsewhere",
            vec![(REUSE, "true"), (OWNER, "twin")],
            Code::NotFound,
        ),
    ];
    for (i, (name, pairs, want)) in cases.iter().enumerate() {
        let got = code(c.prepare(&format!("ns/{}/bad", 100 + i), "", labels(pairs)));
        assert_eq!(got, *want, "{name}");
        assert_eq!(env.traces(), before, "{name} left something behind");
    }
    // Two snapshots whose keys end in /owner: ambiguous.
    c.prepare("ns/3/owner", "", labels(&[(SIZE, "1")])).unwrap();
    let before = env.traces();
    let got = code(c.prepare("ns/4/sharer", "", labels(&[(REUSE, "true"), (OWNER, "owner")])));
    assert_eq!(got, Code::InvalidArgument, "ambiguous owner");
    assert_eq!(env.traces(), before);
    assert_eq!(c.list().len(), 3, "no refused request made a snapshot");
    // A location inside the allow-list works and holds the file.
    let inside = env.path("allowed").display().to_string();
    c.prepare("ns/5/placed", "", labels(&[(SIZE, "1"), (LOCATION, &inside)]))
        .unwrap();
    let mut placed = Vec::new();
    walk_files(&env.path("allowed"), &mut placed);
    assert!(
        placed.iter().any(|p| p.ends_with(".img") && p.contains("/files/")),
        "{placed:?}"
    );
}

#[test]
fn shared_scratch_lives_until_the_last_sharer() {
    let env = Env::new();
    let serve = env.serve(&[]);
    let mut c = serve.client();
    let before = env.traces();
    let share = labels(&[(REUSE, "true"), (OWNER, "pod-owner")]);
    let keys = ["ns/1/pod-owner", "ns/2/sharer-a", "ns/3/sharer-b"];
    let mut mounts = vec![c.prepare(keys[0], "", labels(&[(SIZE, "1")])).unwrap()];
    mounts.push(c.prepare(keys[1], "", share.clone()).unwrap());
    mounts.push(c.prepare(keys[2], "", share).unwrap());
    let dirs: Vec<PathBuf> = (0..3).map(|i| env.path(&format!("m{i}"))).collect();
    for (m, d) in mounts.iter().zip(&dirs) {
        mount_all(m, d);
    }
    for (i, d) in dirs.iter().enumerate() {
        std::fs::write(d.join(format!("own-{i}")), vec![i as u8; 100 << 20]).unwrap();
    }
    for (i, d) in dirs.iter().enumerate() {
        let names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![format!("own-{i}")], "each sees only its own upper");
    }
    // One budget: the owner's usage counts all three files.
    let (used, _) = c.usage(keys[0]).unwrap();
    assert!(used >= 300 << 20, "shared filesystem usage {used}");
    let (own, _) = c.usage(keys[1]).unwrap();
    assert!((100 << 20..150 << 20).contains(&own), "a sharer's own upper: {own}");
    let (written, err) = write_until_full(&dirs[1], "fill", 1 << 30);
    assert_eq!(err.raw_os_error(), Some(28));
    assert!(written < 800 << 20, "the sharers share 1 GiB: {written}");
    std::fs::remove_file(dirs[1].join("fill")).unwrap();

    unmount_under(&dirs[0]);
    c.remove(keys[0]).unwrap();
    std::fs::write(dirs[1].join("after-owner"), b"still here").unwrap();
    assert_eq!(std::fs::read(dirs[2].join("own-2")).unwrap().len(), 100 << 20);
    unmount_under(&dirs[1]);
    c.remove(keys[1]).unwrap();
    std::fs::write(dirs[2].join("last"), b"x").unwrap();
    unmount_under(&dirs[2]);
    c.remove(keys[2]).unwrap();
    assert_eq!(env.traces(), before, "nothing remains: no mount, loop device or file");
}

#[test]
fn every_prepare_step_rolls_back() {
    let env = Env::new();
    let points = [
        "prepare.after_mkdir",
        "prepare.after_template",
        "prepare.after_clone",
        "prepare.after_mount",
        "prepare.before_db",
    ];
    for (i, point) in points.iter().enumerate() {
        let before = {
            let serve = env.serve(&[]);
            let traces = env.traces();
            drop(serve);
            traces
        };
        let spec = format!("{point}=error");
        let serve = env.serve(&[("STRATA_FAILPOINTS", &spec)]);
        let mut c = serve.client();
        let key = format!("ns/{i}/c");
        let err = c.prepare(&key, "", labels(&[(SIZE, "1")])).unwrap_err();
        assert_eq!(err.code(), Code::Internal, "{point}: {err:?}");
        assert!(err.message().contains(point), "{point}: {}", err.message());
        assert_eq!(env.traces(), before, "{point} left a trace");
        assert!(c.list().is_empty(), "{point}: no DB row");
        drop(c);
        serve.stop();
        let serve = env.serve(&[]);
        let mut c = serve.client();
        c.prepare(&key, "", labels(&[(SIZE, "1")])).unwrap();
        c.remove(&key).unwrap();
        drop(c);
        serve.stop();
    }
}

fn templates(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["root/scratch/templates", "allowed"] {
        walk_files(&env.path(dir), &mut out);
    }
    out.retain(|t| t.contains("/template-"));
    out
}

#[test]
fn kill_9_keeps_live_scratches_and_cleanup_frees_templates() {
    let env = Env::new();
    let serve = env.serve(&[]);
    let mut c = serve.client();
    let inside = env.path("allowed").display().to_string();
    // The location's own dirs stay once made; make them before the baseline.
    c.prepare("ns/0/warm", "", labels(&[(SIZE, "2"), (LOCATION, &inside)]))
        .unwrap();
    c.remove("ns/0/warm").unwrap();
    let before = env.traces();
    let keys = ["ns/1/pod", "ns/2/sidecar", "ns/3/placed"];
    let share = labels(&[(REUSE, "true"), (OWNER, "pod")]);
    let mut mounts = vec![c.prepare(keys[0], "", labels(&[(SIZE, "1")])).unwrap()];
    mounts.push(c.prepare(keys[1], "", share).unwrap());
    mounts.push(
        c.prepare(keys[2], "", labels(&[(SIZE, "2"), (LOCATION, &inside)]))
            .unwrap(),
    );
    let dirs: Vec<PathBuf> = (0..3).map(|i| env.path(&format!("m{i}"))).collect();
    for (i, (m, d)) in mounts.iter().zip(&dirs).enumerate() {
        mount_all(m, d);
        std::fs::write(d.join("data"), vec![i as u8 + 1; 10 << 20]).unwrap();
    }
    drop(c);
    drop(serve); // SIGKILL, with the containers' overlays still mounted

    let serve = env.serve(&[]);
    let mut c = serve.client();
    for (i, (key, d)) in keys.iter().zip(&dirs).enumerate() {
        assert_eq!(
            std::fs::read(d.join("data")).unwrap(),
            vec![i as u8 + 1; 10 << 20],
            "live mount of {key}"
        );
        unmount_under(d);
        // The mounts strata hands out after the restart show the same data.
        mount_all(&c.mounts(key).unwrap(), d);
        assert_eq!(std::fs::read(d.join("data")).unwrap().len(), 10 << 20, "{key}");
        unmount_under(d);
    }
    let (shared, _) = c.usage(keys[0]).unwrap();
    assert!(shared >= 20 << 20, "owner and sidecar in one filesystem: {shared}");
    for key in keys {
        c.remove(key).unwrap();
    }
    assert_eq!(env.traces(), before, "Remove after the restart cleans everything");

    // Templates outlive their snapshots until Cleanup.
    let kept = templates(&env);
    assert_eq!(kept.len(), 2, "1 GiB default place, 2 GiB in the location: {kept:?}");
    c.cleanup().unwrap();
    assert_eq!(
        templates(&env),
        Vec::<String>::new(),
        "Cleanup removes unused templates"
    );
    c.prepare("ns/4/again", "", labels(&[(SIZE, "1")])).unwrap();
    c.cleanup().unwrap();
    assert_eq!(templates(&env).len(), 1, "Cleanup keeps a template in use");
    c.remove("ns/4/again").unwrap();
    drop(c);
    assert!(serve.stop().success());
}

mod scratch_quota;

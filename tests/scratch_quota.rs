//! Sized scratch without loop devices, where the store's filesystem
//! enforces a size: a btrfs subvolume with a qgroup limit, an ext4 or XFS
//! directory with a project quota (not run here: this kernel has no
//! CONFIG_QFMT_V2, so ext4 refuses `prjquota`, nor CONFIG_XFS_QUOTA; the
//! planner and the recorded quota calls are tested in strata-scratch).
//! Each test makes its own loop-mounted filesystem under STRATA_TEST_TMP
//! and runs `strata serve` with its store on it; "no loop device" means
//! none besides that filesystem's own.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreFs {
    /// btrfs with `btrfs quota enable`.
    BtrfsQuota,
    /// btrfs whose quotas are off: the loop fallback.
    BtrfsPlain,
    /// ext4 without project quotas: the loop fallback.
    Ext4Plain,
}

/// A loop-mounted filesystem holding a store root and an allowed location.
struct FsEnv {
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl FsEnv {
    fn new(fs: StoreFs) -> FsEnv {
        require_root();
        let base = PathBuf::from(std::env::var("STRATA_TEST_TMP").unwrap_or_else(|_| "/var/tmp/strata-tests".into()));
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(base).unwrap();
        let env = FsEnv { dir };
        let disk = env.path("disk.img");
        std::fs::File::create(&disk).unwrap().set_len(6 << 30).unwrap();
        match fs {
            StoreFs::BtrfsQuota | StoreFs::BtrfsPlain => run(Command::new("mkfs.btrfs").arg("-q").arg(&disk)),
            StoreFs::Ext4Plain => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk)),
        };
        let mnt = env.path("mnt");
        std::fs::create_dir(&mnt).unwrap();
        run(Command::new("mount").args(["-o", "loop"]).arg(&disk).arg(&mnt));
        if fs == StoreFs::BtrfsQuota {
            run(Command::new("btrfs").args(["quota", "enable"]).arg(&mnt));
        }
        std::fs::create_dir(env.store("allowed")).unwrap();
        let config = format!(
            "[scratch]\nmax_size_gb = 64\nlocations = [\"{}\"]\n",
            env.store("allowed").display()
        );
        std::fs::write(env.path("config.toml"), config).unwrap();
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A path on the test filesystem.
    fn store(&self, rel: &str) -> PathBuf {
        self.path("mnt").join(rel)
    }

    fn serve(&self, env: &[(&str, &str)]) -> Serve {
        Serve::start(
            &self.store("root"),
            &self.path("s.sock"),
            Some(&self.path("config.toml")),
            env,
        )
    }

    /// Loop devices besides the test filesystem's own.
    fn scratch_loops(&self) -> Vec<String> {
        let loops = run(Command::new("losetup").arg("-a"));
        let base = self.dir.path().to_string_lossy().into_owned();
        loops
            .lines()
            .filter(|l| l.contains(&base) && !l.contains("disk.img"))
            .map(str::to_owned)
            .collect()
    }

    /// Everything a snapshot could leave: files, dirs and links of the
    /// store's snapshots and scratch (templates aside), subvolumes, mounts
    /// and loop devices.
    fn traces(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["root/snapshots", "root/scratch", "allowed"] {
            walk_files(&self.store(sub), &mut out);
        }
        out.retain(|t| !t.contains("/templates"));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mnt = self.path("mnt").to_string_lossy().into_owned();
        out.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&mnt) && l.split(' ').nth(4) != Some(mnt.as_str()))
                // serve's own LAZY, mounted again by every serve.
                .filter(|l| !l.contains(" - fuse.strata-lazy "))
                .map(|l| format!("mount: {l}")),
        );
        out.extend(self.scratch_loops().into_iter().map(|l| format!("loop: {l}")));
        out.sort();
        out
    }

    /// Bytes allocated on the test filesystem, after a sync.
    fn allocated(&self) -> u64 {
        let fd = std::fs::File::open(self.path("mnt")).unwrap();
        rustix::fs::syncfs(&fd).unwrap();
        let st = rustix::fs::statvfs(self.path("mnt")).unwrap();
        (st.f_blocks - st.f_bfree) * st.f_frsize
    }
}

impl Drop for FsEnv {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}

/// Ran out of room: btrfs qgroups and ext4 project quotas say EDQUOT,
/// XFS project quotas and full filesystems ENOSPC.
fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(122 | 28))
}

fn p50(mut times: Vec<std::time::Duration>) -> std::time::Duration {
    times.sort();
    times[times.len() / 2]
}

/// Prepares and removes `n` scratches of 1 GiB; the Prepare times.
fn prepare_times(c: &mut strata_tests::serve::Client, n: usize) -> Vec<std::time::Duration> {
    let mut times = Vec::new();
    for i in 0..n {
        let key = format!("ns/{}/timed{i}", 1000 + i);
        let started = Instant::now();
        c.prepare(&key, "", labels(&[(SIZE, "1")])).unwrap();
        times.push(started.elapsed());
        c.remove(&key).unwrap();
    }
    times
}

#[test]
fn btrfs_qgroup_limits_a_scratch_without_a_loop_device() {
    let env = FsEnv::new(StoreFs::BtrfsQuota);
    let serve = env.serve(&[]);
    let mut c = serve.client();
    // The scratch's own dirs stay once made; make them before the baseline.
    c.prepare("ns/0/warm", "", labels(&[(SIZE, "1")])).unwrap();
    c.remove("ns/0/warm").unwrap();
    let before = env.traces();
    let owner = c.prepare("ns/1/pod", "", labels(&[(SIZE, "1")])).unwrap();
    assert_eq!(env.scratch_loops(), Vec::<String>::new(), "no loop device");
    let log = serve.log_text();
    assert!(log.contains("mechanism=btrfs-qgroup"), "{log}");
    // A sharer keeps its dirs in the owner's subvolume, under its limit.
    let share = labels(&[(REUSE, "true"), (OWNER, "pod")]);
    let sharer = c.prepare("ns/2/sidecar", "", share).unwrap();
    let dirs: Vec<PathBuf> = (0..2).map(|i| env.path(&format!("m{i}"))).collect();
    mount_all(&owner, &dirs[0]);
    mount_all(&sharer, &dirs[1]);
    // qgroups do not enter statfs: df shows the whole filesystem.
    let st = rustix::fs::statvfs(&dirs[0]).unwrap();
    assert!(st.f_blocks * st.f_frsize > 4 << 30, "df shows the filesystem");

    let (written, err) = write_until_full(&dirs[0], "fill", 1_288_490_189);
    assert!(is_full(&err), "EDQUOT, got {err}");
    assert!((900 << 20..1 << 30).contains(&written), "about 1 GiB fits: {written}");
    let (size, inodes) = c.usage("ns/1/pod").unwrap();
    eprintln!("1 GiB qgroup full after {written} bytes; usage {size} bytes, {inodes} inodes");
    assert!(size > 900 << 20 && size <= 1 << 30, "usage is about 1 GiB: {size}");

    // fsck, beside the server, finds the live subvolume in order.
    let fsck = Command::new(strata_bin())
        .arg("--root")
        .arg(env.store("root"))
        .arg("--config")
        .arg(env.path("config.toml"))
        .arg("fsck")
        .output()
        .unwrap();
    assert!(fsck.status.success(), "{fsck:?}");
    let full = std::fs::write(dirs[1].join("more"), vec![1u8; 64 << 20]).unwrap_err();
    assert!(is_full(&full), "the sidecar shares the pod's budget: {full}");
    std::fs::remove_file(dirs[0].join("fill")).unwrap();
    let _ = std::fs::remove_file(dirs[1].join("more"));
    rustix::fs::syncfs(std::fs::File::open(&dirs[0]).unwrap()).unwrap();
    std::fs::write(dirs[1].join("more"), vec![1u8; 64 << 20]).unwrap();
    assert_eq!(
        std::fs::read_dir(&dirs[0]).unwrap().count(),
        0,
        "each sees only its own upper"
    );

    // The owner goes first; the subvolume stays for the sidecar.
    unmount_under(&dirs[0]);
    c.remove("ns/1/pod").unwrap();
    std::fs::write(dirs[1].join("after-owner"), b"still here").unwrap();
    unmount_under(&dirs[1]);
    // A commit reads the upper dir in the subvolume, then the last user's
    // release deletes the subvolume.
    c.commit("ns/sidecar-image", "ns/2/sidecar").unwrap();
    let view = c.view("ns/3/view", "ns/sidecar-image").unwrap();
    mount_all(&view, &dirs[1]);
    assert_eq!(std::fs::read(dirs[1].join("after-owner")).unwrap(), b"still here");
    assert_eq!(std::fs::metadata(dirs[1].join("more")).unwrap().len(), 64 << 20);
    unmount_under(&dirs[1]);
    c.remove("ns/3/view").unwrap();
    c.remove("ns/sidecar-image").unwrap();
    assert_eq!(env.traces(), before, "no subvolume, link, mount or loop device left");
    let subvolumes = run(Command::new("btrfs").args(["subvolume", "list"]).arg(env.path("mnt")));
    assert!(!subvolumes.contains("dirs/"), "{subvolumes}");

    let times = prepare_times(&mut c, 21);
    let p50 = p50(times.clone());
    eprintln!("btrfs-qgroup Prepare (1 GiB): p50 {p50:?}, all {times:?}");
    assert!(p50 < std::time::Duration::from_millis(50), "p50 {p50:?}");
    assert_eq!(env.traces(), before);
    drop(c);
    assert!(serve.stop().success());
}

#[test]
fn btrfs_rollback_restart_location_and_fallback_to_loop() {
    let env = FsEnv::new(StoreFs::BtrfsQuota);
    // The location's own dirs stay once made; make them before the baseline.
    let inside = env.store("allowed").display().to_string();
    let placed = labels(&[(SIZE, "1"), (LOCATION, &inside)]);
    {
        let serve = env.serve(&[]);
        let mut c = serve.client();
        c.prepare("ns/0/warm", "", placed.clone()).unwrap();
        c.remove("ns/0/warm").unwrap();
        c.prepare("ns/0/warm", "", labels(&[(SIZE, "1")])).unwrap();
        c.remove("ns/0/warm").unwrap();
        serve.stop();
    }
    let before = env.traces();
    for (i, point) in ["prepare.after_mkdir", "prepare.after_limit", "prepare.before_db"]
        .iter()
        .enumerate()
    {
        let spec = format!("{point}=error");
        let serve = env.serve(&[("STRATA_FAILPOINTS", &spec)]);
        let mut c = serve.client();
        for (j, l) in [labels(&[(SIZE, "1")]), placed.clone()].into_iter().enumerate() {
            let err = c.prepare(&format!("ns/{i}{j}/c"), "", l).unwrap_err();
            assert_eq!(err.code(), Code::Internal, "{point}: {err:?}");
            assert!(err.message().contains(point), "{point}: {}", err.message());
            assert_eq!(env.traces(), before, "{point} left a trace");
        }
        serve.stop();
    }
    // Killed after the subvolume was made, before the DB knew it: the
    // next start deletes it.
    let serve = env.serve(&[("STRATA_FAILPOINTS", "prepare.before_db=abort")]);
    let mut c = serve.client();
    assert!(c.prepare("ns/9/c", "", placed.clone()).is_err());
    assert_ne!(env.traces(), before, "the kill left a subvolume");
    drop(c);
    drop(serve);
    let serve = env.serve(&[]);
    assert_eq!(env.traces(), before, "a restart removes it");

    // A location on the same filesystem gets a subvolume there.
    let mut c = serve.client();
    c.prepare("ns/10/placed", "", placed.clone()).unwrap();
    let mut files = Vec::new();
    walk_files(&env.store("allowed"), &mut files);
    assert!(files.iter().any(|f| f.contains("/dirs/")), "{files:?}");
    assert_eq!(env.scratch_loops(), Vec::<String>::new());
    let version = run(Command::new(strata_bin())
        .arg("--root")
        .arg(env.store("root"))
        .arg("--config")
        .arg(env.path("config.toml"))
        .arg("version"));
    assert_eq!(version.matches(": btrfs-qgroup").count(), 2, "{version}");
    c.remove("ns/10/placed").unwrap();

    // Quotas off: a loop scratch, and the log and `strata version` say why.
    run(Command::new("btrfs").args(["quota", "disable"]).arg(env.path("mnt")));
    c.prepare("ns/11/looped", "", labels(&[(SIZE, "1")])).unwrap();
    assert_eq!(env.scratch_loops().len(), 1, "the loop fallback");
    let log = serve.log_text();
    assert!(log.contains("loop (btrfs without quotas"), "{log}");
    let version = run(Command::new(strata_bin())
        .arg("--root")
        .arg(env.store("root"))
        .arg("version"));
    assert!(version.contains("loop (btrfs without quotas"), "{version}");
    c.remove("ns/11/looped").unwrap();
    let mut after_loop = before.clone();
    after_loop.push(env.store("root/scratch/files").display().to_string());
    after_loop.sort();
    assert_eq!(env.traces(), after_loop, "only the loop scratch's files dir stays");
    drop(c);
    assert!(serve.stop().success());
}

/// Appends a byte to a 512 MiB file of the parent image in a container
/// with a 1 GiB size label; the time and the bytes the store's filesystem
/// allocated for it. One JSON row per store for bench/scratch-clone.
fn copy_up(fs: StoreFs, mechanism: &str) -> (std::time::Duration, u64) {
    use std::io::Write;
    let env = FsEnv::new(fs);
    let serve = env.serve(&[]);
    let mut c = serve.client();
    let base = c.prepare("ns/1/base", "", labels(&[])).unwrap();
    let mnt = env.path("m");
    mount_all(&base, &mnt);
    let mut f = std::fs::File::create(mnt.join("big")).unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    for _ in 0..512 {
        f.write_all(&chunk).unwrap();
    }
    drop(f);
    unmount_under(&mnt);
    c.commit("ns/base", "ns/1/base").unwrap();
    let child = c.prepare("ns/2/c", "ns/base", labels(&[(SIZE, "1")])).unwrap();
    let loops = env.scratch_loops().len();
    mount_all(&child, &mnt);
    let before = env.allocated();
    let started = Instant::now();
    let mut f = std::fs::OpenOptions::new().append(true).open(mnt.join("big")).unwrap();
    f.write_all(b"!").unwrap();
    let took = started.elapsed();
    f.sync_all().unwrap();
    drop(f);
    let grew = env.allocated().saturating_sub(before);
    assert_eq!(std::fs::metadata(mnt.join("big")).unwrap().len(), (512 << 20) + 1);
    unmount_under(&mnt);
    let log = serve.log_text();
    assert!(log.contains(&format!("mechanism={mechanism}")), "{log}");
    println!(
        "{{\"copy_up\": \"{fs:?}\", \"mechanism\": \"{mechanism}\", \"loop_devices\": {loops}, \"ms\": {:.1}, \"allocated_mib\": {:.2}}}",
        took.as_secs_f64() * 1e3,
        grew as f64 / f64::from(1u32 << 20)
    );
    c.remove("ns/2/c").unwrap();
    drop(c);
    serve.stop();
    (took, grew)
}

#[test]
fn btrfs_copy_up_is_a_reflink_beside_the_loop_fallbacks() {
    let (took, grew) = copy_up(StoreFs::BtrfsQuota, "btrfs-qgroup");
    assert!(grew <= 1 << 20, "a reflink allocates no data: {grew} bytes");
    assert!(took < std::time::Duration::from_millis(200), "{took:?}");
    // The loop scratch copies every byte, whatever the store's filesystem.
    for fs in [StoreFs::BtrfsPlain, StoreFs::Ext4Plain] {
        let (_, grew) = copy_up(fs, "loop");
        assert!(grew >= 500 << 20, "{fs:?}: a full copy: {grew} bytes");
    }
}

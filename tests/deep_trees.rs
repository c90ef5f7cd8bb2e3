//! `strata serve` stays up while a process keeps writing directory chains
//! (some deeper than an EROFS image holds) and FIFOs into an active
//! snapshot's mounted upper dir and the snapshot is committed under it:
//! every Commit either succeeds or is refused with FailedPrecondition, and
//! serve answers the next call. Kill-free: serve must never die.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{mkdirat, mknodat, openat, FileType, Mode, OFlags};
use strata_tests::serve::{labels, mount_all, unmount_under, Serve};
use strata_tests::*;

fn dir_fd(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )?)
}

/// Makes a chain `depth` levels deep under `top/name` with a FIFO at the
/// bottom, through fds; stops quietly if the tree goes away (the upper dir
/// is taken away by the commit).
fn chain(top: &Path, name: &str, depth: usize, stop: &AtomicBool) -> std::io::Result<()> {
    let mut at = dir_fd(top)?;
    mkdirat(&at, name, Mode::from_raw_mode(0o755))?;
    at = openat(&at, name, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    for _ in 0..depth {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        mkdirat(&at, "d", Mode::from_raw_mode(0o755))?;
        at = openat(&at, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
    }
    mknodat(&at, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0)?;
    Ok(())
}

/// Writes chains of growing depth and FIFOs into `top` until `stop`.
fn keep_writing(top: &Path, stop: &AtomicBool) -> usize {
    let depths = [300, 1500, 2100, 3000];
    let mut made = 0;
    while !stop.load(Ordering::Relaxed) {
        let depth = depths[made % depths.len()];
        let _ = chain(top, &format!("chain{made}"), depth, stop);
        let _ = mknodat(
            rustix::fs::CWD,
            top.join(format!("fifo{made}")),
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        );
        made += 1;
    }
    made
}

#[test]
fn serve_survives_deep_chains_and_fifos_written_during_commits() {
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let mut c = serve.client();
    let mnt = store.dir.path().join("mnt");
    let mut parent = String::new();
    let (mut committed, mut refused) = (0, 0);
    for round in 0..12 {
        let key = format!("active-{round}");
        let mounts = c.prepare(&key, &parent, labels(&[])).unwrap();
        mount_all(&mounts, &mnt);
        let stop = Arc::new(AtomicBool::new(false));
        // Every third round already holds a chain deeper than EROFS holds.
        if round % 3 == 2 {
            chain(&mnt, "deep", 2100, &stop).unwrap();
        }
        let writer = {
            let (mnt, stop) = (mnt.clone(), Arc::clone(&stop));
            std::thread::spawn(move || keep_writing(&mnt, &stop))
        };
        // Let the writer get some chains deep before the commit starts.
        std::thread::sleep(Duration::from_millis(150 + 50 * (round % 4)));
        let name = format!("committed-{round}");
        let result = c.commit(&name, &key);
        stop.store(true, Ordering::Relaxed);
        let made = writer.join().unwrap();
        unmount_under(&mnt);
        match result {
            Ok(()) => {
                committed += 1;
                parent = name;
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    tonic::Code::FailedPrecondition,
                    "round {round}: {status:?}"
                );
                assert!(!status.message().is_empty());
                refused += 1;
                c.remove(&key).unwrap();
            }
        }
        // serve answers the next call.
        let listed = c.list();
        assert!(
            parent.is_empty() || listed.iter().any(|i| i.name == parent),
            "round {round}"
        );
        eprintln!("round {round}: {made} chains written while committing");
    }
    eprintln!("{committed} commits, {refused} refused as too deep");
    assert!(refused >= 4, "the rounds with a 2,100-level chain were not all refused");
    // The last committed snapshot reads back.
    if !parent.is_empty() {
        let view = store.dir.path().join("view");
        let mounts = c.view("last-view", &parent).unwrap();
        mount_all(&mounts, &view);
        assert!(std::fs::read_dir(&view).unwrap().count() > 0);
        unmount_under(&view);
    }
    drop(c);
    assert!(serve.stop().success(), "strata serve did not stop cleanly");
}

//! kill -9 of the process serving LAZY: files a container already opened
//! keep reading (passthrough reads never reach the server); new opens fail
//! with ENOTCONN, of missing files and of fetched ones alike. The test runs
//! its own binary again as the server.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bounded, Fixture, Lowers, Server, TestFetcher, TestFile};
use strata_lazy::{LazyConfig, LazyMount};

/// Set in the child: the fixture's directory.
const SERVE_ENV: &str = "STRATA_LAZY_TEST_SERVE";
const THIS_TEST: &str = "open_files_keep_reading_after_the_server_is_killed";
const ENOTCONN: i32 = 107;

fn files() -> Vec<(&'static str, TestFile)> {
    vec![
        ("opened", TestFile::new(21, 2 << 20)),
        ("never-opened", TestFile::new(22, 100_000)),
    ]
}

#[test]
fn open_files_keep_reading_after_the_server_is_killed() {
    if let Some(dir) = std::env::var_os(SERVE_ENV) {
        return serve(PathBuf::from(dir));
    }
    let files = files();
    let lazy: Vec<(&str, &TestFile)> = files.iter().map(|(n, f)| (*n, f)).collect();
    let fx = Fixture::build(&[], &lazy, Lowers::Append, |lazy_dir, _| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", THIS_TEST, "--nocapture", "--test-threads=1"])
            .env(SERVE_ENV, lazy_dir.parent().unwrap())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server process");
        let stdout = child.stdout.take().unwrap();
        let ready = bounded(Duration::from_secs(30), move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.ends_with("lazy server ready"))
        });
        assert!(ready, "the server process did not start");
        Server::Child(child)
    });
    let opened = &files[0].1;

    let path = fx.merged.join("opened");
    let half = opened.bytes.len() / 2;
    let (file, mut first) = bounded(Duration::from_secs(20), move || {
        let mut file = File::open(path).expect("open through the child's LAZY");
        let mut first = vec![0; half];
        file.read_exact(&mut first).unwrap();
        (file, first)
    });

    let server = fx.child.as_ref().map(|c| c.id()).expect("a server process");
    let killed = Command::new("kill").args(["-9", &server.to_string()]).status().unwrap();
    assert!(killed.success());
    // Let the kernel see the server's /dev/fuse close (the connection aborts).
    std::thread::sleep(Duration::from_millis(200));

    let mut rest = bounded(Duration::from_secs(20), move || {
        let mut file = file;
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).map(|_| rest)
    })
    .expect("an open file reads on after its server died");
    first.append(&mut rest);
    assert_eq!(first, opened.bytes);

    let reopened = fx.merged.join("opened");
    let reopen = bounded(Duration::from_secs(20), move || {
        std::fs::read(reopened).map(|b| b.len())
    });
    eprintln!("after kill -9 of the server: a new open of the fetched file: {reopen:?}");
    // overlayfs keeps the data dentry it found in LAZY for as long as its
    // inode lives, so even a fetched file needs a server for new opens:
    // what the restart handover is for (docs/lazy-pulls.md).
    assert_eq!(reopen.unwrap_err().raw_os_error(), Some(ENOTCONN));

    let never = fx.merged.join("never-opened");
    let err = bounded(Duration::from_secs(20), move || std::fs::read(never)).expect_err("no server to fetch it");
    eprintln!("after kill -9 of the server: the open file read on; a new open of a missing file: {err}");
    assert_eq!(err.raw_os_error(), Some(ENOTCONN), "{err}");
    fx.unmount();
}

/// The child: serves LAZY on `dir`'s lazy dir until killed (at most 60 s).
fn serve(dir: PathBuf) {
    let files = files();
    let fetcher = TestFetcher::new(&dir.join("objects"), &dir.join("aliases"), files.iter().map(|(_, f)| f));
    let mount = LazyMount::mount(&dir.join("lazy"), fetcher, &LazyConfig::default()).expect("mount LAZY");
    for (_, file) in &files {
        mount.handle().insert(file.sha256, file.bytes.len() as u64);
    }
    println!("lazy server ready");
    std::thread::sleep(Duration::from_secs(60));
}

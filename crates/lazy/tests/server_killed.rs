//! kill -9 of the process serving LAZY, and the hand-over to a successor.
//!
//! The test process is the keeper: it mounts LAZY, creates the session
//! journal and holds both fds, so the kernel keeps the connection when the
//! server dies. It runs its own binary again as the server, passing the
//! fds down. A killed server's successor takes the session over: files
//! opened before the kill read on, an open that was waiting for a fetch
//! when the server died completes (the kernel resends it), and new opens
//! of fetched and missing files work.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{bounded, sha256, Fault, Fixture, Lowers, Server, TestFetcher, TestFile};
use strata_lazy::{create_journal, LazyConfig, LazyDevice, LazyMount, COUNTERS_XATTR};

/// Set in the child: the fixture's directory.
const SERVE_ENV: &str = "STRATA_LAZY_TEST_SERVE";
/// Set in the child: `FUSE_FD,JOURNAL_FD,CONNECTION`.
const FDS_ENV: &str = "STRATA_LAZY_TEST_FDS";
/// Set in the child: what it does (see [`Role`]).
const ROLE_ENV: &str = "STRATA_LAZY_TEST_ROLE";
const THIS_TEST: &str = "a_successor_takes_the_session_over_after_kill_9";

fn files() -> Vec<(&'static str, TestFile)> {
    vec![
        ("opened", TestFile::new(21, 2 << 20)),
        ("never-opened", TestFile::new(22, 100_000)),
        ("slow", TestFile::new(23, 300_000)),
    ]
}

/// What a child started by the keeper does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// Serves LAZY.
    Serve,
    /// Serves LAZY; its fetch of `slow` never ends.
    ServeStuck,
    /// Reads the kernel's INIT and never answers it.
    ReadInit,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Serve => "serve",
            Role::ServeStuck => "serve-stuck",
            Role::ReadInit => "read-init",
        }
    }

    fn ready_line(self) -> &'static str {
        match self {
            Role::ReadInit => "read the INIT",
            _ => "lazy server ready",
        }
    }
}

/// What the keeper holds: LAZY's connection and the journal.
struct Keeper {
    device: LazyDevice,
    journal: OwnedFd,
}

impl Keeper {
    /// Starts a server process and waits until it says it serves.
    fn start_server(&self, dir: &Path, role: Role) -> Child {
        for fd in [self.device.fd(), self.journal.as_fd()] {
            strata_sys::keep_across_exec(fd).expect("pass the fd on");
        }
        let fds = format!(
            "{},{},{}",
            self.device.fd().as_raw_fd(),
            self.journal.as_raw_fd(),
            self.device.connection()
        );
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", THIS_TEST, "--nocapture", "--test-threads=1"])
            .env(SERVE_ENV, dir)
            .env(FDS_ENV, fds)
            .env(ROLE_ENV, role.name())
            .stdout(Stdio::piped());
        let mut child = command.spawn().expect("start the server process");
        let stdout = child.stdout.take().unwrap();
        let ready = bounded(Duration::from_secs(30), move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.ends_with(role.ready_line()))
        });
        assert!(ready, "the {role:?} process did not start");
        child
    }
}

fn kill_9(child: &mut Child) {
    let killed = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
}

/// One of LAZY's counters, read as another process would.
fn counter(lazy_dir: &Path, name: &str) -> u64 {
    let dir = lazy_dir.to_owned();
    let text = bounded(Duration::from_secs(10), move || {
        let mut buf = vec![0u8; 4096];
        let n = rustix::fs::getxattr(&dir, COUNTERS_XATTR, &mut buf).expect("LAZY's counters");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    });
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no counter {name} in {text:?}"))
}

#[test]
fn a_successor_takes_the_session_over_after_kill_9() {
    if let Some(dir) = std::env::var_os(SERVE_ENV) {
        return match std::env::var(ROLE_ENV).as_deref() {
            Ok("read-init") => read_init(),
            Ok(role) => serve(PathBuf::from(dir), role == "serve-stuck"),
            Err(e) => panic!("{ROLE_ENV}: {e}"),
        };
    }
    let files = files();
    let lazy: Vec<(&str, &TestFile)> = files.iter().map(|(n, f)| (*n, f)).collect();
    let mut keeper = None;
    let mut fx = Fixture::build(&[], &lazy, Lowers::Append, |lazy_dir, _| {
        let device = LazyDevice::mount(lazy_dir).expect("mount LAZY");
        let held = Keeper {
            device,
            journal: create_journal().expect("journal"),
        };
        let child = held.start_server(lazy_dir.parent().unwrap(), Role::ServeStuck);
        keeper = Some(held);
        Server::Child(child)
    });
    let keeper = keeper.unwrap();
    let (opened, slow, never) = (&files[0].1, &files[2].1, &files[1].1);

    let path = fx.merged.join("opened");
    let half = opened.bytes.len() / 2;
    let (file, mut first) = bounded(Duration::from_secs(20), move || {
        let mut file = File::open(path).expect("open through the first server");
        let mut first = vec![0; half];
        file.read_exact(&mut first).unwrap();
        (file, first)
    });

    // An open that waits for a fetch the first server never finishes.
    let slow_path = fx.merged.join("slow");
    let (tell, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || tell.send(std::fs::read(slow_path)));
    let waiting = Instant::now();
    while counter(&fx.lazy_dir, "opens") < 2 {
        assert!(
            waiting.elapsed() < Duration::from_secs(20),
            "the open of slow never reached LAZY"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    let mut first_server = fx.child.take().expect("a server process");
    kill_9(&mut first_server);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        waited.try_recv().is_err(),
        "the waiting open is still waiting, not failed, while no server runs"
    );

    let mut successor = keeper.start_server(fx.dir.path(), Role::Serve);
    let slow_read = waited
        .recv_timeout(Duration::from_secs(20))
        .expect("the open the dead server left is answered by its successor")
        .expect("and it succeeds");
    assert_eq!(sha256(&slow_read), slow.sha256, "slow: the right bytes");

    let (file, rest) = bounded(Duration::from_secs(20), move || {
        let mut file = file;
        let mut rest = Vec::new();
        let read = file.read_to_end(&mut rest).map(|_| rest);
        (file, read)
    });
    first.append(&mut rest.expect("an open file reads on across the hand-over"));
    assert_eq!(first, opened.bytes);

    // While the first server's open of "opened" is still open, a new open:
    // the successor must answer with the first server's backing id (from
    // the journal), as the kernel refuses a second backing for an inode
    // with open files.
    let reopened = fx.merged.join("opened");
    let again = bounded(Duration::from_secs(20), move || std::fs::read(reopened)).expect("reopen after the hand-over");
    assert_eq!(sha256(&again), opened.sha256);
    drop(file);

    let never_path = fx.merged.join("never-opened");
    let bytes = bounded(Duration::from_secs(20), move || std::fs::read(never_path)).expect("a missing file opens");
    assert_eq!(sha256(&bytes), never.sha256);

    let (reads, fetches, failed) = (
        counter(&fx.lazy_dir, "reads"),
        counter(&fx.lazy_dir, "fetches_started"),
        counter(&fx.lazy_dir, "opens_failed"),
    );
    eprintln!("successor: {fetches} fetches, {reads} READs, {failed} failed opens");
    assert_eq!(reads, 0, "passthrough after the hand-over too");
    assert_eq!(fetches, 2, "slow and never-opened fetched by the successor");
    assert_eq!(failed, 0);

    kill_9(&mut successor);
    drop(keeper);
    fx.unmount();
}

/// The child: serves LAZY's session from the inherited fds until killed
/// (at most 60 s), as a fresh session or a take-over, whichever the
/// journal says.
fn serve(dir: PathBuf, stuck: bool) {
    let files = files();
    let fetcher = TestFetcher::new(&dir.join("objects"), &dir.join("aliases"), files.iter().map(|(_, f)| f));
    if stuck {
        fetcher.set_fault(files[2].1.sha256, Fault::Stuck);
    }
    let (fuse, journal, connection) = inherited();
    let device = LazyDevice::from_parts(fuse, connection, dir.join("lazy"));
    let mount = LazyMount::serve(device, Some(journal), fetcher, &LazyConfig::default()).expect("serve LAZY");
    for (_, file) in &files {
        mount.handle().insert(file.sha256, file.bytes.len() as u64);
    }
    println!("lazy server ready");
    std::thread::sleep(Duration::from_secs(60));
    std::mem::forget(mount);
}

/// The fds the keeper passed down: /dev/fuse, the journal, the connection.
fn inherited() -> (OwnedFd, OwnedFd, u32) {
    let fds = std::env::var(FDS_ENV).expect("fds");
    let [fuse, journal, connection]: [&str; 3] = fds.split(',').collect::<Vec<_>>().try_into().unwrap();
    let fuse = strata_sys::take_inherited_fd(fuse.parse().unwrap()).expect("the /dev/fuse fd");
    let journal = strata_sys::take_inherited_fd(journal.parse().unwrap()).expect("the journal fd");
    (fuse, journal, connection.parse().unwrap())
}

/// The child that dies at the worst moment of a start: it reads the
/// kernel's INIT and never answers it (it waits to be killed).
fn read_init() {
    let (fuse, _journal, _) = inherited();
    let mut request = vec![0u8; 1 << 20];
    let n = rustix::io::read(&fuse, &mut request).expect("read the INIT");
    // fuse_in_header: len u32, opcode u32 (FUSE_INIT is 26).
    let opcode = u32::from_le_bytes(request[4..8].try_into().unwrap());
    assert_eq!(opcode, 26, "{n} bytes, opcode {opcode}");
    println!("read the INIT");
    std::thread::sleep(Duration::from_secs(60));
}

/// A server killed after reading the INIT and before answering it: its
/// successor finds no session in the journal, has the kernel send the
/// INIT again, and serves.
#[test]
fn a_server_killed_before_answering_init_is_replaced() {
    let files = files();
    let lazy: Vec<(&str, &TestFile)> = files.iter().map(|(n, f)| (*n, f)).collect();
    let mut keeper = None;
    let fx = Fixture::build(&[], &lazy, Lowers::Append, |lazy_dir, _| {
        let held = Keeper {
            device: LazyDevice::mount(lazy_dir).expect("mount LAZY"),
            journal: create_journal().expect("journal"),
        };
        let dir = lazy_dir.parent().unwrap();
        let mut first = held.start_server(dir, Role::ReadInit);
        kill_9(&mut first);
        let successor = held.start_server(dir, Role::Serve);
        keeper = Some(held);
        Server::Child(successor)
    });
    let never = fx.merged.join("never-opened");
    let bytes = bounded(Duration::from_secs(20), move || std::fs::read(never)).expect("a missing file opens");
    assert_eq!(sha256(&bytes), files[1].1.sha256);
    drop(keeper);
    fx.unmount();
}

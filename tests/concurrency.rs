//! 16 gRPC clients at once prepare, commit, view, stat, walk and remove over
//! shared parents for a bounded time. Only the expected conflicts may fail
//! (AlreadyExists, NotFound, FailedPrecondition); nothing deadlocks; fsck is
//! clean afterwards. Prints the operation and error counts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_tests::serve::{labels, Client, Serve};
use strata_tests::*;
use tonic::Code;

const CLIENTS: usize = 16;
const SHARED: usize = 4;

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

fn count(counts: &Counts, what: String) {
    *counts.lock().unwrap().entry(what).or_default() += 1;
}

/// Writes a file straight into an active snapshot's upper dir, as the
/// overlay would.
fn write_upper(mounts: &[strata_grpc::api::types::Mount], name: &str) -> std::io::Result<()> {
    let m = &mounts[0];
    let upper = if m.r#type == "bind" {
        m.source.clone()
    } else {
        let opt = m.options.iter().find_map(|o| o.strip_prefix("upperdir=")).unwrap();
        opt.to_owned()
    };
    std::fs::write(std::path::Path::new(&upper).join(name), name.repeat(1000))
}

/// Prepares `own`, writes into it and commits it. Another client may
/// remove `own` between the Prepare and the write (its `remove` picks any
/// client's key): then the upper dir is gone, and Stat must agree.
fn prepare_write_commit(c: &mut Client, own: &str, parent: &str, file: &str) -> Result<(), tonic::Status> {
    let mounts = c.prepare(own, parent, labels(&[]))?;
    if let Err(e) = write_upper(&mounts, file) {
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "writing into {own}: {e}");
        let stat = c.stat(own).map(drop);
        assert_eq!(
            stat.as_ref().map_err(|s| s.code()),
            Err(Code::NotFound),
            "{own}'s upper dir is gone but Stat finds it"
        );
        return stat;
    }
    c.commit(&format!("{own}-done"), own)
}

fn worker(socket: std::path::PathBuf, me: usize, until: Instant, counts: Counts) {
    let mut c = Client::connect(&socket);
    let mut state = (me as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let parent = format!("ns/shared-{}", next(SHARED as u64));
        let own = format!("ns/c{me}-{i}");
        let any = format!("ns/c{}-{}", next(CLIENTS as u64), next(i.max(1)) + 1);
        let (op, result): (&str, Result<(), tonic::Status>) = match next(7) {
            0 | 1 => (
                "prepare+commit",
                prepare_write_commit(&mut c, &own, &parent, &format!("f{me}-{i}")),
            ),
            2 => ("view", c.view(&own, &parent).map(drop)),
            3 => ("stat", c.stat(&any).map(drop)),
            4 => ("walk", {
                c.list();
                Ok(())
            }),
            5 => ("remove", c.remove(&format!("{any}-done")).or_else(|_| c.remove(&any))),
            _ => ("remove-parent", c.remove(&parent)),
        };
        match result {
            Ok(()) => count(&counts, format!("ok {op}")),
            Err(e) => count(&counts, format!("err {op} {:?}", e.code())),
        }
    }
}

#[test]
fn sixteen_clients_at_once() {
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let mut c = serve.client();
    for p in 0..SHARED {
        let mounts = c.prepare(&format!("ns/base-{p}"), "", labels(&[])).unwrap();
        write_upper(&mounts, "base").unwrap();
        c.commit(&format!("ns/shared-{p}"), &format!("ns/base-{p}")).unwrap();
    }
    let seconds: u64 = std::env::var("STRATA_CONCURRENCY_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let until = Instant::now() + Duration::from_secs(seconds);
    let counts: Counts = Arc::default();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|me| {
            let (socket, counts) = (socket.clone(), Arc::clone(&counts));
            std::thread::spawn(move || worker(socket, me, until, counts))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(seconds + 120);
    for w in workers {
        while !w.is_finished() {
            assert!(Instant::now() < deadline, "a client is stuck: deadlock?");
            std::thread::sleep(Duration::from_millis(50));
        }
        w.join().unwrap();
    }
    let counts = counts.lock().unwrap().clone();
    let total: u64 = counts.values().sum();
    eprintln!("{CLIENTS} clients, {seconds} s, {total} operations:");
    for (what, n) in &counts {
        eprintln!("  {what}: {n}");
    }
    let expected = [Code::AlreadyExists, Code::NotFound, Code::FailedPrecondition];
    for what in counts.keys().filter(|w| w.starts_with("err ")) {
        assert!(
            expected.iter().any(|code| what.ends_with(&format!("{code:?}"))),
            "unexpected error: {what}"
        );
    }
    assert!(counts.get("ok prepare+commit").copied().unwrap_or(0) > 50, "{counts:?}");
    assert!(
        counts.contains_key("err remove-parent FailedPrecondition"),
        "{counts:?}"
    );
    c.cleanup().unwrap();
    store.fsck_clean();
    drop(c);
    assert!(serve.stop().success());
}

#[test]
fn sigterm_lets_calls_in_flight_finish() {
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let mut c = serve.client();
    // A commit that takes a while: 20,000 files to hash and move.
    let mounts = c.prepare("ns/1/big", "", labels(&[])).unwrap();
    let upper = std::path::PathBuf::from(&mounts[0].source);
    for i in 0..20_000 {
        std::fs::write(upper.join(format!("f{i}")), format!("{i}").repeat(100)).unwrap();
    }
    let committer = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = Client::connect(&socket).commit("ns/2/big", "ns/1/big");
            (result, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let status = serve.stop();
    let (result, took) = committer.join().unwrap();
    eprintln!("commit in flight during SIGTERM took {took:?}: {result:?}");
    assert!(result.is_ok(), "the call in flight finished: {result:?}");
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed on exit");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    let info = serve.client().stat("ns/2/big").unwrap();
    assert_eq!(info.kind, 3, "committed after the restart");
}

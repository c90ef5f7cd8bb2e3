//! Lazy pulls (issue 16): the family's `python` converted to eStargz and
//! zstd:chunked and pushed to the test registry; `strata pull --lazy` into
//! an empty store with `strata serve` running (which serves LAZY at
//! STORE/lazy), through the counting proxy (`fixtures/range-proxy.py`).
//! The pull reads only the TOCs and the small files; `strata mount` mounts
//! the image with four lowers; `python3 -c 'print(42)'` runs in it
//! (chroot) and the bytes fetched until it prints are counted; a read of
//! every file matches the oracle; the fetched files are ordinary objects.
//!
//! Faults: a registry answering wrong bytes (the read gets EIO, nothing is
//! stored), and one that accepts connections but never answers (EIO after
//! the configured timeout, not a hang), on the `::` rung.

mod lazy_support;

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazy_support::range_proxy::{Mode, RangeProxy};
use lazy_support::*;
use serde_json::Value;
use strata_tests::*;

#[test]
fn a_lazy_pull_mounts_from_the_tocs_and_fetches_files_on_open() {
    fixture();
    for format in FORMATS {
        let proxy = RangeProxy::start(Mode::Pass);
        let store = TestStore::new();
        // Bytes are counted per open here: no prefetch (tests/lazy_prefetch.rs).
        set_lazy_config(&store, "prefetch = false", "");
        let _cleanup = start_serve(&store);
        let reference = pushed(proxy.addr(), format);

        let started = Instant::now();
        let report = pull_lazy(&store, &reference);
        let pull_secs = started.elapsed().as_secs_f64();
        let compressed = report["announced_bytes"].as_u64().unwrap();
        let pulled = blob_bytes(&proxy);
        let missing = report["missing"].as_u64().unwrap();
        eprintln!(
            "{format}: lazy pull in {pull_secs:.2}s fetched {pulled} layer bytes ({:.2} % of {compressed} compressed), \
             {} small files inline, {missing} contents ({} bytes) left to fetch",
            percent(pulled, compressed),
            report["inline_fetched"],
            report["missing_bytes"]
        );
        assert!(missing > 100, "{format}: {report}");
        assert_eq!(report["objects"], 0, "{format}: an empty store has nothing: {report}");
        assert!(store.objects().is_empty(), "{format}: a lazy pull stores no object");
        // The TOCs and the small files only.
        assert!(pulled * 10 < compressed, "{format}: {pulled} of {compressed}");

        proxy.clear();
        let mounted = store.mount(&reference);
        let lowers = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .find(|l| l.contains(&format!(" {} ", mounted.display())))
            .unwrap()
            .to_owned();
        let root = store.root().display().to_string();
        for lower in ["objects", "sha256", "lazy"] {
            assert!(
                lowers.contains(&format!("datadir+={root}/{lower}")),
                "{format}: {lowers}"
            );
        }
        let started = Instant::now();
        let out = Command::new("chroot")
            .arg(&mounted)
            .args(["/usr/bin/python3", "-c", "print(42)"])
            .output()
            .unwrap();
        let first_secs = started.elapsed().as_secs_f64();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "42",
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let before_42 = blob_bytes(&proxy);
        let objects = store.objects().len();
        eprintln!(
            "{format}: python3 printed 42 after {first_secs:.2}s, {before_42} bytes fetched ({:.2} % of {compressed} \
             compressed; with the pull {:.2} %), {objects} objects fetched",
            percent(before_42, compressed),
            percent(before_42 + pulled, compressed)
        );
        assert!(objects > 0, "{format}: python3 needed missing files");
        // Issue 16's goal: at most 25 % of the compressed image.
        assert!(
            (before_42 + pulled) * 4 <= compressed,
            "{format}: {before_42} + {pulled} of {compressed}"
        );

        // Every file, read through the overlay, is the oracle's.
        let expected = expected_tree("python", store.dir.path());
        let started = Instant::now();
        read_all_in_parallel(&mounted);
        assert_tree_matches(&expected, &mounted, store.dir.path());
        let all = blob_bytes(&proxy);
        eprintln!(
            "{format}: read every file in {:.2}s: {all} bytes fetched in all ({:.2} % of compressed), {} objects",
            started.elapsed().as_secs_f64(),
            percent(all + pulled, compressed),
            store.objects().len()
        );
        assert_eq!(
            store.objects().len(),
            distinct_contents(&expected).len(),
            "{format}: every content over the inline limit is an object"
        );
        store.umount(&mounted);
        store.fsck_clean();

        // gc keeps what the lazily pulled image needs.
        let before = store.objects();
        store.ok(&["gc"]);
        assert_eq!(store.objects(), before, "{format}: gc took a needed object");
        store.fsck_clean();
    }
}

/// What the relay in front of the proxy does with connections.
#[derive(Clone)]
enum Target {
    To(String),
    /// Accepted, never answered.
    Silent,
}

/// A TCP relay on a fixed port, so the source a lazy pull recorded can be
/// pointed at another proxy, or at nothing that answers.
struct Relay {
    addr: String,
    target: Arc<Mutex<Target>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: Target) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap().to_string(),
            target: Arc::new(Mutex::new(target)),
            conns: Arc::default(),
            stop: Arc::default(),
        };
        let (target, conns, stop) = (relay.target.clone(), relay.conns.clone(), relay.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let to = target.lock().unwrap().clone();
                conns.lock().unwrap().push(client.try_clone().unwrap());
                let Target::To(upstream) = to else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                conns.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        relay
    }

    /// New connections go to `target`; current ones are cut.
    fn switch(&self, target: Target) {
        *self.target.lock().unwrap() = target;
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.switch(Target::Silent);
    }
}

/// The largest missing files of the oracle, as (path, sha256), one per content.
fn large_files(expected: &Path, count: usize) -> Vec<(String, String)> {
    let json: Value = serde_json::from_slice(&std::fs::read(expected).unwrap()).unwrap();
    let mut files: Vec<(u64, String, String)> = json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, e)| e["type"] == "file" && e["size"].as_u64().unwrap() > 4096)
        .map(|(p, e)| {
            (
                e["size"].as_u64().unwrap(),
                p.clone(),
                e["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    files.sort();
    let mut seen = std::collections::HashSet::new();
    files
        .into_iter()
        .rev()
        .filter(|(_, _, sha)| seen.insert(sha.clone()))
        .take(count)
        .map(|(_, p, sha)| (p, sha))
        .collect()
}

fn read_file(mounted: &Path, path: &str) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    std::fs::File::open(mounted.join(path.trim_start_matches('/')))?.read_to_end(&mut data)?;
    Ok(data)
}

#[test]
fn wrong_bytes_and_a_silent_registry_give_eio_and_store_nothing() {
    fixture();
    let format = FORMATS[0];
    let good = RangeProxy::start(Mode::Pass);
    let wrong = RangeProxy::start(Mode::WrongBytes);
    let relay = Relay::start(Target::To(good.addr().to_owned()));
    let store = TestStore::new();
    // The `::` rung here (the other test gets lowerdir+/datadir+).
    set_lazy_config(&store, "prefetch = false", "[kernel]\nlowers = \"double-colon\"\n");
    let _cleanup = start_serve(&store);
    let reference = pushed(&relay.addr, format);
    pull_lazy(&store, &reference);
    let mounted = store.mount(&reference);
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.contains(&format!(" {} ", mounted.display())))
        .unwrap()
        .to_owned();
    // Four lowers in one `lowerdir`: META by its path, the data-only ones
    // by /proc/self/fd when their paths would not fit fsconfig's 255 bytes.
    let lowerdir = line
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir: {line}"));
    assert_eq!(lowerdir.matches("::").count(), 3, "four lowers through `::`: {line}");
    assert!(
        lowerdir.starts_with(&format!("{}/mnt/", store.root().display())),
        "{line}"
    );
    let expected = expected_tree("python", store.dir.path());
    let files = large_files(&expected, 3);

    // Wrong bytes: EIO, no object, no alias.
    relay.switch(Target::To(wrong.addr().to_owned()));
    let (path, sha) = &files[0];
    let err = read_file(&mounted, path).expect_err("wrong bytes must not read");
    eprintln!("wrong bytes: reading {path}: {err}");
    assert_eq!(err.raw_os_error(), Some(5), "{path}: {err}");
    assert!(store.objects().is_empty(), "wrong bytes were stored");
    assert!(!store.root().join("sha256").join(&sha[..2]).join(&sha[2..]).exists());
    assert!(
        wrong.blob_gets().iter().any(|r| r.range.is_some()),
        "the fetch went to the lying proxy"
    );

    // A registry that never answers: EIO after the timeout, not a hang.
    relay.switch(Target::Silent);
    let (path, _) = &files[1];
    let started = Instant::now();
    let err = read_file(&mounted, path).expect_err("a silent registry must not read");
    let waited = started.elapsed();
    eprintln!(
        "silent registry: reading {path}: {err} after {:.2}s",
        waited.as_secs_f64()
    );
    assert_eq!(err.raw_os_error(), Some(5), "{path}: {err}");
    assert!(
        waited >= Duration::from_secs(FETCH_TIMEOUT) - Duration::from_millis(200),
        "{waited:?}"
    );
    assert!(waited < Duration::from_secs(FETCH_TIMEOUT + 5), "{waited:?}");
    assert!(store.objects().is_empty());

    // The registry back: the file that got wrong bytes and a fresh one
    // read, right bytes. (The silent one's fetch may still be giving up.)
    relay.switch(Target::To(good.addr().to_owned()));
    for (path, sha) in [&files[0], &files[2]] {
        let data = read_file(&mounted, path).unwrap();
        use sha2::Digest as _;
        assert_eq!(&hex(&sha2::Sha256::digest(&data)), sha, "{path}");
    }
    // Stored behind the reads (an open is answered before the publish).
    assert!(
        wait_until(Duration::from_secs(10), || store.objects().len() == 2),
        "{} objects",
        store.objects().len()
    );
    store.umount(&mounted);
    store.fsck_clean();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

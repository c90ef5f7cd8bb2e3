//! LAZY under a real overlay: files present in OBJECTS never reach FUSE,
//! missing ones are fetched once on open and read by passthrough, faults
//! give EIO in bounded time. Needs root (mounts); fails without it.

mod common;

use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{bounded, read_bounded, resident_pages, same_inode, wait_for, Fault, Fixture, Lowers, TestFile};
use strata_lazy::LazyConfig;
use strata_sys::mounts_under;

const EIO: i32 = 5;

fn config() -> LazyConfig {
    LazyConfig {
        fetch_timeout: Duration::from_secs(2),
        ..LazyConfig::default()
    }
}

#[test]
fn a_lazy_file_is_fetched_on_open_and_a_present_one_never_reaches_fuse() {
    let present = TestFile::new(1, 300_001);
    let lazy = TestFile::new(2, 200_003);
    let fx = Fixture::new(&[("present", &present)], &[("lazy", &lazy)], &config());
    let handle = fx.handle();

    // LAZY lists the missing name, and only it.
    let listed: Vec<String> = std::fs::read_dir(fx.lazy_dir.join(&lazy.sha256.to_hex()[..2]))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(listed, vec![lazy.sha256.to_hex()[2..].to_owned()]);

    assert_eq!(read_bounded(&fx.merged.join("present")).unwrap(), present.bytes);
    let after_present = handle.counts();
    assert_eq!(
        after_present.lookups, 0,
        "the present file reached FUSE: {after_present:?}"
    );
    assert_eq!(after_present.opens, 0);

    assert!(fx.nothing_stored(&lazy), "not stored before the open");
    assert_eq!(read_bounded(&fx.merged.join("lazy")).unwrap(), lazy.bytes);
    let counts = handle.counts();
    eprintln!("after reading the lazy file: {counts:?}");
    assert_eq!(counts.fetches_started, 1);
    assert_eq!(counts.fetches_failed, 0);
    assert_eq!(counts.bytes_fetched, lazy.bytes.len() as u64);
    assert_eq!(counts.lookups, 1, "one lookup, of the lazy name");
    assert_eq!(counts.lookups_unknown, 0);
    assert_eq!(counts.opens_passthrough, counts.opens);
    // The same counters as the root's xattr, for other processes.
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::getxattr(&fx.lazy_dir, strata_lazy::COUNTERS_XATTR, &mut buf).unwrap();
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), handle.counts().to_text());
    assert!(handle.counts().to_text().contains("lookups 1\n"));
    let none = rustix::fs::getxattr(&fx.lazy_dir, "user.other", &mut buf);
    assert_eq!(none, Err(rustix::io::Errno::NODATA));
    // A size query answers a bound that larger counters still fit in.
    let bound = rustix::fs::getxattr_query(&fx.lazy_dir, strata_lazy::COUNTERS_XATTR).unwrap();
    assert_eq!(bound, strata_lazy::Counts::text_bound());
    assert!(bound > n);
    let full = strata_lazy::Counts {
        lookups: u64::MAX,
        reads: u64::MAX,
        ..Default::default()
    };
    assert!(full.to_text().len() <= bound);
    let short = rustix::fs::getxattr(&fx.lazy_dir, strata_lazy::COUNTERS_XATTR, &mut buf[..n - 1]);
    assert_eq!(short, Err(rustix::io::Errno::RANGE));

    let (object, alias) = fx.stored(&lazy);
    let (object, alias) = (object.expect("object stored"), alias.expect("alias stored"));
    assert!(same_inode(&object, &alias), "the alias is a hard link to the object");
    let object_path = fx.objects.join(lazy.verity.object_path());
    assert_eq!(std::fs::read(&object_path).unwrap(), lazy.bytes);

    // Opened again: served from the store, no second fetch.
    assert_eq!(read_bounded(&fx.merged.join("lazy")).unwrap(), lazy.bytes);
    assert_eq!(handle.counts().fetches_started, 1);
    assert_eq!(fx.fetcher.calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Names the table does not list are not there.
    let unknown = TestFile::new(99, 1000).sha256;
    let err = std::fs::metadata(fx.lazy_dir.join(unknown.object_path())).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(handle.counts().lookups_unknown, 1);

    // Once stored, the caller stops listing the name; the file still reads.
    assert!(handle.remove(&lazy.sha256));
    assert_eq!(handle.listed(), 0);
    let dir = fx.lazy_dir.join(&lazy.sha256.to_hex()[..2]);
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0, "no longer listed");
    assert_eq!(read_bounded(&fx.merged.join("lazy")).unwrap(), lazy.bytes);
    // Past the entry TTL the overlay revalidates the data dentry it found
    // in LAZY: the file must not turn stale (ESTALE).
    std::thread::sleep(config().entry_ttl + Duration::from_millis(500));
    let stat = std::fs::metadata(fx.merged.join("lazy")).expect("no ESTALE after the TTL");
    assert_eq!(stat.len(), lazy.bytes.len() as u64);
    assert_eq!(read_bounded(&fx.merged.join("lazy")).unwrap(), lazy.bytes);
    assert_eq!(handle.counts().fetches_started, 1);
    fx.unmount();
}

#[test]
fn reads_pass_through_to_the_objects_page_cache() {
    let lazy = TestFile::new(3, 1 << 20);
    let fx = Fixture::new(&[], &[("lazy", &lazy)], &config());
    let handle = fx.handle();

    let path = fx.merged.join("lazy");
    let mut file = bounded(Duration::from_secs(20), move || File::open(path)).expect("open fetches the file");
    let object_path = fx.objects.join(lazy.verity.object_path());
    let before = resident_pages(&object_path);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).unwrap();
    assert_eq!(bytes, lazy.bytes);
    let after = resident_pages(&object_path);
    let pages = (lazy.bytes.len() as u64).div_ceil(4096);
    eprintln!("object pages cached: {before} after the fetch, {after} after the read ({pages} in the file)");
    assert!(
        before < pages / 4,
        "the fetcher dropped the object's pages: {before} cached"
    );
    assert_eq!(
        after, pages,
        "the read through the overlay filled the object's own page cache"
    );
    let counts = handle.counts();
    assert_eq!(counts.reads, 0, "no READ reached the server: {counts:?}");
    assert_eq!(counts.opens_passthrough, 1);
    drop(file);
    fx.unmount();
}

#[test]
fn eight_concurrent_opens_run_one_fetch() {
    const OPENS: u64 = 8;
    let lazy = TestFile::new(4, 700_000);
    let fx = Fixture::new(&[], &[("lazy", &lazy)], &config());
    let handle = fx.handle();
    // The fetch waits until all eight opens have reached LAZY.
    let (watch, all_waiting) = (handle.clone(), Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let flag = all_waiting.clone();
    fx.before_fetch(move || {
        let together = wait_for(Duration::from_secs(10), || watch.counts().opens >= OPENS);
        flag.store(together, std::sync::atomic::Ordering::SeqCst);
    });

    let start = Arc::new(Barrier::new(usize::try_from(OPENS).unwrap()));
    let readers: Vec<_> = (0..OPENS)
        .map(|_| {
            let (path, start) = (fx.merged.join("lazy"), start.clone());
            std::thread::spawn(move || {
                start.wait();
                std::fs::read(path)
            })
        })
        .collect();
    let results = bounded(Duration::from_secs(30), move || {
        readers.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>()
    });
    for result in results {
        assert_eq!(result.unwrap(), lazy.bytes);
    }
    let counts = handle.counts();
    eprintln!("eight concurrent readers: {counts:?}");
    assert!(
        all_waiting.load(std::sync::atomic::Ordering::SeqCst),
        "the opens were not all waiting at once"
    );
    assert_eq!(counts.opens, OPENS);
    assert_eq!(counts.fetches_started, 1);
    assert_eq!(fx.fetcher.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(counts.opens_passthrough, OPENS);
    fx.unmount();
}

#[test]
fn a_failing_or_lying_source_gives_eio_and_stores_nothing() {
    let failing = TestFile::new(5, 100_000);
    let lying = TestFile::new(6, 100_000);
    let fx = Fixture::new(&[], &[("failing", &failing), ("lying", &lying)], &config());
    fx.set_fault(failing.sha256, Fault::Fail);
    fx.set_fault(lying.sha256, Fault::WrongBytes);
    let handle = fx.handle();

    for (name, file) in [("failing", &failing), ("lying", &lying)] {
        let err = read_bounded(&fx.merged.join(name)).expect_err(name);
        assert_eq!(err.raw_os_error(), Some(EIO), "{name}: {err}");
        assert!(fx.nothing_stored(file), "{name}: nothing stored");
    }
    let counts = handle.counts();
    eprintln!("failing and lying sources: {counts:?}");
    assert_eq!(counts.fetches_started, 2);
    assert_eq!(counts.fetches_failed, 2);
    assert_eq!(counts.opens_failed, 2);
    assert_eq!(counts.bytes_fetched, 0);
    let leftovers: Vec<_> = walk(&fx.objects);
    assert!(leftovers.is_empty(), "OBJECTS holds {leftovers:?}");
    fx.unmount();
}

#[test]
fn a_stuck_fetch_times_out_while_another_file_opens() {
    let stuck = TestFile::new(7, 100_000);
    let other = TestFile::new(8, 100_000);
    let fx = Fixture::new(&[], &[("stuck", &stuck), ("other", &other)], &config());
    fx.set_fault(stuck.sha256, Fault::Stuck);
    let handle = fx.handle();

    let started = Instant::now();
    let stuck_path = fx.merged.join("stuck");
    let stuck_reader = std::thread::spawn(move || (std::fs::read(stuck_path), started.elapsed()));
    assert!(
        wait_for(Duration::from_secs(5), || handle.counts().fetches_started == 1),
        "the stuck fetch never started"
    );

    let other_started = Instant::now();
    assert_eq!(read_bounded(&fx.merged.join("other")).unwrap(), other.bytes);
    let other_took = other_started.elapsed();
    assert!(
        !stuck_reader.is_finished(),
        "the stuck open ended before the other file was read"
    );

    let (result, took) = bounded(Duration::from_secs(20), move || stuck_reader.join().unwrap());
    let err = result.expect_err("a stuck fetch must not give bytes");
    eprintln!("stuck open: {err} after {took:?}; the other file took {other_took:?}");
    assert_eq!(err.raw_os_error(), Some(EIO));
    assert!(took >= Duration::from_secs(2), "EIO before the timeout: {took:?}");
    assert!(took < Duration::from_secs(6), "EIO long after the timeout: {took:?}");
    assert!(
        other_took < Duration::from_secs(2),
        "the other file waited for the stuck one"
    );
    let counts = handle.counts();
    assert_eq!(counts.opens_timed_out, 1);
    assert_eq!(counts.fetches_started, 2);
    assert!(fx.nothing_stored(&stuck));
    fx.unmount();
}

#[test]
fn unmounting_leaves_no_mounts_and_ends_the_session() {
    let lazy = TestFile::new(9, 50_000);
    // `lowerdir=A::B::C::D`, the older rung, works the same.
    let fx = Fixture::with_lowers(&[], &[("lazy", &lazy)], &config(), Lowers::DoubleColon);
    let dir = fx.dir.path().to_owned();
    assert_eq!(read_bounded(&fx.merged.join("lazy")).unwrap(), lazy.bytes);
    assert_eq!(mounts_under(&dir).len(), 3, "overlay, EROFS and LAZY are mounted");
    let took = Instant::now();
    fx.unmount();
    assert!(mounts_under(&dir).is_empty(), "left: {:?}", mounts_under(&dir));
    assert!(
        took.elapsed() < Duration::from_secs(5),
        "unmount took {:?}",
        took.elapsed()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

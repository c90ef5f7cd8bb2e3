//! Prefetch and completing (issue 16): with `strata serve` running, a
//! lazily pulled image's missing contents are fetched in the background
//! (`[lazy] prefetch`), and once it misses nothing its metadata is
//! rewritten with fs-verity names: `strata images` says complete, a new
//! mount has two lowers, a mount made before keeps working and no longer
//! reaches FUSE (LAZY's counted lookups). The prefetch
//! keeps to `prefetch_bandwidth`; without prefetch nothing is fetched
//! until opened, and a plain `strata pull` completes the image.
//!
//! The family's `python` as eStargz and zstd:chunked (tests/lazy_support.rs),
//! a real registry (through the counting proxy where bytes are counted),
//! real serve, real mounts, the tree oracle.

mod lazy_support;

use std::path::Path;
use std::time::{Duration, Instant};

use lazy_support::range_proxy::{Mode, RangeProxy};
use lazy_support::*;
use serde_json::Value;
use strata_tests::*;

/// How long an image may take to complete by prefetch (python: 4 to 6 s
/// on 2 shared cores, debug build, in batches; about 100 s when each
/// content was fetched and published alone).
const COMPLETE_WAIT: Duration = Duration::from_secs(300);

/// The lowers of the overlay at `target` from its mountinfo line, and
/// whether ALIASES or LAZY is among them.
fn lazy_lowers(store: &TestStore, target: &Path) -> (String, bool) {
    let line = mount_line(target);
    let root = store.root().display().to_string();
    let lazy = line.contains(&format!("{root}/sha256")) || line.contains(&format!("{root}/lazy"));
    (line, lazy)
}

/// The new image names only stored objects: no SHA-256 name is left.
fn names_only_objects(store: &TestStore, erofs: &str) {
    let images = store.images();
    let image = images
        .get(&format!("{erofs}.erofs"))
        .unwrap_or_else(|| panic!("no image file {erofs}: {:?}", images.keys()));
    let objects = store.objects();
    let named = strata_erofs::referenced_objects(image).unwrap();
    assert!(!named.is_empty());
    for name in named {
        assert!(
            objects.contains_key(&name.to_hex()),
            "the completed image names {name}, which is no object"
        );
    }
}

#[test]
fn prefetch_fetches_the_rest_and_completes_the_image() {
    fixture();
    let format = FORMATS[0];
    let store = TestStore::new();
    set_lazy_config(&store, "prefetch = true", "");
    let _cleanup = start_serve(&store);
    let reference = pushed(&registry(), format);

    let started = Instant::now();
    let report = pull_lazy(&store, &reference);
    let missing = report["missing"].as_u64().unwrap();
    assert!(missing > 100, "{report}");
    let lazy = image_entry(&store, &reference);
    assert_eq!(lazy["complete"], false, "{lazy}");
    let old = lazy["erofs"].as_str().unwrap().to_owned();
    // A mount made while it is incomplete: four lowers.
    let before = store.mount(&reference);
    let (line, through_lazy) = lazy_lowers(&store, &before);
    assert!(through_lazy, "{line}");

    let completed = wait_until(COMPLETE_WAIT, || image_entry(&store, &reference)["complete"] == true);
    let took = started.elapsed().as_secs_f64();
    assert!(
        completed,
        "not complete after {took:.0}s: {}",
        image_entry(&store, &reference)
    );
    let entry = image_entry(&store, &reference);
    eprintln!(
        "{format}: {missing} contents ({} bytes) fetched by prefetch and the image completed {took:.1}s after the pull began",
        report["missing_bytes"]
    );
    assert_eq!(entry["missing"], 0, "{entry}");
    let new = entry["erofs"].as_str().unwrap().to_owned();
    assert_ne!(new, old, "the metadata was rewritten");
    let listing = store.ok(&["images"]);
    let row = listing.lines().find(|l| l.starts_with(&reference)).unwrap();
    assert!(row.ends_with("complete"), "{listing}");

    let expected = expected_tree("python", store.dir.path());
    assert_eq!(
        store.objects().len(),
        distinct_contents(&expected).len(),
        "every content over the inline limit is an object"
    );
    names_only_objects(&store, &new);

    // The mount made before keeps working (old metadata, ALIASES), and
    // reading every file through it reaches FUSE not once: each name is
    // found in ALIASES, before LAZY.
    let counted = lazy_counts(&store);
    assert_tree_matches(&expected, &before, store.dir.path());
    let read = lazy_counts(&store);
    eprintln!("LAZY's counters before reading every file: {counted:?}; after: {read:?}");
    let fuse = |c: &std::collections::BTreeMap<String, u64>| (c["lookups"], c["opens"], c["getxattrs"]);
    assert_eq!(fuse(&read), fuse(&counted), "{read:?}");
    // A new mount: two lowers, no ALIASES, no LAZY.
    let after = store.mount(&reference);
    let (line, through_lazy) = lazy_lowers(&store, &after);
    assert!(!through_lazy, "{line}");
    assert_eq!(line.matches("lowerdir+=").count(), 1, "{line}");
    assert_eq!(line.matches("datadir+=").count(), 1, "{line}");
    assert_tree_matches(&expected, &after, store.dir.path());
    store.umount(&after);
    store.umount(&before);
    store.fsck_clean();
    let objects = store.objects();
    store.ok(&["gc"]);
    assert_eq!(store.objects(), objects, "gc took an object the complete image needs");
    assert!(
        !store.images().contains_key(&format!("{old}.erofs")),
        "gc keeps the old metadata"
    );
    store.fsck_clean();
}

#[test]
fn prefetch_keeps_to_its_bandwidth() {
    const RATE: u64 = 128 * 1024;
    const WINDOW: Duration = Duration::from_secs(12);
    fixture();
    let format = FORMATS[0];
    let proxy = RangeProxy::start(Mode::Pass);
    let store = TestStore::new();
    set_lazy_config(&store, &format!("prefetch_bandwidth = {RATE}"), "");
    let mut cleanup = start_serve(&store);
    pull_lazy(&store, &pushed(proxy.addr(), format));
    proxy.clear();
    let started = Instant::now();
    std::thread::sleep(WINDOW);
    // No serve and no overlay: the LAZY daemon detaches and ends, and
    // its prefetch with it.
    let serve = cleanup.serve.take().unwrap();
    serve.stop();
    let lazy = store.root().join("lazy");
    assert!(
        wait_until(Duration::from_secs(60), || !lazy_mounted(&lazy)),
        "LAZY outlived serve"
    );
    let window = started.elapsed().as_secs_f64();
    let mut sizes: Vec<u64> = proxy.blob_gets().iter().map(|r| r.sent).collect();
    sizes.sort_unstable();
    let total: u64 = sizes.iter().sum();
    // A batch (about one second's bytes at this rate, or one larger
    // content) is taken from the bucket whole, before its fetch: at most
    // one per worker (2) runs ahead of the rate.
    let ahead: u64 = sizes.iter().rev().take(2).sum();
    let allowed = RATE as f64 * window;
    eprintln!(
        "{format}: prefetch at {RATE} B/s: {total} bytes in {} requests over {window:.1}s ({:.0} B/s; {:.0} B/s without the 2 largest)",
        sizes.len(),
        total as f64 / window,
        (total - ahead) as f64 / window
    );
    assert!(
        ((total - ahead) as f64) <= allowed * 1.5 + 65_536.0,
        "{total} bytes ({ahead} in the 2 largest) in {window:.1}s at {RATE} B/s"
    );
    assert!(
        total as f64 >= allowed * 0.25,
        "prefetch fetched {total} bytes in {window:.1}s"
    );
}

#[test]
fn without_prefetch_nothing_is_fetched_until_opened_and_a_plain_pull_completes() {
    fixture();
    let format = FORMATS[1];
    let proxy = RangeProxy::start(Mode::Pass);
    let store = TestStore::new();
    set_lazy_config(&store, "prefetch = false", "");
    let _cleanup = start_serve(&store);
    let reference = pushed(proxy.addr(), format);
    let report = pull_lazy(&store, &reference);
    let missing = report["missing"].as_u64().unwrap();
    proxy.clear();
    // Three polls of the store and more.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(blob_bytes(&proxy), 0, "fetched with prefetch off");
    assert!(store.objects().is_empty());
    let entry = image_entry(&store, &reference);
    assert_eq!(entry["complete"], false, "{entry}");
    assert_eq!(entry["missing"], missing, "{entry}");
    let listing = store.ok(&["images"]);
    assert!(listing.contains(&format!("lazy ({missing} missing)")), "{listing}");

    // An open fetches that file only.
    let mounted = store.mount(&reference);
    let python = std::fs::read(mounted.join("usr/bin/python3")).unwrap();
    assert!(python.len() > 512);
    // It went through LAZY: looked up, opened, fetched, and read by
    // passthrough; stored behind the read (an open is answered before the
    // publish).
    let counts = lazy_counts(&store);
    assert!(counts["lookups"] >= 1 && counts["opens"] >= 1, "{counts:?}");
    assert!(counts["fetches_started"] >= 1, "{counts:?}");
    assert!(
        wait_until(Duration::from_secs(10), || store.objects().len() as u64
            == counts["fetches_started"]),
        "{} objects for {counts:?}",
        store.objects().len()
    );
    let opened = store.objects().len();
    assert_eq!(counts["reads"], 0, "reads pass through: {counts:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(store.objects().len(), opened, "more than the opened file was fetched");
    assert_eq!(
        image_entry(&store, &reference)["missing"],
        missing - opened as u64,
        "strata images counts what is still missing"
    );
    store.umount(&mounted);

    // A plain pull fetches the rest and completes it.
    let started = Instant::now();
    let out = store.ok(&["pull", "--json", &reference]);
    let took = started.elapsed().as_secs_f64();
    let pulled: Value = serde_json::from_str(out.trim()).unwrap();
    eprintln!("{format}: a plain pull completed the lazy image in {took:.1}s: {pulled}");
    assert_eq!(pulled["completed"], true, "{pulled}");
    assert_eq!(pulled["fetched_contents"], missing - opened as u64, "{pulled}");
    let entry = image_entry(&store, &reference);
    assert_eq!(entry["complete"], true, "{entry}");
    names_only_objects(&store, entry["erofs"].as_str().unwrap());
    let again = store.ok(&["pull", &reference]);
    assert!(again.contains("is up to date"), "{again}");

    let expected = expected_tree("python", store.dir.path());
    let after = store.mount(&reference);
    let (line, through_lazy) = lazy_lowers(&store, &after);
    assert!(!through_lazy, "{line}");
    assert_tree_matches(&expected, &after, store.dir.path());
    store.umount(&after);
    store.fsck_clean();
}

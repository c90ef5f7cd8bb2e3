//! The info cache against the DB: its rules on a bare DB, then the
//! snapshotter's every kind of change interleaved with reads, from one
//! thread and from several.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use strata_store::Store;
use strata_tree::{Stat, Tree};

use super::InfoCache;
use crate::db::{self, Record};
use crate::remote::{CRI_IMAGE_REF, CRI_LAYER_DIGEST, CRI_MANIFEST_DIGEST, SNAPSHOT_REF};
use crate::types::Stamp;
use crate::{ErrorKind, FetchError, FetchedLayer, Filter, Info, Kind, LayerFetcher, LayerRequest, Snapshotter};

/// A temp dir that unmounts what the store mounted under it.
struct TestDir(tempfile::TempDir);

impl TestDir {
    fn new() -> Self {
        TestDir(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        for m in strata_sys::mounts_under(self.0.path()) {
            let _ = strata_sys::unmount(&m, true);
        }
    }
}

fn bare_db(dir: &TestDir) -> Store {
    let store = Store::open(&dir.path().join("store")).unwrap();
    db::init(&store).unwrap();
    store
}

fn record(version: &str) -> Record {
    let stamp = Stamp { secs: 1, nanos: 2 };
    Record {
        id: 1,
        kind: Kind::Committed,
        parent: None,
        labels: BTreeMap::from([("v".to_owned(), version.to_owned())]),
        created: stamp,
        updated: stamp,
        image: None,
        usage: None,
        scratch: None,
    }
}

/// Writes (or, with `None`, deletes) `key`'s row as the snapshotter does.
fn write(cache: &InfoCache, lock: &Mutex<()>, database: &Store, key: &str, row: Option<&Record>) {
    let _guard = cache.lock(lock, database);
    let txn = database.begin().unwrap();
    match row {
        Some(r) => db::put(&txn, key, r).unwrap(),
        None => db::delete(&txn, key).unwrap(),
    }
    txn.commit().unwrap();
}

fn version(info: &Info) -> &str {
    &info.labels["v"]
}

fn cached_version(cache: &InfoCache, key: &str) -> Option<String> {
    cache
        .cached(key)
        .map(|answer| answer.map_or_else(|e| format!("{:?}", e.kind()), |i| version(&i).to_owned()))
}

#[test]
fn a_fill_read_before_a_change_is_dropped() {
    let dir = TestDir::new();
    let (database, lock) = (bare_db(&dir), Mutex::new(()));
    write(&InfoCache::default(), &lock, &database, "k", Some(&record("1")));
    let cache = InfoCache::default();
    // The reader misses and reads the DB, then a writer comes and goes,
    // then the reader would fill: the fill must not win.
    let read = cache
        .stat("k", || {
            let old = db::get(&database, "k");
            write(&cache, &lock, &database, "k", Some(&record("2")));
            old
        })
        .unwrap();
    assert_eq!(version(&read), "1", "the reader answers what it read");
    assert_eq!(cached_version(&cache, "k").as_deref(), Some("2"));

    // The same for a walk that would fill the cache whole.
    let walked = cache
        .walk(&Filter::default(), || {
            let old = db::all(&database);
            write(&cache, &lock, &database, "k", None);
            old
        })
        .unwrap();
    assert_eq!(walked.len(), 1);
    assert!(cache.walk_cached(&Filter::default()).is_none(), "not complete");
    assert_eq!(
        cache.stat("k", || db::get(&database, "k")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn while_a_writer_holds_the_lock_reads_go_to_the_db() {
    let dir = TestDir::new();
    let (database, cache, lock) = (bare_db(&dir), InfoCache::default(), Mutex::new(()));
    write(&cache, &lock, &database, "k", Some(&record("1")));
    assert_eq!(cached_version(&cache, "k").as_deref(), Some("1"));
    let guard = cache.lock(&lock, &database);
    let txn = database.begin().unwrap();
    db::put(&txn, "k", &record("2")).unwrap();
    txn.commit().unwrap();
    assert!(cache.cached("k").is_none(), "no answer from memory mid-change");
    let read = cache.stat("k", || db::get(&database, "k")).unwrap();
    assert_eq!(version(&read), "2", "a committed change is seen at once");
    drop(guard);
    assert_eq!(cached_version(&cache, "k").as_deref(), Some("2"));
}

#[test]
fn a_rolled_back_write_leaves_the_cache_as_the_db() {
    let dir = TestDir::new();
    let (database, cache, lock) = (bare_db(&dir), InfoCache::default(), Mutex::new(()));
    write(&cache, &lock, &database, "k", Some(&record("1")));
    {
        let _guard = cache.lock(&lock, &database);
        let txn = database.begin().unwrap();
        db::put(&txn, "k", &record("2")).unwrap();
        db::put(&txn, "new", &record("2")).unwrap();
        drop(txn);
    }
    assert_eq!(cached_version(&cache, "k").as_deref(), Some("1"));
    assert!(cache.cached("new").is_none());
    assert_eq!(
        cache.stat("new", || db::get(&database, "new")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn a_complete_cache_follows_puts_and_deletes() {
    let dir = TestDir::new();
    let (database, cache, lock) = (bare_db(&dir), InfoCache::default(), Mutex::new(()));
    write(&cache, &lock, &database, "a", Some(&record("1")));
    let all = Filter::default();
    assert_eq!(cache.walk(&all, || db::all(&database)).unwrap().len(), 1);
    write(&cache, &lock, &database, "b", Some(&record("1")));
    write(&cache, &lock, &database, "a", None);
    let names: Vec<String> = cache.walk_cached(&all).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["b"]);
    assert_eq!(
        cached_version(&cache, "a").as_deref(),
        Some("NotFound"),
        "absent, known without the DB"
    );
    let only_v2 = Filter::parse(&["labels.v==2"]).unwrap();
    assert!(cache.walk_cached(&only_v2).unwrap().is_empty());
}

#[test]
#[should_panic(expected = "only under the snapshotter's lock")]
fn a_row_written_without_the_lock_panics() {
    let dir = TestDir::new();
    let database = bare_db(&dir);
    let txn = database.begin().unwrap();
    let _ = db::put(&txn, "k", &record("1"));
}

fn policy() -> crate::ScratchPolicy {
    crate::ScratchPolicy {
        max_bytes: 64 << 30,
        allowed_locations: Vec::new(),
        fs: crate::FsKind::Ext4,
        default_bytes: None,
        namespace_default_bytes: BTreeMap::new(),
    }
}

/// Fetches every remote-snapshot layer as an empty first layer.
struct EmptyLayers(Store);

impl LayerFetcher for EmptyLayers {
    fn fetch(&self, _request: &LayerRequest) -> Result<FetchedLayer, FetchError> {
        Ok(FetchedLayer {
            lock: self.0.lock_shared()?,
            tree: Tree::new(Stat::default_dir()),
            stager: self.0.stager()?,
            parent_chain: None,
            lazy: Vec::new(),
        })
    }
}

fn open(dir: &TestDir) -> Snapshotter {
    let store = Store::open(&dir.path().join("store")).unwrap();
    Snapshotter::open(store.clone(), policy())
        .unwrap()
        .with_fetcher(Arc::new(EmptyLayers(store)))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Stat (also as the async path asks it) and Walk, with and without a
/// filter, against the DB, for every key ever used.
fn check_reads(sn: &Snapshotter, keys: &BTreeSet<String>, step: &str) {
    let want: BTreeMap<String, Info> = db::all(sn.store())
        .unwrap()
        .into_iter()
        .map(|(key, record)| {
            let info = record.info(&key);
            (key, info)
        })
        .collect();
    let same = |answer: Result<Info, crate::SnapshotError>, key: &str, how: &str| match want.get(key) {
        Some(info) => assert_eq!(answer.ok().as_ref(), Some(info), "{step}: {how} {key}"),
        None => assert_eq!(answer.unwrap_err().kind(), ErrorKind::NotFound, "{step}: {how} {key}"),
    };
    for key in keys.iter().chain(want.keys()) {
        if let Some(answer) = sn.stat_cached(key) {
            same(answer, key, "cached stat");
        }
        same(sn.stat(key), key, "stat");
        same(sn.stat_cached(key).expect("a stat fills the cache"), key, "cached stat");
    }
    let by_name =
        |infos: Vec<Info>| -> BTreeMap<String, Info> { infos.into_iter().map(|i| (i.name.clone(), i)).collect() };
    if let Some(walked) = sn.walk_cached::<&str>(&[]) {
        assert_eq!(by_name(walked.unwrap()), want, "{step}: cached walk");
    }
    assert_eq!(by_name(sn.walk::<&str>(&[]).unwrap()), want, "{step}: walk");
    let committed: BTreeMap<String, Info> = want
        .iter()
        .filter(|(_, i)| i.kind == Kind::Committed)
        .map(|(k, i)| (k.clone(), i.clone()))
        .collect();
    assert_eq!(
        by_name(sn.walk(&["kind==committed"]).unwrap()),
        committed,
        "{step}: filtered walk"
    );
}

fn digest(byte: char) -> String {
    format!("sha256:{}", byte.to_string().repeat(64))
}

#[test]
fn every_read_after_every_change_matches_the_db() {
    let dir = TestDir::new();
    let sn = open(&dir);
    let mut keys = BTreeSet::new();
    let mut step = |name: &str, change: &dyn Fn(&Snapshotter) -> Result<(), crate::SnapshotError>, ok: bool| {
        let result = change(&sn);
        assert_eq!(result.is_ok(), ok, "{name}: {result:?}");
        keys.extend(db::all(sn.store()).unwrap().into_iter().map(|(k, _)| k));
        check_reads(&sn, &keys, name);
    };
    step("nothing yet", &|_| Ok(()), true);
    step(
        "prepare",
        &|s| s.prepare("ns/1/a", "", labels(&[("x", "1")])).map(drop),
        true,
    );
    step(
        "commit",
        &|s| s.commit("ns/1/c1", "ns/1/a", labels(&[("x", "2")])),
        true,
    );
    step(
        "prepare on a parent",
        &|s| s.prepare("ns/2/b", "ns/1/c1", labels(&[])).map(drop),
        true,
    );
    step(
        "view",
        &|s| s.view("ns/3/v", "ns/1/c1", labels(&[("y", "1")])).map(drop),
        true,
    );
    let c1 = || sn.stat("ns/1/c1").unwrap();
    let mut info = c1();
    info.labels = labels(&[("a", "1"), ("b", "2")]);
    step("update all labels", &|s| s.update(&info, &[]).map(drop), true);
    info.labels = labels(&[("c", "3")]);
    step(
        "update one label",
        &|s| s.update(&info, &["labels.c".into(), "labels.a".into()]).map(drop),
        true,
    );
    step(
        "update refused",
        &|s| s.update(&info, &["parent".into()]).map(drop),
        false,
    );
    step(
        "prepare of a key in use",
        &|s| s.prepare("ns/2/b", "", labels(&[])).map(drop),
        false,
    );
    step("remove of a parent", &|s| s.remove("ns/1/c1"), false);
    step(
        "commit to a name in use",
        &|s| s.commit("ns/1/c1", "ns/2/b", labels(&[])),
        false,
    );
    step(
        "commit of a missing key",
        &|s| s.commit("ns/9/c9", "ns/9/none", labels(&[])),
        false,
    );
    step(
        "commit on a parent",
        &|s| s.commit("ns/2/c2", "ns/2/b", labels(&[])),
        true,
    );
    step("remove a view", &|s| s.remove("ns/3/v"), true);
    step("cleanup", &|s| s.cleanup(), true);
    let chain = digest('c');
    let remote = labels(&[
        (SNAPSHOT_REF, &chain),
        (CRI_IMAGE_REF, "registry.test/image:1"),
        (CRI_MANIFEST_DIGEST, &digest('d')),
        (CRI_LAYER_DIGEST, &digest('e')),
    ]);
    let unpack = format!("ns/4/extract-1-abc {chain}");
    let fetched = |s: &Snapshotter| match s.prepare(&unpack, "", remote.clone()) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => panic!("the layer is fetched: {other:?}"),
    };
    step("remote snapshot committed", &fetched, true);
    assert_eq!(sn.stat(&chain).unwrap().kind, Kind::Committed);
    step("remote snapshot present", &fetched, true);
    step("remove the remote snapshot", &|s| s.remove(&chain), true);
    for key in ["ns/2/c2", "ns/1/c1"] {
        step("remove", &|s| s.remove(key), true);
    }
    step("cleanup of nothing", &|s| s.cleanup(), true);
}

/// A reader's answer for the hot key's version must lie between the last
/// update that returned before the read began and the last one begun
/// before it ended; a churn key removed before a read began must be gone.
#[test]
fn concurrent_reads_never_see_a_change_undone() {
    const UPDATES: u64 = 200;
    let dir = TestDir::new();
    let sn = Arc::new(open(&dir));
    sn.prepare("ns/1/hot-active", "", labels(&[])).unwrap();
    sn.commit("ns/1/hot", "ns/1/hot-active", labels(&[("v", "0")])).unwrap();
    let (begun, returned, removed) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let done = AtomicBool::new(false);
    let version_of = |info: &Info| -> u64 { info.labels["v"].parse().unwrap() };
    std::thread::scope(|scope| {
        for reader in 0..3 {
            let (sn, begun, returned, removed, done) = (&sn, &begun, &returned, &removed, &done);
            scope.spawn(move || {
                let mut reads = 0u64;
                while !done.load(SeqCst) || reads < 100 {
                    reads += 1;
                    let (low, gone) = (returned.load(SeqCst), removed.load(SeqCst));
                    let (hot, churn) = match (reads + reader) % 3 {
                        0 => (sn.stat("ns/1/hot").unwrap(), None),
                        1 => match sn.stat_cached("ns/1/hot") {
                            Some(answer) => (answer.unwrap(), None),
                            None => continue,
                        },
                        _ => {
                            let all = sn.walk::<&str>(&[]).unwrap();
                            let hot = all.iter().find(|i| i.name == "ns/1/hot").unwrap().clone();
                            (hot, Some(all))
                        }
                    };
                    let high = begun.load(SeqCst);
                    let v = version_of(&hot);
                    assert!(low <= v && v <= high, "read {v}, outside [{low}, {high}]");
                    for i in 1..=gone {
                        let key = format!("ns/2/churn-{i}");
                        if let Some(all) = &churn {
                            assert!(
                                !all.iter().any(|info| info.name == key),
                                "{key} walked after its removal"
                            );
                        }
                        if i == gone {
                            assert_eq!(sn.stat(&key).unwrap_err().kind(), ErrorKind::NotFound, "{key}");
                        }
                    }
                }
            });
        }
        for n in 1..=UPDATES {
            begun.store(n, SeqCst);
            let mut info = sn.stat("ns/1/hot").unwrap();
            info.labels.insert("v".into(), n.to_string());
            sn.update(&info, &["labels.v".into()]).unwrap();
            returned.store(n, SeqCst);
            if n % 4 == 0 {
                let key = format!("ns/2/churn-{}", n / 4);
                sn.prepare(&key, "", labels(&[])).unwrap();
                sn.remove(&key).unwrap();
                removed.store(n / 4, SeqCst);
            }
        }
        done.store(true, SeqCst);
    });
    check_reads(&sn, &BTreeSet::from(["ns/1/hot".to_owned()]), "after the threads");
}

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata_store::Store;

use super::*;
use crate::lazy::fetch::plan::{plan_batches, BatchLimits};
use crate::lazy::fetch::FetchPolicy;
use crate::lazy::recipe::Recipe;
use crate::source::Fetched;
use crate::toc::{Chunk, Sha256Digest};
use crate::{BlobSource, Descriptor, ImportError};

/// A layer blob in memory that counts its `read_ranges` calls.
struct MemSource {
    blob: Vec<u8>,
    calls: AtomicUsize,
}

impl BlobSource for MemSource {
    fn describe(&self) -> String {
        "memory".into()
    }
    fn root_document(&self) -> Result<Fetched, ImportError> {
        unreachable!("a fetch reads ranges only")
    }
    fn document(&self, _: &Descriptor) -> Result<Fetched, ImportError> {
        unreachable!("a fetch reads ranges only")
    }
    fn open_blob(&self, _: &Descriptor) -> Result<Box<dyn std::io::Read + Send>, ImportError> {
        unreachable!("a fetch reads ranges only")
    }
    fn read_ranges(&self, _: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(ranges
            .iter()
            .map(|r| self.blob[at(r.start)..at(r.end)].to_vec())
            .collect())
    }
}

fn at(offset: u64) -> usize {
    usize::try_from(offset).unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha256(data: &[u8]) -> Digest {
    Digest(Sha256Digest::of(data).0)
}

fn layer(size: u64) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        size,
        platform: None,
        annotations: Default::default(),
    }
}

/// A layer of one gzip member holding `body`: the blob, the content's
/// SHA-256 and its recipe.
fn one_member(body: &[u8]) -> (Vec<u8>, Digest, Recipe) {
    let member = gz(body);
    let desc = layer(member.len() as u64);
    let chunk = Chunk {
        file_offset: 0,
        size: body.len() as u64,
        compressed: ByteRange {
            start: 0,
            end: member.len() as u64,
        },
        inner_offset: 0,
        digest: None,
        zeros: false,
    };
    let recipe = Recipe::new("mem/x:y", &desc, TocFormat::Estargz, chunk.size, &[chunk]);
    (member, sha256(body), recipe)
}

/// A fetcher over `source` that never retries.
fn fetcher(store: &Store, source: &Arc<MemSource>) -> LazyFetcher {
    let source = source.clone();
    let open = move |_: &str| -> Result<Arc<dyn crate::BlobSource>, ImportError> { Ok(source.clone()) };
    let policy = FetchPolicy {
        attempts: 1,
        first_backoff: Duration::from_millis(1),
        give_up_after: Duration::from_secs(5),
    };
    LazyFetcher::new(store.clone(), Box::new(open), policy)
}

/// Four contents of one eStargz-like layer, one gzip member each: `a` and
/// `c` right, `b` named by a SHA-256 its bytes do not have, `d` with
/// corrupt compressed bytes.
#[test]
fn a_batch_stores_the_contents_that_verify_and_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bodies: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 3000 + usize::from(i)]).collect();
    let mut blob = Vec::new();
    let mut wanted = Vec::new();
    let mut names = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let member = gz(body);
        let start = blob.len() as u64;
        blob.extend_from_slice(&member);
        let end = blob.len() as u64;
        if i == 3 {
            // Corrupt the deflate data of `d`.
            for b in &mut blob[at(start) + 12..at(end) - 8] {
                *b ^= 0x5a;
            }
        }
        let name = if i == 1 { sha256(b"other bytes") } else { sha256(body) };
        names.push(name);
        let chunk = Chunk {
            file_offset: 0,
            size: body.len() as u64,
            compressed: ByteRange { start, end },
            inner_offset: 0,
            digest: None,
            zeros: false,
        };
        wanted.push((name, chunk));
    }
    let desc = layer(blob.len() as u64);
    let recipes = wanted
        .into_iter()
        .map(|(name, chunk)| {
            let recipe = Recipe::new("mem/x:y", &desc, TocFormat::Estargz, chunk.size, &[chunk]);
            (name, recipe)
        })
        .collect();
    let (batches, unplanned) = plan_batches(recipes, BatchLimits::for_bandwidth(0));
    assert!(unplanned.is_empty());
    assert_eq!(batches.len(), 1, "one layer, one batch");
    assert_eq!(
        batches[0].calls,
        vec![vec![ByteRange {
            start: 0,
            end: desc.size
        }]]
    );

    let source = Arc::new(MemSource {
        blob,
        calls: AtomicUsize::new(0),
    });
    let fetcher = fetcher(&store, &source);
    let out = fetcher.fetch_batch(&batches[0]);
    assert_eq!(source.calls.load(Ordering::Relaxed), 1, "one ranged call for the batch");
    assert_eq!(out.stored, vec![names[0], names[2]]);
    assert_eq!(out.fetched, 2);
    assert_eq!(out.fetched_bytes, (bodies[0].len() + bodies[2].len()) as u64);
    assert!(out.left.is_empty());
    let failed: Vec<Digest> = out.failed.iter().filter_map(failed_name).copied().collect();
    assert_eq!(failed, vec![names[1], names[3]]);
    assert!(
        out.failed.iter().all(|e| matches!(e, LazyFetchError::Mismatch { .. })),
        "{:?}",
        out.failed
    );

    // The right ones: objects, index rows, aliases with their bytes.
    for i in [0, 2] {
        let mut file = store.open_alias(&names[i]).unwrap().expect("its alias");
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut read).unwrap();
        assert_eq!(read, bodies[i]);
        assert!(store.has_object(&Digest::of(&bodies[i])).unwrap());
    }
    // The wrong ones: nothing, under either name.
    for i in [1, 3] {
        assert!(store.open_alias(&names[i]).unwrap().is_none());
        assert_eq!(store.objects_by_sha256(&[names[i].0]).unwrap(), vec![None]);
        assert!(!store.has_object(&Digest::of(&bodies[i])).unwrap());
    }
    assert!(!store.tmp_has_garbage().unwrap(), "nothing staged is left");

    // Again: the stored ones are found, the wrong ones fail again.
    let again = fetcher.fetch_batch(&batches[0]);
    assert_eq!(again.stored, vec![names[0], names[2]]);
    assert_eq!(again.fetched, 0);
    assert_eq!(again.failed.len(), 2);
}

/// A batch leaves out a name another fetch holds; a fetch of a name a
/// batch holds waits for it and takes what it stored, reading nothing.
#[test]
fn a_claimed_name_is_fetched_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let body = vec![9u8; 5000];
    let (member, name, recipe) = one_member(&body);
    let (batches, _) = plan_batches(vec![(name, recipe)], BatchLimits::for_bandwidth(0));
    let source = Arc::new(MemSource {
        blob: member,
        calls: AtomicUsize::new(0),
    });
    let fetcher = fetcher(&store, &source);

    let claim = fetcher.claims.claim(&name).ok().unwrap();
    let out = fetcher.fetch_batch(&batches[0]);
    assert_eq!(out.left, vec![name]);
    assert!(out.stored.is_empty() && out.failed.is_empty());
    assert_eq!(source.calls.load(Ordering::Relaxed), 0);

    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| fetcher.fetch(&name));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiting.is_finished(), "the fetch waits for the claim");
        // What the claim's holder stores.
        let mut stager = store.stager().unwrap();
        let staged = stager.add_bytes(&body).unwrap();
        stager.publish().unwrap();
        let object = ObjectRef {
            digest: staged.digest,
            size: staged.size,
        };
        store.record_sha256(&[(name.0, object)]).unwrap();
        drop(claim);
        let file = waiting.join().unwrap().unwrap();
        assert_eq!(file.metadata().unwrap().len(), body.len() as u64);
    });
    assert_eq!(
        source.calls.load(Ordering::Relaxed),
        0,
        "the waiting fetch read nothing"
    );
}

/// An open's fetch answers with the verified staged file before it is
/// stored; the store gets the object (the same inode), its row and its
/// alias in the background, and a second fetch meanwhile waits for them.
#[test]
fn an_opens_fetch_answers_before_the_content_is_stored() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let (member, name, recipe) = one_member(&body);
    let txn = store.begin().unwrap();
    txn.put_lazy_content(&name, &recipe.encode()).unwrap();
    txn.commit().unwrap();
    let source = Arc::new(MemSource {
        blob: member,
        calls: AtomicUsize::new(0),
    });
    let fetcher = fetcher(&store, &source);

    let mut file = fetcher.fetch_for_open(&name).unwrap();
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut read).unwrap();
    assert_eq!(read, body, "the verified bytes");
    // Waits for the background publish (the claim), then finds it stored.
    let stored = fetcher.fetch(&name).unwrap();
    assert_eq!(source.calls.load(Ordering::Relaxed), 1, "fetched once");
    let object = Digest::of(&body);
    assert!(store.has_object(&object).unwrap());
    assert_eq!(
        store.objects_by_sha256(&[name.0]).unwrap(),
        vec![Some(ObjectRef {
            digest: object,
            size: body.len() as u64
        })]
    );
    let (first, alias) = (file.metadata().unwrap(), stored.metadata().unwrap());
    assert_eq!(
        (first.dev(), first.ino()),
        (alias.dev(), alias.ino()),
        "the open's file is the object: one page cache"
    );
    assert!(!store.tmp_has_garbage().unwrap(), "nothing staged is left");
}

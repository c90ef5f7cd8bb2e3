//! Lazy pulls in the CLI (docs/lazy-pulls.md): `strata pull --lazy`, the
//! LAZY filesystem `strata serve` mounts at `STORE/lazy`, and the extra
//! lowers `strata mount` gives a lazily pulled image.
//!
//! LAZY is served only by `strata serve`. A lazy pull needs it (else the
//! image is pulled whole, after a message), and `strata mount` of a lazily
//! pulled image without it is refused: "start `strata serve`".
//!
//! The LAZY server also prefetches what lazily pulled images miss and
//! completes each one once it misses nothing (`[lazy]` in config.toml);
//! a plain `strata pull` of an incomplete image completes it too.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use strata_image::lazy::prefetch::{fetch_names, Stop};
use strata_image::lazy::{
    FetchPolicy, LazyFetchError, LazyFetcher, LazyPullError, LazyPullOptions, PrefetchConfig, Prefetcher,
};
use strata_image::source::{LayoutSource, RegistrySource};
use strata_image::{BlobSource, ImageRef, Progress, PullOptions, Received};
use strata_lazy::{FetchError, LazyConfig, LazyDevice, LazyHandle, LazyMount, ObjectFetcher, SUBTYPE};
use strata_store::{ImageRecord, Store};
use strata_tree::Digest;

use crate::config::Config;
use crate::draw::human;

/// Overrides `[lazy] fetch_timeout` (seconds): how long an open of a
/// missing file waits for its fetch, retries included, before it gets EIO.
const TIMEOUT_ENV: &str = "STRATA_LAZY_FETCH_TIMEOUT";

/// Where `strata serve` mounts LAZY.
pub fn lazy_dir(store: &Store) -> PathBuf {
    store.lazy_path()
}

fn fetch_timeout(config: &Config) -> Duration {
    std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(
            Duration::from_secs_f64(config.lazy.fetch_timeout),
            Duration::from_secs_f64,
        )
}

/// The fetcher of missing contents, reading blobs from the source each
/// recipe names, with the registry settings of `config`.
fn store_fetcher(config: &Config, store: &Store) -> anyhow::Result<LazyFetcher> {
    let registry = config.registry_config()?;
    let open_source = move |reference: &str| -> Result<Arc<dyn BlobSource>, strata_image::ImportError> {
        let parsed: ImageRef = reference.parse()?;
        Ok(match parsed {
            ImageRef::Layout { dir, tag } => Arc::new(LayoutSource::new(&dir, tag.as_deref())),
            ImageRef::Registry(r) => Arc::new(RegistrySource::new(r, Arc::clone(&registry))?),
        })
    };
    let policy = FetchPolicy {
        give_up_after: fetch_timeout(config),
        ..FetchPolicy::default()
    };
    Ok(LazyFetcher::new(store.clone(), Box::new(open_source), policy))
}

/// A plain `strata pull` of image `record`, which is up to date: if it was
/// pulled lazily and is incomplete, fetches what it misses (here, not
/// through LAZY) and completes it. False if it is complete already.
pub fn complete_pull(config: &Config, store: &Store, record: &ImageRecord, json: bool) -> anyhow::Result<bool> {
    let id = record.erofs_id()?;
    let Some(needs) = store.lazy_needs(&id)? else {
        return Ok(false);
    };
    let started = Instant::now();
    let missing = strata_image::lazy::still_missing(store, &needs)?;
    let fetcher = store_fetcher(config, store)?;
    // In batches on `[lazy] prefetch_concurrency` threads, in the row's
    // order, at full speed (the user waits for it).
    let batches = PrefetchConfig {
        enabled: true,
        concurrency: config.lazy.prefetch_concurrency,
        bandwidth: 0,
        ..PrefetchConfig::default()
    };
    let got = fetch_names(store, &fetcher, &missing, &batches, &|_: &Digest| {}, &Stop::default())
        .with_context(|| format!("completing {}", record.name))?;
    if let Some(first) = got.failures.into_iter().next() {
        return Err(anyhow::Error::new(first).context(format!(
            "completing {}: {} contents could not be fetched",
            record.name, got.pass.failed
        )));
    }
    let bytes = got.content_bytes;
    let completed = strata_image::lazy::complete(store, &id)
        .with_context(|| format!("completing {}", record.name))?
        .with_context(|| format!("completing {}: contents are still missing", record.name))?;
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let report = serde_json::json!({
            "name": record.name,
            "manifest_digest": record.manifest_digest,
            "up_to_date": false,
            "completed": true,
            "fetched_contents": missing.len(),
            "fetched_content_bytes": bytes,
            "erofs": completed.new.to_hex(),
            "seconds": seconds,
        });
        println!("{report}");
    } else {
        println!(
            "completed {} ({}), pulled lazily before, in {seconds:.2}s: fetched {} contents ({}); image {}",
            record.name,
            record.manifest_digest,
            missing.len(),
            human(bytes),
            completed.new,
        );
    }
    Ok(true)
}

/// Whether a live LAZY (served by `strata serve`) is mounted at `dir`.
pub fn is_served(dir: &Path) -> bool {
    let fstype = format!("fuse.{SUBTYPE}");
    let listed = std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|text| {
        text.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4).copied();
            let after = fields.iter().position(|f| *f == "-").and_then(|i| fields.get(i + 1));
            point == Some(&*dir.to_string_lossy()) && after == Some(&fstype.as_str())
        })
    });
    // A server that died leaves its mount: ENOTCONN.
    listed && std::fs::metadata(dir).is_ok()
}

/// The lowers after OBJECTS for image `id`: `[ALIASES, LAZY]` if it was
/// pulled lazily, none if it is complete. Refused without a served LAZY.
pub fn lowers_for(store: &Store, id: &Digest) -> anyhow::Result<Option<Vec<PathBuf>>> {
    let lowers = store.lazy_lowers(id)?;
    if lowers.is_empty() {
        return Ok(None);
    }
    let lazy = lazy_dir(store);
    if !is_served(&lazy) {
        anyhow::bail!(
            "lazy image: its missing files are served by `strata serve`, which is not running on this store (no LAZY at {}); start `strata serve`",
            lazy.display()
        );
    }
    Ok(Some(lowers))
}

/// What `strata pull --lazy --json` prints.
#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    manifest_digest: &'a str,
    up_to_date: bool,
    lazy: bool,
    /// Body bytes received: manifests, config, TOCs, small files.
    fetched_bytes: u64,
    /// The compressed size of the layers the manifest announces.
    announced_bytes: u64,
    files: u64,
    /// Objects the image names that the store already had.
    objects: u64,
    /// Contents left to fetch when first opened, and their bytes.
    missing: u64,
    missing_bytes: u64,
    /// Files of at most 512 bytes fetched now (they live in the metadata).
    inline_fetched: u64,
    seconds: f64,
}

/// `strata pull --lazy`. False when the image must be pulled whole instead
/// (no LAZY served here, or a layer without a TOC); the reason is printed.
pub fn pull(
    store: &Store,
    source: &dyn BlobSource,
    reference: &ImageRef,
    options: &PullOptions,
    received: &Received,
    json: bool,
) -> anyhow::Result<bool> {
    if !is_served(&lazy_dir(store)) {
        eprintln!(
            "strata: lazy pull needs `strata serve` running on this store, on a kernel with FUSE passthrough (no LAZY at {}); pulling whole",
            lazy_dir(store).display()
        );
        return Ok(false);
    }
    let source_ref = match reference {
        ImageRef::Layout { dir, tag } => {
            let dir = dir
                .canonicalize()
                .with_context(|| format!("layout {}", dir.display()))?;
            match tag {
                Some(tag) => format!("oci:{}:{tag}", dir.display()),
                None => format!("oci:{}", dir.display()),
            }
        }
        ImageRef::Registry(r) => {
            let mut text = format!("{}/{}", r.registry, r.repository);
            if let Some(digest) = &r.digest {
                text = format!("{text}@{digest}");
            } else if let Some(tag) = &r.tag {
                text = format!("{text}:{tag}");
            }
            text
        }
    };
    let lazy_options = LazyPullOptions {
        name: options.name.clone(),
        source_ref,
        limits: options.limits.clone(),
        platform: options.platform.clone(),
    };
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    let outcome = match strata_image::lazy::pull_lazy(store, source, &lazy_options, &progress) {
        Ok(outcome) => outcome,
        Err(LazyPullError::NoToc { layer }) => {
            eprintln!("strata: layer {layer} has no TOC, so the image cannot be pulled lazily; pulling whole");
            return Ok(false);
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("pulling {} lazily", source.describe()))),
    };
    let report = Report {
        name: &outcome.record.name,
        manifest_digest: &outcome.record.manifest_digest,
        up_to_date: outcome.up_to_date,
        lazy: true,
        fetched_bytes: received.total(),
        announced_bytes: outcome.layer_bytes,
        files: outcome.record.files,
        objects: outcome.objects,
        missing: outcome.missing,
        missing_bytes: outcome.missing_bytes,
        inline_fetched: outcome.inline_fetched,
        seconds: started.elapsed().as_secs_f64(),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else if outcome.up_to_date {
        println!("{} is up to date ({})", report.name, report.manifest_digest);
    } else {
        println!(
            "pulled {} ({}) lazily in {:.2}s: {} files, image {}; {} contents ({}) are fetched when first opened\nfetched {} ({} B) of {} announced",
            report.name,
            report.manifest_digest,
            report.seconds,
            report.files,
            human(outcome.image_bytes),
            report.missing,
            human(report.missing_bytes),
            human(report.fetched_bytes),
            report.fetched_bytes,
            human(report.announced_bytes),
        );
    }
    Ok(true)
}

/// The store's fetcher behind LAZY's seam; prefetch shares it, so an open
/// of a name a prefetch batch is fetching waits for that batch.
struct StoreFetcher(Arc<LazyFetcher>);

fn seam_error(name: &Digest, e: LazyFetchError) -> FetchError {
    match e {
        LazyFetchError::Unknown { .. } => FetchError::Unknown { name: *name },
        LazyFetchError::Mismatch { .. } => {
            tracing::warn!("lazy: {e}");
            FetchError::Mismatch { name: *name }
        }
        other => FetchError::Source {
            name: *name,
            source: Box::new(other),
        },
    }
}

impl ObjectFetcher for StoreFetcher {
    fn open_stored(&self, name: &Digest) -> Result<Option<File>, FetchError> {
        self.0.open_stored(name).map_err(|e| seam_error(name, e))
    }

    /// An open waits: it gets the verified bytes before they are synced
    /// (`LazyFetcher::fetch_for_open`).
    fn fetch(&self, name: &Digest) -> Result<File, FetchError> {
        self.0.fetch_for_open(name).map_err(|e| seam_error(name, e))
    }

    fn unlisted_size(&self, name: &Digest) -> Option<u64> {
        self.0.missing_size(name).unwrap_or_else(|e| {
            tracing::warn!("lazy: looking {name} up: {e}");
            None
        })
    }
}

/// LAZY's session as a `strata lazy-server` serves it. Fields drop in
/// order: the prefetch first, then the session. The server never unmounts
/// LAZY: its keeper owns the mount point (`cmd/lazy_daemon.rs`).
pub struct ServedLazy {
    /// First: its workers use LAZY's handle, and stop before LAZY goes.
    _prefetch: Option<Prefetcher>,
    mount: std::mem::ManuallyDrop<LazyMount>,
}

impl ServedLazy {
    /// Whether the kernel ended LAZY's session (`cmd/lazy_daemon.rs`).
    pub fn session_ended(&self) -> bool {
        self.mount.session_ended()
    }
}

/// `sh` waiting for EOF on a pipe only LAZY's keeper holds; when that is
/// gone it unmounts LAZY, unless a live LAZY answers there (the keeper's
/// server, still running, or a newer one). So no dead FUSE mount stays on
/// the store.
pub struct Watcher {
    child: std::process::Child,
}

impl Watcher {
    pub fn start(dir: &Path) -> std::io::Result<Watcher> {
        let child = std::process::Command::new("sh")
            .args([
                "-c",
                r#"cat >/dev/null; stat "$1" >/dev/null 2>&1 || umount -l "$1""#,
                "strata-lazy-watcher",
            ])
            .arg(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        Ok(Watcher { child })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // EOF: the watcher checks the mount point, and leaves a live LAZY.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Mounts LAZY at `STORE/lazy` for `strata lazy-daemon` (its keeper),
/// unserved until a server takes the device. None where LAZY cannot be
/// mounted (no /dev/fuse, no fuse filesystem, ...): serve goes on without
/// it, and lazy pulls then pull whole.
pub fn mount_device(store: &Store) -> anyhow::Result<Option<LazyDevice>> {
    let dir = lazy_dir(store);
    // A LAZY left by a server that died (its connection gone); the dead
    // server's watcher may be detaching it at the same time.
    for _ in 0..20 {
        if !(strata_sys::is_mountpoint(&dir) && std::fs::metadata(&dir).is_err()) {
            break;
        }
        if let Err(e) = strata_sys::unmount(&dir, true) {
            tracing::debug!("unmounting the stale LAZY at {}: {e}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // serve runs without LAZY rather than not at all.
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!("no lazy pulls: creating {}: {e}", dir.display());
        return Ok(None);
    }
    match LazyDevice::mount(&dir) {
        Ok(device) => Ok(Some(device)),
        Err(e) if e.is_unsupported() => {
            tracing::info!("no lazy pulls on this kernel ({e}); `strata pull --lazy` pulls whole");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!("no lazy pulls: mounting LAZY at {}: {e}", dir.display());
            Ok(None)
        }
    }
}

/// Serves LAZY's session on `device` for `strata lazy-server`: fresh, or
/// taken over from a killed server (the `journal` says which), and lists
/// what the store's lazily pulled images still miss.
pub fn serve(config: &Config, store: &Store, device: LazyDevice, journal: OwnedFd) -> anyhow::Result<ServedLazy> {
    let dir = lazy_dir(store);
    let shared = Arc::new(store_fetcher(config, store)?);
    let fetcher = Arc::new(StoreFetcher(shared.clone()));
    let lazy_config = LazyConfig {
        fetch_timeout: fetch_timeout(config),
        ..LazyConfig::default()
    };
    let mount = LazyMount::serve(device, Some(journal), fetcher.clone(), &lazy_config)
        .with_context(|| format!("serving LAZY at {}", dir.display()))?;
    // From here on nothing unmounts LAZY, on error too.
    let mount = std::mem::ManuallyDrop::new(mount);
    let handle = mount.handle();
    let mut listed = 0;
    for (_, needs) in store.lazy_images()? {
        for name in needs {
            if let Some(size) = fetcher.unlisted_size(&name) {
                listed += u64::from(handle.insert(name, size));
            }
        }
    }
    // Not on stderr at the default level: the socket's line comes first.
    tracing::info!(
        "serving missing files of lazily pulled images at {} ({listed} listed)",
        dir.display()
    );
    let prefetch = start_prefetch(config, store, shared, &handle);
    Ok(ServedLazy {
        _prefetch: prefetch,
        mount,
    })
}

/// The background prefetch of LAZY (docs/lazy-pulls.md, "Prefetch"): in
/// batches, through the fetcher LAZY's opens use, so an open of a name a
/// batch is fetching waits for that batch rather than fetching it again;
/// a stored name leaves LAZY's table. With `[lazy] prefetch = false` it
/// only completes images that opens filled.
fn start_prefetch(
    config: &Config,
    store: &Store,
    fetcher: Arc<LazyFetcher>,
    handle: &LazyHandle,
) -> Option<Prefetcher> {
    let prefetch = PrefetchConfig {
        enabled: config.lazy.prefetch,
        concurrency: config.lazy.prefetch_concurrency,
        bandwidth: config.lazy.prefetch_bandwidth,
        ..PrefetchConfig::default()
    };
    let listing = handle.clone();
    let fetched = move |name: &Digest| {
        listing.remove(name);
    };
    Prefetcher::start(store.clone(), prefetch, fetcher, Arc::new(fetched))
        .map_err(|e| tracing::warn!("no lazy prefetch: starting its thread: {e}"))
        .ok()
}

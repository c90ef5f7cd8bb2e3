//! LAZY in a process of its own (docs/lazy-pulls.md, "Restarts").
//!
//! `strata serve` does not serve LAZY itself: it starts `strata
//! lazy-daemon`, which mounts LAZY at `STORE/lazy` and serves it. So a
//! serve that crashes, is killed or is upgraded takes no FUSE session with
//! it: containers on lazily pulled images go on opening missing files
//! while no serve runs, and after.
//!
//! Lifetime. Every serve holds `lock.serve` shared while it runs. The
//! daemon waits for that lock exclusively: once no serve runs, it detaches
//! LAZY from `STORE/lazy` (so the next serve mounts a fresh one there) and
//! serves the overlays that still hold it until the kernel ends the
//! session, when the last of them is unmounted; then it exits. A serve
//! that finds a live LAZY (another serve's) uses it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use strata_store::{ServePresence, Store};

use super::lazy::{is_served, lazy_dir};
use crate::config::Config;

/// How long serve waits for a daemon it started to answer at `STORE/lazy`.
const START_WAIT: Duration = Duration::from_secs(20);

/// What `strata serve` holds while it runs: its presence on the store,
/// which keeps the LAZY daemon's mount in place.
pub struct ServeLazy {
    _presence: ServePresence,
}

/// Makes sure LAZY is served at `STORE/lazy` for this serve: uses a live
/// one, else starts `strata lazy-daemon`. serve runs without LAZY if the
/// daemon cannot start (lazy pulls then pull whole).
pub fn ensure(config: &Config, config_path: Option<&Path>, store: &Store) -> anyhow::Result<ServeLazy> {
    // Waits while a daemon whose serve is gone detaches its LAZY.
    let presence = store.serve_presence()?;
    let lazy = ServeLazy { _presence: presence };
    let dir = lazy_dir(store);
    if is_served(&dir) {
        tracing::info!(
            "LAZY at {} is served already (a daemon started by an earlier serve)",
            dir.display()
        );
        return Ok(lazy);
    }
    let exe = std::env::current_exe().context("finding strata's own executable")?;
    let mut command = Command::new(exe);
    command.arg("--root").arg(store.root());
    command.arg("--log-level").arg(&config.log_level);
    if let Some(path) = config_path {
        command.arg("--config").arg(path);
    }
    use std::os::unix::process::CommandExt;
    // Its own process group: a signal meant for serve's group (a
    // terminal's Ctrl-C) does not reach it. stderr is serve's.
    command
        .arg("lazy-daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::warn!("no lazy pulls: starting strata lazy-daemon: {e}");
            return Ok(lazy);
        }
    };
    let pid = child.id();
    let started = Instant::now();
    loop {
        if is_served(&dir) {
            tracing::info!("LAZY served at {} by strata lazy-daemon (pid {pid})", dir.display());
            break;
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                tracing::warn!("no lazy pulls: strata lazy-daemon exited ({status}); see its messages above");
                return Ok(lazy);
            }
            Ok(None) if started.elapsed() < START_WAIT => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                tracing::warn!(
                    "strata lazy-daemon (pid {pid}) did not serve {} within {START_WAIT:?}; going on without waiting",
                    dir.display()
                );
                break;
            }
            Err(e) => {
                tracing::warn!("waiting for strata lazy-daemon: {e}");
                break;
            }
        }
    }
    // Reaps it should it end while serve runs; it outlives serve otherwise.
    let reaper = move || match child.wait() {
        Ok(status) if status.success() => tracing::info!("strata lazy-daemon (pid {pid}) exited"),
        Ok(status) => tracing::warn!("strata lazy-daemon (pid {pid}) exited ({status})"),
        Err(e) => tracing::warn!("waiting for strata lazy-daemon (pid {pid}): {e}"),
    };
    if let Err(e) = std::thread::Builder::new().name("lazy-reaper".into()).spawn(reaper) {
        tracing::warn!("no thread to reap strata lazy-daemon: {e}");
    }
    Ok(lazy)
}

/// `strata lazy-daemon`: serves LAZY for as long as a serve runs or an
/// overlay uses it. SIGTERM or SIGINT unmounts it at once.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut stop = runtime.block_on(async { StopSignal::new() })?;
    let store = config.open_store()?;
    warm_up_network();
    let served = super::lazy::serve(config, &store)?.context("LAZY could not be mounted (see the messages above)")?;
    let dir = lazy_dir(&store);
    let detached = runtime.block_on(async {
        // A thread of its own: flock cannot be cancelled, and the
        // runtime would wait for a blocking task at shutdown.
        let (tell, no_serve) = tokio::sync::oneshot::channel();
        let waiter = store.clone();
        std::thread::Builder::new()
            .name("serve-watch".into())
            .spawn(move || tell.send(waiter.wait_no_serve()))
            .context("starting a thread")?;
        tokio::select! {
            held = no_serve => {
                let held = held.context("waiting for serve to end")??;
                detach(&dir);
                drop(held);
                anyhow::Ok(true)
            }
            () = stop.recv() => anyhow::Ok(false),
        }
    })?;
    if !detached {
        tracing::info!("unmounting LAZY at {}", dir.display());
        drop(served);
        return Ok(());
    }
    tracing::info!(
        "no strata serve runs: LAZY detached from {}, serving the overlays that still use it",
        dir.display()
    );
    runtime.block_on(async {
        loop {
            if served.session_ended() {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                () = stop.recv() => break,
            }
        }
    });
    tracing::info!("LAZY's session ended; strata lazy-daemon exits");
    // Not dropped: the mount point may hold a newer daemon's LAZY now,
    // which this one's unmount would take away.
    std::mem::forget(served);
    Ok(())
}

/// Takes LAZY off `STORE/lazy`; overlays keep using it.
fn detach(dir: &Path) {
    if let Err(e) = strata_sys::unmount(dir, true) {
        tracing::warn!("detaching LAZY from {}: {e}", dir.display());
    }
}

/// SIGTERM and SIGINT, registered once for the daemon's life.
struct StopSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn new() -> anyhow::Result<StopSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignal {
            term: signal(SignalKind::terminate()).context("installing a SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing a SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Prepares the HTTP client on a thread of its own, so that the first
/// fetch (an open waiting) or layer import does not pay for it.
pub fn warm_up_network() {
    let started = std::thread::Builder::new()
        .name("net-warm-up".into())
        .spawn(strata_image::source::RegistrySource::warm_up);
    if let Err(e) = started {
        tracing::debug!("not preparing the HTTP client ahead: {e}");
    }
}

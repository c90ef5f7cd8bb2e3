//! LAZY in processes of its own (docs/lazy-pulls.md, "Restarts" and
//! "Hand-over").
//!
//! `strata serve` does not serve LAZY itself: it starts `strata
//! lazy-daemon`, LAZY's keeper, which mounts LAZY at `STORE/lazy`, creates
//! the session journal, and runs `strata lazy-server` to serve the session
//! (`cmd/lazy_server.rs`). The keeper holds the /dev/fuse fd and the
//! journal, and does nothing else: no network, no store writes, nothing a
//! tenant controls. So:
//! - a serve that crashes, is killed or is upgraded takes no FUSE session
//!   with it;
//! - a server killed with SIGKILL (or crashed) is replaced: its successor
//!   takes the same session over, and containers go on opening missing
//!   files. A server stopped with SIGTERM is replaced too: that is how a
//!   new binary takes over.
//!
//! Lifetime. Every serve holds `lock.serve` shared while it runs. The
//! keeper waits for that lock exclusively: once no serve runs, it detaches
//! LAZY from `STORE/lazy` (so the next serve mounts a fresh one there); its
//! server serves the overlays that still hold it until the kernel ends the
//! session, when the last of them is unmounted, and exits; so does the
//! keeper. A serve that finds a live LAZY (another serve's) uses it.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use strata_lazy::LazyDevice;
use strata_store::{ServePresence, Store};

use super::lazy::{is_served, lazy_dir, Watcher};
use crate::config::Config;

/// How long serve waits for a daemon it started to answer at `STORE/lazy`.
const START_WAIT: Duration = Duration::from_secs(20);

/// How long a stopping keeper waits for its server to see the session end.
const SERVER_STOP_WAIT: Duration = Duration::from_secs(10);

/// A server that dies more often than this within [`RESTART_WINDOW`] is
/// not replaced again: the session ends (opens get ENOTCONN, not a hang).
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Between a server's death and its successor's start.
const RESTART_DELAY: Duration = Duration::from_millis(100);

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
    let mut command = strata_command(config, config_path, store.root())?;
    command.arg("lazy-daemon");
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

/// `strata` with the global options this process runs with, in a process
/// group of its own (a signal meant for serve's group, a terminal's
/// Ctrl-C, does not reach it), stdin and stdout null, stderr shared.
pub fn strata_command(config: &Config, config_path: Option<&Path>, root: &Path) -> anyhow::Result<Command> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding strata's own executable")?;
    let mut command = Command::new(exe);
    command.arg("--root").arg(root);
    command.arg("--log-level").arg(&config.log_level);
    if let Some(path) = config_path {
        command.arg("--config").arg(path);
    }
    command.stdin(Stdio::null()).stdout(Stdio::null()).process_group(0);
    Ok(command)
}

/// `strata lazy-daemon`: LAZY's keeper, for as long as a serve runs or an
/// overlay uses LAZY. SIGTERM or SIGINT unmounts LAZY and ends its session
/// at once.
pub fn run(config: &Config, config_path: Option<&Path>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut stop = runtime.block_on(async { StopSignal::new() })?;
    let store = config.open_store()?;
    let device = super::lazy::mount_device(&store)?.context("LAZY could not be mounted (see the messages above)")?;
    let dir = lazy_dir(&store);
    let journal = strata_lazy::create_journal()?;
    let _watcher = Watcher::start(&dir)
        .map_err(|e| tracing::warn!("starting the LAZY watcher: {e}; a killed keeper leaves a dead mount"))
        .ok();
    let servers = Servers::start(
        strata_command(config, config_path, store.root())?,
        device.try_clone()?,
        journal,
    )?;
    runtime.block_on(async {
        // A thread of its own: flock cannot be cancelled, and the
        // runtime would wait for a blocking task at shutdown.
        let (tell, no_serve) = tokio::sync::oneshot::channel();
        let waiter = store.clone();
        std::thread::Builder::new()
            .name("serve-watch".into())
            .spawn(move || tell.send(waiter.wait_no_serve()))
            .context("starting a thread")?;
        let mut ended = servers.ended;
        tokio::select! {
            held = no_serve => {
                let held = held.context("waiting for serve to end")??;
                detach(&dir);
                drop(held);
                tracing::info!(
                    "no strata serve runs: LAZY detached from {}, served for the overlays that still use it",
                    dir.display()
                );
            }
            () = stop.recv() => {
                detach(&dir);
                stop_now(&device, &servers.stopping, ended).await;
                return anyhow::Ok(());
            }
            _ = &mut ended => return anyhow::Ok(()),
        }
        tokio::select! {
            () = stop.recv() => stop_now(&device, &servers.stopping, ended).await,
            _ = &mut ended => {}
        }
        anyhow::Ok(())
    })?;
    tracing::info!("LAZY's session ended; strata lazy-daemon exits");
    Ok(())
}

/// SIGTERM or SIGINT: LAZY's session ends now (its mount is detached
/// already), and the server with it.
async fn stop_now(device: &LazyDevice, stopping: &AtomicBool, ended: tokio::sync::oneshot::Receiver<()>) {
    tracing::info!("ending LAZY's session");
    stopping.store(true, Ordering::SeqCst);
    device.abort();
    if tokio::time::timeout(SERVER_STOP_WAIT, ended).await.is_err() {
        tracing::warn!("LAZY's server did not exit within {SERVER_STOP_WAIT:?} of its session's end");
    }
}

/// The keeper's servers, one at a time, on a thread of their own.
struct Servers {
    /// Set when the keeper ends the session: a server that exits then is
    /// not replaced.
    stopping: Arc<AtomicBool>,
    /// Fires when no server runs any more and none will.
    ended: tokio::sync::oneshot::Receiver<()>,
}

impl Servers {
    fn start(command: Command, device: LazyDevice, journal: OwnedFd) -> anyhow::Result<Servers> {
        let stopping = Arc::new(AtomicBool::new(false));
        let (tell, ended) = tokio::sync::oneshot::channel();
        let flag = stopping.clone();
        std::thread::Builder::new()
            .name("lazy-servers".into())
            .spawn(move || {
                keep_serving(command, &device, &journal, &flag);
                let _ = tell.send(());
            })
            .context("starting a thread")?;
        Ok(Servers { stopping, ended })
    }
}

/// Runs `strata lazy-server` on the session, and a successor whenever it
/// dies by a signal or a panic, until the session ends. Any other way out
/// ends the session, so that no open waits for a server that will not come.
fn keep_serving(mut command: Command, device: &LazyDevice, journal: &OwnedFd, stopping: &AtomicBool) {
    // Passed down: not close-on-exec here (the keeper starts no other
    // program after its watcher).
    for fd in [device.fd(), journal.as_fd()] {
        if let Err(e) = strata_sys::keep_across_exec(fd) {
            tracing::error!("passing LAZY's fds to its server: {e}; LAZY's session ends");
            return device.abort();
        }
    }
    command
        .arg("lazy-server")
        .arg("--fuse-fd")
        .arg(device.fd().as_raw_fd().to_string())
        .arg("--journal-fd")
        .arg(journal.as_raw_fd().to_string())
        .arg("--connection")
        .arg(device.connection().to_string());
    let mut restarts = VecDeque::new();
    while !stopping.load(Ordering::SeqCst) {
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!("starting strata lazy-server: {e}; LAZY's session ends");
                return device.abort();
            }
        };
        let pid = child.id();
        tracing::info!("LAZY served by strata lazy-server (pid {pid})");
        let status = match wait_or_stop(&mut child, stopping) {
            Ok(status) => status,
            Err(e) => {
                tracing::error!("waiting for strata lazy-server (pid {pid}): {e}; LAZY's session ends");
                return device.abort();
            }
        };
        if status.success() || stopping.load(Ordering::SeqCst) {
            return;
        }
        // 101: a panic. A plain error exit is a server that cannot serve
        // (no passthrough, no store): a successor would fail alike.
        if status.signal().is_none() && status.code() != Some(101) {
            tracing::error!("strata lazy-server (pid {pid}) failed ({status}); LAZY's session ends");
            return device.abort();
        }
        restarts.retain(|at: &Instant| at.elapsed() < RESTART_WINDOW);
        if restarts.len() >= MAX_RESTARTS {
            tracing::error!(
                "strata lazy-server died {MAX_RESTARTS} times within {RESTART_WINDOW:?}; LAZY's session ends"
            );
            return device.abort();
        }
        restarts.push_back(Instant::now());
        tracing::warn!("strata lazy-server (pid {pid}) died ({status}); a successor takes its session over");
        std::thread::sleep(RESTART_DELAY);
    }
}

/// Waits for the server to exit; kills it once the keeper stops, so that
/// the last /dev/fuse fd goes with the keeper and the kernel ends the
/// connection (even where fusectl is not mounted to abort it).
fn wait_or_stop(child: &mut std::process::Child, stopping: &AtomicBool) -> std::io::Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if stopping.load(Ordering::SeqCst) {
            let _ = child.kill();
            return child.wait();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

//! The socket and the server's life: bind with a safe mode, refuse to steal
//! a live socket, wrap each connection in the `:authority` shim, serve until
//! the shutdown future resolves, then drain the calls in flight and remove
//! the socket.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{Gid, Mode};
use strata_snapshotter::Snapshotter;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::api::snapshots::snapshots_server::SnapshotsServer;
use crate::authority::{AuthorityShim, MAX_FRAME_SIZE};
use crate::{CallObserver, SnapshotService};

/// How long SIGTERM waits for the calls in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Where and how the socket is created.
#[derive(Clone, Debug)]
pub struct SocketOptions {
    pub path: PathBuf,
    /// A group allowed to connect: the socket becomes 0660 and owned by it.
    /// Without one the socket is 0600, for its owner (root) only.
    pub group: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{path}: another process is serving on this socket")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Removes a socket left by a dead server; refuses a live one or a
/// non-socket file.
fn clear_stale_socket(path: &Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket { path: path.to_owned() });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::InUse { path: path.to_owned() });
    }
    std::fs::remove_file(path).map_err(io_err("remove", path))
}

/// Binds the socket so that it never exists with a wider mode than wanted.
fn bind(opts: &SocketOptions) -> Result<UnixListener, ServeError> {
    let path = opts.path.as_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    clear_stale_socket(path)?;
    let mask = if opts.group.is_some() { 0o117 } else { 0o177 };
    let old = rustix::process::umask(Mode::from_raw_mode(mask));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound.map_err(io_err("bind", path))?;
    if let Some(gid) = opts.group {
        rustix::fs::chown(path, None, Some(Gid::from_raw(gid))).map_err(|e| io_err("chown", path)(e.into()))?;
    }
    Ok(listener)
}

/// Serves the snapshots API on `opts.path` until `shutdown` resolves, then
/// lets the calls in flight finish and removes the socket. `ready` runs once
/// the socket accepts connections (for a service manager's readiness);
/// `observer`, if any, is told of every call as it ends.
pub async fn serve(
    snapshotter: Arc<Snapshotter>,
    opts: &SocketOptions,
    observer: Option<Arc<dyn CallObserver>>,
    ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener = bind(opts)?;
    tracing::info!(socket = %opts.path.display(), "serving containerd snapshots API");
    ready();
    let mut service = SnapshotService::new(snapshotter);
    if let Some(observer) = observer {
        service = service.with_observer(observer);
    }
    let in_flight = service.in_flight();
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    // Every connection passes the :authority shim (crate::authority), which
    // holds clients to this frame size.
    let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityShim::new));
    let server = tonic::transport::Server::builder()
        .max_frame_size(MAX_FRAME_SIZE)
        .add_service(SnapshotsServer::new(service))
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = stopping.send(());
        });
    // Graceful shutdown alone would also wait for idle client connections;
    // strata waits for the calls in flight only, at most DRAIN_LIMIT.
    let drained = async move {
        if stopped.await.is_err() {
            return std::future::pending().await;
        }
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
        while in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = in_flight.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(
                left,
                "drain limit reached; calls still running are cut (recovered at start)"
            );
        }
    };
    let served = tokio::select! {
        r = server => r,
        () = drained => Ok(()),
    };
    let _ = std::fs::remove_file(&opts.path);
    served?;
    tracing::info!("drained; stopped");
    Ok(())
}

//! The gRPC service: each call runs the snapshotter on a blocking thread,
//! since snapshot operations touch the disk and mount filesystems. Stat and
//! List answered from the snapshotter's info cache skip that thread.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_snapshotter::{SnapshotError, Snapshotter};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::snapshots::{self as pb, snapshots_server::Snapshots};
use crate::convert::{code_name, info_from_pb, info_to_pb, mounts_to_pb, status_of};

/// How many infos one List message carries.
const LIST_BATCH: usize = 100;

/// Told of every call as it ends, e.g. to keep metrics; it sees no gRPC
/// types, only names.
pub trait CallObserver: Send + Sync {
    /// `op` is the snapshot operation (`"prepare"`, `"list"`, ..), `elapsed`
    /// its time in the snapshotter (on a blocking thread, or a cache lookup),
    /// `error` the gRPC code's name (`"NotFound"`, as Go's `codes.Code`
    /// prints it) when it failed.
    fn call_ended(&self, op: &'static str, elapsed: Duration, error: Option<&'static str>);
}

pub struct SnapshotService {
    snapshotter: Arc<Snapshotter>,
    in_flight: Arc<AtomicUsize>,
    observer: Option<Arc<dyn CallObserver>>,
}

/// Counts a call while it runs.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SnapshotService {
    pub fn new(snapshotter: Arc<Snapshotter>) -> Self {
        SnapshotService {
            snapshotter,
            in_flight: Arc::default(),
            observer: None,
        }
    }

    /// Tells `observer` of every call as it ends.
    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// How many calls are running now; the server drains on it.
    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }

    /// Runs `op` on a blocking thread and maps its error to a status.
    async fn run<T, F>(&self, name: &'static str, key: &str, op: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshotter) -> Result<T, SnapshotError> + Send + 'static,
    {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let _counted = InFlight(Arc::clone(&self.in_flight));
        let sn = Arc::clone(&self.snapshotter);
        let started = Instant::now();
        let result = match tokio::task::spawn_blocking(move || op(&sn)).await {
            Ok(result) => result,
            Err(e) => {
                self.observe(name, started, Some(tonic::Code::Internal));
                return Err(Status::internal(format!("{name}: worker failed: {e}")));
            }
        };
        self.finish(name, key, started, result)
    }

    /// Observes and logs a call's `result` and maps its error to a status.
    fn finish<T>(
        &self,
        name: &'static str,
        key: &str,
        started: Instant,
        result: Result<T, SnapshotError>,
    ) -> Result<T, Status> {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(v) => {
                self.observe(name, started, None);
                tracing::debug!(op = name, key, micros, "ok");
                Ok(v)
            }
            Err(e) => {
                let status = status_of(&e);
                self.observe(name, started, Some(status.code()));
                if status.code() == tonic::Code::Internal {
                    tracing::error!(op = name, key, micros, "{e}");
                } else {
                    tracing::debug!(op = name, key, micros, "{e}");
                }
                Err(status)
            }
        }
    }

    fn observe(&self, op: &'static str, started: Instant, error: Option<tonic::Code>) {
        if let Some(observer) = &self.observer {
            observer.call_ended(op, started.elapsed(), error.map(code_name));
        }
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let key = r.key.clone();
        let labels = r.labels.into_iter().collect();
        let mounts = self
            .run("prepare", &key, move |s| s.prepare(&r.key, &r.parent, labels))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn view(&self, req: Request<pb::ViewSnapshotRequest>) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let key = r.key.clone();
        let labels = r.labels.into_iter().collect();
        let mounts = self
            .run("view", &key, move |s| s.view(&r.key, &r.parent, labels))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn mounts(&self, req: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let r = req.into_inner();
        let key = r.key.clone();
        let mounts = self.run("mounts", &key, move |s| s.mounts(&r.key)).await?;
        Ok(Response::new(pb::MountsResponse {
            mounts: mounts_to_pb(mounts),
        }))
    }

    async fn commit(&self, req: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let key = r.key.clone();
        let labels = r.labels.into_iter().collect();
        self.run("commit", &key, move |s| s.commit(&r.name, &r.key, labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let key = r.key.clone();
        self.run("remove", &key, move |s| s.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(&self, req: Request<pb::StatSnapshotRequest>) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let r = req.into_inner();
        let started = Instant::now();
        let info = match self.snapshotter.stat_cached(&r.key) {
            Some(cached) => self.finish("stat", &r.key, started, cached)?,
            None => {
                let key = r.key.clone();
                self.run("stat", &key, move |s| s.stat(&r.key)).await?
            }
        };
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r
            .info
            .map(info_from_pb)
            .ok_or_else(|| Status::invalid_argument("update: no info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let key = info.name.clone();
        let info = self.run("update", &key, move |s| s.update(&info, &paths)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    type ListStream = ListStream;

    async fn list(&self, req: Request<pb::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let r = req.into_inner();
        let started = Instant::now();
        let infos = match self.snapshotter.walk_cached(&r.filters) {
            Some(cached) => self.finish("list", "", started, cached)?,
            None => self.run("list", "", move |s| s.walk(&r.filters)).await?,
        };
        let mut batches = Vec::with_capacity(infos.len().div_ceil(LIST_BATCH));
        let mut infos = infos.into_iter().map(info_to_pb).peekable();
        while infos.peek().is_some() {
            let info = infos.by_ref().take(LIST_BATCH).collect();
            batches.push(Ok(pb::ListSnapshotsResponse { info }));
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let r = req.into_inner();
        let key = r.key.clone();
        let usage = self.run("usage", &key, move |s| s.usage(&r.key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: usage.size,
            inodes: usage.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.run("cleanup", "", |s| s.cleanup()).await?;
        Ok(Response::new(()))
    }
}

//! strata-bench-null: a snapshotter that keeps its snapshots in a map and
//! does nothing else, served as a containerd proxy plugin. What containerd
//! and gRPC cost a proxy snapshotter per call, with no snapshotter work:
//! the floor under strata's numbers through containerd (bench/proxy-floor).

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;

use anyhow::{Context, Result};
use clap::Parser;
use strata_grpc::api::snapshots::{self as pb, snapshots_server::Snapshots, snapshots_server::SnapshotsServer};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Parser)]
struct Args {
    /// Unix socket to serve on.
    #[arg(long)]
    socket: PathBuf,
}

#[derive(Default)]
struct Null {
    infos: Mutex<HashMap<String, pb::Info>>,
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

impl Null {
    fn infos(&self) -> std::sync::MutexGuard<'_, HashMap<String, pb::Info>> {
        self.infos.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn create(
        &self,
        key: String,
        parent: String,
        kind: pb::Kind,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let mut infos = self.infos();
        if infos.contains_key(&key) {
            return Err(Status::already_exists(key));
        }
        let info = pb::Info {
            name: key.clone(),
            parent,
            kind: kind.into(),
            created_at: Some(now()),
            updated_at: Some(now()),
            labels,
        };
        infos.insert(key, info);
        Ok(())
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Null {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.create(r.key, r.parent, pb::Kind::Active, r.labels)?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts: Vec::new() }))
    }

    async fn view(&self, req: Request<pb::ViewSnapshotRequest>) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        self.create(r.key, r.parent, pb::Kind::View, r.labels)?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: Vec::new() }))
    }

    async fn mounts(&self, _req: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        Ok(Response::new(pb::MountsResponse { mounts: Vec::new() }))
    }

    async fn commit(&self, req: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let mut infos = self.infos();
        if infos.contains_key(&r.name) {
            return Err(Status::already_exists(r.name));
        }
        let mut info = infos.remove(&r.key).ok_or_else(|| Status::not_found(r.key.clone()))?;
        info.name = r.name.clone();
        info.kind = pb::Kind::Committed.into();
        info.labels = r.labels;
        infos.insert(r.name, info);
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        match self.infos().remove(&key) {
            Some(_) => Ok(Response::new(())),
            None => Err(Status::not_found(key)),
        }
    }

    async fn stat(&self, req: Request<pb::StatSnapshotRequest>) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        let info = self.infos().get(&key).cloned().ok_or_else(|| Status::not_found(key))?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(info) }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let info = req
            .into_inner()
            .info
            .ok_or_else(|| Status::invalid_argument("no info"))?;
        let mut infos = self.infos();
        let stored = infos
            .get_mut(&info.name)
            .ok_or_else(|| Status::not_found(info.name.clone()))?;
        stored.labels = info.labels;
        stored.updated_at = Some(now());
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(stored.clone()),
        }))
    }

    type ListStream = ListStream;

    async fn list(&self, _req: Request<pb::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let info: Vec<pb::Info> = self.infos().values().cloned().collect();
        let answer = pb::ListSnapshotsResponse { info };
        Ok(Response::new(Box::pin(tokio_stream::iter([Ok(answer)]))))
    }

    async fn usage(&self, _req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        Ok(Response::new(pb::UsageResponse { size: 0, inodes: 0 }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_file(&args.socket);
    let listener =
        tokio::net::UnixListener::bind(&args.socket).with_context(|| format!("bind {}", args.socket.display()))?;
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(Null::default()))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await
        .context("serving")
}

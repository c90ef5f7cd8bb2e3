//! A client for strata's socket, for tests and benchmarks.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::api::snapshots::snapshots_client::SnapshotsClient;

/// Dials the unix socket at `path`.
pub async fn connect(path: &Path) -> Result<SnapshotsClient<Channel>, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    // The URI is required by the API and unused: the connector dials `path`.
    let channel = Endpoint::from_static("http://strata.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(SnapshotsClient::new(channel))
}

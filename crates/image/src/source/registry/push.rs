//! Pushing to a registry, configured as pulls are (hosts, credentials,
//! TLS): the first host whose capabilities include `push` takes it, as in
//! containerd. Blobs are uploaded monolithically (POST, then one PUT of
//! the whole blob streamed from its file), after a HEAD that skips the
//! ones the repository has; the manifest last.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::hosts::{self, Endpoint};
use super::token::{self, HostError, Requester};
use super::{http, RegistryConfig};
use crate::reference::check_digest;
use crate::{ImageRef, ImportError, RegistryRef};

/// An image reference to push to. `Send + Sync`; its calls block.
pub struct RegistryTarget {
    inner: Arc<Target>,
}

struct Target {
    reference: RegistryRef,
    config: Arc<RegistryConfig>,
    endpoint: Endpoint,
    /// `repository:NAME:pull,push`
    scope: String,
}

/// Bytes of a blob read ahead of the upload, per piece.
const UPLOAD_PIECE: u64 = 1 << 20;

impl RegistryTarget {
    pub fn new(reference: RegistryRef, config: Arc<RegistryConfig>) -> Result<Self, ImportError> {
        let endpoints = hosts::load(
            config.hosts_dir.as_deref(),
            &reference.registry,
            reference.is_loopback(),
        )?;
        let endpoint = endpoints
            .into_iter()
            .find(|e| e.capabilities.push)
            .ok_or_else(|| ImportError::Registry(format!("no host configured for {} may push", reference.registry)))?;
        http::client(&endpoint.tls)?;
        let scope = format!("repository:{}:pull,push", reference.repository);
        Ok(RegistryTarget {
            inner: Arc::new(Target {
                reference,
                config,
                endpoint,
                scope,
            }),
        })
    }

    pub fn describe(&self) -> String {
        ImageRef::Registry(self.inner.reference.clone()).to_string()
    }

    /// Whether the repository has the blob (HEAD).
    pub fn has_blob(&self, digest: &str) -> Result<bool, ImportError> {
        check_digest(digest)?;
        let target = self.inner.clone();
        let url = target.url(&format!("blobs/{digest}"));
        http::run(async move {
            let client = http::client(&target.endpoint.tls)?;
            let response = target
                .send(&client, || client.head(&url))
                .await
                .map_err(|e| failure(&url, e))?;
            match response.status().as_u16() {
                200..=299 => Ok(true),
                404 => Ok(false),
                _ => Err(failure(&url, token::status_error(response).await)),
            }
        })?
    }

    /// Uploads the `size` bytes of `file` (from offset 0) as `digest`.
    pub fn upload_blob(&self, digest: &str, size: u64, file: &File) -> Result<(), ImportError> {
        check_digest(digest)?;
        let file = file.try_clone().map_err(|e| ImportError::Io {
            what: format!("blob {digest}"),
            source: e,
        })?;
        let target = self.inner.clone();
        let digest = digest.to_owned();
        http::run(async move {
            let client = http::client(&target.endpoint.tls)?;
            let start = target.url("blobs/uploads/");
            let response = target
                .send(&client, || client.post(&start).header(CONTENT_LENGTH, 0))
                .await
                .map_err(|e| failure(&start, e))?;
            if response.status().as_u16() != 202 {
                return Err(failure(&start, token::status_error(response).await));
            }
            let mut url = upload_url(&start, &response)?;
            url.query_pairs_mut().append_pair("digest", &digest);
            let put = || {
                client
                    .put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, size)
                    .body(file_body(&file, size))
            };
            let same_host = url
                .host_str()
                .zip(url.port_or_known_default())
                .is_some_and(|(host, port)| {
                    target.endpoint.host == host || target.endpoint.host == format!("{host}:{port}")
                });
            let shown = url.to_string();
            let response = if same_host {
                target.send(&client, put).await.map_err(|e| failure(&shown, e))?
            } else {
                // Elsewhere (a storage host): without the registry's credentials.
                put()
                    .send()
                    .await
                    .map_err(|e| failure(&shown, HostError::Network(http::with_causes(&e.without_url()))))?
            };
            if !response.status().is_success() {
                return Err(failure(&shown, token::status_error(response).await));
            }
            Ok(())
        })?
    }

    /// Uploads a blob held in memory.
    pub fn upload_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ImportError> {
        let io_err = |e| ImportError::Io {
            what: format!("blob {digest}"),
            source: e,
        };
        let mut file = tempfile::tempfile().map_err(io_err)?;
        io::Write::write_all(&mut file, bytes).map_err(io_err)?;
        self.upload_blob(digest, bytes.len() as u64, &file)
    }

    /// PUTs the manifest under the reference's tag (else its digest, else
    /// `latest`).
    pub fn put_manifest(&self, media_type: &str, manifest: Vec<u8>) -> Result<(), ImportError> {
        let target = self.inner.clone();
        let r = &target.reference;
        let name = r.tag.as_deref().or(r.digest.as_deref()).unwrap_or("latest");
        let url = target.url(&format!("manifests/{name}"));
        let media_type = media_type.to_owned();
        http::run(async move {
            let client = http::client(&target.endpoint.tls)?;
            let response = target
                .send(&client, || {
                    client
                        .put(&url)
                        .header(CONTENT_TYPE, &media_type)
                        .body(manifest.clone())
                })
                .await
                .map_err(|e| failure(&url, e))?;
            if !response.status().is_success() {
                return Err(failure(&url, token::status_error(response).await));
            }
            Ok(())
        })?
    }
}

impl Target {
    fn url(&self, tail: &str) -> String {
        self.endpoint
            .url(&self.reference.registry, &self.reference.repository, tail)
    }

    async fn send(
        &self,
        client: &reqwest::Client,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, HostError> {
        let requester = Requester {
            client,
            endpoint: &self.endpoint,
            credential: self.config.credential(&self.endpoint.host),
            cache: &self.config.cache,
            scope: &self.scope,
        };
        token::send_with(&requester, build).await
    }
}

fn failure(url: &str, e: HostError) -> ImportError {
    match e {
        HostError::Unauthorized(reason) => ImportError::Unauthorized {
            url: format!("{url}: {reason}"),
        },
        other => ImportError::Registry(format!("{url}: {}", super::describe(&other))),
    }
}

/// Where the upload the POST started goes: its Location, which may be
/// relative to the POST's URL.
fn upload_url(start: &str, response: &reqwest::Response) -> Result<reqwest::Url, ImportError> {
    let location = response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ImportError::Registry(format!("{start}: the upload's answer has no Location")))?;
    reqwest::Url::parse(start)
        .and_then(|base| base.join(location))
        .map_err(|e| ImportError::Registry(format!("{start}: upload Location {location:?}: {e}")))
}

/// A blob's bytes streamed from `file` by a reader thread, a few pieces
/// ahead of the connection; its length is known to the request.
fn file_body(file: &File, size: u64) -> reqwest::Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(4);
    let file = file.try_clone();
    std::thread::spawn(move || {
        let file = match file {
            Ok(file) => file,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut offset = 0;
        while offset < size {
            let want = usize::try_from(UPLOAD_PIECE.min(size - offset)).unwrap_or(1 << 20);
            let mut piece = vec![0; want];
            let piece = match file.read_at(&mut piece, offset) {
                Ok(0) => Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => {
                    offset += n as u64;
                    piece.truncate(n);
                    Ok(Bytes::from(piece))
                }
                Err(e) => Err(e),
            };
            let failed = piece.is_err();
            if tx.blocking_send(piece).is_err() || failed {
                return;
            }
        }
    });
    reqwest::Body::wrap(FileBody {
        rx: std::sync::Mutex::new(rx),
        size,
    })
}

struct FileBody {
    rx: std::sync::Mutex<tokio::sync::mpsc::Receiver<io::Result<Bytes>>>,
    size: u64,
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, io::Error>>> {
        let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        rx.poll_recv(cx)
            .map(|piece| piece.map(|piece| piece.map(http_body::Frame::data)))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.size)
    }
}

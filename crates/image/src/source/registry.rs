//! An OCI registry over the distribution API, through `oci-client`: https,
//! or plain http for loopback; anonymous, basic or bearer-token auth.
//! Blobs stream through a bounded channel into the import threads.

use std::io::{self, Read};
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};

use super::{BlobSource, Fetched};
use crate::manifest::ACCEPTED;
use crate::{Descriptor, ImportError, RegistryRef};

pub use oci_client::secrets::RegistryAuth;

pub struct RegistrySource {
    reference: RegistryRef,
    client: Client,
    auth: RegistryAuth,
    runtime: Arc<tokio::runtime::Runtime>,
}

/// `e` and each of its causes, each once: "error sending request: client
/// error (Connect): tcp connect error: Connection refused (os error 111)".
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
}

fn registry_err(
    e: oci_client::errors::OciDistributionError,
    reference: &RegistryRef,
    digest: Option<&str>,
) -> ImportError {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode};
    let not_found = || {
        let repo = format!("{}/{}", reference.registry, reference.repository);
        ImportError::Registry(match digest.or(reference.digest.as_deref()) {
            Some(d) => format!("manifest {d} not found in {repo}"),
            None => format!(
                "tag {} not found in {repo}",
                reference.tag.as_deref().unwrap_or("latest")
            ),
        })
    };
    match e {
        E::UnauthorizedError { url } => ImportError::Unauthorized { url },
        E::AuthenticationFailure(reason) => ImportError::Unauthorized { url: reason },
        E::ImageManifestNotFoundError(_) | E::ServerError { code: 404, .. } => not_found(),
        E::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown)) =>
        {
            not_found()
        }
        other => ImportError::Registry(with_causes(&other)),
    }
}

impl RegistrySource {
    pub fn new(reference: RegistryRef, auth: RegistryAuth) -> Result<Self, ImportError> {
        let protocol = if reference.is_loopback() {
            ClientProtocol::HttpsExcept(vec![reference.registry.clone()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-net")
            .enable_all()
            .build()
            .map_err(|e| ImportError::Io {
                what: "starting the network runtime".into(),
                source: e,
            })?;
        Ok(RegistrySource {
            reference,
            client: Client::new(config),
            auth,
            runtime: Arc::new(runtime),
        })
    }

    fn oci_reference(&self, digest: Option<&str>) -> Reference {
        let r = &self.reference;
        match digest.or(r.digest.as_deref()) {
            Some(d) => Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_owned()),
            None => Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                r.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }

    fn fetch_document(&self, digest: Option<&str>) -> Result<Fetched, ImportError> {
        let reference = self.oci_reference(digest);
        let (bytes, _) = self
            .runtime
            .block_on(self.client.pull_manifest_raw(&reference, &self.auth, ACCEPTED))
            .map_err(|e| registry_err(e, &self.reference, digest))?;
        Ok(Fetched {
            bytes: bytes.to_vec(),
            media_type: None,
            expected_digest: digest.or(self.reference.digest.as_deref()).map(str::to_owned),
        })
    }
}

impl BlobSource for RegistrySource {
    fn describe(&self) -> String {
        crate::ImageRef::Registry(self.reference.clone()).to_string()
    }

    fn root_document(&self) -> Result<Fetched, ImportError> {
        self.fetch_document(None)
    }

    fn document(&self, desc: &Descriptor) -> Result<Fetched, ImportError> {
        self.fetch_document(Some(&desc.digest))
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, ImportError> {
        let reference = self.oci_reference(None);
        let client = self.client.clone();
        let auth = self.auth.clone();
        let digest = desc.digest.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(16);
        self.runtime.spawn(async move {
            client.store_auth_if_needed(reference.resolve_registry(), &auth).await;
            let mut stream = match client.pull_blob_stream(&reference, digest.as_str()).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx
                        .send(Err(io::Error::other(format!("fetching {digest}: {}", with_causes(&e)))))
                        .await;
                    return;
                }
            };
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| io::Error::other(format!("fetching {digest}: {}", with_causes(&e))));
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Box::new(NetReader {
            rx,
            current: bytes::Bytes::new(),
        }))
    }
}

struct NetReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for NetReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

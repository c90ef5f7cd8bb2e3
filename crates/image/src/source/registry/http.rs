//! The network shell: one tokio runtime and one HTTP client per TLS
//! setting for the whole process, waiting on them from plain threads, and
//! bounded body reads.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use super::hosts::TlsSettings;
use crate::ImportError;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(120);

struct Net {
    runtime: tokio::runtime::Runtime,
    clients: Mutex<HashMap<TlsSettings, reqwest::Client>>,
}

static NET: OnceLock<Result<Net, String>> = OnceLock::new();

fn net() -> Result<&'static Net, ImportError> {
    let net = NET.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("strata-net")
            .enable_all()
            .build()
            .map(|runtime| Net {
                runtime,
                clients: Mutex::new(HashMap::new()),
            })
            .map_err(|e| e.to_string())
    });
    net.as_ref()
        .map_err(|e| ImportError::Registry(format!("starting the network runtime: {e}")))
}

/// Runs `fut` on the network runtime and waits for it. Works from any
/// thread, a tokio worker's included (it blocks that thread).
pub(crate) fn run<T: Send + 'static>(fut: impl Future<Output = T> + Send + 'static) -> Result<T, ImportError> {
    let handle = net()?.runtime.spawn(fut);
    wait(handle).map_err(|e| ImportError::Registry(format!("network task failed: {e}")))
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `fut` to completion on this thread, parking between polls. For
/// futures driven elsewhere (a task's handle, a channel), so it needs no
/// runtime of its own and never panics inside one, as `block_on` would.
pub(crate) fn wait<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    // Outside tokio's cooperative budget: the budget of a runtime thread
    // this may block is never refilled while it waits.
    let mut fut = std::pin::pin!(tokio::task::coop::unconstrained(fut));
    loop {
        if let Poll::Ready(value) = fut.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

/// The process's client for `tls`, built on first use. Redirects are
/// followed (registries send blobs to storage hosts); reqwest drops the
/// Authorization header when a redirect leaves the host.
pub(crate) fn client(tls: &TlsSettings) -> Result<reqwest::Client, ImportError> {
    let net = net()?;
    if let Some(client) = net.clients.lock().unwrap_or_else(|e| e.into_inner()).get(tls) {
        return Ok(client.clone());
    }
    let client = build_client(tls)?;
    net.clients
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(tls.clone(), client.clone());
    Ok(client)
}

fn tls_err(path: &Path, reason: impl std::fmt::Display) -> ImportError {
    ImportError::RegistryConfig {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ImportError> {
    std::fs::read(path).map_err(|e| tls_err(path, e))
}

fn build_client(tls: &TlsSettings) -> Result<reqwest::Client, ImportError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")));
    for path in &tls.ca {
        let certs = reqwest::Certificate::from_pem_bundle(&read(path)?).map_err(|e| tls_err(path, with_causes(&e)))?;
        if certs.is_empty() {
            return Err(tls_err(path, "no PEM certificate in the file"));
        }
        builder = builder.tls_certs_merge(certs);
    }
    if let Some((cert_path, key_path)) = tls.client.first() {
        if tls.client.len() > 1 {
            tracing::warn!("only the first client certificate is used ({})", cert_path.display());
        }
        let cert_pem = read(cert_path)?;
        let key_pem = match key_path {
            Some(p) => read(p)?,
            None => cert_pem.clone(),
        };
        let key_path = key_path.as_deref().unwrap_or(cert_path);
        let certs = pem_blocks(&cert_pem, "CERTIFICATE");
        if certs.is_empty() {
            return Err(tls_err(cert_path, "no PEM certificate in the file"));
        }
        let key = pem_blocks(&key_pem, "PRIVATE KEY");
        let Some(key) = key.first() else {
            let other = ["RSA PRIVATE KEY", "EC PRIVATE KEY", "ENCRYPTED PRIVATE KEY"]
                .iter()
                .any(|label| !pem_blocks(&key_pem, label).is_empty());
            return Err(tls_err(
                key_path,
                if other {
                    "the key must be an unencrypted PKCS#8 PEM (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt`"
                } else {
                    "no PEM private key in the file"
                },
            ));
        };
        let identity =
            reqwest::Identity::from_pkcs8_pem(&certs.concat(), key).map_err(|e| tls_err(cert_path, with_causes(&e)))?;
        builder = builder.identity(identity);
    }
    if tls.skip_verify {
        builder = builder
            .tls_danger_accept_invalid_certs(true)
            .tls_danger_accept_invalid_hostnames(true);
    }
    builder
        .build()
        .map_err(|e| ImportError::Registry(format!("building the HTTP client: {}", with_causes(&e))))
}

/// The PEM blocks labelled exactly `label`, each with its BEGIN and END
/// lines.
fn pem_blocks(pem: &[u8], label: &str) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find(&begin) {
        let Some(len) = rest[start..].find(&end) else {
            break;
        };
        let stop = start + len + end.len();
        let mut block = rest.as_bytes()[start..stop].to_vec();
        block.push(b'\n');
        out.push(block);
        rest = &rest[stop..];
    }
    out
}

/// `e` and each of its causes, each once: "error sending request: client
/// error (Connect): tcp connect error: Connection refused (os error 111)".
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
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

#[derive(Debug)]
pub(crate) enum BodyError {
    /// The body passes the limit: its Content-Length, or the bytes seen
    /// when it passed.
    TooLarge(u64),
    Network(String),
}

/// The whole body of `response`, refused as soon as it would pass `limit`
/// bytes: from Content-Length before reading, else while streaming.
pub(crate) async fn read_bounded(mut response: reqwest::Response, limit: u64) -> Result<Vec<u8>, BodyError> {
    if let Some(length) = response.content_length() {
        if length > limit {
            return Err(BodyError::TooLarge(length));
        }
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let total = u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX);
                if total > limit {
                    return Err(BodyError::TooLarge(total));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyError::Network(with_causes(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_cut_out_by_label() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\
            -----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n\
            -----BEGIN CERTIFICATE-----\nCCC\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nunterminated";
        let certs = pem_blocks(pem, "CERTIFICATE");
        assert_eq!(certs.len(), 2);
        assert!(certs[1].starts_with(b"-----BEGIN CERTIFICATE-----\nCCC"));
        assert_eq!(
            pem_blocks(pem, "PRIVATE KEY"),
            [b"-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n".to_vec()]
        );
        assert!(pem_blocks(b"\xff\xfe-----BEGIN", "CERTIFICATE").is_empty());
    }

    #[test]
    fn wait_works_inside_and_outside_a_runtime() {
        assert_eq!(run(async { 7 }).unwrap(), 7);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        // A caller on a runtime thread blocks it but does not panic.
        assert_eq!(rt.block_on(async { run(async { 8 }).unwrap() }), 8);
    }

    #[test]
    fn bad_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = build_client(&TlsSettings {
            ca: vec![missing.clone()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here").unwrap();
        let e = build_client(&TlsSettings {
            ca: vec![empty.clone()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let rsa = dir.path().join("rsa.pem");
        std::fs::write(
            &rsa,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n-----BEGIN RSA PRIVATE KEY-----\nAA==\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = build_client(&TlsSettings {
            client: vec![(rsa, None)],
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("PKCS#8"), "{e}");
    }
}

//! An OCI registry over the distribution API, configured like containerd:
//! endpoints (mirrors, then the upstream) from `hosts.toml`
//! ([`hosts`]), credentials from a docker `config.json` ([`auth`]),
//! anonymous, Basic or Bearer-token auth ([`token`]). Documents are read
//! up to [`MAX_DOCUMENT`](super::MAX_DOCUMENT); blobs stream through a
//! bounded channel into the import threads, never whole in memory; byte
//! ranges of a blob come several per request ([`ranges`]).

mod auth;
mod hosts;
mod http;
mod push;
mod ranges;
mod token;

use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{BlobSource, Fetched, MAX_DOCUMENT};
use crate::manifest::ACCEPTED;
use crate::progress::{BlobRead, Received};
use crate::reference::check_digest;
use crate::{Descriptor, ImportError, RegistryRef};
use auth::{AuthFile, Credential};
use hosts::Endpoint;
use token::{AuthCache, HostError, Requester};

pub use push::RegistryTarget;

/// Where registries are reached and with which credentials; shared by
/// every [`RegistrySource`] of a process (tokens are cached here).
#[derive(Debug, Default)]
pub struct RegistryConfig {
    /// containerd's `config_path`: `<dir>/<host[:port]>/hosts.toml`.
    hosts_dir: Option<PathBuf>,
    auth: AuthFile,
    /// `--creds`: used for every host, before the auth file.
    basic: Option<Credential>,
    cache: AuthCache,
}

impl RegistryConfig {
    /// `hosts_dir` need not exist (then no host is configured; it is
    /// looked at again for each source). `auth_file`, if given, must.
    pub fn new(hosts_dir: Option<PathBuf>, auth_file: Option<&Path>) -> Result<Self, ImportError> {
        let auth = match auth_file {
            None => AuthFile::default(),
            Some(path) => {
                let err = |reason: String| ImportError::RegistryConfig {
                    path: path.to_owned(),
                    reason,
                };
                let bytes = std::fs::read(path).map_err(|e| err(format!("auth file: {e}")))?;
                AuthFile::parse(&bytes).map_err(|e| err(format!("auth file: {e}")))?
            }
        };
        Ok(RegistryConfig {
            hosts_dir,
            auth,
            basic: None,
            cache: AuthCache::default(),
        })
    }

    /// Uses `user` and `password` for every host, whatever the auth file says.
    pub fn with_basic(mut self, user: String, password: String) -> Self {
        self.basic = Some(Credential::Basic {
            username: user,
            password,
        });
        self
    }

    fn credential(&self, host: &str) -> Option<&Credential> {
        self.basic.as_ref().or_else(|| self.auth.lookup(host))
    }
}

/// One image reference in a registry. Cheap to create; `Send + Sync`, and
/// blobs may stream from many threads at once. Its calls block the calling
/// thread (from async code, use `spawn_blocking`); the network work runs
/// on one runtime shared by the process.
pub struct RegistrySource {
    inner: Arc<Inner>,
}

struct Inner {
    reference: RegistryRef,
    config: Arc<RegistryConfig>,
    /// Mirrors in order, the upstream last.
    endpoints: Vec<Endpoint>,
    /// `repository:NAME:pull`
    scope: String,
    /// Set once a host refused several ranges in one request: from then
    /// on each range is asked for alone ([`ranges`]).
    single_ranges: AtomicBool,
    /// Body bytes received, counted as they are read off the connection.
    received: Arc<Received>,
}

/// What is fetched, which decides the hosts that may serve it.
#[derive(Clone, Copy)]
enum Want<'a> {
    Tag(&'a str),
    Manifest(&'a str),
    Blob(&'a str),
}

impl Want<'_> {
    fn tail(self) -> String {
        match self {
            Want::Tag(r) | Want::Manifest(r) => format!("manifests/{r}"),
            Want::Blob(d) => format!("blobs/{d}"),
        }
    }

    /// Tags only from hosts that may resolve; anything by digest from
    /// hosts that may pull (containerd's rule).
    fn allowed(self, e: &Endpoint) -> bool {
        match self {
            Want::Tag(_) => e.capabilities.pull && e.capabilities.resolve,
            Want::Manifest(_) | Want::Blob(_) => e.capabilities.pull,
        }
    }
}

impl RegistrySource {
    /// Reads the registry's `hosts.toml` (each time: edits apply to the
    /// next pull) and prepares a client for each of its hosts.
    pub fn new(reference: RegistryRef, config: Arc<RegistryConfig>) -> Result<Self, ImportError> {
        let endpoints = hosts::load(
            config.hosts_dir.as_deref(),
            &reference.registry,
            reference.is_loopback(),
        )?;
        for endpoint in &endpoints {
            // Refuses unreadable CA and client certificate files now.
            http::client(&endpoint.tls)?;
        }
        let scope = format!("repository:{}:pull", reference.repository);
        Ok(RegistrySource {
            inner: Arc::new(Inner {
                reference,
                config,
                endpoints,
                scope,
                single_ranges: AtomicBool::new(false),
                received: Arc::default(),
            }),
        })
    }

    /// Starts the network runtime and builds the HTTP client of hosts
    /// with no TLS settings of their own (loading the system's CAs takes
    /// tens of ms), so that the first pull or fetch does not wait for it.
    pub fn warm_up() {
        if let Err(e) = http::client(&hosts::TlsSettings::default()) {
            tracing::debug!("preparing the HTTP client: {e}");
        }
    }

    /// Counts the body bytes this source receives into `received`. Call
    /// it where the source is built: it panics once a blob is streaming.
    pub fn with_received(mut self, received: Arc<Received>) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("with_received is called before any fetch");
        inner.received = received;
        self
    }

    /// A blob as a stream, counted as a document or as a whole blob.
    fn stream(&self, desc: &Descriptor, read: Option<BlobRead>) -> Result<Box<dyn Read + Send>, ImportError> {
        check_digest(&desc.digest)?;
        let inner = self.inner.clone();
        let digest = desc.digest.clone();
        let size = desc.size;
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(16);
        http::run(async move {
            let (mut response, url) = inner.get(Want::Blob(&digest)).await?;
            if response.content_length().is_some_and(|length| length > size) {
                return Err(ImportError::BlobTooLong { digest, expected: size });
            }
            if read.is_some() {
                inner.received.whole_read(&digest);
            }
            tokio::spawn(async move {
                loop {
                    let chunk = match response.chunk().await {
                        Ok(Some(chunk)) => {
                            let n = chunk.len() as u64;
                            match read {
                                Some(read) => inner.received.blob_bytes(&digest, read, n),
                                None => inner.received.document(n),
                            }
                            Ok(chunk)
                        }
                        Ok(None) => return,
                        Err(e) => Err(io::Error::other(format!(
                            "fetching {digest} from {url}: {}",
                            http::with_causes(&e)
                        ))),
                    };
                    let failed = chunk.is_err();
                    // A closed channel: the reader was dropped.
                    if tx.send(chunk).await.is_err() || failed {
                        return;
                    }
                }
            });
            Ok(())
        })??;
        Ok(Box::new(NetReader {
            rx,
            current: bytes::Bytes::new(),
        }))
    }

    fn ranges_as(&self, desc: &Descriptor, ranges: &[Range<u64>], read: BlobRead) -> Result<Vec<Vec<u8>>, ImportError> {
        check_digest(&desc.digest)?;
        super::ranges::check_ranges(desc, ranges)?;
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let blob = ranges::Blob {
            digest: desc.digest.clone(),
            size: desc.size,
            read,
        };
        let ranges = ranges.to_vec();
        http::run(async move { ranges::read(inner, blob, ranges).await })?
    }
}

impl Inner {
    fn repo(&self) -> String {
        format!("{}/{}", self.reference.registry, self.reference.repository)
    }

    /// The first host's successful answer, trying each allowed host in
    /// order while they fail (no answer, 404, 5xx, anything else).
    async fn get(&self, want: Want<'_>) -> Result<(reqwest::Response, String), ImportError> {
        self.get_with(want, &[], &[]).await
    }

    /// [`get`](Self::get) with `headers` added to the request, taking the
    /// statuses in `answers` as answers too (not as a host's failure).
    async fn get_with(
        &self,
        want: Want<'_>,
        headers: &[(reqwest::header::HeaderName, &str)],
        answers: &[reqwest::StatusCode],
    ) -> Result<(reqwest::Response, String), ImportError> {
        let accept: &[&str] = match want {
            Want::Blob(_) => &[],
            _ => ACCEPTED,
        };
        let tail = want.tail();
        let mut failures: Vec<(String, HostError)> = Vec::new();
        for endpoint in self.endpoints.iter().filter(|e| want.allowed(e)) {
            let url = endpoint.url(&self.reference.registry, &self.reference.repository, &tail);
            let client = http::client(&endpoint.tls)?;
            let requester = Requester {
                client: &client,
                endpoint,
                credential: self.config.credential(&endpoint.host),
                cache: &self.config.cache,
                scope: &self.scope,
            };
            let request = || {
                let mut request = client.get(&url);
                if !accept.is_empty() {
                    request = request.header(reqwest::header::ACCEPT, accept.join(", "));
                }
                for (name, value) in headers {
                    request = request.header(name, *value);
                }
                request
            };
            let failure = match token::send_with(&requester, request).await {
                Ok(response) if response.status().is_success() || answers.contains(&response.status()) => {
                    tracing::debug!(host = %endpoint.root(), "{tail} of {} served", self.repo());
                    return Ok((response, url));
                }
                Ok(response) => token::status_error(response).await,
                Err(e) => e,
            };
            tracing::debug!(host = %endpoint.root(), "{tail} of {}: {failure:?}; trying the next host", self.repo());
            failures.push((url, failure));
        }
        Err(self.failed(want, failures))
    }

    /// The last host's failure (the upstream's, normally), with the
    /// others' as context.
    fn failed(&self, want: Want<'_>, mut failures: Vec<(String, HostError)>) -> ImportError {
        let Some((url, last)) = failures.pop() else {
            let what = match want {
                Want::Tag(_) => "resolve tags (capability resolve)",
                _ => "serve content (capability pull)",
            };
            return ImportError::Registry(format!("no host configured for {} may {what}", self.reference.registry));
        };
        let others: String = failures
            .iter()
            .map(|(url, e)| format!("; {url}: {}", describe(e)))
            .collect();
        match last {
            HostError::Unauthorized(reason) => ImportError::Unauthorized {
                url: format!("{url}: {reason}{others}"),
            },
            HostError::Status { status: 404, .. } => match want {
                Want::Tag(tag) => ImportError::Registry(format!("tag {tag} not found in {}{others}", self.repo())),
                Want::Manifest(d) => {
                    ImportError::Registry(format!("manifest {d} not found in {}{others}", self.repo()))
                }
                Want::Blob(d) => ImportError::MissingBlob {
                    digest: d.to_owned(),
                    source_name: format!("{}{others}", self.repo()),
                },
            },
            other => ImportError::Registry(format!("{url}: {}{others}", describe(&other))),
        }
    }

    async fn document(&self, digest: Option<&str>) -> Result<Fetched, ImportError> {
        let r = &self.reference;
        let digest = digest.or(r.digest.as_deref());
        let want = match digest {
            Some(d) => Want::Manifest(check_digest(d).map(|_| d)?),
            None => Want::Tag(r.tag.as_deref().unwrap_or("latest")),
        };
        let (response, url) = self.get(want).await?;
        // The answer's type helps only a document that names none itself.
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim())
            .filter(|v| ACCEPTED.contains(v))
            .map(str::to_owned);
        let bytes = http::read_bounded(response, MAX_DOCUMENT).await.map_err(|e| match e {
            http::BodyError::TooLarge(size) => ImportError::DocumentTooLarge {
                what: "manifest",
                digest: digest.map_or_else(|| crate::ImageRef::Registry(r.clone()).to_string(), str::to_owned),
                size,
                limit: MAX_DOCUMENT,
            },
            http::BodyError::Network(e) => ImportError::Registry(format!("reading {url}: {e}")),
        })?;
        self.received.document(bytes.len() as u64);
        Ok(Fetched {
            bytes,
            media_type,
            expected_digest: digest.map(str::to_owned),
        })
    }
}

fn describe(e: &HostError) -> String {
    match e {
        HostError::Network(text) | HostError::Unauthorized(text) => text.clone(),
        HostError::Status { detail, .. } => detail.clone(),
    }
}

impl BlobSource for RegistrySource {
    fn describe(&self) -> String {
        crate::ImageRef::Registry(self.inner.reference.clone()).to_string()
    }

    fn root_document(&self) -> Result<Fetched, ImportError> {
        let inner = self.inner.clone();
        http::run(async move { inner.document(None).await })?
    }

    fn document(&self, desc: &Descriptor) -> Result<Fetched, ImportError> {
        let inner = self.inner.clone();
        let digest = desc.digest.clone();
        http::run(async move { inner.document(Some(&digest)).await })?
    }

    fn blob_bytes(&self, desc: &Descriptor) -> Result<Vec<u8>, ImportError> {
        super::read_document(self.stream(desc, None)?, desc, "blob")
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>, ImportError> {
        self.stream(desc, Some(BlobRead::Whole))
    }

    fn read_ranges(&self, desc: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError> {
        self.ranges_as(desc, ranges, BlobRead::Data)
    }

    fn read_metadata_ranges(&self, desc: &Descriptor, ranges: &[Range<u64>]) -> Result<Vec<Vec<u8>>, ImportError> {
        self.ranges_as(desc, ranges, BlobRead::Metadata)
    }
}

struct NetReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for NetReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match http::wait(self.rx.recv()) {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which hosts each request goes to, in order.
    fn plan(text: &str, want: Want<'_>) -> Vec<String> {
        hosts::parse(text, Path::new("/d"), "r.example", false)
            .unwrap()
            .iter()
            .filter(|e| want.allowed(e))
            .map(|e| e.url("r.example", "team/app", &want.tail()))
            .collect()
    }

    #[test]
    fn sources_are_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<RegistrySource>();
        shared::<RegistryConfig>();
    }

    #[test]
    fn tags_go_only_to_hosts_that_resolve() {
        let text = r#"
server = "https://r.example"
[host."http://pull-only.example"]
  capabilities = ["pull"]
[host."https://both.example/api"]
  capabilities = ["pull", "resolve"]
  override_path = true
[host."https://push-only.example"]
  capabilities = ["push"]
"#;
        assert_eq!(
            plan(text, Want::Tag("1.0")),
            [
                "https://both.example/api/team/app/manifests/1.0?ns=r.example",
                "https://r.example/v2/team/app/manifests/1.0",
            ]
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            plan(text, Want::Blob(&digest)),
            [
                format!("http://pull-only.example/v2/team/app/blobs/{digest}?ns=r.example"),
                format!("https://both.example/api/team/app/blobs/{digest}?ns=r.example"),
                format!("https://r.example/v2/team/app/blobs/{digest}"),
            ]
        );
        assert_eq!(plan(text, Want::Manifest(&digest)).len(), 3);
    }

    #[test]
    fn failures_name_the_last_host_and_the_others() {
        let Ok(crate::ImageRef::Registry(reference)) = "r.example/team/app:1.0".parse() else {
            panic!("a registry reference")
        };
        let source = RegistrySource::new(reference, Arc::new(RegistryConfig::default())).unwrap();
        let inner = &source.inner;
        let e = inner.failed(
            Want::Tag("1.0"),
            vec![
                ("http://m/x".into(), HostError::Network("connection refused".into())),
                (
                    "https://r/x".into(),
                    HostError::Status {
                        status: 404,
                        detail: "404 Not Found".into(),
                    },
                ),
            ],
        );
        assert_eq!(
            e.to_string(),
            "registry: tag 1.0 not found in r.example/team/app; http://m/x: connection refused"
        );
        let e = inner.failed(
            Want::Blob("sha256:ab"),
            vec![("u".into(), HostError::Unauthorized("no credentials for r".into()))],
        );
        assert!(matches!(e, ImportError::Unauthorized { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("refused the credentials for u: no credentials for r"),
            "{e}"
        );
        let e = inner.failed(Want::Tag("1.0"), vec![]);
        assert!(
            e.to_string()
                .contains("no host configured for r.example may resolve tags"),
            "{e}"
        );
    }

    #[test]
    fn explicit_credentials_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.json");
        std::fs::write(&file, r#"{"auths": {"r.example": {"auth": "YTpi"}}}"#).unwrap();
        let config = RegistryConfig::new(None, Some(&file)).unwrap();
        assert!(matches!(config.credential("r.example"), Some(Credential::Basic { username, .. }) if username == "a"));
        assert!(config.credential("mirror.example").is_none());
        let config = config.with_basic("me".into(), "pw".into());
        for host in ["r.example", "mirror.example"] {
            assert!(matches!(config.credential(host), Some(Credential::Basic { username, .. }) if username == "me"));
        }
        let missing = dir.path().join("nope.json");
        let e = RegistryConfig::new(None, Some(&missing)).unwrap_err();
        assert!(e.to_string().contains("nope.json"), "{e}");
        // A hosts directory that does not exist configures nothing.
        RegistryConfig::new(Some(dir.path().join("no-such-dir")), None).unwrap();
    }
}

//! Which endpoints serve a registry, in the order they are tried:
//! containerd's `hosts.toml` (its docs/hosts.md), read from
//! `<config_path>/<host[:port]>/hosts.toml` or `<config_path>/_default/`.
//! The `[host."..."]` mirrors come first, in file order, then the upstream
//! (`server`, or the registry itself). Parsing is pure ([`parse`]); only
//! [`load`] touches the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ImportError;

/// What a host may be asked for. containerd's `capabilities`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capabilities {
    /// Blobs and manifests by digest.
    pub pull: bool,
    /// Manifests by tag.
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// How to reach a host over TLS. Equal settings share one HTTP client.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct TlsSettings {
    /// PEM files of CAs trusted on top of the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificate and key; without a key file, the key is in the
    /// certificate's file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One host a registry's content may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub scheme: Scheme,
    /// `host[:port]`, as in a URL; credentials are looked up under it.
    pub host: String,
    /// The API root: `/v2`, or with `override_path` the server's own path
    /// as written (possibly empty). Never ends in `/`.
    pub path: String,
    pub capabilities: Capabilities,
    pub tls: TlsSettings,
    /// Extra request headers (`[header]`), in name order.
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// `scheme://host/v2`, for messages and URLs.
    pub fn root(&self) -> String {
        format!("{}://{}{}", self.scheme.as_str(), self.host, self.path)
    }

    /// The URL of `tail` (`manifests/latest`, `blobs/sha256:..`) in
    /// `repository`, with containerd's `ns` parameter when this host is
    /// not the registry itself (a mirror serving several registries needs
    /// to know which one is meant).
    pub fn url(&self, registry: &str, repository: &str, tail: &str) -> String {
        let mut url = format!("{}/{repository}/{tail}", self.root());
        if self.host != registry && !(registry == "docker.io" && self.host == DOCKER_HUB_HOST) {
            url.push_str("?ns=");
            url.push_str(registry);
        }
        url
    }
}

/// Where `docker.io` is served.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// The upstream when nothing is configured: `https://host/v2`, plain
/// http for loopback, and Docker Hub's real host for `docker.io`.
pub(crate) fn default_endpoint(registry: &str, loopback: bool) -> Endpoint {
    let (scheme, host) = if registry == "docker.io" {
        (Scheme::Https, DOCKER_HUB_HOST.to_owned())
    } else if loopback {
        (Scheme::Http, registry.to_owned())
    } else {
        (Scheme::Https, registry.to_owned())
    };
    Endpoint {
        scheme,
        host,
        path: "/v2".into(),
        capabilities: Capabilities::ALL,
        tls: TlsSettings::default(),
        headers: Vec::new(),
    }
}

#[derive(Default, Deserialize)]
#[serde(default)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    client: Option<ClientField>,
    skip_verify: Option<bool>,
    header: BTreeMap<String, OneOrMany>,
    override_path: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `client = "both.pem"`, `client = ["a.pem", "b.pem"]` or
/// `client = [["cert.pem", "key.pem"]]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ClientField {
    One(String),
    Many(Vec<OneOrMany>),
}

#[derive(Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    upstream: HostFields,
    #[serde(default)]
    host: BTreeMap<String, HostFields>,
}

/// Parses a `hosts.toml` for `registry`; relative paths are taken from
/// `dir`. The mirrors come first, in file order, the upstream last.
pub(crate) fn parse(text: &str, dir: &Path, registry: &str, loopback: bool) -> Result<Vec<Endpoint>, String> {
    let file: HostsFile = toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
    let mut endpoints = Vec::new();
    for name in host_order(text)? {
        let Some(fields) = file.host.get(&name) else {
            continue;
        };
        let endpoint = endpoint(&name, fields, dir).map_err(|e| format!("host {name:?}: {e}"))?;
        endpoints.push(endpoint);
    }
    let upstream = match file.server.as_deref() {
        Some(server) if !server.is_empty() => {
            endpoint(server, &file.upstream, dir).map_err(|e| format!("server: {e}"))?
        }
        // No server: the registry itself, with the file's TLS settings
        // and headers, able to do everything (as containerd does).
        _ => {
            let mut upstream = settings(&file.upstream, dir)?;
            let default = default_endpoint(registry, loopback);
            upstream.scheme = default.scheme;
            upstream.host = default.host;
            upstream.path = default.path;
            upstream.capabilities = Capabilities::ALL;
            upstream
        }
    };
    // A file that names the server as a host too (as many do) tries it once.
    if !endpoints.iter().any(|e| e.root() == upstream.root()) {
        endpoints.push(upstream);
    }
    Ok(endpoints)
}

/// The `[host."..."]` names in the order the file declares them (the
/// parsed table is sorted by name).
fn host_order(text: &str) -> Result<Vec<String>, String> {
    let table = toml::de::DeTable::parse(text).map_err(|e| e.message().trim().to_owned())?;
    let Some(hosts) = table.get_ref().get("host") else {
        return Ok(Vec::new());
    };
    let toml::de::DeValue::Table(hosts) = hosts.get_ref() else {
        return Err("`host` must be a table of hosts".into());
    };
    let mut names: Vec<(usize, String)> = hosts
        .keys()
        .map(|k| (k.span().start, k.get_ref().to_string()))
        .collect();
    names.sort();
    Ok(names.into_iter().map(|(_, name)| name).collect())
}

fn endpoint(server: &str, fields: &HostFields, dir: &Path) -> Result<Endpoint, String> {
    let (scheme, host, path) = parse_server(server, fields.override_path)?;
    let mut endpoint = settings(fields, dir)?;
    endpoint.scheme = scheme;
    endpoint.host = host;
    endpoint.path = path;
    Ok(endpoint)
}

/// Everything but the address: an endpoint at `https://unset.invalid/v2`.
fn settings(fields: &HostFields, dir: &Path) -> Result<Endpoint, String> {
    let capabilities = match fields.capabilities.as_deref() {
        None | Some([]) => Capabilities::ALL,
        Some(names) => {
            let mut caps = Capabilities {
                pull: false,
                resolve: false,
                push: false,
            };
            for name in names {
                match name.to_ascii_lowercase().as_str() {
                    "pull" => caps.pull = true,
                    "resolve" => caps.resolve = true,
                    "push" => caps.push = true,
                    _ => return Err(format!("unknown capability {name:?} (expected pull, resolve or push)")),
                }
            }
            caps
        }
    };
    let abs = |p: &String| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            dir.join(p)
        }
    };
    let ca = fields
        .ca
        .as_ref()
        .map_or_else(Vec::new, |ca| ca.as_slice().iter().map(abs).collect());
    let mut client = Vec::new();
    match &fields.client {
        None => {}
        Some(ClientField::One(p)) => client.push((abs(p), None)),
        Some(ClientField::Many(entries)) => {
            for entry in entries {
                match entry.as_slice() {
                    [both] if matches!(entry, OneOrMany::One(_)) => client.push((abs(both), None)),
                    [cert, key] => client.push((abs(cert), Some(abs(key)))),
                    other => {
                        return Err(format!(
                            "client: a pair is [certificate, key], not {} paths",
                            other.len()
                        ))
                    }
                }
            }
        }
    }
    let mut headers = Vec::new();
    for (name, values) in &fields.header {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!("header {name:?}: not a valid header name"));
        }
        for value in values.as_slice() {
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(format!("header {name:?}: {value:?} is not a valid header value"));
            }
            headers.push((name.clone(), value.clone()));
        }
    }
    Ok(Endpoint {
        scheme: Scheme::Https,
        host: "unset.invalid".into(),
        path: "/v2".into(),
        capabilities,
        tls: TlsSettings {
            ca,
            client,
            skip_verify: fields.skip_verify.unwrap_or(false),
        },
        headers,
    })
}

/// `server` or a host name: `[http[s]://]host[:port][/path]`, https when
/// no scheme is given. The path gets `/v2` appended unless it already
/// ends in it or `override_path` says it is the API root already.
fn parse_server(server: &str, override_path: bool) -> Result<(Scheme, String, String), String> {
    let full = if server.starts_with("http://") || server.starts_with("https://") {
        server.to_owned()
    } else if server.contains("://") {
        return Err(format!("{server:?}: only http and https are supported"));
    } else {
        format!("https://{server}")
    };
    let url = reqwest::Url::parse(&full).map_err(|e| format!("{server:?}: {e}"))?;
    let scheme = match url.scheme() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("{server:?}: scheme {other} is not supported")),
    };
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{server:?}: no user, query or fragment is allowed"));
    }
    let host = match (url.host_str(), url.port()) {
        (Some(""), _) | (None, _) => return Err(format!("{server:?}: no host")),
        (Some(h), Some(port)) => format!("{h}:{port}"),
        (Some(h), None) => h.to_owned(),
    };
    // Like Go's path.Clean: no empty segments, no trailing slash (the URL
    // parser already resolved `.` and `..`).
    let mut path: String = url
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .flat_map(|s| ["/", s])
        .collect();
    if !override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    Ok((scheme, host, path))
}

/// The directories that may configure `registry`, most specific first:
/// `host_port_` (containerd's spelling without a colon), `host:port`, then
/// `_default`.
fn host_dirs(root: &Path, registry: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some((host, port)) = registry.rsplit_once(':') {
        if !host.is_empty() {
            dirs.push(root.join(format!("{host}_{port}_")));
        }
    }
    dirs.push(root.join(registry));
    dirs.push(root.join("_default"));
    dirs
}

fn config_err(path: &Path, reason: impl std::fmt::Display) -> ImportError {
    ImportError::RegistryConfig {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// The endpoints for `registry`, from the first of its directories under
/// `root` that exists: its `hosts.toml`, or without one Docker's layout of
/// certificate files (`*.crt` CAs, `*.cert` with `*.key` client pairs).
/// Without a directory, the registry itself ([`default_endpoint`]).
pub(crate) fn load(root: Option<&Path>, registry: &str, loopback: bool) -> Result<Vec<Endpoint>, ImportError> {
    let plain_name = !registry.is_empty()
        && registry != "."
        && registry != ".."
        && !registry.contains(['/', '\\', '\0'])
        && registry != "_default";
    let dir = match root {
        Some(root) if plain_name => host_dirs(root, registry).into_iter().find(|d| d.is_dir()),
        _ => None,
    };
    let Some(dir) = dir else {
        return Ok(vec![default_endpoint(registry, loopback)]);
    };
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.trim().is_empty() => {
            tracing::debug!(file = %file.display(), "registry hosts for {registry}");
            parse(&text, &dir, registry, loopback).map_err(|e| config_err(&file, e))
        }
        Ok(_) => cert_dir(&dir, registry, loopback),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => cert_dir(&dir, registry, loopback),
        Err(e) => Err(config_err(&file, e)),
    }
}

fn cert_dir(dir: &Path, registry: &str, loopback: bool) -> Result<Vec<Endpoint>, ImportError> {
    let mut endpoint = default_endpoint(registry, loopback);
    let entries = std::fs::read_dir(dir).map_err(|e| config_err(dir, e))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    for name in &names {
        if name.ends_with(".crt") {
            endpoint.tls.ca.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            let key = names.contains(&key).then(|| dir.join(key));
            endpoint.tls.client.push((dir.join(name), key));
        }
    }
    Ok(vec![endpoint])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(text: &str) -> Vec<Endpoint> {
        parse(text, Path::new("/etc/certs.d/r.example"), "r.example", false).unwrap()
    }

    fn roots(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(Endpoint::root).collect()
    }

    #[test]
    fn a_server_also_named_as_a_host_is_tried_once() {
        let e = hosts(
            r#"
server = "http://r.example:5000"
[host."http://r.example:5000"]
  capabilities = ["pull", "resolve"]
"#,
        );
        assert_eq!(roots(&e), ["http://r.example:5000/v2"]);
        assert!(e[0].capabilities.pull && e[0].capabilities.resolve && !e[0].capabilities.push);
    }

    #[test]
    fn mirrors_in_file_order_then_the_server() {
        let e = hosts(
            r#"
server = "https://upstream.example:8443"

[host."https://zeta.example"]
  capabilities = ["pull", "resolve"]

[host."http://alpha.example:5000"]
  capabilities = ["pull"]
  [host."http://alpha.example:5000".header]
    x-mirror = ["a", "b"]

[host."mirror.example/prefix/"]
"#,
        );
        assert_eq!(
            roots(&e),
            [
                "https://zeta.example/v2",
                "http://alpha.example:5000/v2",
                "https://mirror.example/prefix/v2",
                "https://upstream.example:8443/v2",
            ]
        );
        assert!(e[0].capabilities.resolve && !e[0].capabilities.push);
        assert!(e[1].capabilities.pull && !e[1].capabilities.resolve);
        assert_eq!(e[2].capabilities, Capabilities::ALL);
        assert_eq!(e[1].scheme, Scheme::Http);
        assert_eq!(
            e[1].headers,
            [("x-mirror".into(), "a".into()), ("x-mirror".into(), "b".into())]
        );
    }

    #[test]
    fn override_path_keeps_the_path_as_written() {
        let e = hosts(
            r#"
[host."http://m.example/registry/api"]
  override_path = true
[host."http://n.example/registry/api"]
[host."http://o.example/x/v2/"]
[host."http://p.example"]
  override_path = true
"#,
        );
        assert_eq!(
            roots(&e)[..4],
            [
                "http://m.example/registry/api",
                "http://n.example/registry/api/v2",
                "http://o.example/x/v2",
                "http://p.example",
            ]
        );
        assert_eq!(
            e[0].url("r.example", "team/app", "manifests/1.0"),
            "http://m.example/registry/api/team/app/manifests/1.0?ns=r.example"
        );
        // The upstream itself gets no ns parameter.
        assert_eq!(
            e[4].url("r.example", "team/app", "blobs/sha256:ab"),
            "https://r.example/v2/team/app/blobs/sha256:ab"
        );
    }

    #[test]
    fn without_server_the_registry_is_the_upstream_with_the_files_tls() {
        let e = hosts("ca = \"ca.pem\"\nskip_verify = true\ncapabilities = [\"pull\"]\n");
        assert_eq!(roots(&e), ["https://r.example/v2"]);
        assert_eq!(e[0].tls.ca, [PathBuf::from("/etc/certs.d/r.example/ca.pem")]);
        assert!(e[0].tls.skip_verify);
        assert_eq!(e[0].capabilities, Capabilities::ALL);
        let e = parse("", Path::new("/d"), "127.0.0.1:5000", true).unwrap();
        assert_eq!(roots(&e), ["http://127.0.0.1:5000/v2"]);
        let e = parse("", Path::new("/d"), "docker.io", false).unwrap();
        assert_eq!(roots(&e), ["https://registry-1.docker.io/v2"]);
        assert_eq!(
            e[0].url("docker.io", "library/debian", "manifests/12"),
            "https://registry-1.docker.io/v2/library/debian/manifests/12"
        );
    }

    #[test]
    fn ca_and_client_forms() {
        let e = hosts(
            r#"
server = "https://r.example"
ca = ["/abs/ca1.pem", "rel/ca2.pem"]
client = [["c.pem", "/k.pem"], "both.pem"]
[host."https://m.example"]
  ca = "m-ca.pem"
  client = "m-client.pem"
  skip_verify = false
"#,
        );
        let dir = Path::new("/etc/certs.d/r.example");
        assert_eq!(e[0].tls.ca, [dir.join("m-ca.pem")]);
        assert_eq!(e[0].tls.client, [(dir.join("m-client.pem"), None)]);
        assert_eq!(e[1].tls.ca, [PathBuf::from("/abs/ca1.pem"), dir.join("rel/ca2.pem")]);
        assert_eq!(
            e[1].tls.client,
            [
                (dir.join("c.pem"), Some(PathBuf::from("/k.pem"))),
                (dir.join("both.pem"), None)
            ]
        );
    }

    #[test]
    fn mistakes_are_refused_with_their_place() {
        let bad = |text: &str, needle: &str| {
            let e = parse(text, Path::new("/d"), "r.example", false).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        };
        bad(
            "[host.\"m.example\"]\ncapabilities = [\"fetch\"]\n",
            "unknown capability \"fetch\"",
        );
        bad(
            "[host.\"m.example\"]\nclient = [[\"a\", \"b\", \"c\"]]\n",
            "not 3 paths",
        );
        bad("server = \"ftp://x\"\n", "only http and https");
        bad("server = \"https://user:pw@x\"\n", "no user");
        bad("server = \"https://\"\n", "server");
        bad("host = 5\n", "");
        bad(
            "[host.\"m.example\".header]\n\"bad header\" = \"x\"\n",
            "not a valid header name",
        );
        bad(
            "[host.\"m.example\".header]\nx = \"a\\nb\"\n",
            "not a valid header value",
        );
        bad("skip_verify = \"yes\"\n", "");
        bad("ca = 5\n", "");
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"[]\"=.,\n hostcapabilitiesserver:/\\{}#'0123456789xyz";
        for len in 0..400 {
            let text: String = (0..len % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[usize::try_from(seed % 64).unwrap_or(0) % alphabet.len()] as char
                })
                .collect();
            let _ = parse(&text, Path::new("/d"), "r.example", false);
        }
        for text in [
            "[host]\n",
            "[host.\"\"]\n",
            "server = \"\"\n",
            "[[host]]\n",
            "host = []\n",
        ] {
            let _ = parse(text, Path::new("/d"), "r.example", false);
        }
    }

    #[test]
    fn directories_are_found_like_containerds() {
        let root = tempfile::tempdir().unwrap();
        // Nothing configured: the registry itself.
        let e = load(Some(root.path()), "r.example:5000", false).unwrap();
        assert_eq!(roots(&e), ["https://r.example:5000/v2"]);
        let e = load(None, "127.0.0.1:5000", true).unwrap();
        assert_eq!(roots(&e), ["http://127.0.0.1:5000/v2"]);

        // _default applies to every registry without its own directory.
        std::fs::create_dir(root.path().join("_default")).unwrap();
        std::fs::write(
            root.path().join("_default/hosts.toml"),
            "[host.\"http://cache.example\"]\ncapabilities = [\"pull\"]\n",
        )
        .unwrap();
        let e = load(Some(root.path()), "r.example:5000", false).unwrap();
        assert_eq!(roots(&e), ["http://cache.example/v2", "https://r.example:5000/v2"]);

        // A directory of certificate files, no hosts.toml.
        let dir = root.path().join("r.example:5000");
        std::fs::create_dir(&dir).unwrap();
        for f in ["ca.crt", "me.cert", "me.key", "other.cert"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        let e = load(Some(root.path()), "r.example:5000", false).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].tls.ca, [dir.join("ca.crt")]);
        assert_eq!(
            e[0].tls.client,
            [
                (dir.join("me.cert"), Some(dir.join("me.key"))),
                (dir.join("other.cert"), None)
            ]
        );

        // host_port_ wins over host:port.
        let alt = root.path().join("r.example_5000_");
        std::fs::create_dir(&alt).unwrap();
        std::fs::write(alt.join("hosts.toml"), "server = \"http://r.example:5000\"\n").unwrap();
        let e = load(Some(root.path()), "r.example:5000", false).unwrap();
        assert_eq!(roots(&e), ["http://r.example:5000/v2"]);

        // A broken file names itself.
        std::fs::write(alt.join("hosts.toml"), "server = [\n").unwrap();
        let e = load(Some(root.path()), "r.example:5000", false).unwrap_err();
        assert!(e.to_string().contains("r.example_5000_/hosts.toml"), "{e}");

        // A registry name is never a path out of the directory.
        for name in ["..", ".", "_default", "a/b"] {
            let e = load(Some(root.path()), name, false).unwrap();
            assert_eq!(e.len(), 1, "{name}");
        }
    }
}

//! `/etc/strata/config.toml`, overridden by flags.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: PathBuf,
    pub log_level: String,
    pub limits: LimitsConfig,
    pub serve: ServeConfig,
    pub scratch: ScratchConfig,
    pub registry: RegistrySection,
    pub metrics: MetricsConfig,
    pub pull: PullSection,
    pub kernel: KernelSection,
    pub lazy: LazySection,
}

/// `[lazy]`: lazy pulls, whose missing files `strata serve` fetches
/// (docs/lazy-pulls.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LazySection {
    /// Fetch the rest of each lazily pulled image in the background
    /// (prioritized files first, then TOC order); off: only on open.
    pub prefetch: bool,
    /// Batches of contents prefetched at once.
    #[serde(deserialize_with = "prefetch_concurrency")]
    pub prefetch_concurrency: usize,
    /// Compressed bytes per second prefetch may read; 0: unlimited.
    pub prefetch_bandwidth: u64,
    /// Seconds an open of a missing file waits for its fetch, retries
    /// included, before it gets EIO (the environment variable
    /// `STRATA_LAZY_FETCH_TIMEOUT` overrides it).
    #[serde(deserialize_with = "fetch_timeout")]
    pub fetch_timeout: f64,
    /// containerd's remote-snapshot fast path imports layers with a TOC
    /// lazily: the snapshot is committed from the TOC alone and missing
    /// files are fetched when opened. Off: such layers are fetched before
    /// the snapshot is committed, so containers never wait on a registry.
    pub cri: bool,
}

impl Default for LazySection {
    fn default() -> Self {
        LazySection {
            prefetch: true,
            prefetch_concurrency: 2,
            prefetch_bandwidth: 0,
            fetch_timeout: 30.0,
            cri: false,
        }
    }
}

const MAX_PREFETCH_CONCURRENCY: usize = 64;

fn prefetch_concurrency<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if !(1..=MAX_PREFETCH_CONCURRENCY).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is not between 1 and {MAX_PREFETCH_CONCURRENCY}"
        )));
    }
    Ok(n)
}

fn fetch_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let seconds = f64::deserialize(d)?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
        return Err(serde::de::Error::custom(format!(
            "{seconds} is not a number of seconds above 0 (at most a day)"
        )));
    }
    Ok(seconds)
}

/// `[kernel]`: how each kernel feature is used; "auto" takes the best rung
/// the running kernel offers (see `strata_mount::ladder`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelSection {
    /// "auto", "file" or "loop".
    #[serde(deserialize_with = "kernel_rung::<0, _>")]
    pub erofs: String,
    /// "auto", "append" (`lowerdir+`/`datadir+`) or "double-colon".
    #[serde(deserialize_with = "kernel_rung::<1, _>")]
    pub lowers: String,
    /// "auto", "off" or "require".
    #[serde(deserialize_with = "kernel_rung::<2, _>")]
    pub verity: String,
}

const KERNEL_KEYS: [&str; 3] = ["erofs", "lowers", "verity"];

impl Default for KernelSection {
    fn default() -> Self {
        let auto = || "auto".to_owned();
        KernelSection {
            erofs: auto(),
            lowers: auto(),
            verity: auto(),
        }
    }
}

impl KernelSection {
    pub fn ladder_config(&self) -> anyhow::Result<strata_mount::KernelConfig> {
        let mut config = strata_mount::KernelConfig::default();
        for (key, value) in KERNEL_KEYS.iter().zip([&self.erofs, &self.lowers, &self.verity]) {
            config.set(key, value)?;
        }
        Ok(config)
    }
}

/// One `[kernel]` value, checked against its rungs as it is read.
fn kernel_rung<'de, const KEY: usize, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    strata_mount::KernelConfig::default()
        .set(KERNEL_KEYS[KEY], &text)
        .map_err(serde::de::Error::custom)?;
    Ok(text)
}

/// Prometheus metrics of `strata serve`; off unless an address is given.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:PORT` to serve `/metrics` on over plain HTTP, e.g.
    /// `"127.0.0.1:9479"`.
    #[serde(deserialize_with = "socket_address")]
    pub address: Option<std::net::SocketAddr>,
}

/// `IP:PORT`, with the mistake named (serde's own message says only
/// "invalid socket address syntax").
fn socket_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not IP:PORT (e.g. \"127.0.0.1:9479\"; a host name is not resolved)"
        ))
    })
}

/// How layers are pulled, by `strata pull` and by `strata serve`'s fetcher.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PullSection {
    /// `"off"`, `"toc"` (the default) or `"verified"`: which layers with a
    /// table of contents (eStargz, zstd:chunked) are pulled partially,
    /// fetching only the files the store lacks. See docs/partial-pulls.md.
    #[serde(deserialize_with = "partial_pulls")]
    pub partial_pulls: strata_image::PartialPulls,
    /// A layer is pulled partially only where that leaves at least this
    /// per cent of its file data unfetched; else it is pulled whole (one
    /// stream, its diff_id checked). 0 pulls partially whenever a layer
    /// has a TOC.
    #[serde(deserialize_with = "percent")]
    pub partial_min_saving_percent: u8,
}

fn percent<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = u64::deserialize(d)?;
    u8::try_from(n)
        .ok()
        .filter(|&p| p <= 100)
        .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a per cent from 0 to 100")))
}

impl Default for PullSection {
    fn default() -> Self {
        PullSection {
            partial_pulls: strata_image::PartialPulls::default(),
            partial_min_saving_percent: strata_image::PartialPolicy::DEFAULT_MIN_SAVING_PERCENT,
        }
    }
}

impl PullSection {
    /// The policy, with `mode` (`strata pull --partial`) over the config's.
    pub fn policy(&self, mode: Option<strata_image::PartialPulls>) -> strata_image::PartialPolicy {
        strata_image::PartialPolicy {
            mode: mode.unwrap_or(self.partial_pulls),
            min_saving_percent: self.partial_min_saving_percent,
        }
    }
}

fn partial_pulls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<strata_image::PartialPulls, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

/// How registries are reached: containerd's hosts directory and a docker
/// `config.json` for credentials.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// containerd's `config_path`: `<dir>/<host[:port]>/hosts.toml`
    /// (mirrors, TLS); a missing directory configures nothing.
    pub config_path: PathBuf,
    /// A docker `config.json` whose `auths` give credentials per host.
    pub auth_file: Option<PathBuf>,
}

impl Default for RegistrySection {
    fn default() -> Self {
        RegistrySection {
            config_path: PathBuf::from("/etc/containerd/certs.d"),
            auth_file: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScratchConfig {
    /// The largest size label accepted, in GiB.
    pub max_size_gb: u64,
    /// Directories a location label may point into.
    pub locations: Vec<PathBuf>,
    /// `ext4`, or `xfs` where reflinked clones are wanted.
    pub filesystem: String,
    /// The size in GiB of a container snapshot without a size label (for
    /// Kubernetes, whose Pods cannot carry `containerd.io/snapshot/` labels);
    /// 0 gives such snapshots plain directories.
    pub default_size_gb: u64,
    /// `default_size_gb` per containerd namespace, e.g. `{ "k8s.io" = 10 }`.
    pub namespace_default_size_gb: std::collections::BTreeMap<String, u64>,
}

impl Default for ScratchConfig {
    fn default() -> Self {
        ScratchConfig {
            max_size_gb: 256,
            locations: Vec::new(),
            filesystem: "ext4".into(),
            default_size_gb: 0,
            namespace_default_size_gb: std::collections::BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// The unix socket `strata serve` listens on.
    pub socket: PathBuf,
    /// A group (name or number) allowed to use the socket; without one it
    /// is root's alone (0600).
    pub socket_group: Option<String>,
    /// Fetch the layers of CRI pulls itself (containerd's remote-snapshot
    /// labels) instead of letting containerd download and unpack them.
    pub fetch_layers: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            socket: PathBuf::from("/run/strata/strata.sock"),
            socket_group: None,
            fetch_layers: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Uncompressed bytes per layer.
    pub max_layer_bytes: u64,
    pub max_entries_per_layer: u64,
    /// Entries across all layers of one image (each costs memory until
    /// the layers are merged).
    pub max_entries_per_image: u64,
    pub max_path_depth: usize,
    /// Bytes in one path of a layer.
    pub max_path_bytes: usize,
    /// `strata pull`s running at once on this store; one more is refused.
    pub max_concurrent_imports: usize,
    /// Layers imported at once.
    pub parallel_layers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/strata"),
            log_level: "warn".into(),
            limits: LimitsConfig::default(),
            serve: ServeConfig::default(),
            scratch: ScratchConfig::default(),
            registry: RegistrySection::default(),
            metrics: MetricsConfig::default(),
            pull: PullSection::default(),
            kernel: KernelSection::default(),
            lazy: LazySection::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let defaults = strata_image::Limits::default();
        LimitsConfig {
            max_layer_bytes: defaults.max_layer_bytes,
            max_entries_per_layer: defaults.max_entries,
            max_entries_per_image: defaults.max_entries_per_image,
            max_path_depth: defaults.max_depth,
            max_path_bytes: defaults.max_path_bytes,
            max_concurrent_imports: 4,
            parallel_layers: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8),
        }
    }
}

const DEFAULT_PATH: &str = "/etc/strata/config.toml";

impl Config {
    /// Reads the config file (`path`, which must exist, else the default
    /// path if it exists), then applies flag overrides. Every mistake in
    /// the file is reported, in file order.
    pub fn load(path: Option<&Path>, root: Option<PathBuf>, log_level: Option<String>) -> anyhow::Result<Config> {
        let (path, named) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => parse(&text).map_err(|errors| {
                anyhow::anyhow!(
                    "config {} has {} error(s):\n  {}",
                    path.display(),
                    errors.len(),
                    errors.join("\n  ")
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => Config::default(),
            Err(e) => return Err(e).with_context(|| format!("reading config {}", path.display())),
        };
        if let Some(root) = root {
            config.root = root;
        }
        if let Some(level) = log_level {
            check_log_level(&level).context("--log-level")?;
            config.log_level = level;
        }
        Ok(config)
    }

    pub fn limits(&self) -> strata_image::Limits {
        strata_image::Limits {
            max_layer_bytes: self.limits.max_layer_bytes,
            max_entries: self.limits.max_entries_per_layer,
            max_depth: self.limits.max_path_depth,
            max_path_bytes: self.limits.max_path_bytes,
            max_entries_per_image: self.limits.max_entries_per_image,
        }
    }

    /// The scratch policy, with each allowed location resolved.
    pub fn scratch_policy(&self) -> anyhow::Result<strata_snapshotter::ScratchPolicy> {
        let fs = match self.scratch.filesystem.as_str() {
            "ext4" => strata_snapshotter::FsKind::Ext4,
            "xfs" => strata_snapshotter::FsKind::Xfs,
            other => anyhow::bail!("scratch.filesystem {other:?}: expected ext4 or xfs"),
        };
        let allowed_locations = self
            .scratch
            .locations
            .iter()
            .map(|l| {
                l.canonicalize()
                    .with_context(|| format!("scratch.locations: {}", l.display()))
            })
            .collect::<anyhow::Result<_>>()?;
        let gib = |gb: u64| gb.saturating_mul(1 << 30);
        let defaults = std::iter::once(("scratch.default_size_gb".to_owned(), self.scratch.default_size_gb)).chain(
            self.scratch
                .namespace_default_size_gb
                .iter()
                .map(|(ns, gb)| (format!("scratch.namespace_default_size_gb.{ns:?}"), *gb)),
        );
        for (key, gb) in defaults {
            anyhow::ensure!(
                gb <= self.scratch.max_size_gb,
                "{key} = {gb} is over scratch.max_size_gb = {}",
                self.scratch.max_size_gb
            );
        }
        Ok(strata_snapshotter::ScratchPolicy {
            max_bytes: gib(self.scratch.max_size_gb),
            allowed_locations,
            fs,
            default_bytes: (self.scratch.default_size_gb > 0).then(|| gib(self.scratch.default_size_gb)),
            namespace_default_bytes: self
                .scratch
                .namespace_default_size_gb
                .iter()
                .map(|(ns, gb)| (ns.clone(), gib(*gb)))
                .collect(),
        })
    }

    /// The registry hosts and credentials, for every pull of this process.
    pub fn registry_config(&self) -> anyhow::Result<std::sync::Arc<strata_image::source::RegistryConfig>> {
        let config = strata_image::source::RegistryConfig::new(
            Some(self.registry.config_path.clone()),
            self.registry.auth_file.as_deref(),
        )
        .context("registry.auth_file")?;
        Ok(std::sync::Arc::new(config))
    }

    pub fn open_store(&self) -> anyhow::Result<strata_store::Store> {
        strata_store::Store::open(&self.root).with_context(|| format!("opening the store at {}", self.root.display()))
    }

    /// For verbs that only read: creates nothing, and works on a read-only store.
    pub fn open_store_read_only(&self) -> anyhow::Result<strata_store::Store> {
        strata_store::Store::open_read_only(&self.root)
            .with_context(|| format!("opening the store at {}", self.root.display()))
    }
}

const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A level, or comma-separated `LEVEL` / `TARGET=LEVEL` directives.
fn check_log_level(text: &str) -> anyhow::Result<()> {
    let ok = text.split(',').all(|directive| {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
    });
    anyhow::ensure!(
        ok,
        "invalid log level {text:?}: expected one of {} (or TARGET=LEVEL, comma-separated)",
        LEVELS.join(", ")
    );
    Ok(())
}

/// Parses a config file, checking each key on its own so that every
/// mistake is found; errors come in file order, with line numbers.
fn parse(text: &str) -> Result<Config, Vec<String>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| vec![e.to_string()])?;
    let mut errors = Vec::new();
    for (line, path, header) in key_lines(text) {
        let Some(value) = lookup(&table, &path) else {
            continue;
        };
        // A header checks only its name; its keys come on their own lines.
        let mut single = match value {
            toml::Value::Table(_) if header => toml::Value::Table(toml::Table::new()),
            _ => value.clone(),
        };
        for key in path.iter().rev() {
            let mut t = toml::Table::new();
            t.insert(key.clone(), single);
            single = toml::Value::Table(t);
        }
        let key = path.join(".");
        if let Err(e) = Config::deserialize(single) {
            errors.push(format!("line {line}: {key}: {}", e.message().trim()));
        } else if key == "log_level" {
            if let Err(e) = check_log_level(value.as_str().unwrap_or_default()) {
                errors.push(format!("line {line}: {key}: {e}"));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    toml::from_str(text).map_err(|e: toml::de::Error| vec![e.to_string()])
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let value = table.get(first)?;
    match rest {
        [] => Some(value),
        _ => lookup(value.as_table()?, rest),
    }
}

/// The keys and table headers of a config, in file order with their line
/// numbers: `[serve]` -> `serve` (a header), `socket = ..` under it ->
/// `serve.socket`.
fn key_lines(text: &str) -> Vec<(usize, Vec<String>, bool)> {
    let split = |key: &str| -> Vec<String> { key.split('.').map(|k| k.trim().trim_matches('"').to_owned()).collect() };
    let bare = |key: &str| {
        !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | ' '))
    };
    let mut section: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            let name = header.trim_start_matches('[').split(']').next().unwrap_or_default();
            section = split(name);
            out.push((n + 1, section.clone(), true));
        } else if let Some((key, _)) = line.split_once('=') {
            if bare(key.trim()) {
                let mut path = section.clone();
                path.extend(split(key.trim()));
                out.push((n + 1, path, false));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_in_file_order() {
        let text = "log_level = \"loud\"\nbogus = 1\n[serve]\nsocket = 5\n[scratch]\nmax_size_gb = \"big\"\n";
        let errors = parse(text).unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(
            errors[0].starts_with("line 1: log_level: invalid log level \"loud\""),
            "{errors:#?}"
        );
        assert!(errors[1].starts_with("line 2: bogus: unknown field"), "{errors:#?}");
        assert!(errors[2].starts_with("line 4: serve.socket:"), "{errors:#?}");
        assert!(errors[3].starts_with("line 6: scratch.max_size_gb:"), "{errors:#?}");
        let ok = parse("log_level = \"info,strata_store=debug\"\n[serve]\nsocket = \"/x\"\n").unwrap();
        assert_eq!(ok.serve.socket, PathBuf::from("/x"));
    }

    #[test]
    fn a_named_config_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load(Some(&missing), None, None).unwrap_err();
        assert!(format!("{e:#}").contains("nope.toml"), "{e:#}");
        assert!(Config::load(None, None, Some("verbose".into())).is_err());
        assert!(Config::load(None, None, Some("debug".into())).is_ok());
    }

    #[test]
    fn registry_section() {
        let defaults = parse("").unwrap();
        assert_eq!(defaults.registry.config_path, PathBuf::from("/etc/containerd/certs.d"));
        assert_eq!(defaults.registry.auth_file, None);
        let c = parse("[registry]\nconfig_path = \"/h\"\nauth_file = \"/a.json\"\n").unwrap();
        assert_eq!(c.registry.config_path, PathBuf::from("/h"));
        assert_eq!(c.registry.auth_file, Some(PathBuf::from("/a.json")));
        let errors = parse("[registry]\nmirrors = []\n").unwrap_err();
        assert!(
            errors[0].starts_with("line 2: registry.mirrors: unknown field"),
            "{errors:#?}"
        );
        let e = c.registry_config().unwrap_err();
        assert!(format!("{e:#}").contains("/a.json"), "{e:#}");
    }

    #[test]
    fn lazy_section() {
        let defaults = parse("").unwrap().lazy;
        assert!(defaults.prefetch);
        assert_eq!(defaults.prefetch_concurrency, 2);
        assert_eq!(defaults.prefetch_bandwidth, 0);
        assert_eq!(defaults.fetch_timeout, 30.0);
        assert!(!defaults.cri);
        let c = parse(
            "[lazy]\nprefetch = false\nprefetch_concurrency = 4\nprefetch_bandwidth = 1048576\nfetch_timeout = 4\ncri = true\n",
        )
        .unwrap()
        .lazy;
        assert!(!c.prefetch);
        assert_eq!(c.prefetch_concurrency, 4);
        assert_eq!(c.prefetch_bandwidth, 1 << 20);
        assert_eq!(c.fetch_timeout, 4.0);
        assert!(c.cri);
        assert_eq!(parse("[lazy]\nfetch_timeout = 0.5\n").unwrap().lazy.fetch_timeout, 0.5);
        let cases = [
            (
                "prefetch_concurrency = 0",
                "line 2: lazy.prefetch_concurrency: 0 is not between 1 and 64",
            ),
            (
                "fetch_timeout = 0",
                "line 2: lazy.fetch_timeout: 0 is not a number of seconds above 0",
            ),
            (
                "fetch_timeout = -3",
                "line 2: lazy.fetch_timeout: -3 is not a number of seconds above 0",
            ),
            (
                "prefetch_bandwidth = -1",
                "line 2: lazy.prefetch_bandwidth: invalid value",
            ),
            ("prefetch = \"yes\"", "line 2: lazy.prefetch: invalid type: string"),
            ("bandwidth = 5", "line 2: lazy.bandwidth: unknown field"),
        ];
        for (line, expected) in cases {
            let errors = parse(&format!("[lazy]\n{line}\n")).unwrap_err();
            assert_eq!(errors.len(), 1, "{line}: {errors:#?}");
            assert!(errors[0].starts_with(expected), "{line}: {errors:#?}");
        }
    }

    #[test]
    fn pull_section() {
        let defaults = parse("").unwrap().pull;
        assert_eq!(defaults.policy(None), strata_image::PartialPolicy::default());
        let c = parse("[pull]\npartial_pulls = \"verified\"\npartial_min_saving_percent = 0\n")
            .unwrap()
            .pull;
        let policy = c.policy(Some(strata_image::PartialPulls::Off));
        assert_eq!(policy.mode, strata_image::PartialPulls::Off, "the flag wins");
        assert_eq!(policy.min_saving_percent, 0);
        assert_eq!(c.policy(None).mode, strata_image::PartialPulls::Verified);
        for (line, expected) in [
            (
                "partial_min_saving_percent = 101",
                "line 2: pull.partial_min_saving_percent: 101 is not a per cent from 0 to 100",
            ),
            (
                "partial_min_saving_percent = -1",
                "line 2: pull.partial_min_saving_percent: invalid value",
            ),
        ] {
            let errors = parse(&format!("[pull]\n{line}\n")).unwrap_err();
            assert!(errors[0].starts_with(expected), "{line}: {errors:#?}");
        }
    }

    #[test]
    fn metrics_section() {
        assert_eq!(parse("").unwrap().metrics.address, None, "off by default");
        let c = parse("[metrics]\naddress = \"127.0.0.1:9479\"\n").unwrap();
        assert_eq!(c.metrics.address, Some("127.0.0.1:9479".parse().unwrap()));
        let c = parse("[metrics]\naddress = \"[::1]:9479\"\n").unwrap();
        assert_eq!(c.metrics.address, Some("[::1]:9479".parse().unwrap()));
        let cases = [
            (
                "address = \"localhost:9479\"",
                "line 2: metrics.address: \"localhost:9479\" is not IP:PORT",
            ),
            (
                "address = \"127.0.0.1\"",
                "line 2: metrics.address: \"127.0.0.1\" is not IP:PORT",
            ),
            ("address = 9479", "line 2: metrics.address: invalid type: integer"),
            ("port = 9479", "line 2: metrics.port: unknown field"),
        ];
        for (line, expected) in cases {
            let errors = parse(&format!("[metrics]\n{line}\n")).unwrap_err();
            assert_eq!(errors.len(), 1, "{line}: {errors:#?}");
            assert!(errors[0].starts_with(expected), "{line}: {errors:#?}");
        }
    }
}

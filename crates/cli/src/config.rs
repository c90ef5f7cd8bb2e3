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
}

impl Default for ScratchConfig {
    fn default() -> Self {
        ScratchConfig {
            max_size_gb: 256,
            locations: Vec::new(),
            filesystem: "ext4".into(),
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
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            socket: PathBuf::from("/run/strata/strata.sock"),
            socket_group: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Uncompressed bytes per layer.
    pub max_layer_bytes: u64,
    pub max_entries_per_layer: u64,
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
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let defaults = strata_image::Limits::default();
        LimitsConfig {
            max_layer_bytes: defaults.max_layer_bytes,
            max_entries_per_layer: defaults.max_entries,
            max_path_depth: defaults.max_depth,
            max_path_bytes: defaults.max_path_bytes,
            max_concurrent_imports: 4,
            parallel_layers: std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8),
        }
    }
}

impl Config {
    /// Reads `path` if it exists (a missing default file is fine), then
    /// applies flag overrides.
    pub fn load(path: &Path, root: Option<PathBuf>, log_level: Option<String>) -> anyhow::Result<Config> {
        let mut config = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("config {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(e).with_context(|| format!("reading config {}", path.display())),
        };
        if let Some(root) = root {
            config.root = root;
        }
        if let Some(level) = log_level {
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
        Ok(strata_snapshotter::ScratchPolicy {
            max_bytes: self.scratch.max_size_gb.saturating_mul(1 << 30),
            allowed_locations,
            fs,
        })
    }

    pub fn open_store(&self) -> anyhow::Result<strata_store::Store> {
        strata_store::Store::open(&self.root).with_context(|| format!("opening the store at {}", self.root.display()))
    }
}

//! Pod and container descriptions turned into CRI configs. Pure: no I/O.
//!
//! Pods use the host network (`NamespaceOption { network: NODE }`) so that
//! no CNI plugin is needed, and set no hostname (a host-network pod must not
//! set one). Each pod gets a unique name and uid, so runs never meet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::api;

/// The CRI namespace (the Kubernetes namespace) of the pods made here.
pub const NAMESPACE: &str = "strata-cri";
/// A label on every pod and container made here, so they can be found.
pub const LABEL: &str = "strata-cri";

/// A host-network pod to run.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    /// Absolute; the runtime writes each container's log below it.
    pub log_directory: PathBuf,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
}

/// Something unique on this host: the pid, the clock and a counter.
fn unique_suffix() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{:x}-{n}", std::process::id(), nanos)
}

impl PodSpec {
    /// A pod named `prefix-<unique>`, logging to `log_root/<uid>`.
    pub fn unique(prefix: &str, log_root: &Path) -> PodSpec {
        let suffix = unique_suffix();
        let uid = format!("uid-{suffix}");
        PodSpec {
            name: format!("{prefix}-{suffix}"),
            log_directory: log_root.join(&uid),
            uid,
            namespace: NAMESPACE.to_owned(),
            labels: HashMap::from([(LABEL.to_owned(), "1".to_owned())]),
            annotations: HashMap::new(),
        }
    }

    pub fn config(&self) -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            log_directory: self.log_directory.display().to_string(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            linux: Some(api::LinuxPodSandboxConfig {
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn host_network() -> api::NamespaceOption {
    api::NamespaceOption {
        network: api::NamespaceMode::Node as i32,
        pid: api::NamespaceMode::Container as i32,
        ipc: api::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A pod the runtime runs: its sandbox id and the config it was made with
/// (CreateContainer needs it again).
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub config: api::PodSandboxConfig,
}

impl Pod {
    pub fn log_directory(&self) -> &Path {
        Path::new(&self.config.log_directory)
    }
}

/// A container to create in a pod.
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Replaces the image's cmd when not empty.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
}

impl ContainerSpec {
    pub fn new(name: &str, image: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.to_owned(),
            image: image.to_owned(),
            labels: HashMap::from([(LABEL.to_owned(), "1".to_owned())]),
            ..Default::default()
        }
    }

    /// Runs `argv` instead of the image's entrypoint and cmd.
    pub fn command<S: AsRef<str>>(mut self, argv: &[S]) -> ContainerSpec {
        self.command = argv.iter().map(|s| s.as_ref().to_owned()).collect();
        self.args.clear();
        self
    }

    /// The log file's name inside the pod's log directory.
    pub fn log_path(&self) -> String {
        format!("{}.log", self.name)
    }

    pub fn config(&self) -> api::ContainerConfig {
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: self.name.clone(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: self.command.clone(),
            args: self.args.clone(),
            working_dir: self.working_dir.clone(),
            envs: self
                .env
                .iter()
                .map(|(key, value)| api::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
            log_path: self.log_path(),
            linux: Some(api::LinuxContainerConfig {
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_unique_host_network_and_nameless() {
        let a = PodSpec::unique("t", Path::new("/logs"));
        let b = PodSpec::unique("t", Path::new("/logs"));
        assert_ne!(a.uid, b.uid);
        assert_ne!(a.name, b.name);
        let config = a.config();
        assert_eq!(config.hostname, "", "a host-network pod sets no hostname");
        assert_eq!(config.log_directory, format!("/logs/{}", a.uid));
        let ns = config
            .linux
            .unwrap()
            .security_context
            .unwrap()
            .namespace_options
            .unwrap();
        assert_eq!(ns.network, api::NamespaceMode::Node as i32);
    }

    #[test]
    fn container_command_replaces_entrypoint() {
        let c = ContainerSpec::new("c", "img").command(&["python3", "-c", "print(6*7)"]);
        let config = c.config();
        assert_eq!(config.command, ["python3", "-c", "print(6*7)"]);
        assert!(config.args.is_empty());
        assert_eq!(config.log_path, "c.log");
        assert_eq!(config.image.unwrap().image, "img");
    }
}

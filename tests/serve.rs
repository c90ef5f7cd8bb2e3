//! A `strata serve` process for tests, and a blocking gRPC client that
//! calls it the way containerd's proxy does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strata_grpc::api::snapshots::{self as pb, snapshots_client::SnapshotsClient};
use strata_grpc::api::types::Mount;
use tonic::transport::Channel;

use crate::strata_bin;

/// A running `strata serve`; killed and reaped on drop.
pub struct Serve {
    child: Child,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Serve {
    /// Starts `strata --root ROOT serve --address SOCKET` with `config`
    /// and extra environment (e.g. fail points); waits for the socket.
    pub fn start(root: &Path, socket: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Serve {
        let log = root.with_extension(format!("serve-{}.log", std::process::id()));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(strata_bin());
        cmd.arg("--root").arg(root).args(["--log-level", "info"]);
        cmd.arg("--config").arg(config.unwrap_or(Path::new("/dev/null")));
        cmd.args(["serve", "--address"]).arg(socket);
        cmd.envs(env.iter().copied()).stdout(Stdio::null()).stderr(out);
        let mut child = cmd.spawn().unwrap();
        for _ in 0..200 {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Serve {
                    child,
                    root: root.to_owned(),
                    socket: socket.to_owned(),
                    log,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "strata serve exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("strata serve did not listen on {}", socket.display());
    }

    /// SIGTERM, then wait: the server drains and exits.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap()
    }

    /// SIGKILL, then reap: a crash, nothing drained. The status says
    /// whether the signal is what ended it.
    pub fn kill9(mut self) -> std::process::ExitStatus {
        self.child.kill().unwrap();
        self.child.wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking client over the async one.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    inner: SnapshotsClient<Channel>,
}

pub type Labels = HashMap<String, String>;

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inner = runtime.block_on(strata_grpc::client::connect(socket)).unwrap();
        Client { runtime, inner }
    }

    pub fn prepare(&mut self, key: &str, parent: &str, labels: Labels) -> Result<Vec<Mount>, tonic::Status> {
        let req = pb::PrepareSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels,
        };
        let resp = self.runtime.block_on(self.inner.prepare(req))?;
        Ok(resp.into_inner().mounts)
    }

    pub fn view(&mut self, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
        let req = pb::ViewSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
            parent: parent.into(),
            labels: Labels::new(),
        };
        let resp = self.runtime.block_on(self.inner.view(req))?;
        Ok(resp.into_inner().mounts)
    }

    pub fn mounts(&mut self, key: &str) -> Result<Vec<Mount>, tonic::Status> {
        let req = pb::MountsRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        let resp = self.runtime.block_on(self.inner.mounts(req))?;
        Ok(resp.into_inner().mounts)
    }

    pub fn stat(&mut self, key: &str) -> Result<pb::Info, tonic::Status> {
        let req = pb::StatSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        let resp = self.runtime.block_on(self.inner.stat(req))?;
        Ok(resp.into_inner().info.unwrap_or_default())
    }

    pub fn commit(&mut self, name: &str, key: &str) -> Result<(), tonic::Status> {
        let req = pb::CommitSnapshotRequest {
            snapshotter: "strata".into(),
            name: name.into(),
            key: key.into(),
            labels: Labels::new(),
        };
        self.runtime.block_on(self.inner.commit(req)).map(drop)
    }

    pub fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let req = pb::RemoveSnapshotRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        self.runtime.block_on(self.inner.remove(req)).map(drop)
    }

    pub fn usage(&mut self, key: &str) -> Result<(i64, i64), tonic::Status> {
        let req = pb::UsageRequest {
            snapshotter: "strata".into(),
            key: key.into(),
        };
        let u = self.runtime.block_on(self.inner.usage(req))?.into_inner();
        Ok((u.size, u.inodes))
    }

    pub fn list(&mut self) -> Vec<pb::Info> {
        self.list_filtered(&[])
    }

    /// The snapshots matching any of containerd's filter strings.
    pub fn list_filtered(&mut self, filters: &[&str]) -> Vec<pb::Info> {
        let req = pb::ListSnapshotsRequest {
            snapshotter: "strata".into(),
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
        };
        self.runtime.block_on(async {
            let mut stream = self.inner.list(req).await.unwrap().into_inner();
            let mut out = Vec::new();
            while let Some(batch) = stream.message().await.unwrap() {
                out.extend(batch.info);
            }
            out
        })
    }

    pub fn cleanup(&mut self) -> Result<(), tonic::Status> {
        let req = pb::CleanupRequest {
            snapshotter: "strata".into(),
        };
        self.runtime.block_on(self.inner.cleanup(req)).map(drop)
    }
}

/// Mounts one mount as containerd's mount.All would (bind or overlay).
pub fn mount_all(mounts: &[Mount], target: &Path) {
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    let m = &mounts[0];
    std::fs::create_dir_all(target).unwrap();
    let mut cmd = Command::new("mount");
    if m.r#type == "bind" {
        cmd.arg("--rbind");
        if m.options.iter().any(|o| o == "ro") {
            cmd.args(["-o", "ro"]);
        }
    } else {
        cmd.args(["-t", &m.r#type, "-o", &m.options.join(",")]);
    }
    let status = cmd.arg(&m.source).arg(target).status().unwrap();
    assert!(status.success(), "mount {m:?} on {}", target.display());
}

/// Lazily unmounts everything mounted under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut points: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

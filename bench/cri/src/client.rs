//! [`Cri`]: one blocking call per CRI operation over a unix socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::api::{self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use crate::log;
use crate::spec::{ContainerSpec, Pod, PodSpec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("starting the client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call}: {}: {}", .status.code(), .status.message())]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("{call}: the response lacks {field}")]
    Missing { call: &'static str, field: &'static str },
    #[error("container {id} did not exit within {timeout:?} (last state {state})")]
    Timeout {
        id: String,
        timeout: Duration,
        state: String,
    },
    #[error("reading the log {path}: {source}")]
    ReadLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    LogFormat(#[from] log::ParseError),
}

impl Error {
    /// The gRPC code of a failed call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Call { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}

/// A container that ran to its end.
#[derive(Clone, Debug)]
pub struct Exited {
    pub id: String,
    pub exit_code: i32,
    pub status: api::ContainerStatus,
    pub output: log::Output,
}

/// A container [`Cri::run`] created, started and saw exit, with the time
/// of each step.
#[derive(Clone, Debug)]
pub struct Run {
    pub exited: Exited,
    pub create: Duration,
    pub start: Duration,
    pub wait: Duration,
    /// From the CreateContainer call to the exit containerd recorded
    /// (`finished_at`): free of the 20 ms polling step `wait` has.
    pub exited_after: Option<Duration>,
}

/// How long one CRI call may take before the client gives up on it, so
/// that a runtime that hangs fails the caller instead of blocking it.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A CRI client on its own single-threaded runtime.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

fn call<T>(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Error> {
    rt.block_on(fut)
        .map(tonic::Response::into_inner)
        .map_err(|status| Error::Call {
            call: name,
            status: Box::new(status),
        })
}

fn image_spec(image: &str) -> Option<api::ImageSpec> {
    Some(api::ImageSpec {
        image: image.to_owned(),
        ..Default::default()
    })
}

fn state_name(state: i32) -> String {
    api::ContainerState::try_from(state).map_or_else(|_| format!("state {state}"), |s| s.as_str_name().to_owned())
}

impl Cri {
    /// Dials the runtime's unix socket (e.g. containerd's).
    pub fn connect(socket: &Path) -> Result<Cri, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let path = socket.to_owned();
        // The URI is required by the API and unused: the connector dials `path`.
        let channel =
            rt
                .block_on(
                    Endpoint::from_static("http://cri.invalid")
                        .timeout(CALL_TIMEOUT)
                        .connect_with_connector(tower::service_fn(move |_| {
                            let path = path.clone();
                            async move {
                                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
                            }
                        })),
                )
                .map_err(|source| Error::Connect {
                    path: socket.to_owned(),
                    source,
                })?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    pub fn version(&mut self) -> Result<api::VersionResponse, Error> {
        let req = api::VersionRequest { version: "v1".into() };
        call(&self.rt, "Version", self.runtime.version(req))
    }

    /// Pulls `image`; returns the image's id (`sha256:` of its config).
    pub fn pull_image(&mut self, image: &str, auth: Option<(&str, &str)>) -> Result<String, Error> {
        let req = api::PullImageRequest {
            image: image_spec(image),
            auth: auth.map(|(username, password)| api::AuthConfig {
                username: username.to_owned(),
                password: password.to_owned(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        Ok(call(&self.rt, "PullImage", self.images.pull_image(req))?.image_ref)
    }

    /// The image, or `None` when the runtime does not have it.
    pub fn image_status(&mut self, image: &str) -> Result<Option<api::Image>, Error> {
        let req = api::ImageStatusRequest {
            image: image_spec(image),
            verbose: false,
        };
        Ok(call(&self.rt, "ImageStatus", self.images.image_status(req))?.image)
    }

    pub fn list_images(&mut self) -> Result<Vec<api::Image>, Error> {
        let req = api::ListImagesRequest { filter: None };
        Ok(call(&self.rt, "ListImages", self.images.list_images(req))?.images)
    }

    /// Removes `image` (a reference or an id); removing a missing image succeeds.
    pub fn remove_image(&mut self, image: &str) -> Result<(), Error> {
        let req = api::RemoveImageRequest {
            image: image_spec(image),
        };
        call(&self.rt, "RemoveImage", self.images.remove_image(req)).map(drop)
    }

    /// Runs the pod's sandbox; its log directory is created first.
    pub fn run_pod_sandbox(&mut self, spec: &PodSpec) -> Result<Pod, Error> {
        std::fs::create_dir_all(&spec.log_directory).map_err(|source| Error::ReadLog {
            path: spec.log_directory.clone(),
            source,
        })?;
        let config = spec.config();
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = call(&self.rt, "RunPodSandbox", self.runtime.run_pod_sandbox(req))?.pod_sandbox_id;
        Ok(Pod { id, config })
    }

    pub fn stop_pod_sandbox(&mut self, pod_id: &str) -> Result<(), Error> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_owned(),
        };
        call(&self.rt, "StopPodSandbox", self.runtime.stop_pod_sandbox(req)).map(drop)
    }

    pub fn remove_pod_sandbox(&mut self, pod_id: &str) -> Result<(), Error> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_owned(),
        };
        call(&self.rt, "RemovePodSandbox", self.runtime.remove_pod_sandbox(req)).map(drop)
    }

    /// Stops and removes a pod with all its containers.
    pub fn remove_pod(&mut self, pod_id: &str) -> Result<(), Error> {
        self.stop_pod_sandbox(pod_id)?;
        self.remove_pod_sandbox(pod_id)
    }

    /// Ids of the pods carrying `label` (any value), e.g. [`crate::spec::LABEL`].
    pub fn list_pods(&mut self, label: &str) -> Result<Vec<String>, Error> {
        let req = api::ListPodSandboxRequest { filter: None };
        let items = call(&self.rt, "ListPodSandbox", self.runtime.list_pod_sandbox(req))?.items;
        Ok(items
            .into_iter()
            .filter(|p| p.labels.contains_key(label))
            .map(|p| p.id)
            .collect())
    }

    pub fn create_container(&mut self, pod: &Pod, spec: &ContainerSpec) -> Result<String, Error> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(spec.config()),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(call(&self.rt, "CreateContainer", self.runtime.create_container(req))?.container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), Error> {
        let req = api::StartContainerRequest {
            container_id: id.to_owned(),
        };
        call(&self.rt, "StartContainer", self.runtime.start_container(req)).map(drop)
    }

    pub fn container_status(&mut self, id: &str) -> Result<api::ContainerStatus, Error> {
        let req = api::ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        call(&self.rt, "ContainerStatus", self.runtime.container_status(req))?
            .status
            .ok_or(Error::Missing {
                call: "ContainerStatus",
                field: "status",
            })
    }

    /// Stops a container: SIGTERM, then SIGKILL after `timeout_s` (0: at once).
    pub fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<(), Error> {
        let req = api::StopContainerRequest {
            container_id: id.to_owned(),
            timeout: timeout_s,
        };
        call(&self.rt, "StopContainer", self.runtime.stop_container(req)).map(drop)
    }

    pub fn remove_container(&mut self, id: &str) -> Result<(), Error> {
        let req = api::RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        call(&self.rt, "RemoveContainer", self.runtime.remove_container(req)).map(drop)
    }

    /// Creates and starts a container in `pod` and waits for its end,
    /// timing each step. The container is left for the caller to remove.
    pub fn run(&mut self, pod: &Pod, spec: &ContainerSpec, timeout: Duration) -> Result<Run, Error> {
        let asked = std::time::SystemTime::now();
        let t = Instant::now();
        let id = self.create_container(pod, spec)?;
        let create = t.elapsed();
        let t = Instant::now();
        self.start_container(&id)?;
        let start = t.elapsed();
        let t = Instant::now();
        let exited = self.wait_exited(pod, &id, timeout)?;
        let wait = t.elapsed();
        let finished = u64::try_from(exited.status.finished_at).ok().map(Duration::from_nanos);
        let since_epoch = asked.duration_since(std::time::UNIX_EPOCH).ok();
        let exited_after = finished.zip(since_epoch).and_then(|(f, a)| f.checked_sub(a));
        Ok(Run {
            exited,
            create,
            start,
            wait,
            exited_after,
        })
    }

    /// Polls until the container has exited; returns its status and output.
    pub fn wait_exited(&mut self, pod: &Pod, id: &str, timeout: Duration) -> Result<Exited, Error> {
        let started = Instant::now();
        let status = loop {
            let status = self.container_status(id)?;
            if status.state == api::ContainerState::ContainerExited as i32 {
                break status;
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    id: id.to_owned(),
                    timeout,
                    state: state_name(status.state),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = read_log(&pod.log_directory().join(&status.log_path))?;
        Ok(Exited {
            id: id.to_owned(),
            exit_code: status.exit_code,
            status,
            output,
        })
    }
}

/// Reads and parses a container's CRI log file.
pub fn read_log(path: &Path) -> Result<log::Output, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadLog {
        path: path.to_owned(),
        source,
    })?;
    Ok(log::parse(&text)?)
}

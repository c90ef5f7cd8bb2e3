//! A small, blocking Kubernetes CRI v1 client, for strata's end-to-end tests
//! and benchmarks: pull and remove images, run a host-network pod, create,
//! start and wait for a container, and read its CRI log.
//!
//! The protobuf and gRPC stubs are generated from the vendored
//! `k8s.io/cri-api` v0.25.0 `api.proto` ([`api`]); [`Cri`] wraps them in
//! one call per operation on its own single-threaded tokio runtime, so plain
//! test code can call it. [`spec`] builds the pod and container configs (no
//! I/O), [`log`] parses the CRI log format. This crate knows nothing of
//! strata: it speaks to any CRI runtime on a unix socket.

mod client;
pub mod log;
pub mod spec;

/// The generated code, nested as the protobuf package is.
#[allow(clippy::all, missing_docs)]
mod proto {
    pub mod runtime {
        pub mod v1 {
            tonic::include_proto!("runtime.v1");
        }
    }
}

/// The CRI v1 messages and gRPC stubs (`runtime.v1`).
pub use proto::runtime::v1 as api;

pub use client::{read_log, Cri, Error, Exited, Run};
pub use spec::{ContainerSpec, Pod, PodSpec};

//! containerd's snapshots gRPC API (`containerd.services.snapshots.v1`)
//! served on a unix socket and translated to [`strata_snapshotter`].
//!
//! This crate is the only place that knows tonic: [`convert`] maps the
//! protobuf messages to the snapshotter's own types and its errors to gRPC
//! codes, [`service`] runs each call on a blocking thread, [`server`] owns
//! the socket and the graceful shutdown, [`authority`] lets gRPC C-core
//! clients (grpcio, C++) through h2's `:authority` check, and [`client`]
//! dials the socket (tests, benchmarks).

pub mod authority;
pub mod client;
mod convert;
pub mod server;
mod service;

/// The generated code, nested as the protobuf packages are.
#[allow(clippy::all, missing_docs)]
mod proto {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
}

/// The protobuf types and gRPC stubs of containerd's snapshots API.
pub mod api {
    pub use crate::proto::containerd::services::snapshots::v1 as snapshots;
    pub use crate::proto::containerd::types;
}

pub use convert::status_of;
pub use server::{serve, ServeError, SocketOptions};
pub use service::{CallObserver, SnapshotService};

//! Generates containerd's snapshots API from the vendored protos with
//! protox, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/containerd/services/snapshots/v1/snapshots.proto";
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(files)?;
    Ok(())
}

//! `strata serve` called by gRPC's C core, the client Python (grpcio) and
//! C++ tools use, rather than Go's. grpcio from PyPI (≥ 1.57) sends the
//! percent-encoded socket path as `:authority`, which h2 refuses with a
//! stream reset; strata's `:authority` shim (crates/grpc/src/authority)
//! makes it `localhost`. Debian's python3-grpcio (1.51) sends `localhost`
//! and must keep working.
//!
//! Needs `scripts/setup --deps`: it installs python3-grpcio and the PyPI
//! grpcio venv (`STRATA_GRPCIO_PYTHON` overrides where its python is).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use strata_grpc::authority::AuthorityShim;
use strata_tests::serve::{labels, Serve};
use strata_tests::TestStore;

/// grpcio from PyPI, as scripts/setup installs it.
fn pypi_python() -> PathBuf {
    let python = std::env::var_os("STRATA_GRPCIO_PYTHON")
        .map_or_else(|| PathBuf::from("/opt/strata-test/grpcio/bin/python3"), PathBuf::from);
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup --deps (it installs grpcio from PyPI)",
        python.display()
    );
    python
}

/// Debian's python3 with python3-grpcio.
fn debian_python() -> PathBuf {
    PathBuf::from("/usr/bin/python3")
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/grpc_client.py")
}

#[derive(Debug)]
struct Calls {
    grpcio: String,
    /// Per call: status code name, details, response bytes (hex).
    calls: Vec<(String, String, String)>,
}

/// Runs the C-core client: one Stat per key, on one channel.
fn stat_with(python: &Path, socket: &Path, keys: &[&str]) -> Calls {
    let out = Command::new(python)
        .arg(client_script())
        .arg(socket)
        .args(keys)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} grpc_client.py: {}\n{}",
        python.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    Calls {
        grpcio: text(&v["grpcio"]),
        calls: v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (text(&c["code"]), text(&c["details"]), text(&c["response"])))
            .collect(),
    }
}

fn version(text: &str) -> (u32, u32) {
    let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Stat through `python`'s grpcio: a missing key, an active snapshot, the
/// missing key again (by then the client's HPACK encoder refers to what
/// it indexed), each a proper gRPC answer.
fn stat_answers(python: &Path) -> String {
    let store = TestStore::new();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(&store.root(), &socket, None, &[]);
    serve.client().prepare("default/1/active", "", labels(&[])).unwrap();
    let got = stat_with(python, &socket, &["missing", "default/1/active", "missing"]);
    let codes: Vec<&str> = got.calls.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(
        codes,
        ["NOT_FOUND", "OK", "NOT_FOUND"],
        "grpcio {}: {got:?}",
        got.grpcio
    );
    assert!(got.calls[0].1.contains("missing"), "{got:?}");
    // StatSnapshotResponse { info: Info { name: "default/1/active", .. } }
    let name_hex: String = b"default/1/active".iter().map(|b| format!("{b:02x}")).collect();
    assert!(got.calls[1].2.contains(&name_hex), "{got:?}");
    assert!(
        !serve.log_text().contains("panicked"),
        "serve log:\n{}",
        serve.log_text()
    );
    assert!(serve.stop().success());
    got.grpcio
}

#[test]
fn pypi_grpcio_gets_answers() {
    let grpcio = stat_answers(&pypi_python());
    assert!(
        version(&grpcio) >= (1, 57),
        "grpcio {grpcio} predates the percent-encoded authority"
    );
}

#[test]
fn debian_grpcio_still_gets_answers() {
    let grpcio = stat_answers(&debian_python());
    assert!(version(&grpcio) >= (1, 0), "{grpcio}");
}

/// The client's first bytes on a connection: a listener that plays an
/// HTTP/2 server just far enough (an empty SETTINGS frame) for C-core to
/// send its first request, then goes quiet.
fn first_bytes(python: &Path) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capture.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut child = Command::new(python)
        .arg(client_script())
        .arg(&socket)
        .arg("missing")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{} never connected: {e}", python.display()),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        bytes.extend_from_slice(&buf[..n]);
    }
    let _ = child.kill();
    let _ = child.wait();
    bytes
}

/// Whether the shim rewrites a connection that starts with `bytes`.
fn shim_rewrites(bytes: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut client, server) = tokio::net::UnixStream::pair().unwrap();
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let mut shim = AuthorityShim::new(server);
        let mut rewriting = false;
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(1..) = shim.read(&mut buf).await {
            rewriting |= shim.rewriting();
        }
        rewriting
    })
}

/// Guards the two tests above: PyPI's grpcio does send an `:authority`
/// h2 refuses (so its test goes through the rewrite), Debian's does not.
#[test]
fn only_pypi_grpcio_needs_the_rewrite() {
    let pypi = first_bytes(&pypi_python());
    assert!(pypi.starts_with(b"PRI * HTTP/2.0"), "{pypi:02x?}");
    assert!(
        shim_rewrites(&pypi),
        "PyPI grpcio's first request was not rewritten: {pypi:02x?}"
    );
    let debian = first_bytes(&debian_python());
    assert!(debian.starts_with(b"PRI * HTTP/2.0"), "{debian:02x?}");
    assert!(
        !shim_rewrites(&debian),
        "Debian grpcio's first request was rewritten: {debian:02x?}"
    );
}

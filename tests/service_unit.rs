//! The systemd unit in `dist/systemd/` and the readiness protocol it relies
//! on: `systemd-analyze verify` accepts the unit, and `strata serve` sends
//! READY=1 only once its socket answers, and STOPPING=1 on SIGTERM.

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use strata_tests::serve::Serve;
use strata_tests::*;

fn unit_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd/strata.service")
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's binary exists: point it at this build.
    let text = std::fs::read_to_string(unit_file()).unwrap();
    assert!(text.contains("Type=notify") && text.contains("Before=containerd.service"));
    let text = text.replace("/usr/local/bin/strata", strata_bin().to_str().unwrap());
    let unit = dir.path().join("strata.service");
    std::fs::write(&unit, text).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about other units on this machine are not the unit's problem.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("strata.service")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn serve_reports_ready_once_its_socket_answers_and_stopping_on_sigterm() {
    require_root();
    let store = TestStore::new();
    let notify_path = store.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let socket = store.dir.path().join("s.sock");
    let serve = Serve::start(
        &store.root(),
        &socket,
        None,
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from strata serve");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
    assert!(UnixStream::connect(&socket).is_ok(), "ready before the socket answers");
    assert!(serve.stop().success());
    let n = notify.recv(&mut buf).expect("STOPPING=1 from strata serve");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
}

//! containerd's own snapshotter test suite (Go, `snapshots/testsuite`)
//! against `strata serve` through containerd's proxy client; each case gets
//! a fresh strata process on a fresh root. The runner is in
//! `tests/containerd-suite/`.

use std::process::Command;

use strata_tests::*;

#[test]
fn containerd_snapshotter_suite_passes() {
    run_suite(&[]);
}

/// The same suite with images mounted through loop devices and the
/// data-only lower passed as `::`: the kernel ladder's lower rungs, forced.
#[test]
fn containerd_snapshotter_suite_passes_on_the_loop_device_rung() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("loop.toml");
    std::fs::write(&config, "[kernel]\nerofs = \"loop\"\nlowers = \"double-colon\"\n").unwrap();
    run_suite(&[
        ("STRATA_SUITE_CONFIG", config.to_str().unwrap()),
        ("STRATA_SUITE_LADDER", "erofs=loop lowers=double-colon"),
    ]);
}

fn run_suite(env: &[(&str, &str)]) {
    require_root();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("containerd-suite/run.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(strata_bin())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("containerd-suite:"))
        .expect("the runner prints its pass line");
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    let [passed, failed, skipped] = numbers[..] else {
        panic!("{line}")
    };
    assert!(out.status.success(), "{line}");
    assert_eq!(failed, 0, "{line}");
    assert!(passed >= 20, "every case ran: {line}");
    assert_eq!(skipped, 1, "only Rename, which the suite skips itself: {line}");
    assert!(stdout.contains("--- SKIP: TestStrata/Rename"), "{line}");
}

//! kill -9 in the middle of real pulls: after each kill the store passes
//! fsck, earlier images still mount, and the pull can be retried.
//! Rounds: STRATA_KILL_ROUNDS (default 8); delays are spread over a pull's
//! duration with a seed printed for reruns (STRATA_KILL_SEED).

use std::process::Command;
use std::time::Instant;

use strata_tests::*;

#[test]
fn kill_9_during_pull_loses_nothing() {
    let store = TestStore::new();
    let scratch = store.dir.path();
    store.ok(&["pull", &layout_ref("minbase")]);
    let rounds: u32 = env_number("STRATA_KILL_ROUNDS", 8);
    let seed = kill_seed();
    eprintln!("kill -9 loop: {rounds} rounds, seed {seed}");

    // How long an uninterrupted pull takes, to spread the kills over it.
    let timing = TestStore::new();
    let started = Instant::now();
    timing.ok(&["pull", &layout_ref("devel")]);
    let full = started.elapsed();
    drop(timing);

    let mut state = seed | 1;
    let mut killed = 0;
    for round in 0..rounds {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = full.mul_f64((state >> 11) as f64 / (1u64 << 53) as f64);
        let mut child = Command::new(strata_bin())
            .arg("--root")
            .arg(store.root())
            .args(["pull", &layout_ref("devel")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        if !finished {
            killed += 1;
        }
        eprintln!(
            "round {round}: kill after {delay:?} ({})",
            if finished { "had finished" } else { "killed" }
        );
        store.fsck_clean();
        if store.ok(&["images"]).contains(":devel") {
            store.ok(&["rmi", &layout_ref("devel")]);
        }
    }
    assert!(killed > 0, "no round interrupted a pull");

    let mounted = store.mount(&layout_ref("minbase"));
    assert_tree_matches(&expected_tree("minbase", scratch), &mounted, scratch);
    store.umount(&mounted);

    store.ok(&["pull", &layout_ref("devel")]);
    store.ok(&["gc"]);
    store.fsck_clean();
    let mut distinct = distinct_contents(&expected_tree("minbase", scratch));
    distinct.extend(distinct_contents(&expected_tree("devel", scratch)));
    assert_eq!(
        store.objects().len(),
        distinct.len(),
        "after gc the store holds exactly the live contents"
    );
    assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    let mounted = store.mount(&layout_ref("devel"));
    assert_tree_matches(&expected_tree("devel", scratch), &mounted, scratch);
}

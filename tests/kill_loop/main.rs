//! The randomized kill -9 loop against a serving strata: a client prepares,
//! writes through the overlay, commits, views and removes snapshots (and,
//! every tenth round, `strata pull` runs beside it) while `strata serve` is
//! killed with SIGKILL at a random moment. After every kill:
//!
//! - `strata fsck` on the crashed store finds no problems; the only
//!   leftovers allowed are snapshot dirs of the interrupted call, which
//!   `fsck --repair` removes, and then fsck is clean;
//! - the pulled images are intact (listed, digests re-hashed by fsck,
//!   sample files of minbase read back; the whole tree against the oracle
//!   every 25 rounds);
//! - after a restart, every snapshot the client saw committed is listed
//!   with its parent and reads back byte for byte through a View mount,
//!   and the server lists exactly the snapshots the client knows of;
//! - `strata df` holds one snapshot image per committed snapshot: none is
//!   kept alive for a snapshot that is gone;
//! - the interrupted call is retried to success (or found to have landed),
//!   and so is the interrupted pull.
//!
//! At the end everything is removed, and cleanup leaves exactly minbase.
//! Rounds: STRATA_KILL_LOOP_ROUNDS (default 200); seed: STRATA_KILL_SEED.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_tests::serve::{unmount_under, Serve};
use strata_tests::*;

mod client;
use client::*;

/// `strata fsck` on the store as the kill left it: no problems. Snapshot
/// dirs without a row may be left by an interrupted call that creates or
/// removes one, and a kill right after a commit's DB commit leaves its upper
/// dir for the next start to remove; `fsck --repair` (which opens the
/// snapshotter) deals with both, then fsck is clean.
/// Returns (snapshot orphans repaired, store orphan objects + images).
fn fsck_after_kill(store: &TestStore, round: u32, interrupted: Option<&Op>) -> (usize, u64) {
    let out = store.run(&["fsck"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let detail = || format!("round {round}: fsck:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("problem: "), "{}", detail());
    assert_eq!(text.matches(" 0 problems,").count(), 2, "{}", detail());
    let store_orphans: u64 = text
        .lines()
        .find(|l| l.contains("orphan objects"))
        .map(|l| {
            l.split(", ")
                .filter(|part| part.contains(" orphan "))
                .map(|part| part.split_whitespace().next().unwrap().parse::<u64>().unwrap())
                .sum()
        })
        .unwrap_or_else(|| panic!("{}", detail()));
    let orphans: Vec<&str> = text.lines().filter(|l| l.starts_with("orphan: ")).collect();
    if orphans.is_empty() {
        assert!(out.status.success(), "{}", detail());
        return (0, store_orphans);
    }
    let may_leave_dirs = matches!(
        interrupted,
        Some(Op::Prepare { .. } | Op::View { .. } | Op::Remove { .. } | Op::Cleanup)
    );
    // A commit moves its upper dir out of the way only after its DB commit,
    // and then deletes it in the background: any kill may leave one.
    let unfinished_commit = |o: &str| o.ends_with("the upper dir of its commit is still there (a start removes it)");
    for o in &orphans {
        let stray_dir =
            may_leave_dirs && o.starts_with("orphan: snapshot dir snapshots/") && o.ends_with("has no DB row");
        assert!(
            stray_dir || unfinished_commit(o),
            "round {round}: leftover after interrupting {interrupted:?}: {o}\n{}",
            detail()
        );
    }
    eprintln!("round {round}: fsck --repair of {orphans:?} (left by {interrupted:?})");
    let repaired = store.ok(&["fsck", "--repair"]);
    assert!(repaired.contains("after repair 0 problems, 0 orphans"), "{repaired}");
    store.fsck_clean();
    (orphans.len(), store_orphans)
}

/// A few regular files of minbase, read from a mount checked by the oracle.
fn sample_files(expected: &Path, mounted: &Path) -> Vec<(String, Vec<u8>)> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(expected).unwrap()).unwrap();
    let mut files: Vec<&String> = json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, e)| e["type"] == "file" && e["size"].as_u64().is_some_and(|s| (1000..4_000_000).contains(&s)))
        .map(|(p, _)| p)
        .collect();
    files.sort();
    let step = (files.len() / 8).max(1);
    files
        .into_iter()
        .step_by(step)
        .take(8)
        .map(|p| {
            let rel = p.trim_start_matches('/');
            (rel.to_owned(), std::fs::read(mounted.join(rel)).unwrap())
        })
        .collect()
}

fn minbase_intact(store: &TestStore, samples: &[(String, Vec<u8>)], oracle: Option<&Path>, round: u32) {
    let images = store.ok(&["images"]);
    assert!(images.contains(":minbase"), "round {round}: {images}");
    let mnt = store.mount(&layout_ref("minbase"));
    for (rel, want) in samples {
        let got = std::fs::read(mnt.join(rel)).unwrap();
        assert!(got == *want, "round {round}: minbase /{rel} changed");
    }
    if let Some(expected) = oracle {
        assert_tree_matches(expected, &mnt, store.dir.path());
    }
    store.umount(&mnt);
}

fn spawn_pull(store: &TestStore, tag: &str) -> Child {
    Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .arg("--config")
        .arg(store.dir.path().join("config.toml"))
        .args(["pull", &layout_ref(tag)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Unmounts whatever the test left under its dir, before the store goes.
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

fn bump(table: &mut BTreeMap<String, u64>, what: String) {
    *table.entry(what).or_default() += 1;
}

#[test]
fn kill_9_loop_while_a_client_works() {
    require_root();
    let started = Instant::now();
    let store = TestStore::new();
    let _unmount = UnmountOnDrop(store.dir.path().to_owned());
    let scratch = store.dir.path().to_owned();
    let rounds: u32 = env_number("STRATA_KILL_LOOP_ROUNDS", 200);
    let seed = kill_seed();
    eprintln!("kill loop: {rounds} rounds, seed {seed} (STRATA_KILL_SEED={seed} reruns the same choices)");
    let mut rng = Rng(seed | 1);

    // minbase, checked whole against the oracle, sampled for the rounds.
    store.ok(&["pull", &layout_ref("minbase")]);
    let minbase = expected_tree("minbase", &scratch);
    let samples = {
        let mnt = store.mount(&layout_ref("minbase"));
        assert_tree_matches(&minbase, &mnt, &scratch);
        let samples = sample_files(&minbase, &mnt);
        store.umount(&mnt);
        samples
    };
    assert!(samples.len() >= 4, "{} sample files", samples.len());

    // How long an uninterrupted pull of python takes, to spread kills over it.
    let t = Instant::now();
    store.ok(&["pull", &layout_ref("python")]);
    let full_pull = t.elapsed();
    {
        let mnt = store.mount(&layout_ref("python"));
        assert_tree_matches(&expected_tree("python", &scratch), &mnt, &scratch);
        store.umount(&mnt);
    }
    store.ok(&["rmi", &layout_ref("python")]);
    store.ok(&["gc"]);
    eprintln!(
        "setup: a python pull takes {full_pull:?}; setup took {:?}",
        started.elapsed()
    );

    let socket = scratch.join("s.sock");
    let worker_dir = scratch.join("w-mnt");
    let check_dir = scratch.join("c-mnt");
    let mut model = Model::default();
    let mut serve = Serve::start(&store.root(), &socket, None, &[]);
    let mut calls = 0u64;
    let mut confirmed = 0u64;
    let mut mid_request = 0u32;
    let mut retries_ok = 0u32;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut pulls_killed = 0u32;
    let mut pulls_finished = 0u32;
    let mut dirs_repaired = 0usize;
    let mut most_store_orphans = 0u64;

    for round in 0..rounds {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let pull_round = round % PULL_EVERY == PULL_EVERY / 2;
        let mut pull = pull_round.then(|| spawn_pull(&store, "python"));
        let delay = if pull_round {
            full_pull.mul_f64(rng.unit())
        } else {
            Duration::from_millis(rng.below(300))
        };
        let client = serve.client();
        let w = {
            let (shared, dir, wrng) = (Arc::clone(&shared), worker_dir.clone(), rng.fork());
            let m = std::mem::take(&mut model);
            std::thread::spawn(move || worker(client, m, shared, wrng, dir))
        };
        std::thread::sleep(delay);

        // The kill, with the client's state frozen while it happens.
        let log = serve.log.clone();
        let (status, in_flight) = {
            let mut s = lock(&shared);
            s.stop = true;
            let in_flight = s.in_flight.clone();
            let status = serve.kill9();
            if let Some(p) = pull.as_mut() {
                match p.try_wait().unwrap() {
                    Some(st) => {
                        assert!(st.success(), "round {round}: the pull failed on its own: {st}");
                        pulls_finished += 1;
                    }
                    None => {
                        p.kill().unwrap();
                        pulls_killed += 1;
                    }
                }
            }
            (status, in_flight)
        };
        let pull_status = pull.map(|mut p| p.wait().unwrap());
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: strata serve should die by the SIGKILL, not before: {status}\n{}",
            {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            }
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        while !w.is_finished() {
            assert!(
                Instant::now() < deadline,
                "round {round}: the client is stuck after the kill"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = w.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        model = out.model;
        calls += out.calls;
        confirmed += out.confirmed;
        let interrupted = out.interrupted.map(|(op, status)| {
            mid_request += 1;
            (op, status)
        });
        eprintln!(
            "round {round}: kill after {delay:?}, {} calls, {}{}",
            out.calls,
            match (&interrupted, &in_flight) {
                (Some((op, st)), _) => format!("cut off {op:?} ({:?})", st.code()),
                (None, Some(op)) => format!("{op:?} answered just before"),
                (None, None) => "between calls".to_owned(),
            },
            match &pull_status {
                Some(st) if st.success() => ", pull had finished",
                Some(_) => ", pull killed",
                None => "",
            }
        );

        // The crashed store.
        let (dirs, orphans) = fsck_after_kill(&store, round, interrupted.as_ref().map(|(op, _)| op));
        dirs_repaired += dirs;
        most_store_orphans = most_store_orphans.max(orphans);
        if let Some(st) = &pull_status {
            let images = store.ok(&["images"]);
            if st.success() {
                assert!(
                    images.contains(":python"),
                    "round {round}: a finished pull is listed: {images}"
                );
            }
            store.ok(&["pull", &layout_ref("python")]);
            let images = store.ok(&["images"]);
            assert!(images.contains(":python"), "round {round}: the retried pull: {images}");
            store.fsck_clean();
            store.ok(&["rmi", &layout_ref("python")]);
            store.ok(&["gc"]);
            bump(&mut outcomes, "pull: retried".into());
        }
        let oracle = (round % ORACLE_EVERY == ORACLE_EVERY - 1).then_some(minbase.as_path());
        minbase_intact(&store, &samples, oracle, round);

        // Restart, the interrupted call retried, everything known intact.
        serve = Serve::start(&store.root(), &socket, None, &[]);
        let mut c = serve.client();
        if let Some((op, _)) = &interrupted {
            let outcome = retry(&mut c, &mut model, op, &mut rng, &check_dir);
            bump(&mut outcomes, format!("{}: {outcome}", op.kind()));
            retries_ok += 1;
        }
        verify_model(&mut c, &mut model, &check_dir, round);
        // Each committed snapshot holds its own image (their contents all
        // differ); an image held for a snapshot that is gone never goes.
        let df = store.ok(&["df"]);
        let held = df.lines().filter(|l| l.starts_with("snapshot:")).count();
        assert_eq!(
            held,
            model.committed.len(),
            "round {round}: after interrupting {:?}, the store holds {held} snapshot images for {} committed \
             snapshots:\n{df}",
            interrupted.as_ref().map(|(op, _)| op),
            model.committed.len()
        );
    }

    let took = started.elapsed();
    eprintln!("outcomes of the interrupted calls:");
    for (what, n) in &outcomes {
        eprintln!("  {what}: {n}");
    }
    eprintln!(
        "{calls} calls answered; pulls: {pulls_killed} killed, {pulls_finished} had finished; \
         {dirs_repaired} orphan snapshot dirs repaired; at most {most_store_orphans} orphan objects and \
         images after a kill (gc frees them); {took:?}"
    );
    eprintln!(
        "kill loop: {rounds} kills ({mid_request} mid-request), {confirmed} commits confirmed, \
         {retries_ok} retries ok, seed {seed}"
    );

    // The end: everything committed, checked, then removed; cleanup leaves
    // exactly minbase.
    let mut c = serve.client();
    for key in model.active.keys().cloned().collect::<Vec<_>>() {
        let name = model.fresh("c");
        c.commit(&name, &key).unwrap();
        let snap = model.active.remove(&key).unwrap();
        model.committed.insert(name, snap);
    }
    verify_model(&mut c, &mut model, &check_dir, rounds);
    eprintln!("{} snapshots at the end, all intact", model.committed.len());
    // A view made just before the last stop is still there: it goes first,
    // or its parent would never become a leaf.
    for key in model.views.keys().cloned().collect::<Vec<_>>() {
        c.remove(&key).unwrap();
        model.forget(&key);
    }
    while !model.committed.is_empty() {
        let leaves = model.leaves();
        assert!(!leaves.is_empty(), "no leaf among {:?}", model.names());
        for name in leaves {
            c.remove(&name).unwrap();
            model.forget(&name);
        }
    }
    assert!(c.list().is_empty());
    c.cleanup().unwrap();
    drop(c);
    assert!(serve.stop().success());
    store.fsck_clean();
    minbase_intact(&store, &samples, Some(&minbase), rounds);
    let df = store.ok(&["df"]);
    assert!(
        !df.contains("snapshot:"),
        "no snapshot is left, nor may its image be:\n{df}"
    );
    let live = distinct_contents(&minbase);
    assert_eq!(
        store.objects().len(),
        live.len(),
        "after removing every snapshot, cleanup leaves exactly minbase's objects:\n{df}"
    );
    assert_eq!(store.images().len(), 1, "and exactly minbase's image");
    assert_eq!(std::fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    assert!(
        rounds < 20 || mid_request > rounds / 10,
        "too few kills hit a call: {mid_request}"
    );
    assert!(
        rounds < 20 || confirmed > u64::from(rounds / 2),
        "too few commits: {confirmed}"
    );
}

//! CLI behaviour that needs no image family: usage errors, exit codes,
//! messages.

use strata_tests::*;

#[test]
fn usage_errors_exit_2_and_failures_exit_1() {
    let store = TestStore::new();
    let out = store.run(&["pull"]);
    assert_eq!(out.status.code(), Some(2), "missing argument is a usage error");
    let out = store.run(&["no-such-verb"]);
    assert_eq!(out.status.code(), Some(2));

    let out = store.run(&["pull", "not a reference"]);
    assert_eq!(out.status.code(), Some(2), "a malformed reference is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid image reference"));
    let stderr = store.fails(&["rmi", "nothing"]);
    assert!(stderr.contains("no image named"), "{stderr}");
    let target = store.dir.path().join("t");
    std::fs::create_dir_all(&target).unwrap();
    let stderr = store.fails(&["mount", "nothing", target.to_str().unwrap()]);
    assert!(stderr.contains("no image named"), "{stderr}");
    let stderr = store.fails(&["umount", target.to_str().unwrap()]);
    assert!(stderr.contains("not a strata mount"), "{stderr}");
    let stderr = store.fails(&["pull", "oci:/nonexistent-layout:x"]);
    assert!(stderr.contains("index.json"), "{stderr}");
}

#[test]
fn empty_store_reports_cleanly() {
    let store = TestStore::new();
    store.fsck_clean();
    let df: serde_json::Value = serde_json::from_str(&store.ok(&["df", "--json"])).unwrap();
    assert_eq!(df["objects"].as_u64(), Some(0));
    assert!(store.ok(&["gc"]).contains("removed 0 objects"));
    assert!(store.ok(&["version"]).contains("kernel offers: erofs erofs-from-file"));
}

#[test]
fn bad_config_is_a_usage_error() {
    let store = TestStore::new();
    let config = store.dir.path().join("bad.toml");
    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let out = std::process::Command::new(strata_bin())
        .args(["--config", config.to_str().unwrap(), "images"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));
}

#[test]
fn pulling_an_unchanged_image_again_fetches_nothing() {
    let store = TestStore::new();
    let reference = layout_ref("minbase");
    assert!(store.ok(&["pull", &reference]).starts_with("pulled"));
    assert!(store.ok(&["pull", &reference]).contains("is up to date"));
    // A deleted image file is not "up to date": it is pulled again.
    for image in store.images().keys() {
        std::fs::remove_file(store.root().join("images").join(image)).unwrap();
    }
    assert!(store.ok(&["pull", &reference]).starts_with("pulled"));
    store.fsck_clean();
}

#[test]
fn imports_beyond_the_configured_maximum_are_refused() {
    let store = TestStore::new();
    store.set_config("[limits]\nmax_concurrent_imports = 1\n");
    let mut first = std::process::Command::new(strata_bin())
        .arg("--root")
        .arg(store.root())
        .arg("--config")
        .arg(store.dir.path().join("config.toml"))
        .args(["pull", &layout_ref("devel")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the first pull holds its slot (it has staging in tmp/).
    let tmp = store.root().join("tmp");
    for _ in 0..200 {
        if std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = store.fails(&["pull", &layout_ref("minbase")]);
    assert!(err.contains("imports are already running"), "{err}");
    assert!(first.wait().unwrap().success());
    store.ok(&["pull", &layout_ref("minbase")]);
    store.fsck_clean();
}

#[test]
fn repair_marks_an_image_broken_and_a_pull_heals_it() {
    let store = TestStore::new();
    let minbase = layout_ref("minbase");
    store.ok(&["pull", &minbase]);
    // Damage one object: a disk error or a hand edit under objects/.
    let (name, size) = store
        .objects()
        .into_iter()
        .find(|(_, size)| *size > 1000)
        .expect("minbase has objects");
    let path = store.root().join("objects").join(&name[..2]).join(&name[2..]);
    std::fs::write(&path, vec![b'x'; size as usize]).unwrap();

    let out = store.run(&["fsck"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&format!("object {name} is corrupt")), "{text}");

    let repaired = store.run(&["fsck", "--repair"]);
    let text = String::from_utf8_lossy(&repaired.stdout).into_owned();
    assert!(
        text.contains("marked image") && text.contains("minbase") && text.contains("broken"),
        "{text}"
    );
    assert!(!path.exists(), "repair removes the corrupt object");
    assert!(store.ok(&["images"]).contains("BROKEN"));
    let target = store.dir.path().join("m");
    std::fs::create_dir_all(&target).unwrap();
    let err = store.fails(&["mount", &minbase, target.to_str().unwrap()]);
    assert!(err.contains("is broken") && err.contains("pull"), "{err}");

    // A pull of the same image imports it again instead of skipping it.
    let pulled = store.ok(&["pull", &minbase]);
    assert!(!pulled.contains("up to date"), "{pulled}");
    assert!(!store.ok(&["images"]).contains("BROKEN"));
    store.fsck_clean();
    let mounted = store.mount(&minbase);
    assert_tree_matches(&expected_tree("minbase", store.dir.path()), &mounted, store.dir.path());
    store.umount(&mounted);
}

//! Basic auth against a real registry: Debian's docker-registry with an
//! htpasswd file, started by this test on its own port.

use std::process::{Child, Command};

use strata_tests::*;

struct AuthRegistry {
    child: Child,
    addr: String,
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> AuthRegistry {
    let port = std::env::var("STRATA_TEST_AUTH_REGISTRY_PORT").unwrap_or_else(|_| "5001".into());
    let addr = format!("127.0.0.1:{port}");
    let hash = Command::new("python3")
        .args([
            "-c",
            "import crypt; print(crypt.crypt('s3cret', crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "bcrypt hash: {hash:?}");
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("strata:{}", String::from_utf8_lossy(&hash.stdout))).unwrap();
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
            dir.join("data").display(),
            htpasswd.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::fs::File::create(dir.join("registry.log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry (Debian package) is installed");
    let registry = AuthRegistry { child, addr };
    for _ in 0..100 {
        let status = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{}/v2/", registry.addr),
            ])
            .output()
            .unwrap();
        if status.stdout == b"401" {
            return registry;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the auth registry did not come up on {}", registry.addr);
}

#[test]
fn basic_auth_credentials_are_required_and_used() {
    let store = TestStore::new();
    let registry = start(store.dir.path());
    let reference = format!("{}/strata/minbase:latest", registry.addr);
    let push = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "strata:s3cret",
        ])
        .arg(format!("oci:{}:minbase", family_layout().display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(push.status.success(), "{push:?}");

    let stderr = store.fails(&["pull", &reference]);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    let stderr = store.fails(&["pull", "--creds", "strata:wrong", &reference]);
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    store.ok(&["pull", "--creds", "strata:s3cret", &reference]);
    let mounted = store.mount(&reference);
    assert_tree_matches(&expected_tree("minbase", store.dir.path()), &mounted, store.dir.path());
}

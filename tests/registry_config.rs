//! The registry client configured like containerd, against real registries
//! (Debian's docker-registry) that each test starts on its own ports:
//! credentials from a docker `config.json` (Basic, Bearer tokens from a
//! token server, identity tokens), mirrors from `hosts.toml` (in order,
//! `override_path`, capabilities, falling back to the upstream), TLS with
//! a CA, `skip_verify` and client certificates, redirects that must not
//! carry credentials elsewhere, and manifests too large to read.
//!
//! The registries and helper servers (token server, counting proxy,
//! oversized manifests) are started through `strata_tests::registries`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use strata_tests::registries::{
    count_lines, family_data, htpasswd_auth, openssl, push, python_server, Registry, TokenServer, PASSWORD,
    REFRESH_TOKEN, USER,
};
use strata_tests::*;

/// A registry storage directory holding the family's minbase as
/// `strata/minbase:latest`, pushed through a plain registry on `port`
/// that is gone when this returns.
fn minbase_data(dir: &Path, port: u16) -> PathBuf {
    family_data(dir, port, &["minbase"])
}

/// The manifest digest of minbase in the family layout.
fn minbase_digest() -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(family_layout().join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "minbase")
        .and_then(|m| m["digest"].as_str())
        .unwrap()
        .to_owned()
}

/// A config whose `[registry]` names `hosts` (absent unless created) and
/// an auth file holding `auths` (none when `None`).
fn configure(store: &TestStore, hosts: &Path, auths: Option<serde_json::Value>) {
    let mut toml = format!("[registry]\nconfig_path = \"{}\"\n", hosts.display());
    if let Some(auths) = auths {
        let file = store.dir.path().join("auth.json");
        std::fs::write(&file, serde_json::json!({ "auths": auths }).to_string()).unwrap();
        toml.push_str(&format!("auth_file = \"{}\"\n", file.display()));
    }
    store.set_config(&toml);
}

/// Pulls `reference` into `store`; checks the manifest digest it reports.
fn pull_ok(store: &TestStore, reference: &str) {
    let out = store.ok(&["pull", reference]);
    assert!(out.contains(&minbase_digest()), "{out}");
}

fn b64(text: &str) -> String {
    let out = Command::new("base64")
        .args(["-w0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn basic_credentials_come_from_the_auth_file_and_stay_off_redirects() {
    let first = TestStore::new();
    let dir = first.dir.path();
    let data = minbase_data(dir, 5010);
    let registry = Registry::start(dir, "basic", 5010, &data, "", &htpasswd_auth(dir));
    let reference = format!("{}/strata/minbase:latest", registry.addr);
    let no_hosts = dir.join("no-certs.d");

    // docker's `auth` form, keyed by host:port.
    configure(
        &first,
        &no_hosts,
        Some(serde_json::json!({ "127.0.0.1:5010": { "auth": b64(&format!("{USER}:{PASSWORD}")) } })),
    );
    pull_ok(&first, &reference);

    // username/password, keyed by a URL as `docker login` writes it.
    let store = TestStore::new();
    configure(
        &store,
        &no_hosts,
        Some(serde_json::json!({ "http://127.0.0.1:5010/v1/": { "username": USER, "password": PASSWORD } })),
    );
    pull_ok(&store, &reference);

    // A wrong password is refused, clearly; --creds overrides the file.
    let store = TestStore::new();
    configure(
        &store,
        &no_hosts,
        Some(serde_json::json!({ "127.0.0.1:5010": { "username": USER, "password": "wrong" } })),
    );
    let stderr = store.fails(&["pull", &reference]);
    assert!(
        stderr.contains("refused the credentials")
            && stderr.contains("the credentials for 127.0.0.1:5010 were refused"),
        "{stderr}"
    );
    let out = store.ok(&["pull", "--creds", &format!("{USER}:{PASSWORD}"), &reference]);
    assert!(out.contains(&minbase_digest()), "{out}");

    // Credentials for other hosts only: none for this one.
    let store = TestStore::new();
    configure(
        &store,
        &no_hosts,
        Some(serde_json::json!({ "elsewhere.example": { "auth": b64("a:b") } })),
    );
    let stderr = store.fails(&["pull", &reference]);
    assert!(stderr.contains("no credentials for 127.0.0.1:5010"), "{stderr}");

    // A named auth file must exist.
    let store = TestStore::new();
    store.set_config(&format!("[registry]\nauth_file = \"{}/missing.json\"\n", dir.display()));
    let stderr = store.fails(&["pull", &reference]);
    assert!(stderr.contains("missing.json"), "{stderr}");

    // Blobs redirected to another host (as registries send them to
    // storage) are fetched without the Authorization header.
    let (_proxy, proxy_log) = python_server(
        dir,
        "redirect-proxy",
        5017,
        &[
            "proxy",
            "5017",
            "--backend",
            "127.0.0.1:5010",
            "--redirect-blobs",
            "--backend-auth",
            &format!("{USER}:{PASSWORD}"),
        ],
    );
    let store = TestStore::new();
    configure(
        &store,
        &no_hosts,
        Some(serde_json::json!({ "127.0.0.1:5017": { "auth": b64(&format!("{USER}:{PASSWORD}")) } })),
    );
    pull_ok(&store, "127.0.0.1:5017/strata/minbase:latest");
    let log = std::fs::read_to_string(&proxy_log).unwrap();
    assert!(count_lines(&proxy_log, "redirected auth=no") >= 2, "{log}");
    assert_eq!(count_lines(&proxy_log, "redirected auth=yes"), 0, "{log}");
}

#[test]
fn bearer_tokens_from_a_token_server_with_password_or_identity_token() {
    let first = TestStore::new();
    let dir = first.dir.path();
    let data = minbase_data(dir, 5011);
    let tokens = TokenServer::start(dir, 5012);
    let token_log = tokens.log.clone();
    let registry = Registry::start(dir, "bearer", 5011, &data, "", &tokens.registry_auth);
    let reference = format!("{}/strata/minbase:latest", registry.addr);
    let no_hosts = dir.join("no-certs.d");

    // Password: a GET to the realm with basic credentials.
    configure(
        &first,
        &no_hosts,
        Some(serde_json::json!({ "127.0.0.1:5011": { "username": USER, "password": PASSWORD } })),
    );
    pull_ok(&first, &reference);
    let log = std::fs::read_to_string(&token_log).unwrap();
    assert!(
        log.contains("GET user=strata scope=repository:strata/minbase:pull"),
        "{log}"
    );
    // One token serves the manifest, the config and the layer.
    assert_eq!(count_lines(&token_log, "GET user=strata"), 1, "{log}");

    // Identity token: an OAuth2 refresh_token POST.
    let store = TestStore::new();
    configure(
        &store,
        &no_hosts,
        Some(
            serde_json::json!({ "127.0.0.1:5011": { "auth": b64(&format!("{USER}:")), "identitytoken": REFRESH_TOKEN } }),
        ),
    );
    pull_ok(&store, &reference);
    let log = std::fs::read_to_string(&token_log).unwrap();
    assert!(log.contains("POST refresh_token ok"), "{log}");

    // Refused: a wrong password, a wrong identity token, none at all.
    for auths in [
        Some(serde_json::json!({ "127.0.0.1:5011": { "username": USER, "password": "wrong" } })),
        Some(serde_json::json!({ "127.0.0.1:5011": { "identitytoken": "stale" } })),
        None,
    ] {
        let store = TestStore::new();
        configure(&store, &no_hosts, auths.clone());
        let stderr = store.fails(&["pull", &reference]);
        assert!(
            stderr.contains("refused the credentials") && stderr.contains("token server http://127.0.0.1:5012/token"),
            "{auths:?}: {stderr}"
        );
    }
    let log = std::fs::read_to_string(&token_log).unwrap();
    assert!(
        log.contains("GET refused user=strata") && log.contains("POST refresh_token refused"),
        "{log}"
    );
}

#[test]
fn mirrors_serve_first_and_the_upstream_takes_over() {
    let first = TestStore::new();
    let dir = first.dir.path();
    let data = dir.join("data");
    let upstream = Registry::start(dir, "upstream", 5013, &data, "", "");
    push(&upstream.addr, &["minbase"]);
    // The mirror reads the same storage; a proxy in front of it serves its
    // API under /mirror/api, not /v2 (override_path).
    let mirror = Registry::start(dir, "mirror", 5014, &data, "", "");
    let (proxy, proxy_log) = python_server(
        dir,
        "mirror-proxy",
        5015,
        &[
            "proxy",
            "5015",
            "--backend",
            "127.0.0.1:5014",
            "--prefix",
            "/mirror/api",
        ],
    );
    let hosts = dir.join("certs.d");
    let host_dir = hosts.join("127.0.0.1:5013");
    std::fs::create_dir_all(&host_dir).unwrap();
    let hosts_toml = |capabilities: &str| {
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://127.0.0.1:5013\"\n\n[host.\"http://127.0.0.1:5015/mirror/api\"]\n  capabilities = {capabilities}\n  override_path = true\n"
            ),
        )
        .unwrap();
    };
    let reference = "127.0.0.1:5013/strata/minbase:latest";
    let upstream_reads = || upstream.count("GET /v2/strata/minbase/");
    let blobs_served = |r: &Registry| {
        std::fs::read_to_string(&r.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("GET /v2/strata/minbase/blobs/sha256:") && l.contains("\" 200 "))
            .count()
    };
    let before = upstream_reads();

    // Mirror able to pull and resolve: it serves everything.
    hosts_toml("[\"pull\", \"resolve\"]");
    configure(&first, &hosts, None);
    pull_ok(&first, reference);
    assert_eq!(upstream_reads(), before, "the upstream served nothing");
    assert_eq!(mirror.count("GET /v2/strata/minbase/manifests/latest"), 1);
    assert!(blobs_served(&mirror) >= 2, "config and layer from the mirror");
    let log = std::fs::read_to_string(&proxy_log).unwrap();
    assert!(
        log.contains("GET /mirror/api/strata/minbase/manifests/latest?ns=127.0.0.1:5013"),
        "{log}"
    );

    // Mirror without `resolve`: the tag goes to the upstream, blobs to the mirror.
    hosts_toml("[\"pull\"]");
    let mirror_blobs = blobs_served(&mirror);
    let upstream_blobs = upstream.count("/blobs/");
    let store = TestStore::new();
    configure(&store, &hosts, None);
    pull_ok(&store, reference);
    assert_eq!(upstream.count("GET /v2/strata/minbase/manifests/latest"), 1);
    assert_eq!(upstream.count("/blobs/"), upstream_blobs, "no blob from the upstream");
    assert!(blobs_served(&mirror) >= mirror_blobs + 2);

    // The mirror's registry gone (its proxy answers 502): the upstream serves.
    drop(mirror);
    hosts_toml("[\"pull\", \"resolve\"]");
    let store = TestStore::new();
    configure(&store, &hosts, None);
    pull_ok(&store, reference);
    assert!(blobs_served(&upstream) >= 2, "blobs from the upstream");

    // The mirror unreachable altogether: the upstream still serves.
    drop(proxy);
    let upstream_blobs = blobs_served(&upstream);
    let store = TestStore::new();
    configure(&store, &hosts, None);
    pull_ok(&store, reference);
    assert!(blobs_served(&upstream) >= upstream_blobs + 2);
}

#[test]
fn tls_with_a_ca_skip_verify_and_a_client_certificate() {
    let first = TestStore::new();
    let dir = first.dir.path();
    let data = minbase_data(dir, 5016);
    let pki = dir.join("pki");
    std::fs::create_dir(&pki).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let run = |args: &[&str]| openssl(&pki, args);
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=strata-test-ca",
        ],
    ]
    .concat());
    std::fs::write(pki.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(pki.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, crt, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.crt"),
            format!("{who}.ext"),
        );
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN=strata-{who}")],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ]);
    }
    let tls = format!(
        "  tls:\n    certificate: {0}/server.crt\n    key: {0}/server.key\n    clientcas:\n      - {0}/ca.crt\n",
        pki.display()
    );
    let _registry = Registry::start(dir, "tls", 5016, &data, &tls, "");
    let hosts = dir.join("certs.d");
    let host_dir = hosts.join("127.0.0.1:5016");
    std::fs::create_dir_all(&host_dir).unwrap();
    for f in ["ca.crt", "client.crt", "client.key"] {
        std::fs::copy(pki.join(f), host_dir.join(f)).unwrap();
    }
    let reference = "127.0.0.1:5016/strata/minbase:latest";
    let with = |settings: &str| {
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!("server = \"https://127.0.0.1:5016\"\n{settings}"),
        )
        .unwrap();
        let store = TestStore::new();
        configure(&store, &hosts, None);
        store
    };

    // The CA and the client pair, paths relative to the host's directory.
    pull_ok(
        &with("ca = \"ca.crt\"\nclient = [[\"client.crt\", \"client.key\"]]\n"),
        reference,
    );
    // skip_verify instead of the CA.
    pull_ok(
        &with("skip_verify = true\nclient = [[\"client.crt\", \"client.key\"]]\n"),
        reference,
    );
    // Without the CA, the server's certificate is not trusted.
    let stderr = with("client = [[\"client.crt\", \"client.key\"]]\n").fails(&["pull", reference]);
    assert!(stderr.contains("certificate verify failed"), "{stderr}");
    // Without a client certificate, the registry refuses the handshake.
    let stderr = with("ca = \"ca.crt\"\n").fails(&["pull", reference]);
    assert!(
        stderr.contains("https://127.0.0.1:5016/v2/strata/minbase/manifests/latest")
            && stderr.contains("bad certificate"),
        "{stderr}"
    );
    // A CA file that is missing is named.
    let stderr = with("ca = \"nope.crt\"\n").fails(&["pull", reference]);
    assert!(stderr.contains("nope.crt"), "{stderr}");
}

#[test]
fn an_oversized_manifest_is_refused_while_it_streams() {
    let store = TestStore::new();
    let dir = store.dir.path();
    let (_huge, log) = python_server(dir, "huge", 5018, &["huge", "5018"]);
    configure(&store, &dir.join("no-certs.d"), None);

    // Chunked: refused once 16 MiB have arrived, not at the end.
    let stderr = store.fails(&["pull", "127.0.0.1:5018/strata/big:latest"]);
    assert!(
        stderr.contains("too large") && stderr.contains("over the limit of 16777216"),
        "{stderr}"
    );
    // With a Content-Length: refused before reading.
    let stderr = store.fails(&["pull", "127.0.0.1:5018/length/big:latest"]);
    assert!(stderr.contains("too large (67108864 bytes"), "{stderr}");

    // The server saw the client go away well before its 64 MiB.
    for _ in 0..50 {
        if count_lines(&log, "sent=") == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let sent: Vec<u64> = text
        .lines()
        .filter_map(|l| l.rsplit_once("sent=").and_then(|(_, n)| n.parse().ok()))
        .collect();
    assert_eq!(sent.len(), 2, "{text}");
    assert!(sent.iter().all(|&n| n < 40 << 20), "{text}");
}

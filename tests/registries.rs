//! Registries a test starts on its own ports: Debian's docker-registry
//! (plain, htpasswd or token auth) over a storage directory the family is
//! pushed into, and the helper servers of `fixtures/registry_servers.py`
//! (token server, counting proxy, oversized manifests). Every process is
//! killed when its guard is dropped, so a failed test leaves none behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::family_layout;

/// The one user the htpasswd file and the token server accept.
pub const USER: &str = "strata";
pub const PASSWORD: &str = "s3cret";
/// What the token server signs as, and the registry expects.
pub const TOKEN_ISSUER: &str = "strata-issuer";
pub const TOKEN_SERVICE: &str = "strata-registry";
/// The refresh token the token server accepts as an identity token.
pub const REFRESH_TOKEN: &str = "refresh-abc";

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something listens on `addr`.
pub fn wait_up(addr: &str) {
    for _ in 0..150 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("nothing listens on {addr}");
}

/// A docker-registry process; its access log has one line per request,
/// with the status and the client's user agent.
pub struct Registry {
    _proc: Proc,
    pub addr: String,
    pub log: PathBuf,
}

impl Registry {
    /// docker-registry on 127.0.0.1:`port` over `data`; `http` and `root`
    /// are extra YAML lines under `http:` and at the top level.
    pub fn start(dir: &Path, name: &str, port: u16, data: &Path, http: &str, root: &str) -> Registry {
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join(format!("{name}.yml"));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{http}{root}",
                data.display()
            ),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
            .spawn()
            .expect("docker-registry (Debian package) is installed");
        let proc = Proc(child);
        wait_up(&addr);
        Registry { _proc: proc, addr, log }
    }

    /// Access-log lines (`"GET /v2/... HTTP/1.1" 200`) containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        count_lines(&self.log, needle)
    }
}

/// Lines of the file `log` containing `needle` (none if it is missing).
pub fn count_lines(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Pushes the family's `tags` to `addr` as `strata/<tag>:latest`, digests
/// preserved (the manifests are the layout's, byte for byte).
pub fn push(addr: &str, tags: &[&str]) {
    for tag in tags {
        let push = Command::new("skopeo")
            .args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", family_layout().display()))
            .arg(format!("docker://{addr}/strata/{tag}:latest"))
            .output()
            .unwrap();
        assert!(push.status.success(), "{push:?}");
    }
}

/// A registry storage directory holding the family's `tags`, pushed
/// through a plain registry on `port` that is gone when this returns.
pub fn family_data(dir: &Path, port: u16, tags: &[&str]) -> PathBuf {
    let data = dir.join(format!("data-{port}"));
    let registry = Registry::start(dir, &format!("push-{port}"), port, &data, "", "");
    push(&registry.addr, tags);
    data
}

/// `fixtures/registry_servers.py ARGS --log DIR/NAME.log`, once it
/// listens on `port`; returns its guard and its log.
pub fn python_server(dir: &Path, name: &str, port: u16, args: &[&str]) -> (Proc, PathBuf) {
    let log = dir.join(format!("{name}.log"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/registry_servers.py");
    let child = Command::new("python3")
        .arg(script)
        .args(args)
        .arg("--log")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap();
    let proc = Proc(child);
    wait_up(&format!("127.0.0.1:{port}"));
    (proc, log)
}

/// An htpasswd file in `dir` for [`USER`] and [`PASSWORD`] (bcrypt).
pub fn htpasswd(dir: &Path) -> PathBuf {
    let hash = Command::new("python3")
        .args([
            "-W",
            "ignore",
            "-c",
            &format!("import crypt; print(crypt.crypt('{PASSWORD}', crypt.mksalt(crypt.METHOD_BLOWFISH)))"),
        ])
        .output()
        .unwrap();
    assert!(hash.status.success(), "bcrypt hash: {hash:?}");
    let path = dir.join("htpasswd");
    std::fs::write(&path, format!("{USER}:{}", String::from_utf8_lossy(&hash.stdout))).unwrap();
    path
}

/// The registry YAML (top level) for htpasswd auth with [`htpasswd`].
pub fn htpasswd_auth(dir: &Path) -> String {
    format!(
        "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
        htpasswd(dir).display()
    )
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A docker token server on 127.0.0.1:`port` for [`USER`]:[`PASSWORD`]
/// (and [`REFRESH_TOKEN`]), signing with a fresh EC key in `dir`.
pub struct TokenServer {
    _proc: Proc,
    /// One line per request: `GET user=U scope=S agent=A`, `GET refused
    /// user=U agent=A`, `POST refresh_token ok|refused agent=A`.
    pub log: PathBuf,
    /// The registry YAML (top level) that sends clients to this server.
    pub registry_auth: String,
}

impl TokenServer {
    pub fn start(dir: &Path, port: u16) -> TokenServer {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.crt",
                "-days",
                "2",
                "-subj",
                "/CN=strata-token",
            ],
        );
        let (proc, log) = python_server(
            dir,
            "token-server",
            port,
            &[
                "token",
                &port.to_string(),
                "--key",
                dir.join("token.key").to_str().unwrap(),
                "--issuer",
                TOKEN_ISSUER,
                "--service",
                TOKEN_SERVICE,
                "--user",
                &format!("{USER}:{PASSWORD}"),
                "--refresh",
                REFRESH_TOKEN,
            ],
        );
        let registry_auth = format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            dir.join("token.crt").display()
        );
        TokenServer {
            _proc: proc,
            log,
            registry_auth,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

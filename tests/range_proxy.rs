//! `fixtures/range-proxy.py`, a counting and fault-injecting proxy in
//! front of the test registry, for tests of ranged blob reads. Include it
//! with `mod range_proxy;` from a test file; the proxy is killed when its
//! [`RangeProxy`] is dropped.
//!
//! ```ignore
//! let proxy = RangeProxy::start(Mode::Pass);
//! // point a RegistrySource at proxy.addr() ("127.0.0.1:PORT"), read...
//! assert!(proxy.bytes_sent() < whole_blob);
//! ```

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// How the proxy serves GETs of blobs that carry `Range` (the script's
/// `--mode`; its docstring says what each does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwarded as they are.
    Pass,
    /// Several ranges: only the first is served (a 206 with one range).
    NoMultiRange,
    /// Several ranges: 200 with the whole blob (S3's way); one range is served.
    MultiRangeWhole,
    /// Range is ignored: 200 with the whole blob.
    IgnoreRange,
    /// Served, but every byte of data in a 206 is flipped.
    WrongBytes,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Pass => "pass",
            Mode::NoMultiRange => "no-multirange",
            Mode::MultiRangeWhole => "multirange-whole",
            Mode::IgnoreRange => "ignore-range",
            Mode::WrongBytes => "wrong-bytes",
        }
    }
}

/// One request the proxy answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// As the client sent it (`/redirected/v2/...` after a redirect).
    pub path: String,
    /// The client's `Range` header.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes written to the client's socket.
    pub sent: u64,
    /// False if the client closed the connection before the body's end.
    pub complete: bool,
}

impl Request {
    /// A GET of a blob (not a redirect the proxy sent).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.contains("/blobs/") && self.status != 307
    }

    /// How many ranges the request asked for (0 without Range).
    pub fn range_count(&self) -> usize {
        self.range.as_deref().map_or(0, |r| r.split(',').count())
    }
}

/// The proxy process, listening on 127.0.0.1.
pub struct RangeProxy {
    child: Child,
    addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl RangeProxy {
    /// A proxy in front of the test registry (`STRATA_TEST_REGISTRY`).
    pub fn start(mode: Mode) -> RangeProxy {
        Self::start_to(&strata_tests::registry(), mode, false)
    }

    /// A proxy in front of `upstream` (`HOST:PORT`); with `redirect`, blob
    /// GETs are first sent with 307 to another path of the proxy.
    pub fn start_to(upstream: &str, mode: Mode, redirect: bool) -> RangeProxy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/range-proxy.py");
        let mut command = Command::new("python3");
        command
            .arg(script)
            .args(["--upstream", upstream, "--mode", mode.flag(), "--log"])
            .arg(&log)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
        if redirect {
            command.arg("--redirect");
        }
        let mut child = command.spawn().expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
            panic!("range-proxy.py did not start: {line:?}\n{stderr}")
        });
        RangeProxy {
            child,
            addr: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    /// `127.0.0.1:PORT`: the registry host to name in references.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The requests answered so far, in the order they finished; first
    /// waits (up to 10 s) for those in flight to finish.
    pub fn requests(&self) -> Vec<Request> {
        self.wait_idle();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
                Request {
                    method: v["method"].as_str().unwrap_or_default().to_owned(),
                    path: v["path"].as_str().unwrap_or_default().to_owned(),
                    range: v["range"].as_str().map(str::to_owned),
                    status: v["status"].as_u64().and_then(|s| u16::try_from(s).ok()).unwrap_or(0),
                    sent: v["sent"].as_u64().unwrap_or(0),
                    complete: v["complete"].as_bool().unwrap_or(false),
                }
            })
            .collect()
    }

    /// The GETs of blobs answered so far.
    pub fn blob_gets(&self) -> Vec<Request> {
        self.requests().into_iter().filter(Request::is_blob_get).collect()
    }

    /// Body bytes sent to clients so far, over every request.
    pub fn bytes_sent(&self) -> u64 {
        self.requests().iter().map(|r| r.sent).sum()
    }

    /// Waits until the proxy answers no request (one whose client went
    /// away is logged only once the proxy notices).
    fn wait_idle(&self) {
        for _ in 0..200 {
            if self.in_flight() == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("range-proxy.py still answers requests after 10 s");
    }

    fn in_flight(&self) -> u64 {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        stream.write_all(b"GET /_proxy/in-flight HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        body.trim()
            .parse()
            .unwrap_or_else(|_| panic!("range-proxy.py answered {answer:?}"))
    }

    /// Forgets the requests so far (to count one phase of a test alone).
    pub fn clear(&self) {
        self.wait_idle();
        std::fs::write(&self.log, "").unwrap();
    }
}

impl Drop for RangeProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Several real server processes on one Redis, and nginx in front of them: child
//! processes on free loopback ports, killed when dropped (also when a test fails).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::free_port;

/// One `switchboard-server` process with `--redis-url`.
pub struct Node {
    pub port: u16,
    redis_url: String,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts a node on a free port.
    pub fn start(redis_url: &str, extra: &[&str]) -> Self {
        let mut node = Self {
            port: free_port(),
            redis_url: redis_url.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        node.restart();
        node
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// (Re)starts the process on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let addr = format!("127.0.0.1:{}", self.port);
        let mut args: Vec<OsString> = ["--addr", &addr, "--redis-url", &self.redis_url]
            .into_iter()
            .chain(["--trusted-proxies", "127.0.0.1/32"])
            .map(OsString::from)
            .collect();
        args.extend(self.extra.iter().map(OsString::from));
        self.child = Some(spawn_server(&args));
    }

    /// SIGKILL: no shutdown, no goodbye to Redis.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET path`: the status code and the body.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The server binary with `args` and the tests' generous limits (no rate limit in the way,
/// streams and recoveries long enough for every message of a run), once it says it is
/// listening.
pub fn spawn_server(args: &[OsString]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard-server"))
        .args(["--dist", "/nonexistent"])
        .args(["--rate-per-sec", "100000", "--rate-burst", "100000"])
        .args(["--history-size", "100000", "--recovery-limit", "100000"])
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "unexpected: {line}");
    child
}

/// A plain HTTP/1.0 GET on loopback.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// nginx (Debian's) running the example from docs/scaling.md, with its listen address
/// and upstream servers pointed at this test's ports.
pub struct Nginx {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The first ```nginx block of docs/scaling.md: the example users copy.
pub fn documented_example() -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/scaling.md"))
        .expect("docs/scaling.md");
    let start = doc
        .find("```nginx\n")
        .expect("an nginx block in docs/scaling.md")
        + 9;
    let len = doc[start..].find("```").unwrap();
    doc[start..start + len].to_owned()
}

impl Nginx {
    /// The documented example in front of `upstreams` (its 127.0.0.1:8081… servers
    /// replaced by these ports, in order), or `None` (after saying so) when nginx is not
    /// installed and not required (`SWITCHBOARD_REQUIRE_REDIS` requires it too).
    pub fn start(upstreams: &[u16]) -> Option<Self> {
        let binary = super::redis::installed("nginx", &["/usr/sbin/nginx", "/usr/bin/nginx"])?;
        let port = free_port();
        let mut example =
            documented_example().replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        for (i, up) in upstreams.iter().enumerate() {
            example = example.replace(
                &format!("127.0.0.1:{}", 8081 + i),
                &format!("127.0.0.1:{up}"),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\n\
             error_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             {example}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            port,
            child,
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

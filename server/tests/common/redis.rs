//! A real `redis-server` (Debian's) on a free loopback port, as a child process that is
//! killed when dropped, also when the test fails. Without the binary the Redis tests say
//! they are skipped, unless `SWITCHBOARD_REQUIRE_REDIS` is set (the test command sets it,
//! after `scripts/setup.sh --test` installed Redis): then they fail.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    appendonly: bool,
}

/// A free loopback port (bound and released; fine for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first of `paths` that exists, or `None` after saying the tests that need `name`
/// are skipped; with `SWITCHBOARD_REQUIRE_REDIS` set (the test command sets it) a missing
/// binary fails the test instead.
pub fn installed(name: &str, paths: &[&str]) -> Option<PathBuf> {
    let found = paths.iter().map(PathBuf::from).find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("SWITCHBOARD_REQUIRE_REDIS").is_none(),
            "{name} is not installed (scripts/setup.sh --test installs it)"
        );
        eprintln!("SKIPPED: {name} is not installed (scripts/setup.sh --test)");
    }
    found
}

fn binary() -> Option<PathBuf> {
    installed(
        "redis-server",
        &["/usr/bin/redis-server", "/usr/local/bin/redis-server"],
    )
}

impl Redis {
    /// Starts Redis without persistence, or returns `None` (after saying so) when it is
    /// not installed and not required.
    pub fn start() -> Option<Self> {
        Self::start_with(false)
    }

    /// Starts Redis; with `appendonly`, every write is fsync'd to its append-only file,
    /// so a restart (even after SIGKILL) keeps what it acknowledged.
    pub fn start_with(appendonly: bool) -> Option<Self> {
        binary()?;
        let mut redis = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            appendonly,
        };
        redis.restart();
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the process on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(binary().unwrap());
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if self.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let mut child = cmd.spawn().expect("redis-server");
        let out = BufReader::new(child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        for line in out.lines() {
            let line = line.unwrap_or_default();
            if line.contains("Ready to accept connections") {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
        }
        self.child = Some(child);
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `commands` in one MULTI/EXEC over a raw connection (no other client's
    /// command runs in between) and returns the raw replies.
    pub fn transaction(&self, commands: &[Vec<String>]) -> String {
        use std::io::{Read, Write};
        let mut all = vec![vec!["MULTI".to_owned()]];
        all.extend_from_slice(commands);
        all.push(vec!["EXEC".to_owned()]);
        let mut req = String::new();
        for args in &all {
            req.push_str(&format!("*{}\r\n", args.len()));
            for a in args {
                req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
            }
        }
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(!out.contains("-ERR") && !out.contains("EXECABORT"), "{out}");
        out
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

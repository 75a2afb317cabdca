//! Hostile clients against the real server binary, with its default limits and no token:
//! every channel slot taken with the longest names and the largest presence info, the
//! largest frames published with the longest ids and sent as `direct`s, big presence
//! requests, and nothing read back. The server's peak RSS growth must stay within the
//! bound its options imply ([`MemoryBudget`], documented in `server/src/budget.rs`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use switchboard_server::Config;
use switchboard_server::budget::MemoryBudget;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// Attacking connections (from one address, far under the per-address cap).
const CLIENTS: usize = 40;

struct Server(Child);

/// A counter from the server's `/metrics`.
async fn metric(addr: &str, name: &str) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `kB` field of /proc/<pid>/status, in bytes.
fn status_bytes(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

fn json_string_of_len(n: usize) -> String {
    // {"p":"xxx…"} is 8 bytes plus the x's.
    format!(r#"{{"p":"{}"}}"#, "x".repeat(n - 8))
}

async fn attack(url: String, me: usize, peers: Vec<String>, shared: Vec<String>) -> usize {
    let (mut ws, _) = match connect_async(&url).await {
        Ok(ws) => ws,
        Err(_) => return 0,
    };
    // The welcome, for our id; after it, nothing is ever read.
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    let limits = switchboard_protocol::Limits::default();
    let info = json_string_of_len(limits.max_presence_bytes as usize);
    let long = |prefix: &str, i: usize| {
        let base = format!("{prefix}{me}-{i}-");
        format!("{base}{}", "c".repeat(128 - base.len()))
    };
    let id = |i: usize| format!("{:0>64}", format!("{me}x{i}"));
    let mut sent = 0;
    let mut send = async |ws: &mut tokio_tungstenite::WebSocketStream<_>, text: String| {
        sent += 1;
        ws.send(Message::text(text)).await.is_ok()
    };
    // Every subscription slot with the longest names: half in rooms shared by all
    // attackers (listening only, so their queues fill with the rooms' traffic), half in
    // rooms of their own with the largest presence info. Two batches of 50 (a batch must
    // fit in one frame).
    for half in 0..2 {
        let frames: Vec<String> = (0..50)
            .map(|i| match half {
                0 => format!(r#"{{"type":"subscribe","channel":"{}"}}"#, shared[i]),
                _ => format!(
                    r#"{{"type":"subscribe","channel":"{}","presence":{info}}}"#,
                    long("u", i)
                ),
            })
            .collect();
        if !send(&mut ws, format!("[{}]", frames.join(","))).await {
            return sent;
        }
    }
    // Then, as fast as the rate limit allows: the largest directs to a few clients that
    // never read (9 MB from each attacker, 370 MB in all), the largest publishes with the
    // longest ids to fresh channels (history and dedupe windows) and to the shared rooms
    // (fan-out to 40 queues nobody drains), and presence requests.
    let blob = "b".repeat(limits.max_frame_bytes as usize - 400);
    for i in 0..200 {
        // Directs only in the burst, then every other frame.
        let kind = match i {
            0..90 => 0,
            _ if i % 2 == 0 => 0,
            _ => 6 + (i / 2) % 4,
        };
        let frame = match kind {
            0 => format!(
                r#"{{"type":"direct","to":"{}","data":"{blob}"}}"#,
                peers[(me + i) % peers.len()]
            ),
            6 | 7 => format!(
                r#"{{"type":"publish","id":"{}","channel":"{}","data":"{blob}"}}"#,
                id(i),
                long("h", i)
            ),
            8 => format!(
                r#"{{"type":"publish","id":"{}","channel":"{}","data":"{blob}"}}"#,
                id(i),
                shared[i % shared.len()]
            ),
            _ => format!(
                r#"{{"type":"request","id":"{}","method":"presence","params":{{"channel":"{}"}}}}"#,
                id(i),
                long("u", i % 50)
            ),
        };
        if !send(&mut ws, frame).await {
            break;
        }
        // The burst first, then just under 50 frames per second.
        if i > 90 {
            tokio::time::sleep(Duration::from_millis(22)).await;
        }
    }
    // Keep the connection (and everything queued for it) open a while longer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(ws);
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_stay_within_the_memory_bound() {
    let bin = env!("CARGO_BIN_EXE_switchboard-server");
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .args(["--addr", "127.0.0.1:0", "--dist", "/nonexistent-dist"])
        .arg("--data-dir")
        .arg(data.path())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server binary");
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let pid = server.0.id();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("switchboard listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    let url = format!("ws://{addr}/ws");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = status_bytes(pid, "VmRSS:");

    // Ids of the peers to send directs to: connect a few listeners that never read.
    let mut victims = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (mut ws, _) = connect_async(&url).await.unwrap();
        let Some(Ok(Message::Text(welcome))) = ws.next().await else {
            panic!("no welcome");
        };
        let v: serde_json::Value = serde_json::from_str(welcome.as_str()).unwrap();
        ids.push(v["client_id"].as_str().unwrap().to_owned());
        victims.push(ws);
    }
    let shared: Vec<String> = (0..50)
        .map(|i| {
            let base = format!("room:shared-{i}-");
            format!("{base}{}", "s".repeat(128 - base.len()))
        })
        .collect();
    let started = Instant::now();
    let attackers: Vec<_> = (0..CLIENTS)
        .map(|me| tokio::spawn(attack(url.clone(), me, ids.clone(), shared.clone())))
        .collect();
    let mut frames = 0;
    for a in attackers {
        frames += a.await.unwrap();
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let peak = status_bytes(pid, "VmHWM:").saturating_sub(baseline);
    let handled = metric(&addr, "switchboard_frames_in_total ").await;
    let refused = metric(&addr, "switchboard_directs_refused_total ").await;
    let slow = metric(&addr, "switchboard_slow_consumers_total ").await;
    let after = status_bytes(pid, "VmRSS:").saturating_sub(baseline);
    drop(victims);

    let config = Config::parse_from(["switchboard-server"]);
    let budget = MemoryBudget::from_config(&config);
    let clients = CLIENTS + 4;
    let bound = budget.shared + clients * budget.per_connection;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "hostile: {CLIENTS} clients sent {frames} frames in {:.1} s; the server handled {handled} \
         frames, refused {refused} directs, closed {slow} slow consumers; server RSS {:.1} MiB at start, \
         peak growth {:.1} MiB, growth after {:.1} MiB; bound {:.1} MiB \
         ({clients} × {:.2} MiB per connection + {:.0} MiB of streams)",
        took.as_secs_f64(),
        mib(baseline),
        mib(peak),
        mib(after),
        mib(bound),
        mib(budget.per_connection),
        mib(budget.shared),
    );
    assert!(
        handled as usize > CLIENTS * 100,
        "the attack ran: {handled} frames handled"
    );
    assert!(
        peak <= bound,
        "peak RSS growth {:.1} MiB is over the bound {:.1} MiB",
        mib(peak),
        mib(bound)
    );
}

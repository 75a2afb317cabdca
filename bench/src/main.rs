//! `loadgen`: Switchboard's load generator. Bounded in connections and time, loopback only,
//! spreading its connections over source addresses 127.0.0.1–127.0.0.50. It reports its
//! own CPU and the server's (from `/proc`), so a saturated run is visible.
//!
//! Workloads (each prints one markdown table row; `scripts/bench.sh` runs them all against
//! every server and writes `docs/benchmarks.md`):
//! - `fanout`: one publisher, N subscribers, rising publish rates: delivered messages per
//!   second, loss, and p50/p99/max latency (publish → delivery, same clock);
//! - `rpc`: N connections doing request/response round trips back to back: p50/p99;
//! - `idle`: N subscribed connections held open: server memory per connection.
//!
//! Dialects: `switchboard` speaks the protocol (subscribe, publish, request "time");
//! `raw` is for the peers (every text sent to `/ws` is broadcast, `/echo` answers).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dialect {
    Switchboard,
    Raw,
}

#[derive(Subcommand)]
enum Cmd {
    /// One publisher, many subscribers, rising rates.
    Fanout(FanoutArgs),
    /// Request/response round trips.
    Rpc {
        #[arg(long)]
        url: String,
        #[arg(long, value_enum)]
        dialect: Dialect,
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Idle subscribed connections: server memory per connection.
    Idle {
        #[arg(long)]
        url: String,
        #[arg(long, value_enum)]
        dialect: Dialect,
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long)]
        server_pid: u32,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
}

/// The fan-out workload's options.
#[derive(clap::Args)]
struct FanoutArgs {
    /// Base URL, e.g. ws://127.0.0.1:8080 (the path is added per dialect).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    dialect: Dialect,
    /// Name in the table.
    #[arg(long)]
    label: String,
    #[arg(long, default_value_t = 1000)]
    subs: usize,
    /// Publish rates (messages per second), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000")]
    rates: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// The server's process id, for its CPU.
    #[arg(long)]
    server_pid: Option<u32>,
}

type Ws = WebSocketStream<TcpStream>;

/// Microseconds since this process's start: the clock in every payload.
fn now_us(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

fn addr_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .context("only ws:// URLs on loopback")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let addr: SocketAddr = hostport.parse().context("an IP:port URL")?;
    if !addr.ip().is_loopback() {
        bail!("loadgen only targets loopback addresses");
    }
    Ok(addr)
}

/// Connects from 127.0.0.(1 + i % 50) with small buffers (10,000 of them fit).
async fn connect(url: &str, i: usize) -> anyhow::Result<Ws> {
    let remote = addr_of(url)?;
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 50) as u8)), 0);
    let socket = TcpSocket::new_v4()?;
    socket.bind(local)?;
    let stream = socket.connect(remote).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// Reads until a text frame satisfies `done`.
async fn read_until(ws: &mut Ws, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(30);
    loop {
        match tokio::time::timeout(deadline, ws.next()).await? {
            Some(Ok(Message::Text(t))) if done(t.as_str()) => return Ok(()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during setup"),
        }
    }
}

/// A subscriber ready to receive on the benchmark channel.
async fn subscriber(url: &str, dialect: Dialect, i: usize) -> anyhow::Result<Ws> {
    match dialect {
        Dialect::Switchboard => {
            let mut ws = connect(&format!("{url}/ws"), i).await?;
            read_until(&mut ws, |t| t.contains("\"welcome\"")).await?;
            ws.send(Message::text(r#"{"type":"subscribe","channel":"bench"}"#))
                .await?;
            read_until(&mut ws, |t| t.contains("\"subscribed\"")).await?;
            Ok(ws)
        }
        Dialect::Raw => connect(&format!("{url}/ws"), i).await,
    }
}

/// Opens `n` connections, 100 at a time.
async fn open_many<F, Fut>(n: usize, open: F) -> anyhow::Result<Vec<Ws>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Ws>>,
{
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let opened = futures::future::join_all(chunk.iter().map(|&i| open(i))).await;
        for ws in opened {
            out.push(ws?);
        }
    }
    Ok(out)
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_secs(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after the ")" of the command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
        + f.get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
    ticks / 100.0
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// The table columns every timed workload ends with: p50, p99 and max latency in ms, then
/// the server's and the load generator's CPU in % of one core over `wall` seconds.
fn latency_and_cpu(
    hist: &Histogram<u64>,
    server_cpu: (f64, f64),
    own_cpu: (f64, f64),
    wall: f64,
) -> String {
    format!(
        "{} | {} | {} | {:.0} | {:.0}",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
        100.0 * (server_cpu.1 - server_cpu.0) / wall,
        100.0 * (own_cpu.1 - own_cpu.0) / wall,
    )
}

/// Extracts the `"t":<micros>` the publisher put in the payload.
fn stamp(text: &str) -> Option<u64> {
    let i = text.find("\"t\":")? + 4;
    let digits: &str = &text[i..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let FanoutArgs {
        url,
        dialect,
        label,
        subs,
        rates,
        secs,
        payload,
        server_pid,
    } = args;
    let (url, label) = (url.as_str(), label.as_str());
    let base = Instant::now();
    let sockets = open_many(subs, |i| subscriber(url, dialect, i)).await?;
    let received = Arc::new(AtomicU64::new(0));
    let (phase_tx, phase_rx) = watch::channel(0u32);
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Histogram<u64>>();
    for mut ws in sockets {
        let received = received.clone();
        let mut phase = phase_rx.clone();
        let report = report_tx.clone();
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) => {
                            if let Some(sent) = stamp(t.as_str()) {
                                let _ = hist.record(now_us(base).saturating_sub(sent));
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    changed = phase.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let _ = report.send(std::mem::replace(
                            &mut hist,
                            Histogram::new(3).expect("histogram"),
                        ));
                    }
                }
            }
        });
    }
    drop(report_tx);
    let mut publisher = match dialect {
        Dialect::Switchboard => {
            let mut ws = connect(&format!("{url}/ws"), subs).await?;
            read_until(&mut ws, |t| t.contains("\"welcome\"")).await?;
            ws
        }
        Dialect::Raw => connect(&format!("{url}/ws"), subs).await?,
    };
    let pad = "x".repeat(payload.saturating_sub(30));
    for (n, &rate) in rates.iter().enumerate() {
        received.store(0, Ordering::Relaxed);
        let (cpu0, self0, t0) = (cpu_secs(server_pid), cpu_secs(None), Instant::now());
        let end = t0 + Duration::from_secs(secs);
        let mut sent: u64 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while Instant::now() < end {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                let data = format!(r#"{{"t":{},"p":"{pad}"}}"#, now_us(base));
                let text = match dialect {
                    Dialect::Switchboard => format!(
                        r#"{{"type":"publish","channel":"bench","data":{data},"skip_self":true}}"#
                    ),
                    Dialect::Raw => data,
                };
                publisher.feed(Message::text(text)).await?;
                sent += 1;
            }
            publisher.flush().await?;
        }
        // Drain: wait until deliveries stop growing (at most 5 s).
        let mut last = received.load(Ordering::Relaxed);
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = received.load(Ordering::Relaxed);
            if now == last && now >= sent * subs as u64 {
                break;
            }
            if now == last {
                tokio::time::sleep(Duration::from_millis(400)).await;
                if received.load(Ordering::Relaxed) == now {
                    break;
                }
            }
            last = received.load(Ordering::Relaxed);
        }
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, self1) = (cpu_secs(server_pid), cpu_secs(None));
        let got = received.load(Ordering::Relaxed);
        phase_tx.send(n as u32 + 1)?;
        let mut hist = Histogram::<u64>::new(3)?;
        for _ in 0..subs {
            match tokio::time::timeout(Duration::from_secs(5), report_rx.recv()).await {
                Ok(Some(h)) => hist.add(&h)?,
                _ => break,
            }
        }
        let expected = sent * subs as u64;
        let loss = 100.0 * expected.saturating_sub(got) as f64 / expected.max(1) as f64;
        println!(
            "| {label} | {subs} | {rate} | {:.0} | {loss:.2} | {} |",
            got as f64 / secs as f64,
            latency_and_cpu(&hist, (cpu0, cpu1), (self0, self1), wall),
        );
    }
    Ok(())
}

async fn rpc(
    url: &str,
    dialect: Dialect,
    label: &str,
    conns: usize,
    secs: u64,
    server_pid: Option<u32>,
) -> anyhow::Result<()> {
    let path = match dialect {
        Dialect::Switchboard => "/ws",
        Dialect::Raw => "/echo",
    };
    let sockets = open_many(conns, |i| {
        let url = format!("{url}{path}");
        async move {
            let mut ws = connect(&url, i).await?;
            if dialect == Dialect::Switchboard {
                read_until(&mut ws, |t| t.contains("\"welcome\"")).await?;
            }
            Ok(ws)
        }
    })
    .await?;
    let (cpu0, self0, t0) = (cpu_secs(server_pid), cpu_secs(None), Instant::now());
    let end = t0 + Duration::from_secs(secs);
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut n = 0u64;
                while Instant::now() < end {
                    n += 1;
                    let text = match dialect {
                        Dialect::Switchboard => {
                            format!(r#"{{"type":"request","id":"{n}","method":"time"}}"#)
                        }
                        Dialect::Raw => format!(r#"{{"id":"{n}"}}"#),
                    };
                    let start = Instant::now();
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                    let want = format!("\"id\":\"{n}\"");
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) if t.as_str().contains(&want) => break,
                            Some(Ok(_)) => continue,
                            _ => return hist,
                        }
                    }
                    let _ = hist.record(start.elapsed().as_micros() as u64);
                }
                hist
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new(3)?;
    for t in tasks {
        hist.add(&t.await?)?;
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu1, self1) = (cpu_secs(server_pid), cpu_secs(None));
    println!(
        "| {label} | {conns} | {:.0} | {} |",
        hist.len() as f64 / wall,
        latency_and_cpu(&hist, (cpu0, cpu1), (self0, self1), wall),
    );
    Ok(())
}

async fn idle(
    url: &str,
    dialect: Dialect,
    label: &str,
    conns: usize,
    server_pid: u32,
    hold: u64,
) -> anyhow::Result<()> {
    let before = rss_kib(server_pid);
    let sockets = open_many(conns, |i| subscriber(url, dialect, i)).await?;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = rss_kib(server_pid);
    println!(
        "| {label} | {conns} | {:.0} | {:.0} | {:.2} |",
        before / 1024.0,
        after / 1024.0,
        (after - before) / conns as f64
    );
    drop(sockets);
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Fanout(args) => fanout(args).await,
        Cmd::Rpc {
            url,
            dialect,
            label,
            conns,
            secs,
            server_pid,
        } => rpc(&url, dialect, &label, conns, secs, server_pid).await,
        Cmd::Idle {
            url,
            dialect,
            label,
            conns,
            server_pid,
            hold,
        } => idle(&url, dialect, &label, conns, server_pid, hold).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_both_dialects() {
        assert_eq!(stamp(r#"{"t":123,"p":"xx"}"#), Some(123));
        let sb =
            r#"{"type":"message","channel":"bench","offset":4,"data":{"p":"x","t":98765},"ts":1}"#;
        assert_eq!(stamp(sb), Some(98765));
        assert_eq!(stamp(r#"{"type":"pong"}"#), None);
    }

    #[test]
    fn only_loopback_targets() {
        assert!(addr_of("ws://127.0.0.1:8080/ws").is_ok());
        assert!(addr_of("ws://10.0.0.1:8080/ws").is_err());
        assert!(addr_of("wss://127.0.0.1:1").is_err());
    }

    #[test]
    fn reads_its_own_cpu_time() {
        assert!(cpu_secs(None) >= 0.0);
    }
}

//! `loadgen`: Switchboard's load generator. Bounded in connections and time, loopback only,
//! spreading its connections over source addresses 127.0.0.1–127.0.0.50. It reports its
//! own CPU and the server's (from `/proc`), so a saturated run is visible.
//!
//! Workloads (each prints markdown table rows; `scripts/bench.sh` runs them all against
//! every server and writes `docs/benchmarks.md`):
//! - `fanout`: one publisher, N subscribers, rising publish rates: delivered messages per
//!   second, loss, and p50/p99/max latency (publish → delivery, same clock);
//! - `rpc`: N connections doing request/response round trips back to back: p50/p99;
//! - `idle`: N subscribed connections held open: server memory per connection;
//! - `storm`: N subscribed clients; the caller restarts the server; time until all are
//!   back and the peak connection attempts per second, with or without jitter;
//! - `slow`: subscribers that never read beside ones that do: the server's memory growth
//!   and the fast subscribers' deliveries;
//! - `publish` (Switchboard): connections publishing with ids, a window of publishes
//!   unacknowledged each: acked publishes per second, ack latency, server CPU per publish,
//!   disk bytes written (for the history stores);
//! - `storm-recover` (Switchboard): a reconnect storm after a restart in which every client
//!   has missed messages to recover with `since`: time until all have them, and whether
//!   each arrived exactly once and in order (see `history.rs`).
//!
//! Dialects: `switchboard` speaks the protocol (subscribe, publish, request "time");
//! `raw` is for the plain WebSocket peers (every text sent to `/ws` is broadcast, `/echo`
//! answers); `socketio` is Socket.IO v5 over a websocket (`join`, `pub`, `echo` with acks).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use switchboard_server::deflate::{DeflateIo, Inflate};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

mod history;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Gives up (exit status 1) after this many seconds, whatever the workload is doing.
    #[arg(long, default_value_t = 600, global = true)]
    max_secs: u64,
    /// Offer permessage-deflate on every connection (as browsers do); wire bytes are then
    /// counted as read from the socket.
    #[arg(long, global = true)]
    deflate: bool,
    /// Switchboard connections speak MessagePack (`Sec-WebSocket-Protocol:
    /// switchboard.v1.msgpack`); what they receive is transcoded to JSON to be read.
    #[arg(long, global = true)]
    msgpack: bool,
    /// Connect over TLS (`wss://`), trusting the certificate in this PEM file (the
    /// server's, e.g. from `switchboard-dev-cert`); URLs stay `ws://IP:port/...`. Wire
    /// bytes are then the TLS records read from the socket.
    #[arg(long, global = true, value_name = "PEM")]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dialect {
    Switchboard,
    Raw,
    /// Socket.IO v5 over Engine.IO v4, websocket transport only (the `sio-peer` servers).
    Socketio,
}

/// Engine.IO's websocket endpoint for Socket.IO servers.
const SIO_PATH: &str = "/socket.io/?EIO=4&transport=websocket";

#[derive(Subcommand)]
enum Cmd {
    /// One publisher, many subscribers, rising rates.
    Fanout(FanoutArgs),
    /// Request/response round trips.
    Rpc {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 100)]
        conns: usize,
        #[arg(long, default_value_t = 5)]
        secs: u64,
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Clients reconnecting after a server restart: time until all are back, attempts/s.
    Storm(StormArgs),
    /// Subscribers that never read next to ones that do: what they cost the server.
    Slow(SlowArgs),
    /// Publishes with ids, a window of them unacknowledged per connection: acked
    /// publishes/s, ack latency, server CPU and disk writes per publish.
    Publish(history::PublishArgs),
    /// A restart during which every subscribed client misses messages: recovery with
    /// `since`, exactly once and in order.
    StormRecover(history::RecoverArgs),
    /// A share of `fanout --procs`'s subscribers (started by it).
    #[command(hide = true)]
    FanoutWorker(WorkerArgs),
    /// Idle subscribed connections: server memory per connection.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long)]
        server_pid: u32,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
}

/// Which server every workload talks to, how, and its name in the table.
#[derive(clap::Args)]
struct Target {
    /// Base URL, e.g. ws://127.0.0.1:8080 (the path is added per dialect).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    dialect: Dialect,
    /// Name in the table.
    #[arg(long)]
    label: String,
}

/// The fan-out workload's options.
#[derive(clap::Args)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
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
    /// Subscribers connect to these base URLs in turn instead of --url (other nodes of a
    /// cluster); the publisher stays on --url.
    #[arg(long, value_delimiter = ',')]
    sub_urls: Vec<String>,
    /// More processes whose CPU counts as the server's (the other nodes, Redis).
    #[arg(long, value_delimiter = ',')]
    also_pids: Vec<u32>,
    /// Spread the subscribers over this many processes: this one (the publisher and its
    /// share) and `procs - 1` workers (`loadgen fanout-worker`, one tokio thread each).
    /// Give the load generator that many cores (`taskset`) where the machine has them.
    #[arg(long, default_value_t = 1)]
    procs: usize,
}

/// A share of a fan-out's subscribers in a process of its own, driven by `fanout --procs`
/// over stdin/stdout: `ready` once subscribed; then `reset` (a new rate begins), `count`
/// (answers the messages received) and `report` (answers messages, wire bytes and the
/// latency histogram, then starts a new one).
#[derive(clap::Args)]
struct WorkerArgs {
    /// The base URLs the subscribers connect to, in turn by index.
    #[arg(long, value_delimiter = ',')]
    urls: Vec<String>,
    #[arg(long, value_enum)]
    dialect: Dialect,
    /// The first subscriber's index (it picks the URL and the source address).
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    /// The publisher's clock: microseconds of the wall clock at its start.
    #[arg(long)]
    epoch: u64,
}

/// The reconnect-storm workload's options. The load generator connects and subscribes
/// `conns` clients, writes `ready_file`, and the caller restarts the server on the same
/// address; every client then reconnects (and resubscribes) on its own backoff schedule.
#[derive(clap::Args)]
struct StormArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// How a client spaces its attempts.
    #[arg(long, value_enum, default_value = "full-jitter")]
    backoff: Backoff,
    /// The first delay's bound in ms (the `use_websocket` hook's default), doubled per
    /// failed attempt.
    #[arg(long, default_value_t = 500)]
    base_ms: u64,
    /// The cap on the delay's bound in ms (the hook's default).
    #[arg(long, default_value_t = 30_000)]
    cap_ms: u64,
    /// Created once every client is connected: the caller's signal to restart the server.
    #[arg(long)]
    ready_file: std::path::PathBuf,
    /// Seconds to wait, after the first drop, for every client to be back.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// The slow-consumer workload's options: `fast` subscribers read, `slow` ones are
/// subscribed and never read a byte, one publisher sends `payload`-byte messages at
/// `rate` per second for `secs` seconds. Reports the server's memory growth (sampled
/// every 50 ms) and what the fast subscribers got.
#[derive(clap::Args)]
struct SlowArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 20)]
    fast: usize,
    #[arg(long, default_value_t = 10)]
    slow: usize,
    #[arg(long, default_value_t = 200)]
    rate: u64,
    #[arg(long, default_value_t = 16_384)]
    payload: usize,
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long)]
    server_pid: u32,
}

/// Reconnect schedules: attempt `n` after a drop waits `min(cap, base · 2ⁿ)` scaled by a
/// uniform random factor in [0, 1) (full jitter, what the hook does), or by 1 (no jitter,
/// what a naive client does).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backoff {
    FullJitter,
    NoJitter,
}

impl Backoff {
    fn delay(self, attempt: u32, base_ms: u64, cap_ms: u64, random: f64) -> Duration {
        let bound = (base_ms as f64 * 2f64.powi(attempt.min(30) as i32)).min(cap_ms as f64);
        let factor = match self {
            Backoff::FullJitter => random,
            Backoff::NoJitter => 1.0,
        };
        Duration::from_secs_f64(bound * factor / 1000.0)
    }
}

/// A small random source (splitmix64), one per client: no shared state, no dependency.
struct SplitMix(u64);

impl SplitMix {
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
    }
}

type Ws = WebSocketStream<DeflateIo<Wire>>;

/// `--deflate`: every connection offers permessage-deflate.
static DEFLATE: AtomicBool = AtomicBool::new(false);
/// `--msgpack`: every connection offers the MessagePack subprotocol.
static MSGPACK: AtomicBool = AtomicBool::new(false);
/// `--tls-ca`: every connection is TLS, trusting that certificate (and the path, for the
/// fan-out's worker processes).
static TLS: std::sync::OnceLock<(tokio_rustls::TlsConnector, std::path::PathBuf)> =
    std::sync::OnceLock::new();

/// A client TLS configuration that trusts the certificates in the PEM file `ca` only.
fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).context("reading --tls-ca")? {
        roots.add(cert.context("a certificate in --tls-ca")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A connection's byte stream: TCP, or TLS over it (`--tls-ca`); either way the TCP bytes
/// read are counted.
enum Wire {
    Plain(Counted),
    Tls(Box<tokio_rustls::client::TlsStream<Counted>>),
}

impl Wire {
    /// The bytes read from the socket so far (TLS records included).
    fn read_counter(&self) -> &Arc<AtomicU64> {
        match self {
            Wire::Plain(c) => &c.read,
            Wire::Tls(t) => &t.get_ref().0.read,
        }
    }
}

impl tokio::io::AsyncRead for Wire {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            Wire::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Wire {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Wire::Plain(c) => std::pin::Pin::new(c).poll_write(cx, buf),
            Wire::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(c) => std::pin::Pin::new(c).poll_flush(cx),
            Wire::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Wire::Plain(c) => std::pin::Pin::new(c).poll_shutdown(cx),
            Wire::Tls(t) => std::pin::Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The JSON text of a received message: a text message as it is, a binary one (from a
/// MessagePack connection) transcoded.
fn text_of(msg: &Message) -> Option<std::borrow::Cow<'_, str>> {
    match msg {
        Message::Text(t) => Some(std::borrow::Cow::Borrowed(t.as_str())),
        Message::Binary(b) => switchboard_protocol::msgpack::to_json(b, 64 << 20)
            .ok()
            .map(std::borrow::Cow::Owned),
        _ => None,
    }
}

/// A TCP stream that counts the bytes read from it (the wire bytes of a compressed or TLS
/// connection).
struct Counted {
    tcp: TcpStream,
    read: Arc<AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut this.tcp).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        this.read.fetch_add(read as u64, Ordering::Relaxed);
        poll
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// Microseconds of the wall clock, which every process on the machine shares (the fan-out's
/// worker processes stamp and time with it).
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Microseconds since `epoch` (a [`wall_us`] reading): the clock in every payload.
fn now_us(epoch: u64) -> u64 {
    wall_us().saturating_sub(epoch)
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
    let counted = Counted {
        tcp: stream,
        read: Arc::new(AtomicU64::new(0)),
    };
    let wire = match TLS.get() {
        None => Wire::Plain(counted),
        Some((connector, _)) => {
            let name = rustls::pki_types::ServerName::IpAddress(remote.ip().into());
            Wire::Tls(Box::new(connector.connect(name, counted).await?))
        }
    };
    if DEFLATE.load(Ordering::Relaxed) {
        return deflate_handshake(url, wire, config).await;
    }
    let mut request = url.into_client_request()?;
    if MSGPACK.load(Ordering::Relaxed) {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            switchboard_protocol::msgpack::SUBPROTOCOL_MSGPACK.parse()?,
        );
    }
    let (ws, _) =
        client_async_with_config(request, DeflateIo::new(wire, None), Some(config)).await?;
    Ok(ws)
}

/// The upgrade written by hand, offering permessage-deflate as Chromium does, and read
/// byte by byte so that no frame byte passes before the inflater is in place.
async fn deflate_handshake(url: &str, mut io: Wire, config: WebSocketConfig) -> anyhow::Result<Ws> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("ws://").context("a ws:// URL")?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let protocol = if MSGPACK.load(Ordering::Relaxed) {
        let name = switchboard_protocol::msgpack::SUBPROTOCOL_MSGPACK;
        format!("Sec-WebSocket-Protocol: {name}\r\n")
    } else {
        String::new()
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n{protocol}\r\n"
    );
    io.write_all(request.as_bytes()).await?;
    // Through TLS the request may still sit in the session's buffer.
    io.flush().await?;
    let mut head = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout_at(deadline, io.read_u8())
            .await
            .context("no upgrade response within 10 s")?;
        head.push(byte?);
        if head.len() > 8192 {
            bail!("no end to the upgrade response");
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 101") {
        bail!("upgrade refused: {head}");
    }
    let agreed = head
        .lines()
        .any(|l| l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate"));
    let takeover = !head.contains("server_no_context_takeover");
    let inflate = agreed.then(|| Box::new(Inflate::new(16 << 20, 64 << 20, takeover)));
    let io = DeflateIo::new(io, inflate);
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await)
}

/// Reads until a text frame satisfies `done`, for at most 10 s in all (a server that keeps
/// pinging does not extend it).
async fn read_until(ws: &mut Ws, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no answer within 10 s during setup")?;
        match next {
            Some(Ok(msg @ Message::Binary(_))) if text_of(&msg).is_some_and(|t| done(&t)) => {
                return Ok(());
            }
            Some(Ok(Message::Text(t))) if done(t.as_str()) => return Ok(()),
            // A Socket.IO server may ping before the handshake ends (socketioxide does).
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => ws.send(Message::text("3")).await?,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed during setup"),
        }
    }
}

/// A Switchboard connection past its `welcome`.
async fn welcomed(url: &str, i: usize) -> anyhow::Result<Ws> {
    let mut ws = connect(&format!("{url}/ws"), i).await?;
    read_until(&mut ws, |t| t.contains("\"welcome\"")).await?;
    Ok(ws)
}

/// A subscriber ready to receive on the benchmark channel.
async fn subscriber(url: &str, dialect: Dialect, i: usize) -> anyhow::Result<Ws> {
    match dialect {
        Dialect::Switchboard => {
            let mut ws = welcomed(url, i).await?;
            ws.send(Message::text(r#"{"type":"subscribe","channel":"bench"}"#))
                .await?;
            read_until(&mut ws, |t| t.contains("\"subscribed\"")).await?;
            Ok(ws)
        }
        Dialect::Raw => connect(&format!("{url}/ws"), i).await,
        Dialect::Socketio => {
            let mut ws = sio_connect(url, i).await?;
            ws.send(Message::text(r#"420["join","bench"]"#)).await?;
            read_until(&mut ws, |t| t.starts_with("430")).await?;
            Ok(ws)
        }
    }
}

/// A Socket.IO connection to the default namespace: Engine.IO open (`0{…}`), then the
/// namespace connect (`40` → `40{…}`).
async fn sio_connect(url: &str, i: usize) -> anyhow::Result<Ws> {
    let mut ws = connect(&format!("{url}{SIO_PATH}"), i).await?;
    read_until(&mut ws, |t| t.starts_with('0')).await?;
    ws.send(Message::text("40")).await?;
    read_until(&mut ws, |t| t.starts_with("40")).await?;
    Ok(ws)
}

/// Engine.IO heartbeat: the server's ping (`2`) must be answered with a pong (`3`).
fn is_sio_ping(dialect: Dialect, text: &str) -> bool {
    dialect == Dialect::Socketio && text == "2"
}

/// Opens `n` connections, 100 at a time.
async fn open_many<F, Fut>(n: usize, open: F) -> anyhow::Result<Vec<Ws>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Ws>>,
{
    let mut out = Vec::with_capacity(n);
    let mut retried = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let opened = futures::future::join_all(chunk.iter().map(|&i| open(i))).await;
        for (&i, ws) in chunk.iter().zip(opened) {
            // A handshake the server left unanswered gets two more tries, then fails the run.
            let ws = match ws {
                Ok(ws) => ws,
                Err(first) => {
                    retried += 1;
                    eprintln!("connection {i}: {first:#}; retrying");
                    match open(i).await {
                        Ok(ws) => ws,
                        Err(_) => open(i).await?,
                    }
                }
            };
            out.push(ws);
        }
    }
    if retried > 0 {
        eprintln!("{retried} of {n} connections needed a retry");
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

/// `n` bytes of chat-like text (words picked by a fixed pseudo-random sequence): it
/// compresses about as much as people's messages do (~2.5×), unlike a run of one letter.
fn text_pad(n: usize) -> String {
    const WORDS: [&str; 32] = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "meeting",
        "at",
        "noon",
        "tomorrow",
        "sounds",
        "good",
        "see",
        "you",
        "there",
        "price",
        "update",
        "for",
        "order",
        "shipped",
        "yesterday",
        "thanks",
        "a",
        "lot",
        "can",
        "we",
        "move",
        "it",
        "later",
        "ok",
    ];
    let mut rng = SplitMix(7);
    let mut out = String::with_capacity(n + 12);
    while out.len() < n {
        out.push_str(WORDS[(rng.next_f64() * 32.0) as usize % 32]);
        out.push(' ');
    }
    out.truncate(n);
    out
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

/// Reads every subscriber on its own task: counts stamped messages in `received` and
/// their WebSocket frames' bytes in `wire`, and records their latency; each change of
/// `phase` sends the histogram so far (and starts a new one) on the returned channel; the
/// phase sender's drop ends the tasks.
fn spawn_receivers(
    sockets: Vec<Ws>,
    dialect: Dialect,
    base: u64,
    (received, wire): (&Arc<AtomicU64>, &Arc<AtomicU64>),
    phase: &watch::Receiver<u32>,
) -> mpsc::UnboundedReceiver<Histogram<u64>> {
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let counted = DEFLATE.load(Ordering::Relaxed) || TLS.get().is_some();
    for mut ws in sockets {
        let received = received.clone();
        let wire = wire.clone();
        let mut phase = phase.clone();
        let report = report_tx.clone();
        // Compressed or TLS: the bytes read from the socket since the last message.
        let socket_read = ws.get_ref().get_ref().read_counter().clone();
        // From now: the TLS handshake and the upgrade are not a delivery's bytes.
        let mut last_read = socket_read.load(Ordering::Relaxed);
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            loop {
                tokio::select! {
                    msg = ws.next() => match msg {
                        Some(Ok(Message::Text(t))) if is_sio_ping(dialect, t.as_str()) => {
                            let _ = ws.send(Message::text("3")).await;
                        }
                        // Text, or MessagePack transcoded to it.
                        Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                            if let Some(sent) = text_of(&msg).and_then(|t| stamp(&t)) {
                                let _ = hist.record(now_us(base).saturating_sub(sent));
                                received.fetch_add(1, Ordering::Relaxed);
                                let bytes = if counted {
                                    let now = socket_read.load(Ordering::Relaxed);
                                    std::mem::replace(&mut last_read, now).abs_diff(now)
                                } else {
                                    frame_bytes(msg.len())
                                };
                                wire.fetch_add(bytes, Ordering::Relaxed);
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
    report_rx
}

/// The histograms of `n` receivers after a phase change, merged (a receiver that does not
/// report within 5 s is left out).
async fn phase_histogram(
    report_rx: &mut mpsc::UnboundedReceiver<Histogram<u64>>,
    n: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new(3)?;
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(5), report_rx.recv()).await {
            Ok(Some(h)) => hist.add(&h)?,
            _ => break,
        }
    }
    Ok(hist)
}

/// The bytes a server-to-client WebSocket frame of `len` payload bytes takes on the wire
/// (unmasked: a 2-byte header, plus 2 or 8 bytes of extended length), TCP/IP not counted.
fn frame_bytes(len: usize) -> u64 {
    let header = match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (len + header) as u64
}

/// The publishing connection (source address index `i`), ready to publish.
async fn publisher(url: &str, dialect: Dialect, i: usize) -> anyhow::Result<Ws> {
    match dialect {
        Dialect::Switchboard => welcomed(url, i).await,
        Dialect::Raw => connect(&format!("{url}/ws"), i).await,
        Dialect::Socketio => sio_connect(url, i).await,
    }
}

/// Publishes until `sent` reaches `due`, flushes once, then reads what is waiting on the
/// publisher: the raw peers echo every broadcast to it too, and a Socket.IO server's
/// heartbeat must be answered (or it drops the publisher after ~20 s).
async fn publish_until(
    publisher: &mut Ws,
    dialect: Dialect,
    base: u64,
    pad: &str,
    sent: &mut u64,
    due: u64,
) -> anyhow::Result<()> {
    while *sent < due {
        publisher
            .feed(Message::text(publish_text(dialect, now_us(base), pad)))
            .await?;
        *sent += 1;
    }
    publisher.flush().await?;
    while let Some(Some(Ok(msg))) = publisher.next().now_or_never() {
        if let Message::Text(t) = msg
            && is_sio_ping(dialect, t.as_str())
        {
            publisher.send(Message::text("3")).await?;
        }
    }
    Ok(())
}

async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let FanoutArgs {
        target: Target {
            url,
            dialect,
            label,
        },
        subs,
        rates,
        secs,
        payload,
        server_pid,
        sub_urls,
        also_pids,
        procs,
    } = args;
    let (url, label) = (url.as_str(), label.as_str());
    let base = wall_us();
    let sub_urls = if sub_urls.is_empty() {
        vec![url.to_owned()]
    } else {
        sub_urls
    };
    // This process takes the first share; the workers the rest, in contiguous ranges.
    let procs = procs.clamp(1, subs.max(1));
    let share = subs.div_ceil(procs);
    let own = share.min(subs);
    let mut workers = Workers::spawn(&sub_urls, dialect, base, own, share, subs).await?;
    let sockets = open_many(own, |i| {
        subscriber(&sub_urls[i % sub_urls.len()], dialect, i)
    })
    .await?;
    let server_cpu =
        || cpu_secs(server_pid) + also_pids.iter().map(|p| cpu_secs(Some(*p))).sum::<f64>();
    let received = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let (phase_tx, phase_rx) = watch::channel(0u32);
    let mut report_rx = spawn_receivers(sockets, dialect, base, (&received, &wire), &phase_rx);
    let mut publisher = publisher(url, dialect, subs).await?;
    let pad = text_pad(payload.saturating_sub(30));
    for (n, &rate) in rates.iter().enumerate() {
        received.store(0, Ordering::Relaxed);
        wire.store(0, Ordering::Relaxed);
        workers.reset().await?;
        let load_cpu = |w: &Workers| cpu_secs(None) + w.cpu_secs();
        let (cpu0, self0, t0) = (server_cpu(), load_cpu(&workers), Instant::now());
        let end = t0 + Duration::from_secs(secs);
        let mut sent: u64 = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while Instant::now() < end {
            tick.tick().await;
            let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
            publish_until(&mut publisher, dialect, base, &pad, &mut sent, due).await?;
        }
        // Drain: wait until deliveries stop growing (at most 5 s).
        let mut last = workers.delivered(&received).await?;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = workers.delivered(&received).await?;
            if now == last && now >= sent * subs as u64 {
                break;
            }
            if now == last {
                tokio::time::sleep(Duration::from_millis(400)).await;
                if workers.delivered(&received).await? == now {
                    break;
                }
            }
            last = workers.delivered(&received).await?;
        }
        let wall = t0.elapsed().as_secs_f64();
        let (cpu1, self1) = (server_cpu(), load_cpu(&workers));
        phase_tx.send(n as u32 + 1)?;
        let mut hist = phase_histogram(&mut report_rx, own).await?;
        let (w_got, w_wire) = workers.report(&mut hist).await?;
        let got = received.load(Ordering::Relaxed) + w_got;
        let bytes = wire.load(Ordering::Relaxed) + w_wire;
        let expected = sent * subs as u64;
        let loss = 100.0 * expected.saturating_sub(got) as f64 / expected.max(1) as f64;
        // Efficiency, visible even where the load generator is the limit: WebSocket bytes
        // per delivered message, and the server's CPU seconds per million deliveries.
        let per_delivery = bytes as f64 / got.max(1) as f64;
        let cpu_per_million = (cpu1 - cpu0) / (got.max(1) as f64 / 1e6);
        println!(
            "| {label} | {subs} | {rate} | {:.0} | {loss:.2} | {} | {per_delivery:.0} | {cpu_per_million:.2} |",
            got as f64 / secs as f64,
            latency_and_cpu(&hist, (cpu0, cpu1), (self0, self1), wall),
        );
    }
    Ok(())
}

/// The worker processes of `fanout --procs` (see [`WorkerArgs`]); empty for one process.
struct Workers(Vec<Worker>);

struct Worker {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Workers {
    /// Starts a worker per `share` subscribers from index `from` up to `subs`, and waits
    /// until each has its subscribers subscribed.
    async fn spawn(
        urls: &[String],
        dialect: Dialect,
        epoch: u64,
        from: usize,
        share: usize,
        subs: usize,
    ) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut workers = Vec::new();
        let exe = std::env::current_exe()?;
        let dialect_name = dialect
            .to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        for first in (from..subs).step_by(share.max(1)) {
            let count = share.min(subs - first);
            let mut child = tokio::process::Command::new(&exe)
                .args(["fanout-worker", "--urls", &urls.join(","), "--dialect"])
                .arg(&dialect_name)
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--epoch", &epoch.to_string()])
                .args(DEFLATE.load(Ordering::Relaxed).then_some("--deflate"))
                .args(MSGPACK.load(Ordering::Relaxed).then_some("--msgpack"))
                .args(
                    TLS.get()
                        .map(|(_, ca)| ["--tls-ca".as_ref(), ca.as_os_str()])
                        .into_iter()
                        .flatten(),
                )
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let lines = tokio::io::BufReader::new(stdout).lines();
            workers.push(Worker {
                child,
                stdin,
                lines,
            });
        }
        let mut workers = Self(workers);
        for w in &mut workers.0 {
            let line = w.answer(Duration::from_secs(120)).await?;
            if line != "ready" {
                bail!("a fan-out worker said {line:?} instead of ready");
            }
        }
        Ok(workers)
    }

    fn cpu_secs(&self) -> f64 {
        self.0
            .iter()
            .filter_map(|w| w.child.id())
            .map(|pid| cpu_secs(Some(pid)))
            .sum()
    }

    async fn reset(&mut self) -> anyhow::Result<()> {
        for w in &mut self.0 {
            w.tell("reset").await?;
        }
        Ok(())
    }

    /// Messages received since the last reset: `local` (this process's subscribers) plus
    /// what the workers' subscribers received.
    async fn delivered(&mut self, local: &AtomicU64) -> anyhow::Result<u64> {
        let mut total = local.load(Ordering::Relaxed);
        for w in &mut self.0 {
            w.tell("count").await?;
            total += w.answer(Duration::from_secs(10)).await?.parse::<u64>()?;
        }
        Ok(total)
    }

    /// Ends the phase: adds the workers' latencies to `hist`; returns their messages and
    /// wire bytes.
    async fn report(&mut self, hist: &mut Histogram<u64>) -> anyhow::Result<(u64, u64)> {
        let (mut got, mut bytes) = (0, 0);
        for w in &mut self.0 {
            w.tell("report").await?;
            let line = w.answer(Duration::from_secs(30)).await?;
            let mut parts = line.split(' ');
            got += parts.next().unwrap_or("0").parse::<u64>()?;
            bytes += parts.next().unwrap_or("0").parse::<u64>()?;
            for pair in parts
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let (value, count) = pair.split_once(':').context("value:count")?;
                hist.record_n(value.parse()?, count.parse()?)?;
            }
        }
        Ok((got, bytes))
    }
}

impl Worker {
    async fn tell(&mut self, what: &str) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{what}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn answer(&mut self, within: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(within, self.lines.next_line())
            .await
            .context("a fan-out worker did not answer")??
            .context("a fan-out worker exited")
    }
}

/// `loadgen fanout-worker`: see [`WorkerArgs`].
async fn fanout_worker(args: WorkerArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use tokio::io::AsyncBufReadExt;
    let WorkerArgs {
        urls,
        dialect,
        first,
        count,
        epoch,
    } = args;
    anyhow::ensure!(!urls.is_empty(), "no --urls");
    let sockets = open_many(count, |i| {
        subscriber(&urls[(first + i) % urls.len()], dialect, first + i)
    })
    .await?;
    let received = Arc::new(AtomicU64::new(0));
    let wire = Arc::new(AtomicU64::new(0));
    let (phase_tx, phase_rx) = watch::channel(0u32);
    let mut report_rx = spawn_receivers(sockets, dialect, epoch, (&received, &wire), &phase_rx);
    let say = |line: String| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        Ok(out.flush()?)
    };
    say("ready".into())?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut phase = 0;
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "reset" => {
                received.store(0, Ordering::Relaxed);
                wire.store(0, Ordering::Relaxed);
            }
            "count" => say(received.load(Ordering::Relaxed).to_string())?,
            "report" => {
                phase += 1;
                phase_tx.send(phase)?;
                let hist = phase_histogram(&mut report_rx, count).await?;
                let buckets: Vec<String> = hist
                    .iter_recorded()
                    .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
                    .collect();
                say(format!(
                    "{} {} {}",
                    received.load(Ordering::Relaxed),
                    wire.load(Ordering::Relaxed),
                    buckets.join(",")
                ))?;
            }
            other => bail!("unknown worker command {other:?}"),
        }
    }
    Ok(())
}

/// The publish text of one benchmark message in `dialect`, stamped with `now_us`.
fn publish_text(dialect: Dialect, now_us: u64, pad: &str) -> String {
    let data = format!(r#"{{"t":{now_us},"p":"{pad}"}}"#);
    match dialect {
        Dialect::Switchboard => {
            format!(r#"{{"type":"publish","channel":"bench","data":{data},"skip_self":true}}"#)
        }
        Dialect::Raw => data,
        Dialect::Socketio => format!(r#"42["pub",{data}]"#),
    }
}

async fn slow(args: SlowArgs) -> anyhow::Result<()> {
    let SlowArgs {
        target: Target {
            url,
            dialect,
            label,
        },
        fast,
        slow,
        rate,
        payload,
        secs,
        server_pid,
    } = args;
    let url = url.as_str();
    let base = wall_us();
    let rss0 = rss_kib(server_pid);
    let fast_sockets = open_many(fast, |i| subscriber(url, dialect, i)).await?;
    // Subscribed, then never polled again: their kernel buffers fill, then the server's.
    let slow_sockets = open_many(slow, |i| subscriber(url, dialect, fast + i)).await?;
    let received = Arc::new(AtomicU64::new(0));
    let (phase_tx, phase_rx) = watch::channel(0u32);
    let wire = Arc::new(AtomicU64::new(0));
    let mut report_rx = spawn_receivers(fast_sockets, dialect, base, (&received, &wire), &phase_rx);
    let mut publisher = publisher(url, dialect, fast + slow).await?;
    let pad = text_pad(payload.saturating_sub(30));
    let mut peak = rss0;
    let (t0, mut sent) = (Instant::now(), 0u64);
    let end = t0 + Duration::from_secs(secs);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while Instant::now() < end {
        tick.tick().await;
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        publish_until(&mut publisher, dialect, base, &pad, &mut sent, due).await?;
        peak = peak.max(rss_kib(server_pid));
    }
    // Let the fast subscribers catch up (at most 5 s), still sampling the server.
    for _ in 0..100 {
        if received.load(Ordering::Relaxed) >= sent * fast as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak = peak.max(rss_kib(server_pid));
    }
    let rss_end = rss_kib(server_pid);
    phase_tx.send(1)?;
    let hist = phase_histogram(&mut report_rx, fast).await?;
    let owed_mib = (sent as f64 * payload as f64 * slow as f64) / (1024.0 * 1024.0);
    println!(
        "| {label} | {fast} | {slow} | {rate} | {payload} | {owed_mib:.0} | {:.0} | {:.0} | {:.0} | {:+.0} | {:.1} | {} |",
        rss0 / 1024.0,
        peak / 1024.0,
        rss_end / 1024.0,
        (peak - rss0) / 1024.0,
        100.0 * received.load(Ordering::Relaxed) as f64 / (sent * fast as u64).max(1) as f64,
        ms(hist.value_at_quantile(0.99)),
    );
    drop(slow_sockets);
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
    // As the publisher connects, except that the raw peers echo on `/echo`.
    let sockets = open_many(conns, |i| async move {
        match dialect {
            Dialect::Raw => connect(&format!("{url}/echo"), i).await,
            _ => publisher(url, dialect, i).await,
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
                        Dialect::Socketio => format!(r#"42{n}["echo",{{"id":"{n}"}}]"#),
                    };
                    let start = Instant::now();
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                    let want = format!("\"id\":\"{n}\"");
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(t))) if t.as_str().contains(&want) => break,
                            Some(Ok(Message::Text(t))) if is_sio_ping(dialect, t.as_str()) => {
                                if ws.send(Message::text("3")).await.is_err() {
                                    return hist;
                                }
                            }
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

/// What the storm's clients share: how many are connected, when the first one dropped,
/// and when (ms after that drop) every reconnect attempt started.
#[derive(Default)]
struct StormState {
    connected: AtomicU64,
    failed: AtomicU64,
    first_drop: std::sync::OnceLock<Instant>,
    attempts_ms: std::sync::Mutex<Vec<u64>>,
}

/// Holds a connection until the server drops it (answering Socket.IO pings meanwhile).
async fn hold(ws: &mut Ws, dialect: Dialect) {
    while let Some(Ok(msg)) = ws.next().await {
        if let Message::Text(t) = msg
            && is_sio_ping(dialect, t.as_str())
            && ws.send(Message::text("3")).await.is_err()
        {
            break;
        }
    }
}

/// Tells the driver script the clients are ready (it then restarts the server), and
/// waits for the first client to see its connection drop.
async fn wait_for_restart(
    ready_file: &std::path::Path,
    first_drop: &std::sync::OnceLock<Instant>,
) -> anyhow::Result<Instant> {
    std::fs::write(ready_file, b"ready")?;
    let waited = Instant::now();
    loop {
        if let Some(&t) = first_drop.get() {
            return Ok(t);
        }
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("the server was not restarted within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The highest number of attempts that started within any `window_ms` (sorted input),
/// as a rate per second.
fn peak_rate(sorted_ms: &[u64], window_ms: u64) -> f64 {
    let mut peak = 0;
    let mut lo = 0;
    for hi in 0..sorted_ms.len() {
        while sorted_ms[hi] - sorted_ms[lo] >= window_ms {
            lo += 1;
        }
        peak = peak.max(hi - lo + 1);
    }
    peak as f64 * 1000.0 / window_ms as f64
}

async fn storm(args: StormArgs) -> anyhow::Result<()> {
    let StormArgs {
        target: Target {
            url,
            dialect,
            label,
        },
        conns,
        backoff,
        base_ms,
        cap_ms,
        ready_file,
        timeout,
    } = args;
    let url: Arc<str> = url.into();
    let sockets = open_many(conns, |i| subscriber(&url, dialect, i)).await?;
    let state = Arc::new(StormState::default());
    state.connected.store(conns as u64, Ordering::SeqCst);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    for (i, mut ws) in sockets.into_iter().enumerate() {
        let (state, url) = (state.clone(), url.clone());
        let mut rng = SplitMix(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        tokio::spawn(async move {
            loop {
                hold(&mut ws, dialect).await;
                state.connected.fetch_sub(1, Ordering::SeqCst);
                let dropped = *state.first_drop.get_or_init(Instant::now);
                let mut attempt = 0;
                ws = loop {
                    let delay = backoff.delay(attempt, base_ms, cap_ms, rng.next_f64());
                    tokio::time::sleep(delay).await;
                    let started = dropped.elapsed().as_millis() as u64;
                    state
                        .attempts_ms
                        .lock()
                        .expect("not poisoned")
                        .push(started);
                    let opened =
                        tokio::time::timeout(Duration::from_secs(10), subscriber(&url, dialect, i))
                            .await;
                    match opened {
                        Ok(Ok(ws)) => break ws,
                        _ => {
                            state.failed.fetch_add(1, Ordering::Relaxed);
                            attempt += 1;
                        }
                    }
                };
                state.connected.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let dropped = wait_for_restart(&ready_file, &state.first_drop).await?;
    // All back: every client connected again after the drop (a client counts as dropped
    // as soon as its socket ends, so wait until at least one drop was seen per client).
    let mut all_back = None;
    while dropped.elapsed() < Duration::from_secs(timeout) {
        let attempts = state.attempts_ms.lock().expect("not poisoned").len() as u64;
        let failed = state.failed.load(Ordering::SeqCst);
        if state.connected.load(Ordering::SeqCst) == conns as u64
            && attempts - failed >= conns as u64
        {
            all_back = Some(dropped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut attempts = state.attempts_ms.lock().expect("not poisoned").clone();
    attempts.sort_unstable();
    let back = match all_back {
        Some(t) => format!("{:.2}", t.as_secs_f64()),
        None => format!(
            "not within {timeout} s ({} back)",
            state.connected.load(Ordering::SeqCst)
        ),
    };
    let policy = match backoff {
        Backoff::FullJitter => "full jitter",
        Backoff::NoJitter => "none",
    };
    println!(
        "| {label} | {conns} | {policy} | {back} | {} | {} | {:.0} | {:.0} |",
        attempts.len(),
        state.failed.load(Ordering::SeqCst),
        peak_rate(&attempts, 100),
        peak_rate(&attempts, 1000),
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    DEFLATE.store(args.deflate, Ordering::Relaxed);
    MSGPACK.store(args.msgpack, Ordering::Relaxed);
    if let Some(ca) = args.tls_ca {
        let _ = TLS.set((tls_connector(&ca)?, ca));
    }
    let limit = Duration::from_secs(args.max_secs);
    tokio::time::timeout(limit, run(args.cmd))
        .await
        .with_context(|| format!("gave up after --max-secs {}", limit.as_secs()))?
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Fanout(args) => fanout(args).await,
        Cmd::FanoutWorker(args) => fanout_worker(args).await,
        Cmd::Storm(args) => storm(args).await,
        Cmd::Slow(args) => slow(args).await,
        Cmd::Publish(args) => history::publish(args).await,
        Cmd::StormRecover(args) => history::storm_recover(args).await,
        Cmd::Rpc {
            target:
                Target {
                    url,
                    dialect,
                    label,
                },
            conns,
            secs,
            server_pid,
        } => rpc(&url, dialect, &label, conns, secs, server_pid).await,
        Cmd::Idle {
            target:
                Target {
                    url,
                    dialect,
                    label,
                },
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
    fn backoff_schedules() {
        let d = |b: Backoff, n, r| Backoff::delay(b, n, 500, 30_000, r).as_millis();
        assert_eq!(d(Backoff::NoJitter, 0, 0.3), 500);
        assert_eq!(d(Backoff::NoJitter, 2, 0.3), 2000);
        assert_eq!(d(Backoff::NoJitter, 20, 0.3), 30_000);
        assert_eq!(d(Backoff::FullJitter, 1, 0.25), 250);
        let mut rng = SplitMix(7);
        let draws: Vec<f64> = (0..1000).map(|_| rng.next_f64()).collect();
        assert!(draws.iter().all(|r| (0.0..1.0).contains(r)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.45..0.55).contains(&mean), "uniform: mean {mean}");
    }

    #[test]
    fn peak_attempt_rate() {
        assert_eq!(peak_rate(&[], 100), 0.0);
        // Three attempts within 100 ms, then a gap: 30 per second at the peak.
        assert_eq!(peak_rate(&[0, 10, 99, 500, 900], 100), 30.0);
        assert_eq!(peak_rate(&[0, 10, 99, 500, 900], 1000), 5.0);
    }

    #[test]
    fn reads_its_own_cpu_time() {
        assert!(cpu_secs(None) >= 0.0);
    }
}

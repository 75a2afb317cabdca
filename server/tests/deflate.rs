//! permessage-deflate over real sockets: negotiation, compressed broadcasts (fewer bytes on
//! the wire for the client that asked, the same message for one that did not), compressed
//! publishes, context takeover both ways, the compression-bomb guard (1009) and broken data
//! (1007).
//!
//! The client here is tokio-tungstenite with the server's own [`DeflateIo`] beneath it for
//! reading; Autobahn (12.*, 13.*, against `/echo`) and Chromium (e2e) check the same code
//! against independent implementations.

mod common;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_server::deflate::{self, DeflateIo, Inflate};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

/// A TCP stream that counts the bytes read from it.
struct Counted {
    tcp: TcpStream,
    read: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.tcp).poll_read(cx, buf);
        this.read
            .fetch_add(buf.filled().len() - before, Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

struct Client {
    ws: WebSocketStream<DeflateIo<Counted>>,
    /// The server's `Sec-WebSocket-Extensions`, if any.
    extensions: Option<String>,
    read: Arc<AtomicUsize>,
    /// With client context takeover: the compressor kept between messages.
    compressor: Option<Compress>,
}

/// Connects to `/ws` offering `offer` (a `Sec-WebSocket-Extensions` value), with a
/// handshake written by hand so that no frame byte is read before the inflater is in
/// place; reads the `welcome`.
async fn connect(server: &common::TestServer, offer: Option<&str>, takeover: bool) -> Client {
    let mut client = open(server, "/ws", offer, takeover).await;
    assert_eq!(client.next().await["type"], "welcome");
    client
}

/// The WebSocket handshake of [`connect`] on `path`, without reading anything after it.
async fn open(
    server: &common::TestServer,
    path: &str,
    offer: Option<&str>,
    takeover: bool,
) -> Client {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let extension = offer
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n",
        server.addr
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let extensions = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-extensions: "))
        .map(str::to_owned);
    let read = Arc::new(AtomicUsize::new(0));
    let counted = Counted {
        tcp,
        read: read.clone(),
    };
    let inflate = extensions
        .as_ref()
        .map(|_| Box::new(Inflate::new(1 << 20, 1 << 20, takeover)));
    let ws = WebSocketStream::from_raw_socket(DeflateIo::new(counted, inflate), Role::Client, None)
        .await;
    Client {
        ws,
        extensions,
        read,
        compressor: None,
    }
}

impl Client {
    async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("a frame within 5 s")
                .expect("open")
                .expect("readable");
            match msg {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(frame) => return json!({"closed": frame.map(|f| u16::from(f.code))}),
                _ => {}
            }
        }
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }

    /// Sends `frame` compressed (as one message; with `takeover`, through a compressor kept
    /// between messages).
    async fn send_compressed(&mut self, frame: &[u8], takeover: bool) {
        let message = self.compressed(frame, takeover);
        self.ws.send(message).await.unwrap();
    }

    /// `frame` as a compressed message (see [`Client::send_compressed`]).
    fn compressed(&mut self, frame: &[u8], takeover: bool) -> Message {
        let compressor = self
            .compressor
            .get_or_insert_with(|| Compress::new_with_window_bits(Compression::new(6), false, 15));
        if !takeover {
            compressor.reset();
        }
        let mut out = Vec::with_capacity(frame.len() + 64);
        compressor
            .compress_vec(frame, &mut out, FlushCompress::Sync)
            .unwrap();
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        deflate::message(Bytes::from(out), Data::Text)
    }

    /// Sends a message marked compressed whose bytes are not deflate data.
    async fn send_broken(&mut self) {
        let message = deflate::message(Bytes::from_static(&[0xff; 32]), Data::Text);
        self.ws.send(message).await.unwrap();
    }

    async fn subscribe(&mut self, channel: &str) {
        self.send(json!({"type": "subscribe", "id": "s", "channel": channel}))
            .await;
        assert_eq!(self.next().await["type"], "subscribed");
    }
}

/// A message far longer than the compression threshold, and very compressible.
fn chatter(n: usize) -> String {
    "the quick brown fox jumps over the lazy dog; ".repeat(n)
}

#[tokio::test]
async fn compressed_for_who_asks_plain_for_who_does_not_and_compressed_publishes_are_read() {
    let server = common::start(common::config(&[])).await;
    let offer = "permessage-deflate; client_max_window_bits";
    let mut alice = connect(&server, Some(offer), false).await;
    assert_eq!(
        alice.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let mut bob = connect(&server, Some(offer), false).await;
    let mut carol = connect(&server, None, false).await;
    assert_eq!(carol.extensions, None);
    for c in [&mut alice, &mut bob, &mut carol] {
        c.subscribe("room:z").await;
    }
    let text = chatter(50);
    let publish = json!({"type": "publish", "id": "p1", "channel": "room:z", "data": text});
    let (bob_before, carol_before) = (
        bob.read.load(Ordering::Relaxed),
        carol.read.load(Ordering::Relaxed),
    );
    alice
        .send_compressed(publish.to_string().as_bytes(), false)
        .await;
    let mut got_ack = false;
    for _ in 0..2 {
        let frame = alice.next().await;
        got_ack |= frame["type"] == "ack";
        if frame["type"] == "message" {
            assert_eq!(frame["data"], text);
        }
    }
    assert!(got_ack, "the compressed publish was read and acked");
    for c in [&mut bob, &mut carol] {
        let frame = c.next().await;
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["data"], text, "the same message, compressed or not");
    }
    let bob_wire = bob.read.load(Ordering::Relaxed) - bob_before;
    let carol_wire = carol.read.load(Ordering::Relaxed) - carol_before;
    assert!(carol_wire > text.len(), "plain: {carol_wire} bytes");
    assert!(
        bob_wire * 10 < carol_wire,
        "compressed: {bob_wire} bytes vs {carol_wire}"
    );
    // A short frame is sent as it is (under the threshold), and works too.
    bob.send(json!({"type": "ping", "id": "short"})).await;
    assert_eq!(bob.next().await["type"], "pong");
}

#[tokio::test]
async fn context_takeover_both_ways_when_configured() {
    let server = common::start(common::config(&[
        "--deflate-server-context-takeover",
        "--deflate-client-context-takeover",
    ]))
    .await;
    let mut alice = connect(&server, Some("permessage-deflate"), true).await;
    assert_eq!(alice.extensions.as_deref(), Some("permessage-deflate"));
    let mut bob = connect(&server, Some("permessage-deflate"), true).await;
    for c in [&mut alice, &mut bob] {
        c.subscribe("room:t").await;
    }
    let mut wire = Vec::new();
    for i in 0..3 {
        let text = format!("{i} {}", chatter(20));
        let publish = json!({"type": "publish", "channel": "room:t", "data": text});
        // The client's compressor keeps its window: later messages refer to earlier ones.
        alice
            .send_compressed(publish.to_string().as_bytes(), true)
            .await;
        let before = bob.read.load(Ordering::Relaxed);
        let frame = bob.next().await;
        assert_eq!(frame["data"], text);
        wire.push(bob.read.load(Ordering::Relaxed) - before);
        assert_eq!(alice.next().await["data"], text);
    }
    // The server's window carries over too: a repeat costs less than the first.
    assert!(wire[2] < wire[0], "bytes per delivery: {wire:?}");
}

#[tokio::test]
async fn a_compression_bomb_is_closed_with_1009_and_broken_data_with_1007() {
    let server = common::start(common::config(&[])).await;
    // 10 MB of one letter: ~10 KB compressed, far over --max-frame-bytes (64 KiB) inflated.
    let mut bomber = connect(&server, Some("permessage-deflate"), false).await;
    let bomb = format!("\"{}\"", "a".repeat(10 << 20));
    bomber.send_compressed(bomb.as_bytes(), false).await;
    assert_eq!(bomber.next().await, json!({"closed": 1009}));

    let mut broken = connect(&server, Some("permessage-deflate"), false).await;
    broken.send_broken().await;
    assert_eq!(broken.next().await, json!({"closed": 1007}));

    // The server is fine: others connect and are served.
    let mut after = connect(&server, Some("permessage-deflate"), false).await;
    after.send(json!({"type": "ping", "id": "1"})).await;
    assert_eq!(after.next().await["type"], "pong");
}

#[tokio::test]
async fn the_echo_endpoint_closes_as_the_session_does() {
    // The same mapping as the session's (`session::close_code_for`), so broken data is
    // answered with 1007 here too rather than a dropped connection.
    let server = common::start(common::config(&["--echo-endpoint"])).await;
    let mut broken = open(&server, "/echo", Some("permessage-deflate"), false).await;
    broken.send_broken().await;
    assert_eq!(broken.next().await, json!({"closed": 1007}));
}

#[tokio::test]
async fn many_compressed_messages_in_one_write_each_arrive_once_in_order() {
    // Small ones that inflate to far more than they take: the server reads them one
    // message at a time (the rest of a read is held back), and loses none.
    let server = common::start(common::config(&["--echo-endpoint"])).await;
    let mut client = open(&server, "/echo", Some("permessage-deflate"), false).await;
    let sent: Vec<Value> = (0..200)
        .map(|i| json!({"n": i, "pad": "z".repeat(20_000)}))
        .collect();
    for frame in &sent {
        let message = client.compressed(frame.to_string().as_bytes(), false);
        client.ws.feed(message).await.unwrap();
    }
    client.ws.flush().await.unwrap();
    for frame in &sent {
        assert_eq!(&client.next().await, frame);
    }
}

#[tokio::test]
async fn with_deflate_off_offers_are_declined() {
    let server = common::start(common::config(&["--deflate", "false"])).await;
    let mut client = connect(&server, Some("permessage-deflate"), false).await;
    assert_eq!(client.extensions, None);
    client.subscribe("room:o").await;
}

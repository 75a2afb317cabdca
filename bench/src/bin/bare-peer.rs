//! The upper bound on this machine: the best bare axum WebSocket server we can write, with
//! no protocol. Every text message a client sends on `/ws` is broadcast to every
//! connection (one tokio broadcast channel, the bytes shared); `/echo` answers each
//! message with itself. Same 4 KiB read buffer as Switchboard.
//!
//! Each connection's writer takes the message it waited for plus whatever else is already
//! in its broadcast receiver (up to 64, as Switchboard's session does) and flushes once:
//! one write for many frames when it falls behind. `--flush-each` is the naive server that
//! sends and flushes every message on its own, kept as a labelled second row. Neither is
//! a real server: a subscriber that lags more than 1,024 messages silently skips them.
//!
//! `bare-peer --addr 127.0.0.1:0 [--flush-each]` prints `listening on http://…`.

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::sync::broadcast;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: std::net::SocketAddr,
    /// Write and flush every message on its own (the naive server).
    #[arg(long)]
    flush_each: bool,
}

/// Frames written together before one flush (Switchboard's session uses the same).
const BATCH: usize = 64;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, _) = broadcast::channel::<Utf8Bytes>(1024);
    let app = Router::new()
        .route("/ws", get(fanout))
        .route("/echo", get(echo))
        .with_state((tx, args.flush_each));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Like Switchboard and Node's http server: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn fanout(
    State((tx, flush_each)): State<(broadcast::Sender<Utf8Bytes>, bool)>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| async move {
            let (sink, mut stream) = socket.split();
            let rx = tx.subscribe();
            let send = tokio::spawn(async move {
                if flush_each {
                    write_each(sink, rx).await;
                } else {
                    write_batched(sink, rx).await;
                }
            });
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(text) = msg {
                    let _ = tx.send(text);
                }
            }
            send.abort();
        })
}

type Sink = futures::stream::SplitSink<WebSocket, Message>;

/// The naive writer: one send (write and flush) per message.
async fn write_each(mut sink: Sink, mut rx: broadcast::Receiver<Utf8Bytes>) {
    loop {
        match rx.recv().await {
            Ok(text) => {
                if sink.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The batched writer: the awaited message and up to `BATCH - 1` already waiting, one flush.
async fn write_batched(mut sink: Sink, mut rx: broadcast::Receiver<Utf8Bytes>) {
    use broadcast::error::{RecvError, TryRecvError};
    loop {
        let first = match rx.recv().await {
            Ok(text) => text,
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        if sink.feed(Message::Text(first)).await.is_err() {
            return;
        }
        for _ in 1..BATCH {
            match rx.try_recv() {
                Ok(text) => {
                    if sink.feed(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

async fn echo(ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(|mut socket: WebSocket| async move {
            while let Some(Ok(msg)) = socket.recv().await {
                if let Message::Text(_) = msg
                    && socket.send(msg).await.is_err()
                {
                    break;
                }
            }
        })
}

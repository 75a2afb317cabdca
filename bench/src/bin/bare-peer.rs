//! The upper bound on this machine: a bare axum WebSocket server with no protocol. Every
//! text message a client sends on `/ws` is broadcast to every connection (one tokio
//! broadcast channel, the bytes shared); `/echo` answers each message with itself. Same
//! 4 KiB read buffer as Switchboard.
//!
//! `bare-peer --addr 127.0.0.1:0` prints `listening on http://…`.

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (tx, _) = broadcast::channel::<Utf8Bytes>(1024);
    let app = Router::new()
        .route("/ws", get(fanout))
        .route("/echo", get(echo))
        .with_state(tx);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Like Switchboard and Node's http server: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn fanout(State(tx): State<broadcast::Sender<Utf8Bytes>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(4096)
        .write_buffer_size(4096)
        .on_upgrade(move |socket| async move {
            let (mut sink, mut stream) = socket.split();
            let mut rx = tx.subscribe();
            let send = tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(text) => {
                            if sink.send(Message::Text(text)).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
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

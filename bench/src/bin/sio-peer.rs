//! The Socket.IO side-by-side peer: a socketioxide server (Engine.IO v4 / Socket.IO v5,
//! websocket transport only, default namespace `/` on `/socket.io/`). `join` (with an
//! ack) puts the socket in a room and acks with no data; `pub` broadcasts its argument as
//! `msg` to every other socket in room `bench`; `echo` acks with its argument. Same
//! 4 KiB websocket read buffer as Switchboard (socketioxide has no write-buffer setting),
//! and up to 1024 queued packets per socket (bare-peer's broadcast capacity; socketioxide's
//! default is 128).
//!
//! `sio-peer --addr 127.0.0.1:0` prints `listening on http://…`.

use axum::Router;
use axum::serve::ListenerExt;
use clap::Parser;
use serde_json::Value;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::{SocketIo, TransportType};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (layer, io) = SocketIo::builder()
        .transports([TransportType::Websocket])
        .ws_read_buffer_size(4096)
        .max_buffer_size(1024)
        .build_layer();
    io.ns("/", async |s: SocketRef| {
        s.on("join", join);
        s.on("pub", publish);
        s.on("echo", echo);
    });
    let app = Router::new().layer(layer);
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Like Switchboard and Node's http server: no Nagle delay.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn join(s: SocketRef, ack: AckSender, Data(room): Data<String>) {
    s.join(room);
    // A zero-length tuple: an ack without arguments (`43N[]`, like socket.io's `ack()`);
    // `&()` would send `43N[null]`.
    let _ = ack.send(&[(); 0]);
}

async fn publish(s: SocketRef, Data(msg): Data<Value>) {
    let _ = s.to("bench").emit("msg", &msg).await;
}

async fn echo(ack: AckSender, Data(msg): Data<Value>) {
    let _ = ack.send(&msg);
}

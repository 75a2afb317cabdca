//! Test helpers: a real server on a free loopback port and a real tokio-tungstenite client.
#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod faulty;
pub mod native;
pub mod recorder;
pub mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchboard_protocol::{ClientFrame, ServerFrame, codec};
use switchboard_server::{AppState, Config};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Triggers graceful shutdown (as SIGTERM would).
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config for tests: the given tweaks on top of the defaults, bound to a free port.
pub fn config(args: &[&str]) -> Config {
    use clap::Parser;
    let mut argv = vec!["switchboard-server", "--addr", "127.0.0.1:0"];
    // Streams in memory unless a test asks for the disk store (with its own --data-dir).
    if !args.contains(&"--history") {
        argv.extend_from_slice(&["--history", "memory"]);
    }
    argv.extend_from_slice(args);
    Config::parse_from(argv)
}

pub async fn start(config: Config) -> TestServer {
    start_with(AppState::new(config)).await
}

pub async fn start_with(state: AppState) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(switchboard_server::run(listener, state.clone(), async {
        let _ = rx.await;
    }));
    TestServer {
        addr,
        state,
        shutdown: Some(tx),
        task,
    }
}

/// Polls `cond` every 10 ms for up to 3 s; true once it holds.
pub async fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..300 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub client_id: String,
}

/// What the next read gave.
#[derive(Debug, PartialEq)]
pub enum Next {
    Frame(ServerFrame),
    Closed(Option<u16>),
}

const WAIT: Duration = Duration::from_secs(5);

impl Client {
    /// Connects and reads the `welcome`.
    pub async fn connect(server: &TestServer) -> Client {
        let (ws, resp) = connect_async(server.ws_url()).await.expect("connect");
        assert_eq!(resp.status(), 101);
        let mut c = Client {
            ws,
            client_id: String::new(),
        };
        match c.next().await {
            ServerFrame::Welcome { client_id, .. } => c.client_id = client_id.0,
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    pub async fn send(&mut self, frame: &ClientFrame) {
        self.send_text(&codec::encode(frame)).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// The next frame or close, skipping pings; panics after 5 s of silence.
    pub async fn read(&mut self) -> Next {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame within 5 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let mut frames = codec::decode_server(t.as_str());
                    assert_eq!(frames.len(), 1, "unexpected batch: {t}");
                    return Next::Frame(frames.remove(0).expect("valid server frame"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Next::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Next::Closed(None),
            }
        }
    }

    pub async fn next(&mut self) -> ServerFrame {
        match self.read().await {
            Next::Frame(f) => f,
            Next::Closed(code) => panic!("closed ({code:?}) while expecting a frame"),
        }
    }

    /// Reads until the connection closes; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Next::Closed(code) = self.read().await {
                return code;
            }
        }
    }

    /// Sends a ping and waits for its pong: everything sent before has been processed.
    /// Returns the frames that arrived before the pong, in order.
    pub async fn collect(&mut self) -> Vec<ServerFrame> {
        self.send(&ClientFrame::Ping {
            id: Some("sync".into()),
        })
        .await;
        let mut before = Vec::new();
        loop {
            match self.next().await {
                ServerFrame::Pong { id: Some(id), .. } if id.as_str() == "sync" => return before,
                other => before.push(other),
            }
        }
    }

    /// Like [`Client::collect`], and nothing else arrived before the pong.
    pub async fn sync(&mut self) {
        let before = self.collect().await;
        assert!(before.is_empty(), "unexpected frames: {before:?}");
    }
}

/// An HS256 token for `sub`, valid for an hour, signed with `secret`.
pub fn token(secret: &str, sub: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": sub, "exp": switchboard_server::clock::now_ms() / 1000 + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

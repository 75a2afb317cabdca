//! The network edge against a real server over loopback: client addresses behind trusted
//! proxies, per-address caps, the pending-auth cap, dev-mode origins, and `/echo` under the
//! same Origin check and caps.

mod common;

use std::time::Duration;

use common::{Client, Next, TestServer, config, start};
use futures::{SinkExt, StreamExt};
use switchboard_protocol::ServerFrame;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const SECRET: &str = "edge-secret";

/// A request for `url` with the given headers.
fn request(url: &str, headers: &[(&str, &str)]) -> Request {
    let mut req = url.into_client_request().unwrap();
    for (name, value) in headers {
        req.headers_mut().append(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().expect("header value"),
        );
    }
    req
}

/// Opens `/ws` with the given headers; returns the client (nothing read yet).
async fn open(server: &TestServer, headers: &[(&str, &str)]) -> Client {
    let (ws, _) = connect_async(request(&server.ws_url(), headers))
        .await
        .expect("upgrade");
    Client {
        ws,
        client_id: String::new(),
    }
}

/// Opens `/ws` as forwarded for `client` and returns what came first: `welcome` or a close.
async fn forwarded(server: &TestServer, client: &str) -> (Client, Next) {
    let mut c = open(server, &[("x-forwarded-for", client)]).await;
    let first = c.read().await;
    (c, first)
}

fn is_welcome(next: &Next) -> bool {
    matches!(next, Next::Frame(ServerFrame::Welcome { .. }))
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_what_the_cap_counts() {
    let server = start(config(&[
        "--trusted-proxies",
        "127.0.0.1",
        "--max-connections-per-ip",
        "1",
    ]))
    .await;
    let (_a, first) = forwarded(&server, "203.0.113.7").await;
    assert!(is_welcome(&first), "{first:?}");
    let (_b, first) = forwarded(&server, "203.0.113.7").await;
    assert_eq!(first, Next::Closed(Some(4113)), "same forwarded address");
    let (_c, first) = forwarded(&server, "203.0.113.8").await;
    assert!(is_welcome(&first), "another forwarded address: {first:?}");
    // the client's own entry on the left is not believed: the proxy's (rightmost) one is
    let (_d, first) = forwarded(&server, "203.0.113.99, 203.0.113.7").await;
    assert_eq!(first, Next::Closed(Some(4113)), "forged leftmost entry");
    // IPv6 clients count by /64
    let (_e, first) = forwarded(&server, "2001:db8:1:2::1").await;
    assert!(is_welcome(&first), "{first:?}");
    let (_f, first) = forwarded(&server, "[2001:db8:1:2:ffff::2]:443").await;
    assert_eq!(first, Next::Closed(Some(4113)), "same /64");
    let (_g, first) = forwarded(&server, "2001:db8:1:3::1").await;
    assert!(is_welcome(&first), "next /64: {first:?}");
    // no header: the proxy itself
    let mut h = open(&server, &[]).await;
    assert!(is_welcome(&h.read().await));
}

#[tokio::test]
async fn from_an_untrusted_peer_the_forwarded_header_is_ignored() {
    for trusted in [None, Some("10.0.0.0/8,::1")] {
        let mut args = vec!["--max-connections-per-ip", "1"];
        if let Some(list) = trusted {
            args.extend(["--trusted-proxies", list]);
        }
        let server = start(config(&args)).await;
        let (_a, first) = forwarded(&server, "203.0.113.7").await;
        assert!(is_welcome(&first), "{trusted:?}: {first:?}");
        // a different forwarded address still shares 127.0.0.1's place
        let (_b, first) = forwarded(&server, "203.0.113.8").await;
        assert_eq!(first, Next::Closed(Some(4113)), "{trusted:?}");
    }
}

fn token(sub: &str) -> String {
    common::token(SECRET, sub)
}

#[tokio::test]
async fn connections_waiting_for_a_token_have_a_cap_of_their_own() {
    let server = start(config(&["--jwt-secret", SECRET, "--max-pending-auth", "2"])).await;
    let gauge = || server.state.admissions.pending_auth();
    let mut a = open(&server, &[]).await;
    assert!(is_welcome(&a.read().await));
    let mut b = open(&server, &[]).await;
    assert!(is_welcome(&b.read().await));
    assert_eq!(gauge(), 2);
    let mut c = open(&server, &[]).await;
    assert_eq!(c.read().await, Next::Closed(Some(4113)), "third tokenless");
    // a connection with its token on the URL is not waiting: not held back
    let url = format!("{}?token={}", server.ws_url(), token("u0"));
    let (ws, _) = connect_async(url).await.unwrap();
    let mut with_token = Client {
        ws,
        client_id: String::new(),
    };
    assert!(is_welcome(&with_token.read().await));

    // one authenticates: its slot is given back, and a new tokenless one fits
    a.send_text(&format!(r#"{{"type":"hello","token":"{}"}}"#, token("u1")))
        .await;
    match a.next().await {
        ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_deref(), Some("u1")),
        other => panic!("{other:?}"),
    }
    assert_eq!(gauge(), 1);
    let mut d = open(&server, &[]).await;
    assert!(is_welcome(&d.read().await), "after hello");
    let mut e = open(&server, &[]).await;
    assert_eq!(e.read().await, Next::Closed(Some(4113)), "full again");

    // one that closes gives its slot back too
    drop(b);
    assert!(common::eventually(|| gauge() == 1).await, "after close");
    let mut f = open(&server, &[]).await;
    assert!(is_welcome(&f.read().await), "after a close");
    a.sync().await; // the authenticated one is unaffected
    let metrics = get_metrics(&server).await;
    assert!(
        metrics.contains("\nswitchboard_pending_auth 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_pending_auth_cap_per_address() {
    let server = start(config(&[
        "--jwt-secret",
        SECRET,
        "--trusted-proxies",
        "127.0.0.1",
        "--max-pending-auth-per-ip",
        "1",
    ]))
    .await;
    let (_a, first) = forwarded(&server, "203.0.113.7").await;
    assert!(is_welcome(&first));
    let (_b, first) = forwarded(&server, "203.0.113.7").await;
    assert_eq!(first, Next::Closed(Some(4113)));
    let (_c, first) = forwarded(&server, "203.0.113.8").await;
    assert!(is_welcome(&first));
}

/// `GET /metrics` as text.
async fn get_metrics(server: &TestServer) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

/// The HTTP status of a refused upgrade, or 101.
async fn status(req: Request) -> u16 {
    match connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn trunk_serve_origins_only_in_dev_mode() {
    let prod = start(config(&[])).await;
    let dev = start(config(&["--dev"])).await;
    for origin in ["http://127.0.0.1:8080", "http://localhost:8080"] {
        let headers = [("origin", origin)];
        assert_eq!(status(request(&prod.ws_url(), &headers)).await, 403);
        assert_eq!(status(request(&dev.ws_url(), &headers)).await, 101);
    }
    // dev mode allows nothing else
    let other = [("origin", "https://evil.example.net")];
    assert_eq!(status(request(&dev.ws_url(), &other)).await, 403);
}

#[tokio::test]
async fn echo_obeys_the_origin_check_and_the_caps() {
    let server = start(config(&[
        "--echo-endpoint",
        "--max-connections-per-ip",
        "1",
    ]))
    .await;
    let echo_url = format!("ws://{}/echo", server.addr);
    let evil = [("origin", "https://evil.example.net")];
    assert_eq!(status(request(&echo_url, &evil)).await, 403);

    let own = format!("http://{}", server.addr);
    let (mut ws, _) = connect_async(request(&echo_url, &[("origin", &own)]))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));

    // the echo holds 127.0.0.1's only place: a second echo and a /ws are refused
    let (mut second, _) = connect_async(echo_url.as_str()).await.unwrap();
    match second.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4113),
        other => panic!("expected a 4113 close, got {other:?}"),
    }
    let mut c = open(&server, &[]).await;
    assert_eq!(c.read().await, Next::Closed(Some(4113)));

    // closing the echo gives the place back
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    for _ in 0..100 {
        let mut d = open(&server, &[]).await;
        if is_welcome(&d.read().await) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the echo's place was never given back");
}

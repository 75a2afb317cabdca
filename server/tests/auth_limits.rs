//! Authentication, permissions, token expiry, the Origin check, connection caps and the
//! HTTP publishing API, against a real server over loopback.

mod common;

use std::time::Duration;

use common::{Client, Next, config, start};
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchboard_protocol::{ErrorCode, ServerFrame};
use switchboard_server::auth::keys::read_signing_key;
use switchboard_server::clock::now_ms;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const SECRET: &str = "test-secret";

/// The test key pairs (tests/keys/README.md).
const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/");

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token signed with the private key `tests/keys/<file>`.
fn signed(file: &str, alg: Algorithm, kid: Option<&str>, claims: Value) -> String {
    let key = read_signing_key(format!("{KEYS}{file}").as_ref(), alg).unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    encode(&header, &claims, &key).unwrap()
}

fn exp_in(secs: u64) -> u64 {
    now_ms() / 1000 + secs
}

fn code(frame: ServerFrame) -> ErrorCode {
    match frame {
        ServerFrame::Error { code, .. } => code,
        other => panic!("expected error, got {other:?}"),
    }
}

/// Connects to `url` and returns the raw client (welcome not yet read).
async fn raw(url: String) -> Client {
    let (ws, _) = connect_async(url).await.expect("upgrade");
    Client {
        ws,
        client_id: String::new(),
    }
}

#[tokio::test]
async fn token_in_query_sets_the_user_and_its_grants() {
    let server = start(config(&["--jwt-secret", SECRET])).await;
    let t = token(
        json!({"sub":"u1","name":"Ada","exp":exp_in(3600),"subscribe":["room:*"],"publish":["room:lobby"]}),
    );
    let mut c = raw(format!("{}?token={t}", server.ws_url())).await;
    match c.next().await {
        ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_deref(), Some("u1")),
        other => panic!("{other:?}"),
    }
    // allowed: room:*; refused: news
    c.send_text(
        r#"{"type":"subscribe","channel":"room:lobby","presence":{"name":"Mallory","avatar":"x"}}"#,
    )
    .await;
    match c.next().await {
        ServerFrame::Subscribed { presence, .. } => {
            let me = &presence.unwrap()[0];
            assert_eq!(me.user_id, "u1");
            // the token's name wins over what the client claims
            assert_eq!(me.info, json!({"name":"Ada","avatar":"x"}));
        }
        other => panic!("{other:?}"),
    }
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Forbidden);
    c.send_text(r#"{"type":"publish","id":"p1","channel":"room:other","data":1}"#)
        .await;
    match c.next().await {
        ServerFrame::Error { id, code, .. } => {
            assert_eq!((id.unwrap().as_str(), code), ("p1", ErrorCode::Forbidden));
        }
        other => panic!("{other:?}"),
    }
    c.send_text(r#"{"type":"request","id":"r","method":"presence","params":{"channel":"news"}}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Forbidden);
}

#[tokio::test]
async fn the_same_user_in_two_tabs_is_one_member() {
    let server = start(config(&["--jwt-secret", SECRET])).await;
    let t = token(json!({"sub":"u1","exp":exp_in(3600),"subscribe":["room:*"]}));
    let mut tab1 = raw(format!("{}?token={t}", server.ws_url())).await;
    let mut tab2 = raw(format!("{}?token={t}", server.ws_url())).await;
    let other_t = token(json!({"sub":"u2","exp":exp_in(3600),"subscribe":["room:*"]}));
    let mut watcher = raw(format!("{}?token={other_t}", server.ws_url())).await;
    for c in [&mut tab1, &mut tab2, &mut watcher] {
        c.next().await; // welcome
    }
    let join = r#"{"type":"subscribe","channel":"room:a","presence":{}}"#;
    watcher.send_text(join).await;
    watcher.next().await;
    tab1.send_text(join).await;
    tab1.next().await;
    match watcher.next().await {
        ServerFrame::Presence { count, member, .. } => {
            assert_eq!((count, member.user_id.as_str()), (2, "u1"));
        }
        other => panic!("{other:?}"),
    }
    tab2.send_text(join).await;
    match tab2.next().await {
        ServerFrame::Subscribed { presence, .. } => {
            let members = presence.unwrap();
            assert_eq!(members.len(), 2, "u1 counts once");
            let u1 = members.iter().find(|m| m.user_id == "u1").unwrap();
            assert_eq!(u1.connections, 2);
        }
        other => panic!("{other:?}"),
    }
    // closing one tab is no leave; closing the second is
    drop(tab1);
    let hub = server.state.hub.clone();
    let room = switchboard_protocol::Channel::from("room:a");
    let mut one_left = false;
    for _ in 0..300 {
        let members = hub.presence(&room).await.unwrap();
        if members
            .iter()
            .any(|m| m.user_id == "u1" && m.connections == 1)
        {
            one_left = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(one_left, "the server saw the first tab go");
    watcher.sync().await; // and told the watcher nothing
    drop(tab2);
    match watcher.next().await {
        ServerFrame::Presence { count, member, .. } => {
            assert_eq!((count, member.user_id.as_str()), (1, "u1"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_4001_and_expired_ones_with_4301() {
    let server = start(config(&["--jwt-secret", SECRET])).await;
    let mut c = raw(format!("{}?token=not-a-jwt", server.ws_url())).await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    assert_eq!(c.closed().await, Some(4001));

    let forged = encode(
        &Header::default(),
        &json!({"sub":"u1","exp":exp_in(60)}),
        &EncodingKey::from_secret(b"wrong"),
    )
    .unwrap();
    let mut c = raw(format!("{}?token={forged}", server.ws_url())).await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    assert_eq!(c.closed().await, Some(4001));

    let expired = token(json!({"sub":"u1","exp":exp_in(0) - 10}));
    let mut c = raw(format!("{}?token={expired}", server.ws_url())).await;
    assert_eq!(c.closed().await, Some(4301));
}

#[tokio::test]
async fn without_a_token_only_hello_and_ping_work_until_the_auth_timeout() {
    let server = start(config(&["--jwt-secret", SECRET, "--auth-timeout", "300ms"])).await;
    let mut c = raw(server.ws_url()).await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Welcome { user_id: None, .. }
    ));
    c.send_text(r#"{"type":"subscribe","channel":"a"}"#).await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    c.sync().await; // ping still works
    assert_eq!(c.closed().await, Some(4001));

    // hello with a token in time: authenticated
    let mut c = raw(server.ws_url()).await;
    c.next().await;
    let t = token(json!({"sub":"u9","exp":exp_in(3600)}));
    c.send_text(&format!(r#"{{"type":"hello","token":"{t}"}}"#))
        .await;
    match c.next().await {
        ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_deref(), Some("u9")),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.sync().await; // still open after the auth timeout
}

#[tokio::test]
async fn expiry_while_connected_closes_with_4301_unless_refreshed() {
    let server = start(config(&["--jwt-secret", SECRET])).await;
    // JWT exp has one-second resolution: a token expiring in 1-2 s
    let short = token(json!({"sub":"u1","exp":exp_in(2)}));
    let mut lapsing = raw(format!("{}?token={short}", server.ws_url())).await;
    lapsing.next().await;
    let mut refreshed = raw(format!("{}?token={short}", server.ws_url())).await;
    refreshed.next().await;
    let long = token(json!({"sub":"u1","exp":exp_in(3600)}));
    refreshed
        .send_text(&format!(r#"{{"type":"hello","token":"{long}"}}"#))
        .await;
    assert!(matches!(
        refreshed.next().await,
        ServerFrame::Welcome { .. }
    ));
    // a token for someone else is not a refresh
    let other = token(json!({"sub":"u2","exp":exp_in(3600)}));
    refreshed
        .send_text(&format!(r#"{{"type":"hello","token":"{other}"}}"#))
        .await;
    assert_eq!(code(refreshed.next().await), ErrorCode::BadRequest);

    assert_eq!(lapsing.closed().await, Some(4301));
    refreshed.sync().await;
}

#[tokio::test]
async fn anonymous_access_when_configured() {
    let server = start(config(&[
        "--jwt-secret",
        SECRET,
        "--allow-anonymous",
        "--anonymous-subscribe",
        "public:*",
    ]))
    .await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","channel":"public:news"}"#)
        .await;
    assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
    c.send_text(r#"{"type":"subscribe","channel":"private"}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Forbidden);
    c.send_text(r#"{"type":"publish","channel":"public:news","data":1}"#)
        .await;
    assert_eq!(
        code(c.next().await),
        ErrorCode::Forbidden,
        "anonymous publish is off by default"
    );
}

#[tokio::test]
async fn a_token_without_a_secret_is_refused() {
    let server = start(config(&[])).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"hello","token":"abc"}"#).await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    c.sync().await;
}

#[tokio::test]
async fn foreign_origins_get_403_before_the_upgrade() {
    let server = start(config(&["--allowed-origins", "https://app.example.com"])).await;
    let with_origin = |origin: &str| {
        let mut req = server.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match connect_async(with_origin("https://evil.example.net")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    // the trunk serve origins only with --dev (tests/edge.rs)
    match connect_async(with_origin("http://localhost:8080")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let own = format!("http://{}", server.addr);
    for ok in [own.as_str(), "https://app.example.com"] {
        let (mut ws, _) = connect_async(with_origin(ok)).await.expect(ok);
        assert!(ws.next().await.is_some());
    }
}

#[tokio::test]
async fn connection_caps_close_with_4113() {
    let server = start(config(&["--max-connections-per-ip", "2"])).await;
    let _a = Client::connect(&server).await;
    let _b = Client::connect(&server).await;
    let mut c = raw(server.ws_url()).await;
    assert_eq!(c.read().await, Next::Closed(Some(4113)));
    drop(_a);
    // the place is given back once the server has noticed
    for _ in 0..100 {
        let mut d = raw(server.ws_url()).await;
        if let Next::Frame(ServerFrame::Welcome { .. }) = d.read().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the freed place was never given back");
}

async fn post(addr: std::net::SocketAddr, auth: Option<&str>, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = auth
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn http_publish_api() {
    let server = start(config(&["--api-key", "k3y"])).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","channel":"notifications"}"#)
        .await;
    c.next().await;
    let body = r#"{"channel":"notifications","data":{"text":"deployed"}}"#;
    assert_eq!(
        post(server.addr, Some("k3y"), body).await,
        (200, json!({"offset":1}))
    );
    match c.next().await {
        ServerFrame::Message {
            from, data, offset, ..
        } => {
            assert_eq!(
                (from, data, offset),
                (None, json!({"text":"deployed"}).into(), Some(1))
            );
        }
        other => panic!("{other:?}"),
    }
    let (status, err) = post(server.addr, Some("nope"), body).await;
    assert_eq!((status, err["code"].as_str()), (401, Some("unauthorized")));
    let (status, err) = post(server.addr, None, body).await;
    assert_eq!((status, err["code"].as_str()), (401, Some("unauthorized")));
    let (status, err) = post(server.addr, Some("k3y"), r#"{"channel":"a b","data":1}"#).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (400, Some("invalid_channel"))
    );
    let (status, err) = post(server.addr, Some("k3y"), r#"{"data":1}"#).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("bad_request")));

    let disabled = start(config(&[])).await;
    let (status, _) = post(disabled.addr, Some("k3y"), body).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn demo_ticker_publishes_prices() {
    let server = start(config(&["--demo-ticker", "20ms"])).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","channel":"ticker:demo"}"#)
        .await;
    c.next().await;
    let mut last = None;
    for _ in 0..3 {
        match c.next().await {
            ServerFrame::Message { data, from, .. } => {
                assert_eq!(from, None);
                assert_eq!(data.to_value()["symbol"], "SBX");
                assert!(data.to_value()["price"].as_f64().unwrap() > 0.0);
                let seq = data.to_value()["seq"].as_u64().unwrap();
                assert!(last.is_none_or(|l| seq > l));
                last = Some(seq);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn tokens_minted_by_the_cli_are_accepted() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-token"))
        .args([
            "--sub",
            "cli-user",
            "--name",
            "Cli",
            "--subscribe",
            "room:*",
        ])
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success());
    let t = String::from_utf8(out.stdout).unwrap();
    let server = start(config(&["--jwt-secret", SECRET])).await;
    let mut c = raw(format!("{}?token={}", server.ws_url(), t.trim())).await;
    match c.next().await {
        ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_deref(), Some("cli-user")),
        other => panic!("{other:?}"),
    }
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Forbidden);
}

#[tokio::test]
async fn a_query_token_without_a_secret_is_reported_and_the_connection_stays_anonymous() {
    let server = start(config(&[])).await;
    let mut c = raw(format!("{}?token=abc", server.ws_url())).await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Welcome { user_id: None, .. }
    ));
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
}

#[tokio::test]
async fn a_token_without_grant_claims_may_do_nothing_unless_the_operator_says() {
    let t = token(json!({"sub":"u1","exp":exp_in(3600)}));
    let server = start(config(&["--jwt-secret", SECRET])).await;
    let mut c = raw(format!("{}?token={t}", server.ws_url())).await;
    assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    c.send_text(r#"{"type":"subscribe","channel":"room:a"}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Forbidden);
    c.send_text(r#"{"type":"publish","id":"p","channel":"room:a","data":1}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Forbidden);

    let server = start(config(&[
        "--jwt-secret",
        SECRET,
        "--token-default-subscribe",
        "room:*",
    ]))
    .await;
    let mut c = raw(format!("{}?token={t}", server.ws_url())).await;
    c.next().await;
    c.send_text(r#"{"type":"subscribe","channel":"room:a"}"#)
        .await;
    assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Forbidden);
}

#[tokio::test]
async fn a_token_for_another_audience_is_closed_with_4001() {
    let for_billing = token(json!({"sub":"u1","aud":"billing","exp":exp_in(60)}));
    let for_chat = token(json!({"sub":"u1","aud":["chat"],"exp":exp_in(60)}));
    // No --jwt-audience: any aud means the token was minted for someone else.
    let server = start(config(&["--jwt-secret", SECRET])).await;
    for t in [&for_billing, &for_chat] {
        let mut c = raw(format!("{}?token={t}", server.ws_url())).await;
        match c.next().await {
            ServerFrame::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::Unauthorized);
                assert!(message.contains("aud"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.closed().await, Some(4001));
    }
    let server = start(config(&["--jwt-secret", SECRET, "--jwt-audience", "chat"])).await;
    let mut c = raw(format!("{}?token={for_chat}", server.ws_url())).await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Welcome {
            user_id: Some(_),
            ..
        }
    ));
    let mut c = raw(format!("{}?token={for_billing}", server.ws_url())).await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    assert_eq!(c.closed().await, Some(4001));
}

#[tokio::test]
async fn a_token_not_valid_yet_is_closed_with_4001() {
    let server = start(config(&["--jwt-secret", SECRET])).await;
    let early = token(json!({"sub":"u1","nbf":exp_in(600),"exp":exp_in(3600)}));
    let mut c = raw(format!("{}?token={early}", server.ws_url())).await;
    match c.next().await {
        ServerFrame::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::Unauthorized);
            assert!(message.contains("not valid yet"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.closed().await, Some(4001));
}

#[tokio::test]
async fn an_rs256_token_checked_with_a_pem_public_key_connects() {
    let key = format!("{KEYS}rsa.pub.pem");
    let server = start(config(&["--jwt-public-key", &key])).await;
    let t = signed(
        "rsa.pem",
        Algorithm::RS256,
        None,
        json!({"sub":"rsa-user","exp":exp_in(3600),"subscribe":["room:*"]}),
    );
    let mut c = raw(format!("{}?token={t}", server.ws_url())).await;
    match c.next().await {
        ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_deref(), Some("rsa-user")),
        other => panic!("{other:?}"),
    }
    c.send_text(r#"{"type":"subscribe","channel":"room:a"}"#)
        .await;
    assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));

    // HS256 "signed" with the public key's bytes: the server has no HS256 key.
    let forged = encode(
        &Header::default(),
        &json!({"sub":"mallory","exp":exp_in(60)}),
        &EncodingKey::from_secret(&std::fs::read(&key).unwrap()),
    )
    .unwrap();
    let mut c = raw(format!("{}?token={forged}", server.ws_url())).await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    assert_eq!(c.closed().await, Some(4001));
    // Without a token: the server checks tokens, so the connection must authenticate.
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","channel":"room:a"}"#)
        .await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
}

#[tokio::test]
async fn es256_and_eddsa_tokens_checked_with_a_key_set_connect() {
    let server = start(config(&["--jwt-jwks", &format!("{KEYS}jwks.json")])).await;
    for (file, alg, kid) in [
        ("ec256.pem", Algorithm::ES256, "ec-1"),
        ("ed25519.pem", Algorithm::EdDSA, "ed-1"),
    ] {
        let t = signed(file, alg, Some(kid), json!({"sub":kid,"exp":exp_in(3600)}));
        let mut c = raw(format!("{}?token={t}", server.ws_url())).await;
        match c.next().await {
            ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_deref(), Some(kid)),
            other => panic!("{other:?}"),
        }
        // Refreshing with hello works the same.
        c.send_text(&format!(r#"{{"type":"hello","token":"{t}"}}"#))
            .await;
        assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    }
    // The right key type under another key's kid.
    let t = signed(
        "ec256.pem",
        Algorithm::ES256,
        Some("ed-1"),
        json!({"sub":"u","exp":exp_in(60)}),
    );
    let mut c = raw(format!("{}?token={t}", server.ws_url())).await;
    assert_eq!(code(c.next().await), ErrorCode::Unauthorized);
    assert_eq!(c.closed().await, Some(4001));
}

#[tokio::test]
async fn tokens_minted_by_the_cli_with_a_private_key_are_accepted() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-token"))
        .args(["--sub", "cli-ed", "--alg", "EdDSA", "--kid", "ed-1"])
        .args(["--key", &format!("{KEYS}ed25519.pem")])
        .args(["--aud", "chat", "--direct"])
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8(out.stdout).unwrap();
    let jwks = format!("{KEYS}jwks.json");
    let server = start(config(&["--jwt-jwks", &jwks, "--jwt-audience", "chat"])).await;
    let mut c = raw(format!("{}?token={}", server.ws_url(), t.trim())).await;
    match c.next().await {
        ServerFrame::Welcome { user_id, .. } => assert_eq!(user_id.as_deref(), Some("cli-ed")),
        other => panic!("{other:?}"),
    }
    let id = server.state.auth.verify(t.trim()).unwrap();
    assert!(id.grants.may_direct());
    assert!(
        !id.grants.may_subscribe("room:a"),
        "no subscribe claim: the default, nothing"
    );
}

#[tokio::test]
async fn a_key_file_the_server_cannot_use_stops_it_at_startup() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard-server"))
        .args(["--addr", "127.0.0.1:0", "--history", "memory"])
        .args(["--jwt-public-key", &format!("{KEYS}rsa.pem")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--jwt-public-key"), "{stderr}");
    assert!(stderr.contains("a private key"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

#[tokio::test]
async fn direct_needs_the_direct_grant() {
    let server = start(config(&["--jwt-secret", SECRET])).await;
    let connect = |claims: Value| {
        let url = format!("{}?token={}", server.ws_url(), token(claims));
        async move {
            let mut c = raw(url).await;
            match c.next().await {
                ServerFrame::Welcome { client_id, .. } => c.client_id = client_id.0,
                other => panic!("{other:?}"),
            }
            c
        }
    };
    let mut target = connect(json!({"sub":"t","exp":exp_in(3600)})).await;
    let mut without = connect(json!({"sub":"a","exp":exp_in(3600)})).await;
    let mut with = connect(json!({"sub":"b","exp":exp_in(3600),"direct":true})).await;
    let frame = format!(
        r#"{{"type":"direct","to":"{}","data":"hi"}}"#,
        target.client_id
    );
    without.send_text(&frame).await;
    assert_eq!(code(without.next().await), ErrorCode::Forbidden);
    with.send_text(&frame).await;
    with.sync().await;
    match target.next().await {
        ServerFrame::Direct { from, data } => {
            assert_eq!(from.user_id.as_deref(), Some("b"));
            assert_eq!(data, json!("hi"));
        }
        other => panic!("{other:?}"),
    }
    target.sync().await;
}

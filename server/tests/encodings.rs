//! The MessagePack encoding over real sockets: negotiated with `Sec-WebSocket-Protocol`,
//! every frame a binary message whose JSON form is the JSON encoding's frame; a broadcast
//! reaches JSON and MessagePack subscribers alike; bad MessagePack gets `bad_frame`.

mod common;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_protocol::msgpack::{self, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects offering `protocols`; returns the socket and the subprotocol answered.
async fn connect(server: &common::TestServer, protocols: &str) -> (Ws, Option<String>) {
    let mut request = server.ws_url().into_client_request().unwrap();
    if !protocols.is_empty() {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    }
    let (ws, response) = connect_async(request).await.expect("connect");
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_owned());
    (ws, protocol)
}

/// The next frame as JSON, and whether it came as a binary (MessagePack) message.
async fn next(ws: &mut Ws) -> (Value, bool) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("open")
            .expect("readable");
        match msg {
            Message::Text(t) => return (serde_json::from_str(t.as_str()).unwrap(), false),
            Message::Binary(b) => {
                let text = msgpack::to_json(&b, 1 << 20).expect("valid MessagePack");
                return (serde_json::from_str(&text).unwrap(), true);
            }
            _ => {}
        }
    }
}

async fn send_msgpack(ws: &mut Ws, frame: Value) {
    let packed = msgpack::from_json(frame.to_string().as_bytes()).unwrap();
    ws.send(Message::binary(packed)).await.unwrap();
}

#[tokio::test]
async fn messagepack_and_json_clients_share_channels() {
    let server = common::start(common::config(&[])).await;
    let (mut packed, protocol) = connect(
        &server,
        &format!("{SUBPROTOCOL_MSGPACK}, {SUBPROTOCOL_JSON}"),
    )
    .await;
    assert_eq!(protocol.as_deref(), Some(SUBPROTOCOL_MSGPACK));
    let (welcome, binary) = next(&mut packed).await;
    assert!(binary, "a MessagePack connection gets binary frames");
    assert_eq!(welcome["type"], "welcome");

    let (mut plain, protocol) = connect(&server, "").await;
    assert_eq!(
        protocol, None,
        "no subprotocol offered, none answered: JSON"
    );
    let (welcome, binary) = next(&mut plain).await;
    assert!(!binary);
    assert_eq!(welcome["type"], "welcome");

    send_msgpack(
        &mut packed,
        json!({"type": "subscribe", "id": "s", "channel": "room:m"}),
    )
    .await;
    assert_eq!(next(&mut packed).await.0["type"], "subscribed");
    plain
        .send(Message::text(
            json!({"type": "subscribe", "channel": "room:m"}).to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(next(&mut plain).await.0["type"], "subscribed");

    // A publish in MessagePack, with a native MessagePack value as its data.
    let data = json!({"text": "hello", "n": [1, -2, 3.5, null, true], "nested": {"k": "v"}});
    send_msgpack(
        &mut packed,
        json!({"type": "publish", "id": "p", "channel": "room:m", "data": data}),
    )
    .await;
    for (ws, binary) in [(&mut packed, true), (&mut plain, false)] {
        loop {
            let (frame, got_binary) = next(ws).await;
            assert_eq!(got_binary, binary);
            if frame["type"] == "message" {
                assert_eq!(frame["data"], data);
                assert_eq!(frame["channel"], "room:m");
                break;
            }
        }
    }
    // A JSON client offering only JSON is answered with it.
    let (_, protocol) = connect(&server, SUBPROTOCOL_JSON).await;
    assert_eq!(protocol.as_deref(), Some(SUBPROTOCOL_JSON));
}

#[tokio::test]
async fn bad_messagepack_is_answered_bad_frame_and_the_connection_stays() {
    let server = common::start(common::config(&[])).await;
    let (mut packed, _) = connect(&server, SUBPROTOCOL_MSGPACK).await;
    next(&mut packed).await;
    // Truncated map, then two values in one message, then a value that expands past the
    // frame limit as JSON (70,000 nils: 70 KB of MessagePack would be 350 KB of JSON).
    let mut nils = vec![0xdd, 0, 1, 0x11, 0x70];
    nils.extend(std::iter::repeat_n(0xc0u8, 70_000));
    nils.truncate(60_000);
    for bad in [vec![0x82, 0xa4], vec![0xc0, 0xc0], nils] {
        packed.send(Message::binary(bad)).await.unwrap();
        let (frame, binary) = next(&mut packed).await;
        assert!(binary);
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["code"], "bad_frame");
    }
    send_msgpack(&mut packed, json!({"type": "ping", "id": "after"})).await;
    assert_eq!(next(&mut packed).await.0["type"], "pong");
    // A JSON connection still refuses binary messages.
    let (mut plain, _) = connect(&server, "").await;
    next(&mut plain).await;
    plain.send(Message::binary(vec![0xc0])).await.unwrap();
    let (frame, binary) = next(&mut plain).await;
    assert!(!binary);
    assert_eq!(frame["code"], "bad_frame");
}

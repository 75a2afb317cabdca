//! The example app end to end: a real server on a free loopback port, plain HTTP for the
//! app's REST endpoints, and a real WebSocket client (tokio-tungstenite) carrying the login
//! cookie to `/realtime/ws`.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Running {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Running {
    let members = HashMap::from([("vip".to_owned(), vec!["ada".to_owned()])]);
    let (router, sb) = switchboard_example_axum::build(members).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchboard_example_axum::serve(
        listener,
        router,
        sb,
        async {
            let _ = rx.await;
        },
    ));
    Running {
        port,
        stop: Some(tx),
        task,
    }
}

/// One HTTP/1.1 request (closing the connection): status, headers, body.
async fn http(
    port: u16,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = cookie {
        req.push_str(&format!("Cookie: {c}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_owned(), body.to_owned())
}

/// Signs `user` in and returns the cookie to send back.
async fn login(port: u16, user: &str) -> String {
    let (status, head, _) = http(port, "POST", "/login", None, Some(json!({"user": user}))).await;
    assert_eq!(status, 204);
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a cookie");
    let cookie = line.split_once(':').unwrap().1.trim();
    cookie.split(';').next().unwrap().to_owned()
}

async fn connect(port: u16, cookie: Option<&str>) -> Ws {
    let mut req = format!("ws://127.0.0.1:{port}/realtime/ws")
        .into_client_request()
        .unwrap();
    if let Some(c) = cookie {
        req.headers_mut().insert("Cookie", c.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The next frame of type `kind` (others skipped), or the close code if the socket closes.
async fn next_of(ws: &mut Ws, kind: &str) -> Result<Value, u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame within 10 s")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| f.code.into())),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

#[tokio::test]
async fn the_app_authenticates_permits_publishes_and_hears_through_its_own_code() {
    let mut app = start().await;
    let port = app.port;
    let (ada_cookie, bob_cookie) = (login(port, "ada").await, login(port, "bob").await);

    // No cookie: the app's authenticator refuses (an error, then 4001).
    let mut stranger = connect(port, None).await;
    let refused = next_of(&mut stranger, "error").await.unwrap();
    assert_eq!(refused["code"], "unauthorized");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("sign in first")
    );
    assert_eq!(next_of(&mut stranger, "welcome").await, Err(4001));

    // The cookie is the identity.
    let mut ada = connect(port, Some(&ada_cookie)).await;
    assert_eq!(
        next_of(&mut ada, "welcome").await.unwrap()["user_id"],
        "ada"
    );
    let mut bob = connect(port, Some(&bob_cookie)).await;
    let bob_welcome = next_of(&mut bob, "welcome").await.unwrap();
    assert_eq!(bob_welcome["user_id"], "bob");

    // Rooms: the lobby is open, the vip room is ada's only (the app's member list).
    send(
        &mut ada,
        json!({"type": "subscribe", "id": "s1", "channel": "room:lobby", "presence": {}}),
    )
    .await;
    assert_eq!(
        next_of(&mut ada, "subscribed").await.unwrap()["channel"],
        "room:lobby"
    );
    send(
        &mut bob,
        json!({"type": "subscribe", "id": "s2", "channel": "room:vip"}),
    )
    .await;
    let forbidden = next_of(&mut bob, "error").await.unwrap();
    assert_eq!(
        (forbidden["code"].as_str(), forbidden["id"].as_str()),
        (Some("forbidden"), Some("s2"))
    );
    send(
        &mut bob,
        json!({"type": "publish", "id": "p0", "channel": "room:vip", "data": "let me in"}),
    )
    .await;
    assert_eq!(
        next_of(&mut bob, "error").await.unwrap()["code"],
        "forbidden"
    );
    send(&mut bob, json!({"type": "request", "id": "h1", "method": "history", "params": {"channel": "room:vip"}})).await;
    assert_eq!(
        next_of(&mut bob, "error").await.unwrap()["code"],
        "forbidden",
        "history asks too"
    );
    send(
        &mut ada,
        json!({"type": "subscribe", "id": "s3", "channel": "room:vip"}),
    )
    .await;
    assert_eq!(
        next_of(&mut ada, "subscribed").await.unwrap()["channel"],
        "room:vip"
    );
    // The channel list shows each caller only the rooms it may enter.
    let list = |ws: &'static str| json!({"type": "request", "id": ws, "method": "channels"});
    send(&mut bob, list("c1")).await;
    let seen = next_of(&mut bob, "response").await.unwrap()["result"].clone();
    assert_eq!(seen, json!([{"channel": "room:lobby", "subscribers": 1}]));
    send(&mut ada, list("c2")).await;
    let seen = next_of(&mut ada, "response").await.unwrap()["result"].clone();
    assert_eq!(seen.as_array().unwrap().len(), 2, "{seen}");

    // The app's REST endpoint publishes as the server: numbered, delivered, stored.
    let (status, _, body) = http(
        port,
        "POST",
        "/rooms/lobby/messages",
        Some(&bob_cookie),
        Some(json!({"text": "hi from REST"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let offset = serde_json::from_str::<Value>(&body).unwrap()["offset"]
        .as_u64()
        .unwrap();
    let got = next_of(&mut ada, "message").await.unwrap();
    assert_eq!(got["data"], json!({"user": "bob", "text": "hi from REST"}));
    assert_eq!(got["offset"].as_u64(), Some(offset));
    assert!(got.get("from").is_none(), "a server publish has no sender");
    let (status, _, _) = http(
        port,
        "POST",
        "/rooms/vip/messages",
        Some(&bob_cookie),
        Some(json!({"text": "x"})),
    )
    .await;
    assert_eq!(status, 403);

    // A client publish: acked, and the app's `published` hook stored both lines.
    send(
        &mut ada,
        json!({"type": "publish", "id": "p1", "channel": "room:lobby", "data": "hello"}),
    )
    .await;
    let ack = next_of(&mut ada, "ack").await.unwrap();
    assert_eq!(ack["offset"].as_u64(), Some(offset + 1));
    let (status, _, _) = http(port, "GET", "/rooms/vip/lines", Some(&bob_cookie), None).await;
    assert_eq!(status, 403, "a room's lines are its members'");
    let (_, _, body) = http(port, "GET", "/rooms/lobby/lines", Some(&bob_cookie), None).await;
    let lines: Vec<Value> = serde_json::from_str(&body).unwrap();
    let stored: Vec<_> = lines
        .iter()
        .map(|l| (l["offset"].as_u64().unwrap(), l["data"].clone()))
        .collect();
    assert_eq!(
        stored,
        [
            (offset, json!({"user": "bob", "text": "hi from REST"})),
            (offset + 1, json!("hello"))
        ]
    );

    // Presence and a user's connections, from the app's handlers.
    let (status, _, _) = http(port, "GET", "/rooms/lobby/members", None, None).await;
    assert_eq!(status, 403, "signed-in users only");
    let (_, _, body) = http(port, "GET", "/rooms/lobby/members", Some(&bob_cookie), None).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!(["ada"])
    );
    let (_, _, body) = http(
        port,
        "POST",
        "/users/ada/notify",
        Some(&bob_cookie),
        Some(json!({"note": "ping"})),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"connections": 1})
    );
    let direct = next_of(&mut ada, "direct").await.unwrap();
    assert_eq!(
        (direct["from"]["client_id"].as_str(), &direct["data"]),
        (
            Some("server"),
            &json!({"from": "bob", "data": {"note": "ping"}})
        )
    );

    // A method with the app's state; the hooks counted the connections.
    send(
        &mut ada,
        json!({"type": "request", "id": "w1", "method": "whoami"}),
    )
    .await;
    let result = next_of(&mut ada, "response").await.unwrap();
    assert_eq!(result["result"], json!({"user": "ada", "online": 2}));
    drop(bob);
    let mut online = Value::Null;
    for i in 0..100 {
        send(
            &mut ada,
            json!({"type": "request", "id": format!("w{}", i + 2), "method": "whoami"}),
        )
        .await;
        online = next_of(&mut ada, "response").await.unwrap()["result"]["online"].clone();
        if online == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(online, 1, "the disconnected hook ran");

    // The app's shutdown closes Switchboard's connections with 1001.
    app.stop.take().unwrap().send(()).unwrap();
    assert_eq!(next_of(&mut ada, "welcome").await, Err(1001));
    tokio::time::timeout(WAIT, app.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

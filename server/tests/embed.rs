//! The embedding API (`server/src/embed.rs`) on its own, served by the test's own
//! `axum::serve` under a prefix: the app's authenticator before the built-in token check
//! (and falling back to it), grants before the app's permissions, every hook with what it
//! is told, `send_to_user` to all of a user's connections, the optional routes, and the
//! app's shutdown.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_server::auth::{Grants, Identity};
use switchboard_server::embed::Parts;
use switchboard_server::embed::{
    Authenticator, BoxFuture, Caller, Hooks, PublishedMessage, Refusal,
};
use switchboard_server::protocol::Channel;
use switchboard_server::{Config, Switchboard};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "embed-test-secret";

/// `X-User: <name>` admits as that user (only `room:*`); `X-User: -` is refused; no header
/// leaves it to the built-in token check.
struct HeaderAuth;

impl Authenticator for HeaderAuth {
    fn authenticate<'a>(
        &'a self,
        request: &'a Parts,
    ) -> BoxFuture<'a, Result<Option<Identity>, Refusal>> {
        let user = request
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            match user.as_deref() {
                None => Ok(None),
                Some("-") => Err(Refusal("no such user".into())),
                Some(u) => Ok(Some(Identity::user(u).with_grants(Grants {
                    subscribe: vec!["room:*".into()],
                    publish: vec!["room:*".into()],
                    direct: true,
                }))),
            }
        })
    }
}

/// Every hook call, as text.
#[derive(Default, Clone)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Hooks for Log {
    fn connected(&self, caller: &Caller) {
        self.push(format!(
            "connected {}",
            caller.user_id.as_deref().unwrap_or("?")
        ));
    }
    fn disconnected(&self, caller: &Caller) {
        self.push(format!(
            "disconnected {}",
            caller.user_id.as_deref().unwrap_or("?")
        ));
    }
    fn joined(&self, channel: &Channel, caller: &Caller) {
        self.push(format!(
            "joined {channel} {}",
            caller.user_id.as_deref().unwrap_or("?")
        ));
    }
    fn left(&self, channel: &Channel, caller: &Caller) {
        self.push(format!(
            "left {channel} {}",
            caller.user_id.as_deref().unwrap_or("?")
        ));
    }
    fn published(&self, m: &PublishedMessage<'_>) {
        let from = m
            .from
            .and_then(|s| s.user_id.clone())
            .unwrap_or("server".into());
        let offset = m.position.map(|p| p.offset);
        self.push(format!(
            "published {} {} {from} {offset:?}",
            m.channel,
            m.data.get()
        ));
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(port: u16, user: Option<&str>, token: Option<&str>) -> Ws {
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    let mut req = format!("ws://127.0.0.1:{port}/rt/ws{query}")
        .into_client_request()
        .unwrap();
    if let Some(u) = user {
        req.headers_mut().insert("x-user", u.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

async fn next_of(ws: &mut Ws, kind: &str) -> Result<Value, u16> {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame")
        {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(f))) => return Err(f.map_or(1005, |f| f.code.into())),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

// Multi-threaded: the metrics check reads with a blocking socket while the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_switchboard_answers_to_the_apps_code() {
    let log = Log::default();
    let config = Config::from_args([
        "--history",
        "memory",
        "--jwt-secret",
        SECRET,
        "--api-key",
        "k",
    ])
    .unwrap();
    let sb = Switchboard::builder(config)
        .authenticator(HeaderAuth)
        .hooks(log.clone())
        .with_metrics()
        .with_publish_api()
        .build()
        .unwrap();
    let app = Router::new().nest("/rt", sb.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let closing = sb.clone();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
            // Every WebSocket is told 1001 before the server stops.
            closing.shutdown().await;
        })
        .await
    });

    // The app's refusal: its message, then 4001.
    let mut refused = connect(port, Some("-"), None).await;
    let error = next_of(&mut refused, "error").await.unwrap();
    assert_eq!(
        (error["code"].as_str(), error["message"].as_str()),
        (Some("unauthorized"), Some("no such user"))
    );
    assert_eq!(next_of(&mut refused, "welcome").await, Err(4001));
    // No header: the built-in check decides; a valid token gets in as its subject.
    let token = common::token(SECRET, "carol");
    let mut carol = connect(port, None, Some(&token)).await;
    assert_eq!(
        next_of(&mut carol, "welcome").await.unwrap()["user_id"],
        "carol"
    );

    let mut ada = connect(port, Some("ada"), None).await;
    assert_eq!(
        next_of(&mut ada, "welcome").await.unwrap()["user_id"],
        "ada"
    );
    let mut ada2 = connect(port, Some("ada"), None).await;
    next_of(&mut ada2, "welcome").await.unwrap();
    // A connection the app admitted takes no token later: a token's grants must not
    // replace the app's.
    send(
        &mut ada2,
        json!({"type": "hello", "token": common::token(SECRET, "ada")}),
    )
    .await;
    let refused_hello = next_of(&mut ada2, "error").await.unwrap();
    assert_eq!(refused_hello["code"], "unauthorized");
    send(
        &mut ada2,
        json!({"type": "subscribe", "id": "n", "channel": "news"}),
    )
    .await;
    assert_eq!(
        next_of(&mut ada2, "error").await.unwrap()["code"],
        "forbidden",
        "still the app's grants"
    );
    // The app's grants bound what its users may do.
    send(
        &mut ada,
        json!({"type": "subscribe", "id": "x", "channel": "news"}),
    )
    .await;
    assert_eq!(
        next_of(&mut ada, "error").await.unwrap()["code"],
        "forbidden"
    );
    send(
        &mut ada,
        json!({"type": "subscribe", "id": "j", "channel": "room:a", "presence": {}}),
    )
    .await;
    next_of(&mut ada, "subscribed").await.unwrap();
    send(
        &mut ada,
        json!({"type": "publish", "id": "p", "channel": "room:a", "data": 1}),
    )
    .await;
    next_of(&mut ada, "ack").await.unwrap();
    let server_pub = sb.publish("room:a", &json!({"n": 2})).await.unwrap();
    assert_eq!(server_pub.position.unwrap().offset, 2);
    let got = next_of(&mut ada, "message").await.unwrap();
    assert_eq!(got["data"], 1);
    assert_eq!(
        next_of(&mut ada, "message").await.unwrap()["data"],
        json!({"n": 2})
    );
    assert_eq!(sb.presence("room:a").await.unwrap()[0].user_id, "ada");
    // To every connection of the user.
    assert_eq!(sb.send_to_user("ada", &"hi").await.unwrap(), 2);
    for ws in [&mut ada, &mut ada2] {
        let direct = next_of(ws, "direct").await.unwrap();
        assert_eq!(
            (
                direct["from"]["client_id"].as_str(),
                direct["data"].as_str()
            ),
            (Some("server"), Some("hi"))
        );
    }
    assert_eq!(sb.send_to_user("nobody", &"hi").await.unwrap(), 0);
    // The optional routes, under the prefix.
    let (status, body) = common::cluster::http_get(port, "/rt/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("switchboard_connections 3"), "{body}");
    assert_eq!(
        common::cluster::http_get(port, "/metrics").0,
        404,
        "nothing outside the prefix"
    );

    send(
        &mut ada,
        json!({"type": "unsubscribe", "id": "u", "channel": "room:a"}),
    )
    .await;
    next_of(&mut ada, "unsubscribed").await.unwrap();
    drop(ada2);
    // The app stops: its connections are closed with 1001, and every hook was told.
    stop.send(()).unwrap();
    assert_eq!(next_of(&mut ada, "welcome").await, Err(1001));
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let lines = log.lines();
    for want in [
        "connected carol",
        "connected ada",
        "joined room:a ada",
        "published room:a 1 ada Some(1)",
        r#"published room:a {"n":2} server Some(2)"#,
        "left room:a ada",
        "disconnected ada",
        "disconnected carol",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want:?} not in {lines:#?}"
        );
    }
    assert_eq!(
        lines.iter().filter(|l| *l == "disconnected ada").count(),
        2,
        "both of ada's"
    );
    assert!(
        !lines.iter().any(|l| l.contains("connected -")),
        "a refused connection is not one"
    );
}

/// Serves `sb` nested at `/rt` on a free port; returns the port.
async fn serve(sb: &Switchboard) -> u16 {
    let app = Router::new().nest("/rt", sb.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    port
}

/// Two embedded nodes on one real Redis: `send_to_user` on one reaches the user's
/// connections on both, and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_user_reaches_every_node() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let node = || {
        let config = Config::from_args(["--redis-url", &redis.url()]).unwrap();
        Switchboard::builder(config)
            .authenticator(HeaderAuth)
            .build()
            .unwrap()
    };
    let (a, b) = (node(), node());
    let (port_a, port_b) = (serve(&a).await, serve(&b).await);
    let mut on_a = connect(port_a, Some("ada"), None).await;
    next_of(&mut on_a, "welcome").await.unwrap();
    let mut on_b = connect(port_b, Some("ada"), None).await;
    next_of(&mut on_b, "welcome").await.unwrap();
    // Node b listens on the shared channel once its background task has run.
    let mut sent = 0;
    for _ in 0..50 {
        sent = a.send_to_user("ada", &json!({"n": 1})).await.unwrap();
        if sent == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sent, 2, "one connection on each node");
    for ws in [&mut on_a, &mut on_b] {
        let direct = next_of(ws, "direct").await.unwrap();
        assert_eq!(direct["data"], json!({"n": 1}));
    }
    assert_eq!(b.send_to_user("nobody", &1).await.unwrap(), 0);
}

/// Refuses `room:slow` by never answering, allows the rest.
struct Slow;

impl switchboard_server::embed::Permissions for Slow {
    fn may_subscribe<'a>(&'a self, _: &'a Caller, channel: &'a Channel) -> BoxFuture<'a, bool> {
        let slow = channel.as_str() == "room:slow";
        Box::pin(async move {
            if slow {
                std::future::pending::<()>().await;
            }
            true
        })
    }
}

/// Without token keys, an authenticator's `None` is a refusal (never the development
/// default of anonymous access with every grant); a permission check that does not answer
/// is `unavailable` after the timeout, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_silent_fallbacks() {
    let sb = Switchboard::builder(Config::from_args(["--history", "memory"]).unwrap())
        .authenticator(HeaderAuth)
        .permissions(Slow)
        .build()
        .unwrap();
    let port = serve(&sb).await;
    let mut nobody = connect(port, None, None).await;
    let error = next_of(&mut nobody, "error").await.unwrap();
    assert_eq!(
        (error["code"].as_str(), error["message"].as_str()),
        (Some("unauthorized"), Some("not signed in"))
    );
    assert_eq!(next_of(&mut nobody, "welcome").await, Err(4001));

    let mut ada = connect(port, Some("ada"), None).await;
    next_of(&mut ada, "welcome").await.unwrap();
    let asked = std::time::Instant::now();
    send(
        &mut ada,
        json!({"type": "subscribe", "id": "s", "channel": "room:slow"}),
    )
    .await;
    let error = next_of(&mut ada, "error").await.unwrap();
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("unavailable"), Some("s"))
    );
    assert!(asked.elapsed() >= switchboard_server::embed::PERMISSION_TIMEOUT);
    send(
        &mut ada,
        json!({"type": "subscribe", "id": "t", "channel": "room:fast"}),
    )
    .await;
    assert_eq!(
        next_of(&mut ada, "subscribed").await.unwrap()["channel"],
        "room:fast"
    );
}

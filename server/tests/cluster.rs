//! Several real server processes on one real `redis-server`: clients on different nodes
//! see each other's messages, presence, history, `direct`s and channels; a node killed
//! with SIGKILL takes its members along within the presence lease; Redis restarted
//! mid-stream: nodes say so, and delivery resumes with nothing acked lost or repeated.
//! (The cross-node chaos run, through nginx, is in `chaos.rs`.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cluster::Node;
use common::native::{WAIT, live, message, next};
use common::redis::Redis;
use futures::StreamExt;
use serde_json::{Value, json};
use switchboard_client::native::{Client, ClientError, NativeOptions, SubItem};
use switchboard_client::{Backoff, Options};
use switchboard_protocol::PresenceAction;

fn fast_reconnect() -> NativeOptions {
    NativeOptions {
        core: Options {
            backoff: Backoff {
                base: Duration::from_millis(50),
                max: Duration::from_millis(300),
                ..Backoff::default()
            },
            ..Options::default()
        },
        ..NativeOptions::default()
    }
}

async fn connected(url: String) -> Client {
    let client = Client::connect(url, fast_reconnect());
    tokio::time::timeout(WAIT, client.connected())
        .await
        .expect("connected within 10 s")
        .unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_different_nodes_share_messages_presence_history_directs_and_channels() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &[])).collect();
    let ada = connected(nodes[0].url()).await;
    let bob = connected(nodes[1].url()).await;
    let cy = connected(nodes[2].url()).await;

    let mut a_room = ada
        .join::<Value, _>("room:x", &json!({"name": "Ada"}))
        .unwrap();
    live(&mut a_room).await;
    let mut b_room = bob
        .join::<Value, _>("room:x", &json!({"name": "Bob"}))
        .unwrap();
    live(&mut b_room).await;
    // Ada, on node 0, hears Bob join on node 1.
    loop {
        if let SubItem::Presence {
            action,
            member,
            count,
        } = next(&mut a_room).await
        {
            assert_eq!((action, count), (PresenceAction::Join, 2));
            assert_eq!(member.info.to_value()["name"], "Bob");
            break;
        }
    }
    // A message from node 1 reaches node 0, numbered in the one stream.
    let offset = b_room
        .publish(&json!("hi from bob"))
        .unwrap()
        .await
        .unwrap();
    let got = message(&mut a_room).await;
    assert_eq!(got.data, json!("hi from bob"));
    assert_eq!(got.offset, offset);
    let bob_id = got.from.unwrap().client_id;

    // Node 2 answers presence and history for the whole cluster.
    let presence: Value = cy
        .request("presence", &json!({"channel": "room:x"}))
        .await
        .unwrap();
    assert_eq!(presence["count"], 2, "{presence}");
    let history: Value = cy
        .request("history", &json!({"channel": "room:x"}))
        .await
        .unwrap();
    assert_eq!(history["messages"][0]["data"], "hi from bob", "{history}");
    // Each node writes its channel counts within half a second of a change.
    let want = json!([{"channel": "room:x", "subscribers": 2}]);
    let mut channels = Value::Null;
    for _ in 0..40 {
        channels = cy.request("channels", &json!(null)).await.unwrap();
        if channels == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(channels, want);

    // A direct from node 2 to Bob on node 1; to a connection that is gone: target_gone.
    let mut inbox = bob.directs::<String>();
    cy.direct(bob_id.as_str(), "psst").unwrap();
    let (_, data) = tokio::time::timeout(WAIT, inbox.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data.unwrap(), "psst");
    let mut events = cy.events();
    let nobody = format!("{}.nobody", bob_id.as_str().split('.').next().unwrap());
    cy.direct(&nobody, "hello?").unwrap();
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("events");
            let text = format!("{event:?}");
            if text.contains("target_gone") || text.contains("TargetGone") {
                return text;
            }
        }
    })
    .await
    .expect("the sender is told the target is gone");
    assert!(refused.contains("nobody"), "{refused}");

    // Bob leaves: Ada, on another node, hears it.
    drop(b_room);
    loop {
        if let SubItem::Presence {
            action: PresenceAction::Leave,
            member,
            count,
        } = next(&mut a_room).await
        {
            assert_eq!((member.user_id.is_empty(), count), (false, 1));
            break;
        }
    }
    // /healthz and /metrics on a node report Redis.
    assert_eq!(nodes[0].get("/healthz"), (200, "ok".into()));
    assert!(
        nodes[0]
            .get("/metrics")
            .1
            .contains("switchboard_redis_up 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_members_of_a_node_killed_with_sigkill_leave_within_the_lease() {
    let Some(redis) = Redis::start() else { return };
    let ttl = ["--presence-ttl", "3s"];
    let a = Node::start(&redis.url(), &ttl);
    let mut b = Node::start(&redis.url(), &ttl);
    let ada = connected(a.url()).await;
    let bob = connected(b.url()).await;
    let mut a_room = ada
        .join::<Value, _>("room:k", &json!({"name": "Ada"}))
        .unwrap();
    live(&mut a_room).await;
    let mut b_room = bob
        .join::<Value, _>("room:k", &json!({"name": "Bob"}))
        .unwrap();
    live(&mut b_room).await;
    // Bob's lease is renewed while his node lives (twice the lease here).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let presence: Value = ada
        .request("presence", &json!({"channel": "room:k"}))
        .await
        .unwrap();
    assert_eq!(presence["count"], 2, "{presence}");
    bob.close();
    b.kill();
    let killed = std::time::Instant::now();
    loop {
        match next(&mut a_room).await {
            SubItem::Presence {
                action: PresenceAction::Leave,
                count,
                member,
            } => {
                assert_eq!(count, 1);
                assert_eq!(member.info.to_value()["name"], "Bob");
                break;
            }
            SubItem::Presence {
                action: PresenceAction::Join,
                ..
            }
            | SubItem::Members(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let after = killed.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "gone within the 3 s lease and one sweep: {after:?}"
    );
    println!("a SIGKILLed node's member left after {after:?} (lease 3 s)");
    let presence: Value = ada
        .request("presence", &json!({"channel": "room:k"}))
        .await
        .unwrap();
    assert_eq!(presence["count"], 1, "no ghost: {presence}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_stream_delivery_resumes_with_nothing_lost_or_repeated() {
    let Some(mut redis) = Redis::start_with(true) else {
        return;
    };
    let a = Node::start(&redis.url(), &[]);
    let b = Node::start(&redis.url(), &[]);
    let publisher = connected(a.url()).await;
    let watcher = connected(b.url()).await;
    let mut sub = watcher.subscribe::<u32>("feed");
    live(&mut sub).await;

    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::new()));
    let publishing = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut refused = 0u32;
            for i in 0..300u32 {
                // A publish refused while Redis is down was never acked: send it again.
                loop {
                    match publisher.publish("feed", &i).unwrap().await {
                        Ok(Some(offset)) => {
                            acked.lock().unwrap().insert(offset, i);
                            break;
                        }
                        Err(ClientError::Publish(_)) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("{other:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            refused
        })
    };
    // Let some through, then take Redis away for a second.
    while acked.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.kill();
    let mut said_down = false;
    for _ in 0..50 {
        let (status, body) = a.get("/healthz");
        if status == 503 {
            assert!(body.contains("redis"), "{body}");
            said_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said_down, "/healthz says Redis is unreachable");
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    let refused = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publishing finishes")
        .unwrap();
    assert_eq!(
        refused, 0,
        "the client retries unavailable publishes by itself"
    );
    let acked: Vec<u32> = acked.lock().unwrap().values().copied().collect();
    assert_eq!(
        acked,
        (0..300).collect::<Vec<_>>(),
        "acked in order, once each"
    );
    let mut got = Vec::new();
    while got.len() < acked.len() {
        match tokio::time::timeout(WAIT, sub.next()).await {
            Ok(Some(SubItem::Message(Ok(m)))) => got.push(m.data),
            Ok(Some(SubItem::Message(Err(e)))) => panic!("{e:?}"),
            Ok(Some(_)) => {}
            other => panic!("stopped after {} messages: {other:?}", got.len()),
        }
    }
    assert_eq!(
        got, acked,
        "every acked message once, in order, across the outage"
    );
    assert_eq!(a.get("/healthz").0, 200);
    // The publisher was told (and its client sent them again by itself).
    let metrics = a.get("/metrics").1;
    let unavailable = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_errors_total{code=\"unavailable\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        unavailable > 0,
        "publishes during the outage were answered unavailable"
    );
    println!("publishes answered unavailable during the outage: {unavailable}");
    assert!(
        b.get("/metrics")
            .1
            .contains("switchboard_redis_outages_total 1")
    );
}

/// Opens a WebSocket to `url` from the local address `from` (127.0.0.x) and returns the
/// close code if the server closes it before `welcome`, or `None` once welcomed.
async fn closed_before_welcome(url: &str, from: [u8; 4]) -> Option<u16> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let remote: std::net::SocketAddr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(from), 0).into())
        .unwrap();
    let stream = socket.connect(remote).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => {
                // Keep it open: it holds its address's slot.
                tokio::spawn(async move { while ws.next().await.is_some() {} });
                return None;
            }
            Some(Ok(Message::Close(Some(frame)))) => return Some(frame.code.into()),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

/// The nginx example passes the client's address in `X-Forwarded-For`, and a node started
/// with `--trusted-proxies` counts connections by it: one connection per address here, so
/// two clients on different addresses both get in through the one proxy, and a second
/// connection from the first address is refused (4113).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_a_node_counts_clients_by_their_own_address() {
    let Some(redis) = Redis::start() else { return };
    let node = Node::start(&redis.url(), &["--max-connections-per-ip", "1"]);
    // Every upstream of the example pointed at this one node.
    let Some(nginx) = common::cluster::Nginx::start(&[node.port, node.port, node.port]) else {
        return;
    };
    let url = nginx.url();
    assert_eq!(closed_before_welcome(&url, [127, 0, 0, 2]).await, None);
    assert_eq!(
        closed_before_welcome(&url, [127, 0, 0, 3]).await,
        None,
        "another address"
    );
    assert_eq!(
        closed_before_welcome(&url, [127, 0, 0, 2]).await,
        Some(4113),
        "the same address again: over its cap"
    );
}

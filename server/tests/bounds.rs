//! What one client can cost others and the server: direct messages within the receiver's
//! own budget, outbound queues bounded in bytes, size caps on ids, the session still
//! reading and keeping its deadlines under sustained fan-out, unguessable ids, and a
//! shutdown that writes what was queued before closing.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Client, Next, config, start};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;
use switchboard_protocol::{CloseCode, ErrorCode, ServerFrame};
use switchboard_server::broker::Publication;
use switchboard_server::clock::now_ms;

fn publication(channel: &str, data: serde_json::Value) -> Publication {
    Publication {
        channel: channel.into(),
        dedupe_key: None,
        from: None,
        data: data.into(),
        ephemeral: false,
        except: None,
    }
}

async fn subscribe(c: &mut Client, channel: &str) {
    c.send_text(&format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#))
        .await;
    assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
}

#[tokio::test]
async fn client_and_session_ids_are_random_and_independent() {
    let server = start(config(&[])).await;
    let mut ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .unwrap();
        let mut c = Client {
            ws,
            client_id: String::new(),
        };
        match c.next().await {
            ServerFrame::Welcome {
                client_id,
                session_id,
                ..
            } => {
                assert_eq!(client_id.as_str().len(), 22, "128 random bits: {client_id}");
                assert_eq!(session_id.as_str().len(), 22);
                assert!(!session_id.as_str().contains(client_id.as_str()));
                assert!(ids.insert(client_id.0.clone()) && ids.insert(session_id.0.clone()));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn ids_and_presence_over_their_caps_are_refused_too_large() {
    let server = start(config(&[])).await;
    let mut c = Client::connect(&server).await;
    let long = "i".repeat(65);
    c.send_text(&format!(
        r#"{{"type":"publish","id":"{long}","channel":"a","data":1}}"#
    ))
    .await;
    match c.next().await {
        ServerFrame::Error { id, code, .. } => assert_eq!((id, code), (None, ErrorCode::TooLarge)),
        other => panic!("{other:?}"),
    }
    let info = json!({ "bio": "b".repeat(1100) });
    c.send_text(&format!(
        r#"{{"type":"subscribe","channel":"room:a","presence":{info}}}"#
    ))
    .await;
    assert!(matches!(
        c.next().await,
        ServerFrame::Error {
            code: ErrorCode::TooLarge,
            ..
        }
    ));
    assert!(server.state.hub.channels().is_empty());
    c.sync().await;
}

/// Five senders flood one receiver that pauses reading with large `direct`s: the
/// receiver's direct budget fills, the senders are told `target_busy`, and the receiver
/// is not closed: when it reads again, its connection is fine.
#[tokio::test]
async fn directs_cannot_get_a_receiver_closed() {
    let server = start(config(&[
        "--direct-queue-bytes",
        "70000",
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
    ]))
    .await;
    let mut receiver = Client::connect(&server).await;
    subscribe(&mut receiver, "news").await;
    let to = receiver.client_id.clone();
    let blob = "d".repeat(60_000);
    let frame = format!(r#"{{"type":"direct","to":"{to}","data":"{blob}"}}"#);
    let mut senders = Vec::new();
    for _ in 0..5 {
        let mut s = Client::connect(&server).await;
        senders.push(tokio::spawn({
            let frame = frame.clone();
            async move {
                // Far more than the loopback buffers hold.
                for _ in 0..200 {
                    s.send_text(&frame).await;
                }
                let mut busy = 0;
                for f in s.collect().await {
                    match f {
                        ServerFrame::Error {
                            code: ErrorCode::TargetBusy,
                            ..
                        } => busy += 1,
                        other => panic!("{other:?}"),
                    }
                }
                busy
            }
        }));
    }
    let mut busy = 0;
    for s in senders {
        busy += s.await.unwrap();
    }
    assert!(busy > 0, "the receiver's budget filled");
    let refused = server
        .state
        .hub
        .metrics()
        .directs_refused
        .load(Ordering::Relaxed);
    assert_eq!(refused, busy);
    // Its channel messages still arrive, after the directs that fit.
    server
        .state
        .hub
        .publish(publication("news", json!("still here")))
        .await
        .unwrap();
    let mut directs = 0;
    loop {
        match receiver.read().await {
            Next::Frame(ServerFrame::Direct { .. }) => directs += 1,
            Next::Frame(ServerFrame::Message { data, .. }) => {
                assert_eq!(data, json!("still here"));
                break;
            }
            other => panic!("after {directs} directs: {other:?}"),
        }
    }
    assert_eq!(directs as u64 + busy, 5 * 200);
    assert_eq!(
        server
            .state
            .hub
            .metrics()
            .slow_consumers
            .load(Ordering::Relaxed),
        0
    );
    receiver.sync().await;
}

/// The queue's byte bound closes a subscriber that does not read, long before its frame
/// bound (100,000 here) or the write timeout could.
#[tokio::test]
async fn the_queue_is_bounded_in_bytes() {
    let server = start(config(&[
        "--queue-capacity",
        "100000",
        "--queue-bytes",
        "200000",
        "--write-timeout",
        "60s",
    ]))
    .await;
    let mut stuck = Client::connect(&server).await;
    subscribe(&mut stuck, "bulk").await;
    let hub = server.state.hub.clone();
    let chunk = "z".repeat(60_000);
    let slow = || hub.metrics().slow_consumers.load(Ordering::Relaxed);
    for _ in 0..2_000 {
        hub.publish(publication("bulk", json!(chunk)))
            .await
            .unwrap();
        if slow() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(slow(), 1);
    assert!(hub.queue_depths().max_bytes <= 200_000 + 61_000);
    assert_eq!(stuck.closed().await, Some(4108));
}

fn backlog_config() -> Vec<&'static str> {
    vec![
        "--queue-capacity",
        "1000000",
        "--queue-bytes",
        "200000000",
        "--jwt-secret",
        "flood-secret",
        "--allow-anonymous",
    ]
}

/// Queues `n` messages for the channel's subscribers at once, in process.
async fn backlog(server: &common::TestServer, channel: &str, n: usize) {
    for i in 0..n {
        server
            .state
            .hub
            .publish(publication(channel, json!(i)))
            .await
            .unwrap();
    }
}

/// A subscriber with a huge backlog asks to unsubscribe: its request is read between
/// batches of queued frames, not after the whole backlog.
#[tokio::test]
async fn a_flooded_subscriber_is_still_read() {
    const BACKLOG: usize = 200_000;
    let server = start(config(&backlog_config())).await;
    let mut sub = Client::connect(&server).await;
    subscribe(&mut sub, "flood").await;
    backlog(&server, "flood", BACKLOG).await;
    sub.send_text(r#"{"type":"unsubscribe","channel":"flood"}"#)
        .await;
    let mut messages = 0;
    loop {
        match sub.next().await {
            ServerFrame::Message { .. } => messages += 1,
            ServerFrame::Unsubscribed { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        messages < BACKLOG * 3 / 4,
        "the unsubscribe was read only after {messages} of {BACKLOG} queued messages"
    );
}

/// The same backlog cannot keep an expired token's connection open.
#[tokio::test]
async fn a_flooded_subscriber_still_expires() {
    const BACKLOG: usize = 200_000;
    let server = start(config(&backlog_config())).await;
    let claims = json!({"sub":"u1","exp": now_ms() / 1000 + 2, "subscribe":["*"]});
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(b"flood-secret"),
    )
    .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", server.ws_url()))
        .await
        .unwrap();
    let mut sub = Client {
        ws,
        client_id: String::new(),
    };
    assert!(matches!(sub.next().await, ServerFrame::Welcome { .. }));
    subscribe(&mut sub, "flood").await;
    backlog(&server, "flood", BACKLOG).await;
    // Read slowly enough that the backlog outlives the token.
    let mut messages = 0;
    let code = loop {
        match sub.read().await {
            Next::Frame(ServerFrame::Message { .. }) => {
                messages += 1;
                if messages % 1000 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Next::Frame(other) => panic!("{other:?}"),
            Next::Closed(code) => break code,
        }
    };
    assert_eq!(code, Some(4301));
    assert!(messages < BACKLOG, "closed after {messages} messages");
}

/// On shutdown, what is already queued for a connection (acked messages) is written
/// before the 1001 close.
#[tokio::test]
async fn shutdown_writes_what_is_queued_before_closing() {
    for _ in 0..10 {
        let mut server = start(config(&[])).await;
        let mut sub = Client::connect(&server).await;
        subscribe(&mut sub, "last-words").await;
        // Queued in process, and the shutdown's close requested before the session ran.
        backlog(&server, "last-words", 100).await;
        server.state.hub.close_all(CloseCode::GOING_AWAY);
        server.shutdown();
        let mut got = Vec::new();
        let code = loop {
            match sub.read().await {
                Next::Frame(ServerFrame::Message { data, .. }) => got.push(data),
                Next::Frame(other) => panic!("{other:?}"),
                Next::Closed(code) => break code,
            }
        };
        assert_eq!(code, Some(1001));
        assert_eq!(got, (0..100).map(|i| json!(i)).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_full_presence_set_refuses_new_members() {
    let server = start(config(&["--max-presence-members", "2"])).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(&server).await;
        c.send_text(r#"{"type":"subscribe","channel":"room:f","presence":{}}"#)
            .await;
        assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
        clients.push(c);
    }
    let mut third = Client::connect(&server).await;
    third
        .send_text(r#"{"type":"subscribe","channel":"room:f","presence":{}}"#)
        .await;
    assert!(matches!(
        third.next().await,
        ServerFrame::Error {
            code: ErrorCode::PresenceFull,
            ..
        }
    ));
    // Without presence it may still listen.
    subscribe(&mut third, "room:f").await;
    let members = server.state.hub.presence(&"room:f".into()).await.unwrap();
    assert_eq!(members.len(), 2);
    third.sync().await;
}

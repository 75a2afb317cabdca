//! The native client (switchboard-client, feature `native`) against the real server: typed
//! publish, subscribe and request, acks awaited, rooms, directs, and a queue that outlives
//! a server restart.

mod common;

use std::time::Duration;

use common::native::{WAIT, live, message, next};
use common::{config, start};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_client::native::{Client, ClientError, NativeOptions, SubItem};
use switchboard_client::{ConnState, SubState};
use switchboard_protocol::PresenceAction;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chat {
    text: String,
}

#[tokio::test]
async fn typed_publish_subscribe_request_and_acks() {
    let server = start(config(&[])).await;
    let ada = Client::connect(server.ws_url(), NativeOptions::default());
    let grace = Client::connect(server.ws_url(), NativeOptions::default());
    tokio::time::timeout(WAIT, grace.connected())
        .await
        .unwrap()
        .unwrap();
    let mut room = grace.subscribe::<Chat>("room:typed");
    live(&mut room).await;
    let offset = tokio::time::timeout(
        WAIT,
        ada.publish("room:typed", &Chat { text: "hi".into() })
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(offset, Some(1));
    let got = message(&mut room).await;
    assert_eq!(
        (got.offset, got.data),
        (Some(1), Chat { text: "hi".into() })
    );
    // A message that is not a Chat is reported, not dropped.
    ada.publish("room:typed", &42).unwrap().await.unwrap();
    match next(&mut room).await {
        SubItem::Message(Err((raw, _why))) => assert_eq!(raw.get(), "42"),
        other => panic!("{other:?}"),
    }
    // Requests are typed both ways.
    #[derive(Deserialize)]
    struct Time {
        now_ms: u64,
    }
    let t: Time = ada.request("time", &()).await.unwrap();
    assert!(t.now_ms > 1_600_000_000_000);
    let err = ada
        .request::<_, serde_json::Value>("no_such_method", &())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Request(_)), "{err}");
    // A refused publish fails its future.
    let too_long = "x".repeat(65);
    let err = ada
        .publish(&format!("bad channel {too_long}"), &1)
        .unwrap()
        .await;
    assert!(matches!(err, Err(ClientError::Publish(_))), "{err:?}");
}

#[tokio::test]
async fn a_messagepack_client_and_a_json_one_talk() {
    let server = start(config(&[])).await;
    let packed = NativeOptions {
        messagepack: true,
        ..NativeOptions::default()
    };
    let ada = Client::connect(server.ws_url(), packed);
    let grace = Client::connect(server.ws_url(), NativeOptions::default());
    let mut a_room = ada.subscribe::<Chat>("room:mp");
    let mut g_room = grace.subscribe::<Chat>("room:mp");
    live(&mut a_room).await;
    live(&mut g_room).await;
    let offset = ada
        .publish(
            "room:mp",
            &Chat {
                text: "packed".into(),
            },
        )
        .unwrap()
        .await
        .unwrap();
    assert_eq!(offset, Some(1));
    for room in [&mut a_room, &mut g_room] {
        assert_eq!(
            message(room).await.data,
            Chat {
                text: "packed".into()
            }
        );
    }
    grace
        .publish(
            "room:mp",
            &Chat {
                text: "text".into(),
            },
        )
        .unwrap()
        .await
        .unwrap();
    assert_eq!(
        message(&mut a_room).await.data,
        Chat {
            text: "text".into()
        }
    );
    #[derive(Deserialize)]
    struct Time {
        now_ms: u64,
    }
    let t: Time = ada.request("time", &()).await.unwrap();
    assert!(t.now_ms > 1_600_000_000_000);
    // The server saw one MessagePack connection (the wire itself: tests/encodings.rs).
    let metrics = server.state.hub.metrics();
    let packed = metrics
        .connections_msgpack
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(packed, 1);
}

#[tokio::test]
async fn rooms_and_directs() {
    let server = start(config(&[])).await;
    let ada = Client::connect(server.ws_url(), NativeOptions::default());
    let bob = Client::connect(server.ws_url(), NativeOptions::default());
    let mut a_room = ada
        .join::<Chat, _>("room:p", &serde_json::json!({"name": "Ada"}))
        .unwrap();
    live(&mut a_room).await;
    let mut b_room = bob
        .join::<Chat, _>("room:p", &serde_json::json!({"name": "Bob"}))
        .unwrap();
    live(&mut b_room).await;
    loop {
        match next(&mut a_room).await {
            SubItem::Presence {
                action,
                member,
                count,
            } => {
                assert_eq!(action, PresenceAction::Join);
                assert_eq!(member.info.to_value()["name"], "Bob");
                assert_eq!(count, 2);
                break;
            }
            _ => continue,
        }
    }
    // Bob's id, from a message he sends.
    b_room
        .publish(&Chat {
            text: "I'm Bob".into(),
        })
        .unwrap()
        .await
        .unwrap();
    let from = message(&mut a_room).await.from.unwrap();
    let mut inbox = bob.directs::<String>();
    ada.direct(from.client_id.as_str(), "psst").unwrap();
    let (sender, data) = tokio::time::timeout(WAIT, inbox.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(data.unwrap(), "psst");
    assert!(sender.is_some());
    drop(b_room);
    loop {
        if let SubItem::Presence {
            action: PresenceAction::Leave,
            ..
        } = next(&mut a_room).await
        {
            break;
        }
    }
}

#[tokio::test]
async fn publishes_made_while_the_server_is_down_arrive_once_in_order() {
    let mut server = start(config(&[])).await;
    let addr = server.addr;
    let watcher_opts = NativeOptions::default();
    let ada = Client::connect(server.ws_url(), NativeOptions::default());
    tokio::time::timeout(WAIT, ada.connected())
        .await
        .unwrap()
        .unwrap();
    // The server goes away; Ada keeps publishing.
    server.shutdown();
    let _ = tokio::time::timeout(WAIT, &mut server.task).await;
    let mut state = ada.state();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s != ConnState::Open))
        .await
        .unwrap()
        .unwrap();
    let pending: Vec<_> = (0..20)
        .map(|i| {
            ada.publish(
                "room:down",
                &Chat {
                    text: format!("m{i}"),
                },
            )
            .unwrap()
        })
        .collect();
    assert_eq!(ada.queued(), 20);
    // Back on the same address.
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let state2 = switchboard_server::AppState::new(config(&[]));
    tokio::spawn(switchboard_server::run(
        listener,
        state2,
        std::future::pending::<()>(),
    ));
    let watcher = Client::connect(format!("ws://{addr}/ws"), watcher_opts);
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(
            tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let offsets: Vec<u64> = offsets.into_iter().map(Option::unwrap).collect();
    assert_eq!(offsets, (1..=20).collect::<Vec<_>>(), "once each, in order");
    // Stored: a late subscriber's position covers them.
    let mut sub = watcher.subscribe::<Chat>("room:down");
    loop {
        if let SubItem::State(SubState::Live { position, .. }) = next(&mut sub).await {
            assert_eq!(position.offset, 20);
            break;
        }
    }
}

//! The WebSocket session against a real server on loopback, with real tokio-tungstenite
//! clients: every frame kind, the error codes and the close codes this server sends.

mod common;

use std::time::Duration;

use common::{Client, Next, TestServer, config, eventually, start};
use serde_json::json;
use switchboard_protocol::{ClientFrame, ErrorCode, PresenceAction, ServerFrame};

fn sub(channel: &str) -> ClientFrame {
    ClientFrame::Subscribe {
        id: None,
        channel: channel.into(),
        since: None,
        rewind: None,
        presence: None,
    }
}

fn pong_id(frame: ServerFrame) -> Option<switchboard_protocol::RequestId> {
    match frame {
        ServerFrame::Pong { id, .. } => id,
        other => panic!("expected pong, got {other:?}"),
    }
}

fn error_code(frame: ServerFrame) -> (Option<String>, ErrorCode) {
    match frame {
        ServerFrame::Error { id, code, message } => {
            assert!(!message.is_empty());
            (id.map(|i| i.0), code)
        }
        other => panic!("expected error, got {other:?}"),
    }
}

#[tokio::test]
async fn welcome_then_ping_pong() {
    let server = start(config(&[])).await;
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
            protocol,
            heartbeat_ms,
            limits,
            resumed,
            user_id,
            ts,
        } => {
            assert!(
                ts.is_some_and(|ts| ts > 1_600_000_000_000),
                "the server's clock"
            );
            assert!(!client_id.0.is_empty() && !session_id.0.is_empty());
            assert_eq!(protocol, switchboard_protocol::PROTOCOL_VERSION);
            assert_eq!(heartbeat_ms, 25_000);
            assert_eq!(limits, switchboard_protocol::Limits::default());
            assert!(!resumed);
            assert_eq!(user_id, None);
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    c.send_text(r#"{"type":"ping","id":"42"}"#).await;
    match c.next().await {
        ServerFrame::Pong { id, ts } => {
            assert_eq!(id, Some("42".into()));
            assert!(
                ts.is_some_and(|ts| ts > 1_600_000_000_000),
                "the server's clock"
            );
        }
        other => panic!("{other:?}"),
    }
    c.send_text(r#"{"type":"ping"}"#).await;
    assert!(matches!(c.next().await, ServerFrame::Pong { id: None, .. }));
    // hello is answered with a fresh welcome for the same connection
    let id = {
        c.send_text(r#"{"type":"hello","client":{"name":"test","version":"1"}}"#)
            .await;
        match c.next().await {
            ServerFrame::Welcome { client_id, .. } => client_id,
            other => panic!("{other:?}"),
        }
    };
    c.client_id = id.0.clone();
    c.sync().await;
}

#[tokio::test]
async fn client_ids_are_unique() {
    let server = start(config(&[])).await;
    let a = Client::connect(&server).await;
    let b = Client::connect(&server).await;
    assert_ne!(a.client_id, b.client_id);
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays_open() {
    let server = start(config(&[])).await;
    let mut c = Client::connect(&server).await;
    let cases = [
        ("nonsense", None, ErrorCode::BadFrame),
        (r#"{"type":"warp"}"#, None, ErrorCode::UnknownType),
        (
            r#"{"type":"request","id":"r1"}"#,
            Some("r1"),
            ErrorCode::BadFrame,
        ),
        (
            r#"{"type":"subscribe","channel":"no spaces"}"#,
            None,
            ErrorCode::InvalidChannel,
        ),
        (
            r#"{"type":"publish","id":"p1","channel":"ok","data":1,"ephemeral":"yes"}"#,
            Some("p1"),
            ErrorCode::BadFrame,
        ),
    ];
    for (text, id, code) in cases {
        c.send_text(text).await;
        assert_eq!(
            error_code(c.next().await),
            (id.map(str::to_owned), code),
            "{text}"
        );
    }
    c.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1, 2, 3,
    ]))
    .await
    .unwrap();
    assert_eq!(error_code(c.next().await).1, ErrorCode::BadFrame);
    c.sync().await;
}

use futures::SinkExt;

#[tokio::test]
async fn batches_are_processed_in_order_and_a_bad_member_spoils_only_itself() {
    let server = start(config(&["--max-batch", "3"])).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"[{"type":"ping","id":"1"},{"type":"nope"},{"type":"ping","id":"2"}]"#)
        .await;
    assert_eq!(pong_id(c.next().await), Some("1".into()));
    assert_eq!(error_code(c.next().await).1, ErrorCode::UnknownType);
    assert_eq!(pong_id(c.next().await), Some("2".into()));
    c.send_text(r#"[{"type":"ping"},{"type":"ping"},{"type":"ping"},{"type":"ping"}]"#)
        .await;
    assert_eq!(error_code(c.next().await).1, ErrorCode::BatchTooLarge);
    c.sync().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let server = start(config(&["--max-frame-bytes", "2048"])).await;
    let mut c = Client::connect(&server).await;
    let big = format!(
        r#"{{"type":"publish","channel":"a","data":"{}"}}"#,
        "x".repeat(4096)
    );
    c.send_text(&big).await;
    assert_eq!(c.closed().await, Some(1009));
    // the server is fine
    Client::connect(&server).await.sync().await;
}

#[tokio::test]
async fn subscribe_publish_fan_out_and_ack() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    for c in [&mut a, &mut b] {
        c.send(&sub("news")).await;
        match c.next().await {
            ServerFrame::Subscribed {
                channel,
                position,
                recovered,
                unrecovered,
                presence,
            } => {
                assert_eq!(unrecovered, None);
                assert_eq!(channel.as_str(), "news");
                assert_eq!(position.offset, 0);
                assert!(!recovered);
                assert_eq!(presence, None);
            }
            other => panic!("{other:?}"),
        }
    }
    a.send_text(r#"{"type":"publish","id":"m1","channel":"news","data":{"text":"hi"}}"#)
        .await;
    // the sender gets its ack and, as a subscriber, the message
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        match a.next().await {
            ServerFrame::Ack { id, offset } => {
                assert_eq!((id.as_str(), offset), ("m1", Some(1)));
                got_ack = true;
            }
            ServerFrame::Message { offset, .. } => {
                assert_eq!(offset, Some(1));
                got_msg = true;
            }
            other => panic!("{other:?}"),
        }
    }
    match b.next().await {
        ServerFrame::Message {
            channel,
            offset,
            epoch,
            from,
            data,
            ephemeral,
            ts,
        } => {
            assert_eq!(channel.as_str(), "news");
            assert_eq!(offset, Some(1));
            assert!(epoch.is_some());
            assert_eq!(from.unwrap().client_id.0, a.client_id);
            assert_eq!(data, json!({"text":"hi"}));
            assert!(!ephemeral);
            assert!(ts > 0);
        }
        other => panic!("{other:?}"),
    }
    // ephemeral: delivered without offset, acked without offset
    b.send_text(
        r#"{"type":"publish","id":"t1","channel":"news","data":{"typing":true},"ephemeral":true}"#,
    )
    .await;
    match a.next().await {
        ServerFrame::Message {
            offset,
            epoch,
            ephemeral,
            ..
        } => assert_eq!((offset, epoch, ephemeral), (None, None, true)),
        other => panic!("{other:?}"),
    }
    let mut b_frames = [b.next().await, b.next().await];
    b_frames.sort_by_key(|f| f.kind());
    assert_eq!(
        b_frames[0],
        ServerFrame::Ack {
            id: "t1".into(),
            offset: None
        }
    );
    assert!(matches!(
        b_frames[1],
        ServerFrame::Message {
            ephemeral: true,
            ..
        }
    ));
    // unsubscribe: confirmed, and no more messages
    a.send(&ClientFrame::Unsubscribe {
        id: None,
        channel: "news".into(),
    })
    .await;
    assert_eq!(
        a.next().await,
        ServerFrame::Unsubscribed {
            channel: "news".into()
        }
    );
    a.send(&ClientFrame::Unsubscribe {
        id: None,
        channel: "news".into(),
    })
    .await;
    assert_eq!(error_code(a.next().await).1, ErrorCode::NotSubscribed);
    b.send(&sub("news")).await;
    assert_eq!(error_code(b.next().await).1, ErrorCode::AlreadySubscribed);
}

#[tokio::test]
async fn messages_arrive_in_offset_order() {
    let server = start(config(&["--rate-burst", "1000", "--rate-per-sec", "1000"])).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    b.send(&sub("seq")).await;
    b.next().await;
    let frames: Vec<ClientFrame> = (0..200)
        .map(|i| ClientFrame::Publish {
            id: None,
            channel: "seq".into(),
            data: json!(i).into(),
            ephemeral: false,
            skip_self: false,
        })
        .collect();
    for chunk in frames.chunks(50) {
        a.send_text(&switchboard_protocol::codec::encode_batch(chunk))
            .await;
    }
    for i in 0..200u64 {
        match b.next().await {
            ServerFrame::Message { offset, data, .. } => {
                assert_eq!((offset, data.to_value()), (Some(i + 1), json!(i)));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn presence_join_snapshot_and_leave() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    a.send(&ClientFrame::Subscribe {
        id: None,
        channel: "room:lobby".into(),
        since: None,
        rewind: None,
        presence: Some(json!({"name":"Ada"}).into()),
    })
    .await;
    match a.next().await {
        ServerFrame::Subscribed { presence, .. } => {
            let members = presence.expect("snapshot");
            assert_eq!(members.len(), 1);
            assert_eq!(members[0].user_id, a.client_id);
            assert_eq!(members[0].info, json!({"name":"Ada"}));
        }
        other => panic!("{other:?}"),
    }
    b.send(&ClientFrame::Subscribe {
        id: None,
        channel: "room:lobby".into(),
        since: None,
        rewind: None,
        presence: Some(json!({"name":"Bob"}).into()),
    })
    .await;
    match b.next().await {
        ServerFrame::Subscribed { presence, .. } => assert_eq!(presence.unwrap().len(), 2),
        other => panic!("{other:?}"),
    }
    match a.next().await {
        ServerFrame::Presence {
            action,
            member,
            count,
            ..
        } => {
            assert_eq!(action, PresenceAction::Join);
            assert_eq!(member.info, json!({"name":"Bob"}));
            assert_eq!(count, 2);
        }
        other => panic!("{other:?}"),
    }
    // the presence request lists both
    a.send_text(
        r#"{"type":"request","id":"p","method":"presence","params":{"channel":"room:lobby"}}"#,
    )
    .await;
    match a.next().await {
        ServerFrame::Response { id, result } => {
            assert_eq!(id.as_str(), "p");
            assert_eq!(result.to_value()["count"], 2);
        }
        other => panic!("{other:?}"),
    }
    // Bob disconnects: Ada sees the leave
    drop(b);
    match a.next().await {
        ServerFrame::Presence {
            action,
            member,
            count,
            ..
        } => {
            assert_eq!(action, PresenceAction::Leave);
            assert_eq!(member.info, json!({"name":"Bob"}));
            assert_eq!(count, 1);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn requests_builtin_unknown_and_bad_params() {
    let server = start(config(&[])).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"request","id":"t","method":"time"}"#)
        .await;
    match c.next().await {
        ServerFrame::Response { id, result } => {
            assert_eq!(id.as_str(), "t");
            assert!(result.to_value()["now_ms"].as_u64().unwrap() > 1_600_000_000_000);
        }
        other => panic!("{other:?}"),
    }
    c.send_text(r#"{"type":"request","id":"u","method":"launch"}"#)
        .await;
    assert_eq!(
        error_code(c.next().await),
        (Some("u".into()), ErrorCode::UnknownMethod)
    );
    c.send_text(r#"{"type":"request","id":"b","method":"presence","params":{}}"#)
        .await;
    assert_eq!(
        error_code(c.next().await),
        (Some("b".into()), ErrorCode::BadRequest)
    );
    c.send(&sub("x")).await;
    c.next().await;
    c.send_text(r#"{"type":"request","id":"c","method":"channels"}"#)
        .await;
    match c.next().await {
        ServerFrame::Response { result, .. } => {
            assert_eq!(result, json!([{"channel":"x","subscribers":1}]));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn custom_methods_and_handler_failures() {
    use switchboard_server::methods::{MethodError, Methods};
    let methods = Methods::with_builtins()
        .method("whoami", |ctx, _: ()| async move {
            Ok::<_, MethodError>(ctx.client_id)
        })
        .method("fail", |_, _: ()| async {
            Err::<(), _>(MethodError::Failed("disk on fire".into()))
        });
    let state = switchboard_server::AppState::with_methods(config(&[]), methods);
    let server = common::start_with(state).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"request","id":"1","method":"whoami"}"#)
        .await;
    assert_eq!(
        c.next().await,
        ServerFrame::Response {
            id: "1".into(),
            result: json!(c.client_id).into()
        }
    );
    c.send_text(r#"{"type":"request","id":"2","method":"fail"}"#)
        .await;
    assert_eq!(
        c.next().await,
        ServerFrame::error(Some("2".into()), ErrorCode::HandlerFailed, "disk on fire")
    );
}

#[tokio::test]
async fn direct_messages_and_target_gone() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    let to = b.client_id.clone();
    a.send_text(&format!(
        r#"{{"type":"direct","to":"{to}","data":{{"sdp":"offer"}}}}"#
    ))
    .await;
    match b.next().await {
        ServerFrame::Direct { from, data } => {
            assert_eq!(from.client_id.0, a.client_id);
            assert_eq!(data, json!({"sdp":"offer"}));
        }
        other => panic!("{other:?}"),
    }
    drop(b);
    // wait until the server noticed b is gone
    assert!(eventually(|| server.state.hub.connection_count() == 1).await);
    a.send_text(&format!(r#"{{"type":"direct","to":"{to}","data":1}}"#))
        .await;
    assert_eq!(error_code(a.next().await).1, ErrorCode::TargetGone);
}

#[tokio::test]
async fn subscription_cap() {
    let server = start(config(&["--max-subscriptions", "2"])).await;
    let mut c = Client::connect(&server).await;
    for ch in ["a", "b"] {
        c.send(&sub(ch)).await;
        assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
    }
    c.send(&sub("c")).await;
    assert_eq!(
        error_code(c.next().await).1,
        ErrorCode::TooManySubscriptions
    );
}

#[tokio::test]
async fn rate_limit_refuses_then_closes_repeat_offenders() {
    let server = start(config(&["--rate-per-sec", "1", "--rate-burst", "3"])).await;
    let mut c = Client::connect(&server).await;
    // 3 frames pass on the burst, the next 2 are refused with their ids, the 3rd refusal
    // in a row closes the connection.
    let batch: Vec<ClientFrame> = (0..6)
        .map(|i| ClientFrame::Ping {
            id: Some(i.to_string().into()),
        })
        .collect();
    c.send_text(&switchboard_protocol::codec::encode_batch(&batch))
        .await;
    for i in 0..3 {
        assert_eq!(pong_id(c.next().await), Some(i.to_string().into()));
    }
    for i in 3..5 {
        assert_eq!(
            error_code(c.next().await),
            (Some(i.to_string()), ErrorCode::RateLimited)
        );
    }
    assert_eq!(c.closed().await, Some(4109));
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4210() {
    let server = start(config(&["--heartbeat", "50ms", "--idle-timeout", "200ms"])).await;
    let mut c = Client::connect(&server).await;
    // Not reading means not answering the server's pings.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.closed().await, Some(4210));
    // and the registry forgot it
    assert!(
        eventually(|| server.state.hub.connection_count() == 0).await,
        "connection still registered"
    );
}

#[tokio::test]
async fn shutdown_closes_everyone_with_1001() {
    let mut server = start(config(&[])).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    b.send(&ClientFrame::Subscribe {
        id: None,
        channel: "room:x".into(),
        since: None,
        rewind: None,
        presence: Some(json!({}).into()),
    })
    .await;
    b.next().await;
    server.shutdown();
    assert_eq!(a.closed().await, Some(1001));
    assert_eq!(b.closed().await, Some(1001));
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("server stops within the drain timeout")
        .unwrap()
        .unwrap();
    assert!(
        tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn serves_the_bundle_with_spa_fallback_health_and_metrics() {
    let dist = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dist-fixture");
    std::fs::create_dir_all(&dist).unwrap();
    std::fs::write(
        dist.join("index.html"),
        "<!doctype html><p>fixture index</p>",
    )
    .unwrap();
    std::fs::write(dist.join("app.js"), "console.log(1)").unwrap();
    let server = start(config(&["--dist", dist.to_str().unwrap()])).await;
    let get = |path: &str| {
        let url = format!("http://{}{path}", server.addr);
        async move { http_get(&url).await }
    };
    let (status, body) = get("/").await;
    assert_eq!(status, 200);
    assert!(body.contains("fixture index"));
    let (status, body) = get("/app.js").await;
    assert_eq!((status, body.as_str()), (200, "console.log(1)"));
    let (status, body) = get("/rooms/lobby").await;
    assert_eq!(status, 200, "client-side route falls back to index.html");
    assert!(body.contains("fixture index"));
    assert_eq!(get("/healthz").await, (200, "ok".to_owned()));
    let _c = Client::connect(&server).await;
    let (status, body) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("switchboard_connections 1"), "{body}");
    assert!(body.contains("switchboard_frames_out_total"));
}

#[tokio::test]
async fn without_a_bundle_the_root_explains_how_to_build_it() {
    let server = start(config(&["--dist", "/nonexistent-switchboard-dist"])).await;
    let (status, body) = http_get(&format!("http://{}/", server.addr)).await;
    assert_eq!(status, 404);
    assert!(body.contains("trunk build --release"));
    Client::connect(&server).await.sync().await;
}

/// A minimal HTTP/1.1 GET over a raw socket (keeps the test dependencies small).
async fn http_get(url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Connections closed as slow consumers so far (`/metrics`).
fn slow_consumers(server: &TestServer) -> u64 {
    server
        .state
        .hub
        .metrics()
        .slow_consumers
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn not_reading_is_caught_by_the_queue_bound() {
    // A subscriber that never reads: its queue (2 frames here) overflows and it is closed
    // as a slow consumer instead of growing without bound; the publisher is unaffected.
    let server = start(config(&[
        "--queue-capacity",
        "2",
        "--rate-burst",
        "10000",
        "--rate-per-sec",
        "10000",
    ]))
    .await;
    let mut slow = Client::connect(&server).await;
    slow.send(&sub("firehose")).await;
    slow.next().await;
    let mut fast = Client::connect(&server).await;
    let payload = "y".repeat(1000);
    let frames: Vec<ClientFrame> = (0..50)
        .map(|_| ClientFrame::Publish {
            id: None,
            channel: "firehose".into(),
            data: json!(payload).into(),
            ephemeral: false,
            skip_self: false,
        })
        .collect();
    // Enough data to fill the socket buffers and then the 2-frame queue.
    for _ in 0..100 {
        fast.send_text(&switchboard_protocol::codec::encode_batch(&frames))
            .await;
        if slow_consumers(&server) > 0 {
            break;
        }
    }
    fast.sync().await;
    assert_eq!(slow_consumers(&server), 1);
    // The slow client finds a close code 4108 after the frames that did fit.
    loop {
        match slow.read().await {
            Next::Frame(_) => continue,
            Next::Closed(code) => {
                assert_eq!(code, Some(4108));
                break;
            }
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_caught_by_the_write_timeout() {
    // A queue too big to overflow: only the write timeout can catch this client, once the
    // kernel's socket buffers are full.
    let server = start(config(&[
        "--queue-capacity",
        "100000",
        "--write-timeout",
        "300ms",
        "--rate-per-sec",
        "100000",
        "--rate-burst",
        "100000",
    ]))
    .await;
    let mut stuck = Client::connect(&server).await;
    stuck.send(&sub("bulk")).await;
    stuck.next().await;
    let mut publisher = Client::connect(&server).await;
    let chunk = "z".repeat(60_000);
    let frame = format!(r#"{{"type":"publish","channel":"bulk","data":"{chunk}"}}"#);
    let slow = || slow_consumers(&server);
    // Loopback buffers hold a few MB; 2,000 × 60 KB is far more. Stop as soon as it fired.
    for _ in 0..2_000 {
        publisher.send_text(&frame).await;
        if slow() > 0 {
            break;
        }
    }
    assert!(eventually(|| slow() > 0).await);
    assert_eq!(slow(), 1);
    // The stuck client is dropped from the registry; the publisher carries on.
    assert!(eventually(|| server.state.hub.connection_count() == 1).await);
    publisher.sync().await;
    drop(stuck);
}

#[tokio::test]
async fn metrics_count_errors_by_code_and_closes_by_code() {
    let server = start(config(&["--max-frame-bytes", "2048"])).await;
    let mut c = Client::connect(&server).await;
    c.send_text("garbage").await;
    c.next().await;
    c.send_text(r#"{"type":"teleport"}"#).await;
    c.next().await;
    c.send_text(&"x".repeat(4096)).await;
    assert_eq!(c.closed().await, Some(1009));
    let (status, body) = http_get(&format!("http://{}/metrics", server.addr)).await;
    assert_eq!(status, 200);
    for line in [
        "switchboard_errors_total{code=\"bad_frame\"} 1",
        "switchboard_errors_total{code=\"unknown_type\"} 1",
        "switchboard_closes_total{code=\"1009\"} 1",
        "switchboard_dropped_total{reason=\"ephemeral_queue_full\"} 0",
        "switchboard_queued_frames 0",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
}

#[tokio::test]
async fn a_resent_publish_id_is_acked_again_but_delivered_once() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    b.send(&sub("chat")).await;
    b.next().await;
    let frame = r#"{"type":"publish","id":"m-1","channel":"chat","data":"hi"}"#;
    a.send_text(frame).await;
    assert_eq!(
        a.next().await,
        ServerFrame::Ack {
            id: "m-1".into(),
            offset: Some(1)
        }
    );
    a.send_text(frame).await;
    assert_eq!(
        a.next().await,
        ServerFrame::Ack {
            id: "m-1".into(),
            offset: Some(1)
        }
    );
    // another user's message with the same id is not suppressed
    b.send_text(frame).await;
    let mut offsets = vec![];
    for _ in 0..3 {
        match b.next().await {
            ServerFrame::Message { offset, .. } => offsets.push(offset.unwrap()),
            ServerFrame::Ack { offset, .. } => offsets.push(offset.unwrap() * 100),
            other => panic!("{other:?}"),
        }
    }
    offsets.sort();
    assert_eq!(
        offsets,
        [1, 2, 200],
        "b saw a's message once, then its own, and its ack"
    );
}

#[tokio::test]
async fn skip_self_delivers_to_everyone_but_the_publisher() {
    let server = start(config(&[])).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    for c in [&mut a, &mut b] {
        c.send(&sub("room:s")).await;
        c.next().await;
    }
    a.send_text(r#"{"type":"publish","id":"x","channel":"room:s","data":1,"skip_self":true}"#)
        .await;
    assert_eq!(
        a.next().await,
        ServerFrame::Ack {
            id: "x".into(),
            offset: Some(1)
        }
    );
    assert!(matches!(
        b.next().await,
        ServerFrame::Message {
            offset: Some(1),
            ..
        }
    ));
    a.sync().await; // nothing else arrived for a before the pong
}

#[tokio::test]
async fn long_anonymous_ids_are_deduplicated_across_reconnects_short_ones_per_connection() {
    let server = start(config(&[])).await;
    let mut watcher = Client::connect(&server).await;
    watcher.send(&sub("d")).await;
    watcher.next().await;
    let long =
        r#"{"type":"publish","id":"0123456789abcdef01234567-m1","channel":"d","data":"once"}"#;
    let short = r#"{"type":"publish","id":"m1","channel":"d","data":"short"}"#;
    for _ in 0..2 {
        // a new connection each time, as after a reconnect
        let mut c = Client::connect(&server).await;
        c.send_text(long).await;
        c.next().await; // ack
        c.send_text(short).await;
        c.next().await; // ack
    }
    let mut got = vec![];
    for _ in 0..3 {
        match watcher.next().await {
            ServerFrame::Message { data, .. } => got.push(data),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, [json!("once"), json!("short"), json!("short")]);
    watcher.sync().await;
}

#[tokio::test]
async fn a_client_initiated_close_gets_a_clean_reply() {
    let server = start(config(&[])).await;
    let mut c = Client::connect(&server).await;
    c.ws.close(None).await.unwrap();
    // the server answers the close frame instead of dropping the socket
    match tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut c.ws)).await {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => {}
        other => panic!("expected the close reply, got {other:?}"),
    }
}

#[tokio::test]
async fn a_slow_handler_answers_later_without_holding_up_other_frames() {
    use switchboard_server::methods::{MethodError, Methods};
    let methods = Methods::with_builtins().method("slow", |_, _: ()| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, MethodError>("done")
    });
    let state = switchboard_server::AppState::with_methods(config(&[]), methods);
    let server = common::start_with(state).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"request","id":"s","method":"slow"}"#)
        .await;
    c.send_text(r#"{"type":"request","id":"t","method":"time"}"#)
        .await;
    c.send_text(r#"{"type":"ping","id":"p"}"#).await;
    // the instant request and the ping are answered first, in order
    assert!(matches!(c.next().await, ServerFrame::Response { id, .. } if id.as_str() == "t"));
    assert_eq!(pong_id(c.next().await), Some("p".into()));
    assert_eq!(
        c.next().await,
        ServerFrame::Response {
            id: "s".into(),
            result: json!("done").into()
        }
    );
}

#[tokio::test]
async fn subscribe_unsubscribe_and_direct_errors_carry_their_ids() {
    let server = start(config(&["--max-subscriptions", "1"])).await;
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","id":"s1","channel":"a"}"#)
        .await;
    assert!(matches!(c.next().await, ServerFrame::Subscribed { .. }));
    c.send_text(r#"{"type":"subscribe","id":"s2","channel":"b"}"#)
        .await;
    assert_eq!(
        error_code(c.next().await),
        (Some("s2".into()), ErrorCode::TooManySubscriptions)
    );
    c.send_text(r#"{"type":"unsubscribe","id":"u1","channel":"b"}"#)
        .await;
    assert_eq!(
        error_code(c.next().await),
        (Some("u1".into()), ErrorCode::NotSubscribed)
    );
    c.send_text(r#"{"type":"direct","id":"d1","to":"nobody","data":1}"#)
        .await;
    assert_eq!(
        error_code(c.next().await),
        (Some("d1".into()), ErrorCode::TargetGone)
    );
    c.sync().await;
}

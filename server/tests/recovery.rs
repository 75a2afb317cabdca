//! Recovery over real sockets: `subscribe` with `since` sends exactly the missed messages,
//! then `subscribed`, then the live ones, with no gap and no duplicate at the seam (the
//! seam is forced open with a pause in the history read); the reasons it cannot; `rewind`;
//! the `history` method; and a restart of a server on the disk store.

mod common;

use common::faulty::{self, Op, Stage};
use common::{Client, config, start};
use serde_json::{Value, json};
use switchboard_protocol::{ErrorCode, ServerFrame, StreamPosition, Unrecovered};

const UNLIMITED: &[&str] = &["--rate-per-sec", "100000", "--rate-burst", "100000"];

/// Publishes `n` and waits for its ack; returns the offset.
async fn publish(c: &mut Client, channel: &str, n: u64) -> u64 {
    publish_as(c, channel, n, &format!("p{n}")).await
}

/// [`publish`] with the given publish id.
async fn publish_as(c: &mut Client, channel: &str, n: u64, id: &str) -> u64 {
    c.send_text(&json!({"type":"publish","id":id,"channel":channel,"data":n}).to_string())
        .await;
    loop {
        match c.next().await {
            ServerFrame::Ack { id: got, offset } if got.as_str() == id => return offset.unwrap(),
            ServerFrame::Message { .. } => {}
            other => panic!("expected ack, got {other:?}"),
        }
    }
}

fn subscribe(channel: &str, since: Option<&StreamPosition>, rewind: Option<u32>) -> String {
    let mut frame = json!({"type":"subscribe","channel":channel});
    if let Some(since) = since {
        frame["since"] = json!({"offset": since.offset, "epoch": since.epoch});
    }
    if let Some(rewind) = rewind {
        frame["rewind"] = json!(rewind);
    }
    frame.to_string()
}

/// The data of a `message` frame and its offset.
fn message(frame: &ServerFrame) -> Option<(u64, u64)> {
    match frame {
        ServerFrame::Message { data, offset, .. } => {
            Some((data.to_value().as_u64().unwrap(), offset.unwrap()))
        }
        _ => None,
    }
}

/// Reads `message` frames up to the `subscribed`; returns their offsets and the answer.
async fn recovered(c: &mut Client) -> (Vec<u64>, StreamPosition, bool, Option<Unrecovered>) {
    let mut offsets = Vec::new();
    loop {
        let frame = c.next().await;
        if let Some((_, offset)) = message(&frame) {
            offsets.push(offset);
            continue;
        }
        match frame {
            ServerFrame::Subscribed {
                position,
                recovered,
                unrecovered,
                ..
            } => return (offsets, position, recovered, unrecovered),
            other => panic!("expected messages, then subscribed; got {other:?}"),
        }
    }
}

/// Offsets of the `message` frames that arrive before a ping's pong.
async fn live(c: &mut Client) -> Vec<u64> {
    c.collect()
        .await
        .iter()
        .map(|f| {
            message(f)
                .unwrap_or_else(|| panic!("expected a message, got {f:?}"))
                .1
        })
        .collect()
}

#[tokio::test]
async fn since_sends_the_missed_messages_then_subscribed_then_live_ones() {
    let server = start(config(UNLIMITED)).await;
    let mut publisher = Client::connect(&server).await;
    let mut a = Client::connect(&server).await;
    a.send_text(&subscribe("chat", None, None)).await;
    let (none, start_pos, _, _) = recovered(&mut a).await;
    assert!(none.is_empty());
    for n in 1..=3 {
        publish(&mut publisher, "chat", n).await;
    }
    assert_eq!(live(&mut a).await, [1, 2, 3]);
    let seen = StreamPosition {
        offset: 3,
        epoch: start_pos.epoch.clone(),
    };
    drop(a);
    for n in 4..=8 {
        publish(&mut publisher, "chat", n).await;
    }
    let mut back = Client::connect(&server).await;
    back.send_text(&subscribe("chat", Some(&seen), None)).await;
    let (missed, position, ok, why) = recovered(&mut back).await;
    assert_eq!(missed, [4, 5, 6, 7, 8]);
    assert!(ok && why.is_none());
    assert_eq!(position.offset, 8);
    assert_eq!(position.epoch, start_pos.epoch);
    publish(&mut publisher, "chat", 9).await;
    assert_eq!(live(&mut back).await, [9]);
    // Nothing missed: recovered, nothing sent.
    let mut again = Client::connect(&server).await;
    again
        .send_text(&subscribe(
            "chat",
            Some(&StreamPosition { offset: 9, ..seen }),
            None,
        ))
        .await;
    let (missed, position, ok, _) = recovered(&mut again).await;
    assert!(missed.is_empty() && ok && position.offset == 9);
}

/// The seam: messages published while the history read is paused (the store then holds
/// them too) come after the recovered ones and the `subscribed`, each exactly once.
#[tokio::test]
async fn messages_published_during_the_history_read_follow_it_exactly_once() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut publisher = Client::connect(&server).await;
    // Someone else keeps the node subscribed, so live deliveries flow meanwhile.
    let mut watcher = Client::connect(&server).await;
    watcher.send_text(&subscribe("seam", None, None)).await;
    let (_, start_pos, _, _) = recovered(&mut watcher).await;
    for round in 0..20u64 {
        let base = round * 6;
        for n in 1..=3 {
            publish(&mut publisher, "seam", base + n).await;
        }
        let since = StreamPosition {
            offset: base + 1,
            epoch: start_pos.epoch.clone(),
        };
        let mut pause = faults.pause(Op::Read, Stage::Before, Some("seam"));
        let mut c = Client::connect(&server).await;
        c.send_text(&subscribe("seam", Some(&since), None)).await;
        pause.reached().await;
        for n in 4..=6 {
            publish(&mut publisher, "seam", base + n).await;
        }
        pause.release();
        let (missed, position, ok, _) = recovered(&mut c).await;
        assert!(ok);
        assert_eq!(missed, [base + 2, base + 3], "round {round}");
        assert_eq!(position.offset, base + 3, "round {round}");
        assert_eq!(
            live(&mut c).await,
            [base + 4, base + 5, base + 6],
            "round {round}: held, then live, none twice"
        );
    }
    let _ = watcher.collect().await;
}

#[tokio::test]
async fn a_failed_history_read_answers_unavailable_and_leaves_no_subscription() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut publisher = Client::connect(&server).await;
    let mut a = Client::connect(&server).await;
    a.send_text(&subscribe("f", None, None)).await;
    let (_, pos, _, _) = recovered(&mut a).await;
    publish(&mut publisher, "f", 1).await;
    faults.fail(Op::Read);
    let mut c = Client::connect(&server).await;
    let since = StreamPosition { offset: 0, ..pos };
    c.send_text(&subscribe("f", Some(&since), None)).await;
    match c.next().await {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::Unavailable),
        other => panic!("{other:?}"),
    }
    publish(&mut publisher, "f", 2).await;
    c.sync().await; // not subscribed: nothing arrives
    faults.heal(Op::Read);
    c.send_text(&subscribe("f", Some(&since), None)).await;
    let (missed, _, ok, _) = recovered(&mut c).await;
    assert!(ok);
    assert_eq!(missed, [1, 2]);
}

/// What is delivered while the history read is paused waits in the subscriber's queue,
/// within its bounds: one that overflows meanwhile is closed as a slow consumer.
#[tokio::test]
async fn deliveries_during_a_recovery_are_bounded_by_the_queue() {
    let mut args = UNLIMITED.to_vec();
    args.extend(["--queue-capacity", "4"]);
    let (server, faults) = faulty::server(&args).await;
    let mut publisher = Client::connect(&server).await;
    let mut watcher = Client::connect(&server).await;
    watcher.send_text(&subscribe("h", None, None)).await;
    let (_, pos, _, _) = recovered(&mut watcher).await;
    let mut pause = faults.pause(Op::Read, Stage::Before, Some("h"));
    publish(&mut publisher, "h", 1).await;
    let mut c = Client::connect(&server).await;
    let since = StreamPosition {
        offset: 0,
        ..pos.clone()
    };
    c.send_text(&subscribe("h", Some(&since), None)).await;
    pause.reached().await;
    for n in 2..=10 {
        publish(&mut publisher, "h", n).await;
    }
    pause.release();
    assert_eq!(c.closed().await, Some(4108));
    // The watcher, live all along, is unaffected.
    let got: Vec<_> = watcher.collect().await.iter().filter_map(message).collect();
    assert_eq!(got.len(), 10);
}

#[tokio::test]
async fn subscribed_says_why_it_could_not_recover() {
    let mut args = UNLIMITED.to_vec();
    args.extend(["--history-size", "5", "--recovery-limit", "3"]);
    let server = start(config(&args)).await;
    let mut publisher = Client::connect(&server).await;
    let mut a = Client::connect(&server).await;
    a.send_text(&subscribe("r", None, None)).await;
    let (_, pos, _, _) = recovered(&mut a).await;
    for n in 1..=8 {
        publish(&mut publisher, "r", n).await;
    }
    let at = |offset| StreamPosition {
        offset,
        epoch: pos.epoch.clone(),
    };
    let cases = [
        (at(1), Unrecovered::Trimmed), // 2 and 3 are no longer kept
        (at(4), Unrecovered::TooMany), // 4 missed, at most 3 per recovery
        (at(99), Unrecovered::Epoch),  // beyond the end: never seen
        (
            StreamPosition {
                offset: 2,
                epoch: "gone".into(),
            },
            Unrecovered::Epoch,
        ),
    ];
    for (top, (since, reason)) in (8..).zip(cases) {
        let mut c = Client::connect(&server).await;
        c.send_text(&subscribe("r", Some(&since), None)).await;
        let (missed, position, ok, why) = recovered(&mut c).await;
        assert_eq!(
            (missed.len(), ok, why),
            (0, false, Some(reason)),
            "{since:?}"
        );
        assert_eq!(position.offset, top);
        publish(&mut publisher, "r", top + 1).await;
        assert_eq!(live(&mut c).await.len(), 1, "live after all");
    }
    // Unrecoverable with `rewind`: the latest instead.
    let mut c = Client::connect(&server).await;
    c.send_text(&subscribe("r", Some(&at(1)), Some(2))).await;
    let (latest, position, ok, why) = recovered(&mut c).await;
    assert_eq!(latest, [position.offset - 1, position.offset]);
    assert_eq!((ok, why), (false, Some(Unrecovered::Trimmed)));
}

#[tokio::test]
async fn rewind_sends_the_latest_messages_first() {
    let server = start(config(UNLIMITED)).await;
    let mut publisher = Client::connect(&server).await;
    for n in 1..=10 {
        publish(&mut publisher, "room", n).await;
    }
    let mut c = Client::connect(&server).await;
    c.send_text(&subscribe("room", None, Some(3))).await;
    let (latest, position, ok, why) = recovered(&mut c).await;
    assert_eq!(latest, [8, 9, 10]);
    assert_eq!((position.offset, ok, why), (10, false, None));
    // More than there are: all of them.
    let mut d = Client::connect(&server).await;
    d.send_text(&subscribe("room", None, Some(50))).await;
    assert_eq!(recovered(&mut d).await.0, (1..=10).collect::<Vec<_>>());
    // A channel without messages: nothing, and no error.
    let mut e = Client::connect(&server).await;
    e.send_text(&subscribe("empty", None, Some(5))).await;
    assert!(recovered(&mut e).await.0.is_empty());
}

/// A publish id of the length that is deduplicated across connections.
fn global_id(n: u64) -> String {
    format!("restart-test-publish-{n:08}")
}

async fn history(c: &mut Client, params: Value) -> Result<Value, ErrorCode> {
    c.send_text(&json!({"type":"request","id":"h","method":"history","params":params}).to_string())
        .await;
    match c.next().await {
        ServerFrame::Response { result, .. } => Ok(result.to_value()),
        ServerFrame::Error { code, .. } => Err(code),
        other => panic!("{other:?}"),
    }
}

fn data_of(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "message");
            m["data"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn the_history_method_pages_through_a_channel() {
    let mut args = UNLIMITED.to_vec();
    args.extend(["--history-size", "20", "--recovery-limit", "4"]);
    let server = start(config(&args)).await;
    let mut c = Client::connect(&server).await;
    for n in 1..=10 {
        publish(&mut c, "log", n).await;
    }
    let latest = history(&mut c, json!({"channel":"log","limit":3}))
        .await
        .unwrap();
    assert_eq!(data_of(&latest), [8, 9, 10]);
    assert_eq!(latest["position"]["offset"], 10);
    let epoch = latest["position"]["epoch"].clone();
    // Paging forward from a position; the server caps the limit at --recovery-limit.
    let mut since = 2u64;
    let mut got = Vec::new();
    loop {
        let page = history(
            &mut c,
            json!({"channel":"log","since":{"offset":since,"epoch":epoch},"limit":100}),
        )
        .await
        .unwrap();
        let data = data_of(&page);
        assert!(data.len() <= 4);
        since += data.len() as u64;
        got.extend(data);
        if page.get("more").is_none() {
            break;
        }
        assert_eq!(page["more"], true);
    }
    assert_eq!(got, (3..=10).collect::<Vec<_>>());
    let gone = history(
        &mut c,
        json!({"channel":"log","since":{"offset":1,"epoch":"old"}}),
    )
    .await
    .unwrap();
    assert_eq!(gone["unrecovered"], "epoch");
    assert_eq!(
        history(&mut c, json!({"channel":""})).await,
        Err(ErrorCode::BadRequest)
    );
    assert_eq!(
        history(&mut c, json!({"channel":"log","bogus":1})).await,
        Err(ErrorCode::BadRequest)
    );
}

#[tokio::test]
async fn the_history_method_needs_the_subscribe_permission() {
    let server = start(config(&["--jwt-secret", "s"])).await;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"u","exp": 4_000_000_000u64, "subscribe":["room:*"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"s"),
    )
    .unwrap();
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}?token={token}", server.ws_url()))
        .await
        .unwrap();
    let mut c = Client {
        ws,
        client_id: String::new(),
    };
    assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
    assert!(history(&mut c, json!({"channel":"room:a"})).await.is_ok());
    assert_eq!(
        history(&mut c, json!({"channel":"secret"})).await,
        Err(ErrorCode::Forbidden)
    );
}

/// The server binary's default: history on disk. A restart keeps positions, messages and
/// the publish-id window.
#[tokio::test]
async fn a_restarted_server_on_the_disk_store_recovers_and_deduplicates() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let mut args = UNLIMITED.to_vec();
    args.extend(["--history", "disk", "--data-dir", &data_dir]);
    let mut server = start(config(&args)).await;
    let mut publisher = Client::connect(&server).await;
    let mut a = Client::connect(&server).await;
    a.send_text(&subscribe("d", None, None)).await;
    let (_, start_pos, _, _) = recovered(&mut a).await;
    for n in 1..=3 {
        publish_as(&mut publisher, "d", n, &global_id(n)).await;
    }
    assert_eq!(live(&mut a).await, [1, 2, 3]);
    server.shutdown();
    assert_eq!(a.closed().await, Some(1001));
    (&mut server.task).await.unwrap().unwrap();

    let server = start(config(&args)).await;
    let mut b = Client::connect(&server).await;
    // The same publish id again (one long enough to count across connections, as the
    // client library makes them): acked with its first offset, not stored twice.
    assert_eq!(publish_as(&mut b, "d", 2, &global_id(2)).await, 2);
    publish(&mut b, "d", 4).await;
    let seen = StreamPosition {
        offset: 1,
        epoch: start_pos.epoch,
    };
    b.send_text(&subscribe("d", Some(&seen), None)).await;
    let (missed, position, ok, _) = recovered(&mut b).await;
    assert!(ok);
    assert_eq!(missed, [2, 3, 4]);
    assert_eq!(position.offset, 4);
    b.sync().await;
}

/// `since` further than this node has forwarded: fine when the stream has it (another node
/// delivered it; this node skips those for the subscriber), refused as `epoch` when it is
/// beyond the stream's end. The store here counts a message while its write is paused,
/// before the node has forwarded it: the same lag another node's delivery would show.
#[tokio::test]
async fn since_ahead_of_this_node_skips_what_the_client_has_and_beyond_the_end_is_refused() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut publisher = Client::connect(&server).await;
    let mut watcher = Client::connect(&server).await;
    watcher.send_text(&subscribe("ahead", None, None)).await;
    let (_, pos, _, _) = recovered(&mut watcher).await;
    publish(&mut publisher, "ahead", 1).await;
    let mut pause = faults.pause(Op::Append, Stage::After, Some("ahead"));
    publisher
        .send_text(r#"{"type":"publish","id":"p2","channel":"ahead","data":2}"#)
        .await;
    pause.reached().await;
    // Message 2 is in the store; this node has forwarded up to 1.
    let at = |offset| StreamPosition {
        offset,
        epoch: pos.epoch.clone(),
    };
    let mut has_two = Client::connect(&server).await;
    has_two
        .send_text(&subscribe("ahead", Some(&at(2)), None))
        .await;
    let (missed, position, ok, why) = recovered(&mut has_two).await;
    assert_eq!((missed.len(), position.offset, ok, why), (0, 2, true, None));
    let mut from_the_future = Client::connect(&server).await;
    from_the_future
        .send_text(&subscribe("ahead", Some(&at(3)), None))
        .await;
    let (_, _, ok, why) = recovered(&mut from_the_future).await;
    assert_eq!((ok, why), (false, Some(Unrecovered::Epoch)));
    pause.release();
    assert!(matches!(
        publisher.next().await,
        ServerFrame::Ack {
            offset: Some(2),
            ..
        }
    ));
    publish(&mut publisher, "ahead", 3).await;
    assert_eq!(live(&mut has_two).await, [3], "2 skipped: it had it");
    assert_eq!(live(&mut watcher).await, [1, 2, 3]);
}

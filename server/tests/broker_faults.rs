//! The broker failing, and racing: clients get `unavailable` (with the frame's id) and the
//! connection stays usable; a failed call leaves no ghost presence member and no orphan
//! channel; and the races between a channel's first subscribe and its publishes are
//! reproduced with pause points, not hoped away.

mod common;

use std::time::Duration;

use common::Client;
use common::faulty::{self, Op, Stage};
use switchboard_protocol::{Channel, ErrorCode, PresenceAction, ServerFrame};

/// How often each race is replayed: every replay stops at the same point, so one failing
/// interleaving fails every time; the repeats catch what the pause does not control.
const REPLAYS: usize = 100;

/// The replays publish faster than the default rate limit allows.
const UNLIMITED: &[&str] = &["--rate-per-sec", "100000", "--rate-burst", "100000"];

fn error(frame: ServerFrame) -> (Option<String>, ErrorCode) {
    match frame {
        ServerFrame::Error { id, code, .. } => (id.map(|i| i.0), code),
        other => panic!("expected error, got {other:?}"),
    }
}

fn subscribed_offset(frame: ServerFrame) -> (u64, String) {
    match frame {
        ServerFrame::Subscribed { position, .. } => (position.offset, position.epoch),
        other => panic!("expected subscribed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failing_broker_answers_unavailable_and_the_connection_goes_on() {
    let (server, faults) = faulty::server(&[]).await;
    for op in [Op::Subscribe, Op::Publish, Op::Presence] {
        faults.fail(op);
    }
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(error(c.next().await), (None, ErrorCode::Unavailable));
    c.send_text(r#"{"type":"publish","id":"p1","channel":"news","data":1}"#)
        .await;
    assert_eq!(
        error(c.next().await),
        (Some("p1".into()), ErrorCode::Unavailable)
    );
    c.send_text(r#"{"type":"request","id":"r1","method":"presence","params":{"channel":"news"}}"#)
        .await;
    assert_eq!(
        error(c.next().await),
        (Some("r1".into()), ErrorCode::Unavailable)
    );
    // A retry after the failed subscribe is not refused as "already subscribed".
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    assert_eq!(error(c.next().await), (None, ErrorCode::Unavailable));
    assert!(server.state.hub.channels().is_empty(), "no orphan channel");
    // Once the broker is back, the same connection works.
    faults.heal(Op::Subscribe);
    c.send_text(r#"{"type":"subscribe","channel":"news"}"#)
        .await;
    subscribed_offset(c.next().await);
    c.sync().await;
}

#[tokio::test]
async fn a_failed_join_announcement_leaves_no_ghost_member_and_no_orphan_channel() {
    let (server, faults) = faulty::server(&[]).await;
    let mut a = Client::connect(&server).await;
    faults.fail(Op::Broadcast);
    a.send_text(r#"{"type":"subscribe","channel":"room:g","presence":{"name":"Ada"}}"#)
        .await;
    assert_eq!(error(a.next().await), (None, ErrorCode::Unavailable));
    let hub = &server.state.hub;
    assert!(
        hub.presence(&Channel::from("room:g"))
            .await
            .unwrap()
            .is_empty(),
        "no ghost"
    );
    assert!(hub.channels().is_empty(), "no orphan channel");
    faults.heal(Op::Broadcast);
    // A failed presence snapshot undoes the whole subscribe, announcing the leave.
    let mut b = Client::connect(&server).await;
    b.send_text(r#"{"type":"subscribe","channel":"room:g","presence":{"name":"Bob"}}"#)
        .await;
    subscribed_offset(b.next().await);
    faults.fail(Op::Presence);
    a.send_text(r#"{"type":"subscribe","channel":"room:g","presence":{"name":"Ada"}}"#)
        .await;
    assert_eq!(error(a.next().await), (None, ErrorCode::Unavailable));
    faults.heal(Op::Presence);
    let members = hub.presence(&Channel::from("room:g")).await.unwrap();
    assert_eq!(members.len(), 1, "only Bob: {members:?}");
    let seen: Vec<_> = b
        .collect()
        .await
        .into_iter()
        .map(|f| match f {
            ServerFrame::Presence { action, .. } => action,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seen, [PresenceAction::Join, PresenceAction::Leave]);
    assert_eq!(hub.channels(), [(Channel::from("room:g"), 1)]);
}

#[tokio::test]
async fn a_failed_unsubscribe_still_removes_the_presence_member() {
    let (server, faults) = faulty::server(&[]).await;
    let mut a = Client::connect(&server).await;
    let mut b = Client::connect(&server).await;
    for c in [&mut a, &mut b] {
        c.send_text(r#"{"type":"subscribe","channel":"room:u","presence":{}}"#)
            .await;
        subscribed_offset(c.next().await);
    }
    assert!(matches!(
        a.next().await,
        ServerFrame::Presence {
            action: PresenceAction::Join,
            ..
        }
    ));
    faults.fail(Op::Unsubscribe);
    // b leaves: the node stays subscribed (a is there), so unsubscribe is not called...
    b.send_text(r#"{"type":"unsubscribe","channel":"room:u"}"#)
        .await;
    assert!(matches!(b.next().await, ServerFrame::Unsubscribed { .. }));
    assert!(matches!(
        a.next().await,
        ServerFrame::Presence {
            action: PresenceAction::Leave,
            ..
        }
    ));
    // ...a leaves last: the node's unsubscribe fails, and a still leaves presence.
    a.send_text(r#"{"type":"unsubscribe","channel":"room:u"}"#)
        .await;
    assert_eq!(error(a.next().await), (None, ErrorCode::Unavailable));
    assert!(matches!(a.next().await, ServerFrame::Unsubscribed { .. }));
    let hub = &server.state.hub;
    assert!(
        hub.presence(&Channel::from("room:u"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(hub.channels().is_empty());
    // A client disconnecting while the broker fails leaves no ghost either.
    faults.heal(Op::Unsubscribe);
    let mut c = Client::connect(&server).await;
    c.send_text(r#"{"type":"subscribe","channel":"room:v","presence":{}}"#)
        .await;
    subscribed_offset(c.next().await);
    faults.fail(Op::Unsubscribe);
    drop(c);
    let gone = common::eventually(|| hub.connection_count() == 2).await;
    assert!(gone);
    let empty = async {
        for _ in 0..300 {
            if hub
                .presence(&Channel::from("room:v"))
                .await
                .unwrap()
                .is_empty()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    assert!(empty.await, "the disconnected member left presence");
}

/// The race that lost acked messages: a publish lands while a channel's first subscriber
/// is being set up, after the node subscribed at the broker and before the stream position
/// was read. The subscriber must then receive exactly the acked messages after the position
/// it is told, in one epoch.
#[tokio::test]
async fn a_publish_racing_the_first_subscribe_is_never_acked_and_lost() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut publisher = Client::connect(&server).await;
    for round in 0..REPLAYS {
        let channel = format!("race:{round}");
        let stage = if round % 2 == 0 {
            Stage::After
        } else {
            Stage::Before
        };
        let mut pause = faults.pause(Op::Subscribe, stage, Some(&channel));
        let mut sub = Client::connect(&server).await;
        sub.send_text(&format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#))
            .await;
        pause.reached().await;
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":"m1","channel":"{channel}","data":1}}"#
            ))
            .await;
        let ServerFrame::Ack {
            offset: Some(first),
            ..
        } = publisher.next().await
        else {
            panic!("no ack");
        };
        pause.release();
        let (position, epoch) = subscribed_offset(sub.next().await);
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":"m2","channel":"{channel}","data":2}}"#
            ))
            .await;
        let ServerFrame::Ack {
            offset: Some(second),
            ..
        } = publisher.next().await
        else {
            panic!("no ack");
        };
        assert_eq!(second, first + 1, "one stream: offsets never restart");
        // Every acked offset above the position arrives, once, in order, in its epoch.
        let want: Vec<u64> = [first, second]
            .into_iter()
            .filter(|o| *o > position)
            .collect();
        let mut got = Vec::new();
        for frame in sub.collect().await {
            match frame {
                ServerFrame::Message {
                    offset, epoch: e, ..
                } => {
                    assert_eq!(e.as_deref(), Some(epoch.as_str()));
                    got.push(offset.unwrap());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, want, "round {round}: position {position}");
    }
}

/// Subscribes to different channels do not wait for each other: one channel's broker
/// subscribe is stopped, and a subscribe to another channel completes meanwhile.
#[tokio::test]
async fn subscribes_to_different_channels_do_not_wait_on_one_lock() {
    let (server, faults) = faulty::server(&[]).await;
    for _ in 0..10 {
        let mut pause = faults.pause(Op::Subscribe, Stage::Before, Some("slow"));
        let mut a = Client::connect(&server).await;
        a.send_text(r#"{"type":"subscribe","channel":"slow"}"#)
            .await;
        pause.reached().await;
        let mut b = Client::connect(&server).await;
        b.send_text(r#"{"type":"subscribe","channel":"fast"}"#)
            .await;
        let fast = tokio::time::timeout(Duration::from_secs(2), b.next()).await;
        assert!(
            matches!(fast, Ok(ServerFrame::Subscribed { .. })),
            "blocked behind another channel's subscribe: {fast:?}"
        );
        pause.release();
        subscribed_offset(a.next().await);
    }
}

/// The stream position is read after the node subscribed; a publish landing between the
/// two is not delivered to the new subscriber (its position already covers it) and a
/// later one is.
#[tokio::test]
async fn a_publish_while_the_position_is_read_is_covered_by_the_position() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut publisher = Client::connect(&server).await;
    for round in 0..REPLAYS {
        let channel = format!("pos:{round}");
        let mut pause = faults.pause(Op::Position, Stage::Before, Some(&channel));
        let mut sub = Client::connect(&server).await;
        sub.send_text(&format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#))
            .await;
        pause.reached().await;
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":"a","channel":"{channel}","data":1}}"#
            ))
            .await;
        assert!(matches!(
            publisher.next().await,
            ServerFrame::Ack {
                offset: Some(1),
                ..
            }
        ));
        pause.release();
        let (position, _) = subscribed_offset(sub.next().await);
        assert_eq!(position, 1, "round {round}");
        publisher
            .send_text(&format!(
                r#"{{"type":"publish","id":"b","channel":"{channel}","data":2}}"#
            ))
            .await;
        assert!(matches!(
            publisher.next().await,
            ServerFrame::Ack {
                offset: Some(2),
                ..
            }
        ));
        let got = sub.collect().await;
        assert!(
            matches!(
                got.as_slice(),
                [ServerFrame::Message {
                    offset: Some(2),
                    ..
                }]
            ),
            "round {round}: {got:?}"
        );
    }
}

/// A slow store (a group commit waiting for the disk): publishes to one channel are
/// numbered at once and stored in the background; nothing is delivered or acked before
/// it is stored, and deliveries keep offset order even when a later publish is stored
/// first.
#[tokio::test]
async fn deliveries_wait_for_the_store_and_keep_offset_order() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut sub = Client::connect(&server).await;
    sub.send_text(r#"{"type":"subscribe","channel":"slow"}"#)
        .await;
    subscribed_offset(sub.next().await);
    let mut first = Client::connect(&server).await;
    let mut second = Client::connect(&server).await;
    let mut pause = faults.pause(Op::Append, Stage::After, Some("slow"));
    first
        .send_text(r#"{"type":"publish","id":"a","channel":"slow","data":1}"#)
        .await;
    pause.reached().await;
    second
        .send_text(r#"{"type":"publish","id":"b","channel":"slow","data":2}"#)
        .await;
    // The second is stored and acked; it is not delivered ahead of the first.
    assert!(matches!(
        second.next().await,
        ServerFrame::Ack {
            offset: Some(2),
            ..
        }
    ));
    assert!(
        sub.collect().await.is_empty(),
        "nothing delivered past an unstored message"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), first.next())
            .await
            .is_err(),
        "no ack before the store has it"
    );
    pause.release();
    assert!(matches!(
        first.next().await,
        ServerFrame::Ack {
            offset: Some(1),
            ..
        }
    ));
    let mut got = Vec::new();
    for _ in 0..2 {
        match sub.next().await {
            ServerFrame::Message { offset, .. } => got.push(offset.unwrap()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, [1, 2]);
}

/// A store that fails an append: the publisher is told `unavailable`, nothing is
/// delivered for it, and the channel goes on.
#[tokio::test]
async fn a_failed_store_write_is_refused_and_not_delivered() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut sub = Client::connect(&server).await;
    sub.send_text(r#"{"type":"subscribe","channel":"disk"}"#)
        .await;
    subscribed_offset(sub.next().await);
    let mut publisher = Client::connect(&server).await;
    faults.fail(Op::Append);
    publisher
        .send_text(r#"{"type":"publish","id":"x","channel":"disk","data":1}"#)
        .await;
    assert_eq!(
        error(publisher.next().await),
        (Some("x".into()), ErrorCode::Unavailable)
    );
    faults.heal(Op::Append);
    publisher
        .send_text(r#"{"type":"publish","id":"y","channel":"disk","data":2}"#)
        .await;
    assert!(matches!(publisher.next().await, ServerFrame::Ack { .. }));
    let got = sub.collect().await;
    assert!(
        matches!(got.as_slice(), [ServerFrame::Message { data, .. }] if *data == serde_json::json!(2)),
        "{got:?}"
    );
}

/// A connection's publishes are stored together, not one after the other: while the
/// store holds the first, the session keeps reading (a ping is answered), the later ones
/// are numbered in order behind it, and the acks come in publish order once it is stored.
/// Past 64 in flight, the session stops reading until the oldest is stored.
#[tokio::test]
async fn publishes_of_one_connection_are_pipelined_in_order_and_bounded() {
    let (server, faults) = faulty::server(UNLIMITED).await;
    let mut c = Client::connect(&server).await;
    let mut pause = faults.pause(Op::Append, Stage::After, Some("pipe"));
    let publish =
        |i: u32| format!(r#"{{"type":"publish","id":"p{i}","channel":"pipe","data":{i}}}"#);
    c.send_text(&publish(1)).await;
    pause.reached().await;
    for i in 2..=5 {
        c.send_text(&publish(i)).await;
    }
    c.send_text(r#"{"type":"ping","id":"still reading"}"#).await;
    assert!(
        matches!(c.next().await, ServerFrame::Pong { id: Some(id), .. } if id.as_str() == "still reading"),
        "the session reads on while a publish waits for the store"
    );
    pause.release();
    for i in 1..=5u64 {
        match c.next().await {
            ServerFrame::Ack { id, offset } => {
                assert_eq!((id.as_str(), offset), (format!("p{i}").as_str(), Some(i)));
            }
            other => panic!("expected ack {i}, got {other:?}"),
        }
    }

    // The bound: 64 in flight, then the session waits for the oldest.
    let mut pause = faults.pause(Op::Append, Stage::After, Some("pipe"));
    c.send_text(&publish(100)).await;
    pause.reached().await;
    let batch: Vec<String> = (101..=164).map(publish).collect();
    c.send_text(&format!("[{}]", batch.join(","))).await;
    c.send_text(r#"{"type":"ping","id":"blocked"}"#).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.next())
            .await
            .is_err(),
        "the 65th publish waits for the oldest: nothing is read or answered meanwhile"
    );
    pause.release();
    let mut acks = Vec::new();
    loop {
        match c.next().await {
            ServerFrame::Ack { offset, .. } => acks.push(offset.unwrap()),
            ServerFrame::Pong { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    let later = c.collect().await;
    acks.extend(later.iter().map(|f| match f {
        ServerFrame::Ack { offset, .. } => offset.unwrap(),
        other => panic!("{other:?}"),
    }));
    assert_eq!(
        acks,
        (6..=70).collect::<Vec<u64>>(),
        "every ack once, in order"
    );
}

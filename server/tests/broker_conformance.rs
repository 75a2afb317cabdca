//! One conformance suite for every [`Broker`] implementation (centrifuge's pattern): the
//! guarantees documented in `server/src/broker/mod.rs`, checked on two nodes that share one
//! backend. Deliveries may be asynchronous (a network broker), so every check waits for a
//! condition instead of reading at once. Runs against the in-memory broker and against
//! the Redis broker on a real `redis-server` (two nodes, each pair under its own prefix).

mod common;

use common::recorder::Recorder;

use std::sync::Arc;

use serde_json::{Value, json};
use switchboard_protocol::{Channel, ServerFrame, StreamPosition, codec};
use switchboard_server::broker::{Broker, MemoryBroker, Publication, RedisBroker, RedisOptions};
use switchboard_server::frame::Encoded;
use switchboard_server::history::{ReadLimit, Since, Unrecoverable};

/// Two nodes on one backend, each with its recorder.
struct Pair {
    a: Arc<dyn Broker>,
    b: Arc<dyn Broker>,
    ra: Arc<Recorder>,
    rb: Arc<Recorder>,
}

fn pair(nodes: (Arc<dyn Broker>, Arc<dyn Broker>)) -> Pair {
    let (a, b) = nodes;
    let (ra, rb) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    a.start(ra.clone());
    b.start(rb.clone());
    Pair { a, b, ra, rb }
}

fn publication(channel: &str, data: Value, ephemeral: bool) -> Publication {
    Publication {
        channel: channel.into(),
        dedupe_key: None,
        from: None,
        data: data.into(),
        ephemeral,
        except: None,
    }
}

fn offset_of(frame: &Encoded) -> u64 {
    match codec::decode_server(frame.as_str()).remove(0).unwrap() {
        ServerFrame::Message { offset, .. } => offset.unwrap(),
        other => panic!("{other:?}"),
    }
}

async fn stored_messages_reach_every_subscribed_node_in_offset_order(p: Pair) {
    let ch = Channel::from("orders");
    p.a.subscribe(&ch).await.unwrap();
    p.b.subscribe(&ch).await.unwrap();
    let start = p.a.history().position(&ch).await.unwrap();
    for i in 0..50u64 {
        // Published from both nodes alternately: one stream, one order.
        let node = if i % 2 == 0 { &p.a } else { &p.b };
        let published = node
            .publish(publication("orders", json!(i), false))
            .await
            .unwrap();
        let pos = published.position.expect("stored messages have a position");
        assert_eq!(
            (pos.offset, &pos.epoch),
            (start.offset + i + 1, &start.epoch)
        );
        assert!(!published.duplicate);
    }
    for rec in [&p.ra, &p.rb] {
        let got = rec.take(50).await;
        for (i, d) in got.iter().enumerate() {
            let want = start.offset + i as u64 + 1;
            assert_eq!(d.channel, "orders");
            assert!(!d.droppable);
            let pos = d
                .position
                .as_ref()
                .expect("stored deliveries carry a position");
            assert_eq!((pos.offset, &pos.epoch), (want, &start.epoch));
            match &d.frame {
                ServerFrame::Message {
                    offset,
                    epoch,
                    data,
                    ..
                } => {
                    assert_eq!(*offset, Some(want));
                    assert_eq!(epoch.as_ref(), Some(&start.epoch));
                    assert_eq!(*data, json!(i));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        p.b.history().position(&ch).await.unwrap().offset,
        start.offset + 50
    );
}

async fn a_stream_exists_without_subscribers(p: Pair) {
    let ch = Channel::from("nobody");
    let first =
        p.a.publish(publication("nobody", json!(1), false))
            .await
            .unwrap();
    let second =
        p.b.publish(publication("nobody", json!(2), false))
            .await
            .unwrap();
    let (first, second) = (first.position.unwrap(), second.position.unwrap());
    assert_eq!(second.offset, first.offset + 1, "numbered in one stream");
    assert_eq!(second.epoch, first.epoch, "offsets never mix epochs");
    assert_eq!(p.a.history().position(&ch).await.unwrap(), second);
    // Subscribing and unsubscribing does not reset it.
    p.a.subscribe(&ch).await.unwrap();
    p.a.unsubscribe(&ch).await.unwrap();
    assert_eq!(p.b.history().position(&ch).await.unwrap(), second);
    p.ra.none().await;
    p.rb.none().await;
}

async fn ephemeral_messages_are_unnumbered_and_droppable(p: Pair) {
    let ch = Channel::from("typing");
    p.b.subscribe(&ch).await.unwrap();
    let before = p.a.history().position(&ch).await.unwrap();
    let published =
        p.a.publish(publication("typing", json!(1), true))
            .await
            .unwrap();
    assert_eq!(published.position, None);
    let got = p.rb.take(1).await;
    assert!(got[0].droppable && got[0].position.is_none());
    assert!(matches!(
        got[0].frame,
        ServerFrame::Message {
            offset: None,
            ephemeral: true,
            ..
        }
    ));
    assert_eq!(
        p.a.history().position(&ch).await.unwrap(),
        before,
        "ephemeral messages take no offset"
    );
}

async fn only_subscribed_nodes_get_deliveries(p: Pair) {
    let ch = Channel::from("once");
    p.a.subscribe(&ch).await.unwrap();
    p.b.publish(publication("once", json!(1), false))
        .await
        .unwrap();
    p.a.unsubscribe(&ch).await.unwrap();
    p.b.publish(publication("once", json!(2), false))
        .await
        .unwrap();
    p.b.broadcast(
        &ch,
        Encoded::new(&ServerFrame::Pong { id: None, ts: None }),
        None,
    )
    .await
    .unwrap();
    let got = p.ra.take(1).await;
    assert!(matches!(&got[0].frame, ServerFrame::Message { data, .. } if *data == json!(1)));
    p.rb.none().await;
}

async fn broadcasts_reach_subscribed_nodes_unstored(p: Pair) {
    let ch = Channel::from("room:a");
    p.b.subscribe(&ch).await.unwrap();
    let before = p.a.history().position(&ch).await.unwrap();
    p.a.broadcast(
        &ch,
        Encoded::new(&ServerFrame::Pong { id: None, ts: None }),
        None,
    )
    .await
    .unwrap();
    let got = p.rb.take(1).await;
    assert_eq!(got[0].frame, ServerFrame::Pong { id: None, ts: None });
    assert!(got[0].position.is_none() && !got[0].droppable);
    assert_eq!(p.a.history().position(&ch).await.unwrap(), before);
}

async fn presence_counts_users_not_connections_across_nodes(p: Pair) {
    let (a, b) = (&p.a, &p.b);
    let ch = Channel::from("room:p");
    let j1 = a
        .presence_join(&ch, "u1", "c1", json!({"name":"Ada"}).into(), 10)
        .await
        .unwrap()
        .unwrap();
    assert!(j1.announce);
    assert_eq!((j1.count, j1.member.connections), (1, 1));
    let j2 = b
        .presence_join(&ch, "u1", "c2", json!({"name":"Ada"}).into(), 10)
        .await
        .unwrap()
        .unwrap();
    assert!(!j2.announce, "a second tab, on another node, is not a join");
    assert_eq!((j2.count, j2.member.connections), (1, 2));
    let j3 = b
        .presence_join(&ch, "u2", "c3", json!({"name":"Bob"}).into(), 10)
        .await
        .unwrap()
        .unwrap();
    assert!(j3.announce);
    assert_eq!(j3.count, 2);
    for node in [a, b] {
        let members = node.presence(&ch).await.unwrap();
        let ids: Vec<_> = members
            .iter()
            .map(|m| (m.user_id.as_str(), m.connections, m.info.to_value()))
            .collect();
        assert_eq!(
            ids,
            [
                ("u1", 2, json!({"name":"Ada"})),
                ("u2", 1, json!({"name":"Bob"}))
            ]
        );
    }
    // A full set refuses a new user, not another connection of a member.
    let full = a
        .presence_join(&ch, "u3", "c4", json!({}).into(), 2)
        .await
        .unwrap();
    assert_eq!(full, None);
    assert!(
        b.presence_join(&ch, "u2", "c5", json!({"name":"Bob"}).into(), 2)
            .await
            .unwrap()
            .is_some()
    );
    assert!(b.presence_leave(&ch, "u2", "c5").await.unwrap().is_some());
    assert_eq!(a.presence(&ch).await.unwrap().len(), 2, "nothing changed");
    let l1 = a.presence_leave(&ch, "u1", "c1").await.unwrap().unwrap();
    assert!(!l1.announce);
    assert_eq!((l1.count, l1.member.connections), (2, 1));
    let l2 = b.presence_leave(&ch, "u1", "c2").await.unwrap().unwrap();
    assert!(l2.announce, "the last tab leaving is a leave");
    assert_eq!(
        (l2.count, l2.member.connections, l2.member.user_id.as_str()),
        (1, 0, "u1")
    );
    assert_eq!(a.presence_leave(&ch, "u1", "c2").await.unwrap(), None);
    assert_eq!(a.presence_leave(&ch, "nobody", "c9").await.unwrap(), None);
    b.presence_leave(&ch, "u2", "c3").await.unwrap().unwrap();
    assert!(a.presence(&ch).await.unwrap().is_empty());
}

async fn history_is_exact_or_says_why_not(p: Pair) {
    let ch = Channel::from("hist");
    let start = p.a.history().position(&ch).await.unwrap();
    for i in 0..5 {
        p.a.publish(publication("hist", json!(i), false))
            .await
            .unwrap();
    }
    let since = StreamPosition {
        offset: start.offset + 2,
        epoch: start.epoch.clone(),
    };
    match p
        .b
        .history()
        .since(&ch, &since, ReadLimit::messages(100))
        .await
        .unwrap()
    {
        Since::Complete(page) => {
            let offsets: Vec<_> = page.messages.iter().map(offset_of).collect();
            assert_eq!(
                offsets,
                (start.offset + 3..=start.offset + 5).collect::<Vec<_>>()
            );
            assert_eq!(page.position.offset, start.offset + 5);
        }
        other => panic!("{other:?}"),
    }
    match p
        .b
        .history()
        .since(&ch, &since, ReadLimit::messages(2))
        .await
        .unwrap()
    {
        Since::Complete(page) => {
            let offsets: Vec<_> = page.messages.iter().map(offset_of).collect();
            assert_eq!(offsets, [start.offset + 3, start.offset + 4]);
            assert!(page.more(), "one more after the limit");
        }
        other => panic!("{other:?}"),
    }
    let other_epoch = StreamPosition {
        offset: 1,
        epoch: "some-other-epoch".into(),
    };
    assert!(matches!(
        p.a.history()
            .since(&ch, &other_epoch, ReadLimit::messages(100))
            .await
            .unwrap(),
        Since::Unrecoverable(Unrecoverable::Epoch, _)
    ));
    let latest =
        p.b.history()
            .latest(&ch, ReadLimit::messages(2))
            .await
            .unwrap();
    let offsets: Vec<_> = latest.messages.iter().map(offset_of).collect();
    assert_eq!(offsets, [start.offset + 4, start.offset + 5]);
}

async fn publishes_with_a_seen_key_are_not_repeated_on_any_node(p: Pair) {
    let ch = Channel::from("dedupe");
    p.a.subscribe(&ch).await.unwrap();
    let with_key = |key: &str, data: Value| Publication {
        dedupe_key: Some(key.into()),
        ..publication("dedupe", data, false)
    };
    let first =
        p.a.publish(with_key("u:1/m1", json!("hello")))
            .await
            .unwrap();
    let second =
        p.a.publish(with_key("u:1/m2", json!("world")))
            .await
            .unwrap();
    let again =
        p.b.publish(with_key("u:1/m1", json!("hello")))
            .await
            .unwrap();
    assert_eq!(
        again.position, first.position,
        "a resend is acked with the first position"
    );
    assert!(again.duplicate && !first.duplicate);
    assert_ne!(first.position, second.position);
    p.ra.take(2).await;
}

async fn the_excluded_connection_travels_with_the_delivery(p: Pair) {
    let ch = Channel::from("skip");
    p.b.subscribe(&ch).await.unwrap();
    let publication = Publication {
        except: Some("c-publisher".into()),
        ..publication("skip", json!(1), false)
    };
    p.a.publish(publication).await.unwrap();
    let got = p.rb.take(1).await;
    assert_eq!(got[0].except.as_deref(), Some("c-publisher"));
    // So does the joiner of a presence broadcast.
    let pong = Encoded::new(&ServerFrame::Pong { id: None, ts: None });
    p.a.broadcast(&ch, pong, Some("c-joiner".into()))
        .await
        .unwrap();
    let got = p.rb.take(1).await;
    assert_eq!(got[0].except.as_deref(), Some("c-joiner"));
}

/// Runs every check, each on a fresh pair of nodes made by `make`.
async fn conformance(make: impl Fn() -> (Arc<dyn Broker>, Arc<dyn Broker>)) {
    stored_messages_reach_every_subscribed_node_in_offset_order(pair(make())).await;
    a_stream_exists_without_subscribers(pair(make())).await;
    ephemeral_messages_are_unnumbered_and_droppable(pair(make())).await;
    only_subscribed_nodes_get_deliveries(pair(make())).await;
    broadcasts_reach_subscribed_nodes_unstored(pair(make())).await;
    presence_counts_users_not_connections_across_nodes(pair(make())).await;
    history_is_exact_or_says_why_not(pair(make())).await;
    publishes_with_a_seen_key_are_not_repeated_on_any_node(pair(make())).await;
    the_excluded_connection_travels_with_the_delivery(pair(make())).await;
}

#[tokio::test]
async fn memory_broker_conforms() {
    conformance(|| {
        let a = MemoryBroker::new();
        let b = a.node();
        (Arc::new(a), Arc::new(b))
    })
    .await;
}

#[tokio::test]
async fn redis_broker_conforms() {
    let Some(redis) = common::redis::Redis::start() else {
        return;
    };
    let pairs = std::sync::atomic::AtomicU32::new(0);
    conformance(|| {
        let n = pairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let node = || {
            let mut opts = RedisOptions::new(redis.url());
            opts.prefix = format!("conf{n}");
            Arc::new(RedisBroker::new(opts).unwrap()) as Arc<dyn Broker>
        };
        (node(), node())
    })
    .await;
}

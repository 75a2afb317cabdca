//! One conformance suite for every [`Broker`] implementation (centrifuge's pattern): the
//! guarantees documented in `server/src/broker/mod.rs`. Runs against the in-memory broker;
//! a cross-node broker adds one line at the bottom.

use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use switchboard_protocol::{Channel, ClientId, ServerFrame, StreamPosition, codec};
use switchboard_server::broker::{Broker, BrokerHandler, MemoryBroker, Publication};

#[derive(Debug, Clone, PartialEq)]
struct Delivery {
    channel: String,
    frame: ServerFrame,
    position: Option<StreamPosition>,
    droppable: bool,
    except: Option<String>,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Delivery>>);

impl BrokerHandler for Recorder {
    fn deliver(
        &self,
        channel: &Channel,
        frame: &Utf8Bytes,
        position: Option<&StreamPosition>,
        droppable: bool,
        except: Option<&ClientId>,
    ) {
        let mut frames = codec::decode_server(frame.as_str());
        self.0.lock().unwrap().push(Delivery {
            channel: channel.0.clone(),
            frame: frames.remove(0).expect("the broker delivers valid frames"),
            position: position.cloned(),
            droppable,
            except: except.map(|c| c.0.clone()),
        });
    }
}

impl Recorder {
    fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn start(broker: Arc<dyn Broker>) -> (Arc<dyn Broker>, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    broker.start(rec.clone());
    (broker, rec)
}

fn publication(channel: &str, data: Value, ephemeral: bool) -> Publication {
    Publication {
        id: None,
        channel: channel.into(),
        from: None,
        data,
        ephemeral,
        except: None,
    }
}

async fn stored_messages_arrive_in_offset_order(broker: Arc<dyn Broker>) {
    let (b, rec) = start(broker);
    let ch = Channel::from("orders");
    let start_pos = b.subscribe(&ch).await.unwrap();
    for i in 0..50 {
        let offset = b
            .publish(publication("orders", json!(i), false))
            .await
            .unwrap();
        assert_eq!(offset, Some(start_pos.offset + i + 1));
    }
    let got = rec.take();
    assert_eq!(got.len(), 50);
    for (i, d) in got.iter().enumerate() {
        let want = start_pos.offset + i as u64 + 1;
        assert_eq!(d.channel, "orders");
        assert!(!d.droppable);
        let pos = d
            .position
            .as_ref()
            .expect("stored messages carry their position");
        assert_eq!((pos.offset, &pos.epoch), (want, &start_pos.epoch));
        match &d.frame {
            ServerFrame::Message {
                offset,
                epoch,
                data,
                ..
            } => {
                assert_eq!(*offset, Some(want));
                assert_eq!(epoch.as_ref(), Some(&start_pos.epoch));
                assert_eq!(*data, json!(i));
            }
            other => panic!("{other:?}"),
        }
    }
    // a second subscribe sees the new top
    assert_eq!(
        b.subscribe(&ch).await.unwrap().offset,
        start_pos.offset + 50
    );
}

async fn ephemeral_messages_are_unnumbered_and_droppable(broker: Arc<dyn Broker>) {
    let (b, rec) = start(broker);
    let ch = Channel::from("typing");
    let before = b.subscribe(&ch).await.unwrap();
    assert_eq!(
        b.publish(publication("typing", json!(1), true))
            .await
            .unwrap(),
        None
    );
    let got = rec.take();
    assert_eq!(got.len(), 1);
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
        b.subscribe(&ch).await.unwrap(),
        before,
        "ephemeral messages take no offset"
    );
}

async fn only_subscribed_channels_are_delivered(broker: Arc<dyn Broker>) {
    let (b, rec) = start(broker);
    b.publish(publication("nobody", json!(1), false))
        .await
        .unwrap();
    let ch = Channel::from("once");
    b.subscribe(&ch).await.unwrap();
    b.publish(publication("once", json!(1), false))
        .await
        .unwrap();
    b.unsubscribe(&ch).await.unwrap();
    b.publish(publication("once", json!(2), false))
        .await
        .unwrap();
    let frame: Utf8Bytes = "{\"type\":\"pong\"}".into();
    b.broadcast(&ch, frame).await.unwrap();
    let got = rec.take();
    assert_eq!(got.len(), 1);
    assert!(matches!(&got[0].frame, ServerFrame::Message { data, .. } if *data == json!(1)));
}

async fn broadcasts_reach_subscribed_nodes_unstored(broker: Arc<dyn Broker>) {
    let (b, rec) = start(broker);
    let ch = Channel::from("room:a");
    let before = b.subscribe(&ch).await.unwrap();
    b.broadcast(&ch, "{\"type\":\"pong\"}".into())
        .await
        .unwrap();
    let got = rec.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].frame, ServerFrame::Pong { id: None });
    assert!(got[0].position.is_none() && !got[0].droppable);
    assert_eq!(b.subscribe(&ch).await.unwrap(), before);
}

async fn presence_counts_users_not_connections(broker: Arc<dyn Broker>) {
    let (b, _rec) = start(broker);
    let ch = Channel::from("room:p");
    let j1 = b
        .presence_join(&ch, "u1", "c1", json!({"name":"Ada"}))
        .await
        .unwrap();
    assert!(j1.announce);
    assert_eq!((j1.count, j1.member.connections), (1, 1));
    let j2 = b
        .presence_join(&ch, "u1", "c2", json!({"name":"Ada"}))
        .await
        .unwrap();
    assert!(!j2.announce, "a second tab is not a join");
    assert_eq!((j2.count, j2.member.connections), (1, 2));
    let j3 = b
        .presence_join(&ch, "u2", "c3", json!({"name":"Bob"}))
        .await
        .unwrap();
    assert!(j3.announce);
    assert_eq!(j3.count, 2);
    let members = b.presence(&ch).await.unwrap();
    let ids: Vec<_> = members
        .iter()
        .map(|m| (m.user_id.as_str(), m.connections))
        .collect();
    assert_eq!(ids, [("u1", 2), ("u2", 1)]);

    let l1 = b.presence_leave(&ch, "u1", "c1").await.unwrap().unwrap();
    assert!(!l1.announce);
    assert_eq!((l1.count, l1.member.connections), (2, 1));
    let l2 = b.presence_leave(&ch, "u1", "c2").await.unwrap().unwrap();
    assert!(l2.announce, "the last tab leaving is a leave");
    assert_eq!(
        (l2.count, l2.member.connections, l2.member.user_id.as_str()),
        (1, 0, "u1")
    );
    assert_eq!(b.presence_leave(&ch, "u1", "c2").await.unwrap(), None);
    assert_eq!(b.presence_leave(&ch, "nobody", "c9").await.unwrap(), None);
    b.presence_leave(&ch, "u2", "c3").await.unwrap().unwrap();
    assert!(b.presence(&ch).await.unwrap().is_empty());
}

async fn history_is_exact_or_absent(broker: Arc<dyn Broker>) {
    let (b, _rec) = start(broker);
    let ch = Channel::from("hist");
    let start_pos = b.subscribe(&ch).await.unwrap();
    for i in 0..5 {
        b.publish(publication("hist", json!(i), false))
            .await
            .unwrap();
    }
    let since = StreamPosition {
        offset: start_pos.offset + 2,
        epoch: start_pos.epoch.clone(),
    };
    if let Some(frames) = b.history_since(&ch, &since).await.unwrap() {
        let offsets: Vec<_> = frames
            .iter()
            .map(
                |f| match codec::decode_server(f.as_str()).remove(0).unwrap() {
                    ServerFrame::Message { offset, .. } => offset.unwrap(),
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(
            offsets,
            (start_pos.offset + 3..=start_pos.offset + 5).collect::<Vec<_>>()
        );
    }
    let other_epoch = StreamPosition {
        offset: 1,
        epoch: "some-other-epoch".into(),
    };
    assert_eq!(b.history_since(&ch, &other_epoch).await.unwrap(), None);
}

async fn publishes_with_a_seen_id_are_not_repeated(broker: Arc<dyn Broker>) {
    let (b, rec) = start(broker);
    let ch = Channel::from("dedupe");
    b.subscribe(&ch).await.unwrap();
    let with_id = |id: &str, data: Value| Publication {
        id: Some(id.into()),
        ..publication("dedupe", data, false)
    };
    let first = b.publish(with_id("m1", json!("hello"))).await.unwrap();
    let second = b.publish(with_id("m2", json!("world"))).await.unwrap();
    let again = b.publish(with_id("m1", json!("hello"))).await.unwrap();
    assert_eq!(
        again, first,
        "a resend is acknowledged with the first offset"
    );
    assert_ne!(first, second);
    assert_eq!(rec.take().len(), 2, "and not delivered twice");
}

async fn the_excluded_connection_travels_with_the_delivery(broker: Arc<dyn Broker>) {
    let (b, rec) = start(broker);
    let ch = Channel::from("skip");
    b.subscribe(&ch).await.unwrap();
    let p = Publication {
        except: Some(ClientId::from("c-publisher")),
        ..publication("skip", json!(1), false)
    };
    b.publish(p).await.unwrap();
    let got = rec.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].except.as_deref(), Some("c-publisher"));
}

/// Runs every check against brokers made by `make`.
async fn conformance(make: impl Fn() -> Arc<dyn Broker>) {
    stored_messages_arrive_in_offset_order(make()).await;
    ephemeral_messages_are_unnumbered_and_droppable(make()).await;
    only_subscribed_channels_are_delivered(make()).await;
    broadcasts_reach_subscribed_nodes_unstored(make()).await;
    presence_counts_users_not_connections(make()).await;
    history_is_exact_or_absent(make()).await;
    publishes_with_a_seen_id_are_not_repeated(make()).await;
    the_excluded_connection_travels_with_the_delivery(make()).await;
}

#[tokio::test]
async fn memory_broker_conforms() {
    conformance(|| Arc::new(MemoryBroker::new())).await;
}

//! The Redis broker's own promises, on a real `redis-server`, beyond the conformance
//! suite: what pub/sub loses is read back from the streams (a lost message, a lost
//! connection), the node says when Redis is unreachable, and presence entries are
//! leases that die with their node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::recorder::Recorder;
use common::redis::Redis;
use serde_json::json;
use switchboard_protocol::{Channel, PresenceAction, ServerFrame};
use switchboard_server::broker::{Broker, Publication, RedisBroker, RedisOptions};
use switchboard_server::frame::message_body;

fn node(redis: &Redis, prefix: &str, ttl: Duration) -> (Arc<RedisBroker>, Arc<Recorder>) {
    let mut opts = RedisOptions::new(redis.url());
    opts.prefix = prefix.into();
    opts.presence_ttl = ttl;
    let broker = Arc::new(RedisBroker::new(opts).unwrap());
    let rec = Arc::new(Recorder::default());
    broker.start(rec.clone());
    (broker, rec)
}

fn publication(channel: &str, n: u64) -> Publication {
    Publication {
        channel: channel.into(),
        dedupe_key: None,
        from: None,
        data: json!(n).into(),
        ephemeral: false,
        except: None,
    }
}

/// Stores messages the way the publish script does, without `PUBLISH`: what a node
/// misses when pub/sub loses them. Returns the redis commands, to run in one MULTI.
fn stored_unpublished(
    prefix: &str,
    channel: &str,
    offsets: std::ops::RangeInclusive<u64>,
) -> Vec<Vec<String>> {
    let ch = Channel::from(channel);
    let mut cmds = Vec::new();
    for offset in offsets {
        let body = message_body(&ch, None, json!(offset).into(), 1, false);
        cmds.push(vec![
            "HINCRBY".into(),
            format!("{prefix}:{{{channel}}}:m"),
            "s".into(),
            "1".into(),
        ]);
        cmds.push(vec![
            "XADD".into(),
            format!("{prefix}:{{{channel}}}:s"),
            format!("0-{offset}"),
            "t".into(),
            switchboard_server::clock::now_ms().to_string(),
            "d".into(),
            String::from_utf8(body.to_vec()).unwrap(),
            // Its publisher asked not to get it back (skip_self).
            "x".into(),
            format!("c-publisher-{offset}"),
        ]);
    }
    cmds
}

/// Two nodes under prefix `name`; node b subscribed to channel `name` and has received
/// its first message (offset 1) from node a.
async fn live_pair(
    redis: &Redis,
    name: &str,
) -> (Arc<RedisBroker>, Arc<RedisBroker>, Arc<Recorder>) {
    let ttl = Duration::from_secs(30);
    let (a, _) = node(redis, name, ttl);
    let (b, rb) = node(redis, name, ttl);
    b.subscribe(&Channel::from(name)).await.unwrap();
    a.publish(publication(name, 1)).await.unwrap();
    assert_eq!(offsets(&rb.take(1).await), [1]);
    (a, b, rb)
}

/// Cuts every subscribed connection (both nodes'): they reconnect and resubscribe.
fn cut_pubsub() -> Vec<String> {
    ["CLIENT", "KILL", "TYPE", "pubsub"]
        .map(String::from)
        .to_vec()
}

fn offsets(rec: &[common::recorder::Got]) -> Vec<u64> {
    rec.iter()
        .map(|g| g.position.as_ref().expect("stored").offset)
        .collect()
}

#[tokio::test]
async fn a_message_pubsub_lost_is_read_back_from_the_stream() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, rb) = live_pair(&redis, "gap").await;
    // Offsets 2 and 3 stored, their PUBLISH lost; 4 published normally.
    redis.transaction(&stored_unpublished("gap", "gap", 2..=3));
    a.publish(publication("gap", 4)).await.unwrap();
    let got = rb.take(3).await;
    assert_eq!(offsets(&got), [2, 3, 4], "in order, none twice");
    let data: Vec<_> = got
        .iter()
        .map(|g| match &g.frame {
            ServerFrame::Message { data, .. } => data.to_value(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(data, [json!(2), json!(3), json!(4)]);
    // Read back with the connection to skip, like a live delivery.
    assert_eq!(got[0].except.as_deref(), Some("c-publisher-2"));
    assert!(metric(&*b, "switchboard_redis_fills_total") >= 1);
}

#[tokio::test]
async fn a_node_whose_connection_dropped_reads_back_what_was_stored_meanwhile() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, rb) = live_pair(&redis, "drop").await;
    // Every subscribed connection is cut, and in the same transaction (before any node
    // can reconnect) two messages are stored that nobody was told about.
    let mut cmds = vec![cut_pubsub()];
    cmds.extend(stored_unpublished("drop", "drop", 2..=3));
    redis.transaction(&cmds);
    // Reconnected and resubscribed by itself: the stored ones, then live ones.
    let got = rb.take(2).await;
    assert_eq!(offsets(&got), [2, 3]);
    // Refused (not acked) until node a knows its connection is back; once one publish
    // is acked, no more are sent, so exactly one live delivery must follow.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let acked = loop {
        if let Ok(acked) = a.publish(publication("drop", 9)).await {
            break acked;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node a never took a publish after the cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(acked.position.unwrap().offset, 4);
    let live = rb.take(1).await;
    assert_eq!(
        live[0].position.as_ref().unwrap().offset,
        4,
        "no gap, no repeat"
    );
    assert!(metric(&*b, "switchboard_redis_outages_total") >= 1);
}

#[tokio::test]
async fn health_says_when_redis_is_unreachable_and_when_it_is_back() {
    let Some(mut redis) = Redis::start_with(true) else {
        return;
    };
    let (a, ra) = node(&redis, "health", Duration::from_secs(30));
    let ch = Channel::from("h");
    a.subscribe(&ch).await.unwrap();
    assert!(common::eventually(|| a.health().is_ok()).await);
    let before = a
        .publish(publication("h", 1))
        .await
        .unwrap()
        .position
        .unwrap();
    ra.take(1).await;
    redis.kill();
    assert!(
        common::eventually(|| a.health().is_err()).await,
        "down is noticed"
    );
    assert_eq!(metric(&*a, "switchboard_redis_up"), 0);
    assert!(
        a.publish(publication("h", 2)).await.is_err(),
        "a publish fails (never acked and lost)"
    );
    redis.restart();
    let back = async {
        for _ in 0..100 {
            if a.health().is_ok() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(back.await, "up again within 10 s");
    // Resubscribed: the stream kept its epoch (append-only file), delivery resumes.
    let after = a
        .publish(publication("h", 3))
        .await
        .unwrap()
        .position
        .unwrap();
    assert_eq!(
        (after.offset, &after.epoch),
        (before.offset + 1, &before.epoch)
    );
    assert_eq!(offsets(&ra.take(1).await), [after.offset]);
}

#[tokio::test]
async fn the_members_of_a_node_that_died_leave_within_the_lease() {
    let Some(redis) = Redis::start() else { return };
    let ttl = Duration::from_secs(2);
    let (a, ra) = node(&redis, "lease", ttl);
    let (b, _) = node(&redis, "lease", ttl);
    let ch = Channel::from("room:lease");
    a.subscribe(&ch).await.unwrap();
    a.presence_join(&ch, "ada", "c1", json!({}).into(), 10)
        .await
        .unwrap()
        .unwrap();
    b.presence_join(&ch, "bob", "c2", json!({}).into(), 10)
        .await
        .unwrap()
        .unwrap();
    // Renewed while its node lives: still there after two leases.
    tokio::time::sleep(ttl * 2).await;
    let users = |m: Vec<switchboard_protocol::Member>| -> Vec<String> {
        m.into_iter().map(|m| m.user_id).collect()
    };
    assert_eq!(users(a.presence(&ch).await.unwrap()), ["ada", "bob"]);
    // Node b dies without a word.
    drop(b);
    let started = std::time::Instant::now();
    let got = loop {
        let got = ra.0.lock().unwrap().clone();
        if !got.is_empty() || started.elapsed() > ttl * 3 {
            break got;
        }
        // Reads meanwhile (as clients' presence requests would) must not swallow the
        // expired lease before the sweep announces it.
        let _ = a.presence(&ch).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let left = started.elapsed();
    assert!(
        matches!(&got[..], [g] if matches!(&g.frame, ServerFrame::Presence { action: PresenceAction::Leave, member, count: 1, .. } if member.user_id == "bob")),
        "bob's leave announced once: {got:?}"
    );
    assert!(
        left <= ttl + Duration::from_secs(2),
        "within the lease: {left:?}"
    );
    assert_eq!(users(a.presence(&ch).await.unwrap()), ["ada"]);
}

fn metric(broker: &dyn Broker, name: &str) -> u64 {
    broker
        .metrics()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, v)| v)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// The race: a fill has read the stream and not yet forwarded it when the connection
/// drops, and messages are stored during the loss. The fill must read again; otherwise
/// those messages wait for the next live one (or the clients' position check).
#[tokio::test]
async fn a_fill_interrupted_by_a_lost_connection_reads_again() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, rb) = live_pair(&redis, "race").await;
    let pause = b.pause_fills().await;
    // A gap (2 stored unpublished, 3 published) starts a fill, which reads 2 and 3 and
    // stops at the pause.
    redis.transaction(&stored_unpublished("race", "race", 2..=2));
    a.publish(publication("race", 3)).await.unwrap();
    assert!(
        common::eventually(|| b.fills_waiting() == 1).await,
        "the fill read"
    );
    // Now the connection drops, and 4 is stored while it is down.
    let mut cmds = vec![cut_pubsub()];
    cmds.extend(stored_unpublished("race", "race", 4..=4));
    redis.transaction(&cmds);
    assert!(
        common::eventually(|| metric(&*b, "switchboard_redis_outages_total") == 1).await,
        "the loss is noticed"
    );
    drop(pause);
    // No later message: 4 arrives only if the fill reads again.
    assert_eq!(offsets(&rb.take(3).await), [2, 3, 4]);
}

/// A channel whose meta expired (or whose Redis lost it) starts a new epoch at its next
/// publish: the subscribed node delivers the new epoch's messages, from its first.
#[tokio::test]
async fn a_new_epoch_is_delivered_from_its_first_message() {
    let Some(redis) = Redis::start() else { return };
    let (a, b, rb) = live_pair(&redis, "epoch").await;
    let before = b.history().position(&Channel::from("epoch")).await.unwrap();
    redis.transaction(&[vec![
        "DEL".into(),
        "epoch:{epoch}:m".into(),
        "epoch:{epoch}:s".into(),
    ]]);
    a.publish(publication("epoch", 2)).await.unwrap();
    a.publish(publication("epoch", 3)).await.unwrap();
    let got = rb.take(2).await;
    let positions: Vec<_> = got.iter().map(|g| g.position.clone().unwrap()).collect();
    assert_eq!(
        positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(
        positions.iter().all(|p| p.epoch != before.epoch),
        "{positions:?}"
    );
}

/// User ids may hold any character (a token's `sub`, an app's user): presence keeps
/// them apart from the info, and a `direct` to an id no node made names nobody.
#[tokio::test]
async fn any_user_id_and_no_forged_direct_framing() {
    let Some(redis) = Redis::start() else { return };
    let (a, _) = node(&redis, "odd", Duration::from_secs(30));
    let ch = Channel::from("room:odd");
    let odd = "x:1\ny z";
    let joined = a
        .presence_join(&ch, odd, "c1", json!({"k": ":\n"}).into(), 10)
        .await
        .unwrap()
        .unwrap();
    assert!(joined.announce);
    let members = a.presence(&ch).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].user_id, odd);
    assert_eq!(members[0].info.to_value(), json!({"k": ":\n"}));
    let left = a.presence_leave(&ch, odd, "c1").await.unwrap().unwrap();
    assert!(left.announce);
    assert!(a.presence(&ch).await.unwrap().is_empty());
    let frame = switchboard_server::frame::Encoded::new(&ServerFrame::Pong { id: None, ts: None });
    for to in ["node.x\n{\"type\":\"pong\"}", "node.a b", "nodot"] {
        let got = a
            .direct(&switchboard_protocol::ClientId(to.into()), frame.clone())
            .await;
        assert_eq!(
            got,
            Err(switchboard_server::broker::DirectError::Gone),
            "{to:?}"
        );
    }
}

/// A `--retention` rule's age applies on Redis too: past it, a stream's messages are no
/// longer returned (and `since` says they were trimmed); other channels keep theirs.
#[tokio::test]
async fn per_channel_age_rules_apply() {
    let Some(redis) = Redis::start() else { return };
    let mut opts = RedisOptions::new(redis.url());
    opts.prefix = "age".into();
    opts.retention.rules = vec!["short:*=100/1s".parse().unwrap()];
    let a = RedisBroker::new(opts).unwrap();
    a.start(Arc::new(Recorder::default()));
    let (short, long) = (Channel::from("short:x"), Channel::from("long:x"));
    let start = a.history().position(&short).await.unwrap();
    a.publish(publication("short:x", 1)).await.unwrap();
    a.publish(publication("long:x", 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let limit = switchboard_server::history::ReadLimit::messages(10);
    assert!(
        a.history()
            .latest(&short, limit)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert!(matches!(
        a.history().since(&short, &start, limit).await.unwrap(),
        switchboard_server::history::Since::Unrecoverable(
            switchboard_server::history::Unrecoverable::Trimmed,
            _
        )
    ));
    assert_eq!(
        a.history()
            .latest(&long, limit)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
}

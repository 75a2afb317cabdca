//! The client core against a simulated server that disconnects, refuses, rate-limits and
//! restarts at random, on a simulated clock. Properties, for every seed:
//! - every publish the core accepted ends in exactly one `Published` event, never both an
//!   ack and a failure, never neither, and those events come in acceptance order;
//! - every acked publish is in the server's stream exactly once, and every publish the
//!   server refused for good is not;
//! - without `unavailable` refusals, the stream holds the acked publishes in acceptance
//!   order (a retried refusal can only reorder the publishes already in flight behind it);
//! - no message over the server's `max_frame_bytes` or its batch limit is ever sent;
//! - with pacing from `welcome.limits`, a well-behaved server's rate limit is never hit;
//! - requests in flight at a disconnect fail at once, and every request ends once.

use std::collections::{HashMap, HashSet};

mod common;

use common::{Rng, welcome};
use proptest::prelude::*;
use switchboard_client::{Action, ClientCore, Event, Options, PublishError, RequestError};
use switchboard_protocol::{
    Channel, ClientFrame, CloseCode, ErrorCode, Limits, Payload, ServerFrame, StreamPosition, codec,
};

/// How unreliable the simulated server is.
#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Per transmitted message: the connection drops before its replies arrive.
    drop_before_reply: f64,
    /// Per step: the server closes the connection (a restart, a slow-consumer close…).
    close: f64,
    /// Per connection attempt: refused (the server is down).
    refuse_connect: f64,
    /// Per publish: refused as `unavailable` (retryable).
    unavailable: f64,
    /// The server enforces its rate limit like the real one.
    rate_limit: bool,
}

/// What the server keeps: a stream per channel (ids in order) with a dedupe window that
/// survives restarts, like the embedded store.
#[derive(Default)]
struct Stream {
    ids: Vec<String>,
    seen: HashMap<String, u64>,
}

struct Server {
    limits: Limits,
    streams: HashMap<String, Stream>,
    /// The connection's token bucket (tokens, last refill time).
    bucket: (f64, u64),
    /// Publishes refused for good (their ids).
    refused: HashSet<String>,
    rate_limited: u64,
    biggest_message: usize,
    biggest_batch: usize,
}

impl Server {
    fn new() -> Self {
        Self {
            limits: Limits {
                max_frame_bytes: 2048,
                max_batch: 10,
                rate_per_sec: 50,
                rate_burst: 20,
                ..Limits::default()
            },
            streams: HashMap::new(),
            bucket: (0.0, 0),
            refused: HashSet::new(),
            rate_limited: 0,
            biggest_message: 0,
            biggest_batch: 0,
        }
    }

    /// A new connection: a full token bucket, as the real server gives each connection
    /// (its `hello` takes the first token).
    fn connected(&mut self, now: u64) {
        self.bucket = (f64::from(self.limits.rate_burst), now);
    }

    fn welcome(&mut self, now: u64) -> String {
        codec::encode(&welcome(self.limits.clone(), Some(now)))
    }

    fn take_token(&mut self, now: u64) -> bool {
        let (tokens, last) = self.bucket;
        let tokens = (tokens + (now - last) as f64 * f64::from(self.limits.rate_per_sec) / 1000.0)
            .min(f64::from(self.limits.rate_burst));
        if tokens >= 1.0 {
            self.bucket = (tokens - 1.0, now);
            true
        } else {
            self.bucket = (tokens, now);
            false
        }
    }

    /// The replies to one text message.
    fn handle(&mut self, text: &str, now: u64, faults: &Faults, rng: &mut Rng) -> Vec<String> {
        self.biggest_message = self.biggest_message.max(text.len());
        assert!(
            text.len() <= self.limits.max_frame_bytes as usize,
            "a message of {} bytes",
            text.len()
        );
        let frames = codec::decode_client(text, &self.limits);
        self.biggest_batch = self.biggest_batch.max(frames.len());
        let mut out = Vec::new();
        for frame in frames {
            let frame = frame.expect("the client sends valid frames");
            let id = frame.id().cloned();
            if faults.rate_limit && !self.take_token(now) {
                self.rate_limited += 1;
                out.push(codec::encode(&ServerFrame::error(
                    id,
                    ErrorCode::RateLimited,
                    "over the rate",
                )));
                continue;
            }
            let reply = match frame {
                ClientFrame::Hello { .. } => self.welcome(now),
                ClientFrame::Ping { id } => codec::encode(&ServerFrame::Pong { id, ts: None }),
                ClientFrame::Subscribe { channel, .. } => codec::encode(&ServerFrame::Subscribed {
                    channel,
                    position: StreamPosition {
                        offset: 0,
                        epoch: "e".into(),
                    },
                    recovered: false,
                    unrecovered: None,
                    presence: None,
                }),
                ClientFrame::Unsubscribe { channel, .. } => {
                    codec::encode(&ServerFrame::Unsubscribed { channel })
                }
                ClientFrame::Publish {
                    id: Some(id),
                    channel,
                    ..
                } => {
                    if channel.as_str() == "forbidden" {
                        self.refused.insert(id.0.clone());
                        codec::encode(&ServerFrame::error(Some(id), ErrorCode::Forbidden, "no"))
                    } else if rng.chance(faults.unavailable) {
                        codec::encode(&ServerFrame::error(
                            Some(id),
                            ErrorCode::Unavailable,
                            "broker down",
                        ))
                    } else {
                        let stream = self.streams.entry(channel.0).or_default();
                        let offset = match stream.seen.get(&id.0) {
                            Some(offset) => *offset,
                            None => {
                                stream.ids.push(id.0.clone());
                                let offset = stream.ids.len() as u64;
                                stream.seen.insert(id.0.clone(), offset);
                                offset
                            }
                        };
                        codec::encode(&ServerFrame::Ack {
                            id,
                            offset: Some(offset),
                        })
                    }
                }
                ClientFrame::Publish { id: None, .. } => continue,
                ClientFrame::Request { id, .. } => codec::encode(&ServerFrame::Response {
                    id,
                    result: Payload::from(serde_json::json!(1)),
                }),
                ClientFrame::Direct { .. } => continue,
            };
            out.push(reply);
        }
        out
    }
}

#[derive(Default)]
struct Record {
    /// Accepted publishes, in order: (id, channel).
    accepted: Vec<(String, String)>,
    /// `Published` events in the order they came.
    published: Vec<(String, Result<Option<u64>, PublishError>)>,
    requests: HashSet<String>,
    responses: HashMap<String, u32>,
    disconnect_failures: u32,
}

fn run(seed: u64, steps: usize, faults: Faults) -> (Record, Server) {
    let mut rng = Rng(seed | 1);
    let mut server = Server::new();
    let mut now: u64 = 0;
    let opts = Options::default();
    let mut core = ClientCore::new(opts, seed, now);
    let mut open = false;
    let mut rec = Record::default();
    let channels = ["a", "b", "forbidden"];
    let mut subs = Vec::new();
    for step in 0..steps {
        // The application.
        match rng.below(10) {
            0..=4 => {
                let ch = channels[rng.below(if step % 7 == 0 { 3 } else { 2 }) as usize];
                let size = rng.below(300) as usize;
                let data = Payload::new(&"x".repeat(size)).unwrap();
                if let Ok(id) = core.publish(&Channel::from(ch), data, false, false, now) {
                    rec.accepted.push((id.0, ch.to_owned()));
                }
            }
            5 => {
                if let Ok(id) = core.request("time", Payload::null(), None, now) {
                    rec.requests.insert(id.0);
                }
            }
            6 if subs.len() < 3 => subs.push(core.subscribe(&Channel::from("a"), None, now)),
            7 if !subs.is_empty() => {
                let key = subs.swap_remove(rng.below(subs.len() as u64) as usize);
                core.unsubscribe(&key, now);
            }
            _ => {}
        }
        // The server drops the connection now and then.
        if open && rng.chance(faults.close) {
            open = false;
            let code = [
                CloseCode::GOING_AWAY,
                CloseCode::SLOW_CONSUMER,
                CloseCode::HEARTBEAT_TIMEOUT,
            ][rng.below(3) as usize];
            core.on_disconnected(Some(code), "server", now);
        }
        // The driver.
        pump(
            &mut core,
            &mut server,
            &mut open,
            now,
            &faults,
            &mut rng,
            &mut rec,
        );
        // Time passes: to the next deadline, or a little.
        let step = 1 + rng.below(40);
        now = core
            .next_deadline()
            .map_or(now + step, |d| d.max(now).min(now + step));
        core.on_tick(now);
        pump(
            &mut core,
            &mut server,
            &mut open,
            now,
            &faults,
            &mut rng,
            &mut rec,
        );
    }
    // Quiet: no more faults; everything accepted must end.
    let calm = Faults {
        drop_before_reply: 0.0,
        close: 0.0,
        refuse_connect: 0.0,
        unavailable: 0.0,
        ..faults
    };
    for _ in 0..20_000 {
        if rec.published.len() == rec.accepted.len() && rec.responses.len() == rec.requests.len() {
            break;
        }
        now += 20;
        core.on_tick(now);
        pump(
            &mut core,
            &mut server,
            &mut open,
            now,
            &calm,
            &mut rng,
            &mut rec,
        );
    }
    (rec, server)
}

fn pump(
    core: &mut ClientCore,
    server: &mut Server,
    open: &mut bool,
    now: u64,
    faults: &Faults,
    rng: &mut Rng,
    rec: &mut Record,
) {
    loop {
        let mut busy = false;
        while let Some(action) = core.poll_action() {
            busy = true;
            match action {
                Action::Connect => {
                    if rng.chance(faults.refuse_connect) {
                        core.on_disconnected(None, "connection refused", now);
                    } else {
                        *open = true;
                        server.connected(now);
                        core.on_connected(now);
                    }
                }
                Action::Disconnect { .. } => *open = false,
                Action::RefreshToken => {}
            }
        }
        while let Some(text) = core.poll_transmit() {
            busy = true;
            if !*open {
                continue;
            }
            let replies = server.handle(&text, now, faults, rng);
            if rng.chance(faults.drop_before_reply) {
                *open = false;
                core.on_disconnected(None, "connection reset", now);
                continue;
            }
            for reply in replies {
                core.on_text(&reply, now);
            }
        }
        while let Some(event) = core.poll_event() {
            busy = true;
            match event {
                Event::Published { id, result } => rec.published.push((id.0, result)),
                Event::Response { id, result } => {
                    if result == Err(RequestError::Disconnected) {
                        rec.disconnect_failures += 1;
                    }
                    *rec.responses.entry(id.0).or_default() += 1;
                }
                _ => {}
            }
        }
        if !busy {
            return;
        }
    }
}

fn check(rec: &Record, server: &Server, faults: &Faults) {
    // Exactly one outcome per accepted publish, in acceptance order.
    let accepted: Vec<&str> = rec.accepted.iter().map(|(id, _)| id.as_str()).collect();
    let reported: Vec<&str> = rec.published.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(reported, accepted, "one outcome each, in order");
    // Acked means in the stream once; refused means not in it.
    let mut in_stream: HashMap<&str, usize> = HashMap::new();
    for stream in server.streams.values() {
        for id in &stream.ids {
            *in_stream.entry(id.as_str()).or_default() += 1;
        }
    }
    assert!(
        in_stream.values().all(|n| *n == 1),
        "no duplicates in a stream"
    );
    for (id, result) in &rec.published {
        match result {
            Ok(_) => assert!(in_stream.contains_key(id.as_str()), "acked {id} is stored"),
            Err(PublishError::Server {
                code: ErrorCode::Forbidden,
                ..
            }) => assert!(!in_stream.contains_key(id.as_str())),
            Err(other) => panic!("{id} failed: {other:?}"),
        }
    }
    // Order: the stream of each channel follows acceptance order.
    if faults.unavailable == 0.0 {
        for (channel, stream) in &server.streams {
            let want: Vec<&str> = rec
                .accepted
                .iter()
                .filter(|(id, ch)| ch == channel && in_stream.contains_key(id.as_str()))
                .map(|(id, _)| id.as_str())
                .collect();
            let got: Vec<&str> = stream.ids.iter().map(String::as_str).collect();
            assert_eq!(got, want, "channel {channel} in acceptance order");
        }
    }
    // Every request ends exactly once.
    assert_eq!(rec.responses.len(), rec.requests.len());
    assert!(rec.responses.values().all(|n| *n == 1));
    assert!(server.biggest_message <= server.limits.max_frame_bytes as usize);
    assert!(server.biggest_batch <= server.limits.max_batch as usize);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn publishes_end_exactly_once_in_order_through_faults(
        seed in any::<u64>(),
        drop_before_reply in 0.0..0.05f64,
        close in 0.0..0.02f64,
        refuse_connect in 0.0..0.3f64,
        unavailable in prop_oneof![Just(0.0), 0.0..0.05f64],
    ) {
        let faults = Faults { drop_before_reply, close, refuse_connect, unavailable, rate_limit: true };
        let (rec, server) = run(seed, 1500, faults);
        check(&rec, &server, &faults);
    }
}

#[test]
fn pacing_never_hits_the_rate_limit_of_a_healthy_server() {
    let faults = Faults {
        drop_before_reply: 0.0,
        close: 0.0,
        refuse_connect: 0.0,
        unavailable: 0.0,
        rate_limit: true,
    };
    for seed in 1..20 {
        let (rec, server) = run(seed, 3000, faults);
        check(&rec, &server, &faults);
        assert_eq!(server.rate_limited, 0, "seed {seed}");
        assert!(rec.accepted.len() > 500);
    }
}

#[test]
fn a_full_offline_queue_arrives_complete_once_and_in_order() {
    // 250 publishes typed while offline (under the 256-frame outbox), against the real
    // server's default limits: 50/s with a burst of 100.
    let mut server = Server::new();
    server.limits = Limits::default();
    let mut rng = Rng(7);
    let faults = Faults {
        drop_before_reply: 0.0,
        close: 0.0,
        refuse_connect: 0.0,
        unavailable: 0.0,
        rate_limit: true,
    };
    let opts = Options {
        immediate: false,
        ..Options::default()
    };
    let mut now = 0;
    let mut core = ClientCore::new(opts, 7, now);
    let mut rec = Record::default();
    for i in 0..250 {
        let id = core
            .publish(
                &Channel::from("room"),
                Payload::new(&format!("message {i}")).unwrap(),
                false,
                false,
                now,
            )
            .unwrap();
        rec.accepted.push((id.0, "room".into()));
    }
    core.open(now);
    let mut open = false;
    while now < 60_000 {
        pump(
            &mut core,
            &mut server,
            &mut open,
            now,
            &faults,
            &mut rng,
            &mut rec,
        );
        if rec.published.len() == 250 {
            break;
        }
        now = core.next_deadline().unwrap_or(now + 10).max(now + 1);
        core.on_tick(now);
    }
    check(&rec, &server, &faults);
    assert_eq!(server.rate_limited, 0);
    assert_eq!(server.streams["room"].ids.len(), 250);
    // Paced from the announced limits: 90 at once, then 45 a second.
    assert!((3_000..8_000).contains(&now), "drained in {now} ms");
}

#[test]
fn a_publish_larger_than_the_server_allows_is_refused_locally() {
    let mut core = ClientCore::new(Options::default(), 1, 0);
    let big = Payload::new(&"x".repeat(70_000)).unwrap();
    let err = core
        .publish(&Channel::from("a"), big, false, false, 0)
        .unwrap_err();
    assert!(matches!(
        err,
        switchboard_client::SendError::TooLarge { limit: 65536, .. }
    ));
    assert_eq!(
        core.queued(),
        0,
        "nothing queued that could block the outbox"
    );
}

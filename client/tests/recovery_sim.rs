//! Subscriptions against a simulated server whose channels keep a bounded history, on a
//! simulated clock. The server publishes on its own, and at random it drops the
//! connection, loses a delivery (a gap), delivers one twice, or loses a channel's whole
//! history (a new epoch). Properties, for every seed:
//! - no stored message reaches the application twice;
//! - between two resets, a channel's messages reach the application in offset order with
//!   no hole: a lost delivery is filled from history before anything after it;
//! - every reset is reported ([`Recovery::Reset`]) before the messages that follow it;
//! - once the faults stop, every subscription catches up with its channel (the position
//!   check finds a loss that no later message reveals).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

mod common;

use common::Rng;
use proptest::prelude::*;
use serde_json::json;
use switchboard_client::{
    Action, ClientCore, Event, Options, Recovery, SubOptions, SubState, Unrecovered,
};
use switchboard_protocol::{
    Channel, ClientFrame, Limits, Payload, ServerFrame, StreamPosition, codec,
};

#[derive(Debug, Clone, Copy)]
struct Faults {
    /// Per step: the connection drops.
    close: f64,
    /// Per delivery: lost on the way (the client sees a gap).
    lose: f64,
    /// Per delivery: sent twice.
    repeat: f64,
    /// Per step: a channel's history is lost (new epoch, offsets from 1).
    reset: f64,
}

const CALM: Faults = Faults {
    close: 0.0,
    lose: 0.0,
    repeat: 0.0,
    reset: 0.0,
};

/// One channel's stream, keeping the last `KEEP` messages.
struct Stream {
    epoch: String,
    top: u64,
    kept: Vec<u64>,
}

const KEEP: usize = 30;
const RECOVERY_LIMIT: u64 = 20;

impl Stream {
    fn first_kept(&self) -> u64 {
        self.kept.first().copied().unwrap_or(self.top + 1)
    }

    fn frame(&self, channel: &str, offset: u64) -> String {
        codec::encode(&ServerFrame::Message {
            channel: channel.into(),
            from: None,
            data: Payload::from(json!(offset)),
            ts: offset,
            ephemeral: false,
            offset: Some(offset),
            epoch: Some(self.epoch.clone()),
        })
    }
}

struct Server {
    streams: HashMap<String, Stream>,
    /// Channels the current connection is subscribed to.
    subscribed: HashSet<String>,
    epochs: u64,
}

impl Server {
    fn new() -> Self {
        let mut s = Self {
            streams: HashMap::new(),
            subscribed: HashSet::new(),
            epochs: 0,
        };
        for ch in ["a", "b"] {
            let epoch = s.new_epoch();
            s.streams.insert(
                ch.into(),
                Stream {
                    epoch,
                    top: 0,
                    kept: Vec::new(),
                },
            );
        }
        s
    }

    fn new_epoch(&mut self) -> String {
        self.epochs += 1;
        format!("e{}", self.epochs)
    }

    fn position(&self, channel: &str) -> StreamPosition {
        let s = &self.streams[channel];
        StreamPosition {
            offset: s.top,
            epoch: s.epoch.clone(),
        }
    }

    /// Appends to `channel`; returns what the connection receives (nothing, once, twice).
    fn publish(&mut self, channel: &str, faults: &Faults, rng: &mut Rng) -> Vec<String> {
        let s = self.streams.get_mut(channel).unwrap();
        s.top += 1;
        s.kept.push(s.top);
        if s.kept.len() > KEEP {
            s.kept.remove(0);
        }
        if !self.subscribed.contains(channel) || rng.chance(faults.lose) {
            return Vec::new();
        }
        let frame = s.frame(channel, s.top);
        if rng.chance(faults.repeat) {
            vec![frame.clone(), frame]
        } else {
            vec![frame]
        }
    }

    fn reset(&mut self, channel: &str) {
        let epoch = self.new_epoch();
        let s = self.streams.get_mut(channel).unwrap();
        *s = Stream {
            epoch,
            top: 0,
            kept: Vec::new(),
        };
    }

    fn handle(&mut self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for frame in codec::decode_client(text, &Limits::default()) {
            match frame.expect("valid") {
                ClientFrame::Hello { .. } => out.push(welcome()),
                ClientFrame::Ping { id } => {
                    out.push(codec::encode(&ServerFrame::Pong { id, ts: None }))
                }
                ClientFrame::Subscribe {
                    channel,
                    since,
                    rewind,
                    ..
                } => {
                    let ch = channel.as_str().to_owned();
                    let s = &self.streams[&ch];
                    let mut unrecovered = None;
                    let mut recovered = false;
                    let mut send: Vec<u64> = Vec::new();
                    if let Some(since) = &since {
                        if since.epoch != s.epoch || since.offset > s.top {
                            unrecovered = Some(Unrecovered::Epoch);
                        } else if since.offset + 1 < s.first_kept() {
                            unrecovered = Some(Unrecovered::Trimmed);
                        } else if s.top - since.offset > RECOVERY_LIMIT {
                            unrecovered = Some(Unrecovered::TooMany);
                        } else {
                            recovered = true;
                            send = (since.offset + 1..=s.top).collect();
                        }
                    }
                    if !recovered && let Some(n) = rewind {
                        let n = (n as usize).min(s.kept.len());
                        send = s.kept[s.kept.len() - n..].to_vec();
                    }
                    out.extend(send.iter().map(|o| s.frame(&ch, *o)));
                    out.push(codec::encode(&ServerFrame::Subscribed {
                        channel,
                        position: self.position(&ch),
                        recovered,
                        unrecovered,
                        presence: None,
                    }));
                    self.subscribed.insert(ch);
                }
                ClientFrame::Unsubscribe { channel, .. } => {
                    self.subscribed.remove(channel.as_str());
                    out.push(codec::encode(&ServerFrame::Unsubscribed { channel }));
                }
                ClientFrame::Request { id, method, params } => {
                    assert_eq!(method, "history");
                    let p = params.to_value();
                    let ch = p["channel"].as_str().unwrap().to_owned();
                    let since: StreamPosition = serde_json::from_value(p["since"].clone()).unwrap();
                    let limit = p["limit"].as_u64().unwrap().min(RECOVERY_LIMIT);
                    let s = &self.streams[&ch];
                    let mut result = json!({"channel": ch, "position": self.position(&ch)});
                    if since.epoch != s.epoch || since.offset > s.top {
                        result["unrecovered"] = json!("epoch");
                        result["messages"] = json!([]);
                    } else if since.offset + 1 < s.first_kept() {
                        result["unrecovered"] = json!("trimmed");
                        result["messages"] = json!([]);
                    } else {
                        let upto = s.top.min(since.offset + limit);
                        let msgs: Vec<serde_json::Value> = (since.offset + 1..=upto)
                            .map(|o| serde_json::from_str(&s.frame(&ch, o)).unwrap())
                            .collect();
                        result["more"] = json!(upto < s.top);
                        result["messages"] = json!(msgs);
                    }
                    out.push(codec::encode(&ServerFrame::Response {
                        id,
                        result: Payload::from(result),
                    }));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        out
    }
}

fn welcome() -> String {
    let limits = Limits {
        rate_per_sec: 10_000,
        rate_burst: 10_000,
        ..Limits::default()
    };
    codec::encode(&common::welcome(limits, None))
}

/// What the application saw on one channel, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Message(u64),
    Reset(Unrecovered),
    Live(Recovery),
}

struct Sim {
    core: ClientCore,
    server: Server,
    open: bool,
    now: u64,
    seen: HashMap<String, Vec<Seen>>,
    rng: Rng,
}

impl Sim {
    fn pump(&mut self, faults: &Faults) {
        loop {
            let mut busy = false;
            while let Some(action) = self.core.poll_action() {
                busy = true;
                match action {
                    Action::Connect => {
                        self.open = true;
                        self.server.subscribed.clear();
                        self.core.on_connected(self.now);
                    }
                    Action::Disconnect { .. } => {
                        self.open = false;
                        self.server.subscribed.clear();
                    }
                    Action::RefreshToken => {}
                }
            }
            while let Some(text) = self.core.poll_transmit() {
                busy = true;
                if !self.open {
                    continue;
                }
                for reply in self.server.handle(&text) {
                    self.core.on_text(&reply, self.now);
                }
            }
            while let Some(event) = self.core.poll_event() {
                busy = true;
                match event {
                    Event::Message(m) => {
                        assert_eq!(m.data.to_value(), json!(m.offset.unwrap()));
                        self.seen
                            .entry(m.channel.as_str().to_owned())
                            .or_default()
                            .push(Seen::Message(m.offset.unwrap()));
                    }
                    Event::Subscription {
                        channel,
                        state: SubState::Live { recovery, .. },
                    } => {
                        let log = self.seen.entry(channel.as_str().to_owned()).or_default();
                        match recovery {
                            Recovery::Reset(why) => log.push(Seen::Reset(why)),
                            other => log.push(Seen::Live(other)),
                        }
                    }
                    _ => {}
                }
            }
            let _ = faults;
            if !busy {
                return;
            }
        }
    }

    fn step(&mut self, faults: &Faults, publishing: bool) {
        if self.open && self.rng.chance(faults.close) {
            self.open = false;
            self.server.subscribed.clear();
            self.core.on_disconnected(
                Some(switchboard_protocol::CloseCode::GOING_AWAY),
                "restart",
                self.now,
            );
        }
        for ch in ["a", "b"] {
            if self.rng.chance(faults.reset) {
                self.server.reset(ch);
            }
            if publishing && self.rng.chance(0.3) {
                let frames = self.server.publish(ch, faults, &mut self.rng);
                if self.open {
                    for f in frames {
                        self.core.on_text(&f, self.now);
                    }
                }
            }
        }
        self.pump(faults);
        let step = 1 + self.rng.below(50);
        // At least 1 ms on: a deadline the core failed to clear must fail a case (with its
        // seed), not stop the clock and hang the run.
        self.now = self.core.next_deadline().map_or(self.now + step, |d| {
            d.max(self.now + 1).min(self.now + step)
        });
        self.core.on_tick(self.now);
        self.pump(faults);
    }
}

/// Checks one channel's log: no offset twice within an epoch stretch, no hole between
/// resets.
fn check_log(channel: &str, log: &[Seen]) {
    let mut last: Option<u64> = None;
    for (i, entry) in log.iter().enumerate() {
        match entry {
            Seen::Reset(_) => last = None,
            Seen::Live(Recovery::Fresh) => last = None,
            Seen::Live(_) => {}
            Seen::Message(offset) => {
                if let Some(prev) = last {
                    assert_eq!(
                        *offset,
                        prev + 1,
                        "{channel}: offset {offset} after {prev} without a reset (entry {i}): {:?}",
                        &log[i.saturating_sub(8)..=i]
                    );
                }
                last = Some(*offset);
            }
        }
    }
}

fn run(seed: u64, steps: usize, faults: Faults) -> Sim {
    let opts = Options {
        position_check: Some(Duration::from_secs(40)),
        backoff: switchboard_client::Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            ..Default::default()
        },
        ..Options::default()
    };
    let mut sim = Sim {
        core: ClientCore::new(opts, seed, 0),
        server: Server::new(),
        open: false,
        now: 0,
        seen: HashMap::new(),
        rng: Rng(seed | 1),
    };
    for ch in ["a", "b"] {
        sim.core.subscribe_with(
            &Channel::from(ch),
            SubOptions {
                presence: None,
                rewind: if ch == "a" { 5 } else { 0 },
            },
            0,
        );
    }
    sim.pump(&faults);
    for _ in 0..steps {
        sim.step(&faults, true);
    }
    // The last message of each channel is lost, and nothing follows to reveal the gap:
    // only the position check can.
    for ch in ["a", "b"] {
        let lost = Faults { lose: 1.0, ..CALM };
        sim.server.publish(ch, &lost, &mut sim.rng);
    }
    // Calm: the faults stop, and more than a position check's interval passes.
    let until = sim.now + 90_000;
    while sim.now < until {
        sim.step(&CALM, false);
    }
    sim
}

fn check(sim: &Sim) {
    for ch in ["a", "b"] {
        let log = sim.seen.get(ch).cloned().unwrap_or_default();
        check_log(ch, &log);
        // Caught up: the last message delivered is the channel's last one (or nothing
        // was published since the last reset).
        let top = sim.server.streams[ch].top;
        let (state, position) = sim.core.subscription(&Channel::from(ch)).unwrap();
        assert!(matches!(state, SubState::Live { .. }), "{ch}: {state:?}");
        let position = position.unwrap();
        assert_eq!(position.epoch, sim.server.streams[ch].epoch, "{ch}: epoch");
        assert_eq!(position.offset, top, "{ch}: caught up");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn subscriptions_deliver_each_message_once_in_order_or_report_a_reset(
        seed in any::<u64>(),
        close in 0.0..0.02f64,
        lose in 0.0..0.1f64,
        repeat in 0.0..0.05f64,
        reset in prop_oneof![Just(0.0), 0.0..0.002f64],
    ) {
        let faults = Faults { close, lose, repeat, reset };
        let sim = run(seed, 1500, faults);
        check(&sim);
    }
}

/// Without resets and with enough history, nothing is ever reported lost: every message
/// arrives exactly once, in order.
#[test]
fn with_enough_history_every_message_arrives_once_in_order() {
    for seed in 1..40 {
        let faults = Faults {
            close: 0.005,
            lose: 0.05,
            repeat: 0.02,
            reset: 0.0,
        };
        let sim = run(seed, 1500, faults);
        check(&sim);
        for ch in ["a", "b"] {
            let log = &sim.seen[ch];
            let offsets: Vec<u64> = log
                .iter()
                .filter_map(|s| match s {
                    Seen::Message(o) => Some(*o),
                    _ => None,
                })
                .collect();
            let resets = log.iter().filter(|s| matches!(s, Seen::Reset(_))).count();
            if resets == 0 {
                let first = offsets.first().copied().unwrap_or(1);
                let want: Vec<u64> = (first..=sim.server.streams[ch].top).collect();
                assert_eq!(offsets, want, "seed {seed} {ch}");
            }
        }
    }
}

//! The client core, one behaviour at a time, on a hand-driven clock: each of the hook's
//! old defects has a test here that fails against the behaviour it replaced.

mod common;

use std::time::Duration;

use switchboard_client::{
    Action, ClientCore, ConnState, Event, Options, RequestError, SendError, SubState,
};
use switchboard_protocol::{
    Channel, ClientFrame, CloseCode, ErrorCode, Limits, Payload, ServerFrame, StreamPosition, codec,
};

/// A core and everything it said, on a clock moved by hand.
struct H {
    core: ClientCore,
    now: u64,
    sent: Vec<ClientFrame>,
    events: Vec<Event>,
    actions: Vec<Action>,
}

impl H {
    fn new(opts: Options) -> Self {
        let mut h = Self {
            core: ClientCore::new(opts, 42, 0),
            now: 0,
            sent: Vec::new(),
            events: Vec::new(),
            actions: Vec::new(),
        };
        h.drain();
        h
    }

    fn drain(&mut self) {
        while let Some(a) = self.core.poll_action() {
            self.actions.push(a);
        }
        while let Some(t) = self.core.poll_transmit() {
            self.sent.extend(
                codec::decode_client(&t, &Limits::default())
                    .into_iter()
                    .map(Result::unwrap),
            );
        }
        while let Some(e) = self.core.poll_event() {
            self.events.push(e);
        }
    }

    /// The driver opened the socket and the server said welcome.
    fn welcome(&mut self) {
        self.core.on_connected(self.now);
        self.server(common::welcome(Limits::default(), None));
    }

    fn server(&mut self, frame: ServerFrame) {
        self.core.on_text(&codec::encode(&frame), self.now);
        self.drain();
    }

    fn at(&mut self, ms: u64) {
        self.now = ms;
        self.core.on_tick(ms);
        self.drain();
    }

    fn lost(&mut self, code: Option<CloseCode>) {
        self.core.on_disconnected(code, "gone", self.now);
        self.drain();
    }

    fn take_sent(&mut self) -> Vec<ClientFrame> {
        std::mem::take(&mut self.sent)
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn reconnect_delay(&self) -> Option<u64> {
        self.events.iter().rev().find_map(|e| match e {
            Event::State(ConnState::Reconnecting { at, .. }) => Some(*at - self.now),
            _ => None,
        })
    }
}

fn ping_id(frame: &ClientFrame) -> Option<String> {
    match frame {
        ClientFrame::Ping { id } => id.as_ref().map(|i| i.0.clone()),
        _ => None,
    }
}

#[test]
fn backoff_resets_only_after_the_connection_stayed_up() {
    // Closed as a slow consumer right after every welcome: the old hook reset its attempt
    // counter on every welcome and reconnected hot; the delay must grow instead.
    let mut h = H::new(Options::default());
    let mut ceilings = Vec::new();
    for _ in 0..6 {
        h.welcome();
        h.at(h.now + 100);
        h.lost(Some(CloseCode::SLOW_CONSUMER));
        let Some(Event::State(ConnState::Reconnecting { attempt, .. })) = h
            .events
            .iter()
            .rev()
            .find(|e| matches!(e, Event::State(ConnState::Reconnecting { .. })))
            .cloned()
        else {
            panic!("no reconnect");
        };
        ceilings.push(attempt);
        let wait = h.reconnect_delay().unwrap();
        h.at(h.now + wait);
        assert!(h.actions.contains(&Action::Connect));
        h.actions.clear();
    }
    assert_eq!(ceilings, [1, 2, 3, 4, 5, 6], "attempts keep counting");
    // A connection that stays up past `stable_after` starts over.
    h.welcome();
    h.at(h.now + 11_000);
    h.lost(Some(CloseCode::SLOW_CONSUMER));
    assert!(
        h.events
            .iter()
            .rev()
            .any(|e| matches!(e, Event::State(ConnState::Reconnecting { attempt: 1, .. })))
    );
}

#[test]
fn only_an_outstanding_ping_is_judged_so_a_throttled_tab_stays_connected() {
    // A background tab runs timers once a minute; pongs arrive between ticks. The old hook
    // measured the time since anything was heard at each tick and reconnected every minute.
    let mut h = H::new(Options::default());
    h.welcome();
    h.take_sent();
    for minute in 1..=5 {
        h.at(minute * 60_000);
        let ping = h.take_sent().iter().find_map(ping_id).expect("a ping");
        // The pong comes right away (network events are not throttled).
        h.now += 30;
        h.server(ServerFrame::Pong {
            id: Some(ping.into()),
            ts: None,
        });
    }
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. })),
        "no false dead-link reconnect"
    );
    // A ping left unanswered past the pong timeout is a dead link.
    h.at(h.now + 60_000);
    assert!(h.take_sent().iter().any(|f| ping_id(f).is_some()));
    h.at(h.now + 10_000);
    assert!(
        h.actions
            .iter()
            .any(|a| matches!(a, Action::Disconnect { .. }))
    );
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reconnecting: true,
            ..
        }
    )));
}

#[test]
fn a_connect_that_hangs_times_out() {
    let mut h = H::new(Options {
        connect_timeout: Duration::from_secs(3),
        ..Options::default()
    });
    assert_eq!(h.actions, [Action::Connect]);
    h.at(2_999);
    assert_eq!(h.actions.len(), 1);
    h.at(3_000);
    assert!(matches!(h.actions[1], Action::Disconnect { .. }));
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::State(ConnState::Reconnecting { .. })))
    );
}

#[test]
fn close_is_obeyed_while_connecting() {
    let mut h = H::new(Options::default());
    h.core.close(h.now);
    h.drain();
    assert!(matches!(h.actions.last(), Some(Action::Disconnect { .. })));
    assert_eq!(
        h.core.next_deadline(),
        None,
        "nothing scheduled: no reconnect"
    );
    assert!(matches!(
        h.events.last(),
        Some(Event::State(ConnState::Closed))
    ));
    // Publishes still queue while closed on purpose.
    assert!(
        h.core
            .publish(&Channel::from("a"), Payload::null(), false, false, h.now)
            .is_ok()
    );
}

#[test]
fn subscriptions_are_reference_counted() {
    let mut h = H::new(Options::default());
    h.welcome();
    let a = h.core.subscribe(&Channel::from("room"), None, h.now);
    let b = h.core.subscribe(&Channel::from("room"), None, h.now);
    h.drain();
    let subscribes = h
        .take_sent()
        .into_iter()
        .filter(|f| matches!(f, ClientFrame::Subscribe { .. }))
        .count();
    assert_eq!(subscribes, 1, "one subscribe for two holders");
    h.core.unsubscribe(&a, h.now);
    h.core.unsubscribe(&a, h.now); // twice: harmless
    h.drain();
    assert!(h.take_sent().is_empty(), "b still holds it");
    h.core.unsubscribe(&b, h.now);
    h.drain();
    assert!(matches!(
        h.take_sent().as_slice(),
        [ClientFrame::Unsubscribe { .. }]
    ));
}

#[test]
fn subscriptions_are_restored_with_their_position_and_report_their_state() {
    let mut h = H::new(Options::default());
    h.welcome();
    h.core.subscribe(&Channel::from("room"), None, h.now);
    h.drain();
    h.server(ServerFrame::Subscribed {
        channel: "room".into(),
        position: StreamPosition {
            offset: 4,
            epoch: "e".into(),
        },
        recovered: false,
        unrecovered: None,
        presence: None,
    });
    h.server(ServerFrame::Message {
        channel: "room".into(),
        from: None,
        data: Payload::null(),
        ts: 0,
        ephemeral: false,
        offset: Some(5),
        epoch: Some("e".into()),
    });
    h.take_sent();
    h.lost(Some(CloseCode::GOING_AWAY));
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Subscription {
            state: SubState::Subscribing,
            ..
        }
    )));
    h.at(h.now + 1_000);
    h.welcome();
    let since = h.take_sent().into_iter().find_map(|f| match f {
        ClientFrame::Subscribe { since, .. } => since,
        _ => None,
    });
    assert_eq!(
        since.map(|s| s.offset),
        Some(5),
        "resubscribed after what it saw"
    );
    // A refusal is the subscription's state, matched by the subscribe's id.
    let mut h2 = H::new(Options::default());
    h2.welcome();
    h2.core.subscribe(&Channel::from("secret"), None, h2.now);
    h2.drain();
    let id = h2.take_sent().into_iter().find_map(|f| match f {
        ClientFrame::Subscribe { id, .. } => id,
        _ => None,
    });
    h2.server(ServerFrame::error(id, ErrorCode::Forbidden, "no"));
    assert!(h2.events.iter().any(|e| matches!(
        e,
        Event::Subscription {
            state: SubState::Failed {
                code: ErrorCode::Forbidden,
                ..
            },
            ..
        }
    )));
}

#[test]
fn requests_in_flight_fail_at_once_on_a_disconnect_and_queued_ones_wait() {
    let mut h = H::new(Options::default());
    h.welcome();
    let sent = h
        .core
        .request("slow", Payload::null(), None, h.now)
        .unwrap();
    h.drain();
    h.lost(None);
    let queued = h
        .core
        .request("later", Payload::null(), None, h.now)
        .unwrap();
    h.drain();
    let results: Vec<_> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Response { id, result } => Some((id, result)),
            _ => None,
        })
        .collect();
    assert_eq!(results, [(sent, Err(RequestError::Disconnected))]);
    // The queued one goes out after the reconnect.
    h.at(h.now + 1_000);
    h.welcome();
    assert!(h.take_sent().iter().any(|f| f.id() == Some(&queued)));
    // A cancelled request ends without an event.
    let gone = h.core.request("x", Payload::null(), None, h.now).unwrap();
    h.core.cancel_request(&gone);
    h.at(h.now + 60_000);
    assert!(
        !h.events
            .iter()
            .any(|e| matches!(e, Event::Response { id, .. } if *id == gone))
    );
}

#[test]
fn ephemeral_frames_are_never_sent_stale() {
    let mut h = H::new(Options::default());
    assert_eq!(
        h.core
            .publish(&Channel::from("typing"), Payload::null(), true, true, h.now),
        Err(SendError::NotConnected)
    );
    h.welcome();
    // Queued behind a throttle, then the connection drops: they are not sent later.
    let mut h = H::new(Options {
        throttle: Some(Duration::from_secs(5)),
        ..Options::default()
    });
    h.welcome();
    h.take_sent();
    for _ in 0..3 {
        h.core
            .publish(&Channel::from("typing"), Payload::null(), true, true, h.now)
            .unwrap();
    }
    h.drain();
    assert_eq!(h.take_sent().len(), 1, "one now, the rest throttled");
    h.lost(None);
    h.at(h.now + 10_000);
    h.welcome();
    h.at(h.now + 20_000);
    assert!(!h.take_sent().iter().any(|f| matches!(
        f,
        ClientFrame::Publish {
            ephemeral: true,
            ..
        }
    )));
}

#[test]
fn a_refusal_for_good_stops_and_fails_what_waits() {
    let mut h = H::new(Options::default());
    h.welcome();
    let id = h
        .core
        .publish(&Channel::from("a"), Payload::null(), false, false, h.now)
        .unwrap();
    h.drain();
    h.lost(Some(CloseCode::UNAUTHORIZED));
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reconnecting: false,
            ..
        }
    )));
    // It was sent and never acked: maybe published.
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::Published { id: got, result: Err(switchboard_client::PublishError::Unconfirmed) } if *got == id
    )));
    assert_eq!(
        h.core
            .publish(&Channel::from("a"), Payload::null(), false, false, h.now),
        Err(SendError::Closed)
    );
    assert_eq!(h.core.next_deadline(), None);
}

#[test]
fn a_token_is_refreshed_with_hello_before_it_expires() {
    let mut h = H::new(Options {
        has_token_provider: true,
        ..Options::default()
    });
    // exp = 1000 s after the Unix epoch; the wall clock says 900 s.
    let token = "x.eyJleHAiOjEwMDB9.y"; // {"exp":1000}
    h.core.set_token(Some(token), h.now, 900_000);
    h.welcome();
    h.take_sent();
    // 30 s before expiry: 70 s from now.
    h.at(69_000);
    assert!(!h.actions.contains(&Action::RefreshToken));
    h.at(70_000);
    assert!(h.actions.contains(&Action::RefreshToken));
    h.core
        .refresh_token(Some("new-token".into()), h.now, 970_000);
    h.drain();
    assert!(h.take_sent().iter().any(|f| matches!(
        f,
        ClientFrame::Hello { token: Some(t), .. } if t == "new-token"
    )));
}

#[test]
fn a_frozen_tab_waking_late_does_not_call_a_live_link_dead() {
    let mut h = H::new(Options::default());
    h.welcome();
    h.take_sent();
    h.at(10_000);
    let ping = h.take_sent().iter().find_map(ping_id).expect("a ping");
    // Frozen: the next tick comes 5 minutes late, before the pong that waited is read.
    h.at(310_000);
    assert!(
        !h.actions
            .iter()
            .any(|a| matches!(a, Action::Disconnect { .. })),
        "a late timer is no evidence of a dead link"
    );
    h.server(ServerFrame::Pong {
        id: Some(ping.into()),
        ts: None,
    });
    // Answered (no round-trip time is claimed from the re-armed clock).
    assert!(!h.events.iter().any(|e| matches!(e, Event::Pong { .. })));
    // A link that is really dead is still caught by timely ticks.
    h.at(320_000);
    assert!(h.take_sent().iter().any(|f| ping_id(f).is_some()));
    h.at(330_000);
    assert!(
        h.actions
            .iter()
            .any(|a| matches!(a, Action::Disconnect { .. }))
    );
}

#[test]
fn a_later_holder_asking_for_presence_joins_it() {
    let mut h = H::new(Options::default());
    h.welcome();
    h.core.subscribe(&Channel::from("room"), None, h.now);
    h.drain();
    h.take_sent();
    h.core.subscribe(
        &Channel::from("room"),
        Some(Payload::from(serde_json::json!({"name": "Ada"}))),
        h.now,
    );
    h.drain();
    let sent = h.take_sent();
    assert!(matches!(sent[0], ClientFrame::Unsubscribe { .. }));
    assert!(matches!(
        &sent[1],
        ClientFrame::Subscribe {
            presence: Some(_),
            ..
        }
    ));
}

#[test]
fn a_subscription_refused_as_unavailable_backs_off() {
    let mut h = H::new(Options::default());
    h.welcome();
    h.core.subscribe(&Channel::from("room"), None, h.now);
    h.drain();
    let mut waits = Vec::new();
    for _ in 0..4 {
        let id = h.take_sent().into_iter().rev().find_map(|f| match f {
            ClientFrame::Subscribe { id, .. } => id,
            _ => None,
        });
        let refused_at = h.now;
        h.server(ServerFrame::error(id, ErrorCode::Unavailable, "down"));
        // Tick until it is sent again.
        let mut t = refused_at;
        loop {
            t += 50;
            h.at(t);
            if h.sent
                .iter()
                .any(|f| matches!(f, ClientFrame::Subscribe { .. }))
            {
                break;
            }
        }
        waits.push(t - refused_at);
    }
    assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
    assert!(waits[3] >= 4 * waits[0], "the delay grows: {waits:?}");
}

#[test]
fn unacked_publishes_survive_a_restart_of_the_app_with_their_ids() {
    // First run: two publishes go out, one is acked, a third waits offline.
    let mut h = H::new(Options::default());
    h.welcome();
    let ch = Channel::from("room");
    let data = |n: u64| Payload::from(serde_json::json!(n));
    let a = h.core.publish(&ch, data(1), false, false, h.now).unwrap();
    let b = h.core.publish(&ch, data(2), false, false, h.now).unwrap();
    h.drain();
    h.server(ServerFrame::Ack {
        id: a.clone(),
        offset: Some(1),
    });
    h.lost(None);
    let c = h.core.publish(&ch, data(3), false, false, h.now).unwrap();
    h.drain();
    let saved: Vec<String> = h
        .core
        .unacked_publishes()
        .iter()
        .map(codec::encode)
        .collect();
    assert_eq!(saved.len(), 2, "b (sent, not acked) and c (queued), not a");

    // Second run: restored with the same ids, sent on connect, each answered once.
    let mut h2 = H::new(Options::default());
    let frames: Vec<ClientFrame> = saved
        .iter()
        .map(|t| {
            codec::decode_client(t, &Limits::default())
                .remove(0)
                .unwrap()
        })
        .collect();
    let ids = h2.core.restore_publishes(frames, h2.now);
    assert_eq!(ids, [b.clone(), c.clone()]);
    assert_eq!(h2.core.queued(), 2);
    h2.welcome();
    let sent: Vec<_> = h2
        .take_sent()
        .into_iter()
        .filter_map(|f| match f {
            ClientFrame::Publish { id, .. } => id,
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [b.clone(), c.clone()],
        "the same ids: the server deduplicates"
    );
    for (id, offset) in [(b.clone(), 2), (c.clone(), 3)] {
        h2.server(ServerFrame::Ack {
            id,
            offset: Some(offset),
        });
    }
    let published: Vec<_> = h2
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Published { id, result } => Some((id, result)),
            _ => None,
        })
        .collect();
    assert_eq!(published, [(b, Ok(Some(2))), (c, Ok(Some(3)))]);
    assert!(h2.core.unacked_publishes().is_empty());
}

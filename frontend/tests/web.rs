//! Browser tests (headless Chromium through wasm-bindgen-test-runner) of the
//! `use_websocket` hook (switchboard-leptos) against a real Switchboard server, whose URL
//! scripts/test.sh passes at build time in `SWITCHBOARD_TEST_WS_URL`.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use gloo_timers::future::sleep;
use leptos::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_leptos::{
    Backoff, ConnState, Overflow, PublishError, RequestError, SendError, SubState,
    UseWebSocketOptions, WebSocket, now_ms, use_websocket, use_websocket_with_options, ws_url_for,
};
use switchboard_protocol::ErrorCode;
use switchboard_web::app::StatusBadge;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn server_url() -> String {
    match option_env!("SWITCHBOARD_TEST_WS_URL") {
        Some(url) => url.to_owned(),
        None => panic!(
            "run the wasm tests through scripts/test.sh: it starts a server and sets SWITCHBOARD_TEST_WS_URL"
        ),
    }
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
async fn eventually(secs: u64, what: &str, cond: impl Fn() -> bool) {
    for _ in 0..secs * 50 {
        if cond() {
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn connected(owner: &Owner, options: UseWebSocketOptions) -> WebSocket {
    let ws = owner.with(|| use_websocket_with_options(&server_url(), options));
    eventually(10, "welcome", || {
        ws.state.get_untracked() == ConnState::Open
    })
    .await;
    ws
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", (js_sys::Math::random() * 1e9) as u64)
}

fn live<T: Send + Sync + 'static>(sub: &switchboard_leptos::Subscription<T>) -> bool {
    sub.is_live()
}

#[wasm_bindgen_test]
fn ws_url_follows_the_page_scheme() {
    assert_eq!(
        ws_url_for("http:", "127.0.0.1:8080"),
        "ws://127.0.0.1:8080/ws"
    );
    assert_eq!(
        ws_url_for("https:", "chat.example.com"),
        "wss://chat.example.com/ws"
    );
}

#[wasm_bindgen_test]
async fn connects_measures_rtt_and_renders_the_badge() {
    let owner = Owner::new();
    let ws = owner.with(|| use_websocket(&server_url()));
    eventually(10, "welcome", || {
        ws.state.get_untracked() == ConnState::Open
    })
    .await;
    assert_eq!(ws.client_id.get_untracked().unwrap().len(), 22);
    let options = UseWebSocketOptions {
        ping_interval: Duration::from_millis(200),
        ..UseWebSocketOptions::default()
    };
    let fast = connected(&owner, options).await;
    eventually(10, "a round-trip time", || {
        fast.rtt_ms.get_untracked().is_some()
    })
    .await;
    let rtt = fast.rtt_ms.get_untracked().unwrap();
    assert!((0.0..5000.0).contains(&rtt), "rtt {rtt}");
    // The server's clock is known: within a few seconds of this machine's.
    assert!(fast.clock_offset_ms.get_untracked().abs() < 5000.0);

    let host = document().create_element("div").unwrap();
    document().body().unwrap().append_child(&host).unwrap();
    let el: web_sys::HtmlElement = wasm_bindgen::JsCast::unchecked_into(host.clone());
    let _mount =
        owner.with(|| leptos::mount::mount_to(el, move || view! { <StatusBadge ws=ws /> }));
    eventually(5, "badge text", || {
        host.text_content().unwrap_or_default() == "connected"
    })
    .await;
    ws.close();
    eventually(5, "closed", || {
        ws.state.get_untracked() == ConnState::Closed
    })
    .await;
}

#[wasm_bindgen_test]
async fn a_messagepack_connection_and_a_json_one_share_a_channel() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
    struct Point {
        x: i32,
        tag: String,
    }
    let owner = Owner::new();
    let packed = UseWebSocketOptions {
        messagepack: true,
        ..UseWebSocketOptions::default()
    };
    let binary = connected(&owner, packed).await;
    let text = connected(&owner, UseWebSocketOptions::default()).await;
    let channel = unique("mp:");
    let b_sub = owner.with(|| binary.subscribe::<Point>(&channel));
    let t_sub = owner.with(|| text.subscribe::<Point>(&channel));
    eventually(5, "subscribed", || live(&b_sub) && live(&t_sub)).await;
    let point = Point {
        x: -3,
        tag: "packed".into(),
    };
    let offset = binary
        .publish(&channel, &point)
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offset, 1);
    text.publish(
        &channel,
        &Point {
            x: 4,
            tag: "text".into(),
        },
    )
    .unwrap()
    .await
    .unwrap();
    for sub in [&b_sub, &t_sub] {
        eventually(5, "both messages", || {
            sub.messages.with_untracked(|m| m.len() == 2)
        })
        .await;
        let got: Vec<Point> = sub
            .messages
            .with_untracked(|m| m.iter().map(|r| r.data.clone()).collect());
        assert_eq!(
            got,
            [
                point.clone(),
                Point {
                    x: 4,
                    tag: "text".into()
                }
            ]
        );
    }
    #[derive(Deserialize)]
    struct Time {
        now_ms: u64,
    }
    let t: Time = binary.request("time", &()).await.unwrap();
    assert!(t.now_ms > 1_600_000_000_000);
}

#[wasm_bindgen_test]
async fn typed_publish_is_acked_and_reaches_subscribers() {
    #[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
    struct Point {
        x: i32,
    }
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    let channel = unique("t:");
    let sub = owner.with(|| ws.subscribe::<Point>(&channel));
    eventually(5, "subscribed", || live(&sub)).await;
    let mut acks = Vec::new();
    for x in 0..5 {
        acks.push(ws.publish(&channel, &Point { x }).unwrap());
    }
    let mut offsets = Vec::new();
    for ack in acks {
        offsets.push(ack.await.unwrap().unwrap());
    }
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    eventually(5, "5 messages", || {
        sub.messages.with_untracked(|m| m.len() == 5)
    })
    .await;
    let xs: Vec<i32> = sub
        .messages
        .with_untracked(|m| m.iter().map(|r| r.data.x).collect());
    assert_eq!(xs, [0, 1, 2, 3, 4]);
    // A message that is not a Point is reported, not dropped silently.
    ws.publish(&channel, &"nope").unwrap().await.unwrap();
    eventually(5, "a decode error", || {
        sub.decode_error.get_untracked().is_some()
    })
    .await;
    eventually(5, "every publish acked", || ws.queued.get_untracked() == 0).await;
}

#[wasm_bindgen_test]
async fn requests_resolve_fail_and_time_out() {
    #[derive(Deserialize)]
    struct Time {
        now_ms: u64,
    }
    let owner = Owner::new();
    let options = UseWebSocketOptions {
        request_timeout: Duration::from_millis(300),
        ..UseWebSocketOptions::default()
    };
    let ws = connected(&owner, options).await;
    let time: Time = ws.request("time", &()).await.unwrap();
    assert!(time.now_ms > 1_600_000_000_000);
    match ws.request::<_, Value>("no-such-method", &()).await {
        Err(RequestError::Server { code, .. }) => assert_eq!(code, ErrorCode::UnknownMethod),
        other => panic!("{other:?}"),
    }
    // offline: the request waits in the queue, times out, and is withdrawn
    ws.close();
    eventually(5, "offline", || {
        ws.state.get_untracked() == ConnState::Closed
    })
    .await;
    let pending = ws.request::<_, Value>("time", &());
    assert_eq!(ws.queued.get_untracked(), 1);
    assert_eq!(pending.await.unwrap_err(), RequestError::Timeout);
    assert_eq!(ws.queued.get_untracked(), 0);
}

#[wasm_bindgen_test]
async fn a_queue_larger_than_the_rate_burst_arrives_complete_once_in_order() {
    // The server allows bursts of 100 frames, then 50/s: 150 queued while offline used to
    // come back with dozens of rate_limited refusals, dropped for good.
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    let watcher = connected(&owner, UseWebSocketOptions::default()).await;
    let channel = unique("q:");
    let sub = owner.with(|| watcher.subscribe::<u32>(&channel));
    eventually(5, "subscribed", || live(&sub)).await;
    ws.close();
    eventually(5, "offline", || {
        ws.state.get_untracked() == ConnState::Closed
    })
    .await;
    let acks: Vec<_> = (0..150u32)
        .map(|i| ws.publish(&channel, &i).unwrap())
        .collect();
    assert_eq!(ws.queued.get_untracked(), 150);
    ws.open();
    for ack in acks {
        ack.await.expect("acked, not refused");
    }
    eventually(10, "150 messages", || {
        sub.messages.with_untracked(|m| m.len() == 150)
    })
    .await;
    let got: Vec<u32> = sub
        .messages
        .with_untracked(|m| m.iter().map(|r| r.data).collect());
    assert_eq!(got, (0..150).collect::<Vec<_>>(), "once, in order");
    assert!(
        !ws.last_error
            .get_untracked()
            .unwrap_or_default()
            .contains("rate_limited")
    );
}

#[wasm_bindgen_test]
async fn an_oversized_publish_is_refused_at_once_and_blocks_nothing() {
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    let big = "x".repeat(70_000);
    assert!(matches!(
        ws.publish("t:big", &big),
        Err(SendError::TooLarge { limit: 65536, .. })
    ));
    assert_eq!(ws.queued.get_untracked(), 0);
    ws.publish("t:big", &"small").unwrap().await.unwrap();
    assert_eq!(ws.state.get_untracked(), ConnState::Open);
}

#[wasm_bindgen_test]
async fn a_full_outbox_follows_its_overflow_policy() {
    let owner = Owner::new();
    for (overflow, third_fails) in [
        (Overflow::Reject, Some(SendError::Full)),
        (Overflow::DropNewest, Some(SendError::Dropped)),
        (Overflow::DropOldest, None),
    ] {
        let options = UseWebSocketOptions {
            outbox_capacity: 2,
            overflow,
            immediate: false,
            ..UseWebSocketOptions::default()
        };
        let ws = owner.with(|| use_websocket_with_options(&server_url(), options));
        let first = ws.publish("x", &1).unwrap();
        ws.publish("x", &2).unwrap();
        let third = ws.publish("x", &3);
        assert_eq!(third.as_ref().err(), third_fails.as_ref(), "{overflow:?}");
        assert_eq!(ws.queued.get_untracked(), 2);
        if overflow == Overflow::DropOldest {
            // The dropped publish is told so: nothing is dropped silently.
            assert_eq!(first.await, Err(PublishError::Dropped));
            assert_eq!(ws.dropped.get_untracked(), 1);
        }
    }
}

#[wasm_bindgen_test]
async fn rooms_share_presence_and_see_leaves() {
    let room = unique("room:");
    let owner_a = Owner::new();
    let a = connected(&owner_a, UseWebSocketOptions::default()).await;
    let sub_a = owner_a.with(|| a.join::<Value, _>(&room, &json!({"name": "Ada"})));
    eventually(5, "a in", || sub_a.members.with_untracked(Vec::len) == 1).await;

    let owner_b = Owner::new();
    let b = connected(&owner_b, UseWebSocketOptions::default()).await;
    let sub_b = owner_b.with(|| b.join::<Value, _>(&room, &json!({"name": "Bob"})));
    eventually(5, "b sees both", || {
        sub_b.members.with_untracked(Vec::len) == 2
    })
    .await;
    eventually(5, "a sees bob", || {
        sub_a.members.with_untracked(Vec::len) == 2
    })
    .await;

    drop(owner_b); // Bob's component unmounts: unsubscribe, socket closed
    eventually(5, "a sees bob leave", || {
        sub_a.members.with_untracked(Vec::len) == 1
    })
    .await;
    let last = sub_a.last_presence.get_untracked().unwrap();
    assert_eq!(last.member.info.to_value()["name"], "Bob");
}

#[wasm_bindgen_test]
async fn one_channel_shared_by_two_components_survives_one_unmounting() {
    // The old hook created a channel's signals in the first subscriber's owner: when that
    // component unmounted, the others panicked on disposed signals.
    let root = Owner::new();
    let ws = connected(&root, UseWebSocketOptions::default()).await;
    let channel = unique("shared:");
    let first = root.with(Owner::new);
    let second = root.with(Owner::new);
    let a = first.with(|| ws.subscribe::<u32>(&channel));
    let b = second.with(|| ws.subscribe::<u32>(&channel));
    eventually(5, "both live", || live(&a) && live(&b)).await;
    ws.publish(&channel, &1).unwrap().await.unwrap();
    eventually(5, "both got 1", || {
        a.messages.with_untracked(|m| m.len() == 1) && b.messages.with_untracked(|m| m.len() == 1)
    })
    .await;
    // The first component goes; releasing it twice (cleanup and by hand) is harmless.
    a.unsubscribe();
    drop(first);
    ws.publish(&channel, &2).unwrap().await.unwrap();
    eventually(5, "b still gets messages", || {
        b.messages.with_untracked(|m| m.len() == 2)
    })
    .await;
    assert!(
        live(&b),
        "the channel stayed subscribed for the remaining holder"
    );
    // Every message exactly once to a callback, not only the buffer.
    let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let log = seen.clone();
    b.on_message(move |m| log.borrow_mut().push(m.as_ref().map(|r| r.data).ok()));
    for i in 3..6 {
        ws.publish(&channel, &i).unwrap();
    }
    eventually(5, "three more", || seen.borrow().len() == 3).await;
    assert_eq!(*seen.borrow(), [Some(3), Some(4), Some(5)]);
}

#[wasm_bindgen_test]
async fn a_handle_whose_owner_is_gone_errs_and_never_panics() {
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    drop(owner);
    assert!(ws.publish("x", &1).is_err());
    assert!(ws.publish_ephemeral("x", &1).is_err());
    assert!(ws.direct("nobody", &1).is_err());
    assert!(ws.request::<_, Value>("time", &()).await.is_err());
    ws.close();
    ws.open();
}

/// Counts the calls of a global of the page (`setTimeout`, `WebSocket`) until dropped: a
/// Proxy stands in its place, and wasm-bindgen's glue looks the name up at every call.
/// What it constructs (the browser's real sockets) is kept, with the code each was closed
/// with, so a test can make a real socket report what a broken server would send. (The
/// tests of one page run one at a time, so what is counted is the test's own.)
struct Calls(JsValue);

impl Calls {
    fn of(name: &str) -> Self {
        let install = js_sys::Function::new_with_args(
            "name",
            "const real = globalThis[name]; let n = 0; const made = [];
             globalThis[name] = new Proxy(real, {
                 apply(f, self, args) { n++; return Reflect.apply(f, self, args); },
                 construct(f, args) {
                     n++;
                     const it = Reflect.construct(f, args);
                     const close = it.close;
                     if (close) {
                         it.closedWith = null;
                         it.close = function (code, reason) {
                             it.closedWith = code;
                             return close.call(it, code, reason);
                         };
                     }
                     made.push(it);
                     return it;
                 },
             });
             return {
                 count: () => n,
                 closedWith: (i) => made[i].closedWith,
                 message: (i, data) => made[i].dispatchEvent(new MessageEvent('message', { data })),
                 restore: () => { if (globalThis[name] !== real) globalThis[name] = real; },
             };",
        );
        Self(install.call1(&JsValue::NULL, &name.into()).unwrap())
    }

    fn call(&self, method: &str, args: &[JsValue]) -> JsValue {
        let f = js_sys::Reflect::get(&self.0, &method.into())
            .unwrap()
            .unchecked_into::<js_sys::Function>();
        let args: js_sys::Array = args.iter().collect();
        f.apply(&JsValue::NULL, &args).unwrap()
    }

    fn count(&self) -> u32 {
        self.call("count", &[]).as_f64().unwrap() as u32
    }

    /// The code the `i`th object made was closed with, once closed by the page.
    fn closed_with(&self, i: u32) -> Option<u16> {
        self.call("closedWith", &[i.into()])
            .as_f64()
            .map(|c| c as u16)
    }

    /// Makes the `i`th socket report a message, as if the server had sent `data`.
    fn message(&self, i: u32, data: JsValue) {
        self.call("message", &[i.into(), data]);
    }
}

impl Calls {
    /// Puts the page's own global back (what was counted and made stays readable). Tests
    /// call it before they assert: a failed assertion aborts, and `Drop` would not run.
    fn restore(&self) {
        self.call("restore", &[]);
    }
}

impl Drop for Calls {
    fn drop(&mut self) {
        self.restore();
    }
}

#[wasm_bindgen_test]
async fn the_driver_arms_a_timer_per_deadline_not_per_message() {
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    let channel = unique("timers:");
    let sub = owner.with(|| ws.subscribe::<u32>(&channel));
    eventually(5, "subscribed", || live(&sub)).await;
    // One at a time, each awaited (no timer of the test's own): 30 publishes, acks and
    // messages are at least 60 inputs to the driver, none of which moves its deadline
    // (the next ping). It used to set a new browser timer for each.
    let timers = Calls::of("setTimeout");
    for i in 0..30u32 {
        ws.publish(&channel, &i).unwrap().await.unwrap();
    }
    timers.restore();
    let armed = timers.count();
    assert!(armed <= 10, "{armed} timers armed for 30 publishes");
    eventually(5, "30 messages", || {
        sub.messages.with_untracked(|m| m.len() == 30)
    })
    .await;
}

#[wasm_bindgen_test]
async fn a_page_left_while_the_token_provider_works_opens_no_socket() {
    use std::cell::Cell;
    use std::rc::Rc;
    let (asked, go, done) = (
        Rc::new(Cell::new(false)),
        Rc::new(Cell::new(false)),
        Rc::new(Cell::new(false)),
    );
    let provider = {
        let (asked, go, done) = (asked.clone(), go.clone(), done.clone());
        move || {
            asked.set(true);
            let (go, done) = (go.clone(), done.clone());
            Box::pin(async move {
                while !go.get() {
                    sleep(Duration::from_millis(10)).await;
                }
                done.set(true);
                None
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>>>>
        }
    };
    let sockets = Calls::of("WebSocket");
    let owner = Owner::new();
    let options = UseWebSocketOptions {
        token: Some(Rc::new(provider)),
        ..UseWebSocketOptions::default()
    };
    owner.with(|| use_websocket_with_options(&server_url(), options));
    eventually(5, "the provider asked", || asked.get()).await;
    drop(owner);
    go.set(true);
    // The driver goes on in the same turn as the provider's future ends.
    eventually(5, "the provider done", || done.get()).await;
    sockets.restore();
    assert_eq!(
        sockets.count(),
        0,
        "a socket was opened for a page that is gone"
    );
}

#[wasm_bindgen_test]
async fn an_undecodable_messagepack_message_closes_the_socket_with_1007_and_reconnects() {
    let sockets = Calls::of("WebSocket");
    let owner = Owner::new();
    let options = UseWebSocketOptions {
        messagepack: true,
        ..UseWebSocketOptions::default()
    };
    let ws = connected(&owner, options).await;
    assert_eq!(sockets.count(), 1);
    // What a broken server would send: 0xc1 is never used in MessagePack.
    let bytes = js_sys::Uint8Array::from(&[0xc1u8][..]);
    sockets.message(0, bytes.buffer().into());
    eventually(5, "the socket closed with 1007", || {
        sockets.closed_with(0) == Some(1007)
    })
    .await;
    let (_, reason) = ws.last_close.get_untracked().unwrap();
    assert!(reason.contains("undecodable MessagePack"), "{reason}");
    eventually(10, "a new connection", || {
        sockets.count() == 2 && ws.state.get_untracked() == ConnState::Open
    })
    .await;
    sockets.restore();
}

#[wasm_bindgen_test]
async fn what_a_replaced_socket_still_reports_is_dropped() {
    let sockets = Calls::of("WebSocket");
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    let channel = unique("stale:");
    let sub = owner.with(|| ws.subscribe::<u32>(&channel));
    // Every delivery, as it happens (the `messages` buffer is emptied by a reset).
    let delivered = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    {
        let delivered = delivered.clone();
        sub.on_message(move |m| delivered.borrow_mut().push(m.as_ref().map(|r| r.data).ok()));
    }
    eventually(5, "subscribed", || live(&sub)).await;
    // In one turn, before the driver runs: the handle asks for a new connection, then the
    // old socket (its handlers still attached) reports a message. The driver replaces the
    // socket first, so the message it takes next is from the old socket's generation.
    ws.close();
    ws.open();
    let stale =
        format!(r#"{{"type":"message","channel":"{channel}","data":7,"ts":1,"ephemeral":true}}"#);
    sockets.message(0, stale.into());
    eventually(10, "a new socket, subscribed again", || {
        sockets.count() == 2 && live(&sub)
    })
    .await;
    sockets.restore();
    assert_eq!(sockets.closed_with(0), Some(1000));
    // A message through the new socket: once it is in, the old one's would be too.
    ws.publish(&channel, &1u32).unwrap().await.unwrap();
    eventually(5, "the new socket's message", || {
        delivered.borrow().contains(&Some(1))
    })
    .await;
    assert_eq!(
        *delivered.borrow(),
        [Some(1)],
        "the replaced socket's message reached the subscription"
    );
}

#[wasm_bindgen_test]
async fn keeps_retrying_with_backoff_when_the_server_is_unreachable() {
    let owner = Owner::new();
    // Port 9 on loopback: nothing listens, every attempt fails at once.
    let options = UseWebSocketOptions {
        backoff: Backoff {
            base: Duration::from_millis(20),
            factor: 2.0,
            max: Duration::from_millis(100),
        },
        ..UseWebSocketOptions::default()
    };
    let ws = owner.with(|| use_websocket_with_options("ws://127.0.0.1:9/ws", options));
    eventually(10, "a third attempt", || {
        matches!(ws.state.get_untracked(), ConnState::Reconnecting { attempt, .. } if attempt >= 3)
    })
    .await;
    assert_eq!(ws.client_id.get_untracked(), None);
    // frames queue meanwhile
    assert!(ws.publish("x", &1).is_ok());
    ws.close();
    eventually(5, "closed", || {
        ws.state.get_untracked() == ConnState::Closed
    })
    .await;
}

#[wasm_bindgen_test]
async fn coming_back_online_retries_at_once() {
    let owner = Owner::new();
    // A long backoff: without the kick the second attempt would be a minute away.
    let options = UseWebSocketOptions {
        backoff: Backoff {
            base: Duration::from_secs(60),
            factor: 1.0,
            max: Duration::from_secs(60),
        },
        ..UseWebSocketOptions::default()
    };
    let ws = owner.with(|| use_websocket_with_options("ws://127.0.0.1:9/ws", options));
    eventually(10, "a retry scheduled", || {
        matches!(ws.state.get_untracked(), ConnState::Reconnecting { at, .. } if at > now_ms() + 1000)
    })
    .await;
    let ConnState::Reconnecting { attempt, .. } = ws.state.get_untracked() else {
        unreachable!()
    };
    let online = web_sys::Event::new("online").unwrap();
    window().dispatch_event(&online).unwrap();
    eventually(5, "the next attempt right away", || {
        matches!(
            ws.state.get_untracked(),
            ConnState::Reconnecting { attempt: next, .. } if next > attempt
        )
    })
    .await;
    ws.close();
}

#[wasm_bindgen_test]
async fn the_token_provider_is_asked_on_every_connect() {
    let (Some(url), Some(token)) = (
        option_env!("SWITCHBOARD_TEST_AUTH_WS_URL"),
        option_env!("SWITCHBOARD_TEST_TOKEN"),
    ) else {
        panic!("run the wasm tests through scripts/test.sh: it starts an authenticating server");
    };
    let owner = Owner::new();
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let counter = calls.clone();
    let options = UseWebSocketOptions {
        token: Some(std::rc::Rc::new(move || {
            counter.set(counter.get() + 1);
            Box::pin(async move { Some(token.to_owned()) })
        })),
        ..UseWebSocketOptions::default()
    };
    let ws = owner.with(|| use_websocket_with_options(url, options));
    eventually(10, "welcome", || {
        ws.state.get_untracked() == ConnState::Open
    })
    .await;
    // an authenticated user may use the channels its token grants
    let sub = owner.with(|| ws.subscribe::<Value>("room:auth"));
    eventually(5, "subscribed", || live(&sub)).await;
    assert_eq!(calls.get(), 1);
    ws.close();
    eventually(5, "closed", || {
        ws.state.get_untracked() == ConnState::Closed
    })
    .await;
    ws.open();
    eventually(10, "welcome again", || {
        ws.state.get_untracked() == ConnState::Open
    })
    .await;
    assert_eq!(calls.get(), 2);
    eventually(5, "resubscribed", || live(&sub)).await;

    // without a token the same server refuses: 4001, no reconnect loop
    let anon = owner.with(|| use_websocket(url));
    eventually(15, "refused", || {
        anon.state.get_untracked() == ConnState::Closed
    })
    .await;
    assert!(anon.last_error.get_untracked().unwrap().contains("4001"));
    assert_eq!(anon.publish("room:auth", &1).err(), Some(SendError::Closed));
    // A channel the token does not grant fails with the server's code, as the state.
    let denied = owner.with(|| ws.subscribe::<Value>("secret"));
    eventually(5, "refused subscription", || {
        matches!(
            denied.state.get_untracked(),
            SubState::Failed {
                code: ErrorCode::Forbidden,
                ..
            }
        )
    })
    .await;
}

#[wasm_bindgen_test]
async fn two_tabs_of_one_signed_in_user_are_one_member() {
    let (Some(url), Some(token)) = (
        option_env!("SWITCHBOARD_TEST_AUTH_WS_URL"),
        option_env!("SWITCHBOARD_TEST_TOKEN"),
    ) else {
        panic!("run the wasm tests through scripts/test.sh: it starts an authenticating server");
    };
    let with_token = move || UseWebSocketOptions {
        token: Some(std::rc::Rc::new(move || {
            Box::pin(async move { Some(token.to_owned()) })
        })),
        ..UseWebSocketOptions::default()
    };
    let room = unique("room:tabs");
    let tab1 = Owner::new();
    let tab2 = Owner::new();
    let ws1 = tab1.with(|| use_websocket_with_options(url, with_token()));
    let ws2 = tab2.with(|| use_websocket_with_options(url, with_token()));
    let r1 = tab1.with(|| ws1.join::<Value, _>(&room, &json!({"name": "Ada"})));
    eventually(10, "tab 1 in", || live(&r1)).await;
    let r2 = tab2.with(|| ws2.join::<Value, _>(&room, &json!({"name": "Ada"})));
    eventually(10, "tab 2 in", || live(&r2)).await;
    // The second tab's snapshot: one member with two connections.
    eventually(5, "one member, two connections", || {
        r2.members
            .with_untracked(|m| m.len() == 1 && m[0].connections == 2)
    })
    .await;
    assert_eq!(ws1.user_id.get_untracked(), ws2.user_id.get_untracked());
    // A second tab is no join for the first, and closing it is no leave.
    drop(tab2);
    sleep(Duration::from_millis(500)).await;
    assert!(
        r1.last_presence.get_untracked().is_none(),
        "nothing was announced"
    );
    assert_eq!(r1.members.with_untracked(Vec::len), 1);
}

#[wasm_bindgen_test]
fn the_demos_number_formatting_matches_rusts() {
    use switchboard_web::app::fixed;
    for x in [
        0.0, 0.04, 0.05, 0.96, 1.0, 12.345, 99.999, 101.25, 1234.5678, 3e9,
    ] {
        for d in 0..=3u32 {
            let ours = fixed(x, d);
            let rusts = format!("{x:.*}", d as usize);
            // Rust rounds half to even on the exact binary value; ours rounds half away
            // from zero: they may differ only in the last digit, and only on a tie.
            let close = ours == rusts
                || (ours.len() == rusts.len()
                    && ours[..ours.len() - 1] == rusts[..rusts.len() - 1]);
            assert!(close, "{x} to {d}: {ours} vs {rusts}");
        }
    }
    assert_eq!(fixed(-1.25, 1), "-1.3");
    assert_eq!(fixed(-0.01, 1), "0.0");
    assert_eq!(fixed(1.5, 0), "2");
    assert_eq!(fixed(40.0, 1), "40.0");
}

//! Browser tests (headless Chromium through wasm-bindgen-test-runner) of the
//! `use_websocket` hook against a real Switchboard server, whose URL scripts/test.sh passes
//! at build time in `SWITCHBOARD_TEST_WS_URL`.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use gloo_timers::future::sleep;
use leptos::prelude::*;
use serde_json::{Value, json};
use switchboard_protocol::ErrorCode;
use switchboard_web::app::StatusBadge;
use switchboard_web::use_websocket::backoff::Backoff;
use switchboard_web::use_websocket::outbox::{Overflow, SendError};
use switchboard_web::use_websocket::{
    ConnState, RequestError, UseWebSocketOptions, WebSocket, use_websocket,
    use_websocket_with_options, ws_url_for,
};
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
    assert!(!ws.client_id.get_untracked().unwrap().is_empty());
    eventually(10, "a round-trip time", || {
        ws.rtt_ms.get_untracked().is_some()
    })
    .await;
    let rtt = ws.rtt_ms.get_untracked().unwrap();
    assert!((0.0..5000.0).contains(&rtt), "rtt {rtt}");

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
async fn publish_reaches_subscribers_and_is_acked() {
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    let channel = unique("t:");
    let sub = owner.with(|| ws.subscribe(&channel));
    eventually(5, "subscribed", || sub.active.get_untracked()).await;
    for i in 0..5 {
        ws.publish(&channel, json!(i)).unwrap();
    }
    eventually(5, "5 messages", || {
        sub.messages.with_untracked(|m| m.len() == 5)
    })
    .await;
    let data: Vec<Value> = sub
        .messages
        .with_untracked(|m| m.iter().map(|x| x.data.clone()).collect());
    assert_eq!(data, (0..5).map(|i| json!(i)).collect::<Vec<_>>());
    eventually(5, "every publish acked", || ws.queued.get_untracked() == 0).await;
}

#[wasm_bindgen_test]
async fn requests_resolve_fail_and_time_out() {
    let owner = Owner::new();
    let options = UseWebSocketOptions {
        request_timeout: Duration::from_millis(300),
        ..UseWebSocketOptions::default()
    };
    let ws = connected(&owner, options).await;
    let time = ws.request("time", Value::Null).await.unwrap();
    assert!(time["now_ms"].as_u64().unwrap() > 1_600_000_000_000);
    match ws.request("no-such-method", Value::Null).await {
        Err(RequestError::Server { code, .. }) => assert_eq!(code, ErrorCode::UnknownMethod),
        other => panic!("{other:?}"),
    }
    // offline: the request waits in the queue, times out, and is withdrawn
    ws.close();
    eventually(5, "offline", || {
        ws.state.get_untracked() == ConnState::Closed
    })
    .await;
    let pending = ws.request("time", Value::Null);
    assert_eq!(ws.queued.get_untracked(), 1);
    assert_eq!(pending.await, Err(RequestError::Timeout));
    assert_eq!(ws.queued.get_untracked(), 0);
}

#[wasm_bindgen_test]
async fn offline_queue_flushes_in_order_once_after_reconnect() {
    let owner = Owner::new();
    let ws = connected(&owner, UseWebSocketOptions::default()).await;
    let watcher = connected(&owner, UseWebSocketOptions::default()).await;
    let channel = unique("q:");
    let sub = owner.with(|| watcher.subscribe(&channel));
    eventually(5, "subscribed", || sub.active.get_untracked()).await;
    ws.close();
    eventually(5, "offline", || {
        ws.state.get_untracked() == ConnState::Closed
    })
    .await;
    for i in 0..10 {
        ws.publish(&channel, json!(i)).unwrap();
    }
    assert_eq!(ws.queued.get_untracked(), 10);
    ws.open();
    eventually(10, "back online", || {
        ws.state.get_untracked() == ConnState::Open
    })
    .await;
    eventually(5, "10 messages", || {
        sub.messages.with_untracked(|m| m.len() == 10)
    })
    .await;
    eventually(5, "acks", || ws.queued.get_untracked() == 0).await;
    sleep(Duration::from_millis(200)).await;
    let data: Vec<Value> = sub
        .messages
        .with_untracked(|m| m.iter().map(|x| x.data.clone()).collect());
    assert_eq!(
        data,
        (0..10).map(|i| json!(i)).collect::<Vec<_>>(),
        "once, in order"
    );
}

#[wasm_bindgen_test]
async fn a_full_outbox_follows_its_overflow_policy() {
    let owner = Owner::new();
    for (overflow, third) in [
        (Overflow::Reject, Err(SendError::Full)),
        (Overflow::DropNewest, Err(SendError::Dropped)),
        (Overflow::DropOldest, Ok(())),
    ] {
        let options = UseWebSocketOptions {
            outbox_capacity: 2,
            overflow,
            immediate: false,
            ..UseWebSocketOptions::default()
        };
        let ws = owner.with(|| use_websocket_with_options(&server_url(), options));
        assert_eq!(ws.publish("x", json!(1)), Ok(()));
        assert_eq!(ws.publish("x", json!(2)), Ok(()));
        assert_eq!(ws.publish("x", json!(3)), third, "{overflow:?}");
        assert_eq!(ws.queued.get_untracked(), 2);
        let dropped = u64::from(overflow != Overflow::Reject);
        assert_eq!(ws.dropped.get_untracked(), dropped, "{overflow:?}");
    }
}

#[wasm_bindgen_test]
async fn rooms_share_presence_and_see_leaves() {
    let room = unique("room:");
    let owner_a = Owner::new();
    let a = connected(&owner_a, UseWebSocketOptions::default()).await;
    let sub_a = owner_a.with(|| a.join(&room, json!({"name": "Ada"})));
    eventually(5, "a in", || sub_a.members.with_untracked(Vec::len) == 1).await;

    let owner_b = Owner::new();
    let b = connected(&owner_b, UseWebSocketOptions::default()).await;
    let sub_b = owner_b.with(|| b.join(&room, json!({"name": "Bob"})));
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
    assert_eq!(ws.publish("x", json!(1)), Ok(()));
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
    eventually(10, "a first retry scheduled", || {
        matches!(ws.state.get_untracked(), ConnState::Reconnecting { attempt: 1, at } if at > switchboard_web::use_websocket::now_ms() + 1000.0)
    })
    .await;
    let online = web_sys::Event::new("online").unwrap();
    window().dispatch_event(&online).unwrap();
    eventually(5, "the next attempt right away", || {
        matches!(
            ws.state.get_untracked(),
            ConnState::Reconnecting { attempt: 2, .. }
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
    let sub = owner.with(|| ws.subscribe("room:auth"));
    eventually(5, "subscribed", || sub.active.get_untracked()).await;
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
    eventually(5, "resubscribed", || sub.active.get_untracked()).await;

    // without a token the same server refuses: 4001, no reconnect loop
    let anon = owner.with(|| use_websocket(url));
    eventually(15, "refused", || {
        anon.state.get_untracked() == ConnState::Closed
    })
    .await;
    assert!(anon.last_error.get_untracked().unwrap().contains("4001"));
    assert_eq!(anon.publish("room:auth", json!(1)), Err(SendError::Closed));
}

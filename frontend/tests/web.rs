//! Browser tests (headless Chromium through wasm-bindgen-test-runner). The connection tests
//! talk to a real Switchboard server whose URL scripts/test.sh passes at build time in
//! `SWITCHBOARD_TEST_WS_URL`.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use gloo_timers::future::sleep;
use leptos::prelude::*;
use switchboard_web::app::StatusBadge;
use switchboard_web::backoff::Backoff;
use switchboard_web::connection::{
    ConnState, ConnectionOptions, use_connection, use_connection_with_options, ws_url_for,
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
fn backoff_grows_caps_and_jitters() {
    let b = Backoff::default();
    assert_eq!(b.ceiling(0), Duration::from_millis(500));
    assert_eq!(b.ceiling(1), Duration::from_millis(1000));
    assert_eq!(b.ceiling(3), Duration::from_millis(4000));
    assert_eq!(b.ceiling(20), Duration::from_secs(30));
    assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    assert_eq!(b.delay(2, 0.0), Duration::ZERO);
    assert_eq!(b.delay(2, 0.5), Duration::from_millis(1000));
    // full jitter: random draws spread over the whole window
    let delays: Vec<Duration> = (0..200)
        .map(|_| b.delay(4, js_sys::Math::random()))
        .collect();
    let max = b.ceiling(4);
    assert!(delays.iter().all(|d| *d <= max));
    assert!(delays.iter().any(|d| *d < max / 4) && delays.iter().any(|d| *d > max * 3 / 4));
}

#[wasm_bindgen_test]
async fn connects_to_the_real_server_and_measures_rtt() {
    let owner = Owner::new();
    let conn = owner.with(|| use_connection(server_url()));
    eventually(10, "welcome", || {
        conn.state.get_untracked() == ConnState::Open
    })
    .await;
    let id = conn
        .client_id
        .get_untracked()
        .expect("client id from welcome");
    assert!(!id.is_empty());
    eventually(10, "a round-trip time", || {
        conn.rtt_ms.get_untracked().is_some()
    })
    .await;
    let rtt = conn.rtt_ms.get_untracked().unwrap();
    assert!((0.0..5000.0).contains(&rtt), "rtt {rtt}");
    assert_eq!(conn.last_error.get_untracked(), None);

    // the badge renders the live state
    let host = document().create_element("div").unwrap();
    document().body().unwrap().append_child(&host).unwrap();
    let host_el: web_sys::HtmlElement = wasm_bindgen::JsCast::unchecked_into(host.clone());
    let _mount = owner
        .with(|| leptos::mount::mount_to(host_el, move || view! { <StatusBadge conn=conn /> }));
    eventually(5, "badge text", || {
        host.text_content().unwrap_or_default() == "connected"
    })
    .await;

    conn.close();
    eventually(5, "closed", || {
        conn.state.get_untracked() == ConnState::Closed
    })
    .await;
}

#[wasm_bindgen_test]
async fn keeps_retrying_with_backoff_when_the_server_is_unreachable() {
    let owner = Owner::new();
    // Port 9 on loopback: nothing listens, every attempt fails at once.
    let options = ConnectionOptions {
        backoff: Backoff {
            base: Duration::from_millis(20),
            factor: 2.0,
            max: Duration::from_millis(100),
        },
        ..ConnectionOptions::default()
    };
    let conn = owner.with(|| use_connection_with_options("ws://127.0.0.1:9/ws".into(), options));
    eventually(10, "a third attempt", || {
        matches!(conn.state.get_untracked(), ConnState::Reconnecting { attempt, .. } if attempt >= 3)
    })
    .await;
    assert_eq!(conn.client_id.get_untracked(), None);
    conn.close();
    eventually(5, "closed", || {
        conn.state.get_untracked() == ConnState::Closed
    })
    .await;
}

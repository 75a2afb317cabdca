//! The hook outside a browser (a server-side render, a native test): the handle exists,
//! nothing connects, nothing panics.
#![cfg(not(target_arch = "wasm32"))]

use leptos::prelude::*;
use serde_json::{Value, json};
use switchboard_leptos::{ConnState, SendError, same_origin_ws_url, use_websocket};

#[test]
fn rendering_on_a_server_connects_nothing_and_panics_nowhere() {
    let owner = Owner::new();
    owner.with(|| {
        assert_eq!(same_origin_ws_url(), "");
        let ws = use_websocket("ws://127.0.0.1:9/ws");
        assert_eq!(ws.state.get_untracked(), ConnState::Connecting);
        let room = ws.join::<Value, _>("room:ssr", &json!({"name": "Ada"}));
        assert!(!room.is_live());
        // Publishes queue as they would before the first connect.
        assert!(ws.publish("room:ssr", &json!({"text": "hi"})).is_ok());
        assert_eq!(ws.queued.get_untracked(), 1);
        assert!(matches!(
            ws.publish_ephemeral("room:ssr", &1),
            Err(SendError::NotConnected)
        ));
        assert!(ws.server_now() > 1_600_000_000_000.0);
        room.unsubscribe();
    });
    drop(owner);
}

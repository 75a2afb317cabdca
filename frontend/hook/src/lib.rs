//! `use_websocket` for Leptos: one Switchboard connection as signals, futures and
//! callbacks.
//!
//! ```ignore
//! let ws = provide_websocket(&same_origin_ws_url(), UseWebSocketOptions::default());
//! let room = ws.join::<Chat, _>("room:lobby", &json!({"name": "Ada"}));
//! let sent = ws.publish("room:lobby", &Chat { text: "hi".into() })?; // queued while offline
//! spawn_local(async move { let offset = sent.await; });           // the ack, or why not
//! let now: Time = ws.request("time", &()).await?;                   // typed both ways
//! view! { <For each=move || room.messages.get() … /> <p>{move || room.members.get().len()}</p> }
//! ```
//!
//! Everything the connection decides (reconnects by close code with backoff, the dead-link
//! check, the offline queue and its pacing, acks, retries, restoring subscriptions) is the
//! shared client core's (`switchboard-client`, tested natively against a simulated faulty
//! server); this crate is glue: options, handles, signals, and one browser driver.
//!
//! The crate does not enable Leptos's `csr` feature and starts nothing during SSR: the
//! connection's driver exists only in the browser build (`wasm32`); compiled for a server,
//! the handle exists and stays closed.
//!
//! # Layout
//! - [`options`]: the options, [`UseWebSocketOptions`].
//! - [`handle`]: the handles components hold, [`WebSocket`] and [`Subscription`], and how
//!   the core's events become signals, futures and callbacks.
//! - `driver` (browser only): the `web_sys::WebSocket`, timers and network events.

#[cfg(target_arch = "wasm32")]
mod driver;
pub mod handle;
pub mod options;

use leptos::prelude::*;
pub use switchboard_client::{
    Backoff, BatchOptions, ConnState, Overflow, PublishError, PublishId, PublishResult, Recovery,
    RequestError, SendError, SubOptions, SubState, Unrecovered,
};

pub use handle::{
    DecodeError, PresenceEvent, Publish, Received, RestoredPublish, Subscription, WebSocket,
};
pub use options::{TokenProvider, UseWebSocketOptions};

/// Milliseconds on the hook's monotonic clock (`performance.now()`): the clock of
/// [`ConnState::Reconnecting::at`].
pub fn now_ms() -> u64 {
    handle::clock_ms()
}

/// `ws://host/ws` or `wss://host/ws` for a page at `protocol` and `host`.
pub fn ws_url_for(protocol: &str, host: &str) -> String {
    ws_url_at(protocol, host, switchboard_protocol::WS_PATH)
}

/// `ws://host<path>` or `wss://host<path>` for a page at `protocol` and `host`: for a
/// server mounted under a prefix (`/realtime/ws`, see the README's axum section).
pub fn ws_url_at(protocol: &str, host: &str, path: &str) -> String {
    let scheme = if protocol == "https:" { "wss" } else { "ws" };
    format!("{scheme}://{host}{path}")
}

/// The WebSocket URL on the page's own origin (empty outside a browser).
pub fn same_origin_ws_url() -> String {
    same_origin_ws_url_at(switchboard_protocol::WS_PATH)
}

/// The WebSocket URL at `path` on the page's own origin, e.g. `/realtime/ws` for a server
/// mounted in an app at `/realtime` (empty outside a browser).
pub fn same_origin_ws_url_at(path: &str) -> String {
    if !cfg!(target_arch = "wasm32") {
        return String::new();
    }
    match web_sys::window() {
        Some(w) => {
            let loc = w.location();
            ws_url_at(
                &loc.protocol().unwrap_or_default(),
                &loc.host().unwrap_or_default(),
                path,
            )
        }
        None => String::new(),
    }
}

/// Connects to `url` with the default options.
pub fn use_websocket(url: &str) -> WebSocket {
    use_websocket_with_options(url, UseWebSocketOptions::default())
}

/// Connects to `url` and provides the handle as context for every component below.
pub fn provide_websocket(url: &str, options: UseWebSocketOptions) -> WebSocket {
    let ws = use_websocket_with_options(url, options);
    provide_context(ws);
    ws
}

/// The handle [`provide_websocket`] put in context.
pub fn expect_websocket() -> WebSocket {
    expect_context::<WebSocket>()
}

/// Connects to `url`; the connection lives until the current reactive owner is disposed.
/// In the browser only: during SSR the handle exists and stays closed.
pub fn use_websocket_with_options(url: &str, options: UseWebSocketOptions) -> WebSocket {
    #[cfg(target_arch = "wasm32")]
    let seed = (js_sys::Math::random() * u32::MAX as f64) as u64
        ^ ((js_sys::Math::random() * u32::MAX as f64) as u64) << 32;
    // Outside a browser nothing connects: the seed only names ids that are never sent.
    #[cfg(not(target_arch = "wasm32"))]
    let seed = handle::wall_ms() as u64;
    let core = switchboard_client::ClientCore::new(options.core(), seed, handle::clock_ms());
    let mut conn = handle::Conn::new(core, options.message_buffer, options.render_per_frame);
    conn.persist = options.persist_outbox.clone();
    let ws = WebSocket::new(conn);
    // Publishes an earlier run of the page left unacked go first, with their ids.
    #[cfg(target_arch = "wasm32")]
    if let Some(key) = &options.persist_outbox
        && let Some(saved) = web_sys::window()
            .and_then(|w| w.local_storage().ok().flatten())
            .and_then(|s| s.get_item(key).ok().flatten())
    {
        handle::restore_outbox(ws, &saved);
    }
    // The browser drives the connection; a server-side render (native code) never does.
    #[cfg(target_arch = "wasm32")]
    {
        #[cfg(feature = "msgpack")]
        let messagepack = options.messagepack;
        #[cfg(not(feature = "msgpack"))]
        let messagepack = false;
        driver::start(ws, url.to_owned(), options.token.clone(), messagepack);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (url, &options);
    handle::pump(ws);
    ws
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_page_scheme_and_the_mount_path() {
        assert_eq!(ws_url_for("https:", "example.com"), "wss://example.com/ws");
        assert_eq!(
            ws_url_for("http:", "127.0.0.1:8080"),
            "ws://127.0.0.1:8080/ws"
        );
        assert_eq!(
            ws_url_at("https:", "app.example", "/realtime/ws"),
            "wss://app.example/realtime/ws"
        );
    }
}

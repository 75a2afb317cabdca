//! Switchboard's browser side (Leptos, client-side rendered, WASM).
//!
//! # Layout
//! - [`use_websocket`]: the reusable hook: one connection as signals, with reconnects,
//!   heartbeat, offline queue, throttling, batching, requests and subscriptions.
//!   Its pure parts ([`use_websocket::backoff`], [`use_websocket::outbox`]) are plain Rust,
//!   tested natively.
//! - [`app`]: the demo app: chat rooms with presence and typing, notifications, a live
//!   ticker and a connection inspector.
//!
//! `main.rs` only calls [`start`]; Trunk builds it (see `index.html`).

pub mod app;
pub mod use_websocket;

/// Mounts the demo app into `<body>`.
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}

//! Switchboard's browser side (Leptos, client-side rendered, WASM).
//!
//! # Layout
//! - [`connection`]: the connection to the server as signals (state, client id,
//!   round-trip time), with reconnects that obey the server's close codes.
//! - [`backoff`]: jittered exponential reconnect delays (plain Rust).
//! - [`app`]: the demo app's components.
//!
//! `main.rs` only calls [`start`]; Trunk builds it (see `index.html`).

pub mod app;
pub mod backoff;
pub mod connection;

/// Mounts the demo app into `<body>`.
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}

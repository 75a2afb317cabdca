//! Switchboard's demo app (Leptos, client-side rendered, WASM): chat rooms with presence
//! and typing, notifications, a live ticker and a connection inspector, all through one
//! connection from `switchboard-leptos` (the hook, in `frontend/hook/`).
//!
//! # Layout
//! - [`app`]: the components.
//!
//! `main.rs` only calls [`start`]; Trunk builds it (see `index.html`).

pub mod app;

/// Mounts the demo app into `<body>` (with a panic hook: the app's choice, not the
/// library's).
pub fn start() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(app::App);
}

//! Switchboard's server: a WebSocket hub on axum and tokio that also serves the web bundle.
//!
//! # Layout
//! - [`config`]: every option, as flags and `SWITCHBOARD_*` variables (clap).
//! - [`run`] / [`app`] (this file): the router: `/ws`, `/healthz`, `/metrics`, and the
//!   bundle at `/` with a fallback to `index.html` for client-side routes.
//! - `session` (private): one connection's task: decode, dispatch, reply, heartbeat, close.
//! - [`hub`]: the registry of connections and channels; fan-out and presence.
//! - [`methods`]: request/response handlers (`time`, `channels`, `presence`, and yours).
//! - [`metrics`]: counters for `/metrics`.
//!
//! Start reading at [`run`], then `session.rs`.

pub mod config;
pub mod hub;
pub mod methods;
pub mod metrics;
mod session;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use switchboard_protocol::{CloseCode, WS_PATH};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep};
use tower_http::services::{ServeDir, ServeFile};

pub use config::Config;
pub use hub::Hub;
pub use methods::Methods;
use metrics::Metrics;

/// What every handler shares (a cheap clone).
#[derive(Clone)]
pub struct AppState {
    /// The options the server runs with.
    pub config: Arc<Config>,
    /// Connections and channels.
    pub hub: Hub,
    /// Request handlers.
    pub methods: Arc<Methods>,
}

impl AppState {
    /// State for `config` with the built-in methods.
    pub fn new(config: Config) -> Self {
        Self::with_methods(config, Methods::with_builtins())
    }

    /// State for `config` with your own method table.
    pub fn with_methods(config: Config, methods: Methods) -> Self {
        Self {
            config: Arc::new(config),
            hub: Hub::new(Arc::new(Metrics::default())),
            methods: Arc::new(methods),
        }
    }
}

/// The router: the WebSocket at [`WS_PATH`], health and metrics, and the web bundle.
pub fn app(state: AppState) -> Router {
    let dist = state.config.dist.clone();
    let index = dist.join("index.html");
    let router = Router::new()
        .route(WS_PATH, get(ws_upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics));
    let router = if index.is_file() {
        // Unknown paths get index.html, so client-side routes survive a reload.
        router.fallback_service(ServeDir::new(&dist).fallback(ServeFile::new(index)))
    } else {
        tracing::warn!(dist = %dist.display(), "no index.html: serving a placeholder page at /");
        router.fallback(get(no_bundle))
    };
    router.with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves; then closes every
/// connection with 1001 (going away) and waits up to the drain timeout for them to end.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hub = state.hub.clone();
    let drain = state.config.drain_timeout;
    let router = app(state);
    let close_all = hub.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: closing connections with 1001");
            close_all.close_all(CloseCode::GOING_AWAY);
        })
        .await?;
    // Upgraded connections live in their own tasks: wait for them to say goodbye.
    let deadline = Instant::now() + drain;
    while hub.connection_count() > 0 && Instant::now() < deadline {
        hub.close_all(CloseCode::GOING_AWAY);
        sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::info!(left = hub.connection_count(), "stopped");
    Ok(())
}

async fn ws_upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let max = state.config.max_frame_bytes as usize;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session::run(socket, state))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.hub.metrics().render(state.hub.connection_count());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn no_bundle(State(state): State<AppState>) -> impl IntoResponse {
    let dist = state.config.dist.display().to_string();
    (
        StatusCode::NOT_FOUND,
        Html(format!(
            "<!doctype html><title>Switchboard</title><h1>Switchboard server is running</h1>\
             <p>No web bundle in <code>{dist}</code>. Build it with <code>trunk build --release</code> \
             (or run <code>./scripts/run.sh</code>). The WebSocket is at <code>{WS_PATH}</code>.</p>"
        )),
    )
}

//! Switchboard's server: a WebSocket hub on axum and tokio that also serves the web bundle.
//!
//! # Layout
//! - [`config`]: every option, as flags and `SWITCHBOARD_*` variables (clap).
//! - [`run`] / [`app`] (this file): the router: `/ws`, `/healthz` (503 while Redis is
//!   unreachable), `/metrics`, and the
//!   bundle at `/` ([`bundle`]: precompressed, with cache headers, and a fallback to
//!   `index.html` for client-side routes).
//! - `session` (private): one connection: `session/core.rs` is its logic (frames in,
//!   frames and close decisions out, timers), testable without a socket; `session/mod.rs`
//!   is the socket glue around it.
//! - [`edge`]: the client's address behind trusted proxies, and the Origin check.
//! - [`admission`]: the connection caps (total, per address, waiting for a token).
//! - [`hub`]: this node's connections and local subscribers; fan-out.
//! - [`queue`]: each connection's outbound queue, bounded in frames and bytes.
//! - [`frame`]: encoded frames, the bytes the hub, broker and history carry.
//! - [`broker`]: the seam for what nodes share (delivery, presence, streams, `direct`,
//!   channel lists); [`broker::MemoryBroker`] is the single-node default,
//!   [`broker::RedisBroker`] (`--redis-url`) puts several nodes on one Redis.
//! - [`history`]: channel streams (offsets, epochs, the idempotent-publish window): what is
//!   read ([`history::History`]) and what this process writes ([`history::Store`]: the
//!   embedded [`history::DiskHistory`], the default, or [`history::MemoryHistory`]).
//! - [`embed`]: Switchboard inside your own axum app ([`Switchboard`]): your
//!   authentication, permissions and hooks, server-side publishing.
//! - [`methods`]: request/response handlers (`time`, `channels`, `presence`, and yours).
//! - [`auth`]: JWT verification and channel permissions.
//! - [`api`]: the HTTP publishing endpoint and the demo ticker.
//! - [`metrics`]: counters for `/metrics`.
//! - [`clock`]: wall-clock time and random ids.
//! - [`budget`]: the memory bound the options imply, printed at startup.
//! - [`deflate`]: permessage-deflate (RFC 7692) beside tungstenite: negotiation,
//!   compress-once for broadcasts, inflating beneath the socket; `upgrade` (private) is
//!   the `/ws` and `/echo` upgrade that negotiates it.
//! - [`tls`]: HTTPS and `wss://` with rustls (`--tls-cert`), certificates reloaded when
//!   their files change.
//!
//! Start reading at [`run`], then `session/core.rs`.

pub mod admission;
pub mod api;
pub mod auth;
pub mod broker;
pub mod budget;
pub mod bundle;
pub mod clock;
pub mod config;
pub mod deflate;
pub mod edge;
pub mod embed;
pub mod frame;
pub mod history;
pub mod hub;
pub mod methods;
pub mod metrics;
pub mod queue;
mod session;
pub mod tls;
mod upgrade;

use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::Deserialize;
use switchboard_protocol::{CloseCode, WS_PATH};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tungstenite::protocol::WebSocketConfig;

use admission::{Admission, Admissions};
use auth::{Auth, AuthError};
use broker::Broker;
pub use config::Config;
pub use embed::Switchboard;
pub use hub::Hub;
pub use methods::Methods;
use metrics::Metrics;
/// The protocol crate, so an embedding app names channels, members and frames without a
/// second dependency.
pub use switchboard_protocol as protocol;

/// What every handler shares (a cheap clone).
#[derive(Clone)]
pub struct AppState {
    /// The options the server runs with.
    pub config: Arc<Config>,
    /// Connections and channels.
    pub hub: Hub,
    /// Request handlers.
    pub methods: Arc<Methods>,
    /// Token checking.
    pub auth: Arc<Auth>,
    /// Every connection's task, so shutdown can wait for them to write what is queued.
    pub sessions: TaskTracker,
    /// The connection caps every `/ws` (and `/echo`) connection is admitted under.
    pub admissions: Admissions,
}

impl AppState {
    /// State for `config` with the built-in methods. Panics if the configured history
    /// store cannot be opened: see [`AppState::try_new`].
    pub fn new(config: Config) -> Self {
        Self::with_methods(config, Methods::with_builtins())
    }

    /// State for `config` with the built-in methods, or why its history store cannot be
    /// opened.
    pub fn try_new(config: Config) -> Result<Self, String> {
        Self::try_with_methods(config, Methods::with_builtins())
    }

    /// State for `config` with your own method table. Panics if the configured history
    /// store cannot be opened.
    pub fn with_methods(config: Config, methods: Methods) -> Self {
        Self::try_with_methods(config, methods).unwrap_or_else(|e| panic!("{e}"))
    }

    /// State for `config` with your own method table, or why its history store cannot be
    /// opened.
    pub fn try_with_methods(config: Config, methods: Methods) -> Result<Self, String> {
        let broker = config.open_broker()?;
        Ok(Self::with_broker(config, methods, broker))
    }

    /// State for `config` with your own method table and broker.
    pub fn with_broker(config: Config, methods: Methods, broker: Arc<dyn Broker>) -> Self {
        Self {
            auth: Arc::new(Auth::from_config(&config)),
            admissions: Admissions::from_config(&config),
            config: Arc::new(config),
            hub: Hub::new(Arc::new(Metrics::default()), broker),
            methods: Arc::new(methods),
            sessions: TaskTracker::new(),
        }
    }
}

/// The router: the WebSocket at [`WS_PATH`], health and metrics, and the web bundle.
pub fn app(state: AppState) -> Router {
    let dist = state.config.dist.clone();
    let index = dist.join("index.html");
    let router = Router::new()
        .route(WS_PATH, get(ws_upgrade))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route(
            "/api/publish",
            post(api::publish).layer(DefaultBodyLimit::max(state.config.max_frame_bytes as usize)),
        );
    let router = if state.config.echo_endpoint {
        router.route("/echo", get(echo_upgrade))
    } else {
        router
    };
    let router = if index.is_file() {
        // Precompressed, cached; unknown paths get index.html (client-side routes).
        router.fallback_service(bundle::router(&dist))
    } else {
        tracing::warn!(dist = %dist.display(), "no index.html: serving a placeholder page at /");
        router.fallback(get(no_bundle))
    };
    router.with_state(state)
}

/// Serves `app(state)` on `listener` (with TLS when the configuration names a certificate)
/// until `shutdown` resolves; then asks every connection to write what is queued for it
/// and close with 1001 (going away), and waits up to the drain timeout for them;
/// connections still open then are closed at once.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(cert), Some(key)) => {
            let certificates = tls::Certificates::open(cert, key).map_err(std::io::Error::other)?;
            let config = certificates
                .server_config()
                .map_err(std::io::Error::other)?;
            let watch = certificates.watch(state.config.tls_watch);
            Some((config, AbortOnDrop(watch)))
        }
        _ => None,
    };
    match tls {
        Some((config, _watch)) => {
            // `tap_io` only so that axum hands the peer address to `ConnectInfo`.
            let listener = tls::TlsListener::new(listener, config)?.tap_io(|_| {});
            serve_on(listener, state, shutdown).await
        }
        None => {
            // Frames are small and latency matters more than packet count: no Nagle delay
            // (a reply written behind an unacknowledged one waited ~40 ms for the delayed
            // ACK).
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!("TCP_NODELAY not set: {e}");
                }
            });
            serve_on(listener, state, shutdown).await
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_on<L, F>(
    listener: axum::serve::TapIo<L, F>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    F: FnMut(&mut L::Io) + Send + 'static,
{
    let hub = state.hub.clone();
    let drain_state = state.clone();
    let ticker = state
        .config
        .demo_ticker
        .map(|every| tokio::spawn(api::demo_ticker(hub.clone(), every)));
    let router = app(state).into_make_service_with_connect_info::<SocketAddr>();
    let close_all = hub.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: closing connections with 1001");
            close_all.close_all(CloseCode::GOING_AWAY);
        })
        .await?;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    drain(&drain_state).await;
    Ok(())
}

/// Shutdown after the listener stopped: every connection is asked to close with 1001
/// once what is queued for it is written (and any arriving later at once); upgraded
/// connections live in their own tasks, so this waits up to the drain timeout for them
/// to say goodbye, then closes the rest at once. Last, everything acked is made durable
/// and the store records a clean stop.
pub(crate) async fn drain(state: &AppState) {
    let hub = &state.hub;
    let sessions = &state.sessions;
    hub.close_all(CloseCode::GOING_AWAY);
    sessions.close();
    if tokio::time::timeout(state.config.drain_timeout, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = hub.connection_count(),
            "drain timeout: closing the rest at once"
        );
        hub.kill_all(CloseCode::GOING_AWAY);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sessions.wait()).await;
    }
    hub.broker().history().shutdown();
    tracing::info!(left = hub.connection_count(), "stopped");
}

/// Query parameters of the WebSocket URL.
#[derive(Deserialize)]
struct WsQuery {
    /// A JWT, as an alternative to `hello.token`.
    token: Option<String>,
}

/// Written frames are flushed to the socket once this many bytes are buffered (and after
/// each batch). Unlike the read buffer it is not allocated up front: it grows while
/// writing. Smaller means more write syscalls under fan-out: 1 KiB lost half the
/// deliveries at 1,000 subscribers × 1,000/s where 4 KiB lost none; 16 KiB holds a whole
/// batch of 64 `message` frames of a 100-byte payload (~237 bytes each) in one write, and
/// took 2,000/s × 1,000 subscribers from 1.57 M deliveries/s with 21% loss to 2.0 M/s with
/// none (docs/benchmarks.md, issue 15).
pub const WRITE_BUFFER_BYTES: usize = 16384;

/// The upgrade: checks the Origin (403 before upgrading), the connection caps and the
/// `?token=`; the session reports cap and token failures with close codes, which a
/// browser can see (it cannot see an HTTP status).
pub(crate) async fn ws_upgrade(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    // Served without connect info (an embedding app's own `axum::serve`): every client
    // then counts as one unknown address.
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
    let deflate = state.config.deflate_options();
    let ws = match upgrade::Upgrade::from_parts(&mut parts, &state, &deflate).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection,
    };
    let query = match Query::<WsQuery>::try_from_uri(&parts.uri) {
        Ok(Query(query)) => query,
        Err(rejection) => return rejection.into_response(),
    };
    let headers = &parts.headers;
    let client_ip = edge::client_ip(peer.ip(), headers, &state.config.trusted_proxies);
    if let Some(forbidden) = edge::refuse_foreign_origin(&state, headers, peer, client_ip) {
        return forbidden;
    }
    let app_decision = match &state.auth.app {
        Some(authenticator) => authenticator.authenticate(&parts).await,
        None => Ok(None),
    };
    let auth = match (app_decision, &query.token) {
        (Ok(Some(identity)), _) => Ok(identity),
        (Err(refusal), _) => Err(AuthError::Refused(refusal.0)),
        // An app that authenticates, on a server that checks no tokens: its `None` must not
        // fall through to the development default (anonymous with every grant).
        (Ok(None), _) if state.auth.app.is_some() && !state.auth.enabled() => {
            Err(AuthError::Refused("not signed in".into()))
        }
        (Ok(None), Some(token)) => state.auth.verify(token),
        (Ok(None), None) => state.auth.anonymous(),
    };
    // Without a token where one is required, the connection waits for a `hello`: it
    // takes a pending-auth slot until then.
    let pending_auth = matches!(auth, Err(AuthError::Required));
    let admission = admit(&state, client_ip, peer, pending_auth);
    let config = &state.config;
    let (max, read_buffer) = (config.max_frame_bytes as usize, config.read_buffer_bytes);
    let pending = Box::new(session::Pending {
        state,
        auth,
        admission,
        deflate: ws.deflate(),
        encoding: ws.encoding(),
    });
    let sessions = pending.state.sessions.clone();
    let config = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(read_buffer)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Backpressure instead of growth: at most one frame beyond the buffer is held.
        .max_write_buffer_size(WRITE_BUFFER_BYTES + 2 * max);
    ws.on_upgrade(config, move |socket| {
        sessions.track_future(session::run(socket, pending))
    })
}

/// A place under the caps for a connection from `client_ip`, or `None` (logged) when a
/// cap is reached: the connection is then upgraded and closed with 4113.
fn admit(
    state: &AppState,
    client_ip: IpAddr,
    peer: SocketAddr,
    pending_auth: bool,
) -> Option<Admission> {
    state
        .admissions
        .admit(client_ip, pending_auth)
        .inspect_err(|cap| {
            tracing::info!(%client_ip, %peer, %cap, "refused a connection over a cap (4113)");
        })
        .ok()
}

/// The conformance echo: every text and binary message back unchanged (compressed when
/// deflate was agreed and it is at least the threshold). Same read buffer as `/ws`, but
/// Autobahn's message sizes (up to 16 MiB). The same Origin check as `/ws`, and each
/// connection holds a place under the same caps (over a cap: close 4113).
async fn echo_upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let headers = parts.headers.clone();
    let client_ip = edge::client_ip(peer.ip(), &headers, &state.config.trusted_proxies);
    if let Some(forbidden) = edge::refuse_foreign_origin(&state, &headers, peer, client_ip) {
        return forbidden;
    }
    let deflate = state.config.deflate_options();
    let ws = match upgrade::Upgrade::from_parts(&mut parts, &state, &deflate).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection,
    };
    let admission = admit(&state, client_ip, peer, false);
    let span = tracing::debug_span!("echo", %client_ip);
    let agreed = ws.deflate();
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(16 << 20))
        .read_buffer_size(state.config.read_buffer_bytes)
        .write_buffer_size(WRITE_BUFFER_BYTES);
    ws.on_upgrade(config, move |socket| {
        echo(socket, agreed, admission, state).instrument(span)
    })
}

/// Echoes until the peer goes. Over a cap (no `admission`) it closes with 4113 instead;
/// otherwise the admission is held until the echo ends. What the session refuses with a
/// close code (too big, broken UTF-8 or compressed data, a protocol error) closes the
/// echo with the same code.
async fn echo(
    mut socket: upgrade::Socket,
    deflate: Option<deflate::Agreed>,
    admission: Option<Admission>,
    state: AppState,
) {
    use futures::{SinkExt, StreamExt};
    use tungstenite::Message;
    use tungstenite::protocol::frame::coding::Data;
    let Some(_admission) = admission else {
        let code = CloseCode::SERVER_FULL;
        state.hub.metrics().close(code);
        return close_echo(socket, code).await;
    };
    let mut compressor = deflate.map(deflate::Compressor::new);
    loop {
        let msg = match socket.next().await {
            Some(Ok(msg)) => msg,
            // Too big, broken UTF-8 or compressed data, a protocol error: the code the
            // session would send.
            Some(Err(e)) => {
                if let Some(code) = session::close_code_for(&e) {
                    state.hub.metrics().close(code);
                    close_echo(socket, code).await;
                }
                return;
            }
            None => return,
        };
        let (payload, data) = match msg {
            Message::Text(text) => (bytes::Bytes::from(text), Data::Text),
            Message::Binary(bytes) => (bytes, Data::Binary),
            // Reading on flushes tungstenite's close reply: a clean handshake.
            _ => continue,
        };
        let compressed = compressor.as_mut().and_then(|c| c.compress(&payload));
        let reply = match (compressed, data) {
            (Some(compressed), data) => deflate::message(compressed, data),
            (None, Data::Text) => match tungstenite::Utf8Bytes::try_from(payload) {
                Ok(text) => Message::Text(text),
                Err(_) => return,
            },
            (None, _) => Message::Binary(payload),
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

/// Closes an echo connection with `code`, then reads until the peer's close (at most a
/// second), so ours is not lost to a reset.
async fn close_echo(mut socket: upgrade::Socket, code: CloseCode) {
    use futures::{SinkExt, StreamExt};
    use tungstenite::Message;
    use tungstenite::protocol::CloseFrame;
    let frame = CloseFrame {
        code: code.0.into(),
        reason: code.reason().into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}

/// `ok`, or 503 with the reason while the broker cannot reach what nodes share (Redis):
/// the node still serves its local clients meanwhile.
async fn healthz(State(state): State<AppState>) -> Response {
    match state.hub.broker().health() {
        Ok(()) => "ok".into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let hub = &state.hub;
    let mut body = hub
        .metrics()
        .render(hub.connection_count(), hub.queue_depths());
    state.admissions.write_metrics(&mut body);
    for (name, help, value) in hub.broker().metrics() {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            body,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
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

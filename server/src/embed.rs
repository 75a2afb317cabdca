//! Switchboard inside an existing axum app: build it once with [`Switchboard::builder`],
//! mount [`Switchboard::router`] at a path of your choice in your own `Router` (with your
//! own layers), serve it with your own `axum::serve`, and await [`Switchboard::shutdown`]
//! in its graceful-shutdown future, so that every WebSocket is told 1001 (going away) as
//! the server stops.
//!
//! Your code decides who a connection is ([`Authenticator`], from the upgrade request's
//! cookies, headers and query), what it may subscribe and publish to beyond its grants
//! ([`Permissions`], asked of your database), and hears what happens ([`Hooks`]:
//! connected, disconnected, joined, left, published). Your HTTP handlers publish, send to
//! a user and read a room's members through a clone of the [`Switchboard`], with the same
//! offsets, history and acks as a client's publish. Request methods that need your app's
//! state are registered with [`crate::methods::Methods::method_with_state`].
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use axum::{Router, routing::post};
//! use switchboard_server::{Config, Switchboard};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let sb = Switchboard::builder(Config::from_args(["--history", "memory"])?).build()?;
//! let rooms = sb.clone();
//! let app = Router::new()
//!     .route("/announce", post(move || async move {
//!         rooms.publish("room:lobby", &"hello from the server").await.map(|_| ()).ok();
//!     }))
//!     .nest("/realtime", sb.router()); // the WebSocket at /realtime/ws
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//!     .with_graceful_shutdown(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         sb.shutdown().await; // 1001 to every connection, then the store is made durable
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde::Serialize;
use switchboard_protocol::{Channel, ClientId, Member, Payload, Sender, StreamPosition};

/// What the traits below take and return, so an app implements them without naming
/// axum's or futures' paths.
pub use axum::http::request::Parts;
pub use futures::future::BoxFuture;

pub use crate::auth::{Grants, Identity};
use crate::broker::{BrokerError, Publication, Published};
use crate::methods::Methods;
use crate::{AppState, Config, WS_PATH};

/// Why your [`Authenticator`] refused a connection: the client gets an `error` with code
/// `unauthorized` and this text, then close 4001.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// Decides who an upgrade request is, from its parts (cookies, headers, the query).
/// `Ok(Some(identity))` admits it as that identity (with its grants; such a connection
/// takes no token in `hello` later); `Ok(None)` leaves the decision to the built-in token
/// check (a JWT in `?token=` or `hello`, or anonymous access, as configured), except on a
/// server that checks no tokens, where it refuses (the built-in development default,
/// anonymous with every grant, is never an embedding app's fallback); `Err` refuses it.
///
/// It runs for every upgrade request, before the connection caps are counted (their
/// per-address slot depends on its answer): keep it to a lookup, and put a rate limit in
/// front of the route if it must do more.
pub trait Authenticator: Send + Sync + 'static {
    /// Called once per upgrade request, before the upgrade.
    fn authenticate<'a>(
        &'a self,
        request: &'a Parts,
    ) -> BoxFuture<'a, Result<Option<Identity>, Refusal>>;
}

/// The connection a permission question or a hook is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The connection's id (the address of `direct` messages).
    pub client_id: ClientId,
    /// Its user, if it has one.
    pub user_id: Option<String>,
}

/// Per-channel decisions asked of your code after the connection's grants allowed the
/// action (so a grant can never be widened here, only narrowed). A refusal is answered
/// `forbidden`; no answer within [`PERMISSION_TIMEOUT`], `unavailable`. `may_subscribe`
/// is asked at every `subscribe` and by the built-in `history`, `presence` and `channels`
/// methods; `may_publish` until it allows a channel, and then that yes is kept for the
/// connection's life (for up to [`PUBLISH_DECISIONS`] channels, the oldest forgotten
/// first), so publishing does not wait on your database. Revoking a member's right takes
/// effect on their next connection; close their current ones yourself if it must be
/// sooner.
pub trait Permissions: Send + Sync + 'static {
    /// May `caller` subscribe to (or join) `channel`?
    fn may_subscribe<'a>(
        &'a self,
        caller: &'a Caller,
        channel: &'a Channel,
    ) -> BoxFuture<'a, bool> {
        let _ = (caller, channel);
        Box::pin(async { true })
    }

    /// May `caller` publish on `channel`?
    fn may_publish<'a>(&'a self, caller: &'a Caller, channel: &'a Channel) -> BoxFuture<'a, bool> {
        let _ = (caller, channel);
        Box::pin(async { true })
    }
}

/// Channels one connection keeps a publish permission for (then the oldest is asked again).
pub const PUBLISH_DECISIONS: usize = 32;

/// How long a connection waits for a [`Permissions`] answer before it answers the client
/// `unavailable` (its frames wait meanwhile).
pub const PERMISSION_TIMEOUT: Duration = Duration::from_secs(5);

/// A stored or ephemeral message that was published (by a client or by your code).
#[derive(Debug)]
pub struct PublishedMessage<'a> {
    /// Its channel.
    pub channel: &'a Channel,
    /// Its sender; `None` for server-side publishes.
    pub from: Option<&'a Sender>,
    /// Its data, as sent.
    pub data: &'a Payload,
    /// Its stream position; `None` for ephemeral messages.
    pub position: Option<&'a StreamPosition>,
}

/// What happens, for your side effects (last seen, storing chat lines in your own
/// database…). Called on the server's tasks: return at once, and spawn anything slow.
pub trait Hooks: Send + Sync + 'static {
    /// A connection was admitted with an identity (after `welcome`, or after the `hello`
    /// that authenticated it).
    fn connected(&self, caller: &Caller) {
        let _ = caller;
    }

    /// A connection that was `connected` ended, for any reason.
    fn disconnected(&self, caller: &Caller) {
        let _ = caller;
    }

    /// A connection joined `channel`'s presence (`subscribe` with `presence`).
    fn joined(&self, channel: &Channel, caller: &Caller) {
        let _ = (channel, caller);
    }

    /// A connection left `channel`'s presence (unsubscribed or disconnected).
    fn left(&self, channel: &Channel, caller: &Caller) {
        let _ = (channel, caller);
    }

    /// A message was published and acked (not for a resend the dedupe window caught).
    fn published(&self, message: &PublishedMessage<'_>) {
        let _ = message;
    }
}

/// Why a server-side publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The data did not serialize to JSON.
    #[error("data: {0}")]
    Data(#[from] serde_json::Error),
    /// The channel name is not valid.
    #[error("channel: {0}")]
    Channel(String),
    /// The broker or the store failed; nothing was stored.
    #[error(transparent)]
    Unavailable(#[from] BrokerError),
}

/// Switchboard as a library: a cheap clone, one per app.
#[derive(Clone)]
pub struct Switchboard {
    state: AppState,
    metrics_route: bool,
    publish_route: bool,
}

/// Builds a [`Switchboard`].
pub struct Builder {
    config: Config,
    methods: Methods,
    authenticator: Option<Arc<dyn Authenticator>>,
    permissions: Option<Arc<dyn Permissions>>,
    hooks: Option<Arc<dyn Hooks>>,
    metrics_route: bool,
    publish_route: bool,
}

impl Builder {
    /// Your request methods (start from [`Methods::with_builtins`] to keep `time`,
    /// `channels`, `presence` and `history`).
    pub fn methods(mut self, methods: Methods) -> Self {
        self.methods = methods;
        self
    }

    /// Your authentication, tried before the built-in token check.
    pub fn authenticator(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(authenticator));
        self
    }

    /// Your per-channel permission checks.
    pub fn permissions(mut self, permissions: impl Permissions) -> Self {
        self.permissions = Some(Arc::new(permissions));
        self
    }

    /// Your hooks.
    pub fn hooks(mut self, hooks: impl Hooks) -> Self {
        self.hooks = Some(Arc::new(hooks));
        self
    }

    /// Also serve `/metrics` (Prometheus text) under the router.
    pub fn with_metrics(mut self) -> Self {
        self.metrics_route = true;
        self
    }

    /// Also serve `POST /api/publish` (needs `--api-key`) under the router.
    pub fn with_publish_api(mut self) -> Self {
        self.publish_route = true;
        self
    }

    /// Opens the history store (or connects the Redis broker) and builds the hub. Must be
    /// called inside a tokio runtime.
    pub fn build(self) -> Result<Switchboard, String> {
        self.config.validate()?;
        let mut state = AppState::try_with_methods(self.config, self.methods)?;
        let auth = Arc::make_mut(&mut state.auth);
        auth.app = self.authenticator;
        auth.permissions = self.permissions;
        if let Some(hooks) = self.hooks {
            state.hub.set_hooks(hooks);
        }
        Ok(Switchboard {
            state,
            metrics_route: self.metrics_route,
            publish_route: self.publish_route,
        })
    }
}

impl Switchboard {
    /// A builder on `config` ([`Config::from_args`] makes one from the server's flags).
    pub fn builder(config: Config) -> Builder {
        Builder {
            config,
            methods: Methods::with_builtins(),
            authenticator: None,
            permissions: None,
            hooks: None,
            metrics_route: false,
            publish_route: false,
        }
    }

    /// The routes to mount (`Router::nest("/realtime", sb.router())`): the WebSocket at
    /// `/ws`, and `/metrics` and `/api/publish` if the builder asked for them. Serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so that the per-address caps
    /// see each client's address (without it every client counts as one address).
    ///
    /// Generic over the state of the router you nest it in, so `Router::new().route(..)
    /// .nest("/realtime", sb.router()).with_state(app_state)` compiles as written.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let mut router = Router::new().route(WS_PATH, get(crate::ws_upgrade));
        if self.metrics_route {
            router = router.route("/metrics", get(crate::metrics));
        }
        if self.publish_route {
            let limit = self.state.config.max_frame_bytes as usize;
            router = router.route(
                "/api/publish",
                post(crate::api::publish).layer(DefaultBodyLimit::max(limit)),
            );
        }
        router.with_state(self.state.clone())
    }

    /// The server's state (hub, config, methods), for what this type does not wrap.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Publishes `data` on `channel` as the server (no sender), stored and numbered like a
    /// client's publish; returns its position once stored.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Published, PublishError> {
        switchboard_protocol::limits::validate_channel(channel).map_err(PublishError::Channel)?;
        let publication = Publication {
            channel: Channel::from(channel),
            dedupe_key: None,
            from: None,
            data: Payload::new(data)?,
            ephemeral: false,
            except: None,
        };
        Ok(self.state.hub.publish(publication).await?)
    }

    /// Sends `data` as a `direct` frame (from `server`) to every connection of `user_id`,
    /// within each one's budget for direct messages; returns how many got it. With
    /// several nodes (Redis), the other nodes deliver to theirs and answer with their
    /// count (a node that does not answer within 2 s counts none).
    pub async fn send_to_user<T: Serialize + ?Sized>(
        &self,
        user_id: &str,
        data: &T,
    ) -> Result<usize, PublishError> {
        let data = Payload::new(data)?;
        Ok(self.state.hub.direct_to_user(user_id, data).await)
    }

    /// `channel`'s presence members, sorted by user id (every node's, on Redis).
    pub async fn presence(&self, channel: &str) -> Result<Vec<Member>, BrokerError> {
        self.state.hub.presence(&Channel::from(channel)).await
    }

    /// Asks every connection to close with 1001 once what is queued for it is written
    /// (and closes any that arrive later at once), waits up to the drain timeout, closes
    /// the rest, and makes the history store durable. Await it in `axum::serve`'s
    /// graceful-shutdown future (as `tests/embed.rs` and the example do).
    pub async fn shutdown(&self) {
        crate::drain(&self.state).await;
    }
}

//! Request/response: `request` frames are routed by method name to async handlers.
//!
//! A handler takes its params as any type that deserializes from JSON, and returns any type
//! that serializes; params that do not fit the type are answered with `bad_request`.
//!
//! ```
//! use serde::Deserialize;
//! use serde_json::Value;
//! use switchboard_server::methods::{MethodError, Methods};
//!
//! #[derive(Deserialize)]
//! struct Add {
//!     a: i64,
//!     b: i64,
//! }
//!
//! let methods = Methods::with_builtins()
//!     .method("echo", |_ctx, params: Value| async move { Ok::<_, MethodError>(params) })
//!     .method("add", |_ctx, p: Add| async move { Ok::<_, MethodError>(p.a + p.b) });
//! assert!(methods.contains("time") && methods.contains("add"));
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_protocol::{
    Channel, ClientId, ErrorCode, Payload, StreamPosition, Unrecovered, limits::validate_channel,
};

use crate::auth::Grants;
use crate::clock::now_ms;
use crate::history::{ReadLimit, Since};
use crate::hub::Hub;

/// What a handler knows about the caller.
#[derive(Clone)]
pub struct RequestCtx {
    /// The server's hub (channels, presence, connections).
    pub hub: Hub,
    /// The calling connection.
    pub client_id: ClientId,
    /// Its authenticated user, if any.
    pub user_id: Option<String>,
    /// What it may see and do.
    pub grants: Arc<Grants>,
    /// Most messages and bytes one history read may return to it.
    pub read_limit: ReadLimit,
    /// The embedding app's per-channel checks, if any.
    pub permissions: Option<Arc<dyn crate::embed::Permissions>>,
}

impl RequestCtx {
    /// Whether the caller may subscribe to `channel`: its grants, then the embedding
    /// app's [`crate::embed::Permissions::may_subscribe`]. The built-in `presence` and
    /// `history` ask this; your methods that read a channel should too.
    pub async fn may_subscribe(&self, channel: &str) -> bool {
        if !self.grants.may_subscribe(channel) {
            return false;
        }
        match &self.permissions {
            None => true,
            Some(p) => {
                let caller = crate::embed::Caller {
                    client_id: self.client_id.clone(),
                    user_id: self.user_id.clone(),
                };
                p.may_subscribe(&caller, &Channel::from(channel)).await
            }
        }
    }
}

/// Why a handler did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// The params were wrong: answered with `bad_request`.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this: answered with `forbidden`.
    #[error("{0}")]
    Forbidden(String),
    /// A service the handler needs is down: answered with `unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// The handler failed: answered with `handler_failed`.
    #[error("{0}")]
    Failed(String),
}

impl MethodError {
    /// The error code this becomes on the wire.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest(_) => ErrorCode::BadRequest,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Failed(_) => ErrorCode::HandlerFailed,
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Payload, MethodError>> + Send>>;
type Handler = Arc<dyn Fn(RequestCtx, Payload) -> BoxFuture + Send + Sync>;

/// The params of the built-in `history` method.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// The channel.
    pub channel: Channel,
    /// Return the messages after this position (oldest first); without it, the latest.
    #[serde(default)]
    pub since: Option<StreamPosition>,
    /// Most messages to return (default [`HISTORY_PAGE`]; at most the server's
    /// `--recovery-limit`, and no more bytes than the caller's queue holds).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Messages the `history` method returns when the request sets no `limit`.
pub const HISTORY_PAGE: usize = 100;

/// The result of the built-in `history` method.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryPage {
    /// The channel.
    pub channel: Channel,
    /// The stream's position when it was read.
    pub position: StreamPosition,
    /// `message` frames, oldest first, without holes.
    pub messages: Vec<Payload>,
    /// With `since`: there are messages after the last one returned (ask again from it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// With `since`: why the messages after it cannot be returned (then `messages` is
    /// empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unrecovered: Option<Unrecovered>,
}

async fn history(ctx: RequestCtx, params: HistoryParams) -> Result<HistoryPage, MethodError> {
    let channel = params.channel;
    validate_channel(channel.as_str()).map_err(MethodError::BadRequest)?;
    if !ctx.may_subscribe(channel.as_str()).await {
        return Err(MethodError::Forbidden(format!("no access to {channel}")));
    }
    let limit = ReadLimit {
        messages: params
            .limit
            .unwrap_or(HISTORY_PAGE)
            .min(ctx.read_limit.messages),
        bytes: ctx.read_limit.bytes,
    };
    let store = ctx.hub.broker().history();
    let unavailable = |e: crate::history::HistoryError| MethodError::Unavailable(e.to_string());
    let (page, unrecovered) = match &params.since {
        Some(since) => match store
            .since(&channel, since, limit)
            .await
            .map_err(unavailable)?
        {
            Since::Complete(page) => (page, None),
            Since::Unrecoverable(why, position) => {
                let page = crate::history::Page {
                    messages: Vec::new(),
                    first: position.offset + 1,
                    position,
                };
                (page, Some(why.into()))
            }
        },
        None => (
            store.latest(&channel, limit).await.map_err(unavailable)?,
            None,
        ),
    };
    let more = params.since.is_some() && unrecovered.is_none() && page.more();
    let messages = page
        .messages
        .iter()
        .map(|m| Payload::from_json(m.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| MethodError::Failed(e.to_string()))?;
    ctx.hub
        .metrics()
        .recovered
        .fetch_add(messages.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(HistoryPage {
        channel,
        position: page.position,
        messages,
        more,
        unrecovered,
    })
}

/// The method table.
#[derive(Clone, Default)]
pub struct Methods {
    handlers: HashMap<String, Handler>,
}

impl Methods {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in methods:
    /// - `time` → `{"now_ms": <server time>}`
    /// - `channels` → `[{"channel": name, "subscribers": n}, …]`, only the channels the
    ///   caller may subscribe to
    /// - `presence` with `{"channel": name}` → the channel's members (`forbidden` when the
    ///   caller may not subscribe to it)
    /// - `history` with `{"channel": name, "since"?: position, "limit"?: n}` → a page of the
    ///   channel's stored messages (see [`HistoryParams`] and [`HistoryPage`]; `forbidden`
    ///   when the caller may not subscribe to it)
    pub fn with_builtins() -> Self {
        Self::new()
            .method("time", |_, _: IgnoredAny| async {
                Ok(json!({ "now_ms": now_ms() }))
            })
            .method("channels", |ctx, _: IgnoredAny| async move {
                let all = ctx
                    .hub
                    .all_channels()
                    .await
                    .map_err(|e| MethodError::Unavailable(e.to_string()))?;
                let mut list = Vec::new();
                for (c, n) in all {
                    if ctx.may_subscribe(c.as_str()).await {
                        list.push(json!({ "channel": c, "subscribers": n }));
                    }
                }
                Ok(Value::Array(list))
            })
            .method("presence", |ctx, params: Value| async move {
                let channel = params["channel"].as_str().ok_or_else(|| {
                    MethodError::BadRequest("expected {\"channel\": \"<name>\"}".into())
                })?;
                validate_channel(channel).map_err(MethodError::BadRequest)?;
                if !ctx.may_subscribe(channel).await {
                    return Err(MethodError::Forbidden(format!("no access to {channel}")));
                }
                let members = ctx
                    .hub
                    .presence(&Channel::from(channel))
                    .await
                    .map_err(|e| MethodError::Unavailable(e.to_string()))?;
                Ok(json!({ "channel": channel, "count": members.len(), "members": members }))
            })
            .method("history", history)
    }

    /// Registers (or replaces) a method. Its params are deserialized into `P` (absent
    /// params are `null`: use `()` or `Option` for methods without any) and its result
    /// serialized from `R`.
    pub fn method<P, R, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize,
        F: Fn(RequestCtx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, MethodError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let erased: Handler = Arc::new(move |ctx, params: Payload| {
            // Parsed now, so the call holds the typed params, not their text.
            let parsed = params.parse::<P>();
            let handler = handler.clone();
            Box::pin(async move {
                let params =
                    parsed.map_err(|e| MethodError::BadRequest(format!("invalid params: {e}")))?;
                let result = handler(ctx, params).await?;
                Payload::new(&result).map_err(|e| MethodError::Failed(e.to_string()))
            })
        });
        self.handlers.insert(name.to_owned(), erased);
        self
    }

    /// Registers a method that also gets a clone of your app's `state`, as axum hands
    /// handlers their `State`: `handler(state, ctx, params)`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchboard_server::methods::{MethodError, Methods};
    ///
    /// #[derive(Clone)]
    /// struct App {
    ///     motd: Arc<String>,
    /// }
    ///
    /// let app = App { motd: Arc::new("welcome".into()) };
    /// let methods = Methods::with_builtins().method_with_state(
    ///     "motd",
    ///     app,
    ///     |app: App, _ctx, _: ()| async move { Ok::<_, MethodError>(app.motd.to_string()) },
    /// );
    /// assert!(methods.contains("motd"));
    /// ```
    pub fn method_with_state<S, P, R, F, Fut>(self, name: &str, state: S, handler: F) -> Self
    where
        S: Clone + Send + Sync + 'static,
        P: DeserializeOwned + Send + 'static,
        R: Serialize,
        F: Fn(S, RequestCtx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, MethodError>> + Send + 'static,
    {
        self.method(name, move |ctx, params| handler(state.clone(), ctx, params))
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Starts a call; `None` when no such method exists.
    pub(crate) fn call(&self, name: &str, ctx: RequestCtx, params: Payload) -> Option<BoxFuture> {
        self.handlers.get(name).map(|h| h(ctx, params))
    }
}

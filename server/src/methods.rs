//! Request/response: `request` frames are routed by method name to async handlers.
//!
//! ```
//! use serde_json::json;
//! use switchboard_server::methods::{MethodError, Methods};
//!
//! let methods = Methods::with_builtins()
//!     .method("echo", |_ctx, params| async move { Ok::<_, MethodError>(params) })
//!     .method("add", |_ctx, p| async move {
//!         let (a, b) = (p["a"].as_i64(), p["b"].as_i64());
//!         match (a, b) {
//!             (Some(a), Some(b)) => Ok(json!(a + b)),
//!             _ => Err(MethodError::BadRequest("expected {\"a\": int, \"b\": int}".into())),
//!         }
//!     });
//! assert!(methods.contains("time") && methods.contains("add"));
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Value, json};
use switchboard_protocol::{Channel, ClientId, ErrorCode, limits::validate_channel};

use crate::auth::Grants;
use crate::clock::now_ms;
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

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, MethodError>> + Send>>;
type Handler = Arc<dyn Fn(RequestCtx, Value) -> BoxFuture + Send + Sync>;

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
    pub fn with_builtins() -> Self {
        Self::new()
            .method("time", |_, _| async { Ok(json!({ "now_ms": now_ms() })) })
            .method("channels", |ctx, _| async move {
                let list: Vec<Value> = ctx
                    .hub
                    .channels()
                    .into_iter()
                    .filter(|(c, _)| ctx.grants.may_subscribe(c.as_str()))
                    .map(|(c, n)| json!({ "channel": c, "subscribers": n }))
                    .collect();
                Ok(Value::Array(list))
            })
            .method("presence", |ctx, params| async move {
                let channel = params["channel"].as_str().ok_or_else(|| {
                    MethodError::BadRequest("expected {\"channel\": \"<name>\"}".into())
                })?;
                validate_channel(channel).map_err(MethodError::BadRequest)?;
                if !ctx.grants.may_subscribe(channel) {
                    return Err(MethodError::Forbidden(format!("no access to {channel}")));
                }
                let members = ctx
                    .hub
                    .presence(&Channel::from(channel))
                    .await
                    .map_err(|e| MethodError::Unavailable(e.to_string()))?;
                Ok(json!({ "channel": channel, "count": members.len(), "members": members }))
            })
    }

    /// Registers (or replaces) a method.
    pub fn method<F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        F: Fn(RequestCtx, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, MethodError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx, params| Box::pin(handler(ctx, params)));
        self.handlers.insert(name.to_owned(), handler);
        self
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    /// Starts a call; `None` when no such method exists.
    pub(crate) fn call(&self, name: &str, ctx: RequestCtx, params: Value) -> Option<BoxFuture> {
        self.handlers.get(name).map(|h| h(ctx, params))
    }
}

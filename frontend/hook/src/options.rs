//! The hook's options: the client core's, plus what only a browser hook has.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use switchboard_client::{Backoff, BatchOptions, Options, Overflow};

/// Provides a token before every (re)connect and before the current one expires; `None`
/// connects without one.
pub type TokenProvider = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<String>>>>>;

/// Options for [`crate::use_websocket_with_options`]. Every field has a documented default.
#[derive(Clone)]
pub struct UseWebSocketOptions {
    /// Reconnect delays. Defaults to full jitter, 500 ms growing ×2 up to 30 s.
    pub backoff: Backoff,
    /// Give up after this many failed attempts in a row. Defaults to `None` (never).
    pub max_attempts: Option<u32>,
    /// How long opening the socket and receiving `welcome` may take. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// How often to send `ping` while connected. Defaults to 10 s.
    pub ping_interval: Duration,
    /// An unanswered ping past this is a dead link. Defaults to 10 s.
    pub pong_timeout: Duration,
    /// A connection up this long resets the backoff. Defaults to 10 s.
    pub stable_after: Duration,
    /// Frames kept while offline or waiting to be sent. Defaults to 256.
    pub outbox_capacity: usize,
    /// What a full outbox does with a new frame. Defaults to [`Overflow::Reject`].
    pub overflow: Overflow,
    /// Minimum time between two WebSocket messages. Defaults to `None`.
    pub throttle: Option<Duration>,
    /// Send queued frames together as one batch. Defaults to `None`.
    pub batch: Option<BatchOptions>,
    /// How long a request waits for its response. Defaults to 10 s.
    pub request_timeout: Duration,
    /// Messages each subscription's `messages` signal keeps. Defaults to 200.
    pub message_buffer: usize,
    /// Apply received messages to signals once per animation frame instead of once per
    /// message, so a fast channel renders in batches (callbacks still see each message at
    /// once). Defaults to `true`.
    pub render_per_frame: bool,
    /// Called before every (re)connect (its token goes in `?token=`) and before the token
    /// expires (its token is sent in `hello`). Defaults to `None`.
    pub token: Option<TokenProvider>,
    /// Connect right away; otherwise on [`crate::WebSocket::open`]. Defaults to `true`.
    pub immediate: bool,
    /// How often a live subscription checks its channel's position with the server, to
    /// notice a lost message no later one reveals. Defaults to 40 s; `None` turns it off.
    pub position_check: Option<Duration>,
    /// Keep the publishes not acked yet in the browser's `localStorage` under this key,
    /// so messages typed offline are sent (once) after the page is reloaded or reopened.
    /// They come back in [`crate::WebSocket::restored`]. Defaults to `None` (off): turn it
    /// on per app, with a key per user if several share a browser.
    pub persist_outbox: Option<String>,
    /// Speak MessagePack (binary frames, `Sec-WebSocket-Protocol: switchboard.v1.msgpack`)
    /// instead of JSON text; a server that does not answer with it is spoken to in JSON.
    /// Needs the crate's `msgpack` feature. Defaults to `false`.
    #[cfg(feature = "msgpack")]
    pub messagepack: bool,
}

impl Default for UseWebSocketOptions {
    fn default() -> Self {
        let core = Options::default();
        Self {
            backoff: core.backoff,
            max_attempts: core.max_attempts,
            connect_timeout: core.connect_timeout,
            ping_interval: core.ping_interval,
            pong_timeout: core.pong_timeout,
            stable_after: core.stable_after,
            outbox_capacity: core.outbox_capacity,
            overflow: core.overflow,
            throttle: core.throttle,
            batch: core.batch,
            request_timeout: core.request_timeout,
            message_buffer: 200,
            render_per_frame: true,
            token: None,
            immediate: core.immediate,
            position_check: core.position_check,
            persist_outbox: None,
            #[cfg(feature = "msgpack")]
            messagepack: false,
        }
    }
}

impl UseWebSocketOptions {
    /// The client core's options.
    pub(crate) fn core(&self) -> Options {
        Options {
            backoff: self.backoff,
            max_attempts: self.max_attempts,
            connect_timeout: self.connect_timeout,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            stable_after: self.stable_after,
            outbox_capacity: self.outbox_capacity,
            overflow: self.overflow,
            throttle: self.throttle,
            batch: self.batch,
            request_timeout: self.request_timeout,
            has_token_provider: self.token.is_some(),
            client_info: Some(switchboard_protocol::ClientInfo {
                name: "switchboard-leptos".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            immediate: self.immediate,
            position_check: self.position_check,
            ..Options::default()
        }
    }
}

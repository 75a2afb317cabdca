//! The WebSocket upgrade of `/ws` and `/echo`: axum's request checks (and its answers to
//! a bad request), then our own 101 response, so that permessage-deflate can be negotiated
//! ([`crate::deflate`]); axum's `WebSocket` has no way to. The subprotocol picks the
//! encoding (JSON, or MessagePack with `switchboard.v1.msgpack`). The upgraded socket is a
//! tokio-tungstenite stream over [`DeflateIo`].

use axum::extract::FromRequestParts;
use axum::extract::WebSocketUpgrade;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use switchboard_protocol::msgpack::{SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};

use crate::deflate::{Agreed, DeflateIo, DeflateOptions, Inflate};
use crate::frame::Encoding;

/// The upgraded connection as the session reads and writes it.
pub(crate) type Socket = WebSocketStream<DeflateIo<TokioIo<Upgraded>>>;

/// A valid upgrade request, not answered yet.
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    deflate: Option<(Agreed, String)>,
    /// The subprotocol chosen from `Sec-WebSocket-Protocol`, and its encoding.
    protocol: Option<(&'static str, Encoding)>,
}

/// The encoding for the client's `Sec-WebSocket-Protocol` offers: MessagePack when offered,
/// else JSON (named in the answer only when the client named it). An offer of neither
/// gets no subprotocol in the answer (a browser then fails the connection, as it should).
fn choose_protocol<'a>(offers: impl Iterator<Item = &'a str>) -> Option<(&'static str, Encoding)> {
    let offers: Vec<&str> = offers.flat_map(|v| v.split(',')).map(str::trim).collect();
    if offers.contains(&SUBPROTOCOL_MSGPACK) {
        Some((SUBPROTOCOL_MSGPACK, Encoding::MsgPack))
    } else if offers.contains(&SUBPROTOCOL_JSON) {
        Some((SUBPROTOCOL_JSON, Encoding::Json))
    } else {
        None
    }
}

impl Upgrade {
    /// Checks `parts` as axum's `WebSocketUpgrade` does (405, 400 or 426 when it is not
    /// a WebSocket upgrade) and negotiates compression under `deflate`.
    pub(crate) async fn from_parts<S: Send + Sync>(
        parts: &mut Parts,
        state: &S,
        deflate: &DeflateOptions,
    ) -> Result<Self, Response> {
        // Taken before axum's extractor moves it out (a clone shares the one upgrade).
        let on_upgrade = parts.extensions.get::<OnUpgrade>().cloned();
        let _checked = WebSocketUpgrade::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let (Some(on_upgrade), Some(key)) =
            (on_upgrade, parts.headers.get(header::SEC_WEBSOCKET_KEY))
        else {
            // HTTP/2 extended CONNECT (never enabled on this server).
            return Err((StatusCode::BAD_REQUEST, "WebSocket over HTTP/1.1 only").into_response());
        };
        let offers = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let protocols = parts
            .headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok());
        Ok(Self {
            key: key.clone(),
            on_upgrade,
            deflate: crate::deflate::negotiate(offers, deflate),
            protocol: choose_protocol(protocols),
        })
    }

    /// What was agreed about compression.
    pub(crate) fn deflate(&self) -> Option<Agreed> {
        self.deflate.as_ref().map(|(agreed, _)| *agreed)
    }

    /// The encoding chosen with `Sec-WebSocket-Protocol` (JSON unless MessagePack was
    /// offered).
    pub(crate) fn encoding(&self) -> Encoding {
        self.protocol
            .map_or(Encoding::Json, |(_, encoding)| encoding)
    }

    /// Answers 101 and runs `callback` on the socket once the upgrade completes (in its
    /// own task). Incoming messages are limited to `config.max_message_size` after
    /// inflating.
    pub(crate) fn on_upgrade<F, Fut>(self, config: WebSocketConfig, callback: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let inflate = self.deflate.as_ref().map(|(agreed, _)| {
            let max_frame = config.max_frame_size.unwrap_or(usize::MAX);
            let max_message = config.max_message_size.unwrap_or(usize::MAX);
            // Boxed here: the task below holds it across the upgrade's await.
            Box::new(Inflate::new(max_frame, max_message, agreed.client_takeover))
        });
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!("upgrade failed: {e}");
                    return;
                }
            };
            let io = DeflateIo::new(TokioIo::new(upgraded), inflate);
            let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
            callback(socket).await;
        });
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let mut response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept);
        if let Some((_, extension)) = self.deflate {
            response = response.header(header::SEC_WEBSOCKET_EXTENSIONS, extension);
        }
        if let Some((protocol, _)) = self.protocol {
            response = response.header(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        response
            .body(axum::body::Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

//! Frames a client sends to the server.

use serde::Serialize;

use crate::payload::Payload;
use crate::types::{Channel, ClientId, ClientInfo, RequestId, SessionId, StreamPosition};

/// A frame from client to server. Serialized as a JSON object tagged by `"type"`
/// (deserialized by hand in `wire.rs`, so that payloads stay unparsed).
///
/// Rooms are channels with presence: joining a room is a `subscribe` that carries
/// `presence` info, leaving is an `unsubscribe`. There is no separate room frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Identify the client, (re)authenticate, or resume a session. Optional: the server
    /// sends `welcome` on connect anyway; a `hello` is answered with a fresh `welcome`.
    /// Sending it again with a new token refreshes an expiring token.
    Hello {
        /// A JWT, instead of (or replacing) the `?token=` query parameter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Client library name and version.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<ClientInfo>,
        /// The session id from an earlier `welcome`, to resume it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<SessionId>,
    },
    /// Application-level heartbeat, answered by `pong` with the same id. Browsers cannot see
    /// WebSocket pings, so this is how a client measures round-trip time and liveness.
    Ping {
        /// Echoed in the `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// Subscribe to a channel (and join its presence set when `presence` is given).
    Subscribe {
        /// When present, an `error` about this subscribe carries it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The channel.
        channel: Channel,
        /// Recover the messages after this position (after a reconnect).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<StreamPosition>,
        /// Also send up to this many of the channel's latest stored messages before going
        /// live (recent history when joining a room), when `since` is absent or cannot be
        /// recovered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewind: Option<u32>,
        /// Join the channel's presence set with this member info (e.g. `{"name":"Ada"}`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<Payload>,
    },
    /// Leave a channel (and its presence set).
    Unsubscribe {
        /// When present, an `error` about this unsubscribe carries it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The channel.
        channel: Channel,
    },
    /// Publish data to every subscriber of a channel.
    Publish {
        /// When present, the server answers with `ack` (or `error`) carrying this id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The channel.
        channel: Channel,
        /// Any JSON value.
        data: Payload,
        /// Ephemeral messages (typing indicators, cursors) are delivered to current
        /// subscribers only: never stored, never recovered, and dropped first under load.
        #[serde(default, skip_serializing_if = "is_false")]
        ephemeral: bool,
        /// Do not deliver the message back to this connection, even if it is subscribed
        /// (Socket.IO's `socket.broadcast`). The `ack` still comes.
        #[serde(default, skip_serializing_if = "is_false")]
        skip_self: bool,
    },
    /// Call a server method; answered by `response` or `error` with the same id.
    Request {
        /// Correlation id.
        id: RequestId,
        /// Method name, e.g. `"presence"` or `"time"`.
        method: String,
        /// Method parameters.
        #[serde(default, skip_serializing_if = "Payload::is_null")]
        params: Payload,
    },
    /// Send data to one connection (WebRTC offer/answer/candidate relay).
    Direct {
        /// When present, an `error` about this direct message (`target_gone`, …) carries
        /// it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The receiving connection.
        to: ClientId,
        /// Any JSON value.
        data: Payload,
    },
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

impl ClientFrame {
    /// The frame's `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "hello",
            Self::Ping { .. } => "ping",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::Publish { .. } => "publish",
            Self::Request { .. } => "request",
            Self::Direct { .. } => "direct",
        }
    }

    /// The correlation id the server echoes in an `error` about this frame, if any.
    pub fn id(&self) -> Option<&RequestId> {
        match self {
            Self::Ping { id }
            | Self::Publish { id, .. }
            | Self::Subscribe { id, .. }
            | Self::Unsubscribe { id, .. }
            | Self::Direct { id, .. } => id.as_ref(),
            Self::Request { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The channel this frame names, if any.
    pub fn channel(&self) -> Option<&Channel> {
        match self {
            Self::Subscribe { channel, .. }
            | Self::Unsubscribe { channel, .. }
            | Self::Publish { channel, .. } => Some(channel),
            _ => None,
        }
    }
}

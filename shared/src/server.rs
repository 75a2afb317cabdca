//! Frames the server sends to a client.

use serde::Serialize;

use crate::client::is_false;
use crate::codes::ErrorCode;
use crate::limits::Limits;
use crate::payload::Payload;
use crate::types::{
    Channel, ClientId, Member, PresenceAction, RequestId, Sender, SessionId, StreamPosition,
    Unrecovered,
};

/// A frame from server to client. Serialized as a JSON object tagged by `"type"`
/// (deserialized by hand in `wire.rs`, so that payloads stay unparsed).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Sent right after the WebSocket upgrade, and again in answer to every `hello`.
    Welcome {
        /// This connection's id.
        client_id: ClientId,
        /// The session id to present in `hello.resume` after a reconnect.
        session_id: SessionId,
        /// Whether `hello.resume` picked up an earlier session.
        #[serde(default, skip_serializing_if = "is_false")]
        resumed: bool,
        /// [`crate::PROTOCOL_VERSION`] of the server.
        protocol: u32,
        /// The authenticated user, absent for anonymous connections.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        /// The server sends WebSocket pings at this interval (milliseconds) and closes a
        /// connection it has not heard from for its idle timeout. Browsers cannot see those
        /// pings, so a browser client sends its own `ping` about this often and treats a
        /// missing `pong` (or silence for twice the interval) as a dead link.
        heartbeat_ms: u64,
        /// The limits this connection is held to.
        limits: Limits,
        /// The server's clock, milliseconds since the Unix epoch: clients can show message
        /// times on the server's clock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// The server's clock, milliseconds since the Unix epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
    },
    /// Confirms a `subscribe`.
    Subscribed {
        /// The channel.
        channel: Channel,
        /// The stream's current position; the next message has `offset + 1`.
        position: StreamPosition,
        /// True when `since` was given and every missed message was re-sent (as `message`
        /// frames, right before this one). False when `since` was absent or recovery was
        /// not possible (then `unrecovered` says why, and the client should reload state).
        #[serde(default, skip_serializing_if = "is_false")]
        recovered: bool,
        /// Why the messages after `since` could not be recovered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unrecovered: Option<Unrecovered>,
        /// The presence set, when the subscribe carried `presence`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<Vec<Member>>,
    },
    /// Confirms an `unsubscribe`, or tells the client it was removed from a channel.
    Unsubscribed {
        /// The channel.
        channel: Channel,
    },
    /// A message published to a channel the client is subscribed to.
    ///
    /// `offset` and `epoch` are the last fields on the wire: a server stores a message
    /// without them and appends them once the stream has numbered it.
    Message {
        /// The channel.
        channel: Channel,
        /// Who published it; absent when the server or a backend did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<Sender>,
        /// The published data.
        data: Payload,
        /// Server time of publication, milliseconds since the Unix epoch.
        ts: u64,
        /// Set on ephemeral messages.
        #[serde(default, skip_serializing_if = "is_false")]
        ephemeral: bool,
        /// Position in the channel's stream; absent for ephemeral messages, which are not
        /// part of the stream.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        /// The stream's epoch; absent for ephemeral messages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// A member joined or left a channel's presence set.
    Presence {
        /// The channel.
        channel: Channel,
        /// Join or leave.
        action: PresenceAction,
        /// The member.
        member: Member,
        /// Distinct members after this change.
        count: u32,
    },
    /// Confirms a `publish` that carried an id.
    Ack {
        /// The publish's id.
        id: RequestId,
        /// The message's offset in the stream; absent for ephemeral publishes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Answer to a `request`.
    Response {
        /// The request's id.
        id: RequestId,
        /// The method's result.
        result: Payload,
    },
    /// Something the client sent could not be done. The connection stays open.
    Error {
        /// The id of the frame this is about, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Stable, machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation (not stable; do not match on it).
        message: String,
    },
    /// Data sent to this connection by another one.
    Direct {
        /// The sending connection.
        from: Sender,
        /// The data.
        data: Payload,
    },
}

impl ServerFrame {
    /// The frame's `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Welcome { .. } => "welcome",
            Self::Pong { .. } => "pong",
            Self::Subscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::Message { .. } => "message",
            Self::Presence { .. } => "presence",
            Self::Ack { .. } => "ack",
            Self::Response { .. } => "response",
            Self::Error { .. } => "error",
            Self::Direct { .. } => "direct",
        }
    }

    /// An `error` frame.
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            id,
            code,
            message: message.into(),
        }
    }
}

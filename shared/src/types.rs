//! The values frames carry.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::payload::Payload;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A connection's id, unique on the server for its lifetime; the address of `direct`
    /// messages.
    ClientId
);
string_id!(
    /// A session's id: what a client presents in `hello.resume` to pick up where it left off.
    SessionId
);
string_id!(
    /// Correlates a `request` with its `response`, or a `publish` with its `ack`; chosen by
    /// the client, echoed in `error` frames about that frame.
    RequestId
);
string_id!(
    /// A channel name. Only names that pass [`crate::limits::validate_channel`] are accepted
    /// by the server.
    Channel
);

/// Who the client is, sent in `hello` for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// The client library or app, e.g. `"switchboard-web"`.
    pub name: String,
    /// Its version, e.g. `"0.1.0"`.
    pub version: String,
}

/// A position in a channel's stream: the offset of the last message seen and the stream's
/// epoch. A new epoch means the stream was reset (history lost), so offsets from another
/// epoch cannot be compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Offset of the last message in the stream (0 before the first message).
    pub offset: u64,
    /// The stream's epoch.
    pub epoch: String,
}

/// Who sent a `message` or `direct` frame. Absent on the frame when the server itself (or
/// a backend through the HTTP API) published it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The sending connection.
    pub client_id: ClientId,
    /// The authenticated user behind it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// One member of a channel's presence set. Members are users, not connections: the same
/// user in two tabs is one member with `connections: 2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The user id (from the token), or the client id for anonymous connections.
    pub user_id: String,
    /// What the member announced in `subscribe.presence` (name, avatar, …); the most recent
    /// announcement wins when the user has several connections.
    #[serde(default, skip_serializing_if = "Payload::is_null")]
    pub info: Payload,
    /// How many of this user's connections are in the channel.
    pub connections: u32,
}

/// Why a `subscribe` with `since` could not recover the missed messages
/// (`subscribed.unrecovered`): the client must reload the channel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrecovered {
    /// The stream was reset since that position (its history was lost), or the position
    /// is not one of this stream's.
    Epoch,
    /// Some of the missed messages are no longer kept (retention by count or age).
    Trimmed,
    /// More messages were missed than one recovery returns (the server's
    /// `--recovery-limit`, or the connection's queue size in bytes).
    TooMany,
    /// A reason this client does not know yet.
    Unknown,
}

/// By name, by hand: a derived enum deserializer is ~1 KB of wasm in every browser bundle.
impl<'de> Deserialize<'de> for Unrecovered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "epoch" => Self::Epoch,
            "trimmed" => Self::Trimmed,
            "too_many" => Self::TooMany,
            _ => Self::Unknown,
        })
    }
}

/// Whether a `presence` frame announces a member arriving or leaving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    /// The user's first connection joined the channel.
    Join,
    /// The user's last connection left the channel (unsubscribe, disconnect, timeout or
    /// server shutdown).
    Leave,
}

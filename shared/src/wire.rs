//! Deserializing frames by hand: each frame is read into one flat struct of optional
//! fields, then checked against its `type`. Serde's derive for internally tagged enums
//! first buffers the whole object in a generic tree, which cannot hold a [`Payload`]'s raw
//! text (and costs time and code size); a flat struct is read in one pass.
//!
//! One consequence, documented in docs/protocol.md: a field any frame kind defines must
//! have that field's type in every frame that carries it.

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::client::ClientFrame;
use crate::codes::ErrorCode;
use crate::limits::Limits;
use crate::payload::Payload;
use crate::server::ServerFrame;
use crate::types::{
    Channel, ClientId, ClientInfo, Member, PresenceAction, RequestId, Sender, SessionId,
    StreamPosition, Unrecovered,
};

/// A payload field: absent is `None`, `null` is `Some(null)`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Payload>, D::Error> {
    Payload::deserialize(d).map(Some)
}

fn required<T, E: de::Error>(field: Option<T>, name: &'static str) -> Result<T, E> {
    field.ok_or_else(|| E::missing_field(name))
}

#[derive(Deserialize)]
struct ClientWire {
    #[serde(rename = "type")]
    kind: Option<String>,
    token: Option<String>,
    client: Option<ClientInfo>,
    resume: Option<SessionId>,
    id: Option<RequestId>,
    channel: Option<Channel>,
    since: Option<StreamPosition>,
    rewind: Option<u32>,
    presence: Option<Payload>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Payload>,
    ephemeral: Option<bool>,
    skip_self: Option<bool>,
    method: Option<String>,
    params: Option<Payload>,
    to: Option<ClientId>,
}

impl<'de> Deserialize<'de> for ClientFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = ClientWire::deserialize(d)?;
        let kind = required::<_, D::Error>(w.kind, "type")?;
        Ok(match kind.as_str() {
            "hello" => Self::Hello {
                token: w.token,
                client: w.client,
                resume: w.resume,
            },
            "ping" => Self::Ping { id: w.id },
            "subscribe" => Self::Subscribe {
                id: w.id,
                channel: required(w.channel, "channel")?,
                since: w.since,
                rewind: w.rewind,
                presence: w.presence,
            },
            "unsubscribe" => Self::Unsubscribe {
                id: w.id,
                channel: required(w.channel, "channel")?,
            },
            "publish" => Self::Publish {
                id: w.id,
                channel: required(w.channel, "channel")?,
                data: required(w.data, "data")?,
                ephemeral: w.ephemeral.unwrap_or(false),
                skip_self: w.skip_self.unwrap_or(false),
            },
            "request" => Self::Request {
                id: required(w.id, "id")?,
                method: required(w.method, "method")?,
                params: w.params.unwrap_or_default(),
            },
            "direct" => Self::Direct {
                id: w.id,
                to: required(w.to, "to")?,
                data: required(w.data, "data")?,
            },
            other => return Err(de::Error::unknown_variant(other, &Self::KINDS)),
        })
    }
}

#[derive(Deserialize)]
struct ServerWire {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_id: Option<ClientId>,
    session_id: Option<SessionId>,
    resumed: Option<bool>,
    protocol: Option<u32>,
    user_id: Option<String>,
    heartbeat_ms: Option<u64>,
    limits: Option<Limits>,
    id: Option<RequestId>,
    channel: Option<Channel>,
    position: Option<StreamPosition>,
    recovered: Option<bool>,
    unrecovered: Option<Unrecovered>,
    presence: Option<Vec<Member>>,
    from: Option<Sender>,
    #[serde(default, deserialize_with = "present")]
    data: Option<Payload>,
    ts: Option<u64>,
    ephemeral: Option<bool>,
    offset: Option<u64>,
    epoch: Option<String>,
    action: Option<PresenceAction>,
    member: Option<Member>,
    count: Option<u32>,
    code: Option<ErrorCode>,
    message: Option<String>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Payload>,
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = ServerWire::deserialize(d)?;
        let kind = required::<_, D::Error>(w.kind, "type")?;
        Ok(match kind.as_str() {
            "welcome" => Self::Welcome {
                client_id: required(w.client_id, "client_id")?,
                session_id: required(w.session_id, "session_id")?,
                resumed: w.resumed.unwrap_or(false),
                protocol: required(w.protocol, "protocol")?,
                user_id: w.user_id,
                heartbeat_ms: required(w.heartbeat_ms, "heartbeat_ms")?,
                limits: required(w.limits, "limits")?,
                ts: w.ts,
            },
            "pong" => Self::Pong { id: w.id, ts: w.ts },
            "subscribed" => Self::Subscribed {
                channel: required(w.channel, "channel")?,
                position: required(w.position, "position")?,
                recovered: w.recovered.unwrap_or(false),
                unrecovered: w.unrecovered,
                presence: w.presence,
            },
            "unsubscribed" => Self::Unsubscribed {
                channel: required(w.channel, "channel")?,
            },
            "message" => Self::Message {
                channel: required(w.channel, "channel")?,
                from: w.from,
                data: required(w.data, "data")?,
                ts: required(w.ts, "ts")?,
                ephemeral: w.ephemeral.unwrap_or(false),
                offset: w.offset,
                epoch: w.epoch,
            },
            "presence" => Self::Presence {
                channel: required(w.channel, "channel")?,
                action: required(w.action, "action")?,
                member: required(w.member, "member")?,
                count: required(w.count, "count")?,
            },
            "ack" => Self::Ack {
                id: required(w.id, "id")?,
                offset: w.offset,
            },
            "response" => Self::Response {
                id: required(w.id, "id")?,
                result: required(w.result, "result")?,
            },
            "error" => Self::Error {
                id: w.id,
                code: required(w.code, "code")?,
                message: required(w.message, "message")?,
            },
            "direct" => Self::Direct {
                from: required(w.from, "from")?,
                data: required(w.data, "data")?,
            },
            other => return Err(de::Error::unknown_variant(other, &Self::KINDS)),
        })
    }
}

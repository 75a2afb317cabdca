//! Deserializing frames by hand. Serde's derive for internally tagged enums first buffers
//! the whole object in a generic tree, which cannot hold a [`Payload`]'s raw text (and
//! costs time and code size). A client frame (what the server decodes, on its hot path) is
//! read in one pass into one flat struct of optional fields, then checked against its
//! `type`; one consequence, documented in docs/protocol.md: a field any frame kind defines
//! must have that field's type in every frame that carries it. A server frame (what the
//! browser decodes) is split into its members first and read per member, for bundle size
//! (see [`Fields`]).

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::client::ClientFrame;
use crate::payload::Payload;
use crate::server::ServerFrame;
use crate::types::{Channel, ClientId, ClientInfo, RequestId, SessionId, StreamPosition};

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

/// A server frame's members in order, each value still its JSON text. The browser decodes
/// server frames, so their decoder is written for size: one pass that splits the object,
/// then one small typed read per field the frame's kind uses. (A derived flat struct of
/// every kind's fields was the bundle's largest function, 16 KB of wasm; this is 1.7 KB
/// brotli smaller: docs/benchmarks.md.)
///
/// Borrowed from the text, so a `ServerFrame` deserializes from JSON in memory
/// (`serde_json::from_str` or `from_slice`, as [`crate::codec::decode_server`] does), and
/// its keys and `type` are written without escapes (docs/protocol.md). Members the kind
/// does not read are not checked, as unknown ones are not.
struct Fields<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a frame (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Fields(members))
            }
        }
        d.deserialize_map(Members)
    }
}

impl<'a> Fields<'a> {
    /// The member's text, if it is there once.
    fn raw<E: de::Error>(&self, name: &'static str) -> Result<Option<&'a RawValue>, E> {
        let mut found = self
            .0
            .iter()
            .filter(|(key, _)| *key == name)
            .map(|(_, v)| *v);
        match (found.next(), found.next()) {
            (Some(_), Some(_)) => Err(E::duplicate_field(name)),
            (one, _) => Ok(one),
        }
    }

    /// A plain member, read as `T`: `null` counts as absent (payloads keep it: see
    /// [`Self::payload`]).
    fn opt<T: Deserialize<'a>, E: de::Error>(&self, name: &'static str) -> Result<Option<T>, E> {
        match self.raw(name)? {
            Some(raw) if raw.get() != "null" => serde_json::from_str(raw.get())
                .map(Some)
                .map_err(|e| E::custom(format_args!("`{name}`: {e}"))),
            _ => Ok(None),
        }
    }

    fn req<T: Deserialize<'a>, E: de::Error>(&self, name: &'static str) -> Result<T, E> {
        self.opt(name)?.ok_or_else(|| E::missing_field(name))
    }

    fn flag<E: de::Error>(&self, name: &'static str) -> Result<bool, E> {
        Ok(self.opt(name)?.unwrap_or(false))
    }

    /// A payload member: present (`null` included) or absent.
    fn payload<E: de::Error>(&self, name: &'static str) -> Result<Payload, E> {
        self.raw(name)?
            .map(Payload::from_raw)
            .ok_or_else(|| E::missing_field(name))
    }
}

impl<'de> Deserialize<'de> for ServerFrame {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = Fields::deserialize(d)?;
        let kind: &str = w.req("type")?;
        Ok(match kind {
            "welcome" => Self::Welcome {
                client_id: w.req("client_id")?,
                session_id: w.req("session_id")?,
                resumed: w.flag("resumed")?,
                protocol: w.req("protocol")?,
                user_id: w.opt("user_id")?,
                heartbeat_ms: w.req("heartbeat_ms")?,
                limits: w.req("limits")?,
                ts: w.opt("ts")?,
            },
            "pong" => Self::Pong {
                id: w.opt("id")?,
                ts: w.opt("ts")?,
            },
            "subscribed" => Self::Subscribed {
                channel: w.req("channel")?,
                position: w.req("position")?,
                recovered: w.flag("recovered")?,
                unrecovered: w.opt("unrecovered")?,
                presence: w.opt("presence")?,
            },
            "unsubscribed" => Self::Unsubscribed {
                channel: w.req("channel")?,
            },
            "message" => Self::Message {
                channel: w.req("channel")?,
                from: w.opt("from")?,
                data: w.payload("data")?,
                ts: w.req("ts")?,
                ephemeral: w.flag("ephemeral")?,
                offset: w.opt("offset")?,
                epoch: w.opt("epoch")?,
            },
            "presence" => Self::Presence {
                channel: w.req("channel")?,
                action: w.req("action")?,
                member: w.req("member")?,
                count: w.req("count")?,
            },
            "ack" => Self::Ack {
                id: w.req("id")?,
                offset: w.opt("offset")?,
            },
            "response" => Self::Response {
                id: w.req("id")?,
                result: w.payload("result")?,
            },
            "error" => Self::Error {
                id: w.opt("id")?,
                code: w.req("code")?,
                message: w.req("message")?,
            },
            "direct" => Self::Direct {
                from: w.req("from")?,
                data: w.payload("data")?,
            },
            other => return Err(de::Error::unknown_variant(other, &Self::KINDS)),
        })
    }
}

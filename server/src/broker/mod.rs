//! The broker seam: what server nodes share. Delivery of a channel's messages to every
//! node with subscribers (fan-out), presence, and the channel streams (a [`History`] the
//! broker numbers stored messages in), behind one small trait.
//!
//! [`MemoryBroker`] is the default: everything in this process. Several `MemoryBroker`
//! nodes can share one in-process backend ([`MemoryBroker::node`]), which is how
//! `tests/broker_conformance.rs` checks cross-node behaviour without a network.
//! [`RedisBroker`] (`redis.rs`) puts several server processes on one Redis and runs the
//! same suite against a real `redis-server`. Besides the guarantees below, a broker for
//! several nodes routes `direct` to another node's connections ([`Broker::direct`]),
//! lists every node's channels ([`Broker::channels`]) and reports whether it reaches what
//! the nodes share ([`Broker::health`]); the in-process one keeps the defaults.
//!
//! The broker knows nothing of the hub or of WebSockets: it carries [`Encoded`] frames.
//! The hub tells the broker which channels this node wants ([`Broker::subscribe`]), and the
//! broker hands it every delivery for those channels through [`BrokerHandler::deliver`],
//! encoded once.
//!
//! Guarantees every implementation gives:
//! - **Numbering**: a stored publish is appended to the channel's stream (offsets 1, 2, 3…
//!   within an epoch) whether or not any node is subscribed; an ephemeral one is not.
//! - **Order**: per channel, deliveries reach a node in publish order; stored messages in
//!   increasing offset order.
//! - **Subscribe, then read the position**: once [`Broker::subscribe`] has returned, every
//!   stored message appended after that point is delivered to the node. A node reads the
//!   stream's position after subscribing, and ignores deliveries at or below it.
//! - **Idempotent publish**: a stored publish whose dedupe key the stream remembers is not
//!   appended or delivered again; its first position is returned.
//! - **At most once** delivery to a handler; what a node misses can be read back from the
//!   stream ([`History::since`]).

mod memory;
mod redis;

use std::sync::Arc;

use futures::future::BoxFuture;
use switchboard_protocol::{Channel, ClientId, Member, Payload, Sender, StreamPosition};

use crate::frame::Encoded;
use crate::history::{History, HistoryError};

pub use memory::MemoryBroker;
pub use redis::{FILL_BYTES, FILLS_AT_ONCE, RedisBroker, RedisOptions};

/// Why a broker operation failed; clients get `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

impl From<HistoryError> for BrokerError {
    fn from(e: HistoryError) -> Self {
        Self(e.to_string())
    }
}

/// One delivery to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The encoded frame for the channel's local subscribers.
    pub frame: Encoded,
    /// For stored messages, the stream position of this message.
    pub position: Option<StreamPosition>,
    /// May be dropped for a subscriber whose queue is full (ephemeral messages).
    pub droppable: bool,
    /// A connection not to deliver to (the publisher, with `skip_self`).
    pub except: Option<ClientId>,
}

/// Why a `direct` was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectError {
    /// No such connection.
    Gone,
    /// The receiver's budget for direct messages is used up.
    Busy,
    /// The receiver is on another node that did not answer (the broker is down).
    Unavailable(String),
}

/// Channels and their subscriber counts, sorted by name.
pub type ChannelCounts = Vec<(Channel, usize)>;

/// The node side of a broker: receives deliveries for the channels it subscribed to.
pub trait BrokerHandler: Send + Sync + 'static {
    /// One delivery for `channel`'s local subscribers.
    fn deliver(&self, channel: &Channel, delivery: &Delivery);

    /// A `direct` frame for connection `to` of this node, sent from another node.
    fn direct(&self, _to: &ClientId, _frame: &Encoded) -> Result<(), DirectError> {
        Err(DirectError::Gone)
    }

    /// This node's channels with their local subscriber counts (for cluster-wide lists).
    fn channels(&self) -> Vec<(Channel, usize)> {
        Vec::new()
    }

    /// A `direct` frame for every connection of `user` on this node, sent from another
    /// node; returns how many took it.
    fn direct_user(&self, _user: &str, _frame: &Encoded) -> usize {
        0
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// Target channel.
    pub channel: Channel,
    /// The idempotency key (the publisher's scope and message id). A stored publish whose
    /// key the channel's stream remembers is not published again.
    pub dedupe_key: Option<String>,
    /// The sender; `None` for server-side publishes.
    pub from: Option<Sender>,
    /// The payload, as the publisher sent it.
    pub data: Payload,
    /// Not stored, no offset, droppable.
    pub ephemeral: bool,
    /// A connection not to deliver to (the publisher, when it asked for `skip_self`).
    pub except: Option<ClientId>,
}

/// The outcome of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The message's stream position; `None` for ephemeral messages.
    pub position: Option<StreamPosition>,
    /// The dedupe key was seen: this is the first publish's position, nothing was sent.
    pub duplicate: bool,
}

/// The result of a presence change.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceChange {
    /// The member after the change (with `connections: 0` after its last connection left).
    pub member: Member,
    /// Distinct members after the change.
    pub count: u32,
    /// True when the user's first connection joined, or its last one left: the change
    /// others should hear about.
    pub announce: bool,
}

/// Cross-node pub/sub, streams and presence. Object-safe, so the server holds an
/// `Arc<dyn Broker>`.
pub trait Broker: Send + Sync + 'static {
    /// Connects the broker to this node's hub. Called once, before anything else.
    fn start(&self, handler: Arc<dyn BrokerHandler>);

    /// This node wants `channel`'s deliveries. Every stored message appended after this
    /// returns is delivered.
    fn subscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// This node no longer has subscribers on `channel`.
    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stores (unless ephemeral) and delivers a message to every subscribed node.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Published, BrokerError>>;

    /// Delivers an encoded control frame (presence) to every subscribed node, unstored,
    /// in order with the channel's messages, except to connection `except` (a joiner does
    /// not hear its own join, even when it is subscribed by the time the frame arrives).
    fn broadcast<'a>(
        &'a self,
        channel: &'a Channel,
        frame: Encoded,
        except: Option<ClientId>,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The channel streams.
    fn history(&self) -> &dyn History;

    /// Adds connection `conn` of user `user` to `channel`'s presence with `info`. `None`,
    /// with nothing changed, when the user is not a member and the set already has
    /// `max_members` members.
    fn presence_join<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
        info: Payload,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>>;

    /// Removes connection `conn` of user `user` from `channel`'s presence. `None` when it
    /// was not present.
    fn presence_leave<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>>;

    /// `channel`'s members, sorted by user id.
    fn presence<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>>;

    /// This node's id when connections on other nodes can reach this node's (client ids
    /// then start with it: `<node>.<random>`); `None` for a single node.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// Delivers an encoded `direct` frame to connection `to` on another node. The default
    /// (one node): there is no other node, so the connection is gone.
    fn direct<'a>(
        &'a self,
        _to: &'a ClientId,
        _frame: Encoded,
    ) -> BoxFuture<'a, Result<(), DirectError>> {
        Box::pin(async { Err(DirectError::Gone) })
    }

    /// Delivers an encoded `direct` frame to every connection of `user` on the other
    /// nodes; returns how many took it. The default (one node): none.
    fn direct_user<'a>(
        &'a self,
        _user: &'a str,
        _frame: Encoded,
    ) -> BoxFuture<'a, Result<usize, BrokerError>> {
        Box::pin(async { Ok(0) })
    }

    /// Every node's channels with their subscriber counts summed, sorted by name; `None`
    /// when this node is the only one (the hub answers from its own channels).
    fn channels(&self) -> BoxFuture<'_, Result<Option<ChannelCounts>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether the broker can reach what it shares with other nodes (`/healthz`).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Extra Prometheus lines for `/metrics` (name, help, value).
    fn metrics(&self) -> Vec<(&'static str, &'static str, u64)> {
        Vec::new()
    }
}

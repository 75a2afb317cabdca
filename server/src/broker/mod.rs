//! The broker seam: what must be shared between server nodes (channel streams with their
//! offsets, delivery to every node with subscribers, and presence) behind one small trait.
//!
//! [`MemoryBroker`] is the default: everything in this process, for a single node. A
//! cross-node broker (Redis) implements the same trait, and `tests/broker_conformance.rs`
//! runs one suite against every implementation.
//!
//! The hub (see [`crate::hub`]) owns the local side: which connections on this node are
//! subscribed, and their queues. It tells the broker which channels this node wants
//! ([`Broker::subscribe`]), and the broker hands it every delivery for those channels
//! through [`BrokerHandler::deliver`], encoded once.
//!
//! Guarantees every implementation gives:
//! - **Order**: per channel, deliveries reach the handler in publish order; stored
//!   messages in increasing offset order, without gaps while the node stays subscribed.
//! - **Position**: [`Broker::subscribe`] returns the stream position such that every
//!   stored message after it is delivered to the handler.
//! - **At most once** delivery to the handler; stored messages are kept by the stream, so
//!   a client can recover what it missed where history is supported
//!   ([`Broker::history_since`]).

mod memory;

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures::future::BoxFuture;
use serde_json::Value;
use switchboard_protocol::{Channel, ClientId, Member, Sender, StreamPosition};

pub use memory::MemoryBroker;

/// How many recent publish ids a stream remembers for deduplication.
pub const DEDUPE_WINDOW: usize = 1024;

/// Why a broker operation failed; clients get `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

/// The node side of a broker: receives deliveries for the channels it subscribed to.
pub trait BrokerHandler: Send + Sync + 'static {
    /// One encoded server frame for `channel`'s local subscribers. `position` is set for
    /// stored messages (the stream position after this message); `droppable` frames may be
    /// dropped for a subscriber whose queue is full; `except` is a connection not to
    /// deliver to (the publisher, with `skip_self`).
    fn deliver(
        &self,
        channel: &Channel,
        frame: &Utf8Bytes,
        position: Option<&StreamPosition>,
        droppable: bool,
        except: Option<&ClientId>,
    );
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The publisher's message id. A stored message whose id the channel's stream has seen
    /// recently (the last [`DEDUPE_WINDOW`] ids) is not published again; its original
    /// offset is returned. This makes a client's resend after a reconnect harmless.
    pub id: Option<String>,
    /// Target channel.
    pub channel: Channel,
    /// The sender; `None` for server-side publishes.
    pub from: Option<Sender>,
    /// The payload.
    pub data: Value,
    /// Not stored, no offset, droppable.
    pub ephemeral: bool,
    /// A connection not to deliver to (the publisher, when it asked for `skip_self`).
    pub except: Option<ClientId>,
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

    /// This node wants `channel`'s deliveries. Returns the stream position after which
    /// every stored message will be delivered.
    fn subscribe<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>>;

    /// This node no longer has subscribers on `channel`.
    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Stores (unless ephemeral) and delivers a message to every subscribed node. Returns
    /// its offset, `None` for ephemeral messages.
    fn publish(&self, publication: Publication) -> BoxFuture<'_, Result<Option<u64>, BrokerError>>;

    /// Delivers an encoded control frame (presence) to every subscribed node, unstored.
    fn broadcast<'a>(
        &'a self,
        channel: &'a Channel,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The encoded stored messages after `since`, or `None` when they cannot all be
    /// recovered (other epoch, or trimmed). The default keeps no history.
    fn history_since<'a>(
        &'a self,
        _channel: &'a Channel,
        _since: &'a StreamPosition,
    ) -> BoxFuture<'a, Result<Option<Vec<Utf8Bytes>>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }

    /// Adds connection `conn` of user `user` to `channel`'s presence with `info`.
    fn presence_join<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
        info: Value,
    ) -> BoxFuture<'a, Result<PresenceChange, BrokerError>>;

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
}

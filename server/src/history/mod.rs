//! History: every channel's stream of stored messages, numbered 1, 2, 3… within an epoch.
//!
//! A stream exists whether or not anyone is subscribed: a publish to a channel nobody
//! listens to is stored and numbered like any other. The epoch changes only when the
//! stream's history was really lost (for the memory store: the stream was evicted to stay
//! within its memory budget, or the process restarted), so a client that remembers a
//! position can always tell "these are the messages after it" from "the stream was
//! reset".
//!
//! The [`History`] trait is what a store implements: append (numbering, with the
//! idempotent-publish window), the current position, and reads. It is separate from
//! fan-out ([`crate::broker`]): the in-process broker numbers a message here and then
//! delivers it; a cross-node store (Redis streams) can do both in one step.
//!
//! [`MemoryHistory`] keeps everything in this process, bounded by [`Retention`].

mod memory;

use bytes::Bytes;
use futures::future::BoxFuture;
use switchboard_protocol::{Channel, StreamPosition};

use crate::frame::Encoded;

pub use memory::{Clock, DEDUPE_ENTRY, MESSAGE_OVERHEAD, MemoryHistory, STREAM_OVERHEAD};

/// How long streams keep their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages a stream keeps (the oldest go first).
    pub max_messages: usize,
    /// Messages older than this many milliseconds are dropped.
    pub max_age_ms: u64,
    /// Publish ids a stream remembers for deduplication (the oldest go first).
    pub dedupe_window: usize,
    /// Memory all streams may use together, in bytes (messages, ids and each stream's own
    /// record). Over it, the least recently used streams are dropped whole: their history
    /// is lost and they come back with a new epoch.
    pub max_bytes: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_age_ms: 24 * 3600 * 1000,
            dedupe_window: 1024,
            max_bytes: 64 << 20,
        }
    }
}

/// The result of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The message's position (for a duplicate: the position it got the first time).
    pub position: StreamPosition,
    /// The publish id was seen recently: nothing was appended.
    pub duplicate: bool,
    /// The stored frame, ready to deliver (`None` for a duplicate).
    pub frame: Option<Encoded>,
}

/// An append in progress.
pub struct Appending {
    /// Its position and frame, final from the start.
    pub appended: Appended,
    /// Resolves once the message is stored as durably as the store promises (at once for
    /// memory; after the group commit's fsync for the durable store). A failure means it
    /// was not stored and must not be delivered.
    pub stored: BoxFuture<'static, Result<(), HistoryError>>,
}

impl Appending {
    /// An append that is already stored.
    pub fn done(appended: Appended) -> Self {
        Self {
            appended,
            stored: Box::pin(futures::future::ready(Ok(()))),
        }
    }
}

/// The answer to "what came after this position?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Every message after the position, in order (possibly none).
    Complete(Page),
    /// They cannot all be returned: the answer carries why and where the stream is now.
    Unrecoverable(Unrecoverable, StreamPosition),
}

/// Why the messages after a position cannot be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecoverable {
    /// The position is from another epoch (the stream was reset since).
    Epoch,
    /// Some of them are no longer kept (retention).
    Trimmed,
    /// More of them than the caller's limit.
    TooMany,
}

/// Some of a stream's messages and where the stream stood when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Encoded `message` frames in offset order.
    pub messages: Vec<Encoded>,
    /// The stream's position at the time of the read.
    pub position: StreamPosition,
}

/// Why a history operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("history unavailable: {0}")]
pub struct HistoryError(pub String);

/// A store of channel streams.
pub trait History: Send + Sync + 'static {
    /// Appends a message to `channel`'s stream: numbers it at once (its offset is final,
    /// so concurrent appends to one channel get increasing offsets in call order) and
    /// starts storing it; [`Appending::stored`] resolves once it is stored as durably as
    /// the store promises. `body` is its `message` frame without the position (see
    /// [`crate::frame::message_body`]). When `dedupe` is set and the stream remembers that
    /// key, nothing is appended and the first position is returned.
    fn append(
        &self,
        channel: &Channel,
        dedupe: Option<&str>,
        body: Bytes,
    ) -> Result<Appending, HistoryError>;

    /// The stream's position: the offset of its last stored message (0 before the first),
    /// counting only messages whose [`Appending::stored`] has resolved, so every message
    /// after it is still to be delivered. Creates the stream, fixing its epoch, if it did
    /// not exist.
    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>>;

    /// The messages after `since`, if all of them, and at most `limit`, can be returned.
    fn since<'a>(
        &'a self,
        channel: &'a Channel,
        since: &'a StreamPosition,
        limit: usize,
    ) -> BoxFuture<'a, Result<Since, HistoryError>>;

    /// The newest `limit` messages still kept, oldest first.
    fn latest<'a>(
        &'a self,
        channel: &'a Channel,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, HistoryError>>;
}

//! History: every channel's stream of stored messages, numbered 1, 2, 3… within an epoch.
//!
//! A stream exists whether or not anyone is subscribed: a publish to a channel nobody
//! listens to is stored and numbered like any other. The epoch changes only when the
//! stream's history was really lost (for the memory store: the stream was evicted to stay
//! within its memory budget, or the process restarted), so a client that remembers a
//! position can always tell "these are the messages after it" from "the stream was
//! reset".
//!
//! Two traits. [`History`] is what the hub and the `history` method read: the current
//! position and the messages after one. [`Store`] adds append (numbering, with the
//! idempotent-publish window), for a store this process writes: the in-process broker
//! numbers a message there and then delivers it. The Redis broker numbers, stores and
//! fans out in one script in Redis, so its streams are a `History` only
//! (`broker/redis.rs`).
//!
//! Two stores: [`DiskHistory`], the default, keeps the streams in an embedded redb file
//! across restarts (group commits, `fsync` or `os` durability); [`MemoryHistory`] keeps
//! them in this process (`--history memory`, and the tests). Both are bounded by
//! [`Retention`]; `tests.rs` runs the same checks against both.

mod disk;
mod memory;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use futures::future::BoxFuture;
use switchboard_protocol::{Channel, StreamPosition};

use crate::frame::Encoded;

pub use disk::{CACHED_STREAM_BYTES, CACHED_STREAMS, DiskHistory, Durability, PAGE_CACHE_BYTES};
pub use memory::{Clock, DEDUPE_ENTRY, MESSAGE_OVERHEAD, MemoryHistory, STREAM_OVERHEAD};

/// How long the streams of the channels matching a pattern keep their messages
/// (`--retention 'ticker:*=10/1m'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRule {
    /// A channel pattern: `*`, a prefix ending in `*`, or an exact name.
    pub pattern: String,
    /// Most messages kept.
    pub max_messages: usize,
    /// Age limit in milliseconds.
    pub max_age_ms: u64,
}

impl std::str::FromStr for RetentionRule {
    type Err = String;

    /// `PATTERN=COUNT` or `PATTERN=COUNT/AGE` (AGE as in `10m`; without it, the default).
    fn from_str(s: &str) -> Result<Self, String> {
        let (pattern, rest) = s
            .split_once('=')
            .ok_or_else(|| format!("expected PATTERN=COUNT[/AGE], got {s:?}"))?;
        let (count, age) = match rest.split_once('/') {
            Some((c, a)) => (c, Some(a)),
            None => (rest, None),
        };
        let max_messages = count
            .trim()
            .parse()
            .map_err(|e| format!("count {count:?}: {e}"))?;
        let max_age_ms = match age {
            Some(a) => humantime::parse_duration(a.trim())
                .map_err(|e| format!("age {a:?}: {e}"))?
                .as_millis() as u64,
            None => u64::MAX,
        };
        Ok(Self {
            pattern: pattern.trim().to_owned(),
            max_messages,
            max_age_ms,
        })
    }
}

/// How long streams keep their messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Most messages a stream keeps (the oldest go first).
    pub max_messages: usize,
    /// Messages older than this many milliseconds are dropped.
    pub max_age_ms: u64,
    /// Publish ids a stream remembers for deduplication (the oldest go first).
    pub dedupe_window: usize,
    /// Memory all streams may use together, in bytes (messages, ids and each stream's own
    /// record). Over it, the least recently used streams are dropped whole: their history
    /// is lost and they come back with a new epoch. (The in-memory store.)
    pub max_bytes: usize,
    /// The same for the disk store: bytes of messages, ids and stream records in its file
    /// (the file itself can be larger: redb keeps freed pages for reuse).
    pub max_disk_bytes: u64,
    /// Per-pattern limits, the first match winning; channels matching none use
    /// `max_messages` and `max_age_ms`.
    pub rules: Vec<RetentionRule>,
}

impl Retention {
    /// The count and age limits for `channel`.
    pub fn for_channel(&self, channel: &str) -> (usize, u64) {
        self.rules
            .iter()
            .find(|r| crate::auth::pattern_matches(&r.pattern, channel))
            .map_or((self.max_messages, self.max_age_ms), |r| {
                let age = if r.max_age_ms == u64::MAX {
                    self.max_age_ms
                } else {
                    r.max_age_ms
                };
                (r.max_messages, age)
            })
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_age_ms: 24 * 3600 * 1000,
            dedupe_window: 1024,
            max_bytes: 64 << 20,
            max_disk_bytes: 1 << 30,
            rules: Vec::new(),
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

/// How much one read may return: at most `messages` messages of at most `bytes` bytes of
/// encoded frames together. The default returns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadLimit {
    /// Most messages.
    pub messages: usize,
    /// Most bytes of encoded frames (a read returns fewer messages rather than more bytes).
    pub bytes: usize,
}

impl ReadLimit {
    /// At most `messages` messages, of any size.
    pub fn messages(messages: usize) -> Self {
        Self {
            messages,
            bytes: usize::MAX,
        }
    }

    /// Takes from `frames` (in the order the read wants them) while both limits hold.
    pub(crate) fn take<'a>(&self, frames: impl Iterator<Item = &'a Encoded>) -> Vec<Encoded> {
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for frame in frames {
            if out.len() >= self.messages || bytes.saturating_add(frame.len()) > self.bytes {
                break;
            }
            bytes += frame.len();
            out.push(frame.clone());
        }
        out
    }
}

/// The answer to "what came after this position?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// The first messages after the position, in order, as many as the limit allowed;
    /// [`Page::more`] tells whether there are others.
    Complete(Page),
    /// Some messages after it are no longer kept, or never were in this epoch: the answer
    /// carries why and where the stream is now.
    Unrecoverable(Unrecoverable, StreamPosition),
}

/// Why the messages after a position cannot be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecoverable {
    /// The position is from another epoch (the stream was reset since), or beyond the
    /// stream's end.
    Epoch,
    /// Some of them are no longer kept (retention).
    Trimmed,
}

impl From<Unrecoverable> for switchboard_protocol::Unrecovered {
    fn from(u: Unrecoverable) -> Self {
        match u {
            Unrecoverable::Epoch => Self::Epoch,
            Unrecoverable::Trimmed => Self::Trimmed,
        }
    }
}

/// Some of a stream's messages and where the stream stood when they were read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Encoded `message` frames in offset order, without holes.
    pub messages: Vec<Encoded>,
    /// The offset of the first of them (when there are none: where they would start).
    pub first: u64,
    /// The stream's position at the time of the read.
    pub position: StreamPosition,
}

impl Page {
    /// Whether the stream has messages after this page's last one.
    pub fn more(&self) -> bool {
        self.first + (self.messages.len() as u64) <= self.position.offset
    }

    /// The offset of the page's last message (`first - 1` when it has none).
    pub fn last(&self) -> u64 {
        (self.first + self.messages.len() as u64).saturating_sub(1)
    }
}

/// Why a history operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("history unavailable: {0}")]
pub struct HistoryError(pub String);

/// Channel streams, as the hub and the `history` method read them: the position, the
/// messages after one, the latest. Every broker has one ([`crate::broker::Broker::history`]).
pub trait History: Send + Sync + 'static {
    /// The stream's position: the offset of its last stored message (0 before the first),
    /// counting only messages whose [`Appending::stored`] has resolved, so every message
    /// after it is still to be delivered. Creates the stream, fixing its epoch, if it did
    /// not exist.
    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>>;

    /// The first messages after `since`, within `limit`, unless some of those after it are
    /// no longer kept or `since` is not a position of this epoch.
    fn since<'a>(
        &'a self,
        channel: &'a Channel,
        since: &'a StreamPosition,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Since, HistoryError>>;

    /// Makes everything appended so far durable and records a clean shutdown (a durable
    /// store); called once when the server stops.
    fn shutdown(&self) {}

    /// The newest messages still kept, within `limit`, oldest first.
    fn latest<'a>(
        &'a self,
        channel: &'a Channel,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Page, HistoryError>>;
}

/// A store this process writes the streams to (the in-process broker numbers and stores
/// through it); a broker that numbers in its backend (Redis) only reads, through
/// [`History`].
pub trait Store: History {
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
}

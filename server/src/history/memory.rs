//! The in-process store: streams in memory, within [`Retention`]. Streams are sharded by
//! channel name, each shard behind its own mutex (held for one operation, never across an
//! `.await`), so channels in different shards never contend.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::future::{BoxFuture, ready};
use switchboard_protocol::{Channel, StreamPosition};

use super::{
    Appended, Appending, History, HistoryError, Page, ReadLimit, Retention, Since, Store,
    Unrecoverable,
};
use crate::clock;
use crate::frame::{Encoded, with_position};

/// Number of independently locked shards.
const SHARDS: usize = 16;

/// Bytes charged for a stream beyond its name and contents.
pub const STREAM_OVERHEAD: usize = 256;
/// Bytes charged for a stored message beyond its frame.
pub const MESSAGE_OVERHEAD: usize = 64;
/// Bytes charged for a remembered publish id (a 64-bit keyed hash and an offset).
pub const DEDUPE_ENTRY: usize = 16;

/// A clock in milliseconds since the Unix epoch (tests pass their own).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Streams in this process's memory.
pub struct MemoryHistory {
    shards: Vec<Mutex<Shard>>,
    retention: Retention,
    clock: Clock,
    /// Keyed hash of publish ids and of channel names (to pick a shard); the random key
    /// keeps colliding ids from being crafted.
    hasher: RandomState,
}

#[derive(Default)]
struct Shard {
    streams: HashMap<Channel, Stream>,
    /// Streams by last use, least recent first: what goes when over budget.
    lru: BTreeMap<u64, Channel>,
    tick: u64,
    bytes: usize,
}

struct Stream {
    epoch: String,
    top: u64,
    messages: VecDeque<Stored>,
    /// Recent publish ids (hashed) with their offsets, oldest first.
    dedupe: VecDeque<(u64, u64)>,
    last_used: u64,
    bytes: usize,
}

struct Stored {
    offset: u64,
    ts: u64,
    frame: Encoded,
}

impl Default for MemoryHistory {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}

impl MemoryHistory {
    /// Empty, with `retention`.
    pub fn new(retention: Retention) -> Self {
        Self::with_clock(retention, Arc::new(clock::now_ms))
    }

    /// Empty, with `retention`, telling message ages by `clock`.
    pub fn with_clock(retention: Retention, clock: Clock) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            retention,
            clock,
            hasher: RandomState::new(),
        }
    }

    /// Bytes charged to all streams together (at most `retention.max_bytes`, give or take
    /// the one stream being written).
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }

    /// Streams kept.
    pub fn streams(&self) -> usize {
        self.shards.iter().map(|s| lock(s).streams.len()).sum()
    }

    fn shard(&self, channel: &Channel) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(channel.as_str()) as usize % SHARDS;
        lock(&self.shards[i])
    }

    /// Drops messages over the count or past the age, and charges the shard for it.
    fn trim(&self, shard: &mut Shard, channel: &Channel) {
        let Some(stream) = shard.streams.get_mut(channel) else {
            return;
        };
        let (max_messages, max_age) = self.retention.for_channel(channel.as_str());
        let oldest = (self.clock)().saturating_sub(max_age);
        let mut freed = 0;
        while let Some(first) = stream.messages.front() {
            if stream.messages.len() <= max_messages && first.ts >= oldest {
                break;
            }
            freed += first.frame.len() + MESSAGE_OVERHEAD;
            stream.messages.pop_front();
        }
        stream.bytes -= freed;
        shard.bytes -= freed;
    }

    /// The stream, created if missing, marked as just used.
    fn touch<'s>(&self, shard: &'s mut Shard, channel: &Channel) -> &'s mut Stream {
        shard.tick += 1;
        let tick = shard.tick;
        if let Some(stream) = shard.streams.get(channel) {
            shard.lru.remove(&stream.last_used);
        } else {
            let bytes = STREAM_OVERHEAD + channel.as_str().len();
            shard.bytes += bytes;
            shard.streams.insert(
                channel.clone(),
                Stream {
                    epoch: clock::random_epoch(),
                    top: 0,
                    messages: VecDeque::new(),
                    dedupe: VecDeque::new(),
                    last_used: 0,
                    bytes,
                },
            );
        }
        shard.lru.insert(tick, channel.clone());
        let stream = shard.streams.get_mut(channel).expect("just inserted");
        stream.last_used = tick;
        stream
    }

    /// Drops least recently used streams (never `keep`) until the shard is within its
    /// share of the budget.
    fn evict(&self, shard: &mut Shard, keep: &Channel) {
        let budget = self.retention.max_bytes / SHARDS;
        while shard.bytes > budget {
            let Some((&tick, victim)) = shard.lru.iter().find(|(_, c)| *c != keep) else {
                return;
            };
            let victim = victim.clone();
            shard.lru.remove(&tick);
            if let Some(stream) = shard.streams.remove(&victim) {
                shard.bytes -= stream.bytes;
            }
        }
    }

    fn append_now(&self, channel: &Channel, dedupe: Option<&str>, body: &[u8]) -> Appended {
        let key = dedupe.map(|id| self.hasher.hash_one(id));
        let now = (self.clock)();
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let stream = self.touch(shard, channel);
        if let Some(key) = key
            && let Some(&(_, offset)) = stream.dedupe.iter().find(|(k, _)| *k == key)
        {
            return Appended {
                position: StreamPosition {
                    offset,
                    epoch: stream.epoch.clone(),
                },
                duplicate: true,
                frame: None,
            };
        }
        stream.top += 1;
        let position = StreamPosition {
            offset: stream.top,
            epoch: stream.epoch.clone(),
        };
        let frame = with_position(body, &position);
        let mut charged = frame.len() + MESSAGE_OVERHEAD;
        if self.retention.for_channel(channel.as_str()).0 > 0 {
            stream.messages.push_back(Stored {
                offset: stream.top,
                ts: now,
                frame: frame.clone(),
            });
        } else {
            charged = 0;
        }
        if let Some(key) = key
            && self.retention.dedupe_window > 0
        {
            if stream.dedupe.len() >= self.retention.dedupe_window {
                stream.dedupe.pop_front();
                charged -= DEDUPE_ENTRY.min(charged);
            }
            stream.dedupe.push_back((key, stream.top));
            charged += DEDUPE_ENTRY;
        }
        stream.bytes += charged;
        shard.bytes += charged;
        self.trim(shard, channel);
        self.evict(shard, channel);
        Appended {
            position,
            duplicate: false,
            frame: Some(frame),
        }
    }
}

impl Store for MemoryHistory {
    fn append(
        &self,
        channel: &Channel,
        dedupe: Option<&str>,
        body: Bytes,
    ) -> Result<Appending, HistoryError> {
        Ok(Appending::done(self.append_now(channel, dedupe, &body)))
    }
}

impl History for MemoryHistory {
    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let stream = self.touch(shard, channel);
        let position = StreamPosition {
            offset: stream.top,
            epoch: stream.epoch.clone(),
        };
        self.evict(shard, channel);
        Box::pin(ready(Ok(position)))
    }

    fn since<'a>(
        &'a self,
        channel: &'a Channel,
        since: &'a StreamPosition,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Since, HistoryError>> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        self.trim(shard, channel);
        let stream = self.touch(shard, channel);
        let position = StreamPosition {
            offset: stream.top,
            epoch: stream.epoch.clone(),
        };
        let first_kept = stream.messages.front().map_or(stream.top + 1, |m| m.offset);
        let answer = if since.epoch != stream.epoch || since.offset > stream.top {
            Since::Unrecoverable(Unrecoverable::Epoch, position)
        } else if since.offset + 1 < first_kept {
            Since::Unrecoverable(Unrecoverable::Trimmed, position)
        } else {
            let skip = (since.offset + 1 - first_kept) as usize;
            let messages = limit.take(stream.messages.iter().skip(skip).map(|m| &m.frame));
            Since::Complete(Page {
                messages,
                first: since.offset + 1,
                position,
            })
        };
        self.evict(shard, channel);
        Box::pin(ready(Ok(answer)))
    }

    fn latest<'a>(
        &'a self,
        channel: &'a Channel,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Page, HistoryError>> {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        self.trim(shard, channel);
        let stream = self.touch(shard, channel);
        let mut messages = limit.take(stream.messages.iter().rev().map(|m| &m.frame));
        messages.reverse();
        let page = Page {
            first: stream.top + 1 - messages.len() as u64,
            messages,
            position: StreamPosition {
                offset: stream.top,
                epoch: stream.epoch.clone(),
            },
        };
        self.evict(shard, channel);
        Box::pin(ready(Ok(page)))
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures::executor::block_on;

    use super::*;
    // The helpers of the checks every store passes (`history/tests.rs`), which also cover
    // numbering and deduplication here.
    use crate::history::tests::{body, offsets};

    #[test]
    fn messages_past_their_age_are_dropped() {
        let now = Arc::new(AtomicU64::new(1_000_000));
        let clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::Relaxed))
        };
        let retention = Retention {
            max_age_ms: 1000,
            ..Retention::default()
        };
        let h = MemoryHistory::with_clock(retention, clock);
        let ch = Channel::from("c");
        h.append(&ch, None, body(1)).unwrap();
        now.fetch_add(600, Ordering::Relaxed);
        h.append(&ch, None, body(2)).unwrap();
        now.fetch_add(600, Ordering::Relaxed);
        assert_eq!(
            offsets(
                &block_on(h.latest(&ch, ReadLimit::messages(10)))
                    .unwrap()
                    .messages
            ),
            [2]
        );
    }

    #[test]
    fn memory_stays_within_the_budget_by_dropping_least_recently_used_streams() {
        let retention = Retention {
            max_bytes: SHARDS * 8192,
            max_messages: 5,
            ..Retention::default()
        };
        let max_bytes = retention.max_bytes;
        let h = MemoryHistory::new(retention);
        let busy = Channel::from("busy");
        let first = block_on(h.position(&busy)).unwrap();
        for i in 0..2000u64 {
            let ch = Channel::from(format!("spray-{i}"));
            h.append(&ch, Some(&format!("id{i}")), body(i)).unwrap();
            if i % 10 == 0 {
                h.append(&busy, None, body(i)).unwrap();
            }
            assert!(h.bytes() <= max_bytes, "{}", h.bytes());
        }
        assert!(h.streams() < 2000, "streams were evicted");
        assert_eq!(
            block_on(h.position(&busy)).unwrap().epoch,
            first.epoch,
            "the recently used stream stayed"
        );
        // An evicted stream comes back with a new epoch: its offsets never mix.
        let gone = Channel::from("spray-0");
        let pos = block_on(h.position(&gone)).unwrap();
        assert_eq!(pos.offset, 0);
    }
}

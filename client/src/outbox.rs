//! The outbound queue: bounded, with an overflow policy, and the pacing rules for
//! throttling and batching. Times are milliseconds on the driver's monotonic clock.

use std::collections::VecDeque;
use std::time::Duration;

/// What to do when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Make room by dropping the oldest queued frame; `send` succeeds and the drop is
    /// counted and reported.
    DropOldest,
    /// Drop the new frame; `send` fails with [`SendError::Dropped`] and the drop is counted.
    DropNewest,
    /// Refuse the new frame; `send` fails with [`SendError::Full`] (nothing is dropped).
    #[default]
    Reject,
}

/// Why a frame was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The outbox is full and the policy is [`Overflow::Reject`].
    Full,
    /// The outbox is full and the policy is [`Overflow::DropNewest`].
    Dropped,
    /// The connection was closed for good (refused by the server, or given up), or the
    /// client is gone.
    Closed,
    /// Ephemeral frames are sent only while connected, never queued.
    NotConnected,
    /// The data did not serialize to JSON (a map with non-string keys, a failing
    /// `Serialize` implementation).
    Unserializable,
    /// The encoded frame is larger than the server's `max_frame_bytes`: it could never be
    /// sent.
    TooLarge {
        /// The frame's size in bytes.
        bytes: usize,
        /// The server's limit.
        limit: usize,
    },
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full => f.write_str("outbox full"),
            Self::Dropped => f.write_str("outbox full: frame dropped"),
            Self::Closed => f.write_str("connection closed"),
            Self::NotConnected => f.write_str("not connected"),
            Self::Unserializable => f.write_str("the data does not serialize to JSON"),
            Self::TooLarge { bytes, limit } => {
                write!(f, "frame of {bytes} bytes, the server's limit is {limit}")
            }
        }
    }
}

impl std::error::Error for SendError {}

/// A bounded FIFO of frames waiting to be sent.
#[derive(Debug)]
pub struct Outbox<T> {
    items: VecDeque<(T, u64)>,
    capacity: usize,
    overflow: Overflow,
}

impl<T> Outbox<T> {
    /// An empty outbox. `capacity` must be at least 1.
    pub fn new(capacity: usize, overflow: Overflow) -> Self {
        assert!(capacity > 0, "outbox capacity must be at least 1");
        Self {
            items: VecDeque::new(),
            capacity,
            overflow,
        }
    }

    /// Queues `item` at time `now`. On success returns the frame dropped to make room, if
    /// any (only with [`Overflow::DropOldest`]).
    pub fn push(&mut self, item: T, now: u64) -> Result<Option<T>, SendError> {
        let mut dropped = None;
        if self.items.len() >= self.capacity {
            match self.overflow {
                Overflow::Reject => return Err(SendError::Full),
                Overflow::DropNewest => return Err(SendError::Dropped),
                Overflow::DropOldest => dropped = self.items.pop_front().map(|(t, _)| t),
            }
        }
        self.items.push_back((item, now));
        Ok(dropped)
    }

    /// Puts frames that were sent but not confirmed back at the front, in their order, to be
    /// sent again first. They were accepted once, so they may exceed the capacity.
    pub fn requeue_front(&mut self, items: Vec<T>, now: u64) {
        for item in items.into_iter().rev() {
            self.items.push_front((item, now));
        }
    }

    /// Takes up to `max` frames from the front.
    pub fn take(&mut self, max: usize) -> Vec<T> {
        let n = max.min(self.items.len());
        self.items.drain(..n).map(|(t, _)| t).collect()
    }

    /// The waiting frames, front first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(t, _)| t)
    }

    /// Removes every frame for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.items.retain(|(t, _)| keep(t));
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// When the oldest waiting frame was queued.
    pub fn oldest(&self) -> Option<u64> {
        self.items.front().map(|(_, at)| *at)
    }
}

/// Batching: queued frames go out together as one batch frame (a JSON array).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOptions {
    /// How long the first queued frame may wait for others. Defaults to 16 ms.
    pub window: Duration,
    /// Most frames in one batch; reaching it sends at once. Defaults to 50.
    pub max_frames: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            window: Duration::from_millis(16),
            max_frames: 50,
        }
    }
}

/// When to send next, given throttling and batching.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pacer {
    /// Minimum time between two sends (each send is one WebSocket message).
    pub throttle: Option<Duration>,
    /// Batching, if any.
    pub batch: Option<BatchOptions>,
    /// When the last send happened.
    pub last_send: Option<u64>,
}

/// The pacer's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Due {
    /// Nothing to send.
    Idle,
    /// Send this many frames now (as one batch when more than one).
    Now(usize),
    /// Wait until this time, then ask again.
    At(u64),
}

impl Pacer {
    /// What to do at `now` with `len` frames queued, the oldest queued at `oldest`.
    pub fn due(&self, now: u64, len: usize, oldest: Option<u64>) -> Due {
        let Some(oldest) = oldest.filter(|_| len > 0) else {
            return Due::Idle;
        };
        let mut at = now;
        if let (Some(t), Some(last)) = (self.throttle, self.last_send) {
            at = at.max(last + t.as_millis() as u64);
        }
        let count = match self.batch {
            None => 1,
            Some(b) => {
                let max = b.max_frames.max(1);
                if len < max {
                    at = at.max(oldest + b.window.as_millis() as u64);
                }
                len.min(max)
            }
        };
        if at <= now {
            Due::Now(count)
        } else {
            Due::At(at)
        }
    }

    /// Records a send at `now`.
    pub fn sent(&mut self, now: u64) {
        self.last_send = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_refuses_when_full_and_keeps_everything() {
        let mut o = Outbox::new(2, Overflow::Reject);
        assert_eq!(o.push(1, 0), Ok(None));
        assert_eq!(o.push(2, 0), Ok(None));
        assert_eq!(o.push(3, 0), Err(SendError::Full));
        assert_eq!(o.take(10), [1, 2]);
    }

    #[test]
    fn drop_newest_drops_the_new_frame_and_says_so() {
        let mut o = Outbox::new(2, Overflow::DropNewest);
        o.push(1, 0).unwrap();
        o.push(2, 0).unwrap();
        assert_eq!(o.push(3, 0), Err(SendError::Dropped));
        assert_eq!(o.take(10), [1, 2]);
    }

    #[test]
    fn drop_oldest_makes_room_and_returns_the_dropped_frame() {
        let mut o = Outbox::new(2, Overflow::DropOldest);
        o.push(1, 0).unwrap();
        o.push(2, 0).unwrap();
        assert_eq!(o.push(3, 0), Ok(Some(1)));
        assert_eq!(o.take(10), [2, 3]);
    }

    #[test]
    fn requeued_frames_go_first_in_order_even_over_capacity() {
        let mut o = Outbox::new(2, Overflow::Reject);
        o.push(3, 0).unwrap();
        o.push(4, 0).unwrap();
        o.requeue_front(vec![1, 2], 0);
        assert_eq!(o.len(), 4);
        assert_eq!(o.take(3), [1, 2, 3]);
        assert_eq!(o.take(3), [4]);
        assert!(o.is_empty());
    }

    #[test]
    fn unpaced_sends_one_frame_at_once() {
        let p = Pacer::default();
        assert_eq!(p.due(5, 0, None), Due::Idle);
        assert_eq!(p.due(5, 3, Some(1)), Due::Now(1));
    }

    #[test]
    fn throttle_spaces_sends() {
        let mut p = Pacer {
            throttle: Some(Duration::from_millis(100)),
            ..Pacer::default()
        };
        assert_eq!(p.due(0, 2, Some(0)), Due::Now(1));
        p.sent(0);
        assert_eq!(p.due(40, 1, Some(0)), Due::At(100));
        assert_eq!(p.due(100, 1, Some(0)), Due::Now(1));
    }

    #[test]
    fn batch_waits_for_the_window_or_the_size() {
        let p = Pacer {
            batch: Some(BatchOptions {
                window: Duration::from_millis(16),
                max_frames: 3,
            }),
            ..Pacer::default()
        };
        assert_eq!(p.due(10, 2, Some(10)), Due::At(26));
        assert_eq!(p.due(26, 2, Some(10)), Due::Now(2));
        assert_eq!(
            p.due(10, 3, Some(10)),
            Due::Now(3),
            "a full batch goes at once"
        );
        assert_eq!(p.due(10, 7, Some(10)), Due::Now(3));
    }

    #[test]
    fn throttle_and_batch_combine() {
        let mut p = Pacer {
            throttle: Some(Duration::from_millis(100)),
            batch: Some(BatchOptions::default()),
            last_send: None,
        };
        p.sent(0);
        // window passed, but the throttle holds it to 100 ms; then everything goes together
        assert_eq!(p.due(50, 10, Some(0)), Due::At(100));
        assert_eq!(p.due(100, 10, Some(0)), Due::Now(10));
    }
}

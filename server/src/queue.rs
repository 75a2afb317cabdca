//! A connection's bounded outbound queue: many senders (fan-out, direct messages, spawned
//! request handlers), one receiver (the session). It is bounded in frames and in bytes, and
//! direct messages have a byte budget of their own, so other connections' `direct`s can
//! never crowd out the channel messages the connection subscribed to (nor get it closed as
//! a slow consumer).
//!
//! It also carries the one out-of-band signal a connection gets from outside, "close with
//! this code": at once ([`Outbox::kill`]: slow consumer), or once everything queued has been
//! written ([`Outbox::close_after_drain`]: shutdown, so acked messages are not lost).
//!
//! Why not `tokio::sync::mpsc`: a bounded tokio channel allocates about 1.5 KiB per
//! channel up front (its first 32-slot block and the channel state), paid by every idle
//! connection. This queue is a `VecDeque` behind a mutex that allocates on the first
//! queued frame and gives its buffer back when [`Inbox::shrink`] finds it empty, so an
//! idle connection costs ~150 bytes here (measured with massif; see docs/benchmarks.md).
//! The mutex is held for a push or a pop, never across an `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use switchboard_protocol::CloseCode;
use tokio::sync::Notify;

use crate::frame::Encoded;

/// Bytes a queued frame is charged beyond its length: the queue slot and the shared
/// buffer's header. Charging it bounds the memory of many tiny frames too.
pub const FRAME_OVERHEAD: usize = 64;

/// Which budget a frame is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Channel messages, presence, replies: the connection's own traffic.
    Normal,
    /// `direct` messages from other connections, with a budget of their own.
    Direct,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Its budget (frames or bytes) is used up.
    Full,
    /// The receiver is gone (the session ended).
    Closed,
}

/// The bounds of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most [`Class::Normal`] frames waiting.
    pub frames: usize,
    /// Most bytes of [`Class::Normal`] frames waiting (each charged its length plus
    /// [`FRAME_OVERHEAD`]).
    pub bytes: usize,
    /// Most bytes of [`Class::Direct`] frames waiting.
    pub direct_bytes: usize,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

/// The receiving side, owned by the session. Dropping it closes the queue.
pub struct Inbox(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    bounds: Bounds,
    /// Wakes the receiver after a push (a stored permit covers a push before it waits).
    pushed: Notify,
    /// Wakes senders waiting for room after a pop.
    popped: Notify,
}

struct State {
    frames: VecDeque<(Encoded, Class)>,
    /// Normal frames waiting, and the bytes charged for them.
    normal: (usize, usize),
    /// Bytes charged for waiting direct frames.
    direct_bytes: usize,
    closed: bool,
    /// Close at once, ahead of anything queued.
    kill: Option<CloseCode>,
    /// Close once the queue is empty.
    drain: Option<CloseCode>,
}

/// What the receiver gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A queued frame.
    Frame(Encoded),
    /// The connection must close with this code.
    Kill(CloseCode),
}

/// A queue with these bounds (each at least 1).
pub fn bounded(bounds: Bounds) -> (Outbox, Inbox) {
    let bounds = Bounds {
        frames: bounds.frames.max(1),
        bytes: bounds.bytes.max(1),
        direct_bytes: bounds.direct_bytes.max(1),
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            normal: (0, 0),
            direct_bytes: 0,
            closed: false,
            kill: None,
            drain: None,
        }),
        bounds,
        pushed: Notify::new(),
        popped: Notify::new(),
    });
    (Outbox(shared.clone()), Inbox(shared))
}

fn charge(frame: &Encoded) -> usize {
    frame.len() + FRAME_OVERHEAD
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn pop(&mut self) -> Option<Encoded> {
        let (frame, class) = self.frames.pop_front()?;
        let cost = charge(&frame);
        match class {
            Class::Normal => {
                self.normal.0 -= 1;
                self.normal.1 -= cost;
            }
            Class::Direct => self.direct_bytes -= cost,
        }
        Some(frame)
    }
}

impl Outbox {
    /// Queues `frame` unless its budget is used up or the queue is closed. A frame larger
    /// than the whole byte budget is still taken when nothing of its class is waiting, so
    /// that no frame is undeliverable.
    pub fn try_send(&self, frame: Encoded, class: Class) -> Result<(), SendError> {
        let bounds = self.0.bounds;
        let cost = charge(&frame);
        let mut state = self.0.lock();
        if state.closed {
            return Err(SendError::Closed);
        }
        let fits = match class {
            Class::Normal => {
                let (n, bytes) = state.normal;
                n == 0 || (n < bounds.frames && bytes + cost <= bounds.bytes)
            }
            Class::Direct => {
                state.direct_bytes == 0 || state.direct_bytes + cost <= bounds.direct_bytes
            }
        };
        if !fits {
            return Err(SendError::Full);
        }
        match class {
            Class::Normal => {
                state.normal.0 += 1;
                state.normal.1 += cost;
            }
            Class::Direct => state.direct_bytes += cost,
        }
        state.frames.push_back((frame, class));
        drop(state);
        self.0.pushed.notify_one();
        Ok(())
    }

    /// Queues a normal frame, waiting for room; fails only when the receiver is gone.
    pub async fn send(&self, frame: Encoded) -> Result<(), SendError> {
        loop {
            // Registered before the check, so a pop between the check and the wait wakes us.
            let popped = self.0.popped.notified();
            tokio::pin!(popped);
            popped.as_mut().enable();
            match self.try_send(frame.clone(), Class::Normal) {
                Err(SendError::Full) => popped.await,
                done => return done,
            }
        }
    }

    /// The queue's bounds.
    pub fn bounds(&self) -> Bounds {
        self.0.bounds
    }

    /// Asks the receiver to close the connection with `code`, ahead of anything queued.
    /// The first kill wins; returns whether this was it.
    pub fn kill(&self, code: CloseCode) -> bool {
        let mut state = self.0.lock();
        if state.closed || state.kill.is_some() {
            return false;
        }
        state.kill = Some(code);
        drop(state);
        self.0.pushed.notify_one();
        true
    }

    /// Asks the receiver to close the connection with `code` once every frame queued so
    /// far has been taken (a later [`Outbox::kill`] still overrides it).
    pub fn close_after_drain(&self, code: CloseCode) {
        let mut state = self.0.lock();
        if state.closed || state.drain.is_some() {
            return;
        }
        state.drain = Some(code);
        drop(state);
        self.0.pushed.notify_one();
    }

    /// True once the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.lock().closed
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.0.lock().frames.len()
    }

    /// Bytes charged for the frames waiting (both classes).
    pub fn bytes(&self) -> usize {
        let state = self.0.lock();
        state.normal.1 + state.direct_bytes
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inbox {
    /// The kill request if there is one, else the next frame, else the drain close,
    /// waiting for one of them.
    pub async fn recv(&mut self) -> Next {
        loop {
            let next = {
                let mut state = self.0.lock();
                match state.kill {
                    Some(code) => Some(Next::Kill(code)),
                    None => match state.pop() {
                        Some(frame) => Some(Next::Frame(frame)),
                        None => state.drain.map(Next::Kill),
                    },
                }
            };
            match next {
                Some(Next::Frame(frame)) => {
                    self.0.popped.notify_waiters();
                    return Next::Frame(frame);
                }
                Some(kill) => return kill,
                None => self.0.pushed.notified().await,
            }
        }
    }

    /// The next frame, if one is waiting and no kill is pending.
    pub fn try_recv(&mut self) -> Option<Encoded> {
        let mut state = self.0.lock();
        if state.kill.is_some() {
            return None;
        }
        let frame = state.pop()?;
        drop(state);
        self.0.popped.notify_waiters();
        Some(frame)
    }

    /// Gives the buffer back if the queue is empty (called when the connection is quiet),
    /// so a burst does not leave an idle connection holding its peak.
    pub fn shrink(&mut self) {
        let mut state = self.0.lock();
        if state.frames.is_empty() {
            state.frames = VecDeque::new();
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        state.normal = (0, 0);
        state.direct_bytes = 0;
        drop(state);
        // Senders waiting for room learn that there never will be any.
        self.0.popped.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn t(s: &'static str) -> Encoded {
        Encoded::from_bytes(Bytes::from_static(s.as_bytes())).unwrap()
    }

    fn sized(n: usize) -> Encoded {
        Encoded::from_bytes(Bytes::from(vec![b'x'; n])).unwrap()
    }

    fn frames(n: usize) -> Bounds {
        Bounds {
            frames: n,
            bytes: 1 << 20,
            direct_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn bounded_in_order_and_closed_when_the_receiver_goes() {
        let (tx, mut rx) = bounded(frames(2));
        assert_eq!(tx.try_send(t("a"), Class::Normal), Ok(()));
        assert_eq!(tx.try_send(t("b"), Class::Normal), Ok(()));
        assert_eq!(tx.try_send(t("c"), Class::Normal), Err(SendError::Full));
        assert_eq!(tx.len(), 2);
        assert!(!tx.is_empty());
        assert_eq!(rx.recv().await, Next::Frame(t("a")));
        assert_eq!(rx.try_recv(), Some(t("b")));
        assert_eq!(rx.try_recv(), None);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(t("d"), Class::Normal), Err(SendError::Closed));
    }

    #[test]
    fn bounded_in_bytes_and_directs_have_their_own_budget() {
        let bounds = Bounds {
            frames: 1000,
            bytes: 3 * (100 + FRAME_OVERHEAD),
            direct_bytes: 2 * (100 + FRAME_OVERHEAD),
        };
        let (tx, mut rx) = bounded(bounds);
        for _ in 0..3 {
            tx.try_send(sized(100), Class::Normal).unwrap();
        }
        assert_eq!(tx.try_send(sized(1), Class::Normal), Err(SendError::Full));
        // Directs do not use the normal budget, and normal frames do not use theirs.
        tx.try_send(sized(100), Class::Direct).unwrap();
        tx.try_send(sized(100), Class::Direct).unwrap();
        assert_eq!(tx.try_send(sized(1), Class::Direct), Err(SendError::Full));
        assert_eq!(tx.bytes(), 5 * (100 + FRAME_OVERHEAD));
        // Taking a frame gives its bytes back to its own budget.
        rx.try_recv().unwrap();
        assert_eq!(tx.try_send(sized(1), Class::Direct), Err(SendError::Full));
        tx.try_send(sized(100), Class::Normal).unwrap();
        while rx.try_recv().is_some() {}
        assert_eq!(tx.bytes(), 0);
    }

    #[test]
    fn an_oversized_frame_passes_only_into_an_empty_budget() {
        let bounds = Bounds {
            frames: 10,
            bytes: 1000,
            direct_bytes: 1000,
        };
        let (tx, mut rx) = bounded(bounds);
        tx.try_send(sized(5000), Class::Normal).unwrap();
        assert_eq!(tx.try_send(sized(10), Class::Normal), Err(SendError::Full));
        tx.try_send(sized(5000), Class::Direct).unwrap();
        assert_eq!(tx.try_send(sized(10), Class::Direct), Err(SendError::Full));
        rx.try_recv().unwrap();
        tx.try_send(sized(10), Class::Normal).unwrap();
    }

    #[tokio::test]
    async fn recv_wakes_on_a_push_from_another_task() {
        let (tx, mut rx) = bounded(frames(4));
        let pusher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.try_send(t("late"), Class::Normal).unwrap();
            tx
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.expect("woken"), Next::Frame(t("late")));
        pusher.await.unwrap();
    }

    #[tokio::test]
    async fn send_waits_for_room_and_gives_up_when_closed() {
        let (tx, mut rx) = bounded(frames(1));
        tx.try_send(t("first"), Class::Normal).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(t("second")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "full: the sender waits");
        assert_eq!(rx.recv().await, Next::Frame(t("first")));
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(sent.expect("woken").unwrap(), Ok(()));
        assert_eq!(rx.recv().await, Next::Frame(t("second")));

        tx.try_send(t("third"), Class::Normal).unwrap();
        let blocked = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(t("fourth")).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        let sent = tokio::time::timeout(Duration::from_secs(5), blocked).await;
        assert_eq!(sent.expect("woken").unwrap(), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn shrink_releases_an_empty_buffer_only() {
        let (tx, mut rx) = bounded(frames(64));
        for _ in 0..40 {
            tx.try_send(t("x"), Class::Normal).unwrap();
        }
        rx.shrink();
        assert_eq!(tx.len(), 40, "a non-empty queue keeps its frames");
        while rx.try_recv().is_some() {}
        rx.shrink();
        assert_eq!(rx.0.lock().frames.capacity(), 0);
        tx.try_send(t("again"), Class::Normal).unwrap();
        assert_eq!(rx.recv().await, Next::Frame(t("again")));
    }

    #[tokio::test]
    async fn a_kill_comes_first_and_the_first_one_wins() {
        let (tx, mut rx) = bounded(frames(4));
        tx.try_send(t("queued"), Class::Normal).unwrap();
        assert_eq!(rx.recv().await, Next::Frame(t("queued")));
        assert!(tx.kill(CloseCode::SLOW_CONSUMER));
        assert!(!tx.kill(CloseCode::GOING_AWAY), "the first request wins");
        tx.try_send(t("after"), Class::Normal).unwrap();
        assert_eq!(rx.try_recv(), None, "nothing is taken past a kill");
        assert_eq!(rx.recv().await, Next::Kill(CloseCode::SLOW_CONSUMER));
        assert_eq!(rx.recv().await, Next::Kill(CloseCode::SLOW_CONSUMER));
        drop(rx);
        assert!(!tx.kill(CloseCode::GOING_AWAY), "nobody left to close");
    }

    #[tokio::test]
    async fn a_drain_close_comes_after_what_is_queued() {
        let (tx, mut rx) = bounded(frames(4));
        tx.try_send(t("a"), Class::Normal).unwrap();
        tx.try_send(t("b"), Class::Direct).unwrap();
        tx.close_after_drain(CloseCode::GOING_AWAY);
        assert_eq!(rx.recv().await, Next::Frame(t("a")));
        assert_eq!(rx.recv().await, Next::Frame(t("b")));
        assert_eq!(rx.recv().await, Next::Kill(CloseCode::GOING_AWAY));
        // A kill still overrides it.
        let (tx, mut rx) = bounded(frames(4));
        tx.try_send(t("a"), Class::Normal).unwrap();
        tx.close_after_drain(CloseCode::GOING_AWAY);
        tx.kill(CloseCode::SLOW_CONSUMER);
        assert_eq!(rx.recv().await, Next::Kill(CloseCode::SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn a_kill_wakes_a_waiting_receiver() {
        let (tx, mut rx) = bounded(frames(4));
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.kill(CloseCode::GOING_AWAY)
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.expect("woken"), Next::Kill(CloseCode::GOING_AWAY));
        assert!(killer.await.unwrap());
    }
}

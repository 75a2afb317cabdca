//! A connection's bounded outbound queue: many senders (fan-out, spawned request handlers),
//! one receiver (the session), `capacity` frames at most. It also carries the one
//! out-of-band signal a connection gets from outside, "close with this code" ([`Outbox::kill`]:
//! slow consumer, shutdown), which the receiver sees before any queued frame.
//!
//! Why not `tokio::sync::mpsc`: a bounded tokio channel allocates about 1.5 KiB per
//! channel up front (its first 32-slot block and the channel state), paid by every idle
//! connection. This queue is a `VecDeque` behind a mutex that allocates on the first
//! queued frame and gives its buffer back when [`Inbox::shrink`] finds it empty, so an
//! idle connection costs ~150 bytes here (measured with massif; see docs/benchmarks.md).
//! The mutex is held for a push or a pop, never across an `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use switchboard_protocol::CloseCode;
use tokio::sync::Notify;

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// `capacity` frames are waiting.
    Full,
    /// The receiver is gone (the session ended).
    Closed,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

/// The receiving side, owned by the session. Dropping it closes the queue.
pub struct Inbox(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Wakes the receiver after a push (a stored permit covers a push before it waits).
    pushed: Notify,
    /// Wakes senders waiting for room after a pop.
    popped: Notify,
}

struct State {
    frames: VecDeque<Utf8Bytes>,
    closed: bool,
    kill: Option<CloseCode>,
}

/// What the receiver gets next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A queued frame.
    Frame(Utf8Bytes),
    /// The connection must close with this code.
    Kill(CloseCode),
}

/// A queue of at most `capacity` frames (at least 1).
pub fn bounded(capacity: usize) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            frames: VecDeque::new(),
            closed: false,
            kill: None,
        }),
        capacity: capacity.max(1),
        pushed: Notify::new(),
        popped: Notify::new(),
    });
    (Outbox(shared.clone()), Inbox(shared))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the deque inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Outbox {
    /// Queues `text` unless the queue is full or closed.
    pub fn try_send(&self, text: Utf8Bytes) -> Result<(), SendError> {
        let mut state = self.0.lock();
        if state.closed {
            return Err(SendError::Closed);
        }
        if state.frames.len() >= self.0.capacity {
            return Err(SendError::Full);
        }
        state.frames.push_back(text);
        drop(state);
        self.0.pushed.notify_one();
        Ok(())
    }

    /// Queues `text`, waiting for room; fails only when the receiver is gone.
    pub async fn send(&self, text: Utf8Bytes) -> Result<(), SendError> {
        loop {
            // Registered before the check, so a pop between the check and the wait wakes us.
            let popped = self.0.popped.notified();
            tokio::pin!(popped);
            popped.as_mut().enable();
            match self.try_send(text.clone()) {
                Err(SendError::Full) => popped.await,
                done => return done,
            }
        }
    }

    /// Asks the receiver to close the connection with `code`, ahead of anything queued.
    /// The first request wins; returns whether this was it.
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

    /// True once the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.0.lock().closed
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.0.lock().frames.len()
    }

    /// True when no frame is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inbox {
    /// The kill request if there is one, else the next frame, waiting for either.
    pub async fn recv(&mut self) -> Next {
        loop {
            let next = {
                let mut state = self.0.lock();
                match state.kill {
                    Some(code) => Some(Next::Kill(code)),
                    None => state.frames.pop_front().map(Next::Frame),
                }
            };
            match next {
                Some(Next::Frame(text)) => {
                    self.0.popped.notify_waiters();
                    return Next::Frame(text);
                }
                Some(kill) => return kill,
                None => self.0.pushed.notified().await,
            }
        }
    }

    /// The next frame, if one is waiting.
    pub fn try_recv(&mut self) -> Option<Utf8Bytes> {
        let text = self.0.lock().frames.pop_front()?;
        self.0.popped.notify_waiters();
        Some(text)
    }

    /// Gives the buffer back if the queue is empty (called when the connection is quiet),
    /// so a burst does not leave an idle connection holding `capacity` slots.
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
        drop(state);
        // Senders waiting for room learn that there never will be any.
        self.0.popped.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn t(s: &'static str) -> Utf8Bytes {
        Utf8Bytes::from_static(s)
    }

    #[tokio::test]
    async fn bounded_in_order_and_closed_when_the_receiver_goes() {
        let (tx, mut rx) = bounded(2);
        assert_eq!(tx.try_send(t("a")), Ok(()));
        assert_eq!(tx.try_send(t("b")), Ok(()));
        assert_eq!(tx.try_send(t("c")), Err(SendError::Full));
        assert_eq!(tx.len(), 2);
        assert!(!tx.is_empty());
        assert_eq!(rx.recv().await, Next::Frame(t("a")));
        assert_eq!(rx.try_recv().as_deref(), Some("b"));
        assert_eq!(rx.try_recv(), None);
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(t("d")), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn recv_wakes_on_a_push_from_another_task() {
        let (tx, mut rx) = bounded(4);
        let pusher = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.try_send(t("late")).unwrap();
            tx
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.expect("woken"), Next::Frame(t("late")));
        pusher.await.unwrap();
    }

    #[tokio::test]
    async fn send_waits_for_room_and_gives_up_when_closed() {
        let (tx, mut rx) = bounded(1);
        tx.try_send(t("first")).unwrap();
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

        tx.try_send(t("third")).unwrap();
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
        let (tx, mut rx) = bounded(64);
        for _ in 0..40 {
            tx.try_send(t("x")).unwrap();
        }
        rx.shrink();
        assert_eq!(tx.len(), 40, "a non-empty queue keeps its frames");
        while rx.try_recv().is_some() {}
        rx.shrink();
        assert_eq!(rx.0.lock().frames.capacity(), 0);
        tx.try_send(t("again")).unwrap();
        assert_eq!(rx.recv().await, Next::Frame(t("again")));
    }

    #[tokio::test]
    async fn a_kill_comes_first_and_the_first_one_wins() {
        let (tx, mut rx) = bounded(4);
        tx.try_send(t("queued")).unwrap();
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx)
        });
        let (first, mut rx) = waiting.await.unwrap();
        assert_eq!(first, Next::Frame(t("queued")));
        assert!(tx.kill(CloseCode::SLOW_CONSUMER));
        assert!(!tx.kill(CloseCode::GOING_AWAY), "the first request wins");
        tx.try_send(t("after")).unwrap();
        assert_eq!(rx.recv().await, Next::Kill(CloseCode::SLOW_CONSUMER));
        assert_eq!(rx.recv().await, Next::Kill(CloseCode::SLOW_CONSUMER));
        drop(rx);
        assert!(!tx.kill(CloseCode::GOING_AWAY), "nobody left to close");
    }

    #[tokio::test]
    async fn a_kill_wakes_a_waiting_receiver() {
        let (tx, mut rx) = bounded(4);
        let killer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.kill(CloseCode::GOING_AWAY)
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got.expect("woken"), Next::Kill(CloseCode::GOING_AWAY));
        assert!(killer.await.unwrap());
    }
}

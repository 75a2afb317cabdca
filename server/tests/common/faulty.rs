//! A broker for race and failure tests: the in-memory broker behind a wrapper that can make
//! any operation fail, or stop it at a chosen point until the test lets it go on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use switchboard_protocol::{Channel, ClientId, Member, Payload, StreamPosition};
use switchboard_server::broker::{
    Broker, BrokerError, BrokerHandler, MemoryBroker, PresenceChange, Publication, Published,
};
use switchboard_server::frame::Encoded;
use switchboard_server::history::{
    Appending, History, HistoryError, MemoryHistory, Page, ReadLimit, Since, Store,
};
use tokio::sync::oneshot;

/// A real server (options `args` on top of the test defaults) on the faulty broker, and
/// its faults.
pub async fn server(args: &[&str]) -> (super::TestServer, Arc<Faults>) {
    let broker = FaultyBroker::new();
    let faults = broker.faults.clone();
    let state = switchboard_server::AppState::with_broker(
        super::config(args),
        switchboard_server::Methods::with_builtins(),
        Arc::new(broker),
    );
    (super::start_with(state).await, faults)
}

/// The operations that can fail or pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Subscribe,
    Unsubscribe,
    Publish,
    Broadcast,
    PresenceJoin,
    PresenceLeave,
    Presence,
    /// `history().position()`
    Position,
    /// `history().append()`: failing refuses the append; pausing at `After` holds the
    /// stored future (a slow disk).
    Append,
    /// `history().since()` and `history().latest()`: the reads of a recovery.
    Read,
}

/// Before or after the real operation ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Before,
    After,
}

struct Point {
    op: Op,
    stage: Stage,
    channel: Option<String>,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// What the test controls.
#[derive(Default)]
pub struct Faults {
    failing: Mutex<HashSet<Op>>,
    points: Mutex<Vec<Point>>,
}

/// A paused operation, once reached: let it go on with [`Pause::release`].
pub struct Pause {
    reached: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

impl Pause {
    /// Waits until an operation stops here.
    pub async fn reached(&mut self) {
        if let Some(rx) = self.reached.take() {
            tokio::time::timeout(std::time::Duration::from_secs(5), rx)
                .await
                .expect("the pause point was not reached within 5 s")
                .expect("pause point dropped");
        }
    }

    /// Lets the stopped operation go on.
    pub fn release(&mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }
}

impl Faults {
    /// Makes every `op` fail until [`Faults::heal`].
    pub fn fail(&self, op: Op) {
        self.failing.lock().unwrap().insert(op);
    }

    /// Makes `op` work again.
    pub fn heal(&self, op: Op) {
        self.failing.lock().unwrap().remove(&op);
    }

    /// Stops the next `op` (on `channel`, if given) at `stage` until released.
    pub fn pause(&self, op: Op, stage: Stage, channel: Option<&str>) -> Pause {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.points.lock().unwrap().push(Point {
            op,
            stage,
            channel: channel.map(str::to_owned),
            reached: reached_tx,
            release: release_rx,
        });
        Pause {
            reached: Some(reached_rx),
            release: Some(release_tx),
        }
    }

    async fn point(&self, op: Op, stage: Stage, channel: &str) -> Result<(), BrokerError> {
        if stage == Stage::Before && self.failing.lock().unwrap().contains(&op) {
            return Err(BrokerError(format!("injected failure of {op:?}")));
        }
        let point = {
            let mut points = self.points.lock().unwrap();
            let i = points.iter().position(|p| {
                p.op == op && p.stage == stage && p.channel.as_deref().is_none_or(|c| c == channel)
            });
            i.map(|i| points.remove(i))
        };
        if let Some(point) = point {
            let _ = point.reached.send(());
            let _ = point.release.await;
        }
        Ok(())
    }
}

/// The in-memory broker and its store, with faults.
pub struct FaultyBroker {
    inner: MemoryBroker,
    /// The same store the inner broker appends to, so faults reach appends too.
    history: Arc<FaultyHistory>,
    pub faults: Arc<Faults>,
}

struct FaultyHistory {
    inner: Arc<MemoryHistory>,
    faults: Arc<Faults>,
}

impl FaultyBroker {
    pub fn new() -> Self {
        let faults = Arc::new(Faults::default());
        let history = Arc::new(FaultyHistory {
            inner: Arc::new(MemoryHistory::default()),
            faults: faults.clone(),
        });
        Self {
            inner: MemoryBroker::with_history(history.clone()),
            history,
            faults,
        }
    }
}

macro_rules! faulty {
    ($self:ident, $op:expr, $channel:expr, $call:expr) => {
        Box::pin(async move {
            $self.faults.point($op, Stage::Before, $channel).await?;
            let out = $call.await?;
            $self.faults.point($op, Stage::After, $channel).await?;
            Ok(out)
        })
    };
}

impl Broker for FaultyBroker {
    fn start(&self, handler: Arc<dyn BrokerHandler>) {
        self.inner.start(handler);
    }
    fn subscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        faulty!(
            self,
            Op::Subscribe,
            channel.as_str(),
            self.inner.subscribe(channel)
        )
    }
    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        faulty!(
            self,
            Op::Unsubscribe,
            channel.as_str(),
            self.inner.unsubscribe(channel)
        )
    }
    fn publish(&self, p: Publication) -> BoxFuture<'_, Result<Published, BrokerError>> {
        Box::pin(async move {
            let channel = p.channel.clone();
            self.faults
                .point(Op::Publish, Stage::Before, channel.as_str())
                .await?;
            let out = self.inner.publish(p).await?;
            self.faults
                .point(Op::Publish, Stage::After, channel.as_str())
                .await?;
            Ok(out)
        })
    }
    fn broadcast<'a>(
        &'a self,
        channel: &'a Channel,
        frame: Encoded,
        except: Option<ClientId>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        faulty!(
            self,
            Op::Broadcast,
            channel.as_str(),
            self.inner.broadcast(channel, frame, except)
        )
    }
    fn history(&self) -> &dyn History {
        &*self.history
    }
    fn presence_join<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
        info: Payload,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        faulty!(
            self,
            Op::PresenceJoin,
            channel.as_str(),
            self.inner
                .presence_join(channel, user, conn, info, max_members)
        )
    }
    fn presence_leave<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        faulty!(
            self,
            Op::PresenceLeave,
            channel.as_str(),
            self.inner.presence_leave(channel, user, conn)
        )
    }
    fn presence<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        faulty!(
            self,
            Op::Presence,
            channel.as_str(),
            self.inner.presence(channel)
        )
    }
}

fn history_error(e: BrokerError) -> HistoryError {
    HistoryError(e.0)
}

impl FaultyHistory {
    /// `call` between the `op` points of `channel`, as the broker's calls are (`faulty!`).
    /// A closure, since the stores read when called, not when awaited: the read must
    /// happen after the `Before` point.
    fn around<'a, T: Send + 'a>(
        &'a self,
        op: Op,
        channel: &'a Channel,
        call: impl FnOnce() -> BoxFuture<'a, Result<T, HistoryError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, HistoryError>> {
        Box::pin(async move {
            let ch = channel.as_str();
            let point = |stage| async move {
                self.faults
                    .point(op, stage, ch)
                    .await
                    .map_err(history_error)
            };
            point(Stage::Before).await?;
            let out = call().await?;
            point(Stage::After).await?;
            Ok(out)
        })
    }
}

impl Store for FaultyHistory {
    fn append(
        &self,
        channel: &Channel,
        dedupe: Option<&str>,
        body: Bytes,
    ) -> Result<Appending, HistoryError> {
        if self.faults.failing.lock().unwrap().contains(&Op::Append) {
            return Err(HistoryError("injected failure of Append".into()));
        }
        let mut appending = self.inner.append(channel, dedupe, body)?;
        // A pause here is a slow disk: numbered at once, stored later.
        let stored = std::mem::replace(&mut appending.stored, Box::pin(async { Ok(()) }));
        let faults = self.faults.clone();
        let ch = channel.to_string();
        appending.stored = Box::pin(async move {
            stored.await?;
            faults
                .point(Op::Append, Stage::After, &ch)
                .await
                .map_err(history_error)
        });
        Ok(appending)
    }
}

impl History for FaultyHistory {
    fn position<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, HistoryError>> {
        self.around(Op::Position, channel, || self.inner.position(channel))
    }
    fn since<'a>(
        &'a self,
        channel: &'a Channel,
        since: &'a StreamPosition,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Since, HistoryError>> {
        self.around(Op::Read, channel, move || {
            self.inner.since(channel, since, limit)
        })
    }
    fn latest<'a>(
        &'a self,
        channel: &'a Channel,
        limit: ReadLimit,
    ) -> BoxFuture<'a, Result<Page, HistoryError>> {
        self.around(Op::Read, channel, move || self.inner.latest(channel, limit))
    }
}

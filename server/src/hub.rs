//! The hub: this node's side of things. Which clients are connected, which of them are
//! subscribed to what, and their bounded queues. Streams, cross-node delivery and presence
//! are the [`Broker`]'s; the hub subscribes this node to a channel while it has local
//! subscribers and fans every delivery out to them: encoded once, the same bytes offered
//! to every subscriber's queue.
//!
//! Locking: the client map and the channel map are each behind a `std::sync::Mutex` held
//! only for a lookup; each channel has its own state mutex, so deliveries to different
//! channels do not contend. No `std` lock is held across an `.await`. Membership changes
//! of one channel (this node's broker subscription, presence joins and leaves) are
//! serialized by that channel's own async mutex, so subscribes to different channels
//! never wait for each other; publishing never takes it.
//!
//! Exactness: a subscriber is told a stream position and then receives exactly the
//! stored messages after it. The channel state tracks the position of the last message
//! it forwarded; a new subscriber is registered and told that position under the same
//! lock that forwards deliveries. The node's first subscriber subscribes the node at the
//! broker *before* reading the stream's position, so nothing appended in between is missed,
//! and deliveries at or below the position are dropped as already seen.
//!
//! Recovery: a subscriber is registered at the channel's position P, so every stored
//! message after P goes to its queue. The subscribe then reads the missed messages from
//! history, *up to P only* (the store may be ahead of what this node has forwarded), and
//! the session writes them and the `subscribed` answer as direct answers. A session writes
//! its direct answers before it takes anything from its queue, so the client gets the
//! recovered messages, the answer, then the live ones, in offset order, with no gap and no
//! duplicate at the seam. What is delivered during the read waits in the queue, within
//! its bounds (a subscriber whose queue overflows meanwhile is closed as a slow consumer,
//! as always).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use switchboard_protocol::{
    Channel, ClientId, CloseCode, Member, Payload, PresenceAction, Sender, ServerFrame,
    StreamPosition, Unrecovered,
};

use crate::broker::{Broker, BrokerError, BrokerHandler, Delivery, Publication, Published};
use crate::clock;
use crate::embed::{Caller, Hooks, PublishedMessage};
use crate::frame::Encoded;
use crate::history::{ReadLimit, Since};
use crate::metrics::Metrics;
use crate::queue::{self, Bounds, Class, Inbox, Outbox, SendError};

/// How other parts of the server reach one connection: a shared pointer, so the registry
/// and every channel the connection is in hold one word each instead of a copy.
#[derive(Clone)]
pub struct ClientHandle(Arc<Client>);

/// One connection as the rest of the server sees it.
pub struct Client {
    /// The connection's id: 128 random bits, the address of `direct` messages.
    pub id: ClientId,
    /// Its authenticated user, if any.
    pub user_id: Option<String>,
    /// Its bounded outbound queue of encoded frames, which also carries the request to
    /// close the connection from outside (slow consumer, shutdown).
    pub outbox: Outbox,
}

impl std::ops::Deref for ClientHandle {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.0
    }
}

impl Client {
    /// The session id announced in `welcome`: derived from the client id with the
    /// process's secret keys ([`clock::derived_id`]), so it is unguessable although the
    /// client id is public, and costs the connection no memory.
    pub fn session_id(&self) -> String {
        clock::derived_id(self.id.as_str())
    }

    /// The connection as the embedding app's permissions and hooks see it.
    pub fn caller(&self) -> Caller {
        Caller {
            client_id: self.id.clone(),
            user_id: self.user_id.clone(),
        }
    }

    /// The user id presence counts by: the token's user, else the connection itself.
    pub fn presence_key(&self) -> String {
        self.user_id.clone().unwrap_or_else(|| self.id.0.clone())
    }
}

/// What a subscribe should send besides going live.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Recover the messages after this position.
    pub since: Option<StreamPosition>,
    /// When there is no `since`, or it cannot be recovered: send up to this many of the
    /// latest messages.
    pub rewind: usize,
    /// Most messages and bytes one recovery may send.
    pub limit: ReadLimit,
}

/// A subscribe that succeeded: write `messages`, then `reply`, before anything from the
/// connection's queue.
pub struct Subscription {
    /// Recovered (or rewound) `message` frames, in offset order.
    pub messages: Vec<Encoded>,
    /// The `subscribed` frame.
    pub reply: ServerFrame,
}

/// Result of a subscribe.
pub enum SubscribeOutcome {
    /// Subscribed: send what it carries.
    Subscribed(Subscription),
    /// The client already was.
    AlreadySubscribed,
    /// The channel's presence set is full; nothing was done.
    PresenceFull,
}

pub use crate::broker::DirectError;

/// The server's shared state (a cheap clone).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every live connection, by id: the address book for `direct` and shutdown.
    clients: Mutex<HashMap<ClientId, ClientHandle>>,
    /// Channels with local subscribers (or a subscribe in progress).
    channels: Mutex<HashMap<Channel, Arc<ChannelEntry>>>,
    /// Streams, delivery and presence.
    broker: Arc<dyn Broker>,
    /// Set by shutdown: connections arriving afterwards are closed at once.
    closing: AtomicBool,
    metrics: Arc<Metrics>,
    /// The embedding app's hooks, if any.
    hooks: OnceLock<Arc<dyn Hooks>>,
}

struct ChannelEntry {
    /// Serializes this channel's membership changes: the node's broker subscription and
    /// presence joins and leaves. Async, since they wait on the broker; per channel, so
    /// channels do not wait for each other.
    membership: Arc<tokio::sync::Mutex<()>>,
    state: Mutex<ChannelState>,
}

#[derive(Default)]
struct ChannelState {
    /// The position of the last stored message forwarded here; `None` until the node's
    /// broker subscription is in place and positioned.
    position: Option<StreamPosition>,
    /// While positioning: the newest position delivered meanwhile.
    seen: Option<StreamPosition>,
    /// Local subscribers.
    subscribers: HashMap<ClientId, Subscriber>,
    /// Removed from the channel map: a subscribe that waited for it starts over.
    retired: bool,
}

/// One local subscriber of a channel.
struct Subscriber {
    client: ClientHandle,
    /// Whether it joined presence.
    present: bool,
    /// Stored messages at or below this offset (of the channel's epoch) are not delivered
    /// to it: it already has them.
    floor: Option<u64>,
}

/// What a subscribe sends before the live messages.
struct Recovered {
    messages: Vec<Encoded>,
    /// The position its `subscribed` announces.
    position: StreamPosition,
    unrecovered: Option<Unrecovered>,
    /// Skip stored messages up to here (it has them from elsewhere).
    floor: Option<u64>,
}

/// Hands broker deliveries to the hub without keeping it alive.
struct Node(Weak<Inner>);

impl BrokerHandler for Node {
    fn deliver(&self, channel: &Channel, delivery: &Delivery) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let Some(entry) = lock(&inner.channels).get(channel).cloned() else {
            return;
        };
        let mut st = lock(&entry.state);
        if let Some(pos) = &delivery.position {
            match &st.position {
                None => {
                    // Positioning: remember how far the stream got; nobody to deliver to.
                    if st.seen.as_ref().is_none_or(|s| newer(pos, s)) {
                        st.seen = Some(pos.clone());
                    }
                    return;
                }
                Some(cur) if cur.epoch == pos.epoch && pos.offset <= cur.offset => {
                    return; // at or below what every subscriber was told: seen
                }
                Some(cur) if cur.epoch == pos.epoch && pos.offset > cur.offset + 1 => {
                    inner.metrics.gaps.fetch_add(1, Ordering::Relaxed);
                }
                Some(_) => {}
            }
            st.position = Some(pos.clone());
        } else if st.position.is_none() {
            return;
        }
        let offset = delivery.position.as_ref().map(|p| p.offset);
        for sub in st.subscribers.values_mut() {
            if Some(&sub.client.id) == delivery.except.as_ref() {
                continue;
            }
            if let (Some(floor), Some(offset)) = (sub.floor, offset) {
                if offset <= floor {
                    continue;
                }
                sub.floor = None;
            }
            inner.deliver(&sub.client, &delivery.frame, delivery.droppable);
        }
    }

    fn direct(&self, to: &ClientId, frame: &Encoded) -> Result<(), DirectError> {
        match self.0.upgrade() {
            Some(inner) => inner.direct(to, frame),
            None => Err(DirectError::Gone),
        }
    }

    fn channels(&self) -> Vec<(Channel, usize)> {
        self.0.upgrade().map(|i| i.channels()).unwrap_or_default()
    }

    fn direct_user(&self, user: &str, frame: &Encoded) -> usize {
        self.0
            .upgrade()
            .map_or(0, |inner| inner.direct_user(user, frame))
    }
}

/// Whether `a` is after `b` in the same epoch.
fn newer(a: &StreamPosition, b: &StreamPosition) -> bool {
    a.epoch == b.epoch && a.offset > b.offset
}

impl Hub {
    /// An empty hub on `broker`.
    pub fn new(metrics: Arc<Metrics>, broker: Arc<dyn Broker>) -> Self {
        let inner = Arc::new(Inner {
            clients: Mutex::default(),
            channels: Mutex::default(),
            broker,
            closing: AtomicBool::new(false),
            metrics,
            hooks: OnceLock::new(),
        });
        inner.broker.start(Arc::new(Node(Arc::downgrade(&inner))));
        Self { inner }
    }

    /// Installs the embedding app's hooks (once, before connections arrive).
    pub fn set_hooks(&self, hooks: Arc<dyn Hooks>) {
        let _ = self.inner.hooks.set(hooks);
    }

    /// The embedding app's hooks, if any.
    pub fn hooks(&self) -> Option<&Arc<dyn Hooks>> {
        self.inner.hooks.get()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The broker (streams, fan-out, presence).
    pub fn broker(&self) -> &dyn Broker {
        &*self.inner.broker
    }

    /// Registers a new connection and returns its handle and the receiving end of its
    /// outbound queue.
    pub fn connect(&self, user_id: Option<String>, bounds: Bounds) -> (ClientHandle, Inbox) {
        // On several nodes the id names its node, so a `direct` finds it.
        let id = match self.inner.broker.node_id() {
            Some(node) => ClientId(format!("{node}.{}", clock::random_id())),
            None => ClientId(clock::random_id()),
        };
        let (outbox, rx) = queue::bounded(bounds);
        let handle = ClientHandle(Arc::new(Client {
            id: id.clone(),
            user_id,
            outbox,
        }));
        lock(&self.inner.clients).insert(id, handle.clone());
        if self.inner.closing.load(Ordering::Acquire) {
            handle.outbox.close_after_drain(CloseCode::GOING_AWAY);
        }
        (handle, rx)
    }

    /// Records the authenticated user of a connection (after `hello` with a token) and
    /// returns its updated handle. Only valid before the connection subscribes anywhere,
    /// since subscriptions hold copies of the handle.
    pub fn identify(&self, client: &ClientHandle, user_id: Option<String>) -> ClientHandle {
        // The same connection (the same queue) under its new user.
        let handle = ClientHandle(Arc::new(Client {
            id: client.id.clone(),
            user_id,
            outbox: client.outbox.clone(),
        }));
        lock(&self.inner.clients).insert(handle.id.clone(), handle.clone());
        handle
    }

    /// Removes a connection from every channel it was in (announcing presence leaves) and
    /// from the registry.
    pub async fn disconnect(
        &self,
        client: &ClientHandle,
        channels: impl IntoIterator<Item = Channel>,
    ) {
        lock(&self.inner.clients).remove(&client.id);
        for channel in channels {
            if let Err(e) = self.unsubscribe(client, &channel).await {
                tracing::warn!(client = %client.id, %channel, "cleanup failed: {e}");
            }
        }
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.clients).len()
    }

    /// Frames and bytes waiting in the outbound queues, in total and in the deepest one.
    pub fn queue_depths(&self) -> crate::metrics::QueueDepths {
        let clients: Vec<_> = lock(&self.inner.clients).values().cloned().collect();
        let mut depths = crate::metrics::QueueDepths::default();
        for c in clients {
            let (frames, bytes) = (c.outbox.len(), c.outbox.bytes());
            depths.total += frames;
            depths.max = depths.max.max(frames);
            depths.bytes += bytes;
            depths.max_bytes = depths.max_bytes.max(bytes);
        }
        depths
    }

    /// Shutdown: asks every connection, and every one that arrives later, to close with
    /// `code` once what is already queued for it has been written.
    pub fn close_all(&self, code: CloseCode) {
        self.inner.closing.store(true, Ordering::Release);
        for client in lock(&self.inner.clients).values() {
            client.outbox.close_after_drain(code);
        }
    }

    /// Asks every connection to close with `code` at once, dropping what is queued (after
    /// the drain timeout).
    pub fn kill_all(&self, code: CloseCode) {
        for client in lock(&self.inner.clients).values() {
            client.outbox.kill(code);
        }
    }

    /// The channel's entry, inserted if missing.
    fn entry(&self, channel: &Channel) -> Arc<ChannelEntry> {
        lock(&self.inner.channels)
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(ChannelEntry {
                    membership: Arc::default(),
                    state: Mutex::default(),
                })
            })
            .clone()
    }

    /// Removes an entry that has no subscribers from the map, and unsubscribes the node if
    /// it was subscribed. Called with the entry's membership lock held.
    async fn retire(
        &self,
        channel: &Channel,
        entry: &Arc<ChannelEntry>,
    ) -> Result<(), BrokerError> {
        let was_subscribed = {
            let mut st = lock(&entry.state);
            if !st.subscribers.is_empty() || st.retired {
                return Ok(());
            }
            st.retired = true;
            st.position.take().is_some()
        };
        {
            let mut channels = lock(&self.inner.channels);
            if channels.get(channel).is_some_and(|e| Arc::ptr_eq(e, entry)) {
                channels.remove(channel);
            }
        }
        if was_subscribed {
            self.inner.broker.unsubscribe(channel).await?;
        }
        Ok(())
    }

    /// Subscribes this node at the broker and reads the stream position, unless it already
    /// is. Called with the entry's membership lock held.
    async fn position(
        &self,
        channel: &Channel,
        entry: &Arc<ChannelEntry>,
    ) -> Result<(), BrokerError> {
        if lock(&entry.state).position.is_some() {
            return Ok(());
        }
        let broker = &self.inner.broker;
        if let Err(e) = broker.subscribe(channel).await {
            let _ = self.retire(channel, entry).await;
            return Err(e);
        }
        let read = broker.history().position(channel).await;
        let mut st = lock(&entry.state);
        match read {
            Ok(mut position) => {
                if let Some(seen) = st.seen.take()
                    && newer(&seen, &position)
                {
                    position = seen;
                }
                st.position = Some(position);
                Ok(())
            }
            Err(e) => {
                // Subscribed at the broker but not positioned: undo the subscription.
                drop(st);
                let _ = broker.unsubscribe(channel).await;
                let _ = self.retire(channel, entry).await;
                Err(e.into())
            }
        }
    }

    /// Subscribes `client` to `channel`, joining presence with `presence` info when given
    /// (unless the presence set already has `max_members` other members), and reads what
    /// `recovery` asks for. The caller writes the outcome's messages and reply before
    /// anything from the connection's queue.
    pub async fn subscribe(
        &self,
        client: &ClientHandle,
        channel: &Channel,
        presence: Option<Payload>,
        max_members: usize,
        recovery: Recovery,
    ) -> Result<SubscribeOutcome, BrokerError> {
        let broker = &self.inner.broker;
        let (entry, guard) = loop {
            let entry = self.entry(channel);
            let guard = entry.membership.clone().lock_owned().await;
            if !lock(&entry.state).retired {
                break (entry, guard);
            }
        };
        if lock(&entry.state).subscribers.contains_key(&client.id) {
            return Ok(SubscribeOutcome::AlreadySubscribed);
        }
        self.position(channel, &entry).await?;
        // Presence first, so the others hear of the join and the joiner does not.
        if let Some(info) = &presence {
            let key = client.presence_key();
            let joined = broker
                .presence_join(channel, &key, client.id.as_str(), info.clone(), max_members)
                .await;
            let announced = match joined {
                Ok(None) => {
                    self.retire(channel, &entry).await?;
                    return Ok(SubscribeOutcome::PresenceFull);
                }
                Ok(Some(change)) if change.announce => {
                    let frame = ServerFrame::Presence {
                        channel: channel.clone(),
                        action: PresenceAction::Join,
                        member: change.member,
                        count: change.count,
                    };
                    broker
                        .broadcast(channel, Encoded::new(&frame), Some(client.id.clone()))
                        .await
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = announced {
                // Leave no ghost member and no empty channel behind.
                let _ = broker
                    .presence_leave(channel, &key, client.id.as_str())
                    .await;
                let _ = self.retire(channel, &entry).await;
                return Err(e);
            }
            if let Some(hooks) = self.hooks() {
                hooks.joined(channel, &client.caller());
            }
        }
        let position = {
            let mut st = lock(&entry.state);
            let subscriber = Subscriber {
                client: client.clone(),
                present: presence.is_some(),
                floor: None,
            };
            st.subscribers.insert(client.id.clone(), subscriber);
            st.position.clone().unwrap_or_else(|| StreamPosition {
                offset: 0,
                epoch: String::new(),
            })
        };
        drop(guard);
        let undo = async |e: BrokerError| {
            // Undo, so the hub and the session agree the client is not subscribed.
            let _ = self.unsubscribe(client, channel).await;
            Err(e)
        };
        let recovered = match self.recover(channel, &position, &recovery).await {
            Ok(recovered) => recovered,
            Err(e) => return undo(e).await,
        };
        if let Some(floor) = recovered.floor {
            let mut st = lock(&entry.state);
            if let Some(sub) = st.subscribers.get_mut(&client.id) {
                sub.floor = Some(floor);
            }
        }
        let snapshot = match presence {
            Some(_) => match broker.presence(channel).await {
                Ok(members) => Some(members),
                Err(e) => return undo(e).await,
            },
            None => None,
        };
        let m = &self.inner.metrics;
        m.recovered
            .fetch_add(recovered.messages.len() as u64, Ordering::Relaxed);
        if recovered.unrecovered.is_some() {
            m.unrecovered.fetch_add(1, Ordering::Relaxed);
        }
        Ok(SubscribeOutcome::Subscribed(Subscription {
            messages: recovered.messages,
            reply: ServerFrame::Subscribed {
                channel: channel.clone(),
                position: recovered.position,
                recovered: recovery.since.is_some() && recovered.unrecovered.is_none(),
                unrecovered: recovered.unrecovered,
                presence: snapshot,
            },
        }))
    }

    /// Reads what a subscriber registered at `position` missed (or the latest messages),
    /// up to `position`: what comes after it is in the subscriber's queue already.
    async fn recover(
        &self,
        channel: &Channel,
        position: &StreamPosition,
        recovery: &Recovery,
    ) -> Result<Recovered, BrokerError> {
        let history = self.inner.broker.history();
        let mut out = Recovered {
            messages: Vec::new(),
            position: position.clone(),
            unrecovered: None,
            floor: None,
        };
        if let Some(since) = &recovery.since {
            if since.epoch != position.epoch {
                out.unrecovered = Some(Unrecovered::Epoch);
            } else if since.offset == position.offset {
                return Ok(out); // nothing missed
            } else if since.offset > position.offset {
                // Further than this node has forwarded: fine if the stream has it (another
                // node delivered it; those are skipped here), not if it is beyond the
                // stream's end (a position the client cannot have seen).
                let top = history.position(channel).await?;
                if top.epoch == position.epoch && since.offset <= top.offset {
                    out.position.offset = since.offset;
                    out.floor = Some(since.offset);
                    return Ok(out);
                }
                out.unrecovered = Some(Unrecovered::Epoch);
            } else {
                match history.since(channel, since, recovery.limit).await? {
                    Since::Unrecoverable(why, _) => out.unrecovered = Some(why.into()),
                    Since::Complete(page) if page.position.epoch != position.epoch => {
                        out.unrecovered = Some(Unrecovered::Epoch);
                    }
                    Since::Complete(page) if page.last() < position.offset => {
                        out.unrecovered = Some(Unrecovered::TooMany);
                    }
                    Since::Complete(page) => {
                        let wanted = (position.offset - since.offset) as usize;
                        out.messages = page.messages;
                        out.messages.truncate(wanted);
                        return Ok(out);
                    }
                }
            }
        }
        if recovery.rewind > 0 && position.offset > 0 {
            let limit = ReadLimit {
                messages: recovery.rewind.min(recovery.limit.messages),
                bytes: recovery.limit.bytes,
            };
            let page = history.latest(channel, limit).await?;
            if page.position.epoch == position.epoch {
                // Only those up to the position: the rest is queued already.
                let beyond = page.last().saturating_sub(position.offset) as usize;
                out.messages = page.messages;
                out.messages
                    .truncate(out.messages.len().saturating_sub(beyond));
            }
        }
        Ok(out)
    }

    /// Removes `client` from `channel`, and from its presence even when the broker fails
    /// to unsubscribe the node. Returns false when it was not subscribed; an error after
    /// the client was removed locally.
    pub async fn unsubscribe(
        &self,
        client: &ClientHandle,
        channel: &Channel,
    ) -> Result<bool, BrokerError> {
        let broker = &self.inner.broker;
        let Some(entry) = lock(&self.inner.channels).get(channel).cloned() else {
            return Ok(false);
        };
        let _guard = entry.membership.lock().await;
        let Some(Subscriber { present, .. }) = lock(&entry.state).subscribers.remove(&client.id)
        else {
            return Ok(false);
        };
        let unsubscribed = self.retire(channel, &entry).await;
        if present && let Some(hooks) = self.hooks() {
            hooks.left(channel, &client.caller());
        }
        let left = if present {
            let key = client.presence_key();
            match broker
                .presence_leave(channel, &key, client.id.as_str())
                .await
            {
                Ok(Some(change)) if change.announce => {
                    let frame = ServerFrame::Presence {
                        channel: channel.clone(),
                        action: PresenceAction::Leave,
                        member: change.member,
                        count: change.count,
                    };
                    broker.broadcast(channel, Encoded::new(&frame), None).await
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        unsubscribed.and(left).map(|()| true)
    }

    /// Publishes a message through the broker (and tells the hooks once it is acked).
    pub async fn publish(&self, publication: Publication) -> Result<Published, BrokerError> {
        let Some(hooks) = self.hooks() else {
            return self.inner.broker.publish(publication).await;
        };
        let (channel, from, data) = (
            publication.channel.clone(),
            publication.from.clone(),
            publication.data.clone(),
        );
        let published = self.inner.broker.publish(publication).await?;
        if !published.duplicate {
            hooks.published(&PublishedMessage {
                channel: &channel,
                from: from.as_ref(),
                data: &data,
                position: published.position.as_ref(),
            });
        }
        Ok(published)
    }

    /// Sends `data` as a `direct` from the server to every connection of `user_id`, on
    /// this node and (through the broker) on the others, within each one's direct budget;
    /// returns how many took it.
    pub async fn direct_to_user(&self, user_id: &str, data: Payload) -> usize {
        let from = Sender {
            client_id: ClientId("server".into()),
            user_id: None,
        };
        let frame = Encoded::new(&ServerFrame::Direct { from, data });
        let here = self.inner.direct_user(user_id, &frame);
        let elsewhere = match self.inner.broker.node_id() {
            Some(_) => match self.inner.broker.direct_user(user_id, frame).await {
                Ok(n) => n,
                // Delivered here already: a retry would repeat it, so count what was.
                Err(e) => {
                    tracing::warn!(user = user_id, "send to the other nodes failed: {e}");
                    0
                }
            },
            None => 0,
        };
        here + elsewhere
    }

    /// Delivers `data` to one connection, within the receiver's budget for direct
    /// messages: a receiver that is not reading is never closed because of them. A
    /// connection on another node is reached through the broker.
    pub async fn direct(
        &self,
        to: &ClientId,
        from: Sender,
        data: Payload,
    ) -> Result<(), DirectError> {
        let frame = Encoded::new(&ServerFrame::Direct { from, data });
        match self.inner.direct(to, &frame) {
            Err(DirectError::Gone) if self.inner.broker.node_id().is_some() => {
                self.inner.broker.direct(to, frame).await
            }
            local => local,
        }
    }

    /// The presence set of a channel, sorted by user id.
    pub async fn presence(&self, channel: &Channel) -> Result<Vec<Member>, BrokerError> {
        self.inner.broker.presence(channel).await
    }

    /// Every channel with local subscribers and their number, sorted by name.
    pub fn channels(&self) -> Vec<(Channel, usize)> {
        self.inner.channels()
    }

    /// Every channel with subscribers on any node, and their number, sorted by name.
    pub async fn all_channels(&self) -> Result<Vec<(Channel, usize)>, BrokerError> {
        Ok(match self.inner.broker.channels().await? {
            Some(all) => all,
            None => self.channels(),
        })
    }
}

impl Inner {
    /// Queues a `direct` frame for a connection of this node.
    fn direct(&self, to: &ClientId, frame: &Encoded) -> Result<(), DirectError> {
        let Some(target) = lock(&self.clients).get(to).cloned() else {
            return Err(DirectError::Gone);
        };
        match target.outbox.try_send(frame.clone(), Class::Direct) {
            Ok(()) => {
                self.metrics.deliveries.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(SendError::Full) => {
                self.metrics.directs_refused.fetch_add(1, Ordering::Relaxed);
                Err(DirectError::Busy)
            }
            Err(SendError::Closed) => Err(DirectError::Gone),
        }
    }

    /// Queues a `direct` frame for every connection of `user` on this node; returns how
    /// many took it.
    fn direct_user(&self, user: &str, frame: &Encoded) -> usize {
        let targets: Vec<ClientId> = lock(&self.clients)
            .values()
            .filter(|c| c.user_id.as_deref() == Some(user))
            .map(|c| c.id.clone())
            .collect();
        targets
            .iter()
            .filter(|id| self.direct(id, frame).is_ok())
            .count()
    }

    /// Channels with local subscribers and their number, sorted by name.
    fn channels(&self) -> Vec<(Channel, usize)> {
        let all: Vec<_> = lock(&self.channels)
            .iter()
            .map(|(name, state)| (name.clone(), state.clone()))
            .collect();
        let mut out: Vec<_> = all
            .into_iter()
            .map(|(name, entry)| (name, lock(&entry.state).subscribers.len()))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }

    /// Queues `frame` for `client`. A full queue drops a droppable (ephemeral) frame and
    /// counts it; for anything else it closes the connection as a slow consumer, because a
    /// silently missing message is worse than a reconnect.
    fn deliver(&self, client: &ClientHandle, frame: &Encoded, droppable: bool) {
        let m = &self.metrics;
        match client.outbox.try_send(frame.clone(), Class::Normal) {
            Ok(()) => {
                m.deliveries.fetch_add(1, Ordering::Relaxed);
            }
            // The session is ending; its own cleanup removes it.
            Err(SendError::Closed) => {}
            Err(SendError::Full) if droppable => {
                m.dropped_ephemeral.fetch_add(1, Ordering::Relaxed);
            }
            Err(SendError::Full) => {
                if client.outbox.kill(CloseCode::SLOW_CONSUMER) {
                    m.slow_consumers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the state
/// consistent, so a panic elsewhere must not take the whole hub down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

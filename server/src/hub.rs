//! The hub: this node's side of things. Which clients are connected, which of them are
//! subscribed to what, and their bounded queues. Streams, cross-node delivery and presence
//! are the [`Broker`]'s; the hub subscribes this node to a channel while it has local
//! subscribers and fans every delivery out to them: encoded once, the same bytes offered
//! to every subscriber's queue.
//!
//! Locking: the client map and the channel map are each behind a `std::sync::Mutex` held
//! only for a lookup; each channel has its own mutex, so deliveries to different channels
//! do not contend. No `std` lock is held across an `.await`. Membership changes (a node's
//! first subscriber arriving, its last one leaving) are serialized by an async mutex so the
//! node's broker subscription always matches its local subscribers; publishing never takes
//! it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use switchboard_protocol::{
    Channel, ClientId, CloseCode, Member, PresenceAction, Sender, ServerFrame, StreamPosition,
    codec,
};

use crate::broker::{Broker, BrokerError, BrokerHandler, Publication};

use crate::metrics::Metrics;
use crate::queue::{self, Inbox, Outbox};

/// How other parts of the server reach one connection: a shared pointer, so the registry
/// and every channel the connection is in hold one word each instead of a copy.
#[derive(Clone)]
pub struct ClientHandle(Arc<Client>);

/// One connection as the rest of the server sees it.
pub struct Client {
    /// The connection's id.
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
    /// The user id presence counts by: the token's user, else the connection itself.
    pub fn presence_key(&self) -> String {
        self.user_id.clone().unwrap_or_else(|| self.id.0.clone())
    }

    /// Queues an encoded frame. Returns false when the queue was full or closed: the caller
    /// decides whether that drops the frame (ephemeral) or the connection.
    fn offer(&self, text: &Utf8Bytes) -> bool {
        self.outbox.try_send(text.clone()).is_ok()
    }
}

/// Result of a subscribe.
pub enum SubscribeOutcome {
    /// Subscribed; the frame confirms it.
    Subscribed(ServerFrame),
    /// The client already was.
    AlreadySubscribed,
}

/// The server's shared state (a cheap clone).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every live connection, by id: the address book for `direct` and shutdown.
    clients: Mutex<HashMap<ClientId, ClientHandle>>,
    /// Channels with at least one local subscriber.
    channels: Mutex<HashMap<Channel, Arc<Mutex<ChannelState>>>>,
    /// Serializes changes of which channels this node is subscribed to at the broker.
    membership: tokio::sync::Mutex<()>,
    /// Streams, delivery and presence.
    broker: Arc<dyn Broker>,
    /// Distinguishes this process's connection ids from an earlier run's.
    epoch: String,
    /// Source of connection ids.
    next_id: AtomicU64,
    metrics: Arc<Metrics>,
}

struct ChannelState {
    /// The stream position after the last stored message delivered here: what a new
    /// subscriber is told, since it receives every later message.
    position: StreamPosition,
    /// Local subscribers, and whether each joined presence.
    subscribers: HashMap<ClientId, (ClientHandle, bool)>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Hands broker deliveries to the hub without keeping it alive.
struct Node(Weak<Inner>);

impl BrokerHandler for Node {
    fn deliver(
        &self,
        channel: &Channel,
        frame: &Utf8Bytes,
        position: Option<&StreamPosition>,
        droppable: bool,
        except: Option<&ClientId>,
    ) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        let Some(state) = lock(&inner.channels).get(channel).cloned() else {
            return;
        };
        let mut st = lock(&state);
        if let Some(pos) = position {
            st.position = pos.clone();
        }
        for (client, _) in st.subscribers.values() {
            if Some(&client.id) != except {
                inner.deliver(client, frame, droppable);
            }
        }
    }
}

impl Hub {
    /// An empty hub on `broker`.
    pub fn new(metrics: Arc<Metrics>, broker: Arc<dyn Broker>) -> Self {
        let inner = Arc::new(Inner {
            clients: Mutex::default(),
            channels: Mutex::default(),
            membership: tokio::sync::Mutex::new(()),
            broker,
            epoch: format!("{:x}", now_ms()),
            next_id: AtomicU64::new(1),
            metrics,
        });
        inner.broker.start(Arc::new(Node(Arc::downgrade(&inner))));
        Self { inner }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers a new connection and returns its handle and the receiving end of its
    /// outbound queue.
    pub fn connect(&self, user_id: Option<String>, capacity: usize) -> (ClientHandle, Inbox) {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = ClientId(format!("c{n:x}-{}", &self.inner.epoch));
        let (outbox, rx) = queue::bounded(capacity);
        let handle = ClientHandle(Arc::new(Client {
            id: id.clone(),
            user_id,
            outbox,
        }));
        lock(&self.inner.clients).insert(id, handle.clone());
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

    /// Frames waiting in the outbound queues, in total and in the deepest one.
    pub fn queue_depths(&self) -> crate::metrics::QueueDepths {
        let clients = lock(&self.inner.clients);
        let mut depths = crate::metrics::QueueDepths::default();
        for c in clients.values() {
            let depth = c.outbox.len();
            depths.total += depth;
            depths.max = depths.max.max(depth);
        }
        depths
    }

    /// Asks every connection to close with `code` (graceful shutdown).
    pub fn close_all(&self, code: CloseCode) {
        for client in lock(&self.inner.clients).values() {
            client.outbox.kill(code);
        }
    }

    /// Subscribes `client` to `channel`, joining presence with `presence` info when given.
    pub async fn subscribe(
        &self,
        client: &ClientHandle,
        channel: &Channel,
        presence: Option<Value>,
    ) -> Result<SubscribeOutcome, BrokerError> {
        let inner = &self.inner;
        let guard = inner.membership.lock().await;
        let existing = lock(&inner.channels).get(channel).cloned();
        let state = match existing {
            Some(state) => {
                if lock(&state).subscribers.contains_key(&client.id) {
                    return Ok(SubscribeOutcome::AlreadySubscribed);
                }
                state
            }
            None => {
                let position = inner.broker.subscribe(channel).await?;
                let state = Arc::new(Mutex::new(ChannelState {
                    position,
                    subscribers: HashMap::new(),
                }));
                lock(&inner.channels).insert(channel.clone(), state.clone());
                state
            }
        };
        // Presence first, so the others hear of the join and the joiner does not.
        if let Some(info) = &presence {
            let key = client.presence_key();
            let joined = inner
                .broker
                .presence_join(channel, &key, client.id.as_str(), info.clone())
                .await;
            let change = match joined {
                Ok(change) => change,
                Err(e) => {
                    // Nobody was added: leave no empty channel behind.
                    if lock(&state).subscribers.is_empty() {
                        lock(&inner.channels).remove(channel);
                        let _ = inner.broker.unsubscribe(channel).await;
                    }
                    return Err(e);
                }
            };
            if change.announce {
                let frame = ServerFrame::Presence {
                    channel: channel.clone(),
                    action: PresenceAction::Join,
                    member: change.member,
                    count: change.count,
                };
                inner.broker.broadcast(channel, encode(&frame)).await?;
            }
        }
        let position = {
            let mut st = lock(&state);
            st.subscribers
                .insert(client.id.clone(), (client.clone(), presence.is_some()));
            st.position.clone()
        };
        drop(guard);
        let snapshot = match presence {
            Some(_) => match inner.broker.presence(channel).await {
                Ok(members) => Some(members),
                Err(e) => {
                    // Undo, so the hub and the session agree the client is not subscribed.
                    let _ = self.unsubscribe(client, channel).await;
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(SubscribeOutcome::Subscribed(ServerFrame::Subscribed {
            channel: channel.clone(),
            position,
            recovered: false,
            presence: snapshot,
        }))
    }

    /// Removes `client` from `channel`. Returns false when it was not subscribed.
    pub async fn unsubscribe(
        &self,
        client: &ClientHandle,
        channel: &Channel,
    ) -> Result<bool, BrokerError> {
        let inner = &self.inner;
        let guard = inner.membership.lock().await;
        let Some(state) = lock(&inner.channels).get(channel).cloned() else {
            return Ok(false);
        };
        let (present, empty) = {
            let mut st = lock(&state);
            let Some((_, present)) = st.subscribers.remove(&client.id) else {
                return Ok(false);
            };
            (present, st.subscribers.is_empty())
        };
        if empty {
            lock(&inner.channels).remove(channel);
            inner.broker.unsubscribe(channel).await?;
        }
        drop(guard);
        if present {
            let key = client.presence_key();
            let change = inner
                .broker
                .presence_leave(channel, &key, client.id.as_str())
                .await?;
            if let Some(change) = change.filter(|c| c.announce) {
                let frame = ServerFrame::Presence {
                    channel: channel.clone(),
                    action: PresenceAction::Leave,
                    member: change.member,
                    count: change.count,
                };
                inner.broker.broadcast(channel, encode(&frame)).await?;
            }
        }
        Ok(true)
    }

    /// Publishes a message through the broker; returns its offset (None when ephemeral).
    pub async fn publish(&self, publication: Publication) -> Result<Option<u64>, BrokerError> {
        self.inner.broker.publish(publication).await
    }

    /// Delivers `data` to one connection. Returns false when it is not connected.
    pub fn direct(&self, to: &ClientId, from: Sender, data: Value) -> bool {
        let Some(target) = lock(&self.inner.clients).get(to).cloned() else {
            return false;
        };
        let text = encode(&ServerFrame::Direct { from, data });
        self.inner.deliver(&target, &text, false);
        true
    }

    /// The presence set of a channel, sorted by user id.
    pub async fn presence(&self, channel: &Channel) -> Result<Vec<Member>, BrokerError> {
        self.inner.broker.presence(channel).await
    }

    /// Every channel with local subscribers and their number, sorted by name.
    pub fn channels(&self) -> Vec<(Channel, usize)> {
        let all: Vec<_> = lock(&self.inner.channels)
            .iter()
            .map(|(name, state)| (name.clone(), state.clone()))
            .collect();
        let mut out: Vec<_> = all
            .into_iter()
            .map(|(name, state)| (name, lock(&state).subscribers.len()))
            .filter(|(_, n)| *n > 0)
            .collect();
        out.sort();
        out
    }
}

impl Inner {
    /// Queues `text` for `client`. A full queue drops a droppable (ephemeral) frame and
    /// counts it; for anything else it closes the connection as a slow consumer, because a
    /// silently missing message is worse than a reconnect.
    fn deliver(&self, client: &ClientHandle, text: &Utf8Bytes, droppable: bool) {
        let m = &self.metrics;
        if client.offer(text) {
            m.deliveries.fetch_add(1, Ordering::Relaxed);
        } else if client.outbox.is_closed() {
            // The session is ending; its own cleanup removes it.
        } else if droppable {
            m.dropped_ephemeral.fetch_add(1, Ordering::Relaxed);
        } else if client.outbox.kill(CloseCode::SLOW_CONSUMER) {
            m.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Encodes a frame once into shareable bytes.
pub fn encode(frame: &ServerFrame) -> Utf8Bytes {
    codec::encode(frame).into()
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the state
/// consistent, so a panic elsewhere must not take the whole hub down.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

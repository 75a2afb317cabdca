//! The hub: which clients are connected, which channels exist, who is subscribed, who is
//! present. Fan-out encodes a message once and hands the same bytes to every subscriber's
//! bounded queue.
//!
//! Locking: the client map and the channel map are each behind a `std::sync::Mutex` held
//! only for a lookup; each channel has its own mutex, so publishes to different channels
//! do not contend. No lock is held across an `.await`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;
use switchboard_protocol::{
    Channel, ClientId, CloseCode, Member, PresenceAction, Sender, ServerFrame, StreamPosition,
    codec,
};
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;

/// What a session's writer receives from the rest of the server.
pub type Outbox = mpsc::Sender<Utf8Bytes>;

/// How other parts of the server reach one connection.
#[derive(Clone)]
pub struct ClientHandle {
    /// The connection's id.
    pub id: ClientId,
    /// Its authenticated user, if any.
    pub user_id: Option<String>,
    /// Its bounded outbound queue of encoded frames.
    pub outbox: Outbox,
    /// Set when the connection must be closed from outside (slow consumer, shutdown).
    pub kill: Arc<Kill>,
}

impl ClientHandle {
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

/// A one-shot "close this connection with this code" signal.
#[derive(Default)]
pub struct Kill {
    code: OnceLock<CloseCode>,
    notify: Notify,
}

impl Kill {
    /// Asks the connection to close with `code`; the first request wins (and returns true).
    pub fn fire(&self, code: CloseCode) -> bool {
        let first = self.code.set(code).is_ok();
        if first {
            self.notify.notify_one();
        }
        first
    }

    /// Resolves with the code once [`Kill::fire`] was called.
    pub async fn fired(&self) -> CloseCode {
        loop {
            if let Some(code) = self.code.get() {
                return *code;
            }
            self.notify.notified().await;
        }
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
    /// Channels with at least one subscriber.
    channels: Mutex<HashMap<Channel, Arc<Mutex<ChannelState>>>>,
    /// Distinguishes this process's ids and epochs from an earlier run's.
    epoch: String,
    /// Source of connection ids and channel epochs.
    next_id: AtomicU64,
    /// Admitted connections per client IP (the per-IP cap) and in total (the global cap).
    admitted: Mutex<(usize, HashMap<IpAddr, usize>)>,
    metrics: Arc<Metrics>,
}

struct ChannelState {
    /// This incarnation of the channel's stream. A channel is dropped when its last
    /// subscriber leaves; when it comes back it starts at offset 0 with a new epoch, so no
    /// client mistakes the new offsets for ones it has seen.
    epoch: String,
    /// Offset of the last stored (non-ephemeral) message.
    offset: u64,
    /// Subscribers, and whether each joined presence.
    subscribers: HashMap<ClientId, (ClientHandle, bool)>,
    /// Presence, by user: the same user on several tabs is one member.
    members: HashMap<String, Member>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let epoch = format!("{:x}", now_ms());
        Self {
            inner: Arc::new(Inner {
                clients: Mutex::default(),
                channels: Mutex::default(),
                epoch,
                next_id: AtomicU64::new(1),
                admitted: Mutex::default(),
                metrics,
            }),
        }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers a new connection and returns its handle and the receiving end of its
    /// outbound queue.
    pub fn connect(
        &self,
        user_id: Option<String>,
        capacity: usize,
    ) -> (ClientHandle, mpsc::Receiver<Utf8Bytes>) {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = ClientId(format!("c{n:x}-{}", &self.inner.epoch));
        let (outbox, rx) = mpsc::channel(capacity);
        let handle = ClientHandle {
            id: id.clone(),
            user_id,
            outbox,
            kill: Arc::default(),
        };
        lock(&self.inner.clients).insert(id, handle.clone());
        (handle, rx)
    }

    /// Admits a connection from `ip` if both caps allow it. The returned guard gives the
    /// place back when dropped.
    pub fn admit(&self, ip: IpAddr, max_total: usize, max_per_ip: usize) -> Option<Admission> {
        let mut admitted = lock(&self.inner.admitted);
        let (total, per_ip) = &mut *admitted;
        let n = per_ip.entry(ip).or_default();
        if *total >= max_total || *n >= max_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Admission {
            hub: self.clone(),
            ip,
        })
    }

    /// Records the authenticated user of a connection (after `hello` with a token) and
    /// returns its updated handle. Only valid before the connection subscribes anywhere,
    /// since subscriptions hold copies of the handle.
    pub fn identify(&self, client: &ClientHandle, user_id: Option<String>) -> ClientHandle {
        let handle = ClientHandle {
            user_id,
            ..client.clone()
        };
        lock(&self.inner.clients).insert(handle.id.clone(), handle.clone());
        handle
    }

    /// Removes a connection from every channel it was in (announcing presence leaves) and
    /// from the registry.
    pub fn disconnect(&self, client: &ClientHandle, channels: impl IntoIterator<Item = Channel>) {
        for channel in channels {
            self.unsubscribe(client, &channel);
        }
        lock(&self.inner.clients).remove(&client.id);
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.inner.clients).len()
    }

    /// Asks every connection to close with `code` (graceful shutdown).
    pub fn close_all(&self, code: CloseCode) {
        for client in lock(&self.inner.clients).values() {
            client.kill.fire(code);
        }
    }

    fn channel(&self, name: &Channel) -> Arc<Mutex<ChannelState>> {
        lock(&self.inner.channels)
            .entry(name.clone())
            .or_insert_with(|| {
                let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                Arc::new(Mutex::new(ChannelState {
                    epoch: format!("{}-{n:x}", self.inner.epoch),
                    offset: 0,
                    subscribers: HashMap::new(),
                    members: HashMap::new(),
                }))
            })
            .clone()
    }

    fn existing_channel(&self, name: &Channel) -> Option<Arc<Mutex<ChannelState>>> {
        lock(&self.inner.channels).get(name).cloned()
    }

    /// Subscribes `client` to `channel`, joining presence with `presence` info when given.
    pub fn subscribe(
        &self,
        client: &ClientHandle,
        channel: &Channel,
        presence: Option<Value>,
    ) -> SubscribeOutcome {
        let state = self.channel(channel);
        let mut st = lock(&state);
        if st.subscribers.contains_key(&client.id) {
            return SubscribeOutcome::AlreadySubscribed;
        }
        st.subscribers
            .insert(client.id.clone(), (client.clone(), presence.is_some()));
        let snapshot = presence.map(|info| {
            let key = client.presence_key();
            let (member, joined) = match st.members.entry(key.clone()) {
                Entry::Occupied(mut e) => {
                    let m = e.get_mut();
                    m.connections += 1;
                    m.info = info;
                    (m.clone(), false)
                }
                Entry::Vacant(e) => (
                    e.insert(Member {
                        user_id: key,
                        info,
                        connections: 1,
                    })
                    .clone(),
                    true,
                ),
            };
            if joined {
                let frame = ServerFrame::Presence {
                    channel: channel.clone(),
                    action: PresenceAction::Join,
                    member,
                    count: st.members.len() as u32,
                };
                self.fan_out(&st, &frame, false, Some(&client.id));
            }
            let mut members: Vec<Member> = st.members.values().cloned().collect();
            members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            members
        });
        SubscribeOutcome::Subscribed(ServerFrame::Subscribed {
            channel: channel.clone(),
            position: StreamPosition {
                offset: st.offset,
                epoch: st.epoch.clone(),
            },
            recovered: false,
            presence: snapshot,
        })
    }

    /// Removes `client` from `channel`. Returns false when it was not subscribed.
    pub fn unsubscribe(&self, client: &ClientHandle, channel: &Channel) -> bool {
        let Some(state) = self.existing_channel(channel) else {
            return false;
        };
        let mut st = lock(&state);
        let Some((_, present)) = st.subscribers.remove(&client.id) else {
            return false;
        };
        let key = client.presence_key();
        if present && let Some(m) = st.members.get_mut(&key) {
            m.connections -= 1;
            if m.connections == 0 {
                let member = st.members.remove(&key).expect("present");
                let frame = ServerFrame::Presence {
                    channel: channel.clone(),
                    action: PresenceAction::Leave,
                    member,
                    count: st.members.len() as u32,
                };
                self.fan_out(&st, &frame, false, None);
            }
        }
        let empty = st.subscribers.is_empty();
        drop(st);
        if empty {
            self.forget_if_empty(channel);
        }
        true
    }

    /// Publishes `data` to `channel`; returns the message's offset (None when ephemeral).
    pub fn publish(
        &self,
        channel: &Channel,
        from: Option<Sender>,
        data: Value,
        ephemeral: bool,
    ) -> Option<u64> {
        let state = self.channel(channel);
        let mut st = lock(&state);
        let offset = (!ephemeral).then(|| {
            st.offset += 1;
            st.offset
        });
        let frame = ServerFrame::Message {
            channel: channel.clone(),
            offset,
            epoch: offset.map(|_| st.epoch.clone()),
            from,
            data,
            ts: now_ms(),
            ephemeral,
        };
        self.fan_out(&st, &frame, ephemeral, None);
        let empty = st.subscribers.is_empty();
        drop(st);
        if empty {
            self.forget_if_empty(channel);
        }
        offset
    }

    /// Drops a channel nobody is subscribed to, so channels never accumulate.
    fn forget_if_empty(&self, channel: &Channel) {
        let mut channels = lock(&self.inner.channels);
        // Re-check under the map lock: a subscriber may have arrived meanwhile.
        if channels
            .get(channel)
            .is_some_and(|s| lock(s).subscribers.is_empty())
        {
            channels.remove(channel);
        }
    }

    /// Delivers `data` to one connection. Returns false when it is not connected.
    pub fn direct(&self, to: &ClientId, from: Sender, data: Value) -> bool {
        let Some(target) = lock(&self.inner.clients).get(to).cloned() else {
            return false;
        };
        let text = encode(&ServerFrame::Direct { from, data });
        self.deliver(&target, &text, false);
        true
    }

    /// The presence set of a channel, sorted by user id.
    pub fn presence(&self, channel: &Channel) -> Vec<Member> {
        let mut members: Vec<Member> = self
            .existing_channel(channel)
            .map(|s| lock(&s).members.values().cloned().collect())
            .unwrap_or_default();
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        members
    }

    /// Every channel with its subscriber count, sorted by name.
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

    fn fan_out(
        &self,
        st: &ChannelState,
        frame: &ServerFrame,
        droppable: bool,
        except: Option<&ClientId>,
    ) {
        let text = encode(frame);
        for (client, _) in st.subscribers.values() {
            if Some(&client.id) != except {
                self.deliver(client, &text, droppable);
            }
        }
    }

    /// Queues `text` for `client`. A full queue drops a droppable (ephemeral) frame and
    /// counts it; for anything else it closes the connection as a slow consumer, because a
    /// silently missing message is worse than a reconnect.
    fn deliver(&self, client: &ClientHandle, text: &Utf8Bytes, droppable: bool) {
        let m = self.metrics();
        if client.offer(text) {
            m.deliveries.fetch_add(1, Ordering::Relaxed);
        } else if client.outbox.is_closed() {
            // The session is ending; its own cleanup removes it.
        } else if droppable {
            m.dropped_ephemeral.fetch_add(1, Ordering::Relaxed);
        } else if client.kill.fire(CloseCode::SLOW_CONSUMER) {
            m.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A connection's place under the connection caps; released on drop.
pub struct Admission {
    hub: Hub,
    ip: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut admitted = lock(&self.hub.inner.admitted);
        let (total, per_ip) = &mut *admitted;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
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

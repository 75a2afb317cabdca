//! The in-process broker: one node, no external service. Streams keep their offset while
//! the node is subscribed and keep no history; when the node unsubscribes a stream is
//! dropped, and it comes back with a new epoch. Use a cross-node broker to run several
//! servers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::ws::Utf8Bytes;
use futures::future::BoxFuture;
use serde_json::Value;
use switchboard_protocol::{Channel, Member, ServerFrame, StreamPosition, codec};

use super::{Broker, BrokerError, BrokerHandler, DEDUPE_WINDOW, PresenceChange, Publication};
use crate::hub::now_ms;

/// The default broker: everything in this process.
pub struct MemoryBroker {
    /// The hub to deliver to (set once by [`Broker::start`]).
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// Streams of the channels this node is subscribed to. The map is locked only to find a
    /// stream; each stream has its own lock, held while a message is numbered and
    /// delivered, so channels do not contend with each other.
    streams: Mutex<HashMap<Channel, Arc<Mutex<Stream>>>>,
    /// Presence per channel, by user.
    presence: Mutex<HashMap<Channel, HashMap<String, Present>>>,
    /// Distinguishes this process's epochs from an earlier run's.
    epoch_base: String,
    /// Makes every stream incarnation's epoch unique within the process.
    next_epoch: AtomicU64,
}

struct Stream {
    epoch: String,
    offset: u64,
    /// Recent publish ids with their offsets, oldest first (see [`DEDUPE_WINDOW`]).
    recent: VecDeque<(String, u64)>,
}

struct Present {
    info: Value,
    conns: HashSet<String>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A broker with no channels.
    pub fn new() -> Self {
        Self {
            handler: OnceLock::new(),
            streams: Mutex::default(),
            presence: Mutex::default(),
            epoch_base: format!("{:x}", now_ms()),
            next_epoch: AtomicU64::new(1),
        }
    }

    fn new_stream(&self) -> Stream {
        let n = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        Stream {
            epoch: format!("{}-{n:x}", self.epoch_base),
            offset: 0,
            recent: VecDeque::new(),
        }
    }

    fn stream(&self, channel: &Channel) -> Option<Arc<Mutex<Stream>>> {
        lock(&self.streams).get(channel).cloned()
    }
}

fn member(user: &str, p: &Present) -> Member {
    Member {
        user_id: user.to_owned(),
        info: p.info.clone(),
        connections: p.conns.len() as u32,
    }
}

impl Broker for MemoryBroker {
    fn start(&self, handler: Arc<dyn BrokerHandler>) {
        assert!(
            self.handler.set(handler).is_ok(),
            "MemoryBroker::start called twice"
        );
    }

    fn subscribe<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<StreamPosition, BrokerError>> {
        let stream = lock(&self.streams)
            .entry(channel.clone())
            .or_insert_with(|| Arc::new(Mutex::new(self.new_stream())))
            .clone();
        let st = lock(&stream);
        let pos = StreamPosition {
            offset: st.offset,
            epoch: st.epoch.clone(),
        };
        Box::pin(async move { Ok(pos) })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        lock(&self.streams).remove(channel);
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, p: Publication) -> BoxFuture<'_, Result<Option<u64>, BrokerError>> {
        // A channel nobody on this node listens to gets a throwaway stream: the message is
        // numbered and goes nowhere, as in any pub/sub without subscribers.
        let shared = self.stream(&p.channel);
        let scratch = shared.is_none().then(|| Mutex::new(self.new_stream()));
        let cell = shared.as_deref().or(scratch.as_ref()).expect("one of them");
        let mut st = lock(cell);
        let stream = &mut *st;
        if !p.ephemeral
            && let Some(id) = &p.id
            && let Some((_, offset)) = stream.recent.iter().find(|(seen, _)| seen == id)
        {
            let offset = *offset;
            return Box::pin(async move { Ok(Some(offset)) });
        }
        let position = (!p.ephemeral).then(|| {
            stream.offset += 1;
            if let Some(id) = &p.id {
                if stream.recent.len() == DEDUPE_WINDOW {
                    stream.recent.pop_front();
                }
                stream.recent.push_back((id.clone(), stream.offset));
            }
            StreamPosition {
                offset: stream.offset,
                epoch: stream.epoch.clone(),
            }
        });
        if shared.is_some()
            && let Some(handler) = self.handler.get()
        {
            let frame = ServerFrame::Message {
                channel: p.channel.clone(),
                offset: position.as_ref().map(|pos| pos.offset),
                epoch: position.as_ref().map(|pos| pos.epoch.clone()),
                from: p.from,
                data: p.data,
                ts: now_ms(),
                ephemeral: p.ephemeral,
            };
            let text: Utf8Bytes = codec::encode(&frame).into();
            // Delivered under the state lock: per-channel order is publish order.
            handler.deliver(
                &p.channel,
                &text,
                position.as_ref(),
                p.ephemeral,
                p.except.as_ref(),
            );
        }
        drop(st);
        let offset = position.map(|pos| pos.offset);
        Box::pin(async move { Ok(offset) })
    }

    fn broadcast<'a>(
        &'a self,
        channel: &'a Channel,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        if let Some(stream) = self.stream(channel)
            && let Some(handler) = self.handler.get()
        {
            // Under the stream's lock, so it is ordered with the channel's messages.
            let _order = lock(&stream);
            handler.deliver(channel, &frame, None, false, None);
        }
        Box::pin(async { Ok(()) })
    }

    fn presence_join<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
        info: Value,
    ) -> BoxFuture<'a, Result<PresenceChange, BrokerError>> {
        let mut presence = lock(&self.presence);
        let members = presence.entry(channel.clone()).or_default();
        let present = members.entry(user.to_owned()).or_insert_with(|| Present {
            info: Value::Null,
            conns: HashSet::new(),
        });
        let announce = present.conns.is_empty();
        present.conns.insert(conn.to_owned());
        present.info = info;
        let change = PresenceChange {
            member: member(user, present),
            count: members.len() as u32,
            announce,
        };
        Box::pin(async move { Ok(change) })
    }

    fn presence_leave<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        let mut presence = lock(&self.presence);
        let change = presence.get_mut(channel).and_then(|members| {
            let present = members.get_mut(user)?;
            if !present.conns.remove(conn) {
                return None;
            }
            let member = member(user, present);
            let announce = present.conns.is_empty();
            if announce {
                members.remove(user);
            }
            Some(PresenceChange {
                member,
                count: members.len() as u32,
                announce,
            })
        });
        if presence.get(channel).is_some_and(HashMap::is_empty) {
            presence.remove(channel);
        }
        Box::pin(async move { Ok(change) })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        let mut members: Vec<Member> = lock(&self.presence)
            .get(channel)
            .map(|m| m.iter().map(|(user, p)| member(user, p)).collect())
            .unwrap_or_default();
        members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Box::pin(async move { Ok(members) })
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! The in-process broker. One [`MemoryBroker`] is one node; [`MemoryBroker::node`] makes
//! another node on the same in-process backend (streams, presence, subscriptions), which
//! lets tests run two hubs against one broker without a network.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use futures::future::BoxFuture;
use switchboard_protocol::{Channel, ClientId, Member, Payload};

use super::{Broker, BrokerError, BrokerHandler, Delivery, PresenceChange, Publication, Published};
use crate::clock::now_ms;
use crate::frame::{Encoded, message_body};
use crate::history::{History, MemoryHistory, Store};

/// A node on an in-process backend.
pub struct MemoryBroker {
    bus: Arc<Bus>,
    node: Arc<Node>,
}

/// One node's end: where its deliveries go.
#[derive(Default)]
struct Node {
    handler: OnceLock<Arc<dyn BrokerHandler>>,
}

/// What the nodes of one backend share.
struct Bus {
    history: Arc<dyn Store>,
    /// Channels that have subscribed nodes or a publish in progress.
    channels: Mutex<HashMap<Channel, Arc<ChannelBus>>>,
    /// Presence per channel, by user.
    presence: Mutex<HashMap<Channel, BTreeMap<String, Present>>>,
}

struct ChannelBus {
    /// The channel's deliveries in the order they were numbered. A stored message waits
    /// here until the store has it; whoever finds the front ready delivers it, so every
    /// node gets the channel's messages in offset order while several publishes wait for
    /// the same group commit.
    order: Mutex<Ordered>,
    /// The nodes subscribed to the channel.
    nodes: Mutex<Vec<Arc<Node>>>,
}

#[derive(Default)]
struct Ordered {
    queue: VecDeque<Slot>,
    next_slot: u64,
}

struct Slot {
    id: u64,
    delivery: Delivery,
    state: SlotState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Numbered, not stored yet.
    Waiting,
    /// Ready to deliver.
    Ready,
    /// The store failed it: skipped.
    Failed,
}

impl Ordered {
    fn push(&mut self, delivery: Delivery, state: SlotState) -> u64 {
        self.next_slot += 1;
        self.queue.push_back(Slot {
            id: self.next_slot,
            delivery,
            state,
        });
        self.next_slot
    }

    fn settle(&mut self, id: u64, state: SlotState) {
        if let Some(slot) = self.queue.iter_mut().find(|s| s.id == id) {
            slot.state = state;
        }
    }

    /// The deliveries that are now due, in order.
    fn due(&mut self) -> Vec<Delivery> {
        let mut due = Vec::new();
        while self
            .queue
            .front()
            .is_some_and(|s| s.state != SlotState::Waiting)
        {
            let slot = self.queue.pop_front().expect("checked");
            if slot.state == SlotState::Ready {
                due.push(slot.delivery);
            }
        }
        due
    }
}

struct Present {
    /// The member's info, as JSON text: its size is what `limits.max_presence_bytes` caps.
    info: Payload,
    conns: HashSet<String>,
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A node on a new backend whose streams live in a [`MemoryHistory`] with default
    /// retention.
    pub fn new() -> Self {
        Self::with_history(Arc::new(MemoryHistory::default()))
    }

    /// A node on a new backend with its streams in `history`.
    pub fn with_history(history: Arc<dyn Store>) -> Self {
        Self {
            bus: Arc::new(Bus {
                history,
                channels: Mutex::default(),
                presence: Mutex::default(),
            }),
            node: Arc::default(),
        }
    }

    /// Another node on the same backend.
    pub fn node(&self) -> Self {
        Self {
            bus: self.bus.clone(),
            node: Arc::default(),
        }
    }
}

impl Bus {
    fn entry(&self, channel: &Channel) -> Arc<ChannelBus> {
        lock(&self.channels)
            .entry(channel.clone())
            .or_insert_with(|| {
                Arc::new(ChannelBus {
                    order: Mutex::default(),
                    nodes: Mutex::default(),
                })
            })
            .clone()
    }

    /// Forgets `channel`'s entry if no node is subscribed and nobody else holds it.
    fn release(&self, channel: &Channel, entry: Arc<ChannelBus>) {
        let mut channels = lock(&self.channels);
        // Ours and the map's: nobody else is between `entry` and `release`.
        if Arc::strong_count(&entry) == 2 && lock(&entry.nodes).is_empty() {
            channels.remove(channel);
        }
    }

    fn deliver(&self, entry: &ChannelBus, channel: &Channel, delivery: &Delivery) {
        let nodes = lock(&entry.nodes).clone();
        for node in nodes {
            if let Some(handler) = node.handler.get() {
                handler.deliver(channel, delivery);
            }
        }
    }

    /// Queues a delivery behind the channel's stored messages still waiting, and delivers
    /// what is due. Under the channel's lock: deliveries reach the nodes in queue order.
    fn enqueue(&self, entry: &ChannelBus, channel: &Channel, delivery: Delivery) {
        let mut order = lock(&entry.order);
        order.push(delivery, SlotState::Ready);
        for d in order.due() {
            self.deliver(entry, channel, &d);
        }
    }

    /// Marks a slot stored (or failed) and delivers what is due.
    fn settle(&self, entry: &ChannelBus, channel: &Channel, slot: u64, stored: bool) {
        let mut order = lock(&entry.order);
        let state = if stored {
            SlotState::Ready
        } else {
            SlotState::Failed
        };
        order.settle(slot, state);
        for d in order.due() {
            self.deliver(entry, channel, &d);
        }
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
            self.node.handler.set(handler).is_ok(),
            "MemoryBroker::start called twice"
        );
    }

    fn subscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        let entry = self.bus.entry(channel);
        {
            let mut nodes = lock(&entry.nodes);
            if !nodes.iter().any(|n| Arc::ptr_eq(n, &self.node)) {
                nodes.push(self.node.clone());
            }
        }
        self.bus.release(channel, entry);
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a Channel) -> BoxFuture<'a, Result<(), BrokerError>> {
        let entry = self.bus.entry(channel);
        lock(&entry.nodes).retain(|n| !Arc::ptr_eq(n, &self.node));
        self.bus.release(channel, entry);
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, p: Publication) -> BoxFuture<'_, Result<Published, BrokerError>> {
        Box::pin(async move {
            let bus = self.bus.clone();
            let entry = bus.entry(&p.channel);
            // Encoded before the channel's lock is taken: the lock covers numbering and
            // queueing only.
            let body = message_body(&p.channel, p.from, p.data, now_ms(), p.ephemeral);
            if p.ephemeral {
                let delivery = Delivery {
                    frame: Encoded::from_bytes(body).expect("encoded JSON is UTF-8"),
                    position: None,
                    droppable: true,
                    except: p.except,
                };
                bus.enqueue(&entry, &p.channel, delivery);
                bus.release(&p.channel, entry);
                return Ok(Published {
                    position: None,
                    duplicate: false,
                });
            }
            // Numbered and queued under the lock, so queue order is offset order.
            let numbered = {
                let mut order = lock(&entry.order);
                bus.history
                    .append(&p.channel, p.dedupe_key.as_deref(), body)
                    .map(|appending| {
                        let slot = appending.appended.frame.clone().map(|frame| {
                            let delivery = Delivery {
                                frame,
                                position: Some(appending.appended.position.clone()),
                                droppable: false,
                                except: p.except,
                            };
                            order.push(delivery, SlotState::Waiting)
                        });
                        (appending, slot)
                    })
            };
            let (appending, slot) = match numbered {
                Ok(numbered) => numbered,
                Err(e) => {
                    bus.release(&p.channel, entry);
                    return Err(e.into());
                }
            };
            let published = Published {
                position: Some(appending.appended.position.clone()),
                duplicate: appending.appended.duplicate,
            };
            let channel = p.channel.clone();
            // Settling is detached from this future: a publisher that goes away before the
            // store answers must not leave the channel's queue stuck behind its slot.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let settle = {
                let bus = bus.clone();
                let entry = entry.clone();
                async move {
                    let stored = appending.stored.await;
                    if let Some(slot) = slot {
                        bus.settle(&entry, &channel, slot, stored.is_ok());
                    }
                    bus.release(&channel, entry);
                    let _ = tx.send(stored);
                }
            };
            let mut settle = Box::pin(settle);
            // A store that answers at once (memory) needs no task.
            let pending = {
                let waker = futures::task::noop_waker();
                let mut cx = std::task::Context::from_waker(&waker);
                settle.as_mut().poll(&mut cx).is_pending()
            };
            if pending {
                tokio::spawn(settle);
            }
            match rx.await {
                Ok(Ok(())) => Ok(published),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(BrokerError("the store did not answer".into())),
            }
        })
    }

    fn broadcast<'a>(
        &'a self,
        channel: &'a Channel,
        frame: Encoded,
        except: Option<ClientId>,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let entry = self.bus.entry(channel);
        let delivery = Delivery {
            frame,
            position: None,
            droppable: false,
            except,
        };
        self.bus.enqueue(&entry, channel, delivery);
        self.bus.release(channel, entry);
        Box::pin(async { Ok(()) })
    }

    fn history(&self) -> &dyn History {
        &*self.bus.history
    }

    fn presence_join<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
        info: Payload,
        max_members: usize,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        let mut presence = lock(&self.bus.presence);
        let members = presence.entry(channel.clone()).or_default();
        if !members.contains_key(user) && members.len() >= max_members {
            if members.is_empty() {
                presence.remove(channel);
            }
            return Box::pin(async { Ok(None) });
        }
        let present = members.entry(user.to_owned()).or_insert_with(|| Present {
            info: Payload::null(),
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
        Box::pin(async move { Ok(Some(change)) })
    }

    fn presence_leave<'a>(
        &'a self,
        channel: &'a Channel,
        user: &'a str,
        conn: &'a str,
    ) -> BoxFuture<'a, Result<Option<PresenceChange>, BrokerError>> {
        let mut presence = lock(&self.bus.presence);
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
        if presence.get(channel).is_some_and(BTreeMap::is_empty) {
            presence.remove(channel);
        }
        Box::pin(async move { Ok(change) })
    }

    fn presence<'a>(
        &'a self,
        channel: &'a Channel,
    ) -> BoxFuture<'a, Result<Vec<Member>, BrokerError>> {
        // A BTreeMap: already sorted by user id.
        let members: Vec<Member> = lock(&self.bus.presence)
            .get(channel)
            .map(|m| m.iter().map(|(user, p)| member(user, p)).collect())
            .unwrap_or_default();
        Box::pin(async move { Ok(members) })
    }
}

/// Locks a mutex, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

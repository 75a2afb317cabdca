//! The handles the application holds: [`WebSocket`] (the connection as signals and
//! methods) and [`Subscription`] (one holder of a channel, typed). Glue only: every
//! decision is the client core's; this file turns its events into signals, futures and
//! callbacks.
//!
//! Ownership: the connection's state lives with the reactive owner that called
//! `use_websocket`. A subscription's signals live with the owner that subscribed, and the
//! channel itself belongs to the connection, reference-counted by its holders: when one
//! component unmounts, the others keep their signals and their messages.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use leptos::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_client::{
    Action, ClientCore, ConnState, Event, Message, PublishError, PublishId, PublishResult,
    Recovery, RequestError, SendError, SubKey, SubOptions, SubState, VecMap,
};
use switchboard_protocol::{
    Channel, ClientFrame, ClientId, CloseCode, Member, Payload, PresenceAction, RequestId, Sender,
    codec, limits::validate_channel,
};

/// A message received on a subscription, its data decoded as `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Received<T> {
    /// Stream offset (`None` for ephemeral messages).
    pub offset: Option<u64>,
    /// Who sent it (`None` when the server did).
    pub from: Option<Sender>,
    /// The data.
    pub data: T,
    /// Server time of publication, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Typing indicators and the like.
    pub ephemeral: bool,
}

/// A message whose data did not decode as the subscription's type.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    /// The message as received.
    pub data: Payload,
    /// Why it did not decode.
    pub error: String,
}

/// A presence event on a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEvent {
    /// Join or leave.
    pub action: PresenceAction,
    /// Who.
    pub member: Member,
}

/// A publish an earlier run of the page left unacked, queued again from `localStorage`
/// (see [`crate::UseWebSocketOptions::persist_outbox`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RestoredPublish {
    /// Its id (the same as in the earlier run, so the server never stores it twice).
    pub id: PublishId,
    /// The channel.
    pub channel: String,
    /// The data.
    pub data: Payload,
}

/// What a channel's holders hear.
pub(crate) enum ChannelEvent<'a> {
    Message(&'a Message),
    State(&'a SubState),
    Members(&'a [Member]),
    Presence(&'a PresenceEvent),
}

type Listener = Rc<dyn Fn(&ChannelEvent<'_>)>;
/// A subscription's message callbacks.
type Callbacks<T> = StoredValue<Vec<Rc<dyn Fn(&Result<Received<T>, DecodeError>)>>, LocalStorage>;
/// A subscription's state callbacks.
type StateCallbacks = StoredValue<Vec<Rc<dyn Fn(&SubState)>>, LocalStorage>;
type DirectListener = Rc<dyn Fn(&Sender, &Payload)>;

/// What the handles and the driver share (not `Send`: the browser has one thread).
pub(crate) struct Conn {
    pub(crate) core: ClientCore,
    publishes: VecMap<RequestId, oneshot::Sender<PublishResult>>,
    requests: VecMap<RequestId, oneshot::Sender<Result<Payload, RequestError>>>,
    /// The holders of each channel, by their key.
    channels: VecMap<Channel, VecMap<SubKey, Listener>>,
    /// Each room's members as last heard, for holders that join later.
    members: VecMap<Channel, Vec<Member>>,
    directs: Vec<(u64, DirectListener)>,
    next_listener: u64,
    /// Wakes the driver: the core has something to send or a new deadline (installed by
    /// the driver; wakes that come before it looks are one).
    pub(crate) wake: Option<Rc<dyn Fn()>>,
    pub(crate) message_buffer: usize,
    pub(crate) render_per_frame: bool,
    /// The `localStorage` key of the unacked publishes, and whether they changed since
    /// they were last written there.
    pub(crate) persist: Option<String>,
    persist_dirty: bool,
}

impl Conn {
    pub(crate) fn new(core: ClientCore, message_buffer: usize, render_per_frame: bool) -> Self {
        Self {
            persist: None,
            persist_dirty: false,
            core,
            publishes: VecMap::new(),
            requests: VecMap::new(),
            channels: VecMap::new(),
            members: VecMap::new(),
            directs: Vec::new(),
            next_listener: 0,
            wake: None,
            message_buffer: message_buffer.max(1),
            render_per_frame,
        }
    }

    /// Tells the driver to look at the core again.
    pub(crate) fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake();
        }
    }
}

/// Milliseconds on the driver's monotonic clock: `performance.now()` in the browser.
#[cfg(target_arch = "wasm32")]
pub(crate) fn clock_ms() -> u64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
        .max(0.0) as u64
}

/// Milliseconds on a monotonic clock (outside a browser: during SSR, in native tests).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// The wall clock, milliseconds since the Unix epoch.
pub(crate) fn wall_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_millis() as f64)
    }
}

/// The connection handle: `Copy`, cheap to pass to components and to put in context.
#[derive(Clone, Copy)]
pub struct WebSocket {
    /// Connecting, connected, reconnecting or closed.
    pub state: ReadSignal<ConnState>,
    /// The last problem, for display.
    pub last_error: ReadSignal<Option<String>>,
    /// The last close: its code and reason.
    pub last_close: ReadSignal<Option<(CloseCode, String)>>,
    /// This connection's id, from `welcome`.
    pub client_id: ReadSignal<Option<String>>,
    /// The authenticated user, from `welcome`.
    pub user_id: ReadSignal<Option<String>>,
    /// Last measured round-trip time, in milliseconds.
    pub rtt_ms: ReadSignal<Option<f64>>,
    /// The server's clock minus this browser's (milliseconds), from `welcome` and `pong`.
    pub clock_offset_ms: ReadSignal<f64>,
    /// Frames waiting to be sent, plus publishes sent and not yet acked.
    pub queued: ReadSignal<u64>,
    /// Publishes dropped by the overflow policy.
    pub dropped: ReadSignal<u64>,
    /// Reconnections so far.
    pub reconnects: ReadSignal<u64>,
    /// WebSocket messages received.
    pub frames_in: ReadSignal<u64>,
    /// WebSocket messages sent.
    pub frames_out: ReadSignal<u64>,
    /// The last 50 direct messages to this connection, oldest first.
    pub directs: ReadSignal<VecDeque<(Sender, Payload)>>,
    /// Publishes an earlier run of the page left unacked and that are not acked yet
    /// (with [`crate::UseWebSocketOptions::persist_outbox`]): show them as pending.
    pub restored: ReadSignal<Vec<RestoredPublish>>,
    pub(crate) conn: StoredValue<Conn, LocalStorage>,
    pub(crate) set: StoredValue<Setters>,
}

#[derive(Clone, Copy)]
pub(crate) struct Setters {
    pub(crate) state: WriteSignal<ConnState>,
    pub(crate) last_error: WriteSignal<Option<String>>,
    pub(crate) last_close: WriteSignal<Option<(CloseCode, String)>>,
    pub(crate) client_id: WriteSignal<Option<String>>,
    pub(crate) user_id: WriteSignal<Option<String>>,
    pub(crate) rtt_ms: WriteSignal<Option<f64>>,
    pub(crate) clock_offset_ms: WriteSignal<f64>,
    pub(crate) queued: WriteSignal<u64>,
    pub(crate) dropped: WriteSignal<u64>,
    pub(crate) reconnects: WriteSignal<u64>,
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) frames_in: WriteSignal<u64>,
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) frames_out: WriteSignal<u64>,
    pub(crate) directs: WriteSignal<VecDeque<(Sender, Payload)>>,
    pub(crate) restored: WriteSignal<Vec<RestoredPublish>>,
}

impl WebSocket {
    /// The handle for a new connection state, under the current owner.
    pub(crate) fn new(conn: Conn) -> Self {
        let (state, s_state) = signal(ConnState::Closed);
        let (last_error, s_last_error) = signal(None);
        let (last_close, s_last_close) = signal(None);
        let (client_id, s_client_id) = signal(None);
        let (user_id, s_user_id) = signal(None);
        let (rtt_ms, s_rtt) = signal(None);
        let (clock_offset_ms, s_offset) = signal(0.0);
        let (queued, s_queued) = signal(0u64);
        let (dropped, s_dropped) = signal(0u64);
        let (reconnects, s_reconnects) = signal(0u64);
        let (frames_in, s_frames_in) = signal(0u64);
        let (frames_out, s_frames_out) = signal(0u64);
        let (directs, s_directs) = signal(VecDeque::new());
        let (restored, s_restored) = signal(Vec::new());
        Self {
            restored,
            state,
            last_error,
            last_close,
            client_id,
            user_id,
            rtt_ms,
            clock_offset_ms,
            queued,
            dropped,
            reconnects,
            frames_in,
            frames_out,
            directs,
            conn: StoredValue::new_local(conn),
            set: StoredValue::new(Setters {
                state: s_state,
                last_error: s_last_error,
                last_close: s_last_close,
                client_id: s_client_id,
                user_id: s_user_id,
                rtt_ms: s_rtt,
                clock_offset_ms: s_offset,
                queued: s_queued,
                dropped: s_dropped,
                reconnects: s_reconnects,
                frames_in: s_frames_in,
                frames_out: s_frames_out,
                directs: s_directs,
                restored: s_restored,
            }),
        }
    }

    /// Runs `f` on the core at the current time and wakes the driver. `None` when the
    /// connection's owner is gone: callers turn that into an error, never a panic.
    fn call<R>(&self, f: impl FnOnce(&mut Conn, u64) -> R) -> Option<R> {
        let now = clock_ms();
        let r = self.conn.try_update_value(|c| {
            let r = f(c, now);
            c.wake();
            r
        })?;
        pump(*self);
        Some(r)
    }

    /// Publishes `data` (any serde type) on `channel`: stored, kept while offline, sent
    /// again after a reconnect until the server acks it. Await the returned [`Publish`]
    /// for the offset or the refusal, or drop it (fire and forget).
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Publish, SendError> {
        self.publish_with(channel, data, false)
    }

    /// Like [`WebSocket::publish`], not delivered back to this connection.
    pub fn publish_to_others<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Publish, SendError> {
        self.publish_with(channel, data, true)
    }

    fn publish_with<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
        skip_self: bool,
    ) -> Result<Publish, SendError> {
        let data = Payload::new(data).map_err(|_| SendError::Unserializable)?;
        let (tx, rx) = oneshot::channel();
        self.call(|c, now| {
            let id = c
                .core
                .publish(&Channel::from(channel), data, false, skip_self, now)?;
            c.publishes.insert(id, tx);
            c.persist_dirty = c.persist.is_some();
            Ok(())
        })
        .unwrap_or(Err(SendError::Closed))?;
        Ok(Publish(rx))
    }

    /// Publishes an ephemeral message (typing, cursors) to the others: only while
    /// connected, never queued or stored.
    pub fn publish_ephemeral<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<(), SendError> {
        let data = Payload::new(data).map_err(|_| SendError::Unserializable)?;
        self.call(|c, now| {
            c.core
                .publish(&Channel::from(channel), data, true, true, now)
                .map(|_| ())
        })
        .unwrap_or(Err(SendError::Closed))
    }

    /// Calls `method` with `params`; resolves with the result decoded as `R`, the server's
    /// error, a timeout, or a disconnect. Dropping the future forgets the request.
    pub fn request<P: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> impl Future<Output = Result<R, RequestError>> + use<P, R> {
        let ws = *self;
        let queued = Payload::new(params)
            .map_err(|e| RequestError::Decode(e.to_string()))
            .and_then(|params| {
                let (tx, rx) = oneshot::channel();
                ws.call(|c, now| {
                    let id = c.core.request(method, params, None, now)?;
                    c.requests.insert(id.clone(), tx);
                    Ok((id, rx))
                })
                .unwrap_or(Err(SendError::Closed))
                .map_err(RequestError::NotSent)
            });
        async move {
            let (id, rx) = queued?;
            let guard = ForgetRequest(ws, Some(id));
            let result = rx.await.map_err(|_| RequestError::Closed)?;
            guard.disarm();
            result?
                .parse::<R>()
                .map_err(|e| RequestError::Decode(e.to_string()))
        }
    }

    /// Subscribes this component to `channel`, its messages decoded as `T` (use
    /// `serde_json::Value` to take anything). It lasts until the component's owner is
    /// disposed or [`Subscription::unsubscribe`]; the last holder unsubscribes.
    pub fn subscribe<T>(&self, channel: &str) -> Subscription<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        Subscription::new(*self, Channel::from(channel), SubOptions::default())
    }

    /// Subscribes with every option: presence info, and `rewind` (the channel's latest
    /// stored messages first, e.g. a chat's recent lines; again after a reset).
    pub fn subscribe_with<T>(&self, channel: &str, opts: SubOptions) -> Subscription<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        Subscription::new(*self, Channel::from(channel), opts)
    }

    /// Joins `channel` as a room: subscribes and enters its presence set with `info`.
    pub fn join<T, I>(&self, channel: &str, info: &I) -> Subscription<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
        I: Serialize + ?Sized,
    {
        let info = match Payload::new(info) {
            Ok(info) => Some(info),
            Err(e) => {
                // Subscribed anyway, so the messages come; say why presence was not joined.
                if let Some(set) = self.setters() {
                    set.last_error
                        .try_set(Some(format!("presence info does not serialize: {e}")));
                }
                None
            }
        };
        let opts = SubOptions {
            presence: info,
            rewind: 0,
        };
        Subscription::new(*self, Channel::from(channel), opts)
    }

    /// Sends `data` to one connection (WebRTC signaling).
    pub fn direct<T: Serialize + ?Sized>(&self, to: &str, data: &T) -> Result<(), SendError> {
        let data = Payload::new(data).map_err(|_| SendError::Unserializable)?;
        self.call(|c, now| c.core.direct(&ClientId::from(to), data, now).map(|_| ()))
            .unwrap_or(Err(SendError::Closed))
    }

    /// Calls `f` with every direct message to this connection, from now on, until the
    /// current owner is disposed (every message, not a bounded buffer: WebRTC signaling
    /// needs them all).
    pub fn on_direct(&self, f: impl Fn(&Sender, &Payload) + 'static) {
        let ws = *self;
        let id = self.conn.try_update_value(|c| {
            c.next_listener += 1;
            c.directs.push((c.next_listener, Rc::new(f)));
            c.next_listener
        });
        if let Some(id) = id {
            on_cleanup(move || {
                ws.conn
                    .try_update_value(|c| c.directs.retain(|(i, _)| *i != id));
            });
        }
    }

    /// Connects (again) after [`WebSocket::close`], a refusal, or `immediate: false`.
    pub fn open(&self) {
        self.call(|c, now| c.core.open(now));
    }

    /// Disconnects and stays offline until [`WebSocket::open`]; publishes made meanwhile
    /// are queued (the "go offline" switch).
    pub fn close(&self) {
        self.call(|c, now| c.core.close(now));
    }

    /// Retry now if waiting to reconnect (online again, tab visible again).
    pub fn kick(&self) {
        self.call(|c, now| c.core.kick(now));
    }

    /// The server's clock now, milliseconds since the Unix epoch: compare message times
    /// with this, not with the browser's clock.
    pub fn server_now(&self) -> f64 {
        wall_ms() + self.clock_offset_ms.get_untracked()
    }

    fn setters(&self) -> Option<Setters> {
        self.set.try_get_value()
    }
}

/// A publish's outcome: its offset, or why it failed. Dropping it is fire-and-forget.
pub struct Publish(oneshot::Receiver<PublishResult>);

impl Future for Publish {
    type Output = PublishResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(PublishError::Closed)))
    }
}

struct ForgetRequest(WebSocket, Option<RequestId>);

impl ForgetRequest {
    fn disarm(mut self) {
        self.1 = None;
    }
}

impl Drop for ForgetRequest {
    fn drop(&mut self) {
        if let Some(id) = self.1.take() {
            self.0.conn.try_update_value(|c| {
                c.requests.remove(&id);
                c.core.cancel_request(&id);
            });
        }
    }
}

/// One holder of a channel: typed signals owned by the component that subscribed.
pub struct Subscription<T: Send + Sync + 'static> {
    ws: WebSocket,
    channel: StoredValue<Channel>,
    key: StoredValue<Option<SubKey>, LocalStorage>,
    callbacks: Callbacks<T>,
    state_callbacks: StateCallbacks,
    /// The most recent messages, oldest first (at most `message_buffer`).
    pub messages: ReadSignal<VecDeque<Received<T>>>,
    /// Subscribing, live (with its position and how it got there: fresh, recovered, a
    /// filled gap, or a reset), or failed (with the server's error).
    pub state: ReadSignal<SubState>,
    /// The presence set (rooms), sorted by user id.
    pub members: ReadSignal<Vec<Member>>,
    /// The last presence event (rooms): for "Ada joined" notices.
    pub last_presence: ReadSignal<Option<PresenceEvent>>,
    /// The last message that did not decode as `T`.
    pub decode_error: ReadSignal<Option<DecodeError>>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Send + Sync + 'static> Clone for Subscription<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Send + Sync + 'static> Copy for Subscription<T> {}

impl<T> Subscription<T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    fn new(ws: WebSocket, channel: Channel, opts: SubOptions) -> Self {
        let (messages, set_messages) = signal(VecDeque::<Received<T>>::new());
        let (state, set_state) = signal(SubState::Subscribing);
        let known = ws
            .conn
            .try_with_value(|c| c.members.get(&channel).cloned())
            .flatten()
            .unwrap_or_default();
        let (members, set_members) = signal(known);
        let (last_presence, set_last_presence) = signal(None::<PresenceEvent>);
        let (decode_error, set_decode_error) = signal(None::<DecodeError>);
        let callbacks: Callbacks<T> = StoredValue::new_local(Vec::new());
        let state_callbacks: StateCallbacks = StoredValue::new_local(Vec::new());
        let (buffer, per_frame) = ws
            .conn
            .try_with_value(|c| (c.message_buffer, c.render_per_frame))
            .unwrap_or((200, false));
        // Messages waiting for the next animation frame, at most `buffer` of them.
        let pending: Rc<RefCell<VecDeque<Received<T>>>> = Rc::default();
        let scheduled = Rc::new(Cell::new(false));
        let flush = {
            let pending = pending.clone();
            let scheduled = scheduled.clone();
            move || {
                scheduled.set(false);
                let batch = std::mem::take(&mut *pending.borrow_mut());
                if !batch.is_empty() {
                    set_messages.try_update(|m| {
                        m.extend(batch);
                        while m.len() > buffer {
                            m.pop_front();
                        }
                    });
                }
            }
        };
        let listener: Listener = Rc::new(move |ev: &ChannelEvent<'_>| match ev {
            ChannelEvent::Message(m) => {
                let decoded = match m.data.parse::<T>() {
                    Ok(data) => Ok(Received {
                        offset: m.offset,
                        from: m.from.clone(),
                        data,
                        ts: m.ts,
                        ephemeral: m.ephemeral,
                    }),
                    Err(e) => Err(DecodeError {
                        data: m.data.clone(),
                        error: e.to_string(),
                    }),
                };
                let cbs = callbacks.try_with_value(|c| c.clone()).unwrap_or_default();
                for cb in cbs {
                    cb(&decoded);
                }
                match decoded {
                    Ok(received) => {
                        let mut p = pending.borrow_mut();
                        p.push_back(received);
                        while p.len() > buffer {
                            p.pop_front();
                        }
                        drop(p);
                        if !per_frame || !cfg!(target_arch = "wasm32") {
                            flush();
                        } else if !scheduled.replace(true) {
                            let flush = flush.clone();
                            request_animation_frame(flush);
                        }
                    }
                    Err(e) => {
                        set_decode_error.try_set(Some(e));
                    }
                }
            }
            ChannelEvent::State(s) => {
                if let SubState::Live {
                    recovery: Recovery::Reset(_),
                    ..
                } = s
                {
                    // Messages were lost: what the buffer holds is stale. The rewound
                    // messages, if any, follow.
                    pending.borrow_mut().clear();
                    set_messages.try_set(VecDeque::new());
                }
                set_state.try_set((*s).clone());
                let cbs = state_callbacks
                    .try_with_value(|c| c.clone())
                    .unwrap_or_default();
                for cb in cbs {
                    cb(s);
                }
            }
            ChannelEvent::Members(ms) => {
                set_members.try_set(ms.to_vec());
            }
            ChannelEvent::Presence(p) => {
                set_members.try_update(|ms| apply_presence(ms, p));
                set_last_presence.try_set(Some((*p).clone()));
            }
        });
        let key = ws.call(|c, now| {
            let key = c.core.subscribe_with(&channel, opts, now);
            c.channels
                .get_or_insert_with(channel.clone(), VecMap::new)
                .insert(key.clone(), listener);
            key
        });
        let sub = Self {
            ws,
            channel: StoredValue::new(channel),
            key: StoredValue::new_local(key),
            callbacks,
            state_callbacks,
            messages,
            state,
            members,
            last_presence,
            decode_error,
            _t: PhantomData,
        };
        on_cleanup(move || sub.release());
        sub
    }

    /// Calls `f` with every message of this subscription, decoded, exactly once, as it
    /// arrives (apps that keep their own state need every message, not a buffer).
    pub fn on_message(&self, f: impl Fn(&Result<Received<T>, DecodeError>) + 'static) {
        self.callbacks.try_update_value(|c| c.push(Rc::new(f)));
    }

    /// Calls `f` with every state change of this subscription, as it happens: a
    /// [`Recovery::Reset`] means messages were lost and the app should reload what it
    /// keeps for this channel (the rewound messages, if it asked for some, follow).
    pub fn on_state(&self, f: impl Fn(&SubState) + 'static) {
        self.state_callbacks
            .try_update_value(|c| c.push(Rc::new(f)));
    }

    /// Publishes on this channel (see [`WebSocket::publish`]).
    pub fn publish<D: Serialize + ?Sized>(&self, data: &D) -> Result<Publish, SendError> {
        let channel = self.channel.try_get_value().ok_or(SendError::Closed)?;
        self.ws.publish(channel.as_str(), data)
    }

    /// Stops this holder's interest; the last holder sends `unsubscribe`. Calling it
    /// again, or letting the owner's cleanup call it too, is harmless.
    pub fn unsubscribe(&self) {
        self.release();
    }
}

impl<T: Send + Sync + 'static> Subscription<T> {
    /// The channel.
    pub fn channel(&self) -> String {
        self.channel
            .try_get_value()
            .map(|c| c.0)
            .unwrap_or_default()
    }

    /// Whether the server confirmed the subscription on the current connection.
    pub fn is_live(&self) -> bool {
        matches!(self.state.try_get_untracked(), Some(SubState::Live { .. }))
    }

    fn release(&self) {
        let Some(Some(key)) = self.key.try_update_value(Option::take) else {
            return;
        };
        self.ws.call(|c, now| {
            if let Some(holders) = c.channels.get_mut(&key.channel) {
                holders.remove(&key);
                if holders.is_empty() {
                    c.channels.remove(&key.channel);
                    c.members.remove(&key.channel);
                }
            }
            c.core.unsubscribe(&key, now);
        });
    }
}

/// Applies what the core has for the application: signals, futures, callbacks. (What it
/// has for the socket stays for the driver: see [`take_io`].)
pub(crate) fn pump(ws: WebSocket) {
    loop {
        let Some((events, queued)) = ws.conn.try_update_value(|c| {
            let mut events = Vec::new();
            while let Some(e) = c.core.poll_event() {
                events.push(e);
            }
            (events, c.core.queued() as u64)
        }) else {
            return;
        };
        if events.is_empty() {
            if let Some(set) = ws.setters()
                && ws.queued.try_get_untracked() != Some(queued)
            {
                set.queued.try_set(queued);
            }
            save_outbox(ws);
            return;
        }
        for event in events {
            apply(ws, event);
        }
    }
}

/// What the core wants the driver to do, and the text to send.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn take_io(ws: WebSocket) -> (Vec<Action>, Vec<String>) {
    ws.conn
        .try_update_value(|c| {
            let mut actions = Vec::new();
            while let Some(a) = c.core.poll_action() {
                actions.push(a);
            }
            let mut transmit = Vec::new();
            while let Some(t) = c.core.poll_transmit() {
                transmit.push(t);
            }
            (actions, transmit)
        })
        .unwrap_or_default()
}

fn apply(ws: WebSocket, event: Event) {
    let Some(set) = ws.setters() else {
        return;
    };
    match event {
        Event::State(state) => {
            if state == ConnState::Open
                && ws.state.try_get_untracked().is_some_and(|s| {
                    matches!(s, ConnState::Connecting | ConnState::Reconnecting { .. })
                })
                && ws.client_id.try_get_untracked().flatten().is_some()
            {
                set.reconnects.try_update(|n| *n += 1);
            }
            if state == ConnState::Open {
                set.last_error.try_set(None);
            }
            set.state.try_set(state);
        }
        Event::Welcome {
            client_id,
            user_id,
            server_ts,
            ..
        } => {
            set.client_id.try_set(Some(client_id.0));
            set.user_id.try_set(user_id);
            if let Some(ts) = server_ts {
                set.clock_offset_ms.try_set(ts as f64 - wall_ms());
            }
        }
        Event::Disconnected { code, reason, .. } => {
            set.last_error.try_set(Some(format!(
                "disconnected: {code}{}",
                if reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({reason})")
                }
            )));
            set.last_close.try_set(Some((code, reason)));
        }
        Event::Published { id, result } => {
            ws.conn
                .try_update_value(|c| c.persist_dirty = c.persist.is_some());
            if ws
                .restored
                .try_with_untracked(|r| r.iter().any(|p| p.id == id))
                == Some(true)
            {
                set.restored.try_update(|r| r.retain(|p| p.id != id));
            }
            if matches!(result, Err(PublishError::Dropped)) {
                set.dropped.try_update(|n| *n += 1);
            }
            if let Err(e) = &result {
                set.last_error.try_set(Some(format!("publish failed: {e}")));
            }
            if let Some(Some(tx)) = ws.conn.try_update_value(|c| c.publishes.remove(&id)) {
                let _ = tx.send(result);
            }
        }
        Event::Response { id, result } => {
            if let Some(Some(tx)) = ws.conn.try_update_value(|c| c.requests.remove(&id)) {
                let _ = tx.send(result);
            }
        }
        Event::Subscription { channel, state } => {
            each(ws, &channel, &ChannelEvent::State(&state));
        }
        Event::Members { channel, members } => {
            ws.conn
                .try_update_value(|c| c.members.insert(channel.clone(), members.clone()));
            each(ws, &channel, &ChannelEvent::Members(&members));
        }
        Event::Presence {
            channel,
            action,
            member,
            ..
        } => {
            let p = PresenceEvent { action, member };
            ws.conn.try_update_value(|c| {
                if let Some(ms) = c.members.get_mut(&channel) {
                    apply_presence(ms, &p);
                }
            });
            each(ws, &channel, &ChannelEvent::Presence(&p));
        }
        Event::Message(m) => {
            let channel = m.channel.clone();
            each(ws, &channel, &ChannelEvent::Message(&m));
        }
        Event::Direct { from, data } => {
            let listeners: Vec<DirectListener> = ws
                .conn
                .try_with_value(|c| c.directs.iter().map(|(_, f)| f.clone()).collect())
                .unwrap_or_default();
            for f in listeners {
                f(&from, &data);
            }
            set.directs.try_update(|d| {
                d.push_back((from, data));
                while d.len() > 50 {
                    d.pop_front();
                }
            });
        }
        Event::DirectFailed { code, message, .. } | Event::ServerError { code, message } => {
            set.last_error.try_set(Some(format!("{code}: {message}")));
        }
        Event::Pong { rtt_ms, server_ts } => {
            set.rtt_ms.try_set(Some(rtt_ms as f64));
            if let Some(ts) = server_ts {
                // The server answered about half a round trip ago.
                let offset = ts as f64 + rtt_ms as f64 / 2.0 - wall_ms();
                set.clock_offset_ms.try_set(offset);
            }
        }
        Event::BadFrame(e) => {
            set.last_error
                .try_set(Some(format!("bad frame from the server: {e}")));
        }
    }
}

/// Writes the unacked publishes to `localStorage`, if asked to and they changed.
fn save_outbox(ws: WebSocket) {
    let Some(Some((key, frames))) = ws.conn.try_update_value(|c| {
        let key = c.persist.clone().filter(|_| c.persist_dirty)?;
        c.persist_dirty = false;
        let frames: Vec<String> = c
            .core
            .unacked_publishes()
            .iter()
            .map(codec::encode)
            .collect();
        Some((key, frames))
    }) else {
        return;
    };
    let json = serde_json::to_string(&frames).unwrap_or_default();
    #[cfg(target_arch = "wasm32")]
    if let Some(storage) = web_sys::window().and_then(|w| w.local_storage().ok().flatten()) {
        // Full or refused (private mode): the messages still go while the page lives.
        let _ = storage.set_item(&key, &json);
    }
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (key, json);
}

/// Queues the publishes an earlier run saved under the persist key (see
/// [`crate::UseWebSocketOptions::persist_outbox`]).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub(crate) fn restore_outbox(ws: WebSocket, saved: &str) {
    let frames = saved_publishes(saved);
    if frames.is_empty() {
        return;
    }
    let restored: Vec<RestoredPublish> = frames
        .iter()
        .filter_map(|f| match f {
            ClientFrame::Publish {
                id: Some(id),
                channel,
                data,
                ..
            } => Some(RestoredPublish {
                id: id.clone(),
                channel: channel.0.clone(),
                data: data.clone(),
            }),
            _ => None,
        })
        .collect();
    let Some(ids) = ws.call(|c, now| c.core.restore_publishes(frames, now)) else {
        return;
    };
    if let Some(set) = ws.setters() {
        set.restored.try_set(
            restored
                .into_iter()
                .filter(|r| ids.contains(&r.id))
                .collect(),
        );
    }
}

/// The stored publishes in what [`save_outbox`] wrote (a JSON array of frames' texts);
/// anything else in it is skipped.
fn saved_publishes(saved: &str) -> Vec<ClientFrame> {
    // Owned strings: each is a frame's JSON inside a JSON string, so it has escapes.
    serde_json::from_str::<Vec<String>>(saved)
        .unwrap_or_default()
        .iter()
        .filter_map(|text| saved_publish(text))
        .collect()
}

/// One saved frame, if it is a stored publish with an id and a valid channel. Read with
/// a struct of the publish frame's fields rather than the protocol's full client-frame
/// decoder, which the browser would otherwise carry only for this (~3 KB brotli).
fn saved_publish(text: &str) -> Option<ClientFrame> {
    #[derive(serde::Deserialize)]
    struct Saved {
        #[serde(rename = "type")]
        kind: String,
        id: RequestId,
        channel: Channel,
        data: Payload,
        #[serde(default)]
        ephemeral: bool,
        #[serde(default)]
        skip_self: bool,
    }
    let s: Saved = serde_json::from_str(text).ok()?;
    // What the server would refuse without echoing the id (so never ack or fail) is not
    // restored: it would be sent again on every reconnect.
    let max_id = switchboard_protocol::Limits::default().max_id_bytes as usize;
    let valid = s.kind == "publish"
        && !s.ephemeral
        && s.id.as_str().len() <= max_id
        && validate_channel(s.channel.as_str()).is_ok();
    valid.then_some(ClientFrame::Publish {
        id: Some(s.id),
        channel: s.channel,
        data: s.data,
        ephemeral: false,
        skip_self: s.skip_self,
    })
}

/// A member list (sorted by user id) after a presence event: a join replaces or adds
/// the member in order, a leave removes them. Not generic, so every subscription's
/// message type shares this one copy in the bundle.
fn apply_presence(members: &mut Vec<Member>, event: &PresenceEvent) {
    members.retain(|m| m.user_id != event.member.user_id);
    if event.action == PresenceAction::Join {
        let at = members.partition_point(|m| m.user_id < event.member.user_id);
        members.insert(at, event.member.clone());
    }
}

/// Calls every holder of `channel` (outside the connection's borrow: a listener may call
/// back into the handle).
fn each(ws: WebSocket, channel: &Channel, event: &ChannelEvent<'_>) {
    let listeners: Vec<Listener> = ws
        .conn
        .try_with_value(|c| {
            c.channels
                .get(channel)
                .map(|h| h.values().cloned().collect())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    for f in listeners {
        f(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(user: &str, connections: u32) -> Member {
        Member {
            user_id: user.into(),
            info: Payload::null(),
            connections,
        }
    }

    fn event(action: PresenceAction, user: &str, connections: u32) -> PresenceEvent {
        PresenceEvent {
            action,
            member: member(user, connections),
        }
    }

    /// What `save_outbox` writes comes back as the same publishes; what is not a stored
    /// publish with an id the server takes and a valid channel is skipped.
    #[test]
    fn a_saved_outbox_reads_back_as_its_publishes() {
        let publish = |id: Option<&str>, channel: &str, ephemeral: bool| ClientFrame::Publish {
            id: id.map(RequestId::from),
            channel: channel.into(),
            data: Payload::from_json(r#"{"text":"a \"quoted\" line"}"#).unwrap(),
            ephemeral,
            skip_self: true,
        };
        let kept = [
            publish(Some("p1"), "room:a", false),
            publish(Some("p2"), "room:b", false),
        ];
        let mut saved: Vec<String> = kept.iter().map(codec::encode).collect();
        saved.push(codec::encode(&publish(None, "room:a", false)));
        saved.push(codec::encode(&publish(Some("p3"), "room:a", true)));
        saved.push(codec::encode(&publish(Some("p4"), "bad name", false)));
        let long = "i".repeat(65);
        saved.push(codec::encode(&publish(Some(&long), "room:a", false)));
        saved.push(codec::encode(&ClientFrame::Ping { id: None }));
        saved.push("not json".into());
        let text = serde_json::to_string(&saved).unwrap();
        assert_eq!(saved_publishes(&text), kept);
        assert!(saved_publishes("{").is_empty());
    }

    #[test]
    fn presence_keeps_the_member_list_sorted_and_one_entry_per_user() {
        let mut ms = vec![member("ada", 1), member("cy", 1)];
        apply_presence(&mut ms, &event(PresenceAction::Join, "bo", 1));
        apply_presence(&mut ms, &event(PresenceAction::Join, "zed", 1));
        apply_presence(&mut ms, &event(PresenceAction::Join, "a", 1));
        let users = |ms: &[Member]| ms.iter().map(|m| m.user_id.clone()).collect::<Vec<_>>();
        assert_eq!(users(&ms), ["a", "ada", "bo", "cy", "zed"]);
        // A second connection of a member replaces the entry in place.
        apply_presence(&mut ms, &event(PresenceAction::Join, "bo", 2));
        assert_eq!(users(&ms), ["a", "ada", "bo", "cy", "zed"]);
        assert_eq!(ms[2].connections, 2);
        apply_presence(&mut ms, &event(PresenceAction::Leave, "ada", 0));
        apply_presence(&mut ms, &event(PresenceAction::Leave, "nobody", 0));
        assert_eq!(users(&ms), ["a", "bo", "cy", "zed"]);
    }
}

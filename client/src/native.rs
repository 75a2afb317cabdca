//! The native client: [`ClientCore`] driven by one tokio task over tokio-tungstenite, with
//! a typed API for backend services, command-line tools, load generators and tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use switchboard_client::native::{Client, NativeOptions, SubItem};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Chat { text: String }
//!
//! let client = Client::connect("ws://127.0.0.1:8080/ws", NativeOptions::default());
//! let mut room = client.subscribe::<Chat>("room:lobby");
//! let offset = client.publish("room:lobby", &Chat { text: "hi".into() })?.await?;
//! while let Some(item) = room.next().await {
//!     if let SubItem::Message(Ok(m)) = item {
//!         println!("{} at {:?}", m.data.text, m.offset);
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Calls on [`Client`] act on the core at once (under a mutex held for the call), so their
//! refusals ([`SendError`]) are immediate; the driver task does the IO. Every queue is
//! bounded: a subscription stream nobody reads keeps at most `stream_capacity` items and
//! then reports [`SubItem::Lagged`] instead of dropping silently.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use futures::{SinkExt, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_protocol::msgpack::{self, SUBPROTOCOL_MSGPACK};
use switchboard_protocol::{
    Channel, ClientId, CloseCode, Member, Payload, PresenceAction, RequestId, Sender,
};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::core::{
    Action, ClientCore, ConnState, Event, Ms, Options, PublishError, PublishResult, RequestError,
    SubKey, SubOptions, SubState,
};
use crate::outbox::SendError;

/// Provides a token for every (re)connect and refresh; `None` connects without one.
pub type TokenProvider = Arc<dyn Fn() -> BoxFuture<'static, Option<String>> + Send + Sync>;

/// Options of the native client.
#[derive(Clone, Default)]
pub struct NativeOptions {
    /// The core's options (reconnects, heartbeat, outbox, pacing…).
    pub core: Options,
    /// Asked for a token before every connect and before the current one expires.
    pub token: Option<TokenProvider>,
    /// Items a subscription stream holds for a reader that is behind. Defaults to 4,096.
    pub stream_capacity: Option<usize>,
    /// Speak MessagePack (binary frames, `Sec-WebSocket-Protocol: switchboard.v1.msgpack`)
    /// instead of JSON text. A server that does not answer with that subprotocol is spoken
    /// to in JSON.
    pub messagepack: bool,
}

/// Why a typed call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The frame was not accepted.
    #[error("not sent: {0}")]
    Send(#[from] SendError),
    /// The data did not serialize, or the answer did not deserialize.
    #[error("(de)serializing: {0}")]
    Json(#[from] serde_json::Error),
    /// The publish failed.
    #[error("publish failed: {0}")]
    Publish(#[from] PublishError),
    /// The request failed.
    #[error("request failed: {0}")]
    Request(#[from] RequestError),
    /// The client's task is gone.
    #[error("the client is closed")]
    Gone,
}

/// A message received on a subscription, its data decoded as `T`.
#[derive(Debug, Clone, PartialEq)]
pub struct Received<T> {
    /// Stream offset (`None` for ephemeral messages).
    pub offset: Option<u64>,
    /// Who sent it.
    pub from: Option<Sender>,
    /// The data.
    pub data: T,
    /// Server time of publication (ms since the Unix epoch).
    pub ts: u64,
    /// Typing indicators and the like.
    pub ephemeral: bool,
}

/// What a subscription stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum SubItem<T> {
    /// A message, or why its data did not decode as `T` (the raw payload is in the error).
    Message(Result<Received<T>, (Payload, String)>),
    /// The subscription's state changed.
    State(SubState),
    /// The room's members (after a `join`).
    Members(Vec<Member>),
    /// Someone joined or left.
    Presence {
        /// Join or leave.
        action: PresenceAction,
        /// Who.
        member: Member,
        /// Members after the change.
        count: u32,
    },
    /// The reader fell behind by `missed` items, which were not kept.
    Lagged {
        /// How many.
        missed: u64,
    },
}

type RawItem = SubItem<Payload>;

struct Listener {
    tx: mpsc::Sender<RawItem>,
    /// Items that did not fit, reported as one `Lagged` when there is room again.
    missed: u64,
}

impl Listener {
    fn send(&mut self, item: RawItem) {
        if self.missed > 0 {
            match self.tx.try_send(SubItem::Lagged {
                missed: self.missed,
            }) {
                Ok(()) => self.missed = 0,
                Err(_) => {
                    self.missed += 1;
                    return;
                }
            }
        }
        if self.tx.try_send(item).is_err() {
            self.missed += 1;
        }
    }
}

/// What the handles and the driver share.
struct Shared {
    core: ClientCore,
    publishes: HashMap<RequestId, oneshot::Sender<PublishResult>>,
    requests: HashMap<RequestId, oneshot::Sender<Result<Payload, RequestError>>>,
    listeners: HashMap<Channel, HashMap<SubKey, Listener>>,
    directs: Vec<Listener>,
    events: Vec<mpsc::Sender<Event>>,
    stream_capacity: usize,
}

struct Inner {
    shared: Mutex<Shared>,
    /// Wakes the driver after a call changed the core.
    wake: Notify,
    start: Instant,
    state: watch::Sender<ConnState>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now(&self) -> Ms {
        self.start.elapsed().as_millis() as Ms
    }
}

/// A connection to a Switchboard server. Cheap to clone; the connection closes when the
/// last clone is dropped (or on [`Client::close`]).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _guard: Arc<StopOnDrop>,
}

struct StopOnDrop(Arc<Inner>, watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.1.send(true);
        self.0.wake.notify_one();
    }
}

impl Client {
    /// Connects to `url` (a `ws://` URL) and keeps connected, in a task on the current
    /// tokio runtime.
    pub fn connect(url: impl Into<String>, options: NativeOptions) -> Self {
        let start = Instant::now();
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            ^ (std::process::id() as u64).rotate_left(32);
        let has_provider = options.token.is_some();
        let core_opts = Options {
            has_token_provider: has_provider,
            ..options.core.clone()
        };
        let core = ClientCore::new(core_opts, seed, 0);
        let (state, _) = watch::channel(ConnState::Connecting);
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                core,
                publishes: HashMap::new(),
                requests: HashMap::new(),
                listeners: HashMap::new(),
                directs: Vec::new(),
                events: Vec::new(),
                stream_capacity: options.stream_capacity.unwrap_or(4096).max(1),
            }),
            wake: Notify::new(),
            start,
            state,
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(drive(
            inner.clone(),
            url.into(),
            options.token,
            options.messagepack,
            stop_rx,
        ));
        Self {
            _guard: Arc::new(StopOnDrop(inner.clone(), stop_tx)),
            inner,
        }
    }

    fn call<R>(&self, f: impl FnOnce(&mut Shared, Ms) -> R) -> R {
        let now = self.inner.now();
        let r = f(&mut self.inner.lock(), now);
        self.inner.wake.notify_one();
        r
    }

    /// The connection state, as it changes.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.inner.state.subscribe()
    }

    /// Waits until the connection is open.
    pub async fn connected(&self) -> Result<(), ClientError> {
        let mut state = self.state();
        state
            .wait_for(|s| *s == ConnState::Open)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Gone)
    }

    /// Every event of the core (connection changes, errors…), from now on. At most 1,024
    /// wait for a reader; later ones are not kept.
    pub fn events(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(1024);
        self.inner.lock().events.push(tx);
        rx
    }

    /// Publishes `data` on `channel`, stored (with an offset, recoverable) and kept until
    /// acked. The returned future resolves to its offset, or why it failed; dropping it is
    /// fire-and-forget (the publish still goes out).
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Publish, ClientError> {
        self.publish_with(channel, data, false)
    }

    /// Like [`Client::publish`], not delivered back to this connection.
    pub fn publish_to_others<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<Publish, ClientError> {
        self.publish_with(channel, data, true)
    }

    fn publish_with<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
        skip_self: bool,
    ) -> Result<Publish, ClientError> {
        let data = Payload::new(data)?;
        let (tx, rx) = oneshot::channel();
        self.call(|s, now| {
            let id = s
                .core
                .publish(&Channel::from(channel), data, false, skip_self, now)?;
            s.publishes.insert(id, tx);
            Ok::<_, SendError>(())
        })?;
        Ok(Publish(rx))
    }

    /// Publishes an ephemeral message (typing, cursors): only while connected, never stored
    /// or retried.
    pub fn publish_ephemeral<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        data: &T,
    ) -> Result<(), ClientError> {
        let data = Payload::new(data)?;
        self.call(|s, now| {
            s.core
                .publish(&Channel::from(channel), data, true, true, now)
        })?;
        Ok(())
    }

    /// Calls `method` with `params`; the result is deserialized as `R`.
    pub async fn request<P: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let params = Payload::new(params)?;
        let (tx, rx) = oneshot::channel();
        let id = self.call(|s, now| {
            let id = s.core.request(method, params, None, now)?;
            s.requests.insert(id.clone(), tx);
            Ok::<_, SendError>(id)
        })?;
        // Dropping this future (a caller that lost interest) forgets the request.
        let cancel = CancelOnDrop {
            inner: &self.inner,
            id: Some(id),
        };
        let result = rx.await.map_err(|_| ClientError::Gone)?;
        cancel.disarm();
        Ok(result?.parse()?)
    }

    /// Subscribes to `channel`; messages are decoded as `T` (use `serde_json::Value` or
    /// [`Payload`] for anything). Dropping the stream releases it; the last holder of a
    /// channel unsubscribes.
    pub fn subscribe<T: DeserializeOwned>(&self, channel: &str) -> Subscription<T> {
        self.subscribe_with(channel, SubOptions::default())
    }

    /// Subscribes and joins the channel's presence with `info`.
    pub fn join<T: DeserializeOwned, I: Serialize + ?Sized>(
        &self,
        channel: &str,
        info: &I,
    ) -> Result<Subscription<T>, ClientError> {
        let info = Payload::new(info)?;
        let opts = SubOptions {
            presence: Some(info),
            rewind: 0,
        };
        Ok(self.subscribe_with(channel, opts))
    }

    /// Subscribes with every option: presence, and `rewind` (the latest messages first).
    pub fn subscribe_with<T: DeserializeOwned>(
        &self,
        channel: &str,
        opts: SubOptions,
    ) -> Subscription<T> {
        let channel = Channel::from(channel);
        let (key, rx) = self.call(|s, now| {
            let (tx, rx) = mpsc::channel(s.stream_capacity);
            let key = s.core.subscribe_with(&channel, opts, now);
            s.listeners
                .entry(channel.clone())
                .or_default()
                .insert(key.clone(), Listener { tx, missed: 0 });
            (key, rx)
        });
        Subscription {
            client: self.clone(),
            key: Some(key),
            rx,
            _t: PhantomData,
        }
    }

    /// Sends `data` to one connection (WebRTC signaling, one-to-one notices).
    pub fn direct<T: Serialize + ?Sized>(&self, to: &str, data: &T) -> Result<(), ClientError> {
        let data = Payload::new(data)?;
        self.call(|s, now| s.core.direct(&ClientId::from(to), data, now))?;
        Ok(())
    }

    /// Direct messages to this connection, from now on, decoded as `T`.
    pub fn directs<T: DeserializeOwned>(&self) -> Directs<T> {
        let (tx, rx) = self.call(|s, _| {
            let (tx, rx) = mpsc::channel(s.stream_capacity);
            (tx, rx)
        });
        self.inner.lock().directs.push(Listener { tx, missed: 0 });
        Directs {
            rx,
            _t: PhantomData,
        }
    }

    /// Frames waiting to be sent or acked.
    pub fn queued(&self) -> usize {
        self.inner.lock().core.queued()
    }

    /// Disconnects and stays offline (publishes still queue) until [`Client::open`].
    pub fn close(&self) {
        self.call(|s, now| s.core.close(now));
    }

    /// Connects again after [`Client::close`] or a refusal.
    pub fn open(&self) {
        self.call(|s, now| s.core.open(now));
    }
}

/// A publish's outcome: its offset, or why it failed.
pub struct Publish(oneshot::Receiver<PublishResult>);

impl Future for Publish {
    type Output = Result<Option<u64>, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(Ok(offset)) => Ok(offset),
            Ok(Err(e)) => Err(ClientError::Publish(e)),
            Err(_) => Err(ClientError::Gone),
        })
    }
}

struct CancelOnDrop<'a> {
    inner: &'a Arc<Inner>,
    id: Option<RequestId>,
}

impl CancelOnDrop<'_> {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut s = self.inner.lock();
            s.requests.remove(&id);
            s.core.cancel_request(&id);
        }
    }
}

/// A subscription: a stream of [`SubItem`]s. Dropping it releases the channel.
pub struct Subscription<T> {
    client: Client,
    key: Option<SubKey>,
    rx: mpsc::Receiver<RawItem>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Subscription<T> {
    /// The channel.
    pub fn channel(&self) -> Option<&Channel> {
        self.key.as_ref().map(|k| &k.channel)
    }

    /// Publishes on this channel.
    pub fn publish<D: Serialize + ?Sized>(&self, data: &D) -> Result<Publish, ClientError> {
        let channel = self.key.as_ref().map(|k| k.channel.as_str()).unwrap_or("");
        self.client.publish(channel, data)
    }
}

impl<T: DeserializeOwned> Stream for Subscription<T> {
    type Item = SubItem<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|item| item.map(decode))
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.client.call(|s, now| {
                if let Some(l) = s.listeners.get_mut(&key.channel) {
                    l.remove(&key);
                    if l.is_empty() {
                        s.listeners.remove(&key.channel);
                    }
                }
                s.core.unsubscribe(&key, now);
            });
        }
    }
}

fn decode<T: DeserializeOwned>(item: RawItem) -> SubItem<T> {
    match item {
        SubItem::Message(Ok(m)) => SubItem::Message(match m.data.parse::<T>() {
            Ok(data) => Ok(Received {
                offset: m.offset,
                from: m.from,
                data,
                ts: m.ts,
                ephemeral: m.ephemeral,
            }),
            Err(e) => Err((m.data, e.to_string())),
        }),
        SubItem::Message(Err(e)) => SubItem::Message(Err(e)),
        SubItem::State(s) => SubItem::State(s),
        SubItem::Members(m) => SubItem::Members(m),
        SubItem::Presence {
            action,
            member,
            count,
        } => SubItem::Presence {
            action,
            member,
            count,
        },
        SubItem::Lagged { missed } => SubItem::Lagged { missed },
    }
}

/// Direct messages to this connection: the sender and the data decoded as `T`.
pub struct Directs<T> {
    rx: mpsc::Receiver<RawItem>,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Stream for Directs<T> {
    type Item = (Option<Sender>, Result<T, (Payload, String)>);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.rx.poll_recv(cx) {
                Poll::Ready(Some(SubItem::Message(Ok(m)))) => {
                    let data = m
                        .data
                        .parse::<T>()
                        .map_err(|e| (m.data.clone(), e.to_string()));
                    Poll::Ready(Some((m.from, data)))
                }
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// A socket, and whether the server agreed to MessagePack on it.
type Connecting = BoxFuture<'static, Result<(Socket, bool), String>>;

/// The largest server message accepted as JSON after transcoding from MessagePack.
const MAX_SERVER_MESSAGE: usize = 64 << 20;

/// The driver: the one task that does IO for a client.
async fn drive(
    inner: Arc<Inner>,
    url: String,
    token: Option<TokenProvider>,
    messagepack: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut socket: Option<Socket> = None;
    // Whether the current socket speaks MessagePack (the server agreed to it).
    let mut packed = false;
    let mut connecting: Option<Connecting> = None;
    let mut refreshing: Option<BoxFuture<'static, Option<String>>> = None;
    loop {
        if *stop.borrow() {
            if let Some(mut ws) = socket.take() {
                let _ = ws.close(None).await;
            }
            return;
        }
        // What the core wants done.
        let (actions, transmit, deadline) = {
            let mut s = inner.lock();
            let mut actions = Vec::new();
            while let Some(a) = s.core.poll_action() {
                actions.push(a);
            }
            let mut transmit = Vec::new();
            while let Some(t) = s.core.poll_transmit() {
                transmit.push(t);
            }
            dispatch(&mut s, &inner.state);
            (actions, transmit, s.core.next_deadline())
        };
        for action in actions {
            match action {
                Action::Connect => {
                    socket = None;
                    let url = url.clone();
                    let token = token.clone();
                    let inner = inner.clone();
                    connecting = Some(Box::pin(async move {
                        let token = match &token {
                            Some(provider) => provider().await,
                            None => None,
                        };
                        {
                            let now = inner.now();
                            inner
                                .lock()
                                .core
                                .set_token(token.as_deref(), now, unix_ms());
                        }
                        let url = match token {
                            Some(t) => format!("{url}?token={}", encode_component(&t)),
                            None => url,
                        };
                        let mut request = url.into_client_request().map_err(|e| e.to_string())?;
                        if messagepack {
                            request.headers_mut().insert(
                                "Sec-WebSocket-Protocol",
                                HeaderValue::from_static(SUBPROTOCOL_MSGPACK),
                            );
                        }
                        connect_async(request)
                            .await
                            .map(|(ws, response)| {
                                let agreed = response
                                    .headers()
                                    .get("sec-websocket-protocol")
                                    .is_some_and(|p| {
                                        p.as_bytes() == SUBPROTOCOL_MSGPACK.as_bytes()
                                    });
                                (ws, agreed)
                            })
                            .map_err(|e| e.to_string())
                    }));
                }
                Action::Disconnect { code, reason } => {
                    connecting = None;
                    if let Some(mut ws) = socket.take() {
                        let frame = CloseFrame {
                            code: code.0.into(),
                            reason: reason.into(),
                        };
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame)))
                            .await;
                    }
                }
                Action::RefreshToken => {
                    if let Some(provider) = &token {
                        refreshing = Some(provider());
                    }
                }
            }
        }
        if let Some(ws) = socket.as_mut() {
            let mut failed = false;
            for text in transmit {
                let msg = if packed {
                    // The core's frames are valid JSON, so this does not fail.
                    WsMessage::binary(msgpack::from_json(text.as_bytes()).unwrap_or_default())
                } else {
                    WsMessage::text(text)
                };
                if ws.feed(msg).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || ws.flush().await.is_err() {
                socket = None;
                let now = inner.now();
                inner.lock().core.on_disconnected(None, "write failed", now);
                continue;
            }
        }
        let sleep = async {
            match deadline {
                Some(at) => {
                    let now = inner.now();
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now))).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => {}
            () = inner.wake.notified() => {}
            () = sleep => {
                let now = inner.now();
                inner.lock().core.on_tick(now);
            }
            result = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                let now = inner.now();
                match result {
                    Ok((ws, agreed)) => {
                        socket = Some(ws);
                        packed = agreed;
                        inner.lock().core.on_connected(now);
                    }
                    Err(e) => inner.lock().core.on_disconnected(None, &e, now),
                }
            }
            fresh = async { refreshing.as_mut().expect("guarded").await }, if refreshing.is_some() => {
                refreshing = None;
                let now = inner.now();
                inner.lock().core.refresh_token(fresh, now, unix_ms());
            }
            msg = async { socket.as_mut().expect("guarded").next().await }, if socket.is_some() => {
                let now = inner.now();
                match msg {
                    Some(Ok(WsMessage::Text(text))) => inner.lock().core.on_text(text.as_str(), now),
                    Some(Ok(WsMessage::Binary(bytes))) if packed => {
                        match msgpack::to_json(&bytes, MAX_SERVER_MESSAGE) {
                            Ok(text) => inner.lock().core.on_text(&text, now),
                            Err(e) => {
                                socket = None;
                                let reason = format!("undecodable MessagePack from the server: {e}");
                                inner.lock().core.on_disconnected(None, &reason, now);
                            }
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        socket = None;
                        let (code, reason) = frame
                            .map(|f| (Some(CloseCode(u16::from(f.code))), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        inner.lock().core.on_disconnected(code, &reason, now);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        socket = None;
                        inner.lock().core.on_disconnected(None, &e.to_string(), now);
                    }
                    None => {
                        socket = None;
                        inner.lock().core.on_disconnected(None, "closed", now);
                    }
                }
            }
        }
    }
}

/// Hands the core's events to whoever waits for them.
fn dispatch(s: &mut Shared, state: &watch::Sender<ConnState>) {
    while let Some(event) = s.core.poll_event() {
        s.events.retain(|tx| !tx.is_closed());
        for tx in &s.events {
            let _ = tx.try_send(event.clone());
        }
        match event {
            Event::State(st) => {
                state.send_replace(st);
            }
            Event::Published { id, result } => {
                if let Some(tx) = s.publishes.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Event::Response { id, result } => {
                if let Some(tx) = s.requests.remove(&id) {
                    let _ = tx.send(result);
                }
            }
            Event::Subscription { channel, state } => {
                each(s, &channel, || SubItem::State(state.clone()));
            }
            Event::Members { channel, members } => {
                each(s, &channel, || SubItem::Members(members.clone()));
            }
            Event::Presence {
                channel,
                action,
                member,
                count,
            } => each(s, &channel, || SubItem::Presence {
                action,
                member: member.clone(),
                count,
            }),
            Event::Message(m) => {
                let channel = m.channel.clone();
                each(s, &channel, || {
                    SubItem::Message(Ok(Received {
                        offset: m.offset,
                        from: m.from.clone(),
                        data: m.data.clone(),
                        ts: m.ts,
                        ephemeral: m.ephemeral,
                    }))
                });
            }
            Event::Direct { from, data } => {
                s.directs.retain(|l| !l.tx.is_closed());
                for l in &mut s.directs {
                    l.send(SubItem::Message(Ok(Received {
                        offset: None,
                        from: Some(from.clone()),
                        data: data.clone(),
                        ts: 0,
                        ephemeral: false,
                    })));
                }
            }
            Event::Welcome { .. }
            | Event::Disconnected { .. }
            | Event::DirectFailed { .. }
            | Event::Pong { .. }
            | Event::ServerError { .. }
            | Event::BadFrame(_) => {}
        }
    }
}

fn each(s: &mut Shared, channel: &Channel, item: impl Fn() -> RawItem) {
    if let Some(listeners) = s.listeners.get_mut(channel) {
        for l in listeners.values_mut() {
            l.send(item());
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Percent-encodes a token for a query string.
fn encode_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

//! `use_websocket`: one Switchboard connection as Leptos signals and methods.
//!
//! ```ignore
//! let ws = provide_websocket(same_origin_ws_url(), UseWebSocketOptions::default());
//! let room = ws.join("room:lobby", json!({"name": "Ada"}));
//! ws.publish("room:lobby", json!({"text": "hi"}))?;          // queued while offline
//! let now = ws.request("time", Value::Null).await?;           // resolves, fails or times out
//! view! { <For each=move || room.messages.get() … /> <p>{move || room.members.get().len()}</p> }
//! ```
//!
//! What it adds over a bare socket (and over leptos-use's hook):
//! - reconnects with full-jitter backoff, obeying the server's close codes (never after a
//!   refusal, backing off after "slow", a fresh token after "expired"), and at once when
//!   the browser comes back online or the tab becomes visible;
//! - detects a dead link (no frame within ping interval + pong timeout) and replaces it;
//! - a bounded offline queue with an overflow policy: `publish` returns a `Result`, and
//!   publishes stay queued until the server acks them, so a reconnect resends them and the
//!   server's idempotent publish keeps them from arriving twice;
//! - throttling and batching of outgoing frames;
//! - request/response with timeouts;
//! - subscriptions and room memberships restored after a reconnect, in one batch frame,
//!   each keeping a bounded buffer of messages (not just the last one) and its presence.
//!
//! # Layout
//! - this file: the options, the handle ([`WebSocket`]) and the connection task;
//! - [`backoff`]: reconnect delays; [`outbox`]: the queue and pacing (both plain Rust).

pub mod backoff;
pub mod outbox;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::{FutureExt, SinkExt, StreamExt};
use gloo_net::websocket::{Message, WebSocketError, futures::WebSocket as Socket};
use gloo_timers::future::sleep;
use leptos::prelude::*;
use serde_json::Value;
use switchboard_protocol::{
    Channel, ClientFrame, ClientInfo, CloseCode, ErrorCode, Member, PresenceAction, Reconnect,
    RequestId, Sender, ServerFrame, StreamPosition, codec,
};
use wasm_bindgen_futures::spawn_local;

use backoff::Backoff;
use outbox::{BatchOptions, Due, Outbox, Overflow, Pacer, SendError};

/// Provides a fresh token on every (re)connect; `None` connects without one.
pub type TokenProvider = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = Option<String>>>>>;

/// Options for [`use_websocket_with_options`]. Every field has a documented default.
#[derive(Clone)]
pub struct UseWebSocketOptions {
    /// Reconnect delays. Defaults to full jitter, 500 ms growing ×2 up to 30 s.
    pub backoff: Backoff,
    /// Give up after this many failed attempts in a row. Defaults to `None` (never).
    pub max_attempts: Option<u32>,
    /// How often to send `ping` (also measures the round-trip time). Defaults to 10 s.
    pub ping_interval: Duration,
    /// How long past a ping interval with no frame at all counts as a dead link. Defaults
    /// to 5 s.
    pub pong_timeout: Duration,
    /// Frames kept while offline or waiting to be sent. Defaults to 256.
    pub outbox_capacity: usize,
    /// What a full outbox does with a new frame. Defaults to [`Overflow::Reject`].
    pub overflow: Overflow,
    /// Minimum time between two WebSocket messages. Defaults to `None`.
    pub throttle: Option<Duration>,
    /// Send queued frames together as one batch. Defaults to `None`.
    pub batch: Option<BatchOptions>,
    /// How long `request` waits for its response. Defaults to 10 s.
    pub request_timeout: Duration,
    /// Messages kept per subscription. Defaults to 200.
    pub message_buffer: usize,
    /// Called before every (re)connect; its token goes in `?token=`. Defaults to `None`.
    pub token: Option<TokenProvider>,
    /// Connect right away; otherwise on [`WebSocket::open`]. Defaults to `true`.
    pub immediate: bool,
}

impl Default for UseWebSocketOptions {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            max_attempts: None,
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(5),
            outbox_capacity: 256,
            overflow: Overflow::Reject,
            throttle: None,
            batch: None,
            request_timeout: Duration::from_secs(10),
            message_buffer: 200,
            token: None,
            immediate: true,
        }
    }
}

/// Where the connection is.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnState {
    /// Opening the socket, waiting for `welcome`.
    Connecting,
    /// `welcome` received.
    Open,
    /// Lost; attempt `attempt` starts at `at` (milliseconds, `performance.now()` clock).
    Reconnecting {
        /// The attempt about to be made (1-based).
        attempt: u32,
        /// When it starts.
        at: f64,
    },
    /// Not connected and not trying: [`WebSocket::close`] was called (frames still queue),
    /// or the server refused us (see `last_error`; sends fail with `Closed`).
    Closed,
}

impl ConnState {
    /// A one-word label: connecting, connected, reconnecting, closed.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Open => "connected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Closed => "closed",
        }
    }
}

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelMessage {
    /// Stream offset (`None` for ephemeral messages).
    pub offset: Option<u64>,
    /// Who sent it (`None` when the server did).
    pub from: Option<Sender>,
    /// The payload.
    pub data: Value,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Typing indicators and the like.
    pub ephemeral: bool,
}

/// A presence event on a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEvent {
    /// Join or leave.
    pub action: PresenceAction,
    /// Who.
    pub member: Member,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    /// No response within the request timeout.
    Timeout,
    /// The server answered with an `error` frame.
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The request could not be queued.
    Send(SendError),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("request timed out"),
            Self::Server { code, message } => write!(f, "{code}: {message}"),
            Self::Send(e) => write!(f, "{e}"),
        }
    }
}

/// A subscription (or room membership) as signals. It ends (and `unsubscribe` is sent
/// when no one else holds the channel) when the reactive owner that created it is
/// disposed, or on [`Subscription::unsubscribe`].
#[derive(Clone, Copy)]
pub struct Subscription {
    ws: WebSocket,
    channel: StoredValue<String>,
    /// The most recent messages, oldest first, at most `message_buffer` of them.
    pub messages: ReadSignal<VecDeque<ChannelMessage>>,
    /// The presence set (rooms only), sorted by user id.
    pub members: ReadSignal<Vec<Member>>,
    /// The last presence event (rooms only): for "Ada joined" notices.
    pub last_presence: ReadSignal<Option<PresenceEvent>>,
    /// Whether the server confirmed the subscription on the current connection.
    pub active: ReadSignal<bool>,
}

impl Subscription {
    /// The channel name.
    pub fn channel(&self) -> String {
        self.channel.get_value()
    }

    /// Publishes on this channel (see [`WebSocket::publish`]).
    pub fn publish(&self, data: Value) -> Result<(), SendError> {
        self.ws.publish(&self.channel(), data)
    }

    /// Stops this holder's interest; the last holder sends `unsubscribe`.
    pub fn unsubscribe(&self) {
        self.ws.release(&self.channel());
    }
}

/// The connection handle: `Copy`, cheap to pass to components and to put in context.
#[derive(Clone, Copy)]
pub struct WebSocket {
    /// Connecting, connected, reconnecting or closed.
    pub state: ReadSignal<ConnState>,
    /// The last problem, for display.
    pub last_error: ReadSignal<Option<String>>,
    /// Our id from `welcome`.
    pub client_id: ReadSignal<Option<String>>,
    /// Last measured round-trip time, in milliseconds.
    pub rtt_ms: ReadSignal<Option<f64>>,
    /// Frames waiting in the outbox (including sent publishes awaiting their ack).
    pub queued: ReadSignal<usize>,
    /// Frames dropped by the overflow policy.
    pub dropped: ReadSignal<u64>,
    /// Reconnections so far.
    pub reconnects: ReadSignal<u32>,
    /// Frames received / sent.
    pub frames_in: ReadSignal<u64>,
    /// Frames sent.
    pub frames_out: ReadSignal<u64>,
    /// Direct messages received, oldest first (the last 50).
    pub directs: ReadSignal<VecDeque<(Sender, Value)>>,
    core: StoredValue<Core, LocalStorage>,
    setters: StoredValue<Setters>,
}

#[derive(Clone, Copy)]
struct Setters {
    state: WriteSignal<ConnState>,
    last_error: WriteSignal<Option<String>>,
    client_id: WriteSignal<Option<String>>,
    rtt_ms: WriteSignal<Option<f64>>,
    queued: WriteSignal<usize>,
    dropped: WriteSignal<u64>,
    reconnects: WriteSignal<u32>,
    frames_in: WriteSignal<u64>,
    frames_out: WriteSignal<u64>,
    directs: WriteSignal<VecDeque<(Sender, Value)>>,
}

struct SubEntry {
    presence: Option<Value>,
    holders: usize,
    position: Option<StreamPosition>,
    messages: RwSignal<VecDeque<ChannelMessage>>,
    members: RwSignal<Vec<Member>>,
    last_presence: RwSignal<Option<PresenceEvent>>,
    active: RwSignal<bool>,
}

enum Ctrl {
    Open,
    Close,
    /// Reconnect now if waiting (online / visible again).
    Kick,
}

struct Core {
    outbox: Outbox<ClientFrame>,
    pacer: Pacer,
    /// Publishes sent and not yet acked: requeued first after a reconnect.
    in_flight: Vec<ClientFrame>,
    requests: HashMap<String, oneshot::Sender<Result<Value, RequestError>>>,
    subs: BTreeMap<String, SubEntry>,
    wake: mpsc::Sender<()>,
    ctrl: mpsc::UnboundedSender<Ctrl>,
    /// Refused by the server for good: sends fail.
    refused: bool,
    id_prefix: String,
    next_id: u64,
    message_buffer: usize,
    request_timeout: Duration,
}

/// `performance.now()` in milliseconds.
pub fn now_ms() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map(|p| p.now())
        .unwrap_or(0.0)
}

/// `ws://host/ws` or `wss://host/ws` for a page at `protocol` and `host`.
pub fn ws_url_for(protocol: &str, host: &str) -> String {
    let scheme = if protocol == "https:" { "wss" } else { "ws" };
    format!("{scheme}://{host}{}", switchboard_protocol::WS_PATH)
}

/// The WebSocket URL on the page's own origin.
pub fn same_origin_ws_url() -> String {
    let loc = web_sys::window().expect("a window").location();
    ws_url_for(
        &loc.protocol().unwrap_or_default(),
        &loc.host().unwrap_or_default(),
    )
}

/// Connects to `url` with the default options.
pub fn use_websocket(url: &str) -> WebSocket {
    use_websocket_with_options(url, UseWebSocketOptions::default())
}

/// Connects to `url` and provides the handle as context for every component below.
pub fn provide_websocket(url: &str, options: UseWebSocketOptions) -> WebSocket {
    let ws = use_websocket_with_options(url, options);
    provide_context(ws);
    ws
}

/// The handle [`provide_websocket`] put in context.
pub fn expect_websocket() -> WebSocket {
    expect_context::<WebSocket>()
}

/// Connects to `url`; the connection lives until the current reactive owner is disposed.
pub fn use_websocket_with_options(url: &str, options: UseWebSocketOptions) -> WebSocket {
    let (state, set_state) = signal(ConnState::Connecting);
    let (last_error, set_last_error) = signal(None);
    let (client_id, set_client_id) = signal(None);
    let (rtt_ms, set_rtt) = signal(None);
    let (queued, set_queued) = signal(0usize);
    let (dropped, set_dropped) = signal(0u64);
    let (reconnects, set_reconnects) = signal(0u32);
    let (frames_in, set_frames_in) = signal(0u64);
    let (frames_out, set_frames_out) = signal(0u64);
    let (directs, set_directs) = signal(VecDeque::new());
    let (wake_tx, wake_rx) = mpsc::channel(1);
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded();
    let core = Core {
        outbox: Outbox::new(options.outbox_capacity, options.overflow),
        pacer: Pacer {
            throttle: options.throttle,
            batch: options.batch,
            last_send: None,
        },
        in_flight: Vec::new(),
        requests: HashMap::new(),
        subs: BTreeMap::new(),
        wake: wake_tx,
        ctrl: ctrl_tx,
        refused: false,
        // 128 random bits: long random ids are deduplicated across reconnects by the server.
        id_prefix: (0..4)
            .map(|_| {
                format!(
                    "{:08x}",
                    (js_sys::Math::random() * f64::from(u32::MAX)) as u32
                )
            })
            .collect(),
        next_id: 0,
        message_buffer: options.message_buffer.max(1),
        request_timeout: options.request_timeout,
    };
    let ws = WebSocket {
        state,
        last_error,
        client_id,
        rtt_ms,
        queued,
        dropped,
        reconnects,
        frames_in,
        frames_out,
        directs,
        core: StoredValue::new_local(core),
        setters: StoredValue::new(Setters {
            state: set_state,
            last_error: set_last_error,
            client_id: set_client_id,
            rtt_ms: set_rtt,
            queued: set_queued,
            dropped: set_dropped,
            reconnects: set_reconnects,
            frames_in: set_frames_in,
            frames_out: set_frames_out,
            directs: set_directs,
        }),
    };
    let stopped = Arc::new(AtomicBool::new(false));
    let listeners = watch_network(ws);
    {
        let stopped = stopped.clone();
        on_cleanup(move || {
            stopped.store(true, Ordering::Relaxed);
            let _ = ws
                .core
                .try_with_value(|c| c.ctrl.unbounded_send(Ctrl::Close));
            for l in listeners {
                l.remove();
            }
        });
    }
    spawn_local(run(ws, url.to_owned(), options, wake_rx, ctrl_rx, stopped));
    ws
}

/// Reconnect at once when the browser comes back online or the tab becomes visible.
fn watch_network(ws: WebSocket) -> Vec<WindowListenerHandle> {
    let kick = move || {
        let _ = ws
            .core
            .try_with_value(|c| c.ctrl.unbounded_send(Ctrl::Kick));
    };
    vec![
        window_event_listener(leptos::ev::online, move |_| kick()),
        window_event_listener(leptos::ev::visibilitychange, move |_| {
            if document().visibility_state() == web_sys::VisibilityState::Visible {
                kick();
            }
        }),
    ]
}

impl WebSocket {
    fn set(&self) -> Setters {
        self.setters.get_value()
    }

    fn next_id(&self, kind: &str) -> String {
        self.core
            .try_update_value(|c| {
                c.next_id += 1;
                format!("{}-{kind}{}", c.id_prefix, c.next_id)
            })
            .unwrap_or_default()
    }

    /// Queues a frame and wakes the connection task.
    fn enqueue(&self, frame: ClientFrame) -> Result<(), SendError> {
        let result = self
            .core
            .try_update_value(|c| {
                if c.refused {
                    return Err(SendError::Closed);
                }
                let r = c.outbox.push(frame, now_ms());
                let _ = c.wake.try_send(());
                r
            })
            .unwrap_or(Err(SendError::Closed));
        match result {
            Ok(None) => {}
            Ok(Some(ref _dropped)) => {
                self.set().dropped.update(|n| *n += 1);
                self.set()
                    .last_error
                    .set(Some("outbox full: dropped the oldest queued frame".into()));
            }
            Err(SendError::Dropped) => self.set().dropped.update(|n| *n += 1),
            Err(_) => {}
        }
        self.refresh_queued();
        result.map(|_| ())
    }

    fn refresh_queued(&self) {
        let n = self
            .core
            .try_with_value(|c| c.outbox.len() + c.in_flight.len())
            .unwrap_or(0);
        self.set().queued.set(n);
    }

    /// Publishes `data` on `channel`. Queued while offline; kept until the server acks
    /// it, and resent after a reconnect (the server drops the duplicate).
    pub fn publish(&self, channel: &str, data: Value) -> Result<(), SendError> {
        let id = self.next_id("m");
        self.enqueue(ClientFrame::Publish {
            id: Some(id.into()),
            channel: channel.into(),
            data: data.into(),
            ephemeral: false,
            skip_self: false,
        })
    }

    /// Publishes an ephemeral message (typing, cursors) to the others: sent only while
    /// connected, never stored, not echoed back. Fails with `Closed` while not connected rather than queueing stale
    /// state.
    pub fn publish_ephemeral(&self, channel: &str, data: Value) -> Result<(), SendError> {
        if self.state.get_untracked() != ConnState::Open {
            return Err(SendError::Closed);
        }
        self.enqueue(ClientFrame::Publish {
            id: None,
            channel: channel.into(),
            data: data.into(),
            ephemeral: true,
            skip_self: true,
        })
    }

    /// Sends `data` to one connection (WebRTC signaling).
    pub fn direct(&self, to: &str, data: Value) -> Result<(), SendError> {
        self.enqueue(ClientFrame::Direct {
            id: None,
            to: to.into(),
            data: data.into(),
        })
    }

    /// Calls a server method; resolves with its result, the server's error, or a timeout.
    pub fn request(
        &self,
        method: &str,
        params: Value,
    ) -> impl Future<Output = Result<Value, RequestError>> + 'static {
        let ws = *self;
        let id = self.next_id("r");
        let (tx, rx) = oneshot::channel();
        let timeout = self
            .core
            .try_update_value(|c| {
                c.requests.insert(id.clone(), tx);
                c.request_timeout
            })
            .unwrap_or_default();
        let queued = self.enqueue(ClientFrame::Request {
            id: id.clone().into(),
            method: method.to_owned(),
            params: params.into(),
        });
        async move {
            if let Err(e) = queued {
                ws.core.try_update_value(|c| c.requests.remove(&id));
                return Err(RequestError::Send(e));
            }
            futures::select! {
                r = rx.fuse() => r.unwrap_or(Err(RequestError::Timeout)),
                _ = sleep(timeout).fuse() => {
                    // Forget it, and do not send it later if it is still queued.
                    ws.core.try_update_value(|c| {
                        c.requests.remove(&id);
                        c.outbox.retain(|f| f.id().is_none_or(|i| i.as_str() != id));
                    });
                    ws.refresh_queued();
                    Err(RequestError::Timeout)
                }
            }
        }
    }

    /// Subscribes to `channel` for as long as the current reactive owner lives.
    pub fn subscribe(&self, channel: &str) -> Subscription {
        self.hold(channel, None)
    }

    /// Joins a room: a subscription with presence, announcing `info` (e.g. `{"name":…}`).
    pub fn join(&self, channel: &str, info: Value) -> Subscription {
        self.hold(channel, Some(info))
    }

    fn hold(&self, channel: &str, presence: Option<Value>) -> Subscription {
        let ws = *self;
        let (entry, first) = self
            .core
            .try_update_value(|c| {
                let mut first = false;
                let e = c.subs.entry(channel.to_owned()).or_insert_with(|| {
                    first = true;
                    SubEntry {
                        presence: presence.clone(),
                        holders: 0,
                        position: None,
                        messages: RwSignal::new(VecDeque::new()),
                        members: RwSignal::new(Vec::new()),
                        last_presence: RwSignal::new(None),
                        active: RwSignal::new(false),
                    }
                });
                e.holders += 1;
                ((e.messages, e.members, e.last_presence, e.active), first)
            })
            .expect("the connection is alive");
        if first && self.state.get_untracked() == ConnState::Open {
            let _ = self.enqueue(ClientFrame::Subscribe {
                id: None,
                channel: channel.into(),
                since: None,
                presence: presence.map(Into::into),
            });
        }
        let name = channel.to_owned();
        on_cleanup(move || ws.release(&name));
        Subscription {
            ws,
            channel: StoredValue::new(channel.to_owned()),
            messages: entry.0.read_only(),
            members: entry.1.read_only(),
            last_presence: entry.2.read_only(),
            active: entry.3.read_only(),
        }
    }

    fn release(&self, channel: &str) {
        let last = self.core.try_update_value(|c| {
            let e = c.subs.get_mut(channel)?;
            e.holders = e.holders.saturating_sub(1);
            (e.holders == 0).then(|| c.subs.remove(channel))
        });
        if let Some(Some(Some(_))) = last
            && self.state.get_untracked() == ConnState::Open
        {
            let _ = self.enqueue(ClientFrame::Unsubscribe {
                id: None,
                channel: channel.into(),
            });
        }
    }

    /// Connects (again) after [`WebSocket::close`] or with `immediate: false`.
    pub fn open(&self) {
        let _ = self
            .core
            .try_with_value(|c| c.ctrl.unbounded_send(Ctrl::Open));
    }

    /// Disconnects and stays offline until [`WebSocket::open`]; frames sent meanwhile are
    /// queued (the "go offline" switch).
    pub fn close(&self) {
        let _ = self
            .core
            .try_with_value(|c| c.ctrl.unbounded_send(Ctrl::Close));
    }
}

/// How one socket's life ended.
enum Ended {
    /// Closed by the server or the network, with this code.
    Lost(CloseCode),
    /// `close()` was called.
    Closed,
    /// The owner is gone.
    Stopped,
}

async fn run(
    ws: WebSocket,
    url: String,
    options: UseWebSocketOptions,
    mut wake: mpsc::Receiver<()>,
    mut ctrl: mpsc::UnboundedReceiver<Ctrl>,
    stopped: Arc<AtomicBool>,
) {
    let set = ws.set();
    let mut attempt: u32 = 0;
    let mut ever_open = false;
    let mut want_open = options.immediate;
    loop {
        if stopped.load(Ordering::Relaxed) {
            return;
        }
        if !want_open {
            set.state.set(ConnState::Closed);
            // Offline on purpose: wait for open().
            loop {
                match ctrl.next().await {
                    Some(Ctrl::Open) => break,
                    Some(_) => continue,
                    None => return,
                }
            }
            want_open = true;
            attempt = 0;
        }
        set.state.set(ConnState::Connecting);
        let token = match &options.token {
            Some(provider) => provider().await,
            None => None,
        };
        let full_url = match token {
            Some(t) => format!(
                "{url}?token={}",
                String::from(js_sys::encode_uri_component(&t))
            ),
            None => url.clone(),
        };
        let (ended, opened) =
            session(ws, &full_url, &options, ever_open, &mut wake, &mut ctrl).await;
        if opened {
            ever_open = true;
            attempt = 0;
        }
        ws.core.try_update_value(|c| {
            for e in c.subs.values() {
                e.active.set(false);
            }
        });
        let code = match ended {
            Ended::Stopped => return,
            Ended::Closed => {
                want_open = false;
                continue;
            }
            Ended::Lost(code) => code,
        };
        let rule = code.reconnect();
        if rule == Reconnect::Never {
            set.last_error
                .set(Some(format!("closed by the server: {code}")));
            ws.core.try_update_value(|c| c.refused = true);
            set.state.set(ConnState::Closed);
            return;
        }
        if rule == Reconnect::WithNewToken && options.token.is_none() {
            set.last_error.set(Some(format!(
                "closed by the server: {code}; no token provider"
            )));
            ws.core.try_update_value(|c| c.refused = true);
            set.state.set(ConnState::Closed);
            return;
        }
        if rule == Reconnect::Now && opened {
            attempt = 0;
        }
        if options.max_attempts.is_some_and(|max| attempt >= max) {
            set.last_error
                .set(Some(format!("gave up after {attempt} attempts")));
            set.state.set(ConnState::Closed);
            want_open = false;
            continue;
        }
        let delay = options.backoff.delay(attempt, js_sys::Math::random());
        attempt = attempt.saturating_add(1);
        set.state.set(ConnState::Reconnecting {
            attempt,
            at: now_ms() + delay.as_secs_f64() * 1000.0,
        });
        let mut timer = sleep(delay).fuse();
        loop {
            futures::select! {
                _ = timer => break,
                c = ctrl.next() => match c {
                    Some(Ctrl::Kick) | Some(Ctrl::Open) => break,
                    Some(Ctrl::Close) => { want_open = false; break; }
                    None => return,
                },
                _ = wake.next() => {}
            }
        }
    }
}

/// One socket from open to close. Returns how it ended and whether `welcome` arrived.
async fn session(
    ws: WebSocket,
    url: &str,
    options: &UseWebSocketOptions,
    reconnect: bool,
    wake: &mut mpsc::Receiver<()>,
    ctrl: &mut mpsc::UnboundedReceiver<Ctrl>,
) -> (Ended, bool) {
    let set = ws.set();
    let socket = match Socket::open(url) {
        Ok(s) => s,
        Err(e) => {
            set.last_error.set(Some(format!("cannot open {url}: {e}")));
            return (Ended::Lost(CloseCode::ABNORMAL), false);
        }
    };
    let (mut tx, rx) = socket.split();
    let mut rx = rx.fuse();
    let mut opened = false;
    let mut last_heard = now_ms();
    let mut ping_sent: Option<(String, f64)> = None;
    let mut ping_seq = 0u64;
    let mut heartbeat = sleep(options.ping_interval).fuse();
    let mut pace = sleep(Duration::from_secs(3600)).fuse();
    let hello = ClientFrame::Hello {
        token: None,
        client: Some(ClientInfo {
            name: "switchboard-web".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }),
        resume: None,
    };
    if tx.send(Message::Text(codec::encode(&hello))).await.is_err() {
        return (Ended::Lost(CloseCode::ABNORMAL), false);
    }
    loop {
        futures::select! {
            msg = rx.next() => {
                last_heard = now_ms();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        for frame in codec::decode_server(&text) {
                            set.frames_in.update(|n| *n += 1);
                            match frame {
                                Ok(ServerFrame::Welcome { client_id, .. }) => {
                                    set.client_id.set(Some(client_id.0));
                                    if !opened {
                                        opened = true;
                                        if reconnect {
                                            set.reconnects.update(|n| *n += 1);
                                        }
                                        set.state.set(ConnState::Open);
                                        set.last_error.set(None);
                                        if let Err(end) = restore(ws, &mut tx).await {
                                            return (end, opened);
                                        }
                                        heartbeat = sleep(Duration::ZERO).fuse();
                                        pace = sleep(Duration::ZERO).fuse();
                                    }
                                }
                                Ok(ServerFrame::Pong { id: Some(id), .. }) => {
                                    if let Some((want, at)) = &ping_sent
                                        && *want == id.0
                                    {
                                        set.rtt_ms.set(Some(now_ms() - at));
                                        ping_sent = None;
                                    }
                                }
                                Ok(frame) => on_frame(ws, frame),
                                Err(e) => set.last_error.set(Some(format!("bad frame from server: {e}"))),
                            }
                        }
                    }
                    Some(Ok(Message::Bytes(_))) => {}
                    Some(Err(WebSocketError::ConnectionClose(ev))) => {
                        return (Ended::Lost(CloseCode(ev.code)), opened);
                    }
                    Some(Err(e)) => {
                        set.last_error.set(Some(e.to_string()));
                        return (Ended::Lost(CloseCode::ABNORMAL), opened);
                    }
                    None => return (Ended::Lost(CloseCode::ABNORMAL), opened),
                }
            }
            _ = heartbeat => {
                let limit = (options.ping_interval + options.pong_timeout).as_secs_f64() * 1000.0;
                if now_ms() - last_heard > limit {
                    set.last_error.set(Some("no answer from the server: reconnecting".into()));
                    return (Ended::Lost(CloseCode::HEARTBEAT_TIMEOUT), opened);
                }
                heartbeat = sleep(options.ping_interval).fuse();
                if opened {
                    ping_seq += 1;
                    let id = format!("p{ping_seq}");
                    ping_sent = Some((id.clone(), now_ms()));
                    let ping = codec::encode(&ClientFrame::Ping { id: Some(id.into()) });
                    if tx.send(Message::Text(ping)).await.is_err() {
                        return (Ended::Lost(CloseCode::ABNORMAL), opened);
                    }
                }
            }
            _ = wake.next() => {
                if opened {
                    pace = sleep(Duration::ZERO).fuse();
                }
            }
            _ = pace => {
                if opened {
                    match flush(ws, &mut tx).await {
                        Ok(Some(wait)) => pace = sleep(wait).fuse(),
                        Ok(None) => pace = sleep(Duration::from_secs(3600)).fuse(),
                        Err(end) => return (end, opened),
                    }
                }
            }
            c = ctrl.next() => match c {
                Some(Ctrl::Close) => return (Ended::Closed, opened),
                Some(_) => {}
                None => return (Ended::Stopped, opened),
            },
        }
    }
}

type Tx = futures::stream::SplitSink<Socket, Message>;

async fn send_frames(ws: WebSocket, tx: &mut Tx, frames: &[ClientFrame]) -> Result<(), Ended> {
    if frames.is_empty() {
        return Ok(());
    }
    tx.send(Message::Text(codec::encode_batch(frames)))
        .await
        .map_err(|_| Ended::Lost(CloseCode::ABNORMAL))?;
    ws.set().frames_out.update(|n| *n += frames.len() as u64);
    Ok(())
}

/// After `welcome`: every subscription in one batch, then unacked publishes first in the
/// queue.
async fn restore(ws: WebSocket, tx: &mut Tx) -> Result<(), Ended> {
    let subscribes: Vec<ClientFrame> = ws
        .core
        .try_update_value(|c| {
            let unacked = std::mem::take(&mut c.in_flight);
            c.outbox.requeue_front(unacked, now_ms());
            // Queued (un)subscribes are superseded by the registry.
            c.outbox.retain(|f| {
                !matches!(
                    f,
                    ClientFrame::Subscribe { .. } | ClientFrame::Unsubscribe { .. }
                )
            });
            c.subs
                .iter()
                .map(|(channel, e)| ClientFrame::Subscribe {
                    id: None,
                    channel: channel.as_str().into(),
                    since: e.position.clone(),
                    presence: e.presence.clone().map(Into::into),
                })
                .collect()
        })
        .unwrap_or_default();
    ws.refresh_queued();
    send_frames(ws, tx, &subscribes).await
}

/// Sends what the pacer says is due; returns how long to wait before the next check.
async fn flush(ws: WebSocket, tx: &mut Tx) -> Result<Option<Duration>, Ended> {
    let now = now_ms();
    let (frames, next) = ws
        .core
        .try_update_value(
            |c| match c.pacer.due(now, c.outbox.len(), c.outbox.oldest()) {
                Due::Idle => (Vec::new(), None),
                Due::At(t) => (
                    Vec::new(),
                    Some(Duration::from_secs_f64((t - now).max(0.0) / 1000.0)),
                ),
                Due::Now(n) => {
                    let frames = c.outbox.take(n);
                    c.pacer.sent(now);
                    for f in &frames {
                        if matches!(
                            f,
                            ClientFrame::Publish {
                                id: Some(_),
                                ephemeral: false,
                                ..
                            }
                        ) {
                            c.in_flight.push(f.clone());
                        }
                    }
                    let more = !c.outbox.is_empty();
                    (frames, more.then_some(Duration::ZERO))
                }
            },
        )
        .unwrap_or_default();
    send_frames(ws, tx, &frames).await?;
    ws.refresh_queued();
    Ok(next)
}

/// Everything but `welcome` and `pong`.
fn on_frame(ws: WebSocket, frame: ServerFrame) {
    let set = ws.set();
    match frame {
        ServerFrame::Ack { id, .. } => {
            ws.core.try_update_value(|c| {
                c.in_flight.retain(|f| f.id().is_none_or(|i| *i != id));
            });
            ws.refresh_queued();
        }
        ServerFrame::Response { id, result } => resolve(ws, &id, Ok(result.to_value())),
        ServerFrame::Error { id, code, message } => {
            let text = format!("{code}: {message}");
            if let Some(id) = &id {
                // A refused publish is done with: it will not be acked.
                ws.core
                    .try_update_value(|c| c.in_flight.retain(|f| f.id() != Some(id)));
                ws.refresh_queued();
                resolve(ws, id, Err(RequestError::Server { code, message }));
            }
            set.last_error.set(Some(text));
        }
        ServerFrame::Subscribed {
            channel,
            position,
            presence,
            ..
        } => with_sub(ws, &channel, |e| {
            e.position = Some(position);
            e.active.set(true);
            if let Some(members) = presence {
                e.members.set(members);
            }
        }),
        ServerFrame::Unsubscribed { channel } => {
            with_sub(ws, &channel, |e| e.active.set(false));
        }
        ServerFrame::Message {
            channel,
            offset,
            epoch,
            from,
            data,
            ts,
            ephemeral,
        } => {
            let buffer = ws.core.try_with_value(|c| c.message_buffer).unwrap_or(1);
            with_sub(ws, &channel, |e| {
                if let (Some(offset), Some(epoch)) = (offset, epoch) {
                    e.position = Some(StreamPosition { offset, epoch });
                }
                e.messages.update(|m| {
                    m.push_back(ChannelMessage {
                        offset,
                        from,
                        data: data.to_value(),
                        ts,
                        ephemeral,
                    });
                    while m.len() > buffer {
                        m.pop_front();
                    }
                });
            });
        }
        ServerFrame::Presence {
            channel,
            action,
            member,
            ..
        } => with_sub(ws, &channel, |e| {
            e.members.update(|ms| {
                ms.retain(|m| m.user_id != member.user_id);
                if action == PresenceAction::Join {
                    ms.push(member.clone());
                    ms.sort_by(|a, b| a.user_id.cmp(&b.user_id));
                }
            });
            e.last_presence.set(Some(PresenceEvent { action, member }));
        }),
        ServerFrame::Direct { from, data } => set.directs.update(|d| {
            d.push_back((from, data.to_value()));
            while d.len() > 50 {
                d.pop_front();
            }
        }),
        ServerFrame::Welcome { .. } | ServerFrame::Pong { .. } => {}
    }
}

fn with_sub(ws: WebSocket, channel: &Channel, f: impl FnOnce(&mut SubEntry)) {
    ws.core.try_update_value(|c| {
        if let Some(e) = c.subs.get_mut(channel.as_str()) {
            f(e);
        }
    });
}

fn resolve(ws: WebSocket, id: &RequestId, result: Result<Value, RequestError>) {
    if let Some(Some(tx)) = ws.core.try_update_value(|c| c.requests.remove(id.as_str())) {
        let _ = tx.send(result);
    }
}

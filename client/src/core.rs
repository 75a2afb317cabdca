//! The client's protocol state machine, without IO: the connection's life (connect,
//! welcome, heartbeat, reconnect by close code with backoff), the outbox and its pacing,
//! publishes until acked, requests until answered, the subscription registry and what is
//! restored after a reconnect.
//!
//! A driver owns the socket and the clock. It tells the core what happened
//! ([`ClientCore::on_connected`], [`ClientCore::on_text`], [`ClientCore::on_disconnected`],
//! [`ClientCore::on_tick`]) and what the application wants ([`ClientCore::publish`],
//! [`ClientCore::subscribe`], …), then drains what the core wants done:
//! [`ClientCore::poll_action`] (open or close a socket, fetch a token),
//! [`ClientCore::poll_transmit`] (text to send) and [`ClientCore::poll_event`] (what to tell
//! the application), and sleeps until [`ClientCore::next_deadline`]. Time is milliseconds
//! on the driver's monotonic clock; randomness comes from a seed.
//!
//! Guarantees (property-tested in `tests/sim.rs` against a simulated server that
//! disconnects, refuses, rate-limits and restarts at random):
//! - every publish the core accepted ends in exactly one [`Event::Published`], success or
//!   failure, and those events come in the order the publishes were accepted;
//! - a publish is kept until the server acks or refuses it for good: it is sent again after
//!   a reconnect (the server's idempotent publish drops the duplicate) and after a
//!   retryable refusal (`rate_limited`, `unavailable`);
//! - sending is paced by the limits the server announced, so a full outbox drains without
//!   hitting the rate limit; no frame larger than `max_frame_bytes` is ever sent;
//! - each subscription delivers its channel's stored messages in offset order, each once:
//!   it remembers the last offset delivered and resubscribes from it after a reconnect
//!   (the server re-sends what was missed); a jump in the offsets while live is filled from
//!   history before anything after it is delivered, and a periodic position check notices
//!   a loss no later message would reveal. When missed messages cannot be had, the
//!   subscription says so ([`Recovery::Reset`]) instead of carrying on silently.

use std::collections::VecDeque;
use std::time::Duration;

use switchboard_protocol::{
    Channel, ClientFrame, ClientId, ClientInfo, CloseCode, ErrorCode, Limits, Member, Payload,
    PresenceAction, Reconnect, RequestId, Sender, ServerFrame, StreamPosition, Unrecovered, codec,
};

use crate::backoff::Backoff;
use crate::outbox::{BatchOptions, Due, Outbox, Overflow, Pacer, SendError};
use crate::vecmap::{VecMap, VecSet};

/// Milliseconds on the driver's monotonic clock.
pub type Ms = u64;

/// A tick this much later than the deadline it was set for means the timer itself was
/// held back (a background tab runs timers once a minute; a frozen one not at all).
const LATE_WAKE_MS: Ms = 1_000;

/// How the client behaves. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct Options {
    /// Reconnect delays. Defaults to full jitter, 500 ms growing ×2 up to 30 s.
    pub backoff: Backoff,
    /// Give up after this many failed attempts in a row. Defaults to `None` (never).
    pub max_attempts: Option<u32>,
    /// How long opening a socket and receiving `welcome` may take. Defaults to 10 s.
    pub connect_timeout: Duration,
    /// How often to send `ping` while connected (it measures the round-trip time too).
    /// Defaults to 10 s.
    pub ping_interval: Duration,
    /// A ping not answered within this time means a dead link: the socket is replaced.
    /// Only an outstanding ping is judged, against its own deadline, so a background tab
    /// whose timers run late does not reconnect for nothing. Defaults to 10 s.
    pub pong_timeout: Duration,
    /// A connection that stayed up this long resets the backoff; one that drops sooner
    /// (closed as a slow consumer, rate limited) backs off further. Defaults to 10 s.
    pub stable_after: Duration,
    /// Frames kept while offline or waiting to be sent (publishes, requests, directs).
    /// Defaults to 256.
    pub outbox_capacity: usize,
    /// What a full outbox does with a new frame. Defaults to [`Overflow::Reject`].
    pub overflow: Overflow,
    /// Minimum time between two WebSocket messages. Defaults to `None`.
    pub throttle: Option<Duration>,
    /// Send queued frames together as one batch. Defaults to `None`.
    pub batch: Option<BatchOptions>,
    /// How long a request waits for its response. Defaults to 10 s.
    pub request_timeout: Duration,
    /// Ask for a fresh token this long before the current one expires, and send it in
    /// `hello`. Defaults to 30 s.
    pub token_refresh_margin: Duration,
    /// A token provider is configured: a close asking for a new token (43xx) reconnects
    /// with a fresh one instead of stopping. Defaults to `false`.
    pub has_token_provider: bool,
    /// Sent in `hello` for the server's logs. Defaults to `None`.
    pub client_info: Option<ClientInfo>,
    /// Connect at once; otherwise on [`ClientCore::open`]. Defaults to `true`.
    pub immediate: bool,
    /// How often a live subscription asks the server for its channel's position, to notice
    /// messages lost without a later one revealing the gap (Centrifugo's default).
    /// Defaults to 40 s; `None` turns it off.
    pub position_check: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            max_attempts: None,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            outbox_capacity: 256,
            overflow: Overflow::Reject,
            throttle: None,
            batch: None,
            request_timeout: Duration::from_secs(10),
            token_refresh_margin: Duration::from_secs(30),
            has_token_provider: false,
            client_info: None,
            immediate: true,
            position_check: Some(Duration::from_secs(40)),
        }
    }
}

/// Where the connection is, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Opening the socket, waiting for `welcome`.
    Connecting,
    /// `welcome` received.
    Open,
    /// Lost; attempt `attempt` starts at `at`.
    Reconnecting {
        /// The attempt about to be made (1-based).
        attempt: u32,
        /// When it starts.
        at: Ms,
    },
    /// Not connected and not trying: [`ClientCore::close`] was called (frames still
    /// queue), or the server refused the client, or it gave up.
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

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a socket (fetching a token first, if there is a provider), then call
    /// [`ClientCore::on_connected`], or [`ClientCore::on_disconnected`] if it fails.
    Connect,
    /// Close the socket with this code. Nothing more from that socket may reach the core.
    Disconnect {
        /// The close code to send.
        code: CloseCode,
        /// Why.
        reason: String,
    },
    /// Fetch a fresh token and pass it to [`ClientCore::refresh_token`].
    RefreshToken,
}

/// The id of a publish, as [`ClientCore::publish`] returned it.
pub type PublishId = RequestId;

/// How a publish ended: its offset (none for ephemeral), or why it failed.
pub type PublishResult = Result<Option<u64>, PublishError>;

/// Why a publish failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The server refused it (`forbidden`, `invalid_channel`, `too_large`, …).
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// Dropped from a full outbox to make room ([`Overflow::DropOldest`]).
    Dropped,
    /// The connection closed for good before it was sent.
    Closed,
    /// The connection closed for good after it was sent and before its ack: the server may
    /// or may not have published it.
    Unconfirmed,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// No response within the request timeout.
    Timeout,
    /// The server answered with an `error`.
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The connection dropped after the request was sent: it may or may not have run.
    Disconnected,
    /// The connection closed for good.
    Closed,
    /// It could not be queued (typed drivers report this through the request's result).
    NotSent(SendError),
    /// The result did not deserialize as the type asked for (typed drivers).
    Decode(String),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("request timed out"),
            Self::Server { code, message } => write!(f, "{code}: {message}"),
            Self::Disconnected => f.write_str("disconnected before the response"),
            Self::Closed => f.write_str("connection closed"),
            Self::NotSent(e) => write!(f, "not sent: {e}"),
            Self::Decode(e) => write!(f, "unexpected result: {e}"),
        }
    }
}

impl std::error::Error for RequestError {}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Server { code, message } => write!(f, "{code}: {message}"),
            Self::Dropped => f.write_str("dropped from a full outbox"),
            Self::Closed => f.write_str("connection closed"),
            Self::Unconfirmed => f.write_str("connection closed before the ack"),
        }
    }
}

impl std::error::Error for PublishError {}

/// A subscription's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubState {
    /// Sent (or waiting for the connection); no answer yet.
    Subscribing,
    /// Confirmed; messages after `position` arrive.
    Live {
        /// The stream position the server confirmed (or the one delivered when the state
        /// changed while live).
        position: StreamPosition,
        /// How it got here: a first subscribe, a recovery, a filled gap, or a reset.
        recovery: Recovery,
    },
    /// Refused for good (`forbidden`, `invalid_channel`, …).
    Failed {
        /// The error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
}

/// How a subscription (re)started, or what happened to it while live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Subscribed without a position (the first time): the messages from now on, after
    /// the rewound ones if it asked for some.
    Fresh,
    /// Resubscribed from the last position delivered (after a reconnect, or a server
    /// restart), and every missed message was delivered, in order, right after this state.
    Recovered,
    /// A jump in the offsets was noticed while live (or by the position check), and every
    /// missing message was fetched and delivered in order before the ones after it.
    GapFilled,
    /// Missed messages cannot be delivered, for this reason: reload the channel's state
    /// (the rewound messages, if it asked for some, follow this state).
    Reset(Unrecovered),
}

/// How to subscribe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Join the channel's presence set with this member info.
    pub presence: Option<Payload>,
    /// On the first subscribe, and after a [`Recovery::Reset`], receive up to this many of
    /// the latest stored messages first (a chat's recent history). Defaults to 0.
    pub rewind: u32,
}

/// A message received on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The channel.
    pub channel: Channel,
    /// Stream offset (`None` for ephemeral messages).
    pub offset: Option<u64>,
    /// Who sent it (`None` when the server did).
    pub from: Option<Sender>,
    /// The payload.
    pub data: Payload,
    /// Server time of publication, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Typing indicators and the like.
    pub ephemeral: bool,
}

/// What the application hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection state changed.
    State(ConnState),
    /// `welcome`: connected (or the token was refreshed).
    Welcome {
        /// This connection's id.
        client_id: ClientId,
        /// The authenticated user, if any.
        user_id: Option<String>,
        /// The limits the server announced.
        limits: Limits,
        /// The server's clock at the time, when it said.
        server_ts: Option<u64>,
    },
    /// The socket closed.
    Disconnected {
        /// The close code (1006 when there was none).
        code: CloseCode,
        /// The close reason or the error.
        reason: String,
        /// Whether the client will reconnect by itself.
        reconnecting: bool,
    },
    /// A publish ended: acked (with its offset, none for ephemeral) or failed for good.
    /// Exactly one per accepted publish, in the order they were accepted.
    Published {
        /// The publish's id.
        id: PublishId,
        /// The outcome.
        result: PublishResult,
    },
    /// A request ended.
    Response {
        /// The request's id.
        id: RequestId,
        /// The result or why there is none.
        result: Result<Payload, RequestError>,
    },
    /// A subscription's state changed.
    Subscription {
        /// The channel.
        channel: Channel,
        /// Its new state.
        state: SubState,
    },
    /// A message on a subscribed channel.
    Message(Message),
    /// A room's members, from a `subscribed` with presence.
    Members {
        /// The channel.
        channel: Channel,
        /// Its presence set, sorted by user id.
        members: Vec<Member>,
    },
    /// Someone joined or left a room.
    Presence {
        /// The channel.
        channel: Channel,
        /// Join or leave.
        action: PresenceAction,
        /// Who.
        member: Member,
        /// Members after the change.
        count: u32,
    },
    /// A direct message to this connection.
    Direct {
        /// The sender.
        from: Sender,
        /// The payload.
        data: Payload,
    },
    /// A direct message this client sent was refused (`target_gone`, `target_busy`,
    /// `forbidden`).
    DirectFailed {
        /// The id [`ClientCore::direct`] returned.
        id: RequestId,
        /// Why.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// A pong: the round-trip time, and the server's clock when it answered.
    Pong {
        /// Round-trip time in milliseconds.
        rtt_ms: u64,
        /// The server's clock, when it said.
        server_ts: Option<u64>,
    },
    /// An `error` the server sent about no frame of ours in particular.
    ServerError {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// A frame from the server that could not be decoded.
    BadFrame(String),
}

/// A holder of a subscription, as [`ClientCore::subscribe`] returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubKey {
    /// The channel.
    pub channel: Channel,
    holder: u64,
}

enum Conn {
    /// Not connected and not trying.
    Idle,
    /// Waiting before the next attempt.
    Waiting { until: Ms },
    /// The driver is opening a socket, or the socket is open and `welcome` has not come.
    Connecting { deadline: Ms, opened: bool },
    /// Connected.
    Open {
        since: Ms,
        next_ping: Ms,
        /// The outstanding ping: its id, when it was sent (or re-armed), and whether that
        /// time measures a round trip (not after a re-arm).
        ping: Option<(String, Ms, bool)>,
    },
}

/// A frame waiting in the outbox.
#[derive(Debug, Clone)]
enum Item {
    /// `sent`: it went out on some connection and was not answered.
    Publish {
        seq: u64,
        frame: ClientFrame,
        sent: bool,
    },
    Ephemeral(ClientFrame),
    Request(ClientFrame),
    Direct(ClientFrame),
}

impl Item {
    fn frame(&self) -> &ClientFrame {
        match self {
            Item::Publish { frame, .. }
            | Item::Ephemeral(frame)
            | Item::Request(frame)
            | Item::Direct(frame) => frame,
        }
    }
}

struct Sub {
    holders: VecSet<u64>,
    presence: Option<Payload>,
    rewind: u32,
    /// The position of the last stored message delivered (or announced by `subscribed`).
    position: Option<StreamPosition>,
    state: SubState,
    /// The id of the subscribe frame waiting for its answer, and whether it asked to
    /// recover from a position.
    pending: Option<RequestId>,
    recovering: bool,
    /// Messages that arrived before `subscribed`: delivered after its state (the position
    /// moves only then, so a subscribe that fails and is retried asks from the old one).
    early: Vec<(StreamPosition, Message)>,
    /// A `history` request filling a gap: its id; the messages after the gap wait in
    /// `held` meanwhile.
    filling: Option<RequestId>,
    held: VecDeque<(StreamPosition, Message)>,
    /// The next position check, and the one in flight.
    next_check: Option<Ms>,
    checking: Option<RequestId>,
    /// Not before this time (after an `unavailable`).
    retry_at: Option<Ms>,
    retries: u32,
}

/// Messages one subscription holds while it fills a gap; past it, it gives up and
/// reports a reset.
const MAX_HELD: usize = 10_000;

/// Most messages one gap-filling request asks for (the server may return fewer; the
/// rest is asked for next).
const FILL_PAGE: u64 = 1000;

/// What a `history` request made by the core itself is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Internal {
    /// Fill a gap in a channel's offsets.
    Fill(Channel),
    /// Ask for a channel's position.
    Check(Channel),
}

/// The result of the `history` method, as the core reads it.
#[derive(serde::Deserialize)]
struct HistoryPage {
    position: StreamPosition,
    #[serde(default)]
    messages: Vec<Payload>,
    #[serde(default)]
    unrecovered: Option<Unrecovered>,
}

struct Req {
    deadline: Ms,
    sent: bool,
}

/// A token bucket mirroring the server's rate limit, with a margin.
struct Bucket {
    tokens: f64,
    rate_per_ms: f64,
    burst: f64,
    last: Ms,
}

impl Bucket {
    fn new(limits: &Limits, now: Ms) -> Self {
        // 90% of what the server allows: the two clocks do not tick together.
        let burst = (f64::from(limits.rate_burst) * 0.9).floor().max(1.0);
        Self {
            tokens: burst,
            rate_per_ms: f64::from(limits.rate_per_sec) * 0.9 / 1000.0,
            burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Ms) {
        let elapsed = now.saturating_sub(self.last) as f64;
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
    }

    fn available(&self) -> usize {
        self.tokens.max(0.0).floor() as usize
    }

    fn take(&mut self, n: usize) {
        self.tokens -= n as f64;
    }

    /// When the next whole token is there.
    fn next_at(&self, now: Ms) -> Ms {
        let missing = (1.0 - self.tokens).max(0.0);
        now + (missing / self.rate_per_ms.max(1e-9)).ceil() as Ms
    }
}

/// The client's state (see the module docs).
pub struct ClientCore {
    opts: Options,
    conn: Conn,
    /// Failed attempts in a row.
    attempt: u32,
    /// Refused or given up: sends fail until [`ClientCore::open`].
    stopped: bool,
    outbox: Outbox<Item>,
    pacer: Pacer,
    /// Frames sent ahead of the outbox: hello, subscribe, unsubscribe, ping.
    control: VecDeque<ClientFrame>,
    /// Publishes sent and not yet answered, by id, with their sequence number and frame.
    in_flight: VecMap<RequestId, (u64, ClientFrame)>,
    /// Accepted publishes by sequence number, with their outcome once known: reported in
    /// order, each as soon as every earlier one has been.
    outcomes: VecMap<u64, (PublishId, Option<PublishResult>)>,
    next_seq: u64,
    requests: VecMap<RequestId, Req>,
    /// Direct messages sent, waiting for an error that may not come (forgotten on the
    /// next reconnect).
    directs: VecSet<RequestId>,
    subs: VecMap<Channel, Sub>,
    /// Which channel a subscribe frame's id belongs to.
    sub_ids: VecMap<RequestId, Channel>,
    /// The core's own `history` requests, with their deadlines.
    internal: VecMap<RequestId, (Internal, Ms)>,
    /// Publishes refused with a retryable error wait until then.
    paused_until: Option<Ms>,
    /// Retryable refusals in a row (their delay grows).
    retries: u32,
    /// When the pacer or the bucket next allows a send.
    pace_at: Option<Ms>,
    limits: Limits,
    bucket: Bucket,
    /// When the current token expires, if known.
    token_expires: Option<Ms>,
    token_refresh_asked: bool,
    transmit: VecDeque<String>,
    events: VecDeque<Event>,
    actions: VecDeque<Action>,
    rng: u64,
    id_prefix: String,
    next_id: u64,
    next_holder: u64,
    ping_seq: u64,
}

impl ClientCore {
    /// A client at time `now`; `seed` makes its ids and jitter (64 random bits).
    pub fn new(opts: Options, seed: u64, now: Ms) -> Self {
        let limits = Limits::default();
        let mut core = Self {
            outbox: Outbox::new(opts.outbox_capacity.max(1), opts.overflow),
            pacer: Pacer {
                throttle: opts.throttle,
                batch: opts.batch,
                last_send: None,
            },
            conn: Conn::Idle,
            attempt: 0,
            stopped: false,
            control: VecDeque::new(),
            in_flight: VecMap::new(),
            outcomes: VecMap::new(),
            next_seq: 0,
            requests: VecMap::new(),
            directs: VecSet::new(),
            subs: VecMap::new(),
            sub_ids: VecMap::new(),
            internal: VecMap::new(),
            paused_until: None,
            retries: 0,
            pace_at: None,
            bucket: Bucket::new(&limits, now),
            limits,
            token_expires: None,
            token_refresh_asked: false,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            actions: VecDeque::new(),
            rng: seed | 1,
            id_prefix: String::new(),
            next_id: 0,
            next_holder: 0,
            ping_seq: 0,
            opts,
        };
        // 128 random bits: long random ids are deduplicated across reconnects by the
        // server, also for anonymous clients.
        core.id_prefix = format!("{:016x}{:016x}", core.random_u64(), core.random_u64());
        if core.opts.immediate {
            core.connect(now);
        } else {
            core.events.push_back(Event::State(ConnState::Closed));
        }
        core
    }

    // ----- what the driver drains -----

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next text message to send on the socket.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmit.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`ClientCore::on_tick`] must run next, if anything is scheduled.
    pub fn next_deadline(&self) -> Option<Ms> {
        let mut next: Option<Ms> = None;
        let mut at = |t: Ms| next = Some(next.map_or(t, |n| n.min(t)));
        match &self.conn {
            Conn::Idle => {}
            Conn::Waiting { until } => at(*until),
            Conn::Connecting { deadline, .. } => at(*deadline),
            Conn::Open {
                next_ping, ping, ..
            } => {
                at(*next_ping);
                if let Some((_, sent, _)) = ping {
                    at(sent + ms(self.opts.pong_timeout));
                }
                if let Some(t) = self.pace_at {
                    at(t);
                }
                if let Some(t) = self.paused_until {
                    at(t);
                }
                if let Some(t) = self.refresh_at()
                    && !self.token_refresh_asked
                {
                    at(t);
                }
                for sub in self.subs.values() {
                    if let Some(t) = sub.retry_at {
                        at(t);
                    }
                    if let Some(t) = sub.next_check {
                        at(t);
                    }
                }
                for (_, deadline) in self.internal.values() {
                    at(*deadline);
                }
            }
        }
        for req in self.requests.values() {
            at(req.deadline);
        }
        next
    }

    // ----- what the driver reports -----

    /// The socket the driver opened for [`Action::Connect`] is open.
    pub fn on_connected(&mut self, now: Ms) {
        let Conn::Connecting { deadline, .. } = self.conn else {
            return;
        };
        self.conn = Conn::Connecting {
            deadline,
            opened: true,
        };
        let hello = ClientFrame::Hello {
            token: None,
            client: self.opts.client_info.clone(),
            resume: None,
        };
        // Not paced: the server's bucket is full on a new connection.
        self.transmit.push_back(codec::encode(&hello));
        let _ = now;
    }

    /// The current socket closed (`code` is `None` when it failed without a close frame,
    /// or could not be opened).
    pub fn on_disconnected(&mut self, code: Option<CloseCode>, reason: &str, now: Ms) {
        let (was_open_since, had_socket) = match self.conn {
            Conn::Open { since, .. } => (Some(since), true),
            Conn::Connecting { .. } => (None, true),
            Conn::Idle | Conn::Waiting { .. } => (None, false),
        };
        if !had_socket {
            return;
        }
        let code = code.unwrap_or(CloseCode::ABNORMAL);
        if was_open_since
            .is_some_and(|since| now.saturating_sub(since) >= ms(self.opts.stable_after))
        {
            self.attempt = 0;
        }
        self.lose_connection();
        let rule = code.reconnect();
        let refused = match rule {
            Reconnect::Never => true,
            Reconnect::WithNewToken => !self.opts.has_token_provider,
            Reconnect::Backoff | Reconnect::Now => false,
        };
        let gave_up = self
            .opts
            .max_attempts
            .is_some_and(|max| self.attempt >= max);
        let reconnecting = !refused && !gave_up;
        self.events.push_back(Event::Disconnected {
            code,
            reason: reason.to_owned(),
            reconnecting,
        });
        if !reconnecting {
            self.stop();
            return;
        }
        let delay = match rule {
            // The first try after a short random delay, so a restarted server does not
            // get everyone in the same millisecond.
            Reconnect::Now if self.attempt == 0 => {
                (self.random_f64() * ms(self.opts.backoff.base) as f64) as Ms
            }
            _ => {
                let random = self.random_f64();
                ms(self.opts.backoff.delay(self.attempt, random))
            }
        };
        self.attempt = self.attempt.saturating_add(1);
        let until = now + delay;
        self.conn = Conn::Waiting { until };
        self.events.push_back(Event::State(ConnState::Reconnecting {
            attempt: self.attempt,
            at: until,
        }));
    }

    /// A text message from the server.
    pub fn on_text(&mut self, text: &str, now: Ms) {
        for frame in codec::decode_server(text) {
            match frame {
                Ok(frame) => self.on_frame(frame, now),
                Err(e) => self.events.push_back(Event::BadFrame(e.to_string())),
            }
        }
        self.flush(now);
    }

    /// Time passed: run whatever is due at `now`.
    pub fn on_tick(&mut self, now: Ms) {
        // Requests past their deadline.
        let expired: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| now >= r.deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            self.requests.remove(&id);
            self.outbox
                .retain(|item| !matches!(item, Item::Request(f) if f.id() == Some(&id)));
            self.events.push_back(Event::Response {
                id,
                result: Err(RequestError::Timeout),
            });
        }
        match &mut self.conn {
            Conn::Idle => {}
            Conn::Waiting { until } => {
                if now >= *until {
                    self.connect(now);
                }
            }
            Conn::Connecting { deadline, opened } => {
                if now >= *deadline {
                    let why = if *opened {
                        "no welcome within the connect timeout"
                    } else {
                        "the socket did not open within the connect timeout"
                    };
                    self.actions.push_back(Action::Disconnect {
                        code: CloseCode::NORMAL,
                        reason: "connect timeout".into(),
                    });
                    self.on_disconnected(None, why, now);
                }
            }
            Conn::Open {
                next_ping, ping, ..
            } => {
                if let Some((_, sent, timed)) = ping
                    && now >= *sent + ms(self.opts.pong_timeout)
                {
                    let deadline = *sent + ms(self.opts.pong_timeout);
                    if now > deadline + LATE_WAKE_MS {
                        // The timer ran late (a throttled or frozen tab): the pong may be
                        // waiting unread behind it. Give it its full time from now
                        // instead of judging the link by a stale clock.
                        *sent = now;
                        *timed = false;
                    } else {
                        self.actions.push_back(Action::Disconnect {
                            code: CloseCode::NORMAL,
                            reason: "no pong: dead link".into(),
                        });
                        self.on_disconnected(None, "no pong within the pong timeout", now);
                        return;
                    }
                }
                if ping.is_none() && now >= *next_ping {
                    self.ping_seq += 1;
                    let id = format!("p{}", self.ping_seq);
                    *ping = Some((id.clone(), now, true));
                    *next_ping = now + ms(self.opts.ping_interval);
                    self.control.push_back(ClientFrame::Ping {
                        id: Some(id.into()),
                    });
                } else if now >= *next_ping {
                    *next_ping = now + ms(self.opts.ping_interval);
                }
                if !self.token_refresh_asked
                    && let Some(at) = self.refresh_at()
                    && now >= at
                {
                    self.token_refresh_asked = true;
                    self.actions.push_back(Action::RefreshToken);
                }
                let retry: Vec<Channel> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| s.retry_at.is_some_and(|t| now >= t))
                    .map(|(c, _)| c.clone())
                    .collect();
                for channel in retry {
                    self.send_subscribe(&channel);
                }
                self.internal_timeouts(now);
                self.position_checks(now);
                self.flush(now);
            }
        }
    }

    // ----- what the application asks -----

    /// Connects (again) after [`ClientCore::close`], after being refused, or with
    /// `immediate: false`.
    pub fn open(&mut self, now: Ms) {
        self.stopped = false;
        if matches!(self.conn, Conn::Idle | Conn::Waiting { .. }) {
            self.attempt = 0;
            self.connect(now);
        }
    }

    /// Retry at once if waiting to reconnect (the browser came back online, the tab became
    /// visible).
    pub fn kick(&mut self, now: Ms) {
        if matches!(self.conn, Conn::Waiting { .. }) {
            self.connect(now);
        }
    }

    /// Disconnects and stays offline until [`ClientCore::open`]; publishes made meanwhile
    /// are queued (the "go offline" switch).
    pub fn close(&mut self, now: Ms) {
        let _ = now;
        if matches!(self.conn, Conn::Open { .. } | Conn::Connecting { .. }) {
            self.actions.push_back(Action::Disconnect {
                code: CloseCode::NORMAL,
                reason: "closed by the client".into(),
            });
            self.lose_connection();
        }
        if !matches!(self.conn, Conn::Idle) {
            self.conn = Conn::Idle;
            self.events.push_back(Event::State(ConnState::Closed));
        }
    }

    /// Whether the connection is open.
    pub fn is_open(&self) -> bool {
        matches!(self.conn, Conn::Open { .. })
    }

    /// The limits the server announced (the defaults before the first `welcome`).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Frames waiting to be sent, plus publishes sent and not yet acked.
    pub fn queued(&self) -> usize {
        self.outbox.len() + self.in_flight.len()
    }

    /// Publishes `data` on `channel`. Stored publishes are queued while offline and kept
    /// until acked; the result comes as one [`Event::Published`] with the returned id.
    /// Ephemeral ones are sent only while connected, never queued or retried, and are
    /// answered by no event.
    pub fn publish(
        &mut self,
        channel: &Channel,
        data: Payload,
        ephemeral: bool,
        skip_self: bool,
        now: Ms,
    ) -> Result<PublishId, SendError> {
        if self.stopped {
            return Err(SendError::Closed);
        }
        let id = self.next_request_id("m");
        let frame = ClientFrame::Publish {
            id: (!ephemeral).then(|| id.clone()),
            channel: channel.clone(),
            data,
            ephemeral,
            skip_self,
        };
        self.check_size(&frame)?;
        if ephemeral {
            if !self.is_open() {
                return Err(SendError::NotConnected);
            }
            self.push(Item::Ephemeral(frame), now)?;
        } else {
            let seq = self.next_seq;
            self.push(
                Item::Publish {
                    seq,
                    frame,
                    sent: false,
                },
                now,
            )?;
            self.next_seq += 1;
            self.outcomes.insert(seq, (id.clone(), None));
        }
        self.flush(now);
        Ok(id)
    }

    /// The stored publishes not acked yet, oldest first, as frames with their ids: what an
    /// app saves to keep them across its own restart (a page reload) and gives to
    /// [`ClientCore::restore_publishes`] in the next run.
    pub fn unacked_publishes(&self) -> Vec<ClientFrame> {
        let all: Vec<(u64, ClientFrame)> = self
            .in_flight
            .values()
            .cloned()
            .chain(self.outbox.iter().filter_map(|item| match item {
                Item::Publish { seq, frame, .. } => Some((*seq, frame.clone())),
                _ => None,
            }))
            .collect();
        by_seq(all).into_iter().map(|(_, f)| f).collect()
    }

    /// Queues publishes an earlier run saved with [`ClientCore::unacked_publishes`], with
    /// their original ids: the server acks one it already stored with its first offset
    /// instead of storing it twice. Each ends in an [`Event::Published`] like any other;
    /// returns their ids in order. Frames that are not stored publishes with an id are
    /// skipped; so is what does not fit in the outbox.
    pub fn restore_publishes(&mut self, frames: Vec<ClientFrame>, now: Ms) -> Vec<PublishId> {
        let mut ids = Vec::new();
        for frame in frames {
            let ClientFrame::Publish {
                id: Some(id),
                ephemeral: false,
                ..
            } = &frame
            else {
                continue;
            };
            let id = id.clone();
            let seq = self.next_seq;
            // `sent`: it may have reached the server in the earlier run.
            let item = Item::Publish {
                seq,
                frame,
                sent: true,
            };
            if self.check_size(item.frame()).is_err() || self.push(item, now).is_err() {
                continue;
            }
            self.next_seq += 1;
            self.outcomes.insert(seq, (id.clone(), None));
            ids.push(id);
        }
        self.flush(now);
        ids
    }

    /// Calls `method`; the answer comes as one [`Event::Response`] with the returned id.
    /// Requests wait in the outbox while offline, within their timeout.
    pub fn request(
        &mut self,
        method: &str,
        params: Payload,
        timeout: Option<Duration>,
        now: Ms,
    ) -> Result<RequestId, SendError> {
        if self.stopped {
            return Err(SendError::Closed);
        }
        let id = self.next_request_id("r");
        let frame = ClientFrame::Request {
            id: id.clone(),
            method: method.to_owned(),
            params,
        };
        self.check_size(&frame)?;
        self.push(Item::Request(frame), now)?;
        let timeout = timeout.unwrap_or(self.opts.request_timeout);
        self.requests.insert(
            id.clone(),
            Req {
                deadline: now + ms(timeout),
                sent: false,
            },
        );
        self.flush(now);
        Ok(id)
    }

    /// Forgets a request (its caller lost interest): no event will come for it.
    pub fn cancel_request(&mut self, id: &RequestId) {
        self.requests.remove(id);
        self.outbox
            .retain(|item| !matches!(item, Item::Request(f) if f.id() == Some(id)));
    }

    /// Sends `data` to one connection. A refusal comes as [`Event::DirectFailed`].
    pub fn direct(
        &mut self,
        to: &ClientId,
        data: Payload,
        now: Ms,
    ) -> Result<RequestId, SendError> {
        if self.stopped {
            return Err(SendError::Closed);
        }
        let id = self.next_request_id("d");
        let frame = ClientFrame::Direct {
            id: Some(id.clone()),
            to: to.clone(),
            data,
        };
        self.check_size(&frame)?;
        self.push(Item::Direct(frame), now)?;
        self.flush(now);
        Ok(id)
    }

    /// Adds a holder to `channel`'s subscription (subscribing with the first one, joining
    /// presence with `presence` if it is the first to ask for it).
    pub fn subscribe(&mut self, channel: &Channel, presence: Option<Payload>, now: Ms) -> SubKey {
        self.subscribe_with(
            channel,
            SubOptions {
                presence,
                rewind: 0,
            },
            now,
        )
    }

    /// [`ClientCore::subscribe`] with every option.
    pub fn subscribe_with(&mut self, channel: &Channel, opts: SubOptions, now: Ms) -> SubKey {
        let SubOptions { presence, rewind } = opts;
        self.next_holder += 1;
        let holder = self.next_holder;
        let key = SubKey {
            channel: channel.clone(),
            holder,
        };
        if let Some(sub) = self.subs.get_mut(channel) {
            sub.holders.insert(holder);
            sub.rewind = sub.rewind.max(rewind);
            let join = sub.presence.is_none() && presence.is_some();
            if join {
                sub.presence = presence;
            }
            let state = sub.state.clone();
            self.events.push_back(Event::Subscription {
                channel: channel.clone(),
                state,
            });
            if join && self.is_open() {
                // Held without presence so far: subscribe again with it, from the position
                // seen (the server re-sends what the gap in between holds).
                self.control.push_back(ClientFrame::Unsubscribe {
                    id: None,
                    channel: channel.clone(),
                });
                self.send_subscribe(channel);
                self.flush(now);
            }
            return key;
        }
        self.subs.insert(
            channel.clone(),
            Sub {
                holders: VecSet::from_iter([holder]),
                presence,
                rewind,
                position: None,
                state: SubState::Subscribing,
                pending: None,
                recovering: false,
                early: Vec::new(),
                filling: None,
                held: VecDeque::new(),
                next_check: None,
                checking: None,
                retry_at: None,
                retries: 0,
            },
        );
        self.events.push_back(Event::Subscription {
            channel: channel.clone(),
            state: SubState::Subscribing,
        });
        if self.is_open() {
            self.send_subscribe(channel);
            self.flush(now);
        }
        key
    }

    /// Releases a holder; the last one unsubscribes. Releasing twice is harmless.
    pub fn unsubscribe(&mut self, key: &SubKey, now: Ms) {
        let Some(sub) = self.subs.get_mut(&key.channel) else {
            return;
        };
        if !sub.holders.remove(&key.holder) || !sub.holders.is_empty() {
            return;
        }
        let sub = self.subs.remove(&key.channel).expect("present");
        if let Some(id) = sub.pending {
            self.sub_ids.remove(&id);
        }
        for id in sub.filling.iter().chain(sub.checking.iter()) {
            self.internal.remove(id);
        }
        if self.is_open() {
            self.control.push_back(ClientFrame::Unsubscribe {
                id: None,
                channel: key.channel.clone(),
            });
            self.flush(now);
        }
    }

    /// A subscription's current state and position.
    pub fn subscription(&self, channel: &Channel) -> Option<(&SubState, Option<&StreamPosition>)> {
        self.subs
            .get(channel)
            .map(|s| (&s.state, s.position.as_ref()))
    }

    /// The token the driver connected with: its expiry (read from a JWT's `exp`, if it is
    /// one) schedules [`Action::RefreshToken`]. `now_unix_ms` is the wall clock.
    pub fn set_token(&mut self, token: Option<&str>, now: Ms, now_unix_ms: u64) {
        self.token_refresh_asked = false;
        self.token_expires = token
            .and_then(jwt_exp)
            .map(|exp| now + (exp * 1000).saturating_sub(now_unix_ms));
    }

    /// A fresh token for [`Action::RefreshToken`]: sent in `hello`, so the connection
    /// stays up past the old token's expiry.
    pub fn refresh_token(&mut self, token: Option<String>, now: Ms, now_unix_ms: u64) {
        self.set_token(token.as_deref(), now, now_unix_ms);
        if let Some(token) = token
            && self.is_open()
        {
            self.control.push_back(ClientFrame::Hello {
                token: Some(token),
                client: None,
                resume: None,
            });
            self.flush(now);
        }
    }

    // ----- internals -----

    fn random_u64(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn random_f64(&mut self) -> f64 {
        (self.random_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next_request_id(&mut self, kind: &str) -> RequestId {
        self.next_id += 1;
        RequestId(format!("{}-{kind}{}", self.id_prefix, self.next_id))
    }

    fn refresh_at(&self) -> Option<Ms> {
        self.token_expires
            .map(|exp| exp.saturating_sub(ms(self.opts.token_refresh_margin)))
    }

    fn check_size(&self, frame: &ClientFrame) -> Result<(), SendError> {
        let bytes = codec::encode(frame).len();
        let limit = self.limits.max_frame_bytes as usize;
        if bytes > limit {
            return Err(SendError::TooLarge { bytes, limit });
        }
        Ok(())
    }

    fn push(&mut self, item: Item, now: Ms) -> Result<(), SendError> {
        match self.outbox.push(item, now)? {
            Some(Item::Publish { seq, sent, .. }) => {
                let why = if sent {
                    PublishError::Unconfirmed
                } else {
                    PublishError::Dropped
                };
                self.resolve(seq, Err(why));
            }
            Some(Item::Request(frame)) => {
                if let Some(id) = frame.id().cloned() {
                    self.requests.remove(&id);
                    self.events.push_back(Event::Response {
                        id,
                        result: Err(RequestError::Closed),
                    });
                }
            }
            Some(_) | None => {}
        }
        Ok(())
    }

    fn connect(&mut self, now: Ms) {
        self.conn = Conn::Connecting {
            deadline: now + ms(self.opts.connect_timeout),
            opened: false,
        };
        self.actions.push_back(Action::Connect);
        self.events.push_back(Event::State(ConnState::Connecting));
    }

    /// Stopped for good: what waits for the connection fails.
    fn stop(&mut self) {
        self.conn = Conn::Idle;
        self.stopped = true;
        for item in self.outbox.take(usize::MAX) {
            match item {
                Item::Publish { seq, sent, .. } => {
                    let why = if sent {
                        PublishError::Unconfirmed
                    } else {
                        PublishError::Closed
                    };
                    self.resolve(seq, Err(why));
                }
                Item::Request(frame) => {
                    if let Some(id) = frame.id().cloned()
                        && self.requests.remove(&id).is_some()
                    {
                        self.events.push_back(Event::Response {
                            id,
                            result: Err(RequestError::Closed),
                        });
                    }
                }
                Item::Ephemeral(_) | Item::Direct(_) => {}
            }
        }
        for (id, _) in std::mem::take(&mut self.requests) {
            self.events.push_back(Event::Response {
                id,
                result: Err(RequestError::Closed),
            });
        }
        self.events.push_back(Event::State(ConnState::Closed));
    }

    /// The socket is gone: publishes in flight go back to the front of the outbox, sent
    /// requests fail at once, queued ephemeral frames are dropped (they would be stale),
    /// subscriptions wait to be restored.
    fn lose_connection(&mut self) {
        let unacked: Vec<(u64, ClientFrame)> = std::mem::take(&mut self.in_flight)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        self.outbox.requeue_front(
            by_seq(unacked)
                .into_iter()
                .map(|(seq, frame)| Item::Publish {
                    seq,
                    frame,
                    sent: true,
                })
                .collect(),
            0,
        );
        self.outbox
            .retain(|item| !matches!(item, Item::Ephemeral(_)));
        let sent: Vec<RequestId> = self
            .requests
            .iter()
            .filter(|(_, r)| r.sent)
            .map(|(id, _)| id.clone())
            .collect();
        for id in sent {
            self.requests.remove(&id);
            self.events.push_back(Event::Response {
                id,
                result: Err(RequestError::Disconnected),
            });
        }
        self.directs.clear();
        self.control.clear();
        self.sub_ids.clear();
        self.internal.clear();
        self.pace_at = None;
        self.paused_until = None;
        for (channel, sub) in &mut self.subs {
            sub.pending = None;
            sub.retry_at = None;
            sub.next_check = None;
            sub.checking = None;
            // A gap being filled: what is held comes again after the resubscribe
            // recovers from the last position delivered.
            sub.filling = None;
            sub.held.clear();
            sub.early.clear();
            if !matches!(sub.state, SubState::Subscribing | SubState::Failed { .. }) {
                sub.state = SubState::Subscribing;
                self.events.push_back(Event::Subscription {
                    channel: channel.clone(),
                    state: SubState::Subscribing,
                });
            }
        }
    }

    /// Records a publish's outcome and reports every outcome that is now next in order.
    fn resolve(&mut self, seq: u64, result: PublishResult) {
        if let Some((_, slot)) = self.outcomes.get_mut(&seq) {
            *slot = Some(result);
        }
        while self.outcomes.first().is_some_and(|(_, (_, r))| r.is_some()) {
            let Some((_, (id, result))) = self.outcomes.pop_first() else {
                break;
            };
            self.events.push_back(Event::Published {
                id,
                result: result.expect("checked"),
            });
        }
    }

    fn send_subscribe(&mut self, channel: &Channel) {
        let id = self.next_request_id("s");
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        sub.retry_at = None;
        if let Some(old) = sub.pending.replace(id.clone()) {
            self.sub_ids.remove(&old);
        }
        self.sub_ids.insert(id.clone(), channel.clone());
        sub.recovering = sub.position.is_some();
        sub.early.clear();
        self.control.push_back(ClientFrame::Subscribe {
            id: Some(id),
            channel: channel.clone(),
            since: sub.position.clone(),
            rewind: (sub.rewind > 0).then_some(sub.rewind),
            presence: sub.presence.clone(),
        });
    }

    fn on_frame(&mut self, frame: ServerFrame, now: Ms) {
        match frame {
            ServerFrame::Welcome {
                client_id,
                user_id,
                limits,
                ts,
                ..
            } => {
                if let Conn::Connecting { .. } = self.conn {
                    self.conn = Conn::Open {
                        since: now,
                        // The first ping at once: the round-trip time and the server's
                        // clock are known from the start.
                        next_ping: now,
                        ping: None,
                    };
                    self.bucket = Bucket::new(&limits, now);
                    self.limits = limits.clone();
                    self.retries = 0;
                    self.events.push_back(Event::State(ConnState::Open));
                    self.revalidate();
                    let channels: Vec<Channel> = self.subs.keys().cloned().collect();
                    for channel in channels {
                        self.send_subscribe(&channel);
                    }
                }
                self.events.push_back(Event::Welcome {
                    client_id,
                    user_id,
                    limits,
                    server_ts: ts,
                });
            }
            ServerFrame::Pong { id, ts } => {
                if let Conn::Open { ping, .. } = &mut self.conn
                    && let Some((want, sent, timed)) = ping
                    && id.as_ref().is_some_and(|id| id.as_str() == want)
                {
                    let rtt = timed.then(|| now.saturating_sub(*sent));
                    *ping = None;
                    if let Some(rtt_ms) = rtt {
                        self.events.push_back(Event::Pong {
                            rtt_ms,
                            server_ts: ts,
                        });
                    }
                }
            }
            ServerFrame::Ack { id, offset } => {
                if let Some((seq, _)) = self.in_flight.remove(&id) {
                    self.retries = 0;
                    self.resolve(seq, Ok(offset));
                }
            }
            ServerFrame::Response { id, result } => {
                if let Some((what, _)) = self.internal.remove(&id) {
                    self.on_history(what, &id, Ok(result), now);
                } else if self.requests.remove(&id).is_some() {
                    self.events.push_back(Event::Response {
                        id,
                        result: Ok(result),
                    });
                }
            }
            ServerFrame::Error { id, code, message } => self.on_error(id, code, message, now),
            ServerFrame::Subscribed {
                channel,
                position,
                recovered,
                unrecovered,
                presence,
            } => {
                let check = self.opts.position_check.map(|d| now + ms(d));
                if let Some(sub) = self.subs.get_mut(&channel) {
                    if let Some(id) = sub.pending.take() {
                        self.sub_ids.remove(&id);
                    }
                    sub.retries = 0;
                    let recovery = match unrecovered {
                        Some(why) => Recovery::Reset(why),
                        None if recovered && sub.recovering => Recovery::Recovered,
                        // Asked to recover, and the server did not say it did.
                        None if sub.recovering => Recovery::Reset(Unrecovered::Unknown),
                        None => Recovery::Fresh,
                    };
                    sub.recovering = false;
                    sub.position = Some(position.clone());
                    sub.state = SubState::Live { position, recovery };
                    sub.next_check = check;
                    let state = sub.state.clone();
                    let early = std::mem::take(&mut sub.early);
                    self.events.push_back(Event::Subscription {
                        channel: channel.clone(),
                        state,
                    });
                    if let Some(members) = presence {
                        self.events.push_back(Event::Members {
                            channel: channel.clone(),
                            members,
                        });
                    }
                    self.events
                        .extend(early.into_iter().map(|(_, m)| Event::Message(m)));
                }
            }
            ServerFrame::Unsubscribed { .. } => {}
            ServerFrame::Message {
                channel,
                from,
                data,
                ts,
                ephemeral,
                offset,
                epoch,
            } => {
                if !self.subs.contains_key(&channel) {
                    return;
                }
                let position = match (offset, epoch) {
                    (Some(offset), Some(epoch)) => Some(StreamPosition { offset, epoch }),
                    _ => None,
                };
                let message = Message {
                    channel,
                    offset,
                    from,
                    data,
                    ts,
                    ephemeral,
                };
                match position {
                    Some(position) => self.on_stored(position, message, now),
                    // Ephemeral: not part of the stream, delivered as it comes.
                    None => self.events.push_back(Event::Message(message)),
                }
            }
            ServerFrame::Presence {
                channel,
                action,
                member,
                count,
            } => {
                if self.subs.contains_key(&channel) {
                    self.events.push_back(Event::Presence {
                        channel,
                        action,
                        member,
                        count,
                    });
                }
            }
            ServerFrame::Direct { from, data } => {
                self.events.push_back(Event::Direct { from, data });
            }
        }
    }

    fn on_error(&mut self, id: Option<RequestId>, code: ErrorCode, message: String, now: Ms) {
        let retryable = matches!(
            code,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        );
        let Some(id) = id else {
            self.events.push_back(Event::ServerError { code, message });
            return;
        };
        if let Some((seq, frame)) = self.in_flight.remove(&id) {
            if retryable {
                // Sent again, first, once the pause is over.
                self.outbox.requeue_front(
                    vec![Item::Publish {
                        seq,
                        frame,
                        sent: true,
                    }],
                    now,
                );
                self.pause(code, now);
            } else {
                self.resolve(seq, Err(PublishError::Server { code, message }));
            }
            return;
        }
        if self.requests.remove(&id).is_some() {
            self.events.push_back(Event::Response {
                id,
                result: Err(RequestError::Server { code, message }),
            });
            return;
        }
        if let Some((what, _)) = self.internal.remove(&id) {
            let error = RequestError::Server { code, message };
            self.on_history(what, &id, Err(error), now);
            return;
        }
        if let Some(channel) = self.sub_ids.remove(&id) {
            let backoff = self.opts.backoff;
            if let Some(sub) = self.subs.get_mut(&channel) {
                sub.pending = None;
                if retryable {
                    // The subscription's own refusals in a row set its delay.
                    let delay = ms(backoff.ceiling(sub.retries)).max(100);
                    sub.retries = sub.retries.saturating_add(1);
                    sub.retry_at = Some(now + delay);
                } else if code == ErrorCode::AlreadySubscribed {
                    // The server has it: a confirmation will not come; keep the state.
                } else {
                    sub.state = SubState::Failed { code, message };
                    let state = sub.state.clone();
                    self.events
                        .push_back(Event::Subscription { channel, state });
                }
            }
            return;
        }
        if self.directs.remove(&id) {
            self.events
                .push_back(Event::DirectFailed { id, code, message });
            return;
        }
        self.events.push_back(Event::ServerError { code, message });
    }

    /// A stored message of a subscribed channel: delivered if it is the next one, dropped
    /// if already delivered, held behind a gap while the gap is filled.
    fn on_stored(&mut self, position: StreamPosition, message: Message, now: Ms) {
        let channel = message.channel.clone();
        let Some(sub) = self.subs.get_mut(&channel) else {
            return;
        };
        let seen = sub.position.as_ref();
        let duplicate =
            seen.is_some_and(|s| s.epoch == position.epoch && position.offset <= s.offset);
        match &sub.state {
            SubState::Failed { .. } => {}
            // Recovered or rewound messages come before `subscribed`: delivered after it,
            // so its state (a reset, say) comes first.
            SubState::Subscribing => {
                let last = sub.early.last().map(|(p, _)| p).or(seen);
                let repeated =
                    last.is_some_and(|s| s.epoch == position.epoch && position.offset <= s.offset);
                if !repeated && sub.pending.is_some() {
                    sub.early.push((position, message));
                }
            }
            SubState::Live { .. } if sub.filling.is_some() => {
                let last = sub.held.back().map(|(p, _)| p).or(seen);
                let repeated =
                    last.is_some_and(|s| s.epoch == position.epoch && position.offset <= s.offset);
                if !repeated {
                    sub.held.push_back((position, message));
                }
                if sub.held.len() > MAX_HELD {
                    self.give_up_filling(&channel, Unrecovered::TooMany);
                }
            }
            SubState::Live { .. } => match seen {
                Some(s) if s.epoch == position.epoch && position.offset > s.offset + 1 => {
                    let since = s.clone();
                    let upto = position.offset;
                    sub.held.push_back((position, message));
                    self.fill(&channel, since, upto, now);
                }
                _ if duplicate => {}
                Some(s) if s.epoch != position.epoch => {
                    // The stream was reset: what came before in the old epoch is gone.
                    sub.position = Some(position.clone());
                    sub.state = SubState::Live {
                        position,
                        recovery: Recovery::Reset(Unrecovered::Epoch),
                    };
                    let state = sub.state.clone();
                    self.events
                        .push_back(Event::Subscription { channel, state });
                    self.events.push_back(Event::Message(message));
                }
                _ => {
                    sub.position = Some(position);
                    self.events.push_back(Event::Message(message));
                }
            },
        }
    }

    /// Asks for the messages after `since`, up to (not including) `upto`, holding what
    /// comes meanwhile.
    fn fill(&mut self, channel: &Channel, since: StreamPosition, upto: u64, now: Ms) {
        let id = self.next_request_id("h");
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        let limit = upto.saturating_sub(since.offset + 1).clamp(1, FILL_PAGE);
        sub.filling = Some(id.clone());
        self.send_history(id, Internal::Fill(channel.clone()), since, limit, now);
    }

    fn send_history(
        &mut self,
        id: RequestId,
        what: Internal,
        since: StreamPosition,
        limit: u64,
        now: Ms,
    ) {
        let channel = match &what {
            Internal::Fill(c) | Internal::Check(c) => c.clone(),
        };
        // A struct, not `serde_json::json!`: a generic JSON tree would cost the browser
        // bundle its map and serializer (~1.7 KB brotli).
        #[derive(serde::Serialize)]
        struct Params<'a> {
            channel: &'a Channel,
            since: &'a StreamPosition,
            limit: u64,
        }
        let params = Payload::new(&Params {
            channel: &channel,
            since: &since,
            limit,
        })
        .unwrap_or_default();
        self.control.push_back(ClientFrame::Request {
            id: id.clone(),
            method: "history".into(),
            params,
        });
        self.internal
            .insert(id, (what, now + ms(self.opts.request_timeout)));
    }

    /// The answer to one of the core's own `history` requests.
    fn on_history(
        &mut self,
        what: Internal,
        id: &RequestId,
        result: Result<Payload, RequestError>,
        now: Ms,
    ) {
        let page = result.and_then(|p| {
            p.parse::<HistoryPage>()
                .map_err(|e| RequestError::Decode(e.to_string()))
        });
        match what {
            Internal::Check(channel) => {
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                if sub.checking.as_ref() != Some(id) {
                    return;
                }
                sub.checking = None;
                let (Ok(page), Some(seen)) = (page, sub.position.clone()) else {
                    return;
                };
                if sub.filling.is_some() || !matches!(sub.state, SubState::Live { .. }) {
                    return;
                }
                if page.position.epoch != seen.epoch {
                    // Reset while quiet: say so now rather than at the next message.
                    sub.position = Some(page.position.clone());
                    sub.state = SubState::Live {
                        position: page.position,
                        recovery: Recovery::Reset(Unrecovered::Epoch),
                    };
                    let state = sub.state.clone();
                    self.events
                        .push_back(Event::Subscription { channel, state });
                } else if page.position.offset > seen.offset {
                    // Behind: fetch what is missing (what is in flight meanwhile is
                    // dropped as a duplicate).
                    self.fill(&channel, seen, page.position.offset + 1, now);
                }
            }
            Internal::Fill(channel) => {
                let Some(sub) = self.subs.get_mut(&channel) else {
                    return;
                };
                if sub.filling.as_ref() != Some(id) {
                    return;
                }
                sub.filling = None;
                let page = match page {
                    Ok(page) => page,
                    Err(RequestError::Server {
                        code: ErrorCode::RateLimited | ErrorCode::Unavailable,
                        ..
                    }) => {
                        // Ask again from where it stands.
                        if let Some(since) = sub.position.clone() {
                            let upto = sub.held.front().map_or(since.offset + 2, |(p, _)| p.offset);
                            self.fill(&channel, since, upto, now);
                        }
                        return;
                    }
                    Err(_) => {
                        self.give_up_filling(&channel, Unrecovered::Unknown);
                        return;
                    }
                };
                if let Some(why) = page.unrecovered {
                    self.give_up_filling(&channel, why);
                    return;
                }
                let mut delivered = 0;
                let mut broken = false;
                for raw in &page.messages {
                    let Some(Ok(ServerFrame::Message {
                        channel: ch,
                        from,
                        data,
                        ts,
                        ephemeral,
                        offset: Some(offset),
                        epoch: Some(epoch),
                    })) = codec::decode_server(raw.get()).into_iter().next()
                    else {
                        broken = true;
                        break;
                    };
                    let Some(seen) = sub.position.clone() else {
                        break;
                    };
                    if epoch != seen.epoch || offset > seen.offset + 1 {
                        broken = true;
                        break;
                    }
                    if offset <= seen.offset {
                        continue;
                    }
                    sub.position = Some(StreamPosition { offset, epoch });
                    delivered += 1;
                    self.events.push_back(Event::Message(Message {
                        channel: ch,
                        offset: Some(offset),
                        from,
                        data,
                        ts,
                        ephemeral,
                    }));
                }
                let still_gap = |sub: &Sub| {
                    let front = sub.held.front().map(|(p, _)| p);
                    matches!((front, &sub.position), (Some(f), Some(s)) if f.epoch == s.epoch && f.offset > s.offset + 1)
                };
                if broken || (delivered == 0 && still_gap(sub)) {
                    // A page that does not move on: the gap cannot be filled this way.
                    self.give_up_filling(&channel, Unrecovered::Unknown);
                    return;
                }
                self.release_held(&channel, delivered > 0, now);
            }
        }
    }

    /// After a fill page: the held messages go through again, in order (one past another
    /// gap starts the next fill and keeps the rest held). Once no gap is left, the state
    /// says a gap was filled, if the fill delivered anything.
    fn release_held(&mut self, channel: &Channel, filled: bool, now: Ms) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        let held = std::mem::take(&mut sub.held);
        for (position, message) in held {
            let Some(sub) = self.subs.get_mut(channel) else {
                return;
            };
            if sub.filling.is_some() {
                sub.held.push_back((position, message));
            } else {
                self.on_stored(position, message, now);
            }
        }
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if filled
            && sub.filling.is_none()
            && let (SubState::Live { .. }, Some(position)) = (&sub.state, sub.position.clone())
        {
            sub.state = SubState::Live {
                position,
                recovery: Recovery::GapFilled,
            };
            let state = sub.state.clone();
            self.events.push_back(Event::Subscription {
                channel: channel.clone(),
                state,
            });
        }
    }

    /// The gap cannot be filled: the state says so, then the held messages follow.
    fn give_up_filling(&mut self, channel: &Channel, why: Unrecovered) {
        let Some(sub) = self.subs.get_mut(channel) else {
            return;
        };
        if let Some(id) = sub.filling.take() {
            self.internal.remove(&id);
        }
        let held = std::mem::take(&mut sub.held);
        let position = held
            .back()
            .map(|(p, _)| p.clone())
            .or_else(|| sub.position.clone());
        let Some(position) = position else {
            return;
        };
        sub.position = Some(position.clone());
        sub.state = SubState::Live {
            position,
            recovery: Recovery::Reset(why),
        };
        let state = sub.state.clone();
        self.events.push_back(Event::Subscription {
            channel: channel.clone(),
            state,
        });
        self.events
            .extend(held.into_iter().map(|(_, m)| Event::Message(m)));
    }

    /// The core's own requests past their deadline: a fill is asked again, a check
    /// forgotten.
    fn internal_timeouts(&mut self, now: Ms) {
        let expired: Vec<RequestId> = self
            .internal
            .iter()
            .filter(|(_, (_, deadline))| now >= *deadline)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some((what, _)) = self.internal.remove(&id) {
                self.on_history(what, &id, Err(RequestError::Timeout), now);
            }
        }
    }

    /// Position checks that are due.
    fn position_checks(&mut self, now: Ms) {
        let Some(every) = self.opts.position_check else {
            return;
        };
        let due: Vec<(Channel, StreamPosition)> = self
            .subs
            .iter_mut()
            .filter(|(_, s)| s.next_check.is_some_and(|t| now >= t))
            .filter_map(|(c, s)| {
                s.next_check = Some(now + ms(every));
                let idle = s.filling.is_none() && s.checking.is_none();
                let live = matches!(s.state, SubState::Live { .. });
                (idle && live).then(|| s.position.clone().map(|p| (c.clone(), p)))?
            })
            .collect();
        for (channel, position) in due {
            let id = self.next_request_id("h");
            if let Some(sub) = self.subs.get_mut(&channel) {
                sub.checking = Some(id.clone());
            }
            self.send_history(id, Internal::Check(channel), position, 0, now);
        }
    }

    /// How long to wait after a retryable refusal.
    fn retry_delay(&mut self, code: ErrorCode) -> Ms {
        match code {
            // One token's worth, at the announced rate.
            ErrorCode::RateLimited => 1000 / u64::from(self.limits.rate_per_sec.max(1)) + 1,
            _ => {
                let d = self.opts.backoff.ceiling(self.retries);
                ms(d).max(100)
            }
        }
    }

    fn pause(&mut self, code: ErrorCode, now: Ms) {
        let delay = self.retry_delay(code);
        self.retries = self.retries.saturating_add(1);
        self.paused_until = Some(now + delay);
    }

    /// After a `welcome` with (maybe smaller) limits: queued frames that can no longer be
    /// sent fail now instead of blocking the queue.
    fn revalidate(&mut self) {
        let limit = self.limits.max_frame_bytes as usize;
        let mut failed = Vec::new();
        self.outbox.retain(|item| {
            let fits = codec::encode(item.frame()).len() <= limit;
            if !fits {
                failed.push(item.clone());
            }
            fits
        });
        for item in failed {
            match item {
                Item::Publish { seq, .. } => self.resolve(
                    seq,
                    Err(PublishError::Server {
                        code: ErrorCode::TooLarge,
                        message: format!("larger than the server's max_frame_bytes ({limit})"),
                    }),
                ),
                Item::Request(frame) => {
                    if let Some(id) = frame.id().cloned()
                        && self.requests.remove(&id).is_some()
                    {
                        self.events.push_back(Event::Response {
                            id,
                            result: Err(RequestError::Server {
                                code: ErrorCode::TooLarge,
                                message: format!(
                                    "larger than the server's max_frame_bytes ({limit})"
                                ),
                            }),
                        });
                    }
                }
                Item::Ephemeral(_) | Item::Direct(_) => {}
            }
        }
    }

    /// Sends what the pacing allows: control frames first, then the outbox.
    fn flush(&mut self, now: Ms) {
        if !self.is_open() {
            return;
        }
        self.bucket.refill(now);
        self.pace_at = None;
        while let Some(frame) = self.control.front() {
            if self.bucket.available() == 0 {
                self.pace_at = Some(self.bucket.next_at(now));
                return;
            }
            let text = codec::encode(frame);
            self.bucket.take(1);
            self.control.pop_front();
            self.transmit.push_back(text);
        }
        if self.paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.paused_until = None;
        loop {
            let due = self.pacer.due(now, self.outbox.len(), self.outbox.oldest());
            let n = match due {
                Due::Idle => return,
                Due::At(t) => {
                    self.pace_at = Some(t);
                    return;
                }
                Due::Now(n) => n,
            };
            let n = n
                .min(self.bucket.available())
                .min(self.limits.max_batch.max(1) as usize);
            if n == 0 {
                self.pace_at = Some(self.bucket.next_at(now));
                return;
            }
            // As many as fit in one message: a batch is `[a,b,…]`.
            let limit = self.limits.max_frame_bytes as usize;
            let mut texts: Vec<String> = Vec::new();
            let mut size = 1;
            for item in self.outbox.iter().take(n) {
                let text = codec::encode(item.frame());
                if !texts.is_empty() && size + text.len() + 1 > limit {
                    break;
                }
                size += text.len() + 1;
                texts.push(text);
            }
            let items = self.outbox.take(texts.len());
            for item in items {
                match item {
                    Item::Publish { seq, frame, .. } => {
                        if let Some(id) = frame.id().cloned() {
                            self.in_flight.insert(id, (seq, frame));
                        }
                    }
                    Item::Request(frame) => {
                        if let Some(r) = frame.id().and_then(|id| self.requests.get_mut(id)) {
                            r.sent = true;
                        }
                    }
                    Item::Direct(frame) => {
                        if let Some(id) = frame.id().cloned() {
                            self.directs.insert(id);
                        }
                    }
                    Item::Ephemeral(_) => {}
                }
            }
            self.bucket.take(texts.len());
            self.pacer.sent(now);
            let text = match texts.len() {
                1 => texts.pop().expect("one"),
                _ => format!("[{}]", texts.join(",")),
            };
            self.transmit.push_back(text);
        }
    }
}

/// Publishes in the order they were queued. Unstable: seqs are unique. One function for
/// both callers: each sort instantiation costs the wasm bundle ~0.7 KB brotli, a stable
/// one ~1 KB.
fn by_seq(mut frames: Vec<(u64, ClientFrame)>) -> Vec<(u64, ClientFrame)> {
    frames.sort_unstable_by_key(|(seq, _)| *seq);
    frames
}

fn ms(d: Duration) -> Ms {
    d.as_millis() as Ms
}

/// A JWT's `exp` claim (seconds since the Unix epoch), read without checking anything:
/// only to know when to ask for a fresh token.
fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: u64,
    }
    // From a `str`: `from_slice` would put a second copy of serde_json's reader in the
    // browser bundle (~1 KB brotli).
    let text = std::str::from_utf8(&bytes).ok()?;
    serde_json::from_str::<Exp>(text).ok().map(|e| e.exp)
}

/// Unpadded base64url, as JWTs use it (a few lines instead of a dependency in every
/// browser bundle).
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

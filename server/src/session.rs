//! One WebSocket connection: a single task that reads frames, writes replies and queued
//! deliveries, pings on the heartbeat, and closes with a documented code when it must.
//!
//! Everything other parts of the server send to this connection goes through its bounded
//! queue (see [`crate::hub::Hub::connect`]); the session drains it. Direct replies to the
//! client's own frames are written in place, so a client that floods us waits on its own
//! TCP window instead of growing a buffer.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt;
use futures::future::Either;
use switchboard_protocol::{
    Channel, ClientFrame, CloseCode, ErrorCode, PROTOCOL_VERSION, RequestId, Sender, ServerFrame,
    SessionId, codec,
};
use tokio::time::{Instant, sleep_until, timeout};

use crate::AppState;
use crate::admission::Admission;
use crate::auth::{AuthError, Identity};
use crate::broker::Publication;
use crate::hub::{ClientHandle, SubscribeOutcome, encode, now_ms};
use crate::methods::RequestCtx;
use crate::queue::{Inbox, Next};

/// Anonymous publish ids at least this long are deduplicated across connections.
const GLOBAL_ID_LEN: usize = 24;

/// Most queued frames written with one flush.
const WRITE_BATCH: u64 = 64;

/// How long a closing connection may take to complete the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What woke the session's loop.
enum Event {
    Kill(CloseCode),
    Queued(Utf8Bytes),
    Read(Option<Result<Message, axum::Error>>),
    /// The heartbeat or the token deadline is due.
    Timer,
}

/// Why the loop ended: with a close code to send, or because the peer is gone.
enum End {
    Close(CloseCode),
    /// The peer sent a close frame; tungstenite queued the reply.
    PeerClosed,
    Gone,
}

struct Session {
    socket: WebSocket,
    state: AppState,
    client: ClientHandle,
    subscriptions: HashSet<Channel>,
    bucket: TokenBucket,
    /// Who is connected; `None` while a required token has not arrived yet.
    identity: Option<Identity>,
    /// When the connection must have (re)authenticated: the token's expiry, or the auth
    /// timeout while no identity is established.
    deadline: Option<Instant>,
    /// An `error` to send right after `welcome` (a token the server cannot check).
    after_welcome: Option<AuthError>,
    /// The connection's place under the caps, given back when the session ends; its
    /// pending-auth slot is given back as soon as a `hello` authenticates.
    admission: Admission,
}

/// What the upgrade handler decided before the socket existed: the outcome of the
/// `?token=` check, and the connection's place under the caps (`None` when the server is
/// full). Boxed by the caller, so the task that awaits the upgrade carries one pointer.
pub(crate) struct Pending {
    pub(crate) state: AppState,
    pub(crate) auth: Result<Identity, AuthError>,
    pub(crate) admission: Option<Admission>,
}

/// Serves one upgraded connection until it ends, then cleans up after it.
///
/// Not an `async fn`: its arguments would stay in the connection's task next to the
/// session they were moved into. Deciding synchronously and returning only the future that
/// runs keeps every idle connection's task smaller (measured: ~0.9 KiB each).
#[expect(
    clippy::boxed_local,
    reason = "boxed by the caller: the upgrade task holds it for the whole handshake"
)]
pub(crate) fn run(socket: WebSocket, pending: Box<Pending>) -> impl Future<Output = ()> {
    let Pending {
        state,
        auth,
        admission,
    } = *pending;
    let Some(admission) = admission else {
        return Either::Right(Box::pin(reject(
            socket,
            state,
            None,
            CloseCode::SERVER_FULL,
        )));
    };
    let mut disabled_token = None;
    let identity = match auth {
        Ok(identity) => Some(identity),
        Err(AuthError::Required) => None,
        // A token on a server without a secret: say so, carry on anonymously (as for a
        // token in `hello`), since refusing would stop the client for good.
        Err(e @ AuthError::Disabled) => {
            disabled_token = Some(e);
            state.auth.anonymous().ok()
        }
        Err(AuthError::Expired) => {
            return Either::Right(Box::pin(reject(
                socket,
                state,
                None,
                CloseCode::TOKEN_EXPIRED,
            )));
        }
        Err(e) => {
            state.hub.metrics().error(ErrorCode::Unauthorized);
            let error = ServerFrame::error(None, ErrorCode::Unauthorized, e.to_string());
            return Either::Right(Box::pin(reject(
                socket,
                state,
                Some(error),
                CloseCode::UNAUTHORIZED,
            )));
        }
    };
    let user_id = identity.as_ref().and_then(|i| i.user_id.clone());
    let (client, queue) = state.hub.connect(user_id, state.config.queue_capacity);
    state
        .hub
        .metrics()
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let limits = state.config.limits();
    let session = Session {
        socket,
        bucket: TokenBucket::new(limits.rate_per_sec, limits.rate_burst),
        deadline: match &identity {
            Some(identity) => expiry_deadline(identity),
            None => Some(Instant::now() + state.config.auth_timeout),
        },
        identity,
        state,
        client,
        subscriptions: HashSet::new(),
        after_welcome: disabled_token,
        admission,
    };
    Either::Left(session.live(queue))
}

/// Refuses a connection: an optional `error` frame, then the close `code`.
async fn reject(
    mut socket: WebSocket,
    state: AppState,
    error: Option<ServerFrame>,
    code: CloseCode,
) {
    if let Some(error) = error {
        let _ = socket.send(Message::Text(encode(&error))).await;
    }
    refuse(&mut socket, &state, code).await;
}

/// Closes with `code`: sends our close frame, then waits briefly for the peer's, so the
/// close frame is not lost to a reset of a socket with unread data.
async fn refuse(socket: &mut WebSocket, state: &AppState, code: CloseCode) {
    state.hub.metrics().close(code);
    let frame = CloseFrame {
        code: code.0,
        reason: code.reason().into(),
    };
    let _ = timeout(CLOSE_GRACE, async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(msg)) = socket.recv().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        }
    })
    .await;
}

/// When a token-bearing identity must be refreshed.
fn expiry_deadline(identity: &Identity) -> Option<Instant> {
    identity.expires_at.map(|exp| {
        let left_ms = exp.saturating_mul(1000).saturating_sub(now_ms());
        Instant::now() + Duration::from_millis(left_ms)
    })
}

impl Session {
    /// The connection's life: serve until it ends, close it properly, clean up after it.
    ///
    /// An `async` block rather than an `async fn`: an `async fn` moves its arguments into
    /// fresh locals, so the task would hold the session twice (rust-lang/rust#62958).
    #[expect(
        clippy::manual_async_fn,
        reason = "an async fn would hold the session twice"
    )]
    fn live(mut self, mut queue: Inbox) -> impl Future<Output = ()> {
        async move {
            tracing::debug!(client = %self.client.id, "connected");
            // Not `match self.serve(..).await`: a scrutinee's temporaries (the serve future)
            // would stay in the task's state while the close is awaited.
            let end = self.serve(&mut queue).await;
            match end {
                End::Close(code) => {
                    tracing::debug!(client = %self.client.id, %code, "closing");
                    refuse(&mut self.socket, &self.state, code).await;
                }
                // Reading once more flushes the queued close reply: a clean close for the peer.
                End::PeerClosed => {
                    let _ = timeout(CLOSE_GRACE, self.socket.recv()).await;
                }
                End::Gone => {}
            }
            let subs = std::mem::take(&mut self.subscriptions);
            self.state.hub.disconnect(&self.client, subs).await;
            tracing::debug!(client = %self.client.id, "disconnected");
        }
    }

    async fn serve(&mut self, queue: &mut Inbox) -> End {
        if let Err(end) = self.send_frame(&self.welcome()).await {
            return end;
        }
        if let Some(e) = self.after_welcome.take()
            && let Err(end) = self
                .send_error(None, ErrorCode::Unauthorized, &e.to_string())
                .await
        {
            return end;
        }
        let config = self.state.config.clone();
        let mut next_ping = Instant::now() + config.heartbeat;
        let mut last_heard = Instant::now();
        // One timer for the heartbeat and the token deadline, moved only when the earlier
        // of the two changes (no timer registered per loop turn, none boxed).
        let timer = sleep_until(next_ping);
        tokio::pin!(timer);
        loop {
            let wake = self.deadline.map_or(next_ping, |d| d.min(next_ping));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            // The select only picks what happened; handling it comes after, once the
            // branch futures are gone, so the task holds one or the other, not both.
            let event = tokio::select! {
                biased;
                next = queue.recv() => match next {
                    Next::Kill(code) => Event::Kill(code),
                    Next::Frame(text) => Event::Queued(text),
                },
                msg = self.socket.recv() => Event::Read(msg),
                () = &mut timer => Event::Timer,
            };
            let step = match event {
                Event::Kill(code) => Err(End::Close(code)),
                Event::Queued(text) => self.send_queued(text, queue).await,
                Event::Read(msg) => {
                    last_heard = Instant::now();
                    // Boxed: the frame handling is a large state machine that would otherwise
                    // sit in every idle connection's task.
                    Box::pin(self.on_message(msg)).await
                }
                Event::Timer if self.deadline.is_some_and(|d| Instant::now() >= d) => {
                    Err(End::Close(match self.identity {
                        Some(_) => CloseCode::TOKEN_EXPIRED,
                        None => CloseCode::UNAUTHORIZED,
                    }))
                }
                Event::Timer if Instant::now() < next_ping => Ok(()),
                Event::Timer if last_heard.elapsed() >= config.idle_timeout => {
                    Err(End::Close(CloseCode::HEARTBEAT_TIMEOUT))
                }
                Event::Timer => {
                    next_ping = Instant::now() + config.heartbeat;
                    // A quiet moment: hand back what a burst made the queue grow to.
                    queue.shrink();
                    self.send(Message::Ping(Default::default())).await
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn welcome(&self) -> ServerFrame {
        ServerFrame::Welcome {
            client_id: self.client.id.clone(),
            // Derived, not stored: one string less per connection.
            session_id: SessionId(format!("s-{}", self.client.id)),
            resumed: false,
            protocol: PROTOCOL_VERSION,
            user_id: self.client.user_id.clone(),
            heartbeat_ms: self.state.config.heartbeat.as_millis() as u64,
            limits: self.state.config.limits(),
        }
    }

    async fn on_message(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        match msg {
            None => Err(End::Gone),
            Some(Err(e)) => Err(read_error(e)),
            Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
            Some(Ok(Message::Binary(_))) => {
                self.send_error(
                    None,
                    ErrorCode::BadFrame,
                    "binary messages are not supported; send JSON text",
                )
                .await
            }
            // tungstenite answers pings itself; both count as signs of life.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
            Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
        }
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let limits = self.state.config.limits();
        for decoded in codec::decode_client(text, &limits) {
            self.state
                .hub
                .metrics()
                .frames_in
                .fetch_add(1, Ordering::Relaxed);
            let id = match &decoded {
                Ok(frame) => frame.id().cloned(),
                Err(e) => e.id.clone(),
            };
            if !self.bucket.take() {
                if self.bucket.strikes >= limits.rate_burst {
                    return Err(End::Close(CloseCode::RATE_LIMITED));
                }
                let msg = format!("over {} frames per second", limits.rate_per_sec);
                self.send_error(id, ErrorCode::RateLimited, &msg).await?;
                continue;
            }
            match decoded {
                Ok(frame) => self.on_frame(frame).await?,
                Err(e) => {
                    self.state.hub.metrics().error(e.code);
                    self.send_frame(&e.into_frame()).await?
                }
            }
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), End> {
        let hub = self.state.hub.clone();
        if self.identity.is_none()
            && !matches!(frame, ClientFrame::Hello { .. } | ClientFrame::Ping { .. })
        {
            let id = frame.id().cloned();
            let msg = "authenticate first: send hello with a token";
            return self.send_error(id, ErrorCode::Unauthorized, msg).await;
        }
        match frame {
            ClientFrame::Hello { token: None, .. } => self.send_frame(&self.welcome()).await,
            ClientFrame::Hello {
                token: Some(token), ..
            } => self.on_token(&token).await,
            ClientFrame::Ping { id } => self.send_frame(&ServerFrame::Pong { id }).await,
            ClientFrame::Subscribe {
                channel, presence, ..
            } => {
                if !self.grants().may_subscribe(channel.as_str()) {
                    let msg = format!("no permission to subscribe to {channel}");
                    return self.send_error(None, ErrorCode::Forbidden, &msg).await;
                }
                let presence = presence.map(|info| self.stamp_name(info));
                let max = self.state.config.max_subscriptions as usize;
                if self.subscriptions.len() >= max && !self.subscriptions.contains(&channel) {
                    let msg = format!("at most {max} subscriptions per connection");
                    return self
                        .send_error(None, ErrorCode::TooManySubscriptions, &msg)
                        .await;
                }
                match hub.subscribe(&self.client, &channel, presence).await {
                    Ok(SubscribeOutcome::Subscribed(reply)) => {
                        self.subscriptions.insert(channel);
                        self.send_frame(&reply).await
                    }
                    Ok(SubscribeOutcome::AlreadySubscribed) => {
                        let msg = format!("already subscribed to {channel}");
                        self.send_error(None, ErrorCode::AlreadySubscribed, &msg)
                            .await
                    }
                    Err(e) => {
                        self.send_error(None, ErrorCode::Unavailable, &e.to_string())
                            .await
                    }
                }
            }
            ClientFrame::Unsubscribe { channel } => {
                if self.subscriptions.remove(&channel) {
                    if let Err(e) = hub.unsubscribe(&self.client, &channel).await {
                        // Locally it is gone either way; say what failed remotely.
                        self.send_error(None, ErrorCode::Unavailable, &e.to_string())
                            .await?;
                    }
                    self.send_frame(&ServerFrame::Unsubscribed { channel })
                        .await
                } else {
                    let msg = format!("not subscribed to {channel}");
                    self.send_error(None, ErrorCode::NotSubscribed, &msg).await
                }
            }
            ClientFrame::Publish {
                id,
                channel,
                data,
                ephemeral,
                skip_self,
            } => {
                if !self.grants().may_publish(channel.as_str()) {
                    let msg = format!("no permission to publish on {channel}");
                    return self.send_error(id, ErrorCode::Forbidden, &msg).await;
                }
                let key = id
                    .as_ref()
                    .map(|id| format!("{}/{id}", self.dedupe_scope(id)));
                let publication = Publication {
                    id: key,
                    channel,
                    from: Some(self.sender()),
                    data,
                    ephemeral,
                    except: skip_self.then(|| self.client.id.clone()),
                };
                match hub.publish(publication).await {
                    Ok(offset) => match id {
                        Some(id) => self.send_frame(&ServerFrame::Ack { id, offset }).await,
                        None => Ok(()),
                    },
                    Err(e) => {
                        self.send_error(id, ErrorCode::Unavailable, &e.to_string())
                            .await
                    }
                }
            }
            ClientFrame::Request { id, method, params } => {
                let ctx = RequestCtx {
                    hub,
                    client_id: self.client.id.clone(),
                    user_id: self.client.user_id.clone(),
                    grants: self
                        .identity
                        .as_ref()
                        .map(|i| i.grants.clone())
                        .expect("requests need an identity"),
                };
                let Some(call) = self.state.methods.call(&method, ctx, params) else {
                    let msg = format!("no method {method:?}");
                    return self
                        .send_error(Some(id), ErrorCode::UnknownMethod, &msg)
                        .await;
                };
                // Most handlers finish at once: answer those in place. One that has to wait
                // runs beside the session and answers through the queue, so reading goes on
                // meanwhile.
                let mut call = call;
                if let Poll::Ready(outcome) = futures::poll!(&mut call) {
                    let frame = response_frame(self.state.hub.metrics(), id, outcome);
                    return self.send_frame(&frame).await;
                }
                let outbox = self.client.outbox.clone();
                let hub = self.state.hub.clone();
                tokio::spawn(async move {
                    let frame = response_frame(hub.metrics(), id, call.await);
                    // Waits for room in the queue: an answer is never dropped.
                    let _ = outbox.send(encode(&frame)).await;
                });
                Ok(())
            }
            ClientFrame::Direct { to, data } => {
                if hub.direct(&to, self.sender(), data) {
                    Ok(())
                } else {
                    let msg = format!("client {to} is not connected");
                    self.send_error(None, ErrorCode::TargetGone, &msg).await
                }
            }
        }
    }

    /// `hello` with a token: authenticate, or refresh the token of the same user.
    async fn on_token(&mut self, token: &str) -> Result<(), End> {
        let new = match self.state.auth.verify(token) {
            Ok(identity) => identity,
            Err(e) => {
                return self
                    .send_error(None, ErrorCode::Unauthorized, &e.to_string())
                    .await;
            }
        };
        let current = self.identity.as_ref().and_then(|i| i.user_id.as_ref());
        if current.is_some() && current != new.user_id.as_ref() {
            let msg = "the token is for a different user; open a new connection";
            return self.send_error(None, ErrorCode::BadRequest, msg).await;
        }
        if current.is_none() && !self.subscriptions.is_empty() {
            let msg = "authenticate before subscribing: unsubscribe everything or reconnect";
            return self.send_error(None, ErrorCode::BadRequest, msg).await;
        }
        if current.is_none() {
            self.client = self.state.hub.identify(&self.client, new.user_id.clone());
        }
        self.deadline = expiry_deadline(&new);
        self.identity = Some(new);
        self.admission.authenticated();
        self.send_frame(&self.welcome()).await
    }

    fn grants(&self) -> &crate::auth::Grants {
        &self
            .identity
            .as_ref()
            .expect("frames other than hello and ping need an identity")
            .grants
    }

    /// Presence info carries the token's name, so nobody appears under another's name.
    fn stamp_name(&self, info: serde_json::Value) -> serde_json::Value {
        let Some(name) = self.identity.as_ref().and_then(|i| i.name.clone()) else {
            return info;
        };
        let mut info = match info {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        info.insert("name".into(), name.into());
        serde_json::Value::Object(info)
    }

    /// The scope publish ids are deduplicated in, so one client's id never suppresses
    /// another's message: the user when authenticated; for anonymous connections, ids of
    /// [`GLOBAL_ID_LEN`]+ characters (random ids, as the web client makes) share one
    /// anonymous scope, which survives reconnects, while short ids (`"m1"` typed into
    /// wscat) are scoped to the connection.
    fn dedupe_scope(&self, id: &RequestId) -> String {
        match &self.client.user_id {
            Some(user) => format!("u:{user}"),
            None if id.as_str().len() >= GLOBAL_ID_LEN => "anonymous".into(),
            None => format!("c:{}", self.client.id),
        }
    }

    fn sender(&self) -> Sender {
        Sender {
            client_id: self.client.id.clone(),
            user_id: self.client.user_id.clone(),
        }
    }

    async fn send_error(
        &mut self,
        id: Option<RequestId>,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), End> {
        self.state.hub.metrics().error(code);
        self.send_frame(&ServerFrame::error(id, code, message))
            .await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send(Message::Text(encode(frame))).await
    }

    /// Writes a queued frame together with what else is already queued (up to
    /// [`WRITE_BATCH`] frames) and flushes once: under fan-out load that is one write
    /// syscall for many frames instead of one each.
    async fn send_queued(&mut self, first: Utf8Bytes, queue: &mut Inbox) -> Result<(), End> {
        let mut written = 0u64;
        let socket = &mut self.socket;
        let batch = async {
            socket.feed(Message::Text(first)).await?;
            written += 1;
            while written < WRITE_BATCH {
                match queue.try_recv() {
                    Some(text) => {
                        socket.feed(Message::Text(text)).await?;
                        written += 1;
                    }
                    None => break,
                }
            }
            socket.flush().await
        };
        let result = timeout(self.state.config.write_timeout, batch).await;
        let metrics = self.state.hub.metrics();
        match result {
            Ok(Ok(())) => {
                metrics.frames_out.fetch_add(written, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(_)) => Err(End::Gone),
            Err(_elapsed) => {
                metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                Err(End::Close(CloseCode::SLOW_CONSUMER))
            }
        }
    }

    /// Writes one message, giving up on a peer that does not read within the write timeout.
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        let counts = matches!(msg, Message::Text(_));
        match timeout(self.state.config.write_timeout, self.socket.send(msg)).await {
            Ok(Ok(())) => {
                if counts {
                    self.state
                        .hub
                        .metrics()
                        .frames_out
                        .fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Ok(Err(_)) => Err(End::Gone),
            Err(_elapsed) => {
                self.state
                    .hub
                    .metrics()
                    .slow_consumers
                    .fetch_add(1, Ordering::Relaxed);
                Err(End::Close(CloseCode::SLOW_CONSUMER))
            }
        }
    }
}

/// The `response`, or the `error`, that answers a request.
fn response_frame(
    metrics: &crate::metrics::Metrics,
    id: RequestId,
    outcome: Result<serde_json::Value, crate::methods::MethodError>,
) -> ServerFrame {
    match outcome {
        Ok(result) => ServerFrame::Response { id, result },
        Err(e) => {
            metrics.error(e.code());
            ServerFrame::error(Some(id), e.code(), e.to_string())
        }
    }
}

/// A read error ends the connection; a too-big message says so with 1009.
fn read_error(e: axum::Error) -> End {
    match e.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) if matches!(*e, tungstenite::Error::Capacity(_)) => End::Close(CloseCode::TOO_BIG),
        Ok(e) if matches!(*e, tungstenite::Error::Utf8(_)) => {
            End::Close(CloseCode::INVALID_PAYLOAD)
        }
        Ok(e) if matches!(*e, tungstenite::Error::Protocol(_)) => {
            End::Close(CloseCode::PROTOCOL_ERROR)
        }
        _ => End::Gone,
    }
}

/// Per-connection rate limit: `rate` frames per second sustained, `burst` at once.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Frames refused since the last accepted one: a client that keeps sending into a
    /// refusal is closed with 4109.
    strikes: u32,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
            strikes: 0,
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed: Duration = now - self.last;
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.strikes = 0;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

//! The session's logic, apart from the socket: decoded frames and clock ticks in; frames
//! to write, close decisions and the next deadline out. The driver (`super`) owns the
//! socket and the timer and feeds this; tests drive it directly, without a socket.
//!
//! The core talks to the hub (subscribe, publish, …), which may wait on the broker, so its
//! frame handler is `async`; it never waits on the client. Replies go to [`Core::take_out`]
//! and the driver writes them before it reads the next frame, so a client that floods
//! requests waits on its own TCP window and this buffer holds one frame's replies.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use std::collections::VecDeque;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use switchboard_protocol::codec::Decoded;
use switchboard_protocol::{
    Channel, ClientFrame, CloseCode, ErrorCode, Limits, PROTOCOL_VERSION, Payload, RequestId,
    Sender, ServerFrame, SessionId,
};
use sync_wrapper::SyncWrapper;
use tokio::time::Instant;

use super::bucket::TokenBucket;
use crate::AppState;
use crate::admission::Admission;
use crate::auth::{AuthError, Grants, Identity};
use crate::broker::{BrokerError, Publication, Published};
use crate::clock::now_ms;
use crate::embed::{PERMISSION_TIMEOUT, PUBLISH_DECISIONS};
use crate::frame::Encoded;
use crate::hub::{ClientHandle, DirectError, Recovery, SubscribeOutcome};
use crate::methods::{MethodError, RequestCtx};

/// Anonymous publish ids at least this long are deduplicated across connections.
const GLOBAL_ID_LEN: usize = 24;

/// Most requests of one connection whose handlers run beside the session at once (those
/// that did not finish when first polled). More are refused with `rate_limited`.
pub(crate) const MAX_INFLIGHT_REQUESTS: usize = 16;

/// Most publishes of one connection waiting to be stored at once. A publish past it (or
/// past [`Core::inflight_publish_bytes`]) waits for the oldest, so a fast publisher waits
/// on its own TCP window.
pub(crate) const MAX_INFLIGHT_PUBLISHES: usize = 64;

/// A publish's id and its outcome.
type PublishDone = (Option<RequestId>, Result<Published, BrokerError>);

/// Publishes waiting to be stored, oldest first; their answers go out in this order.
struct Publishing {
    pending: FuturesOrdered<BoxFuture<'static, PublishDone>>,
    /// Their data sizes, oldest first, and the sum.
    sizes: VecDeque<usize>,
    bytes: usize,
}

/// What the timer decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tick {
    /// Nothing is due.
    Nothing,
    /// Send a WebSocket ping (the connection was quiet for a heartbeat).
    Ping,
}

/// One connection's protocol state.
pub(crate) struct Core {
    state: AppState,
    client: ClientHandle,
    subscriptions: HashSet<Channel>,
    bucket: TokenBucket,
    /// Who is connected; `None` while a required token has not arrived yet.
    identity: Option<Identity>,
    /// When the connection must have (re)authenticated: the token's expiry, or the auth
    /// timeout while no identity is established.
    deadline: Option<Instant>,
    /// When the next WebSocket ping is due.
    next_ping: Instant,
    /// When the client was last heard from (any frame, ping or pong).
    last_heard: Instant,
    /// An `error` to send right after `welcome` (a token the server cannot check).
    after_welcome: Option<AuthError>,
    /// Requests whose handlers run beside the session; shared with those tasks, created
    /// with the first one.
    inflight: Option<Arc<AtomicUsize>>,
    /// Publishes waiting to be stored (created with the first one that has to wait; the
    /// wrapper makes the core `Sync`, the futures are only `Send`).
    publishing: Option<Box<SyncWrapper<Publishing>>>,
    /// Frames to write, in order.
    out: Vec<Encoded>,
    /// Set once the hub has forgotten the connection.
    finished: bool,
    /// The connection's place under the caps, given back when the session ends; its
    /// pending-auth slot is given back as soon as a `hello` authenticates.
    admission: Admission,
    /// The embedding app's publish decisions, newest last (at most
    /// [`PUBLISH_DECISIONS`]); boxed on first use, so a connection without them (every one
    /// on a server without app permissions) pays one pointer.
    #[expect(
        clippy::box_collection,
        reason = "one pointer instead of a VecDeque's four words in every idle connection"
    )]
    publish_decisions: Option<Box<VecDeque<(Channel, bool)>>>,
    /// The embedding app's hooks were told this connection arrived.
    announced: bool,
}

impl Core {
    /// The state of a connection just registered as `client`.
    pub(crate) fn new(
        state: AppState,
        client: ClientHandle,
        identity: Option<Identity>,
        after_welcome: Option<AuthError>,
        admission: Admission,
        now: Instant,
    ) -> Self {
        let limits = state.config.limits();
        let deadline = match &identity {
            Some(identity) => expiry_deadline(identity, now),
            None => Some(now + state.config.auth_timeout),
        };
        Self {
            bucket: TokenBucket::new(limits.rate_per_sec, limits.rate_burst, now),
            next_ping: now + state.config.heartbeat,
            last_heard: now,
            deadline,
            identity,
            after_welcome,
            client,
            state,
            subscriptions: HashSet::new(),
            inflight: None,
            publishing: None,
            out: Vec::new(),
            finished: false,
            admission,
            publish_decisions: None,
            announced: false,
        }
        .announce()
    }

    /// Tells the embedding app's hooks that the connection arrived, once it has an
    /// identity.
    fn announce(mut self) -> Self {
        self.announce_now();
        self
    }

    fn announce_now(&mut self) {
        if self.announced || self.identity.is_none() {
            return;
        }
        self.announced = true;
        if let Some(hooks) = self.state.hub.hooks() {
            hooks.connected(&self.client.caller());
        }
    }

    /// The embedding app's answer (after the grants allowed it): may this connection
    /// subscribe to `channel` (asked every time), or publish on it (asked until it says
    /// yes, then kept)? `Err` when the app did not answer within [`PERMISSION_TIMEOUT`].
    async fn app_permits(&mut self, publish: bool, channel: &Channel) -> Result<bool, ()> {
        let Some(permissions) = self.state.auth.permissions.clone() else {
            return Ok(true);
        };
        let caller = self.client.caller();
        if !publish {
            let asked = permissions.may_subscribe(&caller, channel);
            return tokio::time::timeout(PERMISSION_TIMEOUT, asked)
                .await
                .map_err(drop);
        }
        if self
            .publish_decisions
            .as_ref()
            .is_some_and(|d| d.iter().any(|(c, _)| c == channel))
        {
            return Ok(true);
        }
        let asked = permissions.may_publish(&caller, channel);
        let allowed = tokio::time::timeout(PERMISSION_TIMEOUT, asked)
            .await
            .map_err(drop)?;
        if allowed {
            // Only a yes is kept: a refusal is asked again next time.
            let decisions = self.publish_decisions.get_or_insert_default();
            if decisions.len() >= PUBLISH_DECISIONS {
                decisions.pop_front();
            }
            decisions.push_back((channel.clone(), true));
        }
        Ok(allowed)
    }

    /// Answers `error` for a frame the app's permissions refused or did not answer in time;
    /// true when it did.
    fn refused(&mut self, id: &Option<RequestId>, permitted: Result<bool, ()>, what: &str) -> bool {
        match permitted {
            Ok(true) => false,
            Ok(false) => {
                self.error(
                    id.clone(),
                    ErrorCode::Forbidden,
                    &format!("no permission to {what}"),
                );
                true
            }
            Err(()) => {
                let msg = format!("the application did not answer whether you may {what}");
                self.error(id.clone(), ErrorCode::Unavailable, &msg);
                true
            }
        }
    }

    /// The connection's handle.
    pub(crate) fn client(&self) -> &ClientHandle {
        &self.client
    }

    /// The client's address, as the edge resolved it.
    pub(crate) fn client_ip(&self) -> std::net::IpAddr {
        self.admission.ip()
    }

    /// The server's state.
    pub(crate) fn app(&self) -> &AppState {
        &self.state
    }

    /// The limits frames are decoded with.
    pub(crate) fn limits(&self) -> Limits {
        self.state.config.limits()
    }

    /// Frames to write, in order; the buffer is left empty.
    pub(crate) fn take_out(&mut self) -> Vec<Encoded> {
        std::mem::take(&mut self.out)
    }

    /// Queues the `welcome` (and an error about the token, if any).
    pub(crate) fn welcome(&mut self) {
        let welcome = self.welcome_frame();
        self.push(&welcome);
        if let Some(e) = self.after_welcome.take() {
            self.error(None, ErrorCode::Unauthorized, &e.to_string());
        }
    }

    /// The client was heard from at `now`.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// When [`Core::on_timer`] must run next.
    pub(crate) fn next_wake(&self) -> Instant {
        self.deadline
            .map_or(self.next_ping, |d| d.min(self.next_ping))
    }

    /// The timer fired at `now`.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Result<Tick, CloseCode> {
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(match self.identity {
                Some(_) => CloseCode::TOKEN_EXPIRED,
                None => CloseCode::UNAUTHORIZED,
            });
        }
        if now < self.next_ping {
            return Ok(Tick::Nothing);
        }
        if now.saturating_duration_since(self.last_heard) >= self.state.config.idle_timeout {
            return Err(CloseCode::HEARTBEAT_TIMEOUT);
        }
        self.next_ping = now + self.state.config.heartbeat;
        Ok(Tick::Ping)
    }

    /// A WebSocket ping from the client: it counts against the rate limit like a frame
    /// (tungstenite answers it), but is not answered with an error.
    pub(crate) fn on_control(&mut self, now: Instant) -> Result<(), CloseCode> {
        self.heard(now);
        if !self.bucket.take(now) && self.bucket.strikes >= self.limits().rate_burst {
            return Err(CloseCode::RATE_LIMITED);
        }
        Ok(())
    }

    /// A message that is not frames (binary on a JSON connection, or MessagePack that does
    /// not transcode): answered `bad_frame` with `why`, counted against the rate limit.
    pub(crate) fn on_undecodable(&mut self, now: Instant, why: &str) -> Result<(), CloseCode> {
        self.heard(now);
        if !self.admit(None, now)? {
            return Ok(());
        }
        self.error(None, ErrorCode::BadFrame, why);
        Ok(())
    }

    /// One decoded frame (or decoding error) of a text message.
    pub(crate) async fn on_decoded(
        &mut self,
        decoded: Decoded<ClientFrame>,
        now: Instant,
    ) -> Result<(), CloseCode> {
        self.heard(now);
        self.state
            .hub
            .metrics()
            .frames_in
            .fetch_add(1, Ordering::Relaxed);
        let id = match &decoded {
            Ok(frame) => frame.id().cloned(),
            Err(e) => e.id.clone(),
        };
        if !self.admit(id, now)? {
            return Ok(());
        }
        match decoded {
            Ok(frame) => self.on_frame(frame, now).await,
            Err(e) => {
                self.state.hub.metrics().error(e.code);
                self.push(&e.into_frame());
                Ok(())
            }
        }
    }

    /// The rate limit: true to go on; false after answering `rate_limited`; a close for
    /// a connection that keeps sending into the refusal.
    fn admit(&mut self, id: Option<RequestId>, now: Instant) -> Result<bool, CloseCode> {
        if self.bucket.take(now) {
            return Ok(true);
        }
        let limits = self.limits();
        if self.bucket.strikes >= limits.rate_burst {
            return Err(CloseCode::RATE_LIMITED);
        }
        let msg = format!("over {} frames per second", limits.rate_per_sec);
        self.error(id, ErrorCode::RateLimited, &msg);
        Ok(false)
    }

    async fn on_frame(&mut self, frame: ClientFrame, now: Instant) -> Result<(), CloseCode> {
        if self.identity.is_none()
            && !matches!(frame, ClientFrame::Hello { .. } | ClientFrame::Ping { .. })
        {
            let id = frame.id().cloned();
            let msg = "authenticate first: send hello with a token";
            self.error(id, ErrorCode::Unauthorized, msg);
            return Ok(());
        }
        match frame {
            ClientFrame::Hello { token: None, .. } => {
                let welcome = self.welcome_frame();
                self.push(&welcome);
            }
            ClientFrame::Hello {
                token: Some(token), ..
            } => self.on_token(&token, now),
            ClientFrame::Ping { id } => self.push(&ServerFrame::Pong {
                id,
                ts: Some(now_ms()),
            }),
            ClientFrame::Subscribe {
                id,
                channel,
                since,
                rewind,
                presence,
            } => {
                let recovery = Recovery {
                    since,
                    rewind: rewind.unwrap_or(0) as usize,
                    limit: self.state.config.recovery_read_limit(),
                };
                self.on_subscribe(id, channel, presence, recovery).await;
            }
            ClientFrame::Unsubscribe { id, channel } => self.on_unsubscribe(id, channel).await,
            ClientFrame::Publish {
                id,
                channel,
                data,
                ephemeral,
                skip_self,
            } => {
                if self.grants().may_publish(channel.as_str()) {
                    let permitted = self.app_permits(true, &channel).await;
                    if self.refused(&id, permitted, &format!("publish on {channel}")) {
                        return Ok(());
                    }
                } else {
                    let msg = format!("no permission to publish on {channel}");
                    self.error(id, ErrorCode::Forbidden, &msg);
                    return Ok(());
                }
                let publication = Publication {
                    dedupe_key: id
                        .as_ref()
                        .map(|id| format!("{}/{id}", self.dedupe_scope(id))),
                    channel,
                    from: Some(self.sender()),
                    data,
                    ephemeral,
                    except: skip_self.then(|| self.client.id.clone()),
                };
                self.on_publish(id, publication).await;
            }
            ClientFrame::Request { id, method, params } => self.on_request(id, method, params),
            ClientFrame::Direct { id, to, data } => {
                if !self.grants().may_direct() {
                    self.error(
                        id,
                        ErrorCode::Forbidden,
                        "no permission to send direct messages",
                    );
                    return Ok(());
                }
                match self.state.hub.direct(&to, self.sender(), data).await {
                    Ok(()) => {}
                    Err(DirectError::Unavailable(why)) => {
                        self.error(id, ErrorCode::Unavailable, &why);
                    }
                    Err(DirectError::Gone) => {
                        let msg = format!("client {to} is not connected");
                        self.error(id, ErrorCode::TargetGone, &msg);
                    }
                    Err(DirectError::Busy) => {
                        let msg = format!("client {to} has too many direct messages waiting");
                        self.error(id, ErrorCode::TargetBusy, &msg);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a publish: the broker numbers it at once (polled here, so a connection's
    /// publishes keep their order), and its answer goes out once it is stored, after the
    /// answers to the publishes before it. Publishes of one connection are stored
    /// together (one group commit) instead of one after the other.
    async fn on_publish(&mut self, id: Option<RequestId>, publication: Publication) {
        let size = publication.data.len();
        let budget = self.inflight_publish_bytes();
        // Room first: the oldest publish is waited for while too many are in flight.
        while let Some(p) = self.publishing.as_mut().map(|p| p.get_mut())
            && !p.pending.is_empty()
            && (p.pending.len() >= MAX_INFLIGHT_PUBLISHES || p.bytes + size > budget)
        {
            if let Some(done) = p.pending.next().await {
                if let Some(size) = p.sizes.pop_front() {
                    p.bytes -= size;
                }
                self.published(done);
            }
        }
        let hub = self.state.hub.clone();
        let mut publish: BoxFuture<'static, PublishDone> =
            Box::pin(async move { (id, hub.publish(publication).await) });
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let first = publish.poll_unpin(&mut cx);
        let idle = self
            .publishing
            .as_mut()
            .is_none_or(|p| p.get_mut().pending.is_empty());
        match first {
            // Done at once (memory), with nothing before it: answered in place.
            Poll::Ready(done) if idle => self.published(done),
            first => {
                let p = self
                    .publishing
                    .get_or_insert_with(|| {
                        Box::new(SyncWrapper::new(Publishing {
                            pending: FuturesOrdered::new(),
                            sizes: VecDeque::new(),
                            bytes: 0,
                        }))
                    })
                    .get_mut();
                match first {
                    Poll::Ready(done) => {
                        p.pending.push_back(Box::pin(futures::future::ready(done)))
                    }
                    Poll::Pending => p.pending.push_back(publish),
                }
                p.sizes.push_back(size);
                p.bytes += size;
            }
        }
    }

    /// Bytes of data the publishes in flight may hold together.
    pub(crate) fn inflight_publish_bytes(&self) -> usize {
        2 * self.state.config.max_frame_bytes as usize
    }

    /// Answers a publish that ended.
    fn published(&mut self, (id, result): PublishDone) {
        match result {
            Ok(published) => {
                if let Some(id) = id {
                    let offset = published.position.map(|p| p.offset);
                    self.push(&ServerFrame::Ack { id, offset });
                }
            }
            Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
        }
    }

    /// Moves the answers of the publishes that were stored (in order) to the frames to
    /// write. Ready when it moved any; the driver calls it beside reading.
    pub(crate) fn poll_published(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let mut any = false;
        while let Some(p) = self.publishing.as_mut().map(|p| p.get_mut()) {
            match p.pending.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => {
                    if let Some(size) = p.sizes.pop_front() {
                        p.bytes -= size;
                    }
                    self.published(done);
                    any = true;
                }
                // Empty: drop the set, so an idle connection holds nothing.
                Poll::Ready(None) => self.publishing = None,
                Poll::Pending => break,
            }
        }
        if any { Poll::Ready(()) } else { Poll::Pending }
    }

    async fn on_subscribe(
        &mut self,
        id: Option<RequestId>,
        channel: Channel,
        presence: Option<Payload>,
        recovery: Recovery,
    ) {
        if !self.grants().may_subscribe(channel.as_str()) {
            let msg = format!("no permission to subscribe to {channel}");
            self.error(id.clone(), ErrorCode::Forbidden, &msg);
            return;
        }
        let permitted = self.app_permits(false, &channel).await;
        if self.refused(&id, permitted, &format!("subscribe to {channel}")) {
            return;
        }
        let presence = presence.map(|info| self.stamp_name(info));
        let max = self.state.config.max_subscriptions as usize;
        if self.subscriptions.len() >= max && !self.subscriptions.contains(&channel) {
            let msg = format!("at most {max} subscriptions per connection");
            self.error(id.clone(), ErrorCode::TooManySubscriptions, &msg);
            return;
        }
        let hub = self.state.hub.clone();
        let max_members = self.state.config.max_presence_members;
        match hub
            .subscribe(&self.client, &channel, presence, max_members, recovery)
            .await
        {
            Ok(SubscribeOutcome::Subscribed(subscription)) => {
                // Direct answers, so they are written before the live messages already
                // in the queue (see `Hub::subscribe`).
                self.out.extend(subscription.messages);
                self.push(&subscription.reply);
                self.subscriptions.insert(channel);
            }
            Ok(SubscribeOutcome::AlreadySubscribed) => {
                let msg = format!("already subscribed to {channel}");
                self.error(id.clone(), ErrorCode::AlreadySubscribed, &msg);
            }
            Ok(SubscribeOutcome::PresenceFull) => {
                let msg = format!("{channel} has {max_members} members in presence, the limit");
                self.error(id.clone(), ErrorCode::PresenceFull, &msg);
            }
            Err(e) => self.error(id, ErrorCode::Unavailable, &e.to_string()),
        }
    }

    async fn on_unsubscribe(&mut self, id: Option<RequestId>, channel: Channel) {
        if !self.subscriptions.remove(&channel) {
            let msg = format!("not subscribed to {channel}");
            self.error(id.clone(), ErrorCode::NotSubscribed, &msg);
            return;
        }
        let hub = self.state.hub.clone();
        if let Err(e) = hub.unsubscribe(&self.client, &channel).await {
            // Locally it is gone either way; say what failed remotely.
            self.error(id.clone(), ErrorCode::Unavailable, &e.to_string());
        }
        self.push(&ServerFrame::Unsubscribed { channel });
    }

    fn on_request(&mut self, id: RequestId, method: String, params: Payload) {
        let inflight = self.inflight.get_or_insert_with(Arc::default).clone();
        if inflight.load(Ordering::Acquire) >= MAX_INFLIGHT_REQUESTS {
            let msg =
                format!("at most {MAX_INFLIGHT_REQUESTS} requests may wait for an answer at once");
            self.error(Some(id), ErrorCode::RateLimited, &msg);
            return;
        }
        let ctx = RequestCtx {
            hub: self.state.hub.clone(),
            client_id: self.client.id.clone(),
            user_id: self.client.user_id.clone(),
            grants: self.grants_arc(),
            read_limit: self.state.config.recovery_read_limit(),
            permissions: self.state.auth.permissions.clone(),
        };
        let Some(call) = self.state.methods.call(&method, ctx, params) else {
            let msg = format!("no method {method:?}");
            self.error(Some(id), ErrorCode::UnknownMethod, &msg);
            return;
        };
        // A handler that panics answers `internal`; the session and its cleanup go on.
        let mut call = AssertUnwindSafe(call).catch_unwind();
        // Most handlers finish at once: answer those in place. One that has to wait runs
        // beside the session and answers through the queue, so reading goes on meanwhile.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if let Poll::Ready(outcome) = call.poll_unpin(&mut cx) {
            let frame = response_frame(&self.state, id, &method, outcome);
            self.push(&frame);
            return;
        }
        inflight.fetch_add(1, Ordering::AcqRel);
        let outbox = self.client.outbox.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let _done = Decrement(inflight);
            let frame = response_frame(&state, id, &method, call.await);
            // Waits for room in the queue: an answer is never dropped.
            let _ = outbox.send(Encoded::new(&frame)).await;
        });
    }

    /// `hello` with a token: authenticate, or refresh the token of the same user.
    fn on_token(&mut self, token: &str, now: Instant) {
        if self.identity.as_ref().is_some_and(|i| i.from_app) {
            let msg = "this connection was admitted by the application: it takes no token";
            self.error(None, ErrorCode::Unauthorized, msg);
            return;
        }
        let new = match self.state.auth.verify(token) {
            Ok(identity) => identity,
            Err(e) => {
                self.error(None, ErrorCode::Unauthorized, &e.to_string());
                return;
            }
        };
        let current = self.identity.as_ref().and_then(|i| i.user_id.as_ref());
        if current.is_some() && current != new.user_id.as_ref() {
            let msg = "the token is for a different user; open a new connection";
            self.error(None, ErrorCode::BadRequest, msg);
            return;
        }
        if current.is_none() && !self.subscriptions.is_empty() {
            let msg = "authenticate before subscribing: unsubscribe everything or reconnect";
            self.error(None, ErrorCode::BadRequest, msg);
            return;
        }
        if current.is_none() {
            // A new user on this connection: the app hears the anonymous one go and the
            // user arrive, and no decision made for the anonymous one carries over.
            self.farewell();
            self.publish_decisions = None;
            self.client = self.state.hub.identify(&self.client, new.user_id.clone());
        }
        self.deadline = expiry_deadline(&new, now);
        self.identity = Some(new);
        self.announce_now();
        self.admission.authenticated();
        let welcome = self.welcome_frame();
        self.push(&welcome);
    }

    fn welcome_frame(&self) -> ServerFrame {
        ServerFrame::Welcome {
            client_id: self.client.id.clone(),
            session_id: SessionId(self.client.session_id()),
            resumed: false,
            protocol: PROTOCOL_VERSION,
            user_id: self.client.user_id.clone(),
            heartbeat_ms: self.state.config.heartbeat.as_millis() as u64,
            limits: self.state.config.limits(),
            ts: Some(now_ms()),
        }
    }

    fn grants(&self) -> &Grants {
        &self
            .identity
            .as_ref()
            .expect("frames other than hello and ping need an identity")
            .grants
    }

    fn grants_arc(&self) -> Arc<Grants> {
        self.identity
            .as_ref()
            .map(|i| i.grants.clone())
            .expect("requests need an identity")
    }

    /// Presence info carries the token's name, so nobody appears under another's name.
    fn stamp_name(&self, info: Payload) -> Payload {
        let Some(name) = self.identity.as_ref().and_then(|i| i.name.clone()) else {
            return info;
        };
        let mut info = match info.to_value() {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        info.insert("name".into(), name.into());
        Payload::from(serde_json::Value::Object(info))
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

    fn error(&mut self, id: Option<RequestId>, code: ErrorCode, message: &str) {
        self.state.hub.metrics().error(code);
        self.push(&ServerFrame::error(id, code, message));
    }

    fn push(&mut self, frame: &ServerFrame) {
        self.out.push(Encoded::new(frame));
    }

    /// Removes the connection from the hub: its channels (with presence leaves) and the
    /// registry. Runs once; if the session's task ends without it (a panic, an abort),
    /// dropping the core does it.
    pub(crate) async fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let subs = std::mem::take(&mut self.subscriptions);
        self.state.hub.disconnect(&self.client, subs).await;
        self.farewell();
    }

    /// Tells the embedding app's hooks that an announced connection ended.
    fn farewell(&mut self) {
        if std::mem::take(&mut self.announced)
            && let Some(hooks) = self.state.hub.hooks()
        {
            hooks.disconnected(&self.client.caller());
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.farewell();
        let subs = std::mem::take(&mut self.subscriptions);
        let hub = self.state.hub.clone();
        let client = self.client.clone();
        tracing::warn!(client = %client.id, "session ended without cleanup; cleaning up");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { hub.disconnect(&client, subs).await });
        }
    }
}

/// Gives an in-flight request's slot back when its task ends, however it ends.
struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// When a token-bearing identity must be refreshed.
fn expiry_deadline(identity: &Identity, now: Instant) -> Option<Instant> {
    identity.expires_at.map(|exp| {
        let left_ms = exp.saturating_mul(1000).saturating_sub(now_ms());
        now + Duration::from_millis(left_ms)
    })
}

/// The `response`, or the `error`, that answers a request; a panic in the handler is an
/// `internal` error.
fn response_frame(
    state: &AppState,
    id: RequestId,
    method: &str,
    outcome: std::thread::Result<Result<Payload, MethodError>>,
) -> ServerFrame {
    let metrics = state.hub.metrics();
    match outcome {
        Ok(Ok(result)) => ServerFrame::Response { id, result },
        Ok(Err(e)) => {
            metrics.error(e.code());
            ServerFrame::error(Some(id), e.code(), e.to_string())
        }
        Err(_panic) => {
            tracing::error!(method, "request handler panicked");
            metrics.handler_panics.fetch_add(1, Ordering::Relaxed);
            metrics.error(ErrorCode::Internal);
            ServerFrame::error(
                Some(id),
                ErrorCode::Internal,
                format!("the {method} handler failed on the server"),
            )
        }
    }
}

/// The session's logic driven directly: frames in, frames out, time passed in. No socket,
/// no real timers.
#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use clap::Parser;
    use serde_json::json;
    use switchboard_protocol::{ServerFrame, codec};

    use super::*;
    use crate::config::Config;
    use crate::methods::Methods;

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["switchboard-server", "--history", "memory"];
        argv.extend_from_slice(args);
        Config::parse_from(argv)
    }

    fn core_with(state: &AppState, now: Instant) -> (Core, crate::queue::Inbox) {
        let identity = state.auth.anonymous().ok();
        let admission = state
            .admissions
            .admit(IpAddr::V4(Ipv4Addr::LOCALHOST), identity.is_none())
            .unwrap();
        let user = identity.as_ref().and_then(|i| i.user_id.clone());
        let (client, queue) = state.hub.connect(user, state.config.queue_bounds());
        let core = Core::new(state.clone(), client, identity, None, admission, now);
        (core, queue)
    }

    fn decoded(core: &Core, text: &str) -> Vec<Decoded<ClientFrame>> {
        codec::decode_client(text, &core.limits())
    }

    /// Feeds one text message; returns the frames the core wants written.
    async fn feed(
        core: &mut Core,
        text: &str,
        now: Instant,
    ) -> Result<Vec<ServerFrame>, CloseCode> {
        for d in decoded(core, text) {
            core.on_decoded(d, now).await?;
        }
        Ok(out(core))
    }

    fn out(core: &mut Core) -> Vec<ServerFrame> {
        core.take_out()
            .iter()
            .map(|f| codec::decode_server(f.as_str()).remove(0).unwrap())
            .collect()
    }

    fn codes(frames: &[ServerFrame]) -> Vec<ErrorCode> {
        frames
            .iter()
            .filter_map(|f| match f {
                ServerFrame::Error { code, .. } => Some(*code),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn welcome_then_frames_in_replies_out() {
        let state = AppState::new(config(&[]));
        let t0 = Instant::now();
        let (mut core, _queue) = core_with(&state, t0);
        core.welcome();
        assert!(matches!(
            out(&mut core).as_slice(),
            [ServerFrame::Welcome { .. }]
        ));
        let got = feed(
            &mut core,
            r#"[{"type":"ping","id":"1"},{"type":"subscribe","channel":"a"},{"type":"publish","id":"p","channel":"a","data":1}]"#,
            t0,
        )
        .await
        .unwrap();
        assert!(matches!(&got[0], ServerFrame::Pong { id: Some(id), .. } if id.as_str() == "1"));
        assert!(matches!(&got[1], ServerFrame::Subscribed { .. }));
        assert!(matches!(
            &got[2],
            ServerFrame::Ack {
                offset: Some(1),
                ..
            }
        ));
        // The message itself went to the queue, not to the replies.
        assert_eq!(core.client().outbox.len(), 1);
    }

    #[tokio::test]
    async fn the_heartbeat_pings_then_an_idle_client_is_closed_with_4210() {
        let state = AppState::new(config(&["--heartbeat", "10s", "--idle-timeout", "25s"]));
        let t0 = Instant::now();
        let (mut core, _queue) = core_with(&state, t0);
        assert_eq!(core.next_wake(), t0 + Duration::from_secs(10));
        assert_eq!(
            core.on_timer(t0 + Duration::from_secs(5)),
            Ok(Tick::Nothing)
        );
        assert_eq!(core.on_timer(t0 + Duration::from_secs(10)), Ok(Tick::Ping));
        assert_eq!(core.next_wake(), t0 + Duration::from_secs(20));
        assert_eq!(core.on_timer(t0 + Duration::from_secs(20)), Ok(Tick::Ping));
        // Silent for 30 s by the third ping.
        assert_eq!(
            core.on_timer(t0 + Duration::from_secs(30)),
            Err(CloseCode::HEARTBEAT_TIMEOUT)
        );
        // Anything heard keeps it open.
        let (mut core, _queue) = core_with(&state, t0);
        core.heard(t0 + Duration::from_secs(19));
        assert_eq!(core.on_timer(t0 + Duration::from_secs(20)), Ok(Tick::Ping));
        assert_eq!(core.on_timer(t0 + Duration::from_secs(30)), Ok(Tick::Ping));
    }

    #[tokio::test]
    async fn without_a_token_only_hello_and_ping_work_until_the_auth_timeout() {
        let state = AppState::new(config(&["--jwt-secret", "s", "--auth-timeout", "3s"]));
        let t0 = Instant::now();
        let (mut core, _queue) = core_with(&state, t0);
        let got = feed(&mut core, r#"{"type":"subscribe","channel":"a"}"#, t0)
            .await
            .unwrap();
        assert_eq!(codes(&got), [ErrorCode::Unauthorized]);
        let got = feed(&mut core, r#"{"type":"ping"}"#, t0).await.unwrap();
        assert!(matches!(got.as_slice(), [ServerFrame::Pong { .. }]));
        assert_eq!(core.next_wake(), t0 + Duration::from_secs(3));
        assert_eq!(
            core.on_timer(t0 + Duration::from_secs(3)),
            Err(CloseCode::UNAUTHORIZED)
        );
    }

    #[tokio::test]
    async fn the_rate_limit_answers_then_closes_and_counts_binary_and_pings() {
        let state = AppState::new(config(&["--rate-per-sec", "1", "--rate-burst", "3"]));
        let t0 = Instant::now();
        let (mut core, _queue) = core_with(&state, t0);
        for _ in 0..3 {
            assert!(matches!(
                feed(&mut core, r#"{"type":"ping"}"#, t0)
                    .await
                    .unwrap()
                    .as_slice(),
                [ServerFrame::Pong { .. }]
            ));
        }
        let got = feed(&mut core, r#"{"type":"ping","id":"x"}"#, t0)
            .await
            .unwrap();
        assert_eq!(codes(&got), [ErrorCode::RateLimited]);
        // Binary messages and WebSocket pings count too: the third refusal in a row closes.
        core.on_undecodable(t0, "binary").unwrap();
        assert_eq!(codes(&out(&mut core)), [ErrorCode::RateLimited]);
        assert_eq!(core.on_control(t0), Err(CloseCode::RATE_LIMITED));

        // A second later one token is back: a binary message is answered bad_frame.
        let (mut core, _queue) = core_with(&state, t0);
        for _ in 0..3 {
            core.on_undecodable(t0, "binary").unwrap();
        }
        assert_eq!(codes(&out(&mut core)), [ErrorCode::BadFrame; 3]);
        core.on_undecodable(t0, "binary").unwrap();
        assert_eq!(codes(&out(&mut core)), [ErrorCode::RateLimited]);
        core.on_undecodable(t0 + Duration::from_secs(1), "binary")
            .unwrap();
        assert_eq!(codes(&out(&mut core)), [ErrorCode::BadFrame]);
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_internal_and_the_session_goes_on() {
        let methods = Methods::with_builtins()
            .method("boom", |_, _: ()| async {
                panic!("handler bug");
                #[allow(unreachable_code)]
                Ok::<(), MethodError>(())
            })
            .method("late_boom", |_, _: ()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                panic!("handler bug after a wait");
                #[allow(unreachable_code)]
                Ok::<(), MethodError>(())
            });
        let state = AppState::with_methods(config(&[]), methods);
        let t0 = Instant::now();
        let (mut core, _queue) = core_with(&state, t0);
        let got = feed(
            &mut core,
            r#"{"type":"request","id":"r1","method":"boom"}"#,
            t0,
        )
        .await
        .unwrap();
        assert_eq!(codes(&got), [ErrorCode::Internal]);
        let got = feed(
            &mut core,
            r#"{"type":"request","id":"r2","method":"time"}"#,
            t0,
        )
        .await
        .unwrap();
        assert!(matches!(got.as_slice(), [ServerFrame::Response { .. }]));
        // One that panics later answers through the queue.
        let got = feed(
            &mut core,
            r#"{"type":"request","id":"r3","method":"late_boom"}"#,
            t0,
        )
        .await
        .unwrap();
        assert!(got.is_empty());
        let outbox = core.client().outbox.clone();
        for _ in 0..500 {
            if !outbox.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(outbox.len(), 1, "the late panic was answered");
        assert_eq!(
            state.hub.metrics().handler_panics.load(Ordering::Relaxed),
            2
        );
    }

    #[tokio::test]
    async fn requests_that_wait_are_capped_per_connection() {
        let methods = Methods::with_builtins().method("slow", |_, _: ()| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(json!(null))
        });
        let state = AppState::with_methods(config(&[]), methods);
        let t0 = Instant::now();
        let (mut core, _queue) = core_with(&state, t0);
        let batch: Vec<String> = (0..MAX_INFLIGHT_REQUESTS + 2)
            .map(|i| format!(r#"{{"type":"request","id":"s{i}","method":"slow"}}"#))
            .collect();
        let got = feed(&mut core, &format!("[{}]", batch.join(",")), t0)
            .await
            .unwrap();
        assert_eq!(codes(&got), [ErrorCode::RateLimited; 2]);
    }

    #[tokio::test]
    async fn dropping_a_core_without_finishing_still_cleans_up() {
        let state = AppState::new(config(&[]));
        let t0 = Instant::now();
        let (mut core, _queue) = core_with(&state, t0);
        feed(
            &mut core,
            r#"{"type":"subscribe","channel":"room:x","presence":{}}"#,
            t0,
        )
        .await
        .unwrap();
        let room = Channel::from("room:x");
        assert_eq!(state.hub.presence(&room).await.unwrap().len(), 1);
        // As when the session's task panics or is aborted.
        drop(core);
        for _ in 0..500 {
            if state.hub.presence(&room).await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(state.hub.presence(&room).await.unwrap().is_empty());
        assert_eq!(state.hub.connection_count(), 0);
        assert!(state.hub.channels().is_empty());
        assert_eq!(state.admissions.connections(), 0);
    }
}

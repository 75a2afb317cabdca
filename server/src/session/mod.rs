//! One WebSocket connection: the socket glue around the session's logic ([`core`]). A
//! single task reads frames, writes replies and queued deliveries, runs the one timer
//! (heartbeat and token deadline), and closes with a documented code when it must.
//!
//! Everything other parts of the server send to this connection goes through its bounded
//! queue (see [`crate::hub::Hub::connect`]); the session drains it. Replies to the client's
//! own frames are written before the next frame is read, so a client that floods us waits
//! on its own TCP window instead of growing a buffer. Reading and draining the queue take
//! turns, so a subscriber flooded with messages is still read (it can unsubscribe) and
//! its deadlines still run.

mod bucket;
pub(crate) mod core;

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::Either;
use futures::{SinkExt, StreamExt};
use switchboard_protocol::{CloseCode, ErrorCode, ServerFrame, codec, msgpack};
use tokio::time::{Instant, sleep_until, timeout};
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;
use tungstenite::protocol::frame::coding::Data;
use tungstenite::{Error as WsError, Message};

use self::core::{Core, Tick};
use crate::AppState;
use crate::admission::Admission;
use crate::auth::{AuthError, Identity};
use crate::deflate::{self, Agreed, Compressor, DeflateError};
use crate::frame::{Encoded, Encoding};
use crate::queue::{Inbox, Next};
use crate::upgrade::Socket;

/// Most queued frames written with one flush.
const WRITE_BATCH: u64 = 64;

/// How long a closing connection may take to complete the close handshake.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What woke the session's loop.
enum Event {
    Kill(CloseCode),
    Queued(Encoded),
    Read(Option<Result<Message, WsError>>),
    /// The heartbeat or the token deadline is due.
    Timer,
    /// Publishes were stored: their answers are ready to write.
    Published,
}

/// Why the loop ended: with a close code to send, or because the peer is gone.
enum End {
    Close(CloseCode),
    /// The peer sent a close frame; tungstenite queued the reply.
    PeerClosed,
    Gone,
}

impl From<CloseCode> for End {
    fn from(code: CloseCode) -> Self {
        End::Close(code)
    }
}

/// What the upgrade handler decided before the socket existed: the outcome of the
/// `?token=` check, and the connection's place under the caps (`None` when the server is
/// full). Boxed by the caller, so the task that awaits the upgrade carries one pointer.
pub(crate) struct Pending {
    pub(crate) state: AppState,
    pub(crate) auth: Result<Identity, AuthError>,
    pub(crate) admission: Option<Admission>,
    /// What was agreed about permessage-deflate.
    pub(crate) deflate: Option<Agreed>,
    /// The encoding chosen with `Sec-WebSocket-Protocol`.
    pub(crate) encoding: Encoding,
}

/// The socket, and how this connection encodes and compresses what it sends.
pub(crate) struct Link {
    ws: Socket,
    deflate: Option<Compressor>,
    encoding: Encoding,
}

impl Link {
    pub(crate) fn new(ws: Socket, deflate: Option<Agreed>, encoding: Encoding) -> Self {
        Self {
            ws,
            deflate: deflate.map(Compressor::new),
            encoding,
        }
    }

    /// The WebSocket message for `frame`: JSON text or MessagePack binary, as negotiated
    /// (the MessagePack form is the frame's shared copy); compressed when deflate was
    /// agreed, the message is at least the threshold and compressing makes it smaller
    /// (without context takeover the compressed bytes are the frame's shared copy too).
    fn message(&mut self, frame: &Encoded) -> Message {
        let encoding = self.encoding;
        let bytes = frame.encoded(encoding);
        let data = match encoding {
            Encoding::Json => Data::Text,
            Encoding::MsgPack => Data::Binary,
        };
        if let Some(compressor) = &mut self.deflate
            && bytes.len() >= compressor.agreed().threshold
        {
            let agreed = *compressor.agreed();
            let compressed = if agreed.shared() {
                frame.deflated(encoding, agreed.level).cloned()
            } else {
                compressor.compress(bytes)
            };
            if let Some(payload) = compressed {
                return deflate::message(payload, data);
            }
        }
        match encoding {
            Encoding::Json => Message::Text(text(frame)),
            Encoding::MsgPack => Message::Binary(bytes.clone()),
        }
    }
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
pub(crate) fn run(socket: Socket, pending: Box<Pending>) -> impl Future<Output = ()> {
    let Pending {
        state,
        auth,
        admission,
        deflate,
        encoding,
    } = *pending;
    let metrics = state.hub.metrics();
    if deflate.is_some() {
        metrics.connections_deflate.fetch_add(1, Ordering::Relaxed);
    }
    if encoding == Encoding::MsgPack {
        metrics.connections_msgpack.fetch_add(1, Ordering::Relaxed);
    }
    let socket = Link::new(socket, deflate, encoding);
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
    let (client, queue) = state.hub.connect(user_id, state.config.queue_bounds());
    state
        .hub
        .metrics()
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let core = Core::new(
        state,
        client,
        identity,
        disabled_token,
        admission,
        Instant::now(),
    );
    Either::Left(live(socket, core, queue))
}

/// Refuses a connection: an optional `error` frame, then the close `code`.
async fn reject(mut socket: Link, state: AppState, error: Option<ServerFrame>, code: CloseCode) {
    if let Some(error) = error {
        let msg = socket.message(&Encoded::new(&error));
        let _ = socket.ws.send(msg).await;
    }
    refuse(&mut socket, &state, code).await;
}

/// Closes with `code`: sends our close frame, then waits briefly for the peer's, so the
/// close frame is not lost to a reset of a socket with unread data.
async fn refuse(socket: &mut Link, state: &AppState, code: CloseCode) {
    state.hub.metrics().close(code);
    let frame = CloseFrame {
        code: code.0.into(),
        reason: code.reason().into(),
    };
    let socket = &mut socket.ws;
    let _ = timeout(CLOSE_GRACE, async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(msg)) = socket.next().await {
                if matches!(msg, Message::Close(_)) {
                    break;
                }
            }
        }
    })
    .await;
}

/// The socket's text for an encoded frame (checked UTF-8: cheap next to the write).
fn text(frame: &Encoded) -> Utf8Bytes {
    Utf8Bytes::try_from(frame.bytes().clone()).unwrap_or_default()
}

/// The connection's life: serve until it ends, close it properly, clean up after it.
///
/// An `async` block rather than an `async fn`: an `async fn` moves its arguments into
/// fresh locals, so the task would hold them twice (rust-lang/rust#62958).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold the session twice"
)]
fn live(mut socket: Link, mut core: Core, mut queue: Inbox) -> impl Future<Output = ()> {
    async move {
        tracing::debug!(client = %core.client().id, client_ip = %core.client_ip(), "connected");
        // Not `match serve(..).await`: a scrutinee's temporaries (the serve future) would
        // stay in the task's state while the close is awaited.
        let end = serve(&mut socket, &mut core, &mut queue).await;
        match end {
            End::Close(code) => {
                tracing::debug!(client = %core.client().id, client_ip = %core.client_ip(), %code, "closing");
                refuse(&mut socket, core.app(), code).await;
            }
            // Reading once more flushes the queued close reply: a clean close for the peer.
            End::PeerClosed => {
                let _ = timeout(CLOSE_GRACE, socket.ws.next()).await;
            }
            End::Gone => {}
        }
        core.finish().await;
        tracing::debug!(client = %core.client().id, client_ip = %core.client_ip(), "disconnected");
    }
}

async fn serve(socket: &mut Link, core: &mut Core, queue: &mut Inbox) -> End {
    core.welcome();
    if let Err(end) = write_out(socket, core, true).await {
        return end;
    }
    // One timer for the heartbeat and the token deadline, moved only when the earlier of
    // the two changes (no timer registered per loop turn, none boxed).
    let timer = sleep_until(core.next_wake());
    tokio::pin!(timer);
    // Reading and draining the queue take turns when both are ready: after a write of
    // queued frames, a waiting client frame goes first.
    let mut read_first = false;
    loop {
        let wake = core.next_wake();
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        // The select only picks what happened; handling it comes after, once the branch
        // futures are gone, so the task holds one or the other, not both.
        let published = std::future::poll_fn(|cx| core.poll_published(cx));
        let event = if read_first {
            tokio::select! {
                biased;
                () = &mut timer => Event::Timer,
                () = published => Event::Published,
                msg = socket.ws.next() => Event::Read(msg),
                next = queue.recv() => queued(next),
            }
        } else {
            tokio::select! {
                biased;
                () = &mut timer => Event::Timer,
                () = published => Event::Published,
                next = queue.recv() => queued(next),
                msg = socket.ws.next() => Event::Read(msg),
            }
        };
        read_first = matches!(event, Event::Queued(_));
        let step = match event {
            Event::Kill(code) => Err(End::Close(code)),
            Event::Queued(frame) => send_queued(socket, core, frame, queue).await,
            Event::Published => write_out(socket, core, true).await,
            // Boxed: the frame handling is a large state machine that would otherwise sit
            // in every idle connection's task.
            Event::Read(msg) => Box::pin(on_message(socket, core, msg)).await,
            Event::Timer => match core.on_timer(Instant::now()) {
                Ok(Tick::Nothing) => Ok(()),
                Ok(Tick::Ping) => {
                    // A quiet moment: hand back what a burst made the queue grow to.
                    queue.shrink();
                    write(socket, core, Message::Ping(Default::default()), true).await
                }
                Err(code) => Err(End::Close(code)),
            },
        };
        if let Err(end) = step {
            return end;
        }
    }
}

fn queued(next: Next) -> Event {
    match next {
        Next::Kill(code) => Event::Kill(code),
        Next::Frame(frame) => Event::Queued(frame),
    }
}

async fn on_message(
    socket: &mut Link,
    core: &mut Core,
    msg: Option<Result<Message, WsError>>,
) -> Result<(), End> {
    let now = Instant::now();
    match msg {
        None => Err(End::Gone),
        Some(Err(e)) => Err(read_error(e)),
        Some(Ok(Message::Text(text))) => on_text(socket, core, text.as_str(), now).await,
        // A MessagePack connection's frames: as JSON text, then as any text message.
        Some(Ok(Message::Binary(bytes))) if socket.encoding == Encoding::MsgPack => {
            let max = core.app().config.max_frame_bytes as usize;
            match msgpack::to_json(&bytes, max) {
                Ok(text) => on_text(socket, core, &text, now).await,
                Err(e) => {
                    core.on_undecodable(now, &e.to_string())?;
                    write_out(socket, core, true).await
                }
            }
        }
        Some(Ok(Message::Binary(_))) => {
            core.on_undecodable(now, "binary messages are not supported; send JSON text")?;
            write_out(socket, core, true).await
        }
        // tungstenite answers pings itself; both count as signs of life, and pings count
        // against the rate limit.
        Some(Ok(Message::Ping(_))) => Ok(core.on_control(now)?),
        Some(Ok(Message::Pong(_))) => {
            core.heard(now);
            Ok(())
        }
        Some(Ok(Message::Close(_))) => Err(End::PeerClosed),
        // Never produced by reading.
        Some(Ok(Message::Frame(_))) => Ok(()),
    }
}

/// One text message of frames: each decoded and handled in turn, its replies written.
async fn on_text(socket: &mut Link, core: &mut Core, text: &str, now: Instant) -> Result<(), End> {
    let limits = core.limits();
    for decoded in codec::decode_client_iter(text, &limits) {
        core.on_decoded(decoded, now).await?;
        write_out(socket, core, false).await?;
    }
    flush(socket, core).await
}

/// Writes the core's pending replies; flushes if asked (or when the buffer fills).
async fn write_out(socket: &mut Link, core: &mut Core, flush_now: bool) -> Result<(), End> {
    let frames = core.take_out();
    let n = frames.len() as u64;
    let write_timeout = core.app().config.write_timeout;
    let batch = async {
        for frame in frames {
            let msg = socket.message(&frame);
            socket.ws.feed(msg).await?;
        }
        if flush_now {
            socket.ws.flush().await?;
        }
        Ok::<(), WsError>(())
    };
    finish_write(core, timeout(write_timeout, batch).await, n)
}

async fn flush(socket: &mut Link, core: &mut Core) -> Result<(), End> {
    let write_timeout = core.app().config.write_timeout;
    finish_write(core, timeout(write_timeout, socket.ws.flush()).await, 0)
}

/// Writes one message and flushes.
async fn write(
    socket: &mut Link,
    core: &mut Core,
    msg: Message,
    flush_now: bool,
) -> Result<(), End> {
    let write_timeout = core.app().config.write_timeout;
    let one = async {
        socket.ws.feed(msg).await?;
        if flush_now {
            socket.ws.flush().await?;
        }
        Ok::<(), WsError>(())
    };
    finish_write(core, timeout(write_timeout, one).await, 0)
}

/// Counts written frames; a failed write means the peer is gone, a timed-out one that it
/// stopped reading (4108).
fn finish_write(
    core: &Core,
    result: Result<Result<(), WsError>, tokio::time::error::Elapsed>,
    frames: u64,
) -> Result<(), End> {
    let metrics = core.app().hub.metrics();
    match result {
        Ok(Ok(())) => {
            metrics.frames_out.fetch_add(frames, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(_)) => Err(End::Gone),
        Err(_elapsed) => {
            metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
            Err(End::Close(CloseCode::SLOW_CONSUMER))
        }
    }
}

/// Writes a queued frame together with what else is already queued (up to
/// [`WRITE_BATCH`] frames) and flushes once: under fan-out load that is one write
/// syscall for many frames instead of one each.
async fn send_queued(
    socket: &mut Link,
    core: &mut Core,
    first: Encoded,
    queue: &mut Inbox,
) -> Result<(), End> {
    let mut written = 0u64;
    let batch = async {
        let msg = socket.message(&first);
        socket.ws.feed(msg).await?;
        written += 1;
        while written < WRITE_BATCH {
            match queue.try_recv() {
                Some(frame) => {
                    let msg = socket.message(&frame);
                    socket.ws.feed(msg).await?;
                    written += 1;
                }
                None => break,
            }
        }
        socket.ws.flush().await
    };
    let result = timeout(core.app().config.write_timeout, batch).await;
    finish_write(core, result, written)
}

/// A read error ends the connection; a too-big message says so with 1009, invalid UTF-8
/// or compressed data with 1007, a protocol violation with 1002.
fn read_error(e: WsError) -> End {
    close_code_for(&e).map_or(End::Gone, End::Close)
}

/// The close code a read error is answered with (the echo endpoint's too); `None` when
/// the peer is simply gone.
pub(crate) fn close_code_for(e: &WsError) -> Option<CloseCode> {
    match e {
        WsError::Capacity(_) => Some(CloseCode::TOO_BIG),
        WsError::Utf8(_) => Some(CloseCode::INVALID_PAYLOAD),
        WsError::Protocol(_) => Some(CloseCode::PROTOCOL_ERROR),
        WsError::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<DeflateError>()) {
            Some(DeflateError::TooBig) => Some(CloseCode::TOO_BIG),
            Some(DeflateError::Corrupt) => Some(CloseCode::INVALID_PAYLOAD),
            Some(DeflateError::Protocol) => Some(CloseCode::PROTOCOL_ERROR),
            None => None,
        },
        _ => None,
    }
}
